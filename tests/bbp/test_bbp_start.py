"""BBp from a chosen node (SPEC section 8): completeness over the node's elements and
agreement of the Cython kernel with the NumPy reference from a random cut node."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refbbp
from refbbp import data
from tests.network.test_start import without_normalisation
from tests.strategies import models

from . import bbp_models as M
from .test_bbp_properties import RULES, TEMPERATURES, assert_backends_agree, assert_complete


@settings(max_examples=40)
@given(models(), st.sampled_from(RULES), st.sampled_from(TEMPERATURES), st.data())
def test_start_random_cut_complete_and_backends_agree(example, rule, temperature, draw):
    model, x = example
    net = M.load(model)
    s = draw.draw(st.sampled_from(net.cut_nodes()), label="start")
    a = refbbp.bbp(net, x, rule=rule, temperature=temperature, start=s)
    b = refbbp.bbp(net, x, rule=rule, temperature=temperature, start=s, backend="numpy")
    assert a.start.index == b.start.index == s
    assert a.beta.shape == refbbp.network.start.sample_shape(net, s)
    assert_complete(a)
    assert_complete(b)
    assert_backends_agree(a, b)
    # the same numbers as BBp on the cut network at z, and f(x) unchanged
    sub = net.from_node(s)
    z = net.trace(x).values[s].reshape(sub.input_shape)
    c = refbbp.bbp(sub, z, rule=rule, temperature=temperature)
    np.testing.assert_array_equal(a.beta, c.beta)
    np.testing.assert_allclose(a.value, net.linearize(x).value, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rule", RULES)
def test_start_bundled_beta_is_the_model_without_normalisation(rule):
    """BBp from "after-normalisation" equals BBp on the bundled graph with its Sub/Div
    removed, at the normalised image (1e-12 of the beta mass), and sum(beta) = b^z."""
    net = refbbp.load(data.model_path())
    plain = refbbp.load(without_normalisation(onnx.load(data.model_path())))
    x = data.load_samples()[0][:4]
    att = refbbp.bbp(net, x, rule=rule, start="after-normalisation")
    z = net.trace(x).values[1].reshape(x.shape)
    ref = refbbp.bbp(plain, z, rule=rule)
    assert np.abs(att.beta - ref.beta).max() <= 1e-12 * np.abs(ref.beta).sum(axis=(1, 2, 3)).min()
    np.testing.assert_allclose(att.beta.sum(axis=(1, 2, 3)), att.bias_x, rtol=0,
                               atol=1e-9 * np.abs(att.beta).sum())
    assert "from node 1" in repr(att)
    assert_complete(att)
