"""The one decoder of a stored trial parameter (``sweep.queue.attrs.stored_param``): what optuna
wrote reads back as optuna shows it; anything else another client could write reads as None,
never an exception. Its three readers (a grid's coverage, the report, ``sweep status``) each
pin its policy on a real database: tests/sweep/test_queue_resume.py, test_report_scale.py and
test_status_scale.py."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)

from sweep.queue.attrs import stored_param

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: What a JSON value may be: every kind, numbers at and past the edges (JSON's ``1e999`` is
#: inf, which optuna's integer bounds cannot hold).
_SCALARS = (
    st.none() | st.booleans() | st.integers() | st.text(max_size=5)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([1e-320, 1e308, -1e308, 0.0, 1.0])
)  # fmt: skip
_JSON = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
_ATTRIBUTES = st.dictionaries(
    st.sampled_from(["low", "high", "step", "log", "choices", "q", "other"]), _JSON, max_size=5
)
#: A distribution's JSON as a client that is not optuna may write it: optuna's two shapes with
#: any attributes, any JSON at all, and text that is not JSON.
_DISTRIBUTION_JSON = (
    st.builds(lambda name, attrs: json.dumps({"name": name, "attributes": attrs}),
              st.sampled_from(["FloatDistribution", "IntDistribution", "CategoricalDistribution",
                               "UniformDistribution", "IntUniformDistribution", "Other"]),
              _ATTRIBUTES)
    | st.builds(lambda kind, attrs: json.dumps({"type": kind, **attrs}),
                st.sampled_from(["float", "int", "categorical", "other"]), _ATTRIBUTES)
    | _JSON.map(json.dumps) | st.text(max_size=20) | st.none()
)  # fmt: skip
#: A ``trial_params.param_value`` as a database returns it (SQLite keeps text in a REAL column).
_VALUES = (
    st.floats(allow_nan=True, allow_infinity=True) | st.integers() | st.none() | st.text(max_size=4)
)


@FUZZ
@given(_VALUES, _DISTRIBUTION_JSON)
@example(0.0, '{"name": "IntDistribution", "attributes": {"low": 1e999, "high": 1e999}}')
@example(0.0, '{"name": "FloatDistribution", "attributes": {"low": 0, "high": 1, "step": 1e-320}}')
@example(0.0, "[" * 100_000)
@example(math.nan, distribution_to_json(FloatDistribution(0, 1)))
@example(None, distribution_to_json(FloatDistribution(0, 1)))
@example("NaN", distribution_to_json(FloatDistribution(0, 1)))
@example(5.0, distribution_to_json(CategoricalDistribution(["a", "b"])))
def test_anything_stored_reads_as_a_parameter_or_none(value, text):
    decoded = stored_param(value, text)  # never raises
    if decoded is not None:  # a finite number, shown as optuna shows it
        shown, distribution = decoded
        assert math.isfinite(value)
        assert repr(shown) == repr(distribution.to_external_repr(value))


@pytest.mark.parametrize(
    ("distribution", "shown"),
    [
        (FloatDistribution(1e-4, 1.0, log=True), 0.003),
        (FloatDistribution(0, 1, step=0.25), 0.75),
        (IntDistribution(16, 512), 128),
        (CategoricalDistribution(["relu", "tanh", None, 2.5]), "tanh"),
        (CategoricalDistribution(["relu", "tanh", None, 2.5]), None),
    ],
)
def test_what_optuna_stored_reads_as_optuna_shows_it(distribution, shown):
    text = distribution_to_json(distribution)
    assert stored_param(distribution.to_internal_repr(shown), text) == (shown, distribution)
