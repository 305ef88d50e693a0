"""What a forward pass computed: the :class:`Trace` of every node's value and the
activation pattern, and the two primitive operations the passes share (a batch of rows
through a dense or CSR matrix, a max over windows)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

__all__ = ["Trace", "matmul_rows", "max_forward"]


def matmul_rows(u, a):
    """``u @ a.T`` for a batch of row vectors ``u`` (batch, n) and a dense, CSR or window
    matrix ``a`` (or a window matrix's transpose)."""
    if hasattr(a, "matmul_rows"):
        return a.matmul_rows(u)
    if sp.issparse(a):
        return np.asarray((a @ u.T).T)
    return u @ a.T


@dataclass(eq=False)
class Trace:
    """Everything a forward pass computed, for one input or a batch.

    Attributes
    ----------
    values : list of ndarray, shape (batch, node.size)
        ``h_n``, the output of every node (after its activation).
    pre : list of ndarray or None
        ``y_n``, the pre-activation of activated affine nodes (``None`` otherwise).
    pieces : list of ndarray of int8 or None
        The activation pattern: the piece every activated element fell in.
    selected : list of ndarray of int64 or None
        Max nodes: the input element each output selected (first maximum in window order).
    batched : bool
        Whether the input carried a batch dimension.
    """

    network: object  # the Network that ran the pass (network/graph.py)
    values: list
    pre: list
    pieces: list
    selected: list
    batched: bool

    @property
    def logits(self):
        """Network output, shape (batch, n_outputs)."""
        return self.values[self.network.output]

    def slopes_offsets(self, n):
        """Local slopes ``c`` and offsets ``d`` of node ``n``, each (batch, size), or ``None``."""
        act = self.network.nodes[n].activation
        if act is None:
            return None
        return act.local(self.pieces[n])

    def local_bias(self, n):
        """``b^x_n = c * b + d`` (SPEC section 2), shape (batch, size)."""
        node = self.network.nodes[n]
        batch = self.values[0].shape[0]
        if node.kind != "affine":
            return np.zeros((batch, node.size))
        cd = self.slopes_offsets(n)
        if cd is None:
            return np.broadcast_to(node.bias, (batch, node.size)).copy()
        c, d = cd
        return c * node.bias + d


def max_forward(u, window):
    """Max over windows with padding (-1) excluded; ties go to the first in window order."""
    batch = u.shape[0]
    safe = np.where(window >= 0, window, 0)
    cand = u[:, safe]  # (batch, size, K)
    cand = np.where(window >= 0, cand, -np.inf)
    arg = np.argmax(cand, axis=2)
    sel = np.take_along_axis(np.broadcast_to(safe, (batch,) + safe.shape), arg[..., None],
                             2)[..., 0]
    return np.take_along_axis(u, sel, axis=1), sel
