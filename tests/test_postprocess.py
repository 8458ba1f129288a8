"""Hip splitting (left/right from the affine) and label clean-up on toy volumes."""

from __future__ import annotations

import numpy as np
import pytest

from onfh_seg.geometry import ras_to_voxel, voxel_to_ras, voxel_volume_ml
from onfh_seg.hips import estimate_body_centre_x, find_heads, split_hips
from onfh_seg.infer.postprocess import clean_labels
from onfh_seg.labels import ACETABULUM, BAND, HEAD, NECROTIC

FLIP_X = np.array([[-2.0, 0, 0, 150.0], [0, 2.0, 0, -40.0], [0, 0, 3.0, -45.0], [0, 0, 0, 1]])
FLIP_SHAPE = (151, 41, 31)
PERMUTED = np.array([[0, -2.0, 0, 150.0], [0, 0, 2.0, -40.0], [3.0, 0, 0, -45.0], [0, 0, 0, 1]])
PERMUTED_SHAPE = (31, 151, 41)
RIGHT, LEFT = np.array([90.0, 0.0, 0.0]), np.array([-90.0, 0.0, 0.0])


def world(shape, affine) -> np.ndarray:
    ijk = np.stack(np.indices(shape), axis=-1).astype(np.float64)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def paint_ball(labels, xyz, centre, radius, value):
    labels[np.linalg.norm(xyz - np.asarray(centre), axis=-1) < radius] = value


def two_hips(affine, shape, centres=(RIGHT, LEFT), radius=24.0):
    xyz = world(shape, affine)
    labels = np.zeros(shape, np.uint8)
    for c in centres:
        # acetabulum: a cap above the head, inside the hip region
        d = np.linalg.norm(xyz - c, axis=-1)
        labels[(d > radius + 4) & (d < radius + 14) & (xyz[..., 2] > c[2])] = ACETABULUM
        paint_ball(labels, xyz, c, radius, HEAD)
    return labels, xyz


def voxel_of(affine, point) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.rint(ras_to_voxel(affine, np.asarray(point))))


def test_coordinate_helpers_roundtrip():
    p = np.array([[1.0, 2.0, 3.0], [10.0, -4.0, 0.5]])
    assert np.allclose(voxel_to_ras(PERMUTED, ras_to_voxel(PERMUTED, p)), p)
    assert voxel_volume_ml(PERMUTED) == pytest.approx(0.012)


@pytest.mark.parametrize("affine,shape", [(FLIP_X, FLIP_SHAPE), (PERMUTED, PERMUTED_SHAPE)])
def test_split_hips_sides_from_world_x(affine, shape):
    labels, xyz = two_hips(affine, shape)
    hips = split_hips(labels, affine)
    assert list(hips) == ["right", "left"]
    assert hips["right"][voxel_of(affine, RIGHT)] and not hips["right"][voxel_of(affine, LEFT)]
    assert hips["left"][voxel_of(affine, LEFT)] and not hips["left"][voxel_of(affine, RIGHT)]
    acet = labels == ACETABULUM
    assert np.array_equal(hips["right"] & acet, acet & (xyz[..., 0] > 0))
    assert np.array_equal(hips["left"] & acet, acet & (xyz[..., 0] < 0))
    assert not (hips["right"] & hips["left"]).any()


def test_single_head_side_from_body_centre():
    labels, _ = two_hips(FLIP_X, FLIP_SHAPE, centres=(LEFT,))
    assert list(split_hips(labels, FLIP_X, body_centre_x=0.0)) == ["left"]
    assert list(split_hips(labels, FLIP_X, body_centre_x=-200.0)) == ["right"]
    # no centre and no image: unknown
    assert list(split_hips(labels, FLIP_X)) == ["unknown"]


def test_single_head_centre_estimated_from_image():
    labels, xyz = two_hips(FLIP_X, FLIP_SHAPE, centres=(RIGHT,))
    body = ((xyz[..., 0] / 140.0) ** 2 + (xyz[..., 1] / 60.0) ** 2) < 1.0
    image = np.where(body, 600.0, 5.0).astype(np.float32)
    assert estimate_body_centre_x(image, FLIP_X) == pytest.approx(0.0, abs=2.0)
    assert list(split_hips(labels, FLIP_X, image=image)) == ["right"]


@pytest.mark.parametrize("affine", [FLIP_X, PERMUTED], ids=["flipped_x", "permuted"])
def test_no_body_centre_from_a_field_cutting_the_body_on_one_side(affine):
    """A 300 mm field of view whose left side cuts the body (an ellipse of half-width 200 mm centred at x = +30 mm)
    where it is deep, while its right side meets the body's tapering edge: the centroid of what is in view (far right
    of the midline) is no body centre. Moved so the body is cut where deep on both sides, or in view whole, it is."""
    shape = FLIP_SHAPE if affine is FLIP_X else PERMUTED_SHAPE
    xyz = world(shape, affine)  # x from -150 to +150 mm

    def image(cx: float, half: float) -> np.ndarray:
        body = (((xyz[..., 0] - cx) / half) ** 2 + (xyz[..., 1] / 60.0) ** 2) < 1.0
        return np.where(body, 600.0, 5.0).astype(np.float32)

    assert estimate_body_centre_x(image(-48.0, 200.0), affine) is None  # right edge at 152 mm: tapering; left cut
    assert estimate_body_centre_x(image(0.0, 200.0), affine) == pytest.approx(0.0, abs=2.0)  # cut deep on both sides
    assert estimate_body_centre_x(image(5.0, 140.0), affine) == pytest.approx(5.0, abs=2.0)  # in view whole


def test_single_hip_small_fov_is_unknown():
    affine = np.array([[-1.0, 0, 0, 140.0], [0, 1.0, 0, -40.0], [0, 0, 3.0, -45.0], [0, 0, 0, 1]])
    shape = (101, 81, 31)  # x from 140 down to 40: only the right hip
    labels, xyz = two_hips(affine, shape, centres=(RIGHT,))
    image = np.where(np.abs(xyz[..., 1]) < 35, 600.0, 5.0).astype(np.float32)
    assert estimate_body_centre_x(image, affine) is None
    hips = split_hips(labels, affine, image=image)
    assert list(hips) == ["unknown"]
    assert hips["unknown"][voxel_of(affine, RIGHT)]


def test_small_and_duplicate_components_ignored():
    labels, xyz = two_hips(FLIP_X, FLIP_SHAPE, centres=(RIGHT,))
    paint_ball(labels, xyz, (0.0, 0.0, 0.0), 8.0, HEAD)  # ~2 mL blob near the midline
    paint_ball(labels, xyz, (90.0, 0.0, -38.0), 12.0, HEAD)  # 7 mL fragment under the right head
    _, heads = find_heads(labels, FLIP_X)
    assert len(heads) == 2  # the head and the fragment pass min_ml, the 2 mL blob does not
    hips = split_hips(labels, FLIP_X, body_centre_x=0.0)
    assert list(hips) == ["right"]
    assert hips["right"][voxel_of(FLIP_X, RIGHT)]


def test_clean_labels():
    labels, xyz = two_hips(FLIP_X, FLIP_SHAPE)
    paint_ball(labels, xyz, RIGHT + [0, 0, 18.0], 6.0, NECROTIC)  # lesion inside the right head
    labels[voxel_of(FLIP_X, RIGHT + [0, 0, -10.0])] = BAND  # one-voxel band speck inside the head
    paint_ball(labels, xyz, (0.0, 0.0, 30.0), 7.0, NECROTIC)  # necrotic blob outside any head
    paint_ball(labels, xyz, (0.0, 0.0, -30.0), 6.0, BAND)  # band blob outside any head
    labels[voxel_of(FLIP_X, (0.0, 20.0, 0.0))] = HEAD  # head speck
    labels[voxel_of(FLIP_X, (30.0, 20.0, 0.0))] = ACETABULUM  # acetabulum speck
    before = labels.copy()

    out = clean_labels(labels, FLIP_X, min_speck_ml=0.05)

    assert np.array_equal(labels, before)  # pure
    assert out.dtype == np.uint8
    assert out[voxel_of(FLIP_X, (0.0, 0.0, 30.0))] == 0
    assert out[voxel_of(FLIP_X, (0.0, 0.0, -30.0))] == 0
    assert out[voxel_of(FLIP_X, (0.0, 20.0, 0.0))] == 0
    assert out[voxel_of(FLIP_X, (30.0, 20.0, 0.0))] == 0
    assert out[voxel_of(FLIP_X, RIGHT + [0, 0, -10.0])] == HEAD  # speck inside head -> viable, no hole
    assert out[voxel_of(FLIP_X, RIGHT + [0, 0, 18.0])] == NECROTIC  # real lesion kept
    keep = (np.linalg.norm(xyz - RIGHT, axis=-1) < 40) | (np.linalg.norm(xyz - LEFT, axis=-1) < 40)
    changed = out != before
    assert changed[keep].sum() == 1  # only the in-head speck changed near the hips
    assert (out == ACETABULUM).sum() == (before == ACETABULUM).sum() - 1


def test_single_hip_side_from_acetabulum_under_any_affine():
    """A one-hip field of view: side from the socket's medial position, whatever the array order."""
    from onfh_seg.hips import split_hips

    for lateral, side in ((+1, "right"), (-1, "left")):
        for affine in (np.diag([1.0, 1.0, 1.0, 1.0]), np.diag([-1.0, 1.0, 1.0, 1.0])):
            shape = (90, 90, 90)
            idx = np.indices(shape).reshape(3, -1).T
            xyz = idx @ affine[:3, :3].T + affine[:3, 3]
            centre = (affine[:3, :3] @ np.array([45.0, 45.0, 45.0])) + affine[:3, 3]
            d = xyz - centre
            r = np.linalg.norm(d, axis=1)
            lab = np.zeros(len(r), np.uint8)
            lab[r < 24] = 1
            # cup: shell above and medial (medial = -lateral * x)
            cup = (r > 28) & (r < 36) & (d[:, 2] > -5) & (-lateral * d[:, 0] > -8)
            lab[cup] = 4
            hips = split_hips(lab.reshape(shape), affine)
            assert list(hips) == [side], (lateral, affine[0, 0])


def test_engine_keeps_one_head_component_per_crop():
    """A second bright blob (e.g. the greater trochanter) labelled head is removed in crop space."""
    from onfh_seg.infer.windows import keep_main_components

    probs = np.zeros((5, 40, 40, 40), np.float32)
    probs[0] = 1.0
    for sl, c in (((slice(5, 20),) * 3, 1), ((slice(30, 34),) * 3, 1), ((slice(8, 12),) * 3, 2), ((slice(22, 38), slice(2, 6), slice(2, 6)), 4)):
        probs[(slice(None),) + sl] = 0.0
        probs[(c,) + sl] = 1.0
    out, lab = keep_main_components(probs)
    assert lab[10, 10, 10] == 2 and lab[15, 15, 15] == 1  # main head with its lesion kept
    assert lab[32, 32, 32] == 0 and out[0, 32, 32, 32] == 1.0  # stray head blob dropped
    assert lab[30, 4, 4] == 4  # acetabulum kept
    assert np.allclose(out.sum(0), 1.0)
    assert np.array_equal(lab, out.argmax(0))  # the engine uses lab as the cleaned probabilities' argmax


def test_engine_drops_small_acetabulum_pieces_only():
    """Acetabulum pieces under 10% of the largest become background; larger ones stay."""
    from onfh_seg.infer.windows import keep_main_components

    probs = np.zeros((5, 40, 40, 40), np.float32)
    probs[0] = 1.0
    big = (slice(2, 22), slice(2, 12), slice(2, 12))  # 2000 voxels
    medium = (slice(30, 38),) * 3  # 512 voxels: 26% of the largest
    small = (slice(2, 5), slice(30, 33), slice(30, 33))  # 27 voxels: 1%
    for sl in (big, medium, small):
        probs[(slice(None),) + sl] = 0.0
        probs[(4,) + sl] = 1.0
    out, lab = keep_main_components(probs)
    assert (lab[big] == 4).all() and (lab[medium] == 4).all()
    assert (lab[small] == 0).all() and (out[0][small] == 1.0).all() and (out[4][small] == 0.0).all()
    assert np.array_equal(lab, out.argmax(0))


def test_lesion_decision_threshold_inside_head_only():
    from onfh_seg.infer.windows import lesion_decision

    #            bg    head  nec   band  acet
    p = np.array([
        [0.00, 0.30, 0.40, 0.30, 0.00],  # argmax necrotic, lesion 0.70 -> necrotic
        [0.00, 0.35, 0.40, 0.25, 0.00],  # argmax necrotic, lesion 0.65 -> viable head
        [0.00, 0.28, 0.30, 0.42, 0.00],  # lesion 0.72, band likelier -> band
        [0.00, 0.40, 0.35, 0.25, 0.00],  # argmax head, lesion 0.60 -> head
        [0.60, 0.10, 0.20, 0.10, 0.00],  # background stays
        [0.00, 0.05, 0.30, 0.05, 0.60],  # acetabulum stays
    ], np.float32).T.reshape(5, 6, 1, 1)
    assert lesion_decision(p, None).ravel().tolist() == [2, 2, 3, 1, 0, 4]  # plain argmax
    assert lesion_decision(p, 0.7).ravel().tolist() == [2, 1, 3, 1, 0, 4]
    assert lesion_decision(p, 0.5).ravel().tolist() == [2, 2, 3, 2, 0, 4]  # head vs lesion first, as region-based training


def test_clean_labels_empty_and_far_apart_pieces():
    """Empty maps pass through; pieces at opposite corners (a large bounding box) are cleaned as before."""
    from onfh_seg.infer.postprocess import clean_labels

    aff = np.eye(4)
    empty = np.zeros((20, 20, 20), np.uint8)
    assert not clean_labels(empty, aff).any()
    lab = np.zeros((40, 40, 40), np.uint8)
    lab[2:14, 2:14, 2:14] = 1          # a head (1.7 mL at 1 mm)
    lab[5:8, 5:8, 5:8] = 2             # lesion inside it
    lab[38, 38, 38] = 4                # acetabulum speck far away: dropped
    lab[36, 1, 37] = 2                 # necrotic blob without a head: dropped
    out = clean_labels(lab, aff, min_speck_ml=0.01)
    assert out[38, 38, 38] == 0 and out[36, 1, 37] == 0
    assert (out[2:14, 2:14, 2:14] == lab[2:14, 2:14, 2:14]).all()


def test_single_head_far_from_a_wide_body_centre_ignores_a_lateral_socket():
    """A real scan's fine network segmented socket lateral to the left head (C3N-01763, one head found): the
    acetabulum said "right". In a wide field of view a head 50 mm or more from the body's centre takes that side."""
    labels, xyz = two_hips(FLIP_X, FLIP_SHAPE, centres=(LEFT,))
    labels[labels == ACETABULUM] = 0
    d = np.linalg.norm(xyz - LEFT, axis=-1)
    labels[(d > 28) & (d < 40) & (xyz[..., 0] < LEFT[0] - 20)] = ACETABULUM  # a socket on the lateral side
    body = ((xyz[..., 0] / 140.0) ** 2 + (xyz[..., 1] / 60.0) ** 2) < 1.0
    image = np.where(body, 600.0, 5.0).astype(np.float32)
    assert estimate_body_centre_x(image, FLIP_X) == pytest.approx(0.0, abs=2.0)
    assert list(split_hips(labels, FLIP_X)) == ["right"]  # no image: the (wrong) socket decides, as before
    assert list(split_hips(labels, FLIP_X, image=image)) == ["left"]
    # the same head nearer than 50 mm to the centre: the socket still decides
    assert list(split_hips(labels, FLIP_X, image=image, far_mm=100.0)) == ["right"]
