"""Trajectory charts of the follow-up report: one quantity per chart, legends outside the data.

Imaging measures get one line per hip against months from baseline; each
clinical score gets its own chart with its readable name, unit and the
direction of better (``report.words.SCORES``). matplotlib Agg canvases only;
every function returns PNG bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from onfh_seg.report.views import png_bytes
from onfh_seg.report.words import score_title

CHART_SIZE_IN = (6.2, 2.9)  # 620 x 290 px: plot on the left, legend in its own column on the right
PLOT_RIGHT = 0.64  # the axes end here; the legend sits to their right
HIP_STYLE = {"right": {"color": "tab:blue", "marker": "o"}, "left": {"color": "tab:orange", "marker": "s"}}

# key -> (chart title, y-axis label)
IMAGING_CHARTS: dict[str, tuple[str, str]] = {
    "lesion_volume_ml": ("Lesion volume (necrotic zone + band)", "mL"),
    "percent_head_involved": ("Lesion, % of the femoral head", "% of head"),
    "regenerated_pct": ("Regenerated fraction of the baseline lesion", "% of baseline lesion"),
    "sir_baseline_zone": ("T1 signal ratio in the baseline lesion zone (primary SIR)", "SIR (vs reference)"),
    "collapse_mm": ("Head height loss along the lesion direction", "mm (positive = flatter)"),
}


def _finite(v) -> bool:
    return v is not None and math.isfinite(float(v))


def hip_series(hip: dict, key: str) -> tuple[list[float], list[float]]:
    """(months, values) of one measure of one hip, missing values left out."""
    pts = [(float(tp["months"]), float(tp[key])) for tp in hip["timepoints"] if _finite(tp.get(key))]
    return [p[0] for p in pts], [p[1] for p in pts]


def score_series(visits: Sequence[dict], score: str) -> tuple[list[float], list[float]]:
    """(months, values) of one clinical score over the visits that have it."""
    pts = [(float(v["months"]), float(v[score])) for v in visits if _finite(v.get(score))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _chart(title: str, ylabel: str) -> tuple[Figure, object]:
    fig = Figure(figsize=CHART_SIZE_IN, dpi=100, facecolor="white")
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.11, 0.17, PLOT_RIGHT - 0.11, 0.68))
    ax.set_title(title, fontsize=9, loc="left")
    ax.set_xlabel("months from baseline", fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    return fig, ax


def _legend_outside(fig: Figure, ax) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(PLOT_RIGHT + 0.02, 0.5), fontsize=7,
                   frameon=False)


def imaging_chart_png(hips: Sequence[dict], key: str, noise: dict[str, float] | None = None) -> bytes | None:
    """One imaging measure, one line per hip; None when no hip has a value.

    ``noise`` (hip name -> mm) shades the band around zero within which a
    change of that hip cannot be told from measurement noise (head height
    loss), labelled in the legend.
    """
    title, ylabel = IMAGING_CHARTS[key]
    series = {h["hip"]: hip_series(h, key) for h in hips}
    if not any(xs for xs, _ in series.values()):
        return None
    fig, ax = _chart(title, ylabel)
    for name, (xs, ys) in series.items():
        if not xs:
            continue
        style = HIP_STYLE.get(name, {"color": "tab:green", "marker": "^"})
        ax.plot(xs, ys, label=f"{name} hip", **style)
        if noise and noise.get(name):
            ax.axhspan(-noise[name], noise[name], color=style["color"], alpha=0.12,
                       label=f"{name}: within noise (\u00b1{noise[name]:.1f} mm)")
    if key == "regenerated_pct":
        ax.set_ylim(-2.0, max(10.0, 1.1 * max(max(ys, default=0.0) for _, ys in series.values())))
    _legend_outside(fig, ax)
    return png_bytes(fig)


def score_chart_png(visits: Sequence[dict], score: str) -> bytes | None:
    """One clinical score against months, titled with its name, unit and direction of better."""
    xs, ys = score_series(visits, score)
    if not xs:
        return None
    title, unit = score_title(score)
    fig, ax = _chart(title, unit)
    ax.plot(xs, ys, color="0.25", marker="D", label="patient (per visit)")
    _legend_outside(fig, ax)
    return png_bytes(fig)


PAIR_SIZE_IN = (9.0, 2.9)  # 900 x 290 px: imaging change (left) beside the score change (right)


def score_change_series(visits: Sequence[dict], score: str) -> tuple[list[float], list[float]]:
    """(months, score minus its first recorded value) over the visits that have the score."""
    xs, ys = score_series(visits, score)
    return xs, [y - ys[0] for y in ys] if ys else []


def paired_change(hip: dict, visits: Sequence[dict], score: str, tol_months: float = 0.5) -> list[tuple[float, float, float]]:
    """``(months, lesion change %, score change)`` at the imaging timepoints that have a visit with the score
    (same months within ``tol_months``)."""
    sx, sy = score_change_series(visits, score)
    out = []
    for m, les in zip(*hip_series(hip, "lesion_change_pct")):
        near = [c for x, c in zip(sx, sy) if abs(x - m) <= tol_months]
        if near:
            out.append((m, les, near[0]))
    return out


def change_pair_png(hip: dict, visits: Sequence[dict], score: str) -> bytes | None:
    """Lesion volume change of one hip (left) beside the change of one clinical score (right), same month axis."""
    lx, ly = hip_series(hip, "lesion_change_pct")
    sx, sy = score_change_series(visits, score)
    if len(lx) < 2 or len(sx) < 2:
        return None
    title, unit = score_title(score)
    fig = Figure(figsize=PAIR_SIZE_IN, dpi=100, facecolor="white")
    FigureCanvasAgg(fig)
    xmax = max(max(lx), max(sx))
    style = HIP_STYLE.get(hip["hip"], {"color": "tab:green", "marker": "^"})
    for left, (xs, ys, name, ylabel, st) in zip(
        (0.07, 0.57),
        ((lx, ly, f"Lesion volume change, {hip['hip']} hip", "% of baseline lesion", style),
         (sx, sy, f"{title}: change", f"change from first visit ({unit.split(',')[0]})",
          {"color": "0.25", "marker": "D"})),
    ):
        ax = fig.add_axes((left, 0.17, 0.38, 0.68))
        ax.plot(xs, ys, **st)
        ax.axhline(0.0, color="0.6", lw=0.8)
        ax.set_xlim(-0.5, xmax + 0.5)
        ax.set_title(name, fontsize=9, loc="left")
        ax.set_xlabel("months from baseline", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    return png_bytes(fig)
