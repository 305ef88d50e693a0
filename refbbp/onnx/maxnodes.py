"""Converters for maxima and minima over input-dependent candidates: Max and Min of
several tensors, ReduceMax and ReduceMin (SPEC section 1).

Each is one max node, the node kind MaxPool builds: a window table of shape
``(n_out, n_candidates)`` lists, for each output element, its candidate elements of the
node the max node reads, in the order in which the first maximum wins a tie:

* Max/Min of tensors: candidate ``j`` of an output element is the element operand ``j``
  broadcasts to it (operands in input order). The candidates come from one view of the
  operands one after the other, unbroadcast (``Var.concat``); when that view reads
  several nodes or holds constants (constant operands mixed in with input-dependent
  ones), ``Builder.max_pool`` first gathers it into one node, whose bias holds the
  constants: a constant operand is a candidate that may win.
* ReduceMax/ReduceMin: the candidates of an output element are the elements of its
  reduced axes in row-major order.

Min and ReduceMin are max nodes over negated candidates: an affine node ``-1`` before the
max node (it also gathers the candidates of several nodes) and an elementwise ``-1``
node after it, so the first minimum wins a tie, as the first maximum does for Max.
GlobalMaxPool is in ``pool.py``. Max/Min with exactly one input-dependent operand and
constants is an elementwise activation, not a max node.
"""

from __future__ import annotations

import numpy as np

from .builder import Var, diagonal
from .pool import reduce_axes, reduced_shape
from .registry import converter

__all__ = ["max_min_of_tensors", "max_node", "reduction_window"]


def max_node(b, node, cands, window, shape, negate=False):
    """A max node (``negate``: a min node) over the candidates ``window`` of ``cands``.

    Parameters
    ----------
    b : Builder
    node : OnnxNode
        Names the nodes and the errors.
    cands : Var
        The candidates, a view on any nodes and constants.
    window : ndarray of int, shape (n_out, K)
        Elements of ``cands`` that are the candidates of each output element, the one a
        tie goes to first. An empty window (no output, or ``K = 0``) is refused.
    shape : tuple of int
        Output shape (``prod(shape) == n_out``).
    negate : bool
        A minimum: ``-max(-candidates)``, with a ``Neg`` node before and after.

    Returns
    -------
    Var
    """
    window = np.asarray(window, np.int64)
    if window.size == 0:
        raise node.unsupported(f"an empty tensor: output of shape {tuple(shape)}, "
                               f"{window.shape[1]} candidates per output element; expected "
                               f"at least one output element and one candidate for each")
    if negate:
        cands, window = b.candidates(cands, window)
        cands = b.affine([(cands, diagonal(-np.ones(cands.size)))], 0.0, cands.shape, "Neg",
                         f"{node.name}/negate")
    out = b.max_pool(cands, window, shape, node.name, node.op_type)
    if negate:
        out = b.elementwise(out, -1.0, 0.0, "Neg", f"{node.name}/negate_back")
    return out


def _operand_shape(v):
    return v.shape if isinstance(v, Var) else tuple(np.shape(v))


def max_min_of_tensors(b, node, ins):
    """Max or Min (``node.op_type``) of tensors, broadcast, as a max node.

    Meant for two or more input-dependent operands (any constant operands among them
    are candidates too); one input-dependent operand with constants is an activation.

    Parameters
    ----------
    b : Builder
    node : OnnxNode
    ins : list of (Var or ndarray)
        The operands, at least one of them a :class:`Var`.

    Returns
    -------
    list of Var
        The node's one output, as converters return it.
    """
    shapes = [_operand_shape(v) for v in ins]
    if node.opset < 8 and len(set(shapes)) > 1:
        raise node.malformed(f"inputs of shapes {shapes}: before opset 8 {node.op_type} does "
                             f"not broadcast; expected inputs of one shape")
    try:
        shape = tuple(int(d) for d in np.broadcast_shapes(*shapes))
    except ValueError:
        raise node.malformed(f"input shapes {shapes} do not broadcast") from None
    n_out = int(np.prod(shape, dtype=np.int64))
    columns, offset = [], 0
    for s in shapes:
        size = int(np.prod(s, dtype=np.int64))
        ids = np.arange(size, dtype=np.int64).reshape(s)
        columns.append(offset + np.broadcast_to(ids, shape).reshape(n_out))
        offset += size
    cands = Var.concat([v if isinstance(v, Var) else np.asarray(v, np.float64) for v in ins])
    window = np.stack(columns, axis=1) if columns else np.zeros((n_out, 0), np.int64)
    return [max_node(b, node, cands, window, shape, negate=node.op_type == "Min")]


def reduction_window(shape, axes):
    """The candidates of a reduction over ``axes`` of a tensor of ``shape``.

    Parameters
    ----------
    shape : tuple of int
    axes : list of int
        In ``[0, rank)``, sorted, distinct.

    Returns
    -------
    ndarray of int64, shape (n_out, n_candidates)
        Row ``p``: the C-order element ids reduced into output element ``p`` (outputs
        in C order of the kept axes), in row-major order of the reduced axes.
    """
    kept = [a for a in range(len(shape)) if a not in axes]
    ids = np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.int64).reshape(shape)
    n_out = int(np.prod([shape[a] for a in kept], dtype=np.int64))
    n_cand = int(np.prod([shape[a] for a in axes], dtype=np.int64))
    return ids.transpose(kept + list(axes)).reshape(n_out, n_cand)


def _convert_reduce(b, node, ins, axes_from_input):
    axes = reduce_axes(node, ins, axes_from_input)
    x = ins[0]
    if axes is None:  # noop_with_empty_axes
        return [x]
    shape = reduced_shape(x.shape, axes, node.flag_attr("keepdims", 1))
    return [max_node(b, node, x, reduction_window(x.shape, axes), shape,
                     negate=node.op_type == "ReduceMin")]


# An axes input appears with ReduceMax-18 / ReduceMin-18; before, axes is an attribute
# and the schema (checked by the registry) allows one input only.
@converter("ReduceMax", first=1, last=13, attrs=("axes", "keepdims"))
@converter("ReduceMin", first=1, last=13, attrs=("axes", "keepdims"))
def convert_reduce_max_min_axes_attribute(b, node, ins):
    return _convert_reduce(b, node, ins, axes_from_input=False)


@converter("ReduceMax", first=18, attrs=("keepdims", "noop_with_empty_axes"))
@converter("ReduceMin", first=18, attrs=("keepdims", "noop_with_empty_axes"))
def convert_reduce_max_min(b, node, ins):
    return _convert_reduce(b, node, ins, axes_from_input=True)
