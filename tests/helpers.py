"""Shared helpers for the converter tests: one-node ONNX models, onnxruntime as the
reference, and the checks every model must pass (SPEC section 2).

``check_against_ort`` is the single place where refbbp is compared with onnxruntime
(onnx2torch ``tests/utils/common.py``, with real tolerances): the float64 forward pass
must agree with onnxruntime's float32 one to float32 accuracy, and the local linear
model must be exact in float64.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

import refbbp

__all__ = ["make_model", "make_node", "with_output_shapes", "run_ort", "check_against_ort",
           "check_linear_model", "run_onnx_reference", "as_f32", "BATCH"]

BATCH = "N"  # symbolic batch dimension of every test model's input

_ONNX_TYPES = {
    np.dtype(np.float32): onnx.TensorProto.FLOAT,
    np.dtype(np.float64): onnx.TensorProto.DOUBLE,
    np.dtype(np.int64): onnx.TensorProto.INT64,
    np.dtype(np.int32): onnx.TensorProto.INT32,
    np.dtype(np.bool_): onnx.TensorProto.BOOL,
}


def make_node(op_type, inputs, outputs, name=None, domain=None, **attrs):
    """``onnx.helper.make_node`` with a default node name (``op_type`` + first output)."""
    return helper.make_node(op_type, list(inputs), list(outputs),
                            name=name or f"{op_type}_{outputs[0]}", domain=domain, **attrs)


def _initializer(name, value):
    a = np.asarray(value)
    if a.dtype == np.float64:
        a = a.astype(np.float32)  # the models are float32, like the exporters write
    elif a.dtype.kind in "iu" and a.dtype != np.int64:
        a = a.astype(np.int64)
    return numpy_helper.from_array(a, name)


def make_model(nodes, inputs, outputs, initializers=None, opset=17, *, batch=BATCH,
               input_dtype=onnx.TensorProto.FLOAT, ir_version=None):
    """An ONNX model from nodes.

    Parameters
    ----------
    nodes : list of onnx.NodeProto
    inputs : dict of str to tuple
        Data inputs and the shape of one sample (without the batch dimension). Each gets
        a leading batch dimension ``batch`` (a symbolic name, an int, or ``None`` for no
        batch dimension). Dimensions may be symbolic names.
    outputs : list of str
        Graph outputs, float32 (shapes left to inference).
    initializers : dict of str to array_like, optional
        Constants; float64 values are stored as float32, integers as int64.
    opset : int or dict of str to int
        Version of the default domain (or ``{domain: version}``).

    Returns
    -------
    onnx.ModelProto
    """
    ins = [helper.make_tensor_value_info(
        name, input_dtype, ([batch] if batch is not None else []) + list(shape))
        for name, shape in inputs.items()]
    outs = [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            for name in outputs]
    inits = [_initializer(k, v) for k, v in (initializers or {}).items()]
    graph = helper.make_graph(list(nodes), "refbbp_test", ins, outs, inits)
    opsets = opset if isinstance(opset, dict) else {"": opset}
    opset_ids = [helper.make_opsetid(d, v) for d, v in opsets.items()]
    # The oldest IR version that allows initializers outside the graph inputs (4) or the
    # one the opset needs, whichever is newer: onnxruntime reads both.
    ir = ir_version or max(4, helper.find_min_ir_version_for(
        [o for o in opset_ids if o.domain in ("", "ai.onnx")] or opset_ids[:1]))
    return with_output_shapes(helper.make_model(graph, opset_imports=opset_ids,
                                                ir_version=ir, producer_name="refbbp-tests"))


def with_output_shapes(model):
    """``model`` with the types of its graph outputs given by ONNX's shape inference.

    ONNX requires a shape on every graph input and output (``onnx.checker``, which
    ``refbbp.load`` runs, refuses a model without); the tests build their outputs
    without one and let inference fill it in. Outputs inference cannot type are left
    as they are. Modifies and returns ``model``.
    """
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type for vi in [*inferred.graph.value_info, *inferred.graph.output]
             if vi.type.tensor_type.HasField("shape")}
    for out in model.graph.output:
        if not out.type.tensor_type.HasField("shape") and out.name in types:
            out.type.CopyFrom(types[out.name])
    return model


_SESSION_OPTIONS = ort.SessionOptions()
_SESSION_OPTIONS.intra_op_num_threads = 1
_SESSION_OPTIONS.inter_op_num_threads = 1
# No graph rewrites: onnxruntime should compute the graph as written (fusing Conv+BN in
# float32 would blur what is compared).
_SESSION_OPTIONS.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
_SESSION_OPTIONS.log_severity_level = 3


def with_outputs(model, names):
    """A copy of ``model`` whose graph outputs are the tensors ``names`` (shapes left
    to the runtime)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    elem = model.graph.input[0].type.tensor_type.elem_type
    m.graph.output.extend(helper.make_tensor_value_info(n, elem, None) for n in names)
    return m


def run_ort(model, x, output=None):
    """Run ``model`` with onnxruntime on one input ``x`` (no batch axis) or a batch.

    The one onnxruntime runner of the tests: one thread, no graph optimisations (so each
    op's own kernel is the reference; fusing Conv+BN in float32 would blur what is
    compared).

    Parameters
    ----------
    model : onnx.ModelProto, or the path of an ONNX file
    x : ndarray, shape input_shape or (batch, *input_shape)
    output : str, optional
        Tensor to return; default the graph's first output.

    Returns
    -------
    ndarray
        In the graph's float type, with the batch axis as the graph has it.
    """
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    if output is not None and output != model.graph.output[0].name:
        model = with_outputs(model, [output])
    elem = model.graph.input[0].type.tensor_type.elem_type
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    rank = len(model.graph.input[0].type.tensor_type.shape.dim)
    x = np.asarray(x, dtype)
    if x.ndim == rank - 1:
        x = x[None]
    sess = ort.InferenceSession(model.SerializeToString(), _SESSION_OPTIONS,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, {model.graph.input[0].name: x})[0]


def run_onnx_reference(model, x, output=None):
    """Run ``model`` on ``x`` with ONNX's reference evaluator (float32), for the few
    attribute combinations onnxruntime refuses (e.g. dilated Conv with SAME padding)."""
    from onnx.reference import ReferenceEvaluator

    sess = ReferenceEvaluator(model)
    outs = sess.run([output] if output else None,
                    {model.graph.input[0].name: np.asarray(x, np.float32)})
    return np.asarray(outs[0])


def as_f32(x):
    """``x`` rounded to float32 and back: the input both runtimes see."""
    return np.asarray(x, np.float32).astype(np.float64)


def _scales(lin):
    """Per input: the sum of absolute values of the terms of ``w . x + b^x`` (SPEC 2)."""
    x = lin.trace.values[0]
    terms = np.abs(lin.grads[0] * x).sum(1)
    for t in lin.node_bias_terms():
        terms = terms + np.abs(t).sum(1)
    return terms + np.abs(np.atleast_1d(lin.value))


def check_linear_model(net, x, classes=None):
    """The local linear model is exact at ``x`` (a batch): ``|w . x + b^x - f| <= 1e-9 *
    scale`` for the predicted class and for ``classes``, and ``bias_x_all()`` holds each
    class's bias.

    Parameters
    ----------
    classes : sequence of int, optional
        Outputs to check; default the first, the last and the predicted one.
    """
    lin = net.linearize(x)
    assert lin.check() <= 1e-9, lin.check()
    bias_all = np.atleast_2d(lin.bias_x_all())
    n_out = net.n_outputs
    classes = sorted({0, n_out - 1}) if classes is None else classes
    for c in classes:
        lc = net.linearize(x, target=c)
        assert lc.check() <= 1e-9, (c, lc.check())
        f = np.einsum("bi,bi->b", lc.w.reshape(len(x), -1), x.reshape(len(x), -1))
        np.testing.assert_array_less(np.abs(f + lc.bias_x - lc.value), 1e-9 * _scales(lc) + 1e-300)
        np.testing.assert_allclose(bias_all[:, c], lc.bias_x, rtol=0,
                                   atol=float(np.max(1e-9 * _scales(lc))) + 1e-300,
                                   err_msg=f"bias_x_all()[:, {c}] != linearize(target={c}).bias_x")
    return lin


def check_against_ort(model, x, rtol=1e-4, atol_scale=1e-5, *, output=None, classes=None,
                      runtime=run_ort, **load_kwargs):
    """Load ``model`` with refbbp and compare it with onnxruntime on ``x``.

    Parameters
    ----------
    model : onnx.ModelProto
    x : ndarray, shape (batch, *input_shape)
        Rounded to float32; both runtimes get the same values (float64 into refbbp).
    rtol, atol_scale : float
        Forward pass: ``assert_allclose(refbbp, ort, rtol, atol=atol_scale * max|ort|)``
        (SPEC section 2: float32 accuracy relative to the output's scale).
    output : str, optional
        Graph output to explain (passed to ``refbbp.load`` and onnxruntime).
    classes : sequence of int, optional
        Outputs whose bias is compared with ``bias_x_all()`` (see ``check_linear_model``).
    runtime : callable(model, x, output)
        The reference: ``run_ort``, or ``run_onnx_reference`` where onnxruntime refuses
        the model.
    **load_kwargs
        Passed to ``refbbp.load``.

    Returns
    -------
    Network
    """
    x64 = as_f32(x)
    with warnings.catch_warnings():   # the batch rule's notices are tested in tests/onnx
        warnings.simplefilter("ignore", refbbp.ImportNotice)
        net = refbbp.load(model, output=output, **load_kwargs)
    expected = runtime(model, x64, output)
    actual = net.forward(x64)
    expected = expected.reshape(actual.shape)
    scale = float(np.max(np.abs(expected), initial=0.0))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol_scale * scale,
                               err_msg="refbbp (float64) vs onnxruntime (float32)")
    batch = x64 if net.batch_axis else x64[None]
    check_linear_model(net, batch, classes)
    return net
