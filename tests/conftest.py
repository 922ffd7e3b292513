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


@pytest.fixture(scope="session")
def postgres_server():
    from tests.postgres import server

    yield from server()


@pytest.fixture(scope="session")
def slurm_cluster():
    """A one-node SLURM on loopback (tests/slurm.py), started once for the session."""
    from tests.slurm import cluster

    yield from cluster()


@pytest.fixture
def slurm(slurm_cluster):
    """The session's SLURM (its clients' env, its jobs' states), its jobs all ended after the
    test, passed or failed, so that none runs into the next test."""
    yield slurm_cluster
    slurm_cluster.cancel_all()


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """A fresh, empty study database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'studies.db'}"
    from tests.postgres import fresh_database

    return fresh_database(request.getfixturevalue("postgres_server"))
