"""Overlay montage: canonical reorientation and PNG output."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest

from onfh_seg.labels import ACETABULUM, BAND, HEAD, NECROTIC
from onfh_seg.report.overlay import CONTOURS, DPI, LEGEND_INCH, PANEL_INCH, overlay_png, panel, signed_mm, to_canonical

# axis 0 -> world z, axis 1 -> world -x, axis 2 -> world y (anisotropic)
PERMUTED = np.array([[0, -2.0, 0, 100.0], [0, 0, 1.5, -30.0], [3.0, 0, 0, -30.0], [0, 0, 0, 1]])
SHAPE = (21, 101, 41)
RIGHT = np.array([60.0, 0.0, 0.0])


def toy():
    ijk = np.stack(np.indices(SHAPE), axis=-1).astype(np.float64)
    xyz = ijk @ PERMUTED[:3, :3].T + PERMUTED[:3, 3]
    d = np.linalg.norm(xyz - RIGHT, axis=-1)
    labels = np.zeros(SHAPE, np.uint8)
    labels[(d > 26) & (d < 34) & (xyz[..., 2] > 0)] = ACETABULUM
    labels[d < 22] = HEAD
    labels[(d < 22) & (xyz[..., 2] > 12)] = BAND
    labels[(d < 22) & (xyz[..., 2] > 15)] = NECROTIC
    rng = np.random.default_rng(0)
    image = (np.array([200, 1000, 400, 100, 800], np.float32)[labels] + rng.normal(0, 30, SHAPE)).astype(np.float32)
    return image, labels, xyz


def test_to_canonical_keeps_world_positions():
    image, _, xyz = toy()
    can, aff = to_canonical(xyz[..., 0], PERMUTED)
    assert can.shape == (101, 41, 21)
    assert np.all(np.diag(aff[:3, :3]) > 0) and np.allclose(aff[:3, :3], np.diag(np.diag(aff[:3, :3])))
    ijk = np.stack(np.indices(can.shape), axis=-1).reshape(-1, 3)
    world_x = (ijk @ aff[:3, :3].T + aff[:3, 3])[:, 0]
    assert np.allclose(world_x, can.reshape(-1))


def test_panel_radiological_orientation():
    # canonical RAS volume whose value is world x: axial/coronal show patient right on the image left
    vol = np.broadcast_to(np.arange(5.0)[:, None, None], (5, 4, 3))
    ax = panel(vol, 2, 1)
    assert ax.shape == (4, 5) and ax[0, 0] == 4 and ax[0, -1] == 0
    sup = np.broadcast_to(np.arange(3.0)[None, None, :], (5, 4, 3))
    assert panel(sup, 1, 0)[0, 0] == 2  # coronal: superior at the top
    ant = np.broadcast_to(np.arange(4.0)[None, :, None], (5, 4, 3))
    assert panel(ant, 0, 0)[0, 0] == 3  # sagittal: anterior on the left


@pytest.mark.parametrize(
    "centres,rows",
    [({"right": RIGHT.tolist()}, 1), ([RIGHT.tolist(), [-60.0, 0.0, 0.0]], 2), ([], 1)],
)
def test_overlay_png_written(tmp_path, centres, rows):
    image, labels, _ = toy()
    out = tmp_path / "sub" / "scan_overlay.png"
    overlay_png(image, labels, PERMUTED, centres, out, "scan (research only)")
    assert out.stat().st_size > 1000
    png = mpimg.imread(out)
    assert png.shape[:2] == (round((rows * PANEL_INCH + 0.5 + LEGEND_INCH) * DPI), round(3 * PANEL_INCH * DPI))
    assert png[..., :3].std() > 0.01  # not a blank canvas
    assert not list(out.parent.glob(".*.tmp"))


def test_overlay_without_labels(tmp_path):
    image, _, _ = toy()
    out = tmp_path / "preview.png"
    overlay_png(image, None, PERMUTED, [], out, "preview")
    assert mpimg.imread(out).shape[1] == round(3 * PANEL_INCH * DPI)


def test_overlay_has_a_legend_of_every_contour_colour(tmp_path):
    """The legend strip under the panels shows a swatch of every contour colour (and nothing else is there)."""
    from matplotlib.colors import to_rgb

    image, labels, _ = toy()
    out = tmp_path / "o.png"
    overlay_png(image, labels, PERMUTED, {"right": RIGHT.tolist()}, out, "scan")
    png = mpimg.imread(out)[..., :3]
    strip = png[-round(LEGEND_INCH * DPI):]
    for name, _, colour in CONTOURS:
        rgb = np.array(to_rgb(colour))
        assert (np.abs(strip - rgb).max(axis=-1) < 0.05).sum() > 8, name


def test_slice_positions_never_negative_zero():
    assert signed_mm(-0.0) == "+0.0 mm" and signed_mm(-0.04) == "+0.0 mm" and signed_mm(-12.345) == "-12.3 mm"


def test_overlay_shows_the_patients_right_on_the_image_left(tmp_path):
    """A bright ball on the patient's right (world x > 0) lands in the left half of the axial and
    coronal panels and nowhere in their right half; the sagittal panel through it shows it too."""
    shape = (61, 41, 31)
    aff = np.array([[-2.0, 0, 0, 60.0], [0, 2.0, 0, -40.0], [0, 0, 2.0, -30.0], [0, 0, 0, 1]])  # LAS array order
    xyz = np.stack(np.indices(shape), axis=-1) @ aff[:3, :3].T + aff[:3, 3]
    image = np.full(shape, 100.0, np.float32)
    image[np.linalg.norm(xyz - [40.0, 0.0, 0.0], axis=-1) < 10] = 1000.0
    out = tmp_path / "o.png"
    overlay_png(image, None, aff, {"right": [40.0, 0.0, 0.0]}, out, "lr", half_width_mm=None)
    png = mpimg.imread(out)[..., :3].mean(-1)
    top, row_h = round(0.5 * DPI) + 10, round(PANEL_INCH * DPI) - 40
    width = png.shape[1] // 3
    for col in (0, 1):  # axial, coronal
        cell = png[top:top + row_h, col * width:(col + 1) * width]
        bright = np.argwhere(cell > 0.9)
        bright = bright[(bright[:, 0] > 15) & (bright[:, 0] < row_h - 15)]  # not the titles and scale bar text
        assert len(bright) > 20
        assert bright[:, 1].mean() < 0.45 * width, col
