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

from ..errors import InputShapeError
from ..tolerance import relative_error
from .linearize import linearize, reverse

__all__ = ["Boundary", "IntegratedGradients", "Region", "Segment", "integrated_gradients",
           "region"]

MAX_PIECES = 100_000


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
    dpre, dval = net.frozen_values(trace, d.reshape(1, -1), bias=False)
    best = [np.inf, None]      # t_hi and its boundary
    worst = [-np.inf, None]    # t_lo and its boundary

    def update(k, t_up, t_down, kind, values):
        # t_up: crossing t >= 0 of each constraint (inf if none), t_down: t <= 0
        if t_up.size and np.min(t_up) < best[0]:
            e = int(np.argmin(t_up))
            best[:] = [float(t_up.flat[e]), (k, e, kind, values(e, True))]
        if t_down.size and np.max(t_down) > worst[0]:
            e = int(np.argmax(t_down))
            worst[:] = [float(t_down.flat[e]), (k, e, kind, values(e, False))]

    for k in range(1, len(net.nodes)):
        node = net.nodes[k]
        if node.kind == "max":
            _max_crossings(k, node, trace, dval, update)
        elif trace.pieces[k] is not None:
            _activation_crossings(k, node, trace, dpre, update)
    return Segment(worst[0], best[0], _boundary(worst[1]), _boundary(best[1]))


def _boundary(b):
    return None if b is None else Boundary(*b)


def _activation_crossings(k, node, trace, dpre, update):
    """Crossings of ``eta_{k-1} <= z0 + t dz <= eta_k`` for every element of node ``k``."""
    act = node.activation
    piece = trace.pieces[k][0].astype(np.int64)
    z0, dz = trace.pre[k][0], dpre[k][0]
    size = act.size
    inf = np.full((size, 1), np.inf)
    padded = np.concatenate([-inf, act.breaks, inf], axis=1)
    rows = np.arange(size)
    lo, hi = padded[rows, piece], padded[rows, piece + 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        t_hi_bound = (hi - z0) / dz   # where z reaches the upper breakpoint
        t_lo_bound = (lo - z0) / dz
    pos, neg = dz > 0, dz < 0
    # moving up: dz > 0 reaches hi at t >= 0 and lo at t <= 0; dz < 0 the other way
    t_up = np.where(pos, t_hi_bound, np.where(neg, t_lo_bound, np.inf))
    t_down = np.where(pos, t_lo_bound, np.where(neg, t_hi_bound, -np.inf))
    t_up = np.where(np.isnan(t_up), np.inf, np.maximum(t_up, 0.0))
    t_down = np.where(np.isnan(t_down), -np.inf, np.minimum(t_down, 0.0))

    def values(e, up):
        return float(hi[e] if (dz[e] > 0) == up else lo[e])

    update(k, t_up, t_down, "breakpoint", values)


def _max_crossings(k, node, trace, dval, update):
    """Crossings of ``u_sel(t) - u_q(t) >= 0`` for every other candidate ``q``."""
    src = node.inputs[0]
    window = node.window
    safe = np.where(window >= 0, window, 0)
    sel = trace.selected[k][0]
    u0, du = trace.values[src][0], dval[src][0]
    g0 = u0[sel][:, None] - u0[safe]
    dg = du[sel][:, None] - du[safe]
    other = (window >= 0) & (safe != sel[:, None])
    g0 = np.maximum(g0, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        cross = -g0 / dg
    t_up = np.where(other & (dg < 0), cross, np.inf)
    t_down = np.where(other & (dg > 0), cross, -np.inf)
    t_up, t_down = t_up.min(axis=1), t_down.max(axis=1)
    q_up = safe[np.arange(len(sel)), np.argmin(np.where(other & (dg < 0), cross, np.inf),
                                               axis=1)]
    q_down = safe[np.arange(len(sel)), np.argmax(np.where(other & (dg > 0), cross, -np.inf),
                                                 axis=1)]

    def values(e, up):
        return int(q_up[e] if up else q_down[e])

    update(k, t_up, t_down, "max candidate", values)


def region(net, x, target=None):
    """The linear region ``R(x)`` of ``net`` at one input ``x`` (SPEC section 7).

    Parameters
    ----------
    net : Network
    x : array_like, shape net.input_shape
    target : as for :func:`refbbp.linearize` (default: the predicted class)

    Returns
    -------
    Region
    """
    return Region(net, x, target)


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
    """

    attributions: np.ndarray
    n_pieces: int
    breaks: np.ndarray
    value: float
    baseline_value: float
    completeness_error: float
    target: np.ndarray


def _linear_scale(lin):
    x, w = lin.trace.values[0], lin.grads[0]
    s = np.abs(w * x).sum() + abs(float(lin.value))
    for t in lin.node_bias_terms():
        s += np.abs(t).sum()
    return float(s)


def integrated_gradients(net, x, baseline=None, target=None, *, max_pieces=MAX_PIECES,
                         tol=1e-13):
    """Exact Integrated Gradients of ``f = v . logits`` along ``baseline + t (x -
    baseline)``, region by region (SPEC section 7).

    Parameters
    ----------
    net : Network
    x : array_like, shape net.input_shape
    baseline : array_like, shape net.input_shape, optional
        Default zeros.
    target : as for :func:`refbbp.linearize`
        Resolved at ``x`` (``None``: the class predicted at ``x``) and kept along the path.
    max_pieces : int
        Give up (``RuntimeError``) after this many pieces.
    tol : float
        Pieces shorter than this (in ``t``) are stepped over; they change the result by at
        most ``tol * |w . (x - baseline)|``.

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
    end = linearize(net, x, target)
    v = np.asarray(end.target, np.float64)
    start = linearize(net, x0, v)
    d = x - x0
    total = np.zeros(x.size)
    abs_total = 0.0
    breaks = [0.0]
    t = 0.0
    while t < 1.0:
        if len(breaks) > max_pieces:
            raise RuntimeError(
                f"integrated_gradients: the path crossed more than {max_pieces} linear "
                "regions; raise max_pieces if that is expected")
        t_next, w = _next_piece(net, x0, d, t, v, tol)
        contrib = (t_next - t) * (w * d.ravel())
        total += contrib
        abs_total += float(np.abs(contrib).sum())
        breaks.append(t_next)
        t = t_next
    attributions = total.reshape(x.shape)
    value, base_value = float(end.value), float(start.value)
    scale = abs_total + _linear_scale(end) + _linear_scale(start)
    err = abs(float(total.sum()) - (value - base_value))
    return IntegratedGradients(
        attributions=attributions, n_pieces=len(breaks) - 1, breaks=np.array(breaks),
        value=value, baseline_value=base_value,
        completeness_error=float(relative_error(err, scale)), target=v)


def _next_piece(net, x0, d, t, v, tol):
    """The piece of the path that starts at ``t``: its end and the gradient on it.

    The region at the point ``x0 + t d`` itself is tried first; where its segment ends
    (within ``tol``) at ``t`` (``t`` lies on a boundary and the path leaves the region),
    a probe further along is taken, and moved back to halfway between ``t`` and where its
    region starts until that region reaches back to ``t``."""
    def gradient(trace):
        return reverse(net, trace, v[None])[0][0]

    s = t
    for _ in range(200):
        trace = net.trace((x0 + s * d)[None])
        seg = _segment(net, trace, d)
        lo, hi = s + seg.t_lo, min(1.0, s + seg.t_hi)
        if lo <= t + tol and hi > t + tol:
            return (1.0 if hi >= 1.0 - tol else hi), gradient(trace)
        if hi <= t + tol:          # the region at s ends at t: look further along
            s = t + (1.0 - t) / 2 if s == t else (t + s) / 2
        else:                      # the region at s starts after t: look closer to t
            s = (t + lo) / 2
        if s - t <= tol:
            end = min(1.0, t + tol)
            return end, gradient(net.trace((x0 + end * d)[None]))
    raise RuntimeError(f"integrated_gradients: no linear region found after t = {t!r}")
