"""The memory estimates against what training really takes (the oracle: the peak resident size
a fresh process reaches in ``fit``), and the refusal against what the machine has."""

import json
import resource
import subprocess
import sys

import pytest

from mlp import InsufficientMemory, ModelConfig, TrainConfig
from mlp.memory import available_bytes, gradcheck_bytes, require, training_bytes

# One epoch on 2,000 examples (and 2,000 to validate) in a fresh process with one BLAS thread,
# as a worker trains by default; prints how far its peak RSS rose above its RSS before fit
# (Linux: writing 5 to clear_refs resets the peak, VmHWM, to the current RSS, so whatever
# loading the data took does not hide what fit takes).
_EXAMPLES = 2000
_MEASURE = f"""
import json, sys
from threadpoolctl import threadpool_limits
from mlp import MLP, ModelConfig, TrainConfig, Split, fit, load_mnist

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

model, train = (cls(**json.loads(a)) for cls, a in zip((ModelConfig, TrainConfig), sys.argv[1:]))
data = load_mnist().head({_EXAMPLES})
data = data._replace(valid=Split(*(a[:{_EXAMPLES}] for a in data.valid)))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS:")
with threadpool_limits(limits=1, user_api="blas"):
    fit(MLP.from_config(model), data, train)
print(status("VmHWM:") - before)
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "train"),
    [
        # wide layers (the second: cheap to compute) make the activations dominate: a step's
        # (with dropout, its masks too), or an evaluation batch's
        ({"hidden_1": 50, "hidden_2": 20000}, {"batch_size": 1000, "eval_batch_size": 100,
                                               "dropout": 0.5}),
        ({"hidden_1": 50, "hidden_2": 20000}, {"batch_size": 100, "eval_batch_size": 1000}),
        # the weights dominate, in float64 with momentum buffers
        ({"hidden_1": 1500, "hidden_2": 1500, "dtype": "float64"}, {"momentum": 0.9}),
        # four hidden layers, two of them wide: every layer's activations count (#25)
        ({"depth": 4, "hidden_1": 50, "hidden_2": 20000, "hidden_3": 50, "hidden_4": 20000},
         {"batch_size": 1000, "eval_batch_size": 100, "dropout": 0.5}),
        # one hidden layer, its weights dominating
        ({"depth": 1, "hidden_1": 6000, "dtype": "float64"}, {"momentum": 0.9}),
    ],
    ids=["step", "evaluation", "weights", "depth 4", "depth 1"],
)  # fmt: skip
def test_the_training_estimate_bounds_the_measured_peak_closely(model, train):
    train = {"epochs": 1, "shuffle": True, **train}
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, json.dumps(model), json.dumps(train)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    measured = int(out.stdout)
    estimate = training_bytes(
        ModelConfig(**model), TrainConfig(**train), train_examples=_EXAMPLES,
        valid_examples=_EXAMPLES,
    )  # fmt: skip
    # An upper bound (a run it lets through fits), and not a loose one (it refuses no run
    # that would fit by much): measured 1.1-1.5x when written.
    assert measured <= estimate <= 2 * measured, (measured, estimate)


def test_the_gradient_check_estimate_counts_float64_weights_and_gradients():
    # 784-1000000-1000000-10: 10^12 parameters, each a float64 weight and gradient.
    assert gradcheck_bytes(10**6, 10**6, examples=10) >= 2 * 8 * 10**12


def test_available_memory_is_bounded_by_the_address_space_limit():
    # A child under `ulimit -v` of 3 GiB sees less than that available, whatever the machine has.
    code = (
        "import resource\n"
        "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
        "from mlp.memory import available_bytes\n"
        "print(available_bytes())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 0 < int(out.stdout) < 3 << 30
    if resource.getrlimit(resource.RLIMIT_AS)[0] == resource.RLIM_INFINITY:
        assert available_bytes() > 3 << 30  # this machine has more (MemAvailable)


def test_a_run_over_what_is_available_is_refused_naming_both():
    available = available_bytes()
    assert available is not None, "Linux has /proc/meminfo"
    require(available // 2, "half of it")
    with pytest.raises(InsufficientMemory, match=r"^twice it needs about [\d,.]+ GiB of memory, "
                       r"more than the [\d,.]+ [GM]iB available$"):  # fmt: skip
        require(2 * available, "twice it")
