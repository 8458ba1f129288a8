"""Style B (out-of-style renderer): same label definitions as the phantom, other contrast, deterministic cohort."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import synth_cfg
from onfh_seg import labels as L
from onfh_seg.io.manifest import read_manifest, resolve
from onfh_seg.synth import phantom, style_b, style_b_labels, style_b_scan
from onfh_seg.synth.cohort import generate_cohort

FAST = {"max_matrix": 64, "fine_mm": 1.3, "coarse_mm": 4.0, "slice_mm": [5.0, 6.0], "iso_mm": [2.0, 2.5]}


def _diseased_patient(seed: int = 3) -> phantom.Patient:
    rng = np.random.default_rng(seed)
    pat = phantom.sample_patient(rng, "P990")
    h = pat.hips["right"]
    phantom.add_disease(rng, h, "3B", 0.3, "mixed", "responder", edema=True)
    phantom.calibrate_lesion(h)
    return pat


def _box(centre: np.ndarray, half: float, step: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ax = np.arange(-half, half + 1e-3, step, dtype=np.float32)
    g = np.meshgrid(ax + np.float32(centre[0]), ax + np.float32(centre[1]), ax + np.float32(centre[2]), indexing="ij")
    return tuple(a.ravel() for a in g)


@pytest.mark.parametrize("months", [0.0, 9.0])
def test_labels_equal_phantom_labels(months):
    pat = _diseased_patient()
    for side in ("right", "left"):  # diseased (with a regenerated channel at 9 months) and healthy hip
        P = _box(pat.hips[side].centre, 45.0, 1.1)
        _, lab_a, rg_a = phantom.render(P, pat, months)[:3]
        lab_b, rg_b = style_b_labels.label_points(P, pat, months)
        assert np.array_equal(lab_a, lab_b)
        assert np.array_equal(rg_a, rg_b)
        assert (lab_b == L.ACETABULUM).any() and (lab_b == L.HEAD).any()
        if side == "right":
            assert (lab_b == L.NECROTIC).any() and (lab_b == L.BAND).any()
            assert rg_b.any() == (months > 0)


def test_contrast_differs_from_phantom():
    """Same points and labels, another look: brighter cartilage, heterogeneous marrow, not a rescaled phantom."""
    pat = _diseased_patient()
    look = style_b.sample_look(np.random.default_rng(1), pat, "oblique_2d")
    P = _box(pat.hips["left"].centre, 40.0, 1.0)
    img_a, lab, _ = phantom.render(P, pat, 0.0)[:3]
    img_b = style_b.render_b(P, pat, 0.0, look)
    assert img_b.shape == img_a.shape and img_b.dtype == np.float32
    h = pat.hips["left"]
    rq = np.sqrt((P[0] - h.centre[0]) ** 2 + (P[1] - h.centre[1]) ** 2 + (P[2] - h.centre[2]) ** 2)
    cart = (rq > h.radius + 0.3) & (rq < h.radius + 1.0) & (lab == 0)
    muscle = (rq > h.radius + 35) & (img_a == np.float32(phantom.T1["muscle"]))
    assert cart.sum() > 100 and muscle.sum() > 100
    # cartilage relative to muscle is brighter in style B
    assert np.median(img_b[cart]) / np.median(img_b[muscle]) > np.median(img_a[cart]) / np.median(img_a[muscle]) + 0.1
    inner = (lab == L.HEAD) & (rq < h.radius - 5)
    assert np.std(img_b[inner]) > 1.3 * np.std(img_a[inner])  # red/yellow marrow islands
    assert abs(np.corrcoef(img_a, img_b)[0, 1]) < 0.97


def test_band_darker_than_viable_marrow_and_varies():
    pat = _diseased_patient()
    look = style_b.sample_look(np.random.default_rng(2), pat, "iso_3d")
    P = _box(pat.hips["right"].centre, 30.0, 0.7)
    img = style_b.render_b(P, pat, 0.0, look)
    lab, _ = style_b_labels.label_points(P, pat, 0.0)
    band, viable = img[lab == L.BAND], img[lab == L.HEAD]
    assert np.median(band) < np.median(viable)
    # faint or invisible in places: a share of band points keeps marrow-like signal
    assert 0.02 < np.mean(band > 0.5 * np.median(viable)) < 0.7


def _scan_rows(manifest: Path) -> list[dict]:
    return [r for r in read_manifest(manifest) if r["image"]]


def test_style_b_cohort_deterministic(tmp_path):
    cfg = synth_cfg(n_patients=1, seed=21, months=[0, 6], style="b", style_b=FAST)
    a = generate_cohort(cfg, tmp_path / "a")
    b = generate_cohort(cfg, tmp_path / "b")
    files = sorted(p.relative_to(a.parent) for p in a.parent.rglob("*") if p.is_file())
    assert len(files) == 9  # 2 x (image, labels, regenerated, truth) + manifest
    for f in files:
        assert (a.parent / f).read_bytes() == (b.parent / f).read_bytes(), f
    other = generate_cohort(synth_cfg(n_patients=1, seed=22, months=[0], style="b", style_b=FAST), tmp_path / "c")
    assert (a.parent / files[0]).read_bytes() != (other.parent / files[0]).read_bytes()


def test_style_b_cohort_has_the_default_layout(tmp_path):
    a = generate_cohort(synth_cfg(n_patients=1, seed=21, months=[0], style="b", style_b=FAST), tmp_path / "b")
    ref = generate_cohort(synth_cfg(n_patients=1, seed=21, months=[0], acquisition={"max_matrix": 48}), tmp_path / "a")
    assert a.read_text().splitlines()[0] == ref.read_text().splitlines()[0]  # manifest columns
    ra, rr = _scan_rows(a)[0], _scan_rows(ref)[0]
    assert [ra[k] for k in ("image", "labels", "regenerated", "truth")] == [rr[k] for k in ("image", "labels", "regenerated", "truth")]
    ta = json.loads(resolve(a, ra["truth"]).read_text())
    tr = json.loads(resolve(ref, rr["truth"]).read_text())
    assert ta["style"] == "b" and set(tr) <= set(ta) and set(tr["acquisition"]) <= set(ta["acquisition"])
    for ha, hr in zip(ta["hips"], tr["hips"]):  # same patient and disease, other rendering
        assert set(hr) == set(ha) and ha["stage"] == hr["stage"] and ha["side"] == hr["side"]
        assert ha["lesion_volume_ml"] == pytest.approx(hr["lesion_volume_ml"], rel=0.05, abs=0.3)
        assert ha["head_volume_ml"] == pytest.approx(hr["head_volume_ml"], rel=0.03)
    img = nib.load(str(resolve(a, ra["image"])))
    lab = nib.load(str(resolve(a, ra["labels"])))
    assert img.get_data_dtype() == np.int16 and lab.get_data_dtype() == np.uint8
    assert img.shape == lab.shape and np.allclose(img.affine, lab.affine)
    data = np.asarray(lab.dataobj)
    assert set(np.unique(data)) <= set(L.LABELS) and (data == L.HEAD).any()
    idx = np.argwhere(np.isin(data, L.HEAD_LABELS))
    w = idx @ img.affine[:3, :3].T + img.affine[:3, 3]
    for h in ta["hips"]:  # labelled heads sit on the true head centres
        near = np.linalg.norm(w - np.array(h["head_centre_ras_mm"]), axis=1) < h["head_radius_mm"] + 4
        if near.sum() > 50 and ta["acquisition"]["fov"] == "pelvis":
            assert np.linalg.norm(w[near].mean(0) - h["head_centre_ras_mm"]) < max(img.header.get_zooms()) + 3


def test_unknown_style_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="style"):
        generate_cohort(synth_cfg(n_patients=1, style="z"), tmp_path)


def test_kspace_truncation_rings_and_motion_ghosts():
    n, N = 64, 128
    obj = np.zeros((N, N), np.float32)
    obj[32:96, 32:96] = 1.0  # a bright square on the 2x oversampled grid
    flat = np.ones(n, np.complex64)
    plain = np.abs(style_b_scan.form_slice(obj, n, style_b_scan.kspace_window(n, 0.0), flat, 0))
    assert plain[32, 32] == pytest.approx(1.0, abs=0.05)  # mean signal kept
    edge = plain[16:30, 32]  # inside the square, next to its edge at voxel 16
    assert edge.max() > 1.04 and edge.min() < 0.97  # Gibbs ringing
    tapered = np.abs(style_b_scan.form_slice(obj, n, style_b_scan.kspace_window(n, 0.35), flat, 0))
    assert np.ptp(tapered[24:30, 32]) < 0.5 * np.ptp(plain[24:30, 32])  # a tapered k-space edge rings less far
    k = np.arange(n) - n // 2
    disp = 1.5 * np.sin(2 * np.pi * np.arange(n) / 8.0)  # periodic motion along axis 0, 8 lines per cycle
    ghost = np.abs(style_b_scan.form_slice(obj, n, style_b_scan.kspace_window(n, 0.0), np.exp(-2j * np.pi * k * disp / n), 0))
    outside = np.ones((n, n), bool)
    outside[10:54, 10:54] = False
    assert ghost[outside].mean() > 3 * plain[outside].mean()  # replicas outside the object
    assert ghost[:10, 32].mean() > 3 * ghost[32, :10].mean()  # along the phase-encoding axis only
