"""refbbp: the reference implementation of bias attribution for piecewise-linear
neural networks.

A model exported to ONNX with piecewise-linear activations is, at any input ``x``,
exactly a linear model ``f(x) = w . x + b^x``. refbbp loads the model into a graph of
local affine maps (:func:`load`), computes the local linear model in float64
(:func:`linearize`) and distributes the bias ``b^x`` over the input features by bias
backpropagation. The semantics are fixed in SPEC.md.
"""

from .bbp import (Attribution, Completeness, Layer, RowLayout, bbp, deviation_scores,
                  sign_scores, weights_rule)
from .errors import (InputShapeError, MemoryBudgetError, ModelFormatError,
                     NotPiecewiseLinearError, RefbbpError, UnsupportedOpError)
from .linearize import LocalLinearModel, linearize
from .network import Network, Node, PiecewiseLinear, Trace
from .onnx import ImportNotice, load, supported_ops

__version__ = "0.1.0"

__all__ = [
    "Attribution", "Completeness", "Layer", "RowLayout", "bbp", "deviation_scores",
    "sign_scores", "weights_rule",
    "ImportNotice", "InputShapeError", "LocalLinearModel", "MemoryBudgetError",
    "ModelFormatError", "Network", "Node", "NotPiecewiseLinearError", "PiecewiseLinear",
    "RefbbpError", "Trace", "UnsupportedOpError", "linearize", "load", "supported_ops",
]

# Per-layer decompositions, saliency maps, the pixel-removal evaluation and the
# bias-importance study (SPEC sections 4-6). The modules ``saliency``, ``evaluate`` and
# ``bias_study`` are exported as modules (``refbbp.evaluate.evaluate(...)``); the
# function ``decompose`` takes the name of its module, whose other contents are
# imported with ``from refbbp.decompose import ...``.
from . import bias_study, evaluate, saliency  # noqa: E402
from .bias_study import BiasReport, bias_importance, zero_bias_network  # noqa: E402
from .decompose import Decomposition, LayerAttribution, decompose  # noqa: E402
from .evaluate import Evaluation  # noqa: E402

__all__ += [
    "BiasReport", "Decomposition", "Evaluation", "LayerAttribution", "bias_importance",
    "bias_study", "decompose", "evaluate", "saliency", "zero_bias_network",
]
