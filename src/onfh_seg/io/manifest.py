"""Cohort manifest (CSV) reading and writing.

Required columns: ``patient_id, timepoint, months, image``. Optional: ``labels``
(truth), ``truth`` (JSON record), ``regenerated``, ``hip``/``side`` and clinical
scores. Paths are relative to the manifest's folder. Rows may carry scores with
an empty ``image`` (a clinic visit without a scan).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from onfh_seg.io.nifti import atomic_write_text

REQUIRED_COLUMNS = ("patient_id", "timepoint", "months", "image")
CLINICAL_COLUMNS = (
    "functional_rating_index",
    "vas_walking",
    "harris_hip_score",
    "rom_flexion_deg",
    "rom_flexion_vas",
    "rom_abduction_deg",
    "rom_abduction_vas",
    "rom_adduction_deg",
    "rom_adduction_vas",
)


def read_manifest(path: str | Path) -> list[dict[str, str]]:
    """Read a manifest; raise ``ValueError`` if a required column is missing."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        missing = [c for c in ("patient_id", "image") if c not in cols]
        if missing:
            raise ValueError(f"manifest {path} lacks column(s): {', '.join(missing)}")
        return [dict(r) for r in reader]


def resolve(manifest_path: str | Path, rel: str) -> Path:
    """Resolve a manifest path entry relative to the manifest's folder."""
    p = Path(rel)
    return p if p.is_absolute() else Path(manifest_path).parent / p


def write_manifest(path: str | Path, rows: list[dict], columns: list[str] | None = None) -> None:
    """Write rows atomically; columns default to the required ones then the rest in first-seen order."""
    if columns is None:
        columns = list(REQUIRED_COLUMNS)
        for r in rows:
            for k in r:
                if k not in columns:
                    columns.append(k)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    atomic_write_text(path, buf.getvalue())
