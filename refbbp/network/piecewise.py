"""Elementwise piecewise-linear activations (SPEC section 1).

An activation is given per element ``p`` by breakpoints ``eta_1 < ... < eta_{K-1}`` and
one ``(c_k, d_k)`` per piece, ``psi(z) = c_k z + d_k`` on the piece ``(eta_k, eta_{k+1}]``.
Pieces are left-open and right-closed, so at a breakpoint the left piece applies
(ReLU at 0 has slope 0).
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
        The ONNX op it came from ("Relu", "LeakyRelu", "PRelu", "Clip").
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
        if k > 1 and not np.all(np.diff(self.breaks, axis=1) >= 0):
            raise ValueError(f"activation {self.name}: breakpoints must not decrease")

    @classmethod
    def uniform(cls, name, size, breaks, slopes, offsets):
        """One activation shared by all ``size`` elements (slopes may be per element)."""
        slopes = np.broadcast_to(np.asarray(slopes, np.float64), (size, len(breaks) + 1))
        offsets = np.broadcast_to(np.asarray(offsets, np.float64), (size, len(breaks) + 1))
        breaks = np.broadcast_to(np.asarray(breaks, np.float64), (size, len(breaks)))
        return cls(name, breaks.copy(), slopes.copy(), offsets.copy())

    @property
    def size(self):
        return self.slopes.shape[0]

    def permuted(self, order):
        """The activation with its elements reordered: element ``j`` becomes ``order[j]``."""
        return PiecewiseLinear(
            self.name, self.breaks[order], self.slopes[order], self.offsets[order]
        )

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
        cols = np.arange(self.size)
        return self.slopes[cols, pieces], self.offsets[cols, pieces]
