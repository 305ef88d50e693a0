"""SPEC section 2's tolerances, defined once.

* **Exactness** of every identity refbbp checks (``w . x + b^x = f(x)``, BBp's
  completeness, the per-layer decompositions): ``|lhs - rhs| <= TOLERANCE * scale``,
  where ``scale`` is the sum of the absolute values of the terms added (so the bound
  follows the float64 rounding of the sums, whatever their size or cancellation).
* **Agreement with onnxruntime** (float32): ``|ours - ref| <= FORWARD_ATOL * scale +
  FORWARD_RTOL * |ref|``, ``scale`` being the largest ``|ref|``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["FORWARD_ATOL", "FORWARD_RTOL", "TOLERANCE", "as_text", "forward_error",
           "relative_error"]

#: Relative tolerance of the exact identities (times the scale of the terms added).
TOLERANCE = 1e-9
#: Forward pass against onnxruntime's float32: relative part ...
FORWARD_RTOL = 1e-4
#: ... and absolute part, times the output scale.
FORWARD_ATOL = 1e-5


def relative_error(err, scale):
    """``|err| / scale`` elementwise, the quantity compared with :data:`TOLERANCE`.

    Parameters
    ----------
    err : array_like
        ``lhs - rhs`` of an identity.
    scale : array_like, broadcastable to ``err``
        The sum of the absolute values of the terms added (``>= 0``). Where it is 0 so is
        ``err`` (all terms vanish), and the error is 0.

    Returns
    -------
    ndarray
    """
    return np.abs(err) / np.maximum(scale, np.finfo(np.float64).tiny)


def forward_error(ours, ref):
    """``max |ours - ref| / (FORWARD_ATOL * scale + FORWARD_RTOL * |ref|)``: at most 1
    passes SPEC section 2.

    Parameters
    ----------
    ours, ref : array_like
        refbbp's float64 outputs and onnxruntime's (float32, as float64), same shape.

    Returns
    -------
    float
    """
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    scale = max(np.abs(ref).max(initial=0.0), np.finfo(np.float32).tiny)
    bound = FORWARD_ATOL * scale + FORWARD_RTOL * np.abs(ref)
    return float(np.max(np.abs(ours - ref) / bound, initial=0.0))


def as_text(tol):
    """A tolerance as people write it: ``as_text(1e-9) == "1e-9"``."""
    mantissa, exponent = f"{tol:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"
