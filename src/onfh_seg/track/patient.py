"""Tracking one patient: every hip registered and measured at every timepoint.

``compute_patient`` computes (writes nothing) and returns the patient's record and the transforms found, in
steps: the scans loaded (``_load_scans``), per hip the baseline prepared (``_baseline_hip``), then each
follow-up registered (``_find_transform``) and measured against it (``_followup_measures``). ``save_transforms``
writes the transforms; ``track_patient`` does both. Scans come from ``track.inputs``, change measures from
``track.changes``.

Per patient, per hip, per timepoint (baseline = the earliest scan):

* ``lesion_volume_ml``, ``percent_head_involved``, ``band_volume_ml``, ``head_volume_ml``, ``sir_necrotic`` as
  measured by onfh-infer, and ``lesion_change_ml`` / ``lesion_change_pct`` against baseline.
* Registration (``track.register``): each follow-up is registered rigidly to the baseline per hip;
  ``registration_shift_mm`` is how far the head centre moved from the head-centre initialisation (a QC number).
* On a common grid in baseline space (RAS-aligned, ``grid_mm`` isotropic, head radius + 8 mm around the
  baseline head centre), both label maps sampled nearest-neighbour (the follow-up through its transform), see
  ``lesion_changes``:
  - ``regenerated_pct``: share (%) of the baseline lesion (2+3) that is viable head (1) now;
    ``regenerated_volume_ml`` the same in mL.
  - ``new_necrosis_ml``: current lesion (2+3) where the baseline had viable head (1), i.e. outside the
    baseline zone.
  Within a shell of ``boundary_width`` mm at the baseline lesion border only the net change counts (voxel-size
  and registration noise move the border both ways), so a stable lesion reads ~0 for both.
* On the follow-up's own grid: ``sir_baseline_zone`` = mean T1 inside the baseline lesion mapped to this scan
  (and inside this scan's head) divided by the mean over the SIR reference of this hip in this scan
  (``measure.reference_mask``: eroded acetabulum by default); ``sir_lesion`` the same over the current lesion
  (2+3); ``sir_change`` = ``sir_baseline_zone`` - its baseline value (a rise means the zone's signal moves
  towards marrow).
* ``head_height_loss_mm`` (collapse indicator): loss of head height along the baseline lesion direction vs
  baseline. From the baseline head centre, rays within ``collapse_cone_deg`` of the direction to the baseline
  lesion centroid are cast through the head masks (trilinear, 0.5 crossing); the median ray length at baseline
  minus at this timepoint. Positive = the dome flattened. NaN without a baseline lesion. Its noise is about a
  third of the slice spacing.

Clinical scores are joined by patient and months (``score_changes``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from onfh_seg.geometry import apply, centred_grid, resample, voxel_spacing, voxel_to_ras
from onfh_seg.errors import first_line
from onfh_seg.io.manifest import CLINICAL_COLUMNS
from onfh_seg.io.files import atomic_write_text
from onfh_seg.labels import HEAD_LABELS, LESION_LABELS
from onfh_seg.measure import reference_mask, sir_of_mask
from onfh_seg.report.views import sample_views
from onfh_seg.track.changes import (
    boundary_width,
    fibonacci_cap,
    hip_crop,
    hip_names,
    lesion_changes,
    match_hips,
    ray_extent,
)
from onfh_seg.track.inputs import PatientInput, ScanData, head_radius, load_scan
from onfh_seg.track.params import CATEGORICAL, HIP_METRICS, TRACK_VERSION, TrackParams, num, rounded
from onfh_seg.track.register import RegistrationParams, register_hip, write_tfm


@dataclass
class FoundTransform:
    """One follow-up -> baseline transform of a hip, as ``save_transforms`` writes it."""

    name: str  # <pid>_<hip>_<timepoint>
    record: dict  # the transforms/<name>.json body
    matrix: np.ndarray  # follow-up -> baseline RAS 4x4


def compute_patient(
    p: PatientInput,
    params: TrackParams | None = None,
    reg_params: RegistrationParams | None = None,
    fixed_transforms: Mapping[str, np.ndarray] | None = None,
    transform_refs: bool = True,
    views: dict | None = None,
) -> tuple[dict, list[FoundTransform]]:
    """Register and measure one patient; returns its record (the patient JSON body) and its transforms.

    Writes nothing. ``fixed_transforms`` (timepoint -> follow-up -> baseline RAS matrix) skips registration and
    uses the given matrices for every hip (evaluation with the generator's true transforms). With
    ``transform_refs`` each follow-up record names its ``transforms/<pid>_<hip>_<timepoint>.json`` (to be written
    by ``save_transforms``). If ``views`` is a dict, it is filled with hip name -> list of ``(timepoint, months,
    report.views.sample_views(...))`` display planes through the baseline lesion centroid (else the head
    centre), every timepoint resampled into baseline space. Raises ``ValueError`` if the baseline scan is
    unusable.
    """
    params = params or TrackParams.from_dict()
    reg_params = reg_params or RegistrationParams.from_dict()
    base, follows, errors, warnings = _load_scans(p)
    matches = [match_hips(base.hips, f.hips, params.hip_match_max_mm) for f in follows]
    names = hip_names(base.hips, matches, [f.hips for f in follows])
    hips_out: list[dict] = []
    found: list[FoundTransform] = []
    for i, bh in enumerate(base.hips):
        b = _baseline_hip(base, bh, names[i], params)
        pairs = [(f, f.hips[m[i]] if i in m else None) for f, m in zip(follows, matches)]
        hip = _track_hip(p.patient_id, base, b, pairs, params, reg_params, fixed_transforms, transform_refs,
                         draw=views is not None)
        hips_out.append(hip.record)
        found += hip.transforms
        errors += hip.errors
        warnings += hip.warnings
        if views is not None:
            views[b.name] = hip.views
    last_months = max(d.scan.months for d in [base, *follows])
    record = {"patient_id": p.patient_id, "software": TRACK_VERSION, "reference": params.reference,
              "baseline": {"timepoint": base.scan.timepoint, "months": base.scan.months},
              "scans": [_scan_record(d) for d in [base, *follows]], "hips": hips_out, "visits": p.visits,
              "score_changes": score_changes(p.visits, base.scan.months, last_months),
              "warnings": warnings, "errors": errors}
    return record, found


def _load_scans(p: PatientInput) -> tuple[ScanData, list[ScanData], list[dict], list[str]]:
    """The baseline and the readable follow-ups of ``p``, with the errors and warnings so far (unusable and
    unreadable scans). Raises ``ValueError`` when there is no scan or the baseline is unusable."""
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
            msg = first_line(exc)
            errors.append({"timepoint": s.timepoint, "reason": msg})
            warnings.append(f"{s.timepoint}: {msg}")
    return base, follows, errors, warnings


@dataclass
class BaselineHip:
    """One hip at baseline: what every follow-up of it is compared with."""

    name: str
    hip: dict  # its entry in the baseline measurements
    radius: float  # head radius (mm)
    centre: np.ndarray  # head centre (RAS mm)
    grid_shape: tuple  # the common grid in baseline space (head radius + 8 mm around the centre)
    grid_affine: np.ndarray
    image: np.ndarray  # the baseline crop around the hip
    labels: np.ndarray
    affine: np.ndarray
    grid_labels: np.ndarray  # labels on the common grid
    n_lesion: int  # lesion (2+3) voxels on the common grid; 0 below params.min_lesion_ml
    lesion: np.ndarray  # lesion mask on the crop (empty below params.min_lesion_ml)
    dist_in: np.ndarray | None  # distance (mm) inside / outside the grid lesion; None without a lesion
    dist_out: np.ndarray | None
    lesion_centroid: np.ndarray | None  # RAS mm
    rays: np.ndarray | None  # collapse-cone directions towards the lesion centroid
    height: float  # median head extent along the rays (NaN without rays)
    sir_zone: float | None  # SIR of the baseline lesion
    view_centre: np.ndarray  # where the display planes cross: the lesion centroid, else the head centre


def _baseline_hip(base: ScanData, bh: dict, name: str, params: TrackParams) -> BaselineHip:
    """The baseline crop of hip ``bh``, its labels on the common grid, its lesion, collapse rays and SIR."""
    radius = head_radius(bh)
    c0 = np.asarray(bh["head_centre_ras_mm"], np.float64)
    shape, gaff = centred_grid(c0, radius + 8.0, params.grid_mm)
    img, lab, _, aff = hip_crop(base, bh["side"], c0, 2.5 * radius + 10.0)
    grid = resample(lab, aff, gaff, shape, order=0, src_to_dst=None)
    les_grid = np.isin(grid, LESION_LABELS)
    n_les = int(les_grid.sum())
    les = np.isin(lab, LESION_LABELS)
    if n_les * (params.grid_mm**3 / 1000.0) < params.min_lesion_ml:  # no measurable lesion (healthy hip, specks)
        les_grid[:] = False
        les[:] = False
        n_les = 0
    centroid = voxel_to_ras(aff, np.argwhere(les).mean(axis=0)) if les.any() else None
    rays = None
    if centroid is not None and np.linalg.norm(centroid - c0) > 1.0:
        rays = fibonacci_cap(centroid - c0, params.collapse_cone_deg)
    height = ray_extent(np.isin(lab, HEAD_LABELS), aff, c0, rays, 2.0 * radius) if rays is not None else float("nan")
    dist_in = ndimage.distance_transform_edt(les_grid, sampling=params.grid_mm) if n_les else None
    dist_out = ndimage.distance_transform_edt(~les_grid, sampling=params.grid_mm) if n_les else None
    return BaselineHip(name, bh, radius, c0, shape, gaff, img, lab, aff, grid, n_les, les, dist_in, dist_out,
                       centroid, rays, height, sir_of_mask(img, les, reference_mask(lab, params.reference)),
                       centroid if centroid is not None else c0)


@dataclass
class HipOutcome:
    """One hip tracked over every follow-up."""

    record: dict  # its entry in the patient record's ``hips``
    transforms: list[FoundTransform]
    views: list[tuple]  # (timepoint, months, display planes) when drawn
    errors: list[dict]
    warnings: list[str]


def _track_hip(pid: str, base: ScanData, b: BaselineHip, pairs: list[tuple[ScanData, dict | None]],
               params: TrackParams, reg_params: RegistrationParams,
               fixed_transforms: Mapping[str, np.ndarray] | None, transform_refs: bool, draw: bool) -> HipOutcome:
    """Baseline hip ``b`` registered to and measured at each follow-up of ``pairs`` (the scan and its
    matching hip, None where the hip was not found)."""
    out = HipOutcome({}, [], [], [], [])
    if draw:
        out.views.append((base.scan.timepoint, base.scan.months,
                          sample_views(base.image, base.labels, base.affine, None, b.view_centre, 1.8 * b.radius)))
    tps = [_baseline_record(pid, base, b)]
    for f, fh in pairs:
        if fh is None:
            out.warnings.append(f"{f.scan.timepoint}: {b.name} hip not found")
            continue
        c1 = np.asarray(fh["head_centre_ras_mm"], np.float64)
        try:
            T, reg = _find_transform(base, b, f, c1, fixed_transforms, reg_params)
        except (RuntimeError, KeyError) as exc:
            msg = f"{b.name} hip registration failed: {str(exc).splitlines()[0]}"
            out.errors.append({"timepoint": f.scan.timepoint, "reason": msg})
            out.warnings.append(f"{f.scan.timepoint}: {msg}")
            continue
        tname = f"{pid}_{b.name}_{f.scan.timepoint}"
        out.transforms.append(FoundTransform(tname, _transform_record(pid, base, b, f, c1, T, reg), T))
        measures = _followup_measures(base, b, f, fh, c1, T, params)
        if draw:
            out.views.append((f.scan.timepoint, f.scan.months,
                              sample_views(f.image, f.labels, f.affine, T, b.view_centre, 1.8 * b.radius)))
        tps.append(_timepoint_record(f, fh, base, pid, b.name, measures, b.hip,
                                     transform=f"transforms/{tname}.json" if transform_refs else None,
                                     registration=_reg_summary(reg)))
    out.record = {"hip": b.name, "side_in_measurements": b.hip["side"], "head_radius_mm": round(b.radius, 3),
                  "baseline_head_centre_ras_mm": [round(float(v), 3) for v in b.centre],
                  "baseline_lesion_centroid_ras_mm": None if b.lesion_centroid is None
                  else [round(float(v), 3) for v in b.lesion_centroid],
                  "timepoints": tps}
    return out


def _baseline_record(pid: str, base: ScanData, b: BaselineHip) -> dict:
    """The baseline timepoint of hip ``b``: changes zero by definition (None where undefined)."""
    zero = 0.0 if b.n_lesion else None
    return _timepoint_record(base, b.hip, None, pid, b.name, {
        "regenerated_pct": zero, "regenerated_volume_ml": zero, "new_necrosis_ml": 0.0, "sir_lesion": b.sir_zone,
        "sir_baseline_zone": b.sir_zone, "sir_change": 0.0 if b.sir_zone is not None else None,
        "head_height_loss_mm": 0.0 if math.isfinite(b.height) else None, "registration_shift_mm": 0.0}, b.hip)


def _find_transform(base: ScanData, b: BaselineHip, f: ScanData, c1: np.ndarray,
                    fixed_transforms: Mapping[str, np.ndarray] | None,
                    reg_params: RegistrationParams) -> tuple[np.ndarray, dict]:
    """Follow-up -> baseline RAS matrix of hip ``b`` (given, or registered) and what to record of how it was
    found. Raises ``RuntimeError`` (registration) or ``KeyError`` (no given matrix for the timepoint)."""
    if fixed_transforms is not None:
        return np.asarray(fixed_transforms[f.scan.timepoint], np.float64), {"source": "given"}
    res = register_hip(base.image, base.affine, b.centre, f.image, f.affine, c1, b.radius, reg_params)
    return res.matrix, {"source": "registration", **res.to_json()}


def _transform_record(pid: str, base: ScanData, b: BaselineHip, f: ScanData, c1: np.ndarray, T: np.ndarray,
                      reg: dict) -> dict:
    """The ``transforms/<pid>_<hip>_<timepoint>.json`` body."""
    tjson = {"patient_id": pid, "hip": b.name, "timepoint": f.scan.timepoint, "months": f.scan.months,
             "baseline_timepoint": base.scan.timepoint,
             "followup_image": f.scan.image.name, "baseline_image": base.scan.image.name,
             "head_centre_followup_ras_mm": [round(float(v), 3) for v in c1],
             "head_centre_baseline_ras_mm": [round(float(v), 3) for v in b.centre], **reg}
    if "matrix_ras" not in tjson:
        tjson["matrix_ras"] = [[round(float(v), 8) for v in row] for row in T]
    return tjson


def _followup_measures(base: ScanData, b: BaselineHip, f: ScanData, fh: dict, c1: np.ndarray, T: np.ndarray,
                       params: TrackParams) -> dict:
    """Changes of hip ``b`` at follow-up ``f`` (its hip ``fh``, centre ``c1``, follow-up -> baseline ``T``):
    regeneration and new necrosis on the common grid, SIR of the baseline zone, head height loss, shift."""
    vox_ml = params.grid_mm**3 / 1000.0
    Tinv = np.linalg.inv(T)
    f_img, f_lab, _, f_aff = hip_crop(f, fh["side"], c1, 2.5 * b.radius + 10.0)
    f_grid = resample(f_lab, f_aff, b.grid_affine, b.grid_shape, order=0, src_to_dst=T)  # common grid
    width = boundary_width(params, base.affine, f.affine)
    regen, new_nec = lesion_changes(b.grid_labels, f_grid, b.dist_in, b.dist_out, width)
    # baseline lesion mapped onto the follow-up grid (nearest), inside this scan's head
    zone = resample(b.lesion.astype(np.uint8), b.affine, f_aff, f_lab.shape, order=0, src_to_dst=Tinv) > 0
    zone &= np.isin(f_lab, HEAD_LABELS)
    f_ref = reference_mask(f_lab, params.reference)
    sir_zone = sir_of_mask(f_img, zone, f_ref)
    sir_les = sir_of_mask(f_img, np.isin(f_lab, LESION_LABELS), f_ref)
    height = (ray_extent(np.isin(f_lab, HEAD_LABELS), f_aff, b.centre, b.rays, 2.0 * b.radius, to_grid=Tinv)
              if b.rays is not None else float("nan"))
    return {
        "regenerated_pct": 100.0 * regen / b.n_lesion if b.n_lesion else None,
        "regenerated_volume_ml": regen * vox_ml if b.n_lesion else None,
        "boundary_mm": width,
        "new_necrosis_ml": new_nec * vox_ml,
        "sir_lesion": sir_les,
        "sir_baseline_zone": sir_zone,
        "sir_change": (sir_zone - b.sir_zone) if (sir_zone is not None and b.sir_zone is not None) else None,
        "head_height_loss_mm": (b.height - height) if math.isfinite(b.height) and math.isfinite(height) else None,
        "registration_shift_mm": float(np.linalg.norm(apply(T, c1) - b.centre)),
    }


def _scan_record(d: ScanData) -> dict:
    """One scan in the patient record's ``scans``."""
    meas = d.scan.meas or {}
    return {"timepoint": d.scan.timepoint, "months": d.scan.months, "image": d.scan.image.name,
            "seg": d.scan.seg.name, "measurements": d.scan.measurements.name, "model_version": d.model_version,
            "qc_flags": list(meas.get("qc_flags") or []), "mean_confidence": meas.get("mean_confidence"),
            "voxel_size_mm": [round(float(v), 4) for v in voxel_spacing(d.affine)],
            "sides_in_measurements": [h["side"] for h in d.hips]}


def save_transforms(out_dir: str | Path, found: list[FoundTransform], tfm: bool = False) -> None:
    """Write each transform to ``out_dir/transforms/<name>.json`` (and an ITK ``.tfm`` with ``tfm``)."""
    for t in found:
        atomic_write_text(Path(out_dir) / "transforms" / f"{t.name}.json", json.dumps(t.record, indent=1) + "\n")
        if tfm:
            write_tfm(Path(out_dir) / "transforms" / f"{t.name}.tfm", t.matrix)


def track_patient(
    p: PatientInput,
    out_dir: str | Path,
    params: TrackParams | None = None,
    reg_params: RegistrationParams | None = None,
    fixed_transforms: Mapping[str, np.ndarray] | None = None,
    write_transforms: bool = True,
    views: dict | None = None,
) -> dict:
    """``compute_patient``, then its transforms saved under ``out_dir`` when ``write_transforms``; returns the record."""
    params = params or TrackParams.from_dict()
    record, found = compute_patient(p, params, reg_params, fixed_transforms, transform_refs=write_transforms,
                                    views=views)
    if write_transforms:
        save_transforms(out_dir, found, params.write_tfm)
    return record


def _reg_summary(reg: dict) -> dict:
    return {k: reg[k] for k in ("source", "metric_value", "iterations", "optimizer_stop") if k in reg}


def _timepoint_record(d: ScanData, hip: dict, base: ScanData | None, pid: str, name: str, extra: dict,
                      base_hip: dict, transform: str | None = None, registration: dict | None = None) -> dict:
    rec: dict = {"timepoint": d.scan.timepoint, "months": d.scan.months, "side_in_measurements": hip["side"]}
    for k in ("head_volume_ml", "lesion_volume_ml", "percent_head_involved", "necrotic_core_volume_ml",
              "band_volume_ml", "sir_necrotic"):
        rec[k] = num(hip.get(k))
    for k in CATEGORICAL:
        rec[k] = hip.get(k)
    b_les = num(base_hip.get("lesion_volume_ml"))
    les = rec["lesion_volume_ml"]
    rec["lesion_change_ml"] = None if (les is None or b_les is None) else les - b_les
    rec["lesion_change_pct"] = None if (les is None or not b_les) else 100.0 * (les - b_les) / b_les
    rec.update(extra)
    for k in HIP_METRICS:
        rec[k] = rounded(rec.get(k), 4) if rec.get(k) is not None else None
    rec["model_version"] = d.model_version
    rec["qc_flags"] = list((d.scan.meas or {}).get("qc_flags") or [])
    if "trusted" in hip:  # onfh-infer's per-hip QC (infer.gate.measure_gated), shown by the HTML report
        rec["trusted"], rec["hip_qc_flags"] = bool(hip["trusted"]), list(hip.get("qc_flags") or [])
    if transform:
        rec["transform"] = transform
    if registration:
        rec["registration"] = registration
    return rec


# ---------------------------------------------------------------- clinical scores


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
