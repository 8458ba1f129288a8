"""Longitudinal tracking of each hip across a patient's scans.

Inputs per scan (docs/CONTRACTS.md): the image, onfh-infer's ``<name>_seg.nii.gz``
and ``<name>_measurements.json``, where ``<name>`` and the input hash are what
onfh-infer recorded for that image (``track.identity``; a changed image or a
failed inference is an error of that timepoint, never tracked with a stale
segmentation); clinical scores come from the cohort manifest (rows with an
empty ``image`` are clinic visits without a scan).

Per patient, per hip, per timepoint (baseline = the earliest scan):

* ``lesion_volume_ml``, ``percent_head_involved``, ``band_volume_ml``,
  ``head_volume_ml``, ``sir_necrotic`` as measured by onfh-infer, and
  ``lesion_change_ml`` / ``lesion_change_pct`` against baseline.
* Registration (``track.register``): each follow-up is registered rigidly to the
  baseline per hip; ``registration_shift_mm`` is how far the head centre moved
  from the head-centre initialisation (a QC number).
* On a common grid in baseline space (RAS-aligned, ``grid_mm`` isotropic, head
  radius + 8 mm around the baseline head centre), both label maps sampled
  nearest-neighbour (the follow-up through its transform), see
  ``lesion_changes``:
  - ``regenerated_pct``: share (%) of the baseline lesion (2+3) that is viable
    head (1) now; ``regenerated_volume_ml`` the same in mL.
  - ``new_necrosis_ml``: current lesion (2+3) where the baseline had viable
    head (1), i.e. outside the baseline zone.
  Within a shell of ``boundary_width`` mm at the baseline lesion border only
  the net change counts (voxel-size and registration noise move the border
  both ways), so a stable lesion reads ~0 for both.
* On the follow-up's own grid: ``sir_baseline_zone`` = mean T1 inside the
  baseline lesion mapped to this scan (and inside this scan's head) divided by
  the mean over the SIR reference of this hip in this scan
  (``measure.reference_mask``: eroded acetabulum by default); ``sir_lesion`` the
  same over the current lesion (2+3); ``sir_change`` = ``sir_baseline_zone`` -
  its baseline value (a rise means the zone's signal moves towards marrow).
* ``collapse_mm`` (collapse indicator): loss of head height along the baseline
  lesion direction vs baseline. From the baseline head centre, rays within
  ``collapse_cone_deg`` of the direction to the baseline lesion centroid are
  cast through the head masks (trilinear, 0.5 crossing); the median ray length
  at baseline minus at this timepoint. Positive = the dome flattened. NaN
  without a baseline lesion. Its noise is about a third of the slice spacing.

Clinical scores are joined by patient and months. Cohort-level outputs are
derived from the per-patient records (``tidy_rows``, ``summary_rows``,
``correlations``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from onfh_seg.geometry import apply, ball_mask, centred_grid, crop_box, resample, voxel_spacing, voxel_to_ras
from onfh_seg.hips import split_hips
from onfh_seg.io.manifest import CLINICAL_COLUMNS, read_manifest, resolve
from onfh_seg.io.nifti import atomic_write_bytes, atomic_write_text, load_nifti, sha256_file
from onfh_seg.labels import HEAD, HEAD_LABELS, LESION_LABELS
from onfh_seg.measure import MIN_LESION_ML, reference_mask, sir_of_mask
from onfh_seg.track.identity import (
    MEASUREMENTS_SUFFIX,
    SEG_SUFFIX,
    InferIndex,
    RecordedScan,
    current_sha256,
    legacy_name,
    normalised_path,
    read_infer_dir,
    recorded_error,
)
from onfh_seg.track.register import RegistrationParams, register_hip, write_tfm

TRACK_VERSION = "onfh-track/3"  # 3: regenerated_pct (%) replaces regenerated_fraction (0-1)
TIDY_COLUMNS = ("patient_id", "hip", "months", "metric", "value")
# numeric per-hip metrics, in table order
HIP_METRICS = (
    "head_volume_ml",
    "lesion_volume_ml",
    "percent_head_involved",
    "necrotic_core_volume_ml",
    "band_volume_ml",
    "lesion_change_ml",
    "lesion_change_pct",
    "regenerated_pct",
    "regenerated_volume_ml",
    "new_necrosis_ml",
    "sir_necrotic",
    "sir_lesion",
    "sir_baseline_zone",
    "sir_change",
    "collapse_mm",
    "registration_shift_mm",
)
CATEGORICAL = ("arco_extent", "jic_type")
IMAGING_CHANGE = ("lesion_change_pct", "regenerated_pct", "sir_change")
SUMMARY_COLUMNS = (
    "patient_id", "hip", "baseline_months", "last_months", "baseline_lesion_ml", "last_lesion_ml",
    "lesion_change_ml", "lesion_change_pct", "regenerated_pct", "sir_baseline_zone_baseline",
    "sir_baseline_zone_last", "sir_change", "new_necrosis_ml", "collapse_mm",
)
CORRELATION_COLUMNS = ("imaging_metric", "score_change", "n", "rho", "p_value", "note")


@dataclass(frozen=True)
class TrackParams:
    """Non-registration knobs (configs/track.yaml)."""

    reference: str = "acetabulum"
    grid_mm: float = 0.5
    boundary_mm: float | None = None  # None: half the coarsest voxel edge of the two scans + 1 mm
    collapse_cone_deg: float = 20.0
    hip_match_max_mm: float = 60.0
    write_tfm: bool = False
    min_correlation_n: int = 3
    min_lesion_ml: float = MIN_LESION_ML  # smaller baseline lesions count as none (as in measure: no ARCO class)

    @classmethod
    def from_dict(cls, d: Mapping | None) -> "TrackParams":
        d = dict(d or {})
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


# ---------------------------------------------------------------- small helpers


def _num(v) -> float | None:
    """Float of a value, None if empty/non-numeric/non-finite."""
    if v is None or v == "":
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _r(v, nd: int = 4) -> float | None:
    return None if v is None or not math.isfinite(float(v)) else round(float(v), nd)


def timepoint_label(row: Mapping) -> str:
    tp = (row.get("timepoint") or "").strip()
    if tp:
        return tp
    m = _num(row.get("months"))
    return f"m{int(round(m)):02d}" if m is not None else "m??"


# ---------------------------------------------------------------- inputs


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
        months = _num(r.get("months"))
        tp = timepoint_label(r)
        if months is None:
            p.errors.append({"timepoint": tp, "reason": "manifest row without numeric months"})
            continue
        scores = {c: _num(r.get(c)) for c in CLINICAL_COLUMNS if _num(r.get(c)) is not None}
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
    name = rec.name if rec is not None else legacy_name(image_ref)
    s = ScanInput(tp, months, path, index.infer_dir / f"{name}{SEG_SUFFIX}",
                  index.infer_dir / f"{name}{MEASUREMENTS_SUFFIX}", name=name)
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


# ---------------------------------------------------------------- per-scan data


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
    from onfh_seg.infer.inputs import ScanJob, load_scan as load_input

    job = ScanJob(s.kind, s.image, s.name, str(s.image))
    if s.kind == "dicom":
        from onfh_seg.io.dicom import find_series

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


def match_hips(base: list[dict], follow: list[dict], max_mm: float) -> dict[int, int]:
    """Baseline hip index -> follow-up hip index, nearest head centres (world, no transform).

    Poses differ by a few cm at most while the hips are ~18 cm apart. Greedy by
    distance; pairs further than ``max_mm`` are not matched.
    """
    pairs = []
    for i, a in enumerate(base):
        for j, b in enumerate(follow):
            d = float(np.linalg.norm(np.subtract(a["head_centre_ras_mm"], b["head_centre_ras_mm"])))
            if d <= max_mm:
                pairs.append((d, i, j))
    out: dict[int, int] = {}
    used = set()
    for d, i, j in sorted(pairs):
        if i not in out and j not in used:
            out[i] = j
            used.add(j)
    return out


def hip_names(base: list[dict], matches: list[dict[int, int]], follows: list[list[dict]]) -> list[str]:
    """Name of each baseline hip: its side, or the first known side at a follow-up if baseline says unknown."""
    names = []
    for i, h in enumerate(base):
        name = h["side"]
        if name not in ("right", "left"):
            for m, f in zip(matches, follows):
                if i in m and f[m[i]]["side"] in ("right", "left"):
                    name = f[m[i]]["side"]
                    break
        names.append(name)
    seen: dict[str, int] = {}
    out = []
    for n in names:  # keep names unique
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}{seen[n]}")
    return out


# ---------------------------------------------------------------- geometry on a common grid


def common_grid(centre_ras: np.ndarray, half_mm: float, step_mm: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """RAS-aligned isotropic grid (shape, affine) centred on a baseline world point."""
    n = int(math.ceil(half_mm / step_mm))
    shape = (2 * n + 1,) * 3
    aff = np.diag([step_mm, step_mm, step_mm, 1.0])
    aff[:3, 3] = np.asarray(centre_ras, np.float64) - n * step_mm
    return shape, aff


def _hip_crop(d: ScanData, side: str, centre: np.ndarray, half_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(image, hip labels, hip region, affine) cropped to a box around ``centre``."""
    labels = np.where(d.regions[side], d.labels, 0).astype(np.uint8)
    lab, aff = crop_box(labels, d.affine, centre, half_mm)
    img, _ = crop_box(d.image, d.affine, centre, half_mm)
    reg, _ = crop_box(d.regions[side], d.affine, centre, half_mm)
    return img, lab, reg, aff


def _fibonacci_cap(direction: np.ndarray, cone_deg: float, n: int = 64) -> np.ndarray:
    """``n`` deterministic unit vectors spread over the cap within ``cone_deg`` of ``direction``."""
    d = direction / np.linalg.norm(direction)
    cmin = math.cos(math.radians(cone_deg))
    k = np.arange(n) + 0.5
    z = 1.0 - (1.0 - cmin) * k / n
    phi = k * math.pi * (3.0 - math.sqrt(5.0))
    rr = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
    local = np.stack([rr * np.cos(phi), rr * np.sin(phi), z], axis=1)
    a = np.array([1.0, 0.0, 0.0]) if abs(d[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = np.cross(d, a)
    u /= np.linalg.norm(u)
    v = np.cross(d, u)
    return local @ np.stack([u, v, d])


def ray_extent(head: np.ndarray, affine: np.ndarray, origin_ras: np.ndarray, dirs_ras: np.ndarray,
               max_mm: float, to_grid: np.ndarray | None = None, step_mm: float = 0.25) -> float:
    """Median distance from ``origin_ras`` to the head surface along ``dirs_ras``.

    ``head`` is a boolean mask on a grid with ``affine``; ``to_grid`` maps the
    (baseline) world of the rays into that grid's world (None: identity). The
    mask is sampled trilinearly; the surface is the first 0.5 crossing after
    the ray has been inside. NaN if no ray finds a surface.
    """
    t = np.arange(0.0, max_mm + step_mm, step_mm)
    pts = origin_ras[None, None, :] + t[None, :, None] * dirs_ras[:, None, :]
    if to_grid is not None:
        pts = apply(to_grid, pts)
    vox = apply(np.linalg.inv(affine), pts)
    vals = ndimage.map_coordinates(head.astype(np.float32), vox.reshape(-1, 3).T, order=1, mode="constant",
                                   cval=0.0, prefilter=False).reshape(pts.shape[:2])
    lengths = []
    for row in vals:
        inside = row >= 0.5
        if not inside.any():
            continue
        first_in = int(np.argmax(inside))
        out = np.nonzero(~inside[first_in:])[0]
        if out.size == 0:
            continue
        j = first_in + int(out[0])  # first sample outside
        a, b = row[j - 1], row[j]
        frac = (a - 0.5) / (a - b) if a != b else 0.0
        lengths.append(t[j - 1] + frac * step_mm)
    return float(np.median(lengths)) if lengths else float("nan")


def boundary_width(params: "TrackParams", *affines: np.ndarray) -> float:
    """Width (mm) of the ambiguous shell around the baseline lesion border.

    ``params.boundary_mm`` if set, else half the coarsest voxel edge of the
    scans plus 1 mm (nearest-neighbour label borders move by up to half a voxel
    in each scan; 1 mm for registration error).
    """
    if params.boundary_mm is not None:
        return float(params.boundary_mm)
    return round(0.5 * max(float(voxel_spacing(a).max()) for a in affines) + 1.0, 3)


def lesion_changes(base: np.ndarray, follow: np.ndarray, d_in: np.ndarray | None, d_out: np.ndarray | None,
                   width_mm: float) -> tuple[int, int]:
    """Voxel counts (regenerated, new necrosis) on a common grid.

    ``base``/``follow`` are label maps on the same grid (baseline space);
    ``d_in``/``d_out`` the distances (mm) to the baseline lesion border inside /
    outside the baseline lesion. Deeper than ``width_mm`` from the border:
    regenerated = baseline lesion now viable (1), new necrosis = baseline
    viable (1) now lesion (2+3), counted as they are. Within the border shell,
    voxel-size and registration noise moves the border both ways by similar
    amounts, so only the net change counts there: regenerated gets
    max(0, shell lesion->viable - shell viable->lesion), new necrosis the
    opposite. (A border that shrinks on one side and grows on the other by
    similar volumes therefore nets out.) Counts of 0 without a baseline lesion
    (then everything current is new necrosis).
    """
    b_les = np.isin(base, LESION_LABELS)
    f_les = np.isin(follow, LESION_LABELS)
    f_viable = follow == HEAD
    if d_in is None or not b_les.any():
        return 0, int(f_les.sum())
    to_viable = b_les & f_viable
    to_lesion = (base == HEAD) & f_les
    deep_in = d_in > width_mm
    deep_out = d_out > width_mm
    shell_regen = int((to_viable & ~deep_in).sum())
    shell_new = int((to_lesion & ~deep_out).sum())
    regen = int((to_viable & deep_in).sum()) + max(0, shell_regen - shell_new)
    new = int((to_lesion & deep_out).sum()) + max(0, shell_new - shell_regen)
    return regen, new


# ---------------------------------------------------------------- tracking one patient


def track_patient(
    p: PatientInput,
    out_dir: str | Path,
    params: TrackParams | None = None,
    reg_params: RegistrationParams | None = None,
    fixed_transforms: Mapping[str, np.ndarray] | None = None,
    write_transforms: bool = True,
    views: dict | None = None,
) -> dict:
    """Register and measure one patient; returns its record (the patient JSON body).

    ``fixed_transforms`` (timepoint -> follow-up -> baseline RAS matrix) skips
    registration and uses the given matrices for every hip (evaluation with the
    generator's true transforms). Transforms are written to
    ``out_dir/transforms/<pid>_<hip>_<timepoint>.json`` when ``write_transforms``.
    If ``views`` is a dict, it is filled with hip name -> list of
    ``(timepoint, months, report.plots.sample_views(...))`` display planes
    through the baseline lesion centroid (else the head centre), every
    timepoint resampled into baseline space. Raises ``ValueError`` if the
    baseline scan is unusable.
    """
    params = params or TrackParams()
    reg_params = reg_params or RegistrationParams()
    out_dir = Path(out_dir)
    if views is not None:
        from onfh_seg.report.plots import sample_views
    if not p.scans:
        raise ValueError("no scans in the manifest")
    if p.scans[0].error:
        raise ValueError(f"baseline {p.scans[0].timepoint} unusable: {p.scans[0].error}")
    errors = list(p.errors)
    warnings: list[str] = [f"{e['timepoint']}: {e['reason']}" for e in errors]
    base = load_scan(p.scans[0])
    follows: list[ScanData] = []
    for s in p.usable[1:]:
        try:
            follows.append(load_scan(s))
        except (OSError, ValueError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            errors.append({"timepoint": s.timepoint, "reason": msg})
            warnings.append(f"{s.timepoint}: {msg}")
    matches = [match_hips(base.hips, f.hips, params.hip_match_max_mm) for f in follows]
    names = hip_names(base.hips, matches, [f.hips for f in follows])

    hips_out = []
    for i, bh in enumerate(base.hips):
        name = names[i]
        radius = head_radius(bh)
        c0 = np.asarray(bh["head_centre_ras_mm"], np.float64)
        half = radius + 8.0
        shape, gaff = common_grid(c0, half, params.grid_mm)
        b_img, b_lab, _, b_aff = _hip_crop(base, bh["side"], c0, 2.5 * radius + 10.0)
        b_grid = resample(b_lab, b_aff, gaff, shape, order=0, src_to_dst=None)
        b_les_grid = np.isin(b_grid, LESION_LABELS)
        n_b_les = int(b_les_grid.sum())
        vox_ml = params.grid_mm**3 / 1000.0
        les_native = np.isin(b_lab, LESION_LABELS)
        if n_b_les * vox_ml < params.min_lesion_ml:  # no measurable baseline lesion (healthy hip, specks)
            b_les_grid[:] = False
            les_native[:] = False
            n_b_les = 0
        les_centroid = None
        if les_native.any():
            les_centroid = voxel_to_ras(b_aff, np.argwhere(les_native).mean(axis=0))
        dirs = None
        if les_centroid is not None and np.linalg.norm(les_centroid - c0) > 1.0:
            dirs = _fibonacci_cap(les_centroid - c0, params.collapse_cone_deg)
        b_height = (ray_extent(np.isin(b_lab, HEAD_LABELS), b_aff, c0, dirs, 2.0 * radius)
                    if dirs is not None else float("nan"))
        view_centre = les_centroid if les_centroid is not None else c0
        if views is not None:
            views[name] = [(base.scan.timepoint, base.scan.months,
                            sample_views(base.image, base.labels, base.affine, None, view_centre, 1.8 * radius))]
        b_ref = reference_mask(b_lab, params.reference)
        sir_zone0 = sir_of_mask(b_img, les_native, b_ref)
        tps = [_timepoint_record(base, bh, None, p.patient_id, name, {
            "regenerated_pct": 0.0 if n_b_les else None,
            "regenerated_volume_ml": 0.0 if n_b_les else None,
            "new_necrosis_ml": 0.0,
            "sir_lesion": sir_zone0,
            "sir_baseline_zone": sir_zone0,
            "sir_change": 0.0 if sir_zone0 is not None else None,
            "collapse_mm": 0.0 if math.isfinite(b_height) else None,
            "registration_shift_mm": 0.0,
        }, bh)]
        if n_b_les:
            d_in = ndimage.distance_transform_edt(b_les_grid, sampling=params.grid_mm)
            d_out = ndimage.distance_transform_edt(~b_les_grid, sampling=params.grid_mm)
        else:
            d_in = d_out = None
        for f, m in zip(follows, matches):
            if i not in m:
                warnings.append(f"{f.scan.timepoint}: {name} hip not found")
                continue
            fh = f.hips[m[i]]
            c1 = np.asarray(fh["head_centre_ras_mm"], np.float64)
            tname = f"{p.patient_id}_{name}_{f.scan.timepoint}"
            try:
                if fixed_transforms is not None:
                    T = np.asarray(fixed_transforms[f.scan.timepoint], np.float64)
                    reg = {"source": "given"}
                else:
                    res = register_hip(base.image, base.affine, c0, f.image, f.affine, c1, radius, reg_params)
                    T = res.matrix
                    reg = {"source": "registration", **res.to_json()}
            except (RuntimeError, KeyError) as exc:
                msg = f"{name} hip registration failed: {str(exc).splitlines()[0]}"
                errors.append({"timepoint": f.scan.timepoint, "reason": msg})
                warnings.append(f"{f.scan.timepoint}: {msg}")
                continue
            if write_transforms:
                tjson = {"patient_id": p.patient_id, "hip": name, "timepoint": f.scan.timepoint,
                         "months": f.scan.months, "baseline_timepoint": base.scan.timepoint,
                         "followup_image": f.scan.image.name, "baseline_image": base.scan.image.name,
                         "head_centre_followup_ras_mm": [round(float(v), 3) for v in c1],
                         "head_centre_baseline_ras_mm": [round(float(v), 3) for v in c0], **reg}
                if "matrix_ras" not in tjson:
                    tjson["matrix_ras"] = [[round(float(v), 8) for v in row] for row in T]
                atomic_write_text(out_dir / "transforms" / f"{tname}.json", json.dumps(tjson, indent=1) + "\n")
                if params.write_tfm:
                    write_tfm(out_dir / "transforms" / f"{tname}.tfm", T)
            Tinv = np.linalg.inv(T)
            f_img, f_lab, _, f_aff = _hip_crop(f, fh["side"], c1, 2.5 * radius + 10.0)
            # common grid in baseline space
            f_grid = resample(f_lab, f_aff, gaff, shape, order=0, src_to_dst=T)
            width = boundary_width(params, base.affine, f.affine)
            regen, new_nec = lesion_changes(b_grid, f_grid, d_in, d_out, width)
            # baseline lesion mapped onto the follow-up grid (nearest), inside this scan's head
            zone = resample(les_native.astype(np.uint8), b_aff, f_aff, f_lab.shape, order=0, src_to_dst=Tinv) > 0
            zone &= np.isin(f_lab, HEAD_LABELS)
            f_ref = reference_mask(f_lab, params.reference)
            sir_zone = sir_of_mask(f_img, zone, f_ref)
            sir_les = sir_of_mask(f_img, np.isin(f_lab, LESION_LABELS), f_ref)
            height = (ray_extent(np.isin(f_lab, HEAD_LABELS), f_aff, c0, dirs, 2.0 * radius, to_grid=Tinv)
                      if dirs is not None else float("nan"))
            shift = float(np.linalg.norm(apply(T, c1) - c0))
            if views is not None:
                views[name].append((f.scan.timepoint, f.scan.months,
                                    sample_views(f.image, f.labels, f.affine, T, view_centre, 1.8 * radius)))
            tps.append(_timepoint_record(f, fh, base, p.patient_id, name, {
                "regenerated_pct": 100.0 * regen / n_b_les if n_b_les else None,
                "regenerated_volume_ml": regen * vox_ml if n_b_les else None,
                "boundary_mm": width,
                "new_necrosis_ml": new_nec * vox_ml,
                "sir_lesion": sir_les,
                "sir_baseline_zone": sir_zone,
                "sir_change": (sir_zone - sir_zone0) if (sir_zone is not None and sir_zone0 is not None) else None,
                "collapse_mm": (b_height - height) if math.isfinite(b_height) and math.isfinite(height) else None,
                "registration_shift_mm": shift,
            }, bh, transform=f"transforms/{tname}.json" if write_transforms else None,
                registration=_reg_summary(reg)))
        hips_out.append({"hip": name, "side_in_measurements": bh["side"], "head_radius_mm": round(radius, 3),
                         "baseline_head_centre_ras_mm": [round(float(v), 3) for v in c0],
                         "baseline_lesion_centroid_ras_mm": None if les_centroid is None
                         else [round(float(v), 3) for v in les_centroid],
                         "timepoints": tps})
    scans = [{"timepoint": d.scan.timepoint, "months": d.scan.months, "image": d.scan.image.name,
              "seg": d.scan.seg.name, "measurements": d.scan.measurements.name, "model_version": d.model_version,
              "qc_flags": list((d.scan.meas or {}).get("qc_flags") or []),
              "mean_confidence": (d.scan.meas or {}).get("mean_confidence"),
              "sides_in_measurements": [h["side"] for h in d.hips]} for d in [base, *follows]]
    return {
        "patient_id": p.patient_id,
        "software": TRACK_VERSION,
        "reference": params.reference,
        "baseline": {"timepoint": base.scan.timepoint, "months": base.scan.months},
        "scans": scans,
        "hips": hips_out,
        "visits": p.visits,
        "score_changes": score_changes(p.visits, base.scan.months, max(d.scan.months for d in [base, *follows])),
        "warnings": warnings,
        "errors": errors,
    }


def _reg_summary(reg: dict) -> dict:
    return {k: reg[k] for k in ("source", "metric_value", "iterations", "optimizer_stop") if k in reg}


def _timepoint_record(d: ScanData, hip: dict, base: ScanData | None, pid: str, name: str, extra: dict,
                      base_hip: dict, transform: str | None = None, registration: dict | None = None) -> dict:
    rec: dict = {"timepoint": d.scan.timepoint, "months": d.scan.months, "side_in_measurements": hip["side"]}
    for k in ("head_volume_ml", "lesion_volume_ml", "percent_head_involved", "necrotic_core_volume_ml",
              "band_volume_ml", "sir_necrotic"):
        rec[k] = _num(hip.get(k))
    for k in CATEGORICAL:
        rec[k] = hip.get(k)
    b_les = _num(base_hip.get("lesion_volume_ml"))
    les = rec["lesion_volume_ml"]
    rec["lesion_change_ml"] = None if (les is None or b_les is None) else les - b_les
    rec["lesion_change_pct"] = None if (les is None or not b_les) else 100.0 * (les - b_les) / b_les
    rec.update(extra)
    for k in HIP_METRICS:
        rec[k] = _r(rec.get(k), 4) if rec.get(k) is not None else None
    rec["model_version"] = d.model_version
    rec["qc_flags"] = list((d.scan.meas or {}).get("qc_flags") or [])
    if "trusted" in hip:  # onfh-infer's per-hip QC (infer.gate.measure_gated), shown by the HTML report
        rec["trusted"], rec["hip_qc_flags"] = bool(hip["trusted"]), list(hip.get("qc_flags") or [])
    if transform:
        rec["transform"] = transform
    if registration:
        rec["registration"] = registration
    return rec


# ---------------------------------------------------------------- scores


def _nearest_visit(visits: list[dict], months: float, score: str) -> dict | None:
    cands = [v for v in visits if score in v]
    if not cands:
        return None
    return min(cands, key=lambda v: (abs(v["months"] - months), -v["months"]))


def score_changes(visits: list[dict], base_months: float, last_months: float) -> dict[str, dict]:
    """Per clinical score: value at the visit nearest the baseline scan, at the visit
    nearest the last scan (ties: the later visit), and their difference (last - baseline)."""
    out = {}
    for c in CLINICAL_COLUMNS:
        b = _nearest_visit(visits, base_months, c)
        last = _nearest_visit(visits, last_months, c)
        if b is None or last is None or last is b:
            continue
        out[c] = {"baseline_months": b["months"], "baseline": b[c], "last_months": last["months"],
                  "last": last[c], "change": round(last[c] - b[c], 4)}
    return out


# ---------------------------------------------------------------- cohort outputs


def tidy_rows(record: dict) -> list[dict]:
    """``longitudinal.csv`` rows (patient_id, hip, months, metric, value); scores use hip "patient"."""
    rows = []
    pid = record["patient_id"]
    for h in record["hips"]:
        for tp in h["timepoints"]:
            for k in HIP_METRICS:
                v = tp.get(k)
                if v is not None:
                    rows.append({"patient_id": pid, "hip": h["hip"], "months": tp["months"], "metric": k, "value": v})
    for v in record.get("visits", []):
        for c in CLINICAL_COLUMNS:
            if c in v:
                rows.append({"patient_id": pid, "hip": "patient", "months": v["months"], "metric": c, "value": v[c]})
    return rows


def summary_rows(record: dict) -> list[dict]:
    """Cohort summary rows (one per hip) of one patient record."""
    out = []
    for h in record["hips"]:
        tps = h["timepoints"]
        b, last = tps[0], tps[-1]
        row = {
            "patient_id": record["patient_id"], "hip": h["hip"], "baseline_months": b["months"],
            "last_months": last["months"], "baseline_lesion_ml": b.get("lesion_volume_ml"),
            "last_lesion_ml": last.get("lesion_volume_ml"), "lesion_change_ml": last.get("lesion_change_ml"),
            "lesion_change_pct": last.get("lesion_change_pct"),
            "regenerated_pct": last.get("regenerated_pct"),
            "sir_baseline_zone_baseline": b.get("sir_baseline_zone"),
            "sir_baseline_zone_last": last.get("sir_baseline_zone"), "sir_change": last.get("sir_change"),
            "new_necrosis_ml": last.get("new_necrosis_ml"), "collapse_mm": last.get("collapse_mm"),
        }
        for c, sc in record.get("score_changes", {}).items():
            row[f"{c}_baseline"] = sc["baseline"]
            row[f"{c}_last"] = sc["last"]
            row[f"{c}_change"] = sc["change"]
        out.append(row)
    return out


def spearman(x: Sequence[float | None], y: Sequence[float | None], min_n: int = 3) -> dict:
    """Spearman rank correlation over pairs where both values are finite.

    Returns ``{"n", "rho", "p_value", "note"}``; rho and p are the string
    "n/a" when n < ``min_n`` or when either variable is constant.
    """
    pairs = [(float(a), float(b)) for a, b in zip(x, y)
             if a is not None and b is not None and math.isfinite(float(a)) and math.isfinite(float(b))]
    n = len(pairs)
    if n < min_n:
        return {"n": n, "rho": "n/a", "p_value": "n/a", "note": f"n < {min_n}"}
    xa, ya = np.array(pairs).T
    if np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return {"n": n, "rho": "n/a", "p_value": "n/a", "note": "constant values"}
    from scipy import stats  # slow to import; only needed here

    res = stats.spearmanr(xa, ya)
    return {"n": n, "rho": round(float(res.statistic), 4), "p_value": round(float(res.pvalue), 4), "note": ""}


def correlations(summary: list[dict], min_n: int = 3) -> list[dict]:
    """Spearman of each imaging change (``IMAGING_CHANGE``) with each score change,
    over hips with a baseline lesion (scores are per patient, so both hips of a
    bilateral patient carry the same score change)."""
    hips = [r for r in summary if (r.get("baseline_lesion_ml") or 0) > 0]
    out = []
    for c in CLINICAL_COLUMNS:
        key = f"{c}_change"
        if not any(key in r for r in summary):
            continue
        for m in IMAGING_CHANGE:
            res = spearman([r.get(m) for r in hips], [r.get(key) for r in hips], min_n)
            out.append({"imaging_metric": m, "score_change": key, **res})
    return out


def csv_text(rows: list[dict], columns: Sequence[str]) -> str:
    """CSV text with the given columns (None -> empty)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    return buf.getvalue()


def summary_columns(rows: list[dict]) -> list[str]:
    cols = list(SUMMARY_COLUMNS)
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    return cols


# ---------------------------------------------------------------- onfh-infer stand-in (tests, evaluation)


def write_truth_infer_outputs(manifest_path: str | Path, infer_dir: str | Path, reference: str = "acetabulum",
                              model_version: str = "truth-labels", progress: Callable[[str], None] | None = None) -> Path:
    """Emulate onfh-infer outputs from a synthetic cohort's truth labels.

    For each NIfTI image of the manifest with ``labels`` (one job per image,
    named as onfh-infer names it: ``infer.inputs.expand_input``): copies the
    labels to ``<infer_dir>/<name>_seg.nii.gz`` and writes
    ``<name>_measurements.json`` with the identity onfh-infer records and
    measurements from ``measure.measure_scan`` / ``measure.qc_flags``
    (docs/CONTRACTS.md). Used by the tests and ``scripts/eval_tracking.py``
    to separate tracking errors from segmentation errors.
    """
    from onfh_seg.infer.inputs import expand_input
    from onfh_seg.measure import measure_scan, qc_flags

    infer_dir = Path(infer_dir)
    infer_dir.mkdir(parents=True, exist_ok=True)
    for job in expand_input(Path(manifest_path)):
        if job.kind != "nifti" or job.labels is None or not job.path.is_file():
            continue
        img = load_nifti(job.path)
        image = img.get_fdata(dtype=np.float32)
        labels = np.asarray(load_nifti(job.labels).dataobj).astype(np.uint8)
        hips = measure_scan(image, labels, img.affine, reference)
        meas = {"input": job.image_ref, "input_path": normalised_path(job.path), "input_kind": "nifti",
                "name": job.name, "input_sha256": sha256_file(job.path), "model_version": model_version,
                "status": "ok", "error": None, "qc_flags": qc_flags(image, labels, img.affine, hips),
                "mean_confidence": 1.0, "hips": hips, **job.meta}
        atomic_write_bytes(infer_dir / f"{job.name}{SEG_SUFFIX}", job.labels.read_bytes())
        atomic_write_text(infer_dir / f"{job.name}{MEASUREMENTS_SUFFIX}", json.dumps(meas, indent=1) + "\n")
        if progress:
            progress(job.name)
    return infer_dir


# ---------------------------------------------------------------- cohort run (onfh-track)

ERROR_COLUMNS = ("patient_id", "timepoint", "reason")
HASHED_KEYS = ("reference", "grid_mm", "boundary_mm", "collapse_cone_deg", "hip_match_max_mm", "write_tfm",
               "registration")


@dataclass
class CohortResult:
    """What ``track_cohort`` did."""

    records: dict[str, dict]
    tracked: list[str]
    resumed: list[str]
    failed: dict[str, str]
    errors: list[dict]
    out_dir: Path


def _patient_job(args) -> tuple[str, str, dict | str]:
    """Worker: track one patient, write its transforms, report and JSON (JSON last)."""
    p, cfg, out_dir, digest = args
    out = Path(out_dir)
    try:
        params = TrackParams.from_dict(cfg)
        reg = RegistrationParams.from_dict(cfg.get("registration"))
        views: dict | None = {} if cfg.get("report", True) else None
        record = track_patient(p, out, params, reg, views=views)
        record["input_hash"] = digest
        if views is not None:
            from onfh_seg.report.html import write_report

            write_report(record, views, out / "reports" / f"{p.patient_id}.html")
        atomic_write_text(out / "patients" / f"{p.patient_id}.json", json.dumps(record, indent=1) + "\n")
        return p.patient_id, "ok", record
    except Exception as exc:  # isolate one patient's failure from the others
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if not isinstance(exc, (ValueError, RuntimeError, OSError)):
            msg = f"{type(exc).__name__}: {msg}"
        return p.patient_id, "error", msg


def _resumable(p: PatientInput, out: Path, digest: str, report: bool) -> dict | None:
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
    patients, bad_rows = collect_patients(cfg["manifest"], cfg["infer_dir"])
    if not patients:
        raise ValueError(f"no patients in manifest {cfg['manifest']}")
    out.mkdir(parents=True, exist_ok=True)
    hashed = {k: cfg.get(k) for k in HASHED_KEYS}
    report = bool(cfg.get("report", True))
    records: dict[str, dict] = {}
    resumed, todo = [], []
    for pid, p in patients.items():
        digest = input_hash(p, hashed)
        rec = _resumable(p, out, digest, report) if cfg.get("resume", True) else None
        if rec is not None:
            records[pid] = rec
            resumed.append(pid)
            if progress:
                progress(pid, "unchanged")
        else:
            todo.append((p, dict(cfg), str(out), digest))
    failed: dict[str, str] = {}
    workers = max(1, int(cfg.get("workers", 1)))
    if workers == 1 or len(todo) <= 1:
        results = map(_patient_job, todo)
        pool = None
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
    records = dict(sorted(records.items()))
    errors = [{"patient_id": r["patient_id"], "timepoint": r["timepoint"], "reason": r["reason"]} for r in bad_rows]
    for pid in sorted(set(records) | set(failed)):
        if pid in failed:
            errors.append({"patient_id": pid, "timepoint": "", "reason": failed[pid]})
        else:
            errors += [{"patient_id": pid, **e} for e in records[pid].get("errors", [])]
    atomic_write_text(out / "errors.csv", csv_text(errors, ERROR_COLUMNS))
    if not records:
        raise ValueError(f"no usable patients ({len(failed)} failed); see {out / 'errors.csv'}")
    tidy = [r for rec in records.values() for r in tidy_rows(rec)]
    atomic_write_text(out / "longitudinal.csv", csv_text(tidy, TIDY_COLUMNS))
    summary = [r for rec in records.values() for r in summary_rows(rec)]
    atomic_write_text(out / "cohort_summary.csv", csv_text(summary, summary_columns(summary)))
    corr = correlations(summary, int(cfg.get("min_correlation_n", 3)))
    atomic_write_text(out / "correlations.csv", csv_text(corr, CORRELATION_COLUMNS))
    tracked = [pid for pid in records if pid not in resumed]
    return CohortResult(records, tracked, resumed, failed, errors, out)
