"""The nodes of a network of local affine maps (SPEC section 1).

Three kinds of node, each producing one flat float64 vector:

* ``"input"``: the network input, flattened in C order.
* ``"affine"``: ``y = sum_i A_i u_i + b``, optionally followed by an elementwise
  piecewise-linear activation ``h = psi(y)``. ``A_i`` is a dense ``ndarray`` or a
  ``scipy.sparse.csr_array`` of shape ``(size, inputs[i].size)``.
* ``"max"``: ``h[p] = max_{q in window[p]} u[q]`` (MaxPool). Locally a selection.

Index ops (Reshape, Transpose, Slice, Concat, ...) are relabellings: the importer folds
them into the matrices of the nodes that consume them, so they leave no node behind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import scipy.sparse as sp

from .piecewise import PiecewiseLinear
from .window import WindowMatrix

__all__ = ["Node", "live_nodes", "matrix_format", "matrix_nbytes", "matrix_nnz"]


def matrix_format(a):
    """How a weight matrix is stored: ``"dense"``, ``"csr"`` or ``"window"``."""
    if isinstance(a, WindowMatrix):
        return "window"
    return "csr" if sp.issparse(a) else "dense"


def matrix_nnz(a):
    """Structural non-zeros of a weight matrix (every entry of a dense one)."""
    return a.size if matrix_format(a) == "dense" else int(a.nnz)


def matrix_nbytes(a):
    """Bytes a weight matrix occupies (a window matrix: its kernel and tables)."""
    if matrix_format(a) == "csr":
        return a.data.nbytes + a.indices.nbytes + a.indptr.nbytes
    return a.nbytes


@dataclass(eq=False)
class Node:
    """One node of a :class:`~refbbp.Network`.

    Attributes
    ----------
    name : str
        Names of the ONNX nodes it was built from, joined by ``+``.
    kind : {"input", "affine", "max"}
    op : str
        What it computes, for people: "Conv", "Gemm", "Add", "Elementwise", ...
    shape : tuple of int
        Output shape as in the ONNX graph, batch dimension (if any) set to 1.
    inputs : list of int
        Indices of the nodes it reads.
    weights : list of (ndarray or csr_array)
        ``A_i``, shape ``(size, nodes[inputs[i]].size)`` (affine nodes).
    bias : ndarray, shape (size,)
        ``b`` (affine nodes; zero for the others).
    activation : PiecewiseLinear or None
        Applied after the affine map.
    window : ndarray of int64, shape (size, K)
        Max nodes: candidate input elements of each output in row-major window order,
        ``-1`` for padding (which never wins).
    bias_parts : list of (str, str, ndarray) or None
        Where ``bias`` came from, one ``(name, op, vector)`` per ONNX op that contributed
        to it (a Conv's own bias, a BatchNormalization folded into it, constants read
        through a Pad, ...), each vector of shape (size,) and already carried through
        every later fold; ``bias`` is their sum (bitwise, summed in order, when at most
        one fold followed the first contribution; to rounding otherwise). ``None``: the
        bias is one part, the node's own (:meth:`bias_terms`).
    """

    name: str
    kind: str
    op: str
    shape: tuple
    inputs: list = field(default_factory=list)
    weights: list = field(default_factory=list)
    bias: np.ndarray = None
    activation: PiecewiseLinear = None
    window: np.ndarray = None
    bias_parts: list = None

    def __post_init__(self):
        self.shape = tuple(int(s) for s in self.shape)
        if self.bias is None:
            self.bias = np.zeros(self.size)

    def bias_terms(self):
        """The parts of ``bias``: ``bias_parts``, or ``[(name, op, bias)]`` when the node
        has none recorded.

        Returns
        -------
        list of (str, str, ndarray)
        """
        if self.bias_parts is None:
            return [(self.name.split("+")[0], self.op, self.bias)]
        return list(self.bias_parts)

    @property
    def size(self):
        return int(np.prod(self.shape, dtype=np.int64))

    @cached_property
    def weights_t(self):
        """``A_i^T`` as CSR (dense ``A_i.T``, a window matrix's ``.T``): the reverse
        pass reads these rows.

        Cached; whoever changes ``weights`` calls :meth:`weights_changed`."""
        return [w.T.tocsr() if matrix_format(w) == "csr" else w.T for w in self.weights]

    def to_csr(self):
        """The node's matrices ``A_i`` in the explicit reference form: one CSR matrix per
        input (a window matrix unrolled, a dense one with every entry stored, zeros
        included). For small networks and tests: an unrolled convolution takes about
        12 bytes per multiply-accumulate.

        Returns
        -------
        list of scipy.sparse.csr_array
        """
        out = []
        for w in self.weights:
            fmt = matrix_format(w)
            if fmt == "window":
                out.append(w.to_csr())
            elif fmt == "csr":
                out.append(sp.csr_array(w))
            else:
                rows, cols = np.indices(w.shape)
                out.append(sp.csr_array((np.asarray(w, np.float64).ravel(),
                                         (rows.ravel(), cols.ravel())), shape=w.shape))
        return out

    def weights_changed(self):
        """Forget what was derived from ``weights`` (the cached transposes)."""
        self.__dict__.pop("weights_t", None)

    @property
    def nnz(self):
        if self.kind == "max":
            return int(np.count_nonzero(self.window >= 0))
        return sum(matrix_nnz(w) for w in self.weights)

    @property
    def nbytes(self):
        if self.kind == "max":
            return self.window.nbytes
        extra = 0 if self.activation is None else self.activation.nbytes
        if self.bias_parts is not None:
            extra += sum(part[2].nbytes for part in self.bias_parts)
        return sum(matrix_nbytes(w) for w in self.weights) + self.bias.nbytes + extra

    def describe_storage(self):
        if self.kind != "affine":
            return "-"
        return ",".join(matrix_format(w) for w in self.weights)


def live_nodes(nodes, output):
    """Which nodes the node ``output`` depends on (itself included).

    Parameters
    ----------
    nodes : list of Node
        In topological order.
    output : int

    Returns
    -------
    ndarray of bool, shape (len(nodes),)
    """
    live = np.zeros(len(nodes), bool)
    live[output] = True
    for k in range(output, -1, -1):
        if live[k]:
            live[list(nodes[k].inputs)] = True
    return live
