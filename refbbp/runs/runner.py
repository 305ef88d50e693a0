"""The dataset runner: :func:`run` splits a set of inputs into chunks, computes each chunk
on an executor and writes one shard per chunk and stage, resumable and checkable.

How a run goes: the model file is read once and hashed (sha256 of its bytes); the
manifest (:mod:`.store`) records the task, every option, the model's hash, the input
source and the chunk size. For each stage of the task, every chunk without a valid
shard is sent to the executor with its inputs (read from the source only when it is
sent); the result comes back here and is written as a shard (temporary file, then
rename) and recorded in the manifest. An input that cannot be computed (unreadable, NaN
or infinite values, a computation that raises) is recorded in the manifest's ``failed``
with its error, and the rest of its chunk is computed. When every shard is written,
the task's summary (reduced over the shards) goes to the manifest and the run is marked
complete.
"""

from __future__ import annotations

import contextlib
import os
import warnings

import numpy as np

from .._progress import progress as progress_bar
from ..errors import RefbbpError, RunError
from ..evaluate.scoring import OnnxScorer
from ..io.files import regular_file
from ..onnx import load
from .executors import InProcess
from .sources import open_source
from .store import Manifest, check_same_run, sha256_bytes, shard_name, write_shard
from .tasks import make_task

__all__ = ["CHUNK_SIZE", "Run", "compute_chunk", "open_run", "run"]

#: Largest model file a run reads (as the command line: protobuf's 2 GiB).
MAX_MODEL_BYTES = 2 << 30
#: Default inputs per chunk (per shard).
CHUNK_SIZE = 64
#: Errors that make an input fail (recorded, the run goes on) rather than the run.
_INPUT_FAILURES = (RefbbpError, ValueError, ArithmeticError, MemoryError)

#: Test hook: called with each job on the process computing it (see tests/runs).
_before_chunk = None
# the network (and onnxruntime session) of each model, per process: loaded once
_STATE = {}


def _state(model, task):
    data, sha, input_shape = model
    key = (sha, input_shape)
    if key not in _STATE:
        import onnx

        _STATE.clear()
        proto = onnx.load_from_string(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _STATE[key] = {"proto": proto, "net": load(proto, input_shape)}
    state = _STATE[key]
    if task.uses_runtime and "scorer" not in state:
        state["scorer"] = OnnxScorer(state["proto"], state["net"],
                                     task.options.get("max_batch", 4096))
    return state


@contextlib.contextmanager
def _threads(n):
    if n is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=int(n)):
        yield


def _message(exc):
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0] if text else ''}".rstrip(": ")


def compute_chunk(model, job):
    """Compute one chunk (on whatever process the executor chose).

    Parameters
    ----------
    model : (bytes, str, tuple or None)
        The model file's bytes, their sha256 and the input shape to load it with.
    job : dict
        ``task``, ``stage``, ``chunk``, ``lo`` (global index of its first input), ``x``,
        ``labels``, ``bad`` (``{i: error}`` of inputs known to fail), ``extra``
        (per-input arrays the task needs) and ``threads``.

    Returns
    -------
    dict
        ``stage``, ``chunk``, ``n`` (inputs in the chunk), ``arrays`` (the shard) and
        ``failed`` (``{global index: error}``).
    """
    if _before_chunk is not None:
        _before_chunk(job)
    task, x, labels, lo = job["task"], job["x"], job["labels"], job["lo"]
    errors = dict(job["bad"])
    for i in range(len(x)):
        if i not in errors and not np.all(np.isfinite(x[i])):
            errors[i] = "NaN or infinite values"
    ok = [i for i in range(len(x)) if i not in errors]
    parts = []

    def attempt(idx):
        idx = np.asarray(idx, np.int64)
        rows, batch = task.compute(state, job["stage"], x[idx],
                                   None if labels is None else labels[idx],
                                   {k: v[idx] for k, v in job["extra"].items()})
        parts.append((idx, rows, batch))

    with _threads(job["threads"]):
        state = _state(model, task)
        if ok:
            try:
                attempt(ok)
            except _INPUT_FAILURES as exc:
                if len(ok) == 1:
                    errors[ok[0]] = _message(exc)
                for i in ok if len(ok) > 1 else ():    # find the inputs that fail
                    try:
                        attempt([i])
                    except _INPUT_FAILURES as exc1:
                        errors[i] = _message(exc1)
    arrays = {"index": lo + np.concatenate([p[0] for p in parts] or [np.zeros(0, np.int64)])}
    if parts:
        for key in parts[0][1]:
            arrays[key] = np.concatenate([np.asarray(p[1][key]) for p in parts])
        for key in parts[0][2]:
            arrays[f"batch/{key}"] = np.asarray([p[2][key] for p in parts])
    return {"stage": job["stage"], "chunk": job["chunk"], "n": len(x), "arrays": arrays,
            "failed": {lo + i: e for i, e in sorted(errors.items())}}


class Run:
    """A run folder and its results.

    Attributes
    ----------
    folder : str
    manifest : Manifest
    task : Task
    summary : dict
        The task's summary (also in the manifest).
    """

    def __init__(self, folder, manifest, task):
        self.folder, self.manifest, self.task = folder, manifest, task
        self._gathered = {}
        self.cache = {}     # the driver's state between chunks (e.g. a stream of tie keys)

    @property
    def n(self):
        return self.manifest.n_inputs

    @property
    def summary(self):
        return self.manifest.data.get("summary")

    @property
    def failed(self):
        """``{input index: {"stage", "input", "error"}}``."""
        return self.manifest.failed()

    def _shards(self, stage):
        for chunk in range(self.manifest.n_chunks):
            name = shard_name(stage, chunk)
            if name in self.manifest.data["shards"]:
                yield np.load(os.path.join(self.folder, name), allow_pickle=False)

    def rows(self, stage=None, index=None, fields=None):
        """The per-input arrays of ``stage`` (default the last), concatenated over its
        shards in input order, with ``index`` (the inputs they belong to).

        Parameters
        ----------
        index : array of int, optional
            Only these inputs (gathered once into memory maps under ``cache/``).
        fields : sequence of str, optional
            Only the fields starting with one of these prefixes (and ``index``).
        """
        stage = self.task.stages[-1] if stage is None else stage
        if index is not None:
            return {k: v[index] for k, v in self._gather(stage).items()}
        out = {}
        for z in self._shards(stage):
            for k in z.files:
                if k == "index" or fields is None or k.startswith(tuple(fields)):
                    out.setdefault(k, []).append(z[k])
        return {k: np.concatenate(v) for k, v in out.items()} if out else \
            {"index": np.zeros(0, np.int64)}

    def _gather(self, stage):
        if stage not in self._gathered:
            folder = os.path.join(self.folder, "cache", stage)
            os.makedirs(folder, exist_ok=True)
            maps = {}
            for z in self._shards(stage):
                idx = z["index"]
                for k in z.files:
                    if k == "index" or k.startswith("batch/"):
                        continue
                    v = z[k]
                    if k not in maps:
                        maps[k] = np.lib.format.open_memmap(
                            os.path.join(folder, k.replace("/", "__") + ".npy"), mode="w+",
                            dtype=v.dtype, shape=(self.n,) + v.shape[1:])
                    maps[k][idx] = v
            self._gathered[stage] = maps
        return self._gathered[stage]


def _model(model):
    path = os.fspath(model)
    regular_file(path, "model", max_bytes=MAX_MODEL_BYTES)
    with open(path, "rb") as fh:
        data = fh.read()
    return path, data, sha256_bytes(data)


def run(task, model, inputs, out_dir, *, executor=None, chunk_size=CHUNK_SIZE, resume=False,
        progress=None, input_shape=None, labels=None, n=None, image_options=None, **options):
    """Run a task over a data set, in chunks, writing one shard per chunk.

    Parameters
    ----------
    task : {"explain", "verify", "oracle", "evaluate", "bias-report"}
        What each input gets (:mod:`refbbp.runs.tasks`).
    model : str or path-like
        The ONNX model file (its sha256 goes to the manifest).
    inputs : str, path-like or ndarray
        A folder of images, a ``.npy`` (memory-mapped), an ``.npz``, a Zarr array or
        group, or an array (:func:`~refbbp.runs.sources.open_source`).
    out_dir : str or path-like
        The run folder (created).
    executor : InProcess or DaskExecutor, optional
        Where chunks are computed (default :class:`InProcess`).
    chunk_size : int
        Inputs per chunk (per shard).
    resume : bool
        Continue the run in ``out_dir``: shards already written (and intact) are kept.
        Refused if the model's hash, the task, its options, the inputs or the chunk size
        differ from the manifest's.
    progress : bool, optional
        Show inputs done / total and an ETA (default: on a terminal).
    input_shape : tuple of int, optional
        For models with symbolic dimensions.
    labels : array_like of int, optional
        Labels of an array given in memory.
    n : int, optional
        Only the first ``n`` inputs.
    image_options : dict, optional
        ``size``, ``mean``, ``std``, ``layout`` for a folder of images.
    **options
        The task's options (e.g. ``rule``, ``temperature``, ``methods``, ``seed``).

    Returns
    -------
    Run

    Raises
    ------
    RunError
        ``out_dir`` holds another run (or a run and ``resume`` is False).
    """
    from .._checks import check_count

    chunk_size = check_count(chunk_size, "chunk_size")
    task = make_task(task, **options)
    path, data, sha = _model(model)
    net = load(path, input_shape)
    source = open_source(inputs, net.input_shape, labels=labels, **(image_options or {}))
    source = source.head(n).check(net.input_shape, net.n_outputs, task.needs_labels)
    task.prepare(net, source)
    out_dir = os.fspath(out_dir)
    fresh = Manifest.new(out_dir, task.name, task.options,
                         {"file": os.path.basename(path), "sha256": sha,
                          "input_shape": list(net.input_shape)},
                         source.description, chunk_size, task.stages)
    if os.path.exists(os.path.join(out_dir, "manifest.json")):
        if not resume:
            raise RunError(f"{out_dir} already holds a run: resume it (--resume, "
                           f"resume=True) or choose another folder")
        manifest = Manifest.read(out_dir)
        check_same_run(manifest, fresh)
    else:
        os.makedirs(out_dir, exist_ok=True)
        manifest = fresh
        manifest.save()
    executor = InProcess() if executor is None else executor
    result = Run(out_dir, manifest, task)
    shared = (data, sha, tuple(net.input_shape))
    with executor.session(shared) as compute:
        for stage in task.stages:
            bad = task.skip(stage, manifest.failed(), manifest.n_inputs)
            todo = [c for c in range(manifest.n_chunks) if not manifest.done(stage, c)]
            total = sum(manifest.bounds(c)[1] - manifest.bounds(c)[0] for c in todo)

            def jobs(stage=stage, todo=todo, bad=bad):
                for c in todo:
                    lo, hi = manifest.bounds(c)
                    x, y, unread = source.read(lo, hi)
                    known = {i - lo: e for i, e in bad.items() if lo <= i < hi}
                    yield {"task": task, "stage": stage, "chunk": c, "lo": lo, "x": x,
                           "labels": y, "bad": {**known, **unread},
                           "extra": task.extra(stage, lo, hi, result),
                           "threads": executor.threads}

            desc = f"{task.name}" + (f" ({stage})" if len(task.stages) > 1 else "")
            for res in progress_bar(compute(compute_chunk, jobs()), total=int(total),
                                    desc=desc, enabled=progress, count=lambda r: r["n"]):
                sha_shard = write_shard(out_dir, stage, res["chunk"], res["arrays"])
                failed = {i: {"input": source.name(i), "error": e}
                          for i, e in res["failed"].items()}
                manifest.record(stage, res["chunk"], sha_shard, res["arrays"]["index"],
                                failed)
    manifest.data["summary"] = task.summary(result.rows(fields=task.summary_fields), result)
    manifest.data["complete"] = True
    manifest.save()
    result.written = task.finish(result)
    return result


def open_run(folder):
    """The :class:`Run` of a finished (or interrupted) run folder."""
    manifest = Manifest.read(folder)
    return Run(folder, manifest, make_task(manifest.data["task"],
                                           **_task_args(manifest.data)))


def _task_args(data):
    o = dict(data["options"])
    if "rules" in o:
        o["rule"] = o.pop("rules")
    return o
