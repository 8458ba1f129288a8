"""PNG montage of label contours over the grey image (matplotlib Agg canvas; no pyplot, no torch).

Arrays are first reoriented to the closest RAS+ canonical grid (the array
equivalent of ``nibabel.as_closest_canonical``). Panels follow the radiological
convention: axial and coronal show the patient's right on the image left;
axial has anterior up, coronal and sagittal superior up, sagittal anterior on
the image left. Pixel aspect follows the voxel spacing.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from nibabel import orientations

from onfh_seg.io.nifti import atomic_write_bytes
from onfh_seg.labels import ACETABULUM, BAND, HEAD, HEAD_LABELS, LESION_LABELS, NECROTIC

LABEL_COLOURS: dict[int, str] = {HEAD: "yellow", NECROTIC: "red", BAND: "cyan", ACETABULUM: "lime"}
# Contours are drawn around nested unions of labels (so no line crosses the head where viable bone
# meets the lesion, and the band's inner edge does not hide the necrotic core): (legend text, labels, colour)
CONTOURS: tuple[tuple[str, tuple[int, ...], str], ...] = (
    ("femoral head outline", tuple(HEAD_LABELS), "yellow"),
    ("lesion outer border (interface band)", tuple(LESION_LABELS), "cyan"),
    ("necrotic core", (NECROTIC,), "red"),
    ("acetabulum", (ACETABULUM,), "lime"),
)
CROSS_LEGEND = "reference point (same anatomical point at every visit)"
PANEL_INCH = 3.2
LEGEND_INCH = 0.35
DPI = 100
# (name, fixed canonical axis, (left, right, top, bottom) orientation letters)
VIEWS = (
    ("axial", 2, ("R", "L", "A", "P")),
    ("coronal", 1, ("R", "L", "S", "I")),
    ("sagittal", 0, ("A", "P", "S", "I")),
)


def to_canonical(arr: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder/flip array axes to the closest RAS+ grid; returns (array, new affine)."""
    ornt = orientations.io_orientation(affine)
    transform = orientations.ornt_transform(ornt, orientations.axcodes2ornt(("R", "A", "S")))
    out = orientations.apply_orientation(arr, transform)
    new_affine = np.asarray(affine, np.float64) @ orientations.inv_ornt_aff(transform, arr.shape)
    return out, new_affine


def window(image: np.ndarray, lo_pct: float = 1.0, hi_pct: float = 99.5, max_voxels: int = 1_000_000) -> tuple[float, float]:
    """Display window from percentiles of the finite voxels (a regular subsample of about
    ``max_voxels`` of them for large volumes: a display window does not need every voxel)."""
    flat = np.asarray(image).ravel()
    step = max(1, flat.size // max_voxels)
    vals = np.asarray(flat[::step], np.float64)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(vals, [lo_pct, hi_pct])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def panel(volume: np.ndarray, fixed_axis: int, index: int) -> np.ndarray:
    """2-D display array of a canonical (RAS) volume at ``index`` along ``fixed_axis``.

    The remaining axes (a, b) become columns and rows, both reversed: rows run
    from high b (A or S) at the top, columns from high a (R, or A) at the left.
    """
    sl = np.take(volume, index, axis=fixed_axis)
    return sl.T[::-1, ::-1]


def _crop_bounds(n: int, centre: int, half: int | None) -> tuple[int, int]:
    if half is None:
        return 0, n
    return max(0, centre - half), min(n, centre + half + 1)


def _centre_items(centres_ras) -> list[tuple[str, np.ndarray | None]]:
    if isinstance(centres_ras, Mapping):
        items = [(str(k), np.asarray(v, np.float64)) for k, v in centres_ras.items()]
    else:
        items = [(f"centre {n + 1}", np.asarray(v, np.float64)) for n, v in enumerate(centres_ras)]
    return items or [("mid planes", None)]


def overlay_png(
    image: np.ndarray,
    labels: np.ndarray | None,
    affine: np.ndarray,
    centres_ras: Sequence[Sequence[float]] | Mapping[str, Sequence[float]],
    out_path: str | Path,
    title: str,
    half_width_mm: float | None = 80.0,
) -> None:
    """Write a PNG montage: one row per centre (axial, coronal, sagittal through it).

    ``centres_ras`` are RAS+ mm points (a mapping gives row names, e.g.
    {"right": [...], "left": [...]}); if empty, one row of the three mid planes
    of the volume (uncropped). With a centre, panels are cropped to
    +-``half_width_mm`` around it (None: whole plane). Contours (``CONTOURS``):
    head outline yellow, lesion border cyan, necrotic core red, acetabulum
    green, named in a legend under the panels; each panel title gives the
    slice position (world RAS mm), orientation letters sit at the panel edges
    and a scale bar at the bottom right. Grey window: 1-99.5 percentiles.
    Written atomically.
    """
    img, can_aff = to_canonical(np.asarray(image, np.float32), affine)
    lab = None if labels is None else to_canonical(np.asarray(labels), affine)[0]
    spacing = np.linalg.norm(can_aff[:3, :3], axis=0)
    vmin, vmax = window(img)
    inv = np.linalg.inv(can_aff)
    items = _centre_items(centres_ras)

    legend = lab is not None
    height = len(items) * PANEL_INCH + 0.5 + (LEGEND_INCH if legend else 0.0)
    fig = Figure(figsize=(3 * PANEL_INCH, height), dpi=DPI, facecolor="black")
    FigureCanvasAgg(fig)
    fig.suptitle(title, color="white", fontsize=10)
    for row, (name, centre) in enumerate(items):
        if centre is None:
            ijk = np.array(img.shape) // 2
            halves = [None, None, None]
        else:
            ijk = np.clip(np.rint(inv[:3, :3] @ centre + inv[:3, 3]).astype(int), 0, np.array(img.shape) - 1)
            halves = [None if half_width_mm is None else int(np.ceil(half_width_mm / s)) for s in spacing]
        for col, (view, axis, letters) in enumerate(VIEWS):
            ax = fig.add_subplot(len(items), 3, row * 3 + col + 1)
            a, b = [d for d in range(3) if d != axis]
            ra = _crop_bounds(img.shape[a], ijk[a], halves[a])
            rb = _crop_bounds(img.shape[b], ijk[b], halves[b])
            crop = [slice(None)] * 3
            crop[a], crop[b] = slice(*ra), slice(*rb)
            disp = panel(img[tuple(crop)], axis, ijk[axis])
            ax.imshow(disp, cmap="gray", vmin=vmin, vmax=vmax, aspect=spacing[b] / spacing[a], interpolation="nearest")
            if lab is not None:
                draw_contours(ax, panel(lab[tuple(crop)], axis, ijk[axis]), linewidth=1.0)
            if halves[a] is not None:
                # same mm window on every panel, even where the grid ends
                col = ra[1] - 1 - ijk[a]
                row_ = rb[1] - 1 - ijk[b]
                ax.set_xlim(col - halves[a] - 0.5, col + halves[a] + 0.5)
                ax.set_ylim(row_ + halves[b] + 0.5, row_ - halves[b] - 0.5)
            _letters(ax, letters)
            scale_bar(ax, spacing[a], spacing[b])
            position = float((can_aff @ np.append(ijk, 1.0))[axis])
            # fixed y: matplotlib's automatic title placement measured every tick (a third of the time)
            ax.set_title(f"{name}: {view}, {AXIS_NAMES[axis]} = {signed_mm(position)}", color="white", fontsize=8, y=1.0)
            ax.set_axis_off()
    top = 1.0 - 0.5 / fig.get_figheight() - 0.02
    bottom = (LEGEND_INCH / fig.get_figheight() if legend else 0.0) + 0.01
    if legend:
        fig.legend(handles=legend_handles(), loc="lower center", ncol=4, fontsize=7, frameon=False, labelcolor="white",
                   handlelength=1.5, columnspacing=1.2)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=bottom, top=top, wspace=0.03, hspace=0.12)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="black", metadata={"Software": None})
    atomic_write_bytes(out_path, buf.getvalue())


def _letters(ax, letters: tuple[str, str, str, str]) -> None:
    """Orientation letters at the left, right, top and bottom panel edges."""
    style = {"color": "orange", "fontsize": 8, "transform": ax.transAxes, "ha": "center", "va": "center"}
    left, right, top, bottom = letters
    ax.text(0.04, 0.5, left, **style)
    ax.text(0.96, 0.5, right, **style)
    ax.text(0.5, 0.95, top, **style)
    ax.text(0.5, 0.05, bottom, **style)


AXIS_NAMES = ("x", "y", "z")  # RAS+ world axis of the fixed canonical axis (sagittal, coronal, axial)


def signed_mm(v: float, decimals: int = 1) -> str:
    """A world coordinate in mm with its sign ("+12.0 mm"); never "-0.0"."""
    r = round(float(v), decimals)
    return f"{0.0 if r == 0 else r:+.{decimals}f} mm"


def label_fields(lab2d: np.ndarray) -> dict[str, np.ndarray]:
    """Float masks (0/1) of every ``CONTOURS`` layer of a 2-D label panel."""
    return {name: np.isin(lab2d, values).astype(np.float32) for name, values, _ in CONTOURS}


def draw_contours(ax, lab2d: np.ndarray | None, fields: Mapping[str, np.ndarray] | None = None,
                  linewidth: float = 1.5) -> None:
    """Contours of the ``CONTOURS`` layers at 0.5; ``fields`` (smooth 0-1 fields by layer name, e.g.
    interpolated masks on the display grid) replace the masks of ``lab2d`` where given."""
    fields = dict(fields or {})
    if lab2d is not None:
        fields = {**label_fields(lab2d), **fields}
    for name, _, colour in CONTOURS:
        f = fields.get(name)
        if f is None or f.max() < 0.5 or f.min() >= 0.5:
            continue
        width = linewidth * (1.3 if name == "necrotic core" else 1.0)
        ax.contour(f, levels=[0.5], colors=colour, linewidths=width)


def legend_handles(cross: bool = False) -> list:
    """Legend entries for every line (and the reference cross) drawn by ``draw_contours``."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colour, linewidth=2, label=name) for name, _, colour in CONTOURS]
    if cross:
        handles.append(Line2D([], [], color="orange", marker="+", linestyle="none", markersize=9, label=CROSS_LEGEND))
    return handles


def scale_bar(ax, mm_per_col: float, mm_per_row: float, colour: str = "white") -> None:
    """A horizontal scale bar (5, 10, 20 or 50 mm, about a fifth of the panel width) at the bottom right."""
    x0, x1 = sorted(ax.get_xlim())
    y_lo, y_hi = sorted(ax.get_ylim())  # rows grow downwards: y_hi is the bottom
    width_mm = (x1 - x0) * mm_per_col
    length = max([v for v in (5.0, 10.0, 20.0, 50.0) if v <= width_mm / 4] or [5.0])
    px = length / mm_per_col
    right = x1 - 0.06 * (x1 - x0)
    y = y_hi - 0.06 * (y_hi - y_lo)
    ax.plot([right - px, right], [y, y], color=colour, linewidth=2.5, solid_capstyle="butt")
    ax.text(right - px / 2, y - 0.025 * (y_hi - y_lo), f"{length:g} mm", color=colour, fontsize=7,
            ha="center", va="bottom")
