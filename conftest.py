"""Doctests of the package's docstrings run with ``np`` and ``refbbp`` imported."""

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
    import refbbp

    doctest_namespace["np"] = np
    doctest_namespace["refbbp"] = refbbp
