"""The model boundary: what ``refbbp.load`` checks before it converts anything.

One layer, called by the loader in this order:

1. :func:`check_load_arguments`: ``input_shape``, ``output``, ``max_bytes`` and
   ``storage`` have the types and ranges ``load`` documents.
2. :func:`read_model`: a model path must be a regular file (a FIFO, directory or device
   is refused without reading it) no larger than ``max_bytes``; its bytes must parse as
   an ONNX ``ModelProto``.
3. :func:`resolve_external_data`: every tensor stored outside the model file (in the
   graph, in node attributes, in subgraphs) is read from the model file's folder and
   only from there: a relative location without ``..`` that does not leave the folder
   through a symlink, a regular file, ``offset``/``length`` within it and a length that
   matches the tensor's dims and type. The data are read into the (private) proto, so
   nothing later (ONNX's reference evaluator included) ever opens a file. A
   ``ModelProto`` passed in memory has no folder: external data there is refused.
4. :func:`check_graph` and :func:`decode_constants`: refbbp's own structural checks
   (graph outputs declared, typed and produced) and the decoding of initializers, each
   with its dims, type, data length and finiteness checked and named in the error;
   sparse initializers are densified with checked indices (as onnxruntime does).
5. :func:`check_model`: ``onnx.checker.check_model(full_check=True)``, which includes
   ONNX's strict shape inference; its refusals become :class:`ModelFormatError`.

The loader then checks the data input's declared dims (:func:`check_input_dims`).

:func:`elements_bound` gives, from shapes and constant parameters only, an upper bound
on the number of elements of a node's outputs for the ops whose output can be much
larger than their inputs (Expand, Tile, Pad, ConstantOfShape, Range, broadcasting
elementwise ops, ...), so that the loader refuses them against the memory budget before
anything is allocated.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import os

import numpy as np
import onnx
import onnx.checker
from onnx import helper, numpy_helper

from .._checks import not_regular
from ..errors import InputShapeError, ModelFormatError

__all__ = ["check_load_arguments", "read_model", "resolve_external_data", "check_model",
           "check_graph", "decode_constants", "elements_bound", "INT64_MAX"]

INT64_MAX = 2**63 - 1

#: Bytes a serialized model may have for ``onnx.checker`` to check it in memory (the
#: protobuf limit); larger models are checked from their file.
_PROTOBUF_LIMIT = 2**31 - 1


# ----------------------------------------------------------------------- arguments
def check_load_arguments(input_shape, output, max_bytes, storage, storages):
    """Validate the arguments of ``load``.

    Returns
    -------
    input_shape : tuple of int or None
    max_bytes : int
    """
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, numbers.Real):
        raise TypeError(f"max_bytes must be a positive number of bytes, got "
                        f"{type(max_bytes).__name__} {max_bytes!r}")
    if not math.isfinite(float(max_bytes)) or max_bytes < 1:
        raise ValueError(f"max_bytes must be a finite number of bytes >= 1, got {max_bytes!r}")
    max_bytes = int(max_bytes)
    if not isinstance(storage, str) or storage not in storages:
        raise ValueError(f"storage must be one of {', '.join(map(repr, storages))}, "
                         f"got {storage!r}")
    if output is not None and not isinstance(output, str):
        raise TypeError(f"output must be the name of a graph output (str) or None, got "
                        f"{type(output).__name__} {output!r}")
    if input_shape is not None:
        try:
            dims = list(input_shape)
        except TypeError:
            raise TypeError(f"input_shape must be a sequence of positive ints, got "
                            f"{type(input_shape).__name__} {input_shape!r}") from None
        for d in dims:
            if isinstance(d, (bool, np.bool_)) or not isinstance(d, numbers.Integral):
                raise TypeError(f"input_shape must be a sequence of positive ints, got "
                                f"{input_shape!r} (holding {type(d).__name__} {d!r})")
        input_shape = tuple(int(d) for d in dims)
        if any(d < 1 for d in input_shape):
            raise InputShapeError(f"input_shape must hold positive ints, got {input_shape}")
        if math.prod(input_shape) > INT64_MAX:
            raise InputShapeError(f"input_shape={input_shape} has more elements than an "
                                  f"int64 counts")
    return input_shape, max_bytes


# ------------------------------------------------------------------------- files
def _open_regular(path, what, external=False):
    """Open ``path`` for reading (never blocking: a FIFO is refused, not waited on) and
    return ``(fd, size)``; refuse anything but a regular file. A missing model file is
    a FileNotFoundError, missing external data (``external``) a ModelFormatError."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        if external:
            raise ModelFormatError(f"{what}: no file at {path!r}") from None
        raise FileNotFoundError(f"no {what} at {path!r}") from None
    except IsADirectoryError:
        raise ModelFormatError(f"{what} {path!r} is a directory, not a file") from None
    except OSError as exc:
        raise ModelFormatError(f"cannot open {what} {path!r}: {exc.strerror or exc}") from None
    st = os.fstat(fd)
    kind = not_regular(st.st_mode)
    if kind is not None:
        os.close(fd)
        raise ModelFormatError(f"{what} {path!r} is {kind}: refbbp reads only regular files")
    return fd, st.st_size


def _read_exactly(fd, offset, length, what):
    chunks, done = [], 0
    os.lseek(fd, offset, os.SEEK_SET)
    while done < length:
        chunk = os.read(fd, min(length - done, 1 << 26))
        if not chunk:
            raise ModelFormatError(f"{what} ended after {offset + done:,} bytes; expected "
                                   f"{offset + length:,}")
        chunks.append(chunk)
        done += len(chunk)
    return b"".join(chunks)


def read_model(model, max_bytes):
    """The model as a ``ModelProto`` of its own, its folder and its source.

    Parameters
    ----------
    model : str, path-like or onnx.ModelProto
    max_bytes : int
        A model file larger than this is refused before it is read.

    Returns
    -------
    proto : onnx.ModelProto
        A proto refbbp may modify (a copy of one passed in memory).
    folder : str or None
        The folder external data is read from (``None`` for a proto in memory).
    source : dict or None
        ``{"path", "sha256", "bytes"}`` of a model file.
    """
    if isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
        return proto, None, None
    try:
        path = os.fspath(model)
    except TypeError:
        raise TypeError(f"model must be a path or an onnx.ModelProto, got "
                        f"{type(model).__name__}") from None
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    fd, size = _open_regular(path, "ONNX model")
    try:
        if size > max_bytes:
            raise ModelFormatError(
                f"ONNX model {path!r} has {size:,} bytes, more than max_bytes={max_bytes:,}: "
                f"refused before reading it (pass a larger max_bytes= to load it)")
        raw = _read_exactly(fd, 0, size, f"ONNX model {path!r}")
    finally:
        os.close(fd)
    try:
        proto = onnx.load_from_string(raw)
    except Exception as exc:  # protobuf raises several types (DecodeError, ...)
        raise ModelFormatError(f"{path!r} is not a readable ONNX model: {exc}") from None
    if not proto.graph.node:
        raise ModelFormatError(f"{path!r} holds no graph nodes: is it an ONNX model?")
    folder = os.path.dirname(os.path.abspath(path))
    return proto, folder, {"path": path, "sha256": hashlib.sha256(raw).hexdigest(),
                           "bytes": size}


# ------------------------------------------------------------------ external data
def _all_tensors(graph, where="graph"):
    """Every TensorProto of a graph with a description: initializers, sparse
    initializers' values and indices, node attributes, subgraphs (recursively)."""
    for t in graph.initializer:
        yield t, f"initializer {t.name!r}"
    for s in graph.sparse_initializer:
        yield s.values, f"sparse initializer {s.values.name!r} (values)"
        yield s.indices, f"sparse initializer {s.values.name!r} (indices)"
    for node in graph.node:
        label = f"node {node.name or node.op_type!r}"
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t, f"attribute {a.name!r} of {label}"
            for t in a.tensors:
                yield t, f"attribute {a.name!r} of {label}"
            if a.HasField("sparse_tensor"):
                yield a.sparse_tensor.values, f"attribute {a.name!r} of {label}"
                yield a.sparse_tensor.indices, f"attribute {a.name!r} of {label}"
            for s in a.sparse_tensors:
                yield s.values, f"attribute {a.name!r} of {label}"
                yield s.indices, f"attribute {a.name!r} of {label}"
            if a.HasField("g"):
                yield from _all_tensors(a.g, f"{label}'s subgraph")
            for g in a.graphs:
                yield from _all_tensors(g, f"{label}'s subgraph")


def _data_bytes(tensor, what):
    """The number of bytes the data of ``tensor`` takes, from its dims and type."""
    n = _element_count(tensor.dims, what)
    dtype = _dtype(tensor, what)
    if tensor.data_type in _FOUR_BIT:
        return (n + 1) // 2
    if tensor.data_type in _TWO_BIT:
        return (n + 3) // 4
    if dtype.kind == "O":
        raise ModelFormatError(f"{what} is a string tensor stored as external data: "
                               f"ONNX stores only fixed-size types outside the model")
    return n * dtype.itemsize


def _external_entries(tensor, what):
    info = {}
    for entry in tensor.external_data:
        if entry.key in info:
            raise ModelFormatError(f"{what}: external data key {entry.key!r} given twice")
        info[entry.key] = entry.value
    if not info.get("location"):
        raise ModelFormatError(f"{what} is stored as external data without a location")
    for key in ("offset", "length"):
        if key in info:
            v = info[key]
            if not v.isdigit():
                raise ModelFormatError(f"{what}: external data {key} {v!r} is not a "
                                       f"non-negative integer")
            info[key] = int(v)
    return info


def _resolve_location(folder, location, what):
    """The file ``location`` names, inside ``folder`` (refused otherwise)."""
    if "\0" in location:
        raise ModelFormatError(f"{what}: external data location {location!r} holds a NUL")
    parts = location.replace("\\", "/").split("/")
    if (os.path.isabs(location) or os.path.splitdrive(location)[0] or location[0] in "/\\"
            or ".." in parts):
        raise ModelFormatError(
            f"{what}: external data location {location!r} must be a relative path inside "
            f"the model's folder, without '..'")
    real_folder = os.path.realpath(folder)
    target = os.path.realpath(os.path.join(real_folder, location))
    if os.path.commonpath([real_folder, target]) != real_folder or target == real_folder:
        raise ModelFormatError(
            f"{what}: external data location {location!r} leads out of the model's folder "
            f"{folder!r} (through a symlink) to {target!r}")
    return target


def resolve_external_data(proto, folder, max_bytes, budget_used=0):
    """Read every external tensor of ``proto`` from ``folder`` into the proto.

    Parameters
    ----------
    proto : onnx.ModelProto
        Modified in place: external tensors get their ``raw_data``.
    folder : str or None
        The model file's folder; ``None`` (a proto in memory) refuses external data.
    max_bytes : int
        The model file and its external data together may not exceed it.
    budget_used : int
        Bytes already read (the model file).

    Returns
    -------
    bool
        Whether the model had external data.
    """
    external = [(t, what) for t, what in _all_tensors(proto.graph)
                if t.data_location == onnx.TensorProto.EXTERNAL]
    if not external:
        return False
    if folder is None:
        raise ModelFormatError(
            f"the ModelProto stores {external[0][1]} (and {len(external) - 1} more) as "
            f"external data, and a model passed in memory has no folder to read it from: "
            f"pass the model's file path to load(), or load the data into the proto first "
            f"(onnx.load_external_data_for_model(model, folder))")
    plan, total = [], budget_used
    for t, what in external:
        info = _external_entries(t, what)
        target = _resolve_location(folder, info["location"], what)
        expected = _data_bytes(t, what)
        offset = info.get("offset", 0)
        length = info.get("length")
        if length is not None and length != expected:
            raise ModelFormatError(
                f"{what}: external data length {length:,} bytes does not match its dims "
                f"{list(t.dims)} and type ({expected:,} bytes)")
        total += expected
        if total > max_bytes:
            raise ModelFormatError(
                f"the model's external data (up to {what}) take more than max_bytes="
                f"{max_bytes:,} bytes together with the model file: refused before "
                f"reading them (pass a larger max_bytes= to load it)")
        plan.append((t, what, info["location"], target, offset, expected))
    for t, what, location, target, offset, expected in plan:
        fd, size = _open_regular(target, f"external data file {location!r} of {what}",
                                 external=True)
        try:
            if offset + expected > size:
                raise ModelFormatError(
                    f"{what}: external data at offset {offset:,} with {expected:,} bytes "
                    f"lies past the end of {location!r} ({size:,} bytes)")
            raw = _read_exactly(fd, offset, expected, f"external data file {location!r}")
        finally:
            os.close(fd)
        del t.external_data[:]
        t.data_location = onnx.TensorProto.DEFAULT
        t.raw_data = raw
    return True


# ----------------------------------------------------------------------- checker
def check_model(proto, source):
    """``onnx.checker.check_model(full_check=True)``; failures as ModelFormatError.

    ``full_check`` adds ONNX's shape inference in strict mode: a model whose declared
    shapes or types contradict its ops is refused, as are graph outputs without a
    shape (ONNX requires one). The loader runs it once the network is converted:
    refbbp's own checks (every node against its schema, the graph, the initializers,
    each converter's attributes and shapes) come first, because their messages name
    the node, op and what was expected; a model the checker refuses is still never
    accepted. It runs after :func:`resolve_external_data`, on the proto with its data
    inlined, so it reads no file; a proto too large to serialize (over 2 GiB: external
    data) is checked from its file instead.
    """
    check_declared_shapes(proto.graph.output, "output")
    try:
        data = _without_large_initializers(proto).SerializeToString()
        onnx.checker.check_model(data if len(data) <= _PROTOBUF_LIMIT else source["path"],
                                 full_check=True)
    except Exception as exc:  # ValidationError, InferenceError, ...
        where = repr(source["path"]) if source else "the ModelProto"
        raise ModelFormatError(f"the ONNX checker refuses {where}: {str(exc).strip()}") \
            from None


#: Initializers above this many bytes reach onnx.checker as typed graph inputs.
CHECKER_INLINE_BYTES = 1 << 16


def _copy_fields(dst, src, skip):
    """Copy the set fields of protobuf message ``src`` into ``dst``, but ``skip``."""
    for field, value in src.ListFields():
        if field.name in skip:
            continue
        if isinstance(value, (str, bytes, int, float, bool)):
            setattr(dst, field.name, value)
        elif hasattr(value, "extend"):                     # a repeated field
            getattr(dst, field.name).extend(value)
        else:                                              # a message
            getattr(dst, field.name).CopyFrom(value)


def _without_large_initializers(proto):
    """A light copy of ``proto`` for onnx.checker: initializers over
    ``CHECKER_INLINE_BYTES`` become graph inputs of the same type and shape, so that
    neither a serialized copy of the weights nor the checker's own is held beside the
    network (a VGG's 0.5 GB of weights were held three times). Shape inference reads
    the values only of small constants (shapes, axes, pads), which stay; the large
    ones were decoded and checked by :func:`decode_constants`."""
    graph = proto.graph
    light = onnx.ModelProto()
    _copy_fields(light, proto, skip=("graph",))
    _copy_fields(light.graph, graph, skip=("initializer",))
    declared = {vi.name for vi in graph.input}
    for t in graph.initializer:
        # from the dims: ByteSize() serializes the tensor (a 0.4 GB copy for a VGG layer)
        if math.prod(t.dims) * 8 <= CHECKER_INLINE_BYTES:
            light.graph.initializer.append(t)
        elif t.name not in declared:
            light.graph.input.append(
                helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return light


# ------------------------------------------------------------------ graph structure
def _element_count(dims, what):
    dims = [int(d) for d in dims]
    bad = [d for d in dims if d < 0]
    if bad:
        raise ModelFormatError(f"{what} has negative dimensions in its dims {dims}")
    n = math.prod(dims)
    if n > INT64_MAX:
        raise ModelFormatError(f"{what} has dims {dims}: more elements than an int64 counts")
    return n


_FOUR_BIT = {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1")
             if hasattr(onnx.TensorProto, n)}
_TWO_BIT = {getattr(onnx.TensorProto, n) for n in ("INT2", "UINT2")
            if hasattr(onnx.TensorProto, n)}


def _dtype(tensor, what):
    name = onnx.TensorProto.DataType.Name(tensor.data_type) \
        if tensor.data_type in onnx.TensorProto.DataType.values() else None
    if name is None or tensor.data_type == onnx.TensorProto.UNDEFINED:
        raise ModelFormatError(f"{what} has data type {tensor.data_type} "
                               f"({name or 'unknown'}): not a tensor type ONNX defines")
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
    except Exception:
        raise ModelFormatError(f"{what} has data type {name}, which refbbp cannot "
                               f"decode") from None


_TYPED_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data",
                 "string_data")


def _decode_tensor(tensor, what):
    """``numpy_helper.to_array`` after checking dims, type and data length."""
    n = _element_count(tensor.dims, what)
    _dtype(tensor, what)
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        raise ModelFormatError(f"{what} is stored as external data that was not resolved")
    if tensor.HasField("raw_data"):
        expected = _data_bytes(tensor, what)
        if len(tensor.raw_data) != expected:
            raise ModelFormatError(
                f"{what} has {len(tensor.raw_data):,} bytes of data; its dims "
                f"{list(tensor.dims)} and type {onnx.TensorProto.DataType.Name(tensor.data_type)}"
                f" need {expected:,}")
    elif tensor.data_type not in _FOUR_BIT | _TWO_BIT:  # packed: checked by size below
        counts = {f: len(getattr(tensor, f)) for f in _TYPED_FIELDS if len(getattr(tensor, f))}
        if len(counts) > 1:
            raise ModelFormatError(f"{what} holds data in several fields: {sorted(counts)}")
        have = next(iter(counts.values()), 0)
        complex_ = tensor.data_type in (onnx.TensorProto.COMPLEX64,
                                        onnx.TensorProto.COMPLEX128)
        need = 2 * n if complex_ else n
        if have != need:
            raise ModelFormatError(
                f"{what} has {have:,} data entries; its dims {list(tensor.dims)} need "
                f"{need:,}")
    try:
        arr = numpy_helper.to_array(tensor)
    except Exception as exc:
        raise ModelFormatError(f"{what} cannot be decoded: {exc}") from None
    if arr.size != n:
        raise ModelFormatError(f"{what} decodes to {arr.size:,} elements; its dims "
                               f"{list(tensor.dims)} need {n:,}")
    return arr


def _decode_sparse(sparse, what, max_bytes):
    """The dense array of a SparseTensorProto, its indices checked (ONNX: ``indices``
    holds either the linear positions [NNZ] or the coordinates [NNZ, rank] of
    ``values`` [NNZ] in a tensor of shape ``dims``)."""
    shape = [int(d) for d in sparse.dims]
    n = _element_count(shape, what)
    dtype = _dtype(sparse.values, f"{what} (values)")
    if dtype.kind == "O":
        raise ModelFormatError(f"{what}: string sparse tensors are not supported")
    if n * dtype.itemsize > max_bytes:
        raise ModelFormatError(
            f"{what} has dense shape {shape} ({n * dtype.itemsize:,} bytes), more than "
            f"max_bytes={max_bytes:,}: refused before densifying it")
    values = _decode_tensor(sparse.values, f"{what} (values)")
    if values.ndim != 1:
        raise ModelFormatError(f"{what}: values must be 1-D [NNZ], got dims "
                               f"{list(sparse.values.dims)}")
    nnz = values.size
    if sparse.indices.data_type != onnx.TensorProto.INT64:
        raise ModelFormatError(f"{what}: indices must be int64, got "
                               f"{onnx.TensorProto.DataType.Name(sparse.indices.data_type)}")
    indices = _decode_tensor(sparse.indices, f"{what} (indices)")
    if indices.shape == (nnz,):
        flat = indices
    elif indices.shape == (nnz, len(shape)):
        bad = (indices < 0) | (indices >= np.asarray(shape, np.int64))
        if bad.any():
            k = int(np.argwhere(bad)[0][0])
            raise ModelFormatError(f"{what}: index {indices[k].tolist()} lies outside its "
                                   f"shape {shape}")
        flat = (np.ravel_multi_index(tuple(indices.T), shape) if nnz
                else np.zeros(0, np.int64))
    else:
        raise ModelFormatError(
            f"{what}: indices must have dims [NNZ] = [{nnz}] or [NNZ, rank] = "
            f"[{nnz}, {len(shape)}], got {list(indices.shape)}")
    flat = np.asarray(flat, np.int64)
    bad = (flat < 0) | (flat >= n)
    if bad.any():
        raise ModelFormatError(f"{what}: linear index {int(flat[bad][0])} lies outside its "
                               f"{n} elements (shape {shape})")
    if np.unique(flat).size != nnz:
        raise ModelFormatError(f"{what}: an element is given twice in its indices")
    dense = np.zeros(n, values.dtype)
    dense[flat] = values
    return dense.reshape(shape)


def _consumers(graph):
    uses = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name:
                uses.setdefault(name, []).append((node.op_type, i))
    return uses


def _check_finite(name, arr, what, uses):
    """NaN or infinite values in a float constant: refused, except ±inf bounds of a
    Clip (which mean "no bound")."""
    if arr.dtype.kind not in "fc" or arr.size == 0:
        return
    finite = np.isfinite(arr)
    if finite.all():
        return
    has_nan = bool(np.isnan(arr).any())
    if not has_nan and uses.get(name) and all(op == "Clip" and i in (1, 2)
                                              for op, i in uses[name]):
        return
    k = int(np.flatnonzero(~finite.ravel())[0])
    raise ModelFormatError(
        f"{what} holds {'NaN' if has_nan else 'infinite'} values (first at flat index "
        f"{k}: {arr.ravel()[k]}): refbbp explains models with finite weights")


def decode_constants(graph, max_bytes):
    """The initializers and sparse initializers of ``graph`` as arrays, by name; the
    sparse ones are replaced in ``graph`` by their dense form.

    Every one is checked: a name, no name twice, dims non-negative and counting at most
    int64 elements, a known type, data of exactly the length its dims need, finite
    values (±inf only as a Clip bound), and for sparse ones valid, distinct indices.
    """
    uses = _consumers(graph)
    consts = {}
    for t in graph.initializer:
        what = f"initializer {t.name!r}"
        if not t.name:
            raise ModelFormatError("an initializer has no name")
        if t.name in consts:
            raise ModelFormatError(f"{what} is given twice (names must be unique)")
        consts[t.name] = arr = _decode_tensor(t, what)
        _check_finite(t.name, arr, what, uses)
    for s in graph.sparse_initializer:
        name = s.values.name
        what = f"sparse initializer {name!r}"
        if not name:
            raise ModelFormatError("a sparse initializer has no name (values.name)")
        if name in consts:
            raise ModelFormatError(f"{what} is given twice (names must be unique)")
        consts[name] = arr = _decode_sparse(s, what, max_bytes)
        _check_finite(name, arr, what, uses)
    if graph.sparse_initializer:
        # As onnxruntime does: sparse initializers become dense ones (ONNX's shape
        # inference, run by the checker, does not take sparse tensors as op inputs).
        graph.initializer.extend(numpy_helper.from_array(consts[s.values.name], s.values.name)
                                 for s in graph.sparse_initializer)
        del graph.sparse_initializer[:]
    for node in graph.node:
        if node.op_type == "Constant" and (node.domain or "") in ("", "ai.onnx"):
            for a in node.attribute:
                if a.name == "value" and a.HasField("t") and node.output:
                    what = f"the value of Constant node {node.name or node.output[0]!r}"
                    _check_finite(node.output[0], _decode_tensor(a.t, what), what, uses)
    return consts


def check_opsets(proto):
    """The default domain's opset is one this installation of ONNX defines (1 to
    ``onnx.defs.onnx_opset_version()``): a newer one names ops refbbp cannot know the
    meaning of (onnxruntime refuses it too)."""
    newest = onnx.defs.onnx_opset_version()
    for o in proto.opset_import:
        if o.domain in ("", "ai.onnx") and not 1 <= o.version <= newest:
            raise ModelFormatError(
                f"the model imports opset {o.version} of the default ONNX domain; this "
                f"installation of onnx defines opsets 1 to {newest} (a newer onnx package "
                f"may know it)")


def check_graph(graph):
    """Outputs that exist and are produced, named inputs and outputs, inputs with a
    declared type and shape (as ONNX requires); returns the graph output names. (The
    outputs' shapes are checked with the full check, :func:`check_declared_shapes`.)"""
    outputs = [o.name for o in graph.output]
    if not outputs:
        raise ModelFormatError("the ONNX graph declares no outputs: nothing to explain")
    for kind, infos in (("input", graph.input), ("output", graph.output)):
        for vi in infos:
            if not vi.name:
                raise ModelFormatError(f"a graph {kind} has no name")
    check_declared_shapes(graph.input, "input")
    available = ({n for node in graph.node for n in node.output if n}
                 | {i.name for i in graph.input} | {t.name for t in graph.initializer}
                 | {s.values.name for s in graph.sparse_initializer})
    for name in outputs:
        if name not in available:
            raise ModelFormatError(f"graph output {name!r} is produced by no node, "
                                   f"initializer or graph input")
    return outputs


def check_declared_shapes(infos, kind):
    """Every graph ``kind`` ("input" or "output") in ``infos`` declares a shape."""
    for vi in infos:
        if vi.type.HasField("tensor_type") and not vi.type.tensor_type.HasField("shape"):
            raise ModelFormatError(
                f"graph {kind} {vi.name!r} declares no shape: ONNX requires one on "
                f"every graph input and output (its dimensions may be symbolic)")


def check_input_dims(vi, dims):
    """The data input's declared dims: none negative or zero (no elements: onnxruntime
    refuses to feed it), their product within int64."""
    fixed = [d for d in dims if isinstance(d, int)]
    if any(d < 0 for d in fixed):
        raise ModelFormatError(f"graph input {vi.name!r} has a negative dimension in its "
                               f"shape {dims}")
    if any(d == 0 for d in fixed):
        raise ModelFormatError(f"graph input {vi.name!r} has a zero dimension in its shape "
                               f"{dims}: it holds no elements")
    if math.prod(fixed) > INT64_MAX:
        raise ModelFormatError(f"graph input {vi.name!r} has shape {dims}: more elements "
                               f"than an int64 counts")


# --------------------------------------------------------------------------- sizes
_BROADCASTING = {
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Sum", "Mean", "Where",
    "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "And", "Or", "Xor",
    "BitShift", "PRelu", "BitwiseAnd", "BitwiseOr", "BitwiseXor",
}


def _shape(v):
    return tuple(int(s) for s in (v.shape if hasattr(v, "shape") else np.shape(v)))


def _ints(v):
    return [int(x) for x in np.asarray(v).ravel()]


def elements_bound(node, ins):
    """An upper bound on the elements of the outputs of ``node``, from the shapes of
    its inputs and the values of its constant parameters, for the ops whose output can
    be much larger than their inputs; ``None`` for the others (their outputs are at
    most about as large as their inputs) or when the parameters are malformed (the op
    itself then reports it).

    Parameters
    ----------
    node : OnnxNode
    ins : list
        Inputs: arrays, views with a ``shape`` (not read) or ``None``.
    """
    op, attrs = node.op_type, node.attrs
    shapes = [None if v is None else _shape(v) for v in ins]

    def const(i):
        v = ins[i] if i < len(ins) else None
        return None if v is None or hasattr(v, "src") else v

    try:
        if op in _BROADCASTING or op == "Expand":
            given = [s for s in shapes if s is not None]
            if op == "Expand" and const(1) is not None:
                target = tuple(_ints(const(1)))
                if any(d < 0 for d in target):
                    return None
                given = [given[0], target]
            return _broadcast_size(given)
        if op in _WINDOWED and shapes[0] is not None and len(shapes[0]) >= 3:
            return _windowed_bound(op, attrs, shapes)
        if op == "Tile" and const(1) is not None:
            reps = _ints(const(1))
            if len(reps) != len(shapes[0]) or any(r < 0 for r in reps):
                return None
            return math.prod(shapes[0]) * math.prod(reps)
        if op == "Pad":
            pads = (attrs.get("pads") if node.opset < 11 else
                    (None if const(1) is None else _ints(const(1))))
            if pads is None:
                return None
            pads = [max(int(p), 0) for p in pads]
            rank = len(shapes[0])
            axes = (range(rank) if node.opset < 18 or const(3) is None
                    else [a % rank for a in _ints(const(3))] if rank else [])
            axes = list(axes)
            if len(pads) != 2 * len(axes):
                return None
            out = list(shapes[0])
            for k, ax in enumerate(axes):
                out[ax] += pads[k] + pads[k + len(axes)]
            return math.prod(out)
        if op == "ConstantOfShape" and const(0) is not None:
            return math.prod(max(d, 0) for d in _ints(const(0)))
        if op == "Range" and all(const(i) is not None for i in range(3)):
            start, limit, delta = (float(np.asarray(const(i)).ravel()[0]) for i in range(3))
            if delta == 0 or not all(map(math.isfinite, (start, limit, delta))):
                return None
            return max(math.ceil((limit - start) / delta), 0)
        if op in ("MatMul", "Gemm") and all(s is not None for s in shapes[:2]):
            a, b = shapes[0], shapes[1]
            if op == "Gemm":
                m = a[1] if attrs.get("transA", 0) and len(a) > 1 else a[0]
                n = b[0] if attrs.get("transB", 0) else b[-1]
                return m * n
            if len(a) < 1 or len(b) < 1:
                return None
            batch = _broadcast_size([a[:-2], b[:-2]]) if len(a) > 1 and len(b) > 1 else 1
            return batch * (a[-2] if len(a) > 1 else 1) * (b[-1] if len(b) > 1 else 1)
        if op == "Gather" and all(s is not None for s in shapes[:2]):
            data, idx = shapes[0], shapes[1]
            axis = int(attrs.get("axis", 0)) % max(len(data), 1)
            rest = math.prod(data[:axis]) * math.prod(data[axis + 1:])
            return rest * math.prod(idx)
        if op == "OneHot" and const(1) is not None and shapes[0] is not None:
            return math.prod(shapes[0]) * max(int(np.asarray(const(1)).ravel()[0]), 0)
        if op in ("Resize", "Upsample"):
            return _resize_bound(node, ins, shapes, const)
    except (ValueError, TypeError, IndexError, OverflowError, ZeroDivisionError):
        return None
    return None


_WINDOWED = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool"}


def _windowed_bound(op, attrs, shapes):
    """A bound on a convolution's or pooling's output elements from explicit pads (a
    huge pad makes a huge output: its tables would be built before any budget check).
    Along an axis of length n with pads b, e: at most n + b + e + 1 outputs (strides,
    kernels and dilations are at least 1; +1 for ceil_mode); a transposed convolution
    gives at most stride * n + (kernel - 1) * dilation + 1 + output_padding."""
    x = shapes[0]
    n_sp = len(x) - 2
    pads = [int(p) for p in attrs.get("pads") or [0] * (2 * n_sp)]
    if len(pads) != 2 * n_sp or any(p < 0 for p in pads):
        return None
    w = shapes[1] if len(shapes) > 1 else None
    if op == "ConvTranspose":
        if w is None or len(w) != len(x):
            return None
        strides = [int(v) for v in attrs.get("strides") or [1] * n_sp]
        dil = [int(v) for v in attrs.get("dilations") or [1] * n_sp]
        extra = [int(v) for v in attrs.get("output_padding") or [0] * n_sp]
        if not len(strides) == len(dil) == len(extra) == n_sp:
            return None
        channels = w[1] * int(attrs.get("group", 1))
        spatial = [s * n + (k - 1) * d + 1 + e
                   for s, n, k, d, e in zip(strides, x[2:], w[2:], dil, extra)]
    else:
        channels = w[0] if op == "Conv" and w is not None else x[1]
        spatial = [n + pads[a] + pads[n_sp + a] + 1 for a, n in enumerate(x[2:])]
    return x[0] * channels * math.prod(spatial)


def _broadcast_size(shapes):
    rank = max((len(s) for s in shapes), default=0)
    out = [1] * rank
    for s in shapes:
        for k, d in enumerate(s, start=rank - len(s)):
            out[k] = max(out[k], d) if d != 0 and out[k] != 0 else 0
    return math.prod(out)


def _resize_bound(node, ins, shapes, const):
    x = shapes[0]
    if node.op_type == "Upsample" and node.opset < 9:
        scales = node.attrs.get("scales")
    else:
        k = 1 if node.op_type == "Upsample" else 2
        scales = None if const(k) is None or np.size(const(k)) == 0 else _ints_or_floats(const(k))
        if node.op_type == "Resize" and scales is None and const(3) is not None \
                and np.size(const(3)):
            return math.prod(max(int(s), 0) for s in _ints(const(3)))
    if scales is None or len(scales) != len(x):
        return None
    return math.prod(max(math.floor(d * float(s)), 0) for d, s in zip(x, scales))


def _ints_or_floats(v):
    return [float(x) for x in np.asarray(v).ravel()]
