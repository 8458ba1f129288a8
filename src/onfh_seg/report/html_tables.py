"""The tables of the follow-up report and their value formatting (HTML fragments, escaped).

``metrics_table``: a hip's measurements by visit, with the repeatability coefficient (RC) of each
change measure and a mark on changes beyond it; ``scores_table``: the clinical scores by visit;
``change_correlation_html``: the within-patient Spearman correlation of lesion change with score
change. ``untrusted_flags`` says which QC flags make a visit's numbers untrustworthy.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

from onfh_seg.io.manifest import CLINICAL_COLUMNS
from onfh_seg.quality import HIP_FLAGS, UNTRUSTED_FLAGS
from onfh_seg.report.charts import paired_change
from onfh_seg.report.words import RC_KEYS, SCORES, beyond_rc, change_rc, months, number, rc_number, score_title
from onfh_seg.stats import spearman

BEYOND = "\u25cf"  # the mark of a change beyond its repeatability coefficient

# key: (label, unit, decimals, scale)
METRICS: dict[str, tuple[str, str, int, float]] = {
    "head_volume_ml": ("Femoral head volume", "mL", 1, 1.0),
    "lesion_volume_ml": ("Lesion volume (necrotic zone + band)", "mL", 2, 1.0),
    "percent_head_involved": ("Lesion, % of head", "%", 1, 1.0),
    "arco_extent": ("ARCO extent class (share of the head; not a stage)", "", 0, 1.0),
    "jic_type": ("JIC type (lesion position in the weight-bearing portion)", "", 0, 1.0),
    "lesion_change_ml": ("Lesion change from baseline", "mL", 2, 1.0),
    "lesion_change_pct": ("Lesion change from baseline", "%", 1, 1.0),
    "regenerated_pct": ("Regenerated fraction of the baseline lesion", "%", 1, 1.0),
    "new_necrosis_ml": ("New necrosis outside the baseline zone", "mL", 2, 1.0),
    "sir_baseline_zone": ("T1 SIR in the baseline lesion zone (primary SIR)", "ratio", 3, 1.0),
    "sir_change": ("Change of the primary SIR from baseline", "ratio", 3, 1.0),
    "head_height_loss_mm": ("Head height loss along the lesion direction", "mm", 1, 1.0),
    # details
    "necrotic_core_volume_ml": ("Necrotic core volume", "mL", 2, 1.0),
    "band_volume_ml": ("Interface band volume", "mL", 2, 1.0),
    "regenerated_volume_ml": ("Regenerated volume", "mL", 2, 1.0),
    "sir_lesion": ("T1 SIR in the current lesion", "ratio", 3, 1.0),
    "sir_necrotic": ("T1 SIR in the necrotic core (onfh-infer)", "ratio", 3, 1.0),
    "registration_shift_mm": ("Registration correction of the head centre (QC)", "mm", 1, 1.0),
}
DETAIL_METRICS = ("necrotic_core_volume_ml", "band_volume_ml", "regenerated_volume_ml", "sir_lesion", "sir_necrotic",
                  "registration_shift_mm")


def esc(v) -> str:
    """``v`` as HTML text (None as empty)."""
    return html.escape("" if v is None else str(v))


def fmt(key: str, value, signed: bool = False) -> str:
    """Formatted metric value (a dash when missing); never "-0.0"."""
    if value is None or value == "":
        return "&ndash;"
    if key in ("arco_extent", "jic_type"):
        return esc(value)
    _, _, nd, scale = METRICS.get(key, ("", "", 2, 1.0))
    try:
        v = float(value) * scale
    except (TypeError, ValueError):
        return esc(value)
    text = number(v, nd, signed)
    return "&ndash;" if text == "\u2013" else esc(text)


def untrusted_flags(item: Mapping) -> list[str]:
    """The QC flags of a scan or timepoint record that make its measurements untrustworthy.

    Scan-wide flags (``qc_flags``) count; when the record carries its hip's own
    flags (``hip_qc_flags``, with ``trusted``), those replace the scan's per-hip
    ones (another hip's implausible head does not untrust this one).
    """
    flags = [f for f in item.get("qc_flags") or [] if f in UNTRUSTED_FLAGS]
    if "hip_qc_flags" in item:
        flags = [f for f in flags if f not in HIP_FLAGS] + list(item.get("hip_qc_flags") or [])
    if item.get("trusted") is False and not flags:
        flags = ["untrusted"]
    return list(dict.fromkeys(flags))


def metrics_table(hip: dict, keys: Sequence[str] | None = None, record: Mapping | None = None) -> str:
    """Measurements of a hip by timepoint (``keys``: the rows; default the main ones), with the repeatability
    coefficient (RC) of each change measure and ``BEYOND`` on follow-up changes that exceed it."""
    keys = keys or [k for k in METRICS if k not in DETAIL_METRICS]
    tps = hip["timepoints"]
    bad = [bool(untrusted_flags(t)) for t in tps]
    cls = ['' if not b else ' class="untrusted"' for b in bad]
    head = "".join(f"<th{c}>{esc(t['timepoint'])}<br>{months(t['months'])}"
                   f"{'<br>&#9888; QC: ' + esc(', '.join(untrusted_flags(t))) if b else ''}</th>"
                   for t, b, c in zip(tps, bad, cls))
    out = [f'<table class="metrics"><tr><th class="l">Measure</th><th class="l">Unit</th><th>RC</th>{head}</tr>']
    for key in keys:
        label, unit, nd, _ = METRICS[key]
        if all(t.get(key) is None for t in tps):
            continue
        rc = change_rc(record or {}, hip, key) if key in RC_KEYS else None
        cells = []
        for i, (t, c) in enumerate(zip(tps, cls)):
            mark = i > 0 and beyond_rc(t.get(key), rc) is True
            text = fmt(key, t.get(key)) + (f' <span class="rc">{BEYOND}</span>' if mark else "")
            td = c or (' class="beyond"' if mark else "")
            cells.append(f"<td{td}>{text}</td>")
        rc_cell = esc(rc_number(rc, max(nd - 1, 1) if unit != "ratio" else 2)) if rc is not None else ""
        out.append(f'<tr><td class="l">{esc(label)}</td><td class="l">{esc(unit)}</td><td>{rc_cell}</td>'
                   f'{"".join(cells)}</tr>')
    out.append("</table>")
    return "\n".join(out)


def scores_table(record: dict) -> str:
    """The clinical scores, one row per score (name, unit, direction of better) and one column per visit."""
    visits = record.get("visits") or []
    cols = [c for c in CLINICAL_COLUMNS if any(c in v for v in visits)]
    if not cols:
        return '<p class="muted">No clinical scores in the manifest.</p>'
    changes = record.get("score_changes") or {}
    head = "".join(f"<th>{esc(v['timepoint'])}<br>{months(v['months'])}</th>" for v in visits)
    out = [f'<table class="scores"><tr><th class="l">Score</th>{head}<th>Change<br>(last &minus; first)</th></tr>']
    for c in cols:
        cells = "".join(f"<td>{esc(f'{v[c]:g}') if c in v else '&ndash;'}</td>" for v in visits)
        change = esc(number(changes[c]["change"], 1, True)) if c in changes else "&ndash;"
        out.append(f'<tr><td class="l">{esc(score_title(c)[0])}</td>{cells}<td>{change}</td></tr>')
    out.append("</table>")
    return "\n".join(out)


def sign_meaning(better: str) -> str:
    """Which sign of Spearman's rho (lesion change against score change) goes with improvement, and why."""
    if better == "higher":
        return "negative: the lesion shrinks as the score rises (higher is better)"
    if better == "lower":
        return "positive: the lesion shrinks as the score falls (lower is better)"
    return "unknown (no direction of better for this score)"


def change_correlation_html(hip: Mapping, record: Mapping, min_n: int = 3) -> str:
    """Per score: Spearman of this hip's lesion change (%) with the score change over the patient's own
    visits, with n and what the sign means, as a table only when some score has ``min_n`` paired visits;
    otherwise one sentence. Descriptive, with a pointer to the cohort table."""
    visits = record.get("visits") or []
    rows, most = [], 0
    for c in CLINICAL_COLUMNS:
        pairs = paired_change(dict(hip), visits, c)
        if not pairs:
            continue
        most = max(most, len(pairs))
        res = spearman([p[1] for p in pairs], [p[2] for p in pairs], min_n)
        if not isinstance(res["rho"], float):
            continue
        name, _, better = SCORES.get(c, (c, "", ""))
        rows.append(f'<tr><td class="l">{esc(name)}</td><td>{res["n"]}</td><td>{res["rho"]:+.2f}</td>'
                    f'<td class="l">{esc(sign_meaning(better))}</td></tr>')
    side = f"{str(hip['hip']).capitalize()} hip"
    if not rows:
        if not most:
            return ""
        return (f'<p class="muted">{side}: lesion change and score change are paired at {most} visit'
                f"{'s' if most != 1 else ''} (imaging and scores at the same months); a within-patient correlation "
                f"needs {min_n}, so none is stated. Correlations across the cohort are in onfh-track's "
                "correlations.csv.</p>")
    return (f"<h3>{side}: lesion change against score change over this patient's visits</h3>"
            '<table><tr><th class="l">Score</th><th>Visits paired</th><th>Spearman &rho;</th>'
            '<th class="l">Sign that goes with improvement</th></tr>' + "".join(rows) + "</table>"
            '<p class="muted">Correlation over this patient\'s own visits (lesion volume change against the score '
            "change at the same months): it describes this patient only, is not a test, and does not show cause and "
            "effect. Correlations across the cohort are in onfh-track's correlations.csv.</p>")
