"""Test-retest pairs from the generator and the repeatability coefficient of onfh-eval (issue 16, item 7)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from conftest import synth_cfg
from onfh_seg.evaluate_summary import repeatability, repeatability_coefficient


def test_repeatability_coefficient_formula():
    rc, rel = repeatability_coefficient([10.0, 20.0], [11.0, 18.0])
    assert rc == pytest.approx(2.77 * np.sqrt((1.0 + 4.0) / 4.0))  # wSD^2 = mean(d^2) / 2
    assert rel == pytest.approx(277.0 * np.sqrt(((1 / 10.5) ** 2 + (2 / 19.0) ** 2) / 4.0))
    assert all(np.isnan(v) for v in repeatability_coefficient([], []))


def _hip(scan, lesion, pct, sir, side="left", **kw):
    return {"scan": scan, "side": side, "found": True, "stage": "2", "true_lesion_ml": 5.0, "pred_lesion_ml": lesion,
            "pred_extent_pct": pct, "pred_sir": sir, **kw}


def test_repeatability_pairs_scan_with_its_retest_only():
    hips = [_hip("P1_m00.nii.gz", 10.0, 20.0, 0.50), _hip("P1_m00_retest.nii.gz", 11.0, 21.0, 0.52, regen_frac_pred=0.02),
            _hip("P1_m03.nii.gz", 30.0, 40.0, 0.9),  # a follow-up is no repeat
            _hip("P2_m00.nii.gz", 8.0, 15.0, 0.4), _hip("P2_m00_retest.nii.gz", 8.0, 15.0, 0.4, side="right")]
    out = repeatability(hips)
    assert out["n_retest_pairs"] == 1
    assert out["rc_lesion_volume_ml"] == pytest.approx(2.77 * np.sqrt(0.5))
    assert out["regen_noise95_pts"] == pytest.approx(1.96 * 2.0)
    assert repeatability(hips[2:4]) == {}


def test_rc_interval_from_the_chi_square_of_the_pairs():
    from onfh_seg.evaluate_summary import rc_interval

    lo, hi = rc_interval(0.75, 11)
    assert lo == pytest.approx(0.53, abs=0.005) and hi == pytest.approx(1.27, abs=0.005)  # chi2(11): 21.92, 3.816
    lo40, hi40 = rc_interval(0.75, 40)
    assert lo < lo40 < 0.75 < hi40 < hi  # more pairs, a narrower interval around the same RC
    assert all(np.isnan(v) for v in rc_interval(0.75, 0))
    # by simulation: the interval of a 95% level covers the true RC in about 95% of 11-pair samples
    rng = np.random.default_rng(0)
    wsd, covered = 0.3, 0
    for _ in range(2000):
        d = rng.normal(0.0, np.sqrt(2.0) * wsd, 11)
        rc = 2.77 * np.sqrt(np.mean(d**2) / 2.0)
        a, b = rc_interval(rc, 11)
        covered += a <= 2.77 * wsd <= b
    assert 0.93 < covered / 2000 < 0.97


def test_repeatability_reports_the_rc_interval():
    hips = [_hip(f"P{i}_m00.nii.gz", 10.0 + i, 20.0, 0.5) for i in range(3)] + \
        [_hip(f"P{i}_m00_retest.nii.gz", 10.5 + i, 20.0, 0.5) for i in range(3)]
    out = repeatability(hips)
    assert out["n_retest_pairs"] == 3
    assert out["rc_lesion_volume_ml_lo95"] < out["rc_lesion_volume_ml"] < out["rc_lesion_volume_ml_hi95"]


def test_generator_makes_a_same_day_retest(tmp_path):
    from onfh_seg.synth.cohort import generate_cohort

    out = tmp_path / "c"
    generate_cohort(synth_cfg(n_patients=1, seed=5, months=[0, 6], retest=True,
                              acquisition={"max_matrix": 120}), out)
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    assert [r["timepoint"] for r in rows] == ["m00", "m00_retest", "m06"]
    assert rows[1]["months"] == rows[0]["months"] and rows[1]["harris_hip_score"] == ""  # the visit's scores once
    a, b = (json.loads((out / "truth" / f"P001_{tp}.json").read_text()) for tp in ("m00", "m00_retest"))
    assert [h["lesion_volume_ml"] for h in a["hips"]] == [h["lesion_volume_ml"] for h in b["hips"]]
    assert not np.allclose(a["affine"], b["affine"])  # a new position: new planes and slice positions
    assert not np.allclose(b["transform_to_baseline"], np.eye(4))


def _write_hips(path, diffs):
    """A hips.csv as onfh-eval writes it: each pair's scan 10 mL, its repeat 10 - d mL (plus a healthy pair)."""
    cols = ["scan", "side", "stage", "found", "true_lesion_ml", "pred_lesion_ml"]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for i, d in enumerate(diffs):
            w.writerow([f"P{i}_m00.nii.gz", "left", "2", "True", "5.0", "10.0"])
            w.writerow([f"P{i}_m00_retest.nii.gz", "left", "2", "True", "5.0", str(10.0 - d)])
        w.writerow(["H_m00.nii.gz", "left", "0", "True", "0.0", "0.0"])
        w.writerow(["H_m00_retest.nii.gz", "left", "0", "True", "0.0", "3.0"])  # healthy: not a pair


def test_rc_paired_script_compares_two_networks_on_the_same_pairs(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    rng = np.random.default_rng(1)
    d = rng.normal(0.0, 0.5, 40)
    _write_hips(tmp_path / "a.csv", d)
    _write_hips(tmp_path / "b.csv", 2.0 * d)  # the same pairs, twice as far apart
    _write_hips(tmp_path / "c.csv", d)
    script = Path(__file__).resolve().parents[1] / "scripts" / "rc_paired.py"
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "a.csv"), str(tmp_path / "b.csv")],
                         capture_output=True, text=True, check=True).stdout
    rc = 2.77 * np.sqrt(np.mean(d**2) / 2.0)
    assert f"pairs 40 (A 40, B 40): RC A {rc:.2f} mL, B {2 * rc:.2f} mL, B/A 2.00, paired bootstrap 95% 2.00-2.00" in out
    same = subprocess.run([sys.executable, str(script), str(tmp_path / "a.csv"), str(tmp_path / "c.csv")],
                          capture_output=True, text=True, check=True).stdout
    assert "B/A 1.00, paired bootstrap 95% 1.00-1.00" in same
    # a second cohort pooled: the same scan names count apart, 80 pairs, the ratio of the pooled RCs
    pooled = subprocess.run([sys.executable, str(script), str(tmp_path / "a.csv"), str(tmp_path / "c.csv"),
                             "--also", str(tmp_path / "a.csv"), str(tmp_path / "b.csv")],
                            capture_output=True, text=True, check=True).stdout
    ratio = np.sqrt(np.mean(np.concatenate([d, 2.0 * d]) ** 2) / np.mean(d**2))
    assert f"pairs 80 (A 80, B 80): RC A {rc:.2f} mL, B {ratio * rc:.2f} mL, B/A {ratio:.2f}" in pooled


def _write_longitudinal(path, lesion_changes, head_pct=(10.0, 11.0)):
    """An onfh-track longitudinal.csv of baseline + same-day repeat per patient: one diseased right hip with the
    given repeat lesion change, and a healthy left hip (no ``sir_change`` row: not counted)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patient_id", "hip", "months", "metric", "value"])
        for i, dl in enumerate(lesion_changes):
            p = f"P{i:03d}"
            for value, pct in ((0.0, head_pct[0]), (dl, head_pct[1])):
                w.writerow([p, "right", "0.0", "lesion_change_ml", value])
                w.writerow([p, "right", "0.0", "percent_head_involved", pct])
            w.writerow([p, "right", "0.0", "sir_change", 0.05])
            w.writerow([p, "right", "0.0", "regenerated_pct", -3.0])
            w.writerow([p, "right", "0.0", "head_height_loss_mm", 0.5])
            w.writerow([p, "left", "0.0", "lesion_change_ml", 0.0])
            w.writerow([p, "left", "0.0", "lesion_change_ml", 9.0])  # healthy hip: left out


def test_retest_rc_script_gives_1_96_rms_per_cohort_and_pooled(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    _write_longitudinal(tmp_path / "a.csv", [1.0, -1.0, 1.0, -1.0])
    _write_longitudinal(tmp_path / "b.csv", [2.0, -2.0, 2.0, -2.0])
    script = Path(__file__).resolve().parents[1] / "scripts" / "retest_rc.py"
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "a.csv"), str(tmp_path / "b.csv")],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert "hips 4  lesion_ml 1.960  percent_head_pts 1.960  sir 0.098  regenerated_pts 5.880  head_height_mm 0.980" in out[0]
    assert "lesion_ml 3.920" in out[1]
    pooled = 1.96 * np.sqrt((4 * 1.0 + 4 * 4.0) / 8)
    assert out[2].startswith("pooled: hips 8") and f"lesion_ml {pooled:.3f}" in out[2]
    bad = subprocess.run([sys.executable, str(script), str(tmp_path / "missing.csv")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error:")
