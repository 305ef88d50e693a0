"""Exceptions raised by refbbp.

Every error names what was wrong and what was expected. Model import errors carry
the ONNX op type, node name and opset so that a user can find the offending node.
"""

from __future__ import annotations

__all__ = [
    "RefbbpError",
    "UnsupportedOpError",
    "NotPiecewiseLinearError",
    "ModelFormatError",
    "MemoryBudgetError",
    "InputShapeError",
    "InputFileError",
    "RunError",
]


class RefbbpError(Exception):
    """Base class of every error refbbp raises on purpose."""


class ModelFormatError(RefbbpError, ValueError):
    """The ONNX model is malformed or outside what refbbp reads (e.g. two data inputs)."""


class InputShapeError(RefbbpError, ValueError):
    """An input array does not have the shape or values the network expects."""


class InputFileError(RefbbpError, ValueError):
    """A file of inputs, data or oracle fields cannot be read safely: not a regular file,
    too large, not in the expected format (truncated, corrupt, wrong kind of file), or
    declaring arrays larger than the budget."""


class RunError(RefbbpError, ValueError):
    """A run folder (``refbbp.run``, ``--out-dir``) cannot be used: not a run folder, a
    run of another model, task or options than the one resumed, or a finished run
    whose shards are missing or altered."""


class MemoryBudgetError(RefbbpError, MemoryError):
    """A layer would take more memory than the caller's ``max_bytes`` budget allows."""


class UnsupportedOpError(RefbbpError, NotImplementedError):
    """An ONNX op (or one of its attributes) that refbbp does not convert.

    Parameters
    ----------
    op_type, domain, opset, node_name : str, str, int, str
        Identify the node.
    reason : str
        What exactly is not supported.
    supported : iterable of str, optional
        The op types refbbp converts; listed in the message.
    """

    piecewise_linear = True

    def __init__(self, op_type, domain, opset, node_name, reason, supported=()):
        self.op_type = op_type
        self.domain = domain or "ai.onnx"
        self.opset = opset
        self.node_name = node_name
        self.reason = reason
        msg = (
            f"{self._kind()}: op {op_type!r} (domain {self.domain!r}, opset {opset}) "
            f"at node {node_name!r}: {reason}"
        )
        supported = sorted(set(supported))
        if supported:
            msg += "\nSupported ops: " + ", ".join(supported)
        super().__init__(msg)

    def _kind(self):
        return "unsupported op"


class NotPiecewiseLinearError(UnsupportedOpError):
    """The model contains an op whose output depends non-linearly on the input."""

    piecewise_linear = False

    def _kind(self):
        return "model is not piecewise linear"
