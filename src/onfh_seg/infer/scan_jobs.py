"""One scan to segment (``ScanJob``) and how scans are named: ``scan.nii.gz`` -> ``scan``, a DICOM series
``<SeriesNumber>_<description>``, duplicates made unique; which file names are this tool's outputs (never inputs).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onfh_seg.infer.image_read import DEFAULT_MAX_IMAGE_MB
from onfh_seg.run.outputs import NIFTI_SUFFIXES



@dataclass
class ScanJob:
    """One scan to segment.

    ``kind`` is "nifti" or "dicom". ``image_ref`` is the image as the user
    named it (manifest entry or path), used in the CSV ``image`` column.
    ``series`` holds the chosen DICOM series (``onfh_seg.io.dicom_series.SeriesInfo``)
    and ``dicom`` its description; ``error`` is a problem found while
    expanding the input (the job then fails with it).
    """

    kind: str
    path: Path
    name: str
    image_ref: str
    labels: Path | None = None
    meta: dict[str, str] = field(default_factory=dict)
    series: Any = None
    dicom: dict[str, Any] | None = None
    error: str | None = None
    max_image_mb: float = DEFAULT_MAX_IMAGE_MB
    allow_unknown_orientation: bool = False
    geometry: str = "auto"  # NIfTI: auto (sform and qform must agree) | sform | qform (configs/infer.yaml)


# ---------------------------------------------------------------- names


def is_nifti_name(path: Path) -> bool:
    """True for ``.nii`` and ``.nii.gz`` names (any case)."""
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def absolute_path(path: Path | str) -> Path:
    """Absolute, normalised path (symlinks resolved where possible)."""
    return Path(os.path.realpath(os.path.abspath(str(path))))


def is_within(path: Path, folder: Path | None) -> bool:
    """True when ``path`` is ``folder`` or lies below it (both made absolute)."""
    if folder is None:
        return False
    path, folder = absolute_path(path), absolute_path(folder)
    return path == folder or folder in path.parents


def sanitise(text: str, max_len: int = 64) -> str:
    """A file-name-safe version of ``text`` (letters, digits, ``.-_``; runs of others -> ``_``)."""
    out = re.sub(r"[^A-Za-z0-9.\-]+", "_", text).strip("._-")
    return out[:max_len].rstrip("._-")


def dicom_series_name(series_number: int | None, description: str) -> str:
    """``<SeriesNumber>_<sanitised description>``, e.g. ``3_t1_tse_cor``."""
    number = "S" if series_number is None else str(series_number)
    desc = sanitise(description)
    return f"{number}_{desc}" if desc else f"{number}_series"


def dedupe_names(jobs: list[ScanJob]) -> list[ScanJob]:
    """Make job names unique: prepend the parent folder name, then add ``_2``, ``_3``..."""
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.name] = counts.get(job.name, 0) + 1
    for job in jobs:
        if counts[job.name] > 1:
            parent = sanitise(job.path.parent.name) if job.kind == "nifti" else sanitise(job.path.name)
            if parent:
                job.name = f"{parent}_{job.name}"
    seen: dict[str, int] = {}
    for job in jobs:
        base = job.name
        if base in seen:
            seen[base] += 1
            job.name = f"{base}_{seen[base]}"
            while job.name in seen:
                seen[base] += 1
                job.name = f"{base}_{seen[base]}"
        seen.setdefault(job.name, 1)
    return jobs


def selection_line(job: ScanJob) -> str | None:
    """Console line of a DICOM job's series choice, ``<patient>: <selection_summary>``, e.g.
    ``P01: series 26 '...' (T1 3D GRE, pre-contrast); not 25 (...)``."""
    if job.kind != "dicom" or not job.dicom or not job.dicom.get("selection_summary"):
        return None
    who = job.meta.get("patient_id") or job.dicom.get("PatientID") or job.name
    return f"{who}: {job.dicom['selection_summary']}"
