"""onfh-track's cohort run: every patient tracked (or resumed), then the cohort tables written.

Per patient (``_patient_job``, one process each with ``workers`` > 1):
``track.patient.compute_patient``, its transforms, HTML report and JSON (JSON
last, so a patient JSON means a finished patient). A patient whose inputs and
settings hash (``track.inputs.input_hash`` over ``HASHED_KEYS``) matches its
JSON is resumed; with ``report_pdf`` a resumed patient without its PDF gets it
printed from its existing HTML report (no re-registration). Then
``errors.csv`` and the tables of ``track.tables``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from onfh_seg.io.nifti import atomic_write_text
from onfh_seg.track.inputs import PatientInput, collect_patients, input_hash
from onfh_seg.track.params import TrackParams
from onfh_seg.track.patient import compute_patient, save_transforms
from onfh_seg.track.register import RegistrationParams
from onfh_seg.track.tables import ERROR_COLUMNS, cohort_tables, csv_text, error_rows

HASHED_KEYS = ("reference", "grid_mm", "boundary_mm", "collapse_cone_deg", "hip_match_max_mm", "write_tfm",
               "registration", "repeatability")


@dataclass
class CohortResult:
    """What ``track_cohort`` did."""

    records: dict[str, dict]
    tracked: list[str]
    resumed: list[str]
    failed: dict[str, str]
    errors: list[dict]
    out_dir: Path
    pdf_printed: list[str] = field(default_factory=list)  # resumed patients whose PDF was printed from their HTML


def _patient_job(args) -> tuple[str, str, dict | str]:
    """Worker: track one patient, write its transforms, report and JSON (JSON last)."""
    p, cfg, out_dir, digest = args
    out = Path(out_dir)
    try:
        params = TrackParams.from_dict(cfg)
        reg = RegistrationParams.from_dict(cfg.get("registration"))
        views: dict | None = {} if cfg.get("report", True) else None
        record, found = compute_patient(p, params, reg, views=views)
        record["input_hash"] = digest
        record["repeatability"] = dict(cfg.get("repeatability") or {})  # the report judges changes against it
        save_transforms(out, found, params.write_tfm)
        if views is not None:
            from onfh_seg.report.html import write_report

            write_report(record, views, out / "reports" / f"{p.patient_id}.html", pdf=bool(cfg.get("report_pdf")))
        atomic_write_text(out / "patients" / f"{p.patient_id}.json", json.dumps(record, indent=1) + "\n")
        return p.patient_id, "ok", record
    except Exception as exc:  # isolate one patient's failure from the others
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if not isinstance(exc, (ValueError, RuntimeError, OSError)):
            msg = f"{type(exc).__name__}: {msg}"
        return p.patient_id, "error", msg


def _resumable(p: PatientInput, out: Path, digest: str, report: bool) -> dict | None:
    """The patient's record when its JSON (and HTML report when wanted) exist and match ``digest``, else None."""
    jpath = out / "patients" / f"{p.patient_id}.json"
    if not jpath.is_file() or (report and not (out / "reports" / f"{p.patient_id}.html").is_file()):
        return None
    try:
        record = json.loads(jpath.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if record.get("input_hash") != digest:
        return None
    for h in record.get("hips", []):
        for tp in h.get("timepoints", []):
            if tp.get("transform") and not (out / tp["transform"]).is_file():
                return None
    return record


def track_cohort(cfg: Mapping, progress: Callable[[str, str], None] | None = None) -> CohortResult:
    """Track every patient of ``cfg["manifest"]`` (onfh-track; configs/track.yaml keys).

    Patients run in ``cfg["workers"]`` processes; outputs are sorted by patient
    so they do not depend on the worker count. ``progress(patient_id, status)``
    is called once per patient. Raises ``ValueError`` when no patient could be
    tracked (after writing ``errors.csv``).
    """
    out = Path(cfg["out_dir"])
    report = bool(cfg.get("report", True))
    pdf = report and bool(cfg.get("report_pdf", False))
    if pdf:
        from onfh_seg.report.pdf import chromium_path

        if chromium_path() is None:
            raise ValueError("report_pdf=true needs headless Chromium on PATH (Debian package 'chromium'); "
                             "install it or set report_pdf=false")
    patients, bad_rows = collect_patients(cfg["manifest"], cfg["infer_dir"])
    if not patients:
        raise ValueError(f"no patients in manifest {cfg['manifest']}")
    out.mkdir(parents=True, exist_ok=True)
    hashed = {k: cfg.get(k) for k in HASHED_KEYS}
    records: dict[str, dict] = {}
    resumed, todo = [], []
    for pid, p in patients.items():
        digest = input_hash(p, hashed)
        rec = _resumable(p, out, digest, report) if cfg.get("resume", True) else None
        if rec is not None:
            records[pid] = rec
            resumed.append(pid)
        else:
            todo.append((p, dict(cfg), str(out), digest))
    failed: dict[str, str] = {}
    printed: list[str] = []
    for pid in list(resumed):
        if pdf and not (out / "reports" / f"{pid}.pdf").is_file():
            try:
                _print_pdf(out / "reports" / f"{pid}.html")
                printed.append(pid)
            except RuntimeError as exc:
                failed[pid] = str(exc)
                resumed.remove(pid)
                del records[pid]
        if progress:
            progress(pid, "unchanged" if pid in records else "error")
    workers = max(1, int(cfg.get("workers", 1)))
    pool = None
    if str(cfg.get("executor") or "local") == "dask" and todo:  # one Dask task per patient (onfh_seg.dask_exec)
        from onfh_seg.dask_exec import map_dask

        results = map_dask(_patient_job, todo, workers, cfg.get("scheduler"))
    elif workers == 1 or len(todo) <= 1:
        results = map(_patient_job, todo)
    else:
        import multiprocessing as mp
        import os
        from concurrent.futures import ProcessPoolExecutor

        from onfh_seg.lifecycle import die_with_parent

        pool = ProcessPoolExecutor(min(workers, len(todo)), mp_context=mp.get_context("spawn"),
                                   initializer=die_with_parent, initargs=(os.getpid(),))  # no orphans
        results = pool.map(_patient_job, todo)
    try:
        for pid, status, payload in results:
            if status == "ok":
                records[pid] = payload  # type: ignore[assignment]
            else:
                failed[pid] = payload  # type: ignore[assignment]
            if progress:
                progress(pid, status)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)  # interrupted: do not start the patients still queued
        if hasattr(results, "close"):
            results.close()  # Dask: cancel what is queued, end the local cluster
    records = dict(sorted(records.items()))
    errors = error_rows(records, failed, bad_rows)
    atomic_write_text(out / "errors.csv", csv_text(errors, ERROR_COLUMNS))
    if not records:
        raise ValueError(f"no usable patients ({len(failed)} failed); see {out / 'errors.csv'}")
    for fname, text in cohort_tables(records, int(cfg.get("min_correlation_n", 3))).items():
        atomic_write_text(out / fname, text)
    tracked = [pid for pid in records if pid not in resumed]
    return CohortResult(records, tracked, resumed, failed, errors, out, printed)


def _print_pdf(html_path: Path) -> Path:
    """The PDF of an existing HTML report, beside it."""
    from onfh_seg.report.pdf import html_to_pdf

    return html_to_pdf(html_path, html_path.with_suffix(".pdf"))
