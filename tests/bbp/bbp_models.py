"""Small hand-built ONNX models for the BBp tests (onnx.helper, float32 weights).

Each builder returns an ``onnx.ModelProto`` with input ``"x"`` of shape
``("N", *input_shape)`` and output ``"y"`` (the logits). The random ones take a NumPy
generator. Random property tests draw their models from ``tests/strategies.py``; these
are the named cases: the hand-worked nets and the edge cases of SPEC section 3.
"""

from __future__ import annotations

import warnings

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import refbbp
from tests.helpers import with_output_shapes

__all__ = ["Graph", "load", "two_layer_dense", "one_conv", "mlp", "cnn_bn_maxpool",
           "residual", "concat", "prelu_negative", "saturating_clip", "scaled_mlp",
           "empty_row_pad", "maxpool_head"]


def load(model, storage="auto"):
    """refbbp.load without import notices."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", refbbp.ImportNotice)
        return refbbp.load(model, storage=storage)


class Graph:
    """A tiny ONNX graph builder: ``op`` appends a node and returns its output name."""

    def __init__(self, input_shape):
        self.input_shape = tuple(input_shape)
        self.nodes, self.inits = [], []
        self.n = 0

    def const(self, value, dtype=np.float32):
        name = f"c{self.n}"
        self.n += 1
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type, inputs, **attrs):
        out = f"t{self.n}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out],
                                           name=f"{op_type}_{self.n}", **attrs))
        self.n += 1
        return out

    def gemm(self, t, w, b):
        """``t @ w.T + b`` for w of shape (m, n)."""
        return self.op("Gemm", [t, self.const(w), self.const(b)], transB=1)

    def conv(self, t, w, b=None, **attrs):
        ins = [t, self.const(w)] + ([self.const(b)] if b is not None else [])
        return self.op("Conv", ins, kernel_shape=list(np.shape(w)[2:]), **attrs)

    def batchnorm(self, t, rng, c):
        params = [rng.uniform(0.5, 1.5, c), rng.normal(0, 0.3, c), rng.normal(0, 0.3, c),
                  rng.uniform(0.5, 2.0, c)]
        return self.op("BatchNormalization", [t] + [self.const(p) for p in params])

    def model(self, out):
        self.nodes.append(helper.make_node("Identity", [out], ["y"], name="out"))
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *self.input_shape])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        graph = helper.make_graph(self.nodes, "bbp_test", [x], [y], self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        return with_output_shapes(m)


def _he(rng, *shape, fan_in):
    return rng.normal(0, np.sqrt(2.0 / fan_in), shape)


def two_layer_dense():
    """x (2,) -> Gemm(W1, b1) -> Relu -> Gemm(W2, b2): the hand-worked dense net."""
    g = Graph((2,))
    h = g.op("Relu", [g.gemm("x", [[1, -1], [2, 1]], [2, -1])])
    return g.model(g.gemm(h, [[1, 2], [-1, 1]], [-1, 0.5]))


def one_conv():
    """x (1, 3, 3) -> Conv(1 -> 1, 2x2 kernel, bias -1) -> Relu -> Flatten: 4 outputs."""
    g = Graph((1, 3, 3))
    c = g.conv("x", np.array([[[[1, -1], [2, 1]]]]), np.array([-1.0]))
    return g.model(g.op("Flatten", [g.op("Relu", [c])], axis=1))


def mlp(rng, sizes=(6, 8, 5, 3), act="Relu"):
    """A dense net ``sizes[0] -> ... -> sizes[-1]`` with ``act`` between layers."""
    g = Graph((sizes[0],))
    t = "x"
    for i, (n, m) in enumerate(zip(sizes[:-1], sizes[1:])):
        t = g.gemm(t, _he(rng, m, n, fan_in=n), rng.normal(0, 0.3, m))
        if i < len(sizes) - 2:
            t = g.op(act, [t])
    return g.model(t)


def cnn_bn_maxpool(rng, c_in=2, hw=6):
    """Conv(pad 1) + BN + Relu -> MaxPool 2 -> Conv + Relu -> Flatten -> Gemm (3 classes)."""
    g = Graph((c_in, hw, hw))
    t = g.conv("x", _he(rng, 3, c_in, 3, 3, fan_in=9 * c_in), rng.normal(0, 0.3, 3),
               pads=[1, 1, 1, 1])
    t = g.op("Relu", [g.batchnorm(t, rng, 3)])
    t = g.op("MaxPool", [t], kernel_shape=[2, 2], strides=[2, 2])
    t = g.op("Relu", [g.conv(t, _he(rng, 4, 3, 2, 2, fan_in=12), rng.normal(0, 0.3, 4))])
    t = g.op("Flatten", [t], axis=1)
    n = 4 * (hw // 2 - 1) ** 2
    return g.model(g.gemm(t, _he(rng, 3, n, fan_in=n), rng.normal(0, 0.3, 3)))


def residual(rng, c=2, hw=5):
    """stem Conv+Relu -> [Conv+Relu -> Conv] + skip -> Relu -> GlobalAveragePool -> Gemm."""
    g = Graph((c, hw, hw))
    pad = dict(pads=[1, 1, 1, 1])
    s = g.op("Relu", [g.conv("x", _he(rng, c, c, 3, 3, fan_in=9 * c), rng.normal(0, .3, c),
                             **pad)])
    t = g.op("Relu", [g.conv(s, _he(rng, c, c, 3, 3, fan_in=9 * c), rng.normal(0, .3, c),
                             **pad)])
    t = g.conv(t, _he(rng, c, c, 3, 3, fan_in=9 * c), rng.normal(0, 0.3, c), **pad)
    t = g.op("Relu", [g.op("Add", [t, s])])
    t = g.op("Flatten", [g.op("GlobalAveragePool", [t])], axis=1)
    return g.model(g.gemm(t, _he(rng, 3, c, fan_in=c), rng.normal(0, 0.3, 3)))


def concat(rng, c=2, hw=4):
    """Two convs of the input, concatenated on the channels (a node with two inputs
    after the concat view) -> Relu-free Conv -> Relu -> Flatten -> Gemm."""
    g = Graph((c, hw, hw))
    a = g.op("Relu", [g.conv("x", _he(rng, 2, c, 3, 3, fan_in=9 * c), rng.normal(0, .3, 2),
                             pads=[1, 1, 1, 1])])
    b = g.op("Relu", [g.conv("x", _he(rng, 1, c, 1, 1, fan_in=c), rng.normal(0, .3, 1))])
    t = g.op("Concat", [a, b], axis=1)
    t = g.op("Relu", [g.conv(t, _he(rng, 2, 3, 2, 2, fan_in=12), rng.normal(0, 0.3, 2))])
    t = g.op("Flatten", [t], axis=1)
    n = 2 * (hw - 1) ** 2
    return g.model(g.gemm(t, _he(rng, 3, n, fan_in=n), rng.normal(0, 0.3, 3)))


def prelu_negative(rng, n=5, m=6):
    """Gemm -> PRelu with negative slopes -> Gemm."""
    g = Graph((n,))
    t = g.gemm("x", _he(rng, m, n, fan_in=n), rng.normal(0, 0.3, m))
    t = g.op("PRelu", [t, g.const(-rng.uniform(0.2, 0.9, m))])
    return g.model(g.gemm(t, _he(rng, 3, m, fan_in=m), rng.normal(0, 0.3, 3)))


def saturating_clip(rng, x, n=5, m=6, lo=-0.2, hi=0.2):
    """Gemm -> Clip(lo, hi) -> Gemm, with narrow bounds so that most elements saturate
    at ``x`` (the caller checks which)."""
    g = Graph((n,))
    t = g.gemm("x", _he(rng, m, n, fan_in=n), rng.normal(0, 0.3, m))
    t = g.op("Clip", [t, g.const(np.array(lo)), g.const(np.array(hi))])
    return g.model(g.gemm(t, _he(rng, 3, m, fan_in=m), rng.normal(0, 0.3, 3)))


def scaled_mlp(rng, scale, sizes=(5, 6, 3)):
    """An MLP whose weights and biases are multiplied by ``scale`` (e.g. 1e30, 1e-30)."""
    g = Graph((sizes[0],))
    t = "x"
    for i, (n, m) in enumerate(zip(sizes[:-1], sizes[1:])):
        t = g.gemm(t, _he(rng, m, n, fan_in=n) * scale, rng.normal(0, 0.3, m) * scale)
        if i < len(sizes) - 2:
            t = g.op("Relu", [t])
    return g.model(t)


def empty_row_pad(rng, c=1, hw=4, fill=0.5):
    """Conv + Relu -> Pad(constant ``fill``) -> MaxPool 2x2 -> Flatten -> Gemm.

    The MaxPool reads a view with constant elements, so the importer inserts a copy
    node ("/gather") whose padded elements are rows with no structural non-zero and
    bias ``fill`` (SPEC 3.6, second fallback) -- and a max row can select them.
    """
    g = Graph((c, hw, hw))
    t = g.op("Relu", [g.conv("x", _he(rng, c, c, 3, 3, fan_in=9 * c), rng.normal(0, .3, c),
                             pads=[1, 1, 1, 1])])
    t = g.op("Pad", [t, g.const(np.array([0, 0, 1, 1, 0, 0, 1, 1]), np.int64),
                     g.const(np.array(fill))], mode="constant")
    t = g.op("MaxPool", [t], kernel_shape=[2, 2], strides=[2, 2])
    t = g.op("Flatten", [t], axis=1)
    n = c * (hw // 2 + 1) ** 2
    return g.model(g.gemm(t, _he(rng, 3, n, fan_in=n), rng.normal(0, 0.3, 3)))


def maxpool_head():
    """x (1, 2, 2) -> MaxPool 2x2 -> Flatten -> Gemm (2 classes): a max node on the input."""
    g = Graph((1, 2, 2))
    t = g.op("Flatten", [g.op("MaxPool", ["x"], kernel_shape=[2, 2])], axis=1)
    return g.model(g.gemm(t, [[1.5], [-2.0]], [0.5, -0.25]))
