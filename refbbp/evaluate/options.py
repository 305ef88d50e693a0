"""The evaluation choices the papers leave open, as options of
:func:`~refbbp.evaluate.evaluate`: the removal baseline, the tie-break of removal orders,
what a never-flipping image counts as, and the pool of noise maps.

Each option is checked and turned into what the removal scans use here, in one place,
with a description recorded in the results' ``config`` (so a results file says how it
was made). Defaults reproduce the protocol as first implemented, bit for bit.

* ``baseline`` (what a removed pixel is set to):

  - a number (default ``0``, the MNIST background), or an array broadcastable to the
    input shape: the same for every image;
  - ``"mean"``: the per-channel mean over the evaluated images (channel = axis 0 of an
    input with two or more axes; an input with one axis is a single channel), computed
    once in float64 (:func:`channel_means`, summed in blocks of :data:`MEAN_BLOCK`
    images, so a data-set run gets the same bits) and recorded in
    ``config["baseline_values"]``;
  - ``"blur"`` or ``"blur:SIGMA"``: a blurred copy of the image itself -- each channel
    filtered by :func:`scipy.ndimage.gaussian_filter` with standard deviation SIGMA
    pixels (default :data:`BLUR_SIGMA`) along every spatial axis and 0 along the
    channel axis, ``mode="nearest"`` (the edge pixel repeated), ``truncate=4.0`` (the
    kernel reaches 4 SIGMA); the removed pixel takes the blurred image's value there.

* ``ties`` (order among pixels with equal saliency, in both directions):

  - ``"index"`` (default): ascending pixel index (row-major), as a stable sort;
  - ``"random"``: ascending *tie key*, a random permutation of the pixel positions drawn
    per image from ``numpy.random.default_rng([seed, 1])`` (a stream apart from the
    noise derangement's and the ``"random"`` maps', so choosing random ties changes
    nothing else). An image has one key, used for ``+s`` and ``-s``, for its own maps
    and its noise maps, and for every method, so that methods stay paired: random ties
    are index ties after a random relabelling of each image's pixels.

* ``never_flip`` (an image whose class survives the removal of every pixel):

  - ``"count-as-1"`` (default): that scan's ``e`` is 1, the largest value possible
    (the best ``e_minus``, the worst ``e_plus``);
  - ``"exclude"``: for each method, an image with any never-flipping scan (``-s``,
    ``+s`` or a noise map's) is left out: every metric of that image and method is NaN,
    so it is dropped from the summary and from every Wilcoxon pair it is in;
    ``metrics[method]["excluded"]`` marks it and the summary counts it.

* ``noise_pool`` ``k`` (default 1): the noise baseline of image ``i`` is the maps of
  ``k`` other images, the ``k`` images after ``i`` along one seeded random cycle of all
  images (:func:`~refbbp.evaluate.removal.noise_sources`; ``k = 1`` is the derangement),
  and ``e(x, xi)`` is the mean of ``e(x, xi_j)`` over the ``k``. Every image's map then
  serves as a noise map exactly ``k`` times, and never for itself.
"""

from __future__ import annotations

import numpy as np

from .._checks import check_count, check_real

__all__ = ["BLUR_SIGMA", "MEAN_BLOCK", "NEVER_FLIP", "TIES", "baseline_images",
           "channel_means", "check_never_flip", "check_ties", "describe_never_flip",
           "describe_ties", "parse_baseline", "per_image_baseline", "tie_key_stream",
           "tie_keys"]

#: Standard deviation, in pixels, of the ``"blur"`` baseline's Gaussian.
BLUR_SIGMA = 2.0
#: Images summed at a time for the ``"mean"`` baseline (:func:`channel_means`).
MEAN_BLOCK = 1024
#: What a never-flipping image counts as.
NEVER_FLIP = ("count-as-1", "exclude")
#: Tie-breaks of removal orders.
TIES = ("index", "random")
_BASELINE_SYNTAX = "a number, an array, 'mean', 'blur' or 'blur:SIGMA'"


def parse_baseline(baseline):
    """Check a ``baseline`` option: ``("value", float or ndarray)``, ``("mean", None)``
    or ``("blur", sigma)``.

    Raises
    ------
    TypeError, ValueError
        Naming ``baseline`` and what it may be.

    Examples
    --------
    >>> parse_baseline(0)
    ('value', 0.0)
    >>> parse_baseline("blur:1.5")
    ('blur', 1.5)
    """
    if isinstance(baseline, str):
        if baseline == "mean":
            return "mean", None
        if baseline == "blur":
            return "blur", BLUR_SIGMA
        if baseline.startswith("blur:"):
            try:
                sigma = float(baseline[5:])
            except ValueError:
                sigma = float("nan")
            if not (np.isfinite(sigma) and sigma > 0):
                raise ValueError(f"baseline {baseline!r}: the blur's sigma must be a "
                                 f"positive number of pixels, as in 'blur:2'")
            return "blur", sigma
        raise ValueError(f"baseline must be {_BASELINE_SYNTAX}; got {baseline!r}")
    return "value", check_real(baseline, "baseline")


def channel_means(read, n):
    """The ``"mean"`` baseline's per-channel means of ``n`` images, read in blocks.

    The images are summed :data:`MEAN_BLOCK` at a time (float64, each block C-contiguous)
    and the block sums added in order, so the value does not depend on how the caller
    holds its images (an array in memory, a data set read in chunks); for ``n <=
    MEAN_BLOCK`` it is ``x.mean`` over all axes but the channel's.

    Parameters
    ----------
    read : callable
        ``read(a, b)`` -> images ``a:b`` (shape (m, *input_shape); ``m`` may be smaller
        than ``b - a`` when the caller leaves images out, e.g. unreadable ones).
    n : int

    Returns
    -------
    ndarray of float64, shape (channels,)
        One value for an input with one axis.
    """
    total, count = 0.0, 0
    for a in range(0, n, MEAN_BLOCK):
        x = np.ascontiguousarray(read(a, min(a + MEAN_BLOCK, n)), np.float64)
        axes = (0,) + tuple(range(2, x.ndim)) if x.ndim >= 3 else None
        total = total + x.sum(axis=axes)
        count += x.size // (x.shape[1] if x.ndim >= 3 else 1)
    if count == 0:
        raise ValueError("the 'mean' baseline needs at least one image")
    return np.atleast_1d(total / count)


def per_image_baseline(values, x):
    """Whether :func:`baseline_images`' ``values`` hold one baseline per image of ``x``
    (the ``"blur"`` copies), to be sliced with the images, rather than one for all."""
    return np.ndim(values) == np.ndim(x) and np.ndim(x) > 0


def baseline_images(baseline, x, means=None):
    """The values removed pixels take, and the baseline's description.

    Parameters
    ----------
    baseline : float, ndarray or str
        See :func:`parse_baseline` and the module's description.
    x : ndarray, shape (n, *input_shape)
        The evaluated images (float64).
    means : array_like of float, optional
        For ``"mean"``: the per-channel means already computed (:func:`channel_means`)
        over the whole evaluated set, when ``x`` is a part of it.

    Returns
    -------
    values : ndarray
        Broadcastable to ``x.shape``: one baseline for all images (a number, an array
        of the input shape, the per-channel means) or one per image (the blurred copies).
    config : dict
        ``baseline`` (the number, ``"mean"``, ``"blur"`` or ``"array of shape ..."``)
        and ``baseline_values`` (the per-channel means) or ``blur`` (sigma, mode,
        truncate) where they apply.
    """
    kind, arg = parse_baseline(baseline)
    input_shape = x.shape[1:]
    if kind == "mean" and means is None:
        means = channel_means(lambda a, b: x[a:b], len(x))
    if kind == "value":
        b = np.asarray(arg)
        try:
            np.broadcast_to(b, input_shape)
        except ValueError:
            raise ValueError(f"baseline of shape {b.shape} does not broadcast to the input "
                             f"shape {input_shape}") from None
        return arg, {"baseline": arg if b.ndim == 0 else f"array of shape {b.shape}"}
    if kind == "mean":
        means = np.asarray(means, np.float64).ravel()
        values = (means.reshape((-1,) + (1,) * (len(input_shape) - 1))
                  if len(input_shape) >= 2 else means[0])
        return values, {"baseline": "mean", "baseline_values": [float(v) for v in means]}
    from scipy.ndimage import gaussian_filter  # imported on use, as scipy.stats is

    sigma = (0.0,) + (arg,) * (len(input_shape) - 1) if len(input_shape) >= 2 else arg
    blurred = np.stack([gaussian_filter(xi, sigma, mode="nearest", truncate=4.0)
                        for xi in x]) if len(x) else x.copy()
    return blurred, {"baseline": "blur", "blur": {"sigma": arg, "mode": "nearest",
                                                  "truncate": 4.0}}


def check_ties(ties):
    """Check a ``ties`` option (one of :data:`TIES`)."""
    if ties not in TIES:
        raise ValueError(f"ties must be one of {', '.join(map(repr, TIES))}; got {ties!r}")
    return ties


def check_never_flip(never_flip):
    """Check a ``never_flip`` option (one of :data:`NEVER_FLIP`)."""
    if never_flip not in NEVER_FLIP:
        raise ValueError(f"never_flip must be one of {', '.join(map(repr, NEVER_FLIP))}; "
                         f"got {never_flip!r}")
    return never_flip


def tie_keys(ties, n, n_pixels, seed):
    """Per image, the key that orders pixels of equal saliency (None: pixel index).

    Parameters
    ----------
    ties : {"index", "random"}
    n, n_pixels : int
        Images and pixel positions per image.
    seed : int
        The evaluation's seed; the keys come from ``default_rng([seed, 1])``.

    Returns
    -------
    ndarray of int64, shape (n, n_pixels), or None
        Row ``i`` is a permutation of ``range(n_pixels)``; None for ``"index"``.
    """
    if check_ties(ties) == "index":
        return None
    keys = tie_key_stream(n_pixels, seed)
    return np.stack([next(keys) for _ in range(n)])


def tie_key_stream(n_pixels, seed):
    """The tie keys of :func:`tie_keys` (``"random"``), image after image: row ``i`` of
    ``tie_keys("random", n, n_pixels, seed)`` is the ``i``-th key yielded, for any
    ``n > i`` (so a caller reading a set in parts draws the keys of a part in turn)."""
    seed = check_count(seed, "seed", 0)
    rng = np.random.default_rng([seed, 1])
    while True:
        yield rng.permutation(n_pixels)


def describe_ties(ties):
    """The ``tie_break`` line of the results' ``config``."""
    if ties == "index":
        return "pixel index, ascending (stable sort)"
    return ("random: ascending key, one random permutation of the pixel positions per "
            "image (default_rng([seed, 1])), the same for +s, -s, the noise maps and "
            "every method")


def describe_never_flip(never_flip):
    """The ``never_flipped`` line of the results' ``config``."""
    if never_flip == "count-as-1":
        return "count-as-1: e = 1; flipped_* = False"
    return ("exclude: per method, an image with any never-flipping scan has NaN metrics "
            "(left out of summaries and tests); flipped_* = False, excluded = True")
