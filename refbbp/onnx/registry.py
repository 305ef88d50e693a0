"""The converter registry: ``(domain, op_type, since_version) -> converter``.

Each converter module registers its functions with :func:`converter`, an explicit
decorator; :data:`CONVERTER_MODULES` in ``refbbp/onnx/loader.py`` lists the modules
that are imported. The opset of a node is resolved with
``onnx.defs.get_schema(op, max_inclusive_version=opset).since_version``, so one entry
serves every opset until the op's definition changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx.defs
from onnx import helper

from ..errors import NotPiecewiseLinearError, UnsupportedOpError

__all__ = ["OnnxNode", "converter", "lookup", "run_node", "supported_ops",
           "NOT_PIECEWISE_LINEAR", "PIECEWISE_LINEAR_UNSUPPORTED"]

_REGISTRY: dict[tuple[str, str, int], object] = {}

# Ops refused because a network using them is not (continuous) piecewise linear in its
# input (SPEC section 1), each with the reason its error gives. Mul, Div, MatMul, Gemm,
# Conv, PRelu, Clip and Where are refused by their converters when an operand that
# must be constant varies.
_SMOOTH = "is a smooth non-linear function of its input: it has no linear pieces"
_STATISTICS = "divides by statistics of its input (a non-linear function of it)"
_DISCONTINUOUS = "is discontinuous in its input (piecewise constant, or linear with jumps)"
_DISCRETE = "has a discrete output (boolean, integer or one-hot)"
NOT_PIECEWISE_LINEAR = {
    **dict.fromkeys([
        "Sigmoid", "Tanh", "Exp", "Log", "Softmax", "LogSoftmax", "Softplus", "Softsign",
        "Elu", "Selu", "Celu", "Gelu", "Mish", "Erf", "Sqrt", "Reciprocal", "Pow", "Sin",
        "Cos", "Tan", "HardSwish", "Swish", "Atan", "Asin", "Acos", "Sinh", "Cosh", "Asinh",
        "Acosh", "Atanh", "ReduceProd", "ReduceLogSumExp", "ReduceL2", "ReduceSumSquare",
    ], _SMOOTH),
    **dict.fromkeys([
        "LpNormalization", "LRN", "InstanceNormalization", "LayerNormalization",
        "GroupNormalization", "MeanVarianceNormalization",
    ], _STATISTICS),
    **dict.fromkeys(["Sign", "Floor", "Ceil", "Round", "Mod", "ThresholdedRelu", "Shrink"],
                    _DISCONTINUOUS),
    **dict.fromkeys(["Hardmax", "ArgMax", "ArgMin", "Greater", "GreaterOrEqual", "Less",
                     "LessOrEqual", "Equal", "NonZero"], _DISCRETE),
}

# Ops that are (continuous) piecewise linear, or linear with a constant operand, but
# have no converter: refused as merely unsupported, and the error says so.
PIECEWISE_LINEAR_UNSUPPORTED = {
    "Abs", "HardSigmoid", "Max", "Min", "ReduceMax", "ReduceMin", "ReduceL1", "TopK",
    "MaxUnpool", "MaxRoiPool", "Einsum", "CumSum", "Resize", "Upsample", "GridSample",
}


def _decoded(value):
    """``bytes`` attribute values (and lists of them) as ``str``."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode() for v in value]
    return value


@dataclass
class OnnxNode:
    """An ONNX node as converters see it: decoded attributes and its resolved opset."""

    proto: onnx.NodeProto
    opset: int

    @property
    def op_type(self):
        return self.proto.op_type

    @property
    def domain(self):
        return self.proto.domain or ""

    @property
    def name(self):
        return self.proto.name or f"{self.op_type}({', '.join(self.proto.output)})"

    @property
    def attrs(self):
        """Attribute values by name; string attributes (``auto_pad``, ``mode``, ...) as
        ``str``, not the ``bytes`` protobuf stores."""
        return {a.name: _decoded(helper.get_attribute_value(a)) for a in self.proto.attribute}

    def unsupported(self, reason):
        """The error to raise for an unsupported attribute or input of this node."""
        return UnsupportedOpError(self.op_type, self.domain, self.opset, self.name, reason,
                                  supported_ops())

    def not_piecewise_linear(self, reason):
        return NotPiecewiseLinearError(self.op_type, self.domain, self.opset, self.name,
                                       reason, supported_ops())


def run_node(proto, opset, domain, feeds):
    """Evaluate one ONNX node with ONNX's reference evaluator at the given opset.

    Parameters
    ----------
    proto : onnx.NodeProto
    feeds : dict of str to ndarray
        Values of the node's (non-empty) inputs.

    Returns
    -------
    list of ndarray
    """
    from onnx.reference import ReferenceEvaluator

    inputs = [helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None)
              for n in proto.input if n]
    outputs = [helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None)
               for n in proto.output if n]
    graph = helper.make_graph([proto], "refbbp_node", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(domain, opset)])
    outs = ReferenceEvaluator(model).run(None, feeds)
    return [np.asarray(o) for o in outs]


def _since_versions(op_type, domain):
    return sorted({s.since_version for s in onnx.defs.get_all_schemas_with_history()
                   if s.name == op_type and s.domain == domain})


def converter(op_type, first=1, last=None, domain=""):
    """Register a converter for every definition of ``op_type`` whose since_version lies
    in ``[first, last]``. Raises on a duplicate registration."""

    def register(fn):
        versions = [v for v in _since_versions(op_type, domain)
                    if v >= first and (last is None or v <= last)]
        if not versions:
            raise ValueError(f"{op_type}: no ONNX definition in [{first}, {last}]")
        for v in versions:
            key = (domain, op_type, v)
            if key in _REGISTRY:
                raise ValueError(f"duplicate converter for {key}: {_REGISTRY[key].__name__} "
                                 f"and {fn.__name__}")
            _REGISTRY[key] = fn
        return fn

    return register


def supported_ops():
    """Sorted op types that have a converter."""
    return sorted({op for _, op, _ in _REGISTRY})


def lookup(node):
    """The converter for ``node`` (an :class:`OnnxNode`), or a clear error."""
    op, domain = node.op_type, node.domain
    if domain in ("", "ai.onnx"):
        domain = ""
    if op in NOT_PIECEWISE_LINEAR and domain == "":
        why = f"{op} {NOT_PIECEWISE_LINEAR[op]}, so the network has no exact local linear model"
        if op in ("Softmax", "LogSoftmax"):
            why += " (a Softmax/LogSoftmax is dropped only at the very end of the graph)"
        raise node.not_piecewise_linear(why)
    try:
        since = onnx.defs.get_schema(op, max_inclusive_version=node.opset,
                                     domain=domain).since_version
    except onnx.defs.SchemaError:
        since = None
    fn = _REGISTRY.get((domain, op, since))
    if fn is None:
        known = [v for d, o, v in _REGISTRY if d == domain and o == op]
        if known:
            why = (f"this definition (since opset {since}) is not converted; converted "
                   f"definitions: since opset {sorted(known)}")
        elif op in PIECEWISE_LINEAR_UNSUPPORTED and domain == "":
            why = (f"{op} keeps a network piecewise linear, but refbbp has no converter "
                   f"for it")
        else:
            why = "no converter for this op"
        raise node.unsupported(why)
    return fn
