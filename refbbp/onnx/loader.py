"""``refbbp.load``: an ONNX model -> a :class:`~refbbp.Network`.

The walk: sort the graph's nodes topologically, keep those the chosen output needs,
drop a final Softmax/LogSoftmax (the logits are explained), then visit each node. A
node whose inputs are all constant is evaluated once with ONNX's reference evaluator
and becomes a constant (shape chains, ConstantOfShape, arithmetic on initializers).
``Shape`` of an input-dependent tensor is known statically. Every other node goes to
the converter registered for its op and opset (``registry.py``).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from ..errors import InputShapeError, ModelFormatError, UnsupportedOpError
from ..network.graph import Network, live_nodes
from . import (activations, batch, conv, elementwise, gemm, index, maxnodes, pool, registry,
               resize, validate)
from .builder import STORAGES, Builder, Var

__all__ = ["CONVERTER_MODULES", "ImportNotice", "load", "strip_final_softmax",
           "topological_order"]

#: The converter modules, imported above for their registrations (in this order).
CONVERTER_MODULES = (activations, conv, elementwise, gemm, index, maxnodes, pool, resize)

DEFAULT_MAX_BYTES = 4 << 30


class ImportNotice(UserWarning):
    """Something the importer did that changes what is explained (e.g. a dropped Softmax)."""


def topological_order(nodes, available):
    """Kahn's algorithm over ONNX nodes; raises on cycles or missing inputs."""
    produced_by = {}
    for i, n in enumerate(nodes):
        for o in n.output:
            if o:
                produced_by[o] = i
    deps = []
    for n in nodes:
        d = set()
        for name in n.input:
            if not name or name in available:
                continue
            if name not in produced_by:
                raise ModelFormatError(
                    f"node {n.name or n.op_type!r} reads {name!r}, which no node, initializer "
                    f"or graph input provides")
            d.add(produced_by[name])
        deps.append(d)
    users = [[] for _ in nodes]
    for i, d in enumerate(deps):
        for j in d:
            users[j].append(i)
    pending = [len(d) for d in deps]
    ready = [i for i, p in enumerate(pending) if p == 0]
    order = []
    while ready:
        i = ready.pop(0)
        order.append(i)
        for j in users[i]:
            pending[j] -= 1
            if pending[j] == 0:
                ready.append(j)
    if len(order) != len(nodes):
        raise ModelFormatError("the ONNX graph has a cycle")
    nodes = [nodes[i] for i in order]
    return nodes, {o: i for i, n in enumerate(nodes) for o in n.output if o}


def _dims(value_info):
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in t.shape.dim]


def _input_shape(vi, input_shape, batch_axis):
    """How the data input is read, from its declared shape, ``input_shape`` and
    ``batch_axis`` (``"auto"``, 0 or None).

    Returns
    -------
    onnx_shape : tuple of int
        The input's shape in the graph refbbp converts (batch dimension 1).
    sample_shape : tuple of int
        The shape of one input.
    batch : bool
        Whether the leading dimension is a batch axis.
    size : int or None
        The declared batch size when it is fixed and larger than 1: the graph is then
        specialised to batch 1, which :class:`~refbbp.onnx.batch.BatchPlan` checks.
    """
    dims = _dims(vi)
    if dims is not None:
        validate.check_input_dims(vi, dims)
    if input_shape is not None:
        given = input_shape
        if dims is None:
            if batch_axis == 0:
                return (1,) + given, given, True, None
            return given, given, False, None
        if len(given) == len(dims) - 1:
            if batch_axis is None:
                raise InputShapeError(
                    f"input_shape={given} has one dimension fewer than the model's input "
                    f"{vi.name!r} of shape {dims} (the shape of one input without the batch "
                    f"dimension), but batch_axis=None says the input has no batch axis: "
                    f"give its full shape")
            onnx_shape, batch = (1,) + given, True
        elif len(given) == len(dims):
            if batch_axis == 0:
                raise InputShapeError(
                    f"input_shape={given} has as many dimensions as the model's input "
                    f"{vi.name!r} of shape {dims}, but batch_axis=0: give the shape of one "
                    f"input, without the batch dimension")
            onnx_shape, batch = given, False
        else:
            raise InputShapeError(
                f"input_shape={given} has {len(given)} dimensions; the model's input "
                f"{vi.name!r} has shape {dims}: give its shape without the batch dimension")
        for axis, (d, g) in enumerate(zip(dims, onnx_shape)):
            if isinstance(d, int) and d > 0 and d != g and not (axis == 0 and batch):
                raise InputShapeError(
                    f"input_shape={given} disagrees with the model's input {vi.name!r} "
                    f"of shape {dims} at axis {axis}")
        size = dims[0] if batch and isinstance(dims[0], int) and dims[0] > 1 else None
        return onnx_shape, given, batch, size
    if dims is None or not dims:
        raise InputShapeError(f"the model does not declare the shape of input {vi.name!r}: "
                              f"pass input_shape= (without the batch dimension)")
    if batch_axis is None:
        batch = False
    elif batch_axis == 0:
        if len(dims) < 2:
            raise InputShapeError(
                f"batch_axis=0, but the model's input {vi.name!r} has shape {dims}: a batch "
                f"axis needs an input of rank 2 or more (each input is the rest)")
        batch = True
    else:
        batch = len(dims) >= 2
    rest = dims[1:] if batch else dims
    if any(isinstance(d, int) and d == 0 for d in rest):
        raise ModelFormatError(f"graph input {vi.name!r} has shape {dims} with a zero "
                               f"dimension: an input with no elements has nothing to explain")
    bad = [i for i, d in enumerate(rest) if not isinstance(d, int) or d <= 0]
    if bad:
        raise InputShapeError(
            f"input {vi.name!r} has shape {dims} with symbolic dimensions: pass "
            f"input_shape= (the shape of one input" +
            (", without the batch dimension)" if batch else ", all of it: batch_axis=None)"))
    size = dims[0] if batch and isinstance(dims[0], int) and dims[0] > 1 else None
    return ((1,) + tuple(rest) if batch else tuple(rest)), tuple(rest), batch, size


def strip_final_softmax(output, produced_by, nodes):
    """Follow the output back over a final Softmax/LogSoftmax (or Softmax -> Log) and
    any Identity nodes around it. Returns the tensor to explain and the dropped nodes
    (none if the chain holds no Softmax/LogSoftmax)."""
    chain, dropped, name = [], [], output
    while name in produced_by:
        p = nodes[produced_by[name]]
        if p.op_type == "Log":
            src = p.input[0]
            if not (src in produced_by and nodes[produced_by[src]].op_type == "Softmax"):
                break
        elif p.op_type not in ("Softmax", "LogSoftmax", "Identity"):
            break
        chain.append(p)
        name = p.input[0]
        if p.op_type in ("Softmax", "LogSoftmax") or dropped:
            output, dropped = name, list(chain)
    return output, dropped


def load(model, input_shape=None, *, output=None, max_bytes=DEFAULT_MAX_BYTES, storage="auto",
         batch_axis="auto"):
    """Load an ONNX model into a network of local affine maps.

    Parameters
    ----------
    model : str, path-like or onnx.ModelProto
        A model file (a regular file; its external data, if any, are read from its
        folder and only from there) or a proto in memory (without external data).
    input_shape : tuple of int, optional
        Shape of one input without the batch dimension. Needed only when the model's
        input has symbolic dimensions other than the leading batch dimension.
    output : str, optional
        Name of the graph output to explain; default the first.
    batch_axis : {"auto", 0, None}, optional
        Whether the input's leading dimension is a batch axis. ``"auto"`` (default):
        a symbolic leading dimension, or a fixed one of 1, is; a fixed one of ``N > 1``
        is when every op keeps the ``N`` elements apart (and treats them alike), and
        then the graph is specialised to batch 1 and each element explained as its own
        input; otherwise the whole tensor is one input. Either way an ``ImportNotice``
        says what was decided and why. ``0`` forces a batch axis, ``None`` forces none
        (the whole tensor is one input). An input of rank 1 has no batch axis.
    max_bytes : int or float, optional
        Memory budget (default 4 GiB; finite, at least 1) for all layer matrices
        together plus the per-node vectors of one explanation. A layer that would
        exceed it is refused, naming the layer and its estimated size, before it is
        allocated; so is a tensor computed at load time (an index op's element table,
        a constant) that would not fit in what is left of it. The model file and its
        external data together may not be larger than it either (checked before
        reading).
    storage : {"auto", "csr"}, optional
        ``"auto"`` (default): convolutions, transposed convolutions and average pooling
        are window matrices (their kernel and geometry; rows are generated when a pass
        needs them) wherever they read a plain grid of one node; ``"csr"``: every such
        matrix is unrolled to CSR, the reference form (small networks only). Both give
        the same numbers (SPEC section 1).

    Returns
    -------
    Network

    Raises
    ------
    NotPiecewiseLinearError
        An op in the graph is not piecewise linear (names op, node and opset).
    UnsupportedOpError
        An op or attribute refbbp does not convert.
    ModelFormatError
        The file or proto is not a valid ONNX model (``onnx.checker`` with
        ``full_check=True``, and refbbp's own checks of files, external data, graph
        structure and initializers).
    InputShapeError, MemoryBudgetError
    TypeError, ValueError
        An argument of the wrong type or out of range (the message names it).
    """
    input_shape, max_bytes = validate.check_load_arguments(
        input_shape, output, max_bytes, storage, STORAGES)
    proto, folder, source = validate.read_model(model, max_bytes)
    validate.resolve_external_data(proto, folder, max_bytes,
                                   source["bytes"] if source else 0)
    graph = proto.graph
    validate.check_opsets(proto)
    opsets = {(o.domain or ""): o.version for o in proto.opset_import}
    if "" not in opsets and "ai.onnx" in opsets:
        opsets[""] = opsets["ai.onnx"]
    # every node against its op's schema first: the messages name the node, op and
    # opset, and it also covers nodes that only ever see constants (evaluated at load
    # time, never converted)
    for proto_node in graph.node:
        registry.OnnxNode(proto_node, _opset(opsets, proto_node)).check_schema()
    outputs = validate.check_graph(graph)
    consts = validate.decode_constants(graph, max_bytes)
    data_inputs = [vi for vi in graph.input if vi.name not in consts]
    if len(data_inputs) != 1:
        raise ModelFormatError(
            f"expected exactly one data input (graph inputs that are not initializers), "
            f"found {len(data_inputs)}: {[vi.name for vi in data_inputs]}")
    vin = data_inputs[0]
    batch_axis = batch.check_batch_axis(batch_axis)
    onnx_shape, sample_shape, batched, size = _input_shape(vin, input_shape, batch_axis)

    if output is None:
        output = outputs[0]
    elif output not in outputs:
        raise ModelFormatError(f"no graph output named {output!r}; outputs: {outputs}")
    out_name = output

    nodes, produced_by = topological_order(list(graph.node), set(consts) | {vin.name})
    output, dropped = strip_final_softmax(output, produced_by, nodes)
    notices = []
    if dropped:
        notices.append(
            f"dropped the final {' -> '.join(p.op_type for p in reversed(dropped))} "
            f"({', '.join(p.name or p.op_type for p in reversed(dropped))}): the logits "
            f"{output!r} are explained")
        warnings.warn(notices[-1], ImportNotice, stacklevel=2)

    # Keep only the nodes the output depends on.
    needed, stack = set(), [output]
    while stack:
        name = stack.pop()
        if name in produced_by and produced_by[name] not in needed:
            needed.add(produced_by[name])
            stack.extend(i for i in nodes[produced_by[name]].input if i)
    todo = [n for i, n in enumerate(nodes) if i in needed]
    walk = dict(todo=todo, consts=consts, vin=vin, opsets=opsets, output=output,
                max_bytes=max_bytes, storage=storage)

    if size is None:
        b, result = _walk(onnx_shape, None, **walk)
    else:
        dims = tuple(_dims(vin))
        plan = batch.BatchPlan(size, vin.name, forced=batch_axis == 0 or input_shape is not None)
        try:
            b, result = _walk(onnx_shape, plan, **walk)
        except batch.MixedBatch as mixed:
            notice = (f"the leading dimension {size} of input {vin.name!r} (shape "
                      f"{list(dims)}) is not a batch axis: {mixed}; the whole tensor is "
                      f"explained as one input (pass batch_axis=0 to treat it as a batch)")
            batched, onnx_shape, sample_shape = False, dims, dims
            b, result = _walk(onnx_shape, None, **walk)
        else:
            if plan.mixed is not None:
                notice = (f"batch_axis=0: the leading dimension {size} of input {vin.name!r} "
                          f"is taken as a batch axis, but {plan.mixed}: each element is "
                          f"explained as the graph behaves on a batch of one")
            else:
                notice = (f"the leading dimension {size} of input {vin.name!r} (shape "
                          f"{list(dims)}) is a batch axis: every op keeps its elements "
                          f"apart; each element is explained as its own input of shape "
                          f"{tuple(sample_shape)}")
        notices.append(notice)
        warnings.warn(notice, ImportNotice, stacklevel=2)

    if result.size == 0:
        raise ModelFormatError(f"output {output!r} has shape {result.shape}: no elements to "
                               f"explain (a tensor on its way has a zero dimension)")
    # onnx.checker's full check last: refbbp's own checks (every node's schema above,
    # each converter's attributes and shapes) name the node, op and what was expected,
    # so they have their turn first; nothing the checker refuses is ever returned
    validate.check_model(proto, source)
    out = b.finish(result, output)
    kept_nodes, out = _prune(b.nodes, out)
    return Network(kept_nodes, out, sample_shape, input_name=vin.name,
                   output_name=output, graph_output=out_name, batch_axis=batched,
                   notices=notices, source=source)


def _walk(onnx_shape, plan, *, todo, consts, vin, opsets, output, max_bytes, storage):
    """Convert the nodes ``todo`` with the data input of shape ``onnx_shape``.

    ``plan`` (a :class:`~refbbp.onnx.batch.BatchPlan`, or None) specialises a fixed
    batch dimension to 1 as it goes; it raises ``MixedBatch`` if an op mixes the
    elements. Returns the builder and the output's view.
    """
    uses = {}
    for n in todo:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    uses[output] = uses.get(output, 0) + 1
    b = Builder(onnx_shape, vin.name, max_bytes, storage)
    values = dict(consts)
    values[vin.name] = Var.of_node(0, onnx_shape)
    for proto_node in todo:
        node = registry.OnnxNode(proto_node, _opset(opsets, proto_node))
        ins = [values[i] if i else None for i in proto_node.input]
        _check_output_size(b, node, ins)
        out_axes = expect = None
        if all(not isinstance(v, Var) for v in ins):
            outs = _evaluate_constant(node, ins)
        elif node.op_type in ("Shape", "Size"):
            full = (plan.full_shape(proto_node.input[0], ins[0]) if plan is not None
                    else ins[0].shape)
            outs = [_shape_of(node, full) if node.op_type == "Shape"
                    else np.array(math.prod(full), np.int64)]
        else:
            if plan is not None:
                node, ins, out_axes, expect = plan.specialise(node, ins)
            outs = registry.lookup(node)(b, node, ins)
            if plan is not None:
                plan.record(node, outs, out_axes, expect)
        for name, val in zip(proto_node.output, outs):
            if not name:
                continue
            if val is None:  # an output the converter does not produce
                if uses.get(name, 0):
                    raise node.unsupported(
                        f"its output {name!r} (output {list(proto_node.output).index(name)}) "
                        f"is used, and refbbp does not produce it")
                continue
            values[name] = val
            if isinstance(val, Var) and uses.get(name, 0) != 1:
                b.seal(val)
    result = values[output]
    if not isinstance(result, Var):
        raise ModelFormatError(f"output {output!r} does not depend on the input {vin.name!r}")
    if plan is not None:
        plan.check_output(output, todo[-1] if todo else None)
    return b, result


def _opset(opsets, proto_node):
    """The opset of a node's domain (``opsets``: domain -> version, "" for ai.onnx)."""
    domain = proto_node.domain or ""
    return opsets.get(domain if domain != "ai.onnx" else "", opsets.get("", 1))


def _prune(nodes, out):
    """Drop nodes the output does not depend on (the input stays); renumber the rest."""
    live = live_nodes(nodes, out)
    live[0] = True
    new_index = np.cumsum(live) - 1
    kept = []
    for k in np.flatnonzero(live):
        node = nodes[k]
        node.inputs = [int(new_index[i]) for i in node.inputs]
        kept.append(node)
    return kept, int(new_index[out])


#: Bytes per element of a tensor computed at load time: a constant (at most 8 bytes per
#: element), or an index op's table of element ids (its view's source, index and
#: constant, 24 bytes, and the ids the op is applied to, 8 per input and output element,
#: while it runs).
TABLE_BYTES = 40


def _check_output_size(b, node, ins):
    """Refuse, before running it, a node whose outputs the shapes of its inputs say are
    too large for what is left of the memory budget (an Expand, Tile or Pad of huge
    size, a ConstantOfShape of a huge shape, ...)."""
    n = validate.elements_bound(node, ins)
    if n is not None:
        b.reserve(node.name, n * TABLE_BYTES)


def _evaluate_constant(node, ins):
    """Evaluate a node whose inputs are all constant, with ONNX's reference evaluator."""
    feeds = {n: v for n, v in zip(node.proto.input, ins) if n}
    try:
        return registry.run_node(node.proto, node.opset, node.domain, feeds)
    except Exception as exc:
        raise UnsupportedOpError(node.op_type, node.domain, node.opset, node.name,
                                 f"could not evaluate it on constant inputs: {exc}") from None


def _shape_of(node, shape):
    shape = np.array(shape, np.int64)
    attrs = node.attrs
    start, end = attrs.get("start", 0), attrs.get("end", None)
    return shape[start:end]
