"""The converter registry, and one representative model at every opset the registry
must cover (the ops whose definitions changed between versions included)."""

import numpy as np
import onnx
import onnx.defs
import pytest
from onnx import helper

import refbbp
from refbbp.onnx import CONVERTER_MODULES, registry
from tests.helpers import check_against_ort, make_model, make_node

OPSETS = range(7, 22)


def _has_schema(op, opset):
    try:
        onnx.defs.get_schema(op, max_inclusive_version=opset)
    except onnx.defs.SchemaError:
        return False
    return True


@pytest.mark.parametrize("op", refbbp.supported_ops())
def test_every_supported_op_resolves_at_every_opset(op):
    resolved = {}
    for opset in OPSETS:
        if not _has_schema(op, opset):
            continue
        node = registry.OnnxNode(helper.make_node(op, ["x"], ["y"], name="n"), opset)
        fn = registry.lookup(node)
        assert fn.__name__.startswith("convert_") and fn.__name__ != "convert", fn
        resolved[opset] = fn
    assert resolved, f"{op} has no schema in opsets {OPSETS}"


def test_converters_come_from_the_listed_modules():
    names = {m.__name__ for m in CONVERTER_MODULES}
    for key, fn in registry._REGISTRY.items():
        assert fn.__module__ in names, (key, fn.__module__)
    assert refbbp.supported_ops() == sorted({op for _, op, _ in registry._REGISTRY})


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="duplicate converter for .*'Relu'"):
        registry.converter("Relu", first=13)(lambda b, node, ins: None)


def test_registration_needs_a_definition():
    with pytest.raises(ValueError, match="no ONNX definition"):
        registry.converter("Relu", first=100)(lambda b, node, ins: None)


def _lookup(op, opset=17, domain=""):
    proto = helper.make_node(op, ["x"], ["y"], name="node_7", domain=domain)
    return registry.lookup(registry.OnnxNode(proto, opset))


# (op, opset, domain, error class, message pattern)
LOOKUP_ERRORS = [
    # A smooth non-linearity: not piecewise linear.
    ("Tanh", 17, "", refbbp.NotPiecewiseLinearError, "Tanh is a smooth non-linear function"),
    # Piecewise constant: discontinuous, not a continuous piecewise-linear map.
    ("Floor", 17, "", refbbp.NotPiecewiseLinearError, "Floor is discontinuous"),
    # A boolean output.
    ("Greater", 17, "", refbbp.NotPiecewiseLinearError, "Greater has a discrete output"),
    # Normalisation by input statistics.
    ("LayerNormalization", 17, "", refbbp.NotPiecewiseLinearError, "divides by statistics"),
    # Piecewise linear, but no converter: merely unsupported.
    ("GridSample", 17, "", refbbp.UnsupportedOpError, "GridSample keeps a network piecewise"),
    ("TopK", 18, "", refbbp.UnsupportedOpError, "TopK keeps a network piecewise"),
    # Definitions older than the registered ones.
    ("Relu", 5, "", refbbp.UnsupportedOpError,
     r"this definition \(since opset 1\) is not converted; converted definitions: since "
     r"opset \[6, 13, 14\]"),
    ("Gemm", 6, "", refbbp.UnsupportedOpError, r"since opset 6\) is not converted"),
    # An op unknown to ONNX, and one from a custom domain.
    ("NoSuchOp", 17, "", refbbp.UnsupportedOpError, "no converter for this op"),
    ("Relu", 1, "com.example", refbbp.UnsupportedOpError, "domain 'com.example'"),
]


@pytest.mark.parametrize("op,opset,domain,error,match", LOOKUP_ERRORS,
                         ids=[f"{r[0]}-{r[1]}" for r in LOOKUP_ERRORS])
def test_lookup_errors(op, opset, domain, error, match):
    with pytest.raises(error, match=match) as info:
        _lookup(op, opset, domain)
    assert isinstance(info.value, NotImplementedError)
    assert info.value.piecewise_linear == (error is not refbbp.NotPiecewiseLinearError)
    msg = str(info.value)
    assert f"'{op}'" in msg and "node_7" in msg and f"opset {opset}" in msg
    assert "Supported ops: " in msg and "Conv" in msg


def test_piecewise_linear_classes_are_disjoint_from_supported_ops():
    supported = set(refbbp.supported_ops())
    assert not supported & set(registry.NOT_PIECEWISE_LINEAR)
    assert not supported & registry.PIECEWISE_LINEAR_UNSUPPORTED
    assert not set(registry.NOT_PIECEWISE_LINEAR) & registry.PIECEWISE_LINEAR_UNSUPPORTED


# ---------------------------------------------------------------------------------------
# A representative CNN + MLP at several opsets. The ops whose definitions changed are
# written in the form each opset requires: Pad (attributes -> inputs at 11), Clip (11),
# Slice (10), Split (13, and 18), Squeeze/Unsqueeze (13), ReduceSum (13), ReduceMean (18),
# Dropout (12), BatchNormalization (spatial before 9).


def representative_model(opset, rng):
    """x (N, 3, 8, 8) -> Pad(reflect) -> Conv -> BN -> Clip(0, 6) -> MaxPool -> Slice ->
    Split -> Concat -> Dropout -> ReduceMean -> Squeeze -> Flatten -> Gemm -> Relu ->
    MatMul + Add (+ ReduceSum residual) -> Unsqueeze -> Flatten -> LeakyRelu -> Gemm."""
    nodes, inits = [], {}

    def const(name, value):
        inits[name] = value
        return name

    def i64(*v):
        return np.array(v, np.int64)

    # Pad
    pads = [0, 0, 1, 1, 0, 0, 1, 1]
    if opset < 11:
        nodes.append(make_node("Pad", ["x"], ["p"], mode="reflect", pads=pads))
    else:
        nodes.append(make_node("Pad", ["x", const("pads", i64(*pads))], ["p"], mode="reflect"))
    # Conv + BatchNormalization
    nodes.append(make_node("Conv", ["p", const("W1", rng.standard_normal((4, 3, 3, 3))),
                                    const("B1", rng.standard_normal(4))], ["c"]))
    bn = dict(epsilon=1e-3, **({"spatial": 1} if opset < 9 else {}))
    nodes.append(make_node("BatchNormalization", [
        "c", const("g", rng.random(4) + 0.5), const("b", rng.standard_normal(4)),
        const("m", rng.standard_normal(4)), const("v", rng.random(4) + 0.5)], ["n"], **bn))
    # Clip (ReLU6)
    if opset < 11:
        nodes.append(make_node("Clip", ["n"], ["a"], min=0.0, max=6.0))
    else:
        nodes.append(make_node("Clip", ["n", const("lo", np.float32(0)),
                                        const("hi", np.float32(6))], ["a"]))
    nodes.append(make_node("MaxPool", ["a"], ["mp"], kernel_shape=[2, 2], strides=[2, 2]))
    # Slice channels 1:4 -> (N, 3, 4, 4)
    if opset < 10:
        nodes.append(make_node("Slice", ["mp"], ["s"], starts=[1], ends=[4], axes=[1]))
    else:
        nodes.append(make_node("Slice", ["mp", const("st", i64(1)), const("en", i64(4)),
                                         const("ax", i64(1))], ["s"]))
    # Split the rows in halves and Concat them back in the other order
    if opset < 13:
        nodes.append(make_node("Split", ["s"], ["s1", "s2"], axis=2, split=[2, 2]))
    elif opset < 18:
        nodes.append(make_node("Split", ["s", const("sp", i64(2, 2))], ["s1", "s2"], axis=2))
    else:
        nodes.append(make_node("Split", ["s"], ["s1", "s2"], axis=2, num_outputs=2))
    nodes.append(make_node("Concat", ["s2", "s1"], ["cc"], axis=2))
    # Dropout (inference)
    if opset < 12:
        nodes.append(make_node("Dropout", ["cc"], ["d"], ratio=0.25))
    else:
        nodes.append(make_node("Dropout", ["cc", const("ratio", np.float32(0.25))], ["d", "mask"]))
    # ReduceMean over the width, keepdims -> (N, 3, 4, 1); Squeeze it -> (N, 3, 4)
    if opset < 18:
        nodes.append(make_node("ReduceMean", ["d"], ["rm"], axes=[3], keepdims=1))
    else:
        nodes.append(make_node("ReduceMean", ["d", const("rax", i64(3))], ["rm"], keepdims=1))
    if opset < 13:
        nodes.append(make_node("Squeeze", ["rm"], ["sq"], axes=[3]))
    else:
        nodes.append(make_node("Squeeze", ["rm", const("sqax", i64(3))], ["sq"]))
    nodes.append(make_node("Flatten", ["sq"], ["f"]))
    # MLP: Gemm -> Relu -> MatMul + Add, plus a ReduceSum residual
    nodes.append(make_node("Gemm", ["f", const("W2", rng.standard_normal((8, 12))),
                                    const("B2", rng.standard_normal(8))], ["g1"], transB=1))
    nodes.append(make_node("Relu", ["g1"], ["r1"]))
    nodes.append(make_node("MatMul", ["r1", const("W3", rng.standard_normal((8, 6)))], ["mm"]))
    nodes.append(make_node("Add", ["mm", const("B3", rng.standard_normal(6))], ["ma"]))
    if opset < 13:
        nodes.append(make_node("ReduceSum", ["r1"], ["rs"], axes=[1], keepdims=1))
    else:
        nodes.append(make_node("ReduceSum", ["r1", const("rsax", i64(1))], ["rs"], keepdims=1))
    nodes.append(make_node("Add", ["ma", "rs"], ["res"]))
    if opset < 13:
        nodes.append(make_node("Unsqueeze", ["res"], ["u"], axes=[2]))
    else:
        nodes.append(make_node("Unsqueeze", ["res", const("uax", i64(2))], ["u"]))
    nodes.append(make_node("Flatten", ["u"], ["f2"]))
    nodes.append(make_node("LeakyRelu", ["f2"], ["l"], alpha=0.1))
    nodes.append(make_node("Gemm", ["l", const("W4", rng.standard_normal((6, 5))),
                                    const("B4", rng.standard_normal(5))], ["logits"]))
    return make_model(nodes, {"x": (3, 8, 8)}, ["logits"], inits, opset)


@pytest.mark.parametrize("opset", [7, 9, 11, 13, 17, 21])
def test_representative_model_at_opset(opset):
    rng = np.random.default_rng(20240)  # the same weights at every opset
    model = representative_model(opset, rng)
    x = rng.standard_normal((3, 3, 8, 8))
    net = check_against_ort(model, x, classes=[0, 2, 4])
    assert [n.op for n in net.nodes] == [
        "Input", "Conv", "MaxPool", "ReduceMean", "Gemm", "MatMul", "ReduceSum", "Add", "Gemm"]
    conv, residual = net.nodes[1], net.nodes[7]
    assert "BatchNormalization" in conv.name and conv.activation.name == "Clip"
    assert "Add_ma" in net.nodes[5].name and residual.activation.name == "LeakyRelu"
    # The same network whatever the opset.
    reference = refbbp.load(representative_model(21, np.random.default_rng(20240)))
    np.testing.assert_allclose(net.forward(x), reference.forward(x), rtol=1e-12, atol=1e-12)
