"""Domain-randomised training data (SynthSeg-style): tissue maps in model space, random contrast.

The network must not learn our renderer (``phantom.render`` + ``acquisition``),
so training images are drawn from *tissue sub-label maps* (``patient.TISSUES``)
instead, with a new random contrast for every training sample:

* ``render_tissue``: the phantom's anatomy and disease, rendered as tissue
  sub-labels and segmentation labels directly on a model-space RAS grid (fine:
  a cube around a femoral head, ``ras_cube``; coarse: a whole field of view,
  ``coarse_field``), through the patient's pose;
* the contrast and the painted image come from ``contrast`` (``random_contrast``,
  ``realistic_contrast``, ``render_random``, ``chemical_shift``, ``slab_mask``; also
  importable from here, where the training data module takes them).

Resolution, oblique thick slices, bias, ghosting, motion and Rician noise are
added afterwards by TorchIO transforms (``onfh_seg.model.augment.build_dr_augment``).
Non-hip negatives for the coarse stage (a head, thighs, lower abdomen) come from
``random_negative_tissue``: their labels are all background.
"""

from __future__ import annotations

import io
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from onfh_seg.io.nifti import atomic_write_bytes
from onfh_seg.synth.acquisition import Grid
from onfh_seg.synth.contrast import (  # re-exported: model.data and scripts import these from here
    FAT_FRACTION,
    FAT_FRACTION_TABLE,
    T1_PRIOR,
    Contrast,
    chemical_shift,
    random_contrast,
    realistic_contrast,
    render_random,
    slab_mask,
    smooth_field,
)
from onfh_seg.synth.patient import N_TISSUES, TISSUES, Patient
from onfh_seg.synth.phantom import calibrate_lesion, render
from onfh_seg.synth.plan import plan_patient
from onfh_seg.synth.shapes import make_waves, rotation, sd_ellipsoid

T = TISSUES
MARROW = (T["red_marrow"], T["yellow_marrow"], T["edema_marrow"])
CORES = (T["core_fat"], T["core_blood"], T["core_fluid"], T["core_fibrous"])


def _grid_points(affine: np.ndarray, shape: tuple[int, int, int], pose: np.ndarray) -> tuple[np.ndarray, ...]:
    """Anatomy-frame points of every voxel of a world grid (world = pose @ anatomy)."""
    M = (np.linalg.inv(pose) @ affine).astype(np.float32)
    g = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    return tuple((M[r, 0] * g[0] + M[r, 1] * g[1] + M[r, 2] * g[2] + M[r, 3]).ravel() for r in range(3))


def render_tissue(pat: Patient, months: float, affine: np.ndarray, shape: tuple[int, int, int],
                  pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tissue sub-labels and segmentation labels of the posed phantom on a world grid."""
    P = _grid_points(affine, shape, pose)
    _, lab, _, tis = render(P, pat, months, with_tissue=True)
    return tis.reshape(shape), lab.reshape(shape)


def ras_cube(centre: np.ndarray, n: int, spacing: float) -> np.ndarray:
    """Affine of an RAS-aligned cube of ``n`` voxels centred on a world point."""
    A = np.eye(4)
    A[:3, :3] *= spacing
    A[:3, 3] = np.asarray(centre, float) - (n - 1) * spacing / 2
    return A


# ----------------------------------------------------------------------------- negatives


def head_phantom_labels(shape: tuple[int, int, int], spacing: float, rng: np.random.Generator) -> np.ndarray:
    """Tissue map of a crude head (scalp, skull, brain, ventricles, eyes) for non-hip negatives."""
    c = (np.asarray(shape) - 1) / 2 * spacing + rng.uniform(-20, 20, 3)
    g = np.meshgrid(*[np.arange(n, dtype=np.float32) * spacing for n in shape], indexing="ij")
    P = tuple(a.ravel() for a in g)
    ax = np.array([rng.uniform(70, 80), rng.uniform(90, 102), rng.uniform(80, 95)])
    R = rotation(rng.normal(size=3), np.deg2rad(rng.uniform(0, 25)))
    out = np.zeros(P[0].shape, np.uint8)
    scalp = sd_ellipsoid(P, c, ax, R)
    out[scalp < 0] = T["subcutaneous_fat"]
    skull = sd_ellipsoid(P, c, ax - 5, R)
    out[skull < 0] = T["pelvic_cortex"]
    out[sd_ellipsoid(P, c, ax - 7, R) < 0] = T["red_marrow"]
    out[sd_ellipsoid(P, c, ax - 9, R) < 0] = T["femoral_cortex"]
    brain = sd_ellipsoid(P, c, ax - 12, R)
    gyri = make_waves(rng, 8, 8, 20)(P)
    out[brain < 0] = T["joint_fluid"]  # CSF
    out[(brain < -2) & (gyri > -0.3)] = T["muscle"]  # grey matter
    out[brain < -9] = T["cartilage"]  # white matter
    for s in (-1, 1):
        out[sd_ellipsoid(P, c + R @ np.array([s * 9, 5, 8]), (5, 18, 9), R) < 0] = T["urine"]  # ventricles
        out[sd_ellipsoid(P, c + R @ np.array([s * 32, ax[1] - 20, -35]), (12, 12, 12), R) < 0] = T["urine"]  # eyes
    return out.reshape(shape)


def random_negative_tissue(shape: tuple[int, int, int], spacing: float, rng: np.random.Generator) -> np.ndarray:
    """A non-hip tissue map: a head, or random ellipsoid blobs of random tissues (no labels)."""
    if rng.uniform() < 0.6:
        return head_phantom_labels(shape, spacing, rng)
    g = np.meshgrid(*[np.arange(n, dtype=np.float32) * spacing for n in shape], indexing="ij")
    P = tuple(a.ravel() for a in g)
    ext = np.asarray(shape) * spacing
    out = np.zeros(P[0].shape, np.uint8)
    body = sd_ellipsoid(P, ext / 2, (ext[0] * 0.42, ext[1] * 0.38, ext[2] * 2))
    out[body < 0] = T["muscle"]
    out[(body < 0) & (body > -15)] = T["subcutaneous_fat"]
    for _ in range(int(rng.integers(3, 12))):
        ctr = ext * rng.uniform(0.2, 0.8, 3)
        axes = rng.uniform(8, 50, 3)
        m = sd_ellipsoid(P, ctr, axes, rotation(rng.normal(size=3), rng.uniform(0, np.pi))) < 0
        out[m & (body < 0)] = int(rng.integers(1, N_TISSUES))
    return out.reshape(shape)


# ----------------------------------------------------------------------------- cohorts


def save_item(path: Path, tissue: np.ndarray, labels: np.ndarray, affine: np.ndarray) -> None:
    """Write one training item (tissue map, labels, grid affine) atomically."""
    buf = io.BytesIO()
    np.savez_compressed(buf, tissue=tissue.astype(np.uint8), labels=labels.astype(np.uint8), affine=affine)
    atomic_write_bytes(path, buf.getvalue())


def widen_disease(rng: np.random.Generator, pat: Patient, shapes: bool = False, cyst_share: float = 0.2) -> None:
    """Shape diversity beyond the default generator (in place).

    Band 1-5 mm, shallow sockets, effusion; with ``shapes`` also lesion shapes (wedge,
    crescent, irregular, multifocal), subchondral cysts (head, not lesion; in ``cyst_share`` of the hips, which
    draws as before at the default 0.2) and bone-marrow edema in healthy hips (not necrosis).
    """
    for h in pat.hips.values():
        h.rim_h = float(h.radius * rng.uniform(-0.25, 0.3))  # shallow sockets (JIC C2 occurs)
        if rng.uniform() < 0.2:
            h.joint_mm = float(rng.uniform(5.0, 8.0))  # joint effusion
        if h.diseased:
            h.band_mm = float(rng.uniform(1.0, 5.0))
        if not shapes:
            continue
        if h.diseased and rng.uniform() < 0.6:
            h.lesion_shape = str(rng.choice(["wedge", "crescent", "irregular", "multifocal"]))
            if h.lesion_shape == "multifocal":
                h.foci = tuple(_jitter_dir(rng, h.lesion_dir, 0.7) for _ in range(int(rng.integers(1, 3))))
        if rng.uniform() < cyst_share:
            h.cysts = tuple(_random_cyst(rng, h) for _ in range(int(rng.integers(1, 4))))
        if not h.diseased and rng.uniform() < 0.15:
            h.edema = float(rng.uniform(0.25, 0.45))  # transient bone-marrow edema, no necrosis


def _jitter_dir(rng: np.random.Generator, d: np.ndarray, spread: float) -> np.ndarray:
    """A unit vector near ``d``."""
    v = np.asarray(d, float) + rng.normal(0, spread, 3)
    return v / np.linalg.norm(v)


def _random_cyst(rng: np.random.Generator, h) -> tuple[tuple[float, float, float], float]:
    """A small subchondral cyst: 2-5 mm radius, its top 1.5-4 mm under the upper head surface."""
    up = _jitter_dir(rng, np.array([0.0, 0.3, 1.0]) / np.linalg.norm([0.0, 0.3, 1.0]), 0.6)
    r = float(rng.uniform(2.0, 5.0))
    c = h.centre + up * (h.radius - r - rng.uniform(1.5, 4.0))
    return (tuple(float(v) for v in c), r)


def _patient_job(args) -> list[str]:
    """Render all training items of one patient (fine crops and coarse fields of view)."""
    index, cfg, out_dir, stage, spacing, size = args
    out_dir = Path(out_dir)
    plan = plan_patient(index, cfg)
    rng = np.random.default_rng([int(cfg["seed"]), index, 99])
    widen_disease(rng, plan.patient, shapes=bool(cfg.get("shapes", False)), cyst_share=float(cfg.get("cyst_share", 0.2)))
    for h in plan.patient.hips.values():
        calibrate_lesion(h)
    written = []
    for t, (m, pose) in enumerate(zip(plan.months, plan.poses)):
        if stage == "fine":
            for side, h in plan.patient.hips.items():
                p = out_dir / f"{plan.patient.patient_id}_t{t}_{side}.npz"
                if not p.exists():
                    centre = pose[:3, :3] @ h.centre + pose[:3, 3] + rng.normal(0, 4.0, 3)
                    aff = ras_cube(centre, size, spacing)
                    tis, lab = render_tissue(plan.patient, m, aff, (size,) * 3, pose)
                    save_item(p, tis, lab, aff)
                written.append(str(p))
        else:
            p = out_dir / f"{plan.patient.patient_id}_t{t}.npz"
            if not p.exists():
                tis, lab, aff = coarse_field(plan.patient, m, pose, rng, spacing)
                save_item(p, tis, lab, aff)
            written.append(str(p))
    if stage == "coarse":  # one non-hip negative per patient
        p = out_dir / f"{plan.patient.patient_id}_neg.npz"
        if not p.exists():
            shape = tuple(int(v) for v in rng.integers(60, 110, 3))
            tis = random_negative_tissue(shape, spacing, rng)
            save_item(p, tis, np.zeros(shape, np.uint8), ras_cube(np.zeros(3), 1, spacing))
        written.append(str(p))
    return written


def coarse_field(pat: Patient, months: float, pose: np.ndarray, rng: np.random.Generator,
                 spacing: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random field of view (both hips, one hip, a hip at the edge, pelvis + lower abdomen, thighs)."""
    hips = list(pat.hips.values())
    kind = rng.choice(["pelvis", "hip", "edge", "abdomen", "thigh"], p=[0.35, 0.25, 0.15, 0.15, 0.10])
    mid = np.mean([h.centre for h in hips], axis=0)
    if kind == "pelvis":
        centre, ext = mid + rng.normal(0, 10, 3), np.array([rng.uniform(300, 420), rng.uniform(220, 320), rng.uniform(120, 260)])
    elif kind == "hip":
        h = hips[int(rng.integers(len(hips)))]
        centre, ext = h.centre + rng.normal(0, 12, 3), rng.uniform(150, 240, 3)
    elif kind == "edge":
        h = hips[int(rng.integers(len(hips)))]
        ext = rng.uniform(160, 300, 3)
        d = rng.normal(size=3)
        centre = h.centre + d / np.linalg.norm(d) * (ext / 2) * rng.uniform(0.75, 1.05)
    elif kind == "abdomen":
        centre, ext = mid + np.array([0, 0, rng.uniform(60, 140)]), np.array([rng.uniform(300, 420), rng.uniform(220, 320), rng.uniform(120, 280)])
    else:
        centre, ext = mid + np.array([0, 0, rng.uniform(-260, -170)]), np.array([rng.uniform(250, 420), rng.uniform(180, 300), rng.uniform(100, 200)])
    centre_w = pose[:3, :3] @ centre + pose[:3, 3]
    shape = tuple(int(v) for v in np.clip(np.round(ext / spacing), 24, 220))
    aff = np.eye(4)
    aff[:3, :3] *= spacing
    aff[:3, 3] = centre_w - (np.asarray(shape) - 1) * spacing / 2
    tis, lab = render_tissue(pat, months, aff, shape, pose)
    return tis, lab, aff


def build_dr_cohort(cfg: dict, out_dir: str | Path, stage: str, spacing: float, size: int,
                    workers: int = 2, progress: bool = True) -> list[Path]:
    """Render (once; resumable) the tissue-map training items of a synthetic cohort; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(i, cfg, str(out_dir), stage, spacing, size) for i in range(int(cfg["n_patients"]))]
    paths: list[str] = []
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for r in tqdm(pool.map(_patient_job, jobs), total=len(jobs), desc=f"render {stage}", disable=not progress):
                paths.extend(r)
    else:
        for j in tqdm(jobs, desc=f"render {stage}", disable=not progress):
            paths.extend(_patient_job(j))
    return [Path(p) for p in paths]


def restyle_grids(grids: dict, pat: Patient, months: float, rng: np.random.Generator) -> dict:
    """The generator's rendered grids with the phantom's T1 signal replaced by one random contrast
    (``random_contrast``) per scan: full scans in the *training* style, for in-style evaluation
    (``onfh-synth style=dr``); acquisition (slices, bias, noise) is then simulated as usual."""
    contrast = random_contrast(rng)
    out: dict = {"fine": {}}

    def one(g: Grid) -> Grid:
        _, _, _, tis = render(g.points(), pat, months, with_tissue=True)
        tis = tis.reshape(g.shape)
        img = render_random(tis, g.lab, rng, contrast)
        return Grid(g.origin, g.spacing, g.shape, img, g.lab, g.regen)

    out["coarse"] = one(grids["coarse"])
    for side, g in grids["fine"].items():
        out["fine"][side] = one(g)
    return out
