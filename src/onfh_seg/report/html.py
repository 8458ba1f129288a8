"""Self-contained per-patient follow-up report (one HTML file, images as base64 PNG).

No external files, scripts, fonts or style sheets: the file can be mailed or
archived on its own. Everything shown comes from the patient record written by
``track.patient.compute_patient`` plus the figures of ``report.plots``.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from onfh_seg.io.manifest import CLINICAL_COLUMNS
from onfh_seg.io.nifti import atomic_write_text
from onfh_seg.measure import HIP_FLAGS, UNTRUSTED_FLAGS

DISCLAIMER = (
    "Research software. The segmentation model was trained on synthetic data only and is not for clinical use."
)

# key: (label, unit, decimals, scale)
METRICS: dict[str, tuple[str, str, int, float]] = {
    "head_volume_ml": ("Femoral head volume", "mL", 1, 1.0),
    "lesion_volume_ml": ("Lesion volume (necrotic zone + band)", "mL", 2, 1.0),
    "percent_head_involved": ("Lesion, % of head", "%", 1, 1.0),
    "necrotic_core_volume_ml": ("Necrotic core volume", "mL", 2, 1.0),
    "band_volume_ml": ("Interface band volume", "mL", 2, 1.0),
    "lesion_change_ml": ("Lesion change from baseline", "mL", 2, 1.0),
    "lesion_change_pct": ("Lesion change from baseline", "%", 1, 1.0),
    "regenerated_pct": ("Regenerated fraction of the baseline lesion", "%", 1, 1.0),
    "regenerated_volume_ml": ("Regenerated volume", "mL", 2, 1.0),
    "new_necrosis_ml": ("New necrosis outside the baseline zone", "mL", 2, 1.0),
    "sir_baseline_zone": ("T1 SIR in the baseline lesion zone", "ratio", 3, 1.0),
    "sir_change": ("Change of that SIR from baseline", "ratio", 3, 1.0),
    "sir_lesion": ("T1 SIR in the current lesion", "ratio", 3, 1.0),
    "sir_necrotic": ("T1 SIR in the necrotic core (onfh-infer)", "ratio", 3, 1.0),
    "collapse_mm": ("Head height loss along the lesion direction", "mm", 1, 1.0),
    "registration_shift_mm": ("Registration correction of the head centre (QC)", "mm", 1, 1.0),
    "arco_extent": ("ARCO extent class", "", 0, 1.0),
    "jic_type": ("JIC type", "", 0, 1.0),
}

CSS = """
body{font-family:Helvetica,Arial,sans-serif;margin:24px;color:#111;max-width:1400px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:18px;border-bottom:2px solid #888;margin-top:28px}
h3{font-size:15px;margin-bottom:4px}
.disclaimer{background:#fff3cd;border:1px solid #c9a227;padding:8px 12px;font-weight:bold;margin:10px 0}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #bbb;padding:3px 8px;text-align:right} th{background:#eee}
td.l,th.l{text-align:left}
.warn{color:#8a1c1c} .muted{color:#555;font-size:12px}
.qcwarn{background:#fde2e2;border:2px solid #b00020;padding:8px 12px;margin:10px 0;color:#5c0010}
th.untrusted,td.untrusted{background:#fde2e2}
img{max-width:100%;height:auto;border:1px solid #444}
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}
"""


def _esc(v) -> str:
    return html.escape("" if v is None else str(v))


def fmt(key: str, value, signed: bool = False) -> str:
    """Formatted metric value ("-" when missing)."""
    if value is None or value == "":
        return "&ndash;"
    if key in ("arco_extent", "jic_type"):
        return _esc(value)
    try:
        v = float(value)
    except (TypeError, ValueError):
        return _esc(value)
    if not math.isfinite(v):
        return "&ndash;"
    _, _, nd, scale = METRICS.get(key, ("", "", 2, 1.0))
    s = f"{v * scale:{'+' if signed else ''}.{nd}f}"
    return _esc(s)


def img_tag(png: bytes, alt: str) -> str:
    """An <img> with the PNG embedded as a data URI."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def _months(m) -> str:
    m = float(m)
    return f"{m:g} mo"


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


def _header(record: dict) -> str:
    scans = record.get("scans", [])
    versions = sorted({s.get("model_version") or "unknown" for s in scans})
    rows = [
        ("Patient", _esc(record["patient_id"])),
        ("Hips tracked", _esc(", ".join(h["hip"] for h in record["hips"]) or "none")),
        ("Scans", ", ".join(f"{_esc(s['timepoint'])} ({_months(s['months'])})" for s in scans)),
        ("Baseline", f"{_esc(record['baseline']['timepoint'])} ({_months(record['baseline']['months'])})"),
        ("Segmentation model version", _esc(", ".join(versions))),
        ("QC flags", "<br>".join(f"{_esc(s['timepoint'])}: {_esc(', '.join(s.get('qc_flags') or []) or 'none')}"
                                 for s in scans)),
        ("SIR reference region", _esc(record.get("reference", "acetabulum"))),
        ("Software", _esc(record.get("software", ""))),
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


def hip_summary(hip: dict) -> str:
    """One plain-language sentence about a hip's course."""
    tps = hip["timepoints"]
    b, last = tps[0], tps[-1]
    parts = [f"Baseline lesion {fmt('lesion_volume_ml', b.get('lesion_volume_ml'))} mL "
             f"({fmt('percent_head_involved', b.get('percent_head_involved'))}% of the head"
             f"{', ARCO ' + _esc(b['arco_extent']) if b.get('arco_extent') not in (None, 'none') else ''})."]
    if len(tps) > 1:
        parts.append(f"At {_months(last['months'])}: {fmt('lesion_volume_ml', last.get('lesion_volume_ml'))} mL "
                     f"({fmt('lesion_change_pct', last.get('lesion_change_pct'), signed=True)}%).")
        if last.get("regenerated_pct") is not None:
            parts.append(f"Regenerated fraction of the baseline lesion: "
                         f"{fmt('regenerated_pct', last['regenerated_pct'])}%.")
        if last.get("sir_change") is not None:
            parts.append(f"SIR of the baseline zone changed by {fmt('sir_change', last['sir_change'], signed=True)}.")
        if last.get("new_necrosis_ml"):
            parts.append(f"New necrosis outside the baseline zone: {fmt('new_necrosis_ml', last['new_necrosis_ml'])} mL.")
        if last.get("collapse_mm") is not None:
            parts.append(f"Head height loss along the lesion direction: {fmt('collapse_mm', last['collapse_mm'])} mm.")
    return " ".join(parts)


def metrics_table(hip: dict) -> str:
    tps = hip["timepoints"]
    bad = [bool(untrusted_flags(t)) for t in tps]
    cls = ['' if not b else ' class="untrusted"' for b in bad]
    head = "".join(f"<th{c}>{_esc(t['timepoint'])}<br>{_months(t['months'])}"
                   f"{'<br>&#9888; QC: ' + _esc(', '.join(untrusted_flags(t))) if b else ''}</th>"
                   for t, b, c in zip(tps, bad, cls))
    out = [f'<table><tr><th class="l">Measure</th><th class="l">Unit</th>{head}</tr>']
    for key, (label, unit, _, _) in METRICS.items():
        if all(t.get(key) is None for t in tps):
            continue
        cells = "".join(f"<td{c}>{fmt(key, t.get(key))}</td>" for t, c in zip(tps, cls))
        out.append(f'<tr><td class="l">{_esc(label)}</td><td class="l">{_esc(unit)}</td>{cells}</tr>')
    out.append("</table>")
    return "\n".join(out)


def scores_table(record: dict) -> str:
    visits = record.get("visits") or []
    cols = [c for c in CLINICAL_COLUMNS if any(c in v for v in visits)]
    if not cols:
        return '<p class="muted">No clinical scores in the manifest.</p>'
    head = "".join(f"<th>{_esc(c.replace('_', ' '))}</th>" for c in cols)
    out = [f'<table><tr><th class="l">Visit</th><th>Months</th>{head}</tr>']
    for v in visits:
        cells = "".join(f"<td>{_esc(f'{v[c]:g}') if c in v else '&ndash;'}</td>" for c in cols)
        out.append(f'<tr><td class="l">{_esc(v["timepoint"])}</td><td>{v["months"]:g}</td>{cells}</tr>')
    changes = record.get("score_changes") or {}
    if changes:
        vals = [format(changes[c]["change"], "+g") if c in changes else None for c in cols]
        cells = "".join(f"<td>{_esc(v) if v is not None else '&ndash;'}</td>" for v in vals)
        out.append(f'<tr><th class="l">Change (last - baseline)</th><td></td>{cells}</tr>')
    out.append("</table>")
    return "\n".join(out)


METHODS = """
<ul class="muted">
<li>Each follow-up scan is registered rigidly to the baseline scan per hip (mutual information in a ball of
a few head radii around the femoral head, initialised from the segmented head centres). Images above are
resampled into baseline space, so the orange cross marks the same anatomical point at every timepoint
(the baseline lesion centroid, or the head centre when there is no lesion).</li>
<li>Lesion = necrotic zone + interface band. Volumes and SIR of the necrotic core come from onfh-infer.</li>
<li>Regenerated fraction: share of the baseline lesion, aligned to the follow-up, that is viable femoral head
now. Within a thin shell at the baseline lesion border (half the coarsest voxel edge + 1 mm) only the net
change counts, so voxel-size noise does not masquerade as regeneration or new necrosis.</li>
<li>SIR (signal-intensity ratio): mean T1 signal of a region divided by the mean of the reference region
(eroded acetabulum of the same hip, same scan, by default). "Baseline lesion zone" is the baseline lesion
mapped onto each follow-up; a rising SIR there means its signal moves towards marrow.</li>
<li>Head height loss: median distance from the baseline head centre to the head surface along rays within
20&deg; of the lesion direction, baseline minus follow-up (positive = flattening of the dome). Its noise is
about a third of the slice spacing; it is not an ARCO collapse measurement.</li>
<li>Orientation: radiological (patient right on the image left); letters at the panel edges.</li>
</ul>
"""


def render_report(record: dict, hip_views: Mapping[str, bytes], trajectory: bytes | None) -> str:
    """The report HTML text. ``hip_views``: hip name -> montage PNG; ``trajectory``: trajectory PNG."""
    pid = _esc(record["patient_id"])
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>ONFH follow-up report: {pid}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Femoral head osteonecrosis follow-up: {pid}</h1>",
        f'<div class="disclaimer">{_esc(DISCLAIMER)}</div>',
        _header(record),
    ]
    legend = ('<p class="legend muted">Contours:<span style="background:yellow"></span>femoral head'
              '<span style="background:red"></span>necrotic zone<span style="background:cyan"></span>interface band'
              '<span style="background:lime"></span>acetabulum</p>')
    for hip in record["hips"]:
        parts.append(f"<h2>{_esc(hip['hip'].capitalize())} hip</h2>")
        parts.append(f"<p>{hip_summary(hip)}</p>")
        if hip["hip"] in hip_views:
            parts.append("<h3>T1 images, every timepoint aligned to baseline</h3>")
            parts.append(img_tag(hip_views[hip["hip"]], f"{hip['hip']} hip: aligned T1 views"))
            parts.append(legend)
        parts.append("<h3>Measurements</h3>")
        parts.append(metrics_table(hip))
    if trajectory is not None:
        parts.append("<h2>Trajectories</h2>")
        parts.append(img_tag(trajectory, "trajectory plots"))
    parts.append("<h2>Clinical scores</h2>")
    parts.append(scores_table(record))
    parts.append("<h2>Methods and definitions</h2>")
    parts.append(METHODS)
    parts.append(f'<div class="disclaimer">{_esc(DISCLAIMER)}</div>')
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(record: dict, views: Mapping[str, Sequence] | None, path: str | Path) -> Path:
    """Render figures and write ``path`` atomically.

    ``views``: hip name -> list of ``(timepoint, months, sample_views(...))``
    as filled by ``track.patient.compute_patient``.
    """
    from onfh_seg.report.plots import trajectory_png, views_png

    hip_views = {}
    for hip, cols in (views or {}).items():
        columns = [(f"{tp} ({float(m):g} mo)", v) for tp, m, v in cols]
        hip_views[hip] = views_png(columns, f"{record['patient_id']} {hip} hip")
    text = render_report(record, hip_views, trajectory_png(record))
    atomic_write_text(path, text)
    return Path(path)
