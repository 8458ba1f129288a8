"""Batch inference: many scans, N worker processes, resume, failure isolation, run records.

:func:`run_batch` takes onfh-infer's settings (:class:`onfh_seg.config.InferSettings`, made by
:func:`onfh_seg.config.infer_settings`), expands ``settings.input`` into scan jobs
(:mod:`onfh_seg.infer.inputs`) and runs :func:`onfh_seg.run.jobs.run_job` on each through
:func:`onfh_seg.run.pool.map_jobs`:

* ``workers=1`` runs in this process; ``workers=N`` uses a
  ``ProcessPoolExecutor`` (spawn) whose initializer builds one segmenter per
  worker; ONNX Runtime threads per worker = ``threads`` or, when 0,
  ``max(1, cores // N)``;
* ``executor=dask`` runs the same jobs as Dask tasks (:mod:`onfh_seg.run.dask_exec`): a
  local cluster of ``workers`` processes (one thread each), or the running
  cluster at ``scheduler=tcp://HOST:8786``; same outputs, same run records,
  written here;
* resume: a scan whose ``<name>_measurements.json`` says ok with the same
  ``input_sha256``, ``model_version`` and result settings
  (``scan_record.RESULT_SETTINGS``) and whose outputs exist is skipped; a
  finished scan that runs again is counted with its reason
  (``re-run 1: settings changed (tta)``); ``resume=false`` re-runs all;
* a failing scan goes to ``errors.csv`` with its one-line reason and the
  others carry on;
* per run: ``measurements.csv`` (one row per scan and hip, sorted by scan
  name then side, so it does not depend on worker count or completion order),
  ``errors.csv`` and ``run_manifest.json`` (versions, model, providers,
  timings, start/finish, command line and config).

Lifecycle (:mod:`onfh_seg.lifecycle`): ``out_dir`` is checked for
writability before any work and locked for the run (``.onfh-infer.lock``; a
second run refuses with one line, or waits with ``wait_lock=true``); start-up
clean-up removes only this package's temporaries of dead processes; workers
end with the main process, even when it is SIGKILLed (SIGTERM from the kernel,
then the scan in progress removes its partial outputs), and hold the lock
until they have ended.

The summary line is ``done N, skipped M, failed K`` (``; re-run R: reason``
when finished scans ran again); the exit code is 1 when
no scan succeeded (done + skipped == 0), else 0. No torch.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from tqdm import tqdm

from onfh_seg.clock import OFFSET, utc_timestamp
from onfh_seg.config_schemas import InferSettings
from onfh_seg.infer.inputs import expand_input
from onfh_seg.infer.scan_jobs import ScanJob, selection_line
from onfh_seg.io.label_tables import write_label_tables
from onfh_seg.lifecycle import DirLock, check_writable, remove_own_temporaries
from onfh_seg.run.dask_exec import require_distributed
from onfh_seg.run.jobs import (
    EngineSpec,
    SegmenterFactory,
    absolute_job,
    engine_spec,
    run_job,
    scan_task,
    worker_failed,
)
from onfh_seg.run.pool import Executor, map_jobs
from onfh_seg.run.records import (
    BatchSummary,
    write_errors_csv,
    write_measurements_csv,
    write_run_manifest,
)

log = logging.getLogger("onfh_seg.run.batch")


def _progress(total: int, desc: str) -> tqdm:
    return tqdm(total=total, desc=desc, unit="scan", file=sys.stderr, dynamic_ncols=True, mininterval=0.5)


def _report(result: dict) -> None:
    if result["status"] == "error":
        log.warning("failed %s: %s", result["name"], result["error"])
    for problem in result.get("output_errors") or []:  # e.g. a DICOM SEG that could not be written
        log.warning("%s: not written: %s", result["name"], problem)


def scan_jobs(settings: InferSettings, out_dir: Path | None) -> list[ScanJob]:
    """The scan jobs of ``settings.input`` (outputs in ``out_dir`` are never inputs)."""
    return expand_input(settings.input, dict(settings.dicom.rules or {}), out_dir=out_dir,
                        max_image_mb=settings.max_image_mb,
                        allow_unknown_orientation=bool(settings.allow_unknown_orientation),
                        series=str(settings.series), geometry=str(settings.geometry))


def _check(settings: InferSettings) -> Path:
    """``out_dir`` after the checks the schema cannot make alone; one-line errors before any work."""
    if str(settings.out_dir or "").strip() in ("", "???"):
        raise ValueError("out_dir is empty")
    if settings.scheduler and settings.executor != "dask":
        raise ValueError("scheduler= needs executor=dask")
    if settings.executor == "dask":
        require_distributed()  # before any work: a missing extra is one line
    out_dir = Path(str(settings.out_dir))
    check_writable(out_dir)  # before any work: a read-only out_dir is a one-line error at once
    return out_dir


def _run_jobs(jobs: list[ScanJob], out_dir: Path, settings: InferSettings, spec: EngineSpec, workers: int,
              factory: SegmenterFactory | None, lock: DirLock) -> list[dict]:
    """Every job's result, in job order: here (one worker, or a segmenter factory), in a local pool or on Dask."""
    remote = bool(settings.scheduler)
    if settings.executor == "dask":
        sent = [absolute_job(j) for j in jobs] if remote else jobs  # local workers share this process's folder
        target = str(out_dir.resolve()) if remote else str(out_dir)
        if remote:
            spec = dataclasses.replace(spec, model_dir=os.path.abspath(spec.model_dir))
        fn: Any = functools.partial(scan_task, out_dir=target, settings=settings, spec=spec)
        executor = Executor("dask", workers, settings.scheduler)
    elif workers > 1 and factory is None:
        sent, fn = jobs, functools.partial(scan_task, out_dir=str(out_dir), settings=settings, spec=spec)
        executor = Executor("local", workers, keep_fd=lock.fd)
    else:
        segmenter = factory(spec.threads) if factory is not None else spec.build()
        sent, fn = jobs, functools.partial(run_job, out_dir=out_dir, segmenter=segmenter, settings=settings)
        executor = Executor("local", 1)
    results: list[dict | None] = [None] * len(jobs)
    try:
        with _progress(len(jobs), "onfh-infer") as bar, \
                closing(map_jobs(fn, sent, executor, on_error=worker_failed)) as finished:
            for i, result in finished:
                if result.get("init_error"):
                    raise RuntimeError(result["error"])  # every worker would fail the same way
                _report(result)
                results[i] = result
                bar.update(1)
    finally:
        if settings.executor == "dask" and not remote:  # every worker of this run has ended: their
            remove_own_temporaries(out_dir)  # temporaries are leftovers
    return [r for r in results if r is not None]


def run_batch(settings: InferSettings, segmenter_factory: SegmenterFactory | None = None,
              command_line: list[str] | None = None) -> BatchSummary:
    """Run inference with ``settings`` and write the run records.

    ``segmenter_factory(threads)`` replaces the configured engine for an
    in-process run (``workers=1``); pool and Dask workers always build
    ``settings.engine`` themselves.
    """
    t0 = time.perf_counter()
    started = utc_timestamp(OFFSET)
    out_dir = _check(settings)
    jobs = scan_jobs(settings, out_dir)
    for line in filter(None, map(selection_line, jobs)):
        log.info("%s", line)  # which series of each DICOM study, and the runner-up
    workers = min(int(settings.workers), len(jobs))
    spec = engine_spec(settings, workers)
    if settings.scheduler and int(settings.threads) <= 0:  # the remote workers' cores are not known here
        spec = dataclasses.replace(spec, threads=1)
    if segmenter_factory is None and not Path(spec.model_dir).exists():
        raise FileNotFoundError(f"model folder not found: {spec.model_dir} (set model_dir=...)")

    out_dir.mkdir(parents=True, exist_ok=True)
    check_writable(out_dir)
    with DirLock(out_dir, "onfh-infer", wait=bool(settings.wait_lock)) as lock:
        remove_own_temporaries(out_dir)  # atomic-write leftovers of killed runs (only this package's own)
        log.info("onfh-infer: %d scan(s) from %s -> %s (%s, workers %d, %d thread(s) each)",
                 len(jobs), settings.input, out_dir, settings.scheduler or settings.executor, workers, spec.threads)
        results = _run_jobs(jobs, out_dir, settings, spec, workers, segmenter_factory, lock) if jobs else []
        summary = BatchSummary.of(out_dir, results)
        write_measurements_csv(out_dir, results, jobs)
        write_errors_csv(out_dir, results)
        write_label_tables(out_dir)
        write_run_manifest(out_dir, settings, summary, spec, workers, started, time.perf_counter() - t0, command_line)
    return summary
