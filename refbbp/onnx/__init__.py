"""ONNX import: one converter module per op family, registered explicitly.

``loader.py`` imports the converter modules (``CONVERTER_MODULES``), each of which
registers its converters with ``registry.py`` by decorator; ``builder.py`` turns the
converted ops into the nodes of a :class:`~refbbp.network.Network`.
"""

from .loader import CONVERTER_MODULES, ImportNotice, load
from .registry import supported_ops

__all__ = ["CONVERTER_MODULES", "ImportNotice", "load", "supported_ops"]
