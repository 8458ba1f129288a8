"""One scan job: the segmenter a run builds (:class:`EngineSpec`), and :func:`run_job`, which skips (resume)
or processes one scan and never raises for a bad scan. The same function runs in this process, in a pool
worker (:func:`scan_task`) and in a Dask task, and for the studies of onfh-pacs.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from onfh_seg.config import resolve_model_dir
from onfh_seg.config_schemas import InferSettings
from onfh_seg.errors import one_line
from onfh_seg.infer.scan_jobs import ScanJob
from onfh_seg.infer.pipeline import process_scan, segmenter_info
from onfh_seg.infer.scan_record import result_settings, resume_check, rows_from_measurements

DEFAULT_ENGINE = "onfh_seg.infer.engine:Segmenter"
SegmenterFactory = Callable[[int], Any]


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
        # the shipped engine gets every value (it looks up no default); another engine gets cuda_tf32 only
        # when asked for, so engines without a CUDA provider need not take it
        extra = {"cuda_tf32": self.cuda_tf32} if self.cuda_tf32 or self.engine == DEFAULT_ENGINE else {}
        return cls(self.model_dir, provider=self.provider, threads=self.threads, tta=self.tta, fast=self.fast, **extra)


def engine_spec(settings: InferSettings, workers: int) -> EngineSpec:
    """The segmenter a run of ``workers`` processes builds."""
    return EngineSpec(
        engine=str(settings.engine),
        model_dir=str(resolve_model_dir(settings.model_dir)),
        provider=str(settings.provider).lower(),
        threads=threads_per_worker(int(settings.threads), workers),
        tta=bool(settings.tta),
        fast=bool(settings.fast),
        cuda_tf32=bool(settings.cuda_tf32),
    )


# ---------------------------------------------------------------- one job


def error_result(job: ScanJob, error: str, **extra: Any) -> dict:
    """The result of a scan that could not run at all (no segmenter, a worker that died)."""
    return {"name": job.name, "input": job.image_ref, "status": "error", "error": error, "rows": [], "timings": {},
            "outputs": [], "model_version": None, "model_sha256": None, "providers": [], **extra}


def run_job(job: ScanJob, out_dir: Path, segmenter: Any, settings: InferSettings) -> dict:
    """Skip (resume) or process one job; never raises for a bad scan."""
    t0 = time.perf_counter()
    info = segmenter_info(segmenter)
    try:
        wanted = result_settings(settings)
        meas, why = resume_check(job, out_dir, info["model_version"], wanted, bool(settings.resume))
        if meas is not None:
            return {"name": job.name, "input": job.image_ref, "input_path": meas.get("input_path"),
                    "input_sha256": meas.get("input_sha256"), "settings": meas.get("settings"),
                    "status": "skipped", "error": None,
                    "rows": rows_from_measurements({**meas, "name": job.name, "input": job.image_ref}),
                    "timings": {"total": round(time.perf_counter() - t0, 3)}, "outputs": [], **info}
        return {**process_scan(job, out_dir, segmenter, settings), "rerun_reason": why}
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # e.g. the error record itself could not be written
        return {"name": job.name, "input": job.image_ref, "status": "error", "error": one_line(exc),
                "rows": [], "timings": {"total": round(time.perf_counter() - t0, 3)}, "outputs": [], **info}


_SEGMENTERS: dict[Any, Any] = {}  # EngineSpec -> segmenter of this worker process
_BUILD_ERRORS: dict[Any, str] = {}  # EngineSpec -> one-line reason it could not be built here


def cached_segmenter(spec: EngineSpec) -> Any:
    """This process's segmenter for ``spec``, built on first use (one model load per worker process).
    Raises ``RuntimeError`` with a one-line reason when it cannot be built (also on later calls)."""
    if spec in _BUILD_ERRORS:
        raise RuntimeError(_BUILD_ERRORS[spec])
    if spec not in _SEGMENTERS:
        try:
            _SEGMENTERS[spec] = spec.build()
        except Exception as exc:
            _BUILD_ERRORS[spec] = one_line(exc)
            raise RuntimeError(_BUILD_ERRORS[spec]) from None
    return _SEGMENTERS[spec]


def scan_task(job: ScanJob, out_dir: str, settings: InferSettings, spec: EngineSpec) -> dict:
    """One job in a pool worker or a Dask task: skip (resume) or process ``job`` with this worker's cached
    segmenter (never raises for a bad scan; a segmenter that cannot be built gives an ``init_error`` result)."""
    try:
        segmenter = cached_segmenter(spec)
    except RuntimeError as exc:
        return error_result(job, f"segmenter not available: {exc}", init_error=True)
    return run_job(job, Path(out_dir), segmenter, settings)


def worker_failed(job: ScanJob, exc: BaseException) -> dict:
    """The result of a scan whose task could not finish (its workers died, the cluster went away)."""
    return error_result(job, f"worker failed: {one_line(exc)}")


def absolute_job(job: ScanJob) -> ScanJob:
    """``job`` with an absolute input path (for workers on other machines; names and CSV text unchanged)."""
    return dataclasses.replace(job, path=Path(os.path.abspath(job.path)))
