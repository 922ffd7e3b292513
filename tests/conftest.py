"""Shared fixtures. The dataset comes from the cache that `make data` fills (fetched if absent)."""

import numpy as np
import pytest

from mlp import Dataset, load_mnist


@pytest.fixture(scope="session")
def mnist() -> Dataset:
    return load_mnist()


@pytest.fixture(scope="session")
def tiny(mnist: Dataset) -> Dataset:
    """2,000 training examples: enough for a network to learn something in a second."""
    return mnist.head(2000)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
