"""Per-hip measurements on synthetic toy hips with non-trivial affines."""

from __future__ import annotations

import json

import numpy as np
import pytest

from onfh_seg.labels import ACETABULUM, BAND, HEAD, NECROTIC
from onfh_seg.measure import (
    CSV_COLUMNS,
    HIP_KEYS,
    arco_extent,
    measure_hip,
    measure_scan,
    measurements_row,
    sir_of_mask,
)
from onfh_seg.quality import qc_flags

# x flipped (index 0 runs from patient right to left), anisotropic spacing
FLIP_X = np.array([[-1.5, 0, 0, 150.0], [0, 1.25, 0, -40.0], [0, 0, 2.5, -50.0], [0, 0, 0, 1]])
FLIP_SHAPE = (201, 65, 41)
# array axes (z, x, y): axis 0 -> world z, axis 1 -> world -x, axis 2 -> world y
PERMUTED = np.array([[0, -1.5, 0, 150.0], [0, 0, 1.25, -40.0], [2.5, 0, 0, -50.0], [0, 0, 0, 1]])
PERMUTED_SHAPE = (41, 201, 65)

R = 24.0
INTENSITY = {0: 200.0, HEAD: 1000.0, NECROTIC: 400.0, BAND: 100.0, ACETABULUM: 800.0}
LUT = np.array([INTENSITY[k] for k in range(5)], np.float32)


def world(shape, affine) -> np.ndarray:
    """World RAS coordinates of every voxel, shape + (3,)."""
    ijk = np.stack(np.indices(shape), axis=-1).astype(np.float64)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def add_hip(labels, xyz, centre, lateral, radius=R, lesion_phi=None, lesion_r=7.0, band=2.5, acetabulum=True):
    """Paint a head sphere, an acetabular cup and a subchondral lesion (angle from vertical, + lateral)."""
    d = xyz - np.asarray(centre)
    r = np.linalg.norm(d, axis=-1)
    u, dz = lateral * d[..., 0], d[..., 2]
    head = r < radius
    if acetabulum:
        cup = (r >= radius + 4) & (r <= radius + 14) & (dz > -0.3 * radius) & (np.degrees(np.arctan2(u, dz)) < 35)
        labels[cup] = ACETABULUM
    labels[head] = HEAD
    if lesion_phi is not None:
        phi = np.radians(lesion_phi)
        p = np.asarray(centre) + np.array([lateral * radius * np.sin(phi), 0.0, radius * np.cos(phi)])
        dl = np.linalg.norm(xyz - p, axis=-1)
        labels[head & (dl < lesion_r)] = BAND
        labels[head & (dl < lesion_r - band)] = NECROTIC
    return labels


def toy(affine=FLIP_X, shape=FLIP_SHAPE, right_phi=None, left_phi=None, lesion_r=7.0, radius=R):
    xyz = world(shape, affine)
    labels = np.zeros(shape, np.uint8)
    add_hip(labels, xyz, (90.0, 5.0, 0.0), +1, radius, right_phi, lesion_r)
    add_hip(labels, xyz, (-90.0, 5.0, 0.0), -1, radius, left_phi, lesion_r)
    image = LUT[labels]
    return image, labels


@pytest.fixture(scope="module")
def flipped():
    return toy(FLIP_X, FLIP_SHAPE, right_phi=10.0, left_phi=10.0, lesion_r=10.0)


def test_hip_keys_and_volumes(flipped):
    image, labels = flipped
    hips = measure_scan(image, labels, FLIP_X)
    assert [h["side"] for h in hips] == ["right", "left"]
    vox = abs(np.linalg.det(FLIP_X[:3, :3])) / 1000.0
    for h in hips:
        assert tuple(h) == HIP_KEYS
        x = h["head_centre_ras_mm"][0]
        half = (world(FLIP_SHAPE, FLIP_X)[..., 0] > 0) == (x > 0)
        n_head = np.isin(labels[half], [1, 2, 3]).sum()
        assert h["head_volume_ml"] == pytest.approx(n_head * vox, abs=1e-3)
        assert h["head_volume_ml"] == pytest.approx(4 / 3 * np.pi * R**3 / 1000, rel=0.02)
        assert h["necrotic_core_volume_ml"] == pytest.approx((labels[half] == NECROTIC).sum() * vox, abs=1e-3)
        assert h["band_volume_ml"] == pytest.approx((labels[half] == BAND).sum() * vox, abs=1e-3)
        assert h["lesion_volume_ml"] == pytest.approx(h["necrotic_core_volume_ml"] + h["band_volume_ml"], abs=1e-3)
        assert h["percent_head_involved"] == pytest.approx(100 * h["lesion_volume_ml"] / h["head_volume_ml"], rel=1e-3)
        assert h["arco_extent"] == arco_extent(h["percent_head_involved"], True)
        assert h["lesion_centroid_ras_mm"][2] > 10.0  # superior cap
    json.dumps(hips)  # JSON-serialisable as is
    right, left = hips
    assert right["head_centre_ras_mm"] == pytest.approx([90.0, 5.0, 0.0], abs=0.5)
    assert left["head_centre_ras_mm"] == pytest.approx([-90.0, 5.0, 0.0], abs=0.5)


def test_sides_under_permuted_axes():
    image, labels = toy(PERMUTED, PERMUTED_SHAPE, right_phi=20.0, left_phi=None)
    right, left = measure_scan(image, labels, PERMUTED)
    assert right["side"] == "right" and right["head_centre_ras_mm"][0] == pytest.approx(90.0, abs=0.5)
    assert left["side"] == "left" and left["head_centre_ras_mm"][0] == pytest.approx(-90.0, abs=0.5)
    assert right["lesion_volume_ml"] > 0 and left["lesion_volume_ml"] == 0
    assert left["arco_extent"] == "none" and left["jic_type"] == "none"
    assert left["lesion_centroid_ras_mm"] is None and left["sir_necrotic"] is None


@pytest.mark.parametrize(
    "pct,has,expected",
    [(0.0, False, "none"), (0.5, True, "A"), (14.99, True, "A"), (15.0, True, "B"), (30.0, True, "B"),
     (30.01, True, "C")],
)
def test_arco_thresholds(pct, has, expected):
    assert arco_extent(pct, has) == expected


def test_arco_from_lesion_size():
    # lens of a ball of radius r centred on the head surface: 3 %, 25 %, 45 % of the head
    for lesion_r, expected in [(10.0, "A"), (22.0, "B"), (28.0, "C")]:
        image, labels = toy(right_phi=0.0, left_phi=0.0, lesion_r=lesion_r)
        assert [h["arco_extent"] for h in measure_scan(image, labels, FLIP_X)] == [expected, expected]


# Toy cup: lateral acetabular edge u_L = 38 sin 35 = 21.8 mm; medial limit u_M = -24 mm
# (cup covers the medial equator), thirds at -8.7 and +6.5 mm. Lesion lateral extent
# ~ 24 sin(phi) + 7 (capped at the head's edge).
@pytest.mark.parametrize("phi,expected", [(-55.0, "A"), (-20.0, "B"), (20.0, "C1"), (65.0, "C2")])
@pytest.mark.parametrize("affine,shape", [(FLIP_X, FLIP_SHAPE), (PERMUTED, PERMUTED_SHAPE)])
def test_jic_types_both_hips(phi, expected, affine, shape):
    image, labels = toy(affine, shape, right_phi=phi, left_phi=phi)
    hips = measure_scan(image, labels, affine)
    assert [(h["side"], h["jic_type"]) for h in hips] == [("right", expected), ("left", expected)]


def test_jic_for_single_hip_of_unknown_side():
    # small field of view over the right hip only: the side comes from anatomy (the cup is medial)
    affine = np.array([[-1.0, 0, 0, 140.0], [0, 1.25, 0, -40.0], [0, 0, 2.5, -50.0], [0, 0, 0, 1]])
    shape = (101, 65, 41)
    labels = np.zeros(shape, np.uint8)
    add_hip(labels, world(shape, affine), (90.0, 5.0, 0.0), +1, lesion_phi=20.0)
    (hip,) = measure_scan(LUT[labels], labels, affine)
    assert hip["side"] == "right" and hip["jic_type"] == "C1"
    json.dumps(hip)


def test_jic_unknown_without_acetabulum():
    xyz = world(FLIP_SHAPE, FLIP_X)
    labels = np.zeros(FLIP_SHAPE, np.uint8)
    add_hip(labels, xyz, (90.0, 5.0, 0.0), +1, lesion_phi=0.0, acetabulum=False)
    image = LUT[labels]
    (hip,) = measure_scan(image, labels, FLIP_X, body_centre_x=0.0)
    assert hip["side"] == "right" and hip["jic_type"] == "unknown"
    assert hip["sir_necrotic"] is None  # no acetabulum reference


def test_sir_constant_intensity(flipped):
    image, labels = flipped
    for h in measure_scan(image, labels, FLIP_X, reference="acetabulum"):
        assert h["sir_reference"] == "acetabulum"
        assert h["sir_necrotic"] == pytest.approx(400.0 / 800.0)
    for h in measure_scan(image, labels, FLIP_X, reference="viable_head"):
        assert h["sir_necrotic"] == pytest.approx(400.0 / 1000.0)


def test_sir_reference_is_eroded_and_per_hip(flipped):
    image, labels = flipped
    image = image.copy()
    # partial-volume rim: acetabulum surface voxels darker; other hip's acetabulum brighter
    from scipy import ndimage

    acet = labels == ACETABULUM
    image[acet & ~ndimage.binary_erosion(acet)] = 50.0
    x = world(FLIP_SHAPE, FLIP_X)[..., 0]
    image[acet & (x < 0) & ndimage.binary_erosion(acet)] = 1600.0
    right, left = measure_scan(image, labels, FLIP_X)
    assert right["sir_necrotic"] == pytest.approx(0.5)
    assert left["sir_necrotic"] == pytest.approx(0.25)


def test_sir_of_mask():
    img = np.arange(10, dtype=float)
    m = np.zeros(10, bool)
    m[2:4] = True  # mean 2.5
    ref = np.zeros(10, bool)
    ref[4:6] = True  # mean 4.5
    assert sir_of_mask(img, m, ref) == pytest.approx(2.5 / 4.5)
    assert sir_of_mask(img, np.zeros(10, bool), ref) is None
    assert sir_of_mask(img, m, np.zeros(10, bool)) is None


def test_measure_hip_restricted_to_mask(flipped):
    image, labels = flipped
    x = world(FLIP_SHAPE, FLIP_X)[..., 0]
    hip = measure_hip(image, labels, FLIP_X, x > 0, "right")
    both = measure_hip(image, labels, FLIP_X, np.ones(FLIP_SHAPE, bool), "right")
    assert both["head_volume_ml"] == pytest.approx(2 * hip["head_volume_ml"], rel=1e-3)


def noisy_mr(labels, seed=0):
    rng = np.random.default_rng(seed)
    image = LUT[labels]
    return image + rng.normal(0, 20, labels.shape).astype(np.float32)


def test_qc_ok_on_plausible_mr(flipped):
    _, labels = flipped
    image = noisy_mr(labels)
    hips = measure_scan(image, labels, FLIP_X)
    assert qc_flags(image, labels, FLIP_X, hips) == []
    assert qc_flags(image, labels, FLIP_X, hips, mean_confidence=0.95) == []
    assert qc_flags(image, labels, FLIP_X, hips, mean_confidence=0.4) == ["low_confidence"]


def test_qc_ct_like_and_empty_labels(flipped):
    _, labels = flipped
    ct = noisy_mr(labels) - 1000.0  # air-like background far below zero
    ct[labels == 0] = -1000.0
    hips = measure_scan(ct, labels, FLIP_X)
    assert "not_mr_like" in qc_flags(ct, labels, FLIP_X, hips)

    empty = np.zeros_like(labels)
    image = noisy_mr(labels)
    hips = measure_scan(image, empty, FLIP_X)
    assert hips == []
    assert qc_flags(image, empty, FLIP_X, hips) == ["no_femoral_head_found"]
    constant = np.full(FLIP_SHAPE, 7.0, np.float32)
    assert qc_flags(constant, empty, FLIP_X, []) == ["no_femoral_head_found", "not_mr_like"]


def test_qc_implausible_head_volume():
    _, labels = toy(radius=14.0)  # 11.5 mL heads
    image = noisy_mr(labels)
    hips = measure_scan(image, labels, FLIP_X)
    assert len(hips) == 2
    assert qc_flags(image, labels, FLIP_X, hips) == ["implausible_head_volume"]


def test_measurements_row(flipped):
    image, labels = flipped
    right = measure_scan(image, labels, FLIP_X)[0]
    row = measurements_row("scan01", "scan01.nii.gz", right, ["low_confidence", "not_mr_like"], "v1")
    assert list(row) == CSV_COLUMNS
    assert row["scan"] == "scan01" and row["side"] == "right" and row["model_version"] == "v1"
    centre = [row[f"head_centre_ras_mm_{a}"] for a in "xyz"]
    assert centre == right["head_centre_ras_mm"]
    assert row["qc_flags"] == "low_confidence;not_mr_like"
    empty = measurements_row("s", "s.nii.gz", None, ["no_femoral_head_found"], "v1")
    assert list(empty) == CSV_COLUMNS and empty["side"] is None and empty["lesion_centroid_ras_mm_x"] is None


def test_speck_lesion_is_measured_but_not_classed():
    """A lesion under MIN_LESION_ML keeps its volume but gets ARCO/JIC "none"."""
    from onfh_seg.measure import MIN_LESION_ML, measure_hip

    shape = (40, 40, 40)
    lab = np.zeros(shape, np.uint8)
    idx = np.indices(shape).transpose(1, 2, 3, 0) - 20
    lab[np.linalg.norm(idx, axis=-1) < 12] = 1
    lab[20:23, 20:23, 28:30] = 2  # 18 voxels of 1 mm^3 = 0.018 mL
    img = np.where(lab > 0, 900.0, 100.0).astype(np.float32)
    hip = measure_hip(img, lab, np.eye(4), np.ones(shape, bool), "right")
    assert 0 < hip["lesion_volume_ml"] < MIN_LESION_ML
    assert hip["arco_extent"] == "none" and hip["jic_type"] == "none"
    hip = measure_hip(img, lab, np.eye(4), np.ones(shape, bool), "right", min_lesion_ml=0.0)
    assert hip["arco_extent"] == "A"


def test_box_centroids_equal_whole_grid_centroids_exactly() -> None:
    """find_heads and measure_hip count and locate in boxes; the numbers equal the whole-grid ones bit for bit."""
    from scipy import ndimage

    from onfh_seg.geometry import mask_box, mask_centroid_ras
    from onfh_seg.hips import find_heads
    from onfh_seg.measure import _centroid_ras

    rng = np.random.default_rng(5)
    aff = np.array([[0.7, 0.1, 0.0, -91.3], [-0.05, 0.8, 0.2, 12.7], [0.0, -0.1, 4.4, 33.1], [0, 0, 0, 1]])
    labels = np.zeros((90, 80, 20), np.uint8)
    labels[10:40, 12:41, 3:12] = 1
    labels[20:30, 20:30, 5:9] = 2
    labels[55:85, 40:75, 6:18] = 3
    labels[(rng.random(labels.shape) < 0.02)] = 1  # specks: many small components
    cc_ref, n = ndimage.label(np.isin(labels, (1, 2, 3)))
    cc, heads = find_heads(labels, aff, min_ml=0.001)
    assert np.array_equal(cc, cc_ref) and len(heads) > 2
    for h in heads:
        assert np.array_equal(h.centre_ras, mask_centroid_ras(cc_ref == h.component, aff))
    for mask in (labels == 1, labels == 3, np.zeros(labels.shape, bool)):
        box = mask_box(mask)
        lo = np.array([s.start for s in box])
        ref = mask_centroid_ras(mask, aff)
        got = _centroid_ras(mask[box], lo, aff)
        assert (got is None and ref is None) or np.array_equal(got, ref)
