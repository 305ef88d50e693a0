"""The linear region ``R(x)`` of a piecewise-linear network and exact Integrated
Gradients (SPEC section 7).

``R(x)`` is the set of inputs at which every activation element lies in the same piece
as at ``x`` and every max node selects the same candidate. On it the network is the
local linear model ``f = w . x' + b^x``. Along a line ``x + t d`` each pre-activation is
affine in ``t`` inside ``R(x)``, so the interval of ``t`` that stays in the closure of
``R(x)`` (:meth:`Region.segment`) is read from one forward-mode pass of ``d`` through the
frozen local maps (:meth:`Network.frozen_values` with ``bias=False``).

Exact IG (:func:`integrated_gradients`) walks the straight path from the baseline to
``x`` region by region, so that ``sum IG = f(x) - f(x0)`` to float64 accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._progress import progress
from ..errors import InputShapeError, MemoryBudgetError
from ..tolerance import relative_error
from .linearize import linearize, reverse
from .nodes import matrix_format
from .start import from_start, resolve_start, start_input
from .trace import matmul_rows

__all__ = ["Boundary", "IntegratedGradients", "Radius", "Region", "Segment",
           "integrated_gradients", "region"]

MAX_PIECES = 100_000
#: Work memory of :meth:`Region.radius` (the chunk of input directions), bytes.
RADIUS_BYTES = 1 << 30
#: ``method="bound"`` multiplies every norm bound by this, so that rounding in its own
#: arithmetic (relative error far below 1e-12 over any real depth) cannot make a bound
#: fall under the exact norm.
BOUND_SLACK = 1.0 + 1e-12
NORMS = {"l2": 2, "linf": 1}   # the ball's norm -> q of the dual norm of the normals


@dataclass(frozen=True)
class Boundary:
    """The constraint of ``R(x)`` that ends a segment on one side.

    Attributes
    ----------
    node : int
        Index of the node.
    element : int
        The element (activation) or output (max node) of that node.
    kind : {"breakpoint", "max candidate"}
    value : float or int
        The breakpoint the pre-activation reaches, or the input element of the max
        node's window that would overtake the selected one.
    """

    node: int
    element: int
    kind: str
    value: object


@dataclass(frozen=True)
class Segment:
    """``x + t d`` is in the closure of ``R(x)`` exactly for ``t`` in ``[t_lo, t_hi]``.

    ``lo`` and ``hi`` are the binding constraints (``None`` where unbounded)."""

    t_lo: float
    t_hi: float
    lo: Boundary | None
    hi: Boundary | None


@dataclass(frozen=True)
class Radius:
    """The largest ball (``norm``) around ``x`` inside ``R(x)``, or a lower bound of its
    radius (``method="bound"``).

    Attributes
    ----------
    value : float
        ``min_i slack_i / ||a_i||_q`` over the constraints ``a_i . x' + c_i >= 0`` of
        ``R(x)`` (``q`` the dual norm), ``inf`` when nothing binds.
    norm : {"l2", "linf"}
    method : {"exact", "bound"}
    binding : Boundary or None
        The constraint that attains it (for a bound: the one attaining the bound).
    slack : float
        Its slack ``a . x + c`` at ``x``.
    normal_norm : float
        ``||a||_q`` of the binding constraint (for a bound: the upper bound used).
    direction : ndarray, shape input_shape, or None
        Exact radius only: a direction of unit ``norm`` along which the binding
        constraint is reached at ``t = value`` (``-a / ||a||_2`` for L2, ``-sign(a)``
        for L-infinity, ``a`` oriented so that the constraint reads ``a . x' + c >= 0``).
    n_constraints : int
        Constraints with a non-zero normal that were considered.
    """

    value: float
    norm: str
    method: str
    binding: Boundary | None
    slack: float
    normal_norm: float
    direction: np.ndarray | None
    n_constraints: int

    def __str__(self):
        kind = "exact radius" if self.method == "exact" else "radius lower bound"
        where = "nothing binds" if self.binding is None else (
            f"binding: node {self.binding.node}, element {self.binding.element}, "
            f"{self.binding.kind} {self.binding.value}")
        return f"{self.norm} {kind} {self.value:.6g} ({where})"


class Region:
    """The linear region ``R(x)`` of a network at one input ``x`` (SPEC section 7).

    Attributes
    ----------
    network : Network
    x : ndarray, shape input_shape
    linear : LocalLinearModel
        The model ``f = w . x' + b^x`` that holds on the region.
    """

    def __init__(self, network, x, target=None):
        x = np.asarray(x)
        if x.shape != network.input_shape:
            raise InputShapeError(
                f"region: x of shape {x.shape} is not one input of shape "
                f"{network.input_shape}; a linear region is taken at one input at a time "
                "(loop over a batch)")
        self.network = network
        self.linear = linearize(network, x, target)
        self.x = self.linear.trace.values[0][0].reshape(network.input_shape)
        self._exact_norms = None

    @property
    def trace(self):
        return self.linear.trace

    @property
    def w(self):
        return self.linear.w

    @property
    def bias_x(self):
        return float(self.linear.bias_x)

    def segment(self, direction):
        """The interval of ``t`` with ``x + t * direction`` in the closure of ``R(x)``.

        Parameters
        ----------
        direction : array_like, shape input_shape

        Returns
        -------
        Segment
            ``t_lo <= 0 <= t_hi`` (``-inf`` / ``inf`` when unbounded) and the binding
            constraint on each side.
        """
        net = self.network
        d = np.asarray(direction, np.float64)
        if d.shape != net.input_shape:
            raise InputShapeError(f"segment: direction of shape {d.shape}, expected "
                                  f"{net.input_shape}")
        if not np.all(np.isfinite(d)):
            raise InputShapeError("segment: direction contains NaN or infinite values")
        return _segment(net, self.trace, d)

    def radius(self, norm="l2", method="exact", *, max_bytes=RADIUS_BYTES, show_progress=None):
        """The radius of the largest ``norm`` ball around ``x`` inside ``R(x)``.

        Every constraint of ``R(x)`` is ``a . x' + c >= 0`` with ``a`` the gradient of a
        pre-activation element (one constraint per breakpoint next to its piece) or of
        ``u_sel - u_q`` for a max node's selected and other candidates; its slack at
        ``x`` is read from the trace. The radius is ``min slack / ||a||_q`` with ``q``
        the dual norm (2 for ``"l2"``, 1 for ``"linf"``).

        Parameters
        ----------
        norm : {"l2", "linf"}
        method : {"exact", "bound"}
            ``"exact"``: every ``||a||_q`` from forward-mode passes of the input's unit
            vectors through the frozen local maps, in chunks under ``max_bytes`` (about
            ``n_inputs`` forward passes of work, multi-threaded by BLAS, with a progress
            bar); the passes give both norms, kept for the other one. ``"bound"``: a
            sound lower bound of the radius at the cost of about one forward pass, from
            upper bounds of ``||a||_q`` (the triangle inequality through ``|A|`` element
            by element and, for L2, per-node operator norms ``sqrt(||A||_1
            ||A||_inf)``).
        max_bytes : int
            Work memory of the exact method's chunk of directions.
        show_progress : bool, optional
            Default: on a terminal.

        Returns
        -------
        Radius
        """
        if norm not in NORMS:
            raise ValueError(f"radius: norm={norm!r}; expected one of {sorted(NORMS)}")
        if method not in ("exact", "bound"):
            raise ValueError(f"radius: method={method!r}; expected 'exact' or 'bound'")
        q = NORMS[norm]
        if method == "exact":
            if self._exact_norms is None:     # both norms from one set of passes
                self._exact_norms = _exact_normal_norms(self.network, self.trace, max_bytes,
                                                        show_progress)
            norms = self._exact_norms[q]
        else:
            norms = _bound_normal_norms(self.network, self.trace, q)
        best, count = _min_ratio(self.network, self.trace, norms)
        if best is None:
            return Radius(np.inf, norm, method, None, np.inf, 0.0, None, count)
        value, slack, a_norm, boundary, side = best
        direction = None
        if method == "exact":
            a = _normal(self.network, self.trace, boundary, side)
            direction = (-a / np.linalg.norm(a) if q == 2 else -np.sign(a))
            direction = direction.reshape(self.network.input_shape)
        return Radius(float(value), norm, method, boundary, float(slack), float(a_norm),
                      direction, count)

    def contains(self, x2):
        """Whether ``x2`` lies in ``R(x)``: the same activation pieces and the same max
        selections (SPEC section 1's piece and tie conventions)."""
        t2 = self.network.trace(np.asarray(x2).reshape(self.network.input_shape))
        t1 = self.trace
        for a, b in zip(t1.pieces + t1.selected, t2.pieces + t2.selected):
            if a is not None and not np.array_equal(a, b):
                return False
        return True

    def __repr__(self):
        return f"<Region of {self.network!r} at an input of shape {self.x.shape}>"


def _segment(net, trace, d):
    """:meth:`Region.segment` of the region of ``trace`` (one input) along ``d``."""
    t_lo, t_hi, lo, hi = _segments(net, trace, d, boundaries=True)
    return Segment(float(t_lo[0]), float(t_hi[0]), lo[0], hi[0])


def _segments(net, trace, d, boundaries=False):
    """The segment along ``d`` of the region of every input of ``trace`` (batch B).

    Returns ``t_lo``, ``t_hi`` (B,) and, with ``boundaries``, the binding
    :class:`Boundary` (or ``None``) on each side of each input."""
    batch = trace.values[0].shape[0]
    pre, val = net.frozen_values(trace, d.reshape(1, -1), bias=False)
    rows = np.arange(batch)
    t_hi, t_lo = np.full(batch, np.inf), np.full(batch, -np.inf)
    hi = [None] * batch   # (node, element, kind, value) of the binding constraint
    lo = [None] * batch

    for k in range(1, len(net.nodes)):
        node = net.nodes[k]
        if node.kind == "max":
            found = _max_crossings(node, trace.selected[k], trace.values[node.inputs[0]],
                                   val[node.inputs[0]])
        elif trace.pieces[k] is not None:
            found = _activation_crossings(node, trace.pieces[k], trace.pre[k], pre[k])
        else:
            continue
        t_up, t_down, what = found
        for t_side, best, ends, pick, up in ((t_up, t_hi, hi, np.argmin, True),
                                             (t_down, t_lo, lo, np.argmax, False)):
            if not t_side.size:
                continue
            e = pick(t_side, axis=1)
            t = t_side[rows, e]
            better = t < best if up else t > best
            best[better] = t[better]
            if boundaries:
                for b in np.flatnonzero(better):
                    ends[b] = Boundary(k, int(e[b]), *what(b, int(e[b]), up))
    return t_lo, t_hi, lo, hi


def _piece_edges(breaks, pieces):
    """The lower and upper edge of each element's piece (``-inf`` below the first
    breakpoint, ``inf`` above the last), shaped like ``pieces`` (..., size)."""
    size, nb = breaks.shape
    edges = np.empty((size, nb + 2))        # -inf, the breakpoints, inf
    edges[:, 0], edges[:, -1] = -np.inf, np.inf
    edges[:, 1:-1] = breaks
    lower = np.arange(size) * (nb + 2) + pieces
    return edges.ravel()[lower], edges.ravel()[lower + 1]


def _candidates(window, selected):
    """A max node's candidates as input elements (padding read as element 0), and which
    of them are constraints of ``R(x)``: real ones other than the selected candidate.
    ``selected`` (..., size) broadcasts against the window (size, K)."""
    safe = np.where(window >= 0, window, 0)
    return safe, (window >= 0) & (safe != selected[..., None])


def _activation_crossings(node, pieces, z0, dz):
    """Crossings of ``eta_{p-1} < z0 + t dz <= eta_p`` by every element (batch, size):
    ``t_up`` (the first at ``t >= 0``, ``inf`` if none), ``t_down`` (``t <= 0``)."""
    lower, upper = _piece_edges(node.activation.breaks, pieces)
    # moving up in t: z rises to the upper edge if dz > 0, falls to the lower one if not
    rising = dz > 0
    up_edge = np.where(rising, upper, lower)
    down_edge = np.where(rising, lower, upper)
    flat = dz == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        t_up = np.where(flat, np.inf, np.maximum((up_edge - z0) / dz, 0.0))
        t_down = np.where(flat, -np.inf, np.minimum((down_edge - z0) / dz, 0.0))

    def what(b, e, up):
        return "breakpoint", float(up_edge[b, e] if up else down_edge[b, e])

    return t_up, t_down, what


def _max_crossings(node, selected, u0, du):
    """Crossings of ``u_sel(t) - u_q(t) >= 0`` for every other candidate ``q`` of every
    output (batch, size)."""
    safe, other = _candidates(node.window, selected)
    g0 = np.take_along_axis(u0, selected, axis=1)[:, :, None] - u0[:, safe]
    np.maximum(g0, 0.0, out=g0)
    dg = np.take_along_axis(du, selected, axis=1)[:, :, None] - du[:, safe]
    dg[~other] = 0.0                                           # no constraint
    with np.errstate(divide="ignore", invalid="ignore"):
        cross = -g0 / dg
    up = np.where(dg < 0, cross, np.inf)
    down = np.where(dg > 0, cross, -np.inf)

    def what(b, e, side_up):
        q = np.argmin(up[b, e]) if side_up else np.argmax(down[b, e])
        return "max candidate", int(safe[e, q])

    return up.min(axis=2), down.max(axis=2), what


def region(net, x, target=None, start=None):
    """The linear region ``R(x)`` of ``net`` at one input ``x`` (SPEC section 7).

    Parameters
    ----------
    net : Network
    x : array_like, shape net.input_shape
    target : as for :func:`refbbp.linearize` (default: the predicted class)
    start : None, int or str, optional
        A cut node (SPEC section 8; as for :func:`refbbp.linearize`): the region is then
        the set of that node's outputs ``z'`` around ``z``, its output at ``x``, of the
        network cut there (``Region.network``, ``Region.x`` is ``z``).

    Returns
    -------
    Region
    """
    return Region(*from_start(net, np.asarray(x, np.float64), start), target)


@dataclass(eq=False)
class IntegratedGradients:
    """Exact Integrated Gradients from ``baseline`` to ``x`` (SPEC section 7).

    Attributes
    ----------
    attributions : ndarray, shape input_shape
        ``sum_k (t_{k+1} - t_k) * w_k * (x - baseline)``.
    n_pieces : int
        Linear regions the path crosses (pieces of positive length).
    breaks : ndarray, shape (n_pieces + 1,)
        ``0 = t_0 < t_1 < ... = 1``.
    value, baseline_value : float
        ``f(x)`` and ``f(baseline)`` for ``f = target . logits``.
    completeness_error : float
        ``|sum IG - (f(x) - f(baseline))| / scale``, the scale being the sum of the
        absolute values of the per-piece terms plus the SPEC section 2 scales of the local
        linear models at both ends.
    target : ndarray, shape (n_outputs,)
        The vector ``v`` over the outputs that was explained (fixed at ``x``).
    start : Start
        The node the attributions are over (SPEC section 8; the input unless a start
        node was given).
    """

    attributions: np.ndarray
    n_pieces: int
    breaks: np.ndarray
    value: float
    baseline_value: float
    completeness_error: float
    target: np.ndarray
    start: object


def _linear_scale(lin):
    x, w = lin.trace.values[0], lin.grads[0]
    s = np.abs(w * x).sum() + abs(float(lin.value))
    for t in lin.node_bias_terms():
        s += np.abs(t).sum()
    return float(s)


def integrated_gradients(net, x, baseline=None, target=None, *, start=None,
                         max_pieces=MAX_PIECES, tol=1e-13, max_bytes=RADIUS_BYTES):
    """Exact Integrated Gradients of ``f = v . logits`` along ``baseline + t (x -
    baseline)``, region by region (SPEC section 7).

    Points of the path are probed in batches: each probe's region covers an interval
    of ``t`` (its :meth:`Region.segment` along the path); the gaps the intervals leave
    are probed at their midpoints until the intervals cover ``[0, 1]``. The pieces are
    then the intervals in order, each with the gradient of its probe's region.

    Parameters
    ----------
    net : Network
    x : array_like, shape net.input_shape
    baseline : array_like, shape net.input_shape, optional
        Default zeros.
    target : as for :func:`refbbp.linearize`
        Resolved at ``x`` (``None``: the class predicted at ``x``) and kept along the path.
    start : None, int or str, optional
        A cut node (SPEC section 8): IG of the network cut there, along the straight path
        from the node's output at ``baseline`` to its output at ``x``; the attributions
        are over that node's elements.
    max_pieces : int
        Give up (``RuntimeError``) after finding this many pieces.
    tol : float
        Gaps shorter than this (in ``t``) are not probed; they are given to the next
        piece and change the result by at most ``tol * |w . (x - baseline)|`` each.
    max_bytes : int
        Work memory of a batch of probes (their traces and gradients).

    Returns
    -------
    IntegratedGradients
    """
    x = np.asarray(x, np.float64)
    if x.shape != net.input_shape:
        raise InputShapeError(f"integrated_gradients: x of shape {x.shape} is not one input "
                              f"of shape {net.input_shape}")
    x0 = np.zeros_like(x) if baseline is None else np.asarray(baseline, np.float64)
    if x0.shape != x.shape:
        raise InputShapeError(f"integrated_gradients: baseline of shape {x0.shape}, "
                              f"expected {x.shape}")
    s = resolve_start(net, start)
    if s:
        sub, z = start_input(net, x, s)
        z0 = start_input(net, x0, s)[1]
        return integrated_gradients(sub, z, z0, target, max_pieces=max_pieces, tol=tol,
                                    max_bytes=max_bytes)
    end = linearize(net, x, target)
    v = np.asarray(end.target, np.float64)
    start = linearize(net, x0, v)
    d = x - x0
    per_probe = 8 * 3 * sum(node.size for node in net.nodes) + 1
    batch = int(max(1, min(MAX_BATCH, max_bytes // per_probe)))
    breaks, grads = _path_pieces(net, x0.ravel(), d.ravel(), v, tol, max_pieces, batch)
    terms = np.diff(breaks)[:, None] * (grads * d.ravel())
    total = terms.sum(axis=0)
    value, base_value = float(end.value), float(start.value)
    scale = float(np.abs(terms).sum()) + _linear_scale(end) + _linear_scale(start)
    err = abs(float(total.sum()) - (value - base_value))
    return IntegratedGradients(
        attributions=total.reshape(x.shape), n_pieces=len(breaks) - 1, breaks=breaks,
        value=value, baseline_value=base_value,
        completeness_error=float(relative_error(err, scale)), target=v, start=net.start)


#: Most probes of the path traced at once by :func:`integrated_gradients`.
MAX_BATCH = 256


def _path_pieces(net, x0, d, v, tol, max_pieces, batch):
    """The linear pieces of ``x0 + t d`` on ``[0, 1]``: breaks ``0 = t_0 < ... < t_n
    = 1`` and the gradient of ``v . logits`` on each piece (n, n_inputs)."""
    found = []            # (lo, hi, gradient) of each probe's region, clipped to [0, 1]
    todo = list((np.arange(batch) + 0.5) / batch)      # a first grid of probes
    while todo:
        for i in range(0, len(todo), batch):
            t = np.array(todo[i:i + batch])
            trace = net.trace((x0[None] + t[:, None] * d[None]).reshape(
                (len(t),) + net.input_shape))
            t_lo, t_hi, _, _ = _segments(net, trace, d)
            g = reverse(net, trace, np.broadcast_to(v, (len(t), v.size)))[0]
            found += zip(np.maximum(t + t_lo, 0.0), np.minimum(t + t_hi, 1.0), g)
        found.sort(key=lambda f: f[0])
        breaks, grads = _sweep(found, tol)
        if len(grads) > max_pieces:
            raise RuntimeError(
                f"integrated_gradients: the path crossed more than {max_pieces} linear "
                "regions; raise max_pieces if that is expected")
        todo = [(a + b) / 2 for a, b in _gaps(found) if b - a > tol]
    return np.array(breaks), np.array(grads)


def _sweep(found, tol):
    """Pieces from the probes' intervals (sorted by start): each interval that reaches
    more than ``tol`` past the pieces so far ends the next piece; the others are probes
    of a region already taken (or thinner than ``tol``)."""
    breaks, grads = [0.0], []
    for _lo, hi, g in found:
        if breaks[-1] >= 1.0:
            break
        if hi <= breaks[-1] + tol and hi < 1.0:
            continue
        breaks.append(hi if hi < 1.0 - tol else 1.0)
        grads.append(g)
    return breaks, grads


def _gaps(found):
    """The parts of ``[0, 1]`` the intervals ``found`` (sorted by start) leave uncovered."""
    covered = 0.0
    for lo, hi, _ in found:
        if lo > covered:
            yield covered, lo
        covered = max(covered, hi)
    if covered < 1.0:
        yield covered, 1.0


# ------------------------------------------------------------------ radius
def _constraint_slacks(net, trace, k):
    """Slack of the constraints of node ``k`` at the traced input: an activation node's
    ``(z - lo, hi - z)`` per element (the breakpoints around its piece), a max node's
    ``u_sel - u_q`` per (output, window position), ``inf`` where there is no constraint
    (an unbounded piece, padding, the selected candidate itself)."""
    node = net.nodes[k]
    if node.kind == "max":
        sel = trace.selected[k][0]
        safe, other = _candidates(node.window, sel)
        u = trace.values[node.inputs[0]][0]
        return np.where(other, u[sel][:, None] - u[safe], np.inf)
    z = trace.pre[k][0]
    lower, upper = _piece_edges(node.activation.breaks, trace.pieces[k][0])
    return np.stack([z - lower, upper - z], axis=1)


def _constrained(net, trace):
    """Nodes that carry constraints of ``R(x)``: activated affine nodes and max nodes."""
    return [k for k in range(1, len(net.nodes))
            if net.nodes[k].kind == "max" or trace.pieces[k] is not None]


def _min_ratio(net, trace, norms):
    """``min slack / norm`` over every constraint with a non-zero normal: ``(value,
    slack, norm, Boundary, side)`` or ``None``, and how many such constraints there
    are. ``norms[k]`` has one column (the normal shared by both breakpoints of an
    element) or the window's shape."""
    best = None
    count = 0
    for k, a_norm in norms.items():
        slack = _constraint_slacks(net, trace, k)
        live = (a_norm > 0) & np.isfinite(slack)
        count += int(np.count_nonzero(live))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(live, slack / a_norm, np.inf)
        flat = int(np.argmin(ratio))
        if not np.isfinite(ratio.flat[flat]) or (best is not None and
                                                 ratio.flat[flat] >= best[0]):
            continue
        e, side = np.unravel_index(flat, ratio.shape)
        node = net.nodes[k]
        if node.kind == "max":
            boundary = Boundary(k, int(e), "max candidate", int(node.window[e, side]))
        else:
            edges = _piece_edges(node.activation.breaks[e:e + 1], trace.pieces[k][0][e:e + 1])
            boundary = Boundary(k, int(e), "breakpoint", float(edges[side][0]))
        best = (float(ratio.flat[flat]), float(slack.flat[flat]),
                float(np.broadcast_to(a_norm, ratio.shape).flat[flat]), boundary, int(side))
    return best, count


def _exact_normal_norms(net, trace, max_bytes, show_progress):
    """``||a||_q`` of every constraint normal for ``q`` = 1 and 2 (``{q: {node:
    norms}}``), by forward-mode passes of chunks of the input's unit vectors (each pass
    gives a block of columns of every Jacobian)."""
    keys = _constrained(net, trace)
    acc = {1: {}, 2: {}}
    per_dir = 8 * net.n_inputs
    for k in keys:
        node = net.nodes[k]
        shape = node.window.shape if node.kind == "max" else (node.size, 1)
        for q in acc:
            acc[q][k] = np.zeros(shape)
        per_dir += 8 * (2 * node.window.size if node.kind == "max" else node.size)
    for node in net.nodes[1:]:
        per_dir += 8 * node.size * (2 if node.activation is not None else 1)
    chunk = int(max_bytes // per_dir)
    if chunk < 1:
        raise MemoryBudgetError(
            f"radius: one input direction needs about {per_dir:,} bytes of work memory, "
            f"more than max_bytes={int(max_bytes):,}; raise max_bytes or use "
            "method='bound'")
    chunk = min(chunk, net.n_inputs)
    n = net.n_inputs
    starts = range(0, n, chunk)
    for start in progress(starts, total=len(starts), desc="radius",
                          enabled=show_progress):
        stop = min(n, start + chunk)
        eye = np.zeros((stop - start, n))
        eye[np.arange(stop - start), np.arange(start, stop)] = 1.0
        for k, pre_k, values in net.frozen_pass(trace, eye, bias=False, keep=False):
            if k not in acc[1]:
                continue
            node = net.nodes[k]
            if node.kind == "max":
                du = values[node.inputs[0]]
                sel = trace.selected[k][0]
                safe = _candidates(node.window, sel)[0]
                cols = du[:, sel][:, :, None] - du[:, safe]
            else:
                cols = pre_k[:, :, None]
            for q in acc:
                acc[q][k] += _power_sum(cols, q)
    return {1: acc[1], 2: {k: np.sqrt(a) for k, a in acc[2].items()}}


def _power_sum(a, q):
    """``sum over the batch axis of |a|^q``."""
    return np.einsum("i...,i...->...", a, a) if q == 2 else np.abs(a).sum(axis=0)


def _abs_power(a, power):
    """``|A|^power`` entry by entry, for a CSR or window matrix (same structure)."""
    if matrix_format(a) == "window":
        return a.abs_power(power)
    b = a.copy()
    b.data = np.abs(b.data) ** power
    return b


def _abs_matmul_rows(u, a, power=1, block=256):
    """``u @ (|A|^power).T`` (entry by entry) for a dense, CSR or window matrix."""
    if matrix_format(a) != "dense":
        return matmul_rows(u, _abs_power(a, power))
    a = np.asarray(a)
    out = np.empty((u.shape[0], a.shape[0]))
    for r in range(0, a.shape[0], block):   # |A| a block of rows at a time
        out[:, r:r + block] = u @ (np.abs(a[r:r + block]) ** power).T
    return out


def _abs_col_sums(a, block=256):
    """Column sums of ``|A|``."""
    if matrix_format(a) != "dense":
        return matmul_rows(np.ones((1, a.shape[0])), _abs_power(a, 1).T)[0]
    a = np.asarray(a)
    out = np.zeros(a.shape[1])
    for r in range(0, a.shape[0], block):
        out += np.abs(a[r:r + block]).sum(axis=0)
    return out


def _bound_normal_norms(net, trace, q):
    """Upper bounds of ``||a||_q`` for every constraint normal, in one pass.

    ``B_n[e] >= ||grad h_n[e]||_q`` element by element: ``B_0 = 1``; an affine node's
    pre-activation ``z = sum_i A_i h_i + b`` has ``||grad z_e|| <= sum_i (|A_i| B_i)_e``
    (the triangle inequality), its value ``|c| B_z``; a max node takes its selected
    candidate's bound. For L2 also ``L_n >= ||d h_n / dx||_2`` (operator norm):
    ``L_z <= sum_i ||A_i||_2 L_i`` with ``||A||_2 <= sqrt(||A||_1 ||A||_inf)``,
    ``L_z <= sqrt(sum_e B_z[e]^2)`` (Frobenius), and ``||grad z_e||_2 <= sum_i
    ||row_e(A_i)||_2 L_i``; each bound is the smaller of the two."""
    nodes = net.nodes
    n = len(nodes)
    bound, lip = [None] * n, [None] * n
    bound[0] = np.ones(net.n_inputs)
    lip[0] = 1.0
    norms = {}
    for k in range(1, n):
        node = nodes[k]
        if node.kind == "max":
            src = node.inputs[0]
            sel = trace.selected[k][0]
            bound[k] = bound[src][sel]
            safe = _candidates(node.window, sel)[0]
            pair = bound[src][sel][:, None] + bound[src][safe]
            norms[k] = pair * BOUND_SLACK
            if q == 2:
                mult = np.bincount(sel, minlength=nodes[src].size).max(initial=0)
                lip[k] = min(np.sqrt(mult) * lip[src], _frobenius(bound[k]))
            continue
        z = np.zeros(node.size)
        for i, w in zip(node.inputs, node.weights):
            z += _abs_matmul_rows(bound[i][None], w)[0]
        if q == 2:
            rows = np.zeros(node.size)
            op = 0.0
            for i, w in zip(node.inputs, node.weights):
                row2 = np.sqrt(_abs_matmul_rows(np.ones((1, w.shape[1])), w, power=2)[0])
                rows += row2 * lip[i]
                row1 = _abs_matmul_rows(np.ones((1, w.shape[1])), w)[0]
                op += np.sqrt(row1.max(initial=0) * _abs_col_sums(w).max(initial=0)) * lip[i]
            z = np.minimum(z, rows)
            lip_z = min(op, _frobenius(z))
        cd = trace.slopes_offsets(k)
        if cd is None:
            bound[k] = z
            if q == 2:
                lip[k] = lip_z
            continue
        norms[k] = (z * BOUND_SLACK)[:, None]
        c = np.abs(cd[0][0])
        bound[k] = c * z
        if q == 2:
            lip[k] = min(c.max(initial=0) * lip_z, _frobenius(bound[k]))
    return norms


def _frobenius(b):
    return float(np.sqrt(np.dot(b, b)))


def _normal(net, trace, boundary, side):
    """The normal ``a`` of a constraint, oriented as ``a . x' + c >= 0``, by one reverse
    pass from its node."""
    k, e = boundary.node, boundary.element
    node = net.nodes[k]
    grads = [np.zeros_like(v) for v in trace.values]
    if node.kind == "max":
        src = node.inputs[0]
        grads[src][0, trace.selected[k][0][e]] += 1.0
        grads[src][0, node.window[e, side]] -= 1.0
        top = src
    else:
        seed = np.zeros((1, node.size))
        seed[0, e] = 1.0 if side == 0 else -1.0      # z - lo >= 0, hi - z >= 0
        for i, wt in zip(node.inputs, node.weights_t):
            grads[i] += matmul_rows(seed, wt)
        top = k - 1
    return reverse(net, trace, None, grads=grads, top=top)[0][0]
