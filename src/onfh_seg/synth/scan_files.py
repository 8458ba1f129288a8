"""One synthetic scan's files: image, labels, regenerated mask, truth JSON and its manifest row.

The layout every renderer shares (``cohort``, ``style_b``, ``style_c``)::

    images/<pid>_<tp>.nii.gz        T1 image, int16 scanner units
    labels/<pid>_<tp>.nii.gz        label map, uint8, same grid
    regenerated/<pid>_<tp>.nii.gz   necrotic at baseline and viable now (uint8)
    truth/<pid>_<tp>.json           ground-truth record

``merge_scores`` attaches a patient's clinical scores to its scan rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from onfh_seg import labels as L
from onfh_seg.io.files import atomic_write_text
from onfh_seg.io.nifti import save_nifti
from onfh_seg.synth.patient import Patient, hip_state
from onfh_seg.synth.plan import PatientPlan


def volume_record(head_ml: float, core_ml: float, band_ml: float, regen_ml: float) -> dict[str, float]:
    """A hip's continuous ground-truth volumes (mL) and extent (% of head), as the truth JSON stores them."""
    return {
        "head_volume_ml": round(float(head_ml), 4),
        "lesion_volume_ml": round(float(core_ml + band_ml), 4),
        "necrotic_core_volume_ml": round(float(core_ml), 4),
        "band_volume_ml": round(float(band_ml), 4),
        "regenerated_volume_ml": round(float(regen_ml), 4),
        "extent_percent": round(float(100 * (core_ml + band_ml) / head_ml), 3) if head_ml else 0.0,
    }


def hip_truth_records(pat: Patient, m: float, pose: np.ndarray, centres: dict[str, np.ndarray], fine: dict[str, dict],
                      base_lesion_ml: dict[str, float], scan_vols: dict[str, dict]) -> list[dict]:
    """The ``hips`` entries of a scan's truth JSON (both generator styles)."""
    hips = []
    for side, h in pat.hips.items():
        st = hip_state(h, m)
        rec = {
            "side": side,
            "head_centre_ras_mm": [round(float(v), 4) for v in centres[side]],
            "head_radius_mm": round(h.radius, 3),
            "stage": h.stage,
            "mitchell": h.mitchell,
            "response": h.response if h.diseased else "none",
            "edema": bool(st.edema > 0),
            "collapse_mm": round(st.collapse_mm, 3),
            **fine[side],
            "regenerated_fraction": round(fine[side]["regenerated_volume_ml"] / base_lesion_ml[side], 4)
            if base_lesion_ml.get(side) else 0.0,
            "scan_label_volumes_ml": scan_vols.get(side, {}),
        }
        if h.diseased:
            dome = pose[:3, :3] @ h.dome + pose[:3, 3]
            rec["dome_point_ras_mm"] = [round(float(v), 4) for v in dome]
        hips.append(rec)
    return hips


def _scan_label_volumes(lab: np.ndarray, affine: np.ndarray, centres_world: dict[str, np.ndarray]) -> dict[str, dict]:
    """Label volumes on the scan grid, voxels split to the nearest head centre."""
    vox_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
    idx = np.argwhere(lab > 0)
    vals = lab[lab > 0]
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    sides = list(centres_world)
    d = np.stack([np.linalg.norm(world - centres_world[s], axis=1) for s in sides], axis=1)
    nearest = np.argmin(d, axis=1) if len(sides) else np.zeros(0, int)
    out = {}
    for i, s in enumerate(sides):
        v = vals[nearest == i]
        out[s] = {name: round(float((v == k).sum() * vox_ml), 4) for k, name in L.LABELS.items() if k}
    return out


def acquisition_record(geom, bias_amplitude: float, **extra) -> dict:
    """The truth JSON's ``acquisition`` block from a scan geometry (either renderer's), rounded; ``extra`` appended."""
    return {
        "orientation": geom.orientation, "fov": geom.fov_kind, "shape": list(geom.shape),
        "inplane_mm": round(geom.inplane_mm, 4), "slice_thickness_mm": round(geom.slice_mm, 4),
        "slice_gap_mm": round(geom.gap_mm, 4), "snr": round(geom.snr, 3),
        "bias_amplitude": round(bias_amplitude, 4), "intensity_scale": round(geom.scale, 3), **extra,
    }


def write_scan(out_dir: Path, plan: PatientPlan, name: str, tp: str, months: float, pose: np.ndarray,
               affine: np.ndarray, arrays: tuple[np.ndarray, np.ndarray, np.ndarray], fine: dict,
               base_lesion_ml: dict, acquisition: dict, top: dict | None = None) -> dict:
    """Write one scan's image (int16), labels, regenerated mask and truth JSON (the layout every
    renderer shares); ``top`` adds keys after ``synthetic`` (e.g. ``style``). Returns its manifest row."""
    pat = plan.patient
    img, lab, rg = arrays
    save_nifti(img, affine, out_dir / "images" / f"{name}.nii.gz", np.int16)
    save_nifti(lab, affine, out_dir / "labels" / f"{name}.nii.gz", np.uint8)
    save_nifti(rg, affine, out_dir / "regenerated" / f"{name}.nii.gz", np.uint8)
    centres = {s: pose[:3, :3] @ h.centre + pose[:3, 3] for s, h in pat.hips.items()}
    scan_vols = _scan_label_volumes(lab, affine, centres)
    to_base = plan.poses[0] @ np.linalg.inv(pose)
    hips = hip_truth_records(pat, months, pose, centres, fine, base_lesion_ml, scan_vols)
    truth = {
        "patient_id": pat.patient_id,
        "timepoint": tp,
        "months": months,
        "synthetic": True,
        **(top or {}),
        "acquisition": acquisition,
        "affine": np.round(affine, 6).tolist(),
        "transform_to_baseline": np.round(to_base, 8).tolist(),
        "transform_note": "4x4, maps this scan's world RAS mm onto the baseline scan's world RAS mm",
        "hips": hips,
    }
    atomic_write_text(out_dir / "truth" / f"{name}.json", json.dumps(truth, indent=1))
    return {
        "patient_id": pat.patient_id, "timepoint": tp, "months": months,
        "image": f"images/{name}.nii.gz", "labels": f"labels/{name}.nii.gz",
        "regenerated": f"regenerated/{name}.nii.gz", "truth": f"truth/{name}.json",
        "age": plan.age, "sex": plan.sex, "orientation": acquisition["orientation"],
        "affected_sides": ";".join(s for s, h in pat.hips.items() if h.diseased),
    }


def merge_scores(rows: list[dict], plan: PatientPlan) -> list[dict]:
    """Attach clinical scores to scan rows of the same month; add visit-only rows."""
    by_m: dict[float, dict] = {}
    for r in rows:  # the first scan of a month (a same-day retest does not take the visit's scores)
        by_m.setdefault(float(r["months"]), r)
    for m, sc in plan.scores.items():
        if m in by_m:
            by_m[m].update(sc)
        else:
            rows.append({"patient_id": plan.patient.patient_id, "timepoint": f"m{int(round(m)):02d}", "months": m,
                         "image": "", "age": plan.age, "sex": plan.sex, **sc})
    rows.sort(key=lambda r: float(r["months"]))
    return rows
