"""Style B's labels and truth volumes, from the anatomy and disease geometry shared with ``phantom``.

``hip_geometry`` gives the label-defining regions of a hip (acetabulum, head, necrotic core, band,
regenerated zone) by the definitions of ``onfh_seg.labels``, the same as ``phantom.render``'s; the
labels are evaluated exactly at each scan voxel centre (``scan_labels``) and the continuous truth
volumes on a fine grid around each head (``fine_truth``, also used by ``style_c``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onfh_seg import labels as L
from onfh_seg.synth.anatomy_sdf import head_radius_field, lesion_distance, pelvis_sdf, tract_distance
from onfh_seg.synth.patient import Hip, Patient, hip_state
from onfh_seg.synth.scan_files import volume_record
from onfh_seg.synth.shapes import Points, dot, norm, sub, take
from onfh_seg.synth.style_b_scan import ScanB
from onfh_seg.synth.style_b_texture import grid_points

TRUTH_MM = 0.6  # grid of the continuous truth volumes
LABEL_RADIUS_PAD_MM = L.ACETABULUM_SHELL_MM + 3.0  # labels live within head radius + joint + this


@dataclass
class HipGeometry:
    """Label-defining regions of one hip on a set of points (same definitions as ``phantom``)."""

    rq: np.ndarray  # distance to the head centre
    hr: np.ndarray  # deformed head radius along each point's direction
    in_cup: np.ndarray
    acet: np.ndarray
    head: np.ndarray
    core: np.ndarray
    band: np.ndarray
    regen: np.ndarray
    band_depth: np.ndarray | None  # 0 at the viable edge of the band, 1 at the core edge (band points)


def hip_geometry(P: Points, h: Hip, months: float, pel: np.ndarray) -> HipGeometry:
    """Acetabulum, head, necrotic core, band and regenerated regions of hip ``h`` at ``months``."""
    st = hip_state(h, months)
    q = sub(P, h.centre)
    rq = norm(q)
    in_cup = dot(q, h.cup_axis) < np.float32(h.rim_h)
    Rs = np.float32(h.radius + h.joint_mm)
    hr = head_radius_field(P, h, st.collapse_mm)
    acet = (pel < 0) & in_cup & (rq < Rs + np.float32(L.ACETABULUM_SHELL_MM))
    head = (rq <= hr) & (dot(q, h.neck_dir) < np.float32(L.HEAD_NECK_JUNCTION_FRACTION * h.radius))
    none = np.zeros(rq.shape, bool)
    if not h.diseased:
        return HipGeometry(rq, hr, in_cup, acet, head, none, none, none, None)
    D = lesion_distance(P, h)
    base_les = head & (D < np.float32(h.lesion_R))
    les = head & (D < np.float32(st.lesion_R))
    band = les & (D >= np.float32(st.lesion_R - st.band_mm))
    depth = (np.float32(st.lesion_R) - D) / np.float32(max(st.band_mm, 1e-3))
    if st.regen_radius > 0:  # regenerated channel along the injection tract, lined by the band
        td = tract_distance(P, h)
        les &= td >= np.float32(st.regen_radius)
        band = les & (band | (td < np.float32(st.regen_radius + st.band_mm)))
        depth = np.minimum(depth, (td - np.float32(st.regen_radius)) / np.float32(max(st.band_mm, 1e-3)))
    core = les & ~band
    return HipGeometry(rq, hr, in_cup, acet, head, core, band, base_les & ~les, np.clip(depth, 0, 1))


def label_points(P: Points, pat: Patient, months: float) -> tuple[np.ndarray, np.ndarray]:
    """Labels (uint8) and regenerated mask at points, by the label definitions of ``onfh_seg.labels``."""
    n = np.shape(P[0])[0]
    lab = np.zeros(n, np.uint8)
    regen = np.zeros(n, bool)
    for h in pat.hips.values():
        q = sub(P, h.centre)
        r = np.float32(h.radius * 1.1 + h.joint_mm + LABEL_RADIUS_PAD_MM)
        m = (q[0] * q[0] + q[1] * q[1] + q[2] * q[2]) < r * r
        if not m.any():
            continue
        Q = take(P, m)
        g = hip_geometry(Q, h, months, pelvis_sdf(Q, pat))
        sub_lab, sub_rg = lab[m], regen[m]
        sub_lab[g.acet] = L.ACETABULUM
        sub_lab[g.head] = L.HEAD
        sub_lab[g.core] = L.NECROTIC
        sub_lab[g.band] = L.BAND
        sub_rg |= g.regen
        lab[m], regen[m] = sub_lab, sub_rg
    return lab, regen


def scan_labels(scan: ScanB, pose: np.ndarray, pat: Patient, months: float) -> tuple[np.ndarray, np.ndarray]:
    """Labels and regenerated mask at the scan voxel centres (exact geometry, no resampling)."""
    A = np.linalg.inv(pose) @ scan.affine
    g = np.meshgrid(*[np.arange(v, dtype=np.float32) for v in scan.shape], indexing="ij")
    P = tuple((A[r, 0] * g[0] + A[r, 1] * g[1] + A[r, 2] * g[2] + A[r, 3]).astype(np.float32).ravel() for r in range(3))
    lab, rg = label_points(P, pat, months)
    return lab.reshape(scan.shape), rg.astype(np.uint8).reshape(scan.shape)


def fine_truth(pat: Patient, months: float, spacing: float = TRUTH_MM) -> dict[str, dict]:
    """Continuous ground-truth volumes per hip from a ``spacing`` grid around each head."""
    vox = spacing**3 / 1000.0
    out = {}
    for side, h in pat.hips.items():
        half = h.radius + 6
        nn = int(np.ceil(2 * half / spacing)) + 1
        P = grid_points(h.centre - half, spacing, (nn,) * 3)
        q = sub(P, h.centre)
        Q = take(P, q[0] ** 2 + q[1] ** 2 + q[2] ** 2 < np.float32((h.radius + 5) ** 2))
        g = hip_geometry(Q, h, months, np.full(Q[0].shape, np.float32(100.0)))
        head = g.head.sum() * vox
        core, band = g.core.sum() * vox, g.band.sum() * vox
        out[side] = volume_record(head, core, band, g.regen.sum() * vox)
    return out
