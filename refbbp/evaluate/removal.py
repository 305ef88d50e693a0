"""The removal scans: removal orders, exact first flips and the noise sources.

A removal order lists pixel positions, most salient first (``+s``) or least salient
first (``-s``), ties by pixel index or by a given tie key. :func:`first_flips` finds,
for many orders at once, the first prefix whose removal changes the predicted class --
exactly, not by bisection (the class may flip and flip back): prefixes are scored in
order, in chunks of ``chunk`` per order, and a scan stops at its first chunk containing
a flip. Prefixes whose image equals the previous one (the pixel just removed was
already at the baseline in every channel) are not scored again. Chunks of many scans go
to the scorer together. :func:`noise_sources` pairs each image with the other images
whose maps are its noise maps (:func:`derangement`: one each). The protocol is
described in full in :mod:`refbbp.evaluate`.
"""

from __future__ import annotations

import math

import numpy as np

from .._checks import check_count

__all__ = ["derangement", "first_flips", "noise_sources", "removal_order"]


def removal_order(s, direction, tie_key=None):
    """Pixel indices in removal order.

    Parameters
    ----------
    s : array_like, shape map
        A saliency map (finite).
    direction : {"+", "-"}
        ``"+"``: most salient first; ``"-"``: least salient first.
    tie_key : array_like of int, shape (s.size,), optional
        Pixels of equal saliency are taken in ascending ``tie_key`` (in both
        directions); default: in ascending pixel index (``tie_key = arange(s.size)``).

    Returns
    -------
    ndarray of int64, shape (s.size,)
        Flat (row-major) pixel indices.

    Examples
    --------
    >>> removal_order([0.5, 1.0, 0.5, 1.0, 0.0], "+")
    array([1, 3, 0, 2, 4])
    >>> removal_order([0.5, 1.0, 0.5, 1.0, 0.0], "-")
    array([4, 0, 2, 1, 3])
    >>> removal_order([0.5, 1.0, 0.5, 1.0, 0.0], "+", tie_key=[4, 3, 2, 1, 0])
    array([3, 1, 2, 0, 4])
    """
    s = np.asarray(s, np.float64).ravel()
    if not np.all(np.isfinite(s)):
        raise ValueError("saliency map contains NaN or infinite values")
    if direction not in ("+", "-"):
        raise ValueError(f"direction must be '+' or '-', got {direction!r}")
    primary = -s if direction == "+" else s
    if tie_key is None:
        return np.argsort(primary, kind="stable")
    tie_key = np.asarray(tie_key)
    if tie_key.shape != s.shape:
        raise ValueError(f"tie_key has shape {tie_key.shape}, expected ({s.size},)")
    return np.lexsort((tie_key, primary))


def _as_pixels(a, input_shape):
    """(…, *input_shape) -> (…, C, P): channels, then pixel positions."""
    lead = a.shape[:a.ndim - len(input_shape)]
    if len(input_shape) >= 2:
        return a.reshape(lead + (input_shape[0], -1))
    return a.reshape(lead + (1, -1))


def first_flips(score, images, classes, orders, scan_image=None, baseline=0.0, chunk=32,
                max_batch=4096):
    """The first prefix of each removal order that changes the class (exact).

    Parameters
    ----------
    score : callable
        ``score(batch) -> logits``: batch (b, *input_shape) -> (b, n_outputs).
    images : ndarray, shape (n_images, *input_shape)
    classes : ndarray of int, shape (n_images,)
        The class ``k`` of each unperturbed image.
    orders : ndarray of int, shape (n_scans, n_pixels)
        Removal orders (flat pixel indices, e.g. from :func:`removal_order`).
    scan_image : ndarray of int, shape (n_scans,), optional
        The image each order applies to (default ``arange(n_scans)``).
    baseline : float or ndarray
        Value removed pixels take: broadcastable to ``input_shape`` (the same for every
        image) or to ``images.shape`` (one baseline per image, e.g. a blurred copy).
    chunk : int
        Prefixes scored per scan and round (exactness does not depend on it).
    max_batch : int
        Largest number of perturbed images built at once.

    Returns
    -------
    dict of ndarray, each of shape (n_scans,)
        ``removed``: ``m*``, the number of pixels removed at the first flip (n_pixels if
        the class never changes); ``flipped``: whether it changed; ``e``:
        ``1 - ||x_{m*}|| / ||x||``; ``scored``: prefixes scored.
    """
    images = np.asarray(images, np.float64)
    input_shape = images.shape[1:]
    orders = np.asarray(orders, np.int64)
    n_scans, n_pix = orders.shape
    scan_image = np.arange(n_scans) if scan_image is None else np.asarray(scan_image)
    classes = np.asarray(classes)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    px = _as_pixels(images, input_shape)                        # (n_img, C, P)
    if px.shape[2] != n_pix:
        raise ValueError(f"orders have {n_pix} pixels, the images {px.shape[2]}")
    base = _as_pixels(np.broadcast_to(np.asarray(baseline, np.float64), images.shape),
                      input_shape)                              # (n_img, C, P)
    changes = np.any(px != base, axis=1)                        # (n_img, P)

    ranks = np.empty_like(orders)
    np.put_along_axis(ranks, orders, np.arange(n_pix)[None], axis=1)
    # prefix lengths m (pixels removed) at which the image changes
    cands = [np.flatnonzero(changes[scan_image[j]][orders[j]]) + 1 for j in range(n_scans)]
    pos = np.zeros(n_scans, np.int64)
    removed = np.full(n_scans, n_pix, np.int64)
    flipped = np.zeros(n_scans, bool)
    scored = np.zeros(n_scans, np.int64)
    active = [j for j in range(n_scans) if len(cands[j])]
    per_round = max(1, int(max_batch) // chunk)
    while active:
        take, active = active[:per_round], active[per_round:]
        parts, owners = [], []
        for j in take:
            ms = cands[j][pos[j]:pos[j] + chunk]
            mask = ranks[j][None, :] < ms[:, None]              # (M, P)
            img, bj = px[scan_image[j]], base[scan_image[j]]
            parts.append(np.where(mask[:, None, :], bj[None], img[None]))
            owners.append((j, ms))
        batch = np.concatenate(parts).reshape((-1,) + input_shape)
        pred = np.argmax(score(batch), axis=1)
        a = 0
        for j, ms in owners:
            p = pred[a:a + len(ms)]
            a += len(ms)
            scored[j] += len(ms)
            hit = np.flatnonzero(p != classes[scan_image[j]])
            if hit.size:
                removed[j] = ms[hit[0]]
                flipped[j] = True
                continue
            pos[j] += len(ms)
            if pos[j] < len(cands[j]):
                active.append(j)
    # e at the first flip (or with every pixel removed)
    norm_x = np.sqrt(np.einsum("icp,icp->i", px, px))
    e = np.empty(n_scans)
    for j in range(n_scans):
        img, bj = px[scan_image[j]], base[scan_image[j]]
        xm = np.where((ranks[j] < removed[j])[None, :], bj, img)
        nx = norm_x[scan_image[j]]
        e[j] = 1.0 - math.sqrt(float(np.sum(xm * xm))) / nx if nx > 0 else np.nan
    return {"removed": removed, "flipped": flipped, "e": e, "scored": scored}


def noise_sources(n, k=1, seed=0):
    """The pools of noise maps: for each image, ``k`` other images (seeded).

    One random cycle through all images is drawn (``default_rng(seed).permutation(n)``);
    image ``i``'s sources are the ``k`` images after it along the cycle. So no image is
    its own source, an image's ``k`` sources are distinct, every image is the source of
    exactly ``k`` others, and column 0 is :func:`derangement`.

    Parameters
    ----------
    n : int
        Number of images, at least 2.
    k : int
        Sources per image, in ``[1, n - 1]``.
    seed : int

    Returns
    -------
    ndarray of int64, shape (n, k)
        ``sources[i, j]`` is the image whose map is image ``i``'s ``j``-th noise map.
    """
    if n < 2:
        raise ValueError(f"the noise baseline needs at least 2 images (maps of other "
                         f"images), got {n}")
    k = check_count(k, "noise_pool", 1, n - 1)
    order = np.random.default_rng(seed).permutation(n)
    sources = np.empty((n, k), np.int64)
    for j in range(k):
        sources[order, j] = np.roll(order, -(j + 1))
    return sources


def derangement(n, seed=0):
    """A seeded random permutation with no fixed point (a single cycle).

    ``perm[i]`` is the image whose map serves as image ``i``'s noise baseline; it is
    ``noise_sources(n, 1, seed)[:, 0]`` (:func:`noise_sources`).

    Parameters
    ----------
    n : int
        Number of images, at least 2.
    seed : int

    Returns
    -------
    ndarray of int64, shape (n,)
    """
    return noise_sources(n, 1, seed)[:, 0]
