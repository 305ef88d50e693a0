"""The papers' studies on whole data sets.

* ``bias_study.py`` -- the BBp paper's bias-importance study (SPEC section 6): the
  accuracy of "only wx", "only b" and of the model with every bias zeroed.
"""

from . import bias_study
from .bias_study import BiasReport, bias_importance, zero_bias_network

__all__ = ["BiasReport", "bias_importance", "bias_study", "zero_bias_network"]
