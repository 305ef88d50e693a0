"""Index-op converters against onnxruntime: relabellings of elements (Flatten, Reshape,
Transpose, Squeeze, Unsqueeze, Concat, Slice, Gather, Expand, Tile, Split, Identity,
Dropout, Cast, DepthToSpace, SpaceToDepth) and Pad (constant, edge, reflect).

Each op reads the input (N, 3, 4, 5) (or (N, 3, 1, 5) where it needs a unit axis) and
is followed by a Relu, so the view it makes is consumed by a node. Index ops leave no
node of their own behind (SPEC section 1).
"""

import numpy as np
import pytest

import refbbp
from tests.helpers import check_against_ort, make_model, make_node

X = (3, 4, 5)
X1 = (3, 1, 5)  # with a unit axis for Squeeze / Expand

i64 = lambda *v: np.array(v, np.int64)  # noqa: E731


def C(name, *, opset=13, shape=X, inits=None, extra_outputs=(), batch="N", **attrs):
    """One case: ``name`` is ``op[-detail]``; the node reads ``x`` (and ``inits``).
    ``batch=1``: the model has a fixed batch of one (a constant operand fixes it)."""
    op = name.split("-")[0]
    return pytest.param(op, attrs, inits or {}, opset, shape, extra_outputs, batch,
                        id=f"{name}-opset{opset}")


def _inputs(inits):
    return ["x"] + list(inits)


CASES = [
    C("Identity"), C("Identity", opset=21),
    C("Flatten"), C("Flatten-axis2", axis=2), C("Flatten-axis-1", axis=-1),
    C("Flatten-axis3", opset=9, axis=3), C("Flatten", opset=21),
    C("Reshape-0-minus1", inits={"s": i64(0, -1)}),
    C("Reshape-0-12-5", inits={"s": i64(0, 12, 5)}),
    C("Reshape-0-0-minus1", inits={"s": i64(0, 0, -1)}, opset=7),
    C("Reshape-4d", inits={"s": i64(-1, 2, 6, 5)}, opset=19),
    C("Reshape-allowzero", inits={"s": i64(-1, 5, 12)}, opset=14, allowzero=1),
    C("Transpose-nhwc", perm=[0, 2, 3, 1]), C("Transpose-0312", perm=[0, 3, 1, 2], opset=21),
    C("Transpose-0213", perm=[0, 2, 1, 3], opset=7),
    C("Squeeze-attr", shape=X1, opset=11, axes=[2]),
    C("Squeeze-attr-pos", shape=X1, opset=7, axes=[2]),
    C("Squeeze-input", shape=X1, opset=13, inits={"axes": i64(2)}),
    C("Squeeze-input", shape=X1, opset=21, inits={"axes": i64(-2)}),
    C("Unsqueeze-attr", opset=11, axes=[1, -1]), C("Unsqueeze-attr", opset=7, axes=[2]),
    C("Unsqueeze-input", opset=13, inits={"axes": i64(1, 4)}),
    C("Unsqueeze-input", opset=21, inits={"axes": i64(-1)}),
    C("Concat-const-axis1", inits={"c": np.arange(2 * 20.).reshape(1, 2, 4, 5)}, axis=1, batch=1),
    # Opset 7 allows no negative axis (ONNX's checker refuses one).
    C("Concat-const-axis3", inits={"c": -np.ones((1, 3, 4, 2))}, axis=3, opset=7, batch=1),
    C("Concat-const-axis-1", inits={"c": -np.ones((1, 3, 4, 2))}, axis=-1, opset=11, batch=1),
    C("Concat-const-axis2", inits={"c": np.full((1, 3, 2, 5), 0.5)}, axis=2, opset=11, batch=1),
    C("Slice-attr", opset=9, starts=[1, -3], ends=[3, 100], axes=[1, 3]),
    C("Slice-attr-noaxes", opset=7, starts=[0, 1, 0, 2], ends=[1000, 3, 4, 5]),
    C("Slice-input", opset=10, inits={"st": i64(1), "en": i64(4), "ax": i64(2)}),
    C("Slice-negative-step", inits={"st": i64(-1, 3), "en": i64(-100, 0), "ax": i64(3, 2),
                                    "sp": i64(-2, -1)}),
    C("Slice-step3", opset=13, inits={"st": i64(0), "en": i64(5), "ax": i64(-1), "sp": i64(3)}),
    C("Slice-no-axes", opset=13, inits={"st": i64(0, 1, 1, 1), "en": i64(2**62, 3, 3, 4)}),
    C("Gather-axis1", inits={"i": i64(2, 0, 2)}, axis=1),
    C("Gather-negative", inits={"i": i64(-1, 0)}, axis=3, opset=11),
    C("Gather-scalar", inits={"i": np.array(-2, np.int64)}, axis=2),
    C("Gather-2d-indices", inits={"i": i64(0, 4, 1, 3).reshape(2, 2)}, axis=-1, opset=7),
    C("Expand", shape=X1, inits={"s": i64(1, 3, 4, 5)}, opset=8),
    C("Expand-new-axis", shape=X1, inits={"s": i64(2, 1, 1, 1, 1)}, opset=13, batch=1),
    C("Tile", inits={"r": i64(1, 2, 1, 3)}, opset=6), C("Tile", inits={"r": i64(1, 1, 2, 1)}),
    C("Split-attr", opset=11, axis=1, split=[1, 2], extra_outputs=("s2",)),
    C("Split-even", opset=7, axis=3, extra_outputs=("s2", "s3", "s4", "s5")),
    C("Split-input", opset=13, axis=2, inits={"sp": i64(3, 1)}, extra_outputs=("s2",)),
    C("Split-num_outputs", opset=18, axis=3, num_outputs=2, extra_outputs=("s2",)),
    C("Dropout", opset=7, ratio=0.3), C("Dropout", opset=10, ratio=0.5),
    C("Dropout-mask-unused", opset=10, extra_outputs=("mask",)),
    C("Dropout-inputs", opset=12, inits={"r": np.array(0.5, np.float32)}, extra_outputs=("mask",)),
    C("Dropout-training-false", opset=13,
      inits={"r": np.array(0.5, np.float32), "t": np.array(False)}, extra_outputs=("mask",)),
    C("Dropout", opset=21),
    C("SpaceToDepth", shape=(2, 4, 6), blocksize=2),
    C("DepthToSpace-DCR", shape=(8, 2, 3), blocksize=2, opset=11),
    C("DepthToSpace", shape=(8, 2, 3), blocksize=2, opset=9),
    C("DepthToSpace-CRD", shape=(8, 2, 3), blocksize=2, mode="CRD", opset=13),
]


@pytest.mark.parametrize("op,attrs,inits,opset,shape,extra_outputs,batch", CASES)
def test_index_op(rng, op, attrs, inits, opset, shape, extra_outputs, batch):
    nodes = [make_node(op, _inputs(inits), ["y", *extra_outputs], **attrs),
             make_node("Relu", ["y"], ["z"])]
    model = make_model(nodes, {"x": shape}, ["z"], inits, opset, batch=batch)
    net = check_against_ort(model, rng.standard_normal((2 if batch == "N" else 1,) + shape))
    # The index op made no node: the Relu reads the input through it.
    assert [n.op for n in net.nodes] == ["Input", "Relu"]


def test_split_second_output(rng):
    nodes = [make_node("Split", ["x", "sp"], ["a", "b"], axis=1), make_node("Relu", ["b"], ["z"])]
    model = make_model(nodes, {"x": X}, ["z"], {"sp": i64(1, 2)})
    net = check_against_ort(model, rng.standard_normal((2,) + X))
    assert net.nodes[-1].size == 2 * 4 * 5


@pytest.mark.parametrize("inputs", [["x", "r"], ["r", "x", "r"]], ids=["x-r", "r-x-r"])
@pytest.mark.parametrize("axis", [1, 3])
def test_concat_of_variables(rng, inputs, axis):
    nodes = [make_node("Relu", ["x"], ["r"]), make_node("Concat", inputs, ["y"], axis=axis),
             make_node("LeakyRelu", ["y"], ["z"], alpha=0.3)]
    check_against_ort(make_model(nodes, {"x": X}, ["z"]), rng.standard_normal((2,) + X))


@pytest.mark.parametrize("order", ["var-const", "const-var", "var-var"])
@pytest.mark.parametrize("cond_shape", [X, (1, 4, 1)], ids=["full", "broadcast"])
@pytest.mark.parametrize("opset", [9, 16])
def test_where_with_constant_condition(rng, order, cond_shape, opset):
    # A constant condition selects elements: an index op (constants become bias).
    inits = {"cond": rng.random(cond_shape) < 0.5, "c": rng.standard_normal((3, 1, 5))}
    inputs = {"var-const": ["x", "c"], "const-var": ["c", "x"], "var-var": ["x", "r"]}[order]
    nodes = [make_node("Relu", ["x"], ["r"]), make_node("Where", ["cond", *inputs], ["y"]),
             make_node("LeakyRelu", ["y"], ["z"], alpha=0.2)]
    net = check_against_ort(make_model(nodes, {"x": X}, ["z"], inits, opset),
                            rng.standard_normal((2,) + X))
    assert net.nodes[-1].op == "LeakyRelu"


def test_cast_to_double_and_back(rng):
    double, single = 11, 1  # onnx.TensorProto.DOUBLE, FLOAT
    nodes = [make_node("Cast", ["x"], ["d"], to=double), make_node("Relu", ["d"], ["r"]),
             make_node("Cast", ["r"], ["z"], to=single)]
    net = check_against_ort(make_model(nodes, {"x": X}, ["z"]), rng.standard_normal((2,) + X))
    assert [n.op for n in net.nodes] == ["Input", "Relu"]


def test_cast_like_activation_makes_a_constant(rng):
    # The dynamo exporter's zero bias of a bias-free conv: Expand(CastLike(0, x),
    # Shape(W)[:1]); only the type of x is read.
    w = rng.standard_normal((2, 3, 3, 3))
    inits = {"W": w, "zero": np.array(0, np.int64), "one": i64(1), "start": i64(0)}
    nodes = [make_node("CastLike", ["zero", "x"], ["z0"]),
             make_node("Shape", ["W"], ["ws"]),
             make_node("Slice", ["ws", "start", "one"], ["m"]),
             make_node("Expand", ["z0", "m"], ["bias"]),
             make_node("Conv", ["x", "W", "bias"], ["c"]), make_node("Relu", ["c"], ["z"])]
    net = check_against_ort(make_model(nodes, {"x": X}, ["z"], inits, 15),
                            rng.standard_normal((2,) + X))
    assert [n.op for n in net.nodes] == ["Input", "Conv"] and not np.any(net.nodes[1].bias)


@pytest.mark.parametrize("like,refused", [(np.float32(1), False), (np.int64(1), True)],
                         ids=["float", "int64"])
def test_cast_like_of_the_input(rng, like, refused):
    nodes = [make_node("CastLike", ["x", "like"], ["c"]), make_node("Relu", ["c"], ["r"]),
             make_node("CastLike", ["r", "f"], ["z"])]
    model = make_model(nodes, {"x": X}, ["z"], {"like": np.array(like), "f": np.float32(0)}, 19)
    if refused:
        with pytest.raises(refbbp.UnsupportedOpError, match="CastLike to int64"):
            refbbp.load(model)
    else:
        check_against_ort(model, rng.standard_normal((2,) + X))


def test_cast_to_integer_is_refused(rng):
    # Rounding to integers is piecewise constant: not piecewise linear.
    nodes = [make_node("Cast", ["x"], ["i"], to=7), make_node("Cast", ["i"], ["z"], to=1)]
    with pytest.raises(refbbp.NotPiecewiseLinearError,
                       match=r"Cast to INT64: only casts to FLOAT and DOUBLE are followed"):
        refbbp.load(make_model(nodes, {"x": X}, ["z"]))


def _pad_node(opset, mode, pads, value, axes=None):
    """Pad in the attribute form (opset 2) or the input form (11+; 18+ with axes)."""
    if opset < 11:
        attrs = dict(mode=mode, pads=pads)
        if value is not None:
            attrs["value"] = value
        return make_node("Pad", ["x"], ["y"], **attrs), {}
    inputs, inits = ["x", "pads"], {"pads": np.array(pads, np.int64)}
    if value is not None or axes is not None:
        inputs.append("" if value is None else "cv")
        if value is not None:
            inits["cv"] = np.array(value, np.float32)
    if axes is not None:
        inputs.append("axes")
        inits["axes"] = np.array(axes, np.int64)
    return make_node("Pad", inputs, ["y"], mode=mode), inits


PADS = [0, 0, 1, 2, 0, 1, 2, 1]  # (N, C, H, W) begins, then ends


@pytest.mark.parametrize("mode,value", [
    pytest.param("constant", None, id="constant-default"),
    pytest.param("constant", 0.0, id="constant-0"),
    pytest.param("constant", -1.5, id="constant-nonzero"),
    pytest.param("constant", -1.0, id="constant-minus-one"),  # the id Pad uses internally
    pytest.param("edge", None, id="edge"),
    pytest.param("reflect", None, id="reflect"),
])
@pytest.mark.parametrize("opset", [7, 11, 13, 18, 21])  # Pad-2 (attributes) at opset 7
def test_pad(rng, opset, mode, value):
    node, inits = _pad_node(opset, mode, PADS, value)
    model = make_model([node, make_node("Relu", ["y"], ["z"])], {"x": X}, ["z"], inits, opset)
    net = check_against_ort(model, rng.standard_normal((2,) + X))
    relu = net.nodes[-1]
    n_pad = relu.size - int(np.prod(X))
    if mode == "constant":
        # Padding rows are bias-only: no structural non-zero, the pad value as bias.
        assert relu.weights[0].nnz == int(np.prod(X))
        assert np.count_nonzero(relu.bias) == (n_pad if value else 0)
    else:  # edge / reflect copy elements: one component per row
        assert relu.weights[0].nnz == relu.size and not np.any(relu.bias)


# Negative pads remove elements. onnxruntime crops first and pads the rest; the
# wrap cases tell the two orders apart (wrap reads the far side of the axis).
@pytest.mark.parametrize("mode,pads,opset", [
    pytest.param("constant", [0, 0, -1, 1, 0, 0, 1, -2], 11, id="constant"),
    pytest.param("edge", [0, 0, -1, 1, 0, 0, 1, -2], 13, id="edge"),
    pytest.param("reflect", [0, 0, -1, 2, 0, 0, 1, -2], 18, id="reflect"),
    pytest.param("reflect", [0, 0, 0, -2, 0, 0, 0, 0], 7, id="reflect-attribute-form"),
    pytest.param("wrap", [0, 0, -1, 0, 0, 0, 1, 0], 19, id="wrap-crop-then-pad"),
    pytest.param("wrap", [0, 0, 1, -2, 0, 0, -1, 2], 19, id="wrap-both-sides"),
])
def test_pad_negative(rng, mode, pads, opset):
    node, inits = _pad_node(opset, mode, pads, None)
    model = make_model([node, make_node("Relu", ["y"], ["z"])], {"x": X}, ["z"], inits, opset)
    check_against_ort(model, rng.standard_normal((2,) + X))


@pytest.mark.parametrize("mode", ["constant", "reflect"])
def test_pad_axes_input(rng, mode):
    node, inits = _pad_node(18, mode, [1, 2, 2, 1], 0.25 if mode == "constant" else None,
                            axes=[-1, 2])
    model = make_model([node, make_node("Relu", ["y"], ["z"])], {"x": X}, ["z"], inits, 18)
    check_against_ort(model, rng.standard_normal((2,) + X))


def test_pad_then_conv_padding_stays_in_the_conv_matrix(rng):
    # Pad (value 0.5) -> Conv: the padded elements are constants, so they go into the
    # conv's bias and the conv reads only real input elements.
    node, inits = _pad_node(13, "constant", [0, 0, 1, 1, 0, 0, 1, 1], 0.5)
    inits.update(W=rng.standard_normal((2, 3, 3, 3)))
    model = make_model([node, make_node("Conv", ["y", "W"], ["z"])], {"x": X}, ["z"], inits)
    net = check_against_ort(model, rng.standard_normal((2,) + X))
    assert [n.op for n in net.nodes] == ["Input", "Conv"]


def test_reshape_to_a_shape_computed_from_shape(rng):
    # Exporters with a dynamic batch write Flatten as Shape -> Gather -> Unsqueeze ->
    # Concat -> Reshape; the shape of an input-dependent tensor is known at load time.
    inits = {"i0": np.array(0, np.int64), "ax": i64(0), "m1": i64(-1)}
    nodes = [make_node("Shape", ["x"], ["s"]), make_node("Gather", ["s", "i0"], ["b"], axis=0),
             make_node("Unsqueeze", ["b", "ax"], ["bu"]),
             make_node("Concat", ["bu", "m1"], ["shp"], axis=0),
             make_node("Reshape", ["x", "shp"], ["f"]), make_node("Relu", ["f"], ["z"])]
    net = check_against_ort(make_model(nodes, {"x": X}, ["z"], inits),
                            rng.standard_normal((3,) + X))
    assert [n.op for n in net.nodes] == ["Input", "Relu"]


def test_per_channel_activation_through_transposes(rng):
    # Conv -> NHWC -> PRelu over the last axis -> NCHW: the PRelu attaches to the conv
    # with its slopes permuted to the conv's element order.
    inits = {"W": rng.standard_normal((4, 3, 3, 3)), "S": rng.standard_normal(4)}
    nodes = [make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
             make_node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]),
             make_node("PRelu", ["t", "S"], ["p"]),
             make_node("Transpose", ["p"], ["z"], perm=[0, 3, 1, 2])]
    net = check_against_ort(make_model(nodes, {"x": X}, ["z"], inits),
                            rng.standard_normal((3,) + X))
    assert [n.op for n in net.nodes] == ["Input", "Conv"]


@pytest.mark.parametrize("to,name", [(10, "FLOAT16"), (16, "BFLOAT16")])
def test_cast_to_float16_is_refused(to, name):
    """A Cast to float16 or bfloat16 used to be taken as the identity: onnxruntime rounds
    to float16 (about 20 times refbbp's float32 tolerance on a Relu layer), and rounding
    is piecewise constant, so such a cast is refused like a cast to an integer type."""
    nodes = [make_node("Cast", ["x"], ["h"], name="half", to=to),
             make_node("Relu", ["h"], ["r"]), make_node("Cast", ["r"], ["z"], to=1)]
    with pytest.raises(refbbp.NotPiecewiseLinearError,
                       match=rf"at node 'half': Cast to {name}: only casts to FLOAT and DOUBLE "
                             rf"are followed.*a cast to {name} rounds its input") as info:
        refbbp.load(make_model(nodes, {"x": X}, ["z"]))
    assert info.value.op_type == "Cast"


def test_index_ops_between_matrix_ops_leave_no_node(rng):
    # Conv -> Transpose -> Reshape -> Gather -> Flatten -> Gemm: two nodes.
    inits = {"W": rng.standard_normal((2, 3, 3, 3)), "s": i64(0, 3, -1),
             "g": i64(2, 0), "G": rng.standard_normal((4, 2 * 4))}
    nodes = [make_node("Conv", ["x", "W"], ["c"]),
             make_node("Transpose", ["c"], ["t"], perm=[0, 3, 2, 1]),
             make_node("Reshape", ["t", "s"], ["r"]),
             make_node("Gather", ["r", "g"], ["q"], axis=1),
             make_node("Flatten", ["q"], ["f"]),
             make_node("Gemm", ["f", "G"], ["z"], transB=1)]
    net = check_against_ort(make_model(nodes, {"x": X}, ["z"], inits),
                            rng.standard_normal((2,) + X))
    assert [n.op for n in net.nodes] == ["Input", "Conv", "Gemm"]
