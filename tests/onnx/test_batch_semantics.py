"""Batch semantics: one rule for a fixed leading dimension of the data input.

A fixed leading dimension ``N > 1`` is a batch axis when every op keeps the ``N``
elements apart and treats them alike: the graph is specialised to batch 1 and each
element is explained as its own input. Otherwise the whole tensor is one input. The
reference is onnxruntime running the ORIGINAL model on the full fixed batch; element
``b`` of its output must be refbbp's result for element ``b``.
"""

import warnings

import numpy as np
import onnx
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import refbbp
from refbbp.errors import InputShapeError, UnsupportedOpError
from refbbp.onnx.loader import ImportNotice
from tests.helpers import as_f32, check_against_ort, make_model, make_node, run_ort
from tests.strategies import logits_name, models


def _load(model, **kwargs):
    """``refbbp.load`` and the ImportNotices it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = refbbp.load(model, **kwargs)
    return net, [str(w.message) for w in caught if issubclass(w.category, ImportNotice)]


def _check_batch(model, x, **kwargs):
    """refbbp per element against onnxruntime on the full fixed batch ``x``, and BBp's
    completeness on every element."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImportNotice)
        net = check_against_ort(model, x, **kwargs)
    assert net.batch_axis and net.input_shape == x.shape[1:]
    assert refbbp.bbp(net, as_f32(x)).completeness().ok()
    return net


def _conv_model(n, rng, head="flatten"):
    """Conv -> Relu -> MaxPool -> (Flatten | Reshape to [n, -1] | Shape-derived Reshape)
    -> MatMul, on an input of shape ``[n, 1, 12, 12]``."""
    inits = {"W": rng.standard_normal((3, 1, 3, 3)), "G": rng.standard_normal((3 * 5 * 5, 4)),
             "B": rng.standard_normal(4)}
    nodes = [make_node("Conv", ["x", "W"], ["c"]), make_node("Relu", ["c"], ["r"]),
             make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2])]
    if head == "flatten":
        nodes.append(make_node("Flatten", ["p"], ["f"]))
    elif head == "reshape-constant":          # an exporter's constant: the batch size in it
        inits["S"] = np.array([n, -1], np.int64)
        nodes.append(make_node("Reshape", ["p", "S"], ["f"]))
    else:                                      # x.view(x.size(0), -1)
        inits.update(i0=np.array([0], np.int64), m1=np.array([-1], np.int64))
        nodes += [make_node("Shape", ["p"], ["s"]),
                  make_node("Gather", ["s", "i0"], ["n0"], axis=0),
                  make_node("Concat", ["n0", "m1"], ["S"], axis=0),
                  make_node("Reshape", ["p", "S"], ["f"])]
    nodes += [make_node("MatMul", ["f", "G"], ["m"]), make_node("Add", ["m", "B"], ["y"])]
    return make_model(nodes, {"x": (1, 12, 12)}, ["y"], inits, batch=n)


@pytest.mark.parametrize("head", ["flatten", "reshape-constant", "reshape-shape"])
@pytest.mark.parametrize("n", [2, 10])
def test_fixed_batch_conv_is_a_batch(rng, n, head):
    """A Conv model with input [n, 1, 12, 12] used to be refused at the Conv ("expected
    an input of shape (1, C, *spatial)"): it is a batch of n inputs of (1, 12, 12), also
    with the batch size written into a Reshape constant."""
    model = _conv_model(n, rng, head)
    _check_batch(model, rng.standard_normal((n, 1, 12, 12)))
    net, notices = _load(model)
    assert len(notices) == 1 and "is a batch axis" in notices[0], notices
    assert net.notices == notices


def test_fixed_batch_mlp_is_a_batch(rng):
    """A fixed [10, 1, 28, 28] MLP (Flatten -> Gemm -> Relu -> Gemm) used to be taken as
    one input of 7,840 features (and 100 outputs); it is 10 inputs of (1, 28, 28)."""
    inits = {"W1": rng.standard_normal((16, 784)) / 28, "b1": rng.standard_normal(16),
             "W2": rng.standard_normal((16, 10)), "b2": rng.standard_normal(10)}
    nodes = [make_node("Flatten", ["x"], ["f"]),
             make_node("Gemm", ["f", "W1", "b1"], ["h"], transB=1),
             make_node("Relu", ["h"], ["r"]), make_node("Gemm", ["r", "W2", "b2"], ["y"])]
    model = make_model(nodes, {"x": (1, 28, 28)}, ["y"], inits, batch=10)
    net = _check_batch(model, rng.standard_normal((10, 1, 28, 28)))
    assert net.n_inputs == 784 and net.n_outputs == 10


def _mixing_model(rng, kind, n=3):
    """A graph on input [n, 4] that mixes (or treats differently) the batch elements."""
    if kind == "flatten-axis-0":
        inits = {"W": rng.standard_normal((n * 4, 5))}
        nodes = [make_node("Flatten", ["x"], ["f"], axis=0), make_node("MatMul", ["f", "W"], ["y"])]
    elif kind == "reduce-over-batch":
        inits = {"ax": np.array([0], np.int64)}
        nodes = [make_node("ReduceSum", ["x", "ax"], ["s"], keepdims=1),
                 make_node("Sub", ["x", "s"], ["y"])]
    elif kind == "transpose-batch":
        inits = {"W": rng.standard_normal((n, 5))}
        nodes = [make_node("Transpose", ["x"], ["t"], perm=[1, 0]),
                 make_node("MatMul", ["t", "W"], ["y"])]
    elif kind == "per-element-constant":       # each element gets its own scale
        inits = {"c": rng.uniform(0.5, 2.0, (n, 1))}
        nodes = [make_node("Mul", ["x", "c"], ["y"])]
    else:                                      # concat along the batch axis
        inits = {"c": rng.standard_normal((1, 4))}
        nodes = [make_node("Concat", ["x", "c"], ["y"], axis=0)]
    return make_model(nodes, {"x": (4,)}, ["y"], inits, batch=n)


MIXING = ["flatten-axis-0", "reduce-over-batch", "transpose-batch", "per-element-constant",
          "concat-batch"]


@pytest.mark.parametrize("kind", MIXING)
def test_graph_that_mixes_elements_is_one_input(rng, kind):
    """Where an op mixes the elements of the leading dimension (or treats them
    differently) the whole tensor is one input, and a notice names the node."""
    model = _mixing_model(rng, kind)
    net, notices = _load(model)
    assert not net.batch_axis and net.input_shape == (3, 4)
    assert len(notices) == 1 and "is not a batch axis" in notices[0], notices
    x = as_f32(rng.standard_normal((3, 4)))
    np.testing.assert_allclose(net.forward(x), run_ort(model, x).ravel(), rtol=1e-5,
                               atol=1e-5)
    assert refbbp.bbp(net, x).completeness().ok()


def test_batch_axis_none_forces_one_input(rng):
    """batch_axis=None: the fixed [n, 1, 12, 12] tensor is one input, and the Conv then
    refuses it (its batch dimension is not 1)."""
    with pytest.raises(UnsupportedOpError, match=r"expected an input of shape \(1, C"):
        refbbp.load(_conv_model(3, rng), batch_axis=None)


def test_batch_axis_zero_forces_a_batch(rng):
    """batch_axis=0 on a graph that mixes the elements: a batch all the same, explained
    as the graph behaves on a batch of one; the notice says which node mixes."""
    model = _mixing_model(rng, "per-element-constant")
    net, notices = _load(model, batch_axis=0)
    assert net.batch_axis and net.input_shape == (4,)
    assert len(notices) == 1 and "batch_axis=0" in notices[0] and "Mul" in notices[0]


def test_constant_broadcast_along_the_batch_is_specialised(rng):
    """A constant written out at the batch size (n equal rows) is the same function for
    every element: still a batch, the constant sliced to one row."""
    row = rng.standard_normal((1, 4))
    model = make_model([make_node("Add", ["x", "c"], ["a"]), make_node("Relu", ["a"], ["y"])],
                       {"x": (4,)}, ["y"], {"c": np.repeat(row, 3, axis=0)}, batch=3)
    _check_batch(model, rng.standard_normal((3, 4)))


def test_symbolic_and_unit_batch_unchanged(rng):
    """A symbolic or fixed-1 leading dimension is a batch axis as before, with no
    notice."""
    for batch in ("N", 1):
        net, notices = _load(_conv_model(batch if batch == 1 else 2, rng)
                             if batch == 1 else _symbolic_conv(rng))
        assert net.batch_axis and not notices


def _symbolic_conv(rng):
    inits = {"W": rng.standard_normal((3, 1, 3, 3))}
    return make_model([make_node("Conv", ["x", "W"], ["y"])], {"x": (1, 6, 6)}, ["y"], inits)


# Invalid batch_axis values, one per row: (value, error, message).
BAD_BATCH_AXIS = [
    (1, ValueError, "only the leading axis"),        # any axis but 0
    (-1, ValueError, "only the leading axis"),
    (True, TypeError, "batch_axis must be"),          # a bool is not an axis
    ("yes", TypeError, "batch_axis must be"),         # a string other than "auto"
    (0.0, TypeError, "batch_axis must be"),           # a float
]


@pytest.mark.parametrize("value,error,match", BAD_BATCH_AXIS)
def test_batch_axis_argument_errors(rng, value, error, match):
    with pytest.raises(error, match=match):
        refbbp.load(_conv_model(2, rng), batch_axis=value)


def test_batch_axis_contradicting_input_shape(rng):
    """input_shape without the batch dimension says there is one: batch_axis=None
    contradicts it; a rank-1 input has no batch axis to force."""
    with pytest.raises(InputShapeError, match="batch_axis=None"):
        refbbp.load(_symbolic_conv(rng), input_shape=(1, 6, 6), batch_axis=None)
    vec = make_model([make_node("Relu", ["x"], ["y"])], {"x": (5,)}, ["y"], batch=None)
    with pytest.raises(InputShapeError, match="rank 2 or more"):
        refbbp.load(vec, batch_axis=0)


def _fixed(model, n):
    """``model`` with its symbolic batch dimension fixed to ``n``."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    dim = m.graph.input[0].type.tensor_type.shape.dim[0]
    dim.Clear()
    dim.dim_value = n
    for o in m.graph.output:
        if o.type.tensor_type.HasField("shape") and o.type.tensor_type.shape.dim:
            d = o.type.tensor_type.shape.dim[0]
            d.Clear()
            d.dim_value = n
    return m


# Cost: a draw runs onnxruntime a few times and BBp on n <= 3 small inputs (~ 0.1-0.3 s).
@settings(max_examples=25, deadline=None)
@given(example=models(), n=st.integers(2, 3))
def test_random_models_with_a_fixed_batch(example, n):
    """Any random MLP/CNN/ResNet with its batch fixed to n is a batch of n: each
    element's result is onnxruntime's on the full batch, and BBp is complete."""
    model, x = example
    rng = np.random.default_rng(n)
    xs = as_f32(np.stack([x] + [rng.standard_normal(x.shape) for _ in range(n - 1)]))
    fixed = _fixed(model, n)
    try:        # some sketches write batch 1 into a Reshape: not a model of n inputs
        run_ort(fixed, xs, logits_name(model))
    except Exception:
        assume(False)
    _check_batch(fixed, xs, runtime=lambda m, x, _: run_ort(m, x, logits_name(m)))


@pytest.mark.parametrize("how", ["scales", "sizes", "resize-batch"])
def test_resize_keeps_a_batch_apart_unless_it_resizes_the_batch_axis(rng, how):
    """Resize had no batch rule (merged from another branch), so a fixed batch in front
    of it made the whole tensor one input. It keeps the elements apart when its scale
    (or size) along the batch axis leaves it unchanged; a resized batch axis mixes."""
    n = 2
    x = rng.standard_normal((n, 1, 3, 3))
    if how == "sizes":
        inits = {"roi": np.zeros(0), "s": np.zeros(0), "z": np.array([n, 1, 6, 6])}
        ins = ["x", "roi", "s", "z"]
    else:
        scales = [2.0 if how == "resize-batch" else 1.0, 1.0, 2.0, 2.0]
        inits, ins = {"roi": np.zeros(0), "s": np.array(scales)}, ["x", "roi", "s"]
    model = make_model([make_node("Resize", ins, ["y"], mode="nearest")], {"x": (1, 3, 3)},
                       ["y"], inits, batch=n)
    net, notices = _load(model)
    if how == "resize-batch":
        assert "is not a batch axis" in notices[0] and "resizes the batch axis" in notices[0]
    else:
        assert "is a batch axis" in notices[0], notices
        _check_batch(model, x)
