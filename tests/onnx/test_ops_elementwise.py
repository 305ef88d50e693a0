"""Elementwise affine converters against onnxruntime: Add, Sub, Mul, Div, Neg, Sum with
constants (broadcasting, either side), residual Add/Sub/Sum of input-dependent tensors,
and BatchNormalization, with the canonical-form folding of SPEC section 1 checked
through the nodes the network ends up with."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refbbp
from refbbp.onnx.loader import ImportNotice
from tests.helpers import as_f32, check_against_ort, make_model, make_node
from tests.strategies import seeds

IN_SHAPE = (3, 4, 5)

# (id, op, constant shape, constant on the left); the input is (N, 3, 4, 5).
CONSTANT_CASES = [
    ("Add-scalar", "Add", (), False),
    ("Add-channel-left", "Add", (3, 1, 1), True),
    ("Add-full", "Add", IN_SHAPE, False),
    ("Add-last-axis", "Add", (5,), True),
    ("Sub-channel", "Sub", (3, 1, 1), False),
    ("Sub-const-left", "Sub", (1, 4, 1), True),
    ("Mul-scalar-left", "Mul", (), True),
    ("Mul-channel", "Mul", (1, 3, 1, 1), False),
    ("Mul-rows-left", "Mul", (4, 1), True),
    ("Div-channel", "Div", (3, 1, 1), False),
    ("Div-full", "Div", IN_SHAPE, False),
    ("Sum-const-right", "Sum", (3, 1, 1), False),
    ("Sum-const-left", "Sum", (5,), True),
]


def _const(rng, shape, op):
    c = rng.standard_normal(shape)
    if op == "Div":  # keep the divisor away from 0
        c = np.sign(c) * (0.5 + np.abs(c))
    return c


@pytest.mark.parametrize("relu", [False, True], ids=["linear", "relu"])
@pytest.mark.parametrize("op,c_shape,left", [pytest.param(*c[1:], id=c[0]) for c in CONSTANT_CASES])
def test_constant_operand(rng, op, c_shape, left, relu):
    inputs = ["C", "x"] if left else ["x", "C"]
    nodes = [make_node(op, inputs, ["y"])]
    if relu:
        nodes.append(make_node("Relu", ["y"], ["z"]))
    model = make_model(nodes, {"x": IN_SHAPE}, ["z" if relu else "y"],
                       {"C": _const(rng, c_shape, op)})
    net = check_against_ort(model, rng.standard_normal((2,) + IN_SHAPE))
    # The input is no matrix op: the affine map is an elementwise node of its own.
    assert [n.op for n in net.nodes] == ["Input", op]


def test_neg(rng):
    nodes = [make_node("Neg", ["x"], ["y"]), make_node("Relu", ["y"], ["z"])]
    net = check_against_ort(make_model(nodes, {"x": IN_SHAPE}, ["z"]),
                            rng.standard_normal((2,) + IN_SHAPE))
    assert [n.op for n in net.nodes] == ["Input", "Neg"]


@pytest.mark.parametrize("c_shape", [(3, 4, 5), (2, 1, 1, 1)], ids=["same", "new-leading-axis"])
def test_variable_broadcast_to_constant_shape(rng, c_shape):
    # The input (N, 3, 1, 5) is broadcast along axis 2 by the constant: its elements
    # repeat, so the map is an affine node with several rows per input element.
    c = rng.standard_normal(c_shape[:-3] + (3, 4, 5)) if len(c_shape) == 4 else \
        rng.standard_normal(c_shape)
    nodes = [make_node("Mul", ["x", "C"], ["y"]), make_node("Relu", ["y"], ["z"])]
    batch = "N" if len(c_shape) == 3 else 1
    model = make_model(nodes, {"x": (3, 1, 5)}, ["z"], {"C": c}, batch=batch)
    check_against_ort(model, rng.standard_normal((1 if batch == 1 else 2, 3, 1, 5)))


# Residual connections: Add/Sub/Sum of input-dependent tensors become one affine node
# with one matrix per input.
@pytest.mark.parametrize("op,inputs", [
    pytest.param("Add", ["r", "x"], id="Add"),
    pytest.param("Sub", ["x", "r"], id="Sub"),
    pytest.param("Sub", ["r", "r2"], id="Sub-two-branches"),
    pytest.param("Sum", ["r", "x", "r2"], id="Sum-three"),
    pytest.param("Sum", ["r", "C", "x"], id="Sum-with-constant"),
    pytest.param("Add", ["x", "x"], id="Add-self"),
])
def test_residual(rng, op, inputs):
    nodes = [make_node("Relu", ["x"], ["r"]), make_node("Neg", ["x"], ["nx"]),
             make_node("LeakyRelu", ["nx"], ["r2"], alpha=0.3),
             make_node(op, inputs, ["y"]), make_node("Relu", ["y"], ["z"])]
    model = make_model(nodes, {"x": IN_SHAPE}, ["z"], {"C": rng.standard_normal((3, 1, 1))})
    net = check_against_ort(model, rng.standard_normal((2,) + IN_SHAPE))
    assert net.nodes[-1].op == op and net.nodes[-1].activation is not None


def test_residual_broadcast(rng):
    # Add of (N, 3, 4, 5) and a per-channel (N, 3, 1, 1) pooled branch.
    nodes = [make_node("GlobalAveragePool", ["x"], ["g"]), make_node("Add", ["x", "g"], ["y"])]
    check_against_ort(make_model(nodes, {"x": IN_SHAPE}, ["y"]),
                      rng.standard_normal((2,) + IN_SHAPE))


def _bn_params(rng, c):
    return {"gamma": rng.standard_normal(c) * 0.5 + 1.0, "beta": rng.standard_normal(c) * 0.3,
            "mean": rng.standard_normal(c) * 0.5, "var": rng.random(c) * 1.5 + 0.25}


def _bn(x, y, opset, **attrs):
    if opset < 9:
        attrs.setdefault("spatial", 1)
    return make_node("BatchNormalization", [x, "gamma", "beta", "mean", "var"], [y],
                     epsilon=1e-3, **attrs)


@pytest.mark.parametrize("opset", [7, 9, 14, 15])
def test_batchnorm_after_conv_folds(rng, opset):
    inits = {"W": rng.standard_normal((4, 3, 3, 3)), "B": rng.standard_normal(4),
             **_bn_params(rng, 4)}
    nodes = [make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]), _bn("c", "n", opset),
             make_node("Relu", ["n"], ["z"])]
    net = check_against_ort(make_model(nodes, {"x": IN_SHAPE}, ["z"], inits, opset),
                            rng.standard_normal((2,) + IN_SHAPE))
    assert [n.op for n in net.nodes] == ["Input", "Conv"]
    assert "BatchNormalization" in net.nodes[1].name and net.nodes[1].activation is not None


@pytest.mark.parametrize("opset", [7, 15])
def test_batchnorm_after_relu_is_its_own_node(rng, opset):
    inits = {"W": rng.standard_normal((4, 3, 3, 3)), **_bn_params(rng, 4)}
    nodes = [make_node("Conv", ["x", "W"], ["c"]), make_node("Relu", ["c"], ["r"]),
             _bn("r", "n", opset)]
    net = check_against_ort(make_model(nodes, {"x": IN_SHAPE}, ["n"], inits, opset),
                            rng.standard_normal((2,) + IN_SHAPE))
    assert [n.op for n in net.nodes] == ["Input", "Conv", "BatchNormalization"]
    bn = net.nodes[2]
    assert bn.weights[0].nnz == bn.size and np.any(bn.bias != 0)  # diagonal, own bias


def test_batchnorm_on_input_then_conv_does_not_fold_forward(rng):
    # Folding a normalisation into a following zero-padded conv is not exact at the
    # borders (SPEC section 1): the BN stays a node of its own.
    inits = {"W": rng.standard_normal((2, 3, 3, 3)), **_bn_params(rng, 3)}
    nodes = [_bn("x", "n", 15), make_node("Conv", ["n", "W"], ["c"], pads=[1, 1, 1, 1])]
    net = check_against_ort(make_model(nodes, {"x": IN_SHAPE}, ["c"], inits, 15),
                            rng.standard_normal((2,) + IN_SHAPE))
    assert [n.op for n in net.nodes] == ["Input", "BatchNormalization", "Conv"]


def test_batchnorm_1d_after_gemm_folds(rng):
    inits = {"W": rng.standard_normal((8, 6)), "B": rng.standard_normal(8), **_bn_params(rng, 8)}
    nodes = [make_node("Gemm", ["x", "W", "B"], ["g"], transB=1), _bn("g", "n", 15),
             make_node("Relu", ["n"], ["z"])]
    net = check_against_ort(make_model(nodes, {"x": (6,)}, ["z"], inits, 15),
                            rng.standard_normal((3, 6)))
    assert [n.op for n in net.nodes] == ["Input", "Gemm"]


def test_batchnorm_through_transpose_after_matmul_folds(rng):
    # MatMul on (N, 4, 6) -> Transpose to channels first -> BN over axis 1: the channel
    # mapping is kept by the Transpose, so the BN folds into the MatMul.
    inits = {"W": rng.standard_normal((6, 3)), **_bn_params(rng, 3)}
    nodes = [make_node("MatMul", ["x", "W"], ["m"]),
             make_node("Transpose", ["m"], ["t"], perm=[0, 2, 1]), _bn("t", "n", 15)]
    net = check_against_ort(make_model(nodes, {"x": (4, 6)}, ["n"], inits, 15),
                            rng.standard_normal((2, 4, 6)))
    # The graph output is the transposed view: a bias-free copy node puts it in order.
    assert [n.op for n in net.nodes] == ["Input", "MatMul", "Output"]
    assert "BatchNormalization" in net.nodes[1].name and not np.any(net.nodes[2].bias)


def test_batchnorm_written_out_equals_batchnorm(rng):
    # (conv - mean) * (gamma / sqrt(var + eps)) + beta as Sub/Mul/Add folds into the conv
    # and gives the same network as BatchNormalization.
    p = _bn_params(rng, 4)
    w, cb = rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    scale = p["gamma"] / np.sqrt(p["var"] + 1e-3)
    shape = (4, 1, 1)
    written = make_model(
        [make_node("Conv", ["x", "W", "B"], ["c"]), make_node("Sub", ["c", "M"], ["s"]),
         make_node("Mul", ["s", "S"], ["m"]), make_node("Add", ["m", "Be"], ["y"])],
        {"x": IN_SHAPE}, ["y"],
        {"W": w, "B": cb, "M": p["mean"].reshape(shape), "S": scale.reshape(shape),
         "Be": p["beta"].reshape(shape)})
    bn = make_model([make_node("Conv", ["x", "W", "B"], ["c"]), _bn("c", "y", 15)],
                    {"x": IN_SHAPE}, ["y"], {"W": w, "B": cb, **p})
    x = rng.standard_normal((2,) + IN_SHAPE)
    net_w, net_b = check_against_ort(written, x), check_against_ort(bn, x)
    assert len(net_w.nodes) == len(net_b.nodes) == 2
    a_w, a_b = net_w.nodes[1].weights[0], net_b.nodes[1].weights[0]
    # float32 constants: the written-out scale was rounded to float32 on its own.
    np.testing.assert_allclose(a_w.toarray(), a_b.toarray(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(net_w.nodes[1].bias, net_b.nodes[1].bias, rtol=1e-6, atol=1e-6)


def test_no_fold_when_conv_output_has_another_consumer(rng):
    # c feeds both the Mul and the residual Add: folding the Mul into the conv would
    # change what the Add reads.
    inits = {"W": rng.standard_normal((3, 3, 3, 3)), "S": rng.standard_normal((3, 1, 1))}
    nodes = [make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
             make_node("Mul", ["c", "S"], ["m"]), make_node("Add", ["m", "c"], ["y"])]
    net = check_against_ort(make_model(nodes, {"x": IN_SHAPE}, ["y"], inits),
                            rng.standard_normal((2,) + IN_SHAPE))
    assert [n.op for n in net.nodes] == ["Input", "Conv", "Mul", "Add"]


def test_mul_after_relu_then_add_folds_into_one_elementwise_node(rng):
    nodes = [make_node("Relu", ["x"], ["r"]), make_node("Mul", ["r", "S"], ["m"]),
             make_node("Add", ["m", "T"], ["y"])]
    inits = {"S": rng.standard_normal((3, 1, 1)), "T": rng.standard_normal((3, 1, 1))}
    net = check_against_ort(make_model(nodes, {"x": IN_SHAPE}, ["y"], inits),
                            rng.standard_normal((2,) + IN_SHAPE))
    assert [n.op for n in net.nodes] == ["Input", "Relu", "Mul"]
    assert net.nodes[2].name == "Mul_m+Add_y"


def test_div_by_constant_with_zeros_is_refused(rng):
    c = rng.standard_normal((3, 1, 1))
    c[1] = 0.0
    model = make_model([make_node("Div", ["x", "C"], ["y"])], {"x": IN_SHAPE}, ["y"], {"C": c})
    with pytest.raises(refbbp.UnsupportedOpError,
                       match="division by a constant that contains zeros"):
        refbbp.load(model)


@st.composite
def _broadcast_shapes(draw):
    """An input shape and a constant shape that broadcast: the constant may have more
    dimensions than the input and may broadcast the input to a larger output."""
    out = draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))
    def part():
        cut = draw(st.integers(0, len(out) - 1))
        return tuple(1 if draw(st.booleans()) else d for d in out[cut:])
    return part(), part()


# Cost: one onnxruntime run per example on tensors of <= 256 elements (~ 15 ms).
@settings(max_examples=40, deadline=None)
@given(shapes=_broadcast_shapes(), op=st.sampled_from(["Mul", "Div"]),
       left=st.booleans(), seed=seeds)
def test_mul_div_by_any_broadcast_constant(shapes, op, left, seed):
    """Mul/Div by a constant of any broadcastable shape, also one with more dimensions
    than the input or one that broadcasts the input to a larger output."""
    x_shape, c_shape = shapes
    g = np.random.default_rng(seed)
    c = g.uniform(0.5, 2.0, c_shape) * g.choice([-1.0, 1.0], c_shape)
    inputs = ["C", "x"] if left and op == "Mul" else ["x", "C"]
    model = make_model([make_node(op, inputs, ["y"]), make_node("Relu", ["y"], ["z"])],
                       {"x": x_shape}, ["z"], {"C": c}, batch=None)
    x = as_f32(g.standard_normal(x_shape))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImportNotice)
        net = check_against_ort(model, x, batch_axis=None)
    assert refbbp.bbp(net, x).completeness().ok()
