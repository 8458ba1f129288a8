"""Jobs for a DICOM study folder: the series chosen now from the headers (``io.dicom_select``), one job, or one per
T1 candidate with ``series=all-t1``; a folder that cannot be used is one job that fails with the one-line reason.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

from onfh_seg.infer.input_files import file_kind
from onfh_seg.infer.scan_jobs import ScanJob, dicom_series_name, is_within, sanitise
from onfh_seg.io.dicom_rank import dixon_water, fat_suppressed
from onfh_seg.io.dicom_rules import merge_rules
from onfh_seg.io.dicom_select import ALL_T1, Selection, select_series
from onfh_seg.io.dicom_series import (
    DicomError,
    SeriesInfo,
    check_manifest_patient,
    check_one_patient,
    find_series,
    series_identifiers,
)
from onfh_seg.run.outputs import is_tool_output


def _looks_like_dicom(path: Path) -> bool:
    """DICOM Part 10 file ("DICM" at byte 128)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def folder_has_dicom(folder: Path, exclude: Path | None = None) -> bool:
    """True if any regular file under ``folder`` (any depth, outside ``exclude``) is a DICOM file."""
    return any(
        p.is_file() and not is_tool_output(p) and not is_within(p, exclude) and _looks_like_dicom(p)
        for p in sorted(folder.rglob("*"))
    )


def dicom_job(folder: Path, image_ref: str, rules: dict | None = None, exclude: Path | None = None,
              patient_id: str | None = None) -> ScanJob:
    """One job for a DICOM study folder: the series the rules choose (headers only)."""
    return dicom_jobs(folder, image_ref, rules, exclude, patient_id)[0]


def dicom_jobs(folder: Path, image_ref: str, rules: dict | None = None, exclude: Path | None = None,
               patient_id: str | None = None, series: str = "auto") -> list[ScanJob]:
    """Jobs for a DICOM study folder: the series chosen now (headers only).

    ``series`` is ``auto`` (the rules' choice, ``io.dicom_select``), a
    SeriesNumber or SeriesInstanceUID (that series), or ``all-t1`` (one job per
    T1 candidate). A folder without a usable series, holding more than one
    patient or study, or (``patient_id``: a manifest row's) of another patient
    still becomes one job (named after the folder) that fails with the one-line reason.
    """
    try:
        found = find_series(folder, exclude=exclude)
        if not found:
            raise DicomError(f"no DICOM image series found in {folder}")
        check_one_patient(found, folder)
        selection = select_series(found, rules, series)
        check_manifest_patient(selection.chosen, patient_id)
    except DicomError as exc:
        name = sanitise(folder.resolve().name) or "dicom"
        return [ScanJob("dicom", folder, name, image_ref, error=str(exc).splitlines()[0])]
    odd = non_regular_files(folder, exclude)
    merged = merge_rules(rules)
    if str(series).strip() != ALL_T1:
        chosen = selection.chosen
        job = _series_job(folder, image_ref, chosen, selection.reason, selection.summary, len(found),
                          _fat_suppressed(chosen, merged))
        return [_with_skipped(job, odd)]
    return [_with_skipped(job, odd) for job in _all_t1_jobs(folder, image_ref, selection, len(found), merged)]


def _fat_suppressed(series: SeriesInfo, rules: dict[str, Any]) -> bool:
    """Whether the series' fat signal is suppressed: by name or ScanOptions, or as a Dixon water image."""
    return fat_suppressed(series, rules) or dixon_water(series, rules)


def _all_t1_jobs(folder: Path, image_ref: str, selection: Selection, n_found: int,
                 rules: dict[str, Any]) -> list[ScanJob]:
    """``series=all-t1``: one job per T1 candidate, each saying whether it is the rules' choice."""
    chosen, total = selection.chosen, len(selection.candidates)
    jobs = []
    for k, s in enumerate(selection.candidates, 1):
        if s is chosen:
            reason = f"series=all-t1: T1 candidate {k} of {total}; the rules' choice: {selection.reason}"
            choice = "the rules' choice)"
        else:
            reason = f"series=all-t1: T1 candidate {k} of {total}; the rules choose #{chosen.series_number}"
            choice = f"the rules choose {chosen.series_number})"
        summary = f"series {s.series_number} '{s.description or s.protocol_name}' (series=all-t1, {choice}"
        jobs.append(_series_job(folder, image_ref, s, reason, summary, n_found, _fat_suppressed(s, rules)))
    return jobs


def non_regular_files(folder: Path, exclude: Path | None = None) -> list[str]:
    """``"<relative path> (<kind>)"`` of every entry under ``folder`` that is neither a folder nor a regular file
    (FIFOs, devices, sockets; never opened), outside ``exclude``."""
    found = []
    for p in sorted(folder.rglob("*")):
        try:
            mode = p.stat().st_mode
        except OSError:
            continue  # a broken link: nothing to read
        if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)) and not is_within(p, exclude):
            found.append(f"{p.relative_to(folder)} ({file_kind(mode)})")
    return found


def _with_skipped(job: ScanJob, skipped: list[str]) -> ScanJob:
    """``job`` recording the non-regular files its folder search skipped (``dicom.non_regular_files_skipped``)."""
    if skipped and job.dicom is not None:
        job.dicom["non_regular_files_skipped"] = list(skipped)
    return job


def _series_job(folder: Path, image_ref: str, chosen: SeriesInfo, reason: str, summary: str, n_found: int,
                fat_sat: bool = False) -> ScanJob:
    """The job for one chosen series of a study, named ``<SeriesNumber>_<description>``; ``fat_sat``: its headers
    say fat suppression (``_fat_suppressed``)."""
    info: dict[str, Any] = {
        "series_instance_uid": chosen.series_uid,
        "series_number": chosen.series_number,
        "series_description": chosen.description,
        "protocol_name": chosen.protocol_name,
        "selection_reason": reason,
        "selection_summary": summary,
        "n_files": chosen.n_files,
        "n_series_found": n_found,
        "fat_suppressed": bool(fat_sat),
    }
    if chosen.duplicates:
        info["duplicate_instances_skipped"] = chosen.duplicates  # same SOPInstanceUID found twice
    info.update(series_identifiers(chosen))
    name = dicom_series_name(chosen.series_number, chosen.description or chosen.protocol_name)
    return ScanJob("dicom", folder, name, image_ref, series=chosen, dicom=info)
