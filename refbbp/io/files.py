"""Reading files that users name, safely: regular files only, sizes checked before reading.

Every file refbbp reads on a user's behalf (inputs, data sets, oracle files, models on the
command line) goes through :func:`regular_file` first: a directory, a FIFO, a device
(``/dev/zero``) or a socket is refused without being opened, and so is a file larger
than the caller's cap. Arrays are read by :func:`read_npy` and :func:`read_npz`, which
read each ``.npy`` header first (``numpy.lib.format``), refuse object arrays (no pickle,
ever) and check the size the header declares against a budget *before* anything is
allocated: a tiny compressed archive that declares a terabyte array is refused, not
decompressed.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
import zlib

import numpy.lib.format as npformat

from .._checks import not_regular
from ..errors import InputFileError

__all__ = ["MAX_ARRAY_BYTES", "MAX_FILE_BYTES", "read_npy", "read_npz", "regular_file",
           "sha256_file"]

#: Largest file refbbp reads as inputs, data or oracle fields (bytes on disk; 4 GiB).
MAX_FILE_BYTES = 4 << 30
#: Largest total size of the arrays one ``.npy``/``.npz`` file may declare (4 GiB,
#: the default memory budget of :func:`refbbp.load`).
MAX_ARRAY_BYTES = 4 << 30
#: Largest ``.npy`` header read (numpy's own default).
_MAX_HEADER = 10000


def _mib(n):
    return f"{n / 2**20:,.1f} MiB"


def regular_file(path, what="file", max_bytes=MAX_FILE_BYTES):
    """Check that ``path`` names an existing regular file of at most ``max_bytes``.

    Nothing is opened: the check is on ``os.stat``.

    Parameters
    ----------
    path : str or path-like
    what : str, optional
        What the file is for, used in messages ("input file", "model", ...).
    max_bytes : int or None, optional
        Largest size accepted (default :data:`MAX_FILE_BYTES`); None: no cap.

    Returns
    -------
    int
        The file's size in bytes.

    Raises
    ------
    FileNotFoundError
        No such file.
    InputFileError
        A directory, FIFO, device or socket, or a file larger than ``max_bytes``.
    OSError
        ``os.stat`` failed otherwise (e.g. permission denied on a folder of the path).
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what}: no such file: {os.fspath(path)}") from None
    except OSError as exc:
        raise OSError(exc.errno, f"{what}: cannot access {os.fspath(path)}: "
                      f"{exc.strerror}") from None
    kind = not_regular(st.st_mode)
    if kind is not None:
        raise InputFileError(f"{what} {os.fspath(path)} is {kind}: expected a regular file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise InputFileError(f"{what} {os.fspath(path)} is {_mib(st.st_size)}, more than the "
                             f"{_mib(max_bytes)} refbbp reads")
    return st.st_size


def _check_header(fp, where, budget, available=None):
    """Read a ``.npy`` header from ``fp``; refuse object dtypes and sizes over ``budget``
    (and, if ``available`` is given, more data than the file holds). Returns the bytes
    the array will take."""
    try:
        version = npformat.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = npformat.read_array_header_1_0(fp, max_header_size=_MAX_HEADER)
        elif version in ((2, 0), (3, 0)):
            shape, _, dtype = npformat.read_array_header_2_0(fp, max_header_size=_MAX_HEADER)
        else:
            raise ValueError(f"unknown .npy format version {version}")
    except (ValueError, EOFError, OSError, SyntaxError, TypeError) as exc:
        raise InputFileError(f"{where}: not a readable .npy array ({exc})") from None
    if dtype.hasobject:
        raise InputFileError(f"{where}: holds an object array ({dtype}); refbbp reads only "
                             f"numeric arrays and never unpickles")
    n = 1
    for d in shape:
        n *= int(d)
    nbytes = n * dtype.itemsize
    if nbytes > budget:
        raise InputFileError(f"{where}: declares an array of shape {tuple(shape)} ({dtype}), "
                             f"{_mib(nbytes)}: more than the {_mib(budget)} left of the "
                             f"budget of {_mib(MAX_ARRAY_BYTES)}")
    if available is not None and nbytes > available - fp.tell():
        raise InputFileError(f"{where}: truncated: the header declares {nbytes:,} bytes of "
                             f"data, the file holds {max(0, available - fp.tell()):,}")
    return nbytes


def read_npy(path, what="input file", max_bytes=MAX_ARRAY_BYTES):
    """Read a ``.npy`` array after checking the file and its header.

    Parameters
    ----------
    path : str or path-like
    what : str, optional
        What the file is for, used in messages.
    max_bytes : int, optional
        Largest array accepted (default :data:`MAX_ARRAY_BYTES`).

    Returns
    -------
    ndarray

    Raises
    ------
    InputFileError
        Not a regular file, too large, not a ``.npy`` array, truncated, an object array,
        or an array larger than ``max_bytes``.
    """
    size = regular_file(path, what)
    where = f"{what} {os.fspath(path)}"
    with open(path, "rb") as fp:
        _check_header(fp, where, max_bytes, available=size)
        fp.seek(0)
        try:
            return npformat.read_array(fp, allow_pickle=False, max_header_size=_MAX_HEADER)
        except (ValueError, EOFError, OSError) as exc:
            raise InputFileError(f"{where}: not a readable .npy array ({exc})") from None


def read_npz(path, what="input file", max_bytes=MAX_ARRAY_BYTES):
    """Read every array of a ``.npz`` archive after checking the file and each header.

    Parameters
    ----------
    path : str or path-like
    what : str, optional
        What the file is for, used in messages.
    max_bytes : int, optional
        Largest total size of the arrays (default :data:`MAX_ARRAY_BYTES`), checked on
        the declared shapes before any array is decompressed.

    Returns
    -------
    dict of str to ndarray
        In archive order, keyed like ``numpy.load`` (the member name without ``.npy``).

    Raises
    ------
    InputFileError
        Not a regular file, too large, not a zip archive (e.g. empty, truncated, a
        ``.npy``), a member that is not a ``.npy`` array, corrupt data, an object array,
        or arrays larger than ``max_bytes`` in total.
    """
    regular_file(path, what)
    where = f"{what} {os.fspath(path)}"
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            budget = max_bytes
            for info in infos:
                if not info.filename.endswith(".npy"):
                    raise InputFileError(f"{where}: member {info.filename!r} is not a .npy "
                                         f"array")
                with zf.open(info) as fp:
                    budget -= _check_header(fp, f"{where}: array {info.filename[:-4]!r}",
                                            budget)
            out = {}
            for info in infos:
                with zf.open(info) as fp:
                    out[info.filename[:-4]] = npformat.read_array(
                        fp, allow_pickle=False, max_header_size=_MAX_HEADER)
            return out
    except InputFileError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, ValueError,
            NotImplementedError, OSError) as exc:
        if isinstance(exc, (FileNotFoundError, PermissionError)):
            raise
        detail = str(exc) or exc.__class__.__name__
        hint = ""
        if isinstance(exc, zipfile.BadZipFile):
            with open(path, "rb") as fh:
                head = fh.read(6)
            hint = (" (it is a .npy array, not an .npz archive)" if head == b"\x93NUMPY"
                    else " (the file is empty)" if not head else "")
        raise InputFileError(f"{where}: not a readable .npz archive{hint}: {detail}") from None


def sha256_file(path):
    """Hex sha256 of a file's bytes, read a MiB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
