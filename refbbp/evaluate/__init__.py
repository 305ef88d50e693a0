"""The pixel-removal evaluation of saliency maps (SPEC section 5, companion paper
section 4)."""

from .protocol import (DEFAULT_METHODS, METRICS, SCANS, Evaluation, OnnxScorer, boxplot,
                       derangement, evaluate, first_flips, removal_order, saliency_maps,
                       wilcoxon_test)

__all__ = ["DEFAULT_METHODS", "METRICS", "SCANS", "Evaluation", "OnnxScorer", "boxplot",
           "derangement", "evaluate", "first_flips", "removal_order", "saliency_maps",
           "wilcoxon_test"]
