"""onfh-synth: determinism, label geometry, intensities, geometry, transforms, regenerated mask, demo."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from conftest import synth_cfg
from onfh_seg import labels as L
from onfh_seg.io.manifest import read_manifest, resolve
from onfh_seg.synth import phantom
from onfh_seg.synth.cohort import generate_cohort, plan_demo, plan_patient
from onfh_seg.synth.plan import DEMO_SCORES


def _scan_rows(manifest: Path) -> list[dict]:
    return [r for r in read_manifest(manifest) if r["image"]]


def _load(manifest: Path, row: dict, key: str) -> nib.Nifti1Image:
    return nib.load(str(resolve(manifest, row[key])))


def _truth(manifest: Path, row: dict) -> dict:
    return json.loads(resolve(manifest, row["truth"]).read_text())


def _head_centroid(lab: np.ndarray, affine: np.ndarray, near: np.ndarray, radius: float) -> np.ndarray:
    idx = np.argwhere(np.isin(lab, L.HEAD_LABELS))
    w = idx @ affine[:3, :3].T + affine[:3, 3]
    sel = np.linalg.norm(w - near, axis=1) < radius
    return w[sel].mean(0)


def _head_inside(hip: dict, affine: np.ndarray, shape) -> bool:
    """Whole head (centre +/- radius + 3 mm) inside the scan's field of view."""
    inv = np.linalg.inv(affine)
    c = np.array(hip["head_centre_ras_mm"])
    r = hip["head_radius_mm"] + 3
    pts = np.array([c + d * r for d in np.vstack([np.eye(3), -np.eye(3)])])
    v = pts @ inv[:3, :3].T + inv[:3, 3]
    return bool(np.all(v >= 0) and np.all(v <= np.array(shape) - 1))


def test_deterministic_bytes(tmp_path):
    cfg = synth_cfg(n_patients=1, seed=11, months=[0, 3], acquisition={"max_matrix": 128})
    a = generate_cohort(cfg, tmp_path / "a").parent
    b = generate_cohort(cfg, tmp_path / "b").parent
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) >= 9
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


def test_scan_geometry_and_sides(small_cohort):
    for row in _scan_rows(small_cohort):
        img, lab, t = _load(small_cohort, row, "image"), _load(small_cohort, row, "labels"), _truth(small_cohort, row)
        assert img.get_data_dtype() == np.int16 and lab.get_data_dtype() == np.uint8
        assert img.shape == lab.shape and np.allclose(img.affine, lab.affine)
        acq = t["acquisition"]
        z = img.header.get_zooms()
        assert z[0] == pytest.approx(acq["inplane_mm"], abs=1e-3)
        assert z[2] == pytest.approx(acq["slice_thickness_mm"] + acq["slice_gap_mm"], abs=1e-3)
        codes = nib.aff2axcodes(img.affine)
        expect = {"axial": ("L", "P", "S"), "coronal": ("L", "I", "A"), "sagittal": ("P", "I", "R")}[acq["orientation"]]
        assert codes == expect
        hips = {h["side"]: h for h in t["hips"]}
        # patient right is at larger world x (RAS+) than patient left
        assert hips["right"]["head_centre_ras_mm"][0] > hips["left"]["head_centre_ras_mm"][0] + 100
        data = np.asarray(lab.dataobj)
        for side, h in hips.items():
            c = np.array(h["head_centre_ras_mm"])
            inside = np.all((np.linalg.inv(img.affine) @ np.append(c, 1))[:3] >= 0) and np.all(
                (np.linalg.inv(img.affine) @ np.append(c, 1))[:3] <= np.array(img.shape) - 1)
            if inside and acq["fov"] == "pelvis":
                got = _head_centroid(data, img.affine, c, h["head_radius_mm"] + 5)
                assert np.linalg.norm(got - c) < max(z) + 3.0, (side, got, c)


def test_label_geometry_fine_grid():
    rng = np.random.default_rng(3)
    pat = phantom.sample_patient(rng, "P999")
    h = pat.hips["right"]
    phantom.add_disease(rng, h, "3B", 0.35, "D", "responder", edema=True)
    phantom.calibrate_lesion(h)
    ax = np.arange(-40, 40.01, 0.7, dtype=np.float32)
    g = np.meshgrid(ax + np.float32(h.centre[0]), ax + np.float32(h.centre[1]), ax + np.float32(h.centre[2]), indexing="ij")
    P = tuple(a.ravel() for a in g)
    for months in (0.0, 6.0):
        img, lab, regen = phantom.render(P, pat, months)
        lab = lab.reshape(g[0].shape)
        regen = regen.reshape(g[0].shape)
        st = phantom.hip_state(h, months)
        head = phantom.head_region(g, h, st.collapse_mm)
        les = np.isin(lab, L.LESION_LABELS)
        assert les.any() and np.all(head[les]), "necrotic/band voxels must lie inside the head region"
        assert np.all(np.isin(lab[head], L.HEAD_LABELS))
        core = lab == L.NECROTIC
        touching = ndimage.binary_dilation(core) & (lab == L.HEAD)
        assert touching.sum() == 0, "the band must separate the necrotic core from viable head"
        frac = les.sum() / head.sum()
        if months == 0:
            assert frac == pytest.approx(0.35, abs=0.02)
            assert not regen.any()
        else:
            assert regen.any() and np.all(lab[regen] == L.HEAD)
            assert frac < 0.35
    # healthy hip: no necrotic or band labels anywhere
    hl = pat.hips["left"]
    g2 = np.meshgrid(ax + np.float32(hl.centre[0]), ax + np.float32(hl.centre[1]), ax + np.float32(hl.centre[2]), indexing="ij")
    _, lab2, _ = phantom.render(tuple(a.ravel() for a in g2), pat, 0.0)
    assert not np.isin(lab2, L.LESION_LABELS).any() and (lab2 == L.HEAD).any() and (lab2 == L.ACETABULUM).any()


def test_noiseless_tissue_ordering():
    rng = np.random.default_rng(4)
    pat = phantom.sample_patient(rng, "P998")
    pts = rng.uniform([-200, -150, -60], [200, 130, 60], size=(200000, 3)).astype(np.float32)
    P = (pts[:, 0], pts[:, 1], pts[:, 2])
    img, _, _ = phantom.render(P, pat, 0.0)
    body = phantom.body_sdf(P, pat)
    fat = img[(body < -3) & (body > -pat.fat_mm + 3)]
    far_from_bone = np.ones(len(img), bool)
    for h in pat.hips.values():
        far_from_bone &= phantom.femur_sdf(P, h, 0.0) > 8
    far_from_bone &= phantom.pelvis_sdf(P, pat) > 8
    muscle = img[(body < -pat.fat_mm - 8) & far_from_bone]
    h = pat.hips["right"]  # femoral shaft cortex (5 mm thick) below the lesser trochanter
    sp = (h.shaft_top + rng.uniform([-20, -20, -150], [20, 20, -80], size=(50000, 3))).astype(np.float32)
    S = (sp[:, 0], sp[:, 1], sp[:, 2])
    simg, _, _ = phantom.render(S, pat, 0.0)
    f = phantom.femur_sdf(S, h, 0.0)
    cortex = simg[(f < -0.5) & (f > -3.5)]
    assert fat.size > 100 and muscle.size > 100 and cortex.size > 20
    assert np.median(fat) > np.median(muscle) > np.median(cortex)
    assert np.median(fat) == pytest.approx(phantom.T1["fat"], abs=0.02)
    assert np.median(muscle) == pytest.approx(phantom.T1["muscle"], abs=0.02)


def test_transform_to_baseline_maps_anatomy(small_cohort):
    rows = _scan_rows(small_cohort)
    by_pid: dict[str, list[dict]] = {}
    for r in rows:
        by_pid.setdefault(r["patient_id"], []).append(r)
    checked = 0
    for pid, rs in by_pid.items():
        rs.sort(key=lambda r: float(r["months"]))
        base_img = _load(small_cohort, rs[0], "image")
        base_lab = np.asarray(_load(small_cohort, rs[0], "labels").dataobj)
        bt = _truth(small_cohort, rs[0])
        for r in rs[1:]:
            t = _truth(small_cohort, r)
            T = np.array(t["transform_to_baseline"])
            lab = np.asarray(_load(small_cohort, r, "labels").dataobj)
            aff = _load(small_cohort, r, "image").affine
            voxel = max(max(base_img.header.get_zooms()), max(np.linalg.norm(aff[:3, :3], axis=0)))
            for hb, hf in zip(bt["hips"], t["hips"]):
                if not (_head_inside(hf, aff, lab.shape) and _head_inside(hb, base_img.affine, base_lab.shape)):
                    continue
                cf = _head_centroid(lab, aff, np.array(hf["head_centre_ras_mm"]), hf["head_radius_mm"] + 5)
                cb = _head_centroid(base_lab, base_img.affine, np.array(hb["head_centre_ras_mm"]), hb["head_radius_mm"] + 5)
                mapped = T[:3, :3] @ cf + T[:3, 3]
                assert np.linalg.norm(mapped - cb) < voxel, (pid, r["timepoint"], mapped, cb)
                exact = T[:3, :3] @ np.array(hf["head_centre_ras_mm"]) + T[:3, 3]
                assert np.allclose(exact, hb["head_centre_ras_mm"], atol=1e-3)
                checked += 1
            R = T[:3, :3]
            assert np.allclose(R @ R.T, np.eye(3), atol=1e-6)
            assert np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1))) <= 10.0 + 1e-6
            assert np.linalg.norm(T[:3, 3]) <= 40.0
    assert checked >= 4


def test_regenerated_mask_consistent(small_cohort):
    for r in _scan_rows(small_cohort):
        lab = np.asarray(_load(small_cohort, r, "labels").dataobj)
        rg = np.asarray(_load(small_cohort, r, "regenerated").dataobj).astype(bool)
        t = _truth(small_cohort, r)
        assert np.all(lab[rg] == L.HEAD), "regenerated voxels are viable head now"
        if float(r["months"]) == 0:
            assert not rg.any()
        for h in t["hips"]:
            if h["response"] != "responder" or float(r["months"]) == 0:
                assert h["regenerated_volume_ml"] == 0.0 or h["response"] == "responder"
            else:
                assert h["regenerated_fraction"] > 0


def test_at_least_a_quarter_of_hips_healthy(small_cohort):
    hips = []
    for r in _scan_rows(small_cohort):
        if float(r["months"]) == 0:
            hips += _truth(small_cohort, r)["hips"]
    healthy = [h for h in hips if h["stage"] == "0"]
    assert len(healthy) / len(hips) >= 0.25
    for h in healthy:
        assert h["lesion_volume_ml"] == 0.0 and h["scan_label_volumes_ml"].get("necrotic_zone", 0) == 0.0
    diseased = [h for h in hips if h["stage"] != "0"]
    assert all(5.0 <= h["extent_percent"] <= 60.5 for h in diseased)


def test_demo_cohort_plan_and_scores():
    cfg = synth_cfg(demo=True)
    p1, p2 = plan_demo(0, cfg), plan_demo(1, cfg)
    assert (p1.age, p1.sex, p1.months) == (39, "M", [0.0, 3.0, 16.0])
    assert (p2.age, p2.sex, p2.months) == (34, "M", [0.0, 3.0, 7.0])
    h1, h2 = p1.patient.hips["right"], p2.patient.hips["right"]
    assert h1.stage == "4" and h1.collapse_mm > 0 and h1.extent >= 0.4 and h1.response == "responder"
    assert h2.stage.startswith("3") and h2.response == "responder"
    assert not p1.patient.hips["left"].diseased and not p2.patient.hips["left"].diseased
    # case report Tables 1 and 2 (pre, 3, 6, 12 months)
    assert p1.scores[0.0]["harris_hip_score"] == 27 and p1.scores[3.0]["harris_hip_score"] == 71
    assert p2.scores[0.0]["harris_hip_score"] == 50 and p2.scores[12.0]["harris_hip_score"] == 96
    assert p1.scores[0.0]["vas_walking"] == 9 and p2.scores[0.0]["vas_walking"] == 8
    assert p1.scores[6.0]["functional_rating_index"] == 7 and p1.scores[0.0]["rom_flexion_deg"] == 100
    assert p2.scores[3.0]["rom_abduction_deg"] == 40 and p2.scores[0.0]["rom_adduction_vas"] == 9
    assert DEMO_SCORES["P01"]["vas_walking"] == [9, 3, 2, 2]


def test_demo_manifest_holds_report_values(tmp_path):
    cfg = synth_cfg(demo=True, acquisition={"max_matrix": 96})
    m = generate_cohort(cfg, tmp_path)
    rows = read_manifest(m)
    p1 = {float(r["months"]): r for r in rows if r["patient_id"] == "P01"}
    assert sorted(p1) == [0.0, 3.0, 6.0, 12.0, 16.0]
    assert p1[6.0]["image"] == "" and p1[16.0]["image"].endswith("P01_m16.nii.gz")
    assert [p1[m]["harris_hip_score"] for m in (0.0, 3.0, 6.0, 12.0)] == ["27", "71", "71", "71"]
    p2 = {float(r["months"]): r for r in rows if r["patient_id"] == "P02"}
    assert sorted(p2) == [0.0, 3.0, 6.0, 7.0, 12.0]
    assert [p2[m]["vas_walking"] for m in (0.0, 3.0, 6.0, 12.0)] == ["8", "2", "2", "2"]


def test_random_patient_is_independent_of_cohort_size():
    cfg = synth_cfg()
    a, b = plan_patient(2, cfg), plan_patient(2, synth_cfg(n_patients=50))
    assert np.allclose(a.patient.hips["right"].centre, b.patient.hips["right"].centre)


def test_healthy_fraction_makes_healthy_patients_and_keeps_the_others():
    """``disease.healthy_fraction`` (training cohorts against false lesions) gives some patients two healthy
    hips; every other patient is the one drawn without it, and the default draws none."""
    base = synth_cfg()
    cfg = synth_cfg()
    cfg["disease"] = dict(cfg["disease"], healthy_fraction=0.5)
    plans = [(plan_patient(i, base), plan_patient(i, cfg)) for i in range(12)]
    assert all(any(h.diseased for h in a.patient.hips.values()) for a, _ in plans)
    healthy = [b for _, b in plans if not any(h.diseased for h in b.patient.hips.values())]
    assert 2 <= len(healthy) <= 10
    for a, b in plans:
        if any(h.diseased for h in b.patient.hips.values()):
            assert a.months == b.months and np.allclose(a.poses[-1], b.poses[-1])
            assert [h.lesion_R for h in a.patient.hips.values()] == [h.lesion_R for h in b.patient.hips.values()]
