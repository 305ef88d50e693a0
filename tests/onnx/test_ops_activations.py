"""Piecewise-linear activation converters against onnxruntime: Relu, LeakyRelu, PRelu,
Clip (attributes in opset 6, inputs from opset 11), Abs, HardSigmoid, Shrink,
ThresholdedRelu and Max/Min with constants, on a conv (the activation attaches to the
conv node) and on the input itself (an identity node carries it); values at the
breakpoints, BBp's completeness and gradients on small models, and the canonical form
where an exporter can write an activation two ways."""

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

import refbbp
from refbbp.network.piecewise import PiecewiseLinear
from refbbp.onnx import activations, registry
from tests.helpers import (as_f32, check_against_ort, make_model, make_node,
                           run_onnx_reference, run_ort)
from tests.strategies import seeds

IN_SHAPE = (3, 4, 5)


def _model(act_nodes, inits=None, opset=13, after_conv=True, rng=None):
    """x -> [Conv 3x3 pad 1 ->] activation nodes (reading "c", writing "z")."""
    nodes, inits = [], dict(inits or {})
    if after_conv:
        nodes.append(make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]))
        inits.update(W=rng.standard_normal((3, 3, 3, 3)), B=rng.standard_normal(3))
    else:
        nodes.append(make_node("Identity", ["x"], ["c"]))
    return make_model(nodes + act_nodes, {"x": IN_SHAPE}, ["z"], inits, opset)


def _check(model, rng, spread=1.0, runtime=run_ort):
    return check_against_ort(model, spread * rng.standard_normal((3,) + IN_SHAPE),
                             runtime=runtime)


@pytest.mark.parametrize("after_conv", [True, False], ids=["on-conv", "on-input"])
@pytest.mark.parametrize("op,attrs", [
    pytest.param("Relu", {}, id="Relu"),
    pytest.param("LeakyRelu", {}, id="LeakyRelu-default"),
    pytest.param("LeakyRelu", dict(alpha=0.2), id="LeakyRelu-0.2"),
    pytest.param("LeakyRelu", dict(alpha=-0.5), id="LeakyRelu-negative"),
    pytest.param("LeakyRelu", dict(alpha=1.5), id="LeakyRelu-steep"),
])
@pytest.mark.parametrize("opset", [6, 13, 16])
def test_relu_leaky_relu(rng, op, attrs, after_conv, opset):
    net = _check(_model([make_node(op, ["c"], ["z"], **attrs)], opset=opset,
                        after_conv=after_conv, rng=rng), rng)
    last = net.nodes[-1]
    assert last.activation is not None and last.activation.name == op
    assert [n.op for n in net.nodes] == (["Input", "Conv"] if after_conv else ["Input", op])


@pytest.mark.parametrize("after_conv", [True, False], ids=["on-conv", "on-input"])
@pytest.mark.parametrize("slope_shape", [(1,), (3, 1, 1), (1, 4, 1), IN_SHAPE, ()],
                         ids=["scalar-1", "per-channel", "per-row", "full", "scalar"])
@pytest.mark.parametrize("opset", [7, 9, 16])
def test_prelu(rng, slope_shape, after_conv, opset):
    slope = rng.standard_normal(slope_shape)  # negative slopes included
    net = _check(_model([make_node("PRelu", ["c", "S"], ["z"])], {"S": slope}, opset=opset,
                        after_conv=after_conv, rng=rng), rng)
    assert net.nodes[-1].activation.name == "PRelu"


def test_prelu_negative_per_channel_slopes(rng):
    slope = -np.array([0.5, 1.5, 3.0]).reshape(3, 1, 1)
    _check(_model([make_node("PRelu", ["c", "S"], ["z"])], {"S": slope}, rng=rng), rng)


# Clip: (id, opset, lo, hi); None leaves the bound out.
CLIP_CASES = [
    ("both", -0.5, 0.7),
    ("relu6", 0.0, 6.0),
    ("hardtanh", -1.0, 1.0),
    ("only-min", -0.3, None),
    ("only-max", None, 0.4),
    ("neither", None, None),
    ("lo-gt-hi", 0.5, -0.5),
    ("lo-eq-hi", 0.25, 0.25),
]


def _clip_node(opset, lo, hi):
    """Clip with bounds as attributes (opset 6) or inputs (11+; an absent min is "")."""
    if opset < 11:
        attrs = {k: v for k, v in (("min", lo), ("max", hi)) if v is not None}
        return make_node("Clip", ["c"], ["z"], **attrs), {}
    inputs, inits = ["c"], {}
    if lo is not None or hi is not None:
        inputs.append("lo" if lo is not None else "")
    if hi is not None:
        inputs.append("hi")
    if lo is not None:
        inits["lo"] = np.array(lo, np.float32)
    if hi is not None:
        inits["hi"] = np.array(hi, np.float32)
    return make_node("Clip", inputs, ["z"]), inits


@pytest.mark.parametrize("spread", [1.0, 10.0], ids=["moderate", "saturating"])
@pytest.mark.parametrize("after_conv", [True, False], ids=["on-conv", "on-input"])
@pytest.mark.parametrize("lo,hi", [pytest.param(*c[1:], id=c[0]) for c in CLIP_CASES])
@pytest.mark.parametrize("opset", [6, 11, 12, 13])
def test_clip(rng, opset, lo, hi, after_conv, spread):
    node, inits = _clip_node(opset, lo, hi)
    # onnxruntime refuses Clip-6 with min > max ("min_ <= max_ was false"); ONNX's
    # reference evaluator clips to max everywhere, as Clip-11+ defines it.
    runtime = run_onnx_reference if opset < 11 and lo is not None and hi is not None \
        and lo > hi else run_ort
    net = _check(_model([node], inits, opset=opset, after_conv=after_conv, rng=rng), rng, spread,
                 runtime)
    if lo is None and hi is None:  # the identity: nothing to attach
        assert all(n.activation is None for n in net.nodes)
    else:
        assert net.nodes[-1].activation.name == "Clip"


def test_saturated_clip_offsets_are_in_the_bias(rng):
    # Every element saturated: the local model is constant, its bias the clip bounds.
    node, inits = _clip_node(13, -0.5, 0.7)
    net = refbbp.load(_model([node], inits, after_conv=False, rng=rng))
    x = np.where(rng.random(IN_SHAPE) < 0.5, -5.0, 5.0)
    lin = net.linearize(x, target=3)
    assert not np.any(lin.w)
    lo, hi = np.float32(-0.5), np.float32(0.7)  # the bounds are float32 constants
    assert lin.bias_x == (hi if x.ravel()[3] > 0 else lo)
    np.testing.assert_array_equal(lin.bias_x_all(), np.where(x.ravel() > 0, hi, lo))


@pytest.mark.parametrize("z,slope", [(0.0, 0.0), (-1e-300, 0.0), (1e-300, 1.0)])
def test_relu_breakpoint_takes_the_left_piece(z, slope):
    # Pieces are left-open and right-closed (SPEC section 1): ReLU at 0 has slope 0.
    net = refbbp.load(make_model([make_node("Relu", ["x"], ["z"])], {"x": (1,)}, ["z"]))
    assert net.linearize(np.array([z]), target=0).w[0] == slope


def test_stacked_activations_get_their_own_nodes(rng):
    # The second activation cannot attach to an already activated node.
    node, inits = _clip_node(13, None, 0.5)
    nodes = [make_node("Relu", ["c"], ["r"]), make_node("LeakyRelu", ["r"], ["l"], alpha=0.1)]
    node.input[0] = "l"
    net = _check(_model(nodes + [node], inits, rng=rng), rng)
    assert [n.activation.name for n in net.nodes[1:]] == ["Relu", "LeakyRelu", "Clip"]


def test_activation_on_a_tensor_with_another_consumer_gets_its_own_node(rng):
    # c feeds the Relu and the residual Add: the Add must read the pre-activation, so
    # the Relu cannot attach to the conv.
    nodes = [make_node("Relu", ["c"], ["r"]), make_node("Add", ["r", "c"], ["z"])]
    net = _check(_model(nodes, rng=rng), rng)
    assert [n.op for n in net.nodes] == ["Input", "Conv", "Relu", "Add"]
    assert net.nodes[1].activation is None and net.nodes[2].activation.name == "Relu"


# ---------------------------------------------------------------------------------------
# Abs, HardSigmoid, Shrink, ThresholdedRelu, and Max/Min with constants: activations
# with their own breakpoints (SPEC section 1), pieces that may jump. At a breakpoint the
# value must be onnxruntime's (the models below put x itself, exactly, on it).

# Attributes: 0 or float32 of magnitude 2**-10 to 3 (smaller ones make float32 results
# subnormal, which float64 does not round).
f32s = st.one_of(st.just(0.0), st.floats(2**-10, 3, width=32), st.floats(-3, -2**-10, width=32))


def _breakpoints(op, attrs):
    """The inputs at which ``op`` changes piece (ONNX defaults filled in)."""
    if op == "Abs":
        return [0.0]
    if op == "ThresholdedRelu":
        return [attrs.get("alpha", 1.0)]
    if op == "Shrink":
        lambd = attrs.get("lambd", 0.5)
        return [-lambd, lambd]
    alpha, beta = attrs.get("alpha", 0.2), attrs.get("beta", 0.5)
    points = [] if alpha == 0 else [-beta / alpha, (1 - beta) / alpha]
    return [float(np.float32(p)) for p in points if abs(p) < 1e30]


@st.composite
def elementwise_ops(draw):
    """(op, opset, attributes) of Abs, HardSigmoid, Shrink or ThresholdedRelu; float32
    attributes (as ONNX stores them), any sign, defaults left out at times."""
    op = draw(st.sampled_from(["Abs", "HardSigmoid", "Shrink", "ThresholdedRelu"]))
    names = {"Abs": (), "HardSigmoid": ("alpha", "beta"), "Shrink": ("bias", "lambd"),
             "ThresholdedRelu": ("alpha",)}[op]
    attrs = {a: draw(f32s) for a in names if draw(st.booleans())}
    opsets = {"Abs": [6, 13, 21], "HardSigmoid": [6, 17, 22], "Shrink": [9, 17],
              "ThresholdedRelu": [10, 17, 22]}[op]
    return op, draw(st.sampled_from(opsets)), attrs


def _with_breakpoints(rng, x, points):
    """``x`` with about a third of its elements set to a breakpoint or a float32 next
    to one (below or above)."""
    x = as_f32(x)
    if not points:
        return x
    flat = x.reshape(-1)
    hit = np.flatnonzero(rng.random(flat.size) < 1 / 3)
    p = np.float32(rng.choice(points, hit.size))
    side = rng.integers(-1, 2, hit.size)
    flat[hit] = np.where(side == 0, p, np.nextafter(p, np.where(side < 0, -np.inf, np.inf)))
    return x


@given(spec=elementwise_ops(), seed=seeds,
       shape=st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple),
       spread=st.sampled_from([0.5, 3.0]))
@settings(max_examples=100)
def test_elementwise_ops_against_onnxruntime(spec, seed, shape, spread):
    """Abs, HardSigmoid, Shrink, ThresholdedRelu on the input itself (the activation's
    pre-activation is x, exactly): the same values as onnxruntime, also exactly at the
    breakpoints and one float32 to either side of them."""
    op, opset, attrs = spec
    rng = np.random.default_rng(seed)
    model = make_model([make_node(op, ["x"], ["z"], **attrs)], {"x": shape}, ["z"],
                       opset=opset)
    points = _breakpoints(op, attrs)
    x = _with_breakpoints(rng, spread * rng.standard_normal((4,) + shape), points)
    # Two samples beyond every breakpoint, on either side, so that the output's scale
    # (the tolerance is relative to it) is that of the function, not of rounding noise
    # at a breakpoint (HardSigmoid's alpha x + beta is 0 in float32, 3e-8 in float64).
    far = max(map(abs, points), default=0.0) + 10
    x = np.concatenate([x, np.full((1,) + shape, far), np.full((1,) + shape, -far)])
    net = check_against_ort(model, x)
    assert net.nodes[-1].activation.name == op


NEW_OP_CASES = [
    ("Abs", 13, {}),
    ("HardSigmoid", 6, {}),
    ("HardSigmoid", 22, dict(alpha=1 / 6, beta=0.5)),
    ("HardSigmoid", 17, dict(alpha=-0.7, beta=0.2)),
    ("HardSigmoid", 17, dict(alpha=0.0, beta=0.3)),
    ("Shrink", 9, {}),
    ("Shrink", 17, dict(lambd=0.3, bias=0.3)),      # soft shrink: continuous
    ("Shrink", 17, dict(lambd=0.0, bias=-0.4)),
    ("Shrink", 17, dict(lambd=-0.25, bias=0.1)),    # no zero piece
    ("ThresholdedRelu", 10, {}),
    ("ThresholdedRelu", 22, dict(alpha=-0.5)),
]


@pytest.mark.parametrize("after_conv", [True, False], ids=["on-conv", "on-input"])
@pytest.mark.parametrize("op,opset,attrs", [pytest.param(*c, id=f"{c[0]}-{c[1]}-{i}")
                                            for i, c in enumerate(NEW_OP_CASES)])
def test_elementwise_ops_on_a_conv(rng, op, opset, attrs, after_conv):
    """On a conv the activation attaches to the conv node (HardSigmoid's affine map folds
    into it first); on the input an identity (or elementwise) node carries it."""
    net = _check(_model([make_node(op, ["c"], ["z"], **attrs)], opset=opset,
                        after_conv=after_conv, rng=rng), rng, spread=2.0)
    assert net.nodes[-1].activation.name == op
    assert [n.kind for n in net.nodes] == ["input", "affine"]
    if after_conv:
        assert net.nodes[-1].op == "Conv"


def _exact_at(op, x, **attrs):
    """refbbp's and onnxruntime's values of ``op`` at the float32 inputs ``x``, and the
    network's slope there."""
    model = make_model([make_node(op, ["x"], ["z"], **attrs)], {"x": (len(x),)}, ["z"])
    net = refbbp.load(model)
    x = as_f32(x)
    slopes = [net.linearize(x, target=i).w[i] for i in range(len(x))]
    return net.forward(x), run_ort(model, x).astype(np.float64).ravel(), np.array(slopes)


def test_shrink_at_minus_lambd_takes_onnxruntimes_value():
    """onnxruntime's Shrink is ``x < -lambd ? x + bias : x > lambd ? x - bias : 0``: at
    ``x = -lambd`` the right piece (0). With the breakpoint at -lambd itself the left
    piece would apply there (pieces are right-closed) and give ``-lambd + bias``; the
    breakpoint is the float64 just below -lambd, so every float64 x lands where
    onnxruntime puts it."""
    lam = np.float32(0.3)
    x = [-lam, lam, np.nextafter(-lam, np.float32(-1)), np.nextafter(lam, np.float32(1)), 0.0]
    ours, ort_, slopes = _exact_at("Shrink", x, lambd=0.3, bias=1.5)
    np.testing.assert_array_equal(ours[:2], [0.0, 0.0])
    np.testing.assert_allclose(ours, ort_, rtol=1e-6)
    np.testing.assert_array_equal(slopes, [0.0, 0.0, 1.0, 1.0, 0.0])


def test_shrink_with_zero_lambd_is_zero_only_at_zero():
    x = [0.0, -0.0, -1e-30, 1e-30]
    ours, ort_, slopes = _exact_at("Shrink", x, lambd=0.0, bias=2.0)
    np.testing.assert_allclose(ours, ort_, rtol=1e-6)
    np.testing.assert_array_equal(ours[:2], [0.0, 0.0])
    np.testing.assert_array_equal(slopes, [0.0, 0.0, 1.0, 1.0])


def test_thresholded_relu_at_alpha_is_zero():
    """``x > alpha ? x : 0``: at ``x = alpha`` the left piece (0, slope 0) -- SPEC's
    convention and onnxruntime's value agree."""
    a = np.float32(0.7)
    ours, ort_, slopes = _exact_at("ThresholdedRelu", [a, np.nextafter(a, np.float32(1)), -2.0],
                                   alpha=0.7)
    np.testing.assert_array_equal(ours, ort_)
    assert ours[0] == 0.0
    np.testing.assert_array_equal(slopes, [0.0, 1.0, 0.0])


def test_abs_at_zero_takes_slope_minus_one():
    """SPEC section 1: Abs at 0 is on the left piece, c = -1."""
    ours, ort_, slopes = _exact_at("Abs", [0.0, -2.0, 3.0])
    np.testing.assert_array_equal(ours, ort_)
    np.testing.assert_array_equal(slopes, [-1.0, -1.0, 1.0])


def test_hard_sigmoid_breakpoints_take_the_left_piece():
    """HardSigmoid(alpha=0.5, beta=0.5) changes piece at x = -1 and x = 1 (exact in
    float64): the left piece there, slope 0 at -1 and 0.5 at 1."""
    ours, ort_, slopes = _exact_at("HardSigmoid", [-1.0, 1.0, 0.0], alpha=0.5, beta=0.5)
    np.testing.assert_array_equal(ours, ort_)
    np.testing.assert_array_equal(ours, [0.0, 1.0, 0.5])
    np.testing.assert_array_equal(slopes, [0.0, 0.5, 0.5])


@pytest.mark.parametrize("op", ["Abs", "HardSigmoid", "Shrink", "ThresholdedRelu", "Max", "Min"])
def test_piecewise_linear_ops_used_to_be_refused(op):
    """Abs, HardSigmoid, Max and Min used to be refused as "piecewise linear, but no
    converter" (UnsupportedOpError), Shrink and ThresholdedRelu as not piecewise linear
    (NotPiecewiseLinearError: discontinuous), though each has finitely many affine
    pieces (SPEC section 1). They now load, and the registry lists them as supported."""
    inits = {"C": np.full(3, 0.25)} if op in ("Max", "Min") else None
    ins = ["x", "C"] if inits else ["x"]
    net = refbbp.load(make_model([make_node(op, ins, ["z"])], {"x": (3,)}, ["z"], inits))
    assert net.nodes[-1].activation.name == op
    assert op in refbbp.supported_ops()
    assert op not in registry.NOT_PIECEWISE_LINEAR
    assert op not in registry.PIECEWISE_LINEAR_UNSUPPORTED


# ------------------------------------------------------------------------- Max / Min
@st.composite
def max_min_cases(draw):
    """Max or Min of one input-dependent tensor x (read from the input itself or from an
    elementwise Mul node) and 1-3 constants of shapes that broadcast with it, in any
    operand order; values on a grid of quarters, so that x often ties a constant."""
    rng = np.random.default_rng(draw(seeds))
    out = draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
    x_shape = tuple(s if draw(st.booleans()) else 1 for s in out)
    consts = []
    for _ in range(draw(st.integers(1, 3))):
        rank = draw(st.integers(0, len(out)))
        shape = tuple(s if draw(st.booleans()) else 1 for s in out[len(out) - rank:])
        consts.append(rng.integers(-8, 9, shape) / 4)
    pos = draw(st.integers(0, len(consts)))
    xs = (3,) + x_shape
    x = np.where(rng.random(xs) < 0.5, rng.integers(-8, 9, xs) / 4, rng.standard_normal(xs))
    return dict(op=draw(st.sampled_from(["Max", "Min"])), x_shape=x_shape, consts=consts,
                opset=draw(st.sampled_from([8, 12, 13, 17])), pos=pos,
                scaled=draw(st.booleans()), x=x)


@given(case=max_min_cases())
@settings(max_examples=100)
def test_max_min_with_constants_against_onnxruntime(case):
    """Values as onnxruntime's (ties included), the constants' max (min) as a breakpoint
    per element, the activation attached to the elementwise node it follows."""
    names = [f"C{i}" for i in range(len(case["consts"]))]
    src = "s" if case["scaled"] else "x"
    ins = names[:case["pos"]] + [src] + names[case["pos"]:]
    nodes = [make_node("Mul", ["x", "two"], ["s"])] if case["scaled"] else []
    nodes.append(make_node(case["op"], ins, ["z"]))
    inits = dict(zip(names, case["consts"]), two=np.array(2.0))
    model = make_model(nodes, {"x": case["x_shape"]}, ["z"], inits, case["opset"])
    net = check_against_ort(model, case["x"])
    assert net.nodes[-1].activation.name == case["op"]
    # The Mul's elementwise node carries it, or an identity node; a broadcast x is read
    # by an identity node in any case.
    out = np.broadcast_shapes(case["x_shape"], *(np.shape(c) for c in case["consts"]))
    assert len(net.nodes) == 2 + (case["scaled"] and out != case["x_shape"])


@pytest.mark.parametrize("op", ["Max", "Min"])
def test_max_min_with_equal_shapes_before_opset_8(rng, op):
    model = make_model([make_node(op, ["x", "C"], ["z"])], {"x": (2, 3)}, ["z"],
                       {"C": rng.standard_normal((1, 2, 3))}, opset=6, batch=1)
    check_against_ort(model, rng.standard_normal((1, 2, 3)))


@pytest.mark.parametrize("op", ["Max", "Min"])
def test_max_before_opset_8_does_not_broadcast(op):
    """Max-6/Min-6 take tensors of one shape; a constant of another shape is malformed
    (refused with the node named) rather than broadcast."""
    model = make_model([make_node(op, ["x", "C"], ["z"], name="m6")], {"x": (2, 3)}, ["z"],
                       {"C": np.ones(3)}, opset=6)
    with pytest.raises(refbbp.ModelFormatError, match=r"'m6'.*before opset 8 does not "
                                                     r"broadcast"):
        refbbp.load(model)


def _computed_constant(value, n=3):
    """Nodes making the constant "K" of ``n`` copies of ``value`` at load time (an
    initializer may not hold infinities)."""
    t = helper.make_tensor("v", onnx.TensorProto.FLOAT, [1], [value])
    return make_node("ConstantOfShape", ["n"], ["K"], value=t), {"n": np.array([n])}


@pytest.mark.parametrize("op,value", [("Max", -np.inf), ("Min", np.inf)])
def test_max_min_with_a_constant_that_never_wins(op, value):
    """-inf in a Max (+inf in a Min) leaves those elements unchanged: they get a
    breakpoint of 0 with the identity on both sides (breakpoints are finite)."""
    const, inits = _computed_constant(value)
    inits["C"] = np.array([0.5, 0.5, -0.5])
    model = make_model([const, make_node("Min" if op == "Min" else "Max", ["C", "K"], ["D"]),
                        make_node(op, ["x", "D"], ["z"])], {"x": (3,)}, ["z"], inits)
    check_against_ort(model, np.array([[-1.0, 2.0, -0.5], [0.0, 0.5, 3.0]]))
    # all never-winning: nothing to apply
    model = make_model([const, make_node(op, ["x", "K"], ["z"])], {"x": (3,)}, ["z"], inits)
    assert len(refbbp.load(model).nodes) == 2      # the input and the output's copy


@pytest.mark.parametrize("op,value", [("Max", np.inf), ("Min", -np.inf), ("Max", np.nan)])
def test_max_min_with_an_infinite_or_nan_constant_is_refused(op, value):
    """A constant that always wins (+inf in a Max) makes the output infinite, NaN is not
    a number: refused, naming the node."""
    const, inits = _computed_constant(value)
    model = make_model([const, make_node(op, ["x", "K"], ["z"], name="mm")], {"x": (3,)},
                       ["z"], inits)
    with pytest.raises(refbbp.UnsupportedOpError, match=r"'mm'.*(NaN|expected finite)"):
        refbbp.load(model)


@pytest.mark.parametrize("op", ["Max", "Min"])
def test_max_min_of_several_tensors_go_to_max_min_of_tensors(monkeypatch, op):
    """Max/Min with more than one input-dependent operand are not an activation: the
    converter hands them, with every operand, to ``max_min_of_tensors`` (the max
    node's converter, refbbp/onnx/maxnodes.py)."""
    seen = []

    def fake(b, node, ins):
        seen.append((node.op_type, [type(v).__name__ for v in ins]))
        return [ins[0]]

    monkeypatch.setattr(activations, "max_min_of_tensors", fake)
    model = make_model([make_node("Neg", ["x"], ["n"]), make_node(op, ["x", "C", "n"], ["z"])],
                       {"x": (3,)}, ["z"], {"C": np.zeros(3)})
    refbbp.load(model)
    assert seen == [(op, ["Var", "ndarray", "Var"])]


def test_uniform_activation_stores_shared_rows_once():
    """``PiecewiseLinear.uniform`` takes each array shared (1-D, stored once) or per
    element (2-D); a Max with one scalar constant stores a few bytes, a per-element
    constant a row per element."""
    act = PiecewiseLinear.uniform("Max", 1000, [0.5], [0.0, 1.0], [0.5, 0.0])
    assert act.nbytes == 5 * 8
    c = np.arange(1000.0)
    act = PiecewiseLinear.uniform("Max", 1000, c[:, None], [0.0, 1.0],
                                  np.stack([c, 0 * c], 1))
    assert act.nbytes == 1000 * 8 + 2 * 8 + 1000 * 2 * 8
    with pytest.raises(ValueError, match=r"offsets has shape \(3,\); expected \(2,\)"):
        PiecewiseLinear.uniform("Max", 4, [0.0], [0.0, 1.0], [0.0, 0.0, 0.0])


# --------------------------------------------------------- small models: BBp, gradients
def _dense_model(op_nodes, rng, n_in=6, hidden=5, n_out=3, inits=None):
    """x (n_in,) -> Gemm -> op nodes (reading "h", writing "a") -> Gemm."""
    nodes = [make_node("Gemm", ["x", "W1", "b1"], ["h"], transB=1), *op_nodes,
             make_node("Gemm", ["a", "W2", "b2"], ["z"], transB=1)]
    inits = dict(inits or {}, W1=rng.standard_normal((hidden, n_in)),
                 b1=rng.standard_normal(hidden), W2=rng.standard_normal((n_out, hidden)),
                 b2=rng.standard_normal(n_out))
    return make_model(nodes, {"x": (n_in,)}, ["z"], inits)


def _conv_model(op_nodes, rng, inits=None):
    """x (2, 5, 5) -> Conv 3x3 pad 1 -> op nodes ("h" -> "a") -> Flatten -> Gemm."""
    nodes = [make_node("Conv", ["x", "W", "B"], ["h"], pads=[1, 1, 1, 1]), *op_nodes,
             make_node("Flatten", ["a"], ["f"]), make_node("Gemm", ["f", "W2", "b2"], ["z"],
                                                           transB=1)]
    inits = dict(inits or {}, W=rng.standard_normal((3, 2, 3, 3)), B=rng.standard_normal(3),
                 W2=rng.standard_normal((4, 75)), b2=rng.standard_normal(4))
    return make_model(nodes, {"x": (2, 5, 5)}, ["z"], inits)


SMALL_MODELS = {
    "conv-abs-gemm": lambda rng: _conv_model([make_node("Abs", ["h"], ["a"])], rng),
    "conv-max-gemm": lambda rng: _conv_model([make_node("Max", ["h", "C"], ["a"])], rng,
                                             {"C": rng.standard_normal((3, 1, 1))}),
    # Per-element breakpoints over a transposed view: the activation attaches to the
    # conv, its rows permuted into the conv's element order.
    "conv-transpose-max-gemm": lambda rng: _conv_model(
        [make_node("Transpose", ["h"], ["t"], perm=[0, 2, 3, 1]),
         make_node("Max", ["t", "C"], ["a"])], rng, {"C": rng.standard_normal((5, 5, 3))}),
    "conv-hardsigmoid-gemm": lambda rng: _conv_model(
        [make_node("HardSigmoid", ["h"], ["a"], alpha=0.3, beta=0.4)], rng),
    "gemm-shrink-gemm": lambda rng: _dense_model(
        [make_node("Shrink", ["h"], ["a"], lambd=0.5, bias=0.2)], rng),
    "gemm-thresholdedrelu-gemm": lambda rng: _dense_model(
        [make_node("ThresholdedRelu", ["h"], ["a"], alpha=0.3)], rng),
    "gemm-min-gemm": lambda rng: _dense_model([make_node("Min", ["C", "h"], ["a"])], rng,
                                              inits={"C": rng.standard_normal(5)}),
    "gemm-abs-shrink-gemm": lambda rng: _dense_model(
        [make_node("Abs", ["h"], ["r"]), make_node("Shrink", ["r"], ["a"], lambd=0.7, bias=-1.0)],
        rng),
}


def _inputs(net, rng, n=4):
    return as_f32(rng.standard_normal((n,) + net.input_shape))


@pytest.mark.parametrize("name", sorted(SMALL_MODELS))
def test_small_models_against_onnxruntime_and_complete(rng, name):
    """Each model agrees with onnxruntime, its local linear model is exact, and BBp is
    complete (``sum(beta) = b^x``, ``w.x + b^x = f``, every cut) at each input."""
    model = SMALL_MODELS[name](rng)
    net = refbbp.load(model)
    x = _inputs(net, rng)
    check_against_ort(model, x if net.batch_axis else x[0])
    assert net.nodes[1].activation is not None          # attached to the first layer
    for xi in x:
        for target in range(net.n_outputs):
            att = refbbp.bbp(net, xi, target=target)
            assert att.completeness().ok(), att.completeness()


@pytest.mark.parametrize("name", sorted(SMALL_MODELS))
def test_small_models_gradient_matches_finite_differences(rng, name):
    """Away from breakpoints the networks are differentiable: ``w`` of the local linear
    model is the central difference quotient of the float64 forward pass (exact up to
    rounding, the step staying inside the linear region)."""
    net = refbbp.load(SMALL_MODELS[name](rng))
    x = _inputs(net, rng, 1)[0]
    h = 1e-6
    eye = np.eye(x.size).reshape((x.size,) + x.shape)
    fd = (net.forward(x + h * eye) - net.forward(x - h * eye)) / (2 * h)  # (x.size, n_out)
    for target in range(net.n_outputs):
        w = net.linearize(x, target=target).w.ravel()
        np.testing.assert_allclose(w, fd[:, target], rtol=1e-6, atol=1e-7)


# -------------------------------------------------------------------- canonical form
def _assert_same_numbers(a, b):
    """Same nodes (kinds, inputs, shapes) with equal weights, biases and activation
    pieces: the same network, whatever the ops were called."""
    assert [(n.kind, n.inputs, n.shape) for n in a.nodes] == \
        [(n.kind, n.inputs, n.shape) for n in b.nodes]
    for na, nb in zip(a.nodes, b.nodes):
        assert (na.activation is None) == (nb.activation is None)
        if na.activation is not None:
            for f in ("breaks", "slopes", "offsets"):
                np.testing.assert_array_equal(getattr(na.activation, f), getattr(nb.activation, f))
        for wa, wb in zip(na.weights, nb.weights):
            np.testing.assert_array_equal(*(w.toarray() if hasattr(w, "toarray") else
                                            np.asarray(w) for w in (wa, wb)))
        np.testing.assert_array_equal(na.bias, nb.bias)


def _same_attributions(a, b, x):
    for target in range(a.n_outputs):
        np.testing.assert_array_equal(refbbp.bbp(a, x, target).beta, refbbp.bbp(b, x, target).beta)


def test_max_with_zero_is_relu(rng):
    """Max(h, 0) and Relu(h) are one network: the same pieces on the same node."""
    a = refbbp.load(_conv_model([make_node("Max", ["h", "Z"], ["a"])],
                                np.random.default_rng(0), {"Z": np.zeros(1)}))
    b = refbbp.load(_conv_model([make_node("Relu", ["h"], ["a"])], np.random.default_rng(0)))
    _assert_same_numbers(a, b)
    _same_attributions(a, b, _inputs(a, rng, 1)[0])
    assert (a.nodes[1].activation.name, b.nodes[1].activation.name) == ("Max", "Relu")


def test_max_operand_order_and_several_constants_are_one_network(rng):
    """Max(h, C), Max(C, h) and Max(C1, h, C2) with max(C1, C2) = C are one network."""
    c = rng.standard_normal((3, 5, 5))
    c1 = np.where(rng.random(c.shape) < 0.5, c, c - 1)
    c2 = np.where(c1 == c, c - 2, c)
    nets = []
    for ins, inits in ((["h", "C"], {"C": c}), (["C", "h"], {"C": c}),
                       (["C1", "h", "C2"], {"C1": c1, "C2": c2})):
        nets.append(refbbp.load(_conv_model([make_node("Max", ins, ["a"])],
                                            np.random.default_rng(1), inits)))
    for other in nets[1:]:
        _assert_same_numbers(nets[0], other)
    _same_attributions(nets[0], nets[2], _inputs(nets[0], rng, 1)[0])


@pytest.mark.parametrize("after_conv", [True, False], ids=["on-conv", "on-input"])
def test_hard_sigmoid_is_clip_of_mul_add(rng, after_conv):
    """HardSigmoid(alpha, beta) and Mul(alpha) -> Add(beta) -> Clip(0, 1) are one
    network: the affine map folds into the conv (or makes one diagonal node) and the
    Clip's pieces attach to it, in both spellings."""
    alpha, beta = np.float32(0.3), np.float32(-0.2)
    hs = [make_node("HardSigmoid", ["c"], ["z"], alpha=float(alpha), beta=float(beta))]
    written = [make_node("Mul", ["c", "al"], ["m"]), make_node("Add", ["m", "be"], ["p"]),
               make_node("Clip", ["p", "lo", "hi"], ["z"])]
    consts = {"al": alpha, "be": beta, "lo": np.float32(0), "hi": np.float32(1)}
    a = refbbp.load(_model(hs, after_conv=after_conv, rng=np.random.default_rng(2)))
    b = refbbp.load(_model(written, consts, after_conv=after_conv, rng=np.random.default_rng(2)))
    _assert_same_numbers(a, b)
    _same_attributions(a, b, as_f32(3 * rng.standard_normal(IN_SHAPE)))


@pytest.mark.parametrize("op,slopes", [("Max", [0.0, 0.0, 1.0]), ("Min", [1.0, 1.0, 0.0])])
def test_max_min_tie_with_the_constant_takes_the_left_piece(op, slopes):
    """Max/Min with a constant are activations (SPEC section 1): at ``x = C`` the left
    piece applies -- the constant's for Max (slope 0), x's for Min (slope 1) -- whatever
    the operand order; the value is C either way."""
    c = np.array([0.5, -1.0, 0.25])
    for ins in (["x", "C"], ["C", "x"]):
        model = make_model([make_node(op, ins, ["z"])], {"x": (3,)}, ["z"], {"C": c})
        net = refbbp.load(model)
        x = np.array([0.5, -1.0, 1.0])
        np.testing.assert_array_equal(net.forward(x), run_ort(model, x).ravel())
        assert [net.linearize(x, target=i).w[i] for i in range(3)] == slopes


@pytest.mark.parametrize("opset, axes, keepdims", [
    (13, [1], 1), (13, [1, 2], 0), (11, [2], 0), (18, [-1], 1), (18, [1, 2], 1)])
def test_reduce_l1_is_abs_then_sum(opset, axes, keepdims):
    """ReduceL1 used to be refused as piecewise linear but unsupported: it is the sum of
    |x| (an Abs activation, then a sum node), against onnxruntime with inputs at 0
    included, and BBp is complete on a model using it."""
    rng = np.random.default_rng(opset)
    attrs, inits, ins = {"keepdims": keepdims}, {}, ["x"]
    if opset < 18:
        attrs["axes"] = axes
    else:
        inits, ins = {"ax": np.array(axes, np.int64)}, ["x", "ax"]
    sample = (3, 4)                                    # reduced axes are 1-based (batch 0)
    width = int(np.prod([d for i, d in enumerate(sample, 1) if i not in
                         {a % 3 for a in axes}]))
    nodes = [make_node("ReduceL1", ins, ["r"], name="l1", **attrs),
             make_node("Flatten", ["r"], ["f"]),
             make_node("Gemm", ["f", "W"], ["y"], transB=1)]
    inits = dict(inits, W=rng.standard_normal((5, width)))
    model = make_model(nodes, {"x": sample}, ["y"], inits, opset)
    x = rng.standard_normal((2,) + sample)
    x[0, 0, :2] = 0.0                                  # |x| at its breakpoint
    net = check_against_ort(model, x)
    assert refbbp.bbp(net, as_f32(x)).completeness().ok()


def test_sign_is_an_activation_of_three_constant_pieces():
    """Sign used to be refused as discontinuous; it has three pieces (-1, 0, 1, SPEC
    section 1: pieces may jump), so a binarised network is piecewise linear: w = 0
    behind it and b^x carries its output. Against onnxruntime at 0, at +-tiny and
    elsewhere; BBp complete."""
    rng = np.random.default_rng(9)
    nodes = [make_node("Gemm", ["x", "W1"], ["h"], transB=1),
             make_node("Sign", ["h"], ["s"]), make_node("Gemm", ["s", "W2"], ["y"], transB=1)]
    inits = {"W1": np.eye(4), "W2": rng.standard_normal((3, 4))}
    model = make_model(nodes, {"x": (4,)}, ["y"], inits)
    x = np.array([[0.0, -1e-40, 1e-40, 2.0], [-3.0, 0.5, 0.0, -0.0]])
    net = check_against_ort(model, x)
    att = refbbp.bbp(net, as_f32(x))
    assert att.completeness().ok()
    assert np.all(att.w == 0)                          # constant pieces: no gradient


@pytest.mark.parametrize("opset, attrs", [
    (11, {"kernel_shape": [2, 2]}),
    (11, {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    (18, {"kernel_shape": [2, 3], "dilations": [1, 2], "ceil_mode": 1, "strides": [2, 1]}),
    (18, {"kernel_shape": [3, 3], "auto_pad": "SAME_UPPER"})])
def test_lp_pool_p1_is_abs_then_window_sums(opset, attrs):
    """LpPool with p = 1 used to have no converter: the window sums of |x| (padding adds
    nothing), against onnxruntime, BBp complete; p = 2 is refused as not piecewise
    linear."""
    rng = np.random.default_rng(18)
    model = make_model([make_node("LpPool", ["x"], ["y"], name="lp", p=1, **attrs)],
                       {"x": (2, 5, 6)}, ["y"], opset=opset)
    x = rng.standard_normal((2, 2, 5, 6))
    x[0, 0, 0, :3] = 0.0
    net = check_against_ort(model, x)
    assert refbbp.bbp(net, as_f32(x)).completeness().ok()
    two = make_model([make_node("LpPool", ["x"], ["y"], name="lp", p=2, **attrs)],
                     {"x": (2, 5, 6)}, ["y"], opset=opset)
    with pytest.raises(refbbp.NotPiecewiseLinearError, match="p = 2"):
        refbbp.load(two)
