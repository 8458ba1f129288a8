"""HTML follow-up report and its figures (toy data: fast)."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest

from onfh_seg.labels import ACETABULUM, BAND, HEAD, NECROTIC
from onfh_seg.report.html import DISCLAIMER, render_report, write_report
from onfh_seg.report.plots import sample_views, trajectory_png, views_png

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
                    "sir_lesion": 0.4, "sir_change": 0.1 * i, "new_necrosis_ml": 0.0, "collapse_mm": None,
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
    # radiological display: in the axial view the lesion (patient right, +x) is on the image left
    ax = sample_views(img0, lab0, AFFINE, None, (0.0, 0.0, 12.0), 30.0, step_mm=1.0)["axial"][1]
    cols = np.nonzero(np.isin(ax, (NECROTIC, BAND)).any(axis=0))[0]
    assert cols.mean() < 30


def test_figures_are_png():
    img, lab = toy_scan()
    v = sample_views(img, lab, AFFINE, None, (0.0, 0.0, 0.0), 30.0, step_mm=1.0)
    assert views_png([("m00", v), ("m03", v)], "toy").startswith(PNG)
    assert trajectory_png(record()).startswith(PNG)


def test_report_is_self_contained(tmp_path):
    img, lab = toy_scan()
    v = sample_views(img, lab, AFFINE, None, (0.0, 0.0, 0.0), 30.0, step_mm=1.0)
    views = {"right": [("m00", 0.0, v), ("m03", 3.0, v), ("m12", 12.0, v)]}
    path = write_report(record(), views, tmp_path / "r.html")
    html = path.read_text()
    assert DISCLAIMER in html
    srcs = re.findall(r'src="([^"]*)"', html)
    assert len(srcs) == 2 and all(s.startswith("data:image/png;base64,") for s in srcs)
    for s in srcs:
        assert base64.b64decode(s.split(",", 1)[1]).startswith(PNG)
    assert not re.search(r"(href|src)=\"(https?:|file:|/|\.)", html)
    assert "<script" not in html and "<link" not in html and "@import" not in html
    # header and numbers a reader needs
    for text in ("P&lt;01&gt;", "unet-0.3", "low_confidence", "segmentation not found", "Regenerated fraction",
                 "20.0", "+0.200", "harris hip score", "+30"):
        assert text in html, text


def test_report_without_images_or_scores():
    rec = record()
    rec["visits"], rec["score_changes"] = [], {}
    html = render_report(rec, {}, None)
    assert DISCLAIMER in html and "No clinical scores" in html and "<img" not in html


@pytest.mark.parametrize("value,expected", [(None, "&ndash;"), (float("nan"), "&ndash;"), (25.6, "25.6")])
def test_regenerated_fraction_shown_in_percent(value, expected):
    from onfh_seg.report.html import fmt

    assert fmt("regenerated_pct", value) == expected
