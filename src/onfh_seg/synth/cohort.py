"""Synthetic longitudinal cohorts: patients, disease course, scans, files, manifest.

Layout written under ``out_dir`` (nnU-Net-like)::

    images/<pid>_m<MM>.nii.gz        T1 image, int16 scanner units
    labels/<pid>_m<MM>.nii.gz        label map, uint8, same grid
    regenerated/<pid>_m<MM>.nii.gz   necrotic at baseline and viable now (uint8)
    truth/<pid>_m<MM>.json           ground-truth record
    manifest.csv                     one row per scan or clinic visit
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from onfh_seg import labels as L
from onfh_seg.io.manifest import write_manifest
from onfh_seg.io.nifti import atomic_write_text, save_nifti
from onfh_seg.synth.acquisition import FINE_MM, ScanGeometry, acquire, pose_matrix, render_grids, scan_affine
from onfh_seg.synth.phantom import Patient, add_disease, calibrate_lesion, hip_state, sample_patient

# Case report (shared/reference), Tables 1 and 2: pre-injection (0), 3, 6, 12 months.
DEMO_SCORES = {
    "P01": {
        "functional_rating_index": [15, 8, 7, 7],
        "vas_walking": [9, 3, 2, 2],
        "harris_hip_score": [27, 71, 71, 71],
        "rom_flexion_deg": [100, 120, 120, 120],
        "rom_flexion_vas": [9, 2, 1, 1],
        "rom_abduction_deg": [20, 30, 30, 30],
        "rom_abduction_vas": [8, 2, 2, 2],
        "rom_adduction_deg": [15, 20, 20, 20],
        "rom_adduction_vas": [9, 2, 1, 1],
    },
    "P02": {
        "functional_rating_index": [15, 8, 7, 7],
        "vas_walking": [8, 2, 2, 2],
        "harris_hip_score": [50, 96, 96, 96],
        "rom_flexion_deg": [110, 125, 125, 125],
        "rom_flexion_vas": [8, 1, 1, 1],
        "rom_abduction_deg": [30, 40, 40, 40],
        "rom_abduction_vas": [6, 1, 1, 1],
        "rom_adduction_deg": [20, 25, 25, 25],
        "rom_adduction_vas": [9, 2, 1, 1],
    },
}
DEMO_SCORE_MONTHS = [0, 3, 6, 12]


@dataclass
class PatientPlan:
    """Everything sampled for one patient before any rendering."""

    patient: Patient
    months: list[float]
    poses: list[np.ndarray]
    geoms: list[ScanGeometry]
    age: int
    sex: str
    scores: dict[float, dict[str, float]]
    timepoints: list[str] = field(default_factory=list)  # labels; empty: m<months> for every scan


RETEST_SUFFIX = "_retest"  # timepoint label suffix of a same-day repeat scan (test-retest pair)


def timepoint_labels(plan: PatientPlan) -> list[str]:
    """Timepoint label of every scan of a plan (``m00``, ``m03``, ..., ``m00_retest``)."""
    return plan.timepoints or [f"m{int(round(m)):02d}" for m in plan.months]


def add_retest(plan: PatientPlan, cfg: dict, index: int) -> None:
    """Append a same-day repeat of the baseline scan: same patient and disease state, same protocol
    (orientation, field of view, resolution), a new position in the scanner (so a new plane through the
    anatomy and new slice positions) and new noise. Its own random stream: the other scans stay as they are."""
    rng = np.random.default_rng([int(cfg["seed"]), 0x7E57, index])
    acq, g0 = cfg["acquisition"], plan.geoms[0]
    diseased = [s for s, h in plan.patient.hips.items() if h.diseased]
    pose = pose_matrix(rng, acq["rotation_deg"], acq["translation_mm"]) @ plan.poses[0]
    geom = sample_geometry(rng, acq, plan.patient, g0.orientation, g0.fov_kind, diseased[0] if diseased else "right",
                           pose, g0.inplane_mm, g0.slice_mm, g0.gap_mm)
    labels = timepoint_labels(plan)
    plan.months.append(plan.months[0])
    plan.poses.append(pose)
    plan.geoms.append(geom)
    plan.timepoints = labels + [labels[0] + RETEST_SUFFIX]


def _choice(rng: np.random.Generator, probs: dict) -> str:
    keys = list(probs)
    p = np.array([float(probs[k]) for k in keys])
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _u(rng: np.random.Generator, lo_hi) -> float:
    lo, hi = lo_hi
    return float(rng.uniform(lo, hi))


def sample_geometry(rng: np.random.Generator, acq: dict, pat: Patient, orientation: str, fov_kind: str,
                    side: str, pose: np.ndarray, inplane: float, slice_mm: float, gap: float) -> ScanGeometry:
    """Scan grid for one visit, centred on the (posed) pelvis or hip."""
    if fov_kind == "hip":
        target = pat.hips[side].centre
        fov = _u(rng, (180, 220))
        coverage = _u(rng, (95, 115))
    else:
        target = np.array([0.0, np.mean([h.centre[1] for h in pat.hips.values()]), -12.0])
        fov = float(np.clip(2 * pat.body_axes[0] + 40, 340, 440))
        coverage = {"axial": 165.0, "coronal": 135.0, "sagittal": 250.0}[orientation]
    matrix = int(min(round(fov / inplane), int(acq["max_matrix"])))
    inplane = fov / matrix
    step = slice_mm + gap
    nsl = int(np.ceil(coverage / step))
    centre = pose[:3, :3] @ target + pose[:3, 3] + rng.uniform(-8, 8, size=3)
    shape = (matrix, matrix, nsl)
    aff = scan_affine(orientation, shape, (inplane, inplane, step), centre)
    return ScanGeometry(
        orientation=orientation, fov_kind=fov_kind, shape=shape, affine=aff, inplane_mm=inplane,
        slice_mm=slice_mm, gap_mm=gap, snr=_u(rng, acq["snr"]), bias_amplitude=float(acq["bias"]) * rng.uniform(0.3, 1.0),
        scale=float(np.exp(rng.uniform(np.log(200), np.log(3000)))),
    )


def plan_patient(index: int, cfg: dict) -> PatientPlan:
    """Sample one random patient (independent of cohort size: seeded by (seed, index))."""
    rng = np.random.default_rng([int(cfg["seed"]), index])
    pid = f"P{index + 1:03d}"
    pat = sample_patient(rng, pid)
    dis = cfg["disease"]
    kind = ("unilateral", "bilateral", "unilateral", "unilateral")[index % 4]
    sides = ["right", "left"] if kind == "bilateral" else [("right", "left")[int(rng.integers(2))]]
    for side in sides:
        stage = _choice(rng, dis["stages"])
        extent = _u(rng, dis["extent"])
        add_disease(rng, pat.hips[side], stage, extent, _choice(rng, dis["mitchell"]), _choice(rng, dis["responses"]),
                    bool(rng.uniform() < dis["edema_fraction"]))
        calibrate_lesion(pat.hips[side])
    months = [float(m) for m in cfg["months"]]
    plan = _plan_scans(rng, cfg, pat, months, int(rng.integers(25, 65)), ("M", "F")[int(rng.integers(2))])
    if cfg.get("retest"):
        add_retest(plan, cfg, index)
    return plan


def _plan_scans(rng: np.random.Generator, cfg: dict, pat: Patient, months: list[float], age: int, sex: str,
                orientation: str | None = None, fov_kind: str | None = None) -> PatientPlan:
    acq = cfg["acquisition"]
    orientation = orientation or _choice(rng, acq["orientations"])
    if fov_kind is None:
        fov_kind = "hip" if (orientation == "sagittal" or rng.uniform() < acq["small_fov_fraction"]) else "pelvis"
    diseased = [s for s, h in pat.hips.items() if h.diseased]
    side = diseased[0] if diseased else "right"
    inplane, slice_mm, gap = _u(rng, acq["inplane_mm"]), _u(rng, acq["slice_mm"]), _u(rng, acq["gap_mm"])
    p0 = pose_matrix(rng, acq["baseline_rotation_deg"], acq["baseline_translation_mm"])
    poses, geoms = [], []
    for i, m in enumerate(months):
        pose = p0 if i == 0 else pose_matrix(rng, acq["rotation_deg"], acq["translation_mm"]) @ p0
        poses.append(pose)
        geoms.append(sample_geometry(rng, acq, pat, orientation, fov_kind, side, pose, inplane, slice_mm, gap))
    scores = synthetic_scores(rng, pat, months)
    return PatientPlan(pat, months, poses, geoms, age, sex, scores)


def synthetic_scores(rng: np.random.Generator, pat: Patient, months: list[float]) -> dict[float, dict[str, float]]:
    """Synthetic clinical scores that follow the worst hip's course (clearly synthetic)."""
    diseased = [h for h in pat.hips.values() if h.diseased]
    out = {}
    hhs0, vas0 = rng.uniform(30, 65), rng.integers(6, 10)
    for m in months:
        if not diseased:
            out[m] = {"vas_walking": 0, "harris_hip_score": round(float(rng.uniform(92, 100)))}
            continue
        resp = diseased[0].response
        g = 1 - np.exp(-m / 4.0)
        delta = {"responder": 1.0, "stable": 0.15, "progressor": -0.5}[resp] * g
        hhs = float(np.clip(hhs0 + delta * rng.uniform(25, 40) + rng.normal(0, 3), 0, 100))
        vas = float(np.clip(round(vas0 - delta * rng.uniform(4, 6)), 0, 10))
        out[m] = {"vas_walking": vas, "harris_hip_score": round(hhs)}
    return out


def plan_demo(index: int, cfg: dict) -> PatientPlan:
    """The two demo patients modelled on the case report (right hip, responders)."""
    seed = int(cfg["seed"])
    rng = np.random.default_rng([seed, 1000 + index])
    pid = f"P{index + 1:02d}"
    pat = sample_patient(rng, pid)
    h = pat.hips["right"]
    if index == 0:  # 39-year-old man, stage 4, large lesion with collapse; scans 0, 3, 16 months
        add_disease(rng, h, "4", 0.45, "mixed", "responder", True)
        months, age, orient = [0.0, 3.0, 16.0], 39, "axial"
    else:  # 34-year-old man, stage 3; scans 0, 3, 7 months
        add_disease(rng, h, "3A", 0.30, "D", "responder", False)
        months, age, orient = [0.0, 3.0, 7.0], 34, "coronal"
    calibrate_lesion(h)
    plan = _plan_scans(rng, cfg, pat, months, age, "M", orientation=orient, fov_kind="pelvis")
    sc = DEMO_SCORES[pid]
    plan.scores = {float(m): {k: v[i] for k, v in sc.items()} for i, m in enumerate(DEMO_SCORE_MONTHS)}
    return plan


def _fine_truth(grids: dict, pat: Patient, months: float) -> dict[str, dict]:
    """Continuous ground-truth volumes per hip from the 0.8 mm fine grids."""
    vox_ml = FINE_MM**3 / 1000.0
    out = {}
    for side, g in grids["fine"].items():
        lab = g.lab
        head = np.isin(lab, L.HEAD_LABELS).sum() * vox_ml
        core = (lab == L.NECROTIC).sum() * vox_ml
        band = (lab == L.BAND).sum() * vox_ml
        out[side] = volume_record(head, core, band, g.regen.sum() * vox_ml)
    return out


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


def generate_patient(plan: PatientPlan, out_dir: Path, seed: int, style: str = "a") -> list[dict]:
    """Render, acquire and write all scans of one patient; return manifest rows.

    ``style="dr"`` replaces the phantom's T1 contrast by a random one per scan (the training
    renderer's style, ``synth.randomise.restyle_grids``), for in-style evaluation."""
    pat = plan.patient
    rng = np.random.default_rng([seed, 7, int(pat.patient_id[1:])])
    style_rng = np.random.default_rng([seed, 8, int(pat.patient_id[1:])])
    rows = []
    base_grids = None
    base_lesion_ml = {}
    for i, (m, pose, geom, tp) in enumerate(zip(plan.months, plan.poses, plan.geoms, timepoint_labels(plan))):
        grids = render_grids(pat, m, previous=base_grids)
        if base_grids is None:
            base_grids = grids
        acq_grids = grids
        if style == "dr":
            from onfh_seg.synth.randomise import restyle_grids

            acq_grids = restyle_grids(grids, pat, m, style_rng)
        img, lab, rg = acquire(acq_grids, geom, pose, rng)
        name = f"{pat.patient_id}_{tp}"
        fine = _fine_truth(grids, pat, m)
        if i == 0:
            base_lesion_ml = {s: v["lesion_volume_ml"] for s, v in fine.items()}
        acquisition = acquisition_record(geom, geom.bias_amplitude)
        row = write_scan(out_dir, plan, name, tp, m, pose, geom.affine, (img, lab, rg), fine, base_lesion_ml,
                         acquisition)
        rows.append(row)
    return _merge_scores(rows, plan)


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


def _merge_scores(rows: list[dict], plan: PatientPlan) -> list[dict]:
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


def _job(args) -> list[dict]:
    kind, index, cfg, out_dir = args
    plan = plan_demo(index, cfg) if kind == "demo" else plan_patient(index, cfg)
    if cfg.get("style", "a") == "b":  # out-of-style renderer (held out from training)
        from onfh_seg.synth.style_b import generate_patient_b

        return generate_patient_b(plan, Path(out_dir), cfg, index)
    if cfg.get("style", "a") == "c":  # thin-slab gradient-echo renderer (held out from training)
        from onfh_seg.synth.style_c import generate_patient_c

        return generate_patient_c(plan, Path(out_dir), cfg, index)
    return generate_patient(plan, Path(out_dir), int(cfg["seed"]), style=cfg.get("style", "a"))


def generate_cohort(cfg: dict, out_dir: str | Path, progress=None) -> Path:
    """Generate a whole cohort and its manifest; returns the manifest path."""
    if cfg.get("style", "a") not in ("a", "b", "c", "dr"):
        raise ValueError(f"style must be a, b, c or dr, got {cfg.get('style')!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kind = "demo" if cfg.get("demo") else "random"
    n = 2 if kind == "demo" else int(cfg["n_patients"])
    jobs = [(kind, i, cfg, str(out_dir)) for i in range(n)]
    rows: list[dict] = []
    workers = max(1, int(cfg.get("workers", 1)))
    if workers == 1:
        results = map(_job, jobs)
    else:
        import os

        from onfh_seg.lifecycle import die_with_parent

        pool = ProcessPoolExecutor(workers, initializer=die_with_parent, initargs=(os.getpid(),))  # no orphans
        results = pool.map(_job, jobs)
    for r in results:
        rows.extend(r)
        if progress:
            progress(r[0]["patient_id"])
    if workers > 1:
        pool.shutdown()
    rows.sort(key=lambda r: (r["patient_id"], float(r["months"])))
    cols = ["patient_id", "timepoint", "months", "image", "labels", "regenerated", "truth", "age", "sex",
            "orientation", "affected_sides"]
    score_cols = [c for c in ("functional_rating_index", "vas_walking", "harris_hip_score", "rom_flexion_deg",
                              "rom_flexion_vas", "rom_abduction_deg", "rom_abduction_vas", "rom_adduction_deg",
                              "rom_adduction_vas") if any(c in r for r in rows)]
    manifest = out_dir / "manifest.csv"
    write_manifest(manifest, rows, cols + score_cols)
    return manifest


def synth_config(overrides: dict | None = None) -> dict:
    """configs/synth.yaml as a plain dict, merged with ``overrides`` (nested dicts)."""
    from omegaconf import OmegaConf

    from onfh_seg.config import config_dir

    base = OmegaConf.load(Path(config_dir()) / "synth.yaml")
    base.pop("defaults", None)
    base.pop("hydra", None)
    return OmegaConf.to_container(OmegaConf.merge(base, overrides or {}), resolve=True)
