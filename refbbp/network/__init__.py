"""Networks of local affine maps: nodes, activations, forward pass."""

from .activations import PiecewiseLinear
from .graph import Network, Trace
from .nodes import Node

__all__ = ["Network", "Node", "PiecewiseLinear", "Trace"]
