"""Domain-randomised training data: tissue maps, random contrast with the disease constraints, dataset."""

from __future__ import annotations

import numpy as np
import pytest

from onfh_seg import labels as L
from onfh_seg.synth.cohort import plan_patient, synth_config
from onfh_seg.synth.patient import N_TISSUES, TISSUES
from onfh_seg.synth.phantom import render
from onfh_seg.synth.randomise import (head_phantom_labels, random_contrast, ras_cube, render_random,
                                      render_tissue)


def _diseased_patient():
    cfg = synth_config({"seed": 5})
    for i in range(8):
        plan = plan_patient(i, cfg)
        if any(h.diseased for h in plan.patient.hips.values()):
            return plan
    raise AssertionError("no diseased patient in 8")


def test_tissue_map_leaves_default_render_unchanged_and_matches_labels():
    plan = _diseased_patient()
    h = next(h for h in plan.patient.hips.values() if h.diseased)
    n, sp = 48, 1.2
    ax = [(h.centre[i] + (np.arange(n) - (n - 1) / 2) * sp).astype(np.float32) for i in range(3)]
    P = tuple(a.ravel() for a in np.meshgrid(*ax, indexing="ij"))
    img, lab, rg = render(P, plan.patient, 0.0)
    img2, lab2, rg2, tis = render(P, plan.patient, 0.0, with_tissue=True)
    assert np.array_equal(img, img2) and np.array_equal(lab, lab2) and np.array_equal(rg, rg2)
    assert tis.max() < N_TISSUES
    # the band tissue is exactly the band label; core tissues are exactly the necrotic label
    assert np.array_equal(tis == TISSUES["band"], lab == L.BAND)
    cores = np.isin(tis, [TISSUES[k] for k in ("core_fat", "core_blood", "core_fluid", "core_fibrous")])
    assert np.array_equal(cores, lab == L.NECROTIC)
    assert (lab == L.BAND).sum() > 0


def test_random_contrast_keeps_band_darker_than_marrow():
    rng = np.random.default_rng(0)
    T = TISSUES
    for _ in range(300):
        c = random_contrast(rng)
        viable = min(c.mean[T["yellow_marrow"]], c.mean[T["red_marrow"]])
        assert c.mean[T["band"]] < viable
        assert c.mean[T["band"]] <= c.mean[T["core_fat"]]
        assert c.mean[T["band"]] <= c.mean[T["core_blood"]] or c.mean[T["core_blood"]] >= 0.45 * viable


def test_render_random_is_seeded_and_varies_contrast():
    plan = _diseased_patient()
    h = next(h for h in plan.patient.hips.values() if h.diseased)
    aff = ras_cube(plan.poses[0][:3, :3] @ h.centre + plan.poses[0][:3, 3], 40, 1.5)
    tis, lab = render_tissue(plan.patient, 0.0, aff, (40, 40, 40), plan.poses[0])
    assert (lab == L.HEAD).any()
    a = render_random(tis, lab, np.random.default_rng(1))
    b = render_random(tis, lab, np.random.default_rng(1))
    c = render_random(tis, lab, np.random.default_rng(2))
    assert np.array_equal(a, b) and not np.allclose(a, c)
    assert a.dtype == np.float32 and np.isfinite(a).all() and (a >= 0).all()


def test_head_negative_has_no_hip():
    t = head_phantom_labels((40, 48, 44), 5.0, np.random.default_rng(3))
    assert t.shape == (40, 48, 44) and len(np.unique(t)) > 4


def test_randomised_dataset_sample(tmp_path):
    from onfh_seg.model.data import RandomisedPatchDataset, load_dr_items
    from onfh_seg.synth.randomise import build_dr_cohort

    cfg = synth_config({"seed": 7, "n_patients": 1, "months": [0]})
    paths = build_dr_cohort(cfg, tmp_path, "fine", 2.0, 40, workers=1, progress=False)
    assert len(paths) == 2 and all(p.exists() for p in paths)
    again = build_dr_cohort(cfg, tmp_path, "fine", 2.0, 40, workers=1, progress=False)  # resumable: no re-render
    assert [p.stat().st_mtime_ns for p in again] == [p.stat().st_mtime_ns for p in paths]
    ds = RandomisedPatchDataset(load_dr_items(paths), (32, 32, 32), 4, 1.0, seed=0)
    x, y = ds[0]
    x2, y2 = ds[0]
    assert x.shape == (1, 32, 32, 32) and y.shape == (1, 32, 32, 32)
    assert float(x.max()) <= 2.0 and float(x.min()) >= 0.0
    assert (x == x2).all() and (y == y2).all()  # a pure function of (seed, epoch, index)
    assert set(np.unique(y.numpy())) <= set(range(L.NUM_CLASSES))


def test_synth_style_dr_changes_contrast_not_labels(tmp_path):
    """``onfh-synth style=dr`` (in-style validation scans): same labels as the default style, other image."""
    import nibabel as nib

    from onfh_seg.synth.cohort import generate_cohort

    over = {"n_patients": 1, "seed": 4, "months": [0], "acquisition": {"max_matrix": 96}}
    generate_cohort(synth_config({**over, "style": "a"}), tmp_path / "a")
    generate_cohort(synth_config({**over, "style": "dr"}), tmp_path / "dr")
    la, ld = (nib.load(str(tmp_path / s / "labels" / "P001_m00.nii.gz")).get_fdata() for s in ("a", "dr"))
    ia, idr = (nib.load(str(tmp_path / s / "images" / "P001_m00.nii.gz")).get_fdata() for s in ("a", "dr"))
    assert np.array_equal(la, ld) and (la == L.HEAD).any()
    assert ia.shape == idr.shape and not np.allclose(ia, idr)


def test_data_module_randomised_setup(tmp_path):
    """data.randomise: training items and a fixed validation set (same crops at every validation)."""
    from onfh_seg.model.data import SegDataModule

    r = {"out_dir": str(tmp_path), "workers": 1, "pool": 1, "val_samples": 2,
         "train": {"seed": 31, "n_patients": 1, "months": [0]}, "val": {"seed": 32, "n_patients": 1, "months": [0]}}
    dm = SegDataModule("fine", [], [], str(tmp_path / "cache"), 2.0, 24, [16, 16, 16], [16, 16, 16], 2, 4, 0.67, 0,
                       True, seed=0, randomise=r)
    dm.setup()
    assert len(dm.train_ds.items) == 2 and len(dm.val_ds) == 2
    x1, y1 = dm.val_ds[0]
    x2, y2 = dm.val_ds[0]
    assert x1.shape == (1, 16, 16, 16) and (x1 == x2).all() and (y1 == y2).all()
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (2, 1, 16, 16, 16) and yb.shape == (2, 1, 16, 16, 16)


def _head_grid(h, n: int = 48, sp: float = 1.0):
    ax = [(h.centre[i] + (np.arange(n) - (n - 1) / 2) * sp).astype(np.float32) for i in range(3)]
    return tuple(a.ravel() for a in np.meshgrid(*ax, indexing="ij"))


def test_lesion_shapes_keep_extent_and_differ_from_the_ball():
    """Wedge, crescent, irregular and multifocal lesions are calibrated to the same head fraction
    as the ball, and each covers a different set of voxels."""
    from onfh_seg.synth.phantom import calibrate_lesion
    from onfh_seg.synth.randomise import _jitter_dir

    plan = _diseased_patient()
    h = next(h for h in plan.patient.hips.values() if h.diseased)
    P = _head_grid(h)
    masks = {}
    for shape in ("ball", "wedge", "crescent", "irregular", "multifocal"):
        h.lesion_shape = shape
        h.foci = (_jitter_dir(np.random.default_rng(3), h.lesion_dir, 0.7),) if shape == "multifocal" else ()
        calibrate_lesion(h)
        _, lab, _ = render(P, plan.patient, 0.0)
        les = np.isin(lab, [L.NECROTIC, L.BAND])
        head = np.isin(lab, [L.HEAD, L.NECROTIC, L.BAND])
        assert abs(les.sum() / head.sum() - h.extent) < 0.03, shape
        masks[shape] = les
    for shape in ("wedge", "crescent", "irregular", "multifocal"):
        a, b = masks[shape], masks["ball"]
        dice = 2 * (a & b).sum() / (a.sum() + b.sum())
        assert dice < 0.93, (shape, dice)


def test_cysts_and_healthy_edema_are_head_not_lesion():
    """Subchondral cysts and bone-marrow edema in a healthy hip change the tissue map, never the lesion labels."""
    from onfh_seg.synth.randomise import _random_cyst

    cfg = synth_config({"seed": 5})
    plan = next(p for p in (plan_patient(i, cfg) for i in range(8))
                if any(not h.diseased for h in p.patient.hips.values()))
    h = next(h for h in plan.patient.hips.values() if not h.diseased)
    P = _head_grid(h)
    _, lab0, _, tis0 = render(P, plan.patient, 0.0, with_tissue=True)
    h.cysts = tuple(_random_cyst(np.random.default_rng(k), h) for k in range(3))
    h.edema = 0.4
    _, lab1, _, tis1 = render(P, plan.patient, 0.0, with_tissue=True)
    assert np.array_equal(lab0, lab1)
    assert not np.isin(lab1, [L.NECROTIC, L.BAND]).any()
    assert (tis1 == TISSUES["cyst"]).sum() > 20 and np.all(lab1[tis1 == TISSUES["cyst"]] == L.HEAD)
    assert (tis1 == TISSUES["edema_marrow"]).sum() > 1000 and not (tis0 == TISSUES["edema_marrow"]).any()


def test_realistic_contrast_is_the_t1_prior_with_a_full_band():
    """The mixture's realistic share: the default renderer's T1 prior within 10% and 0.03, the band always drawn."""
    from onfh_seg.synth.randomise import T1_PRIOR, realistic_contrast

    rng = np.random.default_rng(3)
    prior = np.array([T1_PRIOR[k] for k in sorted(TISSUES, key=TISSUES.get)], np.float32)
    for _ in range(100):
        c = realistic_contrast(rng)
        assert c.band_gap == 0.0
        assert np.all(np.abs(c.mean[1:] - prior[1:]) <= 0.1 * prior[1:] + 0.15)  # 0.03 jitter: 5 sigma
        assert c.mean[TISSUES["band"]] < min(c.mean[TISSUES["yellow_marrow"]], c.mean[TISSUES["red_marrow"]])


def test_realistic_share_changes_samples_and_absent_share_keeps_old_draws(tmp_path):
    """``acquisitions.realistic`` draws realistic contrasts; without the key the samples are what they were."""
    from onfh_seg.model.data import RandomisedPatchDataset, load_dr_items
    from onfh_seg.synth.randomise import build_dr_cohort

    cfg = synth_config({"seed": 7, "n_patients": 1, "months": [0]})
    items = load_dr_items(build_dr_cohort(cfg, tmp_path, "fine", 2.0, 40, workers=1, progress=False))
    old = RandomisedPatchDataset(items, (32, 32, 32), 4, 1.0, seed=0)
    zero = RandomisedPatchDataset(items, (32, 32, 32), 4, 1.0, seed=0, acquisitions={"realistic": 0.0})
    real = RandomisedPatchDataset(items, (32, 32, 32), 4, 1.0, seed=0, acquisitions={"realistic": 1.0})
    assert all((old[i][0] == zero[i][0]).all() for i in range(4))
    assert any(not (old[i][0] == real[i][0]).all() for i in range(4))
    assert all((old[i][1].shape == real[i][1].shape) for i in range(4))


def test_slab_edge_has_a_face_near_the_centre_with_a_real_edge():
    """``slab_edge``: a slab face within -15..+25 mm of the patch centre; the signal fades over about one slice
    beyond the face and is dimmed (RF profile) just inside it; labels count as in view only inside the slab."""
    from onfh_seg.synth.contrast import slab_edge

    rng = np.random.default_rng(11)
    shape, spacing = (64, 64, 64), 1.1
    faces_near = 0
    for _ in range(20):
        w, inside = slab_edge(shape, spacing, rng)
        assert w.dtype == np.float32 and w.min() >= 0.0 and w.max() <= 1.0
        assert np.all(w[inside] > 0) and np.all(w[inside] >= w[~inside].max() - 1e-6)  # in-plane FOV edges are hard
        partial = (w > 0.02) & (w < 0.98)
        assert partial.any()  # a fade and a dimmed rim, not a hard cut
        c = np.array(shape) // 2
        ball = np.linalg.norm((np.indices(shape).T - c).T * spacing, axis=0) <= 26.0
        faces_near += bool(inside[ball].any() and (~inside[ball]).any())
    assert faces_near >= 15  # the face crosses a head-sized ball round the centre (unless the FOV edge hides it)


def test_slab_edge_outside_mm_lets_the_centre_lie_further_beyond_the_face():
    """``outside_mm``: the sampled centre may lie up to that far beyond the slab face (only a cap of its head in
    the slab); the default (15 mm) draws exactly as before, so older configurations render the same samples."""
    from onfh_seg.synth.contrast import slab_edge

    shape, spacing = (48, 48, 48), 1.5
    c = tuple(n // 2 for n in shape)
    a = [slab_edge(shape, spacing, np.random.default_rng(s)) for s in range(40)]
    b = [slab_edge(shape, spacing, np.random.default_rng(s), 15.0) for s in range(40)]
    assert all((wa == wb).all() and (ia == ib).all() for (wa, ia), (wb, ib) in zip(a, b))
    far = [slab_edge(shape, spacing, np.random.default_rng(s), 40.0) for s in range(40)]
    outside = lambda draws: sum(not inside[c] for _, inside in draws)  # noqa: E731
    assert outside(far) > outside(a)  # the centre beyond the face more often


def one_patient_datasets(tmp_path, *acquisitions: dict) -> list:
    """Six-sample randomised datasets (32^3 at 2 mm, seed 0) of one synthetic patient, one per acquisition mix."""
    from onfh_seg.model.data import RandomisedPatchDataset, load_dr_items
    from onfh_seg.synth.randomise import build_dr_cohort

    cfg = synth_config({"seed": 7, "n_patients": 1, "months": [0]})
    items = load_dr_items(build_dr_cohort(cfg, tmp_path, "fine", 2.0, 40, workers=1, progress=False))
    return [RandomisedPatchDataset(items, (32, 32, 32), 6, 1.0, seed=0, spacing_mm=2.0, acquisitions=a)
            for a in acquisitions]


def test_slab_edge_share_changes_slab_samples_only(tmp_path):
    """``acquisitions.slab_edge`` redraws the slab samples; labels outside the slab are background."""
    hard, zero, edge = one_patient_datasets(tmp_path, {"slab": 1.0}, {"slab": 1.0, "slab_edge": 0.0},
                                            {"slab": 1.0, "slab_edge": 1.0})
    assert all((hard[i][0] == zero[i][0]).all() for i in range(6))
    samples = [edge[i] for i in range(6)]
    assert any(not (hard[i][0] == samples[i][0]).all() for i in range(6))
    assert any((s[1] == 0).float().mean() > 0.2 and (s[1] > 0).any() for s in samples)  # cut, head still in view
    further = one_patient_datasets(tmp_path, {"slab": 1.0, "slab_edge": 1.0, "slab_edge_out_mm": 30.0})[0]
    assert any(not (further[i][0] == samples[i][0]).all() for i in range(6))  # the key reaches slab_edge


def test_marrow_mottle_darkens_only_healthy_marrow():
    """``marrow_mottle``: dark patches or streaks in healthy marrow only (15-50% of its signal at most), never
    brighter, everything else untouched, the same draw for the same seed."""
    from onfh_seg.synth.contrast import MOTTLE_TISSUES, TISSUES, marrow_mottle

    rng = np.random.default_rng(3)
    tissue = np.full((40, 40, 40), TISSUES["muscle"], np.uint8)
    tissue[8:32, 8:32, 8:32] = TISSUES["yellow_marrow"]
    tissue[16:24, 16:24, 16:24] = TISSUES["band"]
    img = (0.3 + 0.6 * np.isin(tissue, MOTTLE_TISSUES)).astype(np.float32)
    darkened = 0
    for k in range(12):
        out = marrow_mottle(img, tissue, np.random.default_rng(k))
        assert out.dtype == np.float32 and out.shape == img.shape
        assert np.array_equal(out, marrow_mottle(img, tissue, np.random.default_rng(k)))
        marrow = np.isin(tissue, MOTTLE_TISSUES)
        assert np.array_equal(out[~marrow], img[~marrow])  # band, muscle untouched
        assert np.all(out <= img + 1e-7) and np.all(out[marrow] >= 0.5 * img[marrow] - 1e-6)
        darkened += float(((out < 0.9 * img) & marrow).mean() / marrow.mean()) > 0.02
    assert darkened >= 10
    assert np.array_equal(marrow_mottle(img, np.full_like(tissue, TISSUES["muscle"]), rng), img)


@pytest.mark.parametrize("key", ["mottle", "slice_profile", "scar"])
def test_a_new_share_leaves_older_draws_unchanged(tmp_path, key: str):
    """``acquisitions.<key>`` absent or 0 draws the same samples as before; 1 changes the images."""
    base, zero, new = one_patient_datasets(tmp_path, {"gre": 0.3}, {"gre": 0.3, key: 0.0}, {"gre": 0.3, key: 1.0})
    assert all((base[i][0] == zero[i][0]).all() and (base[i][1] == zero[i][1]).all() for i in range(6))
    assert any(not (base[i][0] == new[i][0]).all() for i in range(6))


def test_physeal_scar_is_a_thin_head_line_on_the_neck_side():
    """``physeal_scar`` paints a thin sheet of ``subchondral_plate`` across the healthy head marrow only, between
    the head centre and the neck (the closed growth plate), keeps the labels, and is the same for the same seed."""
    from onfh_seg.labels import HEAD, NECROTIC
    from onfh_seg.synth.contrast import TISSUES, physeal_scar

    g = np.indices((64, 64, 64)).astype(np.float32)
    r = np.sqrt((g[0] - 32) ** 2 + (g[1] - 32) ** 2 + (g[2] - 40) ** 2)
    tissue = np.full((64, 64, 64), TISSUES["muscle"], np.uint8)
    labels = np.zeros((64, 64, 64), np.uint8)
    neck = (np.sqrt((g[0] - 32) ** 2 + (g[1] - 32) ** 2) < 7) & (g[2] < 40)  # the neck runs to -z
    tissue[neck] = TISSUES["yellow_marrow"]
    tissue[r < 12] = TISSUES["yellow_marrow"]
    labels[r < 12] = HEAD
    labels[(r < 12) & (g[2] > 46)] = NECROTIC  # a lesion at the dome: never painted
    n_scar = 0
    for seed in range(8):
        out = physeal_scar(tissue, labels, np.random.default_rng(seed), 1.0)
        assert np.array_equal(out, physeal_scar(tissue, labels, np.random.default_rng(seed), 1.0))
        changed = out != tissue
        assert np.all(out[changed] == TISSUES["subchondral_plate"]) and np.all(labels[changed] == HEAD)
        if changed.sum():
            n_scar += 1
            z = g[2][changed]
            assert z.mean() < 40.0  # on the neck's side of the head centre
            assert changed.sum() < 0.25 * (r < 12).sum()  # a line across the head, not a region
    assert n_scar >= 6
    assert np.array_equal(physeal_scar(tissue, np.zeros_like(labels), np.random.default_rng(0), 1.0), tissue)


def test_physeal_scar_offset_moves_it_towards_the_head_neck_junction():
    """``offset_r``: a scar drawn 0.6-0.8 R out lies nearer the neck than one drawn 0.05-0.2 R out."""
    from onfh_seg.labels import HEAD
    from onfh_seg.synth.contrast import TISSUES, physeal_scar

    g = np.indices((64, 64, 64)).astype(np.float32)
    r = np.sqrt((g[0] - 32) ** 2 + (g[1] - 32) ** 2 + (g[2] - 40) ** 2)
    tissue = np.full((64, 64, 64), TISSUES["muscle"], np.uint8)
    labels = np.zeros((64, 64, 64), np.uint8)
    tissue[(np.sqrt((g[0] - 32) ** 2 + (g[1] - 32) ** 2) < 8) & (g[2] < 40)] = TISSUES["yellow_marrow"]
    tissue[r < 12] = TISSUES["yellow_marrow"]
    labels[r < 12] = HEAD
    depth = {}
    for name, offset in (("centre", (0.05, 0.2)), ("junction", (0.6, 0.8))):
        zs = []
        for seed in range(6):
            out = physeal_scar(tissue, labels, np.random.default_rng(seed), 1.0, offset)
            changed = out != tissue
            assert np.all(labels[changed] == HEAD)
            if changed.sum():
                zs.append(float(g[2][changed].mean()))
        assert len(zs) >= 4
        depth[name] = float(np.mean(zs))
    assert depth["junction"] < depth["centre"] - 3.0  # further towards the neck (-z), in voxels


def test_thick_slices_average_across_the_slice():
    """``thick_slices`` keeps the mean signal, blurs a thin bright sheet across the slice axis into neighbouring
    slices (partial volume: a plane lying between two slice centres still shows, weaker), and leaves the
    in-plane axes sharp."""
    from onfh_seg.synth.contrast import thick_slices

    x = np.zeros((48, 48, 48), np.float32)
    x[:, :, 24] = 1.0  # one-voxel sheet normal to axis 2
    across = 0
    for seed in range(12):
        y = thick_slices(x, np.random.default_rng(seed), 1.0, thickness_mm=(4.0, 6.0))
        assert y.shape == x.shape and y.dtype == x.dtype
        profile = y.mean(axis=(0, 1))
        if np.isclose(profile.max(), 1.0, atol=1e-5):  # sliced along an in-plane axis: the sheet stays sharp
            assert np.allclose(y[:, :, 24], 1.0, atol=1e-5) and np.allclose(y[:, :, 10], 0.0)
        else:  # sliced across the sheet: spread over the slice, not sampled as a full-signal plane or lost
            across += 1
            assert 0.02 < profile.max() < 0.5, profile
            assert profile[18:31].sum() > 0.6 * profile.sum()
    assert across >= 2


def test_visible_contrast_draws_the_band_whole_where_a_core_matches_the_marrow():
    """``random_contrast(visible=True)`` draws the same contrasts, except that a contrast whose necrotic core
    (some sub-type) is within ``CORE_GAP`` of the viable marrow gets no band gaps: a lesion is then always seen
    through its core or its whole band. Without it some training lesions could be seen through neither."""
    from onfh_seg.synth.contrast import CORE_GAP, CORE_TISSUES

    hidden = changed = 0
    for seed in range(200):
        a = random_contrast(np.random.default_rng(seed))
        b = random_contrast(np.random.default_rng(seed), visible=True)
        assert np.array_equal(a.mean, b.mean) and np.array_equal(a.std, b.std)
        viable = min(a.mean[TISSUES["yellow_marrow"]], a.mean[TISSUES["red_marrow"]])
        near = any(abs(a.mean[TISSUES[k]] / viable - 1.0) < CORE_GAP for k in CORE_TISSUES)
        hidden += near and a.band_gap > 0
        changed += a.band_gap != b.band_gap
        assert b.band_gap == (0.0 if near else a.band_gap)
    assert hidden > 10 and changed == hidden  # the old draws did hide lesions; only those change


def test_visible_share_leaves_older_draws_unchanged(tmp_path):
    """``acquisitions.visible`` absent or 0 draws the same samples as before."""
    base, zero = one_patient_datasets(tmp_path, {"gre": 0.3}, {"gre": 0.3, "visible": 0.0})
    assert all((base[i][0] == zero[i][0]).all() and (base[i][1] == zero[i][1]).all() for i in range(6))


def test_fat_sat_contrast_has_dark_healthy_marrow_and_an_enhancing_band():
    """``fat_sat_contrast``: fat dark, healthy marrow as dark as a fluid core could be (no viable-marrow floor),
    muscle enhanced, the band brighter than the viable marrow (the lesion shows by its band)."""
    from onfh_seg.synth.fat_sat import fat_sat_contrast

    rng = np.random.default_rng(5)
    dark_viable = 0
    for _ in range(100):
        m = fat_sat_contrast(rng).mean
        viable = max(m[TISSUES["yellow_marrow"]], m[TISSUES["red_marrow"]])
        assert m[TISSUES["subcutaneous_fat"]] < 0.35 and m[TISSUES["subcutaneous_fat"]] < m[TISSUES["muscle"]]
        assert m[TISSUES["band"]] > viable
        dark_viable += viable < 0.25  # random_contrast raises viable marrow under 0.25 back up
    assert dark_viable >= 20


def test_fat_sat_share_changes_samples_and_absent_share_keeps_old_draws(tmp_path):
    old, zero, fat = one_patient_datasets(tmp_path, {}, {"fat_sat": 0.0}, {"fat_sat": 1.0})
    assert all((old[i][0] == zero[i][0]).all() for i in range(6))
    assert any(not (old[i][0] == fat[i][0]).all() for i in range(6))


def test_plain_fat_sat_draws_only_healthy_crops_and_enhances_nothing(tmp_path):
    """``fat_sat_plain`` (issue 22, accept_fs: fat-suppressed without contrast agent): crops without lesion get the
    fat-suppressed contrast with nothing enhanced; crops with a lesion are drawn as before; absent or 0 keeps old
    draws."""
    from onfh_seg.labels import LESION_LABELS
    from onfh_seg.synth.fat_sat import fat_sat_contrast

    for seed in range(20):
        post, plain = fat_sat_contrast(np.random.default_rng(seed)), fat_sat_contrast(np.random.default_rng(seed), False)
        for k in ("subcutaneous_fat", "yellow_marrow", "red_marrow", "core_fat"):
            assert plain.mean[TISSUES[k]] == post.mean[TISSUES[k]]  # the same suppression
        assert plain.mean[TISSUES["muscle"]] <= post.mean[TISSUES["muscle"]]
        viable = max(plain.mean[TISSUES["yellow_marrow"]], plain.mean[TISSUES["red_marrow"]])
        assert plain.mean[TISSUES["band"]] < max(2.0 * viable, 0.2) or plain.mean[TISSUES["band"]] < 0.5
    from onfh_seg.model.data import RandomisedPatchDataset

    old, zero, fs = one_patient_datasets(tmp_path, {}, {"fat_sat_plain": 0.0}, {"fat_sat_plain": 1.0})
    old, zero, fs = [RandomisedPatchDataset(d.items, (32, 32, 32), 12, 0.5, seed=0, spacing_mm=2.0, acquisitions=d.acq)
                     for d in (old, zero, fs)]  # half the crops anywhere: some without lesion
    kinds = set()
    for i in range(12):
        assert (old[i][0] == zero[i][0]).all()
        lesion = bool(np.isin(old[i][1].numpy(), LESION_LABELS).any())
        kinds.add(lesion)
        assert (old[i][0] == fs[i][0]).all() == lesion, i  # redrawn exactly where the crop holds no lesion
    assert kinds == {True, False}  # both kinds of crop were drawn


def test_fat_sat_red_marrow_share_moves_red_and_pelvic_marrow_only():
    """``red_left`` (``acquisitions.fat_sat_red_lo``/``_hi``): red, regenerated and pelvic marrow keep more signal
    than the femoral head's yellow marrow; the default draws are the old ones."""
    from onfh_seg.synth.fat_sat import fat_sat_contrast

    for seed in range(20):
        old = fat_sat_contrast(np.random.default_rng(seed), False)
        same = fat_sat_contrast(np.random.default_rng(seed), False, (0.25, 0.55))
        red = fat_sat_contrast(np.random.default_rng(seed), False, (0.6, 1.0))
        assert (old.mean == same.mean).all()
        moved = {k for k in TISSUES if red.mean[TISSUES[k]] != old.mean[TISSUES[k]]}
        assert moved == {"red_marrow", "regenerated", "pelvic_marrow"}
        assert red.mean[TISSUES["pelvic_marrow"]] > 1.2 * red.mean[TISSUES["yellow_marrow"]]


def test_fat_sat_marrow_left_and_bone_like_marrow():
    """``marrow_left`` (``acquisitions.fat_sat_left_lo``/``_hi``) sets how much of fatty marrow's signal is left;
    ``bone_like_marrow`` (``fat_sat_bone``) draws cortex, subchondral plate and sclerosis at 50-100% of the suppressed
    marrow instead of darker; the defaults draw exactly as before."""
    from onfh_seg.synth.fat_sat import BONE_TISSUES, fat_sat_contrast

    ym = TISSUES["yellow_marrow"]
    for seed in range(20):
        old = fat_sat_contrast(np.random.default_rng(seed), False, (0.6, 1.0))
        same = fat_sat_contrast(np.random.default_rng(seed), False, (0.6, 1.0), (0.1, 0.35), 0.0)
        assert (old.mean == same.mean).all() and (old.std == same.std).all()
        dark = fat_sat_contrast(np.random.default_rng(seed), False, (0.6, 1.0), (0.03, 0.03))
        assert dark.mean[ym] < old.mean[ym] and dark.mean[TISSUES["muscle"]] == old.mean[TISSUES["muscle"]]
        bone = fat_sat_contrast(np.random.default_rng(seed), False, (0.6, 1.0), (0.1, 0.35), 1.0)
        for k in BONE_TISSUES:
            assert 0.5 * bone.mean[ym] - 1e-6 <= bone.mean[TISSUES[k]] <= bone.mean[ym] + 1e-6


def test_fat_sat_plain_keys_reach_the_samples(tmp_path):
    """``fat_sat_left_lo``/``_hi`` and ``fat_sat_bone`` change the fat-suppressed samples of a dataset (drawn here as
    ``fat_sat``, on every crop; ``fat_sat_plain`` takes the same keys on crops without lesion)."""
    base = {"fat_sat": 1.0, "fat_sat_red_lo": 0.6, "fat_sat_red_hi": 1.0}
    a, b = one_patient_datasets(tmp_path, base, {**base, "fat_sat_left_lo": 0.03, "fat_sat_bone": 1.0})
    assert any(not (a[i][0] == b[i][0]).all() for i in range(6))


def test_teacher_weight_is_zero_exactly_on_fat_suppressed_draws(tmp_path):
    """``teacher_weight`` (data fine_fskd): every sample also carries its distillation weight, 0 where the crop was
    drawn fat-suppressed (without lesion), 1 elsewhere; image and labels are the draws without it."""
    from onfh_seg.labels import LESION_LABELS
    from onfh_seg.model.data import RandomisedPatchDataset

    (fs,) = one_patient_datasets(tmp_path, {"fat_sat_plain": 1.0})
    fs_plain = RandomisedPatchDataset(fs.items, (32, 32, 32), 12, 0.5, seed=0, spacing_mm=2.0, acquisitions=fs.acq)
    fs_w = RandomisedPatchDataset(fs.items, (32, 32, 32), 12, 0.5, seed=0, spacing_mm=2.0, acquisitions=fs.acq,
                                  teacher_weight=True)
    weights = set()
    for i in range(12):
        x, y, w = fs_w[i]
        assert (x == fs_plain[i][0]).all() and (y == fs_plain[i][1]).all()
        lesion = bool(np.isin(y.numpy(), LESION_LABELS).any())
        assert float(w) == (1.0 if lesion else 0.0), i  # fat_sat_plain 1.0: every crop without lesion suppressed
        weights.add(float(w))
    assert weights == {0.0, 1.0}


def test_teacher_weight_is_zero_on_slab_faces_through_the_head(tmp_path):
    """``teacher_weight``: 0 also where a slab face was drawn through the head (``slab_edge``; the shipped network
    calls a necrotic cap at a slab's edge viable), 1 on the other slab draws; the draws themselves are unchanged."""
    from onfh_seg.model.data import RandomisedPatchDataset

    half, plain_slab = one_patient_datasets(tmp_path, {"slab": 1.0, "slab_edge": 0.5}, {"slab": 1.0})
    kw = dict(seed=0, spacing_mm=2.0)
    without = RandomisedPatchDataset(half.items, (32, 32, 32), 16, 0.5, acquisitions=half.acq, **kw)
    with_w = RandomisedPatchDataset(half.items, (32, 32, 32), 16, 0.5, acquisitions=half.acq, teacher_weight=True, **kw)
    slab_w = RandomisedPatchDataset(plain_slab.items, (32, 32, 32), 16, 0.5, acquisitions=plain_slab.acq,
                                    teacher_weight=True, **kw)
    weights = []
    for i in range(16):
        x, y, w = with_w[i]
        assert (x == without[i][0]).all() and (y == without[i][1]).all()
        weights.append(float(w))
        assert float(slab_w[i][2]) == 1.0
    assert set(weights) == {0.0, 1.0}


def test_fat_sat_visible_core_sets_the_core_apart_from_the_suppressed_marrow():
    """``visible_core`` (``acquisitions.fat_sat_lesion``): each necrotic-core sub-type is darker than the suppressed
    fatty marrow (at most 60% of it) or brighter by at least 0.08 and 15% of it, the band darker than it; every other
    tissue is drawn as without it."""
    from onfh_seg.synth.contrast import CORE_TISSUES
    from onfh_seg.synth.fat_sat import fat_sat_contrast

    ym, moved = TISSUES["yellow_marrow"], {TISSUES[k] for k in (*CORE_TISSUES, "band")}
    kinds = set()
    for seed in range(40):
        old = fat_sat_contrast(np.random.default_rng(seed), False, (0.6, 1.0), (0.03, 0.3), 0.5)
        new = fat_sat_contrast(np.random.default_rng(seed), False, (0.6, 1.0), (0.03, 0.3), 0.5, visible_core=True)
        viable = float(new.mean[ym])
        assert all(old.mean[i] == new.mean[i] for i in range(N_TISSUES) if i not in moved)
        for k in CORE_TISSUES:
            c = float(new.mean[TISSUES[k]])
            dark, bright = c <= 0.6 * viable + 1e-6, c >= viable + max(0.08, 0.15 * viable) - 1e-6
            assert dark or bright or c == 1.2, (seed, k)
            kinds.add("dark" if dark else "bright")
        assert new.mean[TISSUES["band"]] <= 0.55 * viable + 1e-6
    assert kinds == {"dark", "bright"}


def test_fat_sat_lesion_redraws_exactly_the_crops_with_a_lesion(tmp_path):
    """``acquisitions.fat_sat_lesion``: crops holding a lesion are drawn fat-suppressed (distillation weight 0);
    crops without are drawn as before; absent or 0 keeps the old draws."""
    from onfh_seg.labels import LESION_LABELS
    from onfh_seg.model.data import RandomisedPatchDataset

    base = {"fat_sat_left_lo": 0.03, "fat_sat_left_hi": 0.3}
    sets = one_patient_datasets(tmp_path, base, {**base, "fat_sat_lesion": 0.0}, {**base, "fat_sat_lesion": 1.0})
    old, zero, fs = [RandomisedPatchDataset(d.items, (32, 32, 32), 12, 0.5, seed=0, spacing_mm=2.0, acquisitions=d.acq,
                                            teacher_weight=True) for d in sets]
    kinds = set()
    for i in range(12):
        assert (old[i][0] == zero[i][0]).all() and (old[i][1] == zero[i][1]).all()
        lesion = bool(np.isin(old[i][1].numpy(), LESION_LABELS).any())
        kinds.add(lesion)
        x, y, w = fs[i]
        assert (x == old[i][0]).all() != lesion, i  # redrawn exactly where the crop holds a lesion
        assert lesion or (y == old[i][1]).all()
        assert float(w) == (0.0 if lesion else 1.0), i
    assert kinds == {True, False}


def test_slab_edge_loss_lo_keeps_the_geometry_and_may_keep_the_last_slice_bright():
    """``loss_lo``: the same faces and masks, the outermost partitions at least as bright as with the default (0.2;
    which draws exactly as before), brighter on some draws: slabs whose last slice keeps its signal."""
    from onfh_seg.synth.contrast import slab_edge

    shape, spacing = (40, 40, 40), 1.5
    brighter = 0
    for s in range(20):
        wa, ia = slab_edge(shape, spacing, np.random.default_rng(s))
        wb, ib = slab_edge(shape, spacing, np.random.default_rng(s), 15.0, 0.2)
        w0, i0 = slab_edge(shape, spacing, np.random.default_rng(s), 15.0, 0.0)
        assert (wa == wb).all() and (ia == ib).all() and (ia == i0).all()
        assert (w0 >= wa - 1e-6).all()
        brighter += bool((w0 > wa + 1e-4).any())
    assert brighter >= 15


def test_fat_sat_slab_sets_the_slab_share_of_fat_suppressed_draws_only(tmp_path):
    """``acquisitions.fat_sat_slab``: the share of fat-suppressed draws cut to a thin slab, in place of ``slab``;
    every other draw as before (here the crops with a lesion, drawn without suppression); absent keeps ``slab``."""
    from onfh_seg.labels import LESION_LABELS
    from onfh_seg.model.data import RandomisedPatchDataset

    base = {"fat_sat_plain": 1.0, "slab": 0.0, "slab_edge": 1.0}
    sets = one_patient_datasets(tmp_path, base, {**base, "fat_sat_slab": 1.0})
    old, cut = [RandomisedPatchDataset(d.items, (32, 32, 32), 12, 0.5, seed=0, spacing_mm=2.0, acquisitions=d.acq)
                for d in sets]
    kinds = set()
    for i in range(12):
        lesion = bool(np.isin(old[i][1].numpy(), LESION_LABELS).any())
        kinds.add(lesion)
        same = bool((old[i][0] == cut[i][0]).all())
        assert same == lesion, i  # fat-suppressed (healthy) crops redrawn with a slab, the others unchanged
        if not lesion:
            assert (cut[i][1] == 0).sum() >= (old[i][1] == 0).sum()  # outside the slab: background
    assert kinds == {True, False}


def test_cyst_share_sets_how_many_hips_carry_subchondral_cysts():
    """``widen_disease(cyst_share=...)``: the default (0.2) draws exactly as before; 1 puts cysts in every hip, 0 in
    none (training cohorts: ``randomise.train.cyst_share``)."""
    import copy

    from onfh_seg.synth.randomise import widen_disease

    cfg = synth_config({"seed": 9, "n_patients": 8})
    for i in range(8):
        pats = [copy.deepcopy(plan_patient(i, cfg).patient) for _ in range(4)]
        widen_disease(np.random.default_rng([9, i]), pats[0], shapes=True)
        widen_disease(np.random.default_rng([9, i]), pats[1], shapes=True, cyst_share=0.2)
        widen_disease(np.random.default_rng([9, i]), pats[2], shapes=True, cyst_share=1.0)
        widen_disease(np.random.default_rng([9, i]), pats[3], shapes=True, cyst_share=0.0)
        for a, b in zip(pats[0].hips.values(), pats[1].hips.values()):
            assert a.cysts == b.cysts and a.rim_h == b.rim_h and a.edema == b.edema
        assert all(len(h.cysts) >= 1 for h in pats[2].hips.values())
        assert all(h.cysts == () for h in pats[3].hips.values())


def test_teacher_off_cysts_zeroes_the_distillation_weight_on_crops_with_a_cyst_only(tmp_path):
    """``randomise.teacher_off_cysts``: the same images and labels; the distillation weight 0 where the crop holds
    subchondral-cyst tissue (here every hip has cysts, ``cyst_share`` 1), unchanged elsewhere."""
    from onfh_seg.model.data import RandomisedPatchDataset, load_dr_items
    from onfh_seg.synth.randomise import build_dr_cohort

    cfg = synth_config({"seed": 7, "n_patients": 1, "months": [0]})
    cfg["shapes"], cfg["cyst_share"] = True, 1.0
    items = load_dr_items(build_dr_cohort(cfg, tmp_path, "fine", 2.0, 40, workers=1, progress=False))
    assert any((t == TISSUES["cyst"]).any() for t, _ in items)  # a lesion painted over them may hide some
    plain, off = [RandomisedPatchDataset(items, (32, 32, 32), 8, 0.5, seed=0, spacing_mm=2.0, teacher_weight=True,
                                         teacher_off_cysts=o) for o in (False, True)]
    zeroed = 0
    for i in range(8):
        (xa, ya, wa), (xb, yb, wb) = plain[i], off[i]
        assert (xa == xb).all() and (ya == yb).all()
        assert float(wa) == 1.0 and float(wb) in (0.0, 1.0)
        zeroed += float(wb) == 0.0
    assert 0 < zeroed  # crops round the head hold its cysts


def test_teacher_on_edges_keeps_the_distillation_weight_on_slab_faces(tmp_path):
    """``randomise.teacher_on_edges``: the same images and labels; crops with a slab face through the head keep
    the distillation weight 1 (a teacher that learnt slab faces), where by default it is 0."""
    from onfh_seg.model.data import RandomisedPatchDataset, load_dr_items
    from onfh_seg.synth.randomise import build_dr_cohort

    cfg = synth_config({"seed": 7, "n_patients": 1, "months": [0]})
    items = load_dr_items(build_dr_cohort(cfg, tmp_path, "fine", 2.0, 40, workers=1, progress=False))
    acq = {"slab": 1.0, "slab_edge": 1.0}
    off, on = [RandomisedPatchDataset(items, (32, 32, 32), 6, 0.5, seed=0, spacing_mm=2.0, acquisitions=acq,
                                      teacher_weight=True, teacher_on_edges=o) for o in (False, True)]
    for i in range(6):
        (xa, ya, wa), (xb, yb, wb) = off[i], on[i]
        assert (xa == xb).all() and (ya == yb).all()
        assert float(wa) == 0.0 and float(wb) == 1.0
