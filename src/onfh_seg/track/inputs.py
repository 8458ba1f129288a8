"""onfh-track's inputs: the manifest grouped by patient, each scan with what onfh-infer recorded for it.

A scan's name, input hash and outputs come from onfh-infer's records
(``track.identity``); a changed image or a failed inference is an error of
that timepoint, never tracked with a stale segmentation. Clinical scores come
from the cohort manifest (rows with an empty ``image`` are clinic visits
without a scan). ``load_scan`` reads a usable scan with its hip regions.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from onfh_seg.geometry import ball_mask, voxel_to_ras
from onfh_seg.hips import split_hips
from onfh_seg.io.manifest import CLINICAL_COLUMNS, read_manifest, resolve
from onfh_seg.io.files import sha256_file
from onfh_seg.io.nifti import load_nifti
from onfh_seg.run.outputs import output_paths, scan_name
from onfh_seg.track.identity import (
    InferIndex,
    RecordedScan,
    current_sha256,
    normalised_path,
    read_infer_dir,
    recorded_error,
)
from onfh_seg.track.params import TRACK_VERSION, num


def timepoint_label(row: Mapping) -> str:
    tp = (row.get("timepoint") or "").strip()
    if tp:
        return tp
    m = num(row.get("months"))
    return f"m{int(round(m)):02d}" if m is not None else "m??"


@dataclass
class ScanInput:
    """One scanned timepoint of a patient.

    ``image`` is the manifest's image (a NIfTI file or a DICOM folder),
    ``name`` / ``kind`` / ``series_uid`` what onfh-infer recorded for it and
    ``sha256`` the image's hash now (equal to the recorded one when usable).
    """

    timepoint: str
    months: float
    image: Path
    seg: Path
    measurements: Path
    meas: dict | None = None
    error: str | None = None
    name: str = ""
    kind: str = "nifti"
    series_uid: str | None = None
    sha256: str | None = None


@dataclass
class PatientInput:
    """Everything ``track_patient`` needs for one patient."""

    patient_id: str
    scans: list[ScanInput]  # sorted by months
    visits: list[dict]  # {"timepoint", "months", score: value}
    rows: list[dict]  # the patient's manifest rows (for the input hash)
    errors: list[dict] = field(default_factory=list)  # {"timepoint", "reason"}

    @property
    def usable(self) -> list[ScanInput]:
        return [s for s in self.scans if s.error is None]


def collect_patients(manifest_path: str | Path, infer_dir: str | Path) -> tuple[dict[str, PatientInput], list[dict]]:
    """Group manifest rows by patient and find each scan's onfh-infer outputs (``track.identity``).

    Returns ``(patients, manifest_errors)``; a scan that is missing, failed in
    onfh-infer, or changed since, keeps a one-line ``error``. The same image
    on several rows of a patient (e.g. one row per hip) is one scan. Raises
    ``FileNotFoundError`` / ``ValueError`` for a missing or malformed manifest.
    """
    manifest_path = Path(manifest_path)
    infer_dir = Path(infer_dir)
    if not infer_dir.is_dir():
        raise FileNotFoundError(f"infer_dir not found: {infer_dir}")
    rows = read_manifest(manifest_path, required=("patient_id", "months", "image"))
    index = read_infer_dir(infer_dir)
    patients: dict[str, PatientInput] = {}
    bad: list[dict] = []
    for r in rows:
        pid = (r.get("patient_id") or "").strip()
        if not pid:
            bad.append({"patient_id": "", "timepoint": timepoint_label(r), "reason": "manifest row without patient_id"})
            continue
        p = patients.setdefault(pid, PatientInput(pid, [], [], []))
        p.rows.append(dict(r))
        months = num(r.get("months"))
        tp = timepoint_label(r)
        if months is None:
            p.errors.append({"timepoint": tp, "reason": "manifest row without numeric months"})
            continue
        scores = {c: num(r.get(c)) for c in CLINICAL_COLUMNS if num(r.get(c)) is not None}
        if scores:
            p.visits.append({"timepoint": tp, "months": months, **scores})
        image = (r.get("image") or "").strip()
        if not image:
            continue
        path = resolve(manifest_path, image)
        if any(normalised_path(s.image) == normalised_path(path) for s in p.scans):
            continue  # the same scan on another row of this patient
        p.scans.append(_scan_input(tp, months, path, image, index))
    for p in patients.values():
        p.scans.sort(key=lambda s: (s.months, s.timepoint))
        p.visits.sort(key=lambda v: (v["months"], v["timepoint"]))
        for s in p.scans:
            if s.error:
                p.errors.append({"timepoint": s.timepoint, "reason": s.error})
    return dict(sorted(patients.items())), bad


def _scan_input(tp: str, months: float, path: Path, image_ref: str, index: InferIndex) -> ScanInput:
    """A timepoint's scan with onfh-infer's recorded identity; ``error`` set when it cannot be tracked."""
    rec = index.find(path, image_ref)
    name = rec.name if rec is not None else scan_name(image_ref)
    paths = output_paths(index.infer_dir, name)
    s = ScanInput(tp, months, path, paths["seg"], paths["measurements"], name=name)
    if rec is not None:
        s.kind, s.series_uid = rec.input_kind, rec.series_uid
    s.error = _check_scan(s, rec, index, image_ref)
    return s


def _check_scan(s: ScanInput, rec: RecordedScan | None, index: InferIndex, image_ref: str) -> str | None:
    """Why a scan cannot be tracked (one line), or None; sets ``s.meas`` and ``s.sha256``."""
    if not s.image.exists():
        return f"image not found: {image_ref}"
    if rec is None:
        return f"not segmented by onfh-infer: {image_ref} has no record in {index.infer_dir}"
    if rec.status != "ok":
        return f"onfh-infer failed: {recorded_error(index, rec)}"
    if not s.seg.is_file():
        return f"segmentation not found: {s.seg.name}"
    try:
        s.meas = json.loads(s.measurements.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"unreadable measurements {s.measurements.name}: {str(exc).splitlines()[0]}"
    s.sha256 = current_sha256(rec, s.image)
    if s.sha256 is None and rec.input_kind == "dicom" and s.image.is_dir():
        return (f"image changed after onfh-infer segmented it: {image_ref} (its DICOM series "
                f"{rec.series_uid} is no longer there); run onfh-infer again")
    if s.sha256 is None:
        return f"cannot read image {image_ref}"
    if rec.input_sha256 and s.sha256 != rec.input_sha256:
        return (f"image changed after onfh-infer segmented it: {image_ref} (sha256 differs from "
                f"{s.measurements.name}); run onfh-infer again")
    hips = [h for h in s.meas.get("hips") or [] if h.get("head_centre_ras_mm")]
    if not hips:
        flags = [str(f) for f in s.meas.get("qc_flags") or []]
        return "no femoral head found" + (f" (onfh-infer QC: {', '.join(flags)})" if flags else "")
    return None


def input_hash(p: PatientInput, config: Mapping) -> str:
    """SHA-256 over the patient's manifest rows, every scan's image, seg and
    measurements files (or "missing"), the tracking config and TRACK_VERSION."""
    h = hashlib.sha256()
    h.update(TRACK_VERSION.encode())
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    h.update(json.dumps(sorted(p.rows, key=lambda r: json.dumps(r, sort_keys=True)), sort_keys=True).encode())
    for s in p.scans:
        h.update(s.image.name.encode())
        h.update((s.sha256 or "missing").encode())
        for f in (s.seg, s.measurements):
            h.update(f.name.encode())
            h.update((sha256_file(f) if f.is_file() else "missing").encode())
    return h.hexdigest()


# ---------------------------------------------------------------- loaded scans


@dataclass
class ScanData:
    """A loaded scan: image, labels, and its hips (from the measurements JSON)."""

    scan: ScanInput
    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    hips: list[dict]
    regions: dict[str, np.ndarray]  # measurements side -> hip region mask

    @property
    def model_version(self) -> str:
        return str((self.scan.meas or {}).get("model_version", ""))


def read_image(s: ScanInput) -> tuple[np.ndarray, np.ndarray]:
    """The scan's image as onfh-infer read it (float32, its affine): NIfTI file or the recorded DICOM series.

    Raises ``ValueError`` when the image changed since :func:`collect_patients` checked it.
    """
    # function-level import: pydicom only for DICOM inputs
    from onfh_seg.infer.inputs import load_scan as load_input
    from onfh_seg.infer.scan_jobs import ScanJob

    job = ScanJob(s.kind, s.image, s.name, str(s.image))
    if s.kind == "dicom":
        # function-level import: pydicom only for DICOM inputs
        from onfh_seg.io.dicom_series import find_series

        found = [x for x in find_series(s.image) if x.series_uid == s.series_uid]
        if not found:
            raise ValueError(f"DICOM series of {s.timepoint} no longer in {s.image}")
        job.series = found[0]
    scan = load_input(job)
    if s.sha256 and scan.sha256 != s.sha256:
        raise ValueError(f"image of {s.timepoint} changed while tracking: {s.image.name}")
    return scan.image, scan.affine


def load_scan(s: ScanInput) -> ScanData:
    """Load image and seg; check they share a grid; hip regions via ``split_hips``."""
    image, affine = read_image(s)
    seg = load_nifti(s.seg)
    labels = np.asarray(seg.dataobj).astype(np.uint8)
    if image.shape != labels.shape or not np.allclose(affine, seg.affine, atol=1e-3):
        raise ValueError(f"segmentation grid of {s.timepoint} does not match its image")
    hips = [h for h in s.meas["hips"] if h.get("head_centre_ras_mm")]
    split = split_hips(labels, affine, image=image)
    regions = {}
    for h in hips:
        regions[h["side"]] = _region_for(h, split, labels.shape, affine)
    return ScanData(s, image, labels, affine, hips, regions)


def _region_for(hip: dict, split: dict[str, np.ndarray], shape, affine) -> np.ndarray:
    """The ``split_hips`` region whose head centroid is nearest the JSON head centre."""
    centre = np.asarray(hip["head_centre_ras_mm"], np.float64)
    best, best_d = None, np.inf
    for mask in split.values():
        idx = np.argwhere(mask)
        if idx.size == 0:
            continue
        d = np.linalg.norm(voxel_to_ras(affine, idx.mean(axis=0)) - centre)
        if d < best_d:
            best, best_d = mask, d
    if best is None:
        return ball_mask(shape, affine, centre, 2.5 * head_radius(hip))
    return best


def head_radius(hip: dict) -> float:
    """Radius (mm) of the sphere with the hip's head volume."""
    vol = float(hip.get("head_volume_ml") or 0.0)
    return float((3.0 * vol * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)) if vol > 0 else 22.0
