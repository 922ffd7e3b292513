"""A from-scratch numpy multilayer perceptron for MNIST: data, model, training, gradient check.

Imports numpy and the standard library only.
"""

from mlp.checkpoint import load_state, save_state
from mlp.config import ModelConfig, TrainConfig
from mlp.data import DataError, Dataset, Split, load_mnist
from mlp.files import CheckpointError
from mlp.gradcheck import GradCheck, gradcheck
from mlp.memory import InsufficientMemory
from mlp.model import MLP, parameter_count
from mlp.state import EpochMetrics, TrainState
from mlp.train import DivergedError, History, fit

__all__ = [
    "MLP",
    "CheckpointError",
    "DataError",
    "Dataset",
    "DivergedError",
    "EpochMetrics",
    "GradCheck",
    "History",
    "InsufficientMemory",
    "ModelConfig",
    "Split",
    "TrainConfig",
    "TrainState",
    "fit",
    "gradcheck",
    "load_mnist",
    "load_state",
    "parameter_count",
    "save_state",
]
