"""Signed-distance anatomy of the synthetic phantom: femoral head (with collapse), lesion and
core-decompression tract distances, femur, pelvis and body outlines, evaluated on arbitrary points.

Shared by both renderers (``phantom.render`` and ``style_b``), so their label maps mean the same thing.
"""

from __future__ import annotations

import numpy as np

from onfh_seg import labels as L
from onfh_seg.synth.patient import Hip, Patient
from onfh_seg.synth.shapes import (
    Points,
    dot,
    norm,
    rotation,
    sd_capsule,
    sd_ellipsoid,
    sd_sphere,
    smin,
    sub,
)


def head_radius_field(P: Points, h: Hip, collapse_mm: float) -> np.ndarray:
    """Deformed head radius along the direction of each point (dome flattened by collapse)."""
    q = sub(P, h.centre)
    rr = norm(q) + 1e-6
    r = np.float32(h.radius) * (1.0 + np.float32(0.02) * h.head_waves(P))
    if collapse_mm > 0:
        cosang = dot(q, h.lesion_dir) / rr
        bump = np.clip((cosang - np.float32(np.cos(np.deg2rad(40)))) / np.float32(1 - np.cos(np.deg2rad(40))), 0, 1)
        r = r - np.float32(collapse_mm) * np.sqrt(bump)
    return r


def head_region(P: Points, h: Hip, collapse_mm: float) -> np.ndarray:
    """Femoral head bone down to the head-neck junction plane (boolean)."""
    q = sub(P, h.centre)
    inside = norm(q) <= head_radius_field(P, h, collapse_mm)
    return inside & (dot(q, h.neck_dir) < np.float32(L.HEAD_NECK_JUNCTION_FRACTION * h.radius))


LESION_SHAPES = ("ball", "wedge", "crescent", "irregular", "multifocal")


def lesion_distance(P: Points, h: Hip) -> np.ndarray:
    """Serpiginous distance from the dome point; the lesion is where it is below ``R``.

    ``h.lesion_shape`` picks the level-set family (the default renderer uses only "ball"):
    a ball around the dome point; a wedge (a cone from deep in the head opening to the
    dome); a subchondral crescent (wide along the surface, shallow in depth); an
    irregular ball (stronger serpiginous border); several foci (``h.foci`` directions).
    """
    shape = h.lesion_shape
    if shape == "wedge":
        apex = h.centre - np.float32(0.7 * h.radius) * h.lesion_dir
        v = sub(P, apex)
        cosang = np.clip(dot(v, h.lesion_dir) / (norm(v) + 1e-6), -1, 1)
        d = np.float32(1.6 * h.radius) * np.arccos(cosang) + np.float32(0.15) * norm(sub(P, h.dome))
    elif shape == "crescent":
        q = sub(P, h.centre)
        rq = norm(q) + 1e-6
        ang = np.arccos(np.clip(dot(q, h.lesion_dir) / rq, -1, 1))
        d = np.maximum(np.float32(0.8 * h.radius) * ang, np.float32(3.0) * np.maximum(np.float32(h.radius) - rq, 0))
    elif shape == "multifocal":
        d = norm(sub(P, h.dome))
        for k, f in enumerate(h.foci):
            dome_k = h.centre + h.radius * np.asarray(f, float)
            d = np.minimum(d, norm(sub(P, dome_k)) * np.float32(1.0 + 0.25 * (k + 1)))
    else:
        d = norm(sub(P, h.dome))
    amp = np.float32(0.35 if shape == "irregular" else 0.09)
    return d * (1.0 + amp * h.serp_waves(P))


def tract_distance(P: Points, h: Hip) -> np.ndarray:
    """Distance to the injection tract (segment)."""
    return sd_capsule(P, h.tract_a, h.tract_b, 0.0)


def femur_sdf(P: Points, h: Hip, collapse_mm: float, head_r: np.ndarray | None = None) -> np.ndarray:
    """Signed distance to the proximal femur (head, neck, trochanters, shaft)."""
    if head_r is None:
        head_r = head_radius_field(P, h, collapse_mm)
    head = norm(sub(P, h.centre)) - head_r
    neck = sd_capsule(P, h.centre, h.shaft_top, h.neck_radius)
    gt = sd_ellipsoid(P, h.gt_centre, h.gt_axes)
    shaft = sd_capsule(P, h.shaft_top + h.shaft_dir * 10, h.shaft_top + h.shaft_dir * 400, 14.0)
    lt = sd_sphere(P, h.lt_centre, 9.0)
    f = smin(neck, shaft, 14.0)
    f = smin(f, gt, 8.0)
    f = smin(f, lt, 6.0)
    return np.minimum(f, head)


def pelvis_sdf(P: Points, pat: Patient) -> np.ndarray:
    """Signed distance to the pelvic bones in the field of view, sockets carved out."""
    out = sd_ellipsoid(P, (0, -92, 45), (42, 16, 55), rotation([1, 0, 0], -0.35))  # sacrum
    sym = pat.symphysis
    for h in pat.hips.values():
        s = h.s
        c = h.centre
        R_out = h.radius + h.joint_mm + 11.0
        cup = np.maximum(norm(sub(P, c)) - np.float32(R_out), dot(sub(P, c), h.cup_axis) - np.float32(h.rim_h))
        ilium = sd_ellipsoid(P, c + np.array([s * 6, -12, 55]), (11, 48, 50), rotation([0, 0, 1], -s * 0.5))
        pubis = sd_capsule(P, c + np.array([-s * 18, 16, -6]), sym + np.array([s * 6, 0, 0]), 8.0)
        isch = sd_capsule(P, c + np.array([-s * 6, -20, -20]), c + np.array([-s * 30, -32, -62]), 11.0)
        ramus = sd_capsule(P, c + np.array([-s * 30, -32, -62]), sym + np.array([s * 10, -4, -22]), 7.0)
        b = smin(cup, ilium, 10.0)
        b = smin(b, pubis, 8.0)
        b = smin(b, isch, 8.0)
        b = smin(b, ramus, 5.0)
        out = np.minimum(out, b)
    for h in pat.hips.values():
        out = np.maximum(out, -(norm(sub(P, h.centre)) - np.float32(h.radius + h.joint_mm)))
    return out


def body_sdf(P: Points, pat: Patient) -> np.ndarray:
    """Signed distance to the skin: pelvis ellipse above, two thighs below the perineum."""
    ax, ay = pat.body_axes
    x, y, z = P
    yy = y - np.float32(pat.body_y)
    ay_eff = np.where(yy < 0, np.float32(ay * 1.08), np.float32(ay))
    trunk = (np.sqrt((x / np.float32(ax)) ** 2 + (yy / ay_eff) ** 2) - 1.0) * np.float32(min(ax, ay))
    thighs = None
    for h in pat.hips.values():
        t = np.sqrt((x - np.float32(h.s * ax * 0.48)) ** 2 + (yy + 5) ** 2) - np.float32(ay * 0.9)
        thighs = t if thighs is None else np.minimum(thighs, t)
    w = np.clip((np.float32(-70) - z) / np.float32(40), 0, 1)
    body = trunk * (1 - w) + thighs * w
    return body + np.float32(6.0) * pat.body_waves(P)
