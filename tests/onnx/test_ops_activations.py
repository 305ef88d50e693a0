"""Piecewise-linear activation converters against onnxruntime: Relu, LeakyRelu, PRelu,
Clip (attributes in opset 6, inputs from opset 11), on a conv (the activation attaches
to the conv node) and on the input itself (an identity node carries it)."""

import numpy as np
import pytest

import refbbp
from tests.helpers import (check_against_ort, make_model, make_node,
                           run_onnx_reference, run_ort)

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
