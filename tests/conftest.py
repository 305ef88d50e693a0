"""Shared test configuration: Hypothesis profiles and the seeded ``rng`` fixture.

Hypothesis profiles (numpy's and scipy's conftest do the same):

* ``ci``: derandomized (the same examples on every run, so CI is reproducible), and
  few enough examples that the whole suite stays well under 30 minutes on 2 cores;
* ``dev``: random examples, more of them, for local runs.

``ci`` is loaded when the environment variable ``CI`` is set (``.ci/run`` sets it),
``dev`` otherwise; ``HYPOTHESIS_PROFILE=<name>`` overrides both. With ``ci`` the whole
suite (``CI=1 python -m pytest``) took about 2 minutes on 2 busy cores.

The ``rng`` fixture runs a test once per seed, with hex ids (``[0x5eed]``); the seeds
marked ``extended`` are deselected unless pytest is given ``--extended``;
``--extended -m extended`` runs those alone (``.ci/run`` does, after the main suite).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# The fixture export script needs torch (never a test dependency); with
# --doctest-modules pytest would import it to look for docstring examples.
collect_ignore = ["fixtures/make_fixtures.py"]

# Drawing one model runs onnxruntime on the partial graph a few times (~ 5-20 ms), which
# Hypothesis' too_slow health check would flag; the cost is known and accepted.
_SLOW_DRAWS = [HealthCheck.too_slow]

settings.register_profile(
    "ci",
    derandomize=True,
    # Cost per example (draw + load + checks, one core): ~ 15-35 ms for the property
    # tests of tests/test_properties.py, ~ 10-25 ms for tests/test_canonical.py. With 200
    # examples: ~ 3-7 s per test, ~ 75 s for those two files (18 Hypothesis tests).
    max_examples=200,
    deadline=None,          # onnxruntime session creation times vary with load
    print_blob=True,        # a failure prints the @reproduce_failure blob
    suppress_health_check=_SLOW_DRAWS,
)
settings.register_profile(
    "dev",
    # 2.5x the CI cost: ~ 10-20 s per test, ~ 3 minutes for the two files above.
    max_examples=500,
    deadline=None,
    print_blob=True,
    suppress_health_check=_SLOW_DRAWS,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or
                      ("ci" if os.environ.get("CI") else "dev"))


# Seeds of the ``rng`` fixture, shown as hex ids (zennit ``tests/unit/conftest.py``).
SEEDS = [0x0, 0x5EED, 0xBB9]
# More seeds, marked ``extended``: run with ``--extended``.
EXTENDED_SEEDS = [0x1, 0xC0FFEE, 0xDEADBEEF, 0x2F4B1A73]


def pytest_addoption(parser):
    parser.addoption("--extended", action="store_true", default=False,
                     help="also run the tests marked 'extended' (more rng seeds)")


def pytest_configure(config):
    config.addinivalue_line("markers", "extended: extra seeds, run with --extended")


def pytest_collection_modifyitems(config, items):
    """Without ``--extended``, deselect the extended seeds (reported once as
    "deselected", not as thousands of skips)."""
    if config.getoption("--extended"):
        return
    extended = [item for item in items if item.get_closest_marker("extended")]
    if extended:
        config.hook.pytest_deselected(items=extended)
        items[:] = [item for item in items if not item.get_closest_marker("extended")]


@pytest.fixture(params=SEEDS + [pytest.param(s, marks=pytest.mark.extended)
                                for s in EXTENDED_SEEDS],
                ids=lambda s: f"{s:#x}")
def rng(request):
    """A NumPy generator, one per seed (ids like ``0x5eed``)."""
    return np.random.default_rng(request.param)
