"""Domain-randomised training data (SynthSeg-style): tissue maps in model space, random contrast.

The network must not learn our renderer (``phantom.render`` + ``acquisition``),
so training images are drawn from *tissue sub-label maps* (``phantom.TISSUES``)
instead, with a new random contrast for every training sample:

* ``tissue_crop`` / ``tissue_volume``: the phantom's anatomy and disease,
  rendered as tissue sub-labels and segmentation labels directly on a model-space
  RAS grid (fine: a cube around a femoral head at 1.1 mm; coarse: a whole field of
  view at 2 mm), through the patient's pose;
* ``random_contrast`` draws a mean and a spread per tissue (a Gaussian mixture),
  constrained only by what defines the disease on T1: the interface band is darker
  than the viable marrow outside it and than a bright necrotic core inside it;
  the necrotic core may be anything from fat-bright to fluid-dark;
* ``render_random`` paints an image from a tissue map with that contrast, smooth
  random texture per tissue, and a band that is faint or invisible in places.

Resolution, oblique thick slices, bias, ghosting, motion and Rician noise are
added afterwards by TorchIO transforms (``onfh_seg.model.data.build_dr_augment``).
Non-hip negatives for the coarse stage (a head, thighs, lower abdomen) come from
``negative_volume``: their labels are all background.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from onfh_seg.synth.phantom import N_TISSUES, TISSUES, Patient, render
from onfh_seg.synth.shapes import make_waves, rotation, sd_ellipsoid

T = TISSUES
MARROW = (T["red_marrow"], T["yellow_marrow"], T["edema_marrow"])
CORES = (T["core_fat"], T["core_blood"], T["core_fluid"], T["core_fibrous"])
# Physics prior (relative T1, fat = 1; shared/notes/onfh-mri.md), used by half the samples with wide jitter.
T1_PRIOR = {
    "air": 0.0, "muscle": 0.33, "fat_septa": 0.9, "subcutaneous_fat": 1.0, "skin": 0.5, "pelvic_fat": 0.95,
    "bladder_wall": 0.33, "urine": 0.18, "rectum_wall": 0.3, "rectum_content": 0.05, "vessel": 0.07,
    "pelvic_cortex": 0.05, "pelvic_marrow": 0.7, "joint_fluid": 0.22, "cartilage": 0.4, "acetabular_sclerosis": 0.1,
    "femoral_cortex": 0.05, "subchondral_plate": 0.05, "red_marrow": 0.7, "yellow_marrow": 0.93,
    "edema_marrow": 0.55, "core_fat": 0.88, "core_blood": 0.78, "core_fluid": 0.24, "core_fibrous": 0.13,
    "band": 0.11, "regenerated": 0.75, "cyst": 0.22,
}


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


# ----------------------------------------------------------------------------- contrast


@dataclass
class Contrast:
    """Per-tissue mean and spread (std as a fraction of the mean range) of one random image."""

    mean: np.ndarray  # (N_TISSUES,)
    std: np.ndarray  # (N_TISSUES,)
    texture: np.ndarray  # (N_TISSUES,) amplitude of the smooth per-tissue texture
    band_gap: float  # fraction of the band drawn like its neighbours (invisible in places)


def random_contrast(rng: np.random.Generator, prior_prob: float = 0.5, post_contrast: float = 0.0) -> Contrast:
    """Draw one contrast: fully random (SynthSeg) or the T1 prior with wide jitter; disease constraints enforced.

    ``post_contrast``: share of prior-based draws made post-contrast (0 keeps the older draws unchanged)."""
    if rng.uniform() < prior_prob:
        prior = np.array([T1_PRIOR[k] for k in sorted(T, key=T.get)], np.float32)
        mean = np.clip(prior + rng.normal(0, 0.12, N_TISSUES), 0.0, 1.2)
        if rng.uniform() < 0.2:  # fat-suppressed T1: fat and fatty marrow dark
            for k in ("subcutaneous_fat", "fat_septa", "pelvic_fat", "yellow_marrow", "core_fat"):
                mean[T[k]] *= rng.uniform(0.1, 0.4)
        if post_contrast > 0 and rng.uniform() < post_contrast:  # post-contrast T1: muscle, vessels, bladder wall and skin enhance
            for k in ("muscle", "vessel", "bladder_wall", "skin", "rectum_wall"):
                mean[T[k]] = min(1.2, mean[T[k]] * rng.uniform(1.3, 2.5) + rng.uniform(0.0, 0.2))
    else:
        mean = rng.uniform(0.0, 1.0, N_TISSUES).astype(np.float32)
    mean[T["air"]] = rng.uniform(0.0, 0.05)
    # the band is darker than the viable marrow outside it (and than a bright core inside it)
    viable = float(min(mean[T["yellow_marrow"]], mean[T["red_marrow"]]))
    if viable < 0.25:
        mean[T["yellow_marrow"]] = max(mean[T["yellow_marrow"]], rng.uniform(0.3, 1.0))
        mean[T["red_marrow"]] = max(mean[T["red_marrow"]], rng.uniform(0.25, 0.9))
        viable = float(min(mean[T["yellow_marrow"]], mean[T["red_marrow"]]))
    mean[T["edema_marrow"]] = min(mean[T["edema_marrow"]], viable * rng.uniform(0.5, 1.0))
    mean[T["band"]] = viable * rng.uniform(0.0, 0.55)
    # the necrotic core: anywhere from fat-bright to fluid-dark (Mitchell A-D), per sub-type
    mean[T["core_fat"]] = rng.uniform(0.6, 1.1) * viable
    mean[T["core_blood"]] = rng.uniform(0.45, 0.95) * viable
    mean[T["core_fluid"]] = rng.uniform(0.05, 0.5) * viable
    mean[T["core_fibrous"]] = rng.uniform(0.0, 0.35) * viable
    mean[T["regenerated"]] = rng.uniform(0.4, 1.0) * viable
    std = rng.uniform(0.0, 0.08, N_TISSUES).astype(np.float32)
    texture = rng.uniform(0.0, 0.15, N_TISSUES).astype(np.float32)
    band_gap = float(rng.uniform(0.0, 0.4)) if rng.uniform() < 0.5 else 0.0
    return Contrast(mean.astype(np.float32), std, texture, band_gap)


def realistic_contrast(rng: np.random.Generator) -> Contrast:
    """A contrast close to the default renderer's spin-echo T1 (``T1_PRIOR``, small jitter, full band):
    the realistic share of a training mixture (issue 23), beside the fully random draws."""
    prior = np.array([T1_PRIOR[k] for k in sorted(T, key=T.get)], np.float32)
    mean = np.clip(prior * np.float32(rng.uniform(0.9, 1.1)) + rng.normal(0, 0.03, N_TISSUES), 0.0, 1.2)
    mean[T["air"]] = rng.uniform(0.0, 0.03)
    std = rng.uniform(0.0, 0.03, N_TISSUES).astype(np.float32)
    texture = rng.uniform(0.02, 0.08, N_TISSUES).astype(np.float32)
    return Contrast(mean.astype(np.float32), std, texture, 0.0)


def smooth_field(shape: tuple[int, ...], rng: np.random.Generator, sigma_vox: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field (Gaussian-filtered white noise on a coarse lattice)."""
    step = max(1, int(sigma_vox // 2))
    small = tuple(max(2, int(np.ceil(n / step)) + 1) for n in shape)
    f = ndimage.gaussian_filter(rng.standard_normal(small).astype(np.float32), max(0.5, sigma_vox / step))
    f = ndimage.zoom(f, [n / s for n, s in zip(shape, small)], order=1)[tuple(slice(0, n) for n in shape)]
    f -= f.mean()
    return f / max(float(f.std()), 1e-6)


def render_random(tissue: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                  contrast: Contrast | None = None) -> np.ndarray:
    """A float32 image from a tissue map: per-tissue Gaussian mixture, smooth texture, interrupted band."""
    c = contrast or random_contrast(rng)
    tis = tissue
    if c.band_gap > 0:  # band invisible in places: drawn like the viable marrow around it
        band = tis == T["band"]
        if band.any():
            gap = smooth_field(tis.shape, rng, 6.0) > np.quantile(rng.standard_normal(2000), 1 - c.band_gap)
            tis = tis.copy()
            tis[band & gap] = T["yellow_marrow"] if rng.uniform() < 0.7 else T["core_blood"]
    mean = c.mean[tis]
    img = mean + c.std[tis] * rng.standard_normal(tis.shape).astype(np.float32)
    tex = smooth_field(tis.shape, rng, float(rng.uniform(2.0, 8.0)))
    img *= 1.0 + c.texture[tis] * tex
    return np.clip(img, 0.0, None).astype(np.float32)


# ----------------------------------------------------------------------------- acquisitions

# Fat signal fraction per tissue (in-phase signal = water + fat), for gradient-echo chemical shift.
FAT_FRACTION = {
    "air": 0.0, "muscle": 0.05, "fat_septa": 0.85, "subcutaneous_fat": 0.92, "skin": 0.3, "pelvic_fat": 0.9,
    "bladder_wall": 0.02, "urine": 0.0, "rectum_wall": 0.05, "rectum_content": 0.1, "vessel": 0.0,
    "pelvic_cortex": 0.1, "pelvic_marrow": 0.45, "joint_fluid": 0.0, "cartilage": 0.0, "acetabular_sclerosis": 0.1,
    "femoral_cortex": 0.1, "subchondral_plate": 0.1, "red_marrow": 0.42, "yellow_marrow": 0.8,
    "edema_marrow": 0.3, "core_fat": 0.75, "core_blood": 0.3, "core_fluid": 0.05, "core_fibrous": 0.05,
    "band": 0.05, "regenerated": 0.55, "cyst": 0.0,
}
FAT_FRACTION_TABLE = np.array([FAT_FRACTION[k] for k in sorted(T, key=T.get)], np.float32)


def chemical_shift(img: np.ndarray, tissue: np.ndarray, rng: np.random.Generator,
                   phase_deg: float | None = None, blur_vox: float | None = None) -> np.ndarray:
    """Gradient-echo water/fat phase: voxel signal = |water + fat * exp(i phase)|, summed within the voxel.

    ``img`` is taken as the in-phase magnitude and split into water and fat by the tissue's fat
    fraction (jittered per image). Near opposed phase (phase ~180 degrees) marrow that holds both
    water and fat goes dark, and partial volume at fat-water borders cancels into a dark line
    ("India ink"): the Gaussian blur before the magnitude stands for the voxel's extent.
    """
    ff = np.clip(FAT_FRACTION_TABLE + rng.normal(0, 0.08, FAT_FRACTION_TABLE.size).astype(np.float32), 0, 1)[tissue]
    ph = np.deg2rad(rng.uniform(150, 210) if phase_deg is None else phase_deg)
    re = img * ((1 - ff) + ff * np.float32(np.cos(ph)))
    im = img * ff * np.float32(np.sin(ph))
    sigma = float(rng.uniform(0.5, 1.1) if blur_vox is None else blur_vox)
    re, im = ndimage.gaussian_filter(re, sigma), ndimage.gaussian_filter(im, sigma)
    return np.sqrt(re * re + im * im).astype(np.float32)


def slab_mask(shape: tuple[int, int, int], spacing: float, rng: np.random.Generator) -> np.ndarray:
    """Where a thin oblique slab acquisition has signal, on a patch grid centred on the sampled voxel.

    12-40 slices of 3-6 mm, tilted 0-30 degrees from axial (70%) or coronal, 220-320 mm in-plane
    field of view off-centre by up to 110 mm (heads at, or partly beyond, its edge).
    """
    normal_axis = 2 if rng.uniform() < 0.7 else 1
    thick = float(rng.integers(12, 41) * rng.uniform(3.0, 6.0))
    fov = rng.uniform(220, 320, 2)
    R = rotation(rng.normal(size=3), np.deg2rad(rng.uniform(0, 30)))
    axes = [R[:, (normal_axis + k) % 3] for k in (0, 1, 2)]  # slab normal, then the two in-plane axes
    off = np.array([rng.uniform(-0.5, 0.5) * thick, rng.uniform(-110, 110), rng.uniform(-110, 110)])
    g = np.meshgrid(*[(np.arange(n, dtype=np.float32) - (n - 1) / 2) * spacing for n in shape], indexing="ij")
    inside = np.ones(shape, bool)
    for a, o, half in zip(axes, off, (thick / 2, fov[0] / 2, fov[1] / 2)):
        d = a[0] * g[0] + a[1] * g[1] + a[2] * g[2] - o
        inside &= np.abs(d) <= half
    return inside


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
    import io

    from onfh_seg.io.nifti import atomic_write_bytes

    buf = io.BytesIO()
    np.savez_compressed(buf, tissue=tissue.astype(np.uint8), labels=labels.astype(np.uint8), affine=affine)
    atomic_write_bytes(path, buf.getvalue())


def widen_disease(rng: np.random.Generator, pat: Patient, shapes: bool = False) -> None:
    """Shape diversity beyond the default generator (in place).

    Band 1-5 mm, shallow sockets, effusion; with ``shapes`` also lesion shapes (wedge,
    crescent, irregular, multifocal), subchondral cysts (head, not lesion) and bone-marrow
    edema in healthy hips (not necrosis).
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
        if rng.uniform() < 0.2:
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
    from onfh_seg.synth.cohort import plan_patient
    from onfh_seg.synth.phantom import calibrate_lesion

    index, cfg, out_dir, stage, spacing, size = args
    out_dir = Path(out_dir)
    plan = plan_patient(index, cfg)
    rng = np.random.default_rng([int(cfg["seed"]), index, 99])
    widen_disease(rng, plan.patient, shapes=bool(cfg.get("shapes", False)))
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
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

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
    from onfh_seg.synth.acquisition import Grid

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
