"""Build the Cython kernel ``refbbp._core``; all metadata lives in pyproject.toml.

Set ``REFBBP_CYTHON_DEBUG=1`` to compile with bounds and wraparound checks on (CI can
run the tests that way to catch an out-of-bounds access in the kernel).
"""

import os
import sys

import numpy
from setuptools import Extension, setup

try:
    from Cython.Build import cythonize
except ImportError:
    sys.exit("refbbp needs Cython>=3 to build its kernel (refbbp/_core.pyx): "
             "pip install 'Cython>=3' or build with pip, which installs it")

debug = os.environ.get("REFBBP_CYTHON_DEBUG", "0") not in ("", "0")
directives = {
    "language_level": 3,
    "boundscheck": debug,
    "wraparound": debug,
    "cdivision": True,
    "initializedcheck": debug,
}
openmp = [] if sys.platform == "darwin" else ["-fopenmp"]

extensions = [
    Extension(
        "refbbp._core",
        ["refbbp/_core.pyx"],
        include_dirs=[numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O3"] + openmp,
        extra_link_args=openmp,
    )
]

setup(ext_modules=cythonize(extensions, compiler_directives=directives))
