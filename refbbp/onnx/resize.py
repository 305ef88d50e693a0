"""Converters for Resize (opsets 10-19) and Upsample (opsets 7, 9) with constant
scales or sizes (SPEC section 1).

Every mode is separable: along each axis, output position ``o`` reads a few input
positions with fixed weights (or, in nearest mode, one position); the whole op is the
Kronecker product of the per-axis maps. Nearest mode is an index op (a view: each
output element is one input element, or the extrapolation value); linear and cubic
modes, with or without anti-aliasing, are affine nodes with a constant CSR matrix
(extrapolated outputs are zero rows with the extrapolation value as bias).

The per-axis maps follow onnxruntime's CPU kernel (the reference refbbp is compared
with): the output shape, the scales derived from sizes, every coordinate
transformation and the interpolation weights are computed in float32 as onnxruntime
computes them (then held in float64), including its special cases: an output of the
input's shape is a copy, an axis with scale 1 is the identity (and, in the
anti-aliasing kernel, an axis whose length is unchanged), coordinates within 1e-6 of a
half are ties for the ``round_prefer_*`` nearest modes, and only the axis layouts
onnxruntime accepts for linear and cubic modes are converted (others are refused,
naming the scales).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from .builder import Var
from .registry import converter

__all__ = ["axis_coordinates", "axis_map", "output_geometry"]

_F = np.float32

MODES = ("nearest", "linear", "cubic")
COORDINATE_MODES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric",
                    "tf_half_pixel_for_nn", "tf_crop_and_resize")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
POLICIES = ("stretch", "not_larger", "not_smaller")
#: onnxruntime's default cubic coefficient, and the support of its anti-aliasing filters.
CUBIC_COEFF_A = -0.75
_SUPPORT = {"linear": 2.0, "cubic": 4.0}
#: How close to a half (in float32) a coordinate is a tie for the round_prefer_* modes.
TIE_EPS = np.float32(1e-6)

_RESIZE_ATTRS = ("mode", "coordinate_transformation_mode", "cubic_coeff_a",
                 "exclude_outside", "extrapolation_value", "nearest_mode", "antialias",
                 "axes", "keep_aspect_ratio_policy")


# --------------------------------------------------------------- coordinates
def axis_coordinates(mode, n_out, n_in, scale, roi_start=0.0, roi_end=1.0):
    """Input coordinates of the output positions ``0 .. n_out - 1`` of one axis.

    onnxruntime's coordinate transformations, in its float32 arithmetic (where it
    mixes in double, as for ``half_pixel_symmetric``, so does this).

    Parameters
    ----------
    mode : str
        The coordinate_transformation_mode.
    n_out, n_in : int
        Output and input length of the axis.
    scale : float
        The axis' scale (float32).
    roi_start, roi_end : float
        The axis' region of interest (``tf_crop_and_resize`` only).

    Returns
    -------
    ndarray of float32, shape (n_out,)
    """
    x = np.arange(n_out, dtype=_F)
    s, lo, li = _F(scale), _F(n_out), _F(n_in)
    r0, r1 = _F(roi_start), _F(roi_end)
    half = _F(0.5)
    with np.errstate(all="ignore"):
        if mode == "asymmetric":
            return x / s
        if mode == "pytorch_half_pixel":
            return (x + half) / s - half if n_out > 1 else np.zeros(n_out, _F)
        if mode == "tf_half_pixel_for_nn":
            return (x + half) / s
        if mode == "align_corners":
            if n_out == 1:
                return np.zeros(1, _F)
            return x * (li - _F(1)) / (lo - _F(1))
        if mode == "tf_crop_and_resize":
            if n_out > 1:
                return r0 * (li - _F(1)) + (x * (r1 - r0) * (li - _F(1))) / (lo - _F(1))
            return np.full(n_out, 0.5 * float(r0 + r1) * float(li - _F(1))).astype(_F)
        if mode == "half_pixel_symmetric":
            adjustment = lo / (s * li)
            offset = (li / _F(2)) * (_F(1) - adjustment)
            return (float(offset) + (x.astype(np.float64) + 0.5) / float(s) - 0.5).astype(_F)
        return (x + half) / s - half          # half_pixel


def _nearest_pixel(mode, coords, downsample):
    """onnxruntime's rounding of input coordinates to input positions. The two
    ``round_prefer_*`` modes treat a coordinate within :data:`TIE_EPS` of a half as
    the tie (onnxruntime does since its fix of float32 coordinates such as 14.499999
    for an exact 14.5)."""
    if mode == "simple":         # Resize-10 and Upsample: no nearest_mode attribute
        return np.ceil(coords) if downsample else np.trunc(coords)
    if mode == "floor":
        return np.floor(coords)
    if mode == "ceil":
        return np.ceil(coords)
    base = np.floor(coords)
    tie = np.abs((coords - base).astype(_F) - _F(0.5)) <= TIE_EPS
    if mode == "round_prefer_ceil":
        return np.where(tie, base + 1, _round_half_away(coords))
    return np.where(tie, base, _round_half_away(coords))     # round_prefer_floor


def _round_half_away(v):
    """C's ``round``: halves away from zero (NumPy's ``rint`` rounds them to even)."""
    t = np.trunc(v)
    return t + np.where(np.abs(v - t) >= 0.5, np.sign(v), 0)


def _cubic_coeffs(s, a):
    """Keys' cubic coefficients of the four samples around a fractional offset ``s``,
    in onnxruntime's float32 arithmetic."""
    s, a = np.abs(np.asarray(s, _F)), _F(a)
    one, two = _F(1), _F(2)
    return np.stack([
        ((a * (s + one) - _F(5) * a) * (s + one) + _F(8) * a) * (s + one) - _F(4) * a,
        ((a + two) * s - (a + _F(3))) * s * s + one,
        ((a + two) * (one - s) - (a + _F(3))) * (one - s) * (one - s) + one,
        ((a * (two - s) - _F(5) * a) * (two - s) + _F(8) * a) * (two - s) - _F(4) * a,
    ], axis=-1).astype(_F)


def _filter(kind, x, a):
    """onnxruntime's anti-aliasing filters (Pillow's): triangle or Keys' cubic."""
    x = np.abs(x.astype(_F))
    if kind == "linear":
        return np.where(x < 1, _F(1) - x, _F(0)).astype(_F)
    a = _F(a)
    inner = ((a + _F(2)) * x - (a + _F(3))) * x * x + _F(1)
    outer = (((x - _F(5)) * x + _F(8)) * x - _F(4)) * a
    return np.where(x < 1, inner, np.where(x < 2, outer, _F(0))).astype(_F)


# ------------------------------------------------------------------ per axis
def axis_map(kind, n_in, n_out, scale, coordinate_mode, *, roi=(0.0, 1.0),
             nearest_mode="round_prefer_floor", cubic_coeff_a=CUBIC_COEFF_A,
             exclude_outside=False, antialias=False, extrapolate=False):
    """One axis of a Resize: which input positions each output position reads.

    Parameters
    ----------
    kind : {"nearest", "linear", "cubic"}
    n_in, n_out : int
    scale : float
        The axis' scale (float32). Scale 1 is the identity, as in onnxruntime; with
        ``antialias`` so is an unchanged length (but it still extrapolates where the
        coordinates fall outside the input).
    coordinate_mode : str
    roi : (float, float)
    nearest_mode : str
        ``"simple"`` for Resize-10 and Upsample.
    cubic_coeff_a : float
    exclude_outside, antialias, extrapolate : bool
        ``extrapolate``: positions whose coordinate lies outside the input get the
        extrapolation value (``tf_crop_and_resize``).

    Returns
    -------
    matrix : ndarray of int64, shape (n_out,) or scipy.sparse.csr_array, shape (n_out, n_in)
        Nearest: the input position of each output position; otherwise the weights.
    outside : ndarray of bool, shape (n_out,)
        Output positions that get the extrapolation value.
    """
    if _F(scale) == 1:
        outside = np.zeros(n_out, bool)
        return (np.arange(n_out) if kind == "nearest" else
                sp.identity(n_out, format="csr")), outside
    coords = axis_coordinates(coordinate_mode, n_out, n_in, scale, *roi)
    if not np.all(np.isfinite(coords)):
        raise ValueError(f"coordinates {coords.tolist()} are not finite")
    outside = extrapolate & ((coords < 0) | (coords > _F(n_in - 1)))
    if antialias and n_out == n_in:
        # the anti-aliasing kernel copies an axis of unchanged length, but still
        # extrapolates where the coordinates fall outside
        return sp.identity(n_out, format="csr"), outside
    if kind == "nearest":
        ids = _nearest_pixel(nearest_mode, coords, _F(scale) < 1)
        return np.clip(ids, 0, n_in - 1).astype(np.int64), outside
    if antialias:
        rows, cols, vals = _filter_weights(kind, n_in, n_out, scale, coords, cubic_coeff_a,
                                           exclude_outside)
    elif kind == "linear":
        rows, cols, vals = _linear_weights(n_in, coords)
    else:
        rows, cols, vals = _cubic_weights(n_in, coords, cubic_coeff_a, exclude_outside)
    mat = sp.csr_array((vals.astype(np.float64), (rows, cols)), shape=(n_out, n_in))
    mat.sum_duplicates()
    return mat, outside


def _linear_weights(n_in, coords):
    """Linear interpolation between the two neighbours (onnxruntime's bilinear and
    trilinear kernels): distances in float32, 0.5 and 0.5 on a single neighbour."""
    c = np.maximum(_F(0), np.minimum(coords, _F(n_in - 1)))
    x1 = np.minimum(c.astype(np.int64), n_in - 1)
    x2 = np.minimum(x1 + 1, n_in - 1)
    d1 = np.abs(c - x1.astype(_F))
    d2 = np.abs(c - x2.astype(_F))
    same = x1 == x2
    d1 = np.where(same, _F(0.5), d1)
    d2 = np.where(same, _F(0.5), d2)
    rows = np.repeat(np.arange(len(c)), 2)
    return rows, np.stack([x1, x2], 1).ravel(), np.stack([d2, d1], 1).ravel()


def _cubic_weights(n_in, coords, a, exclude_outside):
    """Keys' cubic convolution over the four neighbours (onnxruntime's bicubic kernel):
    positions outside the input are clamped to its edge, or, with ``exclude_outside``,
    dropped and the rest renormalised."""
    base = np.floor(coords)
    coeffs = _cubic_coeffs((coords - base).astype(_F), a)
    pos = base.astype(np.int64)[:, None] + np.arange(-1, 3)
    if exclude_outside:
        coeffs = np.where((pos < 0) | (pos >= n_in), _F(0), coeffs).astype(_F)
        total = np.zeros(len(coords), _F)
        for k in range(4):
            total = (total + coeffs[:, k]).astype(_F)
        coeffs = (coeffs / total[:, None]).astype(_F)
    rows = np.repeat(np.arange(len(coords)), 4)
    return rows, np.clip(pos, 0, n_in - 1).ravel(), coeffs.ravel()


def _filter_weights(kind, n_in, n_out, scale, coords, a, exclude_outside):
    """onnxruntime's anti-aliasing kernel (Pillow's resampling): the filter stretched
    by 1/scale when downscaling, weights normalised to sum 1; positions outside the
    input fold onto its edge or, with ``exclude_outside``, are dropped."""
    inv = _F(1) / _F(scale)
    support = (_F(_SUPPORT[kind] * 0.5) * inv) if inv >= 1 else _F(_SUPPORT[kind] * 0.5)
    window = int(math.ceil(support)) * 2 + 1
    inv_scale = (_F(1) / inv) if inv >= 1 else _F(1)
    rows, cols, vals = [], [], []
    for i in range(n_out):
        center = _F(0.5) + coords[i]
        lo = int(np.floor(center - support + _F(0.5)))
        hi = int(np.floor(center + support + _F(0.5)))
        hi = lo + min(max(hi - lo, 0), window)
        lo_cut, hi_cut = min(max(lo, 0), n_in), min(max(hi, 0), n_in)
        start, stop = (lo_cut, hi_cut) if exclude_outside else (lo, hi)
        pos = np.arange(start, stop)
        w = _filter(kind, (pos.astype(_F) - center + _F(0.5)) * inv_scale, a)
        total = _F(0)
        for v in w:
            total = _F(total + v)
        if lo_cut >= hi_cut:
            continue
        acc = np.zeros(hi_cut - lo_cut, _F)
        for p, v in zip(np.clip(pos, lo_cut, hi_cut - 1), w):
            acc[p - lo_cut] = _F(acc[p - lo_cut] + v)
        norm = _F(1) if total == 0 else _F(1) / total
        rows.append(np.full(len(acc), i))
        cols.append(np.arange(lo_cut, hi_cut))
        vals.append((acc * norm).astype(_F))
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, _F)
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)


# ------------------------------------------------------------------ geometry
def output_geometry(in_shape, scales=None, sizes=None, axes=None, policy="stretch"):
    """The output shape and per-axis float32 scales, as onnxruntime derives them.

    From scales: ``out = trunc(scale * in)`` in float32. From sizes: the sizes, and
    ``scale = out / in`` in float32; with ``keep_aspect_ratio_policy`` ``not_larger``
    (``not_smaller``) every resized axis takes the smallest (largest) of those scales
    and ``out = round(scale * in)``.

    Parameters
    ----------
    in_shape : tuple of int
    scales, sizes : sequence, optional
        Exactly one of them, one value per axis of ``axes`` (default: every axis).
    axes : sequence of int, optional
        The resized axes, in ``[0, rank)``.
    policy : str

    Returns
    -------
    out_shape : tuple of int
    scales : ndarray of float32, shape (rank,)
    """
    rank = len(in_shape)
    axes = list(range(rank)) if axes is None else list(axes)
    full = np.ones(rank, _F)
    out = list(in_shape)
    if scales is not None:
        for a, s in zip(axes, np.asarray(scales, _F)):
            full[a] = s
            out[a] = int(np.trunc(_F(s) * _F(in_shape[a])))
        return tuple(out), full
    for a, n in zip(axes, sizes):
        out[a] = int(n)
        full[a] = _F(n) / _F(in_shape[a])
    if policy != "stretch":
        pick = np.min if policy == "not_larger" else np.max
        s = _F(pick(full[axes]))
        for a in axes:
            full[a] = s
            out[a] = int(_round_half_away(np.asarray(s * _F(in_shape[a]), _F)))
    return tuple(out), full


# ---------------------------------------------------------------- converters
class _Params:
    """The decoded attributes and inputs of one Resize or Upsample node."""

    def __init__(self, node, x, ins):
        self.node = node
        rank = len(x.shape)
        resize = node.op_type == "Resize"
        opset = node.opset
        self.mode = node.str_attr("mode", "nearest", MODES if resize else MODES[:2])
        coord_modes = COORDINATE_MODES + (("half_pixel_symmetric",) if opset >= 19 else ())
        self.coordinate_mode = (node.str_attr("coordinate_transformation_mode", "half_pixel",
                                              coord_modes)
                                if resize and opset >= 11 else "asymmetric")
        self.nearest_mode = (node.str_attr("nearest_mode", "round_prefer_floor", NEAREST_MODES)
                             if resize and opset >= 11 else "simple")
        self.cubic_coeff_a = node.float_attr("cubic_coeff_a", CUBIC_COEFF_A)
        self.exclude_outside = node.flag_attr("exclude_outside")
        self.extrapolation_value = node.float_attr("extrapolation_value", 0.0, finite=False)
        self.antialias = node.flag_attr("antialias")
        policy = node.str_attr("keep_aspect_ratio_policy", "stretch", POLICIES)
        axes = node.ints_attr("axes")
        if axes is not None:
            if any(not -rank <= a < rank for a in axes) or \
                    len({a % rank for a in axes}) != len(axes):
                raise node.malformed(f"attribute 'axes' is {axes}; expected distinct axes in "
                                     f"[{-rank}, {rank - 1}] for an input of rank {rank}")
            axes = [a % rank for a in axes]
        n_axes = rank if axes is None else len(axes)
        if self.exclude_outside and self.mode != "cubic" and \
                not (self.antialias and self.mode == "linear"):
            raise node.malformed(f"exclude_outside=1 with mode {self.mode!r}; onnxruntime "
                                 f"allows it in cubic mode, and in linear mode with "
                                 f"antialias=1")
        if self.antialias and self.mode == "nearest":
            raise node.malformed("antialias=1 with mode 'nearest'; expected mode 'linear' or "
                                 "'cubic'")

        scales, sizes, roi = self._inputs(ins, opset, resize)
        if scales is not None and sizes is not None:
            raise node.malformed("both scales and sizes are given; expected exactly one")
        if scales is None and sizes is None:
            raise node.malformed("neither scales nor sizes is given; expected exactly one")
        given = scales if scales is not None else sizes
        what = "scales" if scales is not None else "sizes"
        if len(given) != n_axes:
            raise node.malformed(f"{what} has {len(given)} values; expected {n_axes} (one per "
                                 f"{'axis of the input' if axes is None else 'axis of axes'})")
        if scales is not None:
            bad = [float(s) for s in scales if not (np.isfinite(s) and s > 0)]
            if bad:
                raise node.malformed(f"scales {scales.tolist()}; expected finite scales > 0")
            if not resize and np.any(scales < 1):
                raise node.malformed(f"scales {scales.tolist()}; Upsample expects scales >= 1")
        else:
            if np.any(sizes < 1):
                raise node.malformed(f"sizes {sizes.tolist()}; expected sizes >= 1")
        if sizes is None and policy != "stretch":
            policy = "stretch"     # the policy only applies to sizes
        self.out_shape, self.scales = output_geometry(x.shape, scales, sizes, axes, policy)
        if 0 in self.out_shape:
            raise node.unsupported(f"the output shape {self.out_shape} has a zero dimension "
                                   f"(scales {self.scales.tolist()} of the input shape "
                                   f"{x.shape}): no elements")
        self.roi = self._full_roi(roi, rank, axes)
        if self.coordinate_mode == "tf_crop_and_resize" and \
                not np.isfinite(self.extrapolation_value):
            raise node.unsupported(f"extrapolation_value={self.extrapolation_value}: a "
                                   f"non-finite constant output; expected a finite value")

    def _inputs(self, ins, opset, resize):
        node = self.node
        if not resize and opset < 9:
            # a list of floats (the registry checked its type; the schema requires it)
            return np.asarray(node.attrs["scales"], _F), None, None
        positions = {"scales": 1} if (not resize or opset < 11) else \
            {"roi": 1, "scales": 2, "sizes": 3}
        got = {}
        for name, i in positions.items():
            v = ins[i] if i < len(ins) else None
            if isinstance(v, Var):
                raise node.unsupported(f"input {i} ({name}) depends on the input; expected a "
                                       f"constant")
            if v is None or np.size(v) == 0:
                got[name] = None
                continue
            v = np.asarray(v)
            if v.ndim != 1:
                raise node.malformed(f"input {i} ({name}) has shape {v.shape}; expected a 1-D "
                                     f"tensor")
            if name == "sizes":
                if v.dtype.kind not in "iu":
                    raise node.malformed(f"input {i} (sizes) has type {v.dtype}; expected int64")
                got[name] = v.astype(np.int64)
            else:
                if v.dtype.kind != "f":
                    raise node.malformed(f"input {i} ({name}) has type {v.dtype}; expected "
                                         f"floats")
                got[name] = v.astype(_F)
        return got.get("scales"), got.get("sizes"), got.get("roi")

    def _full_roi(self, roi, rank, axes):
        """The roi of every axis as ``(starts, ends)`` (default: the whole axis)."""
        starts, ends = np.zeros(rank, _F), np.ones(rank, _F)
        if self.coordinate_mode != "tf_crop_and_resize" or roi is None:
            return starts, ends
        n = rank if axes is None else len(axes)
        if len(roi) != 2 * n:
            raise self.node.malformed(f"roi has {len(roi)} values; expected {2 * n} (a start "
                                      f"and an end per resized axis)")
        if not np.all(np.isfinite(roi)):
            raise self.node.malformed(f"roi {roi.tolist()} is not finite")
        for k, a in enumerate(range(rank) if axes is None else axes):
            starts[a], ends[a] = roi[k], roi[n + k]
        return starts, ends


def _check_layout(p, rank):
    """The axis layouts onnxruntime's linear and cubic kernels accept (others it
    refuses at load): linear on rank 2 or 3, rank 4 with the scales of axes 0 and 1 (or
    0 and 3) equal to 1, rank 5 with those of axes 0 and 1 equal to 1; cubic on rank 2,
    or rank 4 with axes 0 and 1 unscaled, or axes 0 and 3 unscaled (the other scales
    >= 1 without anti-aliasing)."""
    s = [float(v) for v in p.scales]
    if p.mode == "linear":
        ok = rank in (2, 3) or (rank == 4 and s[0] == 1 and (s[1] == 1 or s[3] == 1)) or \
            (rank == 5 and s[0] == s[1] == 1)
    else:
        ok = rank == 2 or (rank == 4 and s[0] == s[1] == 1) or \
            (rank == 4 and s[0] == s[3] == 1 and (p.antialias or min(s[1], s[2]) >= 1))
    if not ok:
        raise p.node.unsupported(
            f"mode {p.mode!r} with scales {s} on an input of rank {rank}: onnxruntime "
            f"interpolates only rank 2 or 3, or rank 4 or 5 with the leading two axes (or, "
            f"at rank 4, the first and last axis) unscaled; export the resize of the "
            f"spatial axes of an (N, C, ...) tensor")


def _convert(b, node, ins):
    x = ins[0]
    if not isinstance(x, Var):
        raise node.unsupported("expected an input-dependent tensor as input 0")
    rank = len(x.shape)
    if rank == 0:
        raise node.malformed("input 0 is a scalar; expected a tensor of rank >= 1")
    p = _Params(node, x, ins)
    if p.out_shape == x.shape:          # onnxruntime copies the input
        return [x]
    if p.mode != "nearest":
        _check_layout(p, rank)
    channel_last = p.mode != "nearest" and rank == 4 and not (p.scales[0] == p.scales[1] == 1)
    # onnxruntime's cubic kernel for channel-last inputs is its anti-aliasing one
    antialias = p.antialias or (p.mode == "cubic" and channel_last)
    extrapolate = p.coordinate_mode == "tf_crop_and_resize"
    if extrapolate and antialias and channel_last:
        raise node.unsupported(
            f"mode {p.mode!r} with coordinate_transformation_mode 'tf_crop_and_resize' on a "
            f"channel-last input (scales {p.scales.tolist()}): onnxruntime's kernel for this "
            f"layout places the extrapolated values inconsistently with its other kernels, "
            f"and refbbp does not reproduce it")
    maps = []
    for a in range(rank):
        try:
            maps.append(axis_map(
                p.mode, x.shape[a], p.out_shape[a], p.scales[a], p.coordinate_mode,
                roi=(p.roi[0][a], p.roi[1][a]), nearest_mode=p.nearest_mode,
                cubic_coeff_a=p.cubic_coeff_a, exclude_outside=p.exclude_outside,
                antialias=antialias, extrapolate=extrapolate))
        except ValueError as exc:
            raise node.unsupported(f"axis {a}: {exc}") from None
    outside = np.zeros(p.out_shape, bool)
    for a, (_, out_a) in enumerate(maps):
        shape = [1] * rank
        shape[a] = p.out_shape[a]
        outside = outside | out_a.reshape(shape)
    if p.mode == "nearest":
        strides = np.cumprod((x.shape[1:] + (1,))[::-1])[::-1]
        ids = np.zeros(p.out_shape, np.int64)
        for a, (idx, _) in enumerate(maps):
            shape = [1] * rank
            shape[a] = p.out_shape[a]
            ids = ids + (idx * strides[a]).reshape(shape)
        ids[outside] = -1
        return [x.select(ids, p.out_shape, p.extrapolation_value)]
    nnz = math.prod(int(m.nnz) for m, _ in maps)
    b.reserve(node.name, nnz * 12 + (math.prod(p.out_shape) + 1) * 8)
    mat = maps[0][0]
    for m, _ in maps[1:]:
        mat = sp.kron(mat, m, format="csr")
    mat = sp.csr_array(mat)
    bias = np.zeros(math.prod(p.out_shape))
    if outside.any():
        keep = ~outside.ravel()
        mat = sp.csr_array(sp.diags(keep.astype(np.float64)) @ mat)
        bias[~keep] = p.extrapolation_value
    mat.eliminate_zeros()
    return [b.affine([(x, mat)], bias, p.out_shape, node.op_type, node.name)]


@converter("Resize", first=10, attrs=_RESIZE_ATTRS)
def convert_resize(b, node, ins):
    """Resize with constant scales or sizes (and roi): nearest mode a view, linear and
    cubic modes an affine node."""
    return _convert(b, node, ins)


@converter("Upsample", first=7, last=9, attrs=("mode", "scales"))
def convert_upsample(b, node, ins):
    """Upsample (deprecated since opset 10): Resize-10 with scales >= 1."""
    return _convert(b, node, ins)


@converter("Upsample", first=10, attrs=("mode",))
def convert_upsample_deprecated(b, node, ins):
    """Upsample at opset 10 and later: deprecated (onnx.checker and onnxruntime refuse
    it), so refused, naming its replacement."""
    raise node.unsupported("Upsample is deprecated since opset 10 (onnxruntime refuses it); "
                           "export Resize instead")
