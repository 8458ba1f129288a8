"""Simulated MR acquisition: scan geometry, patient pose, slice profile, bias field, Rician noise.

The phantom is rendered once per timepoint on an anatomy-frame *coarse grid*
(whole body, 2.5 mm) and one *fine grid* per hip (0.8 mm, +/-48 mm around the
head centre). Each scan voxel is then sampled from those grids through the
patient pose, with several samples across the slice thickness (slice profile).
Labels are taken at voxel centres (nearest neighbour on the fine grid).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from onfh_seg.synth.patient import Patient
from onfh_seg.synth.phantom import render
from onfh_seg.synth.shapes import make_waves, rotation

FINE_MM = 0.8
FINE_HALF_MM = 48.0
COARSE_MM = 2.5

# Voxel axis directions (world RAS) per scan orientation, like a DICOM-ordered conversion.
ORIENTATION_AXES = {
    "axial": np.array([[-1, 0, 0], [0, -1, 0], [0, 0, 1]], float),  # L, P, S
    "coronal": np.array([[-1, 0, 0], [0, 0, -1], [0, 1, 0]], float),  # L, I, A
    "sagittal": np.array([[0, -1, 0], [0, 0, -1], [1, 0, 0]], float),  # P, I, R
}


@dataclass
class Grid:
    """An axis-aligned grid in the anatomy frame with rendered content."""

    origin: np.ndarray  # world position of voxel (0,0,0)
    spacing: float
    shape: tuple[int, int, int]
    img: np.ndarray | None = None
    lab: np.ndarray | None = None
    regen: np.ndarray | None = None

    def points(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        axes = [np.float32(self.origin[i]) + np.arange(self.shape[i], dtype=np.float32) * np.float32(self.spacing) for i in range(3)]
        g = np.meshgrid(*axes, indexing="ij")
        return tuple(a.ravel() for a in g)


@dataclass
class ScanGeometry:
    """Where and how a scan was acquired (scanner world RAS mm)."""

    orientation: str
    fov_kind: str  # "pelvis" or "hip"
    shape: tuple[int, int, int]
    affine: np.ndarray  # voxel -> scanner world
    inplane_mm: float
    slice_mm: float
    gap_mm: float
    snr: float
    bias_amplitude: float
    scale: float


def pose_matrix(rng: np.random.Generator, max_rot_deg: float, max_trans_mm: float) -> np.ndarray:
    """Random rigid pose (anatomy -> scanner world), rotation about a random axis."""
    axis = rng.normal(size=3)
    ang = np.deg2rad(rng.uniform(0, max_rot_deg))
    t = rng.normal(size=3)
    t = t / np.linalg.norm(t) * rng.uniform(0, max_trans_mm)
    M = np.eye(4)
    M[:3, :3] = rotation(axis, ang)
    M[:3, 3] = t
    return M


def render_grids(pat: Patient, months: float, previous: dict | None = None) -> dict:
    """Render the coarse body grid and one fine grid per hip at ``months``.

    With ``previous`` (the baseline grids), only the region around diseased heads
    is re-rendered; everything else is unchanged by the disease course.
    """
    ax_, ay_ = pat.body_axes
    if previous is None:
        lo = np.array([-ax_ - 30, pat.body_y - ay_ * 1.1 - 30, -160.0])
        hi = np.array([ax_ + 30, pat.body_y + ay_ + 30, 130.0])
        shape = tuple(int(v) for v in np.ceil((hi - lo) / COARSE_MM) + 1)
        coarse = Grid(lo, COARSE_MM, shape)
        coarse.img, coarse.lab, coarse.regen = (a.reshape(shape) for a in render(coarse.points(), pat, months))
        fine = {}
        n = int(round(2 * FINE_HALF_MM / FINE_MM)) + 1
        for side, h in pat.hips.items():
            g = Grid(h.centre - FINE_HALF_MM, FINE_MM, (n, n, n))
            g.img, g.lab, g.regen = (a.reshape(g.shape) for a in render(g.points(), pat, months))
            fine[side] = g
        return {"coarse": coarse, "fine": fine}
    fine = {}
    for side, g0 in previous["fine"].items():
        h = pat.hips[side]
        g = Grid(g0.origin, g0.spacing, g0.shape, g0.img.copy(), g0.lab.copy(), g0.regen.copy())
        if h.diseased:
            P = g.points()
            d2 = (P[0] - h.centre[0]) ** 2 + (P[1] - h.centre[1]) ** 2 + (P[2] - h.centre[2]) ** 2
            m = d2 < (h.radius + 14.0) ** 2
            img, lab, rg = render(tuple(a[m] for a in P), pat, months)
            for arr, new in ((g.img, img), (g.lab, lab), (g.regen, rg)):
                flat = arr.reshape(-1)
                flat[m] = new
        fine[side] = g
    return {"coarse": previous["coarse"], "fine": fine}


def acquire(grids: dict, geom: ScanGeometry, pose: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Simulate one scan: returns (int16 image, uint8 labels, uint8 regenerated) on the scan grid.

    Outside the hip boxes the coarse grid is sampled once per voxel (its 2.5 mm
    trilinear kernel already blurs more than the slice profile). Inside them the
    fine grid is sampled at three points across the slice thickness (slice
    profile) and labels are taken at the voxel centre.
    """
    A = (np.linalg.inv(pose) @ geom.affine).astype(np.float32)  # voxel -> anatomy
    nx, ny, nz = geom.shape
    g = np.meshgrid(np.arange(nx, dtype=np.float32), np.arange(ny, dtype=np.float32),
                    np.arange(nz, dtype=np.float32), indexing="ij")
    pts = [A[r, 0] * g[0] + A[r, 1] * g[1] + A[r, 2] * g[2] + A[r, 3] for r in range(3)]
    del g
    c = grids["coarse"]
    cidx = np.stack([((p - np.float32(o)) / np.float32(c.spacing)).ravel() for p, o in zip(pts, c.origin)])
    img = ndimage.map_coordinates(c.img, cidx, order=1, mode="constant", cval=0.0, prefilter=False)
    del cidx
    lab = np.zeros(img.shape, np.uint8)
    rgm = np.zeros(img.shape, np.uint8)
    slice_dir = A[:3, 2] / np.linalg.norm(A[:3, 2])
    offs = np.array([-1 / 3, 0.0, 1 / 3], np.float32) * np.float32(geom.slice_mm)
    wts = (0.25, 0.5, 0.25)
    for f in grids["fine"].values():
        fi = [((p - np.float32(o)) / np.float32(f.spacing)).ravel() for p, o in zip(pts, f.origin)]
        hi = np.array(f.shape, np.float32) - 2
        inside = np.ones(img.shape, bool)
        for d in range(3):
            inside &= (fi[d] >= 1) & (fi[d] <= hi[d])
        if not inside.any():
            continue
        fc = np.stack([a[inside] for a in fi])
        acc = np.zeros(fc.shape[1], np.float32)
        for o, w in zip(offs, wts):
            shift = (slice_dir * o / f.spacing).astype(np.float32)[:, None]
            acc += np.float32(w) * ndimage.map_coordinates(f.img, fc + shift, order=1, mode="nearest", prefilter=False)
        img[inside] = acc
        code = (f.lab + (f.regen.astype(np.uint8) << 4)).astype(np.uint8)
        cv = ndimage.map_coordinates(code, fc, order=0, mode="nearest", prefilter=False)
        lab[inside] = cv & 15
        rgm[inside] = cv >> 4
    img = img.reshape(geom.shape) * bias_field(geom, rng)
    sigma = np.float32(0.5 / geom.snr)
    n1 = rng.standard_normal(size=img.shape, dtype=np.float32) * sigma
    n2 = rng.standard_normal(size=img.shape, dtype=np.float32) * sigma
    mag = np.sqrt((img + n1) ** 2 + n2**2)
    out = np.clip(np.round(mag * np.float32(geom.scale)), 0, 32767).astype(np.int16)
    return out, lab.reshape(geom.shape), rgm.reshape(geom.shape)


def bias_field(geom: ScanGeometry, rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative coil bias over the scan, within +/- ``bias_amplitude``.

    Evaluated on a coarse lattice (every 16th voxel) and linearly upsampled.
    """
    waves = make_waves(rng, 4, 500, 900)
    step = 16
    ax = [np.arange(0, n + step, step, dtype=np.float32) for n in geom.shape]
    g = np.meshgrid(*ax, indexing="ij")
    A = geom.affine
    P = tuple((A[r, 0] * g[0] + A[r, 1] * g[1] + A[r, 2] * g[2] + A[r, 3]).astype(np.float32) for r in range(3))
    f = waves(P)
    f = f - f.mean()
    f = f / max(float(np.abs(f).max()), 1e-6)
    idx = np.meshgrid(*[np.arange(n, dtype=np.float32) / step for n in geom.shape], indexing="ij", sparse=True)
    full = ndimage.map_coordinates(f, np.broadcast_arrays(*idx), order=1, mode="nearest", prefilter=False)
    return (1.0 + np.float32(geom.bias_amplitude) * full).astype(np.float32)


def scan_affine(orientation: str, shape: tuple[int, int, int], spacing: tuple[float, float, float], centre: np.ndarray) -> np.ndarray:
    """Voxel -> world affine of a scanner-aligned grid centred on ``centre``."""
    D = ORIENTATION_AXES[orientation]
    A = np.eye(4)
    A[:3, :3] = D.T * np.asarray(spacing)[None, :]
    half = (np.asarray(shape) - 1) / 2.0
    A[:3, 3] = np.asarray(centre) - A[:3, :3] @ half
    return A
