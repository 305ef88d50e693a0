"""Unit tests of Network, Trace and linearize (SPEC sections 1-2).

Small networks are written by hand (nodes and matrices), so that every expected number
is worked out here; graph-shaped questions (cut nodes) also use ONNX models built with
the strategies' Sketch.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_allclose, assert_array_equal

import refbbp
from refbbp import InputShapeError, Network, Node, PiecewiseLinear
from tests.strategies import Sketch

EXACT = 1e-12


def relu(n):
    return PiecewiseLinear.uniform("Relu", n, [0.0], [0.0, 1.0], [0.0, 0.0])


def clip(n, lo, hi):
    return PiecewiseLinear.uniform("Clip", n, [lo, hi], [0.0, 1.0, 0.0], [lo, 0.0, hi])


W1 = np.array([[1.0, 2.0], [-1.0, 1.0], [0.5, -2.0]])
B1 = np.array([0.1, -0.2, 0.3])
W2 = np.array([[1.0, -1.0, 2.0], [0.0, 3.0, -1.0], [-2.0, 1.0, 1.0]])
B2 = np.array([0.5, -0.5, 0.0])


def mlp(activation=relu):
    """x (2,) -> activation(W1 x + B1) -> W2 . + B2 (3 outputs)."""
    nodes = [Node("x", "input", "Input", (2,)),
             Node("h", "affine", "Gemm", (3,), [0], [W1], B1.copy(), activation(3)),
             Node("out", "affine", "Gemm", (3,), [1], [sp.csr_array(W2)], B2.copy())]
    return Network(nodes, 2, (2,))


def chain(inputs_of, output=None):
    """A network whose node k reads ``inputs_of[k - 1]`` (identity-like 1-element maps)."""
    nodes = [Node("x", "input", "Input", (1,))]
    for k, ins in enumerate(inputs_of, start=1):
        nodes.append(Node(f"n{k}", "affine", "Add", (1,), list(ins),
                          [np.ones((1, 1)) for _ in ins]))
    return Network(nodes, len(nodes) - 1 if output is None else output, (1,))


def load(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", refbbp.ImportNotice)
        return refbbp.load(model)


# ------------------------------------------------------------------ construction
BAD_NETWORKS = [
    # node 0 must be the input
    (lambda: Network([Node("h", "affine", "Gemm", (3,), [], [])], 0, (3,)), "node 0"),
    # node 1 reads node 2, which comes after it
    (lambda: Network([Node("x", "input", "Input", (1,)),
                      Node("a", "affine", "Add", (1,), [2], [np.ones((1, 1))]),
                      Node("b", "affine", "Add", (1,), [0], [np.ones((1, 1))])], 2, (1,)),
     "not topological"),
    # a weight of the wrong shape
    (lambda: Network([Node("x", "input", "Input", (2,)),
                      Node("h", "affine", "Gemm", (3,), [0], [np.ones((3, 3))])], 1, (2,)),
     r"weight shape \(3, 3\), expected \(3, 2\)"),
]


@pytest.mark.parametrize("make, match", BAD_NETWORKS)
def test_invalid_networks_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# ---------------------------------------------------------------------- forward
def test_forward_and_local_model_by_hand():
    net = mlp()
    x = np.array([1.0, -1.0])
    y1 = W1 @ x + B1                          # [-0.9, -2.2, 2.8]: only the last is active
    c = (y1 > 0).astype(float)
    logits = W2 @ (c * y1) + B2
    assert_allclose(net.forward(x), logits, rtol=EXACT)
    lm = net.linearize(x, target=2)
    jac = W2 @ np.diag(c) @ W1
    assert_allclose(lm.w, jac[2], rtol=EXACT)
    assert_allclose(lm.bias_x, (W2 @ (c * B1) + B2)[2], rtol=EXACT)
    assert_allclose(lm.value, logits[2], rtol=EXACT)
    assert_array_equal(lm.pattern[1], [c.astype(np.int8)])
    assert lm.check() <= EXACT
    # The frozen network at 0 is the local bias of every output at once.
    assert_allclose(lm.bias_x_all(), W2 @ (c * B1) + B2, rtol=EXACT)


def test_saturated_clip_offsets_go_into_the_bias():
    """Clip(-0.5, 0.5): a saturated element contributes its bound d to b^x (c = 0)."""
    net = mlp(lambda n: clip(n, -0.5, 0.5))
    x = np.array([0.1, 0.0])                  # y1 = [0.2, -0.3, 0.35]: all linear
    x2 = np.array([1.0, -1.0])                # y1 = [-0.9, -2.2, 2.8]: all saturated
    t = net.trace(np.stack([x, x2]))
    assert_array_equal(t.pieces[1], [[1, 1, 1], [0, 0, 2]])
    assert_allclose(t.local_bias(1), [B1, [-0.5, -0.5, 0.5]], rtol=EXACT)
    lm = net.linearize(x2, target=0)
    assert_allclose(lm.w, [0.0, 0.0], atol=0)
    assert_allclose(lm.bias_x, lm.value, rtol=EXACT)
    assert_allclose(lm.value, W2[0] @ [-0.5, -0.5, 0.5] + B2[0], rtol=EXACT)


def test_breakpoints_belong_to_the_left_piece():
    """ReLU at exactly 0 is on the piece (-inf, 0]: slope 0 (SPEC section 1)."""
    act = relu(3)
    assert_array_equal(act.pieces(np.array([[-1.0, 0.0, 1e-300]])), [[0, 0, 1]])
    lo_hi = clip(2, -1.0, 1.0)
    assert_array_equal(lo_hi.pieces(np.array([[-1.0, 1.0]])), [[0, 1]])


def max_net():
    """x (4,) -> max over windows [[0, 1], [1, 2, 3], [-1, 3]] (-1: padding)."""
    nodes = [Node("x", "input", "Input", (4,)),
             Node("m", "max", "MaxPool", (3,), [0],
                  window=np.array([[0, 1, -1], [1, 2, 3], [-1, 3, -1]]))]
    return Network(nodes, 1, (4,))


def test_max_node_selects_first_maximum_and_never_padding():
    net = max_net()
    x = np.array([2.0, 2.0, -1.0, -3.0])     # tie in window 0; window 2 is all < 0
    t = net.trace(x)
    assert_array_equal(t.selected[1], [[0, 1, 3]])
    assert_allclose(net.forward(x), [2.0, 2.0, -3.0], rtol=0)
    lm = net.linearize(x, np.array([1.0, 1.0, 1.0]))
    assert_allclose(lm.w, [1.0, 1.0, 0.0, 1.0], rtol=0)
    assert lm.bias_x == 0.0


def test_frozen_values_without_bias_are_directional_derivatives():
    net = mlp(lambda n: PiecewiseLinear.uniform("LeakyRelu", n, [0.0], [0.1, 1.0], [0.0, 0.0]))
    x, d = np.array([0.3, -0.2]), np.array([1.0, 2.0])
    t = net.trace(x)
    c = np.where(W1 @ x + B1 > 0, 1.0, 0.1)
    pre, values = net.frozen_values(t, d, bias=False)
    assert_allclose(pre[1][0], W1 @ d, rtol=EXACT)
    assert_allclose(values[2][0], W2 @ (c * (W1 @ d)), rtol=EXACT)
    assert_allclose(net.frozen_forward(t, x), t.logits, rtol=EXACT)


# -------------------------------------------------------------------- cut nodes
@pytest.mark.parametrize("inputs_of, output, cuts", [
    # a chain: every node is a cut
    ([[0], [1], [2]], None, [0, 1, 2, 3]),
    # a residual block 1 -> 2 -> 3 = Add(1, 2): node 2 is bypassed
    ([[0], [1], [1, 2], [3]], None, [0, 1, 3, 4]),
    # a skip from the input itself: only the input and the Add
    ([[0], [0, 1]], None, [0, 2]),
    # two nested blocks: 1 -> {2 -> 3} -> 4 = Add(1, 3), 5 = Add(4, 2)
    ([[0], [1], [2], [1, 3], [4, 2]], None, [0, 1, 5]),
    # node 2 is dead (nothing the output needs reads it): it does not spoil node 1
    ([[0], [0], [1]], None, [0, 1, 3]),
    # the output is not the last node: cuts stop at the output
    ([[0], [1], [2]], 2, [0, 1, 2]),
])
def test_cut_nodes_hand_made(inputs_of, output, cuts):
    assert chain(inputs_of, output).cut_nodes() == cuts


def residual_model(rng, softmax=False):
    """Conv + Relu -> [Conv -> Relu -> Conv] + skip -> Relu -> Flatten -> Gemm
    [-> Softmax]."""
    g = Sketch(rng, rng.normal(size=(2, 5, 5)).astype(np.float32))
    g.op("Conv", ["x", g.const(g.weights(2, 2, 3, 3, fan_in=18), "W"),
                  g.const(g.bias(2), "b")], pads=[1] * 4)
    skip = g.op("Relu", [g.cur])
    g.op("Conv", [skip, g.const(g.weights(2, 2, 3, 3, fan_in=18), "W")], pads=[1] * 4)
    g.op("Relu", [g.cur])
    g.op("Conv", [g.cur, g.const(g.weights(2, 2, 3, 3, fan_in=18), "W"),
                  g.const(g.bias(2), "b")], pads=[1] * 4)
    g.op("Add", [skip, g.cur])
    g.op("Relu", [g.cur])
    g.op("Flatten", [g.cur])
    g.op("Gemm", [g.cur, g.const(g.weights(3, 50, fan_in=50), "W"), g.const(g.bias(3), "c")],
         transB=1)
    if softmax:
        g.op("Softmax", [g.cur])
    return g.example()


def test_cut_nodes_of_a_residual_model(rng):
    model, x = residual_model(rng)
    net = load(model)
    # input, conv1+relu, conv2+relu, conv3, add+relu, gemm
    assert [n.op for n in net.nodes] == ["Input", "Conv", "Conv", "Conv", "Add", "Gemm"]
    assert net.cut_nodes() == [0, 1, 4, 5]
    # What makes a cut a cut: f = g_n . h_n + the bias terms of the nodes after it
    # (SPEC sections 3-4). Inside the block this does not hold.
    lm = net.linearize(x)
    terms = [t[0].sum() for t in lm.node_bias_terms()]
    for n in range(len(net.nodes)):
        rebuilt = np.sum(lm.grads[n][0] * lm.trace.values[n][0]) + sum(terms[n + 1:])
        if n in net.cut_nodes():
            assert abs(rebuilt - lm.value) <= 1e-9 * (abs(lm.value) + np.abs(terms).sum())
        else:
            assert abs(rebuilt - lm.value) > 1e-6, n


def test_cut_nodes_of_a_sequential_model(rng):
    g = Sketch(rng, rng.normal(size=(4,)).astype(np.float32))
    for n_out in (5, 3):
        g.op("Gemm", [g.cur, g.const(g.weights(n_out, g.shape()[1], fan_in=4), "W")], transB=1)
        g.op("Relu", [g.cur])
    g.op("Softmax", [g.cur])
    net = load(g.model())
    assert net.cut_nodes() == list(range(len(net.nodes))) == [0, 1, 2]


# ----------------------------------------------------------------------- targets
X = np.array([1.0, -1.0])
LOGITS = W2 @ np.maximum(W1 @ X + B1, 0) + B2     # [6.1, -3.3, 2.8]: order 0, 2, 1


@pytest.mark.parametrize("target, v", [
    (None, [1, 0, 0]),                      # the predicted class
    ("pred", [1, 0, 0]),
    ("top2", [1, 0, -1]),                   # top-1 minus top-2
    (2, [0, 0, 1]),
    (np.int32(1), [0, 1, 0]),
    (np.uint8(1), [0, 1, 0]),
    ([1], [0, 1, 0]),                       # one class per input (here: one input)
    (np.array([0.5, 0.0, -2.0]), [0.5, 0, -2]),
    ([0.5, 0.0, -2.0], [0.5, 0, -2]),
    (np.array([[0.5, 0.0, -2.0]]), [0.5, 0, -2]),
    (np.array([1, 0, -1], np.float32), [1, 0, -1]),
])
def test_targets(target, v):
    lm = mlp().linearize(X, target)
    assert_allclose(LOGITS, [6.1, -3.3, 2.8], rtol=1e-12)
    assert_array_equal(lm.target, v)
    assert_allclose(lm.value, np.dot(v, LOGITS), rtol=EXACT)
    assert lm.check() <= EXACT


def test_targets_per_input_in_a_batch():
    net = mlp()
    xs = np.stack([X, [0.2, 0.4], [-1.0, 0.5]])
    logits = net.forward(xs)
    lm = net.linearize(xs, [2, 0, 1])
    assert_allclose(lm.value, logits[[0, 1, 2], [2, 0, 1]], rtol=EXACT)
    lm = net.linearize(xs, np.array([1, 1, 1]))   # an int array: classes per input
    assert_allclose(lm.value, logits[:, 1], rtol=EXACT)
    lm = net.linearize(xs, 1)                     # one class for all
    assert_allclose(lm.value, logits[:, 1], rtol=EXACT)
    v = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, -1.0]])
    assert_allclose(net.linearize(xs, v).value, np.einsum("bo,bo->b", v, logits), rtol=EXACT)
    pred = net.linearize(xs)
    assert_array_equal(np.argmax(pred.target, 1), np.argmax(logits, 1))
    top2 = net.linearize(xs, "top2")
    order = np.argsort(-logits, 1)
    rows = np.arange(3)
    assert_allclose(top2.value, logits[rows, order[:, 0]] - logits[rows, order[:, 1]])


BAD_TARGETS = [
    ("best", ValueError, "target 'best' not understood"),        # unknown name
    (3, InputShapeError, r"out of range \[0, 3\)"),              # one past the last class
    (-1, InputShapeError, "out of range"),                       # no negative indexing
    ([0, 1], InputShapeError, r"one per input: 1"),              # two classes, one input
    (np.array([1.0, 2.0]), InputShapeError, "float vector of 3"),  # wrong length
    (np.ones((2, 3)), InputShapeError, "not understood"),        # vectors for 2 inputs, 1 given
    (1.0, InputShapeError, "not understood"),                    # a float is not a class
    (True, InputShapeError, "dtype bool"),                       # nor is a bool
    (np.array([[0, 1, 0]]), InputShapeError, "not understood"),  # integer "vector"
    (np.array([np.nan, 0, 1]), InputShapeError, "NaN or infinite"),  # would give NaN w
    (np.array([np.inf, 0, 1]), InputShapeError, "NaN or infinite"),
]


@pytest.mark.parametrize("target, error, match", BAD_TARGETS,
                         ids=[str(np.asarray(t).tolist()) for t, _, _ in BAD_TARGETS])
def test_bad_targets_raise(target, error, match):
    with pytest.raises(error, match=match):
        mlp().linearize(X, target)


def test_top2_needs_two_outputs():
    nodes = [Node("x", "input", "Input", (2,)),
             Node("o", "affine", "Gemm", (1,), [0], [np.ones((1, 2))])]
    net = Network(nodes, 1, (2,))
    assert net.linearize(X).value == 0.0
    with pytest.raises(ValueError, match="'top2' needs at least 2 outputs"):
        net.linearize(X, "top2")


# ------------------------------------------------------------------------ inputs
BAD_INPUTS = [
    (np.zeros(3), "input of shape (3,) does not fit"),          # wrong size
    (np.zeros((1, 2, 1)), "input of shape (1, 2, 1) does not fit"),  # extra trailing axis
    (np.zeros((1, 1, 2)), "does not fit"),                       # two batch axes
    (np.float64(1.0), "input of shape () does not fit"),        # a scalar
    (np.zeros((0, 2)), "empty batch"),                           # no inputs at all
    (np.array(["a", "b"]), "must be numeric, got dtype <U1"),   # strings
    (np.array([1 + 1j, 0]), "must be numeric, got dtype complex128"),
    (np.array([1.0, None]), "must be numeric, got dtype object"),
    (np.array([np.nan, 0.0]), "NaN or infinite"),               # NaN input refused
    (np.array([[0.0, 0.0], [np.inf, 0.0]]), "NaN or infinite"),  # in any row of a batch
    (np.array([-np.inf, 0.0]), "NaN or infinite"),
]


@pytest.mark.parametrize("x, match", BAD_INPUTS, ids=[
    "size", "trailing-axis", "two-batch-axes", "scalar", "empty-batch", "str", "complex",
    "object", "nan", "inf-in-batch", "-inf"])
@pytest.mark.parametrize("call", ["forward", "trace", "linearize"])
def test_bad_inputs_raise(x, match, call):
    with pytest.raises(InputShapeError, match=re.escape(match)):
        getattr(mlp(), call)(x)


@pytest.mark.parametrize("x, shape", [
    ([1, -1], (3,)),                             # a list of ints: one input
    (np.array([1, -1], np.int8), (3,)),
    (np.array([True, False]), (3,)),
    (np.ones((4, 2), np.float32), (4, 3)),       # a batch
    (np.ones((1, 2)), (1, 3)),                   # a batch of one keeps its axis
])
def test_inputs_accepted(x, shape):
    net = mlp()
    out = net.forward(x)
    assert out.shape == shape and out.dtype == np.float64
    xb, batched = net.as_batch(x)
    assert xb.dtype == np.float64 and xb.flags.c_contiguous
    assert batched == (len(shape) == 2)
    assert_allclose(out.reshape(-1, 3)[0], net.forward(np.asarray(x, float).reshape(-1, 2)[0]))


def test_batch_axis_of_results():
    net = mlp()
    one, batch = net.linearize(X), net.linearize(X[None])
    assert one.w.shape == (2,) and one.bias_x.shape == () and one.logits.shape == (3,)
    assert batch.w.shape == (1, 2) and batch.bias_x.shape == (1,) and batch.logits.shape == (1, 3)
    assert one.bias_x_all().shape == (3,) and batch.bias_x_all().shape == (1, 3)
    assert_allclose(batch.w[0], one.w, rtol=0)


# ----------------------------------------------------------------------- summary
@pytest.mark.parametrize("storage", ["auto", "csr"])
def test_summary(rng, storage):
    model, x = residual_model(rng, softmax=True)
    with pytest.warns(refbbp.ImportNotice, match="dropped the final Softmax"):
        net = refbbp.load(model, storage=storage)
    text = net.summary()
    lines = text.splitlines()
    assert lines[0].split() == ["#", "name", "op", "kind", "inputs", "shape", "act",
                                "storage", "nnz", "bytes"]
    assert set(lines[1]) == {"-"}
    rows = lines[2:2 + len(net.nodes)]
    for k, (row, node) in enumerate(zip(rows, net.nodes)):
        cells = row.split()
        assert cells[0] == str(k) and node.op in cells and node.kind in cells
        assert "x".join(map(str, node.shape)) in cells
        assert f"{node.nnz:,}" in cells
    # The convolution's storage: a window matrix unless storage="csr" asks to unroll it.
    conv_storage = "window" if storage == "auto" else "csr"
    assert "Relu" in rows[1] and conv_storage in rows[1].split() and "dense" in rows[5]
    assert "1,3" in rows[4]                       # the Add reads the skip and the branch
    assert lines[2 + len(net.nodes)].startswith(
        "6 nodes, input (2, 5, 5), 3 outputs (node 5), ")
    assert lines[-1].startswith("note: dropped the final Softmax")
    assert str(net) == text
    assert repr(net) == "<Network 6 nodes, input (2, 5, 5), 3 outputs>"


def test_summary_clips_long_names():
    nodes = [Node("x" * 40, "input", "Input", (2,)),
             Node("h", "affine", "Gemm", (3,), [0], [W1], B1.copy(), relu(3))]
    text = Network(nodes, 1, (2,)).summary()
    assert "x" * 31 + "~" in text and "x" * 32 not in text
