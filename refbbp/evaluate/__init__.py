"""The pixel-removal evaluation of saliency maps (SPEC section 5; companion paper
section 4, eq. 17-20).

For an image ``x`` with predicted class ``k`` and a saliency map ``s`` (one value per
pixel position; all channels of a pixel are removed together):

* **Removal order.** ``+s`` removes the most salient pixel first, ``-s`` the least
  salient first. **Ties** in ``s`` are broken by pixel index (row-major), smallest first,
  in both directions (a stable sort); or, with ``ties="random"``, by a seeded random
  permutation of each image's pixels.
* **Removal.** The first ``m`` pixels of the order are set to the baseline (0 by
  default; a number, an array broadcastable to the input shape, the per-channel mean
  of the evaluated images ``"mean"`` or a Gaussian-blurred copy of the image
  ``"blur"``), giving ``x_m``.
* **First flip.** ``m*`` is the smallest ``m >= 1`` with ``argmax f(x_m) != k``
  (``argmax`` takes the first maximum). ``e(x, s) = 1 - ||x_{m*}||_2 / ||x||_2``
  (norms over all channels and pixels, in float64).
* **Never flips.** If no prefix changes the class, not even with every pixel removed,
  the image's ``flipped_*`` flag is False and, by default (``never_flip="count-as-1"``),
  ``e = 1``, the largest value possible (for the zero baseline also the value with
  every pixel removed); with ``never_flip="exclude"`` the image is left out of that
  method's statistics (NaN metrics, counted as ``excluded``). An image with
  ``||x||_2 = 0`` has ``e = nan`` (left out of the statistics).

Metrics per image: ``e_minus = e(x, -s)``, ``e_plus = e(x, +s)``,
``e_delta = e_minus - e_plus``; the same for the **noise baseline** ``xi`` (suffix
``_xi``): the map the same method gave another image, chosen by a seeded derangement
(a random permutation with no fixed point, the same for every method so that methods
stay paired) -- or, with ``noise_pool=k``, the mean of ``e`` over the maps of ``k``
other images; and ``de_* = e_* - e_*_xi`` (eq. 18, 20). The options and their exact
definitions are in :mod:`refbbp.evaluate.options`; the defaults are the protocol as
first implemented. Higher ``e_minus``,
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
  scans), :func:`noise_sources` and :func:`derangement` (the noise sources);
* ``options.py`` -- the evaluation options: baseline, ties, never-flip, noise pool;
* ``registry.py`` -- the method registry: :func:`register`, name lookup, the valid names;
* ``methods.py`` -- the registered methods and :func:`saliency_maps`;
* ``results.py`` -- :class:`Evaluation` (metrics, summary, CSV/JSON),
  :func:`wilcoxon_test` and :func:`boxplot`;
* ``protocol.py`` -- :func:`evaluate`, the driver.
"""

from .methods import DEFAULT_METHODS, saliency_maps
from .protocol import evaluate
from .registry import METHODS, method_syntaxes, register
from .options import BLUR_SIGMA, NEVER_FLIP, TIES
from .removal import derangement, first_flips, noise_sources, removal_order
from .results import METRICS, SCANS, Evaluation, boxplot, wilcoxon_test
from .scoring import OnnxScorer

__all__ = ["BLUR_SIGMA", "DEFAULT_METHODS", "METHODS", "METRICS", "NEVER_FLIP", "SCANS",
           "TIES", "Evaluation", "OnnxScorer", "boxplot", "derangement", "evaluate",
           "first_flips", "method_syntaxes", "noise_sources", "register", "removal_order",
           "saliency_maps", "wilcoxon_test"]
