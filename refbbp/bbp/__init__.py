"""Bias backpropagation (SPEC section 3, BBp paper section 4).

* ``propagate.py`` -- :func:`bbp`, the driver: validation, node loop, backends.
* ``rules.py`` -- the attribution rules ("sign", "deviation", user callables) and the
  :class:`RowLayout` a rule sees.
* ``structure.py`` -- per-node stacked CSR structures and transposes for the kernel.
* ``kernels.py`` -- validated wrappers around the Cython kernels (``refbbp/_core.pyx``).
* ``attribution.py`` -- :class:`Attribution`, :class:`Layer`, completeness checks.

The NumPy reference the kernel is tested against is ``refbbp/bbp/reference.py``.
"""

from .attribution import Attribution, Completeness, Layer
from .propagate import bbp
from .rules import RowLayout, deviation_scores, sign_scores, weights_rule

__all__ = ["Attribution", "Completeness", "Layer", "RowLayout", "bbp", "deviation_scores",
           "sign_scores", "weights_rule"]
