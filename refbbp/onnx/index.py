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
from .registry import converter, run_node

__all__ = ["apply_index_op", "transpose"]

PAD_ID = -1.0
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
               onnx.TensorProto.BFLOAT16}


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


def _register_index_op(op_type, first, data_inputs=(0,)):
    @converter(op_type, first=first)
    def convert(b, node, ins):
        return apply_index_op(node, ins, data_inputs)

    convert.__name__ = f"convert_{op_type.lower()}"
    convert.__qualname__ = convert.__name__
    return convert


# Explicit list of pure relabellings and the opset their supported definitions start at.
convert_identity = _register_index_op("Identity", 1)
convert_flatten = _register_index_op("Flatten", 1)
convert_reshape = _register_index_op("Reshape", 5)
convert_transpose = _register_index_op("Transpose", 1)
convert_squeeze = _register_index_op("Squeeze", 1)
convert_unsqueeze = _register_index_op("Unsqueeze", 1)
convert_slice = _register_index_op("Slice", 1)
convert_gather = _register_index_op("Gather", 1)
convert_expand = _register_index_op("Expand", 8)
convert_tile = _register_index_op("Tile", 6)
convert_split = _register_index_op("Split", 2)
convert_depth_to_space = _register_index_op("DepthToSpace", 1)
convert_space_to_depth = _register_index_op("SpaceToDepth", 1)


@converter("Concat", first=4)
def convert_concat(b, node, ins):
    return apply_index_op(node, ins, tuple(range(len(ins))))


@converter("Where", first=9)
def convert_where(b, node, ins):
    """``Where(cond, X, Y)`` with a constant condition picks each element from X or Y:
    a relabelling of their elements (either may be constant)."""
    if isinstance(ins[0], Var):
        raise node.not_piecewise_linear(
            "the condition depends on the input: the selection jumps where it flips")
    return apply_index_op(node, ins, (1, 2))


@converter("Pad", first=2)
def convert_pad(b, node, ins):
    """Pad, run on element ids with the pad value replaced by the id -1 (the padding
    becomes constant elements of the view). Negative pads remove elements: the input is
    cropped first, as onnxruntime does, then padded by the non-negative rest."""
    x = ins[0]
    ins = list(ins) + [None] * (4 - len(ins))
    if any(isinstance(v, Var) for v in ins[1:]):
        raise node.unsupported("input-dependent pads, pad value or axes")
    if node.opset < 11:
        pads = np.asarray(node.attrs.get("pads", []), np.int64)
        fill, axes = float(node.attrs.get("value", 0.0)), None
    else:
        pads = np.asarray(ins[1], np.int64).ravel()
        fill = 0.0 if ins[2] is None or np.size(ins[2]) == 0 else \
            float(np.asarray(ins[2]).ravel()[0])
        axes = ins[3]
    rank = len(x.shape)
    axes = np.arange(rank) if axes is None else np.asarray(axes, np.int64).ravel() % rank
    if pads.size != 2 * axes.size:
        raise node.unsupported(f"{pads.size} pads for {axes.size} axes")
    if np.any(pads < 0):
        crop = [slice(None)] * rank
        for k, ax in enumerate(axes):
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


@converter("Dropout", first=7)
def convert_dropout(b, node, ins):
    if len(ins) > 2 and ins[2] is not None and bool(np.asarray(ins[2])):
        raise node.unsupported("training_mode=True (random) is not an inference op")
    return [ins[0], np.ones(ins[0].shape, bool)]


@converter("Cast", first=6)
def convert_cast(b, node, ins):
    to = node.attrs.get("to")
    if to not in FLOAT_TYPES:
        raise node.unsupported(
            f"Cast to {onnx.TensorProto.DataType.Name(to)}: only casts between float types "
            f"keep the network piecewise linear")
    return [ins[0]]


@converter("CastLike", first=15)
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
        if kind.kind != "f":
            raise node.unsupported(
                f"CastLike to {kind}: only casts between float types keep the network "
                f"piecewise linear")
        return [x]
    if isinstance(x, Var):
        return [x]
    return [np.asarray(x).astype(np.float64)]
