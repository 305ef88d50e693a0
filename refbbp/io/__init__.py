"""The edge of the library: reading inputs, the bundled model and data, golden
oracle files, and checks of a network against onnxruntime.

* ``inputs.py`` -- :func:`read_inputs`: ``.npy``/``.npz`` arrays and image files.
* ``data/`` -- the bundled digits model and samples (``refbbp.data``).
* ``oracle.py`` -- the golden float64 oracle format (write, read, compare).
* ``verify.py`` -- forward pass against onnxruntime, and SPEC's identities.
"""

from . import data
from .inputs import read_inputs

__all__ = ["data", "read_inputs"]
