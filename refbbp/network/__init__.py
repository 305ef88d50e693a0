"""Networks of local affine maps (SPEC sections 1-2).

* ``piecewise.py`` -- :class:`PiecewiseLinear`, the elementwise activations.
* ``nodes.py`` -- :class:`Node`: input, affine and max nodes.
* ``trace.py`` -- :class:`Trace`, what a forward pass computed.
* ``linearize.py`` -- :func:`linearize`, the local linear model ``f(x) = w . x + b^x``.
* ``graph.py`` -- :class:`Network`, the DAG and its float64 forward pass.
* ``region.py`` -- :func:`region` and exact :func:`integrated_gradients` (SPEC section 7).
* ``start.py`` -- explaining from a chosen node (SPEC section 8): the cut network of
  :meth:`Network.from_node` and the :class:`Start` every result names.
"""

from .graph import Network, live_nodes
from .linearize import LocalLinearModel, linearize, target_vectors
from .nodes import Node
from .piecewise import PiecewiseLinear
from .start import Start
from .region import (Boundary, IntegratedGradients, Region, Segment, integrated_gradients,
                     region)
from .trace import Trace

__all__ = ["Boundary", "IntegratedGradients", "LocalLinearModel", "Network", "Node",
           "PiecewiseLinear", "Region", "Segment", "Start", "Trace", "integrated_gradients",
           "linearize", "live_nodes", "region", "target_vectors"]
