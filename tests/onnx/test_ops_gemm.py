"""Gemm and MatMul converters against onnxruntime: a product with one constant operand
is one matrix node; MatMul + Add is a Gemm (one node, SPEC section 1)."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refbbp
from refbbp.errors import MemoryBudgetError
from refbbp.onnx.gemm import einsum_matrix
from refbbp.onnx.loader import ImportNotice
from tests.helpers import as_f32, check_against_ort, make_model, make_node
from tests.strategies import seeds


def _gemm_model(a_shape, b_shape, c_shape, attrs, var, opset=13, batch="N", relu=True):
    """``Gemm`` with the input ``x`` as operand ``var`` ("A" or "B") and constants for
    the other operand and C (``c_shape`` None: no C)."""
    g = np.random.default_rng(0)
    const_shape = b_shape if var == "A" else a_shape
    inits = {"W": g.standard_normal(const_shape)}
    inputs = ["x", "W"] if var == "A" else ["W", "x"]
    if c_shape is not None:
        inits["C"] = g.standard_normal(c_shape)
        inputs.append("C")
    nodes = [make_node("Gemm", inputs, ["y"], **attrs)]
    if relu:
        nodes.append(make_node("Relu", ["y"], ["z"]))
    var_shape = a_shape if var == "A" else b_shape
    in_shape = var_shape[1:] if batch is not None else var_shape
    return make_model(nodes, {"x": in_shape}, ["z" if relu else "y"], inits, opset, batch=batch)


# (id, A shape, B shape, C shape or None, attributes); A is the input (batch, 6).
GEMM_VAR_A = [
    ("plain", (1, 6), (6, 4), (4,), {}),
    ("alpha-beta", (1, 6), (6, 4), (4,), dict(alpha=0.5, beta=-2.0)),
    ("transB", (1, 6), (4, 6), (4,), dict(transB=1)),
    ("C-1xM", (1, 6), (6, 4), (1, 4), {}),
    ("C-scalar", (1, 6), (6, 4), (), dict(beta=3.0)),
    ("C-1x1", (1, 6), (4, 6), (1, 1), dict(transB=1, alpha=-1.5)),
    ("no-C", (1, 6), (6, 4), None, {}),
    ("no-C-transB-alpha", (1, 6), (4, 6), None, dict(transB=1, alpha=2.0)),
]


@pytest.mark.parametrize("a_shape,b_shape,c_shape,attrs",
                         [pytest.param(*c[1:], id=c[0]) for c in GEMM_VAR_A])
def test_gemm_variable_a(rng, a_shape, b_shape, c_shape, attrs):
    model = _gemm_model(a_shape, b_shape, c_shape, attrs, "A")
    net = check_against_ort(model, rng.standard_normal((3, 6)))
    assert [n.op for n in net.nodes] == ["Input", "Gemm"]


# Operand layouts in which the input is not (batch, K): the models have no batch
# dimension and the input is one sample.
GEMM_NO_BATCH = [
    ("transA-var-A", (6, 3), (6, 4), (4,), dict(transA=1), "A"),
    ("transA-transB-var-A", (6, 3), (4, 6), (3, 4), dict(transA=1, transB=1, alpha=0.7), "A"),
    ("const-A", (5, 6), (6, 3), (5, 1), {}, "B"),
    ("const-A-transA", (6, 5), (6, 3), (3,), dict(transA=1, beta=0.5), "B"),
    ("const-A-transB", (5, 6), (3, 6), (5, 3), dict(transB=1), "B"),
    ("const-A-transA-transB-no-C", (6, 5), (3, 6), None, dict(transA=1, transB=1), "B"),
]


@pytest.mark.parametrize("a_shape,b_shape,c_shape,attrs,var",
                         [pytest.param(*c[1:], id=c[0]) for c in GEMM_NO_BATCH])
def test_gemm_operand_layouts(rng, a_shape, b_shape, c_shape, attrs, var):
    model = _gemm_model(a_shape, b_shape, c_shape, attrs, var, batch=None)
    x = rng.standard_normal(a_shape if var == "A" else b_shape)
    net = check_against_ort(model, x)
    assert not net.batch_axis
    assert [n.op for n in net.nodes] == ["Input", "Gemm"]


@pytest.mark.parametrize("opset", [7, 9, 11, 13, 21])
def test_gemm_opsets(rng, opset):
    model = _gemm_model((1, 6), (4, 6), (4,), dict(transB=1, alpha=0.5, beta=2.0), "A", opset)
    check_against_ort(model, rng.standard_normal((3, 6)))


def _matmul_model(x_shape, w, var_left, bias=None, relu=False, batch="N", opset=13):
    inputs = ["x", "W"] if var_left else ["W", "x"]
    inits = {"W": w}
    nodes = [make_node("MatMul", inputs, ["y"])]
    out = "y"
    if bias is not None:
        inits["B"] = bias
        nodes.append(make_node("Add", ["y", "B"], ["yb"]))
        out = "yb"
    if relu:
        nodes.append(make_node("Relu", [out], ["z"]))
        out = "z"
    return make_model(nodes, {"x": x_shape}, [out], inits, opset, batch=batch)


# (id, per-sample input shape, weight shape, input on the left); inputs have a batch axis.
MATMUL_CASES = [
    ("right-2d", (6,), (6, 4), True),
    ("right-3d-input", (5, 6), (6, 4), True),
    ("right-4d-input", (2, 3, 6), (6, 4), True),
    ("right-1d-weights", (5, 6), (6,), True),
    ("left-3d-input", (6, 3), (4, 6), False),
    ("left-4d-input", (2, 6, 3), (4, 6), False),
    ("left-1d-weights", (6, 3), (6,), False),
]


@pytest.mark.parametrize("relu", [False, True], ids=["linear", "relu"])
@pytest.mark.parametrize("x_shape,w_shape,var_left",
                         [pytest.param(*c[1:], id=c[0]) for c in MATMUL_CASES])
def test_matmul(rng, x_shape, w_shape, var_left, relu):
    model = _matmul_model(x_shape, rng.standard_normal(w_shape), var_left, relu=relu)
    net = check_against_ort(model, rng.standard_normal((2,) + x_shape))
    assert [n.op for n in net.nodes] == ["Input", "MatMul"]


@pytest.mark.parametrize("x_shape,w_shape,var_left", [
    pytest.param((6,), (4, 6), False, id="left-1d-input"),
    pytest.param((6,), (6,), True, id="dot-1d"),
    pytest.param((3, 6), (6, 4), True, id="right-2d-no-batch"),
    pytest.param((6, 3), (4, 6), False, id="left-2d-no-batch"),
])
def test_matmul_no_batch(rng, x_shape, w_shape, var_left):
    model = _matmul_model(x_shape, rng.standard_normal(w_shape), var_left, batch=None)
    check_against_ort(model, rng.standard_normal(x_shape))


# MatMul + Add is a Gemm: the bias folds into the MatMul node (SPEC section 1).
@pytest.mark.parametrize("bias_shape", [(4,), (1, 4), ()], ids=["bias-M", "bias-1xM", "scalar"])
@pytest.mark.parametrize("x_shape", [(6,), (5, 6)], ids=["2d", "3d"])
def test_matmul_add_folds(rng, x_shape, bias_shape):
    model = _matmul_model(x_shape, rng.standard_normal((6, 4)), True,
                          bias=rng.standard_normal(bias_shape), relu=True)
    net = check_against_ort(model, rng.standard_normal((2,) + x_shape))
    assert [n.op for n in net.nodes] == ["Input", "MatMul"]
    assert net.nodes[1].activation is not None and np.any(net.nodes[1].bias != 0)


def test_matmul_add_on_the_left_folds(rng):
    # Add(B, MatMul(x, W)): the constant on the left.
    w, bias = rng.standard_normal((6, 4)), rng.standard_normal(4)
    nodes = [make_node("MatMul", ["x", "W"], ["y"]), make_node("Add", ["B", "y"], ["z"])]
    model = make_model(nodes, {"x": (6,)}, ["z"], {"W": w, "B": bias})
    net = check_against_ort(model, rng.standard_normal((3, 6)))
    assert len(net.nodes) == 2


def test_two_matmuls_stay_two_layers(rng):
    # Two matrix ops are never merged, even with no activation between them.
    nodes = [make_node("MatMul", ["x", "W1"], ["h"]), make_node("MatMul", ["h", "W2"], ["y"])]
    model = make_model(nodes, {"x": (6,)}, ["y"],
                       {"W1": rng.standard_normal((6, 5)), "W2": rng.standard_normal((5, 3))})
    net = check_against_ort(model, rng.standard_normal((3, 6)))
    assert [n.op for n in net.nodes] == ["Input", "MatMul", "MatMul"]


# ---------------------------------------------------------------------------------------
# Linear ops with any broadcast constant: MatMul with a batched constant, Einsum.

def test_matmul_constant_with_batch_dimensions(rng):
    """x (1, 1, 28, 28) @ a constant (1, 1, 28, 28) used to be refused ("a constant
    operand with batch dimensions"); it is linear: one MatMul node."""
    model = _matmul_model((1, 28, 28), rng.standard_normal((1, 1, 28, 28)), True, batch=1)
    net = check_against_ort(model, rng.standard_normal((1, 1, 28, 28)))
    assert [n.op for n in net.nodes] == ["Input", "MatMul"]
    x = as_f32(rng.standard_normal((1, 28, 28)))
    assert refbbp.bbp(net, x).completeness().ok()


@st.composite
def _matmul_shapes(draw):
    """Shapes of ``x`` (no batch axis) and a constant ``w`` with leading dimensions that
    broadcast (either may be larger), and the side of the input."""
    m, k, n = (draw(st.integers(1, 4)) for _ in range(3))
    lead = draw(st.lists(st.integers(1, 3), max_size=3))
    def sub(shape):  # a broadcast-compatible prefix: drop leading axes, set some to 1
        cut = draw(st.integers(0, len(shape)))
        return tuple(1 if draw(st.booleans()) else d for d in shape[cut:])
    var_left = draw(st.booleans())
    x_mat, w_mat = ((m, k), (k, n)) if var_left else ((k, n), (m, k))
    x_shape = sub(lead) + x_mat
    w_shape = tuple(lead) + w_mat if draw(st.booleans()) else sub(lead) + w_mat
    if len(w_shape) <= 2:
        w_shape = (draw(st.integers(1, 3)),) + w_shape
    return x_shape, w_shape, var_left


# Cost: one onnxruntime run and a small CSR matrix per example (~ 20 ms).
@settings(max_examples=40, deadline=None)
@given(shapes=_matmul_shapes(), seed=seeds)
def test_matmul_batched_constant_broadcasts(shapes, seed):
    """MatMul with a constant of >= 3 dims, on either side, leading dimensions
    broadcasting both ways: onnxruntime's values, exact local model, complete BBp."""
    x_shape, w_shape, var_left = shapes
    g = np.random.default_rng(seed)
    model = _matmul_model(x_shape, g.standard_normal(w_shape), var_left, relu=True, batch=None)
    x = as_f32(g.standard_normal(x_shape))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImportNotice)
        net = check_against_ort(model, x, batch_axis=None)
    assert [n.op for n in net.nodes] == ["Input", "MatMul"]
    assert refbbp.bbp(net, x).completeness().ok()


def _einsum_model(equation, x_shape, consts, pos, relu=True):
    names = [f"C{i}" for i in range(len(consts))]
    inputs = names[:pos] + ["x"] + names[pos:]
    nodes = [make_node("Einsum", inputs, ["y"], equation=equation)]
    if relu:
        nodes.append(make_node("Relu", ["y"], ["z"]))
    return make_model(nodes, {"x": x_shape}, ["z" if relu else "y"],
                      dict(zip(names, consts)), opset=13, batch=None)


# (id, equation, operand shapes, position of the input): written as exporters do.
EINSUM_CASES = [
    ("gemm", "ij,jk->ik", [(3, 4), (4, 5)], 0),
    ("gemm-const-left", "ij,jk->ik", [(3, 4), (4, 5)], 1),
    ("batched-const", "bij,bjk->bik", [(2, 3, 4), (2, 4, 5)], 0),
    ("ellipsis", "...ij,jk->...ik", [(2, 3, 4), (4, 5)], 0),
    ("implicit-output", "ij,jk", [(3, 4), (4, 5)], 0),
    ("transpose-only", "ij->ji", [(3, 4)], 0),
    ("diagonal", "ii->i", [(4, 4)], 0),
    ("sum-over-const-letter", "ij,jkl->ik", [(3, 4), (4, 2, 3)], 0),
    ("outer", "i,j->ij", [(3,), (4,)], 1),
    ("three-operands", "ij,jk,kl->il", [(3, 4), (4, 5), (5, 2)], 1),
    ("broadcast-size-1", "bij,bjk->bik", [(1, 3, 4), (2, 4, 5)], 0),
]


@pytest.mark.parametrize("equation,shapes,pos", [pytest.param(*c[1:], id=c[0])
                                                 for c in EINSUM_CASES])
def test_einsum_one_input_dependent_operand(rng, equation, shapes, pos):
    """An Einsum linear in its one input-dependent operand used to be refused as
    unsupported; it is one affine node (onnxruntime's values, complete BBp)."""
    consts = [rng.standard_normal(s) for i, s in enumerate(shapes) if i != pos]
    model = _einsum_model(equation, shapes[pos], consts, pos)
    x = as_f32(rng.standard_normal(shapes[pos]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImportNotice)
        net = check_against_ort(model, x, batch_axis=None)
    assert [n.op for n in net.nodes] == ["Input", "Einsum"]
    assert refbbp.bbp(net, x).completeness().ok()


def test_einsum_of_two_input_dependent_operands_is_refused(rng):
    nodes = [make_node("Einsum", ["x", "x"], ["y"], equation="ij,ij->ij")]
    model = make_model(nodes, {"x": (3, 4)}, ["y"], opset=13, batch=None)
    with pytest.raises(refbbp.NotPiecewiseLinearError, match="several input-dependent"):
        refbbp.load(model, batch_axis=None)


def test_einsum_matrix_is_the_jacobian(rng):
    """einsum_matrix against the definition: column j is the einsum of basis tensor
    e_j (a dense reference), structural non-zeros = the iteration space."""
    w = rng.standard_normal((4, 2, 3))
    mat = einsum_matrix(["bij", "jkl"], "bikl", 0, [(2, 3, 4), w])
    basis = np.eye(24).reshape(24, 2, 3, 4)
    dense = np.stack([np.einsum("bij,jkl->bikl", e, w).ravel() for e in basis], axis=1)
    np.testing.assert_array_equal(mat.toarray(), dense)
    assert mat.nnz == 2 * 3 * 2 * 3 * 4


def test_einsum_budget_checked_from_shapes(rng):
    """A huge einsum is refused by the memory budget before its matrix is built."""
    model = _einsum_model("ij,jk->ik", (300, 400), [np.zeros((400, 500), np.float32)], 0,
                          relu=False)
    with pytest.raises(MemoryBudgetError, match="Einsum"):
        refbbp.load(model, batch_axis=None, max_bytes=20 << 20)
