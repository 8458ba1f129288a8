"""Style B texture: smoothed random lattices (value noise, several octaves), not sums of plane waves,
and the axis-aligned grids that hold rendered signal (``GridB``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from onfh_seg.synth.shapes import Points


@dataclass(frozen=True)
class Lattice:
    """Band-limited random field: Gaussian-smoothed white noise on a lattice, trilinear between nodes, std ~1."""

    origin: np.ndarray
    cell_mm: float
    values: np.ndarray

    def __call__(self, P: Points) -> np.ndarray:
        idx = np.stack([(np.asarray(P[i], np.float32) - np.float32(self.origin[i])) / np.float32(self.cell_mm)
                        for i in range(3)])
        return ndimage.map_coordinates(self.values, idx, order=1, mode="nearest", prefilter=False)


def make_lattice(rng: np.random.Generator, lo, hi, cell_mm: float) -> Lattice:
    """Random field over the box [lo, hi] (mm) with features about 2-3 cells wide."""
    lo = np.asarray(lo, float) - 2 * cell_mm
    hi = np.asarray(hi, float) + 2 * cell_mm
    shape = tuple(int(v) for v in np.ceil((hi - lo) / cell_mm) + 1)
    v = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 1.0, mode="wrap")
    v = (v - v.mean()) / max(float(v.std()), 1e-6)
    return Lattice(lo, float(cell_mm), v.astype(np.float32))


@dataclass(frozen=True)
class Octaves:
    """Sum of lattices (fractal value noise), normalised to std ~1."""

    layers: tuple[Lattice, ...]
    weights: tuple[float, ...]

    def __call__(self, P: Points) -> np.ndarray:
        out = np.zeros(np.shape(P[0]), np.float32)
        for f, w in zip(self.layers, self.weights):
            out += np.float32(w) * f(P)
        return out


def make_octaves(rng: np.random.Generator, lo, hi, cell_mm: float, n: int = 2) -> Octaves:
    """``n`` lattices with cells ``cell_mm``, ``cell_mm/2``, ... and amplitudes 1, 0.5, ... (std ~1)."""
    layers = tuple(make_lattice(rng, lo, hi, cell_mm / 2**i) for i in range(n))
    w = np.array([0.5**i for i in range(n)])
    w = w / np.sqrt((w**2).sum())
    return Octaves(layers, tuple(float(x) for x in w))


def smoothstep(x: np.ndarray) -> np.ndarray:
    """Cubic 0..1 ramp of x clipped to [0, 1]."""
    t = np.clip(x, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


# ---------------------------------------------------------------- grids of rendered signal


@dataclass
class GridB:
    """Axis-aligned anatomy-frame grid with rendered style-B signal."""

    origin: np.ndarray
    spacing: float
    shape: tuple[int, int, int]
    img: np.ndarray

    def index(self, P: Points) -> np.ndarray:
        return np.stack([(P[i] - np.float32(self.origin[i])) / np.float32(self.spacing) for i in range(3)])


def grid_points(origin: np.ndarray, spacing: float, shape: tuple[int, int, int]) -> Points:
    """The voxel centres of an axis-aligned grid (anatomy frame), flattened."""
    ax = [np.float32(origin[i]) + np.arange(shape[i], dtype=np.float32) * np.float32(spacing) for i in range(3)]
    g = np.meshgrid(*ax, indexing="ij")
    return tuple(a.ravel() for a in g)
