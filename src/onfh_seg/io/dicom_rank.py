"""DICOM series selection, rules 5 and 6: one series of each set from one acquisition, then the ranking.

5. within one acquisition: the highest flip angle of a variable-flip-angle
   set (``flip_angle_sets``), the preferred Dixon component (``dixon_sets``),
   the later repeat of an identical series (``later_repeats``);
6. ranking (``rank_key``): both hips covered, not fat-suppressed, sequence
   preferences (SE, short TR, short TE), most slices, later series.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from onfh_seg.io.dicom_rules import (
    first_header,
    first_match,
    header_number,
    header_values,
    scanning_sequence,
    sequence_points,
    series_names,
)
from onfh_seg.io.dicom_series import SeriesInfo, float_or_none

DIXON_NAME = re.compile("dixon|ideal|flex", re.IGNORECASE)  # a series name that says Dixon (vendor names)


def _rounded(series: SeriesInfo, keyword: str, digits: int = 2) -> float | None:
    """A numeric attribute rounded to ``digits`` (None when absent)."""
    value = header_number(series, keyword)
    return None if value is None else round(value, digits)


def _orientation(series: SeriesInfo) -> tuple[float, ...]:
    """ImageOrientationPatient of the first header, rounded to 3 digits."""
    values = [float_or_none(v) for v in (first_header(series).get("ImageOrientationPatient") or [])]
    return tuple(round(v, 3) for v in values if v is not None)


def _grid(series: SeriesInfo) -> tuple[Any, ...]:
    """Orientation, matrix, slice count and first position: equal for images of one acquisition."""
    ds = first_header(series)
    position = tuple(round(float(v), 1) for v in (ds.get("ImagePositionPatient") or []))
    return (_orientation(series), ds.get("Rows"), ds.get("Columns"), series.n_files, position)


def _sequence_key(series: SeriesInfo) -> tuple[Any, ...]:
    """ScanningSequence, MRAcquisitionType, TR and TE: equal for one sequence."""
    return (tuple(scanning_sequence(series)), str(first_header(series).get("MRAcquisitionType", "") or ""),
            _rounded(series, "RepetitionTime"), _rounded(series, "EchoTime"))


Dropped = tuple[SeriesInfo, str, str]  # series, short reason, full reason


def _groups(series: Sequence[SeriesInfo], key: Callable[[SeriesInfo], Any]) -> list[list[SeriesInfo]]:
    """``series`` grouped by ``key`` (groups and members in input order)."""
    out: dict[Any, list[SeriesInfo]] = {}
    for s in series:
        out.setdefault(key(s), []).append(s)
    return list(out.values())


def flip_angle_sets(series: Sequence[SeriesInfo], rules: Mapping[str, Any]) -> tuple[list[SeriesInfo], list[Dropped]]:
    """Keep the highest flip angle of each variable-flip-angle set (same sequence, TR, TE, orientation, matrix)."""
    if not rules["prefer_highest_flip_angle"]:
        return list(series), []
    kept, dropped = [], []
    for group in _groups(series, lambda s: (_sequence_key(s), _orientation(s), first_header(s).get("Rows"),
                                            first_header(s).get("Columns"))):
        flips = {s.series_uid: header_number(s, "FlipAngle") for s in group}
        if len({f for f in flips.values() if f is not None}) < 2:
            kept += group
            continue
        top = max(group, key=lambda s: (flips[s.series_uid] or -1.0, s.series_number or 0))
        kept.append(top)
        for s in group:
            if s is not top:
                short = f"flip angle {flips[s.series_uid] or 0:g} < {flips[top.series_uid]:g} of #{top.series_number}"
                dropped.append((s, short, f"{short} in its variable-flip-angle set "
                                          "(dicom.rules.prefer_highest_flip_angle)"))
    return kept, dropped


def dixon_component(series: SeriesInfo, rules: Mapping[str, Any]) -> str | None:
    """The Dixon component (in-phase, water, ...) the series' ImageType or name says it is, or None."""
    image_types = header_values(first_header(series), "ImageType")
    for name, spec in rules["dixon_components"].items():
        if any(v in spec["image_types"] for v in image_types[2:]):  # values 3 and on; 1-2 are ORIGINAL/PRIMARY
            return name
    for name, spec in rules["dixon_components"].items():
        if first_match(spec["patterns"], series_names(series)):
            return name
    return None


def dixon_water(series: SeriesInfo, rules: Mapping[str, Any]) -> bool:
    """A Dixon water image (its fat suppressed by construction): a Dixon-named series (Dixon, IDEAL, Flex) whose
    ImageType or name says water (``dixon_component``; as ``dicom_select.describe`` calls it "Dixon water")."""
    return dixon_component(series, rules) == "water" and bool(DIXON_NAME.search(series_names(series)))


def dixon_sets(series: Sequence[SeriesInfo], rules: Mapping[str, Any]) -> tuple[list[SeriesInfo], list[Dropped]]:
    """Keep the preferred component (``dixon_preference``) of each Dixon set (components on one grid)."""
    preference = rules["dixon_preference"]
    if not preference:
        return list(series), []
    kept, dropped = [], []
    for group in _groups(series, _grid):
        parts = {s.series_uid: dixon_component(s, rules) for s in group}
        present = {p for p in parts.values() if p is not None}
        if len(present) < 2:
            kept += group
            continue
        best = next((c for c in preference if c in present), None)
        for s in group:
            part = parts[s.series_uid]
            if part is None or part == best or (best is None and part not in preference):
                kept.append(s)
            else:
                short = f"Dixon {part}; {best} preferred"
                dropped.append((s, short, f"{short} (dicom.rules.dixon_preference {preference})"))
    return kept, dropped


def later_repeats(series: Sequence[SeriesInfo], rules: Mapping[str, Any]) -> tuple[list[SeriesInfo], list[Dropped]]:
    """Keep the later of identical series (same name, sequence, TR, TE, flip angle, orientation, ImageType)."""
    if not rules["prefer_later_repeat"]:
        return list(series), []
    kept, dropped = [], []
    for group in _groups(series, lambda s: (series_names(s).lower(), _sequence_key(s), _rounded(s, "FlipAngle"),
                                            _orientation(s), tuple(header_values(first_header(s), "ImageType")))):
        last = max(group, key=lambda s: (s.series_number or 0, s.series_uid))
        kept.append(last)
        for s in group:
            if s is not last:
                short = f"earlier repeat of #{last.series_number}"
                dropped.append((s, short, f"{short} (dicom.rules.prefer_later_repeat)"))
    return kept, dropped


SET_RULES = (later_repeats, dixon_sets, flip_angle_sets)


# ---------------------------------------------------------------- rule 6: ranking


def left_right_width_mm(series: SeriesInfo) -> float | None:
    """Extent of the series along the patient's left-right axis (mm), from its geometry; None if unknown."""
    ds = first_header(series)
    try:
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=float)
        row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
        rows, cols = int(ds.Rows), int(ds.Columns)
        positions = [np.asarray([float(v) for v in h.ImagePositionPatient], dtype=float) for h in series.headers]
    except (AttributeError, TypeError, ValueError):
        return None
    if iop.shape != (6,) or any(p.shape != (3,) for p in positions):
        return None
    row_dir, col_dir = iop[:3], iop[3:]
    corners = [p + row_dir * col_spacing * i + col_dir * row_spacing * j
               for p in positions for i in (0, cols) for j in (0, rows)]
    xs = [c[0] for c in corners]  # LPS x: patient right -> left
    return float(max(xs) - min(xs))


def _covers_both_hips(series: SeriesInfo, rules: Mapping[str, Any]) -> bool:
    """True unless the series is known to be narrower left-right than ``both_hips_min_width_mm``."""
    width, limit = left_right_width_mm(series), rules["both_hips_min_width_mm"]
    return limit is None or width is None or width >= limit


def fat_suppressed(series: SeriesInfo, rules: Mapping[str, Any]) -> bool:
    """True when the name or ScanOptions say fat saturation (a Dixon water image: ``dixon_water``)."""
    options = header_values(first_header(series), "ScanOptions")
    if any(o in rules["fat_suppressed_scan_options"] for o in options):
        return True
    return first_match(rules["fat_suppressed_patterns"], series_names(series)) is not None


def rank_key(series: SeriesInfo, rules: Mapping[str, Any]) -> tuple[int, int, int, int, int]:
    """Higher is better: both hips, not fat-suppressed, sequence points, slices, series number."""
    return (int(_covers_both_hips(series, rules)), int(not fat_suppressed(series, rules)),
            sequence_points(series, rules)[0], series.n_files, series.series_number or 0)


def lost_because(loser: SeriesInfo, winner: SeriesInfo, rules: Mapping[str, Any]) -> str:
    """The first ranking rule by which ``loser`` ranks below ``winner``."""
    a, b = rank_key(loser, rules), rank_key(winner, rules)
    if a[0] != b[0]:
        width = left_right_width_mm(loser) or 0.0
        return f"{width:.0f} mm left-right < {rules['both_hips_min_width_mm']:g}: not both hips"
    if a[1] != b[1]:
        return "fat-suppressed"
    if a[2] != b[2]:
        return f"fewer sequence preferences ({a[2]} < {b[2]})"
    if a[3] != b[3]:
        return f"fewer slices ({a[3]} < {b[3]})"
    return "earlier series"
