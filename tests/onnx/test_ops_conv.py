"""Conv and ConvTranspose converters against onnxruntime.

Each case is a one-node model (or Conv -> Relu, to put an activation on the unrolled
matrix). The one-hot tests read the unrolled CSR matrix column by column, as onnx's
``test_conv`` does: the response to the j-th unit input, minus the response to 0, is
column j.
"""

import numpy as np
import pytest

import refbbp
from tests.helpers import (check_against_ort, make_model, make_node,
                           run_onnx_reference, run_ort)

# (id, input shape (C, *spatial), weight shape (M, C/group, *kernel), attributes)
CONV_CASES = [
    ("1d", (3, 11), (4, 3, 3), {}),
    ("1d-stride2-pads1_2", (3, 11), (4, 3, 3), dict(strides=[2], pads=[1, 2])),
    ("1d-dilation2", (2, 12), (3, 2, 3), dict(dilations=[2])),
    ("1d-same_upper-stride2", (2, 10), (3, 2, 4), dict(auto_pad="SAME_UPPER", strides=[2])),
    ("1d-same_lower-stride3", (2, 10), (3, 2, 4), dict(auto_pad="SAME_LOWER", strides=[3])),
    ("2d", (3, 7, 8), (5, 3, 3, 3), {}),
    ("2d-k2x3", (3, 7, 8), (4, 3, 2, 3), {}),
    ("2d-pads-asym", (3, 7, 8), (4, 3, 3, 3), dict(pads=[0, 1, 2, 3])),
    ("2d-strides2x3", (2, 9, 10), (3, 2, 3, 3), dict(strides=[2, 3], pads=[1, 1, 1, 1])),
    ("2d-dilations2x1", (2, 9, 8), (3, 2, 3, 2), dict(dilations=[2, 1], pads=[2, 0, 1, 1])),
    ("2d-group2", (4, 6, 6), (6, 2, 3, 3), dict(group=2, pads=[1, 1, 1, 1])),
    ("2d-depthwise", (4, 6, 7), (4, 1, 3, 3), dict(group=4, pads=[1, 1, 1, 1])),
    ("2d-depthwise-mult2", (3, 6, 6), (6, 1, 3, 3), dict(group=3, strides=[2, 2])),
    ("2d-same_upper", (2, 7, 6), (3, 2, 3, 4), dict(auto_pad="SAME_UPPER")),
    ("2d-same_lower", (2, 7, 6), (3, 2, 3, 4), dict(auto_pad="SAME_LOWER")),
    ("2d-same_lower-stride2", (2, 9, 8), (3, 2, 2, 3), dict(auto_pad="SAME_LOWER", strides=[2, 2])),
    ("2d-valid", (2, 7, 6), (3, 2, 3, 3), dict(auto_pad="VALID", strides=[2, 1])),
    ("2d-1x1", (5, 4, 4), (3, 5, 1, 1), {}),
    ("2d-kernel_shape-attr", (2, 5, 5), (3, 2, 3, 3), dict(kernel_shape=[3, 3])),
    ("2d-kernel-covers-input", (2, 3, 3), (4, 2, 3, 3), {}),
    ("3d", (2, 5, 4, 6), (3, 2, 2, 3, 2), dict(pads=[1, 0, 1, 0, 2, 1], strides=[1, 2, 1])),
    ("3d-group2-same_upper", (4, 4, 5, 3), (2, 2, 3, 2, 2), dict(group=2, auto_pad="SAME_UPPER")),
]


def _conv_model(op, in_shape, w, bias, attrs, relu, opset=17):
    inits = {"W": w}
    inputs = ["x", "W"]
    if bias is not None:
        inits["B"] = bias
        inputs.append("B")
    nodes = [make_node(op, inputs, ["y"], **attrs)]
    if relu:
        nodes.append(make_node("Relu", ["y"], ["z"]))
    return make_model(nodes, {"x": in_shape}, ["z" if relu else "y"], inits, opset)


@pytest.mark.parametrize("relu", [False, True], ids=["linear", "relu"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("in_shape,w_shape,attrs",
                         [pytest.param(*c[1:], id=c[0]) for c in CONV_CASES])
def test_conv(rng, in_shape, w_shape, attrs, with_bias, relu):
    w = rng.standard_normal(w_shape)
    bias = rng.standard_normal(w_shape[0]) if with_bias else None
    model = _conv_model("Conv", in_shape, w, bias, attrs, relu)
    net = check_against_ort(model, rng.standard_normal((2,) + in_shape))
    assert [n.op for n in net.nodes] == ["Input", "Conv"]
    assert (net.nodes[1].activation is not None) == relu


# onnxruntime refuses dilations with SAME padding ("Dilation not supported for
# AutoPadType::SAME_UPPER or AutoPadType::SAME_LOWER"); ONNX's reference evaluator pads
# for the dilated kernel extent, as the operator's definition says.
@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
@pytest.mark.parametrize("strides", [[1, 1], [2, 3]], ids=["s1", "s2x3"])
def test_conv_same_dilated_against_onnx_reference(rng, auto_pad, strides):
    w = rng.standard_normal((3, 2, 3, 2))
    attrs = dict(auto_pad=auto_pad, strides=strides, dilations=[2, 3])
    model = _conv_model("Conv", (2, 9, 8), w, rng.standard_normal(3), attrs, True)
    net = check_against_ort(model, rng.standard_normal((2, 2, 9, 8)), runtime=run_onnx_reference)
    assert net.nodes[1].shape[2:] == tuple(-(-s // st) for s, st in zip((9, 8), strides))


def _one_hot_columns(model, net, in_shape):
    """Responses to unit inputs minus the response to 0, from refbbp and onnxruntime,
    as matrices whose column j is the response to the j-th unit input."""
    n = int(np.prod(in_shape))
    eye = np.eye(n).reshape((n,) + tuple(in_shape))
    zero = np.zeros((1,) + tuple(in_shape))
    ours = net.forward(eye) - net.forward(zero)
    theirs = (run_ort(model, eye) - run_ort(model, zero)).reshape(n, -1)
    return ours.T, theirs.T


@pytest.mark.parametrize("in_shape,w_shape,attrs", [
    pytest.param(*c[1:], id=c[0]) for c in CONV_CASES if c[0] in (
        "1d-stride2-pads1_2", "2d-pads-asym", "2d-group2", "2d-depthwise-mult2",
        "2d-same_lower-stride2", "2d-dilations2x1", "3d")])
def test_conv_one_hot_columns(rng, in_shape, w_shape, attrs):
    w = rng.standard_normal(w_shape)
    model = _conv_model("Conv", in_shape, w, rng.standard_normal(w_shape[0]), attrs, False)
    net = refbbp.load(model)
    ours, theirs = _one_hot_columns(model, net, in_shape)
    a = net.nodes[1].weights[0].toarray()
    np.testing.assert_allclose(ours, a, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a, theirs, rtol=1e-4, atol=1e-5 * np.abs(w).max())
    # Zero kernel entries stay structural non-zeros: every row's receptive field is the
    # set of in-bounds (position, kernel offset) pairs, so nnz equals the ORT response
    # pattern of an all-ones kernel.
    ones = _conv_model("Conv", in_shape, np.ones(w_shape), None, attrs, False)
    _, field = _one_hot_columns(ones, refbbp.load(ones), in_shape)
    assert net.nodes[1].weights[0].nnz == np.count_nonzero(field)


@pytest.mark.parametrize("storage", ["auto", "csr"])
def test_conv_zero_kernel_entries_stay_structural(rng, storage):
    w = rng.standard_normal((2, 1, 3, 3))
    w[:, :, 1, :] = 0.0
    model = _conv_model("Conv", (1, 5, 5), w, None, dict(pads=[1, 1, 1, 1]), False)
    a = refbbp.load(model, storage=storage).nodes[1].weights[0]
    full = refbbp.load(_conv_model("Conv", (1, 5, 5), np.ones_like(w), None,
                                   dict(pads=[1, 1, 1, 1]), False),
                       storage=storage).nodes[1].weights[0]
    assert a.nnz == full.nnz
    if storage == "auto":
        assert a.format == "window"
        a, full = a.to_csr(), full.to_csr()
    np.testing.assert_array_equal(a.indices, full.indices)


# (id, input shape (C, *spatial), weight shape (C, M/group, *kernel), attributes)
CONV_TRANSPOSE_CASES = [
    ("1d", (3, 5), (3, 2, 3), {}),
    ("1d-stride2-pads", (3, 5), (3, 2, 3), dict(strides=[2], pads=[1, 0])),
    ("1d-output_padding", (2, 5), (2, 3, 3), dict(strides=[3], output_padding=[2])),
    ("2d", (3, 4, 5), (3, 2, 3, 3), {}),
    ("2d-strides2x3", (2, 4, 3), (2, 3, 3, 2), dict(strides=[2, 3])),
    ("2d-pads-asym", (2, 5, 5), (2, 3, 3, 3), dict(strides=[2, 2], pads=[1, 0, 2, 1])),
    ("2d-output_padding", (2, 4, 4), (2, 2, 3, 3),
     dict(strides=[2, 3], output_padding=[1, 2], pads=[1, 1, 0, 0])),
    ("2d-dilations", (2, 4, 4), (2, 2, 3, 2), dict(dilations=[2, 3])),
    ("2d-group2", (4, 4, 3), (4, 3, 3, 3), dict(group=2, strides=[2, 1])),
    ("2d-depthwise", (3, 4, 4), (3, 1, 2, 2), dict(group=3, strides=[2, 2])),
    ("2d-output_shape", (2, 4, 4), (2, 3, 3, 3), dict(strides=[2, 2], output_shape=[8, 9])),
    ("2d-output_shape-odd", (2, 3, 3), (2, 2, 3, 3), dict(strides=[2, 2], output_shape=[6, 5])),
    ("2d-same_upper", (2, 4, 5), (2, 3, 3, 3), dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    ("2d-same_lower", (2, 4, 5), (2, 3, 3, 3), dict(auto_pad="SAME_LOWER", strides=[2, 2])),
    ("2d-same_upper-k4", (2, 3, 3), (2, 2, 4, 4), dict(auto_pad="SAME_UPPER", strides=[2, 1])),
    ("2d-same_lower-k4", (2, 3, 3), (2, 2, 4, 4), dict(auto_pad="SAME_LOWER", strides=[2, 1])),
    ("2d-valid", (2, 4, 5), (2, 3, 3, 3), dict(auto_pad="VALID", strides=[2, 2])),
    ("3d", (2, 3, 2, 3), (2, 2, 2, 3, 2), dict(strides=[2, 1, 2], pads=[0, 1, 0, 1, 0, 1])),
]


@pytest.mark.parametrize("relu", [False, True], ids=["linear", "relu"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("in_shape,w_shape,attrs",
                         [pytest.param(*c[1:], id=c[0]) for c in CONV_TRANSPOSE_CASES])
def test_conv_transpose(rng, in_shape, w_shape, attrs, with_bias, relu):
    w = rng.standard_normal(w_shape)
    m = w_shape[1] * attrs.get("group", 1)
    bias = rng.standard_normal(m) if with_bias else None
    model = _conv_model("ConvTranspose", in_shape, w, bias, attrs, relu)
    net = check_against_ort(model, rng.standard_normal((2,) + in_shape))
    assert [n.op for n in net.nodes] == ["Input", "ConvTranspose"]


@pytest.mark.parametrize("in_shape,w_shape,attrs", [
    pytest.param(*c[1:], id=c[0]) for c in CONV_TRANSPOSE_CASES if c[0] in (
        "1d-output_padding", "2d-pads-asym", "2d-group2", "2d-output_shape-odd",
        "2d-same_lower-k4")])
def test_conv_transpose_one_hot_columns(rng, in_shape, w_shape, attrs):
    model = _conv_model("ConvTranspose", in_shape, rng.standard_normal(w_shape), None, attrs,
                        False)
    net = refbbp.load(model)
    ours, theirs = _one_hot_columns(model, net, in_shape)
    a = net.nodes[1].weights[0].toarray()
    np.testing.assert_allclose(ours, a, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a, theirs, rtol=1e-4, atol=1e-5 * np.abs(a).max())


@pytest.mark.parametrize("opset", [7, 11, 21])
def test_conv_opsets(rng, opset):
    w = rng.standard_normal((3, 2, 3, 3))
    model = _conv_model("Conv", (2, 6, 6), w, rng.standard_normal(3),
                        dict(pads=[1, 1, 1, 1], strides=[2, 2]), True, opset)
    check_against_ort(model, rng.standard_normal((2, 2, 6, 6)))


def test_conv_transpose_output_shape_larger_than_full_is_refused(rng):
    # onnxruntime refuses it too ("Explicit output_shape is inconsistent with input
    # spatial dimensions"); the ONNX definition would need negative padding.
    model = _conv_model("ConvTranspose", (2, 3, 3), rng.standard_normal((2, 2, 3, 3)), None,
                        dict(strides=[2, 2], output_shape=[9, 8]), False)
    with pytest.raises(refbbp.UnsupportedOpError, match=r"output_shape \[9, 8\] is larger"):
        refbbp.load(model)
