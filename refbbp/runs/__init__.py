"""The dataset runner: a task over a whole data set, in chunks, on this process or on
Dask workers, written as resumable, checkable shards.

* ``sources.py`` -- inputs from a folder of images, a memory-mapped ``.npy``, an
  ``.npz`` or a Zarr array, a chunk at a time;
* ``tasks.py`` -- what a chunk computes for ``explain``, ``verify``, ``oracle``,
  ``evaluate`` and ``bias-report`` (the functions the CLI commands call), and how the
  whole run is summarised;
* ``store.py`` -- the manifest, the shards, atomic writes, hashes and ``check-run``;
* ``executors.py`` -- :class:`InProcess` (default) and :class:`DaskExecutor` (a local
  Dask cluster or an existing scheduler);
* ``runner.py`` -- :func:`run`, the driver.

Examples
--------
>>> import numpy as np, tempfile, refbbp
>>> images, labels = refbbp.data.load_samples()
>>> out = tempfile.mkdtemp()
>>> r = refbbp.run("bias-report", refbbp.data.model_path(), images[:8], out,
...                labels=labels[:8], chunk_size=4, progress=False)
>>> r.summary["n"], refbbp.runs.check_run(out)
(8, [])
"""

from .executors import DaskExecutor, InProcess
from .runner import CHUNK_SIZE, Run, open_run, run
from .store import check_run
from .tasks import TASKS

__all__ = ["CHUNK_SIZE", "DaskExecutor", "InProcess", "Run", "TASKS", "check_run",
           "open_run", "run"]
