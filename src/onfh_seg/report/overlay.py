"""PNG montage of label contours over the grey image (Pillow; no matplotlib, no torch), plus the
matplotlib drawing helpers the report's views share with it (letters, scale bar, contours, legend).

Arrays are first reoriented to the closest RAS+ canonical grid (the array
equivalent of ``nibabel.as_closest_canonical``). Panels follow the radiological
convention: axial and coronal show the patient's right on the image left;
axial has anterior up, coronal and sagittal superior up, sagittal anterior on
the image left. Pixel aspect follows the voxel spacing.

``overlay_png`` is drawn with Pillow on a pixel grid (nearest-neighbour panels,
contours as the one-pixel boundary of each label layer): it runs for every scan
of a batch, and matplotlib cost about 0.45 s per scan to import and draw.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path

import numpy as np
from nibabel import orientations
from PIL import Image, ImageDraw, ImageFont

from onfh_seg.arrays import every_nth
from onfh_seg.io.files import atomic_write_bytes
from onfh_seg.labels import ACETABULUM, BAND, HEAD, HEAD_LABELS, LESION_LABELS, NECROTIC

LABEL_COLOURS: dict[int, str] = {HEAD: "yellow", NECROTIC: "red", BAND: "cyan", ACETABULUM: "lime"}
# Contours are drawn around nested unions of labels (so no line crosses the head where viable bone
# meets the lesion, and the band's inner edge does not hide the necrotic core): (legend text, labels, colour)
CONTOURS: tuple[tuple[str, tuple[int, ...], str], ...] = (
    ("femoral head outline", tuple(HEAD_LABELS), "yellow"),
    ("lesion outer border (interface band)", tuple(LESION_LABELS), "cyan"),
    ("necrotic core", (NECROTIC,), "red"),
    ("acetabulum", (ACETABULUM,), "lime"),
)
CROSS_LEGEND = "reference point (same anatomical point at every visit)"
PANEL_INCH = 3.2
LEGEND_INCH = 0.35
DPI = 100
# (name, fixed canonical axis, (left, right, top, bottom) orientation letters)
VIEWS = (
    ("axial", 2, ("R", "L", "A", "P")),
    ("coronal", 1, ("R", "L", "S", "I")),
    ("sagittal", 0, ("A", "P", "S", "I")),
)


def to_canonical(arr: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder/flip array axes to the closest RAS+ grid; returns (array, new affine)."""
    ornt = orientations.io_orientation(affine)
    transform = orientations.ornt_transform(ornt, orientations.axcodes2ornt(("R", "A", "S")))
    out = orientations.apply_orientation(arr, transform)
    new_affine = np.asarray(affine, np.float64) @ orientations.inv_ornt_aff(transform, arr.shape)
    return out, new_affine


def window(image: np.ndarray, lo_pct: float = 1.0, hi_pct: float = 99.5, max_voxels: int = 1_000_000) -> tuple[float, float]:
    """Display window from percentiles of the finite voxels (a regular subsample of about
    ``max_voxels`` of them for large volumes: a display window does not need every voxel)."""
    image = np.asarray(image)
    vals = np.asarray(every_nth(image, max(1, image.size // max_voxels)), np.float64)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(vals, [lo_pct, hi_pct])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def panel(volume: np.ndarray, fixed_axis: int, index: int) -> np.ndarray:
    """2-D display array of a canonical (RAS) volume at ``index`` along ``fixed_axis``.

    The remaining axes (a, b) become columns and rows, both reversed: rows run
    from high b (A or S) at the top, columns from high a (R, or A) at the left.
    """
    sl = volume[(slice(None),) * fixed_axis + (int(index),)]  # a view (np.take copied whole strided volumes)
    return sl.T[::-1, ::-1]


def _centre_items(centres_ras) -> list[tuple[str, np.ndarray | None]]:
    if isinstance(centres_ras, Mapping):
        items = [(str(k), np.asarray(v, np.float64)) for k, v in centres_ras.items()]
    else:
        items = [(f"centre {n + 1}", np.asarray(v, np.float64)) for n, v in enumerate(centres_ras)]
    return items or [("mid planes", None)]


RGB: dict[str, tuple[int, int, int]] = {
    "yellow": (255, 255, 0), "red": (255, 0, 0), "cyan": (0, 255, 255), "lime": (0, 255, 0),
    "orange": (255, 165, 0), "white": (255, 255, 255),
}


@lru_cache(maxsize=8)
def _font(points: float):
    """DejaVu Sans (matplotlib's bundled font) at ``points`` pt for ``DPI``; Pillow's own font without it."""
    px = max(6, round(points * DPI / 72))
    spec = find_spec("matplotlib")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        ttf = Path(folder) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if ttf.is_file():
            return ImageFont.truetype(str(ttf), px)
    return ImageFont.load_default(px)


def _cell_boxes(n_rows: int, width: int, height: int, bottom: float, top: float) -> list[list[tuple[int, int, int, int]]]:
    """Pixel boxes (x0, y0, x1, y1) of an n_rows x 3 grid of panels, as matplotlib's
    ``subplots_adjust(left=0.01, right=0.99, wspace=0.03, hspace=0.12)`` places them."""
    left, right, wspace, hspace = 0.01, 0.99, 0.03, 0.12
    cw = (right - left) * width / (3 + 2 * wspace)
    ch = (top - bottom) * height / (n_rows + (n_rows - 1) * hspace)
    boxes = []
    for r in range(n_rows):
        y0 = (1 - top) * height + r * ch * (1 + hspace)
        boxes.append([(round(left * width + c * cw * (1 + wspace)), round(y0),
                       round(left * width + c * cw * (1 + wspace) + cw), round(y0 + ch)) for c in range(3)])
    return boxes


def _fit(cell: tuple[int, int, int, int], n_rows: int, n_cols: int, mm_col: float, mm_row: float) -> tuple[int, int, int, int]:
    """Pixel box of an n_rows x n_cols display array with pixels ``mm_col`` wide and ``mm_row`` tall,
    as large as fits in ``cell`` and centred in it."""
    x0, y0, x1, y1 = cell
    scale = min((x1 - x0) / (n_cols * mm_col), (y1 - y0) / (n_rows * mm_row))
    w, h = max(1, round(n_cols * mm_col * scale)), max(1, round(n_rows * mm_row * scale))
    ox, oy = x0 + (x1 - x0 - w) // 2, y0 + (y1 - y0 - h) // 2
    return ox, oy, ox + w, oy + h


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (its one-pixel inner boundary)."""
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def _panel_rgb(grey: np.ndarray, lab: np.ndarray | None, size: tuple[int, int], vmin: float, vmax: float) -> np.ndarray:
    """RGB pixels (h, w, 3) of one display panel: grey window, nearest-neighbour scaling, label outlines.
    NaN (outside the scan) is black."""
    w, h = size
    rows = np.minimum((np.arange(h) + 0.5) * grey.shape[0] / h, grey.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(w) + 0.5) * grey.shape[1] / w, grey.shape[1] - 1).astype(int)
    g = grey[np.ix_(rows, cols)]
    scaled = np.clip((np.nan_to_num(g, nan=vmin) - vmin) / (vmax - vmin), 0.0, 1.0) * 255.0
    grey8 = np.where(np.isnan(g), 0.0, scaled).astype(np.uint8)
    rgb = np.repeat(grey8[..., None], 3, axis=2)
    if lab is not None:
        up = lab[np.ix_(rows, cols)]
        for name, values, colour in CONTOURS:
            edge = _outline(np.isin(up, values))
            if name == "necrotic core":  # drawn a little thicker, as in the report's views
                edge[:, 1:] |= edge[:, :-1]
            rgb[edge] = RGB[colour]
    return rgb


def _display(img2d: np.ndarray, centre_rc: tuple[int, int] | None, half: tuple[int | None, int | None]) -> np.ndarray:
    """The panel's display window: +-``half`` (rows, cols) around ``centre_rc``, NaN where the grid ends."""
    if centre_rc is None or half[0] is None or half[1] is None:
        return img2d
    hr, hc = half
    out = np.full((2 * hr + 1, 2 * hc + 1), np.nan, np.float32)
    r0, c0 = centre_rc[0] - hr, centre_rc[1] - hc
    rs, cs = slice(max(0, r0), min(img2d.shape[0], r0 + 2 * hr + 1)), slice(max(0, c0), min(img2d.shape[1], c0 + 2 * hc + 1))
    out[rs.start - r0:rs.stop - r0, cs.start - c0:cs.stop - c0] = img2d[rs, cs]
    return out


def overlay_png(
    image: np.ndarray,
    labels: np.ndarray | None,
    affine: np.ndarray,
    centres_ras: Sequence[Sequence[float]] | Mapping[str, Sequence[float]],
    out_path: str | Path,
    title: str,
    half_width_mm: float | None = 80.0,
) -> None:
    """Write a PNG montage: one row per centre (axial, coronal, sagittal through it).

    ``centres_ras`` are RAS+ mm points (a mapping gives row names, e.g.
    {"right": [...], "left": [...]}); if empty, one row of the three mid planes
    of the volume (uncropped). With a centre, panels show +-``half_width_mm``
    around it (None: whole plane). Contours (``CONTOURS``): head outline
    yellow, lesion border cyan, necrotic core red, acetabulum green, named in a
    legend under the panels; each panel title gives the slice position (world
    RAS mm), orientation letters sit at the panel edges and a scale bar at the
    bottom right. Grey window: 1-99.5 percentiles. Written atomically.
    """
    img, can_aff = to_canonical(np.asarray(image, np.float32), affine)
    lab = None if labels is None else to_canonical(np.asarray(labels), affine)[0]
    spacing = np.linalg.norm(can_aff[:3, :3], axis=0)
    vmin, vmax = window(img, max_voxels=250_000)
    inv = np.linalg.inv(can_aff)
    items = _centre_items(centres_ras)

    legend = lab is not None
    width = round(3 * PANEL_INCH * DPI)
    height = round((len(items) * PANEL_INCH + 0.5 + (LEGEND_INCH if legend else 0.0)) * DPI)
    top = 1.0 - 0.5 * DPI / height - 0.02
    bottom = ((LEGEND_INCH * DPI / height) if legend else 0.0) + 0.01
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((width / 2, 0.02 * height + 2), title, fill=RGB["white"], font=_font(10), anchor="mt")
    cells = _cell_boxes(len(items), width, height, bottom, top)
    for row, (name, centre) in enumerate(items):
        if centre is None:
            ijk = np.array(img.shape) // 2
        else:
            ijk = np.clip(np.rint(inv[:3, :3] @ centre + inv[:3, 3]).astype(int), 0, np.array(img.shape) - 1)
        for col, (view, axis, letters) in enumerate(VIEWS):
            a, b = [d for d in range(3) if d != axis]
            grey = panel(img, axis, ijk[axis])
            lab2d = None if lab is None else panel(lab, axis, ijk[axis])
            # panel() reverses both axes: the centre sits at row n_b - 1 - j_b, column n_a - 1 - j_a
            centre_rc = None if centre is None else (img.shape[b] - 1 - ijk[b], img.shape[a] - 1 - ijk[a])
            half = (None, None) if centre is None or half_width_mm is None else (
                int(np.ceil(half_width_mm / spacing[b])), int(np.ceil(half_width_mm / spacing[a])))
            grey = _display(grey, centre_rc, half)
            if lab2d is not None:
                lab2d = _display(lab2d.astype(np.float32), centre_rc, half)
                lab2d = np.where(np.isnan(lab2d), 0, lab2d).astype(np.uint8)
            x0, y0, x1, y1 = _fit(cells[row][col], grey.shape[0], grey.shape[1], spacing[a], spacing[b])
            canvas.paste(Image.fromarray(_panel_rgb(grey, lab2d, (x1 - x0, y1 - y0), vmin, vmax)), (x0, y0))
            position = float((can_aff @ np.append(ijk, 1.0))[axis])
            draw.text(((x0 + x1) / 2, y0 - 3), f"{name}: {view}, {AXIS_NAMES[axis]} = {signed_mm(position)}",
                      fill=RGB["white"], font=_font(8), anchor="mb")
            left, right, up, down = letters
            for text, fx, fy in ((left, 0.04, 0.5), (right, 0.96, 0.5), (up, 0.5, 0.05), (down, 0.5, 0.95)):
                draw.text((x0 + fx * (x1 - x0), y0 + fy * (y1 - y0)), text, fill=RGB["orange"], font=_font(8), anchor="mm")
            _pixel_scale_bar(draw, (x0, y0, x1, y1), (x1 - x0) / (grey.shape[1] * spacing[a]))
    if legend:
        _pixel_legend(draw, width, height - round(LEGEND_INCH * DPI / 2))
    buf = io.BytesIO()
    # zlib level 1: the same pixels as level 6 in about half the time (24 -> 14 ms), 5% larger (issue 28)
    canvas.save(buf, format="PNG", compress_level=1)
    atomic_write_bytes(out_path, buf.getvalue())


def _pixel_scale_bar(draw, box: tuple[int, int, int, int], px_per_mm: float) -> None:
    """A white 5, 10, 20 or 50 mm bar (about a fifth of the panel width) at the panel's bottom right."""
    x0, y0, x1, y1 = box
    width_mm = (x1 - x0) / px_per_mm
    length = max([v for v in (5.0, 10.0, 20.0, 50.0) if v <= width_mm / 4] or [5.0])
    right = x1 - 0.06 * (x1 - x0)
    y = y1 - 0.06 * (y1 - y0)
    draw.rectangle([right - length * px_per_mm, y - 1, right, y + 1], fill=RGB["white"])
    draw.text((right - length * px_per_mm / 2, y - 5), f"{length:g} mm", fill=RGB["white"], font=_font(7), anchor="mb")


def _pixel_legend(draw, width: int, y: int) -> None:
    """One row of line swatches and names of every ``CONTOURS`` layer, centred at height ``y``."""
    font = _font(7)
    swatch, gap, space = 20, 6, 18
    widths = [swatch + gap + font.getlength(name) for name, _, _ in CONTOURS]
    x = (width - (sum(widths) + space * (len(widths) - 1))) / 2
    for (name, _, colour), w in zip(CONTOURS, widths):
        draw.rectangle([x, y - 1, x + swatch, y + 1], fill=RGB[colour])
        draw.text((x + swatch + gap, y), name, fill=RGB["white"], font=font, anchor="lm")
        x += w + space


def _letters(ax, letters: tuple[str, str, str, str], fontsize: float = 8) -> None:
    """Orientation letters at the left, right, top and bottom panel edges."""
    style = {"color": "orange", "fontsize": fontsize, "transform": ax.transAxes, "ha": "center", "va": "center",
             "fontweight": "bold" if fontsize > 8 else "normal"}
    left, right, top, bottom = letters
    ax.text(0.04, 0.5, left, **style)
    ax.text(0.96, 0.5, right, **style)
    ax.text(0.5, 0.95, top, **style)
    ax.text(0.5, 0.05, bottom, **style)


AXIS_NAMES = ("x", "y", "z")  # RAS+ world axis of the fixed canonical axis (sagittal, coronal, axial)


def signed_mm(v: float, decimals: int = 1) -> str:
    """A world coordinate in mm with its sign ("+12.0 mm"); never "-0.0"."""
    r = round(float(v), decimals)
    return f"{0.0 if r == 0 else r:+.{decimals}f} mm"


def label_fields(lab2d: np.ndarray) -> dict[str, np.ndarray]:
    """Float masks (0/1) of every ``CONTOURS`` layer of a 2-D label panel."""
    return {name: np.isin(lab2d, values).astype(np.float32) for name, values, _ in CONTOURS}


def draw_contours(ax, lab2d: np.ndarray | None, fields: Mapping[str, np.ndarray] | None = None,
                  linewidth: float = 1.5) -> None:
    """Contours of the ``CONTOURS`` layers at 0.5; ``fields`` (smooth 0-1 fields by layer name, e.g.
    interpolated masks on the display grid) replace the masks of ``lab2d`` where given."""
    fields = dict(fields or {})
    if lab2d is not None:
        fields = {**label_fields(lab2d), **fields}
    for name, _, colour in CONTOURS:
        f = fields.get(name)
        if f is None or f.max() < 0.5 or f.min() >= 0.5:
            continue
        width = linewidth * (1.3 if name == "necrotic core" else 1.0)
        ax.contour(f, levels=[0.5], colors=colour, linewidths=width)


def scale_bar(ax, mm_per_col: float, mm_per_row: float, colour: str = "white", fontsize: float = 7) -> None:
    """A horizontal scale bar (5, 10, 20 or 50 mm, about a fifth of the panel width) at the bottom right."""
    x0, x1 = sorted(ax.get_xlim())
    y_lo, y_hi = sorted(ax.get_ylim())  # rows grow downwards: y_hi is the bottom
    width_mm = (x1 - x0) * mm_per_col
    length = max([v for v in (5.0, 10.0, 20.0, 50.0) if v <= width_mm / 4] or [5.0])
    px = length / mm_per_col
    right = x1 - 0.06 * (x1 - x0)
    y = y_hi - 0.06 * (y_hi - y_lo)
    ax.plot([right - px, right], [y, y], color=colour, linewidth=2.5, solid_capstyle="butt")
    ax.text(right - px / 2, y - 0.025 * (y_hi - y_lo), f"{length:g} mm", color=colour, fontsize=fontsize,
            ha="center", va="bottom")
