"""Checks of what users pass: counts and labels (CLI options, ``evaluate``,
``bias_importance``, ``verify``) and the kind of a file they name (the loader and
``refbbp.io.files``): one definition each, with messages that name the argument and
what was expected."""

from __future__ import annotations

import stat

import numpy as np

__all__ = ["check_count", "check_labels", "check_real", "not_regular"]


def not_regular(mode):
    """What a file of ``st_mode`` ``mode`` is, if not a regular file ("a directory", "a
    FIFO (named pipe)", "a device", "a socket", ...); None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return ("a directory" if stat.S_ISDIR(mode) else "a FIFO (named pipe)"
            if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode)
            or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else
            "not a regular file")


def check_count(n, name, least=1, most=None):
    """Validate a count argument: an int (NumPy ints too; bools and floats refused) in
    ``[least, most]``.

    Returns
    -------
    int

    Raises
    ------
    TypeError, ValueError
        Naming ``name`` and the accepted range.
    """
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(n).__name__}")
    if n < least or (most is not None and n > most):
        bound = f"between {least:,} and {most:,}" if most is not None else f">= {least}"
        raise ValueError(f"{name} must be {bound}, got {n:,}")
    return int(n)


def check_real(value, name, least=None, positive=False):
    """Validate a real number or an array of them: finite, and ``>= least`` or ``> 0``
    (``positive``) if asked; returns it as float64 (an array if it was one).

    Raises
    ------
    TypeError, ValueError
        Naming ``name``: not real numbers (booleans, strings, complex), not finite, or
        out of range.
    """
    arr = np.asarray(value)
    if arr.dtype.kind not in "iuf" or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be real numbers, got {arr.dtype} ({value!r})")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if positive and not np.all(arr > 0):
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if least is not None and not np.all(arr >= least):
        raise ValueError(f"{name} must be >= {least}, got {value!r}")
    return arr if arr.ndim else float(arr)


def check_labels(y, n, n_classes, where="labels"):
    """Validate class labels: ``n`` integers in ``[0, n_classes)``.

    Parameters
    ----------
    y : array_like
    n : int
        The number of inputs the labels go with.
    n_classes : int
        The model's number of outputs.
    where : str, optional
        Names the labels in messages (e.g. ``"data.npz: y"``).

    Returns
    -------
    ndarray of int64, shape (n,)

    Raises
    ------
    ValueError
        Not integers (floats, even integral ones, are refused: a float label is a sign of
        a wrong array), not ``n`` of them, or a label outside the model's classes (the
        message names the first one and the valid range).
    """
    y = np.asarray(y)
    if y.dtype.kind not in "iu" or y.shape != (n,):
        raise ValueError(f"{where} must be integers of shape ({n},) (integer labels, one "
                         f"class index per input), got {y.dtype} of shape {y.shape}")
    bad = np.flatnonzero((y < 0) | (y >= n_classes))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{where}: label {int(y[i])} at position {i} is not a class of the "
                         f"model: expected 0 <= label < {n_classes} ({bad.size} of {n} "
                         f"labels out of range)")
    return y.astype(np.int64)
