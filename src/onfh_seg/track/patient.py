"""Tracking one patient: every hip registered and measured at every timepoint.

``compute_patient`` computes (writes nothing) and returns the patient's record
and the transforms found; ``save_transforms`` writes them; ``track_patient``
does both. Scans come from ``track.inputs``, change measures from
``track.changes``.

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
* ``head_height_loss_mm`` (collapse indicator): loss of head height along the baseline
  lesion direction vs baseline. From the baseline head centre, rays within
  ``collapse_cone_deg`` of the direction to the baseline lesion centroid are
  cast through the head masks (trilinear, 0.5 crossing); the median ray length
  at baseline minus at this timepoint. Positive = the dome flattened. NaN
  without a baseline lesion. Its noise is about a third of the slice spacing.

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
from onfh_seg.io.manifest import CLINICAL_COLUMNS
from onfh_seg.io.nifti import atomic_write_text
from onfh_seg.labels import HEAD_LABELS, LESION_LABELS
from onfh_seg.measure import reference_mask, sir_of_mask
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

    Writes nothing. ``fixed_transforms`` (timepoint -> follow-up -> baseline RAS
    matrix) skips registration and uses the given matrices for every hip
    (evaluation with the generator's true transforms). With ``transform_refs``
    each follow-up record names its ``transforms/<pid>_<hip>_<timepoint>.json``
    (to be written by ``save_transforms``). If ``views`` is a dict, it is filled with hip name -> list of
    ``(timepoint, months, report.views.sample_views(...))`` display planes
    through the baseline lesion centroid (else the head centre), every
    timepoint resampled into baseline space. Raises ``ValueError`` if the
    baseline scan is unusable.
    """
    params = params or TrackParams.from_dict()
    reg_params = reg_params or RegistrationParams.from_dict()
    found: list[FoundTransform] = []
    if views is not None:
        from onfh_seg.report.views import sample_views
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
        shape, gaff = centred_grid(c0, half, params.grid_mm)
        b_img, b_lab, _, b_aff = hip_crop(base, bh["side"], c0, 2.5 * radius + 10.0)
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
            dirs = fibonacci_cap(les_centroid - c0, params.collapse_cone_deg)
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
            "head_height_loss_mm": 0.0 if math.isfinite(b_height) else None,
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
            tjson = {"patient_id": p.patient_id, "hip": name, "timepoint": f.scan.timepoint,
                     "months": f.scan.months, "baseline_timepoint": base.scan.timepoint,
                     "followup_image": f.scan.image.name, "baseline_image": base.scan.image.name,
                     "head_centre_followup_ras_mm": [round(float(v), 3) for v in c1],
                     "head_centre_baseline_ras_mm": [round(float(v), 3) for v in c0], **reg}
            if "matrix_ras" not in tjson:
                tjson["matrix_ras"] = [[round(float(v), 8) for v in row] for row in T]
            found.append(FoundTransform(tname, tjson, T))
            Tinv = np.linalg.inv(T)
            f_img, f_lab, _, f_aff = hip_crop(f, fh["side"], c1, 2.5 * radius + 10.0)
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
                "head_height_loss_mm": (b_height - height) if math.isfinite(b_height) and math.isfinite(height) else None,
                "registration_shift_mm": shift,
            }, bh, transform=f"transforms/{tname}.json" if transform_refs else None,
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
              "voxel_size_mm": [round(float(v), 4) for v in voxel_spacing(d.affine)],
              "sides_in_measurements": [h["side"] for h in d.hips]} for d in [base, *follows]]
    record = {
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
    return record, found


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
