"""Pooling and reduction converters against onnxruntime: MaxPool, GlobalMaxPool (max
nodes), AveragePool, GlobalAveragePool, ReduceMean, ReduceSum (affine nodes)."""

import itertools

import numpy as np
import pytest

from tests.helpers import check_against_ort, make_model, make_node

OPSET = 19  # AveragePool's dilations arrived in opset 19

# (id, input shape (C, *spatial), attributes); shared by MaxPool and AveragePool.
POOL_CASES = [
    ("1d-k3", (2, 9), dict(kernel_shape=[3])),
    ("1d-k3-s2-pads1_0", (2, 9), dict(kernel_shape=[3], strides=[2], pads=[1, 0])),
    ("2d-k2-s2", (3, 6, 8), dict(kernel_shape=[2, 2], strides=[2, 2])),
    ("2d-k3-pads1", (2, 5, 6), dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])),
    ("2d-k3x2-s2x1-pads-asym", (2, 7, 6),
     dict(kernel_shape=[3, 2], strides=[2, 1], pads=[0, 1, 2, 0])),
    ("2d-dilations2x1", (2, 8, 7), dict(kernel_shape=[2, 3], dilations=[2, 1], pads=[1, 1, 0, 1])),
    ("2d-ceil", (2, 8, 7), dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    ("2d-ceil-pads", (2, 7, 7), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                     ceil_mode=1)),
    # ceil_mode's last window would start in the end padding: it is dropped
    # (5 + 1 + 1 - 2) / 2 rounds up to 3 -> 4 windows, the 4th starts at 6 >= 5 + 1.
    ("2d-ceil-last-window-in-padding", (2, 5, 5),
     dict(kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)),
    ("2d-ceil-dilated", (2, 9, 8), dict(kernel_shape=[2, 2], strides=[3, 2], dilations=[2, 2],
                                        ceil_mode=1)),
    ("2d-same_upper", (2, 7, 6), dict(kernel_shape=[3, 2], strides=[2, 2], auto_pad="SAME_UPPER")),
    ("2d-same_lower", (2, 7, 6), dict(kernel_shape=[3, 2], strides=[2, 2], auto_pad="SAME_LOWER")),
    ("2d-same_upper-k4", (2, 5, 5), dict(kernel_shape=[4, 4], auto_pad="SAME_UPPER")),
    ("2d-valid", (2, 7, 6), dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="VALID")),
    ("3d", (2, 4, 5, 4), dict(kernel_shape=[2, 3, 2], strides=[2, 1, 2], pads=[0, 1, 1, 1, 1, 0])),
]


def _pool_model(op, in_shape, attrs, relu=False, opset=OPSET):
    nodes = [make_node(op, ["x"], ["y"], **attrs)]
    if relu:
        nodes.append(make_node("Relu", ["y"], ["z"]))
    return make_model(nodes, {"x": in_shape}, ["z" if relu else "y"], {}, opset)


@pytest.mark.parametrize("in_shape,attrs", [pytest.param(*c[1:], id=c[0]) for c in POOL_CASES])
def test_maxpool(rng, in_shape, attrs):
    model = _pool_model("MaxPool", in_shape, attrs)
    # Negative values everywhere: padding must never win the maximum.
    net = check_against_ort(model, -1.0 - rng.random((2,) + in_shape))
    assert [n.kind for n in net.nodes] == ["input", "max"]


def _first_max_reference(x, kernel, strides, pads, dilations, out):
    """Max pooling of one (C, H, W) input, by loops: the selected flat input index is the
    first maximum in row-major window order, padding excluded."""
    c_n, h, w = x.shape
    sel = np.empty((c_n,) + tuple(out), np.int64)
    for c, i, j in itertools.product(range(c_n), range(out[0]), range(out[1])):
        best, arg = -np.inf, -1
        for ki, kj in itertools.product(range(kernel[0]), range(kernel[1])):
            r = i * strides[0] + ki * dilations[0] - pads[0]
            s = j * strides[1] + kj * dilations[1] - pads[1]
            if 0 <= r < h and 0 <= s < w and x[c, r, s] > best:
                best, arg = x[c, r, s], (c * h + r) * w + s
        sel[c, i, j] = arg
    return sel.ravel()


@pytest.mark.parametrize("values", ["all-equal", "two-levels"])
@pytest.mark.parametrize("kernel,strides,pads,dilations", [
    pytest.param([2, 2], [2, 2], [0, 0, 0, 0], [1, 1], id="k2-s2"),
    pytest.param([3, 3], [1, 1], [1, 1, 1, 1], [1, 1], id="k3-pads1"),
    pytest.param([3, 2], [2, 1], [1, 0, 1, 1], [1, 2], id="k3x2-dilated"),
])
def test_maxpool_ties_select_first_in_window_order(rng, kernel, strides, pads, dilations, values):
    shape = (2, 6, 7)
    x = (np.zeros(shape) if values == "all-equal"
         else rng.integers(0, 2, size=shape).astype(np.float64))
    attrs = dict(kernel_shape=kernel, strides=strides, pads=pads, dilations=dilations)
    model = _pool_model("MaxPool", shape, attrs)
    net = check_against_ort(model, x[None])
    out = net.nodes[1].shape[2:]
    trace = net.trace(x)
    np.testing.assert_array_equal(
        trace.selected[1][0], _first_max_reference(x, kernel, strides, pads, dilations, out))


@pytest.mark.parametrize("count_include_pad", [0, 1], ids=["exclude_pad", "include_pad"])
@pytest.mark.parametrize("in_shape,attrs", [pytest.param(*c[1:], id=c[0]) for c in POOL_CASES])
def test_average_pool(rng, in_shape, attrs, count_include_pad):
    model = _pool_model("AveragePool", in_shape, dict(attrs, count_include_pad=count_include_pad),
                        relu=True)
    net = check_against_ort(model, rng.standard_normal((2,) + in_shape))
    assert [n.op for n in net.nodes] == ["Input", "AveragePool"]
    assert net.nodes[1].activation is not None


@pytest.mark.parametrize("opset", [7, 10, 11])
def test_average_pool_old_opsets(rng, opset):
    attrs = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 1, 1], count_include_pad=1)
    if opset >= 10:
        attrs["ceil_mode"] = 1
    model = _pool_model("AveragePool", (2, 6, 7), attrs, opset=opset)
    check_against_ort(model, rng.standard_normal((2, 2, 6, 7)))


@pytest.mark.parametrize("opset", [8, 10, 12])
def test_maxpool_old_opsets(rng, opset):
    attrs = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 1, 1])
    if opset >= 10:
        attrs.update(ceil_mode=1, dilations=[1, 2])
    check_against_ort(_pool_model("MaxPool", (2, 6, 7), attrs, opset=opset),
                      rng.standard_normal((2, 2, 6, 7)))


@pytest.mark.parametrize("in_shape", [(3, 7), (3, 5, 4), (2, 3, 4, 2)], ids=["1d", "2d", "3d"])
@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
def test_global_pool(rng, op, in_shape):
    net = check_against_ort(_pool_model(op, in_shape, {}, relu=True),
                            rng.standard_normal((2,) + in_shape))
    assert net.nodes[-1].shape == (1, in_shape[0]) + (1,) * (len(in_shape) - 1)


def _reduce_model(op, opset, axes, keepdims, noop=None, relu=True):
    """``op`` over ``axes`` of a (N, 3, 4, 5) input: axes as an attribute before ReduceSum-13 /
    ReduceMean-18, as an input from then on (``None``: not given)."""
    attrs, inputs, inits = {}, ["x"], {}
    axes_as_input = (op == "ReduceSum" and opset >= 13) or (op == "ReduceMean" and opset >= 18)
    if keepdims is not None:
        attrs["keepdims"] = keepdims
    if noop is not None:
        attrs["noop_with_empty_axes"] = noop
    if axes is not None:
        if axes_as_input:
            inits["axes"] = np.array(axes, np.int64)
            inputs.append("axes")
        else:
            attrs["axes"] = axes
    nodes = [make_node(op, inputs, ["y"], **attrs)]
    if relu:
        nodes.append(make_node("Relu", ["y"], ["z"]))
    return make_model(nodes, {"x": (3, 4, 5)}, ["z" if relu else "y"], inits, opset)


@pytest.mark.parametrize("keepdims", [None, 0, 1], ids=["keepdims_default", "keepdims0",
                                                        "keepdims1"])
@pytest.mark.parametrize("axes", [[1], [2, 3], [-1], [1, -2], [3, 1]],
                         ids=lambda a: "axes" + "_".join(map(str, a)))
@pytest.mark.parametrize("op,opset", [("ReduceMean", 13), ("ReduceMean", 18),
                                      ("ReduceSum", 11), ("ReduceSum", 13)],
                         ids=lambda v: str(v))
def test_reduce(rng, op, opset, axes, keepdims):
    model = _reduce_model(op, opset, axes, keepdims)
    net = check_against_ort(model, rng.standard_normal((2, 3, 4, 5)))
    assert [n.op for n in net.nodes] == ["Input", op]


# Reducing over every axis includes the batch axis: per sample that is the same only
# with one sample, so these run on a batch of one.
@pytest.mark.parametrize("op,opset,axes,noop,identity", [
    pytest.param("ReduceSum", 11, None, None, False, id="ReduceSum-11-no-axes"),
    pytest.param("ReduceMean", 13, None, None, False, id="ReduceMean-13-no-axes"),
    pytest.param("ReduceSum", 13, None, None, False, id="ReduceSum-13-no-axes"),
    pytest.param("ReduceSum", 13, [], 0, False, id="ReduceSum-13-empty-axes"),
    pytest.param("ReduceSum", 13, None, 1, True, id="ReduceSum-13-no-axes-noop"),
    pytest.param("ReduceSum", 13, [], 1, True, id="ReduceSum-13-empty-axes-noop"),
    pytest.param("ReduceMean", 18, None, 0, False, id="ReduceMean-18-no-axes"),
    pytest.param("ReduceMean", 18, None, 1, True, id="ReduceMean-18-no-axes-noop"),
])
@pytest.mark.parametrize("keepdims", [0, 1], ids=["keepdims0", "keepdims1"])
def test_reduce_all_or_noop(rng, op, opset, axes, noop, keepdims, identity):
    model = _reduce_model(op, opset, axes, keepdims, noop)
    net = check_against_ort(model, rng.standard_normal((1, 3, 4, 5)))
    assert net.n_outputs == (60 if identity else 1)
