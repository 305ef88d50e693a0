"""Figures like the BBp paper's Fig. 2 (needs matplotlib: ``pip install 'refbbp[figures]'``).

One row per input: the original; gradient x input, normalised, and its top-10 % overlay;
then for each BBp rule the bias attribution normalised, its top-10 % overlay and the
"bias \\ grad" overlay (pixels in the bias attribution's top 10 % but not in the
gradient's). Signed maps use a diverging colour map centred on 0 (red positive, blue
negative), each scaled by its own largest magnitude. "Top 10 %" means the 10 % of pixels
with the largest (most positive) attribution, i.e. the strongest evidence *for* the
explained output, among the pixels whose attribution is positive (so fewer when fewer
than 10 % are positive); channels are summed first.
"""

from __future__ import annotations

import numpy as np

__all__ = ["bbp_figure", "pixel_map", "require_matplotlib", "save_figure", "top_fraction"]


def require_matplotlib():
    """Import matplotlib with the Agg backend, or explain how to install it."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("figures need matplotlib: pip install 'refbbp[figures]' "
                          "(or pip install matplotlib)") from None
    return plt


def pixel_map(a):
    """Sum a (C, H, W) attribution over channels -> (H, W); (H, W) passes through."""
    a = np.asarray(a, np.float64)
    if a.ndim == 3:
        return a.sum(0)
    if a.ndim == 2:
        return a
    raise ValueError(f"expected an image-shaped attribution (C, H, W) or (H, W), got {a.shape}")


def top_fraction(m, fraction=0.1):
    """Boolean mask of the ``ceil(fraction * size)`` pixels with the largest values,
    keeping only positive ones (ties broken by position)."""
    k = max(1, int(np.ceil(fraction * m.size)))
    order = np.argsort(-m.ravel(), kind="stable")[:k]
    mask = np.zeros(m.size, bool)
    mask[order[m.ravel()[order] > 0]] = True
    return mask.reshape(m.shape)


def _display_image(x):
    x = np.asarray(x, np.float64)
    img = x.transpose(1, 2, 0) if x.ndim == 3 else x
    lo, hi = img.min(), img.max()
    img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return img[..., 0] if img.ndim == 3 and img.shape[2] == 1 else img


def _overlay(ax, img, mask, color=(1.0, 0.85, 0.0)):
    base = img if img.ndim == 3 else np.repeat(img[..., None], 3, axis=2)
    out = 0.35 * base
    out[mask] = 0.25 * base[mask] + 0.75 * np.asarray(color)
    ax.imshow(np.clip(out, 0, 1), interpolation="nearest")


def bbp_figure(path, images, grad_input, betas, labels=None, fraction=0.1, title=None,
               extra_maps=None):
    """Write a Fig.-2-style PNG.

    Parameters
    ----------
    path : str
        Where to write the PNG.
    images : ndarray, shape (n, C, H, W) or (n, H, W)
    grad_input : ndarray, same shape
        ``w * x`` per input.
    betas : dict of str to ndarray (same shape)
        Bias attribution per rule name, e.g. ``{"sign": ..., "deviation": ...}``.
    labels : list of str, optional
        Row labels (e.g. "label 3, pred 3").
    extra_maps : dict of str to ndarray (same shape), optional
        More attributions shown after the biases (e.g. ``{"exact IG": ...}``), each as
        a signed map and its top ``fraction`` overlay.
    """
    extra_maps = extra_maps or {}
    plt = require_matplotlib()
    n = len(images)
    cols = ["original", "grad·input\nnorm.", "grad·input\noverlay"]
    for rule in betas:
        cols += [f"bias ({rule})\nnorm.", f"bias ({rule})\noverlay", f"bias ({rule})\n\\ grad"]
    for name in extra_maps:
        cols += [f"{name}\nnorm.", f"{name}\noverlay"]
    fig, axes = plt.subplots(n, len(cols), figsize=(1.45 * len(cols), 1.55 * n + 0.6),
                             squeeze=False)
    for i in range(n):
        img = _display_image(images[i])
        gmap = pixel_map(grad_input[i])
        gtop = top_fraction(gmap, fraction)
        panels = [("image", img), ("signed", gmap), ("overlay", gtop)]
        for beta in betas.values():
            bmap = pixel_map(beta[i])
            btop = top_fraction(bmap, fraction)
            panels += [("signed", bmap), ("overlay", btop), ("overlay", btop & ~gtop)]
        for m in extra_maps.values():
            emap = pixel_map(m[i])
            panels += [("signed", emap), ("overlay", top_fraction(emap, fraction))]
        for j, (kind, data) in enumerate(panels):
            ax = axes[i, j]
            if kind == "image":
                ax.imshow(data, cmap="gray" if data.ndim == 2 else None, interpolation="nearest")
            elif kind == "signed":
                lim = np.abs(data).max() or 1.0
                ax.imshow(data, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
            else:
                _overlay(ax, img, data)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j], fontsize=7)
        if labels is not None:
            axes[i, 0].set_ylabel(labels[i], fontsize=7)
    return save_figure(fig, path, title)


def save_figure(fig, path, title=None):
    """Give ``fig`` its title, lay it out, write it to ``path`` (110 dpi), close it.

    Returns
    -------
    path
    """
    plt = require_matplotlib()
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
