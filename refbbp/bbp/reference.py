"""Bias backpropagation in plain NumPy, row by row, following SPEC section 3.

This is the reference the Cython kernel (``refbbp/_core.pyx``) must agree with. It
reads the network's own matrices (``node.weights``, ``node.window``) rather than the
kernel's stacked CSR structures, visits every node and every row in Python loops, and
cites the SPEC step each line implements. It is slow by design; use it on small
networks and to check the kernel (``refbbp.bbp(..., backend="numpy")``).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..network.window import WindowMatrix
from .rules import RowLayout

__all__ = ["propagate", "row_components", "row_messages"]


def row_components(node, trace, k, b, p):
    """The structural non-zeros of row ``p`` of node ``k`` and their components.

    Listed input by input (``node.inputs`` order), columns increasing within an input
    (a max node: its window, in window order).

    Parameters
    ----------
    node : Node
    trace : Trace
    k, b, p : int
        Node index, input (batch) index, row.

    Returns
    -------
    inputs : ndarray of int64, shape (r,)
        Position in ``node.inputs`` of each structural non-zero.
    columns : ndarray of int64, shape (r,)
        Element of that input.
    weights : ndarray, shape (r,)
        Local weights ``A_i^x[p, q]``.
    values : ndarray, shape (r,)
        Input values ``u_i[q]``.
    """
    if node.kind == "max":
        # SPEC 3.2: "a max node has the single component of the selected input": its
        # local row is 1 at the selected element (first in window order), 0 elsewhere.
        window = node.window[p]
        cols = window[window >= 0].astype(np.int64)
        w = np.zeros(cols.size)
        hit = np.flatnonzero(cols == trace.selected[k][b, p])
        if hit.size:
            w[hit[0]] = 1.0
        u = trace.values[node.inputs[0]][b]
        return np.zeros(cols.size, np.int64), cols, w, u[cols]
    cd = trace.slopes_offsets(k)
    c = 1.0 if cd is None else cd[0][b, p]           # A^x = diag(c) A  (SPEC 2)
    inputs, columns, weights, values = [], [], [], []
    for i, (src, a) in enumerate(zip(node.inputs, node.weights)):
        if isinstance(a, WindowMatrix):             # generated from kernel and geometry
            cols, vals = a.row(p)
            order = np.argsort(cols, kind="stable")
            cols, vals = cols[order], vals[order]
        elif sp.issparse(a):
            a = a.tocsr()
            lo, hi = a.indptr[p], a.indptr[p + 1]
            cols, vals = a.indices[lo:hi].astype(np.int64), a.data[lo:hi]
            order = np.argsort(cols, kind="stable")
            cols, vals = cols[order], vals[order]
        else:                                         # dense: every entry is structural
            cols, vals = np.arange(a.shape[1]), np.asarray(a[p], np.float64)
        inputs.append(np.full(cols.size, i, np.int64))
        columns.append(cols)
        weights.append(c * vals)
        values.append(trace.values[src][b][cols])
    return (np.concatenate(inputs), np.concatenate(columns), np.concatenate(weights),
            np.concatenate(values))


def softmax_weights(s, temperature):
    """``alpha = softmax(s / T)`` over one row's scores, stably (SPEC 3.4).

    Returns the unnormalised terms ``e`` (1 at the row maximum); ``alpha = e / e.sum()``.
    """
    m = s.max()                                       # subtract the row maximum
    if temperature == np.inf:                         # T = inf: uniform split
        return np.ones_like(s)
    if temperature == 0:                              # T = 0: maxima share equally
        return (s == m).astype(np.float64)
    e = np.ones_like(s)
    below = s != m
    e[below] = np.exp((s[below] - m) / temperature)
    return e


def row_messages(kappa, scores, beta_p, temperature, weights=False):
    """Messages of one row with at least one non-zero component (SPEC 3.4-3.5).

    Parameters
    ----------
    kappa : ndarray, shape (r,)
        The row's components over its structural non-zeros.
    scores : ndarray, shape (r,)
        Scores (or weights, if ``weights``) of the components; read where kappa != 0.
    beta_p : float
    temperature : float

    Returns
    -------
    ndarray, shape (r,)
        ``alpha * beta_p`` at non-zero components, 0 elsewhere.
    """
    nz = kappa != 0                                   # SPEC 3.2: e = |sign(kappa)|
    out = np.zeros(kappa.size)
    if weights:                                       # user weights: alpha given
        out[nz] = scores[nz] * beta_p
        return out
    e = softmax_weights(scores[nz], temperature)      # SPEC 3.4
    out[nz] = e * (beta_p / e.sum())                  # SPEC 3.5: alpha * beta
    return out


def _builtin_scores(rule_name, kappa, bias_p, h_p):
    nz = kappa != 0
    if rule_name == "sign":                           # SPEC 3.3, eq. 14
        sgn = -1.0 if bias_p > 0 else (1.0 if bias_p < 0 else 0.0)
        return sgn * kappa
    n_p = np.count_nonzero(nz)                        # SPEC 3.3, eq. 16
    return np.abs(h_p / max(n_p, 1) - kappa)


def _layout(net, k, b, rows, bias_x, h, beta):
    """The RowLayout of node ``k`` for input ``b`` from per-row components."""
    node = net.nodes[k]
    keep = [r[4] != 0 for r in rows]
    counts = [int(kp.sum()) for kp in keep]
    indptr = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])

    def cat(j, dtype=np.float64):
        parts = [r[j][kp] for r, kp in zip(rows, keep)]
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

    return RowLayout(node=node, index=k, indptr=indptr, kappa=cat(4), weight=cat(2),
                     value=cat(3), input=cat(0, np.int64), column=cat(1, np.int64),
                     row=np.repeat(np.arange(len(rows)), counts), bias_x=bias_x, h=h,
                     beta=beta)


def propagate(net, lin, rule, temperature):
    """BBp, node by node and row by row (SPEC section 3).

    Parameters
    ----------
    net : Network
    lin : LocalLinearModel
        ``net.linearize(x, target)``: the trace and the gradients ``g_n``.
    rule : refbbp.bbp.rules.Rule
    temperature : float

    Returns
    -------
    node_beta, node_beta_in : list of ndarray, shape (batch, node.size)
        Per node: total ``beta_n`` and received ``beta_n^in``.
    fallback : ndarray, shape (batch, n_nodes)
        Beta mass that took a fallback of SPEC 3.6, per input and node.
    """
    trace, grads, nodes = lin.trace, lin.grads, net.nodes
    batch = trace.values[0].shape[0]
    node_beta_in = [np.zeros((batch, node.size)) for node in nodes]
    node_beta = [np.zeros((batch, node.size)) for node in nodes]
    fallback = np.zeros((batch, len(nodes)))
    for b in range(batch):
        # Visit nodes from the output back to the input (reverse topological order).
        for k in range(len(nodes) - 1, -1, -1):
            node = nodes[k]
            bias_x = trace.local_bias(k)[b]          # b^x_n = c * b + d  (0: max, input)
            # SPEC 3.1: own bias, beta_n += g_n * b^x_n (affine nodes).
            own = grads[k][b] * bias_x if node.kind == "affine" else 0.0
            beta = node_beta_in[k][b] + own
            node_beta[k][b] = beta
            if node.kind == "input" or not np.any(beta):
                continue                             # nothing to distribute (SPEC 3.5)
            h = trace.values[k][b]
            n_in = sum(nodes[i].size for i in node.inputs)
            # SPEC 3.2: the components of every row.
            rows = []
            for p in range(node.size):
                inputs, columns, weights, values = row_components(node, trace, k, b, p)
                rows.append((inputs, columns, weights, values, weights * values))
            # SPEC 3.3: a user rule sees the whole node at once.
            user = None
            if rule.func is not None:
                layout = _layout(net, k, b, rows, bias_x, h, beta)
                user = np.split(rule.evaluate(layout), layout.indptr[1:-1])
            for p, (inputs, columns, _weights, _values, kappa) in enumerate(rows):
                beta_p = beta[p]
                if beta_p == 0:
                    continue
                if columns.size == 0:
                    # SPEC 3.6: no structural non-zero: every element of every input.
                    for src in node.inputs:
                        node_beta_in[src][b] += beta_p / n_in
                    fallback[b, k] += abs(beta_p)
                    continue
                nz = kappa != 0
                if not nz.any():
                    # SPEC 3.6: uniform over the structural non-zeros of the unscaled row.
                    msgs = np.full(columns.size, beta_p / columns.size)
                    fallback[b, k] += abs(beta_p)
                else:
                    if user is not None:
                        scores = np.zeros(kappa.size)
                        scores[nz] = user[p]
                    else:
                        scores = _builtin_scores(rule.name, kappa, bias_x[p], h[p])
                    msgs = row_messages(kappa, scores, beta_p, temperature,
                                        weights=rule.returns == "weights")
                # SPEC 3.5: beta_{u_i}[q] += alpha[p, (i, q)] * beta_n[p].
                for i, src in enumerate(node.inputs):
                    mine = inputs == i
                    np.add.at(node_beta_in[src][b], columns[mine], msgs[mine])
    return node_beta, node_beta_in, fallback
