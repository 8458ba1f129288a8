"""Per-run records of onfh-infer: ``measurements.csv``, ``errors.csv`` and ``run_manifest.json``.

Written once per run by the process that holds the out_dir lock (the local pool's
parent or the Dask client), from the per-scan results of :mod:`onfh_seg.run.batch`
(:class:`BatchSummary`).
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onfh_seg.clock import OFFSET, utc_timestamp
from onfh_seg.config import as_dict
from onfh_seg.config_schemas import InferSettings
from onfh_seg.infer.scan_jobs import ScanJob
from onfh_seg.infer.pipeline import software_versions
from onfh_seg.infer.scan_record import row_sort_key, rows_from_measurements
from onfh_seg.io.manifest import write_manifest
from onfh_seg.io.files import atomic_write_text, read_json_dict
from onfh_seg.measure import CSV_COLUMNS
from onfh_seg.run.jobs import EngineSpec

ERROR_COLUMNS = ["scan", "image", "error"]
MANIFEST_CSV_COLUMNS = ("patient_id", "timepoint", "months")  # carried into measurements.csv for manifest input


@dataclass
class BatchSummary:
    """Outcome of a run; ``results`` are per-scan dicts in job order."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    results: list[dict] = field(default_factory=list)
    out_dir: Path | None = None
    no_hip: list[str] = field(default_factory=list)  # scans refused: no femoral head found, or not hip anatomy
    set_aside: list[str] = field(default_factory=list)  # measured scans flagged head_set_aside (a head may be missing)

    @classmethod
    def of(cls, out_dir: Path, results: list[dict]) -> BatchSummary:
        """The counts of ``results`` (a refusal as not a hip is counted apart, never as done or failed)."""
        no_hip = [r["name"] for r in results if r.get("no_hip")]
        return cls(done=sum(r["status"] == "ok" and not r.get("no_hip") for r in results),
                   skipped=sum(r["status"] == "skipped" for r in results),
                   failed=sum(r["status"] == "error" and not r.get("no_hip") for r in results),
                   results=results, out_dir=out_dir, no_hip=no_hip,
                   set_aside=[r["name"] for r in results if r.get("set_aside") and r["status"] == "ok"])

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
        if self.set_aside:  # measured, but the gate refused a structure found as a head: named, a head may be missing
            text = f"done {self.done} (a head set aside by the anatomy gate in {_names(self.set_aside)}), "
        if self.no_hip:  # counted apart and named: a refusal is an answer, not a measurement
            text += f"no hip found {len(self.no_hip)} ({_names(self.no_hip)}), "
        text += f"skipped {self.skipped}, failed {self.failed}"
        reruns = self.reruns
        if reruns:
            n = sum(reruns.values())
            why = next(iter(reruns)) if len(reruns) == 1 else ", ".join(f"{c} {r}" for r, c in reruns.items())
            text += f"; re-run {n}: {why}"
        return text


def _names(names: list[str], most: int = 5) -> str:
    """Up to ``most`` scan names, then how many more."""
    return ", ".join(names[:most]) + (f", +{len(names) - most} more" if len(names) > most else "")


def _number(text: Any) -> Any:
    """A manifest value as a number when it is one (``"6"`` -> 6.0), else unchanged."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return text


def earlier_scans(out_dir: Path, names: set[str]) -> list[dict]:
    """Measurements JSONs in ``out_dir`` of scans not in ``names`` (made by earlier runs), sorted by name.

    Only a file named after the scan it records counts (``<name>_measurements.json``), so a copy under
    another name is never a second scan.
    """
    found = []
    for path in sorted(out_dir.glob("*_measurements.json")):
        meas = read_json_dict(path)
        name = meas.get("name") if meas is not None else None
        if isinstance(name, str) and name not in names and path.name == f"{name}_measurements.json":
            found.append(meas)
    return found


def _earlier_rows(out_dir: Path, names: set[str]) -> tuple[list[dict], dict[str, dict]]:
    """``measurements.csv`` rows and manifest values of the finished scans of earlier runs in ``out_dir``."""
    rows, meta = [], {}
    for meas in earlier_scans(out_dir, names):
        if meas.get("status") == "ok" and meas.get("input") is not None:
            rows += rows_from_measurements(meas)
            meta[meas["name"]] = {c: meas[c] for c in MANIFEST_CSV_COLUMNS if meas.get(c) not in (None, "")}
    return rows, meta


def write_measurements_csv(out_dir: Path, results: list[dict], jobs: list[ScanJob] | None = None) -> Path:
    """``measurements.csv``: this run's scans and every earlier run's finished scans in ``out_dir`` (nothing
    measured there is dropped); for manifest input, ``patient_id``, ``timepoint`` and ``months`` follow ``image``."""
    rows = [row for r in results if r["status"] in ("ok", "skipped") for row in r["rows"]]
    earlier, meta = _earlier_rows(out_dir, {r["name"] for r in results})
    rows += earlier
    rows.sort(key=row_sort_key)
    meta.update({job.name: job.meta or {} for job in jobs or []})
    extra = [c for c in MANIFEST_CSV_COLUMNS if any(c in m for m in meta.values())]
    rows = [{**row, **{c: _number(meta.get(row["scan"], {}).get(c)) if c == "months"
                       else meta.get(row["scan"], {}).get(c) for c in extra}} for row in rows]
    path = out_dir / "measurements.csv"
    write_manifest(path, rows, columns=list(CSV_COLUMNS[:2]) + extra + list(CSV_COLUMNS[2:]))
    return path


def write_errors_csv(out_dir: Path, results: list[dict]) -> Path:
    """``errors.csv``: this run's failed scans and those of earlier runs in ``out_dir`` that are still failed."""
    rows = [{"scan": r["name"], "image": r["input"], "error": r["error"]} for r in results if r["status"] == "error"]
    rows += [{"scan": m["name"], "image": m.get("input"), "error": m.get("error")}
             for m in earlier_scans(out_dir, {r["name"] for r in results}) if m.get("status") == "error"]
    rows.sort(key=lambda r: r["scan"])
    path = out_dir / "errors.csv"
    write_manifest(path, rows, columns=ERROR_COLUMNS)
    return path


def provider_used(results: list[dict]) -> str | None:
    """The execution provider the segmenters actually ran on (first of ONNX Runtime's list), e.g.
    ``CUDAExecutionProvider``; several joined by ``,`` if workers differed; None if no segmenter ran."""
    used = sorted({r["providers"][0] for r in results if r.get("providers")})
    return ",".join(used) if used else None


def stage_seconds(results: list[dict]) -> dict[str, dict[str, float]]:
    """Per stage (``load``, ``segment``, ``engine.networks_s``, ``measure``, ``write``, ...): total and median
    seconds over the scans this run processed (resumed scans and failures before any stage left out)."""
    values: dict[str, list[float]] = {}

    def add(prefix: str, timings: Mapping[str, Any]) -> None:
        for key, value in timings.items():
            if isinstance(value, Mapping):
                add(f"{prefix}{key}.", value)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                values.setdefault(prefix + key, []).append(float(value))

    for r in results:
        if r.get("status") == "ok" and isinstance(r.get("timings"), Mapping):
            add("", r["timings"])
    return {k: {"total": round(sum(v), 3), "median": round(statistics.median(v), 3), "scans": len(v)}
            for k, v in values.items()}


def write_run_manifest(
    out_dir: Path, settings: InferSettings, summary: BatchSummary, spec: EngineSpec, workers: int,
    started: str, duration_s: float, command_line: list[str] | None,
) -> Path:
    """``run_manifest.json``: what ran, on what, with which model, and how long each scan took."""
    model = next((r for r in summary.results if r.get("model_version")), {})
    providers = sorted({p for r in summary.results for p in (r.get("providers") or [])})
    record = {
        "tool": "onfh-infer",
        "note": "research use only; the model is trained on synthetic data",
        "versions": software_versions(),
        "model": {"dir": spec.model_dir, "version": model.get("model_version"), "sha256": model.get("model_sha256")},
        "engine": spec.engine,
        "providers": providers,
        "provider_requested": spec.provider,
        "provider_used": provider_used(summary.results),
        # as ONNX Runtime reports them, e.g. {"CUDAExecutionProvider": {"use_tf32": "0", ...}}
        "provider_options": next((r["provider_options"] for r in summary.results if r.get("provider_options")), {}),
        "executor": str(settings.executor),
        "scheduler": settings.scheduler,
        "workers": workers,
        "threads_per_worker": spec.threads,
        "started": started,
        "finished": utc_timestamp(OFFSET),
        "duration_s": round(duration_s, 3),
        "stage_seconds": stage_seconds(summary.results),
        "command_line": list(command_line) if command_line is not None else list(sys.argv),
        "config": as_dict(settings),
        "counts": {"total": len(summary.results), "done": summary.done, "skipped": summary.skipped,
                   "no_hip": len(summary.no_hip),
                   "failed": summary.failed},
        "scans": [  # per scan: the identity onfh-track reads and the settings its outputs were made with
            {"name": r["name"], "input": r["input"], "input_path": r.get("input_path"),
             "input_sha256": r.get("input_sha256"), "status": r["status"], "error": r["error"],
             "model_version": r.get("model_version"), "settings": r.get("settings"),
             "rerun_reason": r.get("rerun_reason"), "timings": r.get("timings", {})}
            for r in summary.results
        ],
    }
    path = out_dir / "run_manifest.json"
    atomic_write_text(path, json.dumps(record, indent=2, default=str) + "\n")
    return path
