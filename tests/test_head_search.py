"""The head search (infer.search) and the thin-slab gradient-echo renderer it was built against (synth.style_c)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from onfh_seg.hips import find_heads
from onfh_seg.infer.search import (
    body_midline_x,
    in_field_of_view,
    lateral_faces,
    far_from,
    head_centre,
    lattice_candidates,
    pair_plausible,
    partner_candidates,
    partner_out_of_view,
    plausible_head,
    sphere_candidates,
)
from onfh_seg.synth.cohort import plan_patient, synth_config
from onfh_seg.synth.phantom import TISSUES
from onfh_seg.synth.style_c import generate_patient_c, sample_protocol, tissue_signal

MODELS = Path(__file__).resolve().parents[1] / "models"
needs_model = pytest.mark.skipif(not (MODELS / "fine.onnx").is_file(), reason="shipped model not found in models/")


def ras_grid(shape: tuple[int, int, int], spacing: float, centre: np.ndarray) -> np.ndarray:
    """Affine of an RAS-aligned grid centred on ``centre``."""
    a = np.eye(4)
    a[:3, :3] *= spacing
    a[:3, 3] = np.asarray(centre, float) - (np.asarray(shape) - 1) / 2 * spacing
    return a


def ball(shape, affine, centre, radius) -> np.ndarray:
    g = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    w = g @ affine[:3, :3].T + affine[:3, 3]
    return np.linalg.norm(w - np.asarray(centre, float), axis=-1) <= radius


def pelvis_like(spacing: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """A body (ellipse) with two dark-rimmed head-sized balls at x = +-90 mm and a large midline 'bladder'."""
    shape = (80, 60, 24)
    aff = ras_grid(shape, spacing, (0.0, 0.0, 0.0))
    x = np.zeros(shape, np.float32)
    g = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1) @ aff[:3, :3].T + aff[:3, 3]
    body = (g[..., 0] / 150) ** 2 + (g[..., 1] / 100) ** 2 <= 1
    x[body] = 0.4
    for cx in (-90.0, 90.0):
        x[ball(shape, aff, (cx, 0, 0), 28)] = 0.1  # joint / cortex rim
        x[ball(shape, aff, (cx, 0, 0), 24)] = 0.8  # marrow
    x[ball(shape, aff, (0, 30, 0), 45)] = 1.0
    return x, aff


def test_midline_and_plausibility() -> None:
    x, aff = pelvis_like()
    mid = body_midline_x(x, aff)
    assert mid is not None and abs(mid) < 6.0
    assert body_midline_x(x[30:50], aff) is None  # an 80 mm wide field of view: one hip at most, no midline
    fov = np.ones(x.shape, bool)
    fov[:25] = False  # the field of view cuts the body on the left only: its centroid is no midline
    assert body_midline_x(x, aff, fov) is None
    fov[-25:] = False  # cut on both sides, 120 mm wide: a one-hip field of view
    assert body_midline_x(x, aff, fov) is None
    fov = np.ones(x.shape, bool)
    fov[:8], fov[-8:] = False, False  # cut on both sides, 256 mm wide: over the pelvis
    assert abs(body_midline_x(x, aff, fov)) < 6.0
    assert plausible_head(np.array([90.0, 0, 0]), mid) and not plausible_head(np.array([10.0, 0, 0]), mid)
    assert not plausible_head(np.array([85.0, 0, 0]), mid, partner=np.array([90.0, 0, 0]))  # same side as the first
    assert plausible_head(np.array([-85.0, 0, 0]), mid, partner=np.array([90.0, 0, 0]))
    assert plausible_head(np.array([3.0, 0, 0]), None)  # no midline known: nothing ruled out


def test_no_midline_from_a_field_off_to_one_side_that_reaches_the_body_edge() -> None:
    """slab_edge2 P003_m00 (style C, hips 45-65 mm off the field's centre): the field cut the body on the left and
    reached its tapering edge on the right; taken for a cut on both sides, the centroid (45 mm off the true midline)
    ruled the one head in view out. A side is cut only where the body there is deep (``CUT_DEPTH``)."""
    x, aff = pelvis_like()  # body: an ellipse of half-axes 150 mm (x) and 100 mm (y); grid x from -158 to +158 mm
    fov = np.ones(x.shape, bool)
    fov[:15] = False  # x < -98 mm: the body cut where it is deep
    fov[76:] = False  # x > +146 mm: the body's edge, 46 mm deep of 200, touches the field's side
    assert body_midline_x(x, aff, fov) is None
    fov[:15] = True  # the whole body in view (its edges touch the field on the right only): the centroid
    assert abs(body_midline_x(x, aff, fov)) < 12.0
    fov = np.ones(x.shape, bool)
    fov[:8], fov[-8:] = False, False  # cut on both sides where the body is deep, 256 mm wide: over the pelvis
    assert abs(body_midline_x(x, aff, fov)) < 6.0


def test_lateral_faces_are_the_sides_of_a_slab_not_its_top_and_bottom() -> None:
    """An axial slab 20 slices of 3.6 mm thick, tilted 24 degrees about the left-right axis: the faces across x
    only; the top and bottom faces (the slice axis) are no lateral faces."""
    shape = (160, 160, 20)
    t = np.radians(24.0)
    rot = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    img_aff = np.eye(4)
    img_aff[:3, :3] = rot * np.array([1.625, 1.625, 3.6])
    img_aff[:3, 3] = -img_aff[:3, :3] @ ((np.array(shape) - 1) / 2)
    g_shape = (72, 72, 40)
    g_aff = ras_grid(g_shape, 4.0, (0.0, 0.0, 0.0))
    fov = in_field_of_view(g_aff, g_shape, img_aff, shape)
    lat = lateral_faces(g_aff, g_shape, img_aff, shape) & fov
    world_x = g_aff[0, 0] * np.argwhere(lat)[:, 0] + g_aff[0, 3]
    assert lat.any() and np.all(np.abs(np.abs(world_x) - 130.0) <= 8.0)  # the field's sides at x = +-130 mm
    inner = fov.copy()
    inner[np.abs(g_aff[0, 0] * np.arange(g_shape[0]) + g_aff[0, 3]) > 110.0] = False
    assert not (lat & inner).any()  # no slab top or bottom face in the field's inner x range


def test_sphere_candidates_find_both_heads_not_the_midline_blob() -> None:
    x, aff = pelvis_like()
    cands = sphere_candidates(x, aff, [], body_midline_x(x, aff))
    assert len(cands) >= 2
    firsts = sorted(cands[:2], key=lambda c: c[0])
    assert np.linalg.norm(firsts[0] - np.array([-90.0, 0, 0])) < 10.0
    assert np.linalg.norm(firsts[1] - np.array([90.0, 0, 0])) < 10.0
    assert all(abs(c[0]) >= 50.0 for c in cands)
    # a known head keeps its own candidates away
    again = sphere_candidates(x, aff, [np.array([90.0, 0, 0])], body_midline_x(x, aff))
    assert all(far_from(c, [np.array([90.0, 0, 0])]) for c in again)


def test_partner_candidates_across_the_midline_mirror_first() -> None:
    shape, aff = (160, 160, 20), ras_grid((160, 160, 20), 1.6, (0, 0, 0))
    found = np.array([95.0, 5.0, 0.0])
    cands = partner_candidates(found, shape, aff, midline_x=0.0)
    assert cands and all(c[0] < found[0] - 140 for c in cands)
    first = cands[0]
    assert 150 <= found[0] - first[0] <= 230 and np.allclose(first[1:], found[1:])
    # no midline known: both sides, as far as the field of view reaches (here 512 mm wide)
    wide, waff = (320, 160, 20), ras_grid((320, 160, 20), 1.6, (0, 0, 0))
    both = partner_candidates(np.array([30.0, 5, 0]), wide, waff, midline_x=None, max_n=100)
    assert any(c[0] > 30 + 140 for c in both) and any(c[0] < 30 - 140 for c in both)
    # nothing outside the field of view (20 mm of margin)
    assert all(-128 - 21 <= c[0] <= 128 + 21 for c in cands)


def test_partner_out_of_view_only_in_a_one_hip_field_of_view() -> None:
    """A sagittal one-hip field of view (22 slices of 5 mm across x) cannot hold any voxel of the other head
    (at least 150 mm away in x); a pelvic one, a thin oblique slab over both hips, or a head at the edge of a
    field of view that reaches 115 mm beyond it in x can."""
    sag = np.array([[0, 0, 5.0, 0], [-0.95, 0, 0, 0], [0, -0.95, 0, 0], [0, 0, 0, 1]])  # P, I, R axes
    sag[:3, 3] = np.array([40.0, 0, 0]) - sag[:3, :3] @ (np.array([221, 221, 22]) - 1) / 2
    assert partner_out_of_view(np.array([40.0, 5, 0]), (221, 221, 22), sag)
    assert partner_out_of_view(np.array([-10.0, 5, 0]), (221, 221, 22), sag)  # a head near the edge: 105 mm
    pelvis = ras_grid((348, 348, 35), 1.08, (0, 0, 0))
    assert not partner_out_of_view(np.array([90.0, 5, 0]), (348, 348, 35), pelvis)
    reach = ras_grid((130, 160, 20), 1.0, (50, 0, 0))  # x from -15 to 115 mm: a head at 0 reaches 115 mm
    assert not partner_out_of_view(np.array([0.0, 0, 0]), (130, 160, 20), reach)
    assert partner_out_of_view(np.array([20.0, 0, 0]), (130, 160, 20), reach)  # 95 mm at most


def test_partner_candidates_are_moved_into_a_thin_oblique_slab() -> None:
    """A 20-slice slab tilted 24 degrees: lattice points above or below it are moved into it, not dropped."""
    from onfh_seg.infer.search import inside_fov

    shape = (160, 160, 20)
    tilt = np.deg2rad(24.0)
    aff = np.eye(4)
    aff[:3, :3] = np.array([[1.6, 0, 0], [0, 1.6 * np.cos(tilt), -3.6 * np.sin(tilt)],
                            [0, 1.6 * np.sin(tilt), 3.6 * np.cos(tilt)]])
    aff[:3, 3] = -aff[:3, :3] @ (np.array(shape) - 1) / 2
    found = np.array([95.0, 5.0, 30.0])  # above the slab at the partner's x: 30 mm up, the slab is 36 mm thick
    cands = partner_candidates(found, shape, aff, midline_x=0.0)
    assert len(cands) == 12  # max_n, all kept
    assert all(inside_fov(c, shape, aff, margin_mm=0.01) for c in cands)
    assert all(np.linalg.norm(a - b) >= 35.0 / 3 for i, a in enumerate(cands) for b in cands[:i])


def test_style_c_gradient_echo_physics() -> None:
    rng = np.random.default_rng(0)
    opp = tissue_signal(4.0, 1.14, 15.0, rng)  # 440 Hz x 1.14 ms = half a cycle: opposed phase
    inp = tissue_signal(4.0, 2.27, 15.0, np.random.default_rng(0))  # a full cycle: in phase
    T = TISSUES
    # fat and water cancel in mixed marrow at opposed phase, add in phase; pure fat barely changes
    assert abs(opp[T["red_marrow"]]) < 0.5 * abs(inp[T["red_marrow"]])
    assert abs(opp[T["subcutaneous_fat"]]) > 0.8 * abs(inp[T["subcutaneous_fat"]])
    assert abs(opp[T["red_marrow"]]) < abs(opp[T["subcutaneous_fat"]])  # marrow darker than fat
    cfg = synth_config({"seed": 9301})
    plan = plan_patient(0, cfg)
    for i in range(20):
        p = sample_protocol(np.random.default_rng([1, i]), plan.patient, plan.poses[0])
        assert 16 <= p.geom.shape[2] <= 32 and 2.5 <= p.geom.slice_mm <= 4.0 and 10 <= p.tilt_deg <= 30
        fov = p.geom.shape[0] * p.geom.inplane_mm
        assert 239 <= fov <= 301
        zooms = np.sqrt((p.geom.affine[:3, :3] ** 2).sum(0))
        assert np.allclose(zooms, [p.geom.inplane_mm, p.geom.inplane_mm, p.geom.slice_mm])


@pytest.fixture(scope="module")
def slab_scan(tmp_path_factory) -> tuple[Path, dict]:
    """One style-C thin oblique gradient-echo slab with both heads at its lateral edges (seed 9301, patient 4)."""
    out = tmp_path_factory.mktemp("style_c")
    cfg = synth_config({"seed": 9301, "months": [0], "style": "c"})
    rows = generate_patient_c(plan_patient(3, cfg), out, cfg, 3)
    import json

    truth = json.loads((out / rows[0]["truth"]).read_text())
    return out / rows[0]["image"], truth


def test_style_c_scan_is_a_thin_oblique_slab_with_labels(slab_scan) -> None:
    image, truth = slab_scan
    img = nib.load(str(image))
    assert 16 <= img.shape[2] <= 32
    lab = nib.load(str(image).replace("images", "labels"))
    _, heads = find_heads(np.asanyarray(lab.dataobj), lab.affine, min_ml=5.0)
    assert len(heads) == 2 and truth["acquisition"]["protocol"] == "3d_spgr_slab"
    assert {h["side"] for h in truth["hips"]} == {"right", "left"}


def segment_both_heads(seg, image: Path, true: dict):
    """Segment ``image`` and check both heads are found on their sides within 20 mm of ``true``; the result."""
    img = nib.load(str(image))
    res = seg.segment(np.asanyarray(img.dataobj).astype(np.float32), img.affine)
    _, heads = find_heads(res.labels, img.affine, min_ml=5.0)
    sides = {("right" if h.centre_ras[0] > 0 else "left"): h for h in heads}
    assert set(sides) == {"right", "left"}, [h.centre_ras for h in heads]
    for side, h in sides.items():
        assert np.linalg.norm(h.centre_ras - true[side]) < 20.0
    return res


@needs_model
@pytest.mark.parametrize("coarse_finds", ["none", "right"])
def test_search_finds_heads_the_coarse_stage_missed(slab_scan, monkeypatch, coarse_finds) -> None:
    """With the coarse stage made blind (no head, or only the right one, and no probability anywhere), the search
    finds both heads on their sides."""
    from onfh_seg.infer.engine import Segmenter

    image, truth = slab_scan
    true = {h["side"]: np.asarray(h["head_centre_ras_mm"]) for h in truth["hips"]}
    seg = Segmenter(MODELS, provider="cpu", threads=2)
    blind = lambda xc, g: ([] if coarse_finds == "none" else [true["right"]], np.zeros(xc.shape, np.float32))  # noqa: E731
    monkeypatch.setattr(seg, "_locate", blind)
    res = segment_both_heads(seg, image, true)
    assert res.search["heads_added"] == (2 if coarse_finds == "none" else 1)
    assert 0 < res.search["candidates_judged"] <= 16


@needs_model
def test_slab_as_dicom_study_finds_both_heads_on_their_sides(slab_scan, tmp_path) -> None:
    """The same thin gradient-echo slab written as a DICOM series (VIBE-like name): both heads, right and left."""
    import json
    import subprocess
    import sys

    from onfh_seg.pacs.demo import nifti_to_dicom_series

    image, truth = slab_scan
    nifti_to_dicom_series(image, tmp_path / "study", patient_id="P004", patient_name="Slab^Test",
                          study_uid="1.2.826.0.1.3680043.8.498.77", study_date="20261203",
                          description="fl3d_vibe_tra_20deg", series_number=26, body_part="PELVIS")
    cli = Path(sys.executable).parent / "onfh-infer"
    res = subprocess.run([str(cli), "-i", str(tmp_path / "study"), "-o", str(tmp_path / "out"), "overlay=false",
                          f"model_dir={MODELS}", "provider=cpu"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    [meas_path] = (tmp_path / "out").glob("*_measurements.json")
    meas = json.loads(meas_path.read_text())
    true = {h["side"]: np.asarray(h["head_centre_ras_mm"]) for h in truth["hips"]}
    got = {h["side"]: np.asarray(h["head_centre_ras_mm"]) for h in meas["hips"]}
    assert set(got) == {"right", "left"}, meas["qc_flags"]
    for side in got:
        assert np.linalg.norm(got[side] - true[side]) < 20.0


def test_coarse_peaks_rank_weak_head_responses_away_from_known_heads() -> None:
    """Local maxima of the coarse probability, strongest first, above the floor, not near a known head or the midline."""
    from onfh_seg.infer.search import coarse_peaks

    aff = np.diag([4.0, 4.0, 4.0, 1.0])
    aff[:3, 3] = -120.0
    prob = np.zeros((60, 60, 30), np.float32)
    for ijk, p in (((50, 30, 15), 0.3), ((10, 30, 15), 0.08), ((30, 30, 15), 0.5), ((10, 50, 5), 0.001)):
        prob[ijk] = p * 60  # a spike that stays a peak of about p after smoothing
    right = aff[:3, :3] @ np.array([50, 30, 15]) + aff[:3, 3]
    left = aff[:3, :3] @ np.array([10, 30, 15]) + aff[:3, 3]
    got = coarse_peaks(prob, aff, known=[], midline_x=0.0)
    assert [tuple(np.round(c)) for c in got] == [tuple(right), tuple(left)]  # midline peak and the 0.001 one dropped
    assert [tuple(np.round(c)) for c in coarse_peaks(prob, aff, known=[right], midline_x=0.0)] == [tuple(left)]


def test_lattice_candidates_cover_the_body_away_from_the_midline() -> None:
    """The last-resort lattice: points in the body and the field of view, 60 mm apart, none within 50 mm of the
    midline or 45 mm of a known head, nearest to the body's centre first."""
    x, aff = pelvis_like()
    fov = np.ones(x.shape, bool)
    fov[:, :, :4] = False  # part of the grid outside the image
    mid = body_midline_x(x, aff)
    pts = lattice_candidates(x, aff, fov, [], mid, max_n=200)
    assert len(pts) >= 4
    inv = np.linalg.inv(aff)
    for p in pts:
        v = np.rint(inv[:3, :3] @ p + inv[:3, 3]).astype(int)
        assert x[tuple(v)] > 0.1 and fov[tuple(v)]
        assert abs(p[0] - mid) >= 50.0
    gaps = [np.linalg.norm(a - b) for i, a in enumerate(pts) for b in pts[i + 1:]]
    assert min(gaps) >= 60.0 - 1e-6
    centre = np.mean([aff[:3, :3] @ v + aff[:3, 3] for v in np.argwhere((x > 0.1) & fov)], axis=0)
    d = [np.linalg.norm(p - centre) for p in pts]
    assert d == sorted(d)
    known = [pts[0]]
    assert all(far_from(p, known) for p in lattice_candidates(x, aff, fov, known, mid, max_n=200))
    assert lattice_candidates(np.zeros_like(x), aff, fov, [], mid) == []


@needs_model
def test_scan_finds_heads_when_nothing_points_at_them(slab_scan, monkeypatch) -> None:
    """Coarse stage blind and no sphere candidates: the lattice scan still finds both heads on their sides."""
    from onfh_seg.infer import engine
    from onfh_seg.infer.engine import Segmenter

    image, truth = slab_scan
    true = {h["side"]: np.asarray(h["head_centre_ras_mm"]) for h in truth["hips"]}
    seg = Segmenter(MODELS, provider="cpu", threads=2, tta=False)
    monkeypatch.setattr(seg, "_locate", lambda xc, g: ([], np.zeros(xc.shape, np.float32)))
    monkeypatch.setattr(engine, "sphere_candidates", lambda *a, **k: [])
    res = segment_both_heads(seg, image, true)
    assert res.search["heads_added"] == 2 and 0 < res.search["candidates_judged"] <= 16 + 48


@needs_model
def test_coarse_head_failing_the_head_checks_is_dropped_and_searched_past(slab_scan, monkeypatch) -> None:
    """A coarse 'head' the anatomy gate's head checks refuse is dropped, and the search finds the real one (the
    pair is made to look implausible: a plausible pair is left to the gate unchecked)."""
    from onfh_seg.infer import engine
    from onfh_seg.infer.engine import Segmenter

    image, truth = slab_scan
    true = {h["side"]: np.asarray(h["head_centre_ras_mm"]) for h in truth["hips"]}
    seg = Segmenter(MODELS, provider="cpu", threads=2, tta=False)
    monkeypatch.setattr(seg, "_locate", lambda xc, g: ([true["right"], true["left"]], np.zeros(xc.shape, np.float32)))
    real_check = seg._head_shaped
    calls: list[np.ndarray] = []

    def refuse_left_once(found, affine, shape):  # the coarse stage's left head fails the checks the first time
        calls.append(found[0])
        if len(calls) <= 2 and found[0][0] < 0:
            return "no"
        return real_check(found, affine, shape)

    monkeypatch.setattr(seg, "_head_shaped", refuse_left_once)
    monkeypatch.setattr(engine, "pair_plausible", lambda a, b: False)
    img = nib.load(str(image))
    res = seg.segment(np.asanyarray(img.dataobj).astype(np.float32), img.affine)
    assert res.search["candidates_judged"] > 0 and res.search["heads_added"] == 1
    _, heads = find_heads(res.labels, img.affine, min_ml=5.0)
    sides = {("right" if h.centre_ras[0] > 0 else "left") for h in heads}
    assert sides == {"right", "left"}


@needs_model
@pytest.mark.parametrize("cut_caps", ["first", "every"])
def test_a_cut_cap_is_taken_only_as_a_last_resort(slab_scan, monkeypatch, cut_caps) -> None:
    """The coarse stage finds the right head only; the left head's crops pass the head checks only as a cut cap
    (the first crop, or every one). A later crop that passes outright is kept instead of the first; with none,
    the first cut cap is taken after the search, as the right head's partner."""
    from onfh_seg.infer.engine import Segmenter

    image, truth = slab_scan
    true = {h["side"]: np.asarray(h["head_centre_ras_mm"]) for h in truth["hips"]}
    seg = Segmenter(MODELS, provider="cpu", threads=2, tta=False)
    monkeypatch.setattr(seg, "_locate", lambda xc, g: ([true["right"]], np.zeros(xc.shape, np.float32)))
    real_shaped = seg._head_shaped
    left: list[np.ndarray] = []

    def shaped(found, affine, shape):
        verdict = real_shaped(found, affine, shape)
        if found[0][0] < 0 and verdict == "yes":
            left.append(found[0])
            return "cut cap" if cut_caps == "every" or len(left) == 1 else "yes"
        return verdict

    monkeypatch.setattr(seg, "_head_shaped", shaped)
    res = segment_both_heads(seg, image, true)
    assert res.search["heads_added"] == 1
    kept = next(c for c in res.head_centres_ras if c[0] < 0)
    if cut_caps == "first":  # a second crop of the left head was judged and passed: that one is kept
        assert len(left) == 2 and np.array_equal(kept, left[1])
    else:  # every crop set aside: the first is taken in the end
        assert len(left) >= 2 and np.array_equal(kept, left[0])


def test_last_resort_takes_a_cut_cap_only_where_no_head_is_known() -> None:
    """Cut caps set aside are taken in the order found, away from the known heads and as a partner of the first;
    never more than two heads."""
    from onfh_seg.infer.search import last_resort

    right, left, left2, front = (np.array(v, float) for v in ([90, 0, 0], [-90, 5, 0], [-85, 0, 5], [-90, 80, 0]))
    assert last_resort([right], [left, left2], 0.0) == [0]  # left2 is the same head
    assert last_resort([right, left], [left2], 0.0) == []  # two heads known, or the same head
    assert last_resort([right], [front, left], 0.0) == [1]  # 80 mm further forward: no partner of the right
    assert last_resort([right], [np.array([60.0, 0.0, 0.0])], 0.0) == []  # same side of the midline
    assert last_resort([], [left, right], None) == [0, 1]


@needs_model
def test_a_false_first_head_does_not_take_the_place_of_the_real_pair(slab_scan, monkeypatch) -> None:
    """The coarse stage's only head is a false one between the real heads (made to pass the fine stage and the
    head checks): the real heads, neither of which can be its partner, are kept aside, and as they can be each
    other's partner they replace it (before, the first real head found was kept with the false one)."""
    from onfh_seg.infer.engine import Segmenter

    image, truth = slab_scan
    true = {h["side"]: np.asarray(h["head_centre_ras_mm"]) for h in truth["hips"]}
    false = 0.5 * (true["right"] + true["left"])  # about 90 mm from each: no patient's pair with either
    seg = Segmenter(MODELS, provider="cpu", threads=2, tta=False)
    monkeypatch.setattr(seg, "_locate", lambda xc, g: ([false], np.zeros(xc.shape, np.float32)))
    real_confirm, real_shaped = seg._confirm, seg._head_shaped

    def confirm(x, affine, centre, search=False):  # the false centre 'holds a head' (the right head's crop)
        if np.linalg.norm(np.asarray(centre) - false) < 1.0:
            return (false, *real_confirm(x, affine, true["right"], search)[1:])
        return real_confirm(x, affine, centre, search)

    monkeypatch.setattr(seg, "_confirm", confirm)
    monkeypatch.setattr(seg, "_head_shaped", lambda found, a, s: (
        "yes" if np.linalg.norm(found[0] - false) < 1.0 else real_shaped(found, a, s)))
    img = nib.load(str(image))
    res = seg.segment(np.asanyarray(img.dataobj).astype(np.float32), img.affine)
    assert len(res.head_centres_ras) == 2 and res.search["heads_added"] == 2
    assert all(np.linalg.norm(c - false) > 45.0 for c in res.head_centres_ras)
    got = sorted(res.head_centres_ras, key=lambda c: -c[0])  # right (+x) first
    assert np.linalg.norm(got[0] - true["right"]) < 20.0 and np.linalg.norm(got[1] - true["left"]) < 20.0


def test_first_plausible_pair_in_the_order_found() -> None:
    """The first two centres, in the order found, that can be one patient's pair; None when no two can."""
    from onfh_seg.infer.search import first_plausible_pair

    false, right, left, far = (np.array(v, float) for v in ([0, 0, 0], [90, 0, 0], [-95, 5, 0], [90, 0, 120]))
    assert first_plausible_pair([false, right, left]) == (1, 2)
    assert first_plausible_pair([right, false, left, far]) == (0, 2)
    assert first_plausible_pair([false, right, far]) is None and first_plausible_pair([right]) is None


def test_pair_plausible_is_an_intercapital_distance_at_one_height() -> None:
    """Two heads 140-240 mm apart in x and within 45 mm front-to-back and in height; not a head and a uterus."""
    right = np.array([90.0, 0.0, 0.0])
    assert pair_plausible(right, [-90.0, 10.0, -20.0])
    assert pair_plausible(right, [-50.0, 0.0, 0.0])  # 140 mm: a rotated pelvis
    assert not pair_plausible(right, [-10.0, 0.0, 60.0])  # uterus above the bladder (real CPTAC-UCEC case)
    assert not pair_plausible(right, [-160.0, 0.0, 0.0])  # 250 mm
    assert not pair_plausible(right, [-90.0, 0.0, 118.0])  # far above: abdomen
    assert not pair_plausible(right, [-90.0, 50.0, 0.0])


# the acquisition of issue 22's real scan, as written there: a 3D spoiled gradient echo near opposed phase
# (TR 3.85 ms, TE 1.42 ms, flip 20 degrees), 160 x 160 x 20 voxels of 1.625 x 1.625 x 3.6 mm (field of view 260 mm),
# an oblique axial slab tilted 24 degrees, the hips 14-22 mm off the field's centre so the heads sit at its lateral
# edges; a healthy patient
ACCEPT_LIKE = {
    "n_slices": [20, 20], "slice_mm": [3.6, 3.6], "fov_mm": [260.0, 260.0], "inplane_mm": [1.625, 1.625],
    "tilt_deg": [24.0, 24.0], "tilt_lr_fraction": 1.0, "offcentre_fraction": 1.0, "offcentre_x_mm": [-22.0, -14.0],
    "tr_ms": [3.85, 3.85], "te_ms": [1.42, 1.42], "flip_deg": [20.0, 20.0],
}


def test_style_c_protocol_ranges_can_be_pinned() -> None:
    """``style_c`` options pin the slab (issue 22's acquisition); without options the draws are the defaults'."""
    from onfh_seg.synth.style_c import DEFAULTS, style_options

    cfg = synth_config({"seed": 9401, "style": "c", "style_c": ACCEPT_LIKE})
    plan = plan_patient(0, cfg)
    opt = style_options(cfg)
    assert opt["snr"] == DEFAULTS["snr"] and opt["n_slices"] == [20, 20]
    for i in range(5):
        p = sample_protocol(np.random.default_rng([2, i]), plan.patient, plan.poses[0], opt)
        assert p.geom.shape == (160, 160, 20) and p.tilt_deg == 24.0 and p.te_ms == 1.42 and p.flip_deg == 20.0
        zooms = np.sqrt((p.geom.affine[:3, :3] ** 2).sum(0))
        assert np.allclose(zooms, [1.625, 1.625, 3.6])
        normal = p.geom.affine[:3, 2] / 3.6  # tilted about the left-right axis: no left-right component
        assert abs(normal[0]) < 1e-9 and np.isclose(np.degrees(np.arccos(abs(normal[2]))), 24.0)
        hips_mid = np.mean([h.centre for h in plan.patient.hips.values()], axis=0)
        mid_world = plan.poses[0][:3, :3] @ hips_mid + plan.poses[0][:3, 3]
        fov_centre = p.geom.affine[:3, :3] @ ((np.array(p.geom.shape) - 1) / 2) + p.geom.affine[:3, 3]
        shift = np.linalg.inv(plan.poses[0][:3, :3]) @ (fov_centre - mid_world)
        assert -22.0 <= shift[0] <= -14.0
    fs = sample_protocol(np.random.default_rng(7), plan.patient, plan.poses[0],
                         style_options({"style_c": {"fat_suppression": [0.9, 0.9]}}))
    assert fs.fat_suppression == 0.9
    fat, plain = (tissue_signal(4.0, 2.27, 15.0, np.random.default_rng(0), f) for f in (0.9, 0.0))
    assert abs(fat[TISSUES["subcutaneous_fat"]]) < 0.2 * abs(plain[TISSUES["subcutaneous_fat"]])
    assert np.isclose(abs(fat[TISSUES["muscle"]]), abs(plain[TISSUES["muscle"]]), rtol=0.1)
    a = sample_protocol(np.random.default_rng(7), plan.patient, plan.poses[0])
    b = sample_protocol(np.random.default_rng(7), plan.patient, plan.poses[0], style_options({}))
    assert np.array_equal(a.geom.affine, b.geom.affine) and a.te_ms == b.te_ms and a.geom.snr == b.geom.snr


@needs_model
@pytest.mark.parametrize("as_dicom", [False, True])
def test_issue22_acquisition_healthy_heads_found_without_lesions(tmp_path, as_dicom) -> None:
    """A rendering of issue 22's real scan (healthy): onfh-infer with its defaults finds both heads on their sides,
    as NIfTI and as a DICOM series, with no lesion over 0.5 mL, and counts the scan as done."""
    import json
    import subprocess
    import sys

    cfg = synth_config({"seed": 9401, "months": [0], "style": "c", "style_c": ACCEPT_LIKE,
                        "disease": {"healthy_fraction": 1.0}})
    rows = generate_patient_c(plan_patient(0, cfg), tmp_path, cfg, 0)
    image, truth = tmp_path / rows[0]["image"], json.loads((tmp_path / rows[0]["truth"]).read_text())
    assert all(h["lesion_volume_ml"] == 0 for h in truth["hips"])
    src = image
    if as_dicom:
        from onfh_seg.pacs.demo import nifti_to_dicom_series

        src = tmp_path / "study"
        nifti_to_dicom_series(image, src, patient_id="P001", patient_name="Slab^Accept",
                              study_uid="1.2.826.0.1.3680043.8.498.78", study_date="20261204",
                              description="t1_vibe_opp_tra_20deg", series_number=7, body_part="PELVIS")
    cli = Path(sys.executable).parent / "onfh-infer"
    res = subprocess.run([str(cli), "-i", str(src), "-o", str(tmp_path / "out"), "overlay=false",
                          f"model_dir={MODELS}", "provider=cpu"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "done 1," in res.stdout + res.stderr, res.stderr[-2000:]
    [meas_path] = (tmp_path / "out").glob("*_measurements.json")
    meas = json.loads(meas_path.read_text())
    true = {h["side"]: np.asarray(h["head_centre_ras_mm"]) for h in truth["hips"]}
    got = {h["side"]: h for h in meas["hips"]}
    assert set(got) == {"right", "left"}, meas["qc_flags"]
    for side, hip in got.items():
        assert np.linalg.norm(np.asarray(hip["head_centre_ras_mm"]) - true[side]) < 20.0
        assert hip["lesion_volume_ml"] <= 0.5, (side, hip["lesion_volume_ml"])


def test_style_c_defaults_in_config_and_code_agree() -> None:
    """configs/synth.yaml's ``style_c`` block is style_c.DEFAULTS (the yaml documents it; the code falls back to it)."""
    from onfh_seg.synth.style_c import DEFAULTS

    cfg = dict(synth_config({})["style_c"])
    assert set(cfg) == set(DEFAULTS)
    for key, value in DEFAULTS.items():
        assert np.allclose(np.asarray(cfg[key], float), np.asarray(value, float)), key


@needs_model
@pytest.mark.parametrize("variant", ["edge", "fat_suppressed"])
def test_shipped_locator_finds_thin_slab_heads_without_the_search(tmp_path, variant) -> None:
    """The shipped coarse network (0.1.0+synth.b15c02a8's, trained on thin slabs, slab edges and fat suppression)
    finds both heads of issue 22's acquisition by itself, the hips 30-42 mm off the field's centre (one head at its
    edge) or the fat signal suppressed: no search candidate is judged. The previous locator (ebf023da's) needed the
    search for one head of the first and both of the second (measured 2026-12-05)."""
    import json

    from onfh_seg.infer.engine import Segmenter

    style = dict(ACCEPT_LIKE, **({"offcentre_x_mm": [-42.0, -30.0]} if variant == "edge" else
                                 {"fat_suppression": [0.85, 0.95]}))
    cfg = synth_config({"seed": 9402 if variant == "edge" else 9406, "months": [0], "style": "c", "style_c": style,
                        "disease": {"healthy_fraction": 1.0}})
    rows = generate_patient_c(plan_patient(0, cfg), tmp_path, cfg, 0)
    truth = json.loads((tmp_path / rows[0]["truth"]).read_text())
    true = {h["side"]: np.asarray(h["head_centre_ras_mm"]) for h in truth["hips"]}
    res = segment_both_heads(Segmenter(MODELS, provider="cpu", threads=2), tmp_path / rows[0]["image"], true)
    assert res.search == {"candidates_judged": 0, "heads_added": 0}


@needs_model
@pytest.mark.parametrize("start_x, radius, confirmed, passes", [(22.0, 12.0, True, 3), (14.0, 8.0, False, 2)])
def test_a_near_miss_of_the_search_is_cut_again_around_its_head(monkeypatch, start_x, radius, confirmed,
                                                                passes) -> None:
    """A search candidate whose re-centred crop holds at least half of the head the search needs, not all of it
    (the crop still moving towards a head at its edge), is cut again around its head in view once more and
    confirmed there; one holding less than half is not (``engine.NEAR_MISS``; the fine network is a stand-in that
    labels a ball as head)."""
    from onfh_seg.infer import engine
    from onfh_seg.infer.engine import Segmenter

    seg = Segmenter(MODELS, provider="cpu", threads=1)
    spacing = float(seg.meta["fine"]["spacing_mm"])
    head_at = np.zeros(3)  # a ball (12 mm: 7.2 mL; 8 mm: 2.1 mL) seen through crops of 21 voxels (23 mm)
    calls: list[np.ndarray] = []

    def fine(x, affine, centre, mirror=False, plain=None, crop=None):
        calls.append(np.asarray(centre, float))
        f_aff = ras_grid((21, 21, 21), spacing, centre)
        lab = ball((21, 21, 21), f_aff, head_at, radius).astype(np.uint8)
        probs = np.stack([1.0 - lab, lab, 0 * lab, 0 * lab, 0 * lab]).astype(np.float32)
        return probs, lab, f_aff, lab.shape

    monkeypatch.setattr(seg, "_fine", fine)
    x = np.zeros((100, 100, 100), np.float32)  # a field of view that holds every crop
    affine = ras_grid(x.shape, 1.0, (0.0, 0.0, 0.0))
    r = seg._confirm(x, affine, np.array([start_x, 0.0, 0.0]), search=True)
    assert (r is not None) == confirmed
    assert len(calls) == passes
    if confirmed:
        assert np.linalg.norm(r[0] - head_at) < 4.0
        monkeypatch.setattr(engine, "NEAR_MISS", 1.01)  # without the second cut the same candidate is not confirmed
        calls.clear()
        assert seg._confirm(x, affine, np.array([start_x, 0.0, 0.0]), search=True) is None
        assert len(calls) == 2


def test_head_centre_is_the_mean_of_the_head_voxels_in_world_mm() -> None:
    aff = ras_grid((10, 10, 10), 2.0, (5.0, 0.0, 0.0))
    mask = np.zeros((10, 10, 10), bool)
    mask[2:4, 5, 5] = True
    assert np.allclose(head_centre(mask, aff), aff[:3, :3] @ np.array([2.5, 5, 5]) + aff[:3, 3])
    assert head_centre(np.zeros_like(mask), aff) is None
