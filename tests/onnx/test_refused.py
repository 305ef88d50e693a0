"""What ``refbbp.load`` refuses, and how it says so; the final Softmax it drops; the
memory budget; and how it reads the input's shape and chooses an output.

Every refusal names the op type, node name and opset, says whether the model is not
piecewise linear (``NotPiecewiseLinearError``) or the op is merely unsupported
(``UnsupportedOpError``), and lists the supported ops (STYLE item 9).
"""

import warnings

import numpy as np
import onnx
import pytest
from onnx import helper

import refbbp
from tests.helpers import (as_f32, check_against_ort, make_model, make_node,
                           run_ort)

X = (3, 4, 5)
NPL, UNSUP = refbbp.NotPiecewiseLinearError, refbbp.UnsupportedOpError


def _model(nodes, inits=None, opset=17, out="z", out_shape=None, **kw):
    """``out_shape``: the output's declared shape, for ops ONNX's shape inference cannot
    type (ONNX requires a shape on every graph output)."""
    model = make_model(nodes, {"x": X}, [out], inits, opset, **kw)
    if out_shape is not None:
        model.graph.output[0].CopyFrom(
            helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, out_shape))
    return model


def _w(*shape):
    return np.random.default_rng(0).standard_normal(shape)


# (id, model, error, offending op, its node name, opset, message pattern)
REFUSED = [
    # A smooth non-linearity between two layers.
    ("sigmoid", _model([make_node("Relu", ["x"], ["r"], name="relu"),
                        make_node("Sigmoid", ["r"], ["s"], name="act"),
                        make_node("Flatten", ["s"], ["z"])]),
     NPL, "Sigmoid", "act", 17, "Sigmoid is a smooth non-linear function"),
    # Tanh is refused even as the last op (only Softmax/LogSoftmax are dropped).
    ("tanh-at-the-end", _model([make_node("Tanh", ["x"], ["z"], name="t")], opset=13),
     NPL, "Tanh", "t", 13, "Tanh is a smooth"),
    ("exp", _model([make_node("Exp", ["x"], ["z"], name="e")], opset=9),
     NPL, "Exp", "e", 9, "Exp is a smooth"),
    # A Softmax followed by another layer is part of the function being explained.
    ("softmax-in-the-middle", _model([make_node("Flatten", ["x"], ["f"]),
                                      make_node("Softmax", ["f"], ["s"], name="sm"),
                                      make_node("MatMul", ["s", "W"], ["z"])], {"W": _w(60, 4)}),
     NPL, "Softmax", "sm", 17, "dropped only at the very end"),
    # Sign is piecewise constant: discontinuous.
    ("floor", _model([make_node("Floor", ["x"], ["z"], name="fl")]),
     NPL, "Floor", "fl", 17, "Floor is discontinuous"),
    # A comparison has a boolean output.
    ("greater", _model([make_node("Greater", ["x", "c"], ["g"], name="gt"),
                        make_node("Where", ["g", "x", "c"], ["z"])], {"c": np.zeros(1)}),
     NPL, "Greater", "gt", 17, "discrete output"),
    # The product of two input-dependent tensors is quadratic.
    ("mul-two-variables", _model([make_node("Relu", ["x"], ["r"]),
                                  make_node("Mul", ["x", "r"], ["z"], name="sq")]),
     NPL, "Mul", "sq", 17, "Mul of two input-dependent tensors"),
    # 1 / x.
    ("div-by-variable", _model([make_node("Div", ["c", "x"], ["z"], name="inv")],
                               {"c": np.ones(1)}),
     NPL, "Div", "inv", 17, "division by an input-dependent tensor"),
    ("div-variable-by-variable", _model([make_node("Relu", ["x"], ["r"]),
                                         make_node("Div", ["x", "r"], ["z"], name="ratio")]),
     NPL, "Div", "ratio", 17, "division by an input-dependent tensor"),
    # Attention-like x @ x^T.
    ("matmul-two-variables", _model([make_node("Transpose", ["x"], ["t"], perm=[0, 1, 3, 2]),
                                     make_node("MatMul", ["x", "t"], ["z"], name="gram")]),
     NPL, "MatMul", "gram", 17, "MatMul of two input-dependent tensors"),
    ("gemm-two-variables", _model([make_node("Flatten", ["x"], ["f"]),
                                   make_node("Gemm", ["f", "f"], ["z"], name="outer", transB=1)]),
     NPL, "Gemm", "outer", 17, "Gemm of two input-dependent tensors"),
    # Weights computed from the input.
    ("conv-variable-weights", _model([make_node("Identity", ["x"], ["w"]),
                                      make_node("Conv", ["x", "w"], ["z"], name="dyn")]),
     NPL, "Conv", "dyn", 17, "weights or bias depend on the input"),
    ("clip-variable-bound", _model([make_node("Neg", ["x"], ["n"]),
                                    make_node("Clip", ["x", "n"], ["z"], name="clp")]),
     NPL, "Clip", "clp", 17, "bound input 1 depends on the input"),
    ("prelu-variable-slope", _model([make_node("Relu", ["x"], ["r"]),
                                     make_node("PRelu", ["x", "r"], ["z"], name="pr")]),
     NPL, "PRelu", "pr", 17, "slope depends on the input"),
    # An op from a domain refbbp does not know.
    ("custom-domain", _model([make_node("FancyRelu", ["x"], ["z"], name="fr",
                                        domain="com.example")],
                             opset={"": 17, "com.example": 3}, out_shape=["N", *X]),
     UNSUP, "FancyRelu", "fr", 3, "domain 'com.example'.*no converter for this op"),
    # TopK is piecewise linear, but refbbp has no converter for it.
    ("topk", _model([make_node("TopK", ["x", "k"], ["z", "i"], name="tk")],
                    {"k": np.array([2])}),
     UNSUP, "TopK", "tk", 17, "TopK keeps a network piecewise linear, but refbbp has no "),
    # MaxPool's Indices output read by another node.
    ("maxpool-indices-used", _model([
        make_node("MaxPool", ["x"], ["y", "idx"], name="mp", kernel_shape=[2, 2]),
        make_node("Cast", ["idx"], ["fi"], to=1), make_node("Add", ["y", "fi"], ["z"])]),
     UNSUP, "MaxPool", "mp", 17, r"its output 'idx' \(output 1\) is used"),
    # Batch statistics are not an inference op.
    ("batchnorm-training", _model([make_node(
        "BatchNormalization", ["x", "g", "b", "m", "v"], ["z", "rm", "rv"], name="bn",
        training_mode=1)],
        {k: np.ones(3) for k in "gbmv"}),
     UNSUP, "BatchNormalization", "bn", 17, "training mode"),
    ("dropout-training", _model([make_node("Dropout", ["x", "r", "t"], ["z"], name="do")],
                                {"r": np.float32(0.5), "t": np.array(True)}),
     UNSUP, "Dropout", "do", 17, "training_mode=True"),
    # A bias term that depends on the input: it must be written as an Add.
    ("gemm-variable-c", _model([make_node("Flatten", ["x"], ["f"]),
                                make_node("Gemm", ["f", "W", "f"], ["z"], name="gc")],
                               {"W": _w(60, 60)}),
     UNSUP, "Gemm", "gc", 17, "input-dependent C operand"),
    ("div-by-zero-constant", _model([make_node("Div", ["x", "c"], ["z"], name="dz")],
                                    {"c": np.array([1.0, 0.0, 2.0]).reshape(3, 1, 1)}),
     UNSUP, "Div", "dz", 17, "division by a constant that contains zeros"),
    ("cast-to-int", _model([make_node("Cast", ["x"], ["i"], name="ci", to=6),
                            make_node("Cast", ["i"], ["z"], to=1)]),
     NPL, "Cast", "ci", 17, "Cast to INT32"),
    # Dilated pooling with SAME padding: onnxruntime pads for the undilated kernel, the
    # ONNX definition for the dilated one; the output shapes differ.
    ("maxpool-same-dilated", _model([make_node(
        "MaxPool", ["x"], ["z"], name="mpd", kernel_shape=[2, 2], auto_pad="SAME_UPPER",
        dilations=[2, 2])], opset=12),
     UNSUP, "MaxPool", "mpd", 12, r"auto_pad=SAME_UPPER with dilations \[2, 2\]: the runtimes "),
    # An old definition (Relu-1, with consumed_inputs) that no converter serves.
    ("relu-opset-5", _model([make_node("Relu", ["x"], ["z"], name="r5")], opset=5,
                            out_shape=["N", *X]),
     UNSUP, "Relu", "r5", 5, r"since opset 1\) is not converted"),
]


@pytest.mark.parametrize("model,error,op,name,opset,match", [
    pytest.param(*r[1:], id=r[0]) for r in REFUSED])
def test_refused(model, error, op, name, opset, match):
    with pytest.raises(error, match=match) as info:
        refbbp.load(model)
    e = info.value
    assert (e.op_type, e.node_name, e.opset) == (op, name, opset)
    assert type(e) is error and isinstance(e, NotImplementedError)
    msg = str(e)
    kind = "model is not piecewise linear" if error is NPL else "unsupported op"
    assert msg.startswith(f"{kind}: op '{op}'") and f"opset {opset}" in msg
    assert f"at node '{name}'" in msg
    assert "\nSupported ops: " in msg and "Conv, ConvTranspose" in msg


def test_maxpool_indices_output_unused_is_fine(rng):
    # The Indices output is named but nothing reads it.
    model = _model([make_node("MaxPool", ["x"], ["z", "idx"], kernel_shape=[2, 2])])
    check_against_ort(model, rng.standard_normal((2,) + X))


# ---------------------------------------------------------------------------------------
# A final Softmax / LogSoftmax / Softmax -> Log is dropped: the logits are explained.

def _classifier(tail, rng):
    inits = {"W": rng.standard_normal((60, 6)), "B": rng.standard_normal(6)}
    nodes = [make_node("Flatten", ["x"], ["f"]), make_node("Gemm", ["f", "W", "B"], ["logits"])]
    nodes += tail
    return nodes, inits


@pytest.mark.parametrize("tail,dropped", [
    pytest.param([make_node("Softmax", ["logits"], ["p"], axis=-1)], "Softmax", id="Softmax"),
    pytest.param([make_node("LogSoftmax", ["logits"], ["p"])], "LogSoftmax", id="LogSoftmax"),
    pytest.param([make_node("Softmax", ["logits"], ["s"]), make_node("Log", ["s"], ["p"])],
                 "Softmax -> Log", id="Softmax-Log"),
    pytest.param([make_node("Softmax", ["logits"], ["s"]), make_node("Identity", ["s"], ["p"])],
                 "Softmax -> Identity", id="Softmax-Identity"),
])
def test_final_softmax_is_dropped(rng, tail, dropped):
    nodes, inits = _classifier(tail, rng)
    model = make_model(nodes, {"x": X}, ["p"], inits)
    with pytest.warns(refbbp.ImportNotice, match=f"dropped the final {dropped} .* the logits "
                                                 f"'logits' are explained"):
        net = refbbp.load(model)
    assert any("dropped the final" in n for n in net.notices)
    logits_model = make_model(nodes[:2], {"x": X}, ["logits"], inits)
    x = as_f32(rng.standard_normal((3,) + X))
    expected = run_ort(logits_model, x)
    np.testing.assert_allclose(net.forward(x), expected, rtol=1e-4,
                               atol=1e-5 * np.abs(expected).max())


def test_no_notice_without_softmax(rng):
    nodes, inits = _classifier([], rng)
    with warnings.catch_warnings():
        warnings.simplefilter("error", refbbp.ImportNotice)
        net = refbbp.load(make_model(nodes, {"x": X}, ["logits"], inits))
    assert net.notices == []


# ---------------------------------------------------------------------------------------
# The memory budget.

def _conv_model(rng):
    inits = {"W": rng.standard_normal((8, 3, 3, 3)), "B": rng.standard_normal(8)}
    nodes = [make_node("Conv", ["x", "W", "B"], ["c"], name="big_conv", pads=[1, 1, 1, 1]),
             make_node("Relu", ["c"], ["z"])]
    return make_model(nodes, {"x": (3, 16, 16)}, ["z"], inits)


def test_memory_budget_refuses_the_layer(rng):
    model = _conv_model(rng)
    # 8 * 16 * 16 rows of up to 27 entries at 12 bytes each: about 0.6 MiB.
    with pytest.raises(refbbp.MemoryBudgetError,
                       match=r"layer 'big_conv' needs about [\d,]+ bytes \(0\.\d MiB\).*"
                             r"max_bytes=100,000") as info:
        refbbp.load(model, max_bytes=100_000, storage="csr")
    assert isinstance(info.value, MemoryError)
    net = check_against_ort(model, rng.standard_normal((2, 3, 16, 16)), max_bytes=4 << 20)
    assert sum(n.nbytes for n in net.nodes) <= 4 << 20


def test_memory_budget_counts_window_matrices_and_explanation_vectors(rng):
    """As a window matrix the convolution takes its kernel and tables (a few KiB), so
    the CSR budget above loads it; what the budget then refuses is the per-node vectors
    of one explanation, before anything is allocated."""
    model = _conv_model(rng)
    net = refbbp.load(model, max_bytes=400_000)
    conv = net.nodes[1]
    assert conv.describe_storage() == "window" and conv.weights[0].nbytes < 4_000
    # The conv node with its bias and activation (about 100 KB) and the vectors of
    # its 8*16*16 elements (48 bytes each): over 120,000 bytes.
    with pytest.raises(refbbp.MemoryBudgetError, match=r"layer 'big_conv' .*per-node vectors"):
        refbbp.load(model, max_bytes=120_000)
    with pytest.raises(refbbp.MemoryBudgetError, match=r"layer 'x' "):
        refbbp.load(model, max_bytes=30_000)     # the input's vectors alone: 36,864 bytes


# ---------------------------------------------------------------------------------------
# Input shapes, batches and outputs.

def _relu_gemm(in_shape, rng, batch="N", outputs=("z",), n=60):
    """Flatten -> MatMul (n, 4) -> Relu (output z) and Neg (output y2)."""
    inits = {"W": rng.standard_normal((n, 4))}
    nodes = [make_node("Flatten", ["x"], ["f"]), make_node("MatMul", ["f", "W"], ["m"]),
             make_node("Relu", ["m"], ["z"]), make_node("Neg", ["m"], ["y2"])]
    return make_model(nodes, {"x": in_shape}, list(outputs), inits, batch=batch)


@pytest.mark.parametrize("batch", ["N", 1, "batch_size"], ids=["N", "fixed-1", "batch_size"])
def test_batch_dimension(rng, batch):
    net = check_against_ort(_relu_gemm(X, rng, batch), rng.standard_normal((1,) + X))
    assert net.batch_axis and net.input_shape == X


def test_no_batch_dimension(rng):
    model = _relu_gemm(X, rng, batch=None, n=20)  # Flatten: (3, 20)
    net = refbbp.load(model, batch_axis=None)  # "auto": a batch of 3 (test_batch_semantics)
    assert not net.batch_axis and net.input_shape == X
    x = as_f32(rng.standard_normal(X))
    np.testing.assert_allclose(net.forward(x), run_ort(model, x).ravel(), rtol=1e-4, atol=1e-5)


def test_symbolic_spatial_dimensions_need_input_shape(rng):
    model = _relu_gemm((3, "H", "W"), rng)
    with pytest.raises(refbbp.InputShapeError, match="symbolic dimensions: pass input_shape="):
        refbbp.load(model)
    with pytest.raises(refbbp.InputShapeError, match=r"input_shape=\(3, 5, 4\) disagrees"):
        refbbp.load(make_model([make_node("Relu", ["x"], ["z"])], {"x": (3, 4, "W")}, ["z"]),
                    input_shape=(3, 5, 4))
    net = check_against_ort(model, rng.standard_normal((2, 3, 4, 5)), input_shape=X)
    assert net.input_shape == X


def test_batch_equals_one_at_a_time(rng):
    net = refbbp.load(_relu_gemm(X, rng))
    x = rng.standard_normal((4,) + X)
    # Equal up to rounding: BLAS sums a matrix product and a vector product differently.
    np.testing.assert_allclose(net.forward(x), np.stack([net.forward(xi) for xi in x]),
                               rtol=1e-13, atol=1e-13)
    lin = net.linearize(x, target=2)
    for i, xi in enumerate(x):
        one = net.linearize(xi, target=2)
        np.testing.assert_allclose(lin.w[i], one.w, rtol=1e-15, atol=1e-15)
        np.testing.assert_allclose(lin.bias_x[i], one.bias_x, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(lin.bias_x_all()[i], one.bias_x_all(), rtol=1e-13, atol=1e-13)


def test_wrong_input_shape_is_refused(rng):
    net = refbbp.load(_relu_gemm(X, rng))
    with pytest.raises(refbbp.InputShapeError, match=r"expected \(3, 4, 5\) \(one input\)"):
        net.forward(np.zeros((3, 5, 4)))


@pytest.mark.parametrize("output", [None, "z", "y2"])
def test_choosing_one_of_several_outputs(rng, output):
    model = _relu_gemm(X, rng, outputs=("z", "y2"))
    net = check_against_ort(model, rng.standard_normal((2,) + X), output=output)
    assert net.output_name == (output or "z")


def test_unknown_output_is_refused(rng):
    with pytest.raises(refbbp.ModelFormatError, match=r"no graph output named 'p'; outputs: "
                                                      r"\['z', 'y2'\]"):
        refbbp.load(_relu_gemm(X, rng, outputs=("z", "y2")), output="p")


def test_two_data_inputs_are_refused():
    model = make_model([make_node("Add", ["x", "x2"], ["z"])], {"x": X, "x2": X}, ["z"])
    with pytest.raises(refbbp.ModelFormatError, match="exactly one data input.*found 2"):
        refbbp.load(model)


def test_output_independent_of_input_is_refused():
    model = make_model([make_node("Relu", ["x"], ["r"]), make_node("Identity", ["c"], ["z"])],
                       {"x": X}, ["z"], {"c": np.ones(3)})
    with pytest.raises(refbbp.ModelFormatError, match="does not depend on the input"):
        refbbp.load(model)
