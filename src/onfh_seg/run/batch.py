"""Batch inference: many scans, N worker processes, resume, failure isolation, run records.

:func:`run_batch` expands ``cfg["input"]`` into scan jobs
(:mod:`onfh_seg.infer.inputs`) and runs :func:`onfh_seg.infer.pipeline.process_scan`
on each:

* ``workers=1`` runs in this process; ``workers=N`` uses a
  ``ProcessPoolExecutor`` (spawn) whose initializer builds one segmenter per
  worker; ONNX Runtime threads per worker = ``threads`` or, when 0,
  ``max(1, cores // N)``;
* ``executor=dask`` runs the same jobs as Dask tasks (:mod:`onfh_seg.dask_exec`): a
  local cluster of ``workers`` processes (one thread each), or the running
  cluster at ``scheduler=tcp://HOST:8786``; same outputs, same run records,
  written here;
* resume: a scan whose ``<name>_measurements.json`` says ok with the same
  ``input_sha256``, ``model_version`` and result settings
  (``pipeline.RESULT_SETTINGS``) and whose outputs exist is skipped; a
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
import importlib
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onfh_seg.infer.inputs import ScanJob, expand_input, selection_line
from onfh_seg.infer.pipeline import (
    one_line,
    process_scan,
    result_settings,
    resume_check,
    rows_from_measurements,
    segmenter_info,
    setting,
)
from onfh_seg.io.label_tables import write_label_tables
from onfh_seg.lifecycle import DirLock, InheritedFd, check_writable, die_with_parent, remove_own_temporaries
from onfh_seg.run_records import utc_timestamp, write_errors_csv, write_measurements_csv, write_run_manifest

log = logging.getLogger("onfh_seg.batch")

DEFAULT_ENGINE = "onfh_seg.infer.engine:Segmenter"
SegmenterFactory = Callable[[int], Any]


@dataclass
class BatchSummary:
    """Outcome of a run; ``results`` are per-scan dicts in job order."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    results: list[dict] = field(default_factory=list)
    out_dir: Path | None = None
    no_hip: list[str] = field(default_factory=list)  # scans refused: no femoral head found, or not hip anatomy

    @property
    def exit_code(self) -> int:
        return 0 if self.done + self.skipped + len(self.no_hip) > 0 else 1

    @property
    def reruns(self) -> dict[str, int]:
        """Why finished scans ran again: reason -> count (first seen first)."""
        out: dict[str, int] = {}
        for r in self.results:
            if r.get("rerun_reason"):
                out[r["rerun_reason"]] = out.get(r["rerun_reason"], 0) + 1
        return out

    def line(self) -> str:
        text = f"done {self.done}, "
        if self.no_hip:  # counted apart and named: a refusal is an answer, not a measurement
            names = ", ".join(self.no_hip[:5]) + (f", +{len(self.no_hip) - 5} more" if len(self.no_hip) > 5 else "")
            text += f"no hip found {len(self.no_hip)} ({names}), "
        text += f"skipped {self.skipped}, failed {self.failed}"
        reruns = self.reruns
        if reruns:
            n = sum(reruns.values())
            why = next(iter(reruns)) if len(reruns) == 1 else ", ".join(f"{c} {r}" for r, c in reruns.items())
            text += f"; re-run {n}: {why}"
        return text


# ---------------------------------------------------------------- segmenter construction


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def threads_per_worker(threads: int, workers: int) -> int:
    """``threads`` if > 0, else ``max(1, cores // workers)``."""
    return int(threads) if int(threads) > 0 else max(1, available_cores() // max(1, int(workers)))


def load_engine_class(spec: str) -> Any:
    """Import ``"package.module:Name"``; one-line error if that is not possible."""
    module_name, _, attr = str(spec).partition(":")
    if not module_name or not attr:
        raise ValueError(f"engine must look like 'package.module:Class', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RuntimeError(f"segmentation engine {spec!r} is not available ({exc})") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise RuntimeError(f"segmentation engine {spec!r}: {module_name} has no {attr}") from None


def resolve_model_dir(model_dir: str | Path) -> Path:
    """``model_dir`` as given if it exists, else beside ``configs/`` (see :func:`onfh_seg.config.resolve_model_dir`)."""
    from onfh_seg.config import resolve_model_dir as resolve

    return resolve(model_dir)


@dataclass(frozen=True)
class EngineSpec:
    """Everything a worker needs to build its own segmenter (picklable)."""

    engine: str
    model_dir: str
    provider: str
    threads: int
    tta: bool
    fast: bool
    cuda_tf32: bool = False

    def build(self) -> Any:
        cls = load_engine_class(self.engine)
        # cuda_tf32 only when asked for, so engines without a CUDA provider need not take it
        extra = {"cuda_tf32": True} if self.cuda_tf32 else {}
        return cls(self.model_dir, provider=self.provider, threads=self.threads, tta=self.tta, fast=self.fast, **extra)


def with_defaults(cfg: Mapping[str, Any]) -> dict:
    """``cfg`` with every missing key set to onfh-infer's default (configs/infer.yaml, the one place
    defaults live; nested keys merge)."""
    from onfh_seg.config import defaults, merge

    return merge(defaults("infer"), cfg)


def engine_spec(cfg: Mapping[str, Any], workers: int) -> EngineSpec:
    """The segmenter a run builds (missing keys: onfh-infer's defaults)."""
    c = with_defaults(cfg)
    return EngineSpec(
        engine=str(c["engine"]),
        model_dir=str(resolve_model_dir(c["model_dir"])),
        provider=str(c["provider"]).lower(),
        threads=threads_per_worker(int(c["threads"]), workers),
        tta=bool(c["tta"]),
        fast=bool(c["fast"]),
        cuda_tf32=bool(c["cuda_tf32"]),
    )


# ---------------------------------------------------------------- one job (in a worker or here)


def run_job(job: ScanJob, out_dir: Path, segmenter: Any, cfg: Mapping[str, Any]) -> dict:
    """Skip (resume) or process one job; never raises for a bad scan."""
    t0 = time.perf_counter()
    info = segmenter_info(segmenter)
    try:
        settings = result_settings(cfg)
        meas, why = resume_check(job, out_dir, info["model_version"], settings, bool(setting(cfg, "resume")))
        if meas is not None:
            return {"name": job.name, "input": job.image_ref, "input_path": meas.get("input_path"),
                    "input_sha256": meas.get("input_sha256"), "settings": meas.get("settings"),
                    "status": "skipped", "error": None,
                    "rows": rows_from_measurements({**meas, "name": job.name, "input": job.image_ref}),
                    "timings": {"total": round(time.perf_counter() - t0, 3)}, "outputs": [], **info}
        return {**process_scan(job, out_dir, segmenter, cfg), "rerun_reason": why}
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # e.g. the error record itself could not be written
        return {"name": job.name, "input": job.image_ref, "status": "error", "error": one_line(exc),
                "rows": [], "timings": {"total": round(time.perf_counter() - t0, 3)}, "outputs": [], **info}


_WORKER: dict[str, Any] = {}


def _worker_sigterm(signum: int, frame: Any) -> None:
    if _WORKER.get("stopping"):
        return  # a second SIGTERM (e.g. kernel and watchdog) must not interrupt the clean-up
    _WORKER["stopping"] = True
    if _WORKER.get("busy"):
        raise KeyboardInterrupt  # process_scan removes this scan's partial outputs, then the worker ends
    os._exit(143)


def _init_worker(spec: EngineSpec, log_level: int, parent_pid: int | None = None, lock_fd: int | None = None) -> None:
    """Pool initializer: signals, parent watch, logging to stderr and one segmenter per worker process.

    Ctrl-C goes to the main process only (it stops the workers); SIGTERM from
    the main process, or from the kernel when the main process dies, interrupts
    the current scan, which removes its partial outputs, and then ends the
    worker. ``lock_fd`` (the out_dir lock, inherited) is kept open for the
    worker's lifetime.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _worker_sigterm)
    if lock_fd is not None:
        _WORKER["lock_fd"] = lock_fd
    if parent_pid is not None:
        die_with_parent(parent_pid)
    logging.basicConfig(level=log_level, format="%(message)s", stream=sys.stderr)
    try:
        _WORKER["segmenter"] = spec.build()
    except Exception as exc:  # reported with every job of this worker
        _WORKER["error"] = one_line(exc)


def _worker_job(job: ScanJob, out_dir: Path, cfg: Mapping[str, Any]) -> dict:
    if "error" in _WORKER:
        return {"name": job.name, "input": job.image_ref, "status": "error",
                "error": f"segmenter not available: {_WORKER['error']}", "rows": [], "timings": {},
                "outputs": [], "model_version": None, "model_sha256": None, "providers": [], "init_error": True}
    _WORKER["busy"] = True
    try:
        return run_job(job, out_dir, _WORKER["segmenter"], cfg)
    except KeyboardInterrupt:  # stopped by the main process; partial outputs are already removed
        os._exit(143)
    finally:
        _WORKER["busy"] = False


# ---------------------------------------------------------------- run records


def remove_stale_temporaries(out_dir: Path) -> list[Path]:
    """Delete atomic-write leftovers of killed runs in ``out_dir``: only this package's own
    ``.<name>.onfh-tmp-<pid>-<random>.tmp`` files whose process is gone (a user's ``.x.tmp`` stays)."""
    return remove_own_temporaries(out_dir)


# ---------------------------------------------------------------- the run


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="scan", file=sys.stderr, dynamic_ncols=True, mininterval=0.5)


def _report(result: dict) -> None:
    if result["status"] == "error":
        log.warning("failed %s: %s", result["name"], result["error"])
    for problem in result.get("output_errors") or []:  # e.g. a DICOM SEG that could not be written
        log.warning("%s: not written: %s", result["name"], problem)


def _run_here(jobs: list[ScanJob], out_dir: Path, cfg: Mapping[str, Any], spec: EngineSpec,
              factory: SegmenterFactory | None) -> list[dict]:
    segmenter = factory(spec.threads) if factory is not None else spec.build()
    results = []
    with _progress(len(jobs), "onfh-infer") as bar:
        for job in jobs:
            result = run_job(job, out_dir, segmenter, cfg)
            _report(result)
            results.append(result)
            bar.update(1)
    return results


def _ignore_stop_signals() -> dict[int, Any]:
    """Ignore SIGINT/SIGTERM while the workers are being stopped (a second Ctrl-C must not cut the
    clean-up short); returns the previous handlers. No-op outside the main thread."""
    previous: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, signal.SIG_IGN)
        except ValueError:  # not the main thread
            pass
    return previous


def _stop_pool(executor: ProcessPoolExecutor, grace_s: float = 30.0) -> None:
    """Cancel queued scans, stop the running ones (SIGTERM: they clean up), wait up to ``grace_s``
    for the workers, then kill any that is left."""
    previous = _ignore_stop_signals()
    try:
        processes = list(getattr(executor, "_processes", {}).values())  # no public API before Python 3.14
        executor.shutdown(wait=False, cancel_futures=True)
        for proc in processes:
            try:
                proc.terminate()
            except (OSError, ValueError, AttributeError):
                pass
        deadline = time.monotonic() + grace_s
        for proc in processes:
            try:
                proc.join(timeout=max(0.0, deadline - time.monotonic()))
                if proc.is_alive():
                    log.warning("worker %s did not stop in %.0f s; killing it", proc.pid, grace_s)
                    proc.kill()
                    proc.join(timeout=5)
            except (OSError, ValueError, AttributeError, AssertionError):
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_pool(jobs: list[ScanJob], out_dir: Path, cfg: Mapping[str, Any], spec: EngineSpec, workers: int,
              lock: DirLock | None = None) -> list[dict]:
    ctx = multiprocessing.get_context("spawn")
    results: list[dict | None] = [None] * len(jobs)
    lock_fd = InheritedFd(lock.fd) if lock is not None and lock.fd is not None else None
    executor = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                   initargs=(spec, logging.getLogger().getEffectiveLevel(), os.getpid(), lock_fd))
    try:
        with _progress(len(jobs), "onfh-infer") as bar:
            pending = {executor.submit(_worker_job, job, out_dir, dict(cfg)): i for i, job in enumerate(jobs)}
            while pending:
                finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for fut in finished:
                    i = pending.pop(fut)
                    try:
                        result = fut.result()
                    except Exception as exc:  # a worker died (e.g. killed, out of memory)
                        result = {"name": jobs[i].name, "input": jobs[i].image_ref, "status": "error",
                                  "error": f"worker failed: {one_line(exc)}", "rows": [], "timings": {},
                                  "outputs": [], "model_version": None, "model_sha256": None, "providers": []}
                    if result.get("init_error"):
                        raise RuntimeError(result["error"])  # every worker would fail the same way
                    _report(result)
                    results[i] = result
                    bar.update(1)
    except BaseException:
        _stop_pool(executor)
        raise
    executor.shutdown(wait=True)
    return [r for r in results if r is not None]


def run_batch(
    cfg: Mapping[str, Any],
    segmenter_factory: SegmenterFactory | None = None,
    command_line: list[str] | None = None,
) -> BatchSummary:
    """Run inference as configured (keys of configs/infer.yaml) and write the run records.

    ``segmenter_factory(threads)`` replaces the configured engine for an
    in-process run (``workers=1``); pool and Dask workers always build
    ``cfg["engine"]`` themselves. Keys missing from ``cfg`` take onfh-infer's defaults.
    """
    t0 = time.perf_counter()
    started = utc_timestamp()
    cfg = with_defaults(cfg)
    if str(cfg["out_dir"] or "").strip() in ("", "???"):
        raise ValueError("out_dir is empty")
    out_dir = Path(str(cfg["out_dir"]))
    reference = str(cfg["reference"])
    if reference not in ("acetabulum", "viable_head"):
        raise ValueError(f"reference must be acetabulum or viable_head, got {reference!r}")
    provider = str(cfg["provider"]).lower()
    if provider not in ("auto", "cpu", "cuda"):
        raise ValueError(f"provider must be auto, cpu or cuda, got {provider!r}")
    workers_wanted = int(cfg["workers"])
    if workers_wanted < 1:
        raise ValueError("workers must be >= 1")
    executor = str(cfg.get("executor") or "local").lower()
    if executor not in ("local", "dask"):
        raise ValueError(f"executor must be local or dask, got {executor!r}")
    scheduler = str(cfg["scheduler"]).strip() if cfg.get("scheduler") else None
    if scheduler and executor != "dask":
        raise ValueError("scheduler= needs executor=dask")
    if executor == "dask":
        from onfh_seg.dask_exec import require_distributed

        require_distributed()  # before any work: a missing extra is one line

    check_writable(out_dir)  # before any work: a read-only out_dir is a one-line error at once

    dicom_rules = dict(((cfg.get("dicom") or {}).get("rules")) or {})
    jobs = expand_input(cfg.get("input"), dicom_rules, out_dir=out_dir, max_image_mb=cfg.get("max_image_mb"),
                        allow_unknown_orientation=bool(cfg["allow_unknown_orientation"]),
                        series=str(cfg.get("series") or "auto"), geometry=str(cfg["geometry"]))
    for line in filter(None, map(selection_line, jobs)):
        log.info("%s", line)  # which series of each DICOM study, and the runner-up
    workers = min(workers_wanted, len(jobs))
    spec = engine_spec({**cfg, "provider": provider}, workers)
    if scheduler and int(cfg["threads"]) <= 0:  # the remote workers' cores are not known here
        spec = dataclasses.replace(spec, threads=1)
    if segmenter_factory is None and not Path(spec.model_dir).exists():
        raise FileNotFoundError(f"model folder not found: {spec.model_dir} (set model_dir=...)")

    out_dir.mkdir(parents=True, exist_ok=True)
    check_writable(out_dir)
    with DirLock(out_dir, "onfh-infer", wait=bool(cfg["wait_lock"])) as lock:
        remove_stale_temporaries(out_dir)
        log.info("onfh-infer: %d scan(s) from %s -> %s (%s, workers %d, %d thread(s) each)",
                 len(jobs), cfg.get("input"), out_dir, scheduler or executor, workers, spec.threads)
        if executor == "dask" and jobs:
            from onfh_seg.dask_exec import run_dask

            results = run_dask(jobs, out_dir, cfg, spec, workers, scheduler, _report, _progress)
        elif workers > 1 and segmenter_factory is None:
            results = _run_pool(jobs, out_dir, cfg, spec, workers, lock)
        else:
            results = _run_here(jobs, out_dir, cfg, spec, segmenter_factory)

        summary = BatchSummary(out_dir=out_dir, results=results)
        summary.no_hip = [r["name"] for r in results if r.get("no_hip")]
        summary.done = sum(r["status"] == "ok" and not r.get("no_hip") for r in results)
        summary.skipped = sum(r["status"] == "skipped" for r in results)
        summary.failed = sum(r["status"] == "error" and not r.get("no_hip") for r in results)
        write_measurements_csv(out_dir, results, jobs)
        write_errors_csv(out_dir, results)
        write_label_tables(out_dir)
        write_run_manifest(out_dir, cfg, summary, spec, workers, started, time.perf_counter() - t0, command_line)
    return summary
