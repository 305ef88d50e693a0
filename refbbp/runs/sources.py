"""Where a run's inputs come from, read a chunk at a time.

* a folder of images (sorted by name; each read and normalised by
  :func:`refbbp.io.inputs.read_inputs`, as ``refbbp explain`` reads an image);
* a ``.npy`` array, memory-mapped (only the chunk being sent is read);
* an ``.npz`` archive (``x``, or ``inputs``, or its one array; labels ``y`` if present);
* a Zarr array, or a Zarr group with arrays ``x`` and, optionally, ``y`` (needs
  ``zarr``, in the ``dask`` extra);
* an array in memory (the Python API).

A source never refuses the whole set for one bad input: :meth:`Source.read` returns the
chunk's inputs and, per input that could not be read (a corrupt image, one of another
size), its error; inputs with NaN or infinite values are caught by the runner itself.
"""

from __future__ import annotations

import os

import numpy as np

from .._checks import check_labels
from ..errors import InputFileError, InputShapeError, RefbbpError
from ..io.files import read_npz, regular_file
from ..io.inputs import IMAGE_SUFFIXES, read_inputs

__all__ = ["Source", "open_source"]


class Source:
    """Inputs of a run, read a chunk at a time.

    Parameters
    ----------
    x : array_like, shape (n, *input_shape)
        Indexable by slices (an ndarray, a memory map, a Zarr array).
    labels : ndarray of int, optional
    description : dict
        What the manifest records about the source.
    names : sequence of str, optional
        One name per input (default ``"<source>[i]"``).
    """

    def __init__(self, x, labels=None, description=None, names=None):
        self.x = x
        self.labels = labels
        self.description = dict(description or {"kind": "array"})
        self.description["n"] = len(self)
        self._names = names

    def __len__(self):
        return int(self.x.shape[0]) if hasattr(self.x, "shape") else len(self.x)

    def name(self, i):
        if self._names is not None:
            return self._names[i]
        return f"{self.description.get('path', 'inputs')}[{i}]"

    def read(self, lo, hi):
        """Inputs ``lo:hi`` as float64, their labels (or None) and ``{i: error}`` of the
        inputs (0-based in the chunk) that could not be read."""
        x = np.asarray(self.x[lo:hi], np.float64)
        labels = None if self.labels is None else np.asarray(self.labels[lo:hi])
        return x, labels, {}

    def check(self, input_shape, n_outputs=None, need_labels=False):
        """Refuse a source whose inputs do not fit ``input_shape`` (or without labels
        when ``need_labels``); labels are checked against ``n_outputs``."""
        shape = tuple(np.shape(self.x)[1:])
        if shape != tuple(input_shape):
            raise InputShapeError(f"{self.description.get('path', 'inputs')}: inputs of "
                                  f"shape {shape}, the model expects {tuple(input_shape)}")
        if np.dtype(getattr(self.x, "dtype", np.float64)).kind not in "fiub":
            raise InputShapeError(f"{self.description.get('path', 'inputs')}: expected "
                                  f"numeric inputs, got dtype {self.x.dtype}")
        if need_labels and self.labels is None:
            raise InputShapeError(f"{self.description.get('path', 'inputs')}: no labels: "
                                  f"this task needs labels y (an .npz or Zarr group with y)")
        if self.labels is not None and n_outputs is not None:
            self.labels = check_labels(self.labels, len(self), n_outputs,
                                       where=f"{self.description.get('path')}: y")
        return self

    def head(self, n):
        """The first ``n`` inputs only (``--n``)."""
        if n is None:
            return self
        if n < 1:
            raise ValueError(f"--n must be >= 1, got {n}")
        src = Source(self.x[:n], None if self.labels is None else self.labels[:n],
                     {**self.description, "first": n},
                     None if self._names is None else self._names[:n])
        return src


class ImageFolder(Source):
    """Every image file of a folder, sorted by name (non-recursive)."""

    def __init__(self, path, input_shape, size=None, mean=0.0, std=1.0, layout="nchw"):
        files = sorted(f for f in os.listdir(path)
                       if os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputFileError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        self.paths = [os.path.join(path, f) for f in files]
        self.input_shape = tuple(input_shape)
        self.image_options = (size, mean, std, layout)
        super().__init__(self.paths, None,
                         {"kind": "images", "path": os.path.abspath(path), "files": files,
                          "size": size, "mean": mean, "std": std, "layout": layout}, files)

    def read(self, lo, hi):
        x = np.full((hi - lo,) + self.input_shape, np.nan)
        errors = {}
        for i, p in enumerate(self.paths[lo:hi]):
            try:
                x[i] = read_inputs([p], self.input_shape, *self.image_options)[0][0]
            except (RefbbpError, OSError, ValueError) as exc:
                errors[i] = str(exc).splitlines()[0]
        return x, None, errors

    def check(self, input_shape, n_outputs=None, need_labels=False):
        if need_labels:
            raise InputShapeError(f"{self.description['path']}: a folder of images has no "
                                  f"labels: this task needs an .npz or Zarr group with y")
        return self


def _jsonable(v):
    return v if v is None or isinstance(v, (int, float, str)) else list(np.ravel(v).tolist())


def _zarr(path):
    try:
        import zarr
    except ImportError:
        raise ImportError('reading Zarr inputs needs zarr: pip install "refbbp[dask]"') \
            from None
    z = zarr.open(path, mode="r")
    if hasattr(z, "shape"):
        return z, None
    if "x" not in z:
        raise InputFileError(f"{path}: a Zarr group without an array x")
    return z["x"], (np.asarray(z["y"][:]) if "y" in z else None)


def open_source(inputs, input_shape, *, size=None, mean=0.0, std=1.0, layout="nchw",
                labels=None):
    """The :class:`Source` of a path (folder of images, ``.npy``, ``.npz``, Zarr) or of
    an array in memory.

    Parameters
    ----------
    inputs : str, path-like, ndarray or Source
    input_shape : tuple of int
        The network's input shape (images are resized and laid out to it).
    size, mean, std, layout
        Image options, as for :func:`refbbp.io.inputs.read_inputs`.
    labels : array_like of int, optional
        Labels of an array given in memory.

    Returns
    -------
    Source
    """
    if isinstance(inputs, Source):
        return inputs
    if not isinstance(inputs, (str, os.PathLike)):
        return Source(np.asarray(inputs), None if labels is None else np.asarray(labels))
    path = os.fspath(inputs)
    desc = {"path": os.path.abspath(path)}
    if path.rstrip("/").endswith(".zarr") or os.path.isfile(os.path.join(path, "zarr.json")) \
            or os.path.isfile(os.path.join(path, ".zarray")) \
            or os.path.isfile(os.path.join(path, ".zgroup")):
        x, y = _zarr(path)
        return Source(x, y, {"kind": "zarr", **desc})
    if os.path.isdir(path):
        return ImageFolder(path, input_shape, size, _jsonable(mean), _jsonable(std), layout)
    regular_file(path, "input file", max_bytes=None)
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".npy":
        try:
            x = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise InputFileError(f"{path}: not a readable .npy array ({exc})") from None
        if x.shape == tuple(input_shape):
            x = x[None]
        return Source(x, None, {"kind": "npy", **desc})
    if suffix == ".npz":
        z = read_npz(path, "data file")
        keys = [k for k in ("x", "inputs") if k in z] or [k for k in z if k != "y"]
        if len(keys) != 1:
            raise InputFileError(f"{path}: expected an .npz with an array x (and labels y), "
                                 f"found {sorted(z)}")
        return Source(z[keys[0]], z.get("y"), {"kind": "npz", **desc})
    if suffix in IMAGE_SUFFIXES:
        raise InputFileError(f"{path}: a run reads a folder of images, not one image")
    raise InputFileError(f"{path}: unknown input source; expected a folder of images, a "
                         f".npy, an .npz or a Zarr array or group")
