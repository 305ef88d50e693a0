"""The runner on a Dask LocalCluster of 2 worker processes: the same bits as in-process,
and a worker killed mid-run loses nothing."""

from __future__ import annotations

import faulthandler
import os

import numpy as np
import pytest

from refbbp import data
from refbbp.runs import DaskExecutor, check_run, run

distributed = pytest.importorskip("distributed")

MODEL = str(data.model_path())
X, Y = data.load_samples()
X = X[:24]
#: Seconds after which a hung test dumps its stacks and exits (it cannot hang CI).
TIMEOUT = 240


@pytest.fixture(scope="module")
def cluster():
    faulthandler.dump_traceback_later(TIMEOUT, exit=True)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as c:
        yield c
    faulthandler.cancel_dump_traceback_later()


def _rows_equal(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def _exit_on_first_chunk():
    """Installed on one worker: that worker process dies on the first chunk it starts."""
    from refbbp.runs import runner

    runner._before_chunk = lambda job: os._exit(1)


def test_dask_run_equals_in_process_run(tmp_path, cluster):
    local = run("explain", MODEL, X, tmp_path / "a", rule="sign", chunk_size=4,
                progress=False).rows()
    r = run("explain", MODEL, X, tmp_path / "b", rule="sign", chunk_size=4, progress=False,
            executor=DaskExecutor(scheduler=cluster.scheduler_address))
    _rows_equal(r.rows(), local)
    assert check_run(tmp_path / "b") == []
    methods = ["gradient", "random"]
    for opts in ({}, dict(baseline="mean", ties="random", never_flip="exclude",
                          noise_pool=2)):
        ev = [run("evaluate", MODEL, X[:12], tmp_path / f"e{k}{len(opts)}", methods=methods,
                  group=4, chunk_size=4, progress=False, executor=ex, **opts).rows()
              for k, ex in enumerate([None,
                                      DaskExecutor(scheduler=cluster.scheduler_address)])]
        _rows_equal(*ev)
    bias = [run("bias-report", MODEL, X, tmp_path / f"s{k}", labels=Y[:24], chunk_size=8,
                start="after-normalisation", progress=False, executor=ex)
            for k, ex in enumerate([None, DaskExecutor(scheduler=cluster.scheduler_address)])]
    _rows_equal(bias[0].rows(), bias[1].rows())
    assert bias[0].summary == bias[1].summary and "only_bz" in bias[1].summary["accuracy"]


def test_killed_worker_loses_nothing(tmp_path, cluster):
    """One worker process exits (os._exit) on its first chunk; Dask recomputes the chunk
    on another worker and the run is complete and identical."""
    local = run("bias-report", MODEL, X, tmp_path / "a", labels=Y[:24], chunk_size=3,
                progress=False).rows()
    with distributed.Client(cluster) as client:
        victim = sorted(client.scheduler_info()["workers"])[0]
        client.run(_exit_on_first_chunk, workers=[victim])
        r = run("bias-report", MODEL, X, tmp_path / "b", labels=Y[:24], chunk_size=3,
                progress=False, executor=DaskExecutor(scheduler=cluster.scheduler_address))
        assert victim not in client.scheduler_info()["workers"]     # it did die
    _rows_equal(r.rows(), local)
    assert check_run(tmp_path / "b") == [] and not r.failed


def test_local_cluster_executor(tmp_path):
    """--workers N: the runner starts (and stops) its own local cluster."""
    faulthandler.dump_traceback_later(TIMEOUT, exit=True)
    try:
        r = run("bias-report", MODEL, X, tmp_path / "r", labels=Y[:24], chunk_size=12,
                progress=False, executor=DaskExecutor(workers=1))
    finally:
        faulthandler.cancel_dump_traceback_later()
    assert r.summary["n"] == len(X)


def test_keep_freed_memory_on_linux():
    """Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536, which made BBp 1.6x slower on
    its workers; the executor sets glibc's thresholds back before each chunk."""
    import sys

    from refbbp.runs.executors import keep_freed_memory

    assert keep_freed_memory() == sys.platform.startswith("linux")
    assert keep_freed_memory() == sys.platform.startswith("linux")   # idempotent
