"""Dask for :func:`onfh_seg.run.pool.map_jobs` (``executor=dask``): a local cluster or ``scheduler=tcp://HOST:8786``.

The client (the ``onfh-infer`` / ``onfh-track`` process) expands the input, locks out_dir and writes the
run records; only where the jobs run differs from the local pool:

* each job is one task (for onfh-infer :func:`onfh_seg.run.jobs.scan_task`, which calls the same
  :func:`onfh_seg.run.jobs.run_job` as a pool worker, so resume and skip rules, per-scan outputs and
  failure isolation are the pool's); the client collects the results and writes the run records once;
* each worker process builds its segmenter once, on its first task, and keeps it
  (:func:`onfh_seg.run.jobs.cached_segmenter`); a segmenter that cannot be built fails the run with one line;
* a local cluster has ``workers`` processes with one thread each (ONNX Runtime
  threads per worker as for the pool: ``threads`` or ``cores // workers``;
  the client's environment unchanged, no Dask profiler); it ends with the run. Dask restarts a worker that dies (killed, out of memory)
  and runs its task again on a live one; a scan whose workers die three times
  is recorded in ``errors.csv`` (``worker failed: ...``). Every per-scan file is
  written under a temporary name and renamed, the measurements JSON last, so a
  killed worker leaves no half-written output; its temporaries are removed when
  the local cluster has ended (and at the start of every run);
* with ``scheduler=...`` the workers must see the same paths (shared file
  system; the scan, model and out_dir paths are sent as absolute paths; the
  files of a DICOM series as the input named them, so name a DICOM study by
  its absolute path) and have onfh-seg installed; ``threads`` > 0 sets ONNX Runtime threads per worker, else 1
  (start workers with ``--nworkers <cores> --nthreads 1``; docs/cluster.md).

Requires ``dask[distributed]`` (``pip install 'onfh-seg[dask]'``).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("onfh_seg.run.dask_exec")

CONNECT_TIMEOUT_S = 20
# Local-cluster workers as the pool's: this process's environment as it is (Dask would otherwise set
# OMP/MKL/OPENBLAS_NUM_THREADS=1 and MALLOC_TRIM_THRESHOLD_), no statistical profiler sampling every 10 ms.
# Fewer wake-ups of the event loops that share each worker's GIL with its scan: the loop-latency tick every
# 1 s instead of 20 ms, the memory monitor every 1 s instead of 100 ms (nothing is spilled or paused: no
# memory limit). An idle 2-worker cluster then used 1.9-2.7% of a core instead of 8.6% (README, Dask).
LOCAL_WORKER_CONFIG = {"distributed.nanny.pre-spawn-environ": {}, "distributed.worker.profile.enabled": False,
                       "distributed.admin.tick.interval": "1s", "distributed.worker.memory.monitor-interval": "1s"}


def require_distributed() -> None:
    """One-line error when ``dask.distributed`` is not installed."""
    try:  # function-level import: dask.distributed is an optional dependency (dask extra); is it installed?
        import distributed  # noqa: F401
    except ImportError:
        raise RuntimeError("executor=dask needs dask.distributed: pip install 'onfh-seg[dask]'") from None


def quiet_distributed_logs() -> None:
    """Dask's own INFO/WARNING chatter (scheduler and nanny start-up, port fallbacks) off the console unless
    this process logs at DEBUG; failed scans are reported by onfh-infer itself."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("distributed").setLevel(logging.ERROR)


def open_client(workers: int, scheduler: str | None) -> tuple[Any, Any]:
    """``(client, cluster)``: a client of the scheduler at ``scheduler`` (an address, or a scheduler file
    ``*.json``), or of a new local cluster of
    ``workers`` processes with one thread each (``cluster`` is None for an existing scheduler)."""
    require_distributed()
    # function-level import: optional dependency (dask extra)
    from distributed import Client, LocalCluster

    quiet_distributed_logs()
    if scheduler:
        try:
            if str(scheduler).endswith(".json"):  # a scheduler file (dask scheduler --scheduler-file, dask-jobqueue)
                if not Path(scheduler).is_file():
                    raise OSError(f"scheduler file not found: {scheduler}")
                return Client(scheduler_file=str(scheduler), timeout=f"{CONNECT_TIMEOUT_S}s"), None
            return Client(str(scheduler), timeout=f"{CONNECT_TIMEOUT_S}s"), None
        except (OSError, TimeoutError) as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise OSError(f"cannot reach the Dask scheduler {scheduler}: {text}") from None
    cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None, memory_limit=0, silence_logs=logging.ERROR)
    try:
        return Client(cluster), cluster
    except BaseException:
        cluster.close()
        raise


def close_client(client: Any, cluster: Any) -> None:
    """Close the client and, when this run started it, the local cluster (its worker processes end)."""
    try:
        client.close()
    finally:
        if cluster is not None:
            cluster.close()


@contextlib.contextmanager
def dask_client(workers: int, scheduler: str | None) -> Iterator[tuple[Any, bool]]:
    """``(client, remote)`` for the run (see :func:`open_client`); closed at the end. A local cluster's
    workers, restarted ones included, run with ``LOCAL_WORKER_CONFIG``."""
    require_distributed()
    # function-level import: optional dependency (dask extra)
    import dask

    with dask.config.set(LOCAL_WORKER_CONFIG if not scheduler else {}):
        client, cluster = open_client(workers, scheduler)
        try:
            yield client, cluster is None
        finally:
            close_client(client, cluster)


def submit_in_order(client: Any, func: Callable[..., Any], argsets: Iterable[tuple], prefix: str) -> Iterator[tuple[int, Any]]:
    """Submit ``func(*args)`` for each argument tuple; yield ``(index, future)`` as the tasks finish.
    On any exception (Ctrl-C included) in the consumer, the tasks still queued are cancelled."""
    # function-level import: optional dependency (dask extra)
    from distributed import as_completed

    run_id = uuid.uuid4().hex[:8]
    futures = {client.submit(func, *args, key=f"{prefix}-{run_id}-{i}", pure=False, retries=0): i
               for i, args in enumerate(argsets)}
    try:
        for fut in as_completed(list(futures)):
            yield futures[fut], fut
    except BaseException:
        client.cancel(list(futures), force=True)
        raise
