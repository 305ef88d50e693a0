"""Where a run's chunks are computed.

* :class:`InProcess` (the default): this process, the kernel with its own threads; no
  dependency.
* :class:`DaskExecutor`: a local Dask cluster of ``workers`` processes
  (``LocalCluster(n_workers=workers, threads_per_worker=1, processes=True)``), or an
  existing cluster at ``scheduler``. The model file's bytes are sent to every worker
  once (``Client.scatter(broadcast=True)``); each worker loads the network from them
  once and keeps it for every chunk it computes. Each chunk's kernel runs with
  ``threads`` OpenMP/BLAS threads (default 1 per worker process, so that workers do not
  compete for cores; results do not depend on it). A chunk whose worker dies is
  recomputed on another one (Dask reschedules it; up to ``retries`` more attempts on an
  error); results come back to this process, which writes the shards, so workers need
  no shared file system.

An executor is a context manager: ``with executor.session(shared) as run: for result in
run(fn, jobs): ...`` calls ``fn(shared, job)`` for every job and yields the results as
they complete (any order).
"""

from __future__ import annotations

import contextlib

__all__ = ["DaskExecutor", "InProcess", "dask_missing_message", "keep_freed_memory",
           "make_executor"]

#: What ``--workers`` / ``--scheduler`` say when Dask is not installed.
DASK_INSTALL = 'pip install "refbbp[dask]"'


def dask_missing_message():
    return f"Dask executors need dask[distributed]: {DASK_INSTALL}"


class InProcess:
    """Every chunk in this process, one after the other.

    Parameters
    ----------
    threads : int, optional
        Kernel (OpenMP) and BLAS threads per chunk (default: the kernel's default).
    """

    name = "in-process"

    def __init__(self, threads=None):
        self.threads = threads

    @contextlib.contextmanager
    def session(self, shared):
        def run(fn, jobs):
            for job in jobs:
                yield fn(shared, job)
        yield run


class DaskExecutor:
    """Chunks on Dask workers: a new local cluster of ``workers`` processes, or the cluster
    at ``scheduler`` (module docstring).

    Parameters
    ----------
    workers : int, optional
        Worker processes of a local cluster (``LocalCluster``).
    scheduler : str, optional
        Address of an existing scheduler (``tcp://host:8786``).
    threads : int
        Kernel threads per chunk (default 1).
    retries : int
        Extra attempts of a chunk whose computation raised (default 2).
    in_flight : int, optional
        Chunks submitted ahead of those done (default 2 per worker thread); bounds the
        inputs held in memory.

    Raises
    ------
    ImportError
        Dask is not installed (the message says how to install it).
    """

    name = "dask"

    def __init__(self, workers=None, scheduler=None, threads=1, retries=2, in_flight=None):
        if (workers is None) == (scheduler is None):
            raise ValueError("DaskExecutor needs workers=N (a local cluster) or "
                             "scheduler=ADDRESS, not both")
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise ImportError(dask_missing_message()) from None
        self.workers, self.scheduler = workers, scheduler
        self.threads, self.retries, self.in_flight = threads, retries, in_flight

    @contextlib.contextmanager
    def session(self, shared):
        from distributed import Client, LocalCluster, as_completed

        with contextlib.ExitStack() as stack:
            if self.scheduler is None:
                cluster = stack.enter_context(LocalCluster(
                    n_workers=self.workers, threads_per_worker=1, processes=True,
                    dashboard_address=":0"))
                client = stack.enter_context(Client(cluster))
            else:
                client = stack.enter_context(Client(self.scheduler))
            ahead = self.in_flight or 2 * max(1, sum(client.nthreads().values()))
            # hash=False: keys of this session only, never a key another session (same
            # model bytes) is releasing at the same moment ("already forgotten")
            data = client.scatter(shared, broadcast=True, hash=False)

            def run(fn, jobs):
                jobs = iter(jobs)
                pending = as_completed()

                def submit():
                    for job in jobs:
                        pending.add(client.submit(_on_worker, fn, data, job, pure=False,
                                                  retries=self.retries))
                        return True
                    return False

                for _ in range(ahead):
                    if not submit():
                        break
                for fut in pending:
                    result = fut.result()
                    fut.release()
                    submit()
                    yield result

            yield run


def make_executor(workers=None, scheduler=None, threads=None):
    """The executor of the CLI's ``--workers``, ``--scheduler`` and ``--threads``."""
    if workers is None and scheduler is None:
        return InProcess(threads)
    return DaskExecutor(workers=workers, scheduler=scheduler,
                        threads=1 if threads is None else threads)


def keep_freed_memory():
    """Let glibc keep up to 64 MiB of freed memory and serve blocks up to 32 MiB from
    its heap (``mallopt``), on Linux; returns whether it applied.

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, so that freed
    memory goes back to the system at once; every large array a BBp pass allocates then
    faults its pages in afresh, and BBp on the STL-10 network took 1.6x as long in a
    worker as in a plain process (0.135 s vs 0.084 s, 1 thread). These two thresholds
    are glibc's own dynamic ones at their upper ends (which an explicit trim threshold
    switches off), so a worker runs as fast as a plain process."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20)
                and libc.mallopt(m_trim_threshold, 64 << 20))


def _on_worker(fn, data, job):
    """``fn(data, job)`` on a Dask worker, with :func:`keep_freed_memory` (cheap; applied
    before every chunk, so also on a worker that replaced one that died)."""
    keep_freed_memory()
    return fn(data, job)
