"""Model-update re-analysis: ``onfh-infer input=... out_dir=DIR reanalyse=EARLIER_RUN``.

Given an earlier onfh-infer out_dir and the current model and settings,
exactly the scans whose finished outputs came from another model version or
other result settings (:func:`onfh_seg.infer.scan_record.resume_check`: "model
changed", "settings changed (...)", also "input changed" and "outputs
missing") run again; scans already made with the current model and settings
are not run. The earlier outputs are kept:

* ``out_dir`` == ``reanalyse`` (update in place): before the run, each re-run
  scan's earlier files (measurements JSON first, then the segmentation,
  overlay, DICOM SEG/SR) move to ``out_dir/previous/<old model version>/``
  (``<old model version>+settings`` when only the settings differ), with a
  copy of the earlier run's measurements.csv, errors.csv and
  run_manifest.json; a file of the same name there is replaced;
* ``out_dir`` != ``reanalyse`` (a new folder): the earlier folder is left as it
  is; the up-to-date scans' files are copied into ``out_dir`` (so it holds a
  complete run and resume skips them), the others run there.

Then the usual run (any executor; run records as always) and
``out_dir/reanalysis.csv``: one row per re-run scan and hip (matched by side):
old and new model version, lesion volume (mL), % of the head involved, ARCO
extent and JIC type (``*_changed``: true/false) and SIR, plus the reason the
scan ran again. The one-line summary says how many scans changed class (JIC
type or extent of any hip, or a hip found/lost).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onfh_seg.config import model_version
from onfh_seg.config_schemas import InferSettings
from onfh_seg.infer.scan_jobs import ScanJob
from onfh_seg.infer.pipeline import segmenter_info
from onfh_seg.infer.scan_record import result_settings, resume_check
from onfh_seg.io.manifest import write_manifest
from onfh_seg.io.files import TMP_MARK, read_json_dict
from onfh_seg.lifecycle import DirLock, check_writable
from onfh_seg.measure import SIDE_ORDER
from onfh_seg.run.batch import run_batch, scan_jobs
from onfh_seg.run.jobs import DEFAULT_ENGINE, EngineSpec, SegmenterFactory, engine_spec
from onfh_seg.run.outputs import output_paths
from onfh_seg.run.records import BatchSummary

REANALYSIS_CSV = "reanalysis.csv"
PREVIOUS = "previous"
RUN_RECORDS = ("measurements.csv", "errors.csv", "run_manifest.json")
COMPARED = ("lesion_volume_ml", "percent_head_involved", "arco_extent", "jic_type", "sir_necrotic")
CLASS_KEYS = ("arco_extent", "jic_type")
COLUMNS = (
    ["scan", "side", "reason", "old_model_version", "new_model_version", "new_status"]
    + [f"{p}_{k}" for k in COMPARED for p in ("old", "new")]
    + ["delta_lesion_volume_ml", "delta_percent_head_involved", "delta_sir_necrotic",
       "arco_extent_changed", "jic_type_changed", "class_changed"]
)


@dataclass
class Plan:
    """What re-analysis does with each scan: ``rerun`` name -> (reason, old measurements), ``current`` names."""

    rerun: dict[str, tuple[str, dict]] = field(default_factory=dict)
    current: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)


@dataclass
class Reanalysis:
    """Outcome: the batch summary, the comparison rows and the one-line summary."""

    batch: BatchSummary
    rows: list[dict]
    line: str
    table: Path


# ---------------------------------------------------------------- plan


def plan_reanalysis(jobs: list[ScanJob], earlier: Path, model_version: str, settings: Mapping[str, Any]) -> Plan:
    """Sort ``jobs`` by what the earlier run holds for them: finished with another model/settings/input
    (``rerun``), finished as asked (``current``), or nothing finished (``new``)."""
    plan = Plan()
    for job in jobs:
        meas, why = resume_check(job, earlier, model_version, settings, True)
        if meas is not None:
            plan.current.append(job.name)
            continue
        old = read_json_dict(output_paths(earlier, job.name)["measurements"])
        if why is None or old is None:
            plan.new.append(job.name)
        else:
            plan.rerun[job.name] = (why, old)
    return plan


def previous_folder(out_dir: Path, old: Mapping[str, Any], reason: str) -> Path:
    """``out_dir/previous/<old model version>`` (``+settings`` when the model version did not change)."""
    version = re.sub(r"[^A-Za-z0-9._-]+", "_", str(old.get("model_version") or "unknown")).strip("._") or "unknown"
    if not reason.startswith("model changed"):
        version += "+settings" if reason.startswith("settings") else "+" + re.sub(r"[^a-z]+", "-", reason).strip("-")
    return out_dir / PREVIOUS / version


def scan_files(folder: Path, name: str) -> list[Path]:
    """The existing per-scan files of ``name`` in ``folder``, measurements JSON first."""
    paths = output_paths(folder, name)
    ordered = [paths["measurements"]] + [p for k, p in paths.items() if k != "measurements"]
    return [p for p in ordered if p.is_file()]


def move_aside(out_dir: Path, plan: Plan) -> dict[str, Path]:
    """Move each re-run scan's earlier files to its ``previous/...`` folder; name -> that folder."""
    moved: dict[str, Path] = {}
    for name, (reason, old) in sorted(plan.rerun.items()):
        dest = previous_folder(out_dir, old, reason)
        dest.mkdir(parents=True, exist_ok=True)
        for p in scan_files(out_dir, name):
            os.replace(p, dest / p.name)
        moved[name] = dest
    return moved


def keep_run_records(out_dir: Path, folder: Path) -> None:
    """Copy the earlier run's ``measurements.csv``, ``errors.csv`` and ``run_manifest.json`` into ``folder``."""
    for name in RUN_RECORDS:
        if (out_dir / name).is_file():
            copy_atomic(out_dir / name, folder / name)


def copy_atomic(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` through a temporary in ``dst``'s folder (never a half-written ``dst``)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}{TMP_MARK}{os.getpid()}-", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def copy_current(earlier: Path, out_dir: Path, names: list[str]) -> None:
    """Copy the up-to-date scans' files into ``out_dir`` (measurements JSON last, so resume sees them whole)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        files = scan_files(earlier, name)
        for p in files[1:] + files[:1]:
            copy_atomic(p, out_dir / p.name)


# ---------------------------------------------------------------- comparison


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _delta(old: Any, new: Any) -> float | None:
    a, b = _num(old), _num(new)
    return None if a is None or b is None else round(b - a, 4)


def match_hips(old: list[dict], new: list[dict]) -> list[tuple[str, dict | None, dict | None]]:
    """Pairs of hips by side (right, left, then unknown in order); a hip on one side only pairs with None."""
    pairs = []
    sides = [s for s in SIDE_ORDER if any(h.get("side") == s for h in old + new)]
    sides += sorted({str(h.get("side")) for h in old + new} - set(sides))
    for side in sides:
        a = [h for h in old if h.get("side") == side]
        b = [h for h in new if h.get("side") == side]
        for i in range(max(len(a), len(b))):
            pairs.append((side, a[i] if i < len(a) else None, b[i] if i < len(b) else None))
    return pairs


def comparison_rows(name: str, reason: str, old: Mapping[str, Any], new: Mapping[str, Any] | None) -> list[dict]:
    """``reanalysis.csv`` rows of one scan: one per hip pair (one row without a side if neither run found a hip)."""
    new = new or {}
    base = {"scan": name, "reason": reason, "old_model_version": old.get("model_version"),
            "new_model_version": new.get("model_version"), "new_status": new.get("status", "missing")}
    pairs = match_hips(list(old.get("hips") or []), list(new.get("hips") or []) if new.get("status") == "ok" else [])
    rows = []
    for side, a, b in pairs or [(None, None, None)]:
        row = {**base, "side": side}
        for k in COMPARED:
            row[f"old_{k}"] = None if a is None else a.get(k)
            row[f"new_{k}"] = None if b is None else b.get(k)
        for k in ("lesion_volume_ml", "percent_head_involved", "sir_necrotic"):
            row[f"delta_{k}"] = _delta(row[f"old_{k}"], row[f"new_{k}"])
        for k in CLASS_KEYS:
            row[f"{k}_changed"] = "true" if (a is None) != (b is None) or row[f"old_{k}"] != row[f"new_{k}"] else "false"
        row["class_changed"] = "true" if any(row[f"{k}_changed"] == "true" for k in CLASS_KEYS) else "false"
        rows.append(row)
    return rows


def summary_line(rows: list[dict], n_rerun: int, n_total: int) -> str:
    """``re-analysis: R of N scans re-run (model A -> B); C changed class (JIC type or extent) ...``."""
    changed = sorted({r["scan"] for r in rows if r["class_changed"] == "true"})
    hips = sum(r["class_changed"] == "true" for r in rows)
    versions = sorted({f"{r['old_model_version']} -> {r['new_model_version']}"
                       if r["old_model_version"] != r["new_model_version"] else f"{r['new_model_version']}, same model"
                       for r in rows})
    deltas = [abs(r["delta_lesion_volume_ml"]) for r in rows if r["delta_lesion_volume_ml"] is not None]
    text = f"re-analysis: {n_rerun} of {n_total} scans re-run"
    if versions:
        text += f" (model {', '.join(versions)})"
    text += f"; {len(changed)} changed class (JIC type or ARCO extent; {hips} hips)"
    if deltas:
        text += f"; largest lesion volume change {max(deltas):.2f} mL"
    return text


# ---------------------------------------------------------------- the run


def current_model_version(spec: EngineSpec, factory: SegmenterFactory | None) -> str:
    """The model version this run's segmenter reports: the shipped engine's from ``model.json`` (no model
    loaded here, e.g. a client without the workers' GPU), any other engine's from one instance built here."""
    if factory is None and spec.engine == DEFAULT_ENGINE:
        version = model_version(spec.model_dir)
        if version is not None:
            return version
    segmenter = factory(spec.threads) if factory is not None else spec.build()
    return segmenter_info(segmenter)["model_version"]


def run_reanalysis(settings: InferSettings, segmenter_factory: SegmenterFactory | None = None,
                   command_line: list[str] | None = None) -> Reanalysis:
    """Re-analyse ``settings.reanalyse`` (an earlier out_dir) into ``settings.out_dir``; see the module docstring."""
    earlier = Path(str(settings.reanalyse or ""))
    if not str(settings.reanalyse or "").strip() or not earlier.is_dir():
        raise FileNotFoundError(f"reanalyse: earlier run folder not found: {earlier}")
    if not any(earlier.glob("*_measurements.json")):
        raise ValueError(f"reanalyse: {earlier} holds no onfh-infer outputs (*_measurements.json)")
    out_dir = Path(str(settings.out_dir))
    check_writable(out_dir)
    in_place = out_dir.exists() and out_dir.resolve() == earlier.resolve()
    if in_place:
        check_writable(earlier)
    jobs = scan_jobs(settings, out_dir)
    spec = engine_spec(settings, 1)
    version = current_model_version(spec, segmenter_factory)
    out_dir.mkdir(parents=True, exist_ok=True)
    with DirLock(out_dir, "onfh-infer", wait=bool(settings.wait_lock)):  # released for run_batch, which locks again
        plan = plan_reanalysis(jobs, earlier, version, result_settings(settings))
        if in_place:
            for folder in sorted(set(move_aside(out_dir, plan).values())):
                keep_run_records(out_dir, folder)
        else:
            copy_current(earlier, out_dir, plan.current)
    batch = run_batch(dataclasses.replace(settings, reanalyse=None, resume=True), segmenter_factory=segmenter_factory,
                      command_line=command_line)
    rows = []
    for name, (reason, old) in sorted(plan.rerun.items()):
        new = read_json_dict(output_paths(out_dir, name)["measurements"])
        rows += comparison_rows(name, reason, old, new)
    table = out_dir / REANALYSIS_CSV
    write_manifest(table, rows, columns=list(COLUMNS))
    return Reanalysis(batch=batch, rows=rows, line=summary_line(rows, len(plan.rerun), len(jobs)), table=table)
