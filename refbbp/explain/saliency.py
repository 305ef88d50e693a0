"""Saliency maps from per-layer decompositions (SPEC section 4; companion paper eq. 8-10
and 16).

A *saliency map* has one non-negative value per pixel position of the input (channels
removed together). Conventions:

* **Pixel maps.** An input of shape ``(C, *spatial)`` (two or more axes: channels first)
  has maps of shape ``spatial``; a 1-D input ``(n,)`` has no channel axis and maps of
  shape ``(n,)``.
* ``Psi(a) = upsample(rescale(abs(a)))`` (eq. 9): absolute value, then ``rescale``
  (eq. 10) at the layer's own resolution, then :func:`bilinear_upsample` to the input's
  spatial size.
* :func:`rescale` maps ``a`` to ``(a - min) / (max - min)`` per map. A **constant map**
  (``max == min``, e.g. a layer without bias) carries no information about where
  anything is, and becomes **all zeros**: it adds nothing to a sum of maps.
* :func:`bilinear_upsample` uses the half-pixel convention of
  ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``, separably
  along every spatial axis (so 1-D inputs get linear interpolation).
* **Which layers.** Only conv-shaped nodes (channel axis plus as many spatial axes as the
  input has) have a place on the image; dense layers (and the logits) have none and
  are left out of every map. This is what FullGrad's reference code does (it keeps the
  bias-gradients whose tensors have the image's rank), and it is the only choice that
  invents no spatial layout: spreading a dense layer's attribution uniformly over the
  image would give a constant map, which rescales to zeros anyway. Dense layers still
  count in every *decomposition* (:mod:`refbbp.explain.decompose`); they are only absent from
  the pixel maps.

Methods (each takes a :class:`~refbbp.explain.decompose.Decomposition`, for one input or a
batch, and returns maps shaped ``spatial`` or ``(batch, *spatial)``):

* :func:`gradient_map`: ``sum_c |x * grad|``, the gradient x input baseline;
* :func:`fullgrad`: ``Psi(|x * grad|) + sum_layers sum_channels Psi(|a^{b,l}_c|)``
  (eq. 8), over every conv-shaped affine node;
* :func:`layer_aggregate`: ``Psi(|a|) + sum_{l >= l0} Psi(|a^{h,l}|)`` (eq. 16) over the
  conv-shaped cut nodes (:meth:`Decomposition.spatial_layers`), with ``a^{h,l}`` summed
  over channels (eq. 11) before the absolute value;
* :func:`layer_map`: ``Psi(|a^{h,l}|)`` or ``Psi(|a^{b,l}|)`` of one layer (Fig. 5).
"""

from __future__ import annotations

import numpy as np

__all__ = ["bilinear_upsample", "fullgrad", "gradient_map", "layer_aggregate", "layer_map",
           "map_shape", "psi", "rescale", "resize_weights"]


def map_shape(input_shape):
    """Shape of a saliency map for inputs of ``input_shape`` (channels removed).

    Parameters
    ----------
    input_shape : tuple of int
        One input, without batch axis.

    Returns
    -------
    tuple of int
        ``input_shape[1:]`` for ``(C, *spatial)`` inputs, ``input_shape`` for 1-D ones.
    """
    input_shape = tuple(input_shape)
    return input_shape[1:] if len(input_shape) >= 2 else input_shape


def rescale(a, ndim):
    """``(a - min) / (max - min)`` over the last ``ndim`` axes (one map each); constant
    maps become zeros.

    Parameters
    ----------
    a : array_like, shape (..., *map)
    ndim : int
        Number of trailing axes that form one map.

    Returns
    -------
    ndarray of float64, same shape, values in [0, 1]
    """
    a = np.asarray(a, np.float64)
    if ndim == 0:
        return np.zeros_like(a)
    axes = tuple(range(a.ndim - ndim, a.ndim))
    lo = a.min(axis=axes, keepdims=True)
    span = a.max(axis=axes, keepdims=True) - lo
    out = np.zeros_like(a)
    np.divide(a - lo, span, out=out, where=span > 0)
    return out


def resize_weights(n_in, n_out):
    """Interpolation matrix of one axis, half-pixel convention (``align_corners=False``).

    Output position ``i`` reads the input at ``src = (i + 0.5) * n_in / n_out - 0.5``,
    clamped below at 0; with ``i0 = floor(src)``, ``i1 = min(i0 + 1, n_in - 1)`` and
    ``t = src - i0`` it takes ``(1 - t) * a[i0] + t * a[i1]``. This is
    ``torch.nn.functional.interpolate``'s rule for linear/bilinear modes with an output
    size given (and no anti-aliasing).

    Parameters
    ----------
    n_in, n_out : int
        Input and output lengths (>= 1).

    Returns
    -------
    ndarray, shape (n_out, n_in)
        Each row has non-negative weights that sum to 1.
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"axis lengths must be >= 1, got {n_in} -> {n_out}")
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    t = src - i0
    w = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    np.add.at(w, (rows, i0), 1.0 - t)
    np.add.at(w, (rows, i1), t)
    return w


def bilinear_upsample(a, size):
    """Resize the trailing ``len(size)`` axes of ``a`` to ``size`` by (bi)linear
    interpolation with the half-pixel convention (see :func:`resize_weights`).

    Parameters
    ----------
    a : array_like, shape (..., *in_size)
    size : tuple of int
        Output spatial size; ``len(size)`` trailing axes are resized.

    Returns
    -------
    ndarray of float64, shape (..., *size)
        Equal to ``a`` when the sizes already agree.
    """
    out = np.asarray(a, np.float64)
    size = tuple(int(s) for s in size)
    nd = len(size)
    if out.ndim < nd:
        raise ValueError(f"cannot resize an array of shape {out.shape} to {size}: it has "
                         f"fewer than {nd} axes")
    for k, n_out in enumerate(size):
        axis = out.ndim - nd + k
        n_in = out.shape[axis]
        if n_in == n_out:
            continue
        w = resize_weights(n_in, n_out)
        out = np.moveaxis(np.tensordot(out, w, axes=([axis], [1])), -1, axis)
    return out


def psi(a, size):
    """``Psi(a) = bilinear_upsample(rescale(abs(a)))`` (eq. 9), one map per leading
    index.

    Parameters
    ----------
    a : array_like, shape (..., *in_size)
    size : tuple of int
        The input's spatial size; ``len(size)`` trailing axes of ``a`` form a map.

    Returns
    -------
    ndarray, shape (..., *size), values in [0, 1]
    """
    return bilinear_upsample(rescale(np.abs(a), len(size)), size)


# ------------------------------------------------------------------------ methods
def _input_spatial(dec):
    return map_shape(dec.network.input_shape)


def _fits(dec, la):
    """Whether node ``la`` is conv-shaped with as many spatial axes as the input."""
    size = _input_spatial(dec)
    return (len(dec.network.input_shape) >= 2 and la.spatial
            and len(la.spatial_shape) == len(size))


def _input_channel_sum(dec, a):
    """Sum an input-shaped attribution over channels (no-op for 1-D inputs)."""
    if len(dec.network.input_shape) < 2:
        return a
    return a.sum(axis=1 if dec.batched else 0)


def gradient_map(dec):
    """The gradient x input baseline ``sum_c |x_c * grad_c|``.

    Parameters
    ----------
    dec : Decomposition

    Returns
    -------
    ndarray, shape map or (batch, *map)
    """
    return _input_channel_sum(dec, np.abs(dec.grad_input))


def fullgrad(dec, normalise="channel"):
    """FullGrad (companion paper eq. 8; Srinivas & Fleuret 2019):
    ``Psi(|x * grad|) + sum over layers l and channels c of Psi(|a^{b,l}_c|)``.

    Every conv-shaped affine node contributes its bias attribution ``a^{b,l}``
    (:attr:`LayerAttribution.a_b`, local biases including activation offsets); dense
    layers are left out (module docstring).

    Parameters
    ----------
    dec : Decomposition
    normalise : {"channel", "layer"}
        ``"channel"`` (default, eq. 8 and SPEC 4): ``Psi`` of every channel's map
        separately, input channels included. ``"layer"``: what FullGrad's reference code
        does: ``rescale`` jointly over all channels and positions of a layer (and of the
        input), then upsample and sum the channels.

    Returns
    -------
    ndarray, shape map or (batch, *map)
    """
    if normalise not in ("channel", "layer"):
        raise ValueError(f"normalise must be 'channel' or 'layer', got {normalise!r}")
    size = _input_spatial(dec)
    nd = len(size)
    batch_axes = 1 if dec.batched else 0

    def term(a, has_channels):
        a = np.abs(a)
        if not has_channels:
            return psi(a, size)
        if normalise == "channel":
            maps = psi(a, size)                       # (..., C, *size)
        else:
            maps = bilinear_upsample(rescale(a, nd + 1), size)
        return maps.sum(axis=batch_axes)

    s = term(dec.grad_input, len(dec.network.input_shape) >= 2)
    for la in dec.layers[1:]:
        if la.a_b is not None and _fits(dec, la):
            s = s + term(la.a_b, True)
    return s


def _select_layers(dec, l0, layers):
    spatial = [n for n in (dec.spatial_layers() if layers is None else layers)
               if _fits(dec, dec.layers[n])]
    if layers is not None:
        bad = [n for n in layers if dec.layers[n].a_h is None or not _fits(dec, dec.layers[n])]
        if bad:
            raise ValueError(f"layers {bad} are not conv-shaped cut nodes; choose among "
                             f"{dec.spatial_layers()}")
    if isinstance(l0, str):
        if l0 == "all":
            return spatial
        if l0.startswith("top") and l0[3:].isdigit() and int(l0[3:]) >= 1:
            return spatial[-int(l0[3:]):]
        raise ValueError(f"l0 {l0!r} not understood: expected 'all', 'topK' (e.g. 'top2') "
                         f"or a node index among {spatial}")
    l0 = int(l0)
    if l0 not in spatial:
        raise ValueError(f"l0 = {l0} is not one of the spatial layers {spatial} (node "
                         f"indices of the conv-shaped cut nodes)")
    return [n for n in spatial if n >= l0]


def layer_aggregate(dec, l0="all", include_input=True, layers=None):
    """The layer aggregate of companion paper eq. 16:
    ``Psi(|a|) + sum_{l >= l0} Psi(|a^{h,l}|)``.

    ``a`` is the input attribution ``x * grad`` and ``a^{h,l}`` the activity attribution
    of layer ``l``, each summed over channels (eq. 11) before the absolute value.

    Parameters
    ----------
    dec : Decomposition
    l0 : "all", "topK" or int
        The lowest layer aggregated: ``"all"`` every layer; ``"top2"`` (``"top1"``,
        ``"top3"``, ...) the top two (one, three, ...) layers; an int: the node index of
        the lowest layer taken (one of :meth:`Decomposition.spatial_layers`).
    include_input : bool
        Include the ``Psi(|a|)`` term (eq. 16 does; the paper's best VGG map "All
        layers" leaves it out).
    layers : list of int, optional
        Node indices to treat as the layers (default
        :meth:`Decomposition.spatial_layers`: the conv-shaped cut nodes).

    Returns
    -------
    ndarray, shape map or (batch, *map)
    """
    size = _input_spatial(dec)
    a0 = _input_channel_sum(dec, dec.grad_input)
    s = psi(a0, size) if include_input else np.zeros(a0.shape)
    for n in _select_layers(dec, l0, layers):
        s = s + psi(dec.layers[n].a_h_map, size)
    return s


def layer_map(dec, n, kind="h"):
    """``Psi(|a^{h,n}|)`` or ``Psi(|a^{b,n}|)`` of one conv-shaped node, channel-summed
    (companion paper Fig. 5).

    Parameters
    ----------
    dec : Decomposition
    n : int
        Node index; for ``kind="h"`` a cut node, for ``kind="b"`` an affine node, and
        conv-shaped (or the input node 0 for ``kind="h"``: the input attribution).
    kind : {"h", "b"}
        Activity or bias attribution.

    Returns
    -------
    ndarray, shape map or (batch, *map)
    """
    size = _input_spatial(dec)
    la = dec.layers[n]
    if kind not in ("h", "b"):
        raise ValueError(f"kind must be 'h' (activity) or 'b' (bias), got {kind!r}")
    if n == 0 and kind == "h":
        return psi(_input_channel_sum(dec, dec.grad_input), size)
    a = la.a_h_map if kind == "h" else la.a_b_map
    if a is None or not _fits(dec, la):
        what = "a cut" if kind == "h" else "an affine node"
        raise ValueError(f"node {n} ({la.name}, shape {la.shape}) has no spatial "
                         f"a^{kind}: it must be {what} with channels and "
                         f"{len(size)} spatial axes")
    return psi(a, size)
