"""The converter registry: ``(domain, op_type, since_version) -> converter``.

Each converter module registers its functions with :func:`converter`, an explicit
decorator; :data:`CONVERTER_MODULES` in ``refbbp/onnx/loader.py`` lists the modules
that are imported. The opset of a node is resolved with
``onnx.defs.get_schema(op, max_inclusive_version=opset).since_version``, so one entry
serves every opset until the op's definition changes.

Every registered converter is wrapped so that the registry checks the node first
(:meth:`OnnxNode.check_schema`: arity, required inputs and attribute types from the
ONNX schema, and no attribute the converter does not read); converters read attributes
through the typed getters of :class:`OnnxNode`, which check ranges and lengths. A node
that breaks its op's definition is a :class:`~refbbp.errors.ModelFormatError`
(:meth:`OnnxNode.malformed`), one that is valid but not converted an
:class:`~refbbp.errors.UnsupportedOpError`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import onnx
import onnx.defs
from onnx import helper

from ..errors import ModelFormatError, NotPiecewiseLinearError, UnsupportedOpError

__all__ = ["ALL", "OnnxNode", "converter", "lookup", "run_node", "supported_ops",
           "NOT_PIECEWISE_LINEAR", "PIECEWISE_LINEAR_UNSUPPORTED"]

_REGISTRY: dict[tuple[str, str, int], object] = {}

# Ops refused because a network using them is not (continuous) piecewise linear in its
# input (SPEC section 1), each with the reason its error gives. Mul, Div, MatMul, Gemm,
# Conv, PRelu, Clip and Where are refused by their converters when an operand that
# must be constant varies.
_SMOOTH = "is a smooth non-linear function of its input: it has no linear pieces"
_STATISTICS = "divides by statistics of its input (a non-linear function of it)"
_DISCONTINUOUS = ("is discontinuous in its input with infinitely many pieces (a step at "
                  "every integer)")
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
    **dict.fromkeys(["Floor", "Ceil", "Round", "Mod"], _DISCONTINUOUS),
    **dict.fromkeys(["Hardmax", "ArgMax", "ArgMin", "Greater", "GreaterOrEqual", "Less",
                     "LessOrEqual", "Equal", "NonZero"], _DISCRETE),
}

# Ops that are (continuous) piecewise linear, or linear with a constant operand, but
# have no converter: refused as merely unsupported, and the error says so.
PIECEWISE_LINEAR_UNSUPPORTED = {
    "TopK", "MaxUnpool", "MaxRoiPool", "CumSum", "GridSample",
}


#: ``attrs=ALL`` in :func:`converter`: the converter handles every attribute of the op
#: (ops run on element ids by ONNX's reference evaluator, which implements them all).
ALL = "all"

_ATTR = onnx.AttributeProto
_TYPE_NAMES = {_ATTR.INT: "an int", _ATTR.INTS: "a list of ints", _ATTR.FLOAT: "a float",
               _ATTR.FLOATS: "a list of floats", _ATTR.STRING: "a string",
               _ATTR.STRINGS: "a list of strings", _ATTR.TENSOR: "a tensor",
               _ATTR.GRAPH: "a graph"}


def _type_name(t):
    return _TYPE_NAMES.get(t, _ATTR.AttributeType.Name(t) if t in
                           _ATTR.AttributeType.values() else f"type {t}")


def _decoded(value):
    """``bytes`` attribute values (and lists of them) as ``str``."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode(errors="replace") for v in value]
    return value


@functools.cache
def _schema(op_type, opset, domain):
    """The ONNX schema of ``op_type`` in force at ``opset``, or ``None`` if ONNX has none."""
    try:
        return onnx.defs.get_schema(op_type, max_inclusive_version=opset, domain=domain)
    except (onnx.defs.SchemaError, TypeError):
        # TypeError: an op type or domain that is not valid text (a corrupt file); the
        # converter lookup then refuses the node as an op refbbp does not know
        return None


def _count(low, high):
    """How many of something there may be, ``low`` to ``high``, in words."""
    if low == high:
        return f"exactly {low}"
    if high >= 2**31 - 1:
        return f"at least {low}"
    return f"{low} to {high}"


@dataclass
class OnnxNode:
    """An ONNX node as converters see it: decoded attributes and its resolved opset.

    Every attribute is read through a typed getter (:meth:`int_attr`, :meth:`ints_attr`,
    :meth:`flag_attr`, :meth:`float_attr`, :meth:`str_attr`) that checks its protobuf
    type and its range, and :meth:`check_schema` (run by the registry before every
    converter) checks the node's arity and attribute types against the ONNX schema.
    """

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
        ``str``, not the ``bytes`` protobuf stores. Converters read attributes through
        the typed getters instead, which check types and ranges."""
        return {a.name: self._value(a) for a in self.proto.attribute}

    # --------------------------------------------------------------- errors
    def unsupported(self, reason):
        """The error to raise for an unsupported attribute or input of this node."""
        return UnsupportedOpError(self.op_type, self.domain, self.opset, self.name, reason,
                                  supported_ops())

    def not_piecewise_linear(self, reason):
        return NotPiecewiseLinearError(self.op_type, self.domain, self.opset, self.name,
                                       reason, supported_ops())

    def malformed(self, reason):
        """The error to raise when the node breaks the ONNX definition of its op (wrong
        arity, attribute type or value): a :class:`~refbbp.errors.ModelFormatError`
        naming the op, its domain and opset, and the node, like :meth:`unsupported`."""
        return ModelFormatError(
            f"malformed node: op {self.op_type!r} (domain {self.domain or 'ai.onnx'!r}, "
            f"opset {self.opset}) at node {self.name!r}: {reason}")

    # ----------------------------------------------------- schema: arity, types
    def check_schema(self, handled=ALL):
        """Check the node against the ONNX definition of its op at its opset.

        The number of inputs and outputs, required inputs given (not ``""``), no
        attribute twice, every attribute known to the op and of the protobuf type the
        op declares, required attributes present: otherwise
        :class:`~refbbp.errors.ModelFormatError`. An attribute the op has but the
        converter does not read (not in ``handled``) is
        :class:`~refbbp.errors.UnsupportedOpError`. Nodes of ops ONNX does not define
        are left to the converter lookup.

        Parameters
        ----------
        handled : collection of str, or ALL
            The attributes the converter reads.
        """
        domain = "" if self.domain == "ai.onnx" else self.domain
        schema = _schema(self.op_type, self.opset, domain)
        if schema is None:
            return
        where = f"the definition since opset {schema.since_version}"
        n_in = len(self.proto.input)
        if not schema.min_input <= n_in <= schema.max_input:
            raise self.malformed(
                f"{n_in} input{'s' * (n_in != 1)}; {where} takes "
                f"{_count(schema.min_input, schema.max_input)}")
        formal = list(schema.inputs)
        for i, name in enumerate(self.proto.input):
            param = formal[min(i, len(formal) - 1)] if formal else None
            if not name and param is not None and \
                    param.option != onnx.defs.OpSchema.FormalParameterOption.Optional:
                raise self.malformed(f"input {i} ({param.name}) is required, but its name is "
                                     f"empty")
        n_out = len(self.proto.output)
        if not schema.min_output <= n_out <= schema.max_output:
            raise self.malformed(
                f"{n_out} output{'s' * (n_out != 1)}; {where} has "
                f"{_count(schema.min_output, schema.max_output)}")
        seen = set()
        for a in self.proto.attribute:
            if a.name in seen:
                raise self.malformed(f"attribute {a.name!r} is given twice")
            seen.add(a.name)
            spec = schema.attributes.get(a.name)
            if spec is None:
                known = ", ".join(sorted(schema.attributes)) or "none"
                raise self.malformed(f"unknown attribute {a.name!r} ({where} has: {known})")
            expected = spec.type.value
            if a.type != expected:
                raise self.malformed(f"attribute {a.name!r} is {_type_name(a.type)}; expected "
                                     f"{_type_name(expected)}")
            if handled != ALL and a.name not in handled:
                raise self.unsupported(f"attribute {a.name!r} is not supported")
        missing = sorted(k for k, v in schema.attributes.items() if v.required and k not in seen)
        if missing:
            raise self.malformed(f"required attribute {missing[0]!r} is missing")

    # ------------------------------------------------------- typed attributes
    def _proto_attr(self, name):
        found = [a for a in self.proto.attribute if a.name == name]
        if len(found) > 1:
            raise self.malformed(f"attribute {name!r} is given twice")
        return found[0] if found else None

    def _value(self, a):
        try:
            return _decoded(helper.get_attribute_value(a))
        except Exception:  # an attribute with no (or an unknown) type
            raise self.malformed(f"attribute {a.name!r} has no value of a known type "
                                 f"({_type_name(a.type)})") from None

    def _typed(self, name, kind):
        """The value of attribute ``name`` if it has the protobuf type ``kind``, ``None``
        if absent; any other type is malformed."""
        a = self._proto_attr(name)
        if a is None:
            return None
        if a.type != kind:
            raise self.malformed(f"attribute {name!r} is {_type_name(a.type)}; expected "
                                 f"{_type_name(kind)}")
        return self._value(a)

    def has_attr(self, name):
        return self._proto_attr(name) is not None

    def int_attr(self, name, default=None, *, min=None, max=None):
        """Attribute ``name`` as an int in ``[min, max]`` (``default`` if absent)."""
        v = self._typed(name, _ATTR.INT)
        if v is None:
            return default
        if (min is not None and v < min) or (max is not None and v > max):
            raise self.malformed(f"attribute {name!r} is {v}; expected an int "
                                 f"{_range(min, max)}")
        return int(v)

    def flag_attr(self, name, default=0):
        """A 0/1 attribute (``transA``, ``keepdims``, ``ceil_mode``, ...) as a bool."""
        return bool(self.int_attr(name, default, min=0, max=1))

    def ints_attr(self, name, default=None, *, length=None, min=None, what=None):
        """Attribute ``name`` as a list of ints, each ``>= min``, ``length`` of them
        (``default`` if absent). ``what`` says what the length is (e.g. "one per spatial
        axis")."""
        v = self._typed(name, _ATTR.INTS)
        if v is None:
            return None if default is None else list(default)
        v = [int(i) for i in v]
        if length is not None and len(v) != length:
            raise self.malformed(f"attribute {name!r} is {v} ({len(v)} values); expected "
                                 f"{length}" + (f" ({what})" if what else ""))
        if min is not None and any(i < min for i in v):
            raise self.malformed(f"attribute {name!r} is {v}; expected ints {_range(min, None)}")
        return v

    def float_attr(self, name, default=None, *, finite=True):
        """Attribute ``name`` as a float, finite unless ``finite=False`` (then only NaN
        is refused); ``default`` if absent."""
        v = self._typed(name, _ATTR.FLOAT)
        if v is None:
            return default
        if np.isnan(v) or (finite and not np.isfinite(v)):
            raise self.malformed(f"attribute {name!r} is {v}; expected a "
                                 f"{'finite float' if finite else 'float (not NaN)'}")
        return float(v)

    def str_attr(self, name, default=None, choices=None):
        """Attribute ``name`` as a ``str``, one of ``choices`` (``default`` if absent)."""
        v = self._typed(name, _ATTR.STRING)
        if v is None:
            return default
        if choices is not None and v not in choices:
            raise self.malformed(f"attribute {name!r} is {v!r}; expected one of "
                                 f"{', '.join(map(repr, choices))}")
        return v


def _range(low, high):
    if low is not None and high is not None:
        return f"in [{low}, {high}]"
    return f">= {low}" if low is not None else f"<= {high}"


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


def converter(op_type, first=1, last=None, domain="", attrs=()):
    """Register a converter for every definition of ``op_type`` whose since_version lies
    in ``[first, last]``. Raises on a duplicate registration.

    The registered function checks the node first (:meth:`OnnxNode.check_schema`:
    arity, required inputs and attribute types from the ONNX schema), so no converter
    can forget it; ``attrs`` names the attributes the converter reads (``ALL``: every
    one), and a node with any other attribute of the op is refused as unsupported.
    Ranges (``strides >= 1``, lengths, choices) are checked where the converter reads
    each attribute, through the typed getters of :class:`OnnxNode`.
    """
    handled = attrs if attrs == ALL else frozenset(attrs)

    def register(fn):
        versions = [v for v in _since_versions(op_type, domain)
                    if v >= first and (last is None or v <= last)]
        if not versions:
            raise ValueError(f"{op_type}: no ONNX definition in [{first}, {last}]")

        @functools.wraps(fn)
        def checked(b, node, ins):
            node.check_schema(handled)
            return fn(b, node, ins)

        checked.handled_attrs = handled
        for v in versions:
            key = (domain, op_type, v)
            if key in _REGISTRY:
                raise ValueError(f"duplicate converter for {key}: {_REGISTRY[key].__name__} "
                                 f"and {fn.__name__}")
            _REGISTRY[key] = checked
        return checked

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
    schema = _schema(op, node.opset, domain)
    since = None if schema is None else schema.since_version
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
