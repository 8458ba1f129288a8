"""What is sampled for one synthetic patient before any rendering: anatomy and disease, visit months,
poses in the scanner, scan geometries, clinical scores (``PatientPlan``).

Random patients are seeded by (seed, index), independent of cohort size (``plan_patient``); the two demo
patients follow the case report (``plan_demo``); ``add_retest`` appends a same-day repeat of the baseline.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from onfh_seg.synth.acquisition import ScanGeometry, pose_matrix, scan_affine
from onfh_seg.synth.patient import Patient
from onfh_seg.synth.phantom import add_disease, calibrate_lesion, sample_patient


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


def healthy_patient(cfg: dict, index: int) -> bool:
    """Whether patient ``index`` has two healthy hips (``disease.healthy_fraction``, default 0: every patient
    has at least one necrotic hip). Drawn from its own stream, so cohorts without it are unchanged."""
    frac = float(cfg["disease"].get("healthy_fraction", 0.0))
    return frac > 0 and float(np.random.default_rng([int(cfg["seed"]), index, 7]).uniform()) < frac


def plan_patient(index: int, cfg: dict) -> PatientPlan:
    """Sample one random patient (independent of cohort size: seeded by (seed, index))."""
    rng = np.random.default_rng([int(cfg["seed"]), index])
    pid = f"P{index + 1:03d}"
    pat = sample_patient(rng, pid)
    dis = cfg["disease"]
    kind = ("unilateral", "bilateral", "unilateral", "unilateral")[index % 4]
    sides = ["right", "left"] if kind == "bilateral" else [("right", "left")[int(rng.integers(2))]]
    if healthy_patient(cfg, index):
        sides = []
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
