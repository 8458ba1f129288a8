"""DICOM input: the image series of a study folder (``find_series``), one slice named in messages, and the only
patient/study identifiers that leave the reader.

Only patient/study identifiers (PatientID, StudyInstanceUID, AccessionNumber,
StudyDate) ever leave the DICOM reader; names and birth dates are never copied.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset


class DicomError(ValueError):
    """A DICOM input problem, described in one line."""


# SOP classes that never hold an image volume (prefix match on SOPClassUID).
NON_IMAGE_SOP_CLASS_PREFIXES: tuple[str, ...] = (
    "1.2.840.10008.5.1.4.1.1.88.",  # structured reports, key objects
    "1.2.840.10008.5.1.4.1.1.66",  # raw data, spatial registration, SEG, fiducials
    "1.2.840.10008.5.1.4.1.1.11.",  # presentation states
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated PDF / CDA / STL
    "1.2.840.10008.5.1.4.1.1.481.",  # radiotherapy objects
    "1.2.840.10008.5.1.4.1.1.9.",  # waveforms
    "1.2.840.10008.5.1.4.1.1.91.",  # bulk annotations
    "1.2.840.10008.5.1.4.1.1.67",  # real-world value mapping
    "1.2.840.10008.5.1.4.1.1.4.2",  # MR spectroscopy
    "1.2.840.10008.5.1.4.38.",  # hanging protocols
    "1.2.840.10008.5.1.4.39.",  # colour palettes
    "1.2.840.10008.1.3.10",  # media storage directory (DICOMDIR)
)


@dataclass(frozen=True, eq=False)
class SeriesInfo:
    """One DICOM image series: its files and their headers (no pixel data)."""

    series_uid: str
    files: tuple[Path, ...]
    headers: tuple[Dataset, ...]
    duplicates: int = 0  # files skipped because their SOPInstanceUID was already read (series copied twice)

    def _first(self, keyword: str, default: Any = None) -> Any:
        return self.headers[0].get(keyword, default) if self.headers else default

    @property
    def description(self) -> str:
        return str(self._first("SeriesDescription", "") or "")

    @property
    def protocol_name(self) -> str:
        return str(self._first("ProtocolName", "") or "")

    @property
    def series_number(self) -> int | None:
        value = self._first("SeriesNumber")
        return int(value) if value not in (None, "") else None

    @property
    def modality(self) -> str:
        return str(self._first("Modality", "") or "")

    @property
    def n_files(self) -> int:
        return len(self.files)

    def label(self) -> str:
        """Short human-readable name, e.g. ``#3 't1_tse_cor'``."""
        return f"#{self.series_number} '{self.description or self.protocol_name}'"


# ---------------------------------------------------------------------------
# finding series


def _read_header(path: Path) -> Dataset | None:
    """Read a DICOM header without pixel data; ``None`` for non-DICOM files."""
    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception:  # unreadable or corrupt files belong to no series
        return None


def is_image_header(ds: Dataset) -> bool:
    """True for headers of image objects (not SR, SEG, presentation states, ...)."""
    sop_class = str(ds.get("SOPClassUID", ""))
    if not sop_class or "SeriesInstanceUID" not in ds:
        return False
    if any(sop_class.startswith(prefix) for prefix in NON_IMAGE_SOP_CLASS_PREFIXES):
        return False
    return "Rows" in ds and "Columns" in ds


def _under(path: Path, folder: Path | None) -> bool:
    """True when ``path`` is ``folder`` or lies below it (absolute, symlinks resolved)."""
    if folder is None:
        return False
    p, f = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return p == f or f in p.parents


def find_series(folder: str | Path, exclude: str | Path | None = None) -> list[SeriesInfo]:
    """Walk ``folder`` recursively and group its DICOM image files by SeriesInstanceUID.

    Only regular files are read, and none under ``exclude`` (e.g. the run's
    out_dir). An instance found twice (the same
    SOPInstanceUID, e.g. a series copied into two sub-folders) is read once:
    the first file in path order is kept and the others are counted in
    ``SeriesInfo.duplicates``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DicomError(f"not a folder: {folder}")
    skip = Path(exclude) if exclude is not None else None
    groups: dict[str, list[tuple[Path, Dataset]]] = {}
    seen: set[str] = set()
    duplicates: dict[str, int] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not _under(p, skip)):
        ds = _read_header(path)
        if ds is None or not is_image_header(ds):
            continue
        uid = str(ds.SeriesInstanceUID)
        sop = str(ds.get("SOPInstanceUID", "") or "")
        if sop and sop in seen:
            duplicates[uid] = duplicates.get(uid, 0) + 1
            continue
        if sop:
            seen.add(sop)
        groups.setdefault(uid, []).append((path, ds))
    series = [
        SeriesInfo(uid, tuple(p for p, _ in items), tuple(d for _, d in items), duplicates.get(uid, 0))
        for uid, items in groups.items()
    ]
    return sorted(series, key=lambda s: (s.series_number or 0, s.series_uid))


def float_or_none(value: Any) -> float | None:
    """``float(value)``, or None when it is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def slice_name(ds: Dataset) -> str:
    """How a message names one slice: its file name and InstanceNumber, e.g. ``IM0003.dcm (InstanceNumber 3)``."""
    file_name = Path(str(getattr(ds, "filename", "") or "")).name
    number = ds.get("InstanceNumber")
    parts = [file_name] if file_name else []
    if number not in (None, ""):
        parts.append(f"(InstanceNumber {number})")
    return " ".join(parts) or f"SOPInstanceUID {ds.get('SOPInstanceUID', '?')}"


# ---------------------------------------------------------------------------
# identifiers


IDENTIFIER_KEYWORDS: tuple[str, ...] = ("PatientID", "StudyInstanceUID", "AccessionNumber", "StudyDate")


def _values_of(series: Sequence[SeriesInfo], keyword: str) -> dict[str, Dataset]:
    """The distinct values of ``keyword`` over every instance of ``series``, each with the first slice that has it."""
    found: dict[str, Dataset] = {}
    for s in series:
        for ds in s.headers:
            found.setdefault(str(ds.get(keyword, "") or ""), ds)
    return found


def check_one_patient(series: Sequence[SeriesInfo], folder: str | Path) -> None:
    """DicomError unless every image instance under ``folder`` belongs to one patient and one study.

    A folder holding two patients (PatientID) or two studies (StudyInstanceUID) is refused, naming each
    identifier and a slice that has it: the tool never picks one of them by ranking.
    """
    name = Path(folder).name or str(folder)
    for keyword, what, advice in (("PatientID", "patients", "one patient's study"), ("StudyInstanceUID", "studies", "one study")):
        values = _values_of(series, keyword)
        if len(values) > 1:
            listed = ", ".join(f"{v!r} in {slice_name(ds)}" for v, ds in values.items())
            raise DicomError(f"folder {name} holds {len(values)} {what} ({keyword} {listed}): "
                             f"give {advice} per folder or manifest row")


def check_manifest_patient(series: SeriesInfo, patient_id: str | None) -> None:
    """DicomError when a manifest row's ``patient_id`` differs from the PatientID of its DICOM series."""
    dicom_id = str(series.headers[0].get("PatientID", "") or "").strip() if series.headers else ""
    wanted = str(patient_id or "").strip()
    if wanted and dicom_id and wanted != dicom_id:
        raise DicomError(f"manifest patient_id {wanted!r} does not match the DICOM PatientID {dicom_id!r} of "
                         f"series {series.label()}: wrong folder on this row?")


def series_identifiers(series: SeriesInfo) -> dict[str, str]:
    """The only patient/study attributes that may be copied into outputs."""
    ds = series.headers[0]
    return {key: str(ds.get(key, "") or "") for key in IDENTIFIER_KEYWORDS}
