"""A from-scratch numpy multilayer perceptron for MNIST: data, model, training, gradient check.

Imports numpy and the standard library only. The names below are loaded on first use, so that
importing one module of the package (``mlp.config``'s declarations, ``mlp.errors``) does not
load the model, the training loop and the dataset reader too: ``sweep status`` names those
errors and reads those declarations, and trains nothing (#27). The gradient check is
``mlp.gradcheck.gradcheck``: the package's own ``gradcheck`` is its module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlp.checkpoint import load_state, save_state
    from mlp.config import ModelConfig, TrainConfig
    from mlp.data import Dataset, Split, load_mnist
    from mlp.errors import DataError, DivergedError, InsufficientMemory
    from mlp.files import CheckpointError
    from mlp.gradcheck import GradCheck
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
    "GradCheck": "gradcheck",
    "MLP": "model", "parameter_count": "sizes",
    "EpochMetrics": "state", "TrainState": "state",
    "History": "train", "fit": "train",
}  # fmt: skip

__all__ = [
    "MLP", "CheckpointError", "DataError", "Dataset", "DivergedError", "EpochMetrics",
    "GradCheck", "History", "InsufficientMemory", "ModelConfig", "Split", "TrainConfig",
    "TrainState", "fit", "load_mnist", "load_state", "parameter_count",
    "save_state",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _MODULE_OF:
        return getattr(importlib.import_module(f"mlp.{_MODULE_OF[name]}"), name)
    raise AttributeError(f"module 'mlp' has no attribute {name!r}")
