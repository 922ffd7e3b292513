"""A from-scratch numpy multilayer perceptron for MNIST: data, model, training, gradient check.

Imports numpy and the standard library only. The names below are loaded on first use, so that
importing one module of the package (``mlp.config``'s declarations, ``mlp.errors``) does not
load the model, the training loop and the dataset reader too: ``sweep status`` names those
errors and reads those declarations, and trains nothing (#27).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlp.checkpoint import load_state, save_state
    from mlp.config import ModelConfig, TrainConfig
    from mlp.data import Dataset, Split, load_mnist
    from mlp.errors import DataError, DivergedError, InsufficientMemory
    from mlp.files import CheckpointError
    from mlp.gradcheck import GradCheck, gradcheck
    from mlp.model import MLP
    from mlp.sizes import parameter_count
    from mlp.state import EpochMetrics, TrainState
    from mlp.train import History, fit

#: Each public name and the module that declares it.
_MODULE_OF = {
    "load_state": "checkpoint", "save_state": "checkpoint",
    "ModelConfig": "config", "TrainConfig": "config",
    "Dataset": "data", "Split": "data", "load_mnist": "data",
    "DataError": "errors", "DivergedError": "errors", "InsufficientMemory": "errors",
    "CheckpointError": "files",
    "GradCheck": "gradcheck", "gradcheck": "gradcheck",
    "MLP": "model", "parameter_count": "sizes",
    "EpochMetrics": "state", "TrainState": "state",
    "History": "train", "fit": "train",
}  # fmt: skip

__all__ = [
    "MLP", "CheckpointError", "DataError", "Dataset", "DivergedError", "EpochMetrics",
    "GradCheck", "History", "InsufficientMemory", "ModelConfig", "Split", "TrainConfig",
    "TrainState", "fit", "gradcheck", "load_mnist", "load_state", "parameter_count",
    "save_state",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _MODULE_OF:
        return getattr(importlib.import_module(f"mlp.{_MODULE_OF[name]}"), name)
    raise AttributeError(f"module 'mlp' has no attribute {name!r}")


class _Package(types.ModuleType):
    """``mlp.gradcheck`` is the function, as it was when this file imported it: importing the
    module of the same name binds the module there, and would hide the function from
    ``from mlp import gradcheck`` once anything had imported ``mlp.gradcheck`` first."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _MODULE_OF.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
