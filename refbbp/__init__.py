"""refbbp: the reference implementation of bias attribution for piecewise-linear
neural networks.

A model exported to ONNX with piecewise-linear activations is, at any input ``x``,
exactly a linear model ``f(x) = w . x + b^x``. refbbp loads the model into a graph of
local affine maps (:func:`load`), computes the local linear model in float64
(:func:`linearize`) and distributes the bias ``b^x`` over the input features by bias
backpropagation (:func:`bbp`). The semantics are fixed in SPEC.md.

The subpackages follow the pipeline: ``onnx`` (import) builds a ``network`` (local
affine maps, linearisation), then ``bbp`` (bias backpropagation) -> ``explain``
(decompositions, saliency) -> ``evaluate`` (pixel removal) -> ``studies`` (bias
importance); ``io`` (inputs, bundled data, oracle files, checks against onnxruntime) and
``cli`` sit at the edge. Each imports only from the ones before it, with ``network``
before ``onnx`` (the importer builds networks; a network knows nothing of ONNX);
``tests/test_imports.py`` checks the order and that there is no import cycle.
"""

from ._version import __version__
from .bbp import (Attribution, Completeness, Layer, RowLayout, bbp, deviation_scores,
                  sign_scores, weights_rule)
from .errors import (InputShapeError, MemoryBudgetError, ModelFormatError,
                     NotPiecewiseLinearError, RefbbpError, UnsupportedOpError)
from .network import (IntegratedGradients, LocalLinearModel, Network, Node, PiecewiseLinear,
                      Region, Segment, Trace, integrated_gradients, linearize, region)
from .onnx import ImportNotice, load, supported_ops

# SPEC sections 4-6. ``saliency``, ``evaluate`` and ``bias_study`` are exported as
# modules (``refbbp.evaluate.evaluate(...)``).
from . import evaluate
from .evaluate import Evaluation
from .explain import Decomposition, LayerAttribution, decompose, saliency
from .io import data
from . import runs
from .runs import run
from .studies import BiasReport, bias_importance, bias_study, zero_bias_network

__all__ = [
    "__version__", "Attribution", "BiasReport", "Completeness", "Decomposition",
    "Evaluation", "ImportNotice", "InputShapeError", "IntegratedGradients", "Layer",
    "LayerAttribution", "LocalLinearModel", "MemoryBudgetError", "ModelFormatError",
    "Network", "Node", "NotPiecewiseLinearError", "PiecewiseLinear", "RefbbpError",
    "Region", "RowLayout", "Segment", "Trace", "UnsupportedOpError", "bbp",
    "bias_importance", "bias_study", "data", "decompose", "deviation_scores", "evaluate",
    "integrated_gradients", "linearize", "load", "region", "run", "runs", "saliency",
    "sign_scores", "supported_ops", "weights_rule", "zero_bias_network",
]
