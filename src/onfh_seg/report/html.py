"""Self-contained per-patient follow-up report (one HTML file, images as base64 PNG).

No external files, scripts, fonts or style sheets: the file can be mailed or
archived on its own. Everything shown comes from the patient record written by
``track.patient.compute_patient`` plus the figures of ``report.views`` and
``report.charts``; the words come from ``report.words``, the tables from ``report.html_tables``.

Layout, the answer first: one headline per hip (lesion size then and now and
whether the change is beyond noise, ARCO extent, regenerated share, head
height loss), the header (which hip has a lesion, scans, QC, versions); per hip
with a lesion the aligned T1 views, one row per plane and one contoured image
per visit left to right (hover shows the plain image, click enlarges both:
CSS only), its measurements with the repeatability coefficient (RC) and a mark
on changes beyond it, the summary in words behind a toggle; hips without a
lesion in one line each with a toggle for their images; one small chart per
imaging measure with its RC band; the clinical scores as one table and the
within-patient correlation only where it can be computed; methods. A print
style sheet fits a 3-visit patient on two A4 pages with text of at least 8 pt
(``pdf.html_to_pdf`` makes the PDF where Chromium exists).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from onfh_seg.version import __version__
from onfh_seg.io.files import atomic_write_text
from onfh_seg.report.charts import imaging_chart_png
from onfh_seg.report.html_tables import (
    BEYOND,
    DETAIL_METRICS,
    change_correlation_html,
    esc,
    metrics_table,
    scores_table,
    untrusted_flags,
)
from onfh_seg.report.overlay import CONTOURS, CROSS_LEGEND
from onfh_seg.report.pdf import html_to_pdf
from onfh_seg.report.views import hip_view_pngs
from onfh_seg.report.words import (
    headline,
    healthy_line,
    hip_paragraph,
    hips_affected,
    is_healthy,
    months,
    versions_text,
)

DISCLAIMER = (
    "Research software. The segmentation model was trained on synthetic data only and is not for clinical use."
)

IMAGING_CHART_KEYS = ("lesion_volume_ml", "regenerated_pct", "sir_baseline_zone", "head_height_loss_mm")

CSS = """
body{font-family:Helvetica,Arial,sans-serif;margin:20px 24px;color:#111;max-width:1500px;line-height:1.3;font-size:14px}
h1{font-size:20px;margin:0 0 4px 0} h2{font-size:17px;border-bottom:2px solid #888;margin:18px 0 6px 0}
h3{font-size:14px;margin:10px 0 4px 0}
.disclaimer{background:#fff3cd;border:1px solid #c9a227;padding:4px 10px;font-weight:bold;margin:6px 0;font-size:12px}
.headline{background:#f4f7fb;border-left:5px solid #4a6fa5;padding:6px 12px;margin:8px 0;font-size:16px}
.headline p{margin:3px 0} .headline p.lesion{font-weight:bold}
table{border-collapse:collapse;margin:6px 0;font-size:13px}
th,td{border:1px solid #bbb;padding:2px 7px;text-align:right} th{background:#eee}
td.l,th.l{text-align:left}
p.header{font-size:13px;margin:4px 0} p.header span.k{color:#555}
.warn{color:#8a1c1c} .muted{color:#555;font-size:12px}
.qcwarn{background:#fde2e2;border:2px solid #b00020;padding:6px 12px;margin:8px 0;color:#5c0010}
th.untrusted,td.untrusted{background:#fde2e2}
td.beyond{font-weight:bold} span.rc{color:#b00020}
.plane{margin:4px 0 8px 0} .plane .pl{font-size:13px;font-weight:bold;margin:2px 0}
.visits{display:grid;grid-template-columns:repeat(var(--n),minmax(0,1fr));gap:6px;max-width:calc(var(--n)*400px)}
figure.tp{margin:0;cursor:zoom-in} figure.tp img{width:100%;height:auto;display:block;border:1px solid #444}
figure.tp figcaption{font-size:13px;color:#222;text-align:center}
figure.tp img.plain{display:none}
figure.tp:hover img.plain{display:block} figure.tp:hover img.contoured{display:none}
figure.tp:focus{position:fixed;top:2vh;left:2vw;width:96vw;height:96vh;z-index:10;background:#000;display:flex;
  flex-wrap:wrap;align-content:center;justify-content:center;gap:1vw;outline:none;cursor:zoom-out}
figure.tp:focus img,figure.tp:focus:hover img{display:block;width:47vw;height:auto;max-height:88vh;object-fit:contain}
figure.tp:focus figcaption{color:#fff;width:100%;font-size:16px}
.legend{font-size:13px;margin:2px 0 6px 0}
.legend span.sw{display:inline-block;width:20px;height:0;border-top:3px solid;margin:0 4px 3px 10px;vertical-align:middle}
.legend span.cross{color:orange;font-weight:bold;margin:0 3px 0 10px}
.charts{display:grid;grid-template-columns:repeat(4,minmax(0,1fr));gap:8px;max-width:880px}
.charts img{width:100%;height:auto;border:1px solid #ccc}
ul.healthy{list-style:none;padding-left:0;margin:4px 0} ul.healthy li{margin:4px 0}
details summary{cursor:pointer;color:#234}
ul.methods{color:#333;font-size:12px;padding-left:18px} ul.methods li{margin:2px 0}
ul.words li{margin:2px 0}
@media (max-width:900px){.charts{grid-template-columns:repeat(2,minmax(0,1fr))}}
@media print{
  body{margin:0;max-width:none;font-size:9pt;line-height:1.2}
  h1{font-size:13pt} h2{font-size:11pt;margin:6px 0 3px 0;border-bottom-width:1px} h3{font-size:9pt;margin:4px 0 2px 0}
  .disclaimer{font-size:8.5pt;padding:2px 6px;margin:3px 0}
  .headline{font-size:10pt;padding:3px 8px;margin:4px 0}
  .disclaimer,.qcwarn,.headline{break-inside:avoid}
  h2,h3,.pl{break-after:avoid}
  .plane,table,.charts{break-inside:avoid}
  .plane{margin:0 0 2px 0} .plane .pl{font-size:8.5pt;margin:0}
  .visits{max-width:175mm;gap:3px}
  figure.tp img.plain,figure.tp:hover img.plain{display:none} figure.tp:hover img.contoured{display:block}
  figure.tp figcaption{font-size:8.5pt}
  .legend{font-size:8.5pt;margin:0 0 2px 0}
  table{font-size:8.5pt;margin:3px 0} th,td{padding:1px 4px} p.header,p.warn{font-size:8.5pt;margin:2px 0}
  .qcwarn{padding:2px 6px;margin:3px 0;font-size:8.5pt} .qcwarn ul{margin:0;padding:0;display:inline}
  .qcwarn li{display:inline;margin-left:6px}
  .charts{max-width:none;gap:4px;grid-template-columns:repeat(4,minmax(0,1fr))}
  .muted,ul.methods{font-size:8.5pt} ul.methods{columns:2;column-gap:6mm;margin:2px 0;padding-left:12px}
  details,details summary,.noprint,.disclaimer.end{display:none}
  ul.healthy{margin:2px 0}
}
@page{size:A4;margin:10mm 11mm}
"""


@dataclass
class ReportFigures:
    """The PNGs of one report: per hip, per view, ``(caption, contoured PNG, plain PNG)`` per visit; charts by key."""

    views: dict[str, dict[str, list[tuple[str, bytes, bytes]]]] = field(default_factory=dict)
    imaging: dict[str, bytes] = field(default_factory=dict)


def img_tag(png: bytes, alt: str, cls: str = "") -> str:
    """An <img> with the PNG embedded as a data URI."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="{cls}" alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def qc_warning(record: dict) -> str:
    """A visible warning box naming every scan whose measurements a QC flag makes untrustworthy ('' if none)."""
    flagged = [(s["timepoint"], untrusted_flags(s)) for s in record.get("scans", [])]
    flagged = [(tp, flags) for tp, flags in flagged if flags]
    if not flagged:
        return ""
    items = "".join(f"<li>{esc(tp)}: {esc(', '.join(flags))}</li>" for tp, flags in flagged)
    return ('<div class="qcwarn"><b>Warning: measurements not trustworthy.</b> Quality control flagged these '
            "scans; their values are shown (marked in the tables) but are left out of the DICOM measurement "
            f"report and should not be used for decisions.<ul>{items}</ul></div>")


def headline_qc(hip: Mapping) -> str:
    """' (QC: m16 not trustworthy: low_confidence)' when a QC flag untrusts the first or last visit of a hip."""
    tps = hip["timepoints"]
    ends = tps[:1] if len(tps) == 1 else [tps[0], tps[-1]]
    bad = [f"{t['timepoint']} not trustworthy: {', '.join(untrusted_flags(t))}" for t in ends if untrusted_flags(t)]
    return f" (QC: {'; '.join(bad)})" if bad else ""


def headline_html(record: dict) -> str:
    """The headline box: one line per hip, hips with a lesion first, each with a QC note when a flag untrusts
    the visits it compares."""
    hips = sorted(record["hips"], key=is_healthy)
    lines = "".join(f'<p class="{"healthy" if is_healthy(h) else "lesion"}">{esc(headline(h, record))}'
                    f'<span class="warn">{esc(headline_qc(h))}</span></p>' for h in hips)
    return f'<div class="headline">{lines}</div>'


def _header(record: dict, package_version: str) -> str:
    scans = record.get("scans", [])
    flagged = [f"{s['timepoint']}: {', '.join(s.get('qc_flags') or [])}" for s in scans if s.get("qc_flags")]
    rows = [
        ("Patient", esc(record["patient_id"])),
        ("Hips", esc(hips_affected(record))),
        ("Scans", ", ".join(f"{esc(s['timepoint'])} ({months(s['months'])})" for s in scans)
         + f"; baseline {esc(record['baseline']['timepoint'])}"),
        ("QC flags", esc("; ".join(flagged) or "none")),
        ("SIR reference region", esc(record.get("reference", "acetabulum"))),
        ("Software and model", esc(versions_text(record, package_version))),
    ]
    out = [qc_warning(record), '<p class="header">'
           + " &middot; ".join(f'<span class="k">{k}:</span> {v}' for k, v in rows) + "</p>"]
    problems = [*(f"{e['timepoint']}: {e['reason']}" for e in record.get("errors", []))]
    problems += [w for w in record.get("warnings", []) if w not in problems]
    if problems:
        out.append('<p class="warn"><b>Attention:</b> ' + "; ".join(esc(p) for p in problems) + "</p>")
    return "\n".join(out)


def hip_summary(hip: dict, record: dict | None = None) -> str:
    """The plain-words summary of a hip as a list, one sentence per item (escaped)."""
    return '<ul class="words">' + "".join(f"<li>{esc(s)}</li>" for s in hip_paragraph(hip, record or {})) + "</ul>"


def legend_html() -> str:
    """Legend of every line and mark in the image panels."""
    items = "".join(f'<span class="sw" style="border-color:{c}"></span>{esc(name)}' for name, _, c in CONTOURS)
    return (f'<p class="legend">{items}<span class="cross">+</span>{esc(CROSS_LEGEND)}. '
            '<span class="noprint">Hover over an image for the plain T1; click to enlarge.</span></p>')


def views_html(hip_name: str, views: Mapping[str, Sequence[tuple[str, bytes, bytes]]]) -> str:
    """The aligned views of a hip: one row per plane, one contoured image per visit left to right (the plain
    image on hover; click enlarges both)."""
    out = []
    for view, cols in views.items():
        figs = "".join(
            f'<figure class="tp" tabindex="0">{img_tag(c, f"{hip_name} hip, {view}, {title}, contoured", "contoured")}'
            f'{img_tag(p, f"{hip_name} hip, {view}, {title}, plain T1", "plain")}'
            f"<figcaption>{esc(title)}</figcaption></figure>" for title, c, p in cols)
        out.append(f'<div class="plane"><div class="pl">{esc(view.capitalize())}</div>'
                   f'<div class="visits" style="--n:{max(1, len(cols))}">{figs}</div></div>')
    return "\n".join(out)


def hip_section(hip: dict, record: dict, figures: ReportFigures) -> str:
    """The section of a hip with a lesion."""
    name = hip["hip"]
    parts = [f'<section class="hip"><h2>{esc(name.capitalize())} hip</h2>']
    if name in figures.views:
        parts += [legend_html(), views_html(name, figures.views[name])]
    parts += [metrics_table(hip, record=record),
              f'<p class="muted"><span class="rc">{BEYOND}</span> change beyond its repeatability coefficient (RC): '
              "larger than two scans of the same day differ by.</p>",
              f"<details><summary>Summary in words</summary>{hip_summary(hip, record)}</details>",
              "<details><summary>Other measures: volumes of core and band, other signal ratios, registration QC"
              f"</summary>{metrics_table(hip, DETAIL_METRICS, record)}</details>", "</section>"]
    return "\n".join(parts)


def healthy_section(hips: Sequence[dict], figures: ReportFigures, record: Mapping) -> str:
    """Hips without a lesion: one line each, images and measurements behind a toggle."""
    items = []
    for hip in hips:
        inner = metrics_table(hip, record=record)
        if hip["hip"] in figures.views:
            inner = legend_html() + views_html(hip["hip"], figures.views[hip["hip"]]) + inner
        items.append(f'<li class="healthy">{esc(healthy_line(hip))}<details><summary>Show images and measurements'
                     f"</summary>{inner}</details></li>")
    return f'<h2>Hips without a lesion</h2><ul class="healthy">{"".join(items)}</ul>'


METHODS = """
<ul class="methods">
<li>Each follow-up scan is registered rigidly to the baseline scan per hip (mutual information in a ball of a few
head radii around the femoral head, initialised from the segmented head centres) and resampled into baseline
space, so the orange cross marks the same anatomical point at every visit (the baseline lesion centroid, or the
head centre). Contours ({legend}) are drawn from the label masks interpolated between slices. Orientation:
radiological (patient right on the image left).</li>
<li>Lesion = necrotic zone + interface band (volumes and the necrotic core's SIR from onfh-infer). ARCO extent
class: the lesion's share of the femoral head (A under 15 %, B 15-30 %, C over 30 %), not an ARCO stage. JIC
type: how far laterally the lesion reaches in the weight-bearing portion on the mid-coronal plane (A, B, C1,
C2 beyond the acetabular edge).</li>
<li>Regenerated fraction: share of the baseline lesion, aligned to the follow-up, that is viable femoral head
now; within a thin shell at the baseline lesion border (half the coarsest voxel edge + 1 mm) only the net change
counts.</li>
<li>SIR: mean T1 signal of a region divided by that of the reference region (eroded acetabulum of the same hip
and scan, by default). Primary SIR: the baseline lesion zone mapped onto each follow-up; a rise means its signal
moves towards marrow.</li>
<li>Head height loss: median distance from the baseline head centre to the head surface along rays within
20&deg; of the lesion direction, baseline minus follow-up (positive = flatter dome); not an ARCO collapse
measurement.</li>
<li>A change is called real only beyond its repeatability coefficient (RC = 2.77 x the within-subject SD of
same-day repeat scans; onfh-track's <code>repeatability</code> settings; without one, head height loss is judged
against 2.77 x a third of the slice spacing). Charts shade the RC around the baseline value (around zero for
head height loss, from zero for the regenerated fraction); tables mark changes beyond it with &#9679;.</li>
</ul>
"""


def charts_html(figures: ReportFigures) -> str:
    """The small trajectory charts, one per imaging measure, in one row."""
    if not figures.imaging:
        return ""
    imgs = "".join(img_tag(png, f"trajectory: {key}", "chart") for key, png in figures.imaging.items())
    return ("<h2>Trajectories</h2>"
            f'<div class="charts">{imgs}</div>'
            '<p class="muted">Shaded: within the repeatability coefficient (RC) of the baseline value (of zero for '
            "head height loss; from zero for the regenerated fraction): a visit outside the band changed beyond "
            "measurement noise.</p>")


def clinical_html(record: dict) -> str:
    """Clinical scores as one table, then the within-patient correlation per hip with a lesion (or one sentence)."""
    out = ["<h2>Clinical scores</h2>", scores_table(record)]
    for h in record["hips"]:
        if not is_healthy(h):
            out.append(change_correlation_html(h, record))
    return "\n".join(p for p in out if p)


def render_report(record: dict, figures: ReportFigures | None = None, package_version: str | None = None) -> str:
    """The report HTML text."""
    if package_version is None:
        package_version = __version__
    figures = figures or ReportFigures()
    pid = esc(record["patient_id"])
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>ONFH follow-up report: {pid}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Femoral head osteonecrosis follow-up: {pid}</h1>",
        f'<div class="disclaimer">{esc(DISCLAIMER)}</div>',
        headline_html(record),
        _header(record, package_version),
    ]
    lesion_hips = [h for h in record["hips"] if not is_healthy(h)]
    healthy = [h for h in record["hips"] if is_healthy(h)]
    parts += [hip_section(h, record, figures) for h in lesion_hips]
    if healthy:
        parts.append(healthy_section(healthy, figures, record))
    parts.append(charts_html(figures))
    parts.append(clinical_html(record))
    legend = "; ".join(f"{c}: {name}" for name, _, c in CONTOURS)
    parts += ["<h2>Methods and definitions</h2>", METHODS.replace("{legend}", esc(legend)),
              f'<div class="disclaimer end">{esc(DISCLAIMER)}</div>', "</body></html>\n"]
    return "\n".join(p for p in parts if p)


def report_figures(record: dict, views: Mapping[str, Sequence] | None) -> ReportFigures:
    """All PNGs of a report. ``views``: hip name -> list of ``(timepoint, months, sample_views(...))``."""
    figs = ReportFigures()
    for hip, cols in (views or {}).items():
        figs.views[hip] = hip_view_pngs([(f"{tp}, {float(m):g} mo", v) for tp, m, v in cols])
    lesion_hips = [h for h in record["hips"] if not is_healthy(h)]
    for key in IMAGING_CHART_KEYS:
        png = imaging_chart_png(lesion_hips, key, record)
        if png is not None:
            figs.imaging[key] = png
    return figs


def write_report(record: dict, views: Mapping[str, Sequence] | None, path: str | Path, pdf: bool = False) -> Path:
    """Render figures and write ``path`` atomically; with ``pdf`` also ``path`` with ``.pdf`` when Chromium exists.

    ``views``: hip name -> list of ``(timepoint, months, sample_views(...))``
    as filled by ``track.patient.compute_patient``.
    """
    text = render_report(record, report_figures(record, views))
    atomic_write_text(path, text)
    if pdf:
        html_to_pdf(Path(path), Path(path).with_suffix(".pdf"))
    return Path(path)
