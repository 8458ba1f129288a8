"""Signed-distance primitives and smooth random fields, evaluated on point arrays.

Points are passed as a tuple ``P = (x, y, z)`` of equally shaped float32 arrays
(world millimetres). Negative distance = inside.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Points = tuple[np.ndarray, np.ndarray, np.ndarray]


def take(P: Points, m: np.ndarray) -> Points:
    """The points where the mask ``m`` is true."""
    return (P[0][m], P[1][m], P[2][m])


def sub(P: Points, c) -> Points:
    """Points minus a constant vector."""
    return (P[0] - np.float32(c[0]), P[1] - np.float32(c[1]), P[2] - np.float32(c[2]))


def dot(P: Points, v) -> np.ndarray:
    """Dot product of each point with a constant vector."""
    return P[0] * np.float32(v[0]) + P[1] * np.float32(v[1]) + P[2] * np.float32(v[2])


def norm(P: Points) -> np.ndarray:
    """Euclidean norm of each point."""
    return np.sqrt(P[0] * P[0] + P[1] * P[1] + P[2] * P[2])


def smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum (smooth union of two SDFs, blend radius ``k`` mm)."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def sd_sphere(P: Points, c, r) -> np.ndarray:
    """Distance to a sphere (``r`` may be an array for a deformed sphere)."""
    return norm(sub(P, c)) - r


def sd_capsule(P: Points, a, b, r: float) -> np.ndarray:
    """Distance to a capsule from point ``a`` to ``b`` with radius ``r``."""
    a = np.asarray(a, np.float32)
    ba = np.asarray(b, np.float32) - a
    pa = sub(P, a)
    h = np.clip(dot(pa, ba) / np.float32(ba @ ba), 0.0, 1.0)
    return norm((pa[0] - ba[0] * h, pa[1] - ba[1] * h, pa[2] - ba[2] * h)) - np.float32(r)


def sd_ellipsoid(P: Points, c, axes, rot: np.ndarray | None = None) -> np.ndarray:
    """Approximate distance to an ellipsoid; ``rot`` rows are its local axes."""
    q = sub(P, c)
    if rot is not None:
        q = (dot(q, rot[0]), dot(q, rot[1]), dot(q, rot[2]))
    k = norm((q[0] / np.float32(axes[0]), q[1] / np.float32(axes[1]), q[2] / np.float32(axes[2])))
    return (k - 1.0) * np.float32(min(axes))


def unit(v) -> np.ndarray:
    """Normalised copy of a vector."""
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def rotation(axis, angle_rad: float) -> np.ndarray:
    """3x3 rotation matrix about ``axis`` (Rodrigues)."""
    x, y, z = unit(axis)
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    C = 1 - c
    return np.array(
        [
            [c + x * x * C, x * y * C - z * s, x * z * C + y * s],
            [y * x * C + z * s, c + y * y * C, y * z * C - x * s],
            [z * x * C - y * s, z * y * C + x * s, c + z * z * C],
        ]
    )


@dataclass(frozen=True)
class Waves:
    """A smooth random field: a sum of plane waves, roughly in [-1, 1]."""

    k: np.ndarray  # (n, 3) wave vectors, rad/mm
    phase: np.ndarray  # (n,)
    amp: np.ndarray  # (n,)

    def __call__(self, P: Points) -> np.ndarray:
        out = np.zeros(np.shape(P[0]), np.float32)
        for k, ph, a in zip(self.k, self.phase, self.amp):
            out += np.float32(a) * np.sin(dot(P, k) + np.float32(ph))
        return out


def make_waves(rng: np.random.Generator, n: int, wl_min: float, wl_max: float) -> Waves:
    """Random smooth field with wavelengths in [wl_min, wl_max] mm, peak amplitude about 1."""
    dirs = rng.normal(size=(n, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    wl = rng.uniform(wl_min, wl_max, size=n)
    k = dirs * (2 * np.pi / wl)[:, None]
    amp = rng.uniform(0.5, 1.0, size=n)
    amp /= amp.sum() * 0.6
    return Waves(k=k, phase=rng.uniform(0, 2 * np.pi, size=n), amp=amp)
