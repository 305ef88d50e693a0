"""Throughput of the dataset runner (refbbp.runs): BBp (``explain``, sign rule) on the BBp
paper's STL-10 network and ``evaluate`` on the bundled digits model, as a plain Python
loop over the same inputs, the runner in this process, and the runner on a local Dask
cluster of 1 and 2 worker processes; and the runner's overhead at 1 worker against the
plain loop (target <= 5 %).

Usage::

    python benchmarks/bench_runs.py [--n-bbp 64] [--n-eval 64] [--chunk-size 16]

The plain loop of ``explain`` loads the network and calls the ``explain`` task's
``compute`` on each chunk (BBp and the golden fields a shard holds, without shards,
manifest or executor); that of ``evaluate`` is :func:`refbbp.evaluate.evaluate` on the
whole set. Both the plain loop and the in-process runner get one warm-up call on the
first chunk. The kernel runs with
1 thread everywhere (``threadpoolctl``), so that 1 and 2 workers are comparable; a Dask
cluster's start-up (a few seconds) is outside the timing, inputs/s is of the run itself.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models  # noqa: E402

import refbbp  # noqa: E402
from refbbp import data  # noqa: E402
from refbbp._tables import text_table  # noqa: E402
from refbbp.evaluate import evaluate  # noqa: E402
from refbbp.runs import InProcess, run  # noqa: E402
from refbbp.runs.tasks import Explain  # noqa: E402

METHODS = ["gradient", "bias", "random"]


def _plain(task, model, x, chunk_size):
    if task == "explain":
        net = refbbp.load(model)
        explain = Explain(rule="sign")
        for a in range(0, len(x), chunk_size):
            explain.compute({"net": net}, 0, x[a:a + chunk_size], None, {})
    else:
        evaluate(model, x, METHODS, group=chunk_size)


def _options(task, chunk_size):
    return {"rule": "sign"} if task == "explain" else {"methods": METHODS,
                                                       "group": chunk_size}


def _timed_run(task, model, x, chunk_size, executor, tmp):
    out = tempfile.mkdtemp(dir=tmp)
    start = time.perf_counter()
    run(task, model, x, out, executor=executor, chunk_size=chunk_size, progress=False,
        **_options(task, chunk_size))
    return time.perf_counter() - start


def _dask_time(task, model, x, chunk_size, workers, tmp):
    from distributed import LocalCluster

    from refbbp.runs import DaskExecutor

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster:
        ex = DaskExecutor(scheduler=cluster.scheduler_address, threads=1)
        _timed_run(task, model, x[:chunk_size], chunk_size, ex, tmp)   # warm the workers
        return _timed_run(task, model, x, chunk_size, ex, tmp)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-bbp", type=int, default=64)
    p.add_argument("--n-eval", type=int, default=64)
    p.add_argument("--chunk-size", type=int, default=16)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = p.parse_args(argv)
    tmp = tempfile.mkdtemp()
    rng = np.random.default_rng(0)
    stl10, _, shape = models.build("stl10", tmp)
    images, _ = data.load_samples()
    cases = [("explain", "BBp (sign), STL-10 net", stl10, rng.random((args.n_bbp,) + shape)),
             ("evaluate", f"evaluate ({', '.join(METHODS)}), digits model",
              str(data.model_path()),
              np.concatenate([images] * (-(-args.n_eval // len(images))))[:args.n_eval])]
    rows = []
    for task, label, model, x in cases:
        n, cs = len(x), args.chunk_size
        with threadpool_limits(limits=1):
            _plain(task, model, x[:cs], cs)                  # warm-up
            start = time.perf_counter()
            _plain(task, model, x, cs)
            plain = time.perf_counter() - start
            _timed_run(task, model, x[:cs], cs, InProcess(threads=1), tmp)   # warm-up
            inproc = _timed_run(task, model, x, cs, InProcess(threads=1), tmp)
        times = {"plain loop": plain, "runner, in-process": inproc}
        for w in args.workers:
            try:
                times[f"runner, {w} Dask worker(s)"] = _dask_time(task, model, x, cs, w, tmp)
            except ImportError:
                print("note: no Dask: pip install 'refbbp[dask]'", file=sys.stderr)
                break
        for how, t in times.items():
            rows.append([label, how, n, f"{t:.2f}", f"{n / t:.1f}",
                         f"{100 * (t / plain - 1):+.1f} %"])
    print(text_table(rows, ["task", "how", "inputs", "seconds", "inputs/s",
                            "vs plain loop"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
