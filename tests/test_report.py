"""HTML follow-up report, its figures and its words (toy data: fast)."""

from __future__ import annotations

import base64
import io
import re
import subprocess
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from onfh_seg.labels import ACETABULUM, BAND, HEAD, NECROTIC
from onfh_seg.report.charts import band
from onfh_seg.report.html import DISCLAIMER, ReportFigures, render_report, report_figures, write_report
from onfh_seg.report.html_tables import BEYOND, metrics_table, sign_meaning
from onfh_seg.report.overlay import CONTOURS, CROSS_LEGEND
from onfh_seg.report.pdf import chromium_path, html_to_pdf
from onfh_seg.report.views import PANEL_PX, sample_views
from onfh_seg.report.words import (
    collapse_statement,
    headline,
    healthy_line,
    hip_paragraph,
    number,
    rc_number,
    score_title,
    versions_text,
)

PNG = b"\x89PNG\r\n\x1a\n"
# axial-like grid with x flipped (index 0 runs to the patient's left), 3 mm slices
AFFINE = np.array([[-1.0, 0, 0, 40.0], [0, 1.0, 0, -40.0], [0, 0, 3.0, -45.0], [0, 0, 0, 1]])


def toy_scan(shift=(0.0, 0.0, 0.0)):
    shape = (81, 81, 31)
    ijk = np.stack(np.indices(shape), axis=-1).astype(float)
    xyz = ijk @ AFFINE[:3, :3].T + AFFINE[:3, 3] - np.asarray(shift)
    r = np.linalg.norm(xyz, axis=-1)
    lab = np.zeros(shape, np.uint8)
    lab[(r > 24) & (r < 32) & (xyz[..., 2] > -4)] = ACETABULUM
    lab[r < 20] = HEAD
    d = np.linalg.norm(xyz - [8, 0, 18], axis=-1)
    lab[(r < 20) & (d < 10)] = BAND
    lab[(r < 20) & (d < 8)] = NECROTIC
    img = np.array([100, 900, 300, 60, 600], np.float32)[lab]
    return img, lab


def record():
    tps = []
    for i, m in enumerate((0.0, 3.0, 12.0)):
        tps.append({"timepoint": f"m{int(m):02d}", "months": m, "lesion_volume_ml": 10.0 - 2 * i,
                    "percent_head_involved": 30.0 - 5 * i, "band_volume_ml": 2.0, "head_volume_ml": 33.0,
                    "lesion_change_ml": -2.0 * i, "lesion_change_pct": -20.0 * i,
                    "regenerated_pct": 10.0 * i if i else 0.0, "sir_baseline_zone": 0.4 + 0.1 * i,
                    "sir_lesion": 0.4, "sir_change": 0.1 * i, "new_necrosis_ml": 0.0, "head_height_loss_mm": None,
                    "arco_extent": "C", "jic_type": "C1"})
    return {
        "patient_id": "P<01>", "software": "onfh-track/1", "reference": "acetabulum",
        "baseline": {"timepoint": "m00", "months": 0.0},
        "scans": [{"timepoint": t["timepoint"], "months": t["months"], "model_version": "unet-0.3",
                   "qc_flags": ["low_confidence"] if i == 2 else []} for i, t in enumerate(tps)],
        "hips": [{"hip": "right", "timepoints": tps}],
        "visits": [{"timepoint": "m00", "months": 0.0, "harris_hip_score": 40.0, "vas_walking": 8.0},
                   {"timepoint": "m06", "months": 6.0, "harris_hip_score": 70.0, "vas_walking": 3.0}],
        "score_changes": {"harris_hip_score": {"baseline": 40.0, "last": 70.0, "change": 30.0}},
        "warnings": ["m12: segmentation not found"], "errors": [],
    }


def healthy_hip(tps):
    return {"hip": "left", "timepoints": [{"timepoint": t["timepoint"], "months": t["months"], "head_volume_ml": 34.0,
                                           "lesion_volume_ml": 0.0, "percent_head_involved": 0.0,
                                           "arco_extent": "none", "jic_type": "none"} for t in tps]}


def full_record():
    """Two hips (one healthy), class changes, head height loss, voxel sizes of 5 mm slices."""
    rec = record()
    tps = rec["hips"][0]["timepoints"]
    tps[2].update(arco_extent="B", jic_type="B", head_height_loss_mm=1.0)
    tps[1]["head_height_loss_mm"], tps[0]["head_height_loss_mm"] = 0.4, 0.0
    rec["scans"] = [dict(s, voxel_size_mm=[0.8, 0.8, 5.0]) for s in rec["scans"]]
    rec["hips"].append(healthy_hip(tps))
    return rec


def toy_views():
    img, lab = toy_scan()
    return sample_views(img, lab, AFFINE, None, (8.0, 0.0, 12.0), 30.0)


def test_sample_views_align_a_moved_scan():
    img0, lab0 = toy_scan()
    shift = np.array([4.0, -3.0, 6.0])  # the follow-up content sits 'shift' mm away in its own world
    img1, lab1 = toy_scan(shift)
    to_base = np.eye(4)
    to_base[:3, 3] = -shift
    v0 = sample_views(img0, lab0, AFFINE, None, (8.0, 0.0, 12.0), 30.0, step_mm=1.0)
    v1 = sample_views(img1, lab1, AFFINE, to_base, (8.0, 0.0, 12.0), 30.0, step_mm=1.0)
    for view in ("axial", "coronal", "sagittal"):
        a, b = v0[view][1], v1[view][1]
        assert a.shape == (61, 61)
        assert np.mean(a == b) > 0.97, view
        # the smooth contour fields agree with the nearest-neighbour labels away from the borders
        head = v0[view][2]["femoral head outline"]
        assert head.shape == a.shape and np.mean((head > 0.5) == np.isin(a, (HEAD, NECROTIC, BAND))) > 0.95
    # radiological display: in the axial view the lesion (patient right, +x) is on the image left
    ax = sample_views(img0, lab0, AFFINE, None, (0.0, 0.0, 12.0), 30.0, step_mm=1.0)["axial"][1]
    cols = np.nonzero(np.isin(ax, (NECROTIC, BAND)).any(axis=0))[0]
    assert cols.mean() < 30


def _side_outline_error_mm(field: np.ndarray, centre, step_mm: float = 0.5) -> np.ndarray:
    """Per display row of a coronal panel through the toy head (a 20 mm ball at the origin): how far the
    outline's patient-right edge (image left) lies from the true circle, in mm (sub-pixel crossing)."""
    n = field.shape[0]
    half = (n - 1) // 2
    errs = []
    for r in range(n):
        z = centre[2] + (half - r) * step_mm
        idx = np.nonzero(field[r] > 0.5)[0]
        if abs(z) > 17 or not idx.size or idx[0] == 0:
            continue
        a, b = field[r, idx[0] - 1], field[r, idx[0]]
        col = idx[0] - 1 + (0.5 - a) / (b - a)
        errs.append(centre[0] + (half - col) * step_mm - np.sqrt(400.0 - z * z))
    return np.abs(np.array(errs))


def test_contours_are_smooth_across_thick_slices():
    """On 3 mm slices the coronal head outline drawn from the shape-interpolated fields follows the true
    circle within 1 mm; the nearest-neighbour labels step by more than 2 mm."""
    centre = (8.0, 0.0, 12.0)
    img, lab = toy_scan()
    v = sample_views(img, lab, AFFINE, None, centre, 30.0)["coronal"]
    smooth = _side_outline_error_mm(v[2]["femoral head outline"], centre)
    steps = _side_outline_error_mm(np.isin(v[1], (HEAD, NECROTIC, BAND)).astype(float), centre)
    assert smooth.size > 40 and smooth.max() < 1.0
    assert steps.max() > 2.0


def test_figures_are_large_pngs_one_quantity_each():
    rec = full_record()
    figs = report_figures(rec, {"right": [("m00", 0.0, toy_views())]})
    title, contoured, plain = figs.views["right"]["coronal"][0]
    assert title == "m00, 0 mo" and contoured.startswith(PNG) and plain.startswith(PNG) and contoured != plain
    h, w = mpimg.imread(io.BytesIO(contoured)).shape[:2]
    assert w == h == PANEL_PX >= 300
    assert set(figs.imaging) == {"lesion_volume_ml", "regenerated_pct", "sir_baseline_zone", "head_height_loss_mm"}
    for png in figs.imaging.values():
        assert png.startswith(PNG) and mpimg.imread(io.BytesIO(png)).shape[1] >= 300


def test_report_is_self_contained(tmp_path):
    v = toy_views()
    views = {"right": [("m00", 0.0, v), ("m03", 3.0, v), ("m12", 12.0, v)]}
    path = write_report(record(), views, tmp_path / "r.html")
    html = path.read_text()
    assert DISCLAIMER in html
    srcs = re.findall(r'src="([^"]*)"', html)
    # 3 views x 3 visits x (contoured, plain), 3 imaging charts (no head height loss measured)
    assert len(srcs) == 3 * 3 * 2 + 3
    for s in srcs:
        assert s.startswith("data:image/png;base64,") and base64.b64decode(s.split(",", 1)[1]).startswith(PNG)
    assert not re.search(r"(href|src)=\"(https?:|file:|/|\.)", html)
    assert "<script" not in html and "<link" not in html and "@import" not in html
    # header and numbers a reader needs
    for text in ("P&lt;01&gt;", "unet-0.3", "low_confidence", "segmentation not found", "Regenerated fraction",
                 "20.0", "(+0.20;", "Harris Hip Score (points, 0-100; higher is better)", "+30.0",
                 "right: lesion"):
        assert text in html, text
    # one row per plane, one figure per visit; hover shows the plain image, click (focus) enlarges, and it prints
    assert html.count('<div class="visits" style="--n:3">') == 3 and html.count('<figure class="tp"') == 9
    assert html.count('tabindex="0"') == 9 and "figure.tp:focus" in html and "figure.tp:hover img.plain" in html
    assert "@media print" in html


def test_headline_one_line_per_hip_answers_first():
    """The headline says, per hip, the lesion then and now, whether the change is beyond noise, the extent
    class, the regenerated share and the head height loss against its RC; a healthy hip gets one line."""
    rec = full_record()
    rec["repeatability"] = {"lesion_volume_ml": 1.1, "regenerated_pct": 2.2, "head_height_loss_mm": 0.6}
    line = headline(rec["hips"][0], rec)
    assert line == ("Right hip (m00 \u2192 m12): lesion 10.0 \u2192 6.0 mL (-40%, beyond the 1.1 mL repeatability "
                    "limit), ARCO extent C \u2192 B, 20% of the baseline lesion regenerated, head height loss 1.0 mm "
                    "(beyond 0.6 mm).")
    assert headline(rec["hips"][1], rec) == healthy_line(rec["hips"][1])
    rec["repeatability"] = {"lesion_volume_ml": 5.0, "regenerated_pct": 25.0}  # no RC of head height: from slices
    line = headline(rec["hips"][0], rec)
    assert "(-40%, within the 5.0 mL repeatability limit)" in line and "regenerated (within the noise limit)" in line
    assert "head height loss 1.0 mm (within 4.6 mm)" in line  # 2.77 x 5 mm / 3
    html = render_report(rec, ReportFigures(), package_version="1")
    box = re.search(r'<div class="headline">(.*?)</div>', html, re.S).group(1)
    assert box.index("Right hip") < box.index("Left hip: no lesion")
    assert html.index('class="headline"') < html.index("<table")  # before anything else
    assert "right: lesion; left: no lesion" in html
    rec["hips"][0]["timepoints"][2]["qc_flags"] = ["low_confidence"]  # the last visit untrusted: said in the line
    box = re.search(r'<div class="headline">(.*?)</div>', render_report(rec, ReportFigures(), "1"), re.S).group(1)
    assert '<span class="warn"> (QC: m12 not trustworthy: low_confidence)</span></p><p class="healthy">' in box
    single = {"hip": "right", "timepoints": rec["hips"][0]["timepoints"][:1]}
    assert headline(single, rec) == "Right hip: lesion 10.0 mL at m00, ARCO extent C; one scan only, no change measured yet."


def test_table_marks_changes_beyond_rc_and_charts_have_bands():
    rec = full_record()
    rec["repeatability"] = {"lesion_volume_ml": 3.0, "sir": 0.15, "regenerated_pct": 15.0,
                            "head_height_loss_mm": 0.6}
    table = metrics_table(rec["hips"][0], record=rec)
    rows = {re.sub("<[^>]+>", "", r.split("</td>")[0]): r for r in table.split("<tr>")[2:]
            if 'class="l">%</td>' not in r or "Regenerated" in r}
    change = rows["Lesion change from baseline"]  # -2 (within 3.0) at m03, -4 (beyond) at m12
    assert "<td>3.0</td>" in change and change.count(BEYOND) == 1 and change.index(BEYOND) > change.index("-4.00")
    assert rows["Change of the primary SIR from baseline"].count(BEYOND) == 1  # +0.2 beyond 0.15, +0.1 within
    assert rows["Regenerated fraction of the baseline lesion"].count(BEYOND) == 1  # 20 beyond 15, 10 within
    assert rows["Head height loss along the lesion direction"].count(BEYOND) == 1  # 1.0 beyond 0.6, 0.4 within
    assert BEYOND not in rows["Lesion volume (necrotic zone + band)"]
    assert band("baseline", 10.0, 3.0) == (7.0, 13.0) and band("zero", None, 0.6) == (-0.6, 0.6)
    assert band("from_zero", 0.0, 15.0) == (0.0, 15.0)
    # the charts draw from zero where the quantity is a volume or a percentage
    from onfh_seg.report.charts import IMAGING_CHARTS

    assert IMAGING_CHARTS["lesion_volume_ml"][4] and IMAGING_CHARTS["regenerated_pct"][4]


def test_report_structure_legends_and_healthy_hip():
    rec = full_record()
    figs = report_figures(rec, {"right": [("m00", 0.0, toy_views())], "left": [("m00", 0.0, toy_views())]})
    html = render_report(rec, figs, package_version="9.9")
    assert html.count('<section class="hip">') == 1 and "<h2>Right hip</h2>" in html and "<h2>Left hip</h2>" not in html
    line = healthy_line(rec["hips"][1])
    assert line == "Left hip: no lesion at m00, m03 or m12 (0-12 mo); femoral head 34.0 mL."
    healthy = re.search(r'<li class="healthy">(.*?)<details>(.*?)</details></li>', html, re.S)
    assert healthy and healthy.group(1) == line and "<img" in healthy.group(2)  # images behind the toggle
    for name, _, colour in CONTOURS:
        assert name in html and f"border-color:{colour}" in html
    assert CROSS_LEGEND in html
    assert "onfh-seg 9.9 (segmentation model unet-0.3; tracking: onfh-track record format 1)" in html
    assert "<details><summary>Other measures" in html and "T1 SIR in the current lesion" in html
    assert "<details><summary>Summary in words</summary>" in html


def test_summary_names_extent_changes_collapse_and_primary_sir():
    rec = full_record()
    text = " ".join(hip_paragraph(rec["hips"][0], rec))
    for phrase in ("ARCO extent C (over 30 % of the head)", "ARCO extent C \u2192 B between m03 and m12",
                   "JIC type C1 \u2192 B between m03 and m12", "Regenerated fraction: 20.0 %",
                   "Primary signal ratio", "1.0 mm", "within measurement noise", "not an ARCO stage"):
        assert phrase in text, phrase


@pytest.mark.parametrize("loss,words", [(1.0, "within measurement noise"), (6.0, "beyond measurement noise"),
                                        (None, "could not be measured")])
def test_collapse_statement_judges_against_noise(loss, words):
    assert words in collapse_statement(loss, 5.0 / 3.0, 5.0)


def test_no_negative_zero_anywhere():
    rec = full_record()
    tp = rec["hips"][0]["timepoints"][1]
    tp.update(lesion_change_ml=-0.0001, lesion_change_pct=-0.0, sir_change=-0.0004, head_height_loss_mm=-0.01)
    rec["score_changes"]["harris_hip_score"]["change"] = -0.0
    html = render_report(rec, ReportFigures(), package_version="1")
    assert not re.search(r"-0\.0+(?![0-9])", html)  # "-0.0", "-0.00", ... nowhere
    assert number(-0.04, 1, signed=True) == "0.0" and number(-0.0, 2) == "0.00" and number(0.06, 1, True) == "+0.1"


def test_score_names_are_readable_with_direction():
    assert score_title("vas_walking")[0] == "Pain when walking (VAS) (0-10; lower is better)"
    assert score_title("rom_abduction_vas")[0].startswith("Pain on abduction (VAS)")
    assert "higher is better" in score_title("rom_flexion_deg")[0]
    assert versions_text({"software": "onfh-track/3", "scans": []}, "0.1.0") == \
        "onfh-seg 0.1.0 (segmentation model unknown; tracking: onfh-track record format 3)"


def test_report_without_images_or_scores():
    rec = record()
    rec["visits"], rec["score_changes"] = [], {}
    html = render_report(rec, None)
    assert DISCLAIMER in html and "No clinical scores" in html and "<img" not in html


@pytest.mark.parametrize("value,expected", [(None, "&ndash;"), (float("nan"), "&ndash;"), (25.6, "25.6")])
def test_regenerated_fraction_shown_in_percent(value, expected):
    from onfh_seg.report.html_tables import fmt

    assert fmt("regenerated_pct", value) == expected


NO_CHROMIUM = "no Chromium on PATH (Debian package 'chromium'; .ci/run installs it)"


def three_visit_report(tmp_path: Path, pdf: bool) -> Path:
    """A 3-visit patient (one hip with a lesion, one healthy, a QC flag and a warning) written as HTML (and PDF)."""
    v = toy_views()
    views = {"right": [("m00", 0.0, v), ("m03", 3.0, v), ("m12", 12.0, v)],
             "left": [("m00", 0.0, v), ("m03", 3.0, v), ("m12", 12.0, v)]}
    rec = full_record()
    rec["repeatability"] = {"lesion_volume_ml": 1.1, "sir": 0.1, "regenerated_pct": 2.2, "head_height_loss_mm": 0.6}
    return write_report(rec, views, tmp_path / "r.html", pdf=pdf)


@pytest.mark.skipif(chromium_path() is None, reason=NO_CHROMIUM)
@pytest.mark.parametrize("width", [1000, 1400, 1600])
def test_visits_of_a_plane_sit_in_one_row_on_screen(tmp_path, width):
    """In Chromium every image loads, nothing is wider than the window, and the visits of each plane share one
    row (same top, left to right)."""
    path = three_visit_report(tmp_path, pdf=False)
    probe = chromium_probe(path, tmp_path / "probe.html", width)
    assert probe["images"] >= 18 and probe["broken"] == 0, probe
    assert probe["scroll_width"] <= probe["width"] and probe["overflowing"] == [], probe
    rows = [r for r in probe["rows"] if r["visible"]]
    assert len(rows) == 3, probe["rows"]  # axial, coronal, sagittal of the hip with a lesion
    for r in rows:
        assert len(r["tops"]) == 3 and len(set(r["tops"])) == 1, r  # one row
        assert r["lefts"] == sorted(r["lefts"]) and r["widths"][0] >= 200, r  # left to right, large enough
    shot = tmp_path / "shot.png"
    subprocess.run([chromium_path(), "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={tmp_path / 'p'}",
                    f"--screenshot={shot}", f"--window-size={width},1200", path.resolve().as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert mpimg.imread(shot)[..., :3].std() > 0.05  # not blank


@pytest.mark.skipif(chromium_path() is None, reason=NO_CHROMIUM)
def test_pdf_of_a_three_visit_patient_is_two_pages_of_legible_text(tmp_path):
    """The printed report of a 3-visit patient: at most 2 A4 pages, no text smaller than 8 pt."""
    pymupdf = pytest.importorskip("pymupdf", reason="PyMuPDF not installed (pip install -e .[dev])")
    pdf = three_visit_report(tmp_path, pdf=True).with_suffix(".pdf")
    assert pdf.read_bytes().startswith(b"%PDF") and not list(tmp_path.glob(".*.tmp"))
    doc = pymupdf.open(pdf)
    assert doc.page_count <= 2
    spans = [(sp["size"], sp["text"]) for page in doc for b in page.get_text("dict")["blocks"]
             for line in b.get("lines", []) for sp in line["spans"] if sp["text"].strip()]
    assert len(spans) > 100 and "Right hip (m00" in " ".join(t for _, t in spans)
    small = [(round(size, 2), text) for size, text in spans if size < 8.0]
    assert not small, small[:5]
    # text inside the pictures too: chart labels print at their drawn size, view letters and scale text >= 8 pt
    from onfh_seg.report.charts import CHART_DPI, CHART_SIZE_IN, TEXT_PT
    from onfh_seg.report.views import DPI, LABEL_PT

    images = [(i["width"], i["bbox"][2] - i["bbox"][0]) for page in doc for i in page.get_image_info()]
    charts = [w_pt for w_px, w_pt in images if w_px == round(CHART_SIZE_IN[0] * CHART_DPI)]
    panels = [w_pt for w_px, w_pt in images if w_px == PANEL_PX]
    assert len(charts) == 4 and len(panels) == 9  # the healthy hip's images stay behind their toggle
    assert min(TEXT_PT * w / (72 * CHART_SIZE_IN[0]) for w in charts) >= 8.0
    assert min(LABEL_PT * w / (72 * PANEL_PX / DPI) for w in panels) >= 8.0


PROBE = """<script>window.addEventListener('load', () => {
  const w = document.documentElement.clientWidth;
  const imgs = [...document.images];
  const over = [...document.body.querySelectorAll('*')]
    .filter(e => e.getBoundingClientRect().right > w + 1).map(e => e.tagName + '.' + e.className).slice(0, 5);
  const rows = [...document.querySelectorAll('div.visits')].map(d => {
    const figs = [...d.querySelectorAll('figure')].map(f => f.getBoundingClientRect());
    return {visible: !d.closest('details:not([open])'), tops: figs.map(r => Math.round(r.top)),
            lefts: figs.map(r => Math.round(r.left)), widths: figs.map(r => Math.round(r.width))}; });
  document.body.setAttribute('data-probe', JSON.stringify({width: w, scroll_width: document.documentElement.scrollWidth,
    images: imgs.length, broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length, overflowing: over,
    rows: rows}));
});</script></body>"""


def chromium_probe(report: Path, probe_path: Path, width: int) -> dict:
    """Load a copy of the report with a measuring script in headless Chromium; the page's numbers as a dict."""
    import html as html_mod
    import json

    probe_path.write_text(report.read_text(encoding="utf-8").replace("</body>", PROBE), encoding="utf-8")
    res = subprocess.run([chromium_path(), "--headless", "--disable-gpu", "--no-sandbox",
                          f"--user-data-dir={probe_path.parent / 'probe-profile'}", "--virtual-time-budget=10000",
                          f"--window-size={width},1600", "--dump-dom", probe_path.resolve().as_uri()],
                         capture_output=True, text=True, timeout=120, check=True)
    m = re.search(r'data-probe="([^"]*)"', res.stdout)
    assert m, res.stdout[-500:]
    return json.loads(html_mod.unescape(m.group(1)))


def test_pdf_without_chromium_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    (tmp_path / "r.html").write_text("<html></html>")
    with pytest.raises(RuntimeError, match="no Chromium on PATH"):
        html_to_pdf(tmp_path / "r.html", tmp_path / "r.pdf")
    assert not (tmp_path / "r.pdf").exists()


def test_track_asks_for_chromium_before_anything_when_pdf_wanted(tmp_path, monkeypatch):
    from onfh_seg.config import track_settings
    from onfh_seg.track.cohort import track_cohort

    monkeypatch.setenv("PATH", str(tmp_path))
    cfg = track_settings({"manifest": str(tmp_path / "none.csv"), "infer_dir": str(tmp_path), "out_dir": str(tmp_path / "out"),
                          "report": True, "report_pdf": True})
    with pytest.raises(ValueError, match="report_pdf=true needs headless Chromium"):
        track_cohort(cfg)
    assert not (tmp_path / "out").exists()


def test_changes_judged_against_repeatability_in_words_and_csv():
    from onfh_seg.track.tables import tidy_rows

    rec = full_record()
    rec["repeatability"] = {"lesion_volume_ml": 0.8, "sir": 0.3, "regenerated_pct": 25.0}
    text = " ".join(hip_paragraph(rec["hips"][0], rec))
    assert "-4.0 mL, -40.0 % from baseline; RC 0.8 mL: a real decrease" in text
    assert "(+0.20; within the RC 0.30: no change beyond measurement noise;" in text
    assert "Regenerated fraction: 20.0 % of the baseline lesion is viable bone now (noise limit 25.0 points; within it)" \
        in text
    rows = [r for r in tidy_rows(rec) if r["metric"].endswith("_beyond_rc") and r["hip"] == "right"]
    got = {(r["months"], r["metric"]): r["value"] for r in rows}
    assert got[(12.0, "lesion_change_ml_beyond_rc")] == 1 and got[(12.0, "sir_change_beyond_rc")] == 0
    assert got[(3.0, "regenerated_pct_beyond_rc")] == 0 and not [r for r in rows if r["months"] == 0.0]
    rec["repeatability"] = {}
    assert "; RC" not in " ".join(hip_paragraph(rec["hips"][0], rec)) and "the RC" not in " ".join(hip_paragraph(rec["hips"][0], rec))
    assert not [r for r in tidy_rows(rec) if r["metric"].endswith("_beyond_rc")]


@pytest.mark.parametrize("loss,words", [(1.0, "within measurement noise"), (2.0, "beyond measurement noise")])
def test_collapse_judged_against_a_measured_rc(loss, words):
    text = collapse_statement(loss, 5.0 / 3.0, 5.0, rc_mm=1.2)
    assert words in text and "RC 1.2 mm from test-retest scans" in text


def test_within_patient_correlation_with_the_right_sign_meaning():
    """The within-patient Spearman per score as a table when 3 visits pair; the sign that goes with improvement
    is explained for each direction of better."""
    rec = full_record()
    rec["visits"] = [{"timepoint": t, "months": m, "harris_hip_score": h, "vas_walking": v}
                     for t, m, h, v in (("m00", 0.0, 40.0, 8.0), ("m03", 3.0, 60.0, 5.0), ("m12", 12.0, 80.0, 2.0))]
    html = render_report(rec, report_figures(rec, None))
    # lesion -0 %, -20 %, -40 % while the Harris Hip Score rises 0, +20, +40: rho = -1, which goes with improvement
    row = re.search(r"Harris Hip Score</td><td>3</td><td>([^<]*)</td><td class=\"l\">([^<]*)<", html)
    assert row and row.group(1) == "-1.00" and row.group(2) == sign_meaning("higher")
    row = re.search(r"Pain when walking \(VAS\)</td><td>3</td><td>([^<]*)</td><td class=\"l\">([^<]*)<", html)
    assert row and row.group(1) == "+1.00" and row.group(2) == sign_meaning("lower")
    assert sign_meaning("higher").startswith("negative") and "score rises" in sign_meaning("higher")
    assert sign_meaning("lower").startswith("positive") and "score falls" in sign_meaning("lower")
    assert "correlations.csv" in html and "not a test" in html
    # no legend boxes, no chart per score: the scores are one table, one row per score
    assert html.count('<table class="scores">') == 1 and "clinical score:" not in html


def test_correlation_needs_three_paired_visits():
    rec = record()  # visits at 0 and 6 months, imaging at 0, 3, 12: one pair only
    html = render_report(rec, report_figures(rec, None))
    assert "n/a" not in html and "Spearman" not in html  # no table of n/a rows
    assert "paired at 1 visit (imaging and scores at the same months); a within-patient correlation needs 3" in html


def test_rc_printed_as_configured_not_rounded_across_a_change():
    """configs/track.yaml's RC of 1.45 mL printed as "1.4" would call a 1.42 mL change "within the 1.4 mL limit"."""
    assert rc_number(1.45, 1) == "1.45" and rc_number(1.1, 1) == "1.1" and rc_number(5.0, 1) == "5.0"
    assert rc_number(0.072, 2) == "0.072" and rc_number(2.77 * 5 / 3, 1) == "4.6"  # derived: the usual rounding
    assert rc_number(None, 1) == number(None, 1)
    rec = record()
    rec["repeatability"] = {"lesion_volume_ml": 1.45}
    assert "the 1.45 mL repeatability limit" in headline(rec["hips"][0], rec)
