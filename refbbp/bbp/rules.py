"""Attribution rules of BBp (SPEC 3.3): how a row's beta is split over its components.

A rule sees one node at a time, for one input, in a vectorised layout: every non-zero
component of every row, row after row (a CSR-style layout, :class:`RowLayout`). It
returns one number per component: a *score* (the default; refbbp then applies
``softmax(s / T)`` row by row, SPEC 3.4) or, for a rule wrapped with
:func:`weights_rule`, the *weight* ``alpha`` itself, which must sum to 1 over each row
(negative weights are allowed, BBp paper section 4.2).

The two rules of the paper are :func:`sign_scores` (``rule="sign"``, eq. 14) and
:func:`deviation_scores` (``rule="deviation"``, eq. 16). Passed as callables they give
the same attribution as their names (the kernel computes the same numbers).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .. import _core
from ..network.nodes import Node

__all__ = ["RowLayout", "Rule", "deviation_scores", "resolve_rule", "sign_scores",
           "weights_rule", "WEIGHT_SUM_RTOL"]

#: Tolerance of the check that weights sum to 1 over each row:
#: ``|sum(alpha) - 1| <= WEIGHT_SUM_RTOL * max(1, sum(|alpha|))``.
WEIGHT_SUM_RTOL = 1e-9

RULE_NAMES = ("sign", "deviation")
#: The kernel's rule code of each named rule (``refbbp/_core.pyx``, ``RULE_*``).
RULE_CODES = {"sign": _core.RULE_SIGN, "deviation": _core.RULE_DEVIATION}


@dataclass(frozen=True, eq=False)
class RowLayout:
    """The non-zero components of every row of one node, for one input (SPEC 3.2).

    A rule is called once per node and input, for the nodes that have bias attribution
    to distribute (``beta`` not all zero), max nodes included (whose rows have at most
    one component), by both backends alike.

    Row ``p`` is element ``p`` of the node; its components are
    ``kappa[indptr[p]:indptr[p+1]]``, listed input by input (in ``node.inputs`` order)
    and, within an input, in increasing element order (for a max node: the selected
    element, the single component). Only non-zero components appear, so a row may be
    empty. ``m`` below is the number of non-zero components of the node.

    Attributes
    ----------
    node : Node
        The node (``node.name``, ``node.op``, ``node.kind``, ``node.shape``).
    index : int
        Its index in ``network.nodes``.
    indptr : ndarray of int64, shape (size + 1,)
        Row pointer into the component arrays.
    kappa : ndarray, shape (m,)
        Components ``kappa = A^x[p, q] * u_i[q]``.
    weight : ndarray, shape (m,)
        Local weights ``A^x[p, q] = c[p] * A[p, q]`` (1 for a max node).
    value : ndarray, shape (m,)
        Input values ``u_i[q]``.
    input : ndarray of int64, shape (m,)
        Which input of the node each component reads (position in ``node.inputs``).
    column : ndarray of int64, shape (m,)
        Which element ``q`` of that input.
    row : ndarray of int64, shape (m,)
        The row ``p`` of each component (``np.repeat(arange(size), counts)``).
    bias_x : ndarray, shape (size,)
        The node's local bias ``b^x = c * b + d`` (0 for a max node).
    h : ndarray, shape (size,)
        The node's output values.
    beta : ndarray, shape (size,)
        The bias attribution ``beta_n`` the rows distribute (received plus own bias).
    """

    node: Node
    index: int
    indptr: np.ndarray
    kappa: np.ndarray
    weight: np.ndarray
    value: np.ndarray
    input: np.ndarray
    column: np.ndarray
    row: np.ndarray
    bias_x: np.ndarray
    h: np.ndarray
    beta: np.ndarray

    @property
    def size(self):
        """Number of rows (elements of the node)."""
        return len(self.indptr) - 1

    @property
    def counts(self):
        """``n_p``, the number of non-zero components of each row, shape (size,)."""
        return np.diff(self.indptr)

    def row_sum(self, values):
        """Sum of ``values`` (shape (m,)) over each row, shape (size,); 0 for empty rows."""
        return np.bincount(self.row, weights=values, minlength=self.size)

    def row_max(self, values):
        """Maximum of ``values`` (shape (m,)) over each row, shape (size,); ``-inf``
        for empty rows."""
        out = np.full(self.size, -np.inf)
        nonempty = np.flatnonzero(self.counts)
        if nonempty.size:
            out[nonempty] = np.maximum.reduceat(values, self.indptr[nonempty])
        return out


def sign_scores(layout):
    """Scores of the "sign" rule (SPEC 3.3, BBp paper eq. 14).

    ``s = -sign(b^x[p]) * kappa``: with a negative bias the large positive components
    get most of it, with a positive bias the most negative ones; with ``b^x[p] = 0``
    all scores are 0 and the split is uniform.

    Parameters
    ----------
    layout : RowLayout

    Returns
    -------
    ndarray, shape (m,)
    """
    sgn = np.where(layout.bias_x > 0, -1.0, np.where(layout.bias_x < 0, 1.0, 0.0))
    return sgn[layout.row] * layout.kappa


def deviation_scores(layout):
    """Scores of the "deviation" rule (SPEC 3.3, BBp paper eq. 16).

    ``s = |h[p] / n_p - kappa|``: components far from an equal share of the node's
    output value get more of its bias.

    Parameters
    ----------
    layout : RowLayout

    Returns
    -------
    ndarray, shape (m,)
    """
    target = layout.h[layout.row] / layout.counts[layout.row]
    return np.abs(target - layout.kappa)


def weights_rule(func):
    """Mark a rule as returning weights ``alpha`` instead of scores.

    The wrapped callable receives a :class:`RowLayout` and returns an array of shape
    ``(m,)``: the share of ``beta[p]`` each component receives. Weights may be negative,
    but over every row with components they must sum to 1 (within
    ``1e-9 * max(1, sum |alpha|)``); refbbp checks this and raises ``ValueError``
    naming the node and the first failing row. The temperature does not apply to weights.

    Examples
    --------
    >>> @refbbp.weights_rule
    ... def proportional(layout):          # alpha = kappa / sum of the row's kappa
    ...     return layout.kappa / layout.row_sum(layout.kappa)[layout.row]
    """
    @functools.wraps(func)
    def wrapper(layout):
        return func(layout)

    wrapper.bbp_returns = "weights"
    return wrapper


@dataclass(frozen=True)
class Rule:
    """A resolved rule: ``code`` is the kernel's rule code, ``_core.RULE_SIGN``,
    ``RULE_DEVIATION``, ``RULE_SCORES`` (scores from ``func``) or ``RULE_WEIGHTS``
    (weights from ``func``)."""

    name: str
    code: int
    func: object = None

    @property
    def returns(self):
        return "weights" if self.code == _core.RULE_WEIGHTS else "scores"

    def evaluate(self, layout):
        """Call the user rule on ``layout`` and check what it returns: a float array of
        shape (m,), finite; weights summing to 1 over every row with components.

        Returns
        -------
        ndarray of float64, shape (m,)
        """
        out = self.func(layout)
        where = f"rule {self.name!r} at node {layout.index} ({layout.node.name!r})"
        try:
            arr = np.asarray(out)
        except (TypeError, ValueError):
            arr = None
        if arr is None or arr.dtype.kind not in "biuf":
            got = type(out).__name__ if arr is None else f"dtype {arr.dtype}"
            raise TypeError(f"{where} returned {got}, expected an array of real "
                            f"{self.returns} (float, int or bool) of shape "
                            f"({layout.kappa.size},)")
        out = arr.astype(np.float64)
        if out.shape != layout.kappa.shape:
            raise ValueError(f"{where} returned an array of shape {out.shape}, expected "
                             f"{layout.kappa.shape}: one {self.returns[:-1]} per non-zero "
                             f"component (layout.kappa)")
        bad = ~np.isfinite(out)
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{where} returned a non-finite {self.returns[:-1]} "
                             f"({out[j]!r}) at row {int(layout.row[j])}")
        if self.code == _core.RULE_WEIGHTS and out.size:
            # Messages beta[p] * alpha must be finite: huge weights that cancel (1e308,
            # -1e308, 1) would overflow to inf - inf = NaN further down.
            with np.errstate(over="ignore", invalid="ignore"):
                msgs = layout.beta[layout.row] * out
                mags = layout.row_sum(np.abs(out))
            bad = ~np.isfinite(msgs) | ~np.isfinite(mags[layout.row])
            if bad.any():
                j = int(np.flatnonzero(bad)[0])
                p = int(layout.row[j])
                raise ValueError(f"{where} returned weights too large for float64 at row "
                                 f"{p} (weight {float(out[j])!r}, beta "
                                 f"{float(layout.beta[p])!r}): the messages beta * alpha, or "
                                 f"the row's sum of |alpha|, overflow")
            sums = layout.row_sum(out)
            mags = np.maximum(1.0, mags)
            fail = (layout.counts > 0) & ~(np.abs(sums - 1.0) <= WEIGHT_SUM_RTOL * mags)
            if fail.any():
                p = int(np.flatnonzero(fail)[0])
                raise ValueError(f"{where} returned weights that do not sum to 1: row {p} "
                                 f"sums to {float(sums[p])!r} ({int(fail.sum())} rows fail)")
        return out


def resolve_rule(rule):
    """Validate ``rule`` ("sign", "deviation" or a callable) and return a :class:`Rule`."""
    if isinstance(rule, str):
        if rule not in RULE_NAMES:
            raise ValueError(f"rule {rule!r} not understood: expected one of "
                             f"{', '.join(map(repr, RULE_NAMES))} or a callable taking a "
                             f"RowLayout and returning scores (or weights, with "
                             f"@refbbp.weights_rule)")
        return Rule(rule, RULE_CODES[rule])
    if callable(rule):
        returns = getattr(rule, "bbp_returns", "scores")
        if returns not in ("scores", "weights"):
            raise ValueError(f"rule {rule!r} has bbp_returns={returns!r}: expected "
                             f"'scores' or 'weights'")
        name = getattr(rule, "__qualname__", None) or getattr(rule, "__name__", repr(rule))
        return Rule(name, _core.RULE_WEIGHTS if returns == "weights" else _core.RULE_SCORES,
                    rule)
    raise TypeError(f"rule must be 'sign', 'deviation' or a callable, got "
                    f"{type(rule).__name__}")
