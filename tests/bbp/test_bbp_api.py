"""The public API of refbbp.bbp: argument validation, result shapes, per-node layers,
targets and the completeness report."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

import refbbp

from . import bbp_models as M


@pytest.fixture(scope="module")
def net():
    return M.load(M.cnn_bn_maxpool(np.random.default_rng(5)))


@pytest.fixture
def x():
    return np.random.default_rng(6).normal(size=(2, 6, 6))


# A table of invalid arguments: (keyword arguments, error, message pattern).
INVALID = [
    ({"rule": "signs"}, ValueError, "rule 'signs' not understood"),          # typo
    ({"rule": 3}, TypeError, "rule must be"),                                # not a rule
    ({"temperature": -1.0}, ValueError, r"temperature must be in \[0, inf\]"),
    ({"temperature": float("nan")}, ValueError, "temperature"),              # NaN
    ({"temperature": "1"}, TypeError, "temperature must be a real number"),  # a string
    ({"temperature": True}, TypeError, "temperature"),                       # a bool
    ({"backend": "torch"}, ValueError, "backend 'torch' not understood"),
    ({"n_threads": 0}, ValueError, "n_threads must be None or a positive int"),
    ({"n_threads": 1.5}, TypeError, "n_threads"),                            # a float
    ({"return_layers": "yes"}, TypeError, "return_layers must be a bool"),
    ({"target": "top3"}, ValueError, "target 'top3' not understood"),
    ({"target": 10}, refbbp.InputShapeError, "out of range"),               # 3 classes
    ({"target": np.ones(4)}, refbbp.InputShapeError, "not understood"),     # 3 classes
]


@pytest.mark.parametrize("kwargs, error, match", INVALID,
                         ids=[str(k) for k, _, _ in INVALID])
def test_invalid_arguments(net, x, kwargs, error, match):
    with pytest.raises(error, match=match):
        refbbp.bbp(net, x, **kwargs)


def test_invalid_input_shape(net):
    with pytest.raises(refbbp.InputShapeError, match="does not fit"):
        refbbp.bbp(net, np.zeros((3, 6, 6)))


def test_weights_rule_marker():
    f = refbbp.weights_rule(lambda layout: layout.kappa)
    assert f.bbp_returns == "weights"

    def g(layout):
        return layout.kappa
    g.bbp_returns = "probabilities"
    with pytest.raises(ValueError, match="bbp_returns"):
        refbbp.bbp(M.load(M.two_layer_dense()), np.ones(2), rule=g)


def test_result_fields_one_input(net, x):
    att = refbbp.bbp(net, x)
    lin = net.linearize(x)
    assert att.beta.shape == x.shape and att.w.shape == x.shape
    assert_allclose(att.w, lin.w)
    assert_allclose(att.grad_input, lin.w * x)
    assert att.bias_x == lin.bias_x and att.value == lin.value
    assert att.fallback.shape == (len(net.nodes),)
    assert isinstance(att.fallback_total, float)
    assert att.layers is None
    assert att.rule == "sign" and att.temperature == 1.0 and att.backend == "cython"
    assert att.n_threads >= 1
    # forward pass; one reverse pass (gradients and BBp); per-node steps
    assert set(att.timings) == {"forward", "prepare", "propagate", "nodes"}
    assert set(att.timings["nodes"]) == set(range(1, len(net.nodes)))  # not the input
    assert_allclose(att.grad_input.sum() + att.beta.sum(), att.value, rtol=1e-12)


def test_layers(net, x):
    att = refbbp.bbp(net, x, return_layers=True)
    cuts = set(net.cut_nodes())
    assert [la.index for la in att.layers] == list(range(len(net.nodes)))
    for la, node in zip(att.layers, net.nodes):
        assert (la.name, la.op, la.kind, la.shape) == (node.name, node.op, node.kind,
                                                       node.shape)
        assert la.is_cut == (la.index in cuts)
        for a in (la.beta, la.beta_in, la.own, la.g, la.h, la.bias_x):
            assert a.shape == (node.size,)
        assert_allclose(la.beta, la.beta_in + la.own, rtol=0, atol=0)
        if node.kind != "affine":
            assert not la.own.any()
    # The output node receives nothing; the input node has no own bias.
    assert not att.layers[net.output].beta_in.any()
    assert_allclose(att.layers[0].beta, att.beta.ravel())
    # SPEC 3: sum(g (h - b^x)) + sum(beta) = f at every cut (the "total" form).
    for k in cuts:
        la = att.layers[k]
        lhs = np.sum(la.g * (la.h - la.bias_x)) + la.beta.sum()
        if la.kind == "input":
            lhs = np.sum(la.g * la.h) + la.beta.sum()
        assert_allclose(lhs, att.value, rtol=1e-12)


@pytest.mark.parametrize("target", [None, "pred", "top2", 1, np.array([0.5, -1.0, 2.0])],
                         ids=["none", "pred", "top2", "int", "vector"])
def test_targets(net, x, target):
    att = refbbp.bbp(net, x, target=target)
    lin = net.linearize(x, target)
    assert_allclose(att.value, lin.value)
    assert_allclose(att.beta.sum(), lin.bias_x, rtol=1e-12, atol=1e-14)
    assert att.completeness().ok()


def test_per_input_targets_batch(net, x):
    xs = np.stack([x, -x])
    att = refbbp.bbp(net, xs, target=[2, 0])
    assert att.beta.shape == xs.shape
    assert_allclose(att.beta.reshape(2, -1).sum(1), att.bias_x, rtol=1e-12)


def test_completeness_report(net, x):
    c = refbbp.bbp(net, x).completeness()
    assert isinstance(c, refbbp.Completeness)
    assert set(c.cuts) == set(net.cut_nodes())
    assert c.worst == max(c.bias_x, c.total, *c.cuts.values())
    assert c.ok() and c.worst < 1e-12
    assert "Completeness(" in str(c)


def test_completeness_detects_a_broken_attribution(net, x):
    att = refbbp.bbp(net, x)
    att.node_beta[0] = att.node_beta[0] + 1e-3
    c = att.completeness()
    assert not c.ok() and c.bias_x > 1e-9 and c.total > 1e-9


def test_numpy_backend_reports_no_threads(net, x):
    att = refbbp.bbp(net, x, backend="numpy")
    assert att.backend == "numpy" and att.n_threads is None


def test_structure_cache_is_reused_and_rebuilt(net):
    from refbbp.bbp.structure import node_structure
    k = next(k for k, n in enumerate(net.nodes) if n.kind == "affine")
    a = node_structure(net, k)
    assert node_structure(net, k) is a
    node = net.nodes[k]
    old = node.weights
    node.weights = [w.copy() for w in old]
    try:
        assert node_structure(net, k) is not a
    finally:
        node.weights = old
