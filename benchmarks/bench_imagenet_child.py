"""The refbbp side of ``bench_imagenet.py``, run in a fresh process per network so that
its peak RSS is refbbp's own (no PyTorch, no other model in the process).

Usage (by ``bench_imagenet.py``)::

    python benchmarks/bench_imagenet_child.py '{"model": PATH, "x": X.npy, "out": DIR,
        "threads": T, "max_bytes": N, "mem_limit": N, "repeats": R, "budget": S}'

It limits its address space to ``mem_limit`` bytes (``RLIMIT_AS``; 0: no limit), then
times ``refbbp.load(model, max_bytes=max_bytes)`` and ``refbbp.bbp(net, x, rule="sign",
temperature=1.0, n_threads=T)`` on the input saved in ``x`` (the first call, then the
best of at least ``repeats`` more, repeated while ``budget`` seconds last), and prints
one line ``RESULT {json}``: the times; the peak RSS (``VmHWM``, KiB; see
:func:`_rss_kib` for why not ``ru_maxrss``) after the imports, after the load, after the
first explanation (= load + one explanation) and at the end, and ``ru_maxrss`` at the
end (which includes the parent's RSS); the explained class, the logits, the fallback
mass, the completeness error, whether PyTorch got imported. beta and w go to
``out/beta.npy`` and ``out/w.npy``. A refusal of the memory budget, a ``MemoryError``
(the address-space limit) or any other error is caught and reported (``status``
"refused", "oom" or "error", ``stage`` "import", "input", "load" or "bbp") with the first line of
its message; a kill by a signal shows as the exit status to the parent.
"""

import json
import os
import resource
import sys
import time


def _rss_kib():
    """Peak RSS of this process so far, KiB: ``VmHWM`` of /proc/self/status.

    Not ``getrusage(RUSAGE_SELF).ru_maxrss``: on Linux a process started with
    fork/vfork + exec keeps in it the RSS its parent had at the fork (the kernel records
    the old address space's high-water mark at exec), so it would count the parent's
    PyTorch. ``VmHWM`` belongs to the new address space alone. Falls back to
    ``ru_maxrss`` where there is no /proc.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss   # KiB on Linux


def _first_line(exc):
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def run(args):
    out = {"status": "error", "stage": "import", "rss_start_kib": _rss_kib()}
    if args.get("mem_limit"):
        lim = int(args["mem_limit"])
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    try:
        import numpy as np

        import refbbp

        out["rss_import_kib"] = _rss_kib()
        out["stage"] = "input"
        x = np.load(args["x"])
        out["stage"] = "load"
        t0 = time.perf_counter()
        net = refbbp.load(args["model"], max_bytes=int(args["max_bytes"]))
        out["load_s"] = time.perf_counter() - t0
        out["rss_load_kib"] = _rss_kib()
        out["layer_bytes"] = int(sum(getattr(n, "nbytes", 0) for n in net.nodes))
        out["n_nodes"] = len(net.nodes)

        out["stage"] = "bbp"
        kw = dict(rule="sign", temperature=1.0, n_threads=int(args["threads"]))
        t0 = time.perf_counter()
        att = refbbp.bbp(net, x, **kw)
        out["bbp_first_s"] = time.perf_counter() - t0
        out["rss_peak_kib"] = _rss_kib()          # load + one explanation
        out["first_timings"] = {k: v for k, v in att.timings.items() if k != "nodes"}
        times, start = [], time.perf_counter()
        while len(times) < int(args["repeats"]) or (
                len(times) < 50 and time.perf_counter() - start < float(args["budget"])):
            t0 = time.perf_counter()
            att = refbbp.bbp(net, x, **kw)
            times.append(time.perf_counter() - t0)
        out["bbp_best_s"] = min(times) if times else None
        out["bbp_calls"] = len(times)
        out["timings"] = {k: v for k, v in att.timings.items() if k != "nodes"}
        out["rss_end_kib"] = _rss_kib()
        logits = np.asarray(att.linear.logits, np.float64)
        out.update(status="ok", target=int(np.argmax(logits)), logits=logits.tolist(),
                   fallback_total=float(att.fallback_total),
                   completeness=float(att.completeness().worst),
                   n_threads=att.n_threads)
        np.save(os.path.join(args["out"], "beta.npy"), att.beta)
        np.save(os.path.join(args["out"], "w.npy"), np.asarray(att.w).reshape(att.beta.shape))
    except MemoryError as exc:     # refbbp.MemoryBudgetError is a MemoryError too
        budget = type(exc).__name__ == "MemoryBudgetError"
        out.update(status="refused" if budget else "oom", message=_first_line(exc))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which goes on
        out.update(status="error", message=_first_line(exc))
    out.setdefault("rss_peak_kib", _rss_kib())
    out["rss_end_kib"] = _rss_kib()
    out["ru_maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out["torch_imported"] = "torch" in sys.modules
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    run(json.loads(sys.argv[1]))
