"""``refbbp.bbp``: bias backpropagation (SPEC section 3, BBp paper Algorithm 1).

The driver: validate the arguments, compute the local linear model (forward trace and
gradients ``g_n``), then visit the nodes from the output back to the input. At each
node the own bias is added (SPEC 3.1) and the node's rows send their beta to their
inputs (SPEC 3.2-3.6), either through the Cython kernel (``backend="cython"``, this
module with ``kernels.py``) or through the NumPy reference (``backend="numpy"``,
``refbbp/bbp/reference.py``), which share this function's contract.
"""

from __future__ import annotations

import math
import time

import numpy as np
from threadpoolctl import ThreadpoolController

from .. import _core
from ..network.linearize import linearize, local_linear_model, target_vectors
from ..network.start import resolve_start, start_input
from . import reference
from .attribution import Attribution, Layer
from .kernels import Workspace, check_n_threads, reverse_node
from .rules import RowLayout, resolve_rule
from .structure import node_structures

__all__ = ["bbp", "check_temperature", "propagate_cython"]

BACKENDS = ("cython", "numpy")


def check_temperature(temperature):
    """Validate ``temperature``: a real number in [0, inf] (0: hard maximum, inf: uniform)."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.integer,
                                                                     np.floating)):
        raise TypeError(f"temperature must be a real number in [0, inf], got "
                        f"{type(temperature).__name__}")
    t = float(temperature)
    if math.isnan(t) or t < 0:
        raise ValueError(f"temperature must be in [0, inf] (0: the maximum-score components "
                         f"share equally, inf: uniform split), got {temperature!r}")
    return t


def bbp(net, x, target=None, rule="sign", temperature=1.0, backend="cython",
        return_layers=False, n_threads=None, start=None):
    """Bias backpropagation: distribute the bias ``b^x`` of the local linear model over
    the input features (SPEC section 3, BBp paper Algorithm 1).

    At ``x`` the network is exactly ``f(x) = w . x + b^x``. Every node ``n`` carries
    ``beta_n``: it receives messages from its consumers, adds its own bias term
    ``g_n * b^x_n`` (activation offsets included), and each of its rows ``p`` splits
    ``beta_n[p]`` over its non-zero components ``kappa[p, (i, q)] = A_i^x[p, q] u_i[q]``
    -- across all inputs ``i`` of the node -- with weights ``alpha = softmax(s / T)`` of
    the rule's scores. A max node's row is the selection of the chosen input element: its
    single component, which receives all of its beta. Rows without a non-zero component
    split their beta uniformly over the structural non-zeros of the unscaled row (every
    entry, for a dense layer; the window, for a max node), or, with none, over every
    element of the node's inputs; the mass that took these fallbacks is reported.

    Parameters
    ----------
    net : Network
        From :func:`refbbp.load`.
    x : array_like, shape net.input_shape or (batch, *net.input_shape)
    target : None, "pred", "top2", int, sequence of int, or array, optional
        What to explain, as in :func:`refbbp.linearize`: the predicted class (default),
        a class index (or one per input), top-1 minus top-2, or a float vector of shape
        (n_outputs,) or (batch, n_outputs) weighting the logits.
    rule : {"sign", "deviation"} or callable, optional
        ``"sign"``: ``s = -sign(b^x[p]) * kappa`` (paper eq. 14); ``"deviation"``:
        ``s = |h[p] / n_p - kappa|`` (eq. 16); or a callable taking a
        :class:`~refbbp.RowLayout` (one node, one input: all non-zero components, row
        after row) and returning scores of shape (m,), or weights if it is wrapped with
        :func:`~refbbp.weights_rule` (each row must sum to 1; negative weights allowed).
    temperature : float, optional
        ``T`` in [0, inf]: softmax temperature. ``0`` lets the maximum-score components
        share equally; ``inf`` splits uniformly over the non-zero components. Not
        applied to weights.
    backend : {"cython", "numpy"}, optional
        ``"cython"``: the parallel kernel of ``refbbp/_core.pyx``; ``"numpy"``: the
        row-by-row reference of ``refbbp/bbp/reference.py`` (slow; for checking).
    return_layers : bool, optional
        Also return per-node results (:class:`~refbbp.Layer`).
    n_threads : int, optional
        Threads of the Cython kernel (default: OpenMP's default), at least 1; more than
        the CPUs this process may use are capped to that number. Results are bitwise
        identical for any number of threads.
    start : None, int or str, optional
        Explain from this node instead of the input (SPEC section 8): a cut node's index
        or name, or ``"after-normalisation"`` (the output of the input normalisation).
        ``w``, ``b^x`` and ``beta`` are then over the node's output ``z`` at ``x``
        (``b^x`` without the biases upstream of it); ``layers`` and ``fallback`` are
        those of the cut network (:meth:`Network.from_node`), and ``.start`` names the
        node.

    Returns
    -------
    Attribution
        ``beta`` (shaped like x), ``w``, ``grad_input = w * x``, ``bias_x = b^x``,
        ``value = f(x)``, ``fallback`` per node, and ``layers`` if asked for.
        ``attribution.completeness()`` checks the identities of SPEC section 3;
        ``attribution.start`` names the node it starts from.

    Raises
    ------
    ValueError, TypeError
        Bad ``rule``, ``temperature``, ``backend``, ``n_threads`` or ``target``; a user
        rule returning values of the wrong shape, non-finite values, or weights that do
        not sum to 1 (the message names the node and the first failing row).
    InputShapeError
        ``x`` does not fit the network.

    Examples
    --------
    >>> from refbbp import data
    >>> net = refbbp.load(data.model_path())
    >>> x = data.load_samples()[0][0]
    >>> att = refbbp.bbp(net, x, rule="sign", temperature=1.0)
    >>> att.beta.shape == x.shape
    True
    >>> att.completeness().ok()
    True
    """
    s = resolve_start(net, start)
    if s:
        sub, z = start_input(net, x, s)
        return bbp(sub, z, target, rule, temperature, backend, return_layers, n_threads)
    rule_ = resolve_rule(rule)
    temperature = check_temperature(temperature)
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} not understood: expected one of "
                         f"{', '.join(map(repr, BACKENDS))}")
    if not isinstance(return_layers, (bool, np.bool_)):
        raise TypeError(f"return_layers must be a bool, got {type(return_layers).__name__}")
    n_threads = check_n_threads(n_threads) if backend == "cython" else (
        None if n_threads is None else check_n_threads(n_threads))

    timings = {}
    t0 = time.perf_counter()
    # Before the forward pass reads node.weights: each matrix is checked against its
    # node's kernel structure, which is rebuilt if the matrix changed and refused if it
    # is corrupt (structure.py, "Safety"; scipy's products would not check it).
    structures = node_structures(net)
    timings["prepare"] = time.perf_counter() - t0
    if backend == "cython":
        # One reverse pass: the kernel computes every node's gradient and BBp messages
        # from the same rows (SPEC 2 and 3).
        t0 = time.perf_counter()
        # The forward pass's matrix products run on one BLAS thread: BLAS worker threads
        # keep spinning after a call (OpenBLAS: up to ~0.1 s) and would compete with the
        # kernel's threads that follow (STL-10 net: 40 ms of its 170).
        with _blas_controller().limit(limits=1, user_api="blas"):
            trace = net.trace(x)
        v = target_vectors(trace.logits, target, net.n_outputs)
        timings["forward"] = time.perf_counter() - t0
        _check_finite_values(net, trace)
        t0 = time.perf_counter()
        grads, node_beta, node_beta_in, fallback = propagate_cython(
            net, trace, v, rule_, temperature, n_threads, timings, structures)
        lin = local_linear_model(net, trace, v, grads)
        timings["propagate"] = time.perf_counter() - t0
    else:
        t0 = time.perf_counter()
        lin = linearize(net, x, target)
        timings["forward"] = time.perf_counter() - t0
        _check_finite_values(net, lin.trace)
        for k, g in enumerate(lin.grads):
            _check_finite_gradient(net, k, g)
        t0 = time.perf_counter()
        node_beta, node_beta_in, fallback = reference.propagate(net, lin, rule_, temperature)
        timings["propagate"] = time.perf_counter() - t0
        n_threads = None
    _check_finite_beta(net, node_beta)
    return _result(net, lin, rule_, temperature, backend, n_threads, timings,
                   node_beta, node_beta_in, fallback, return_layers)


def _check_finite_values(net, trace):
    for k, val in enumerate(trace.values):
        if not np.all(np.isfinite(val)):
            raise FloatingPointError(
                f"node {k} ({net.nodes[k].name!r}): the forward pass overflowed float64; "
                f"bias attribution is undefined")


def _check_finite_beta(net, node_beta):
    """Refuse a result whose beta overflowed float64 at some node (a user rule's large
    weights can make finite messages add up to inf, and inf - inf to NaN)."""
    for k, beta in enumerate(node_beta):
        if not np.all(np.isfinite(beta)):
            b, p = (int(i[0]) for i in np.nonzero(~np.isfinite(beta)))
            raise FloatingPointError(
                f"node {k} ({net.nodes[k].name!r}): bias attribution overflowed float64 "
                f"at element {p}" + (f" of input {b}" if beta.shape[0] > 1 else "")
                + ": the rule's weights are too large")


def _check_finite_gradient(net, k, g):
    if not np.all(np.isfinite(g)):
        raise FloatingPointError(
            f"node {k} ({net.nodes[k].name!r}): the gradient pass overflowed float64; "
            f"bias attribution is undefined")


def _result(net, lin, rule, temperature, backend, n_threads, timings, node_beta,
            node_beta_in, fallback, return_layers):
    trace = lin.trace
    one = (lambda a: a) if trace.batched else (lambda a: a[0])
    shape = (-1,) + net.input_shape
    x = trace.values[0]
    beta = node_beta[0].reshape(shape)
    layers = None
    if return_layers:
        cuts = set(net.cut_nodes())
        layers = []
        for k, node in enumerate(net.nodes):
            bx = trace.local_bias(k)
            own = lin.grads[k] * bx if node.kind == "affine" else np.zeros_like(bx)
            layers.append(Layer(
                index=k, name=node.name, op=node.op, kind=node.kind, shape=node.shape,
                is_cut=k in cuts, beta=one(node_beta[k]), beta_in=one(node_beta_in[k]),
                own=one(own), g=one(lin.grads[k]), h=one(trace.values[k]),
                bias_x=one(bx), fallback=one(fallback[:, k])))
    total = fallback.sum(1)
    return Attribution(
        beta=one(beta), w=lin.w, grad_input=one((lin.grads[0] * x).reshape(shape)),
        bias_x=lin.bias_x, value=lin.value, fallback=one(fallback),
        fallback_total=one(total) if trace.batched else float(total[0]),
        layers=layers, linear=lin, rule=rule.name, temperature=temperature, backend=backend,
        n_threads=n_threads, timings=timings, node_beta=node_beta,
        node_beta_in=node_beta_in)


def propagate_cython(net, trace, v, rule, temperature, n_threads, timings=None,
                     structures=None):
    """Gradients and BBp through the Cython kernel, in one reverse pass over the nodes:
    at node ``n`` its gradient ``g_n`` and its ``beta_n^in`` are complete (every
    consumer came first); one pass over its rows sends ``c g_n A`` and the BBp messages
    to its inputs (the same contract as ``refbbp.bbp.reference.propagate``, which takes
    the gradients of ``refbbp.linearize``).

    Parameters
    ----------
    net : Network
    trace : Trace
        The forward pass.
    v : ndarray, shape (batch, n_outputs)
        ``df/dlogits``.
    rule : Rule
    temperature : float
    n_threads : int
    timings : dict, optional
        Receives "nodes": seconds of each node's step.
    structures : list of NodeStructure or None, optional
        ``structure.node_structures(net)``, if the caller has them.

    Returns
    -------
    grads : list of ndarray, shape (batch, node.size)
        ``g_n = df/dh_n``.
    node_beta, node_beta_in : list of ndarray, shape (batch, node.size)
        Per node: the total ``beta_n`` and the received ``beta_n^in``.
    fallback : ndarray, shape (batch, n_nodes)
        Per input and node, the beta mass that took a fallback of SPEC 3.6.

    Raises
    ------
    FloatingPointError
        A gradient overflows float64 (naming the node), or a row's messages do.
    """
    nodes = net.nodes
    batch = trace.values[0].shape[0]
    if structures is None:
        structures = node_structures(net)
    workspace = Workspace()
    grads = [np.zeros((batch, node.size)) for node in nodes]
    grads[net.output] += v
    node_beta_in = [np.zeros((batch, node.size)) for node in nodes]
    node_beta = [None] * len(nodes)
    fallback = np.zeros((batch, len(nodes)))
    per_node = {}
    for k in range(len(nodes) - 1, -1, -1):
        t_node = time.perf_counter()
        node = nodes[k]
        _check_finite_gradient(net, k, grads[k])
        # SPEC 3.1: own bias g_n * b^x_n (affine nodes; offsets d are part of b^x).
        # b^x = c * b + d, as Trace.local_bias computes it (same bits), reusing c and d.
        cd = trace.slopes_offsets(k)
        if node.kind != "affine":
            bias_x = np.zeros((batch, node.size))
        elif cd is None:
            bias_x = np.broadcast_to(node.bias, (batch, node.size))
        else:
            bias_x = cd[0] * node.bias + cd[1]
        if node.kind == "affine":
            node_beta[k] = node_beta_in[k] + grads[k] * bias_x
        else:
            node_beta[k] = node_beta_in[k].copy()
        if node.kind == "input":
            continue
        st = structures[k]
        for b in range(batch):
            beta, g = node_beta[k][b], grads[k][b]
            has_beta, has_grad = bool(np.any(beta)), bool(np.any(g))
            if not (has_beta or has_grad):
                continue
            u = _stacked_inputs(trace, node, b)
            slope = np.ascontiguousarray(cd[0][b]) if cd is not None else np.ones(node.size)
            rows = st.max_rows(trace.selected[k][b]) if node.kind == "max" else st.rows
            h = np.ascontiguousarray(trace.values[k][b])
            bx = np.ascontiguousarray(bias_x[b])
            ext = None
            if rule.func is not None and has_beta:
                layout, entries = layout_from_structure(net, k, st, rows, u, slope, bx, h,
                                                        beta)
                ext = np.zeros(st.nnz)
                ext[entries] = rule.evaluate(layout)
            code = rule.code if rule.func is None or has_beta else _core.RULE_SIGN
            grad, received, fb = reverse_node(
                st, rows, u, slope, bx, h, np.ascontiguousarray(g) if has_grad else None,
                beta, rule_code=code, temperature=temperature, n_threads=n_threads,
                workspace=workspace, ext=ext, where=f"node {k} ({node.name!r})")
            fallback[b, k] = float(np.sum(fb))
            for i, src in enumerate(node.inputs):
                lo, hi = st.offsets[i], st.offsets[i + 1]
                node_beta_in[src][b] += received[lo:hi]
                if grad is not None:
                    grads[src][b] += grad[lo:hi]
        per_node[k] = time.perf_counter() - t_node
    if timings is not None:
        timings["nodes"] = dict(sorted(per_node.items()))
    return grads, node_beta, node_beta_in, fallback


_BLAS = []


def _blas_controller():
    """threadpoolctl's view of the loaded thread pools, found once (a fresh
    ``threadpool_limits`` scans the process's libraries on every call: ~1 ms)."""
    if not _BLAS:
        _BLAS.append(ThreadpoolController())
    return _BLAS[0]


def _stacked_inputs(trace, node, b):
    """The node's input values for input ``b``, stacked in ``node.inputs`` order."""
    if len(node.inputs) == 1:
        return np.ascontiguousarray(trace.values[node.inputs[0]][b])
    return np.concatenate([trace.values[i][b] for i in node.inputs])


def layout_from_structure(net, k, st, rows, u, slope, bias_x, h, beta):
    """The :class:`RowLayout` of node ``k`` for one input, from its structure
    (vectorised; the reference builds the same layout row by row).

    Returns
    -------
    layout : RowLayout
    entries : ndarray of int64, shape (m,)
        Node-wide index of each component among the structure's entries.
    """
    node = net.nodes[k]
    cols, data = st.entries(rows)
    counts = np.diff(st.entry_start)
    entry_row = np.repeat(np.arange(st.n_rows), counts)
    weight = slope[entry_row] * data
    value = u[cols]
    kappa = weight * value
    entries = np.flatnonzero(kappa)
    row = entry_row[entries]
    indptr = np.zeros(st.n_rows + 1, np.int64)
    np.cumsum(np.bincount(row, minlength=st.n_rows), out=indptr[1:])
    col = cols[entries]
    inp = np.searchsorted(st.offsets, col, side="right") - 1
    layout = RowLayout(node=node, index=k, indptr=indptr, kappa=kappa[entries],
                       weight=weight[entries], value=value[entries], input=inp,
                       column=col - st.offsets[inp], row=row, bias_x=bias_x, h=h, beta=beta)
    return layout, entries
