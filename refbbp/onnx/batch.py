"""Batch semantics: whether a fixed leading dimension of the data input is a batch axis.

refbbp explains a model applied to *one* input. A data input declared ``[N, ...]`` with a
fixed ``N > 1`` is a batch of ``N`` inputs when every op of the graph maps batch element
to batch element, the same way for each: then the graph is specialised to ``N = 1`` and
each element is explained as its own input. Otherwise (an op mixes the elements, or
treats them differently) the whole tensor is one input.

The decision is made during the import walk, at batch 1, by :class:`BatchPlan`: it
follows the position of the batch axis through every input-dependent tensor (where
the batch-1 tensor has a dimension of 1), with one rule per op family, and it
specialises the constants that carry the batch size (``Reshape`` to ``[N, -1]``, an
``Expand`` to ``N``, a constant broadcast along the batch axis) to batch 1. Constants
keep the values they have at the declared size: ``Shape`` of an input-dependent tensor
gives its shape at the declared size. An op the plan has no rule for counts as mixing
(the answer is then "one input", which is exact whatever the op does).
"""

from __future__ import annotations

import math

import numpy as np
from onnx import helper

from . import registry
from .builder import Var

__all__ = ["AUTO", "BatchPlan", "MixedBatch", "check_batch_axis"]

#: ``load(batch_axis=AUTO)``: decide from the graph.
AUTO = "auto"

INT64_MAX = np.iinfo(np.int64).max

# Ops whose output has the shape of input 0 and whose element i depends on element i of
# input 0 only (other inputs are parameters: scalars, a target type, a ratio).
_SAME_SHAPE = {
    "Relu", "LeakyRelu", "Clip", "Abs", "Neg", "Identity", "Dropout", "Cast", "CastLike",
    "HardSigmoid", "Shrink", "ThresholdedRelu", "Sigmoid", "Tanh", "Exp", "Log", "Softplus",
    "Softsign", "Elu", "Selu", "Celu", "Gelu", "Mish", "Erf", "Sqrt", "Reciprocal",
    "HardSwish", "Swish", "Sin", "Cos", "Floor", "Ceil", "Round", "Sign", "Not",
}
# Elementwise ops with multidirectional (or, PRelu, unidirectional) broadcasting.
_BROADCAST = {"Add", "Sub", "Mul", "Div", "Sum", "Max", "Min", "Mean", "PRelu", "Where",
              "Pow", "Mod", "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual"}
# Ops on (N, C, *spatial) tensors that treat each of the N separately.
_NCHW = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool",
         "GlobalMaxPool", "LpPool", "GlobalLpPool", "BatchNormalization",
         "InstanceNormalization", "LRN", "DepthToSpace", "SpaceToDepth"}
_RESHAPES = {"Reshape", "Flatten", "Squeeze", "Unsqueeze"}
_REDUCE = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2",
           "ReduceProd", "ReduceSumSquare", "ReduceLogSumExp", "ReduceLogSum"}
# The opset from which each reduction takes its axes as an input.
_REDUCE_AXES_INPUT = {"ReduceSum": 13}
_SOFTMAX = {"Softmax", "LogSoftmax", "Hardmax"}


def check_batch_axis(batch_axis):
    """Validate ``load(batch_axis=...)``: ``"auto"``, ``0`` or ``None``."""
    if batch_axis is None or (isinstance(batch_axis, str) and batch_axis == AUTO):
        return batch_axis
    if isinstance(batch_axis, (bool, np.bool_)) or not isinstance(batch_axis, (int, np.integer)):
        raise TypeError(f"batch_axis must be 'auto', 0 or None, got "
                        f"{type(batch_axis).__name__} {batch_axis!r}")
    if batch_axis != 0:
        raise ValueError(f"batch_axis must be 'auto', 0 or None, got {batch_axis!r}: only "
                         f"the leading axis of the input can be a batch axis")
    return 0


class MixedBatch(Exception):
    """Internal: an op mixes (or treats differently) the elements of the batch axis.

    Never escapes :func:`refbbp.load`, which then takes the whole tensor as one input.
    """

    def __init__(self, node, reason):
        self.node = node
        self.reason = reason
        super().__init__(f"{node.op_type} node {node.name!r} {reason}")


def _identical_along(c, axis):
    """Whether the constant ``c`` is the same in every slice along ``axis``."""
    first = np.take(c, [0], axis=axis)
    return bool(np.array_equal(c, np.broadcast_to(first, c.shape), equal_nan=c.dtype.kind == "f"))


def _ints(v):
    return [int(x) for x in np.asarray(v).ravel()]


class BatchPlan:
    """Follows the batch axis of a fixed leading dimension ``size`` through the walk.

    Parameters
    ----------
    size : int
        The declared leading dimension of the data input (> 1).
    input_name : str
        The data input; its batch axis is axis 0.
    forced : bool
        ``load(batch_axis=0)``: a node that mixes the elements does not stop the walk; it
        is recorded in :attr:`mixed` and the walk goes on at batch 1 without further
        specialisation.

    Attributes
    ----------
    axes : dict of str to int
        Batch axis of each input-dependent tensor (a dimension of 1 at batch 1).
    mixed : MixedBatch or None
        The first node that mixes the elements (``forced`` only).
    """

    def __init__(self, size, input_name, forced=False):
        self.size = int(size)
        self.axes = {input_name: 0}
        self.forced = forced
        self.mixed = None

    # ------------------------------------------------------------ shapes
    def full_shape(self, name, var):
        """The shape of ``var`` (tensor ``name``) at the declared batch size."""
        shape = list(var.shape)
        a = self.axes.get(name)
        if a is not None:
            shape[a] = self.size
        return tuple(shape)

    # ------------------------------------------------------------ the walk
    def specialise(self, node, ins):
        """Check that ``node`` keeps the batch elements apart and specialise its
        constant inputs to batch 1.

        Returns
        -------
        node : OnnxNode
            The node to convert (a modified copy where an attribute carries the batch).
        ins : list
            Its inputs at batch 1.
        out_axes : list of int
            The batch axis of each output.
        expect : list of tuple or None
            The batch-1 shape each output must have, where the rule knows it.
        """
        if self.mixed is not None:
            return node, ins, None, None
        try:
            axes = [self.axes.get(n) if isinstance(v, Var) else None
                    for n, v in zip(node.proto.input, ins)]
            return _rule(self, node, ins, axes)
        except MixedBatch as exc:
            if not self.forced:
                raise
            self.mixed = exc
            return node, ins, None, None

    def check_output(self, name, last):
        """The explained tensor ``name`` must hold the batch on its axis 0: element
        ``b`` of the batch gives slice ``b`` of the output (``last``: the node that made
        it, for the message)."""
        a = self.axes.get(name)
        if self.mixed is None and a != 0:
            exc = MixedBatch(registry.OnnxNode(last, 1) if last is not None else None,
                             f"puts the batch on axis {a} of the output {name!r}, not on "
                             f"axis 0")
            if not self.forced:
                raise exc
            self.mixed = exc

    def record(self, node, outs, out_axes, expect):
        """Remember the batch axis of each output (checking its batch-1 shape)."""
        if out_axes is None:
            return
        for i, (name, val) in enumerate(zip(node.proto.output, outs)):
            if not name or not isinstance(val, Var):
                continue
            a = out_axes[min(i, len(out_axes) - 1)]
            want = expect[min(i, len(expect) - 1)] if expect else None
            if not 0 <= a < len(val.shape) or val.shape[a] != 1 or \
                    (want is not None and tuple(val.shape) != tuple(want)):
                exc = MixedBatch(node, f"gives an output of shape {val.shape} at batch 1, "
                                       f"not a batch-1 slice of its output at batch "
                                       f"{self.size}")
                if not self.forced:
                    raise exc
                self.mixed = exc
                return
            self.axes[name] = a


# ------------------------------------------------------------------------ rules
def _rule(plan, node, ins, axes):
    op = node.op_type
    n = plan.size
    a = axes[0]
    if op in _SAME_SHAPE:
        if a is None:
            raise MixedBatch(node, "has an input-dependent parameter")
        if op == "Clip":
            ins = list(ins)
            for i in (1, 2):
                if i < len(ins) and isinstance(ins[i], Var):
                    raise MixedBatch(node, "has input-dependent bounds")
        return node, ins, [a] * len(node.proto.output), None
    if op in _BROADCAST:
        return _broadcast(node, ins, axes, n)
    if op not in ("Concat", "MatMul", "Gemm", "Einsum") and (
            a is None or any(x is not None for x in axes[1:])):
        raise MixedBatch(node, "reads an input-dependent tensor where it takes parameters")
    if op in _NCHW:
        if a != 0:
            raise MixedBatch(node, f"takes axis 0 as its batch axis, and the batch is on "
                                   f"axis {a}")
        return node, ins, [0] * len(node.proto.output), None
    if op in _RESHAPES:
        return _reshape(node, ins, a, n)
    if op == "Transpose":
        rank = len(ins[0].shape)
        perm = node.ints_attr("perm") or list(range(rank))[::-1]
        return node, ins, [list(perm).index(a)], None
    if op in _REDUCE:
        return _reduce(node, ins, a)
    if op in _SOFTMAX:
        rank = len(ins[0].shape)
        axis = node.int_attr("axis", 1 if node.opset < 13 else -1)
        axis = axis + rank if axis < 0 else axis
        mixes = a >= axis if node.opset < 13 else a == axis
        if mixes:
            raise MixedBatch(node, f"normalises over axis {axis}, which holds the batch")
        return node, ins, [a], None
    if op == "Gather":
        rank = len(ins[0].shape)
        g = node.int_attr("axis", 0)
        g = g + rank if g < 0 else g
        if g == a:
            raise MixedBatch(node, f"gathers along the batch axis {a}")
        q = np.ndim(ins[1])
        return node, ins, [a if a < g else a + q - 1], None
    if op == "Split":
        rank = len(ins[0].shape)
        s = node.int_attr("axis", 0)
        if (s + rank if s < 0 else s) == a:
            raise MixedBatch(node, f"splits the batch axis {a}")
        return node, ins, [a] * len(node.proto.output), None
    if op == "Concat":
        return _concat(node, ins, axes, n)
    if op == "Slice":
        return _slice(node, ins, a, n)
    if op == "Pad":
        return _pad(node, ins, a)
    if op == "Tile":
        if _ints(ins[1])[a] != 1:
            raise MixedBatch(node, "repeats the batch axis")
        return node, ins, [a], None
    if op == "Expand":
        return _expand(node, ins, a, n)
    if op == "Gemm":
        return _gemm(node, ins, axes, n)
    if op == "MatMul":
        return _matmul(node, ins, axes, n)
    if op == "Einsum":
        return _einsum(node, ins, axes, n)
    if op in ("Resize", "Upsample"):
        return _resize(node, ins, a, n)
    raise MixedBatch(node, "is an op for which refbbp does not decide whether it keeps "
                           "the elements of a batch apart")


def _const_along(node, c, axis, n, what):
    """The constant ``c`` at batch 1 where its ``axis`` lines up with the batch axis
    (``axis < 0``: it has no such axis): sliced to one element if it holds ``n`` equal
    slices there."""
    if axis < 0 or c.shape[axis] == 1:
        return c
    if c.shape[axis] == n and _identical_along(c, axis):
        return np.take(c, [0], axis=axis)
    raise MixedBatch(node, f"has {what} of shape {c.shape}, which varies along the batch "
                           f"axis: each element of the batch gets a different function")


def _broadcast(node, ins, axes, n):
    ranks = [len(v.shape) if isinstance(v, Var) else np.ndim(v) for v in ins if v is not None]
    r = max(ranks)
    out = {a + r - len(v.shape) for v, a in zip(ins, axes) if a is not None}
    if len(out) != 1:
        raise MixedBatch(node, "combines tensors whose batch axes do not line up")
    (b,) = out
    new = []
    for i, v in enumerate(ins):
        if v is None or isinstance(v, Var):
            new.append(v)
            continue
        c = np.asarray(v)
        new.append(_const_along(node, c, b - (r - c.ndim), n, f"constant input {i}"))
    return node, new, [b], None


def _reshape(node, ins, a, n):
    """Reshape, Flatten, Squeeze, Unsqueeze: the batch axis survives when the elements
    before it stay before it, and it keeps its length."""
    s1 = list(ins[0].shape)
    s = list(s1)
    s[a] = n
    op = node.op_type
    ins = list(ins)
    if op == "Reshape":
        target = _ints(ins[1])
        allowzero = node.flag_attr("allowzero")
        o = [s[i] if (t == 0 and not allowzero and i < len(s)) else t
             for i, t in enumerate(target)]
        if -1 in o:
            known = math.prod(d for d in o if d != -1)
            o[o.index(-1)] = math.prod(s) // known if known else 0
    elif op == "Flatten":
        k = node.int_attr("axis", 1)
        k = k + len(s) if k < 0 else k
        o = [math.prod(s[:k]), math.prod(s[k:])]
    elif op == "Squeeze":
        sq = _axes(node, ins, 1)
        sq = ([i for i, d in enumerate(s) if d == 1] if sq is None
              else [x + len(s) if x < 0 else x for x in sq])
        o = [d for i, d in enumerate(s) if i not in sq]
        keep = sorted(sq)
        if node.opset >= 13:
            ins = ins[:1] + [np.array(keep, np.int64)]
            proto = _with_input(node.proto, 1, node.proto.output[0] + "/refbbp_squeeze_axes")
        else:
            proto = _with_attr(node.proto, "axes", keep)
        node = type(node)(proto, node.opset)
    else:   # Unsqueeze
        ax = _axes(node, ins, 1) or []
        r = len(s) + len(ax)
        ax = sorted(x + r if x < 0 else x for x in ax)
        o = list(s)
        for x in ax:
            o.insert(x, 1)
    if math.prod(o) != math.prod(s):
        raise MixedBatch(node, f"reshapes {tuple(s)} to {tuple(o)}")
    prefix = math.prod(s[:a])
    out_axis = next((i for i in range(len(o))
                     if o[i] == n and math.prod(o[:i]) == prefix), None)
    if out_axis is None:
        raise MixedBatch(node, f"merges the batch axis {a} of shape {tuple(s)} into "
                               f"{tuple(o)}")
    o1 = list(o)
    o1[out_axis] = 1
    if op == "Reshape":
        ins[1] = np.array(o1, np.int64)
    return node, ins, [out_axis], [tuple(o1)]


def _axes(node, ins, position):
    """The ``axes`` of a node: an attribute before the opset it became an input, else
    input ``position``; ``None`` if not given."""
    if node.has_attr("axes"):
        return node.ints_attr("axes")
    if position < len(ins) and ins[position] is not None:
        if isinstance(ins[position], Var):
            raise MixedBatch(node, "takes input-dependent axes")
        return _ints(ins[position])
    return None


def _with_input(proto, position, name):
    """A copy of ``proto`` with input ``position`` named ``name``."""
    new = type(proto)()
    new.CopyFrom(proto)
    while len(new.input) <= position:
        new.input.append("")
    new.input[position] = name
    return new


def _with_attr(proto, key, value):
    new = type(proto)()
    new.CopyFrom(proto)
    kept = [x for x in new.attribute if x.name != key]
    del new.attribute[:]
    new.attribute.extend(kept + [helper.make_attribute(key, value)])
    return new


def _reduce(node, ins, a):
    rank = len(ins[0].shape)
    if node.has_attr("axes") or node.opset >= _REDUCE_AXES_INPUT.get(node.op_type, 18):
        ax = _axes(node, ins, 1)
    else:
        ax = None
    keep = node.flag_attr("keepdims", 1)
    if not ax:
        if node.has_attr("noop_with_empty_axes") and node.flag_attr("noop_with_empty_axes"):
            return node, ins, [a], None
        raise MixedBatch(node, "reduces over every axis, the batch axis too")
    ax = [x + rank if x < 0 else x for x in ax]
    if a in ax:
        raise MixedBatch(node, f"reduces over the batch axis {a}")
    return node, ins, [a if keep else a - sum(x < a for x in ax)], None


def _concat(node, ins, axes, n):
    rank = len(next(v for v in ins if isinstance(v, Var)).shape)
    c = node.int_attr("axis")
    c = c + rank if c < 0 else c
    bs = {x for x in axes if x is not None}
    if len(bs) != 1:
        raise MixedBatch(node, "joins tensors whose batch axes do not line up")
    (b,) = bs
    if c == b:
        raise MixedBatch(node, f"concatenates along the batch axis {b}")
    new = [v if isinstance(v, Var) else _const_along(node, np.asarray(v), b, n,
                                                     f"constant input {i}")
           for i, v in enumerate(ins)]
    return node, new, [b], None


def _slice(node, ins, a, n):
    rank = len(ins[0].shape)
    ins = list(ins)
    if node.opset < 10:
        starts, ends = node.ints_attr("starts"), node.ints_attr("ends")
        ax = node.ints_attr("axes") or list(range(len(starts)))
        steps = [1] * len(starts)
    else:
        starts, ends = _ints(ins[1]), _ints(ins[2])
        ax = _ints(ins[3]) if len(ins) > 3 and ins[3] is not None else list(range(len(starts)))
        steps = _ints(ins[4]) if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
    ax = [x + rank if x < 0 else x for x in ax]
    if a in ax:
        j = ax.index(a)
        kept = range(n)[slice(starts[j], ends[j], steps[j])]
        if list(kept) != list(range(n)):
            raise MixedBatch(node, f"takes elements {list(kept)[:8]} of the batch axis")
        if node.opset < 10:
            if starts[j] not in (0, -n):
                raise MixedBatch(node, "slices the batch axis")
        else:
            s1 = np.array(starts, np.int64)
            e1 = np.array(ends, np.int64)
            s1[j], e1[j] = 0, INT64_MAX
            ins[1], ins[2] = s1, e1
    return node, ins, [a], None


def _pad(node, ins, a):
    rank = len(ins[0].shape)
    pads = node.ints_attr("pads") if node.opset < 11 else _ints(ins[1])
    ax = list(range(rank))
    if node.opset >= 18 and len(ins) > 3 and ins[3] is not None:
        ax = [x + rank if x < 0 else x for x in _ints(ins[3])]
    if a in ax:
        j = ax.index(a)
        if pads[j] != 0 or pads[j + len(ax)] != 0:
            raise MixedBatch(node, f"pads the batch axis {a}")
    return node, ins, [a], None


def _resize(node, ins, a, n):
    """Resize/Upsample keep the elements of a batch apart when the batch axis is neither
    resized (scale 1, or size ``n``, which becomes 1 at batch 1) nor cropped (an roi of
    [0, 1] along it)."""
    rank = len(ins[0].shape)
    ins = list(ins) + [None] * (4 - len(ins))
    axes = list(range(rank))
    if node.op_type == "Resize" and node.opset >= 18 and node.has_attr("axes"):
        axes = [int(x) % rank for x in node.ints_attr("axes")]
    if a not in axes:
        return node, ins[:len(node.proto.input)], [a], None
    k = axes.index(a)
    if node.op_type == "Upsample" and node.opset < 9:
        scales, sizes = node.attrs.get("scales"), None
    elif node.op_type == "Upsample" or node.opset < 11:
        scales, sizes = ins[1], None
    else:
        scales, sizes = ins[2], ins[3]
    if scales is not None and np.size(scales) > 0:
        if float(np.asarray(scales, np.float64).ravel()[k]) != 1.0:
            raise MixedBatch(node, f"resizes the batch axis {a}")
    elif sizes is not None and np.size(sizes) > 0:
        sizes = _ints(sizes)
        if sizes[k] != n:
            raise MixedBatch(node, f"resizes the batch axis {a} to {sizes[k]}")
        sizes[k] = 1
        ins[3] = np.array(sizes, np.int64)
    if node.op_type == "Resize" and node.opset >= 11 and \
            node.attrs.get("coordinate_transformation_mode") == "tf_crop_and_resize":
        roi = np.asarray(ins[1], np.float64).ravel()
        if roi.size != 2 * len(axes) or roi[k] != 0.0 or roi[k + len(axes)] != 1.0:
            raise MixedBatch(node, f"crops the batch axis {a} (roi {roi.tolist()})")
    return node, ins[:len(node.proto.input)], [a], None


def _expand(node, ins, a, n):
    shape = _ints(ins[1])
    r0 = len(ins[0].shape)
    r = max(r0, len(shape))
    b = a + r - r0
    j = b - (r - len(shape))
    ins = list(ins)
    if j >= 0:
        if shape[j] not in (1, n):
            raise MixedBatch(node, f"expands the batch axis to {shape[j]}")
        shape[j] = 1
        ins[1] = np.array(shape, np.int64)
    return node, ins, [b], None


def _gemm(node, ins, axes, n):
    if sum(x is not None for x in axes) != 1 or axes[0] is None and axes[1] is None:
        raise MixedBatch(node, "multiplies input-dependent operands")
    ins = list(ins)
    if axes[0] is not None:
        rows = axes[0] == (1 if node.flag_attr("transA") else 0)
        if not rows:
            raise MixedBatch(node, "sums over the batch axis of A")
        out = 0
    else:
        cols = axes[1] == (0 if node.flag_attr("transB") else 1)
        if not cols:
            raise MixedBatch(node, "sums over the batch axis of B")
        out = 1
    if len(ins) > 2 and ins[2] is not None:
        c = np.asarray(ins[2])
        ins[2] = _const_along(node, c, out - (2 - c.ndim), n, "C")
    return node, ins, [out], None


def _matmul(node, ins, axes, n):
    if (axes[0] is None) == (axes[1] is None):
        raise MixedBatch(node, "multiplies input-dependent operands")
    left = axes[0] is not None
    x, w = (ins[0], np.asarray(ins[1])) if left else (ins[1], np.asarray(ins[0]))
    a = axes[0] if left else axes[1]
    r = len(x.shape)
    # the summed axis of x: its last (x @ W) or second to last (W @ x), or its only one
    summed = r - 1 if left or r == 1 else r - 2
    if a == summed:
        raise MixedBatch(node, f"sums over the batch axis {a}")
    lead_x = max(r - 2, 0)
    lead_w = max(w.ndim - 2, 0)
    lead = max(lead_x, lead_w)
    if a >= lead_x:                      # a matrix axis of x: rows (x @ W) or columns
        out_rank = lead + (1 if r > 1 else 0) + (1 if w.ndim > 1 else 0)
        if left:
            out = lead if r > 1 else None
        else:
            out = out_rank - 1
        return node, ins, [out], None
    b = a + lead - lead_x                # a broadcast (leading) axis
    j = b - (lead - lead_w)
    ins = list(ins)
    if j >= 0:
        wi = 1 if left else 0
        ins[wi] = _const_along(node, w, j, n, "the constant operand")
    return node, ins, [b], None


def _einsum(node, ins, axes, n):
    eq = node.str_attr("equation", "").replace(" ", "")
    if "..." in eq or "->" not in eq or sum(x is not None for x in axes) != 1:
        raise MixedBatch(node, "is an einsum refbbp does not analyse (ellipsis, implicit "
                               "output or several input-dependent operands)")
    terms, out = eq.split("->")
    terms = terms.split(",")
    i = next(k for k, x in enumerate(axes) if x is not None)
    letter = terms[i][axes[i]]
    if terms[i].count(letter) != 1 or letter not in out:
        raise MixedBatch(node, f"sums over (or takes a diagonal of) the batch axis "
                               f"{letter!r}")
    ins = list(ins)
    for k, (t, v) in enumerate(zip(terms, ins)):
        if k != i and letter in t:
            c = np.asarray(v)
            if t.count(letter) != 1:
                raise MixedBatch(node, f"takes a diagonal along the batch axis {letter!r}")
            ins[k] = _const_along(node, c, t.index(letter), n, f"operand {k}")
    return node, ins, [out.index(letter)], None
