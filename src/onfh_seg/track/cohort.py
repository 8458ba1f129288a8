"""onfh-track's cohort run: every patient tracked (or resumed), then the cohort tables written.

Per patient (``_patient_job``, run by :func:`onfh_seg.run.pool.map_jobs`: here, in a pool of ``workers``
processes or on Dask):
``track.patient.compute_patient``, its transforms, HTML report and JSON (JSON
last, so a patient JSON means a finished patient). A patient whose inputs and
settings hash (``track.inputs.input_hash`` over ``HASHED_KEYS``) matches its
JSON is resumed; with ``report_pdf`` a resumed patient without its PDF gets it
printed from its existing HTML report (no re-registration). Then
``errors.csv`` and the tables of ``track.tables``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from onfh_seg.config import as_dict
from onfh_seg.config_schemas import TrackSettings
from onfh_seg.io.files import atomic_write_text
from onfh_seg.track.inputs import PatientInput, collect_patients, input_hash
from onfh_seg.track.params import TrackParams
from onfh_seg.track.patient import compute_patient, save_transforms
from onfh_seg.track.register import RegistrationParams
from onfh_seg.run.pool import Executor, map_jobs
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


def track_params(settings: TrackSettings) -> tuple[TrackParams, RegistrationParams]:
    """The knobs of ``compute_patient`` and ``register_hip``, from onfh-track's settings."""
    params = TrackParams(**{k: getattr(settings, k) for k in TrackParams.__dataclass_fields__})
    reg = as_dict(settings.registration)
    reg.update(shrink_factors=tuple(reg["shrink_factors"]), smoothing_sigmas_mm=tuple(reg["smoothing_sigmas_mm"]))
    return params, RegistrationParams(**reg)


def _patient_job(args: tuple[PatientInput, TrackSettings, str, str]) -> tuple[str, str, dict | str]:
    """Worker: track one patient, write its transforms, report and JSON (JSON last)."""
    p, settings, out_dir, digest = args
    out = Path(out_dir)
    try:
        params, reg = track_params(settings)
        views: dict | None = {} if settings.report else None
        record, found = compute_patient(p, params, reg, views=views)
        record["input_hash"] = digest
        record["repeatability"] = as_dict(settings.repeatability)  # the report judges changes against it
        save_transforms(out, found, params.write_tfm)
        if views is not None:
            # function-level import: matplotlib/Chromium paths load only when a report is written
            from onfh_seg.report.html import write_report

            write_report(record, views, out / "reports" / f"{p.patient_id}.html", pdf=bool(settings.report_pdf))
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


def track_cohort(settings: TrackSettings, progress: Callable[[str, str], None] | None = None) -> CohortResult:
    """Track every patient of ``settings.manifest`` (onfh-track).

    Patients run through :func:`onfh_seg.run.pool.map_jobs` (``workers`` processes, or Dask with
    ``executor=dask``); outputs are sorted by patient so they do not depend on the worker count.
    ``progress(patient_id, status)`` is called once per patient. Raises ``ValueError`` when no patient could
    be tracked (after writing ``errors.csv``).
    """
    out = Path(settings.out_dir)
    report = bool(settings.report)
    pdf = report and bool(settings.report_pdf)
    if pdf:
        # function-level import: matplotlib/Chromium paths load only when a report is written
        from onfh_seg.report.pdf import chromium_path

        if chromium_path() is None:
            raise ValueError("report_pdf=true needs headless Chromium on PATH (Debian package 'chromium'); "
                             "install it or set report_pdf=false")
    patients, bad_rows = collect_patients(settings.manifest, settings.infer_dir)
    if not patients:
        raise ValueError(f"no patients in manifest {settings.manifest}")
    out.mkdir(parents=True, exist_ok=True)
    hashed = {k: getattr(settings, k) for k in HASHED_KEYS}
    hashed = {k: as_dict(v) if dataclasses.is_dataclass(v) else v for k, v in hashed.items()}
    records: dict[str, dict] = {}
    resumed, todo = [], []
    for pid, p in patients.items():
        digest = input_hash(p, hashed)
        rec = _resumable(p, out, digest, report) if settings.resume else None
        if rec is not None:
            records[pid] = rec
            resumed.append(pid)
        else:
            todo.append((p, settings, str(out), digest))
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
    executor = Executor(str(settings.executor), int(settings.workers), settings.scheduler)
    with closing(map_jobs(_patient_job, todo, executor)) as results:
        for _, (pid, status, payload) in results:
            if status == "ok":
                records[pid] = payload  # type: ignore[assignment]
            else:
                failed[pid] = payload  # type: ignore[assignment]
            if progress:
                progress(pid, status)
    records = dict(sorted(records.items()))
    errors = error_rows(records, failed, bad_rows)
    atomic_write_text(out / "errors.csv", csv_text(errors, ERROR_COLUMNS))
    if not records:
        raise ValueError(f"no usable patients ({len(failed)} failed); see {out / 'errors.csv'}")
    for fname, text in cohort_tables(records, int(settings.min_correlation_n)).items():
        atomic_write_text(out / fname, text)
    tracked = [pid for pid in records if pid not in resumed]
    return CohortResult(records, tracked, resumed, failed, errors, out, printed)


def _print_pdf(html_path: Path) -> Path:
    """The PDF of an existing HTML report, beside it."""
    # function-level import: matplotlib/Chromium paths load only when a report is written
    from onfh_seg.report.pdf import html_to_pdf

    return html_to_pdf(html_path, html_path.with_suffix(".pdf"))
