"""Style B acquisition: scan planes, receive coils and image formation in k-space (see ``style_b``).

2D oblique planes with thick slices and a 4-point slice profile, or 3D
isotropic slabs; image formation in k-space from an oversampled object
(truncation gives Gibbs ringing), motion ghosts along the phase-encoding
direction, phased-array receive sensitivity (root-sum-of-squares of surface-coil
elements) as the bias field, complex noise scaled by a parallel-imaging
g-factor map, magnitude image (Rician statistics).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from onfh_seg.synth.patient import Patient
from onfh_seg.synth.shapes import Points, rotation, take, unit

OVERSAMPLE = 2  # in-plane object oversampling before k-space truncation
# Voxel axis directions (world RAS rows) of the un-tilted scan planes.
BASE_AXES = {
    "axial": np.array([[-1, 0, 0], [0, -1, 0], [0, 0, 1]], float),
    "coronal": np.array([[-1, 0, 0], [0, 0, -1], [0, 1, 0]], float),
    "sagittal": np.array([[0, -1, 0], [0, 0, -1], [1, 0, 0]], float),
}


@dataclass
class ScanB:
    """One style-B acquisition (scanner world RAS mm)."""

    protocol: str  # "oblique_2d" | "iso_3d"
    orientation: str  # the base plane: axial | coronal | sagittal
    oblique_deg: float
    fov_kind: str  # "pelvis" | "hip"
    shape: tuple[int, int, int]
    affine: np.ndarray
    inplane_mm: float
    slice_mm: float
    gap_mm: float
    snr: float
    phase_axis: int  # in-plane voxel axis of phase encoding (0 or 1)
    ghost_mm: float  # amplitude of periodic motion along the phase direction
    ghost_period: float  # lines per motion cycle
    gfactor_max: float
    kspace_taper: float  # 0: plain truncation (strong ringing) .. 0.4: tapered edge of k-space
    coils: np.ndarray  # (n, 3) receive element positions, anatomy frame
    coil_mm: float  # element sensitivity length scale
    scale: float


def _choice(rng: np.random.Generator, probs: dict) -> str:
    keys = list(probs)
    p = np.array([float(probs[k]) for k in keys])
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def coil_positions(pat: Patient, rng: np.random.Generator) -> np.ndarray:
    """Anterior and posterior phased-array elements on the body surface (anatomy frame)."""
    ax, ay = pat.body_axes
    pos = []
    for sy, yy in ((1, pat.body_y + ay + 15), (-1, pat.body_y - ay * 1.08 - 15)):
        for xx in np.linspace(-0.6 * ax, 0.6 * ax, 3):
            for zz in (-60.0, 40.0):
                pos.append([xx + rng.normal(0, 8), yy + sy * rng.normal(0, 5), zz + rng.normal(0, 10)])
    return np.array(pos)


def coil_sensitivity(P: Points, coils: np.ndarray, length_mm: float) -> np.ndarray:
    """Root-sum-of-squares receive sensitivity of surface elements, normalised to ~1 at the pelvis centre."""
    acc = np.zeros(np.shape(P[0]), np.float32)
    ref = 0.0
    for c in coils:
        d2 = (P[0] - np.float32(c[0])) ** 2 + (P[1] - np.float32(c[1])) ** 2 + (P[2] - np.float32(c[2])) ** 2
        acc += (1.0 / (1.0 + d2 / np.float32(length_mm**2))) ** 3
        ref += float((1.0 / (1.0 + float(c @ c) / length_mm**2)) ** 3)
    return np.sqrt(acc / np.float32(ref)).astype(np.float32)


def sample_scan(rng: np.random.Generator, opt: dict, pat: Patient, pose: np.ndarray, protocol: str,
                orientation: str, fov_kind: str, tilt: np.ndarray, res: tuple[float, float, float]) -> ScanB:
    """Grid, tilt and artefact settings of one style-B scan around the posed pelvis or hip."""
    diseased = [s for s, h in pat.hips.items() if h.diseased]
    side = diseased[0] if diseased else "right"
    inplane, slice_mm, gap = res
    if fov_kind == "hip":
        target = pat.hips[side].centre
        fov = rng.uniform(160, 210)
        coverage = rng.uniform(95, 115) if protocol == "oblique_2d" else rng.uniform(90, 110)
    else:
        target = np.array([0.0, np.mean([h.centre[1] for h in pat.hips.values()]), -10.0])
        fov = float(np.clip(2 * pat.body_axes[0] + 40, 340, 440))
        coverage = {"axial": 160.0, "coronal": 130.0, "sagittal": 250.0}[orientation]
        if protocol == "iso_3d":
            coverage = {"axial": 130.0, "coronal": 110.0}[orientation]
    matrix = int(min(round(fov / inplane), int(opt["max_matrix"])))
    matrix += matrix % 2
    inplane = fov / matrix
    step = slice_mm + gap
    nsl = int(np.ceil(coverage / step))
    centre = pose[:3, :3] @ target + pose[:3, 3] + rng.uniform(-6, 6, size=3)
    shape = (matrix, matrix, nsl)
    R = tilt @ BASE_AXES[orientation].T  # columns: voxel axis directions in world
    aff = np.eye(4)
    aff[:3, :3] = R * np.array([inplane, inplane, step])[None, :]
    aff[:3, 3] = centre - aff[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    ang = float(np.degrees(np.arccos(np.clip((np.trace(tilt) - 1) / 2, -1, 1))))
    return ScanB(
        protocol=protocol, orientation=orientation, oblique_deg=ang, fov_kind=fov_kind, shape=shape, affine=aff,
        inplane_mm=float(inplane), slice_mm=float(slice_mm), gap_mm=float(gap), snr=float(rng.uniform(*opt["snr"])),
        phase_axis=int(rng.integers(2)), ghost_mm=float(rng.uniform(*opt["ghost"])),
        ghost_period=float(rng.uniform(5, 24)), gfactor_max=float(rng.uniform(*opt["gfactor"])),
        kspace_taper=float(rng.choice([0.0, 0.0, 0.15, 0.35])), coils=coil_positions(pat, rng),
        coil_mm=float(rng.uniform(110, 220)), scale=float(np.exp(rng.uniform(np.log(300), np.log(4000)))),
    )


def _slice_profile(scan: ScanB) -> tuple[np.ndarray, np.ndarray]:
    """Through-plane sample offsets (voxel units of the slice axis) and weights."""
    if scan.protocol == "iso_3d":
        return np.array([-0.25, 0.25]), np.array([0.5, 0.5])
    frac = scan.slice_mm / (scan.slice_mm + scan.gap_mm)  # slice thickness in units of the slice step
    return np.array([-0.42, -0.14, 0.14, 0.42]) * frac, np.array([0.18, 0.32, 0.32, 0.18])


def _sample(grids: dict, P: Points, prof: list[Points], w: np.ndarray) -> np.ndarray:
    """Object signal at points: fine hip grids (slice profile) where they cover, the coarse grid elsewhere."""
    c = grids["coarse"]
    out = ndimage.map_coordinates(c.img, c.index(P), order=1, mode="constant", cval=0.0, prefilter=False)
    done = np.zeros(out.shape, bool)
    for f in grids["fine"].values():
        idx = f.index(P)
        hi = np.array(f.shape, np.float32)[:, None] - 2
        inside = np.all((idx >= 1) & (idx <= hi), axis=0) & ~done
        if not inside.any():
            continue
        acc = np.zeros(int(inside.sum()), np.float32)
        for Q, wk in zip(prof, w):
            qi = f.index(take(Q, inside))
            acc += np.float32(wk) * ndimage.map_coordinates(f.img, qi, order=1, mode="nearest", prefilter=False)
        out[inside] = acc
        done |= inside
    return out


def kspace_window(n: int, taper: float) -> np.ndarray:
    """Tukey window over ``n`` k-space lines (taper 0: none)."""
    if taper <= 0:
        return np.ones(n, np.float32)
    x = np.abs(np.arange(n) - (n - 1) / 2) / (n / 2)
    edge = 1 - taper
    w = np.where(x <= edge, 1.0, 0.5 * (1 + np.cos(np.pi * (x - edge) / taper)))
    return w.astype(np.float32)


def form_slice(obj: np.ndarray, n: int, win: np.ndarray, phase_shift: np.ndarray, phase_axis: int) -> np.ndarray:
    """Complex n x n image of an oversampled slice (N x N object, N >= n): the central n x n of its k-space,
    windowed by ``win`` on both axes, each phase-encoding line (along ``phase_axis``) times ``phase_shift``."""
    N = obj.shape[0]
    K = np.fft.fftshift(np.fft.fft2(obj))
    s = N // 2 - n // 2
    K = K[s:s + n, s:s + n] * (win[:, None] * win[None, :])
    if phase_axis == 0:
        K = K * phase_shift[:, None]
    else:
        K = K * phase_shift[None, :]
    return (np.fft.ifft2(np.fft.ifftshift(K)) * np.float32((n / N) ** 2)).astype(np.complex64)


def _gfactor(n: int, scan: ScanB, rng: np.random.Generator) -> np.ndarray:
    """Parallel-imaging noise amplification over a slice: worst mid-FOV along the phase direction."""
    u = (np.arange(n) + 0.5) / n
    prof = 1 + (scan.gfactor_max - 1) * np.exp(-(((u - 0.5) / 0.22) ** 2))
    read = 1 + 0.08 * np.cos(2 * np.pi * (u + rng.uniform()))
    g = prof[:, None] * read[None, :] if scan.phase_axis == 0 else read[:, None] * prof[None, :]
    return g.astype(np.float32)


def acquire_b(grids: dict, scan: ScanB, pose: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Simulate one style-B scan; returns the int16 magnitude image on the scan grid."""
    A = (np.linalg.inv(pose) @ scan.affine).astype(np.float32)  # voxel -> anatomy
    n, _, nsl = scan.shape
    N = OVERSAMPLE * n
    u = np.arange(N, dtype=np.float32) / OVERSAMPLE  # oversampled positions in voxel units
    gi, gj = np.meshgrid(u, u, indexing="ij")
    gi, gj = gi.ravel(), gj.ravel()
    offs, wts = _slice_profile(scan)
    win = kspace_window(n, scan.kspace_taper)
    k = np.arange(n) - n // 2  # phase-encoding line frequencies
    disp = scan.ghost_mm / scan.inplane_mm * np.sin(2 * np.pi * np.arange(n) / scan.ghost_period + rng.uniform(0, 2 * np.pi))
    phase_shift = np.exp(-2j * np.pi * k * disp / n).astype(np.complex64)
    g = _gfactor(n, scan, rng)
    sigma = np.float32(0.5 / scan.snr)
    out = np.zeros(scan.shape, np.float32)
    for s in range(nsl):
        def pts(ks: float) -> Points:
            return tuple(A[r, 0] * gi + A[r, 1] * gj + A[r, 2] * np.float32(s + ks) + A[r, 3] for r in range(3))
        P = pts(0.0)
        obj = _sample(grids, P, [pts(o) for o in offs], wts)
        obj *= coil_sensitivity(P, scan.coils, scan.coil_mm)
        img = form_slice(obj.reshape(N, N), n, win, phase_shift, scan.phase_axis)
        noise = (rng.standard_normal((n, n), dtype=np.float32) + 1j * rng.standard_normal((n, n), dtype=np.float32))
        out[:, :, s] = np.abs(img + noise * (sigma * g))
    return np.clip(np.round(out * np.float32(scan.scale)), 0, 32767).astype(np.int16)


def coil_range(scan: ScanB, pose: np.ndarray) -> float:
    """Half the relative spread (max-min)/(max+min) of the receive sensitivity within 120 mm of the FOV centre."""
    A = np.linalg.inv(pose) @ scan.affine
    c = A[:3, :3] @ ((np.array(scan.shape) - 1) / 2.0) + A[:3, 3]
    rng = np.random.default_rng(0)
    pts = c + rng.uniform(-120, 120, size=(2000, 3))
    s = coil_sensitivity(tuple(pts[:, i].astype(np.float32) for i in range(3)), scan.coils, scan.coil_mm)
    return float((s.max() - s.min()) / (s.max() + s.min()))


def plan_scans_b(plan, opt: dict, seed: int, index: int) -> tuple[str, list[ScanB]]:
    """Style-B protocol and one scan per timepoint (same protocol, tilt and resolution at every visit).

    ``opt``: the style-B options (``style_b.style_options``); ``plan``: ``plan.plan_patient``'s plan.
    """
    pat = plan.patient
    rng = np.random.default_rng([int(seed), 0xB, index])
    protocol = _choice(rng, opt["protocols"])
    if protocol == "oblique_2d":
        orientation = _choice(rng, opt["orientations_2d"])
        fov_kind = "hip" if (orientation == "sagittal" or rng.uniform() < opt["small_fov_fraction"]) else "pelvis"
        res = (rng.uniform(*opt["inplane_mm"]), rng.uniform(*opt["slice_mm"]), rng.uniform(*opt["gap_mm"]))
    else:
        orientation = _choice(rng, opt["orientations_3d"])
        fov_kind = "hip" if rng.uniform() < 0.5 else "pelvis"
        iso = rng.uniform(*opt["iso_mm"])
        res = (iso, iso, 0.0)
    lo, hi = opt["oblique_deg"] if protocol == "oblique_2d" else (0.0, 0.4 * opt["oblique_deg"][1])
    tilt = rotation(unit(rng.normal(size=3)), np.deg2rad(rng.uniform(lo, hi)))
    scans = [sample_scan(rng, opt, pat, pose, protocol, orientation, fov_kind, tilt, res) for pose in plan.poses]
    return protocol, scans
