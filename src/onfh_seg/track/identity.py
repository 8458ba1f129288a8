"""Scan identity as onfh-infer recorded it: manifest image -> scan name, input hash, status, error.

onfh-track never re-derives output names from image paths (onfh-infer's names
depend on case-insensitive suffixes, de-duplication and DICOM series). It
reads what onfh-infer wrote in ``infer_dir`` (docs/CONTRACTS.md):

* ``<name>_measurements.json`` per scan: ``name``, ``input`` (the image as
  written in the manifest), ``input_path`` (absolute, symlinks resolved),
  ``input_kind`` (nifti | dicom), ``input_sha256``, ``status``, ``error`` and,
  for DICOM, ``dicom.series_instance_uid``;
* ``run_manifest.json`` ``scans`` (the same identity for every scan of the
  latest run, also for a scan whose worker died before it wrote a JSON);
* ``errors.csv`` (``scan, image, error``) of the latest run.

A manifest image is matched by its resolved path; failing that (outputs from
before ``input_path`` was recorded, or a cohort folder mounted elsewhere) by
the image as written when exactly one recorded scan has it; failing that, for
records that predate ``input_path`` only, by the old name rule (file name
without ``.nii``/``.nii.gz``). When several records share a path (the same
image segmented under two names by different runs), the one in the latest
run's ``run_manifest.json`` wins, then the newest.

:func:`current_sha256` hashes an image the way onfh-infer did (file bytes; the
chosen DICOM series' files), so a changed image is caught before tracking.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from onfh_seg.io.manifest import CsvError, read_csv_rows
from onfh_seg.io.files import read_json_dict, sha256_file
from onfh_seg.run.outputs import MEASUREMENTS_SUFFIX, scan_name



@dataclass(frozen=True)
class RecordedScan:
    """One scan as onfh-infer recorded it.

    ``status`` is "ok" or "error"; ``error`` the one-line inference error.
    ``has_measurements`` is False for a scan known only from the run records
    (its worker died before writing ``<name>_measurements.json``).
    """

    name: str
    image_ref: str
    input_path: str | None
    input_kind: str
    input_sha256: str | None
    status: str
    error: str | None
    series_uid: str | None = None
    has_measurements: bool = True
    mtime: float = 0.0


def normalised_path(path: str | Path) -> str:
    """Absolute path with symlinks resolved (how onfh-infer records ``input_path``)."""
    return os.path.realpath(Path(path))


def _from_measurements(path: Path) -> RecordedScan | None:
    """The identity in one ``<name>_measurements.json`` (the name is the file's)."""
    meas = read_json_dict(path)
    if meas is None:
        return None
    name = path.name[: -len(MEASUREMENTS_SUFFIX)]
    dicom = meas.get("dicom") if isinstance(meas.get("dicom"), dict) else {}
    return RecordedScan(
        name=name,
        image_ref=str(meas.get("input") or ""),
        input_path=meas.get("input_path"),
        input_kind=str(meas.get("input_kind") or ("dicom" if dicom else "nifti")),
        input_sha256=meas.get("input_sha256"),
        status=str(meas.get("status", "ok")),
        error=meas.get("error"),
        series_uid=dicom.get("series_instance_uid"),
        mtime=path.stat().st_mtime,
    )


def _run_scans(infer_dir: Path) -> list[dict]:
    """``scans`` of ``run_manifest.json`` (empty when absent or unreadable)."""
    record = read_json_dict(infer_dir / "run_manifest.json") or {}
    scans = record.get("scans")
    return [s for s in scans if isinstance(s, dict) and s.get("name")] if isinstance(scans, list) else []


def _run_errors(infer_dir: Path) -> dict[str, dict[str, str]]:
    """``errors.csv`` rows by scan name (empty when absent or unreadable)."""
    path = infer_dir / "errors.csv"
    if not path.is_file():
        return {}
    try:
        rows = read_csv_rows(path, required=("scan", "error"))
    except (CsvError, OSError):
        return {}
    return {r["scan"]: r for r in rows if r.get("scan")}


@dataclass
class InferIndex:
    """Every scan recorded in an ``infer_dir``, and how to find one from a manifest row."""

    infer_dir: Path
    scans: dict[str, RecordedScan] = field(default_factory=dict)
    latest: set[str] = field(default_factory=set)  # names in the latest run_manifest.json
    _by_path: dict[str, list[str]] | None = field(default=None, repr=False)

    def _best(self, names: list[str]) -> RecordedScan | None:
        if not names:
            return None
        return max((self.scans[n] for n in names), key=lambda r: (r.name in self.latest, r.mtime, r.name))

    def names_by_path(self) -> dict[str, list[str]]:
        """Recorded ``input_path`` -> scan names (as recorded: already absolute and resolved)."""
        out: dict[str, list[str]] = {}
        for name, rec in self.scans.items():
            if rec.input_path:
                out.setdefault(str(rec.input_path), []).append(name)
        return out

    def find(self, path: str | Path, image_ref: str) -> RecordedScan | None:
        """The recorded scan of a manifest image (``path`` resolved against the manifest's folder,
        ``image_ref`` as written), or None; see the module docstring."""
        if self._by_path is None:
            self._by_path = self.names_by_path()
        by_path = self._by_path.get(normalised_path(path), [])
        if by_path:
            return self._best(by_path)
        by_ref = [n for n, r in self.scans.items() if r.image_ref == image_ref]
        if len(by_ref) == 1:
            return self.scans[by_ref[0]]
        legacy = self.scans.get(scan_name(image_ref))
        if legacy is not None and not legacy.input_path and not by_ref:
            return legacy
        return None


def read_infer_dir(infer_dir: str | Path) -> InferIndex:
    """Index the scans recorded in ``infer_dir`` (measurements JSONs, run_manifest.json, errors.csv)."""
    infer_dir = Path(infer_dir)
    index = InferIndex(infer_dir)
    for path in sorted(infer_dir.glob(f"*{MEASUREMENTS_SUFFIX}")):
        rec = _from_measurements(path)
        if rec is not None:
            index.scans[rec.name] = rec
    errors = _run_errors(infer_dir)
    for s in _run_scans(infer_dir):
        name = str(s["name"])
        index.latest.add(name)
        if name in index.scans:
            continue
        error = s.get("error") or (errors.get(name) or {}).get("error")
        index.scans[name] = RecordedScan(
            name=name, image_ref=str(s.get("input") or ""), input_path=s.get("input_path"),
            input_kind="nifti", input_sha256=s.get("input_sha256"), status="error",
            error=error or f"no {name}{MEASUREMENTS_SUFFIX} (status {s.get('status')})", has_measurements=False,
        )
    for name, row in errors.items():  # an errors.csv without run_manifest.json
        if name not in index.scans:
            index.scans[name] = RecordedScan(name=name, image_ref=row.get("image", ""), input_path=None,
                                             input_kind="nifti", input_sha256=None, status="error",
                                             error=row.get("error") or "failed", has_measurements=False)
    return index


def recorded_error(index: InferIndex, rec: RecordedScan) -> str:
    """The inference error of a failed scan: its JSON's, else errors.csv's, else a generic line."""
    if rec.error:
        return str(rec.error)
    row = _run_errors(index.infer_dir).get(rec.name)
    return (row or {}).get("error") or f"status {rec.status}"


def current_sha256(rec: RecordedScan, image: Path) -> str | None:
    """sha256 of the image now, computed as onfh-infer did; None if it cannot be read.

    NIfTI: the file's bytes. DICOM folder: the files of the recorded series
    (``series_instance_uid``), found again in the folder.
    """
    try:
        if rec.input_kind != "dicom":
            return sha256_file(image) if image.is_file() else None
        # function-level import: pydicom only for DICOM inputs
        from onfh_seg.infer.inputs import dicom_sha256
        from onfh_seg.io.dicom_series import find_series

        series = [s for s in find_series(image) if s.series_uid == rec.series_uid]
        return dicom_sha256([Path(p) for p in series[0].files]) if series else None
    except (OSError, ValueError):
        return None
