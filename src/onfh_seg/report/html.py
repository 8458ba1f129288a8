"""Self-contained per-patient follow-up report (one HTML file, images as base64 PNG).

No external files, scripts, fonts or style sheets: the file can be mailed or
archived on its own. Everything shown comes from the patient record written by
``track.patient.compute_patient`` plus the figures of ``report.views`` and
``report.charts``; the words come from ``report.words``.

Layout: header (patient, scans, QC, versions in words); per hip with a lesion
a plain-words summary, the aligned T1 views as plain/contoured pairs (click an
image to enlarge it, click elsewhere to shrink it: CSS only) with a legend of
every line and mark, the main measurements and the others under "details";
hips without a lesion in one line each with a toggle for their images; one
chart per imaging measure and per clinical score; methods. A print style sheet
lays it out for paper (``pdf.html_to_pdf`` makes a PDF where Chromium exists).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from onfh_seg.io.manifest import CLINICAL_COLUMNS
from onfh_seg.io.nifti import atomic_write_text
from onfh_seg.measure import HIP_FLAGS, UNTRUSTED_FLAGS
from onfh_seg.report.overlay import CONTOURS, CROSS_LEGEND
from onfh_seg.report.words import (
    RC_FACTOR,
    SCORES,
    healthy_line,
    height_noise_mm,
    hip_paragraph,
    is_healthy,
    months,
    number,
    score_title,
    versions_text,
)

DISCLAIMER = (
    "Research software. The segmentation model was trained on synthetic data only and is not for clinical use."
)

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
    "collapse_mm": ("Head height loss along the lesion direction", "mm", 1, 1.0),
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
IMAGING_CHART_KEYS = ("lesion_volume_ml", "percent_head_involved", "regenerated_pct", "sir_baseline_zone",
                      "collapse_mm")

CSS = """
body{font-family:Helvetica,Arial,sans-serif;margin:24px;color:#111;max-width:1500px;line-height:1.35}
h1{font-size:22px;margin-bottom:4px} h2{font-size:18px;border-bottom:2px solid #888;margin-top:28px}
h3{font-size:15px;margin-bottom:4px}
.disclaimer{background:#fff3cd;border:1px solid #c9a227;padding:8px 12px;font-weight:bold;margin:10px 0}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #bbb;padding:3px 8px;text-align:right} th{background:#eee}
td.l,th.l{text-align:left}
.warn{color:#8a1c1c} .muted{color:#555;font-size:12px}
.qcwarn{background:#fde2e2;border:2px solid #b00020;padding:8px 12px;margin:10px 0;color:#5c0010}
th.untrusted,td.untrusted{background:#fde2e2}
p.summary{font-size:15px;max-width:1100px;background:#f4f7fb;border-left:4px solid #4a6fa5;padding:8px 12px}
.views{display:flex;flex-wrap:wrap;gap:10px;margin:6px 0}
figure.pair{margin:0} figure.pair figcaption{font-size:12px;color:#333}
img{border:1px solid #444;height:auto}
img.pair{width:640px;max-width:100%}
img.chart{width:620px;max-width:100%}
img.wide{width:900px;max-width:100%}
img.zoom{cursor:zoom-in}
img.zoom:focus{position:fixed;top:2vh;left:2vw;width:96vw;height:96vh;max-width:none;object-fit:contain;
  background:#000;z-index:10;cursor:zoom-out;outline:none}
.charts{display:flex;flex-wrap:wrap;gap:12px}
.legend{font-size:13px;margin:4px 0 10px 0}
.legend span.sw{display:inline-block;width:22px;height:0;border-top:3px solid;margin:0 5px 3px 14px;vertical-align:middle}
.legend span.cross{color:orange;font-weight:bold;margin:0 4px 0 14px}
ul.healthy{list-style:none;padding-left:0} ul.healthy li{margin:6px 0}
details summary{cursor:pointer;color:#234}
@media print{
  body{margin:0;max-width:none;font-size:11pt}
  .disclaimer,.qcwarn{break-inside:avoid}
  section.hip+section.hip{break-before:page}
  h2,h3{break-after:avoid}
  figure.pair,img.chart,table{break-inside:avoid}
  .views,.charts{gap:6px}
  figure.pair{width:49%} img.pair{width:100%} img.chart{width:49%} img.wide{width:100%}
  img.zoom:focus{position:static;width:100%;height:auto}
  table{font-size:8pt} th,td{padding:2px 4px}
  details summary{display:none}
}
@page{size:A4;margin:12mm}
"""


@dataclass
class ReportFigures:
    """The PNGs of one report: per hip, per view, ``(column title, pair PNG)``; charts by key."""

    views: dict[str, dict[str, list[tuple[str, bytes]]]] = field(default_factory=dict)
    imaging: dict[str, bytes] = field(default_factory=dict)
    scores: dict[str, bytes] = field(default_factory=dict)
    changes: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # hip -> (score, imaging|score change PNG)


def _esc(v) -> str:
    return html.escape("" if v is None else str(v))


def fmt(key: str, value, signed: bool = False) -> str:
    """Formatted metric value (a dash when missing); never "-0.0"."""
    if value is None or value == "":
        return "&ndash;"
    if key in ("arco_extent", "jic_type"):
        return _esc(value)
    _, _, nd, scale = METRICS.get(key, ("", "", 2, 1.0))
    try:
        v = float(value) * scale
    except (TypeError, ValueError):
        return _esc(value)
    text = number(v, nd, signed)
    return "&ndash;" if text == "\u2013" else _esc(text)


def img_tag(png: bytes, alt: str, cls: str = "", zoom: bool = True) -> str:
    """An <img> with the PNG embedded as a data URI; ``zoom``: click (focus) enlarges it."""
    data = base64.b64encode(png).decode("ascii")
    classes = " ".join(c for c in (cls, "zoom" if zoom else "") if c)
    tab = ' tabindex="0"' if zoom else ""
    return f'<img class="{classes}"{tab} alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


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


def qc_warning(record: dict) -> str:
    """A visible warning box naming every scan whose measurements a QC flag makes untrustworthy ('' if none)."""
    flagged = [(s["timepoint"], untrusted_flags(s)) for s in record.get("scans", [])]
    flagged = [(tp, flags) for tp, flags in flagged if flags]
    if not flagged:
        return ""
    items = "".join(f"<li>{_esc(tp)}: {_esc(', '.join(flags))}</li>" for tp, flags in flagged)
    return ('<div class="qcwarn"><b>Warning: measurements not trustworthy.</b> Quality control flagged these '
            "scans; their values are shown (marked in the tables) but are left out of the DICOM measurement "
            f"report and should not be used for decisions.<ul>{items}</ul></div>")


def _header(record: dict, package_version: str) -> str:
    scans = record.get("scans", [])
    rows = [
        ("Patient", _esc(record["patient_id"])),
        ("Hips tracked", _esc(", ".join(h["hip"] for h in record["hips"]) or "none")),
        ("Scans", ", ".join(f"{_esc(s['timepoint'])} ({months(s['months'])})" for s in scans)),
        ("Baseline", f"{_esc(record['baseline']['timepoint'])} ({months(record['baseline']['months'])})"),
        ("QC flags", "<br>".join(f"{_esc(s['timepoint'])}: {_esc(', '.join(s.get('qc_flags') or []) or 'none')}"
                                 for s in scans)),
        ("SIR reference region", _esc(record.get("reference", "acetabulum"))),
        ("Software and model", _esc(versions_text(record, package_version))),
    ]
    out = [qc_warning(record), "<table>"]
    out += [f'<tr><th class="l">{k}</th><td class="l">{v}</td></tr>' for k, v in rows] + ["</table>"]
    problems = [*(f"{e['timepoint']}: {e['reason']}" for e in record.get("errors", []))]
    problems += [w for w in record.get("warnings", []) if w not in problems]
    if problems:
        out.append('<p class="warn"><b>Attention:</b></p><ul class="warn">')
        out += [f"<li>{_esc(p)}</li>" for p in problems]
        out.append("</ul>")
    return "\n".join(out)


def hip_summary(hip: dict, record: dict | None = None) -> str:
    """The plain-words summary paragraph of a hip (escaped)."""
    return _esc(" ".join(hip_paragraph(hip, record or {})))


def metrics_table(hip: dict, keys: Sequence[str] | None = None) -> str:
    """Measurements of a hip by timepoint (``keys``: the rows; default the main ones)."""
    keys = keys or [k for k in METRICS if k not in DETAIL_METRICS]
    tps = hip["timepoints"]
    bad = [bool(untrusted_flags(t)) for t in tps]
    cls = ['' if not b else ' class="untrusted"' for b in bad]
    head = "".join(f"<th{c}>{_esc(t['timepoint'])}<br>{months(t['months'])}"
                   f"{'<br>&#9888; QC: ' + _esc(', '.join(untrusted_flags(t))) if b else ''}</th>"
                   for t, b, c in zip(tps, bad, cls))
    out = [f'<table><tr><th class="l">Measure</th><th class="l">Unit</th>{head}</tr>']
    for key in keys:
        label, unit, _, _ = METRICS[key]
        if all(t.get(key) is None for t in tps):
            continue
        cells = "".join(f"<td{c}>{fmt(key, t.get(key))}</td>" for t, c in zip(tps, cls))
        out.append(f'<tr><td class="l">{_esc(label)}</td><td class="l">{_esc(unit)}</td>{cells}</tr>')
    out.append("</table>")
    return "\n".join(out)


def legend_html() -> str:
    """Legend of every line and mark in the image panels."""
    items = "".join(f'<span class="sw" style="border-color:{c}"></span>{_esc(name)}' for name, _, c in CONTOURS)
    return (f'<p class="legend">Left of each pair: plain T1; right: the same with {items}'
            f'<span class="cross">+</span>{_esc(CROSS_LEGEND)}. White bar: scale. '
            "Orange letters: patient orientation (R/L, A/P, S/I). Click an image to enlarge it.</p>")


def views_html(hip_name: str, views: Mapping[str, Sequence[tuple[str, bytes]]]) -> str:
    """The view pairs of a hip: one row per view, one pair per timepoint."""
    out = []
    for view, cols in views.items():
        figs = "".join(f'<figure class="pair">{img_tag(png, f"{hip_name} hip, {title}", "pair")}'
                       f"<figcaption>{_esc(title)}</figcaption></figure>" for title, png in cols)
        out.append(f'<div class="views">{figs}</div>')
    return "\n".join(out)


def hip_section(hip: dict, record: dict, figures: ReportFigures) -> str:
    """The section of a hip with a lesion."""
    name = hip["hip"]
    parts = [f'<section class="hip"><h2>{_esc(name.capitalize())} hip</h2>',
             f'<p class="summary">{hip_summary(hip, record)}</p>']
    if name in figures.views:
        parts += ["<h3>T1 images, every timepoint aligned to baseline</h3>", legend_html(),
                  views_html(name, figures.views[name])]
    parts += ["<h3>Measurements</h3>", metrics_table(hip),
              "<details><summary>Other measures: volumes of core and band, other signal ratios, registration QC"
              f"</summary>{metrics_table(hip, DETAIL_METRICS)}</details>", "</section>"]
    return "\n".join(parts)


def healthy_section(hips: Sequence[dict], figures: ReportFigures) -> str:
    """Hips without a lesion: one line each, images and measurements behind a toggle."""
    items = []
    for hip in hips:
        inner = metrics_table(hip)
        if hip["hip"] in figures.views:
            inner = legend_html() + views_html(hip["hip"], figures.views[hip["hip"]]) + inner
        items.append(f'<li class="healthy">{_esc(healthy_line(hip))}<details><summary>Show images and measurements'
                     f"</summary>{inner}</details></li>")
    return f'<h2>Hips without a lesion</h2><ul class="healthy">{"".join(items)}</ul>'


def scores_table(record: dict) -> str:
    visits = record.get("visits") or []
    cols = [c for c in CLINICAL_COLUMNS if any(c in v for v in visits)]
    if not cols:
        return '<p class="muted">No clinical scores in the manifest.</p>'
    head = "".join(f"<th>{_esc(score_title(c)[0])}</th>" for c in cols)
    out = [f'<table><tr><th class="l">Visit</th><th>Months</th>{head}</tr>']
    for v in visits:
        cells = "".join(f"<td>{_esc(f'{v[c]:g}') if c in v else '&ndash;'}</td>" for c in cols)
        out.append(f'<tr><td class="l">{_esc(v["timepoint"])}</td><td>{v["months"]:g}</td>{cells}</tr>')
    changes = record.get("score_changes") or {}
    if changes:
        cells = "".join(f"<td>{_esc(number(changes[c]['change'], 1, True)) if c in changes else '&ndash;'}</td>"
                        for c in cols)
        out.append(f'<tr><th class="l">Change (last - baseline)</th><td></td>{cells}</tr>')
    out.append("</table>")
    return "\n".join(out)


METHODS = """
<ul class="muted">
<li>Each follow-up scan is registered rigidly to the baseline scan per hip (mutual information in a ball of
a few head radii around the femoral head, initialised from the segmented head centres). Images are
resampled into baseline space, so the orange cross marks the same anatomical point at every timepoint
(the baseline lesion centroid, or the head centre when there is no lesion). Contours are drawn on the
display grid from the label masks interpolated between slices.</li>
<li>Lesion = necrotic zone + interface band. Volumes and SIR of the necrotic core come from onfh-infer.</li>
<li>ARCO extent class: the lesion's share of the femoral head (A under 15 %, B 15-30 %, C over 30 %); it is
not an ARCO stage. JIC type: how far laterally the lesion reaches in the weight-bearing portion on the
mid-coronal plane (A, B, C1, C2 beyond the acetabular edge).</li>
<li>Regenerated fraction: share of the baseline lesion, aligned to the follow-up, that is viable femoral head
now. Within a thin shell at the baseline lesion border (half the coarsest voxel edge + 1 mm) only the net
change counts, so voxel-size noise does not masquerade as regeneration or new necrosis.</li>
<li>SIR (signal-intensity ratio): mean T1 signal of a region divided by the mean of the reference region
(eroded acetabulum of the same hip, same scan, by default). The primary SIR is that of the baseline lesion
zone mapped onto each follow-up; a rising SIR there means its signal moves towards marrow.</li>
<li>Head height loss: median distance from the baseline head centre to the head surface along rays within
20&deg; of the lesion direction, baseline minus follow-up (positive = flattening of the dome). It is not an
ARCO collapse measurement.</li>
<li>Changes between visits are called real only beyond their repeatability coefficient (RC = 2.77 x the
within-subject SD of same-day repeat scans; onfh-track's <code>repeatability</code> settings). Without a
measured RC, head height loss is judged against 2.77 x a third of the slice spacing and other changes are
not judged.</li>
<li>Orientation: radiological (patient right on the image left); letters at the panel edges.</li>
</ul>
"""


def primary_score(visits: Sequence[Mapping]) -> str | None:
    """The score drawn beside the imaging change: Harris Hip Score when recorded at two visits, else the first
    clinical column that is."""
    counts = {c: sum(1 for v in visits if v.get(c) is not None) for c in CLINICAL_COLUMNS}
    if counts.get("harris_hip_score", 0) >= 2:
        return "harris_hip_score"
    return next((c for c in CLINICAL_COLUMNS if counts[c] >= 2), None)


def change_correlation_html(hip: Mapping, record: Mapping, min_n: int = 3) -> str:
    """Per score: Spearman of this hip's lesion change (%) with the score change over the patient's own
    visits, with n and what the sign means; stated as descriptive, with a pointer to the cohort table."""
    from onfh_seg.report.charts import paired_change
    from onfh_seg.stats import spearman

    visits = record.get("visits") or []
    rows = []
    for c in CLINICAL_COLUMNS:
        pairs = paired_change(dict(hip), visits, c)
        if not pairs:
            continue
        res = spearman([p[1] for p in pairs], [p[2] for p in pairs], min_n)
        name, _, better = SCORES.get(c, (c, "", ""))
        rho = f"{res['rho']:+.2f}" if isinstance(res["rho"], float) else f"n/a ({res['note']})"
        good = "negative" if better == "higher" else "positive"
        rows.append(f'<tr><td class="l">{_esc(name)}</td><td>{res["n"]}</td><td>{_esc(rho)}</td>'
                    f'<td class="l">{_esc(good)} (lesion shrinks as the score gets better)</td></tr>')
    if not rows:
        return ""
    return ('<table><tr><th class="l">Score</th><th>Visits paired</th><th>Spearman &rho;</th>'
            '<th class="l">Sign that goes with improvement</th></tr>' + "".join(rows) + "</table>"
            '<p class="muted">Correlation over this patient\'s own visits (lesion volume change against the score '
            "change at the same months): it describes this patient only, is not a test, and does not show cause and "
            "effect. Correlations across the cohort are in onfh-track's correlations.csv.</p>")


def changes_html(figures: ReportFigures, record: dict) -> str:
    """Imaging change beside clinical change, per hip with a lesion, with the within-patient correlation."""
    lesion_hips = [h for h in record["hips"] if not is_healthy(h)]
    out = []
    for h in lesion_hips:
        table = change_correlation_html(h, record)
        if not table and h["hip"] not in figures.changes:
            continue
        out.append(f"<h3>{_esc(h['hip'].capitalize())} hip</h3>")
        if h["hip"] in figures.changes:
            score, png = figures.changes[h["hip"]]
            out.append(img_tag(png, f"{h['hip']} hip lesion change beside {score_title(score)[0]} change", "wide"))
        out.append(table)
    if not out:
        return ""
    return "<h2>Imaging change beside clinical change</h2>\n" + "\n".join(out)


def charts_html(figures: ReportFigures, record: dict) -> str:
    """Trajectory charts (one per imaging measure) and one chart per clinical score."""
    out = []
    if figures.imaging:
        out.append("<h2>Trajectories</h2>")
        out.append('<div class="charts">' + "".join(img_tag(png, f"trajectory: {key}", "chart")
                                                     for key, png in figures.imaging.items()) + "</div>")
    out.append("<h2>Clinical scores</h2>")
    out.append(scores_table(record))
    if figures.scores:
        out.append('<div class="charts">' + "".join(img_tag(png, f"clinical score: {score_title(key)[0]}", "chart")
                                                     for key, png in figures.scores.items()) + "</div>")
    return "\n".join(out)


def render_report(record: dict, figures: ReportFigures | None = None, package_version: str | None = None) -> str:
    """The report HTML text."""
    if package_version is None:
        from onfh_seg import __version__ as package_version
    figures = figures or ReportFigures()
    pid = _esc(record["patient_id"])
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>ONFH follow-up report: {pid}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Femoral head osteonecrosis follow-up: {pid}</h1>",
        f'<div class="disclaimer">{_esc(DISCLAIMER)}</div>',
        _header(record, package_version),
    ]
    lesion_hips = [h for h in record["hips"] if not is_healthy(h)]
    healthy = [h for h in record["hips"] if is_healthy(h)]
    parts += [hip_section(h, record, figures) for h in lesion_hips]
    if healthy:
        parts.append(healthy_section(healthy, figures))
    parts.append(charts_html(figures, record))
    parts.append(changes_html(figures, record))
    parts += ["<h2>Methods and definitions</h2>", METHODS, f'<div class="disclaimer">{_esc(DISCLAIMER)}</div>',
              "</body></html>\n"]
    return "\n".join(parts)


def report_figures(record: dict, views: Mapping[str, Sequence] | None) -> ReportFigures:
    """All PNGs of a report. ``views``: hip name -> list of ``(timepoint, months, sample_views(...))``."""
    from onfh_seg.report.charts import change_pair_png, imaging_chart_png, score_chart_png
    from onfh_seg.report.views import hip_view_pngs

    figs = ReportFigures()
    for hip, cols in (views or {}).items():
        figs.views[hip] = hip_view_pngs([(f"{tp} ({float(m):g} mo)", v) for tp, m, v in cols])
    lesion_hips = [h for h in record["hips"] if not is_healthy(h)]
    noise = {}
    rc = (record.get("repeatability") or {}).get("collapse_mm")
    for h in lesion_hips:
        n = height_noise_mm(record, [tp["timepoint"] for tp in h["timepoints"]])
        if rc is not None or n is not None:
            noise[h["hip"]] = float(rc) if rc is not None else RC_FACTOR * n
    for key in IMAGING_CHART_KEYS:
        png = imaging_chart_png(lesion_hips, key, noise if key == "collapse_mm" else None)
        if png is not None:
            figs.imaging[key] = png
    visits = record.get("visits") or []
    for score in CLINICAL_COLUMNS:
        png = score_chart_png(visits, score)
        if png is not None:
            figs.scores[score] = png
    primary = primary_score(visits)
    for h in lesion_hips if primary else []:
        png = change_pair_png(h, visits, primary)
        if png is not None:
            figs.changes[h["hip"]] = (primary, png)
    return figs


def write_report(record: dict, views: Mapping[str, Sequence] | None, path: str | Path, pdf: bool = False) -> Path:
    """Render figures and write ``path`` atomically; with ``pdf`` also ``path`` with ``.pdf`` when Chromium exists.

    ``views``: hip name -> list of ``(timepoint, months, sample_views(...))``
    as filled by ``track.patient.compute_patient``.
    """
    text = render_report(record, report_figures(record, views))
    atomic_write_text(path, text)
    if pdf:
        from onfh_seg.report.pdf import html_to_pdf

        html_to_pdf(Path(path), Path(path).with_suffix(".pdf"))
    return Path(path)
