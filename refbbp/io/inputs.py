"""Reading inputs for the command line: NumPy arrays and image files."""

from __future__ import annotations

import os
import warnings

import numpy as np

from .._checks import check_real
from ..errors import InputFileError, InputShapeError
from .files import read_npy, read_npz, regular_file

__all__ = ["IMAGE_SUFFIXES", "MAX_IMAGE_PIXELS", "read_inputs"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
#: Largest image (width x height) read; a larger one is refused before its pixels are
#: decoded (a "decompression bomb": a small file declaring a huge image).
MAX_IMAGE_PIXELS = 1 << 26


def _as_batch(arr, input_shape, where):
    arr = np.asarray(arr)
    if arr.dtype.kind not in "fiub":
        raise InputShapeError(f"{where}: expected a numeric array, got dtype {arr.dtype}")
    input_shape = tuple(input_shape)
    if arr.shape == input_shape:
        arr = arr[None]
    elif arr.shape[1:] != input_shape:
        hint = ""
        if arr.ndim >= 2 and int(np.prod(arr.shape[1:])) == int(np.prod(input_shape)):
            hint = " (the number of values per input fits: reshape it, or for images " \
                   "stored channels-last pass --layout nhwc)"
        raise InputShapeError(f"{where}: shape {arr.shape} does not fit the model's input "
                              f"shape {input_shape} (one input) or (batch, ...){hint}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise InputShapeError(f"{where}: {bad} value(s) are NaN or infinite")
    return arr


def _read_image(path, input_shape, size, mean, std, layout):
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("reading images needs Pillow: pip install 'refbbp[figures]' "
                          "(or pip install pillow)") from None
    regular_file(path, "image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                raise InputFileError(f"{path}: the image declares {w} x {h} pixels, more "
                                     f"than the {MAX_IMAGE_PIXELS:,} refbbp decodes")
            img.load()
    except InputFileError:
        raise
    except Exception as exc:  # Pillow raises many kinds on corrupt or truncated files
        raise InputFileError(f"{path}: not a readable image ({exc.__class__.__name__}: "
                             f"{exc})") from None
    if layout == "nchw":
        channels, spatial = input_shape[0], input_shape[1:]
    else:
        channels, spatial = input_shape[-1], input_shape[:-1]
    if len(spatial) != 2:
        raise InputShapeError(f"{path}: the model's input {tuple(input_shape)} is not an "
                              f"image layout ({layout})")
    img = img.convert("L" if channels == 1 else "RGB")
    h, w = size if size else spatial
    if (h, w) != tuple(spatial):
        raise InputShapeError(f"--size {h} {w} differs from the model's image size "
                              f"{tuple(spatial)}")
    img = img.resize((w, h), Image.BILINEAR)
    arr = np.asarray(img, np.float64) / 255.0
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[-1] != channels:
        raise InputShapeError(f"{path}: {arr.shape[-1]} channels, the model expects {channels}")
    arr = (arr - np.asarray(mean, np.float64)) / np.asarray(std, np.float64)
    return arr.transpose(2, 0, 1) if layout == "nchw" else arr


def read_inputs(paths, input_shape, size=None, mean=0.0, std=1.0, layout="nchw"):
    """Read inputs for a network from .npy/.npz arrays and image files.

    Parameters
    ----------
    paths : list of str
        ``.npy`` (one input or a batch), ``.npz`` (every array in it, or the one named
        ``x``/``inputs`` when present) or images (PNG, JPEG, ...; needs Pillow).
    input_shape : tuple of int
        The network's input shape without batch dimension.
    size : (int, int), optional
        Images are resized to this (default: the model's spatial size).
    mean, std : float or sequence of float
        Per-channel normalisation of images scaled to [0, 1].
    layout : {"nchw", "nhwc"}
        Where the model expects the channels of an image.

    Returns
    -------
    x : ndarray, shape (n, *input_shape)
    names : list of str
        One label per input (``file`` or ``file[i]``).
    """
    if layout not in ("nchw", "nhwc"):
        raise ValueError(f"--layout must be nchw or nhwc, got {layout!r}")
    mean = check_real(mean, "mean")
    std = check_real(std, "std", positive=True)          # images are divided by it
    channels = input_shape[0] if layout == "nchw" else input_shape[-1]
    for name, v in (("mean", mean), ("std", std)):
        if np.size(v) not in (1, channels):
            raise ValueError(f"--{name} has {np.size(v)} values; the model's input "
                             f"{tuple(input_shape)} ({layout}) has {channels} channel(s): "
                             f"give 1 value or {channels}")
    xs, names = [], []
    for path in paths:
        regular_file(path, "input file")
        suffix = os.path.splitext(path)[1].lower()
        base = os.path.basename(path)
        if suffix == ".npy":
            arr = _as_batch(read_npy(path), input_shape, path)
        elif suffix == ".npz":
            z = read_npz(path)
            keys = [k for k in ("x", "inputs") if k in z] or list(z)
            if not keys:
                raise InputShapeError(f"{path}: the archive holds no arrays")
            arr = np.concatenate([_as_batch(z[k], input_shape, f"{path}:{k}") for k in keys])
        elif suffix in IMAGE_SUFFIXES:
            arr = _as_batch(_read_image(path, input_shape, size, mean, std, layout)[None],
                            input_shape, path)
        else:
            raise InputShapeError(f"{path}: unknown input type {suffix!r}; expected .npy, "
                                  f".npz or an image ({', '.join(IMAGE_SUFFIXES)})")
        xs.append(arr)
        names += [base] if len(arr) == 1 else [f"{base}[{i}]" for i in range(len(arr))]
    if not xs:
        raise InputShapeError("no inputs given")
    return np.concatenate(xs), names

