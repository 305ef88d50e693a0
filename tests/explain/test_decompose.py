"""Per-layer decompositions (SPEC section 4; companion paper eq. 11-15).

The central assertion: for EVERY cut ``l`` of every model,
``f = sum a^{h,l} + sum over affine nodes m downstream of l of sum a^{b,m}`` within
``1e-9 x scale``, ``scale`` being the sum of the absolute values of the terms added.
"Downstream" is recomputed here from the graph, independently of the module.

The models are built with ``onnx.helper`` (``build_*`` in ``tests/models.py``, shared with
the saliency, evaluation and bias-study tests) and drawn by Hypothesis from ``tests/strategies.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

import refbbp
from refbbp.explain.decompose import decompose, layer_shape
from tests import strategies
from tests.models import BUILDERS, build_cnn, build_resnet

TOL = 1e-9

# Hypothesis models may end in a Softmax, which refbbp drops (and says so).
pytestmark = pytest.mark.filterwarnings("ignore::refbbp.ImportNotice")


# ---------------------------------------------------------------------- the check
def descendants(net, cut):
    """Nodes reachable from ``cut`` (``cut`` excluded), from the nodes' input lists."""
    reach = np.zeros(len(net.nodes), bool)
    for k, node in enumerate(net.nodes):
        if k > cut and any(i == cut or reach[i] for i in node.inputs):
            reach[k] = True
    return np.flatnonzero(reach)


def assert_complete(net, dec, x):
    """Eq. 13 at every cut, for every input of the batch ``x``, from the raw arrays."""
    f = net.linearize(x, dec.target).value  # same target vectors
    batch = len(x)
    for cut in net.cut_nodes():
        terms = [dec.layers[cut].a_h.reshape(batch, -1)]
        terms += [dec.layers[m].a_b.reshape(batch, -1) for m in descendants(net, cut)
                  if net.nodes[m].kind == "affine"]
        total = sum(t.sum(1) for t in terms)
        scale = sum(np.abs(t).sum(1) for t in terms)
        err = np.abs(total - f)
        assert np.all(err <= TOL * scale + 1e-300), (cut, net.nodes[cut].name, err, scale)


# ------------------------------------------------------------------------- tests
@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_complete_at_every_cut(kind, rng):
    model, x = BUILDERS[kind](rng)
    net = refbbp.load(model)
    dec = decompose(net, x)
    assert_complete(net, dec, x)
    assert dec.check() <= TOL


@pytest.mark.parametrize("kind", sorted(BUILDERS))
@pytest.mark.parametrize("target", [0, "top2", "vector"])
def test_complete_for_other_targets(kind, target, rng):
    model, x = BUILDERS[kind](rng)
    net = refbbp.load(model)
    if target == "vector":
        target = rng.normal(size=net.n_outputs)
    dec = decompose(net, x, target=target)
    assert_complete(net, dec, x)


@settings(max_examples=60)  # ~ 40 ms per example (draw, load, decompose, check)
@given(strategies.models())
def test_complete_at_every_cut_property(example):
    model, x = example
    net = refbbp.load(model)
    dec = decompose(net, x[None])
    assert_complete(net, dec, x[None])


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_records_shapes_and_kinds(kind, rng):
    model, x = BUILDERS[kind](rng)
    net = refbbp.load(model)
    dec = decompose(net, x)
    cuts = set(net.cut_nodes())
    assert dec.cuts == net.cut_nodes()
    assert len(dec.layers) == len(net.nodes)
    for n, (la, node) in enumerate(zip(dec.layers, net.nodes)):
        assert (la.index, la.name, la.op, la.kind) == (n, node.name, node.op, node.kind)
        assert la.shape == layer_shape(net, n)
        assert int(np.prod(la.shape)) == node.size
        assert la.is_cut == (n in cuts)
        assert (la.a_h is not None) == (n in cuts)
        assert (la.a_b is not None) == (node.kind == "affine")
        for a in (la.a_h, la.a_b):
            if a is not None:
                assert a.shape == (len(x),) + la.shape
    assert dec.layers[0].shape == net.input_shape


def test_values_are_h_times_g_and_local_bias_times_g(rng):
    model, x = build_cnn(rng)
    net = refbbp.load(model)
    dec = decompose(net, x)
    lin = net.linearize(x)
    for la in dec.layers:
        g = lin.grads[la.index]
        if la.a_h is not None:
            np.testing.assert_array_equal(la.a_h.reshape(len(x), -1),
                                          lin.trace.values[la.index] * g)
        if la.a_b is not None:
            np.testing.assert_array_equal(la.a_b.reshape(len(x), -1),
                                          lin.trace.local_bias(la.index) * g)
    # l = 0 is gradient x input; its bias terms are the whole local bias b^x
    np.testing.assert_array_equal(dec.grad_input, x * lin.w)
    np.testing.assert_allclose(dec.bias_below(0), lin.bias_x, rtol=1e-12, atol=1e-12)
    # the output cut: a^h = v * logits, nothing downstream
    out = dec.layers[net.output]
    np.testing.assert_allclose(out.a_h, lin.target * lin.logits, rtol=0, atol=0)
    assert dec.downstream(net.output) == []


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_saturated_clip_offsets_are_needed(kind, rng):
    """The Clip's offsets d are part of the bias attribution: without them eq. 13 fails."""
    model, x = BUILDERS[kind](rng)
    net = refbbp.load(model)
    dec = decompose(net, x)
    lin = dec.linear
    clips = [n for n, node in enumerate(net.nodes)
             if node.activation is not None and node.activation.name == "Clip"]
    assert clips
    n = clips[0]
    c, d = lin.trace.slopes_offsets(n)
    assert np.any(d != 0), "the test model must saturate its Clip"
    without_d = (c * net.nodes[n].bias * lin.grads[n]).sum(1)
    with_d = dec.layers[n].a_b.reshape(len(x), -1).sum(1)
    offset_part = (d * lin.grads[n]).sum(1)
    np.testing.assert_allclose(with_d - without_d, offset_part, rtol=1e-12, atol=1e-15)
    assert np.max(np.abs(offset_part)) > 1e-3


def test_residual_block_nodes_count_downstream(rng):
    """In a residual network the nodes inside the block after a cut are downstream of it,
    and their bias terms are needed for eq. 13."""
    model, x = build_resnet(rng)
    net = refbbp.load(model)
    dec = decompose(net, x)
    cuts = net.cut_nodes()
    inside = [n for n in range(1, len(net.nodes)) if n not in cuts]
    assert inside, "the residual block must have non-cut nodes"
    before = max(c for c in cuts if c < min(inside))
    assert set(inside) <= set(dec.downstream(before))
    block_bias = sum(dec.layers[m].a_b.reshape(len(x), -1).sum(1) for m in inside
                     if dec.layers[m].a_b is not None)
    assert np.max(np.abs(block_bias)) > 1e-3
    assert dec.completeness_error(before).max() <= TOL
    with pytest.raises(ValueError, match="not a cut"):
        dec.completeness_error(inside[0])


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_batch_equals_single_inputs(kind, rng):
    model, x = BUILDERS[kind](rng)
    net = refbbp.load(model)
    batch = decompose(net, x)
    for i in range(len(x)):
        one = decompose(net, x[i])
        assert not one.batched and batch.batched
        assert one.value.shape == ()
        np.testing.assert_allclose(one.value, batch.value[i], rtol=1e-13)
        for lb, lo in zip(batch.layers, one.layers):
            for a, b in ((lb.a_h, lo.a_h), (lb.a_b, lo.a_b)):
                if a is not None:
                    np.testing.assert_allclose(b, a[i], rtol=1e-12, atol=1e-14)
            if lb.a_h is not None:
                np.testing.assert_allclose(lo.A_h, lb.A_h[i], rtol=1e-12, atol=1e-14)
        assert one.check() <= TOL


def test_spatial_maps_sum_channels(rng):
    model, x = build_resnet(rng)
    net = refbbp.load(model)
    dec = decompose(net, x)
    for la in dec.layers:
        if la.spatial:
            assert len(la.shape) == 3
            if la.a_h is not None:
                np.testing.assert_array_equal(la.a_h_map, la.a_h.sum(1))
            if la.a_b is not None:
                np.testing.assert_array_equal(la.a_b_map, la.a_b.sum(1))
        else:
            assert la.a_h_map is None and la.a_b_map is None
    spatial = dec.spatial_layers()
    assert spatial and all(dec.layers[n].is_cut and dec.layers[n].spatial for n in spatial)
    assert 0 not in spatial
    # dense nodes (the head) are not spatial layers
    assert net.output not in spatial


def test_summary_mentions_every_node(rng):
    model, x = build_cnn(rng)
    net = refbbp.load(model)
    text = decompose(net, x).summary(1)
    assert len(text.splitlines()) == len(net.nodes) + 3
    assert "completeness error" in text
