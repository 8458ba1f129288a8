"""onfh-infer's scan jobs on a Dask cluster (``executor=dask``): a local cluster or ``scheduler=tcp://HOST:8786``.

The client (the ``onfh-infer`` process) expands the input, locks out_dir and
writes the run records; only where the scans run differs from the local pool
(:mod:`onfh_seg.batch`):

* each job is one task, :func:`scan_task`, which calls the same
  :func:`onfh_seg.batch.run_job` as a pool worker, so resume and skip rules,
  per-scan outputs (NIfTI, JSON, PNG, DICOM) and failure isolation are the
  pool's; the client collects the results in job order and writes
  ``measurements.csv``, ``errors.csv`` and ``run_manifest.json`` once;
* each worker process builds its segmenter once, on its first task, and keeps it
  in a per-process cache keyed by :class:`onfh_seg.batch.EngineSpec`
  (:func:`cached_segmenter`); a segmenter that cannot be built fails the run with
  one line, as in the pool;
* a local cluster has ``workers`` processes with one thread each (ONNX Runtime
  threads per worker as for the pool: ``threads`` or ``cores // workers``;
  the client's environment unchanged, no Dask profiler); it ends with the run. Dask restarts a worker that dies (killed, out of memory)
  and runs its scan again on a live one; a scan whose workers die three times
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

import asyncio
import contextlib
import dataclasses
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from onfh_seg.infer.inputs import ScanJob

log = logging.getLogger("onfh_seg.dask_exec")

CONNECT_TIMEOUT_S = 20
# Local-cluster workers as the pool's: this process's environment as it is (Dask would otherwise set
# OMP/MKL/OPENBLAS_NUM_THREADS=1 and MALLOC_TRIM_THRESHOLD_), no statistical profiler sampling every 10 ms.
# Fewer wake-ups of the event loops that share each worker's GIL with its scan: the loop-latency tick every
# 1 s instead of 20 ms, the memory monitor every 1 s instead of 100 ms (nothing is spilled or paused: no
# memory limit). An idle 2-worker cluster then used 1.9-2.7% of a core instead of 8.6% (README, Dask).
LOCAL_WORKER_CONFIG = {"distributed.nanny.pre-spawn-environ": {}, "distributed.worker.profile.enabled": False,
                       "distributed.admin.tick.interval": "1s", "distributed.worker.memory.monitor-interval": "1s"}

_SEGMENTERS: dict[Any, Any] = {}  # EngineSpec -> segmenter of this worker process
_BUILD_ERRORS: dict[Any, str] = {}  # EngineSpec -> one-line reason it could not be built here


def require_distributed() -> None:
    """One-line error when ``dask.distributed`` is not installed."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise RuntimeError("executor=dask needs dask.distributed: pip install 'onfh-seg[dask]'") from None


def cached_segmenter(spec: Any) -> Any:
    """This process's segmenter for ``spec``, built on first use (one model load per worker process).
    Raises ``RuntimeError`` with a one-line reason when it cannot be built (also on later calls)."""
    from onfh_seg.infer.pipeline import one_line

    if spec in _BUILD_ERRORS:
        raise RuntimeError(_BUILD_ERRORS[spec])
    if spec not in _SEGMENTERS:
        try:
            _SEGMENTERS[spec] = spec.build()
        except Exception as exc:
            _BUILD_ERRORS[spec] = one_line(exc)
            raise RuntimeError(_BUILD_ERRORS[spec]) from None
    return _SEGMENTERS[spec]


def scan_task(job: ScanJob, out_dir: str, cfg: Mapping[str, Any], spec: Any) -> dict:
    """One Dask task: skip (resume) or process ``job`` with this worker's cached segmenter (never raises for a
    bad scan; a segmenter that cannot be built gives an ``init_error`` result, as a pool worker does)."""
    from onfh_seg.batch import run_job

    try:
        segmenter = cached_segmenter(spec)
    except RuntimeError as exc:
        return {"name": job.name, "input": job.image_ref, "status": "error",
                "error": f"segmenter not available: {exc}", "rows": [], "timings": {}, "outputs": [],
                "model_version": None, "model_sha256": None, "providers": [], "init_error": True}
    return run_job(job, Path(out_dir), segmenter, cfg)


def worker_failed(job: ScanJob, exc: BaseException) -> dict:
    """The result of a scan whose task could not finish (its workers died, the cluster went away)."""
    from onfh_seg.infer.pipeline import one_line

    return {"name": job.name, "input": job.image_ref, "status": "error", "error": f"worker failed: {one_line(exc)}",
            "rows": [], "timings": {}, "outputs": [], "model_version": None, "model_sha256": None, "providers": []}


def absolute_job(job: ScanJob) -> ScanJob:
    """``job`` with an absolute input path (for workers on other machines; names and CSV text unchanged)."""
    return dataclasses.replace(job, path=Path(os.path.abspath(job.path)))


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


def run_dask(jobs: list[ScanJob], out_dir: Path, cfg: Mapping[str, Any], spec: Any, workers: int,
             scheduler: str | None, on_result: Callable[[dict], None], progress: Callable[[int, str], Any]) -> list[dict]:
    """Run ``jobs`` on Dask; results in job order. ``on_result`` is called for each finished scan (reporting);
    ``progress(total, desc)`` is the progress bar of the local pool. Raises ``RuntimeError`` with one line
    when the segmenter cannot be built on a worker."""
    from onfh_seg.lifecycle import remove_own_temporaries

    remote = bool(scheduler)
    sent = [absolute_job(j) for j in jobs] if remote else jobs  # local workers share this process's folder
    target = str(Path(out_dir).resolve()) if remote else str(out_dir)
    if remote:
        spec = dataclasses.replace(spec, model_dir=os.path.abspath(spec.model_dir))
    results: list[dict | None] = [None] * len(jobs)
    try:
        with dask_client(workers, scheduler) as (client, _), progress(len(jobs), "onfh-infer") as bar:
            argsets = ((job, target, dict(cfg), spec) for job in sent)
            for i, fut in submit_in_order(client, scan_task, argsets, "onfh-scan"):
                try:
                    result = fut.result()
                except (Exception, asyncio.CancelledError) as exc:  # its workers died (KilledWorker), or the
                    result = worker_failed(jobs[i], exc)  # scheduler went away (the task was cancelled)
                if result.get("init_error"):
                    raise RuntimeError(result["error"])  # every worker would fail the same way
                on_result(result)
                results[i] = result
                bar.update(1)
    finally:
        if not remote:  # every worker of this run has ended: their temporaries are leftovers
            remove_own_temporaries(out_dir)
    return [r for r in results if r is not None]


def map_dask(func: Callable[[Any], Any], items: list[Any], workers: int, scheduler: str | None) -> Iterator[Any]:
    """``func(item)`` for each item on Dask (local cluster of ``workers`` processes, or ``scheduler``), yielded
    in completion order; the cluster is closed when the iterator ends or is closed. ``func`` must not raise
    for a bad item (a task that fails anyway re-raises here)."""
    with dask_client(max(1, min(int(workers), len(items) or 1)), scheduler) as (client, _):
        for _, fut in submit_in_order(client, func, ((item,) for item in items), "onfh-item"):
            yield fut.result()
