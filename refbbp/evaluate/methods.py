"""The saliency methods :func:`~refbbp.evaluate.evaluate` compares, and
:func:`saliency_maps`, which computes the maps of several of them at once.

Each method is registered once in :data:`~refbbp.evaluate.registry.METHODS` with
:func:`~refbbp.evaluate.registry.register` (name or name family, whether it needs a
decomposition, how to compute it, a description); the decomposition methods share one
decomposition per batch. Maps are ``(n, *map)``, or input-shaped ``(n, *input_shape)``
(then ``|.|`` is summed over channels).
"""

from __future__ import annotations

import re

import numpy as np

from ..bbp import bbp
from ..explain import saliency as sal
from ..explain.decompose import decompose
from .registry import register, resolve

__all__ = ["DEFAULT_METHODS", "saliency_maps"]

DEFAULT_METHODS = ("gradient", "fullgrad", "layers-all", "layers-top2", "bias", "random")


# ------------------------------------------------------------------- name parsers
_LAYERS_SYNTAX = ("layers-all", "layers-topK", "layers-from:N")
_LAYERS = re.compile(r"layers-(all|top[0-9]+|from:-?[0-9]+)(-noinput)?")


def _parse_layers(name):
    """'layers-all', 'layers-topK', 'layers-from:N', each optionally '-noinput' ->
    (l0, include_input)."""
    m = _LAYERS.fullmatch(name)
    if m is None:
        raise ValueError(f"method {name!r} not understood: expected "
                         f"{', '.join(_LAYERS_SYNTAX[:-1])} or {_LAYERS_SYNTAX[-1]}, "
                         f"optionally with the suffix -noinput")
    body = m.group(1)
    return (int(body[5:]) if body.startswith("from:") else body), m.group(2) is None


def _node_index(prefix):
    """A parser of ``prefix + N`` (a node index) -> (N,)."""
    def parse(name):
        tail = name[len(prefix):]
        if not re.fullmatch(r"[0-9]+", tail):
            raise ValueError(f"method {name!r} needs a node index: {prefix}N")
        return (int(tail),)
    return parse


# ------------------------------------------------------------------------ methods
@register("gradient", "gradient x input: |x * grad| summed over channels",
          decomposition=True)
def _gradient(dec):
    return sal.gradient_map(dec)


@register("fullgrad", "FullGrad as companion paper eq. 8 writes it: Psi of the "
          "channel-summed input attribution and of every conv-shaped bias attribution, "
          "per channel", decomposition=True)
def _fullgrad(dec):
    return sal.fullgrad(dec, "paper")


@register("fullgrad-official", "FullGrad as its reference code computes it today: "
          "rescaled per layer (eps 1e-6), align_corners=True, one term per bias op",
          decomposition=True)
def _fullgrad_official(dec):
    return sal.fullgrad(dec, "official")


@register("fullgrad-official-2019", "FullGrad's reference code before June 2020: as "
          "fullgrad-official with align_corners=False", decomposition=True)
def _fullgrad_official_2019(dec):
    return sal.fullgrad(dec, "official-2019")


@register("layers-", "layer aggregate (eq. 16) of all layers, the top K or those from "
          "node N up; -noinput leaves out the input term", decomposition=True,
          parse=_parse_layers, syntax=_LAYERS_SYNTAX)
def _layers(dec, l0, include_input):
    return sal.layer_aggregate(dec, l0, include_input=include_input)


@register("activity:", "Psi(|a^h|) of node N, its activity attribution",
          decomposition=True, parse=_node_index("activity:"), syntax=("activity:N",))
def _activity(dec, node):
    return sal.layer_map(dec, node, "h")


@register("biasgrad:", "Psi(|a^b|) of node N, its bias attribution",
          decomposition=True, parse=_node_index("biasgrad:"), syntax=("biasgrad:N",))
def _biasgrad(dec, node):
    return sal.layer_map(dec, node, "b")


@register("bias", "BBp (sign rule, T = 1): |beta| summed over channels")
def _bias(net, x, classes, rng):
    return _bbp_maps(net, x, classes, "sign")


@register("bias-deviation", "BBp (deviation rule, T = 1): |beta| summed over channels")
def _bias_deviation(net, x, classes, rng):
    return _bbp_maps(net, x, classes, "deviation")


@register("random", "uniform noise on [0, 1), seeded")
def _random(net, x, classes, rng):
    return rng.random((len(x),) + tuple(sal.map_shape(net.input_shape)))


def _pixel_sum(net, a):
    """Sum |a| over channels of an input-shaped batch (n, *input_shape) -> (n, *map)."""
    a = np.abs(np.asarray(a, np.float64))
    return a.sum(axis=1) if len(net.input_shape) >= 2 else a


def _bbp_maps(net, x, classes, rule):
    beta = bbp(net, x, target=np.asarray(classes, np.int64), rule=rule).beta
    return _pixel_sum(net, beta)


# -------------------------------------------------------------------- dispatch
def _validate(name, net, x, maps):
    mshape = tuple(sal.map_shape(net.input_shape))
    maps = np.asarray(maps, np.float64)
    if maps.shape == (len(x),) + tuple(net.input_shape) and mshape != tuple(net.input_shape):
        maps = _pixel_sum(net, maps)
    if maps.shape != (len(x),) + mshape:
        raise ValueError(f"method {name!r} returned maps of shape {maps.shape}, expected "
                         f"{(len(x),) + mshape} (or the input's shape)")
    if not np.all(np.isfinite(maps)):
        raise ValueError(f"method {name!r} returned NaN or infinite values")
    return maps


def saliency_maps(net, x, methods, classes=None, seed=0, batch_size=64, *, rng=None):
    """Saliency maps of ``x`` for several methods, sharing one decomposition.

    Parameters
    ----------
    net : Network
    x : ndarray, shape (n, *input_shape)
    methods : sequence of str or callable
        Names (:func:`~refbbp.evaluate.registry.method_syntaxes`) or callables
        ``f(net, x, classes) -> maps`` returning ``(n, *map)`` or input-shaped
        ``(n, *input_shape)`` arrays (then ``|.|`` is summed over channels, as for
        ``"gradient"`` and ``"bias"``).
    classes : ndarray of int, shape (n,), optional
        Explained class per input (default the float64 prediction).
    seed : int
        Seed of the ``"random"`` maps (uniform on [0, 1)) when ``rng`` is not given.
    batch_size : int
        Inputs decomposed at once.
    rng : numpy.random.Generator, optional
        Generator the ``"random"`` maps are drawn from (default
        ``numpy.random.default_rng(seed)``). Successive calls on consecutive batches
        with one generator draw the same maps as one call on all of them.

    Returns
    -------
    dict of str to ndarray, shape (n, *map)
    """
    x = np.asarray(x, np.float64)
    if classes is None:
        classes = np.argmax(net.forward(x), axis=1)
    classes = np.asarray(classes, np.int64)
    rng = np.random.default_rng(seed) if rng is None else rng
    plan = resolve(methods)
    mshape = tuple(sal.map_shape(net.input_shape))
    on_dec = [(name, entry, args) for name, entry, args in plan if entry.decomposition]
    parts = {name: [] for name, _, _ in on_dec}
    if on_dec:
        for a in range(0, len(x), batch_size):
            dec = decompose(net, x[a:a + batch_size], target=classes[a:a + batch_size])
            for name, entry, args in on_dec:
                parts[name].append(entry.compute(dec, *args))
    out = {name: np.concatenate(p).reshape((len(x),) + mshape) for name, p in parts.items()}
    for name, entry, args in plan:
        if not entry.decomposition:
            out[name] = entry.compute(net, x, classes, rng, *args)
    return {name: _validate(name, net, x, out[name]) for name, _, _ in plan}
