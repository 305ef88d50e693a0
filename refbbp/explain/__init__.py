"""Explanations built on the local linear model (SPEC section 4, companion paper
section 2).

* ``decompose.py`` -- :func:`decompose`: per-layer activity and bias attributions.
* ``saliency.py`` -- saliency maps from a decomposition: gradient x input, FullGrad,
  layer aggregates, and the rescale/upsample transforms they share.
"""

from . import saliency
from .decompose import Decomposition, LayerAttribution, decompose

__all__ = ["Decomposition", "LayerAttribution", "decompose", "saliency"]
