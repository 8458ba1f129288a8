"""Trajectory charts of the follow-up report: one small chart per imaging measure, drawn at print size.

Each chart is sized for a quarter of an A4 text width (``CHART_SIZE_IN``) with
text of 8.5 pt, so the four charts print side by side at about their own size;
on screen they scale with the page. One line per hip with a lesion against
months from baseline, the hip named at the line's end (no legend box); a
shaded band shows the repeatability coefficient (RC) around the baseline value
(around zero for the head height loss, from zero for the regenerated
fraction): a visit outside the band changed beyond measurement noise. Volumes
and percentages are drawn from zero. matplotlib Agg canvases only; every
function returns PNG bytes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from onfh_seg.report.views import png_bytes
from onfh_seg.report.words import change_rc, number, rc_number

CHART_SIZE_IN = (1.8, 1.55)  # printed four across an A4 text width (about 46 mm each): text at 8.5 pt
CHART_DPI = 200
TEXT_PT = 8.5
HIP_STYLE = {"right": {"color": "tab:blue", "marker": "o"}, "left": {"color": "tab:orange", "marker": "s"}}

# key -> (chart title, unit, RC key of words.RC_KEYS, band: "baseline" (around the baseline value) | "zero"
# (around 0) | "from_zero" (0 to RC), y axis from zero)
IMAGING_CHARTS: dict[str, tuple[str, str, str, str, bool]] = {
    "lesion_volume_ml": ("Lesion volume (mL)", "", "lesion_change_ml", "baseline", True),
    "regenerated_pct": ("Regenerated (%)", "", "regenerated_pct", "from_zero", True),
    "sir_baseline_zone": ("Primary SIR", "", "sir_change", "baseline", False),
    "head_height_loss_mm": ("Head height loss (mm)", "", "head_height_loss_mm", "zero", False),
}


def _finite(v) -> bool:
    return v is not None and math.isfinite(float(v))


def hip_series(hip: Mapping, key: str) -> tuple[list[float], list[float]]:
    """(months, values) of one measure of one hip, missing values left out."""
    pts = [(float(tp["months"]), float(tp[key])) for tp in hip["timepoints"] if _finite(tp.get(key))]
    return [p[0] for p in pts], [p[1] for p in pts]


def score_series(visits: Sequence[Mapping], score: str) -> tuple[list[float], list[float]]:
    """(months, values) of one clinical score over the visits that have it."""
    pts = [(float(v["months"]), float(v[score])) for v in visits if _finite(v.get(score))]
    return [p[0] for p in pts], [p[1] for p in pts]


def score_change_series(visits: Sequence[Mapping], score: str) -> tuple[list[float], list[float]]:
    """(months, score minus its first recorded value) over the visits that have the score."""
    xs, ys = score_series(visits, score)
    return xs, [y - ys[0] for y in ys] if ys else []


def paired_change(hip: Mapping, visits: Sequence[Mapping], score: str,
                  tol_months: float = 0.5) -> list[tuple[float, float, float]]:
    """``(months, lesion change %, score change)`` at the imaging timepoints that have a visit with the score
    (same months within ``tol_months``)."""
    sx, sy = score_change_series(visits, score)
    out = []
    for m, les in zip(*hip_series(hip, "lesion_change_pct")):
        near = [c for x, c in zip(sx, sy) if abs(x - m) <= tol_months]
        if near:
            out.append((m, les, near[0]))
    return out


def band(kind: str, baseline: float | None, rc: float) -> tuple[float, float] | None:
    """The (low, high) of the within-noise band of a chart (None without a baseline value where needed)."""
    if kind == "zero":
        return -rc, rc
    if kind == "from_zero":
        return 0.0, rc
    return None if baseline is None else (baseline - rc, baseline + rc)


def imaging_chart_png(hips: Sequence[Mapping], key: str, record: Mapping | None = None) -> bytes | None:
    """One imaging measure of the hips with a lesion, with its RC band per hip; None when no hip has a value."""
    title, unit, rc_key, kind, from_zero = IMAGING_CHARTS[key]
    series = {str(h["hip"]): (h, hip_series(h, key)) for h in hips}
    if not any(xs for _, (xs, _) in series.values()):
        return None
    fig = Figure(figsize=CHART_SIZE_IN, dpi=CHART_DPI, facecolor="white")
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.25, 0.25, 0.71, 0.5))
    rcs = []
    top = 0.0
    xmax = max(max(xs) for _, (xs, _) in series.values() if xs)
    for name, (hip, (xs, ys)) in series.items():
        if not xs:
            continue
        style = HIP_STYLE.get(name, {"color": "tab:green", "marker": "^"})
        rc = change_rc(record or {}, hip, rc_key)
        span = band(kind, ys[0] if xs[0] == float(hip["timepoints"][0]["months"]) else None, rc) if rc else None
        if span:
            ax.axhspan(*span, color=style["color"], alpha=0.15, lw=0)
            rcs.append(rc)
            top = max(top, span[1])
        ax.plot(xs, ys, color=style["color"], marker=style["marker"], markersize=4, lw=1.5)
        if len(series) > 1:  # name each line at its end instead of a legend box
            ax.annotate(name, (xs[-1], ys[-1]), xytext=(3, 0), textcoords="offset points", fontsize=TEXT_PT,
                        color=style["color"], va="center")
        top = max(top, max(ys))
    rc_text = rc_number(max(rcs), 2 if max(rcs) < 1 else 1) if rcs else ""
    sub = ("shaded: RC " + ("" if kind == "from_zero" else "\u00b1") + rc_text) if rcs else unit
    fig.text(0.03, 0.97, f"{title}\n{sub}", fontsize=TEXT_PT, ha="left", va="top")
    ax.set_xlabel("months", fontsize=TEXT_PT, labelpad=1)
    ax.tick_params(labelsize=TEXT_PT, length=2, pad=1.5)
    ax.set_xlim(-0.05 * max(xmax, 1.0), max(xmax, 1.0) * (1.25 if len(series) > 1 else 1.06))
    if from_zero:
        ax.set_ylim(0.0, max(1.0, 1.12 * top))
    if kind == "zero":
        ax.axhline(0.0, color="0.5", lw=0.6)
    ax.grid(alpha=0.3)
    return png_bytes(fig, dpi=CHART_DPI)
