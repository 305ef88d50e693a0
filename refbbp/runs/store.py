"""A run folder: the manifest, the shards, atomic writes, hashes and ``check-run``.

A run folder holds

``manifest.json``
    ``format`` ("refbbp-run"), ``format_version``, ``refbbp_version``, ``task``,
    ``options`` (every option of the task), ``model`` (file name and sha256 of the model
    file's bytes), ``inputs`` (the source, its number of inputs), ``chunk_size``,
    ``stages``, ``shards`` (one entry per shard written: stage, chunk, first and last
    input, sha256 of the shard file, inputs done), ``failed`` (input index -> stage and
    error) and ``complete``.
``<stage>-<chunk>.npz``
    One shard per chunk of inputs and stage: ``index`` (the global indices of the inputs
    it holds), one array per per-input field (leading axis over ``index``) and
    ``batch/<name>`` (one value per batch computed, e.g. the worst error of a chunk).

Every file is written to a temporary name and renamed (:func:`atomic_write`), so a crash
never leaves a half-written shard or manifest under its final name; a shard counts as done
only once the manifest records its hash, so a shard without a manifest entry (a crash
between the two renames) is recomputed on ``--resume``.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from .._version import __version__
from ..errors import RunError
from ..io.files import read_npz, sha256_file

__all__ = ["FORMAT", "FORMAT_VERSION", "MANIFEST", "Manifest", "atomic_write", "check_run",
           "read_shard", "sha256_bytes", "shard_name", "write_shard"]

FORMAT = "refbbp-run"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def sha256_bytes(data):
    """Hex sha256 of ``data`` (bytes)."""
    return hashlib.sha256(data).hexdigest()


def atomic_write(path, write):
    """Write ``path`` through ``write(fh)`` on a temporary file in the same folder, flushed
    to disk and renamed over ``path``: readers see the old file or the whole new one."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def shard_name(stage, chunk):
    """File name of the shard of chunk ``chunk`` in ``stage``."""
    return f"{stage}-{chunk:06d}.npz"


def write_shard(folder, stage, chunk, arrays):
    """Write one shard atomically; returns its sha256."""
    path = os.path.join(folder, shard_name(stage, chunk))
    atomic_write(path, lambda fh: np.savez(fh, **arrays))
    return sha256_file(path)


def read_shard(folder, stage, chunk):
    """The arrays of a shard (dict of str to ndarray)."""
    return read_npz(os.path.join(folder, shard_name(stage, chunk)), "shard")


class Manifest:
    """The manifest of a run folder (module docstring), saved atomically on every change.

    Parameters
    ----------
    folder : str
    data : dict
        The manifest's content.
    """

    def __init__(self, folder, data):
        self.folder = folder
        self.data = data

    @property
    def path(self):
        return os.path.join(self.folder, MANIFEST)

    @classmethod
    def new(cls, folder, task, options, model, inputs, chunk_size, stages):
        return cls(folder, {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "refbbp_version": __version__, "task": task, "options": options,
            "model": model, "inputs": inputs, "chunk_size": chunk_size,
            "stages": list(stages), "shards": {}, "failed": {}, "complete": False})

    @classmethod
    def read(cls, folder):
        """Read ``folder``'s manifest.

        Raises
        ------
        RunError
            No manifest, or not a refbbp run manifest.
        """
        path = os.path.join(folder, MANIFEST)
        if not os.path.isfile(path):
            raise RunError(f"{folder}: no {MANIFEST}: not a refbbp run folder")
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError) as exc:
            raise RunError(f"{path}: not a readable run manifest ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise RunError(f"{path}: not a refbbp run manifest (format {FORMAT!r})")
        return cls(folder, data)

    def save(self):
        text = json.dumps(self.data, indent=1, sort_keys=True).encode()
        atomic_write(self.path, lambda fh: fh.write(text))

    @property
    def n_inputs(self):
        return int(self.data["inputs"]["n"])

    @property
    def n_chunks(self):
        return -(-self.n_inputs // int(self.data["chunk_size"]))

    def bounds(self, chunk):
        """``(lo, hi)``: the inputs of chunk ``chunk``."""
        size = int(self.data["chunk_size"])
        return chunk * size, min((chunk + 1) * size, self.n_inputs)

    def done(self, stage, chunk):
        """Whether the shard of ``chunk`` in ``stage`` is recorded and its file's hash is
        the recorded one (a missing or altered shard is not done)."""
        entry = self.data["shards"].get(shard_name(stage, chunk))
        if entry is None:
            return False
        path = os.path.join(self.folder, shard_name(stage, chunk))
        return os.path.isfile(path) and sha256_file(path) == entry["sha256"]

    def record(self, stage, chunk, sha256, index, failed):
        """Record a written shard and the inputs that failed in it; save."""
        lo, hi = self.bounds(chunk)
        self.data["shards"][shard_name(stage, chunk)] = {
            "stage": stage, "chunk": chunk, "inputs": [lo, hi], "sha256": sha256,
            "done": int(len(index))}
        for i, err in failed.items():
            self.data["failed"][str(i)] = {"stage": stage, **err}
        self.save()

    def failed(self):
        """``{input index: {"stage", "input", "error"}}`` of every failed input."""
        return {int(k): v for k, v in self.data["failed"].items()}


def _mismatch(old, new, prefix=""):
    """Keys whose values differ between two JSON-like dicts (dotted names)."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _mismatch(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k} ({a!r} in the manifest, {b!r} now)")
    return out


def check_same_run(manifest, fresh):
    """Refuse to resume ``manifest`` with a run described by ``fresh`` (a new manifest)
    when the task, the model's hash, the options, the inputs or the chunk size differ.

    Raises
    ------
    RunError
        Naming every difference.
    """
    keys = ("task", "options", "model", "inputs", "chunk_size")
    diff = _mismatch({k: manifest.data.get(k) for k in keys},
                     {k: fresh.data.get(k) for k in keys})
    if diff:
        raise RunError(f"{manifest.folder}: cannot resume: this run differs from the one in "
                       f"its manifest: {'; '.join(diff)}")


def check_run(folder):
    """Check a run folder: manifest readable, every shard of every stage present with the
    hash the manifest records, and the run complete.

    Returns
    -------
    list of str
        The problems found (empty: the run is complete and intact).
    """
    m = Manifest.read(folder)
    problems = []
    for stage in m.data["stages"]:
        for chunk in range(m.n_chunks):
            name = shard_name(stage, chunk)
            path = os.path.join(folder, name)
            entry = m.data["shards"].get(name)
            if entry is None:
                problems.append(f"{name}: not done (no entry in the manifest)")
            elif not os.path.isfile(path):
                problems.append(f"{name}: missing")
            elif sha256_file(path) != entry["sha256"]:
                problems.append(f"{name}: altered (sha256 differs from the manifest's)")
    if not m.data.get("complete") and not problems:
        problems.append("the manifest does not mark the run complete")
    return problems
