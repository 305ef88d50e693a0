"""Converters for index ops: relabellings of elements that leave no node behind.

One mechanism serves them all: the op is applied, by ONNX's own reference evaluator,
to an array of element ids in place of its data input(s); the ids it returns say which
input element each output element is. Padding gets the id -1 and becomes a constant
element of the view (SPEC section 1: constant-mode padding adds bias-free zero rows,
or a constant when the pad value is not 0; edge and reflect modes copy elements).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .builder import Var
from .registry import ALL, converter, run_node

__all__ = ["apply_index_op", "transpose"]

PAD_ID = -1.0
#: Casts refbbp follows, as identities: float64 holds every value of both exactly.
#: Casts to any other type (float16, bfloat16, float8, integers, bool) round the values:
#: piecewise constant, not piecewise linear.
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE}
_NUMBER_TYPES = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.BOOL} | {
    getattr(onnx.TensorProto, t) for t in
    ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "INT4",
     "UINT4", "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ",
     "FLOAT4E2M1") if hasattr(onnx.TensorProto, t)}


def transpose(var, perm):
    """``var`` with its axes permuted."""
    ids = np.arange(var.size).reshape(var.shape).transpose(perm)
    return var.select(ids, ids.shape)


def apply_index_op(node, ins, data_inputs=(0,), proto=None, fill=0.0):
    """Run the ONNX node on element ids in place of its data inputs.

    Parameters
    ----------
    node : OnnxNode
    ins : list
        The node's inputs: ``Var``, constant arrays or ``None``.
    data_inputs : tuple of int
        Positions of the inputs that carry elements (the rest are parameters, which
        must be constant).
    proto : onnx.NodeProto, optional
        A modified copy of the node to run (e.g. with the pad value set to -1).
    fill : float
        Value of the elements that come out as -1 (padding).
    """
    proto = node.proto if proto is None else proto
    for i, v in enumerate(ins):
        if i not in data_inputs and isinstance(v, Var):
            raise node.unsupported(f"input {i} ({proto.input[i]!r}) must be constant, "
                                   f"but it depends on the input")
    table = Var.concat([ins[i] for i in data_inputs])
    feeds, offset = {}, 0
    for i, name in enumerate(proto.input):
        if not name:
            continue
        v = ins[i]
        if i in data_inputs:
            size = int(np.prod(np.shape(v) if not isinstance(v, Var) else v.shape))
            shape = v.shape if isinstance(v, Var) else np.shape(v)
            feeds[name] = (offset + np.arange(size, dtype=np.float64)).reshape(shape)
            offset += size
        else:
            feeds[name] = np.asarray(v)
    try:
        outs = run_node(proto, node.opset, node.domain, feeds)
    except Exception as exc:
        raise node.unsupported(f"could not apply it to the tensor's shape: {exc}") from None
    result = []
    for o in outs:
        o = np.asarray(o)
        ids = np.rint(o).astype(np.int64)
        result.append(table.select(ids, o.shape, fill))
    return result


def _register_index_op(op_type, first, data_inputs=(0,), check=None):
    """Register an index op run on element ids; ``check(node, ins)``, if given, checks
    what ONNX's reference evaluator would accept but the definition (and onnxruntime)
    does not."""
    @converter(op_type, first=first, attrs=ALL)
    def convert(b, node, ins):
        if check is not None:
            check(node, ins)
        return apply_index_op(node, ins, data_inputs)

    convert.__name__ = f"convert_{op_type.lower()}"
    convert.__qualname__ = convert.__name__
    return convert


def _rank(node, x):
    return len(x.shape) if isinstance(x, Var) else np.ndim(x)


def check_axis(node, name, axis, rank, *, end=False):
    """``axis`` lies in ``[-rank, rank - 1]`` (``end``: up to ``rank``). Negative axes are
    accepted at every opset, as onnxruntime does (ONNX defines them from opset 11)."""
    low, high = -rank, (rank if end else rank - 1)
    if not low <= axis <= high:
        raise node.malformed(f"{name} is {axis}; expected an axis in [{low}, {high}] for an "
                             f"input of rank {rank}")
    return axis


def _check_flatten(node, ins):
    check_axis(node, "attribute 'axis'", node.int_attr("axis", 1), _rank(node, ins[0]),
               end=True)


def _check_transpose(node, ins):
    rank = _rank(node, ins[0])
    perm = node.ints_attr("perm")
    if perm is not None and sorted(perm) != list(range(rank)):
        raise node.malformed(f"attribute 'perm' is {perm}; expected a permutation of "
                             f"0..{rank - 1}")


def _check_gather(node, ins):
    rank = _rank(node, ins[0])
    axis = check_axis(node, "attribute 'axis'", node.int_attr("axis", 0), rank)
    idx = ins[1]
    if not isinstance(idx, Var):
        idx = np.asarray(idx)
        n = (ins[0].shape if isinstance(ins[0], Var) else np.shape(ins[0]))[axis]
        if idx.dtype.kind not in "iu" or np.any((idx < -n) | (idx >= n)):
            raise node.malformed(f"indices {idx.ravel()[:8].tolist()}... out of range or not "
                                 f"integers; expected ints in [{-n}, {n - 1}] (axis {axis} "
                                 f"has {n} elements)")


def _check_split(node, ins):
    """The axis in range; explicit split sizes (attribute before opset 13, input from
    13) non-negative, one per output, summing to the axis' length."""
    x = ins[0]
    shape = x.shape if isinstance(x, Var) else np.shape(x)
    axis = check_axis(node, "attribute 'axis'", node.int_attr("axis", 0), len(shape))
    if node.opset < 13:
        split = node.ints_attr("split")
    else:
        split = ins[1] if len(ins) > 1 else None
        if isinstance(split, Var):
            raise node.unsupported("input 1 (split) must be constant, but it depends on the "
                                   "input")
        if split is not None:
            split = np.asarray(split)
            if split.ndim != 1 or split.dtype.kind not in "iu":
                raise node.malformed(f"input 1 (split) has shape {split.shape} and type "
                                     f"{split.dtype}; expected a 1-D tensor of ints")
            split = [int(v) for v in split]
    if split is None:
        return
    n_out = len(node.proto.output)
    if len(split) != n_out or min(split, default=0) < 0 or sum(split) != shape[axis]:
        raise node.malformed(f"split {split} for {n_out} outputs along axis {axis} of length "
                             f"{shape[axis]}; expected {n_out} sizes >= 0 summing to "
                             f"{shape[axis]}")


def _check_blocksize(node, ins):
    node.int_attr("blocksize", min=1)
    if node.op_type == "DepthToSpace":
        node.str_attr("mode", "DCR", ("DCR", "CRD"))


def _check_reshape(node, ins):
    """The target shape: a constant 1-D int tensor, every value ``>= -1``, at most one
    ``-1``, a ``0`` copying an existing axis (``allowzero=0``) or meaning 0 (then no
    ``-1`` beside it)."""
    shape = ins[1]
    if isinstance(shape, Var):
        raise node.unsupported("input 1 (shape) must be constant, but it depends on the input")
    shape = np.asarray(shape)
    if shape.ndim != 1 or shape.dtype.kind not in "iu":
        raise node.malformed(f"input 1 (shape) has shape {shape.shape} and type {shape.dtype}; "
                             f"expected a 1-D tensor of ints")
    values = [int(v) for v in shape]
    bad = [v for v in values if v < -1]
    if bad:
        raise node.malformed(f"shape {values} holds {bad[0]}; expected dimensions >= -1 "
                             f"(-1: inferred, 0: copied from the input)")
    if values.count(-1) > 1:
        raise node.malformed(f"shape {values} has more than one -1; at most one dimension "
                             f"is inferred")
    allowzero = node.flag_attr("allowzero")
    if allowzero and 0 in values and -1 in values:
        raise node.malformed(f"shape {values} has both 0 and -1 with allowzero=1")
    rank = _rank(node, ins[0])
    if not allowzero and any(v == 0 and i >= rank for i, v in enumerate(values)):
        raise node.malformed(f"shape {values} copies (0) an axis past the input's rank "
                             f"{rank}")


# Explicit list of pure relabellings and the opset their supported definitions start at.
convert_identity = _register_index_op("Identity", 1)
convert_flatten = _register_index_op("Flatten", 1, check=_check_flatten)
convert_reshape = _register_index_op("Reshape", 5, check=_check_reshape)
convert_transpose = _register_index_op("Transpose", 1, check=_check_transpose)
convert_squeeze = _register_index_op("Squeeze", 1)
convert_unsqueeze = _register_index_op("Unsqueeze", 1)
convert_slice = _register_index_op("Slice", 1)
convert_gather = _register_index_op("Gather", 1, check=_check_gather)
convert_expand = _register_index_op("Expand", 8)
convert_tile = _register_index_op("Tile", 6)
convert_split = _register_index_op("Split", 2, check=_check_split)
convert_depth_to_space = _register_index_op("DepthToSpace", 1, check=_check_blocksize)
convert_space_to_depth = _register_index_op("SpaceToDepth", 1, check=_check_blocksize)


@converter("Concat", first=4, attrs=("axis",))
def convert_concat(b, node, ins):
    check_axis(node, "attribute 'axis'", node.int_attr("axis"), _rank(node, ins[0]))
    return apply_index_op(node, ins, tuple(range(len(ins))))


@converter("Where", first=9, attrs=ALL)
def convert_where(b, node, ins):
    """``Where(cond, X, Y)`` with a constant condition picks each element from X or Y:
    a relabelling of their elements (either may be constant)."""
    if isinstance(ins[0], Var):
        raise node.not_piecewise_linear(
            "the condition depends on the input: the selection jumps where it flips")
    return apply_index_op(node, ins, (1, 2))


@converter("Pad", first=2, attrs=("mode", "pads", "value"))
def convert_pad(b, node, ins):
    """Pad, run on element ids with the pad value replaced by the id -1 (the padding
    becomes constant elements of the view). Negative pads remove elements: the input is
    cropped first, as onnxruntime does, then padded by the non-negative rest."""
    x = ins[0]
    ins = list(ins) + [None] * (4 - len(ins))
    if not isinstance(x, Var):
        raise node.unsupported("expected an input-dependent tensor as input 0")
    if any(isinstance(v, Var) for v in ins[1:]):
        raise node.unsupported("input-dependent pads, pad value or axes")
    node.str_attr("mode", "constant", ("constant", "reflect", "edge")
                  + (("wrap",) if node.opset >= 19 else ()))
    rank = len(x.shape)
    if node.opset < 11:
        pads = np.asarray(node.ints_attr("pads"), np.int64)
        fill, axes = node.float_attr("value", 0.0, finite=False), None
    else:
        pads = np.asarray(ins[1])
        if pads.ndim != 1 or pads.dtype.kind not in "iu":
            raise node.malformed(f"input 1 (pads) has shape {pads.shape} and type "
                                 f"{pads.dtype}; expected a 1-D tensor of ints")
        pads = pads.astype(np.int64)
        if ins[2] is not None and np.size(ins[2]) > 1:
            raise node.malformed(f"input 2 (constant_value) has shape {np.shape(ins[2])}; "
                                 f"expected a scalar")
        fill = 0.0 if ins[2] is None or np.size(ins[2]) == 0 else \
            float(np.asarray(ins[2]).ravel()[0])
        axes = ins[3]
    if axes is None:
        axes = np.arange(rank)
    else:
        axes = np.asarray(axes).ravel()
        if axes.dtype.kind not in "iu" or np.any((axes < -rank) | (axes >= rank)):
            raise node.malformed(f"input 3 (axes) is {axes.tolist()}; expected int axes in "
                                 f"[{-rank}, {rank - 1}]")
        axes = axes.astype(np.int64) % rank
    if pads.size != 2 * axes.size:
        raise node.malformed(f"{pads.size} pads for {axes.size} axes; expected "
                             f"{2 * axes.size} (a begin and an end per axis)")
    if np.any(pads < 0):
        crop = [slice(None)] * rank
        for k, ax in enumerate(axes):
            cut = max(-pads[k], 0) + max(-pads[k + axes.size], 0)
            if cut >= x.shape[ax]:
                raise node.malformed(
                    f"pads {pads.tolist()} crop axis {ax} (length {x.shape[ax]}) by {cut} "
                    f"elements: nothing would be left (onnxruntime refuses it too)")
            crop[ax] = slice(max(-pads[k], 0), x.shape[ax] - max(-pads[k + axes.size], 0))
        ids = np.arange(x.size).reshape(x.shape)[tuple(crop)]
        x = x.select(ids, ids.shape)
        pads = np.maximum(pads, 0)

    proto = onnx.NodeProto()
    proto.CopyFrom(node.proto)
    if node.opset < 11:
        kept = [a for a in proto.attribute if a.name not in ("pads", "value")]
        del proto.attribute[:]
        proto.attribute.extend(kept + [helper.make_attribute("pads", [int(p) for p in pads]),
                                       helper.make_attribute("value", PAD_ID)])
        return apply_index_op(node, [x], (0,), proto, fill)
    while len(proto.input) < 3:
        proto.input.append("")
    proto.input[1], proto.input[2] = "__refbbp_pads", "__refbbp_pad_value"
    new_ins = [x, pads, np.array(PAD_ID)] + ins[3:len(proto.input)]
    return apply_index_op(node, new_ins, (0,), proto, fill)


@converter("Dropout", first=7, attrs=("ratio", "seed"))
def convert_dropout(b, node, ins):
    """Dropout at inference: the identity (ratio and seed only matter in training)."""
    for i, what in ((1, "ratio"), (2, "training_mode")):
        if len(ins) > i and ins[i] is not None:
            if isinstance(ins[i], Var):
                raise node.unsupported(f"input {i} ({what}) depends on the input")
            if np.size(ins[i]) != 1:
                raise node.malformed(f"input {i} ({what}) has shape {np.shape(ins[i])}; "
                                     f"expected a scalar")
    if len(ins) > 2 and ins[2] is not None and bool(np.asarray(ins[2]).ravel()[0]):
        raise node.unsupported("training_mode=True (random) is not an inference op")
    if not isinstance(ins[0], Var):
        raise node.unsupported("expected an input-dependent tensor as input 0")
    return [ins[0], np.ones(ins[0].shape, bool)]


def _type_name(node, to):
    """The name of ONNX data type ``to``, or a malformed-model error."""
    if to not in onnx.TensorProto.DataType.values():
        raise node.malformed(f"attribute 'to' is {to}; expected an ONNX data type "
                             f"(onnx.TensorProto.DataType)")
    return onnx.TensorProto.DataType.Name(to)


def _refuse_cast(node, kind, to, rounds):
    """The error for a cast to the type named ``to``: rounding to a number type
    (``rounds``) is piecewise constant (not piecewise linear); other types are
    unsupported."""
    why = (f"{kind} to {to}: only casts to FLOAT and DOUBLE are followed (as identities; "
           f"float64 holds their values exactly)")
    if rounds:
        return node.not_piecewise_linear(
            why + f"; a cast to {to} rounds its input (piecewise constant, with jumps)")
    return node.unsupported(why)


@converter("Cast", first=6, attrs=("to", "saturate"))
def convert_cast(b, node, ins):
    to = node.int_attr("to")
    name = _type_name(node, to)
    if to not in FLOAT_TYPES:
        raise _refuse_cast(node, "Cast", name, to in _NUMBER_TYPES)
    return [ins[0]]


@converter("CastLike", first=15, attrs=("saturate",))
def convert_cast_like(b, node, ins):
    """``CastLike(x, like)``: ``x`` cast to the element type of ``like``.

    refbbp follows only float tensors, so an input-dependent ``like`` has a float type
    and only that type is read, never its values: a constant ``x`` becomes a float
    constant (float64, which holds any float32 value exactly), an input-dependent ``x``
    is unchanged. Exporters write ``CastLike(0, activation)`` to make a zero of the
    activation's type.
    """
    x, like = ins[0], ins[1]
    if not isinstance(like, Var):
        kind = np.asarray(like).dtype
        if kind not in (np.float32, np.float64):
            raise _refuse_cast(node, "CastLike", str(kind), kind.kind in "biuf")
        return [x]
    if isinstance(x, Var):
        return [x]
    return [np.asarray(x).astype(np.float64)]
