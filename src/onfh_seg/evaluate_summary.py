"""The cohort summary of an evaluation and its side-by-side table (``onfh-eval``).

``summarise`` turns the per-scan and per-hip records of ``evaluate`` into the issue's target
measures (medians over hips unless the key says otherwise), with test-retest repeatability
(``repeatability``) where a cohort has same-day repeat scans; ``format_table`` prints one
column per cohort beside the targets.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import chi2

from onfh_seg import labels as L

RETEST_SUFFIX = "_retest"  # synth.plan.RETEST_SUFFIX: <pid>_m00_retest repeats <pid>_m00 on the same day
RC_FACTOR = 2.77  # repeatability coefficient = 2.77 x within-subject SD (QIBA)
SMALL_LESION_ML = 3.5

# Issue 12 targets (out-of-style cohorts, medians over hips) and the earlier per-label targets.
TARGETS: dict[str, tuple[str, float]] = {
    "lesion_dice_median_hips": (">=", 0.90),
    "lesion_dice_small_median_hips": (">=", 0.80),
    "median_abs_lesion_volume_error_pct": ("<=", 7.0),
    "head_dice_median_hips": (">=", 0.93),
    "arco_agreement_pct": (">=", 90.0),
    "healthy_hips_with_false_necrosis_gt_0_5ml": ("<=", 0),
    "missed_hips_fully_visible_head": ("<=", 0),
    "dice_femoral_head": (">=", 0.95), "dice_necrotic_zone": (">=", 0.90), "dice_interface_band": (">=", 0.70),
    "dice_acetabulum": (">=", 0.90), "dice_lesion": (">=", 0.90), "median_abs_sir_error": ("<=", 0.05),
}
# Rows of the side-by-side table, in order (summary keys not listed here stay in summary.json only).
TABLE_KEYS = (
    "n_scans", "n_hips", "n_diseased_hips", "n_healthy_hips",
    "lesion_dice_median_hips", "lesion_dice_small_median_hips", "n_small_lesion_hips",
    "median_abs_lesion_volume_error_pct", "worst_lesion_volume_error_pct",
    "head_dice_median_hips", "arco_agreement_pct",
    "healthy_hips_with_false_necrosis_gt_0_5ml", "worst_false_lesion_ml_healthy",
    "missed_hips_fully_visible_head", "n_hips_fully_visible_head",
    "regenerated_fraction_error_median_pts", "regenerated_fraction_error_max_pts", "n_regenerated_pairs",
    "dice_femoral_head", "dice_necrotic_zone", "dice_interface_band", "dice_acetabulum", "dice_lesion",
    "median_abs_sir_error", "hips_found_pct",
    "n_retest_pairs", "rc_lesion_volume_ml", "rc_lesion_volume_ml_lo95", "rc_lesion_volume_ml_hi95",
    "rc_lesion_volume_rel_pct", "rc_percent_head_pts",
    "rc_percent_head_rel_pct", "rc_sir", "rc_sir_rel_pct", "regen_noise95_pts",
)


# ----------------------------------------------------------------------------- summary


def _median(v: Sequence[float]) -> float:
    a = np.array([x for x in v if x is not None], float)
    a = a[np.isfinite(a)]
    return float(np.median(a)) if a.size else float("nan")


def summarise(scans: list[dict], hips: list[dict], regen: list[dict] | None = None) -> dict:
    """Cohort summary with the issue's target measures (medians over hips unless the key says otherwise)."""
    s: dict = {"n_scans": len(scans), "n_hips": len(hips)}
    for c in list(L.LABELS.values())[1:] + ["lesion"]:
        v = np.array([x[f"dice_{c}"] for x in scans], float)
        s[f"dice_{c}"] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
        if c != "lesion":
            h = np.array([x[f"hd95_{c}"] for x in scans], float)
            s[f"hd95_median_mm_{c}"] = float(np.nanmedian(h)) if np.isfinite(h).any() else float("nan")
    measured = [h for h in hips if not h.get("truth_head_not_measurable")]
    dis = [h for h in measured if h["stage"] != "0" and h["true_lesion_ml"] > 0]
    s["n_diseased_hips"] = len(dis)
    s["lesion_dice_median_hips"] = _median([h["lesion_dice"] for h in dis])
    small = [h for h in dis if h["true_lesion_ml"] < SMALL_LESION_ML]
    s["lesion_dice_small_median_hips"] = _median([h["lesion_dice"] for h in small])
    s["n_small_lesion_hips"] = len(small)
    s["head_dice_median_hips"] = _median([h["head_dice"] for h in measured])
    err = [100 * (h["pred_lesion_ml"] - h["true_lesion_ml"]) / h["true_lesion_ml"] for h in dis]
    err_c = [100 * abs(h["pred_lesion_ml"] - h["true_lesion_ml_continuous"]) / h["true_lesion_ml_continuous"]
             for h in dis if h["true_lesion_ml_continuous"] > 0]
    s["median_abs_lesion_volume_error_pct"] = _median([abs(e) for e in err])
    s["worst_lesion_volume_error_pct"] = float(max(err, key=abs)) if err else float("nan")  # signed: + over
    s["median_abs_lesion_volume_error_vs_continuous_pct"] = _median(err_c)
    sir = [abs(h["pred_sir"] - h["true_sir"]) for h in dis if h["pred_sir"] is not None and h["true_sir"] is not None]
    s["median_abs_sir_error"] = _median(sir)
    s["n_sir_pairs"] = len(sir)
    agree = [h["pred_arco"] == h["true_arco"] for h in measured]
    s["arco_agreement_pct"] = float(100 * np.mean(agree)) if agree else float("nan")
    healthy = [h for h in measured if h["stage"] == "0"]
    s["n_healthy_hips"] = len(healthy)
    s["healthy_hips_with_false_necrosis_gt_0_5ml"] = int(sum(h.get("false_lesion_ml", 0) > 0.5 for h in healthy))
    s["worst_false_lesion_ml_healthy"] = float(max([h.get("false_lesion_ml", 0.0) for h in healthy], default=0.0))
    visible = [h for h in hips if h.get("head_fully_visible")]
    s["n_hips_fully_visible_head"] = len(visible)
    s["missed_hips_fully_visible_head"] = int(sum(not h["found"] for h in visible))
    s["hips_found_pct"] = float(100 * np.mean([h["found"] for h in hips])) if hips else float("nan")
    s.update(repeatability(hips))
    if regen is not None:
        e = [r["regen_frac_error_pts"] if r["regen_frac_pred"] is not None else 100 * r["regen_frac_true"] for r in regen]
        s["regenerated_fraction_error_median_pts"] = _median(e)
        s["regenerated_fraction_error_max_pts"] = float(max(e)) if e else float("nan")
        s["n_regenerated_pairs"] = len(e)
    return s


# ----------------------------------------------------------------------------- repeatability


def repeatability_coefficient(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """(RC, relative RC in %) of paired repeat measurements: RC = 2.77 x within-subject SD, the SD from the
    pair differences (wSD^2 = mean(d^2) / 2); relative: the same with d / pair mean (wCV). NaN without pairs."""
    x, y = np.asarray(a, float), np.asarray(b, float)
    if x.size == 0:
        return float("nan"), float("nan")
    d = x - y
    mean = (x + y) / 2.0
    rc = RC_FACTOR * float(np.sqrt(np.mean(d**2) / 2.0))
    ok = mean != 0
    rel = RC_FACTOR * 100.0 * float(np.sqrt(np.mean((d[ok] / mean[ok]) ** 2) / 2.0)) if ok.any() else float("nan")
    return rc, rel


def rc_interval(rc: float, n_pairs: int, level: float = 0.95) -> tuple[float, float]:
    """Confidence interval of a repeatability coefficient from ``n_pairs`` repeat pairs: with normal pair
    differences, sum(d^2) / (2 wSD^2) is chi-square with ``n_pairs`` degrees of freedom, so RC x sqrt(n / chi2 upper)
    to RC x sqrt(n / chi2 lower). With 11 pairs an RC of 0.75 mL spans 0.53-1.27 mL: two networks' RCs on the same
    small retest cohort need a wide gap to differ. NaN without pairs."""
    if n_pairs < 1 or not np.isfinite(rc):
        return float("nan"), float("nan")
    a = (1.0 - level) / 2.0
    return (rc * float(np.sqrt(n_pairs / chi2.ppf(1.0 - a, n_pairs))),
            rc * float(np.sqrt(n_pairs / chi2.ppf(a, n_pairs))))


def _scan_stem(scan: str) -> str:
    return scan.replace(".nii.gz", "").replace(".nii", "")


def retest_pairs(hips: list[dict]) -> list[tuple[dict, dict]]:
    """(scan, same-day repeat ``<scan>_retest``) hip pairs found in both whose hip is diseased (true lesion > 0)."""
    by = {(_scan_stem(h["scan"]), h["side"]): h for h in hips}
    pairs = [(by[(stem[: -len(RETEST_SUFFIX)], side)], h) for (stem, side), h in by.items()
             if stem.endswith(RETEST_SUFFIX) and (stem[: -len(RETEST_SUFFIX)], side) in by]
    return [(t, r) for t, r in pairs if t.get("found") and r.get("found") and t.get("stage") != "0"
            and (t.get("true_lesion_ml") or 0) > 0]


def repeatability(hips: list[dict]) -> dict:
    """Test-retest repeatability over diseased hips measured in a scan and its same-day repeat
    (``<scan>_retest``, ``retest_pairs``): RC (absolute and relative) of lesion volume, % of head and SIR; for the
    regenerated fraction between the two (truly 0) the 95 % noise limit, 1.96 x its RMS, in points. Empty without
    pairs."""
    pairs = retest_pairs(hips)
    if not pairs:
        return {}
    out: dict = {"n_retest_pairs": len(pairs)}
    for key, field_ in (("lesion_volume_ml", "pred_lesion_ml"), ("percent_head", "pred_extent_pct"),
                        ("sir", "pred_sir")):
        ab = [(t[field_], r[field_]) for t, r in pairs if t.get(field_) is not None and r.get(field_) is not None]
        rc, rel = repeatability_coefficient([p[0] for p in ab], [p[1] for p in ab])
        name = {"lesion_volume_ml": "rc_lesion_volume_ml", "percent_head": "rc_percent_head_pts", "sir": "rc_sir"}[key]
        out[name] = rc
        out[name.replace("_ml", "").replace("_pts", "") + "_rel_pct"] = rel
        if key == "lesion_volume_ml":
            out["rc_lesion_volume_ml_lo95"], out["rc_lesion_volume_ml_hi95"] = rc_interval(rc, len(ab))
    regen = [100.0 * r["regen_frac_pred"] for _, r in pairs if r.get("regen_frac_pred") is not None]
    out["regen_noise95_pts"] = 1.96 * float(np.sqrt(np.mean(np.square(regen)))) if regen else float("nan")
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if not np.isfinite(v) else f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"
    return str(v)


def format_table(summaries: dict[str, dict]) -> str:
    """One table: a row per measure, a column per cohort, then the target."""
    names = list(summaries)
    w = max([12] + [len(n) + 2 for n in names])
    lines = [f"{'measure':45s}" + "".join(f"{n:>{w}s}" for n in names) + f"{'target':>10s}"]
    keys = [k for k in TABLE_KEYS if any(k in s for s in summaries.values())]
    for k in keys:
        t = TARGETS.get(k)
        tv = "" if t is None else f"{t[0]} {t[1]:g}"
        lines.append(f"{k:45s}" + "".join(f"{_fmt(summaries[n].get(k, '')):>{w}s}" for n in names) + f"{tv:>10s}")
    return "\n".join(lines)
