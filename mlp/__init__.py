"""A from-scratch numpy multilayer perceptron for MNIST: data, model, training, gradient check.

Imports numpy and the standard library only.
"""

from mlp.config import ModelConfig, TrainConfig
from mlp.data import DataError, Dataset, Split, load_mnist
from mlp.gradcheck import GradCheck, gradcheck
from mlp.model import MLP, parameter_count
from mlp.train import DivergedError, EpochMetrics, History, fit

__all__ = [
    "MLP",
    "DataError",
    "Dataset",
    "DivergedError",
    "EpochMetrics",
    "GradCheck",
    "History",
    "ModelConfig",
    "Split",
    "TrainConfig",
    "fit",
    "gradcheck",
    "load_mnist",
    "parameter_count",
]
