"""The pixel-removal evaluation of saliency maps (SPEC section 5; companion paper
section 4, eq. 17-20).

For an image ``x`` with predicted class ``k`` and a saliency map ``s`` (one value per
pixel position; all channels of a pixel are removed together):

* **Removal order.** ``+s`` removes the most salient pixel first, ``-s`` the least
  salient first. **Ties** in ``s`` are broken by pixel index (row-major), smallest first,
  in both directions (a stable sort).
* **Removal.** The first ``m`` pixels of the order are set to the baseline (0 by
  default; a scalar or an array broadcastable to the input shape), giving ``x_m``.
* **First flip.** ``m*`` is the smallest ``m >= 1`` with ``argmax f(x_m) != k``
  (``argmax`` takes the first maximum). ``e(x, s) = 1 - ||x_{m*}||_2 / ||x||_2``
  (norms over all channels and pixels, in float64).
* **Never flips.** If no prefix changes the class, not even with every pixel removed,
  ``e`` is its value with every pixel removed, ``1 - ||baseline||_2 / ||x||_2`` (1 for
  the zero baseline: the largest value possible), and the image's ``flipped_*`` flag is
  False, so such images can be counted or filtered. An image with ``||x||_2 = 0`` has
  ``e = nan`` (left out of the statistics).

Metrics per image: ``e_minus = e(x, -s)``, ``e_plus = e(x, +s)``,
``e_delta = e_minus - e_plus``; the same for the **noise baseline** ``xi`` (suffix
``_xi``): the map the same method gave another image, chosen by a seeded derangement
(a random permutation with no fixed point, the same for every method so that methods
stay paired); and ``de_* = e_* - e_*_xi`` (eq. 18, 20). Higher ``e_minus``,
``e_delta``, ``de_minus``, ``de_delta`` and lower ``e_plus``, ``de_plus`` mean a better
map.

**Scoring, exactly and in batches.** Perturbed images are scored by onnxruntime, one
session per model, in batches. The first flip is found exactly, not by bisection
(the class may flip and flip back): the prefixes of a removal order are scored *in
order*, in chunks of ``chunk`` prefixes; the scan stops at the first chunk containing a
flip, and ``m*`` is the first flipping prefix in it. Every prefix before ``m*`` has
therefore been scored and keeps the class. Prefixes whose image equals the previous one
(the pixel just removed was already at the baseline in every channel, e.g. the black
background of a digit) are not scored again: the image, hence the prediction, is
unchanged, so the first flip is never at such a prefix. Chunks of many scans (images,
methods, directions) go to onnxruntime together.

**Methods** are named, each registered once in :data:`METHODS`
(:mod:`refbbp.evaluate.registry`; :func:`method_syntaxes` lists the valid names:
``"gradient"``, ``"fullgrad"``, ``"layers-top2"``, ``"bias"``, ``"random"``, ...), or
are any callable ``f(net, x, classes) -> maps``.

Modules, in pipeline order (each imports only from the ones before it):

* ``scoring.py`` -- :class:`OnnxScorer`: onnxruntime logits of batches of perturbed
  images (over :class:`refbbp.onnx.runtime.RuntimeSession`);
* ``removal.py`` -- :func:`removal_order`, :func:`first_flips` (the exact first-flip
  scans) and :func:`derangement` (the noise sources);
* ``registry.py`` -- the method registry: :func:`register`, name lookup, the valid names;
* ``methods.py`` -- the registered methods and :func:`saliency_maps`;
* ``results.py`` -- :class:`Evaluation` (metrics, summary, CSV/JSON),
  :func:`wilcoxon_test` and :func:`boxplot`;
* ``protocol.py`` -- :func:`evaluate`, the driver.
"""

from .methods import DEFAULT_METHODS, saliency_maps
from .protocol import evaluate
from .registry import METHODS, method_syntaxes, register
from .removal import derangement, first_flips, removal_order
from .results import METRICS, SCANS, Evaluation, boxplot, wilcoxon_test
from .scoring import OnnxScorer

__all__ = ["DEFAULT_METHODS", "METHODS", "METRICS", "SCANS", "Evaluation", "OnnxScorer",
           "boxplot", "derangement", "evaluate", "first_flips", "method_syntaxes",
           "register", "removal_order", "saliency_maps", "wilcoxon_test"]
