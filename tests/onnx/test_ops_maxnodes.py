"""Max nodes over input-dependent candidates against onnxruntime (SPEC section 1): Max
and Min of several tensors (broadcast, constant operands mixed in), ReduceMax and
ReduceMin (axes by attribute or input, keepdims, noop_with_empty_axes).

Each check: the float64 forward pass equals onnxruntime's, the local linear model is
exact, BBp is complete, and every selection is the first maximum (minimum for Min) in
window order -- operand order for Max/Min, row-major order of the reduced axes for
the reductions -- including ties built on purpose.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

import refbbp
from tests.bbp.test_bbp_properties import check_model
from tests.helpers import as_f32, check_against_ort, make_model, make_node, run_ort
from tests.onnx.test_canonical import assert_same_network
from tests.strategies import seeds

# --------------------------------------------------------------------- helpers


def _max_node(net):
    (k,) = [k for k, n in enumerate(net.nodes) if n.kind == "max"]
    return k


def _selected_positions(net, x):
    """Per sample and output element of the one max node: the first window position
    holding the selected candidate."""
    k = _max_node(net)
    window = net.nodes[k].window
    sel = net.trace(x).selected[k]                                # (batch, n_out)
    hit = window[None] == sel[..., None]                          # (batch, n_out, K)
    assert hit.any(axis=2).all()
    return np.argmax(hit, axis=2)


def _first_extreme(stack, op):
    """First maximum (first minimum for Min/ReduceMin) along the last axis."""
    return np.argmin(stack, -1) if op in ("Min", "ReduceMin") else np.argmax(stack, -1)


def _check_node_kinds(net, op):
    kinds = [n.kind for n in net.nodes]
    assert kinds.count("max") == 1
    k = _max_node(net)
    assert net.nodes[k].op == op
    if op in ("Min", "ReduceMin"):   # Neg node -> max node -> Neg node
        before, after = net.nodes[k - 1], net.nodes[k + 1]
        assert net.nodes[k].inputs == [k - 1] and before.op == after.op == "Neg"
        assert after.inputs == [k]
        # Each candidate negated once; a constant candidate is a row with its bias only.
        mats = before.to_csr()
        assert all(np.all(a.data == -1.0) for a in mats)
        per_row = sum(np.diff(a.indptr) for a in mats)
        assert np.all(per_row <= 1) and np.all(before.bias[per_row == 1] == 0)


# ------------------------------------------------------------- Max/Min of tensors
@st.composite
def max_min_models(draw):
    """``op(t_1, ..., t_k)`` of 2-3 input-dependent operands (MatMul + Add + Reshape of
    a vector input, some of them repeated: exact ties) and 0-2 constants, each of a shape
    that broadcasts to a random output shape; operands in random order."""
    rng = np.random.default_rng(draw(seeds))
    op = draw(st.sampled_from(["Max", "Min"]))
    opset = draw(st.sampled_from([8, 13, 17]))
    out = [draw(st.integers(1, 4)) for _ in range(draw(st.integers(1, 3)))]
    n_in = draw(st.integers(1, 5))
    kinds = draw(st.permutations(["var"] * draw(st.integers(2, 3)) +
                                 ["const"] * draw(st.integers(0, 2))))
    nodes, inits, operands, variables = [], {}, [], []
    for j, kind in enumerate(kinds):
        shape = [d if draw(st.booleans()) else 1 for d in out]
        if kind == "const":
            inits[f"c{j}"] = rng.normal(size=shape[draw(st.integers(0, len(out))):])
            operands.append(f"c{j}")
        elif variables and draw(st.booleans()):
            operands.append(draw(st.sampled_from(variables)))     # a tie everywhere
        else:
            m = int(np.prod(shape))
            inits.update({f"W{j}": rng.normal(size=(n_in, m)), f"b{j}": rng.normal(size=m),
                          f"s{j}": np.array([-1, *shape], np.int64)})
            nodes += [make_node("MatMul", ["x", f"W{j}"], [f"m{j}"]),
                      make_node("Add", [f"m{j}", f"b{j}"], [f"a{j}"]),
                      make_node("Reshape", [f"a{j}", f"s{j}"], [f"t{j}"])]
            operands.append(f"t{j}")
            variables.append(f"t{j}")
    nodes.append(make_node(op, operands, ["y"]))
    model = make_model(nodes, {"x": (n_in,)}, ["y"], inits, opset)
    return model, op, operands, as_f32(rng.normal(size=(2, n_in)))


@given(case=max_min_models())
@settings(max_examples=60)  # ~ 0.1 s per example (onnxruntime, load, BBp in both backends)
def test_max_min_of_tensors(case):
    model, op, operands, x = case
    net = check_against_ort(model, x)
    _check_node_kinds(net, op)
    check_model(net, x, "sign", 1.0)
    # The winner is the first operand holding the extreme value (onnxruntime's operand
    # values; exact ties are repeated operands).
    out_shape = run_ort(model, x).shape
    stack = np.stack([np.broadcast_to(run_ort(model, x, output=t) if t.startswith("t") else
                                      onnx.numpy_helper.to_array(next(
                                          i for i in model.graph.initializer if i.name == t)),
                                      out_shape).reshape(len(x), -1) for t in operands], -1)
    assert_array_equal(_selected_positions(net, x), _first_extreme(stack, op))


@pytest.mark.parametrize("op", ["Max", "Min"])
@pytest.mark.parametrize("order", ["ab", "ba"])
def test_max_min_ties_go_to_the_first_operand(op, order):
    """x = (u, u): the halves tie everywhere; the gradient is that of the first operand
    (the first half for Max(a, b), the second for Max(b, a))."""
    m = 4
    nodes = [make_node("Slice", ["x", "s0", "e0", "ax"], ["a"]),
             make_node("Slice", ["x", "s1", "e1", "ax"], ["b"]),
             make_node(op, list(order), ["y"])]
    inits = {"s0": [0], "e0": [m], "s1": [m], "e1": [2 * m], "ax": [1]}
    model = make_model(nodes, {"x": (2 * m,)}, ["y"], inits, 17)
    u = np.array([1.0, -2.0, 0.0, 3.0])
    x = np.concatenate([u, u])[None]
    net = check_against_ort(model, x)
    first = 0 if order == "ab" else m
    for p in range(m):
        lin = net.linearize(x, target=p)
        assert_array_equal(lin.w.ravel(), np.eye(2 * m)[first + p])
    check_model(net, x, "sign", 1.0)


@pytest.mark.parametrize("op", ["Max", "Min"])
def test_max_min_constant_operand_is_a_candidate(op):
    """op(a, c, b) with a constant c between two tensors: where a ties c, a wins (it comes
    first); where c ties b, c wins: the output is c there, with gradient 0 and the
    constant in the bias."""
    sign = 1.0 if op == "Max" else -1.0
    nodes = [make_node("Slice", ["x", "s0", "e0", "ax"], ["a"]),
             make_node("Slice", ["x", "s1", "e1", "ax"], ["b"]),
             make_node(op, ["a", "c", "b"], ["y"])]
    # element 0: a = c > b (a wins); 1: c = b > a (c wins); 2: b > c > a (b wins); for
    # Min, all negated.
    c = sign * np.array([2.0, 2.0, 5.0])
    x = sign * np.array([[2.0, 0.0, 1.0, 0.0, 2.0, 7.0]])
    inits = {"s0": [0], "e0": [3], "s1": [3], "e1": [6], "ax": [1], "c": c}
    model = make_model(nodes, {"x": (6,)}, ["y"], inits, 17)
    net = check_against_ort(model, x)
    expected_w = [np.eye(6)[0], np.zeros(6), np.eye(6)[5]]
    for p in range(3):
        lin = net.linearize(x, target=p)
        assert_array_equal(lin.w.ravel(), expected_w[p])
    assert net.linearize(x, target=1).bias_x == sign * 2.0
    assert_array_equal(_selected_positions(net, x), [[0, 1, 2]])
    check_model(net, x, "sign", 1.0)


@pytest.mark.parametrize("op", ["Max", "Min"])
def test_max_min_of_one_tensor_is_the_tensor(rng, op):
    model = make_model([make_node("Gemm", ["x", "W"], ["t"], transB=1),
                        make_node(op, ["t"], ["y"])],
                       {"x": (3,)}, ["y"], {"W": rng.normal(size=(2, 3))}, 17)
    net = check_against_ort(model, rng.normal(size=(2, 3)))
    assert [n.op for n in net.nodes] == ["Input", "Gemm"]


def test_max_before_opset_8_does_not_broadcast():
    """Max-6 takes inputs of one shape: a broadcast is a malformed node."""
    nodes = [make_node("Relu", ["x"], ["a"]),
             make_node("Reshape", ["a", "s"], ["b"]),
             make_node("Max", ["a", "b"], ["y"])]
    model = make_model(nodes, {"x": (3,)}, ["y"], {"s": np.array([1, 1, 3], np.int64)}, 7)
    with pytest.raises(refbbp.ModelFormatError, match="before opset 8 Max does not "
                                                      "broadcast"):
        refbbp.load(model)


# ------------------------------------------------------------- ReduceMax/ReduceMin
def _reduce_model(op, opset, shape, axes, keepdims=None, noop=None, pad=None):
    """``op`` over ``axes`` (attribute before opset 18, input from 18 on; ``None``: not
    given) of the input, or of the input padded at the end of its last axis with
    ``pad = (count, value)``."""
    attrs, inits, nodes, t = {}, {}, [], "x"
    if pad is not None:
        rank = len(shape) + 1
        inits.update(pads=np.array([0] * (2 * rank - 1) + [pad[0]], np.int64),
                     value=np.array(pad[1], np.float32))
        nodes.append(make_node("Pad", ["x", "pads", "value"], ["p"], mode="constant"))
        t = "p"
    if keepdims is not None:
        attrs["keepdims"] = keepdims
    if noop is not None:
        attrs["noop_with_empty_axes"] = noop
    inputs = [t]
    if axes is not None:
        if opset >= 18:
            inits["axes"] = np.array(axes, np.int64)
            inputs.append("axes")
        else:
            attrs["axes"] = axes
    nodes.append(make_node(op, inputs, ["y"], **attrs))
    return make_model(nodes, {"x": shape}, ["y"], inits, opset)


def _reference_selection(a, axes):
    """Window position of the first maximum of ``a`` (batch, *sample) over ``axes``
    (axes of ``a``), in row-major order of the reduced axes: output elements in C order
    of the kept axes."""
    kept = [i for i in range(1, a.ndim) if i not in axes]
    moved = np.transpose(a, [0] + kept + sorted(axes))
    return moved.reshape(a.shape[0], int(np.prod([a.shape[i] for i in kept])), -1)


@st.composite
def reduce_cases(draw):
    rng = np.random.default_rng(draw(seeds))
    op = draw(st.sampled_from(["ReduceMax", "ReduceMin"]))
    opset = draw(st.sampled_from([11, 13, 18, 20]))
    shape = tuple(draw(st.integers(1, 4)) for _ in range(draw(st.integers(1, 3))))
    rank = len(shape) + 1
    axes = draw(st.lists(st.integers(1, rank - 1), min_size=1, unique=True))
    spelled = [a - rank if draw(st.booleans()) else a for a in axes]
    keepdims = draw(st.sampled_from([None, 0, 1]))
    pad = draw(st.sampled_from([None, (1, 0.0), (2, 1.0)]))
    # Integer values: many ties.
    x = rng.integers(-2, 3, size=(2,) + shape).astype(np.float64)
    return op, opset, shape, axes, spelled, keepdims, pad, x


@given(case=reduce_cases())
@settings(max_examples=60)  # ~ 0.1 s per example
def test_reduce_max_min(case):
    op, opset, shape, axes, spelled, keepdims, pad, x = case
    model = _reduce_model(op, opset, shape, spelled, keepdims, pad=pad)
    net = check_against_ort(model, x)
    _check_node_kinds(net, op)
    check_model(net, x, "sign", 1.0)
    a = x if pad is None else np.pad(x, [(0, 0)] * len(shape) + [(0, pad[0])],
                                     constant_values=pad[1])
    assert_array_equal(_selected_positions(net, x),
                       _first_extreme(_reference_selection(a, axes), op))


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
@pytest.mark.parametrize("axes", [[1], [2, 3], [1, 3]],
                         ids=lambda a: "axes" + "_".join(map(str, a)))
def test_reduce_ties_select_the_first_in_row_major_order(op, axes):
    """All candidates equal: each output's gradient is the first element of its group
    in row-major order of the reduced axes."""
    shape = (2, 3, 2)
    x = np.zeros((1,) + shape)
    net = check_against_ort(_reduce_model(op, 18, shape, axes, keepdims=0), x)
    ids = np.arange(x.size).reshape(x.shape)
    first = _reference_selection(ids, axes)[0, :, 0]
    for p, q in enumerate(first):
        assert_array_equal(net.linearize(x, target=p).w.ravel(), np.eye(x.size)[q])


# Reducing over every axis includes the batch axis: per sample that is the same only with
# one sample, so these run on a batch of one.
@pytest.mark.parametrize("opset,axes,noop,identity", [
    pytest.param(13, None, None, False, id="13-no-axes"),
    pytest.param(18, None, None, False, id="18-no-axes"),
    pytest.param(18, [], 0, False, id="18-empty-axes"),
    pytest.param(18, None, 1, True, id="18-no-axes-noop"),
    pytest.param(20, [], 1, True, id="20-empty-axes-noop"),
])
@pytest.mark.parametrize("keepdims", [0, 1], ids=["keepdims0", "keepdims1"])
@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
def test_reduce_all_or_noop(rng, op, opset, axes, noop, keepdims, identity):
    model = _reduce_model(op, opset, (3, 4), axes, keepdims, noop)
    net = check_against_ort(model, rng.standard_normal((1, 3, 4)))
    assert net.n_outputs == (12 if identity else 1)
    assert ("max" in [n.kind for n in net.nodes]) == (not identity)


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin", "Max", "Min"])
def test_max_nodes_were_refused_as_unsupported(rng, op):
    """Regression: ReduceMax, ReduceMin and Max/Min of two input-dependent tensors used to
    be refused with UnsupportedOpError ("keeps a network piecewise linear, but refbbp has
    no converter for it"); they load as max nodes."""
    if op.startswith("Reduce"):
        model = _reduce_model(op, 18, (3, 4), [2], keepdims=1)
    else:
        model = make_model([make_node("Relu", ["x"], ["a"]), make_node("Neg", ["x"], ["b"]),
                            make_node(op, ["a", "b"], ["y"])], {"x": (3, 4)}, ["y"], {}, 17)
    net = check_against_ort(model, rng.standard_normal((2, 3, 4)))
    assert op in [n.op for n in net.nodes]


# ------------------------------------------------------------- completeness on models
def _conv_reducemax_gemm(rng, op):
    """Conv -> Relu -> op over the spatial axes -> Gemm."""
    nodes = [make_node("Conv", ["x", "Wc", "bc"], ["c"], pads=[1, 1, 1, 1]),
             make_node("Relu", ["c"], ["r"]),
             make_node(op, ["r"], ["m"], axes=[2, 3], keepdims=0),
             make_node("Gemm", ["m", "Wg", "bg"], ["y"], transB=1)]
    inits = {"Wc": rng.normal(size=(4, 2, 3, 3)) / 3, "bc": rng.normal(0, 0.3, 4),
             "Wg": rng.normal(size=(3, 4)), "bg": rng.normal(0, 0.3, 3)}
    return make_model(nodes, {"x": (2, 5, 5)}, ["y"], inits, 13), (2, 2, 5, 5)


def _two_conv_branches(rng, op):
    """Two Conv branches -> op (with a per-channel constant) -> Flatten -> Gemm."""
    nodes = [make_node("Conv", ["x", "W1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             make_node("Conv", ["x", "W2", "b2"], ["c2"]),
             make_node("Relu", ["c2"], ["r2"]),
             make_node("Pad", ["r2", "p"], ["q2"]),
             make_node(op, ["c1", "q2", "k"], ["m"]),
             make_node("Flatten", ["m"], ["f"]),
             make_node("Gemm", ["f", "Wg", "bg"], ["y"], transB=1)]
    inits = {"W1": rng.normal(size=(3, 2, 3, 3)) / 3, "b1": rng.normal(0, 0.3, 3),
             "W2": rng.normal(size=(3, 2, 3, 3)) / 3, "b2": rng.normal(0, 0.3, 3),
             "p": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
             "k": rng.normal(0, 0.5, (3, 1, 1)),
             "Wg": rng.normal(size=(2, 75)) / 8, "bg": rng.normal(0, 0.3, 2)}
    return make_model(nodes, {"x": (2, 5, 5)}, ["y"], inits, 17), (2, 2, 5, 5)


@pytest.mark.parametrize("rule", ["sign", "deviation"])
@pytest.mark.parametrize("build,op", [
    (_conv_reducemax_gemm, "ReduceMax"), (_conv_reducemax_gemm, "ReduceMin"),
    (_two_conv_branches, "Max"), (_two_conv_branches, "Min"),
])
def test_bbp_complete_on_models(rng, build, op, rule):
    model, x_shape = build(rng, op)
    x = as_f32(rng.normal(size=x_shape))
    net = check_against_ort(model, x)
    _check_node_kinds(net, op)
    for temperature in (0.0, 1.0):
        att = check_model(net, x, rule, temperature)
        assert att.completeness().ok()


# ------------------------------------------------------------- canonical form
@pytest.mark.parametrize("opset", [13, 18])
def test_reduce_max_over_spatial_axes_is_global_max_pool(opset):
    """ReduceMax over the spatial axes with keepdims is GlobalMaxPool: the same nodes."""
    shape = (3, 4, 5)
    reduce_net = refbbp.load(_reduce_model("ReduceMax", opset, shape, [2, 3], keepdims=1))
    pool_net = refbbp.load(make_model([make_node("GlobalMaxPool", ["x"], ["y"])],
                                      {"x": shape}, ["y"], {}, opset))
    assert_same_network(reduce_net, pool_net)


@pytest.mark.parametrize("op", ["Max", "Min"])
def test_max_of_tensors_is_reduce_max_of_their_stack(rng, op):
    """``Max(a, b)`` (torch.maximum) and ``ReduceMax`` over ``a`` and ``b`` stacked on a
    new last axis (torch.stack(...).amax(-1)) give the same nodes: the gather reads the
    candidates in one canonical order, and ties go to a either way."""
    shape = (3, 4)
    inits = {"W1": rng.normal(size=(4, 5)), "W2": rng.normal(size=(4, 5)),
             "ax": np.array([-1], np.int64)}
    branches = [make_node("MatMul", ["x", "W1"], ["a"]), make_node("MatMul", ["x", "W2"], ["b"])]
    direct = make_model(branches + [make_node(op, ["a", "b"], ["y"])],
                        {"x": shape}, ["y"], inits, 18)
    stacked = make_model(branches + [
        make_node("Unsqueeze", ["a", "ax"], ["ua"]), make_node("Unsqueeze", ["b", "ax"], ["ub"]),
        make_node("Concat", ["ua", "ub"], ["s"], axis=-1),
        make_node(f"Reduce{op}", ["s", "ax"], ["y"], keepdims=0)], {"x": shape}, ["y"], inits, 18)
    x = as_f32(rng.normal(size=(2,) + shape))
    a = check_against_ort(direct, x)
    b = check_against_ort(stacked, x)
    assert_same_network(a, b)
    assert_allclose(refbbp.bbp(a, x).beta, refbbp.bbp(b, x).beta, rtol=0, atol=0)


@pytest.mark.parametrize("op,axis", [("ReduceMax", 1), ("ReduceMax", 2), ("ReduceMin", 1),
                                     ("ReduceMin", 2), ("Max", None)])
def test_max_node_over_an_empty_tensor_is_refused(op, axis):
    """Regression: a reduction of an empty slice (no output element, or none to take the
    maximum of) escaped as a raw ValueError from the builder ("no output element has a
    candidate") or made a max node with empty windows; it is an UnsupportedOpError
    naming the node."""
    slice_ = make_node("Slice", ["x", "s", "e", "ax"], ["r"])
    inits = {"s": [0], "e": [0], "ax": [2]}
    if op == "Max":
        nodes = [slice_, make_node("Relu", ["r"], ["q"]), make_node("Max", ["r", "q"], ["y"])]
    else:
        nodes = [slice_, make_node(op, ["r"], ["y"], axes=[axis], keepdims=0)]
    model = make_model(nodes, {"x": (3, 4)}, ["y"], inits, 13)
    with pytest.raises(refbbp.UnsupportedOpError, match=f"'{op}_y': an empty tensor"):
        refbbp.load(model)
