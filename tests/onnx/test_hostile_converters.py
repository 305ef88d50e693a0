"""Hostile nodes: wrong arity, attribute types and ranges, and ops refbbp used to accept
where onnxruntime and ``onnx.checker`` refuse them (or computed something different).

Every refusal is a :class:`~refbbp.RefbbpError` naming the op, the node and what was
expected: ``ModelFormatError`` where the node breaks the ONNX definition of its op,
``UnsupportedOpError`` (or ``NotPiecewiseLinearError``) where it is valid but not
converted. The checks live in one place, the registry (``OnnxNode.check_schema`` from
the ONNX schema, run before every converter) and the typed attribute getters.
"""

import itertools

import numpy as np
import onnx
import pytest
from onnx import checker, helper

import refbbp
from refbbp.onnx import registry
from tests.helpers import as_f32, make_model, make_node, run_ort

X = (3, 4, 5)
MALFORMED, UNSUP, NPL = refbbp.ModelFormatError, refbbp.UnsupportedOpError, \
    refbbp.NotPiecewiseLinearError


def _w(*shape):
    return np.random.default_rng(0).standard_normal(shape)


def _model(nodes, inits=None, opset=17, shape=X):
    return make_model(nodes, {"x": shape}, ["z"], inits, opset)


def _flat(node, inits=None, opset=17):
    """Flatten x to (N, 60), then ``node`` (reading "f", writing "z")."""
    return _model([make_node("Flatten", ["x"], ["f"]), node], inits, opset)


def check_node_with_onnx(model, name):
    """What ``onnx.checker`` says about the node ``name`` (``None``: it accepts it)."""
    ctx = checker.C.CheckerContext()
    ctx.ir_version = model.ir_version
    ctx.opset_imports = {o.domain: o.version for o in model.opset_import}
    node = next(n for n in model.graph.node if n.name == name)
    try:
        checker.check_node(node, ctx)
    except checker.ValidationError as exc:
        return str(exc)
    return None


def ort_refuses(model):
    try:
        run_ort(model, np.ones((1,) + X, np.float32))
    except Exception:  # noqa: BLE001 -- onnxruntime raises several types
        return True
    return False


# (id, model, error, node name, message pattern, does onnx.checker refuse the node?)
HOSTILE = [
    # Arity: the schema's input counts, checked before any converter runs.
    ("matmul-three-inputs", _flat(make_node("MatMul", ["f", "W", "W"], ["z"], name="mm"),
                                  {"W": _w(60, 4)}),
     MALFORMED, "mm", r"3 inputs; the definition since opset 13 takes exactly 2", True),
    ("sub-one-input", _model([make_node("Sub", ["x"], ["z"], name="s")]),
     MALFORMED, "s", r"1 input; the definition since opset 14 takes exactly 2", True),
    ("div-one-input", _model([make_node("Div", ["x"], ["z"], name="d")]),
     MALFORMED, "d", r"1 input; .* takes exactly 2", True),
    ("conv-no-weights", _model([make_node("Conv", ["x"], ["z"], name="c")]),
     MALFORMED, "c", r"1 input; the definition since opset 11 takes 2 to 3", True),
    ("conv-empty-weights-name", _model([make_node("Conv", ["x", ""], ["z"], name="c")]),
     MALFORMED, "c", r"input 1 \(W\) is required, but its name is empty", True),
    ("maxpool-two-inputs", _model([make_node("MaxPool", ["x", "x"], ["z"], name="mp",
                                             kernel_shape=[2, 2])]),
     MALFORMED, "mp", r"2 inputs; .* takes exactly 1", True),
    ("gather-one-input", _model([make_node("Gather", ["x"], ["z"], name="g")]),
     MALFORMED, "g", r"1 input; .* takes exactly 2", True),
    ("relu-two-outputs", _model([make_node("Relu", ["x"], ["z", "z2"], name="r")]),
     MALFORMED, "r", r"2 outputs; .* has exactly 1", True),
    # ReduceMean takes axes as an input only from opset 18.
    ("reducemean-13-axes-input", _model([make_node("ReduceMean", ["x", "ax"], ["z"], name="rm")],
                                        {"ax": np.array([1], np.int64)}, opset=13),
     MALFORMED, "rm", r"2 inputs; the definition since opset 13 takes exactly 1", True),
    # Attribute types: the schema's, whatever the converter reads.
    ("gemm-alpha-list", _flat(make_node("Gemm", ["f", "W"], ["z"], name="g", alpha=[1.0, 2.0]),
                              {"W": _w(60, 4)}),
     MALFORMED, "g", r"attribute 'alpha' is a list of floats; expected a float", True),
    ("gemm-transB-string", _flat(make_node("Gemm", ["f", "W"], ["z"], name="g", transB="abc"),
                                 {"W": _w(4, 60)}),
     MALFORMED, "g", r"attribute 'transB' is a string; expected an int", True),
    ("conv-strides-float", _model([make_node("Conv", ["x", "W"], ["z"], name="c",
                                             strides=[1.0, 1.0])], {"W": _w(2, 3, 2, 2)}),
     MALFORMED, "c", r"attribute 'strides' is a list of floats; expected a list of ints", True),
    ("leakyrelu-alpha-string", _model([make_node("LeakyRelu", ["x"], ["z"], name="l",
                                                 alpha="0.1")]),
     MALFORMED, "l", r"attribute 'alpha' is a string; expected a float", True),
    ("maxpool-kernel-int", _model([make_node("MaxPool", ["x"], ["z"], name="mp", kernel_shape=2)]),
     MALFORMED, "mp", r"attribute 'kernel_shape' is an int; expected a list of ints", True),
    ("relu-unknown-attribute", _model([make_node("Relu", ["x"], ["z"], name="r", alpha=0.5)]),
     MALFORMED, "r", r"unknown attribute 'alpha'", True),
    ("maxpool-no-kernel", _model([make_node("MaxPool", ["x"], ["z"], name="mp")]),
     MALFORMED, "mp", r"required attribute 'kernel_shape' is missing", True),
    # Attribute ranges and lengths (onnx.checker does not look at values).
    ("gemm-transB-2", _flat(make_node("Gemm", ["f", "W"], ["z"], name="g", transB=2),
                            {"W": _w(4, 60)}),
     MALFORMED, "g", r"attribute 'transB' is 2; expected an int in \[0, 1\]", False),
    ("conv-strides-0", _model([make_node("Conv", ["x", "W"], ["z"], name="c", strides=[0, 0])],
                              {"W": _w(2, 3, 2, 2)}),
     MALFORMED, "c", r"attribute 'strides' is \[0, 0\]; expected ints >= 1", False),
    ("conv-group-0", _model([make_node("Conv", ["x", "W"], ["z"], name="c", group=0)],
                            {"W": _w(2, 3, 2, 2)}),
     MALFORMED, "c", r"attribute 'group' is 0; expected an int >= 1", False),
    ("conv-dilations-length", _model([make_node("Conv", ["x", "W"], ["z"], name="c",
                                                dilations=[1, 1, 1])], {"W": _w(2, 3, 2, 2)}),
     MALFORMED, "c", r"attribute 'dilations' is \[1, 1, 1\] \(3 values\); expected 2", False),
    ("conv-negative-pads", _model([make_node("Conv", ["x", "W"], ["z"], name="c",
                                             pads=[-1, 0, 0, 0])], {"W": _w(2, 3, 2, 2)}),
     MALFORMED, "c", r"attribute 'pads' is \[-1, 0, 0, 0\]; expected ints >= 0", False),
    ("conv-weights-rank", _model([make_node("Conv", ["x", "W"], ["z"], name="c")],
                                 {"W": _w(2, 3, 2)}),
     MALFORMED, "c", r"weights of shape \(2, 3, 2\) .* expected non-empty weights of rank 4",
     False),
    ("conv-bias-length", _model([make_node("Conv", ["x", "W", "B"], ["z"], name="c")],
                                {"W": _w(2, 3, 2, 2), "B": _w(3)}),
     MALFORMED, "c", r"bias of shape \(3,\); expected \(2,\)", False),
    ("maxpool-kernel-0", _model([make_node("MaxPool", ["x"], ["z"], name="mp",
                                           kernel_shape=[0, 2])]),
     MALFORMED, "mp", r"attribute 'kernel_shape' is \[0, 2\]; expected ints >= 1", False),
    ("pool-pads-length", _model([make_node("AveragePool", ["x"], ["z"], name="ap",
                                           kernel_shape=[2, 2], pads=[1, 1])]),
     MALFORMED, "ap", r"attribute 'pads' is \[1, 1\] \(2 values\); expected 4", False),
    ("pool-auto-pad-unknown", _model([make_node("AveragePool", ["x"], ["z"], name="ap",
                                                kernel_shape=[2, 2], auto_pad="FULL")]),
     MALFORMED, "ap", r"attribute 'auto_pad' is 'FULL'; expected one of 'NOTSET'", False),
    ("reducemean-axis-out-of-range", _model([make_node("ReduceMean", ["x"], ["z"], name="rm",
                                                       axes=[5])], opset=13),
     MALFORMED, "rm", r"axes \[5\] out of range; expected axes in \[-4, 3\]", False),
    ("flatten-axis-out-of-range", _model([make_node("Flatten", ["x"], ["z"], name="fl",
                                                    axis=10)]),
     MALFORMED, "fl", r"attribute 'axis' is 10; expected an axis in \[-4, 4\]", False),
    ("transpose-not-a-permutation", _model([make_node("Transpose", ["x"], ["z"], name="t",
                                                      perm=[0, 1, 1, 2])]),
     MALFORMED, "t", r"attribute 'perm' is \[0, 1, 1, 2\]; expected a permutation", False),
    ("split-sizes-do-not-sum", make_model(
        [make_node("Split", ["x", "s"], ["z", "z2"], name="sp", axis=1)], {"x": X}, ["z"],
        {"s": np.array([1, 1], np.int64)}),
     MALFORMED, "sp", r"split \[1, 1\] for 2 outputs along axis 1 of length 3", False),
    ("cast-to-unknown-type", _model([make_node("Cast", ["x"], ["z"], name="ct", to=999)]),
     MALFORMED, "ct", r"attribute 'to' is 999; expected an ONNX data type", False),
    ("batchnorm-parameter-shapes", _model([make_node(
        "BatchNormalization", ["x", "g", "b", "m", "v"], ["z"], name="bn")],
        {"g": np.ones(3), "b": np.ones(4), "m": np.ones(3), "v": np.ones(3)}),
     UNSUP, "bn", r"got input 2 \(B\) of shape \(4,\)", False),
    ("clip-bound-not-scalar", _model([make_node("Clip", ["x", "lo"], ["z"], name="cl")],
                                     {"lo": np.zeros(2)}),
     MALFORMED, "cl", r"input 1 \(min\) has shape \(2,\); expected a scalar", False),
    # Wrong acceptances.
    ("auto-pad-valid-with-pads", _model([make_node("AveragePool", ["x"], ["z"], name="ap",
                                                   kernel_shape=[2, 2], auto_pad="VALID",
                                                   pads=[1, 1, 1, 1])]),
     MALFORMED, "ap", r"attribute 'pads' is \[1, 1, 1, 1\] with auto_pad='VALID'; ONNX allows "
                      r"explicit pads only with auto_pad='NOTSET'", False),
    ("reshape-int64-min", _model([make_node("Reshape", ["x", "s"], ["z"], name="rs")],
                                 {"s": np.array([1, -2**63, 60], np.int64)}),
     MALFORMED, "rs", r"holds -9223372036854775808; expected dimensions >= -1", False),
    ("reshape-minus-2", _model([make_node("Reshape", ["x", "s"], ["z"], name="rs")],
                               {"s": np.array([1, -2, -30], np.int64)}),
     MALFORMED, "rs", r"holds -2; expected dimensions >= -1", False),
    ("reshape-two-minus-1", _model([make_node("Reshape", ["x", "s"], ["z"], name="rs")],
                                   {"s": np.array([1, -1, -1], np.int64)}),
     MALFORMED, "rs", r"more than one -1", False),
    ("reshape-allowzero-with-minus-1", _model([make_node("Reshape", ["x", "s"], ["z"], name="rs",
                                                         allowzero=1)],
                                              {"s": np.array([0, -1], np.int64)}),
     MALFORMED, "rs", r"both 0 and -1 with allowzero=1", False),
    ("cast-to-float16", _model([make_node("Cast", ["x"], ["h"], name="ct", to=10),
                                make_node("Cast", ["h"], ["z"], to=1)]),
     NPL, "ct", r"Cast to FLOAT16: only casts to FLOAT and DOUBLE", False),
    ("cast-to-bfloat16", _model([make_node("Cast", ["x"], ["h"], name="ct", to=16),
                                 make_node("Cast", ["h"], ["z"], to=1)]),
     NPL, "ct", r"Cast to BFLOAT16", False),
    ("cast-to-string", _model([make_node("Cast", ["x"], ["z"], name="ct", to=8)]),
     UNSUP, "ct", r"Cast to STRING", False),
]


# onnxruntime accepts these: it takes any non-zero transB as true, ignores pads beside
# auto_pad=VALID (the definition forbids them together) and rounds to float16.
ORT_ACCEPTS = {"gemm-transB-2", "auto-pad-valid-with-pads", "cast-to-float16",
               "cast-to-bfloat16"}


@pytest.mark.parametrize("case,model,error,name,match,checker_refuses",
                         [pytest.param(*h, id=h[0]) for h in HOSTILE])
def test_hostile_node_is_refused(case, model, error, name, match, checker_refuses):
    """Each of these used to crash (ValueError "too many values to unpack", TypeError
    from float(), ZeroDivisionError, IndexError) or load a wrong network (Sub of one
    input as the identity, ReduceMean-13 with an axes input reducing every axis, transB
    "abc" as true, pads dropped beside auto_pad=VALID, Reshape to -2**63 inferred,
    Cast to float16 as the identity); now each is a RefbbpError naming op, node and what
    was expected. onnxruntime refuses these models too (but those in ORT_ACCEPTS), and
    onnx.checker refuses those whose arity or attribute types are wrong."""
    with pytest.raises(error, match=match) as info:
        refbbp.load(model)
    e = info.value
    assert type(e) is error
    node = next(n for n in model.graph.node if n.name == name)
    msg = str(e)
    assert f"op '{node.op_type}'" in msg and f"at node '{name}'" in msg and "opset" in msg
    assert (check_node_with_onnx(model, name) is not None) == checker_refuses
    assert ort_refuses(model) == (case not in ORT_ACCEPTS)


def test_gemm_needs_2d_operands():
    """A Gemm with a 3-D input used to be taken as a batched MatMul; ONNX Gemm takes
    2-D matrices only (onnxruntime refuses it)."""
    model = _model([make_node("Gemm", ["x", "W"], ["z"], name="g")], {"W": _w(5, 2)})
    assert ort_refuses(model)
    with pytest.raises(MALFORMED, match=r"at node 'g': inputs A and B of shapes \(1, 3, 4, 5\) "
                                        r"and \(5, 2\); expected 2-D matrices"):
        refbbp.load(model)


def test_gemm_c_must_broadcast():
    """C of a shape that does not broadcast to (M, N) used to fail inside NumPy."""
    model = _flat(make_node("Gemm", ["f", "W", "C"], ["z"], name="g"),
                  {"W": _w(60, 4), "C": _w(3)})
    with pytest.raises(MALFORMED, match=r"C of shape \(3,\) does not broadcast to the output "
                                        r"shape \(1, 4\)"):
        refbbp.load(model)


def test_attribute_the_converter_does_not_read_is_refused():
    """An attribute the op has but the converter ignores must not be dropped silently:
    the registry refuses it before the converter runs (here a converter registered for
    TopK-11 reading only ``axis``)."""
    calls = []

    @registry.converter("TopK", first=11, last=11, attrs=("axis",))
    def convert_top_k(b, node, ins):
        calls.append(node)
        return ins

    try:
        node = registry.OnnxNode(helper.make_node("TopK", ["x", "k"], ["y", "i"], name="tk",
                                                  axis=0, largest=0), 17)
        with pytest.raises(UNSUP, match=r"at node 'tk': attribute 'largest' is not supported"):
            convert_top_k(None, node, [None, None])
        assert calls == []
        node = registry.OnnxNode(helper.make_node("TopK", ["x", "k"], ["y", "i"], axis=0), 17)
        assert convert_top_k(None, node, [None, None]) == [None, None] and len(calls) == 1
    finally:
        del registry._REGISTRY[("", "TopK", 11)]


def test_every_registered_converter_checks_the_schema():
    """Each registered converter is wrapped by the registry's check: a node with a wrong
    arity is refused before the converter runs, whatever the op."""
    for (domain, op, since), fn in sorted(registry._REGISTRY.items()):
        assert hasattr(fn, "handled_attrs"), (op, since)
        schema = onnx.defs.get_schema(op, max_inclusive_version=since, domain=domain)
        n_in = schema.max_input + 1 if schema.max_input < 2**31 - 1 else None
        if n_in is None:   # variadic: too few instead
            if schema.min_input == 0:
                continue
            n_in = schema.min_input - 1
        node = registry.OnnxNode(helper.make_node(op, ["x"] * n_in, ["y"], name="n"), since)
        with pytest.raises(MALFORMED, match=rf"at node 'n': {n_in} inputs?; the definition "):
            fn(None, node, [None] * n_in)


# ---------------------------------------------------------------------------------------
# SAME_UPPER / SAME_LOWER padding where the kernel is smaller than the stride.

def test_same_padding_kernel_smaller_than_stride_matches_onnxruntime():
    """AveragePool-21 over [10, 20, 30] with kernel 1, stride 3, SAME_UPPER: onnxruntime
    gives 20 (the padding total -2 is not clamped: the window starts at element 1);
    refbbp used to clamp it at 0 and give 10."""
    model = make_model([make_node("AveragePool", ["x"], ["z"], kernel_shape=[1],
                                  strides=[3], auto_pad="SAME_UPPER")], {"x": (1, 3)}, ["z"],
                       opset=21)
    x = np.array([[[10.0, 20.0, 30.0]]])
    assert run_ort(model, x).ravel().tolist() == [20.0]
    assert refbbp.load(model).forward(x).ravel().tolist() == [20.0]


SWEEP = [
    pytest.param(op, opset, mode, cip, id=f"{op}-{opset}-{mode}" + ("-cip" * cip))
    for op, opset, cip in [("AveragePool", 21, 0), ("AveragePool", 21, 1),
                           ("AveragePool", 11, 0), ("AveragePool", 11, 1), ("MaxPool", 21, 0),
                           ("MaxPool", 11, 0), ("Conv", 17, 0), ("Conv", 11, 0)]
    for mode in ("SAME_UPPER", "SAME_LOWER")]


@pytest.mark.parametrize("op,opset,mode,count_include_pad", SWEEP)
def test_same_padding_sweep_against_onnxruntime(rng, op, opset, mode, count_include_pad):
    """Every 1-D geometry with input 1..9, kernel 1..4, stride 1..5 (and two 2-D ones):
    refbbp gives onnxruntime's numbers, or refuses exactly where onnxruntime does
    (negative padding in MaxPool and AveragePool before opset 19). refbbp used to clamp
    a negative total padding at 0 everywhere."""
    cases = [((s,), (k,), (st,)) for s, k, st in itertools.product(range(1, 10), range(1, 5),
                                                                    range(1, 6))]
    cases += [((5, 7), (1, 3), (3, 2)), ((4, 6), (2, 1), (4, 5))]
    for spatial, kernel, strides in cases:
        attrs = dict(auto_pad=mode, strides=list(strides))
        inits = {}
        if op == "Conv":
            inits = {"W": rng.standard_normal((2, 2) + kernel)}
        else:
            attrs["kernel_shape"] = list(kernel)
            if op == "AveragePool":
                attrs["count_include_pad"] = count_include_pad
        model = make_model([make_node(op, ["x"] + list(inits), ["z"], name="n", **attrs)],
                           {"x": (2,) + spatial}, ["z"], inits, opset)
        x = as_f32(rng.standard_normal((1, 2) + spatial))
        try:
            expected = run_ort(model, x)
        except Exception:  # noqa: BLE001
            expected = None
        where = (spatial, kernel, strides)
        if expected is None:
            with pytest.raises(UNSUP, match="implies negative padding"):
                refbbp.load(model)
            continue
        got = refbbp.load(model).forward(x)
        np.testing.assert_allclose(got.ravel(), expected.ravel(), rtol=1e-5,
                                   atol=1e-6 * np.abs(expected).max(), err_msg=str(where))
