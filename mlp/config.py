"""What a model is built from and how it is trained: every field declared once, here.

Two frozen dataclasses hold the values and their defaults; ``PARAMETERS``, right below them,
says what each field accepts and gives it one line of help (scikit-learn's
``_parameter_constraints``). Everything that shows or checks these fields is derived from the
two: a study file's ``[train]`` and ``[space]`` rules, the ``sweep train`` flags, the objective's
mapping of a trial to a model and a training run, and the README's study-file reference. A new
hyperparameter is a field in one dataclass and a row in ``PARAMETERS``, and then its use in
``MLP`` or ``fit``.

The defaults are the notebook's protocol (its order, no shuffling, and its loss over the
whole training set after every epoch): ``fit(model, data, TrainConfig())`` and ``sweep train``
reproduce the notebook. A study that wants shuffling or no extra pass says so in its file.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlp.functions import ACTIVATIONS, INITIALISERS
from mlp.optim import SCHEDULES

DTYPES = ("float32", "float64")
#: A bound on every count of epochs (the notebook trains 10), so that no configuration that
#: passes its rules can train for ever.
MAX_EPOCHS = 10_000
#: Hidden layers a model may have: ``depth`` of them, widths ``hidden_1`` … ``hidden_{depth}``.
MAX_DEPTH = 4
#: The width fields in layer order; a network of depth d uses the first d.
WIDTHS = tuple(f"hidden_{k}" for k in range(1, MAX_DEPTH + 1))


@dataclass(frozen=True)
class ModelConfig:
    """The network's shape and initialisation: what ``MLP.from_config`` builds.

    ``dtype`` is the model's, not the training run's: the weights are created in it, ``fit``
    casts the data to the model's dtype, and a model is evaluated or gradient-checked in it
    with no training configuration at all. What each field accepts, and its help: PARAMETERS.
    """

    hidden_1: int = 512
    hidden_2: int = 768
    init: str = "glorot"
    init_std: float = 1.0
    activation: str = "relu"
    dtype: str = "float32"
    # Last, so that positional construction as before #25 keeps its meaning.
    depth: int = 2
    hidden_3: int = 256
    hidden_4: int = 256

    @property
    def hidden(self) -> tuple[int, ...]:
        """The widths of the ``depth`` hidden layers, input side first; the other
        ``hidden_k`` are unused."""
        return tuple(getattr(self, name) for name in WIDTHS[: self.depth])


@dataclass(frozen=True)
class TrainConfig:
    """How ``fit`` trains a model: the procedure, its seed and its evaluation passes. What
    each field accepts, and its help: PARAMETERS."""

    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 0.1
    shuffle: bool = False
    full_train_eval: bool = True
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_epochs: int = 0
    step_size: int = 10
    gamma: float = 0.1
    dropout: float = 0.0
    shift: int = 0
    rotation: float = 0.0
    zoom: float = 0.0
    shear: float = 0.0
    elastic_alpha: float = 0.0
    elastic_sigma: float = 4.0
    patience: int = 0
    seed: int = 0
    eval_batch_size: int = 5000


@dataclass(frozen=True)
class Param:
    """What one field accepts beyond its type, and one line of help.

    Numbers: ``low`` and ``high`` bound them (None: unbounded), each end included unless it is
    marked open. Strings: one of ``choices``. Booleans: either.
    """

    help: str
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    #: False for fields that never change a result and are no hyperparameter (a seed is the
    #: study's, a batch size for evaluation only saves memory): no study-file key, no flag.
    searchable: bool = True


_UNIT = {"low": 0.0, "high": 1.0, "high_open": True}  # [0, 1)
_POSITIVE = {"low": 0.0, "low_open": True}  # (0, inf)

#: What each field of ModelConfig and TrainConfig accepts, with its help, in the order study
#: files, flags and the README list them.
PARAMETERS: dict[str, Param] = {
    "depth": Param("hidden layers; hidden_k past it are unused", low=1, high=MAX_DEPTH),
    "hidden_1": Param("units in the first hidden layer", low=1),
    "hidden_2": Param("units in the second hidden layer (depth >= 2)", low=1),
    "hidden_3": Param("units in the third hidden layer (depth >= 3)", low=1),
    "hidden_4": Param("units in the fourth hidden layer (depth 4)", low=1),
    "epochs": Param("passes over the training set", low=1, high=MAX_EPOCHS),
    "batch_size": Param("examples per SGD step", low=1),
    "learning_rate": Param("SGD step size on the mean minibatch loss", **_POSITIVE),
    "init": Param("weight initialiser", choices=tuple(sorted(INITIALISERS))),
    "init_std": Param('standard deviation of the "normal" initialiser', **_POSITIVE),
    "activation": Param("hidden-layer activation", choices=tuple(sorted(ACTIVATIONS))),
    "dtype": Param("precision of the weights and the arithmetic", choices=DTYPES),
    "shuffle": Param("reshuffle the training set every epoch (off: the notebook's order)"),
    "full_train_eval": Param(
        "training loss from an extra pass over the training set each epoch (off: running mean)"
    ),
    "momentum": Param("SGD momentum (PyTorch's update rule), 0 for plain SGD", **_UNIT),
    "nesterov": Param("Nesterov momentum (needs momentum > 0)"),
    "weight_decay": Param("L2 penalty on the weight matrices (not the biases)", low=0.0),
    "schedule": Param("learning rate per epoch", choices=SCHEDULES),
    # A warm-up as long as the run or longer is allowed: the whole run then warms up
    # (mlp.optim.learning_rate_at), which a search over epochs may well produce.
    "warmup_epochs": Param("linear warm-up epochs before the schedule", low=0, high=MAX_EPOCHS),
    "step_size": Param('"step" schedule: epochs between decays', low=1, high=MAX_EPOCHS),
    "gamma": Param('"step" schedule: decay factor', low=0.0, high=1.0, low_open=True),
    "dropout": Param("inverted dropout on the hidden layers while training", **_UNIT),
    # Distortions of the training digits (mlp.distort), drawn afresh for every minibatch; 0 is
    # off. Never applied to validation or test data.
    "shift": Param("largest random translation of a training digit, whole pixels", low=0, high=8),
    "rotation": Param("largest random rotation of a training digit, degrees", low=0.0, high=90.0),
    "zoom": Param(
        "largest random change of a training digit's scale (0.1: x0.9 to x1.1)", low=0.0, high=0.5
    ),
    "shear": Param(
        "largest random horizontal shear of a training digit, as a slope", low=0.0, high=1.0
    ),
    "elastic_alpha": Param(
        "strength of the elastic distortion (Simard 2003: 34), pixels", low=0.0, high=100.0
    ),
    "elastic_sigma": Param(
        "width of the Gaussian that smooths the elastic field, pixels", low=0.5, high=14.0
    ),
    "patience": Param(
        "stop after this many epochs with no better validation accuracy (0: off)",
        low=0,
        high=MAX_EPOCHS,
    ),
    "seed": Param("seeds the shuffling and the dropout masks", low=0, searchable=False),
    "eval_batch_size": Param(
        "batch size of the evaluation passes (memory, not results)", low=1, searchable=False
    ),
}


@dataclass(frozen=True)
class Hyperparameter:
    """One declared field, everything about it in one place (see ``declared_fields``)."""

    name: str
    config: type  # ModelConfig or TrainConfig
    type: type  # bool, int, float or str
    default: Any
    param: Param


def declared_fields() -> tuple[Hyperparameter, ...]:
    """Every field of ModelConfig and TrainConfig with its declaration, in PARAMETERS' order.

    Read when called, so that what derives from it follows the declaration as it is."""
    found = {}  # name → (its dataclass, its type, its default)
    for config in (ModelConfig, TrainConfig):
        hints = typing.get_type_hints(config)
        for f in dataclasses.fields(config):
            found[f.name] = (config, hints[f.name], f.default)
    if set(found) != set(PARAMETERS):
        raise TypeError(
            "PARAMETERS must declare exactly the fields of ModelConfig and TrainConfig; "
            f"fields {sorted(found)}, PARAMETERS {sorted(PARAMETERS)}"
        )
    return tuple(Hyperparameter(name, *found[name], param) for name, param in PARAMETERS.items())


def hyperparameters() -> tuple[Hyperparameter, ...]:
    """The searchable fields (all but the seed and the evaluation batch size), in order."""
    return tuple(h for h in declared_fields() if h.param.searchable)


def split(values: Mapping[str, Any]) -> tuple[ModelConfig, TrainConfig]:
    """A ModelConfig and a TrainConfig from one flat mapping of their fields (a trial's
    settings, a command line); fields not given keep their defaults."""
    owner = {h.name: h.config for h in declared_fields()}
    unknown = set(values) - set(owner)
    if unknown:
        raise TypeError(f"not a field of ModelConfig or TrainConfig: {sorted(unknown)}")
    model = {k: v for k, v in values.items() if owner[k] is ModelConfig}
    train = {k: v for k, v in values.items() if owner[k] is TrainConfig}
    return ModelConfig(**model), TrainConfig(**train)
