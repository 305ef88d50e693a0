"""ONNX import: one converter module per op family, registered explicitly."""

from . import activations, conv, elementwise, gemm, index, pool  # noqa: F401
from .loader import ImportNotice, load
from .registry import supported_ops

# The converter modules, imported above for their registrations (in this order).
CONVERTER_MODULES = (activations, conv, elementwise, gemm, index, pool)

__all__ = ["ImportNotice", "load", "supported_ops", "CONVERTER_MODULES"]
