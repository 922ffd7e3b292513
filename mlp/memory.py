"""How much memory a network takes to build, train or gradient-check, estimated from its
sizes before anything is allocated, and how much the machine has available.

numpy raises MemoryError only when an allocation fails, after the allocations before it have
taken their memory (``sweep gradcheck --hidden-1 1000000 --hidden-2 1000000`` held 12.5 GB
before it failed, #22), and with the kernel's overcommit an allocation may succeed and the OOM
killer end the process later. So a run's peak is estimated from the parameter count and the
batch sizes first, and a run that would not fit is refused in one line.

The estimates are upper bounds to within a few arrays: they count every array ``MLP``,
``fit`` and ``gradcheck`` hold at once (see each function), not numpy's or BLAS's small
buffers. The dataset itself is not counted: it is loaded (and bounded, ``mlp.data``) before
the check, which therefore sees what is left.

Note: "available" is Linux's MemAvailable, bounded by the process's address-space limit
(``ulimit -v``); a cgroup's memory limit is not read, and on systems without /proc/meminfo
nothing is refused.
"""

from __future__ import annotations

import itertools
import resource

from mlp.config import ModelConfig, TrainConfig
from mlp.errors import InsufficientMemory
from mlp.sizes import N_CLASSES, N_INPUTS, described, parameter_count

_FLOAT64 = 8
#: Arrays of a batch's width (h1 + … + hd + 10 per example) alive at once, in halves, measured
#: (tracemalloc and ru_maxrss, 784-50-20000-10 and 784-20000-100-10, #22) and rounded up:
#: a training step peaks at ~2.4 arrays of its batch (its cache, the upstream gradient, the
#: relu mask); with dropout at ~5.1, in the next step's forward pass, which draws new masks
#: (a float32 draw, a boolean, its cast and the scaled mask) while the last step's cache and
#: masks are still held. An evaluation batch peaks at ~2 arrays of its own (the last batch's
#: cache is held while the next is computed), beside the last training step's cache.
_STEP_HALVES, _DROPOUT_STEP_HALVES = 6, 6
_CACHE_HALVES, _DROPOUT_CACHE_HALVES = 2, 2
_EVAL_HALVES = 5


def gib(n: int) -> str:
    """A byte count as a person reads it: ``3.2 GiB``, ``180 MiB``."""
    if n >= 2**30:
        return f"{n / 2**30:,.1f} GiB"
    return f"{n / 2**20:,.0f} MiB"


def available_bytes() -> int | None:
    """Memory this process can still take: MemAvailable (what the kernel can hand out without
    swapping), at most what the address-space limit leaves; None where neither is known."""
    found = []
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)  # in kB
                    break
    except (OSError, ValueError, IndexError):
        pass
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit != resource.RLIM_INFINITY:
        found.append(max(0, limit - _address_space()))
    return min(found) if found else None


def _address_space() -> int:
    """The process's mapped address space (VmSize), which the limit counts; 0 if unknown."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _itemsize(dtype: str) -> int:
    return _FLOAT64 if dtype == "float64" else 4


def _largest_matrix(hidden: tuple[int, ...]) -> int:
    return max(a * b for a, b in itertools.pairwise((N_INPUTS, *hidden, N_CLASSES)))


def _drawing(hidden: tuple[int, ...], dtype: str) -> int:
    """What ``MLP.__init__`` holds beyond the weights: a matrix drawn in float64 and its cast."""
    return _largest_matrix(hidden) * (_FLOAT64 + _itemsize(dtype))


def training_bytes(
    model: ModelConfig, config: TrainConfig, *, train_examples: int, valid_examples: int
) -> int:
    """Building ``model`` and ``fit`` with ``config`` on that many examples: the weights, then
    the larger of the initial draw and training's arrays (gradients, momentum buffers, a
    temporary of a weight matrix for weight decay or Nesterov, a step's or an evaluation's
    activations, the shuffled batch's buffer, and the data cast to float64 if the model is)."""
    hidden = model.hidden
    itemsize = _itemsize(model.dtype)
    params = parameter_count(*hidden)
    batch = min(config.batch_size, train_examples)
    evaluated = min(config.eval_batch_size, max(train_examples, valid_examples))
    dropout = config.dropout > 0
    step = (_STEP_HALVES + dropout * _DROPOUT_STEP_HALVES) * batch
    held = (_CACHE_HALVES + dropout * _DROPOUT_CACHE_HALVES) * batch
    evaluation = held + _EVAL_HALVES * evaluated
    activations = max(step, evaluation) * (sum(hidden) + N_CLASSES) // 2
    arrays = (
        params * (2 if config.momentum else 1)  # gradients, momentum buffers
        + _largest_matrix(hidden)
        + activations
        + batch * N_INPUTS
    )
    data = (train_examples + valid_examples) * N_INPUTS * _FLOAT64 if itemsize == 8 else 0
    training = arrays * itemsize + data
    return params * itemsize + max(_drawing(hidden, model.dtype), training)


def gradcheck_bytes(*hidden: int, examples: int) -> int:
    """``gradcheck`` of 784-hidden-10: a float64 model, its gradients, and a forward and backward
    pass over ``examples`` (its input cast to float64)."""
    params = parameter_count(*hidden)
    width = sum(hidden) + N_CLASSES
    arrays = params + examples * (N_INPUTS + _STEP_HALVES * width // 2)
    return params * _FLOAT64 + max(_drawing(hidden, "float64"), arrays * _FLOAT64)


def require_training(
    model: ModelConfig, config: TrainConfig, *, train_examples: int, valid_examples: int,
    prefix: str = "",
) -> None:  # fmt: skip
    """Raise InsufficientMemory, naming the sizes, if ``training_bytes`` is more than is
    available; ``prefix`` starts the message (``trial 3: ``)."""
    need = training_bytes(model, config, train_examples=train_examples,
                          valid_examples=valid_examples)  # fmt: skip
    require(need, f"{prefix}training {described(*model.hidden)} in {model.dtype} with batches "
                  f"of {config.batch_size}")  # fmt: skip


def require(needed: int, what: str) -> None:
    """Raise InsufficientMemory if ``needed`` bytes are more than are available; ``what`` names
    the run in the message (``784-512-768-10 in float32, batches of 128``)."""
    available = available_bytes()
    if available is not None and needed > available:
        raise InsufficientMemory(
            f"{what} needs about {gib(needed)} of memory, more than the {gib(available)} available"
        )
