"""Run fuzz cases in worker processes and classify what happened.

A worker (``python -m tests.fuzz.harness ROOT``) runs many cases, one at a time: it
reads a case id per line on stdin and writes one JSON result per line on its own copy
of stdout (the real fd 1 goes to /dev/null, so nothing a case prints can garble the
protocol). :class:`Pool` keeps ``jobs`` workers busy, each under an address-space limit
(``RLIMIT_AS``), kills a worker whose case runs past the timeout (``hang``) and starts
a new one after a timeout or a death (``crash``, or ``budget`` when it died of the
address-space limit).

Outcomes (``OUTCOMES``; all but ``ok`` and ``refused`` are bad):

* ``ok``: refbbp succeeded, and for a model onnx.checker (full check) and onnxruntime
  accept it too and refbbp's forward pass agrees with onnxruntime within SPEC 2's
  tolerance (``refbbp.tolerance``), every number finite, BBp complete;
* ``refused``: a clear error: a ``RefbbpError``, a ValueError/TypeError/OSError
  raised by a ``raise`` statement inside the refbbp package, or an OSError naming the
  file that refbbp's own ``open`` failed on; on the command line exit
  status 2 with exactly one ``refbbp: error:`` line (argparse's ``refbbp <cmd>: error:``
  included) and no traceback;
* ``crash``: the worker died (a signal, an abnormal exit); ``hang``: the timeout;
* ``unclear``: any other exception (the command line: a traceback, or exit 2 without one
  error line);
* ``budget``: a MemoryError that is not refbbp's budget check (``MemoryBudgetError``),
  or death by the address-space limit;
* ``wrong-accept``: refbbp accepted what it should refuse: a model that onnx.checker or
  onnxruntime refuses, values different from onnxruntime's, non-finite or incomplete
  results, or a bad argument (``Plan.expect == "refuse"``);
* ``stray-read``: refbbp opened a file outside the case's folder (an audit hook on
  ``open`` while refbbp runs), or read the sentinel file next to the case folders (its
  access time, reset before every case, moves; this sees reads from C code too).
"""

from __future__ import annotations

import contextlib
import io
import json
import linecache
import os
import re
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

__all__ = ["BAD", "OUTCOMES", "Pool", "bad_table", "classify_exception", "outcome_table",
           "prepare_root", "replay_inline", "run_case"]

OUTCOMES = ("ok", "refused", "crash", "hang", "unclear", "budget", "wrong-accept",
            "stray-read")
BAD = OUTCOMES[2:]
#: refbbp's memory budget in model cases (``load(..., max_bytes=BUDGET)``).
BUDGET = 256 << 20
#: Default address-space limit of a worker: well above the budget plus what the
#: libraries need, far below the machine's memory.
AS_LIMIT = 3 << 30
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_ERROR_LINE = re.compile(r"^refbbp(?: [\w-]+)?: error: ")


# ------------------------------------------------------------------ classification
def _refbbp_dir():
    import refbbp

    return os.path.dirname(os.path.abspath(refbbp.__file__)) + os.sep


def first_line(exc):
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def classify_exception(exc):
    """``(outcome, first line)`` of an exception that escaped refbbp."""
    from refbbp.errors import MemoryBudgetError, RefbbpError

    line = first_line(exc)
    if isinstance(exc, RefbbpError):
        return "refused", line
    if isinstance(exc, MemoryError) and not isinstance(exc, MemoryBudgetError):
        return "budget", line
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return "unclear", line
    path = os.path.abspath(tb.tb_frame.f_code.co_filename)
    src = linecache.getline(path, tb.tb_lineno).strip()
    if (isinstance(exc, (ValueError, TypeError, OSError)) and path.startswith(_refbbp_dir())
            and src.startswith("raise")):
        return "refused", line
    if isinstance(exc, OSError) and exc.filename and path.startswith(_refbbp_dir()):
        return "refused", line  # open() of a path refbbp was given: the error names it
    where = os.path.relpath(path, REPO) if path.startswith(REPO) else path
    return "unclear", f"{line}  [at {where}:{tb.tb_lineno}]"


# ------------------------------------------------------------------- the sentinels
class _Watch:
    """The audit hook: records ``open`` of paths outside the allowed prefixes while on."""

    def __init__(self):
        self.on = False
        self.prefixes = ()
        self.files = set()
        self.hits = []

    def __call__(self, event, args):
        if event != "open" or not self.on:
            return
        path = args[0]
        if not isinstance(path, (str, bytes)):
            return
        try:
            real = os.path.realpath(os.fsdecode(path))
        except Exception:  # never let the hook break the code it watches
            return
        if real in self.files or real.startswith(self.prefixes):
            return
        self.hits.append(real)

    @contextlib.contextmanager
    def watching(self, folder, allowed=()):
        self.hits = []
        base = [sys.prefix, sys.base_prefix, sys.exec_prefix, REPO, folder,
                os.environ.get("MPLCONFIGDIR", folder), "/proc/self/", "/sys/", "/usr/share/"]
        self.prefixes = tuple(os.path.realpath(p).rstrip(os.sep) + os.sep for p in base)
        self.files = {os.path.realpath(p) for p in list(allowed) + [
            folder, os.devnull, "/dev/urandom", "/etc/localtime"]}
        self.on = True
        try:
            yield self
        finally:
            self.on = False


_WATCH = _Watch()


def _secret_reset(secret):
    st = os.stat(secret)
    os.utime(secret, ns=(0, st.st_mtime_ns))  # atime < mtime: the next read moves it


def _secret_read(secret):
    return os.stat(secret).st_atime_ns != 0


# ------------------------------------------------------------------- running a case
class _Refused(Exception):
    """Carries an outcome out of a phase."""

    def __init__(self, outcome, detail):
        super().__init__(detail)
        self.outcome, self.detail = outcome, detail


def _phase(proto, name, desc=None):
    if proto is not None:
        proto.write(json.dumps({"phase": name, "desc": desc}) + "\n")
        proto.flush()


def _densified(path):
    """``path``, or a copy beside it with its sparse initializers made dense, as
    onnxruntime reads them (onnx.checker's shape inference refuses sparse tensors as op
    inputs, which onnxruntime runs; refbbp densifies them as onnxruntime does)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(path, load_external_data=False)
    if not proto.graph.sparse_initializer:
        return path
    for sparse in proto.graph.sparse_initializer:
        values = numpy_helper.to_array(sparse.values)
        indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
        dims = tuple(sparse.dims)
        dense = np.zeros(int(np.prod(dims)), values.dtype)
        flat = indices if indices.ndim == 1 else np.ravel_multi_index(indices.T, dims)
        dense[flat] = values
        proto.graph.initializer.append(
            numpy_helper.from_array(dense.reshape(dims), sparse.values.name))
    del proto.graph.sparse_initializer[:]
    out = os.path.join(os.path.dirname(path), "densified.onnx")
    onnx.save(proto, out)
    return out


def _reference(path, net, x, y):
    """onnx.checker (full) and onnxruntime on the model refbbp accepted: ``None`` when
    they agree with refbbp, else why not."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import helper

    from refbbp.tolerance import forward_error

    try:
        onnx.checker.check_model(_densified(path), full_check=True)
    except Exception as exc:
        return f"onnx.checker refuses: {first_line(exc)}"
    try:
        proto = onnx.load(path, load_external_data=False)
        if net.output_name not in [o.name for o in proto.graph.output]:
            proto.graph.output.append(helper.make_tensor_value_info(
                net.output_name, onnx.TensorProto.FLOAT, None))
            path = os.path.join(os.path.dirname(path), "reference.onnx")
            onnx.save(proto, path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.log_severity_level = 4
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        vi = sess.get_inputs()[0]
        dtype = helper.tensor_dtype_to_np_dtype(
            proto.graph.input[0].type.tensor_type.elem_type)
        feed = x[None] if net.batch_axis else x
        dims = proto.graph.input[0].type.tensor_type.shape.dim
        lead = dims[0].dim_value if dims and dims[0].HasField("dim_value") else 0
        if net.batch_axis and lead > 1:
            # a fixed batch of n (the batch rule explains each element alone):
            # onnxruntime needs all n; compare element 0 (n small), else nothing to run
            if lead > 16:
                return None
            feed = np.repeat(feed, lead, axis=0)
        ref = sess.run([net.output_name], {vi.name: feed.astype(dtype)})[0]
        if net.batch_axis and lead > 1:
            ref = ref[:1]
    except Exception as exc:
        return f"onnxruntime refuses: {first_line(exc)}"
    ref = np.asarray(ref, np.float64).reshape(-1)
    ours = np.asarray(y, np.float64).reshape(-1)
    if ours.shape != ref.shape:
        return f"output shape {ours.shape} but onnxruntime's is {ref.shape}"
    if not np.all(np.isfinite(ref)) and np.all(np.isfinite(ours)):
        # onnxruntime's float32 overflowed (a weight near 3e38); refbbp computes in
        # float64 (SPEC 2), where the same model does not: not a wrong acceptance
        return None
    err = forward_error(ours, ref)
    if not err <= 1:
        return f"forward differs from onnxruntime: {err:.3g} x tolerance"
    return None


def _run_model(plan, proto):
    import numpy as np

    import refbbp

    net = refbbp.load(plan.path, max_bytes=BUDGET)
    x = np.random.default_rng(0).random(net.input_shape)
    y = net.forward(x)
    att = refbbp.bbp(net, x)
    return lambda: _model_checks(plan, proto, net, x, y, att)


def _model_checks(plan, proto, net, x, y, att):
    import numpy as np

    from refbbp.tolerance import TOLERANCE as tol

    if not (np.isfinite(y).all() and np.isfinite(att.beta).all()):
        return "refbbp's outputs are not finite"
    if not att.completeness().worst <= tol:
        return f"BBp incomplete: {att.completeness().worst:.3g}"
    _phase(proto, "reference")
    return _reference(plan.path, net, x, y)


def _run_cli(plan):
    from refbbp.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(plan.argv))
        except SystemExit as exc:  # argparse
            code = exc.code
        except BaseException as exc:
            traceback.print_exc(file=err)
            if isinstance(exc, MemoryError):
                raise _Refused("budget", f"traceback: {first_line(exc)}") from exc
            raise _Refused("unclear", f"traceback: {first_line(exc)}") from exc
    text = err.getvalue()
    errors = [ln for ln in text.splitlines() if _ERROR_LINE.match(ln)]
    if code in (0, 1, None):
        if plan.expect == "refuse":
            raise _Refused("wrong-accept", f"exit {code or 0}: {out.getvalue()[:120]!r}")
        return None
    if code == 2 and len(errors) == 1 and "Traceback" not in text:
        raise _Refused("refused", errors[0] + _hidden(plan.argv))
    raise _Refused("unclear", f"exit {code}, stderr {text.strip()[-200:]!r}")


def _hidden(argv):
    """What the one error line stands for: the command run again with ``--debug`` (which
    re-raises), classified like an API call. Returns ``""`` for a clear refusal, else a
    note naming the exception that the error line hides."""
    from refbbp.cli import main

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            main(["--debug"] + list(argv))
        except SystemExit:
            return ""
        except Exception as exc:
            outcome, line = classify_exception(exc)
            return "" if outcome == "refused" else f"  (hides {line})"
    return ""


def run_case(cid, root, proto=None):
    """Run case ``cid`` in this process (a fresh folder under ``root``); the result
    dict has ``id``, ``gen``, ``desc``, ``outcome``, ``detail`` and ``trace``."""
    import warnings

    import numpy as np

    from . import cases
    from .mutations import SECRET_NAME

    folder = os.path.join(root, "case")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    secret = os.path.join(root, SECRET_NAME)
    res = {"id": cid, "gen": cases.parse_id(cid)[0], "desc": "", "outcome": "ok",
           "detail": "", "trace": ""}
    cwd = os.getcwd()
    try:
        plan = cases.materialise(cid, folder)
        res["desc"] = plan.desc
        _phase(proto, "refbbp", plan.desc)  # the parent knows what a hang or death was
        _secret_reset(secret)
        os.chdir(folder)
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            caught = None
            try:
                with _WATCH.watching(folder, plan.allowed):
                    if plan.kind == "model":
                        check = _run_model(plan, proto)
                    elif plan.kind == "cli":
                        check = _run_cli(plan)
                    else:
                        check = plan.post(plan.fn())
            except Exception as exc:
                caught = exc
            finally:
                os.chdir(cwd)
                hits = list(_WATCH.hits)
                if _secret_read(secret):
                    hits.append(secret)
            if hits:  # a stray read is bad whatever happened after it
                raise _Refused("stray-read", f"opened {hits[0]}"
                               + (f" and {len(hits) - 1} more" if len(hits) > 1 else ""))
            if caught is not None:
                raise caught
            if plan.kind == "call" and plan.expect == "refuse":
                raise _Refused("wrong-accept", "accepted a bad argument")
            problem = check() if callable(check) else check
            if problem:
                raise _Refused("wrong-accept", problem)
    except _Refused as r:
        res["outcome"], res["detail"] = r.outcome, r.detail
        res["trace"] = "".join(traceback.format_exception(r.__cause__))[-6000:] \
            if r.__cause__ else ""
    except BaseException as exc:  # noqa: B036 -- everything a case raises is classified
        if isinstance(exc, KeyboardInterrupt):
            raise
        res["outcome"], res["detail"] = classify_exception(exc)
        res["trace"] = "".join(traceback.format_exception(exc))[-6000:]
    finally:
        os.chdir(cwd)
        shutil.rmtree(folder, ignore_errors=True)
    return res


# ------------------------------------------------------------------------ workers
def prepare_root(root):
    """Write the sentinel file next to where the case folders go."""
    from .mutations import SECRET_NAME

    with open(os.path.join(root, SECRET_NAME), "wb") as fh:
        fh.write(b"\x00\x90\x84\x45" * 65536)  # float32 4242.0: never to be read


def replay_inline(cid):
    """Run one case in this process (audit hook installed; no timeout, no limit) and
    return its result: for a debugger or a full traceback."""
    root = tempfile.mkdtemp(prefix="refbbp-fuzz-")
    try:
        prepare_root(root)
        sys.addaudithook(_WATCH)
        return run_case(cid, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def worker_main(root):
    """The worker loop (see the module docstring)."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    sys.stdout = open(os.devnull, "w")
    os.environ.setdefault("MPLCONFIGDIR", os.path.join(root, "mpl"))
    from . import cases  # noqa: F401 -- warm the imports before the first case
    import refbbp  # noqa: F401
    import onnxruntime  # noqa: F401
    prepare_root(root)
    sys.addaudithook(_WATCH)
    for line in sys.stdin:
        cid = line.strip()
        if cid:
            proto.write(json.dumps(run_case(cid, root, proto)) + "\n")
            proto.flush()


def _limit(as_bytes):
    def preexec():
        os.setsid()
        if as_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (as_bytes, as_bytes))
    return preexec


class _Worker:
    def __init__(self, as_limit):
        self.root = tempfile.mkdtemp(prefix="refbbp-fuzz-")
        self.err_path = os.path.join(self.root, "stderr.txt")
        self.err = open(self.err_path, "wb")
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
                   MKL_NUM_THREADS="1", PYTHONPATH=REPO + os.pathsep
                   + os.environ.get("PYTHONPATH", ""), REFBBP_NO_PROGRESS="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fuzz.harness", self.root], cwd=REPO, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err,
            preexec_fn=_limit(as_limit))
        self.case, self.started, self.phase, self.desc, self.buf = None, 0.0, "", "", b""

    def send(self, cid):
        self.case, self.started, self.phase, self.desc = cid, time.monotonic(), "", ""
        self.proc.stdin.write(cid.encode() + b"\n")
        self.proc.stdin.flush()

    def stderr_tail(self):
        self.err.flush()
        with open(self.err_path, "rb") as fh:
            fh.seek(max(0, os.path.getsize(self.err_path) - 4000))
            return fh.read().decode(errors="replace")

    def close(self):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.err.close()
        shutil.rmtree(self.root, ignore_errors=True)


def _death(worker):
    """The result of the case a worker died on."""
    code = worker.proc.wait()
    tail = worker.stderr_tail()
    last = [ln for ln in tail.strip().splitlines() if ln.strip()][-1:] or [""]
    how = (f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}")
    mem = any(s in tail for s in ("bad_alloc", "MemoryError", "Cannot allocate memory",
                                  "out of memory"))
    if worker.phase == "reference":
        outcome = "wrong-accept"
        detail = f"refbbp accepted; onnx.checker/onnxruntime then died ({how})"
    else:
        outcome = "budget" if mem else "crash"
        detail = f"{how}: {last[0][:200]}"
    return {"outcome": outcome, "detail": detail, "trace": tail[-3000:]}


class Pool:
    """``jobs`` workers running case ids with a per-case ``timeout`` (seconds)."""

    def __init__(self, jobs=2, timeout=20.0, as_limit=AS_LIMIT):
        self.jobs, self.timeout, self.as_limit = jobs, timeout, as_limit
        self.workers = []

    def run(self, ids):
        """Yield one result dict per case id, in the order they finish."""
        from .cases import parse_id

        todo = list(ids)[::-1]
        self.workers = [_Worker(self.as_limit) for _ in range(min(self.jobs, len(todo)))]
        try:
            for w in self.workers:
                w.send(todo.pop())
            while any(w.case for w in self.workers):
                busy = [w for w in self.workers if w.case]
                now = time.monotonic()
                wait = max(0.0, min(w.started + self.timeout - now for w in busy))
                ready, _, _ = select.select([w.proc.stdout for w in busy], [], [], wait)
                for i, w in enumerate(self.workers):
                    if not w.case:
                        continue
                    res = None
                    if w.proc.stdout in ready:
                        chunk = os.read(w.proc.stdout.fileno(), 1 << 16)
                        if chunk:
                            w.buf += chunk
                            while b"\n" in w.buf and res is None:
                                line, w.buf = w.buf.split(b"\n", 1)
                                msg = json.loads(line)
                                if "phase" in msg:
                                    w.phase = msg["phase"]
                                    w.desc = msg["desc"] or w.desc
                                else:
                                    res = msg
                            if res is None:
                                continue
                        else:
                            res = _death(w)
                    elif time.monotonic() - w.started > self.timeout:
                        res = {"outcome": "hang", "trace": w.stderr_tail()[-2000:],
                               "detail": f"no result after {self.timeout:g} s "
                                         f"(phase {w.phase})"}
                    else:
                        continue
                    dead = "id" not in res
                    if dead:
                        res.update(id=w.case, gen=parse_id(w.case)[0], desc=w.desc)
                    res["seconds"] = round(time.monotonic() - w.started, 3)
                    w.case = None
                    if dead:
                        w.close()
                        w = self.workers[i] = _Worker(self.as_limit)
                    yield res
                    if todo:
                        w.send(todo.pop())
        finally:
            for w in self.workers:
                w.close()


# ------------------------------------------------------------------------- tables
def outcome_table(results):
    """Counts by generator (rows) and outcome (columns), as text."""
    from refbbp._tables import text_table

    gens = sorted({r["gen"] for r in results})
    rows = []
    for g in gens + ["all"]:
        rs = [r for r in results if g in ("all", r["gen"])]
        rows.append([g] + [sum(r["outcome"] == o for r in rs) for o in OUTCOMES] + [len(rs)])
    return text_table(rows, ["generator", *OUTCOMES, "cases"])


def bad_table(results, limit=None):
    """One line per bad case: id, outcome, description, first error line."""
    bad = [r for r in results if r["outcome"] in BAD]
    lines = [f"{r['id']:<18} {r['outcome']:<13} {r['desc'][:70]}\n"
             f"{'':<32} {r['detail'][:160]}" for r in bad[:limit]]
    if limit is not None and len(bad) > limit:
        lines.append(f"... and {len(bad) - limit} more")
    return "\n".join(lines)


if __name__ == "__main__":
    worker_main(sys.argv[1])
