"""Figures of the follow-up report: aligned T1 views per timepoint and trajectory plots.

matplotlib Agg canvases only (``Figure`` + ``FigureCanvasAgg``; no pyplot global
state). Every function returns PNG bytes, so the HTML report can embed them.

Views are sampled on RAS-aligned planes in the *baseline* world through one
point (the baseline lesion centroid, or the head centre), so after
registration the same anatomical spot lies at the same pixel at every
timepoint. Display follows ``report.overlay``: radiological convention (patient
right on the image left in axial and coronal, anterior up in axial, superior
up in coronal and sagittal, anterior on the left in sagittal).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from onfh_seg.report.overlay import LABEL_COLOURS, VIEWS, _letters, panel, window
from onfh_seg.geometry import resample

DPI = 100
PANEL_INCH = 2.3
HIP_COLOURS = {"right": "tab:blue", "left": "tab:orange"}
SCORE_STYLE = {"color": "0.35", "linestyle": "--", "marker": "s", "markersize": 4}


def _png(fig: Figure, facecolor: str = "white") -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor=facecolor, metadata={"Software": None})
    return buf.getvalue()


# ---------------------------------------------------------------- aligned views


def sample_views(
    image: np.ndarray,
    labels: np.ndarray | None,
    affine: np.ndarray,
    to_baseline: np.ndarray | None,
    centre_ras: Sequence[float],
    half_mm: float,
    step_mm: float = 0.5,
) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Axial, coronal and sagittal display planes through a baseline-world point.

    Each plane is a RAS-aligned grid (``step_mm`` pixels, +-``half_mm``) in the
    baseline world; the scan is sampled through ``to_baseline`` (its
    follow-up -> baseline RAS matrix; None for the baseline itself), the image
    trilinearly and the labels nearest-neighbour. Returns
    ``{view: (image2d, labels2d)}`` already in display orientation
    (``overlay.panel``).
    """
    n = int(math.ceil(half_mm / step_mm))
    c = np.asarray(centre_ras, np.float64)
    out = {}
    for view, axis, _ in VIEWS:
        shape = [2 * n + 1] * 3
        shape[axis] = 1
        aff = np.diag([step_mm, step_mm, step_mm, 1.0])
        aff[:3, 3] = c - n * step_mm
        aff[axis, 3] = c[axis]
        img = resample(image, affine, aff, shape, order=1, cval=0.0, src_to_dst=to_baseline)
        lab = None
        if labels is not None:
            lab = panel(resample(labels, affine, aff, shape, order=0, src_to_dst=to_baseline), axis, 0)
        out[view] = (panel(img, axis, 0), lab)
    return out


def views_png(
    columns: Sequence[tuple[str, Mapping[str, tuple[np.ndarray, np.ndarray | None]]]],
    title: str,
) -> bytes:
    """Montage: one row per view (axial, coronal, sagittal), one column per timepoint.

    ``columns`` are ``(column title, sample_views(...) result)``. Contours:
    head yellow, necrotic zone red, band cyan, acetabulum green; the panel
    centre (the sampled point) is marked with a small orange cross. Grey
    window: 1-99.5 percentiles per timepoint (scanner units differ between
    scans).
    """
    ncol = max(1, len(columns))
    fig = Figure(figsize=(ncol * PANEL_INCH, 3 * PANEL_INCH + 0.45), dpi=DPI, facecolor="black")
    FigureCanvasAgg(fig)
    fig.suptitle(title, color="white", fontsize=10)
    for col, (col_title, views) in enumerate(columns):
        vals = np.concatenate([v[0].ravel() for v in views.values()])
        vmin, vmax = window(vals[vals > 0] if np.any(vals > 0) else vals)
        for row, (view, _, letters) in enumerate(VIEWS):
            ax = fig.add_subplot(3, ncol, row * ncol + col + 1)
            img2d, lab2d = views[view]
            ax.imshow(img2d, cmap="gray", vmin=vmin, vmax=vmax, interpolation="bilinear")
            if lab2d is not None:
                for value, colour in LABEL_COLOURS.items():
                    m = lab2d == value
                    if m.any() and not m.all():
                        ax.contour(m.astype(np.float32), levels=[0.5], colors=colour, linewidths=0.9)
            cy, cx = (img2d.shape[0] - 1) / 2.0, (img2d.shape[1] - 1) / 2.0
            ax.plot([cx], [cy], marker="+", color="orange", markersize=7, markeredgewidth=0.8)
            ax.set_xlim(-0.5, img2d.shape[1] - 0.5)
            ax.set_ylim(img2d.shape[0] - 0.5, -0.5)
            _letters(ax, letters)
            ax.set_title(f"{col_title}: {view}", color="white", fontsize=8)
            ax.set_axis_off()
    top = 1.0 - 0.45 / fig.get_figheight() - 0.015
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=top, wspace=0.03, hspace=0.12)
    return _png(fig, "black")


# ---------------------------------------------------------------- trajectories


def _series(record: dict, hip: dict, key: str, scale: float = 1.0) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for tp in hip["timepoints"]:
        v = tp.get(key)
        if v is not None and math.isfinite(float(v)):
            xs.append(float(tp["months"]))
            ys.append(float(v) * scale)
    return xs, ys


def _score_series(visits: Sequence[dict], score: str) -> tuple[list[float], list[float]]:
    pts = [(float(v["months"]), float(v[score])) for v in visits if score in v]
    return [p[0] for p in pts], [p[1] for p in pts]


def primary_score(visits: Sequence[dict]) -> str | None:
    """The clinical score drawn on the second axis of the imaging panels."""
    for s in ("harris_hip_score", "vas_walking", "functional_rating_index"):
        if any(s in v for v in visits):
            return s
    for v in visits:
        for k in v:
            if k not in ("months", "timepoint"):
                return k
    return None


def trajectory_png(record: dict) -> bytes:
    """Imaging metrics against months, one line per hip, a clinical score on a second axis.

    Panels: lesion volume (mL), % of head involved, regenerated fraction (%),
    SIR (baseline zone solid, current lesion dotted), and all clinical scores.
    """
    hips = record["hips"]
    visits = record.get("visits") or []
    score = primary_score(visits)
    panels = [
        ("Lesion volume (mL)", "lesion_volume_ml", 1.0),
        ("Lesion, % of head", "percent_head_involved", 1.0),
        ("Regenerated fraction (%)", "regenerated_pct", 1.0),
        ("SIR vs reference", "sir_baseline_zone", 1.0),
    ]
    fig = Figure(figsize=(12.0, 6.4), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.suptitle(f"{record['patient_id']}: trajectories (months from baseline)", fontsize=11)
    for i, (title, key, scale) in enumerate(panels):
        ax = fig.add_subplot(2, 3, i + 1)
        top = 0.0
        for h in hips:
            colour = HIP_COLOURS.get(h["hip"], "tab:green")
            xs, ys = _series(record, h, key, scale)
            if xs:
                name = f"{h['hip']}: baseline zone" if key == "sir_baseline_zone" else f"{h['hip']} hip"
                ax.plot(xs, ys, marker="o", color=colour, label=name)
                top = max(top, max(ys))
            if key == "sir_baseline_zone":
                xs2, ys2 = _series(record, h, "sir_lesion")
                if xs2:
                    ax.plot(xs2, ys2, marker=".", linestyle=":", color=colour, label=f"{h['hip']}: current lesion")
        if key == "regenerated_pct":
            ax.set_ylim(-2.0, max(10.0, 1.1 * top))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("months", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if score:
            ax2 = ax.twinx()
            xs, ys = _score_series(visits, score)
            ax2.plot(xs, ys, **SCORE_STYLE, label=score.replace("_", " "))
            ax2.set_ylabel(score.replace("_", " "), fontsize=7, color="0.35")
            ax2.tick_params(labelsize=7, colors="0.35")
        if i == 0:
            handles, labels = ax.get_legend_handles_labels()
            if score:
                h2, l2 = ax2.get_legend_handles_labels()
                handles, labels = handles + h2, labels + l2
            if handles:
                ax.legend(handles, labels, fontsize=7, loc="best")
        elif key == "sir_baseline_zone" and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc="best")
    ax = fig.add_subplot(2, 3, 5)
    ax.set_title("Clinical scores", fontsize=9)
    names = sorted({k for v in visits for k in v if k not in ("months", "timepoint")})
    ax_r = None
    for name in names:
        xs, ys = _score_series(visits, name)
        small = max(ys, default=0.0) <= 10.0 and not name.endswith("_deg")
        if small:
            ax_r = ax_r or ax.twinx()
            ax_r.plot(xs, ys, marker="s", linestyle="--", label=name.replace("_", " "))
        else:
            ax.plot(xs, ys, marker="o", label=name.replace("_", " "))
    if ax_r is not None:
        ax_r.set_ylabel("0-10 scales (dashed)", fontsize=7)
        ax_r.tick_params(labelsize=7)
        ax_r.legend(fontsize=6, loc="lower right")
    if names:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc="upper left")
    else:
        ax.text(0.5, 0.5, "no clinical scores", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("months", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    fig.subplots_adjust(left=0.05, right=0.95, bottom=0.08, top=0.9, wspace=0.45, hspace=0.4)
    return _png(fig)
