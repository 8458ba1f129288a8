"""Longitudinal measures: regenerated fraction, SIR of the baseline zone, scores, correlations, tidy rows."""

from __future__ import annotations

import dataclasses

import json
from pathlib import Path

import numpy as np
import pytest

from onfh_seg.io.manifest import write_manifest
from onfh_seg.io.nifti import save_nifti
from onfh_seg.labels import ACETABULUM, BAND, HEAD, NECROTIC
from onfh_seg.geometry import apply
from onfh_seg.track.changes import lesion_changes
from onfh_seg.track.inputs import collect_patients
from onfh_seg.track.patient import score_changes, track_patient
from onfh_seg.stats import spearman
from onfh_seg.track.tables import TIDY_COLUMNS, correlations, summary_rows, tidy_rows
from truth_infer import write_truth_infer_outputs

# ---------------------------------------------------------------- toy hip with exactly known answers

SPACING = 1.5
N = 64
SHIFT_VOX = np.array([2, -1, 1])  # follow-up content moves by whole voxels: exact nearest-neighbour mapping
INTENS = {0: 100.0, HEAD: 900.0, NECROTIC: 300.0, BAND: 80.0, ACETABULUM: 600.0}


def toy_labels(offset_mm: np.ndarray, regenerated: bool) -> np.ndarray:
    aff = toy_affine()
    ijk = np.stack(np.indices((N, N, N)), axis=-1).astype(float)
    xyz = ijk @ aff[:3, :3].T + aff[:3, 3] - offset_mm
    r = np.linalg.norm(xyz, axis=-1)
    lab = np.zeros((N, N, N), np.uint8)
    lab[(r >= 26) & (r <= 34) & (xyz[..., 2] > -5)] = ACETABULUM
    head = r < 22
    lab[head] = HEAD
    d = np.linalg.norm(xyz - [0, 0, 22.0], axis=-1)
    lab[head & (d < 12)] = BAND
    core = head & (d < 10)
    lab[core] = NECROTIC
    if regenerated:
        lab[core & (xyz[..., 0] > 0)] = HEAD
    return lab


def toy_affine() -> np.ndarray:
    aff = np.diag([SPACING, SPACING, SPACING, 1.0])
    aff[:3, 3] = -SPACING * (N - 1) / 2
    return aff


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    aff = toy_affine()
    lut = np.array([INTENS[k] for k in range(5)], np.float32)
    rows = []
    for m, offset, regen in ((0, np.zeros(3), False), (6, SHIFT_VOX * SPACING, True)):
        name = f"T001_m{m:02d}"
        lab = toy_labels(offset, regen)
        save_nifti(lut[lab], aff, root / "images" / f"{name}.nii.gz", np.int16)
        save_nifti(lab, aff, root / "labels" / f"{name}.nii.gz", np.uint8)
        rows.append({"patient_id": "T001", "timepoint": f"m{m:02d}", "months": m, "image": f"images/{name}.nii.gz",
                     "labels": f"labels/{name}.nii.gz", "harris_hip_score": 40 + 5 * m})
    rows.append({"patient_id": "T001", "timepoint": "m03", "months": 3, "image": "", "harris_hip_score": 50,
                 "vas_walking": 6})
    write_manifest(root / "manifest.csv", rows)
    infer = write_truth_infer_outputs(root / "manifest.csv", root / "infer")
    patients, _ = collect_patients(root / "manifest.csv", infer)
    shift = np.eye(4)
    shift[:3, 3] = -SHIFT_VOX * SPACING  # follow-up world -> baseline world
    rec = track_patient(patients["T001"], root / "out", fixed_transforms={"m06": shift})
    return rec, toy_labels(np.zeros(3), False)


def test_toy_regenerated_fraction_and_sir(toy):
    rec, base_lab = toy
    (hip,) = rec["hips"]
    b, f = hip["timepoints"]
    lesion = np.isin(base_lab, (NECROTIC, BAND))
    expected_regen = (base_lab == NECROTIC)[N // 2:].sum() / lesion.sum()  # core with x > 0
    assert b["regenerated_pct"] == 0.0 and b["sir_change"] == 0.0
    assert f["regenerated_pct"] == pytest.approx(100.0 * expected_regen, abs=2.0)
    assert f["new_necrosis_ml"] == pytest.approx(0.0, abs=0.05)
    # baseline zone at baseline: core 300 + band 80 over the eroded acetabulum (600)
    n_core, n_band = (base_lab == NECROTIC).sum(), (base_lab == BAND).sum()
    sir0 = (300.0 * n_core + 80.0 * n_band) / (n_core + n_band) / 600.0
    assert b["sir_baseline_zone"] == pytest.approx(sir0, abs=1e-3)
    assert b["sir_lesion"] == pytest.approx(sir0, abs=1e-3)
    # follow-up: the regenerated half of the core is 900
    n_regen = (base_lab == NECROTIC)[N // 2:].sum()
    sir1 = (900.0 * n_regen + 300.0 * (n_core - n_regen) + 80.0 * n_band) / (n_core + n_band) / 600.0
    assert f["sir_baseline_zone"] == pytest.approx(sir1, abs=1e-3)
    assert f["sir_change"] == pytest.approx(sir1 - sir0, abs=1e-3)
    assert f["lesion_change_ml"] < 0 and f["lesion_change_pct"] < 0
    assert abs(f["head_height_loss_mm"]) < 0.5


def test_toy_scores_and_tidy_rows(toy):
    rec, _ = toy
    assert [v["months"] for v in rec["visits"]] == [0.0, 3.0, 6.0]
    assert rec["score_changes"]["harris_hip_score"] == {
        "baseline_months": 0.0, "baseline": 40.0, "last_months": 6.0, "last": 70.0, "change": 30.0}
    assert "vas_walking" not in rec["score_changes"]  # one visit only
    rows = tidy_rows(rec)
    assert all(tuple(r) == TIDY_COLUMNS for r in rows)
    metrics = {r["metric"] for r in rows}
    assert {"lesion_volume_ml", "percent_head_involved", "regenerated_pct", "sir_baseline_zone",
            "sir_change", "band_volume_ml", "new_necrosis_ml", "head_height_loss_mm", "harris_hip_score"} <= metrics
    assert {r["hip"] for r in rows if r["metric"] == "harris_hip_score"} == {"patient"}
    json.dumps(rec)  # the record is plain JSON


def test_score_changes_use_nearest_visits():
    visits = [{"timepoint": "a", "months": 0.0, "vas_walking": 9.0}, {"timepoint": "b", "months": 3.0, "vas_walking": 3.0},
              {"timepoint": "c", "months": 12.0, "vas_walking": 2.0}]
    sc = score_changes(visits, 0.0, 11.0)
    assert sc["vas_walking"]["change"] == -7.0 and sc["vas_walking"]["last_months"] == 12.0
    assert score_changes(visits[:1], 0.0, 11.0) == {}


def test_lesion_changes_count_only_net_change_at_the_border():
    from scipy import ndimage

    base = np.ones((40, 40, 40), np.uint8)
    base[10:30, 10:30, 10:30] = NECROTIC
    les = base == NECROTIC
    d_in = ndimage.distance_transform_edt(les)
    d_out = ndimage.distance_transform_edt(~les)
    # the border moves out by one voxel on one face and in by one voxel on the opposite face: net 0
    follow = base.copy()
    follow[30, 10:30, 10:30] = NECROTIC
    follow[10, 10:30, 10:30] = HEAD
    assert lesion_changes(base, follow, d_in, d_out, 2.0) == (0, 0)
    # the same without a shell counts both as change
    assert lesion_changes(base, follow, d_in, d_out, 0.0) == (400, 400)
    # a deep hole regenerates, a deep shrink of a face counts in full
    follow = base.copy()
    follow[18:22, 18:22, 18:22] = HEAD
    follow[10:14, 10:30, 10:30] = HEAD
    assert lesion_changes(base, follow, d_in, d_out, 2.0) == (64 + 4 * 400, 0)


def test_spearman_reports_n_and_na():
    assert spearman([1, 2], [3, 4]) == {"n": 2, "rho": "n/a", "p_value": "n/a", "note": "n < 3"}
    res = spearman([1, 2, None, 4, 5], [2, 4, 1, 8, 10])
    assert res["n"] == 4 and res["rho"] == pytest.approx(1.0)
    res = spearman([1, 2, 3, 4], [4, 3, 2, float("nan")])
    assert res["n"] == 3 and res["rho"] == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3])["rho"] == "n/a"


def test_correlations_over_hips_with_lesion():
    def rec(pid, les, chg, regen, sir, hhs):
        return {"patient_id": pid, "hips": [{"hip": "right", "timepoints": [
            {"months": 0.0, "lesion_volume_ml": les, "sir_baseline_zone": 0.5},
            {"months": 6.0, "lesion_volume_ml": les, "lesion_change_ml": 0.0, "lesion_change_pct": chg,
             "regenerated_pct": regen, "sir_baseline_zone": 0.5 + sir, "sir_change": sir}]}],
            "score_changes": {"harris_hip_score": {"baseline": 40, "last": 40 + hhs, "change": hhs}}}

    recs = [rec("P1", 10, -20, 30.0, 0.2, 30), rec("P2", 8, -5, 10.0, 0.05, 10), rec("P3", 0, 0, None, 0.0, 0)]
    summary = [r for x in recs for r in summary_rows(x)]
    assert summary[0]["harris_hip_score_change"] == 30
    corr = correlations(summary)
    assert {c["imaging_metric"] for c in corr} == {"lesion_change_pct", "regenerated_pct", "sir_change"}
    assert all(c["n"] == 2 and c["rho"] == "n/a" for c in corr)  # the lesion-free hip does not count
    recs.append(rec("P4", 12, -30, 50.0, 0.3, 45))
    corr = correlations([r for x in recs for r in summary_rows(x)])
    regen = next(c for c in corr if c["imaging_metric"] == "regenerated_pct")
    assert regen["n"] == 3 and regen["rho"] == pytest.approx(1.0)


# ---------------------------------------------------------------- synthetic phantoms with registration


@pytest.fixture(scope="module")
def phantom(request, tmp_path_factory):
    manifest = request.getfixturevalue("small_cohort")  # tests/conftest.py
    infer = write_truth_infer_outputs(manifest, tmp_path_factory.mktemp("infer"))
    patients, _ = collect_patients(manifest, infer)
    out = tmp_path_factory.mktemp("track")
    results = {}
    for pid, p in patients.items():
        truth = {s.timepoint: json.loads((manifest.parent / "truth" / f"{s.image.name[:-7]}.json").read_text())
                 for s in p.scans}
        true_T = {tp: np.array(t["transform_to_baseline"]) for tp, t in truth.items()}
        est = track_patient(p, out)
        ref = None
        if pid == "P002":  # bilateral: one stable and one regenerating hip
            ref = track_patient(p, out / "true", fixed_transforms=true_T, write_transforms=False)
        results[pid] = (est, ref, truth, true_T)
    return results


def _truth_hip(truth_tp: dict, centre_in_scan: np.ndarray) -> dict:
    return min(truth_tp["hips"], key=lambda h: np.linalg.norm(np.subtract(h["head_centre_ras_mm"], centre_in_scan)))


def test_phantom_regenerated_fraction_within_5_points(phantom):
    checked = 0
    for pid, (est, _, truth, true_T) in phantom.items():
        for hip in est["hips"]:
            c0 = np.array(hip["baseline_head_centre_ras_mm"])
            for tp in hip["timepoints"][1:]:
                if tp["regenerated_pct"] is None:
                    continue
                centre = apply(np.linalg.inv(true_T[tp["timepoint"]]), c0)
                t_hip = _truth_hip(truth[tp["timepoint"]], centre)
                assert abs(tp["regenerated_pct"] - 100.0 * t_hip["regenerated_fraction"]) <= 5.0, (pid, hip["hip"], tp)
                checked += 1
    assert checked >= 3


def test_phantom_sir_change_matches_true_alignment(phantom):
    """SIR change of the baseline zone with the estimated transform vs the true transform (same labels)."""
    n = 0
    for pid, (est, ref, _, _) in phantom.items():
        if ref is None:
            continue
        for h_est, h_ref in zip(est["hips"], ref["hips"]):
            for a, b in zip(h_est["timepoints"], h_ref["timepoints"]):
                if a["sir_change"] is None:
                    continue
                assert abs(a["sir_change"] - b["sir_change"]) <= 0.05, (pid, h_est["hip"], a["timepoint"])
                assert a["sir_lesion"] is not None or a["lesion_volume_ml"] == 0
                n += 1
    assert n >= 3


def test_phantom_transform_files(phantom):
    est = phantom["P002"][0]
    hip = est["hips"][0]
    tp = hip["timepoints"][1]
    assert tp["transform"] == f"transforms/P002_{hip['hip']}_{tp['timepoint']}.json"
    assert tp["registration_shift_mm"] < 5.0


def test_tiny_baseline_lesion_counts_as_none(tmp_path):
    """A baseline lesion below min_lesion_ml (e.g. specks on a healthy hip) gives no regenerated fraction or zone SIR."""
    from onfh_seg.track.params import TrackParams

    root = tmp_path
    aff = toy_affine()
    lut = np.array([INTENS[k] for k in range(5)], np.float32)
    rows = []
    for m, regen in ((0, False), (6, True)):
        name = f"T002_m{m:02d}"
        lab = toy_labels(np.zeros(3), regen)
        save_nifti(lut[lab], aff, root / "images" / f"{name}.nii.gz", np.int16)
        save_nifti(lab, aff, root / "labels" / f"{name}.nii.gz", np.uint8)
        rows.append({"patient_id": "T002", "timepoint": f"m{m:02d}", "months": m, "image": f"images/{name}.nii.gz",
                     "labels": f"labels/{name}.nii.gz"})
    write_manifest(root / "manifest.csv", rows)
    patients, _ = collect_patients(root / "manifest.csv", write_truth_infer_outputs(root / "manifest.csv", root / "infer"))
    big = dataclasses.replace(TrackParams.from_dict(), min_lesion_ml=1000.0)  # the toy lesion (a few mL) now counts as "no lesion"
    rec = track_patient(patients["T002"], root / "out", params=big, fixed_transforms={"m06": np.eye(4)})
    b, f = rec["hips"][0]["timepoints"]
    assert b["regenerated_pct"] is None and f["regenerated_pct"] is None
    assert f["sir_baseline_zone"] is None
    rec = track_patient(patients["T002"], root / "out2", fixed_transforms={"m06": np.eye(4)})
    assert rec["hips"][0]["timepoints"][1]["regenerated_pct"] > 0
