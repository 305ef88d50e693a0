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
* :func:`fullgrad`: ``Psi(|sum_c x_c * grad_c|) + sum_layers sum_channels
  Psi(|a^{b,l}_c|)`` (eq. 8), over every conv-shaped affine node; or as FullGrad's
  reference code computes it (``variant="official"``, ``"official-2019"``);
* :func:`layer_aggregate`: ``Psi(|a|) + sum_{l >= l0} Psi(|a^{h,l}|)`` (eq. 16) over the
  conv-shaped cut nodes (:meth:`Decomposition.spatial_layers`), with ``a^{h,l}`` summed
  over channels (eq. 11) before the absolute value;
* :func:`layer_map`: ``Psi(|a^{h,l}|)`` or ``Psi(|a^{b,l}|)`` of one layer (Fig. 5).
"""

from __future__ import annotations

import numpy as np

from ..network.start import normalisation_chain

__all__ = ["FULLGRAD_VARIANTS", "bilinear_upsample", "fullgrad", "gradient_map",
           "input_normalisation", "layer_aggregate", "layer_map", "map_shape", "psi",
           "rescale", "resize_weights"]


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


def resize_weights(n_in, n_out, align_corners=False):
    """Interpolation matrix of one axis, half-pixel convention (``align_corners=False``)
    or corner-aligned (``align_corners=True``).

    Output position ``i`` reads the input at ``src = (i + 0.5) * n_in / n_out - 0.5``,
    clamped below at 0 (with ``align_corners=True``: ``src = i * (n_in - 1) / (n_out -
    1)``, 0 when ``n_out == 1``); with ``i0 = floor(src)``, ``i1 = min(i0 + 1, n_in -
    1)`` and ``t = src - i0`` it takes ``(1 - t) * a[i0] + t * a[i1]``. This is
    ``torch.nn.functional.interpolate``'s rule for linear/bilinear modes with an output
    size given (and no anti-aliasing).

    Parameters
    ----------
    n_in, n_out : int
        Input and output lengths (>= 1).
    align_corners : bool
        As in ``torch.nn.functional.interpolate``.

    Returns
    -------
    ndarray, shape (n_out, n_in)
        Each row has non-negative weights that sum to 1.
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"axis lengths must be >= 1, got {n_in} -> {n_out}")
    if align_corners:
        src = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    else:
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


def bilinear_upsample(a, size, align_corners=False):
    """Resize the trailing ``len(size)`` axes of ``a`` to ``size`` by (bi)linear
    interpolation with the half-pixel convention (see :func:`resize_weights`).

    Parameters
    ----------
    a : array_like, shape (..., *in_size)
    size : tuple of int
        Output spatial size; ``len(size)`` trailing axes are resized.
    align_corners : bool
        Corner-aligned interpolation instead (:func:`resize_weights`).

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
        w = resize_weights(n_in, n_out, align_corners)
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


#: The variants of :func:`fullgrad`.
FULLGRAD_VARIANTS = ("paper", "official", "official-2019")

#: The ``eps`` of FullGrad's reference code (``FullGrad._postProcess``).
OFFICIAL_EPS = 1e-6

#: Bias parts (:class:`~refbbp.explain.decompose.BiasPart` ops) that belong to no layer of
#: the model, so FullGrad's reference code, which takes the biases of its ``nn.Conv2d``,
#: ``nn.Linear`` and ``nn.BatchNorm2d`` modules, has no term for them.
NOT_LAYER_BIASES = ("ActivationOffset", "Constant")


def _official_rescale(a, batched):
    """``_postProcess`` of FullGrad's reference code: ``abs``, minus the minimum, divided
    by the maximum plus ``eps``, jointly over everything but the batch axis."""
    a = np.abs(a)
    axes = tuple(range(1 if batched else 0, a.ndim))
    a = a - a.min(axis=axes, keepdims=True)
    return a / (a.max(axis=axes, keepdims=True) + OFFICIAL_EPS)


def input_normalisation(dec):
    """Nodes of an in-graph input normalisation: the chain of elementwise affine nodes
    that starts at the input (:func:`refbbp.network.start.normalisation_chain`, the
    definition ``start="after-normalisation"`` uses), as far as its nodes keep the
    input's shape (e.g. ``(x - mean) / std`` folded into one node).

    FullGrad's reference code has the normalisation outside the model (in the data
    transform), so the :func:`fullgrad` ``"official"`` variants start after it.

    Parameters
    ----------
    dec : Decomposition

    Returns
    -------
    list of int
        Node indices in order (empty when the model starts with a layer).
    """
    chain = []
    for k in normalisation_chain(dec.network):
        if dec.layers[k].a_h is None or dec.layers[k].shape != tuple(dec.network.input_shape):
            break
        chain.append(k)
    return chain


def fullgrad(dec, variant="paper"):
    """FullGrad (Srinivas & Fleuret 2019), as the companion paper writes it or as the
    reference code computes it.

    ``variant="paper"`` (default): companion paper eq. 8 exactly,
    ``Psi(|a|) + sum over layers l and channels c of Psi(|a^{b,l}_c|)``, with ``a`` the
    channel-summed input attribution ``sum_c x_c * grad_c`` (eq. 5; the absolute value
    taken after the sum), ``Psi`` (eq. 9-10) per channel of every layer, upsampling with
    ``align_corners=False`` (SPEC 4). Every conv-shaped affine node is a layer, with its
    whole bias attribution :attr:`LayerAttribution.a_b` (local bias, activation offsets
    included; an in-graph input normalisation is a layer too). Dense layers are left out
    (module docstring).

    ``variant="official"``: what ``FullGrad.saliency`` of the reference code
    (github.com/idiap/fullgrad-saliency, ``saliency/fullgrad.py`` and
    ``saliency/tensor_extractor.py``) computes today:

    * ``FullGrad._postProcess``: ``abs``, minus the minimum, divided by the maximum plus
      ``eps = 1e-6`` (:data:`OFFICIAL_EPS`), jointly over all channels and positions of
      one image (:func:`_official_rescale`);
    * input term: ``_postProcess(x * grad)`` summed over channels (no resizing);
    * bias terms (``FullGradExtractor._extract_layer_bias``): one per module with a bias,
      ``b * (gradient at the module's output)``; here one per bias part
      (:meth:`Decomposition.bias_parts`), so a Conv's bias and a BatchNormalization
      exported as a separate op are two terms even though the import folds them into
      one node; activation offsets and constants read through a Pad belong to no
      module and have no term (:data:`NOT_LAYER_BIASES`);
    * terms whose tensors have the image's rank only, each ``_postProcess``-ed,
      resized with ``F.interpolate(mode="bilinear", align_corners=True)`` and then summed
      over channels;
    * the model's input is the *normalised* image (the normalisation is a data
      transform): an in-graph input normalisation (:func:`input_normalisation`) is left
      out, its bias has no term and the input term is ``h * grad`` at its output.

    ``variant="official-2019"``: the same with ``align_corners=False``, as the reference
    code upsampled before June 2020 (commit 59b90bf; its ``fullgrad.py`` called
    ``F.interpolate(..., mode="bilinear", align_corners=False)``).

    Parameters
    ----------
    dec : Decomposition
    variant : {"paper", "official", "official-2019"}

    Returns
    -------
    ndarray, shape map or (batch, *map)
    """
    if variant not in FULLGRAD_VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(map(repr, FULLGRAD_VARIANTS))}, "
                         f"got {variant!r}")
    size = _input_spatial(dec)
    channels = 1 if dec.batched else 0
    if variant == "paper":
        s = psi(_input_channel_sum(dec, dec.grad_input), size)
        for la in dec.layers[1:]:
            if la.a_b is not None and _fits(dec, la):
                s = s + psi(la.a_b, size).sum(axis=channels)
        return s
    align_corners = variant == "official"
    outside = input_normalisation(dec)
    a = dec.layers[outside[-1]].a_h if outside else dec.grad_input
    s = _input_channel_sum(dec, _official_rescale(a, dec.batched))
    for la in dec.layers[1:]:
        if la.a_b is None or not _fits(dec, la) or la.index in outside:
            continue
        for part in dec.bias_parts(la.index):
            if part.op not in NOT_LAYER_BIASES:
                term = bilinear_upsample(_official_rescale(part.a, dec.batched), size,
                                         align_corners)
                s = s + term.sum(axis=channels)
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
