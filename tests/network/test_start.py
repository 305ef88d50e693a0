"""Explaining from a chosen node (SPEC section 8): the cut network, the start argument
of linearize and decompose, and its refusals.

The bundled model normalises its input inside the graph (Sub, Div). From the node after
the normalisation, the local linear model must be that of the same ONNX graph with the
Sub and Div removed, evaluated at the normalised image ``z`` (built here with
onnx.helper), to 1e-12.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import refbbp
from refbbp import data
from refbbp.network.start import NORMALISATION, Start, normalisation_node, resolve_start
from tests.models import build_cnn, build_mlp, build_resnet

EXACT = 1e-12


@pytest.fixture(scope="module")
def bundled():
    net = refbbp.load(data.model_path())
    x, _ = data.load_samples()
    return net, x


def without_normalisation(model):
    """The bundled ONNX model minus its leading Sub/Div: its input is the normalised
    image, read by the node that read the Div's output."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    sub, div = graph.node[0], graph.node[1]
    assert (sub.op_type, div.op_type) == ("Sub", "Div")
    source, normalised = graph.input[0].name, div.output[0]
    del graph.node[:2]
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == normalised:
                node.input[i] = source
    kept = [init for init in graph.initializer
            if init.name not in (sub.input[1], div.input[1])]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.checker.check_model(out)
    return out


def test_start_bundled_after_normalisation_is_the_model_without_it(bundled):
    """w_z and b^z from the node after the normalisation equal the local linear model
    of the same graph with the Sub/Div removed, at z (to 1e-12)."""
    net, x = bundled
    plain = refbbp.load(without_normalisation(onnx.load(data.model_path())))
    lin = net.linearize(x, start=NORMALISATION)
    z = net.trace(x).values[1].reshape(x.shape)
    ref = plain.linearize(z)
    assert lin.start == Start(1, net.nodes[1].name)
    assert lin.w.shape == x.shape
    assert_array_equal(lin.logits, ref.logits)
    scale = np.abs(ref.w).max()
    assert np.abs(lin.w - ref.w).max() <= EXACT * scale
    assert np.abs(lin.bias_x - ref.bias_x).max() <= EXACT * np.abs(ref.bias_x).max()
    # completeness over z: w_z . z + b^z = f
    assert lin.check() <= 1e-9
    wz = (lin.w * z).reshape(len(x), -1).sum(1)
    assert_allclose(wz + lin.bias_x, lin.value, rtol=0, atol=1e-9 * np.abs(lin.value).max())


def test_start_bias_excludes_upstream_biases(bundled):
    """b^x = b^z + g_1 . b_1: from z the normalisation's bias -m/s is left out, and
    b^x from the input contains it (the constant-class effect of the bundled model)."""
    net, x = bundled
    full = net.linearize(x)
    from_z = net.linearize(x, start=1)
    upstream = (full.grads[1] * net.nodes[1].bias).sum(1)
    assert np.abs(upstream).max() > 1.0           # the normalisation's bias matters
    assert_allclose(from_z.bias_x + upstream, full.bias_x, rtol=0,
                    atol=1e-12 * np.abs(upstream).max())
    # the gradient over z is the gradient over x divided by the (diagonal) 1/std
    scale = net.nodes[1].weights[0].diagonal().reshape(x.shape[1:])
    assert_allclose(from_z.w * scale, full.w, rtol=1e-12, atol=1e-15)


def test_start_names_resolve_to_the_same_node(bundled):
    net, _ = bundled
    name = net.nodes[3].name
    assert {resolve_start(net, s) for s in (3, np.int64(3), "3", name)} == {3}
    assert {resolve_start(net, s) for s in (None, 0, "input")} == {0}
    assert resolve_start(net, NORMALISATION) == normalisation_node(net) == 1
    assert net.from_node(None) is net
    assert net.from_node(0) is net


def test_start_cut_network_structure(bundled):
    net, x = bundled
    sub = net.from_node(3)
    assert sub.start == Start(3, net.nodes[3].name)
    assert sub.origin == list(range(3, len(net.nodes)))
    assert sub.input_shape == (8, 14, 14)
    assert sub.nodes[0].kind == "input"
    for k, orig in enumerate(sub.origin[1:], start=1):
        assert all(a is b for a, b in zip(sub.nodes[k].weights, net.nodes[orig].weights))
        assert len(sub.nodes[k].weights) == len(net.nodes[orig].weights)
        assert sub.nodes[k].bias is net.nodes[orig].bias
    assert net.from_node(3) is sub                  # cached
    assert "cut at node 3" in repr(sub)
    assert_array_equal(sub.forward(net.trace(x).values[3].reshape((-1, 8, 14, 14))),
                       net.forward(x))


def test_start_cut_network_rebuilt_when_a_bias_is_replaced(rng):
    """The cached cut network follows a node whose bias object is replaced."""
    model, x = build_cnn(rng)
    net = refbbp.load(model)
    s = net.cut_nodes()[1]
    before = net.from_node(s)
    last = net.output
    net.nodes[last].bias = net.nodes[last].bias + 1.0
    after = net.from_node(s)
    assert after is not before
    assert_allclose(after.forward(net.trace(x).values[s].reshape(
        (-1,) + after.input_shape)), net.forward(x), rtol=1e-12, atol=1e-12)


def test_start_refuses_a_node_that_is_not_a_cut(bundled):
    net, x = bundled
    with pytest.raises(ValueError, match=r"start=4: node 4 \('/res_conv1/Conv\+/Relu_1'\) "
                       r"is not a cut: the edge from node 3 to node 6 bypasses it"):
        net.linearize(x, start=4)
    with pytest.raises(ValueError, match="not a cut"):
        refbbp.decompose(net, x, start=net.nodes[5].name)


@pytest.mark.parametrize("start, error, match", [
    ("nope", ValueError, "no node has that name"),
    (99, ValueError, r"out of range \[0, 10\)"),
    (-1, ValueError, "out of range"),
    (True, TypeError, "start must be None, a node index or a node name"),
    (1.0, TypeError, "got float"),
])
def test_start_refuses_bad_arguments(bundled, start, error, match):
    net, x = bundled
    with pytest.raises(error, match=match):
        net.linearize(x[0], start=start)


@pytest.mark.parametrize("builder", [build_mlp, build_resnet])
def test_start_after_normalisation_refused_without_a_normalisation(builder, rng):
    model, x = builder(rng)
    net = refbbp.load(model)
    reader = net.consumers()[0][0]
    name = re.escape(net.nodes[reader].name)
    with pytest.raises(ValueError, match=rf"no input normalisation .*node {reader} "
                       rf"\('{name}'.* is not an elementwise affine map"):
        net.linearize(x, start=NORMALISATION)


@pytest.mark.parametrize("builder", [build_cnn, build_resnet])
def test_start_every_cut_is_exact(builder, rng):
    """From every cut node: w . z + b^z = f, the decomposition is complete, and the
    results name their start."""
    model, x = builder(rng)
    net = refbbp.load(model)
    full = net.linearize(x)
    for s in net.cut_nodes():
        lin = net.linearize(x, start=s)
        assert lin.start.index == s
        assert lin.check() <= 1e-9
        assert_allclose(lin.value, full.value, rtol=0, atol=0)
        dec = refbbp.decompose(net, x, start=s)
        assert dec.check() <= 1e-9
        assert dec.start.index == s
        assert (str(dec.start) in dec.summary()) == (s > 0)
        # the gradient over z is the full network's gradient at node s
        assert_allclose(lin.grads[0], full.grads[s], rtol=1e-12, atol=1e-14)
