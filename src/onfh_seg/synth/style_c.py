"""Style C: a third hip renderer, a 3D spoiled gradient echo acquired as a thin oblique slab (held out).

Written for the acquisitions that defeated the coarse locator on real pelvic MRI:
a 3D spoiled-gradient-echo T1 (VIBE/LAVA/THRIVE-like) near opposed phase, as a
thin oblique axial slab (16-32 slices of 2.5-4 mm, tilted 10-30 degrees, 240-300 mm
field of view, sometimes off-centre, so the femoral heads sit at its lateral edges).

Only the anatomy and disease geometry is shared with ``phantom`` (tissue
sub-labels from ``phantom.render``), so the labels mean exactly what they mean
everywhere. How the scan looks is this module's own, from MR physics rather
than from a table of grey values:

- **Signal**: the spoiled-GRE steady state per tissue from proton density and
  water T1 at 3 T, plus a fat compartment (T1 380 ms) whose phase relative to
  water is set by the echo time (440 Hz chemical shift at 3 T): TE 1.2-2.6 ms runs
  from near opposed phase (fatty marrow dark) to near in phase.
- **Partial volume**: each voxel is the *complex* mean of 2x2x3 sub-samples, so
  fat-water borders cancel into dark lines ("India ink") as on a real scan.
- **Acquisition**: receive-coil sensitivity from anterior and posterior
  elements, complex Gaussian noise at SNR 15-40, magnitude image.

It is never used for training or model selection (``onfh-synth style=c``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from onfh_seg.synth.acquisition import ORIENTATION_AXES, ScanGeometry
from onfh_seg.synth.patient import TISSUES, Patient
from onfh_seg.synth.phantom import render
from onfh_seg.synth.plan import PatientPlan, timepoint_labels
from onfh_seg.synth.scan_files import acquisition_record, merge_scores, write_scan
from onfh_seg.synth.shapes import rotation
from onfh_seg.synth.style_b_labels import fine_truth

FAT_T1_MS = 380.0
FAT_WATER_HZ = 440.0  # chemical shift of the main fat peak at 3 T
# per tissue: proton density (relative), water T1 (ms, 3 T), fat signal fraction
TISSUE_GRE: dict[str, tuple[float, float, float]] = {
    "air": (0.0, 1000.0, 0.0), "muscle": (0.75, 1420.0, 0.04), "fat_septa": (0.9, 1200.0, 0.85),
    "subcutaneous_fat": (0.95, 1200.0, 0.93), "skin": (0.6, 1100.0, 0.3), "pelvic_fat": (0.95, 1200.0, 0.9),
    "bladder_wall": (0.7, 1300.0, 0.02), "urine": (1.0, 3500.0, 0.0), "rectum_wall": (0.7, 1350.0, 0.05),
    "rectum_content": (0.4, 1500.0, 0.15), "vessel": (0.85, 1900.0, 0.0), "pelvic_cortex": (0.08, 1000.0, 0.0),
    "pelvic_marrow": (0.8, 1100.0, 0.5), "joint_fluid": (1.0, 3300.0, 0.0), "cartilage": (0.75, 1250.0, 0.0),
    "acetabular_sclerosis": (0.15, 1000.0, 0.05), "femoral_cortex": (0.08, 1000.0, 0.0),
    "subchondral_plate": (0.1, 1000.0, 0.05), "red_marrow": (0.8, 1100.0, 0.45),
    "yellow_marrow": (0.9, 1100.0, 0.82), "edema_marrow": (0.85, 1500.0, 0.3), "core_fat": (0.85, 1100.0, 0.75),
    "core_blood": (0.8, 700.0, 0.25), "core_fluid": (0.95, 2800.0, 0.05), "core_fibrous": (0.45, 1400.0, 0.02),
    "band": (0.45, 1300.0, 0.03), "regenerated": (0.8, 1150.0, 0.6), "cyst": (1.0, 3000.0, 0.0),
}
SUB = (2, 2, 3)  # sub-samples per voxel (in plane, in plane, through slice)
# protocol ranges, each drawn uniformly per scan ([lo, hi]; lo == hi pins it; ``onfh-synth style_c.<key>=...``);
# fractions: of scans tilted about the left-right axis (else anterior-posterior) and of scans shifted sideways
DEFAULTS: dict = {
    "n_slices": [16, 32], "slice_mm": [2.5, 4.0], "fov_mm": [240.0, 300.0], "inplane_mm": [1.4, 1.9],
    "tilt_deg": [10.0, 30.0], "tilt_lr_fraction": 0.7, "offcentre_fraction": 0.4, "offcentre_x_mm": [-30.0, 30.0],
    "offcentre_y_mm": [-15.0, 15.0], "offcentre_z_mm": [-12.0, 12.0], "snr": [15.0, 40.0], "tr_ms": [3.5, 5.5],
    "te_ms": [1.2, 2.6], "flip_deg": [10.0, 20.0],
    "fat_suppression": [0.0, 0.0],  # share of the fat signal removed (a fat-saturated post-contrast frame: ~0.9)
}


@dataclass
class Protocol:
    """One style-C acquisition: geometry and sequence parameters."""

    geom: ScanGeometry
    tr_ms: float
    te_ms: float
    flip_deg: float
    tilt_deg: float
    fat_suppression: float = 0.0


def spgr(pd: np.ndarray, t1_ms: np.ndarray, tr_ms: float, flip_deg: float) -> np.ndarray:
    """Spoiled gradient-echo steady-state signal (no T2* decay)."""
    a = np.deg2rad(flip_deg)
    e1 = np.exp(-tr_ms / np.maximum(t1_ms, 1.0))
    return pd * np.sin(a) * (1 - e1) / (1 - np.cos(a) * e1)


def tissue_signal(tr_ms: float, te_ms: float, flip_deg: float, rng: np.random.Generator,
                  fat_suppression: float = 0.0) -> np.ndarray:
    """Complex signal per tissue sub-label: water + fat with the echo time's chemical-shift phase (the fat signal
    reduced by ``fat_suppression``, a share)."""
    names = sorted(TISSUES, key=TISSUES.get)
    pd, t1, ff = (np.array([TISSUE_GRE[n][k] for n in names]) for k in range(3))
    t1 = t1 * rng.uniform(0.9, 1.1, t1.size)  # between-subject spread
    phase = 2 * np.pi * FAT_WATER_HZ * te_ms / 1000.0
    water = (1 - ff) * spgr(pd, t1, tr_ms, flip_deg)
    fat = ff * spgr(pd, np.full_like(t1, FAT_T1_MS), tr_ms, flip_deg) * (1.0 - fat_suppression)
    return (water + fat * np.exp(1j * phase)).astype(np.complex64)


def style_options(cfg: dict) -> dict:
    """``cfg['style_c']`` over ``DEFAULTS``."""
    opt = dict(DEFAULTS)
    opt.update(cfg.get("style_c") or {})
    return opt


def sample_protocol(rng: np.random.Generator, pat: Patient, pose: np.ndarray,
                    opt: dict | None = None) -> Protocol:
    """A thin oblique axial slab over both hips, sometimes off-centre (ranges: ``opt``, default ``DEFAULTS``)."""
    o = DEFAULTS if opt is None else opt
    n_slices = int(rng.integers(int(o["n_slices"][0]), int(o["n_slices"][1]) + 1))
    slice_mm = float(rng.uniform(*o["slice_mm"]))
    fov = float(rng.uniform(*o["fov_mm"]))
    inplane = float(rng.uniform(*o["inplane_mm"]))
    matrix = int(round(fov / inplane))
    inplane = fov / matrix
    tilt = float(rng.uniform(*o["tilt_deg"]))
    lr = rng.uniform() < float(o["tilt_lr_fraction"])
    axis = np.array([1.0, 0.0, 0.0]) if lr else np.array([0.0, 1.0, 0.0])  # about L-R or A-P
    R = rotation(axis, np.deg2rad(tilt) * rng.choice([-1, 1]))
    hips = list(pat.hips.values())
    mid = np.mean([h.centre for h in hips], axis=0)
    off_x = rng.uniform(*o["offcentre_x_mm"]) if rng.uniform() < float(o["offcentre_fraction"]) else 0.0
    off = np.array([off_x, rng.uniform(*o["offcentre_y_mm"]), rng.uniform(*o["offcentre_z_mm"])])
    centre = pose[:3, :3] @ (mid + off) + pose[:3, 3]
    dirs = R @ ORIENTATION_AXES["axial"].T  # columns: voxel axis directions in world RAS
    shape = (matrix, matrix, n_slices)
    A = np.eye(4)
    A[:3, :3] = dirs * np.array([inplane, inplane, slice_mm])
    A[:3, 3] = centre - A[:3, :3] @ ((np.array(shape) - 1) / 2)
    geom = ScanGeometry(orientation="axial", fov_kind="slab", shape=shape, affine=A, inplane_mm=inplane,
                        slice_mm=slice_mm, gap_mm=0.0, snr=float(rng.uniform(*o["snr"])),
                        bias_amplitude=float(rng.uniform(0.2, 0.5)),
                        scale=float(np.exp(rng.uniform(np.log(300), np.log(2500)))))
    prot = Protocol(geom, tr_ms=float(rng.uniform(*o["tr_ms"])), te_ms=float(rng.uniform(*o["te_ms"])),
                    flip_deg=float(rng.uniform(*o["flip_deg"])), tilt_deg=tilt)
    fs = o.get("fat_suppression", [0.0, 0.0])
    if float(fs[1]) > 0:  # drawn only when asked for: the default protocols keep their random draws
        prot.fat_suppression = float(rng.uniform(*fs))
    return prot


def _anatomy_points(affine: np.ndarray, pose: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, ...]:
    """Anatomy-frame coordinates (phantom space) of fractional voxel indices (N, 3)."""
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    inv = np.linalg.inv(pose)
    anat = (world @ inv[:3, :3].T + inv[:3, 3]).astype(np.float32)
    return anat[:, 0], anat[:, 1], anat[:, 2]


def coil_sensitivity(shape: tuple[int, int, int], rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """Smooth receive sensitivity: anterior and posterior coil elements, brighter near the body surface."""
    g = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    s = np.zeros(shape, np.float32)
    for _ in range(int(rng.integers(2, 5))):
        c = np.array([rng.uniform(-0.8, 0.8), rng.choice([-1.1, 1.1]), rng.uniform(-0.5, 0.5)], np.float32)
        s += np.exp(-((g[0] - c[0]) ** 2 + (g[1] - c[1]) ** 2 + (g[2] - c[2]) ** 2) / np.float32(rng.uniform(0.4, 1.0)))
    s /= s.max()
    return (1 - amplitude) + amplitude * s


def acquire_c(pat: Patient, months: float, pose: np.ndarray, prot: Protocol,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Magnitude image, labels and regenerated mask of one style-C scan (labels at voxel centres)."""
    shape, A = prot.geom.shape, prot.geom.affine
    table = tissue_signal(prot.tr_ms, prot.te_ms, prot.flip_deg, rng, prot.fat_suppression)
    centres = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    acc = np.zeros(centres.shape[0], np.complex64)
    offsets = [((a + 0.5) / SUB[0] - 0.5, (b + 0.5) / SUB[1] - 0.5, (c + 0.5) / SUB[2] - 0.5)
               for a in range(SUB[0]) for b in range(SUB[1]) for c in range(SUB[2])]
    texture = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 2.0).ravel()
    texture *= np.float32(0.12 / max(float(texture.std()), 1e-6))
    for off in offsets:
        _, _, _, tis = render(_anatomy_points(A, pose, centres + np.float32(off)), pat, months, with_tissue=True)
        acc += table[tis]
    img = (acc / len(offsets)).reshape(shape) * (1 + texture.reshape(shape))
    img = img * coil_sensitivity(shape, rng, prot.geom.bias_amplitude)
    ref = float(np.percentile(np.abs(img), 95))
    sigma = ref / prot.geom.snr
    noise = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64) * np.float32(sigma)
    mag = np.abs(img + noise) * np.float32(prot.geom.scale / max(ref, 1e-6))
    _, lab, rg = render(_anatomy_points(A, pose, centres), pat, months)
    return mag.astype(np.float32), lab.reshape(shape), rg.reshape(shape).astype(np.uint8)


def generate_patient_c(plan: PatientPlan, out_dir: Path, cfg: dict, index: int) -> list[dict]:
    """Render, acquire and write all style-C scans of one patient; return manifest rows."""
    pat = plan.patient
    seed = int(cfg["seed"])
    opt = style_options(cfg)
    rows: list[dict] = []
    base_lesion_ml: dict[str, float] = {}
    for i, (m, pose, tp) in enumerate(zip(plan.months, plan.poses, timepoint_labels(plan))):
        rng = np.random.default_rng([seed, 0xC0, index, i])
        prot = sample_protocol(rng, pat, pose, opt)
        img, lab, rg = acquire_c(pat, m, pose, prot, rng)
        fine = fine_truth(pat, m)
        if i == 0:
            base_lesion_ml = {s: v["lesion_volume_ml"] for s, v in fine.items()}
        acquisition = acquisition_record(prot.geom, prot.geom.bias_amplitude, protocol="3d_spgr_slab",
                                         tr_ms=round(prot.tr_ms, 3), te_ms=round(prot.te_ms, 3),
                                         flip_deg=round(prot.flip_deg, 2), tilt_deg=round(prot.tilt_deg, 2),
                                         **({"fat_suppression": round(prot.fat_suppression, 3)}
                                            if prot.fat_suppression > 0 else {}))
        rows.append(write_scan(out_dir, plan, f"{pat.patient_id}_{tp}", tp, m, pose, prot.geom.affine, (img, lab, rg),
                               fine, base_lesion_ml, acquisition, top={"style": "c"}))
    return merge_scores(rows, plan)
