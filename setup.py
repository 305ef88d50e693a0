"""Build the Cython kernel ``refbbp._core``; all metadata lives in pyproject.toml.

Compiler flags are chosen per compiler (``BuildExt`` below): MSVC gets ``/O2 /openmp``;
other compilers (gcc, clang, mingw) get ``-O3``, plus ``-fopenmp`` if a tiny OpenMP
program compiles and links with it -- otherwise (Apple's clang, for one) the kernel is
built without OpenMP, with a one-line note: its ``prange`` loops then run serially and
give the same results (``refbbp._core.openmp_enabled()`` says which build you have).

Set ``REFBBP_CYTHON_DEBUG=1`` to compile with bounds, wraparound and initialisation
checks on (CI can run the tests that way to catch an out-of-bounds access in the
kernel). Cython regenerates ``_core.c`` only when ``_core.pyx`` is newer, so the
directives of the last build are kept in ``build/refbbp_cython_directives.txt`` and a
change (a debug build after a normal one, or back) regenerates it.
"""

import os
import sys
import tempfile

import numpy
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

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

OPENMP_TEST = """
#include <omp.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    return n > 0 && omp_get_max_threads() > 0 ? 0 : 1;
}
"""


class BuildExt(build_ext):
    """``build_ext`` with optimisation and OpenMP flags for the compiler in use."""

    def build_extensions(self):
        if self.compiler.compiler_type == "msvc":
            compile_args, link_args = ["/O2", "/openmp"], []
        elif self._links_with("-fopenmp"):
            compile_args, link_args = ["-O3", "-fopenmp"], ["-fopenmp"]
        else:
            print("refbbp: the C compiler does not support OpenMP (-fopenmp); building "
                  "the kernel without it (single-threaded, same results)")
            compile_args, link_args = ["-O3"], []
        for ext in self.extensions:
            ext.extra_compile_args = list(ext.extra_compile_args or []) + compile_args
            ext.extra_link_args = list(ext.extra_link_args or []) + link_args
        super().build_extensions()

    def _links_with(self, flag):
        """Whether a small OpenMP program compiles and links with ``flag``."""
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "openmp_test.c")
            with open(src, "w") as f:
                f.write(OPENMP_TEST)
            try:
                objects = self.compiler.compile([src], output_dir=tmp,
                                                extra_postargs=[flag])
                self.compiler.link_executable(objects, "openmp_test", output_dir=tmp,
                                              extra_postargs=[flag])
            except Exception:  # CompileError, LinkError, a missing compiler driver
                return False
        return True


extensions = [
    Extension(
        "refbbp._core",
        ["refbbp/_core.pyx"],
        include_dirs=[numpy.get_include(), "refbbp"],
        depends=["refbbp/_vector.h"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
]

STAMP = os.path.join("build", "refbbp_cython_directives.txt")


def _last_directives():
    try:
        with open(STAMP) as f:
            return f.read()
    except OSError:
        return None


wanted = repr(sorted(directives.items()))
ext_modules = cythonize(extensions, compiler_directives=directives,
                        force=_last_directives() != wanted)
os.makedirs(os.path.dirname(STAMP), exist_ok=True)
with open(STAMP, "w") as f:
    f.write(wanted)

setup(ext_modules=ext_modules, cmdclass={"build_ext": BuildExt})
