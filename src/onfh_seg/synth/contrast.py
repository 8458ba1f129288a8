"""Random appearance of tissue maps for domain-randomised training (``randomise``): per-tissue contrast
draws, the painted image, gradient-echo chemical shift and the thin-slab signal mask.

* ``random_contrast`` draws a mean and a spread per tissue (a Gaussian mixture),
  constrained only by what defines the disease on T1: the interface band is darker
  than the viable marrow outside it and than a bright necrotic core inside it;
  the necrotic core may be anything from fat-bright to fluid-dark;
  ``realistic_contrast`` stays close to the spin-echo T1 prior (fat-suppressed draws: ``synth.fat_sat``);
* ``render_random`` paints an image from a tissue map with that contrast, smooth
  random texture per tissue, and a band that is faint or invisible in places;
* ``marrow_mottle`` gives healthy marrow the heterogeneity real heads have (red-marrow islands, trabecular
  striation): dark patches and streaks that are not a band;
* ``chemical_shift`` and ``slab_mask`` imitate a gradient echo near opposed phase and a thin oblique slab;
  ``slab_edge`` a slab face through the head with its real edge (RF profile, fade over one slice);
* ``physeal_scar`` draws the closed growth plate across a healthy head's base: a dark line that is not a band;
* ``rician`` adds magnitude noise;
* ``thick_slices`` acquires thick slices with a real slice profile (partial volume across the slice), where
  TorchIO's ``RandomAnisotropy`` samples one plane per slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from onfh_seg.labels import BAND as L_BAND
from onfh_seg.labels import HEAD as L_HEAD
from onfh_seg.labels import NECROTIC as L_NECROTIC
from onfh_seg.synth.patient import N_TISSUES, TISSUES
from onfh_seg.synth.shapes import rotation

T = TISSUES
# Physics prior (relative T1, fat = 1; shared/notes/onfh-mri.md), used by half the samples with wide jitter.
T1_PRIOR = {
    "air": 0.0, "muscle": 0.33, "fat_septa": 0.9, "subcutaneous_fat": 1.0, "skin": 0.5, "pelvic_fat": 0.95,
    "bladder_wall": 0.33, "urine": 0.18, "rectum_wall": 0.3, "rectum_content": 0.05, "vessel": 0.07,
    "pelvic_cortex": 0.05, "pelvic_marrow": 0.7, "joint_fluid": 0.22, "cartilage": 0.4, "acetabular_sclerosis": 0.1,
    "femoral_cortex": 0.05, "subchondral_plate": 0.05, "red_marrow": 0.7, "yellow_marrow": 0.93,
    "edema_marrow": 0.55, "core_fat": 0.88, "core_blood": 0.78, "core_fluid": 0.24, "core_fibrous": 0.13,
    "band": 0.11, "regenerated": 0.75, "cyst": 0.22,
}


# ----------------------------------------------------------------------------- contrast

# ``random_contrast(visible=True)``: a core sub-type within this fraction of the viable marrow's signal is invisible
# by itself, so its band is drawn whole.
CORE_GAP = 0.15
CORE_TISSUES = ("core_fat", "core_blood", "core_fluid", "core_fibrous")


@dataclass
class Contrast:
    """Per-tissue mean and spread (std as a fraction of the mean range) of one random image."""

    mean: np.ndarray  # (N_TISSUES,)
    std: np.ndarray  # (N_TISSUES,)
    texture: np.ndarray  # (N_TISSUES,) amplitude of the smooth per-tissue texture
    band_gap: float  # fraction of the band drawn like its neighbours (invisible in places)


def random_contrast(rng: np.random.Generator, prior_prob: float = 0.5, post_contrast: float = 0.0,
                    visible: bool = False) -> Contrast:
    """Draw one contrast: fully random (SynthSeg) or the T1 prior with wide jitter; disease constraints enforced.

    ``post_contrast``: share of prior-based draws made post-contrast (0 keeps the older draws unchanged).
    ``visible``: every lesion can be seen: where a necrotic-core sub-type is drawn within ``CORE_GAP`` of the viable
    marrow (a fat-like core, Mitchell A), the band is drawn whole (no gaps), so the lesion is never labelled where
    neither its core nor its band shows (the draws are otherwise the same)."""
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
    if visible and any(abs(mean[T[k]] / viable - 1.0) < CORE_GAP for k in CORE_TISSUES):
        band_gap = 0.0
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


# Healthy marrow that ``marrow_mottle`` makes heterogeneous (the necrotic core, band and regenerated tissue keep
# their own texture).
MOTTLE_TISSUES = np.array([T[k] for k in ("yellow_marrow", "red_marrow", "pelvic_marrow", "edema_marrow")])


def marrow_mottle(img: np.ndarray, tissue: np.ndarray, rng: np.random.Generator,
                  max_loss: float = 0.5) -> np.ndarray:
    """Healthy marrow heterogeneity: islands of red marrow and trabecular streaks, darker than the marrow
    around them, which real T1 heads show (most of all after contrast and in older patients) and which the
    fine network must not read as necrosis or band.

    Dark patches of 1-3 mm (or streaks 4-12 mm long along a random voxel axis) cover part of the healthy
    marrow and take away up to 30-100% of ``max_loss`` of its signal (15-50% by default); the labels do not
    change (healthy marrow stays head).
    """
    marrow = np.isin(tissue, MOTTLE_TISSUES)
    if not marrow.any():
        return img
    if rng.uniform() < 0.4:  # trabecular streaks (the spatial augmentation turns them off the grid axes)
        sig = [float(rng.uniform(0.6, 1.2))] * 3
        sig[int(rng.integers(3))] = float(rng.uniform(4.0, 12.0))
        f = ndimage.gaussian_filter(rng.standard_normal(img.shape).astype(np.float32), sig)
        f = (f - f.mean()) / max(float(f.std()), 1e-6)
    else:  # red-marrow islands
        f = smooth_field(img.shape, rng, float(rng.uniform(0.8, 2.5)))
    dark = np.clip(f - np.float32(rng.uniform(-0.3, 1.0)), 0.0, 1.0)
    amp = np.float32(rng.uniform(0.3 * max_loss, max_loss))
    return np.where(marrow, img * (1.0 - amp * dark), img).astype(np.float32)


# Femoral marrow that a physeal scar crosses, and the marrow whose centroid gives the neck's direction.
SCAR_TISSUES = np.array([T[k] for k in ("yellow_marrow", "red_marrow", "edema_marrow")])


def physeal_scar(tissue: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                 spacing_mm: float, offset_r: tuple[float, float] = (0.05, 0.45)) -> np.ndarray:
    """The physeal scar of an adult femoral head: a thin, wavy, dark line of sclerotic bone across the base of
    the head (the closed growth plate), the classic mimic of the double-line sign. It is healthy head: painted
    as ``subchondral_plate`` tissue on the healthy head marrow only; the labels do not change.

    Geometry from the crop itself: the head is the head-labelled voxels (its centroid and equivalent-sphere
    radius R), the neck direction points from the head centre to the femoral marrow just outside the head.
    The scar is a surface ``offset_r`` (default 0.05-0.45) R from the centre towards the neck (the head-neck
    junction of a neck 0.65 R wide lies about 0.76 R out: 0.5-0.85 puts the scar near it, as adults show), tilted up to 50 degrees off
    perpendicular to the neck (real scars run from near perpendicular to the neck to near horizontal on coronal
    images), waved by 0.3-1.5 mm, 0.6-2.5 mm thick, with gaps over up to 30% of it.
    Returns a new tissue map (the input when the crop holds no usable head).
    """
    head = labels == L_HEAD
    lesion = (labels == L_NECROTIC) | (labels == L_BAND)
    whole = head | lesion
    n_vox = int(whole.sum())
    if n_vox < 500:
        return tissue
    idx = np.argwhere(whole)
    R = float((3.0 * n_vox / (4.0 * np.pi)) ** (1.0 / 3.0))  # voxels
    ci = idx.mean(axis=0)
    lo = np.maximum(np.floor(ci - 2.2 * R).astype(int), 0)
    hi = np.minimum(np.ceil(ci + 2.2 * R).astype(int) + 1, tissue.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))  # the work stays in a box around the head
    t_b, head_b, whole_b = tissue[box], head[box], whole[box]
    c = (ci - lo).astype(np.float32)
    marrow = np.isin(t_b, SCAR_TISSUES)
    grid = np.indices(t_b.shape, dtype=np.float32)
    d = np.sqrt(sum((grid[k] - c[k]) ** 2 for k in range(3)))
    neck = marrow & ~whole_b & (d > R) & (d < 2.2 * R)
    if neck.sum() < 50:
        return tissue
    n = np.argwhere(neck).astype(np.float32).mean(axis=0) - c
    n /= max(float(np.linalg.norm(n)), 1e-6)
    tilt = np.deg2rad(rng.uniform(0.0, 50.0))
    a = rng.standard_normal(3)
    a -= a.dot(n) * n
    a /= max(float(np.linalg.norm(a)), 1e-6)
    n = (n * np.cos(tilt) + np.cross(a, n) * np.sin(tilt)).astype(np.float32)
    offset = float(rng.uniform(*offset_r)) * R
    wave = smooth_field(t_b.shape, rng, float(rng.uniform(4.0, 10.0)) / spacing_mm)
    wave *= np.float32(rng.uniform(0.3, 1.5) / spacing_mm)
    s = sum((grid[k] - c[k]) * n[k] for k in range(3)) - np.float32(offset) - wave
    half = np.float32(rng.uniform(0.3, 1.25) / spacing_mm)
    scar = (np.abs(s) < half) & head_b & marrow
    gap = float(rng.uniform(0.0, 0.3))
    if gap > 0:
        scar &= smooth_field(t_b.shape, rng, 4.0 / spacing_mm) < np.quantile(rng.standard_normal(2000), 1 - gap)
    out = tissue.copy()
    out[box][scar] = T["subchondral_plate"]
    return out


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
    off = np.array([rng.uniform(-0.5, 0.5) * thick, rng.uniform(-110, 110), rng.uniform(-110, 110)])
    d = _slab_distances(shape, spacing, R, normal_axis, off)
    inside = np.ones(shape, bool)
    for di, half in zip(d, (thick / 2, fov[0] / 2, fov[1] / 2)):
        inside &= np.abs(di) <= half
    return inside


def _slab_distances(shape: tuple[int, int, int], spacing: float, R: np.ndarray, normal_axis: int,
                    off: np.ndarray) -> list[np.ndarray]:
    """Signed distances (mm) of a patch grid centred on the sampled voxel from a slab's centre ``off`` along its
    normal (column ``normal_axis`` of the rotation ``R``) and its two in-plane axes."""
    g = np.meshgrid(*[(np.arange(n, dtype=np.float32) - (n - 1) / 2) * spacing for n in shape], indexing="ij")
    axes = [R[:, (normal_axis + k) % 3] for k in (0, 1, 2)]
    return [a[0] * g[0] + a[1] * g[1] + a[2] * g[2] - o for a, o in zip(axes, off)]


def slab_edge(shape: tuple[int, int, int], spacing: float, rng: np.random.Generator,
              outside_mm: float = 15.0, loss_lo: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """A thin oblique slab whose edge cuts the patch near its centre, with the edge a real slab has.

    Returns (signal weight 0-1, inside-the-slab mask). Same geometry draws as ``slab_mask``, but one slab face
    lies within -``outside_mm``..+25 mm of the patch centre (through a head the sampled centre sits in; the centre
    up to ``outside_mm`` beyond the face: only a cap of that head in the slab), and the face is not
    a hard cut: the outermost 1-3 partitions lose 20-70% of their signal (the slab's RF profile), and the last
    slice fades to zero over one slice thickness, as resampling a thick-slice slab onto a fine grid does.
    Labels count as in view where the slab is (``inside``): a dimmed edge is still head, not necrosis.
    ``loss_lo``: the least signal loss of the outermost partitions (0: some slabs keep their last slice at full
    signal, as slice oversampling does); the default 0.2 draws exactly as before.
    """
    normal_axis = 2 if rng.uniform() < 0.7 else 1
    slice_mm = float(rng.uniform(3.0, 6.0))
    thick = float(rng.integers(12, 41) * slice_mm)
    fov = rng.uniform(220, 320, 2)
    R = rotation(rng.normal(size=3), np.deg2rad(rng.uniform(0, 30)))
    face = rng.choice([-1.0, 1.0]) * (thick / 2 - rng.uniform(-outside_mm, 25.0))  # slab centre so a face is near 0
    off = np.array([face, rng.uniform(-110, 110), rng.uniform(-110, 110)])
    d = _slab_distances(shape, spacing, R, normal_axis, off)
    depth = thick / 2 - np.abs(d[0])  # > 0 inside the slab
    in_plane = (np.abs(d[1]) <= fov[0] / 2) & (np.abs(d[2]) <= fov[1] / 2)
    fade = np.clip(depth / slice_mm + 0.5, 0.0, 1.0)  # linear from the last slice centre to half a slice beyond
    k, loss = int(rng.integers(1, 4)), float(rng.uniform(loss_lo, 0.7))
    profile = 1.0 - loss * np.clip(1.0 - depth / (k * slice_mm), 0.0, 1.0)
    return (fade * profile * in_plane).astype(np.float32), in_plane & (depth >= 0)


def _linear_weights(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Matrix of linear-interpolation weights giving values at positions ``dst`` from values at ``src``
    (increasing; ends held constant)."""
    j = np.clip(np.searchsorted(src, dst) - 1, 0, len(src) - 2)
    w = np.clip((dst - src[j]) / (src[j + 1] - src[j]), 0.0, 1.0)
    m = np.zeros((len(dst), len(src)))
    m[np.arange(len(dst)), j] = 1.0 - w
    m[np.arange(len(dst)), j + 1] = w
    return m


def thick_slices(img: np.ndarray, rng: np.random.Generator, spacing_mm: float,
                 thickness_mm: tuple[float, float] = (1.5, 7.7), gap: tuple[float, float] = (0.0, 0.3)) -> np.ndarray:
    """Thick slices along a random axis, as a scanner acquires them (SynthSeg-style): each slice averages the
    signal over its thickness (Gaussian slice profile, full width at half maximum = the thickness), slices are
    taken every thickness x (1 + gap) from a random start, and the volume is interpolated back linearly."""
    axis = int(rng.integers(3))
    thick = float(rng.uniform(*thickness_mm))
    step = thick * (1.0 + float(rng.uniform(*gap))) / spacing_mm
    n = img.shape[axis]
    blurred = ndimage.gaussian_filter1d(img, thick / 2.3548 / spacing_mm, axis=axis, mode="nearest")
    grid = np.arange(n, dtype=float)
    centres = float(rng.uniform(0.0, step)) + step * np.arange(-1, int(np.ceil(n / step)) + 1)
    resample = _linear_weights(centres, grid) @ _linear_weights(grid, centres)  # voxels <- slice centres <- voxels
    out = np.tensordot(resample, np.moveaxis(blurred, axis, 0), axes=(1, 0))
    return np.moveaxis(out, 0, axis).astype(img.dtype)


def rician(img: np.ndarray, rng: np.random.Generator, snr: tuple[float, float] = (5.0, 60.0)) -> np.ndarray:
    """Magnitude (Rician) noise at an SNR drawn log-uniformly, relative to the bright-tissue signal."""
    s = float(np.exp(rng.uniform(np.log(snr[0]), np.log(snr[1]))))
    ref = float(np.percentile(img[img > 0], 95)) if np.any(img > 0) else 1.0
    sigma = np.float32(ref / s)
    n1 = rng.standard_normal(img.shape, dtype=np.float32) * sigma
    n2 = rng.standard_normal(img.shape, dtype=np.float32) * sigma
    return np.sqrt((img + n1) ** 2 + n2**2)
