"""Completeness and backend agreement of BBp on random networks (SPEC section 3).

For every model, rule and temperature:

* ``sum(beta) = b^x`` and ``sum(w * x) + sum(beta) = f(x)``;
* at every cut node n: ``sum(g_n * h_n) + sum(beta_n^in) = f(x)``;
  all within 1e-9 of the scale of the terms added (SPEC section 2);
* the Cython kernel and the NumPy reference agree to 1e-12 relative to the beta mass.

Models: the Hypothesis strategies of tests/strategies.py (MLPs, CNNs, residual and
concat graphs with Relu, LeakyRelu, PRelu with negative slopes and saturating Clip), and
the named local models of bbp_models.py over the seeds of the ``rng`` fixture.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refbbp
from tests.strategies import models

from . import bbp_models as M

RULES = ["sign", "deviation"]
TEMPERATURES = [0.0, 0.1, 1.0, 10.0, np.inf]
EXACT = 1e-9      # SPEC section 2
AGREE = 1e-12     # cython vs numpy, relative to the beta mass


def assert_complete(att):
    c = att.completeness()
    assert c.ok(EXACT), str(c)


def assert_backends_agree(a, b):
    """Per node, |beta_cython - beta_numpy| <= 1e-12 * (the node's beta mass)."""
    for k, (x, y) in enumerate(zip(a.node_beta, b.node_beta)):
        mass = np.abs(y).sum() + np.abs(a.node_beta_in[k]).sum()
        assert np.abs(x - y).max(initial=0) <= AGREE * max(mass, 1e-300), k
    assert np.allclose(a.fallback, b.fallback, rtol=AGREE, atol=0)


def check_model(net, x, rule, temperature, target=None):
    a = refbbp.bbp(net, x, target=target, rule=rule, temperature=temperature)
    b = refbbp.bbp(net, x, target=target, rule=rule, temperature=temperature,
                   backend="numpy")
    assert_complete(a)
    assert_complete(b)
    assert_backends_agree(a, b)
    return a


# Cost: a draw runs onnxruntime a few times (~ 25-60 ms) and the NumPy reference visits
# every row in Python (~ 10-100 ms on these models of <= ~ 400 elements per tensor):
# ~ 0.1-0.2 s per example, so 60 examples stay around 10 s.
@settings(max_examples=60)
@given(models(), st.sampled_from(RULES), st.sampled_from(TEMPERATURES),
       st.sampled_from([None, "top2"]))
def test_random_models_complete_and_backends_agree(example, rule, temperature, target):
    model, x = example
    check_model(M.load(model), x, rule, temperature, target)


def _named(rng):
    return {
        "mlp": (M.mlp(rng), rng.normal(size=6)),
        "cnn_bn_maxpool": (M.cnn_bn_maxpool(rng), rng.normal(size=(2, 6, 6))),
        "residual": (M.residual(rng), rng.normal(size=(2, 5, 5))),
        "concat": (M.concat(rng), rng.normal(size=(2, 4, 4))),
        "prelu_negative": (M.prelu_negative(rng), rng.normal(size=5)),
        "saturating_clip": (M.saturating_clip(rng, None), rng.normal(size=5)),
        "empty_row_pad": (M.empty_row_pad(rng), rng.normal(size=(1, 4, 4))),
    }


@pytest.mark.parametrize("temperature", TEMPERATURES, ids=lambda t: f"T={t}")
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("name", list(_named(np.random.default_rng(0))))
def test_named_models_complete_and_backends_agree(rng, name, rule, temperature):
    model, x = _named(rng)[name]
    check_model(M.load(model), x, rule, temperature)
