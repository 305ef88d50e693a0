"""Elementwise piecewise-linear activations (SPEC section 1).

An activation is given per element ``p`` by breakpoints ``eta_1 < ... < eta_{K-1}`` and
one ``(c_k, d_k)`` per piece, ``psi(z) = c_k z + d_k`` on the piece ``(eta_k, eta_{k+1}]``.
Pieces are left-open and right-closed, so at a breakpoint the left piece applies
(ReLU at 0 has slope 0). Pieces may jump (``d`` differs across a breakpoint: Shrink,
ThresholdedRelu); the value at the breakpoint is then the left piece's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PiecewiseLinear"]


@dataclass(eq=False)
class PiecewiseLinear:
    """A piecewise-linear activation over the ``size`` elements of a node.

    Attributes
    ----------
    name : str
        The ONNX op it came from ("Relu", "LeakyRelu", "PRelu", "Clip", "Abs",
        "HardSigmoid", "Shrink", "ThresholdedRelu", "Max", "Min").
    breaks : ndarray, shape (size, K-1)
        Increasing breakpoints of each element (finite).
    slopes, offsets : ndarray, shape (size, K)
        ``c_k`` and ``d_k`` of each piece of each element.
    """

    name: str
    breaks: np.ndarray
    slopes: np.ndarray
    offsets: np.ndarray

    def __post_init__(self):
        size, k = self.slopes.shape
        if self.offsets.shape != (size, k) or self.breaks.shape != (size, k - 1):
            raise ValueError(
                f"activation {self.name}: breaks {self.breaks.shape}, slopes "
                f"{self.slopes.shape}, offsets {self.offsets.shape} are inconsistent; "
                f"expected (size, K-1), (size, K), (size, K)"
            )
        if not np.all(np.isfinite(self.breaks)):
            raise ValueError(f"activation {self.name}: breakpoints must be finite")
        if k > 1 and not np.all(np.diff(self.breaks, axis=1) >= 0):
            raise ValueError(f"activation {self.name}: breakpoints must not decrease")

    @classmethod
    def uniform(cls, name, size, breaks, slopes, offsets):
        """An activation over ``size`` elements from arrays that are each the same for
        every element (1-D) or given per element (2-D, one row per element).

        What is the same for every element is stored once: those arrays are read-only
        broadcast views (a ReLU over a million elements takes a few bytes, not 40 MB).

        Parameters
        ----------
        name : str
        size : int
        breaks : array_like, shape (K-1,) or (size, K-1)
        slopes, offsets : array_like, shape (K,) or (size, K)

        Raises
        ------
        ValueError
            If an array is neither shared nor per element, or the arrays disagree on K.
        """
        def stored(what, a, k):
            a = np.array(a, np.float64)          # an owned copy, however small
            if a.ndim == 2 and a.shape[0] == size and (k is None or a.shape[1] == k):
                return a
            if a.ndim != 1 or (k is not None and a.shape[0] != k):
                raise ValueError(
                    f"activation {name}: {what} has shape {a.shape}; expected "
                    f"({'K' if k is None else k},) for every element or ({size}, "
                    f"{'K' if k is None else k}) per element")
            a.flags.writeable = False
            return np.broadcast_to(a, (size, a.shape[0]))

        slopes = stored("slopes", slopes, None)
        k = slopes.shape[1]
        return cls(name, stored("breaks", breaks, k - 1), slopes,
                   stored("offsets", offsets, k))

    @property
    def size(self):
        return self.slopes.shape[0]

    @property
    def nbytes(self):
        """Bytes the activation stores (a broadcast array counts once)."""
        return sum(_stored_bytes(a) for a in (self.breaks, self.slopes, self.offsets))

    def permuted(self, order):
        """The activation with its elements reordered: element ``j`` becomes ``order[j]``
        (arrays that are the same for every element stay as they are)."""
        return PiecewiseLinear(
            self.name, *(a if a.strides[0] == 0 else a[order]
                         for a in (self.breaks, self.slopes, self.offsets)))

    def pieces(self, y):
        """Index of the piece each pre-activation value falls in.

        Parameters
        ----------
        y : ndarray, shape (batch, size)

        Returns
        -------
        ndarray of int8, shape (batch, size)
            ``k`` such that ``eta_k < y <= eta_{k+1}``.
        """
        k = np.zeros(y.shape, dtype=np.int8)
        for j in range(self.breaks.shape[1]):
            k += y > self.breaks[:, j]
        return k

    def local(self, pieces):
        """Slopes ``c`` and offsets ``d`` of the given pieces, each shaped like ``pieces``."""
        def pick(table):
            if table.strides[0] == 0:            # the same pieces for every element
                t = table[0]
                # the same bits, without a gather: a table 0, 1, ... (ReLU's slopes)
                # is the piece index; a constant table (ReLU's offsets) is a fill
                if t.dtype == np.float64:
                    if t.tobytes() == np.arange(t.size, dtype=np.float64).tobytes():
                        return pieces.astype(np.float64)
                    if t.tobytes() == np.full(t.size, t[0]).tobytes():
                        return np.full(pieces.shape, t[0])
                return t[pieces]
            return table[np.arange(self.size), pieces]

        return pick(self.slopes), pick(self.offsets)


def _stored_bytes(a):
    """Bytes an array's elements occupy in memory: axes of stride 0 (broadcast) once."""
    n = 1
    for size, stride in zip(a.shape, a.strides):
        if stride != 0:
            n *= size
    return n * a.itemsize
