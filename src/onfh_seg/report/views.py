"""Aligned T1 views of the follow-up report: display planes per timepoint, drawn as contoured and plain panels.

matplotlib Agg canvases only (``Figure`` + ``FigureCanvasAgg``; no pyplot
global state); figures come back as PNG bytes for the HTML report.

Each view of each timepoint becomes two square panels (contoured, plain) that
the report shows one row per plane, one panel per visit.

Views are sampled on RAS-aligned planes in the *baseline* world through one
point (the baseline lesion centroid, or the head centre), so after
registration the same anatomical spot lies at the same pixel at every
timepoint. Display follows ``report.overlay``: radiological convention
(patient right on the image left in axial and coronal, anterior up in axial,
superior up in coronal and sagittal, anterior on the left in sagittal).

Contours are drawn on the display grid from smooth fields (shape-based
interpolation): each contour layer (``overlay.CONTOURS``) becomes a signed
distance map, measured within each slice for thick-slice scans, which is
interpolated trilinearly onto the plane, so an outline moves smoothly from
one slice to the next instead of in 5 mm steps; it is lightly smoothed and
contoured at its zero level (0.5 of ``layer_field``).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import ndimage

from onfh_seg.geometry import apply, crop_box, resample, voxel_spacing
from onfh_seg.report.overlay import CONTOURS, VIEWS, _letters, draw_contours, panel, scale_bar, window

DPI = 100
PANEL_PX = 400  # each panel, in PNG pixels (the report shows them at this size or smaller)
SMOOTH_MM = 0.7  # Gaussian sigma applied to the interpolated contour fields

View = tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray]]


def png_bytes(fig: Figure, facecolor: str = "white", dpi: int = DPI) -> bytes:
    """PNG bytes of an Agg figure (no software metadata, so the bytes are reproducible)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor=facecolor, metadata={"Software": None})
    return buf.getvalue()


def _plane(centre: np.ndarray, axis: int, n: int, step_mm: float) -> tuple[list[int], np.ndarray]:
    """Shape and affine of the RAS-aligned display plane through ``centre`` normal to world ``axis``."""
    shape = [2 * n + 1] * 3
    shape[axis] = 1
    aff = np.diag([step_mm, step_mm, step_mm, 1.0])
    aff[:3, 3] = centre - n * step_mm
    aff[axis, 3] = centre[axis]
    return shape, aff


def sample_views(
    image: np.ndarray,
    labels: np.ndarray | None,
    affine: np.ndarray,
    to_baseline: np.ndarray | None,
    centre_ras: Sequence[float],
    half_mm: float,
    step_mm: float = 0.5,
) -> dict[str, View]:
    """Axial, coronal and sagittal display planes through a baseline-world point.

    Each plane is a RAS-aligned grid (``step_mm`` pixels, +-``half_mm``) in the
    baseline world; the scan is sampled through ``to_baseline`` (its
    follow-up -> baseline RAS matrix; None for the baseline itself), the image
    trilinearly and the labels nearest-neighbour. Returns
    ``{view: (image2d, labels2d, fields)}`` in display orientation
    (``overlay.panel``), ``fields`` the smooth 0-1 field of every contour layer
    by name (empty without labels).
    """
    n = int(math.ceil(half_mm / step_mm))
    c = np.asarray(centre_ras, np.float64)
    crop, crop_aff = None, affine
    if labels is not None:  # contour fields only need the labels near the point
        c_scan = c if to_baseline is None else apply(np.linalg.inv(to_baseline), c)
        reach = math.sqrt(3.0) * half_mm + 2.0 * float(voxel_spacing(affine).max())
        crop, crop_aff = crop_box(np.asarray(labels), affine, c_scan, reach)
    sdfs: dict[str, np.ndarray] = {}
    if crop is not None and crop.size:
        for name, values, _ in CONTOURS:
            mask = np.isin(crop, values)
            if mask.any() and not mask.all():
                sdfs[name] = signed_distance(mask, voxel_spacing(crop_aff))
    out: dict[str, View] = {}
    for view, axis, _ in VIEWS:
        shape, aff = _plane(c, axis, n, step_mm)
        img = panel(resample(image, affine, aff, shape, order=1, cval=0.0, src_to_dst=to_baseline), axis, 0)
        lab = None
        fields: dict[str, np.ndarray] = {}
        if labels is not None:
            lab = panel(resample(labels, affine, aff, shape, order=0, src_to_dst=to_baseline), axis, 0)
            for name, sdf in sdfs.items():
                d = panel(resample(sdf, crop_aff, aff, shape, order=1, cval=FAR_MM, src_to_dst=to_baseline), axis, 0)
                fields[name] = ndimage.gaussian_filter(layer_field(d), SMOOTH_MM / step_mm)
        out[view] = (img, lab, fields)
    return out


FAR_MM = 1000.0  # signed distance outside the sampled labels


def signed_distance(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Signed distance (mm; negative inside) to the border of ``mask``; on an anisotropic grid (slices
    more than 1.5 times thicker than the in-plane pixels) measured within each slice, so that interpolating
    between slices moves the border smoothly (shape-based interpolation)."""
    sampling = np.asarray(spacing, np.float64).copy()
    if sampling.max() > 1.5 * sampling.min():
        sampling[int(np.argmax(sampling))] = FAR_MM
    outside = ndimage.distance_transform_edt(~mask, sampling=sampling)
    inside = ndimage.distance_transform_edt(mask, sampling=sampling)
    return np.minimum(outside - inside, FAR_MM).astype(np.float32)


def layer_field(sdf: np.ndarray, width_mm: float = 1.0) -> np.ndarray:
    """0-1 field of a signed distance map, 0.5 on its border, ramping over ``width_mm``."""
    return np.clip(0.5 - sdf / (2.0 * width_mm), 0.0, 1.0).astype(np.float32)


def view_window(views: Mapping[str, View]) -> tuple[float, float]:
    """Grey window of one timepoint: 1-99.5 percentiles of its positive pixels (scanner units differ)."""
    vals = np.concatenate([v[0].ravel() for v in views.values()])
    return window(vals[vals > 0] if np.any(vals > 0) else vals)


LABEL_PT = 16  # orientation letters and scale-bar text: about 8.5 pt when a panel prints 54 mm wide (3 visits on A4)


def panel_png(view: str, v: View, win: tuple[float, float], contoured: bool, step_mm: float = 0.5,
              cross: bool = True) -> bytes:
    """One view of one timepoint as a square panel: plain T1, or the same with contours (and an orange cross
    on the sampled point, the plane centre). Orientation letters and a scale bar on both; no title (the
    report captions it in text)."""
    img2d, lab2d, fields = v
    fig = Figure(figsize=(PANEL_PX / DPI, PANEL_PX / DPI), dpi=DPI, facecolor="black")
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.imshow(img2d, cmap="gray", vmin=win[0], vmax=win[1], interpolation="bilinear")
    ax.set_xlim(-0.5, img2d.shape[1] - 0.5)
    ax.set_ylim(img2d.shape[0] - 0.5, -0.5)
    if contoured:
        draw_contours(ax, None if fields else lab2d, fields, linewidth=1.8)
        if cross:
            cy, cx = (img2d.shape[0] - 1) / 2.0, (img2d.shape[1] - 1) / 2.0
            ax.plot([cx], [cy], marker="+", color="orange", markersize=14, markeredgewidth=1.6)
    _letters(ax, next(lt for name, _, lt in VIEWS if name == view), fontsize=LABEL_PT)
    scale_bar(ax, step_mm, step_mm, fontsize=LABEL_PT)
    ax.set_axis_off()
    return png_bytes(fig, "black")


def hip_view_pngs(columns: Sequence[tuple[str, Mapping[str, View]]]) -> dict[str, list[tuple[str, bytes, bytes]]]:
    """Per view (axial, coronal, sagittal): ``(column title, contoured PNG, plain PNG)`` for every timepoint."""
    out: dict[str, list[tuple[str, bytes, bytes]]] = {view: [] for view, _, _ in VIEWS}
    for col_title, views in columns:
        win = view_window(views)
        for view, _, _ in VIEWS:
            out[view].append((col_title, panel_png(view, views[view], win, True),
                              panel_png(view, views[view], win, False)))
    return out
