"""DICOM input: which series of a study is the hip T1 series (rules file ``configs/dicom_rules.yaml``).

The rules apply in the order of the rules file, each one deciding about some
series and saying why (``Verdict``):

1. modality and anatomy (``refused_anatomy``): another body part is refused;
2. names that are not T1 (T2, STIR, PD, localizer, diffusion);
3. dynamic, post-contrast and subtraction series, from names, SequenceName,
   ImageType, TemporalPositionIdentifier, NumberOfTemporalPositions,
   TriggerTime and ContrastBolusAgent;
4. T1 candidates: a T1 name, else short TR and TE (a gradient echo also needs
   a T1 flip angle);
5. within one acquisition: the highest flip angle of a variable-flip-angle
   set, the preferred Dixon component, the later repeat of an identical series;
6. ranking: both hips covered, not fat-suppressed, sequence preferences (SE,
   short TR, short TE), most slices, later series.

``select_series`` returns a ``Selection`` (chosen series, the one-line record,
the runner-up and the console summary); ``series=N`` or a SeriesInstanceUID
forces a choice, ``series_candidates`` lists every T1 candidate (``series=all-t1``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from onfh_seg import config
from onfh_seg.io.dicom import load_series
from onfh_seg.io.dicom_series import DicomError, SeriesInfo, find_series, float_or_none, series_identifiers

RULES_FILE = "dicom_rules"  # configs/dicom_rules.yaml
NOT_HIP_ANATOMY = "not_hip_anatomy"  # prefix of the error when every series is refused for its anatomy
AUTO, ALL_T1 = "auto", "all-t1"  # values of the series= setting besides a SeriesNumber or SeriesInstanceUID

PATTERN_KEYS = (
    "refused_body_parts", "refused_description_patterns", "exclude_patterns", "dynamic_patterns",
    "contrast_patterns", "subtraction_patterns", "include_patterns", "fat_suppressed_patterns",
)
NUMBER_KEYS = (
    "dynamic_min_temporal_positions", "dynamic_min_trigger_time_ms", "max_repetition_time_ms",
    "max_echo_time_ms", "min_gre_flip_angle_deg", "both_hips_min_width_mm",
)
WORD_LIST_KEYS = (
    "modalities", "dynamic_image_types", "contrast_image_types", "subtraction_image_types",
    "fat_suppressed_scan_options",
)
FLAG_KEYS = ("prefer_highest_flip_angle", "prefer_later_repeat")


# ---------------------------------------------------------------- rules


def default_rules() -> dict[str, Any]:
    """The rules file ``configs/dicom_rules.yaml`` as a plain dict."""
    return config.defaults(RULES_FILE)


def _pattern_list(key: str, value: Any) -> list[str]:
    """A list of valid regexes from a string or a sequence of strings."""
    patterns = [value] if isinstance(value, str) else list(value or [])
    for pattern in patterns:
        try:
            re.compile(str(pattern))
        except re.error as exc:
            raise DicomError(f"invalid regex in rule '{key}': {pattern!r} ({exc})") from None
    return [str(p) for p in patterns]


def _limit(key: str, value: Any) -> float | None:
    """A numeric rule limit (None disables it)."""
    if value is None:
        return None
    number = float_or_none(value)
    if number is None or isinstance(value, bool):
        raise DicomError(f"rule '{key}' must be a number, got {value!r}")
    return number


def _words(value: Any) -> list[str]:
    """Upper-case words from a string or a sequence of strings."""
    return [str(v).upper() for v in ([value] if isinstance(value, str) else value or [])]


def _dixon_components(value: Any) -> dict[str, dict[str, list[str]]]:
    """``{component: {patterns: [...], image_types: [...]}}``, validated."""
    if not isinstance(value, Mapping):
        raise DicomError(f"rule 'dixon_components' must be a mapping, got {value!r}")
    out = {}
    for name, spec in value.items():
        spec = spec if isinstance(spec, Mapping) else {}
        out[str(name)] = {"patterns": _pattern_list("dixon_components", spec.get("patterns")),
                          "image_types": _words(spec.get("image_types"))}
    return out


def merge_rules(rules: Mapping[str, Any] | None) -> dict[str, Any]:
    """The rules file overridden by ``rules``, validated; unknown keys are an error."""
    merged = default_rules()
    for key, value in dict(rules or {}).items():
        if key not in merged:
            raise DicomError(f"unknown series selection rule '{key}' (known: {sorted(merged)})")
        merged[key] = value
    for key in PATTERN_KEYS:
        merged[key] = _pattern_list(key, merged[key])
    for key in NUMBER_KEYS:
        merged[key] = _limit(key, merged[key])
    for key in WORD_LIST_KEYS:
        merged[key] = _words(merged[key])
    for key in FLAG_KEYS:
        if not isinstance(merged[key], bool):
            raise DicomError(f"rule '{key}' must be true or false, got {merged[key]!r}")
    merged["contrast_agent_absent"] = _pattern_list("contrast_agent_absent", merged["contrast_agent_absent"] or "")[0]
    merged["dixon_components"] = _dixon_components(merged["dixon_components"])
    preference = [str(c) for c in merged["dixon_preference"] or []]
    unknown = [c for c in preference if c not in merged["dixon_components"]]
    if unknown:
        raise DicomError(f"rule 'dixon_preference' names unknown components {unknown} "
                         f"(known: {sorted(merged['dixon_components'])})")
    merged["dixon_preference"] = preference
    wanted = merged["prefer_scanning_sequence"]
    merged["prefer_scanning_sequence"] = str(wanted).upper() if wanted else None
    return merged


# ---------------------------------------------------------------- header reading


def _first(series: SeriesInfo) -> Dataset:
    return series.headers[0] if series.headers else Dataset()


def _values(ds: Dataset, keyword: str) -> list[str]:
    """A (multi-valued) attribute as a list of upper-case strings."""
    value = ds.get(keyword, "")
    items = list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]
    return [str(v).strip().upper() for v in items if str(v).strip()]


def _number(series: SeriesInfo, keyword: str) -> float | None:
    return float_or_none(_first(series).get(keyword))


def _names(series: SeriesInfo) -> str:
    """SeriesDescription and ProtocolName."""
    return f"{series.description} {series.protocol_name}".strip()


def _first_match(patterns: Sequence[str], text: str) -> str | None:
    """The first regex of ``patterns`` found in ``text`` (case-insensitive)."""
    for pattern in patterns:
        if re.search(pattern, text, flags=re.IGNORECASE):
            return pattern
    return None


def _short_number(value: float) -> str:
    return f"{value:g}"


# ---------------------------------------------------------------- rules 1-3: refusals and exclusions


def refused_anatomy(series: SeriesInfo, rules: Mapping[str, Any]) -> str | None:
    """Why the series' headers say it is not a hip (BodyPartExamined, descriptions), or None."""
    ds = _first(series)
    body_part = str(ds.get("BodyPartExamined", "") or "").strip()
    for pattern in rules["refused_body_parts"]:
        if body_part and re.fullmatch(pattern, body_part, flags=re.IGNORECASE):
            return f"BodyPartExamined {body_part} (refused by dicom.rules.refused_body_parts)"
    text = f"{series.description} {series.protocol_name} {ds.get('StudyDescription', '') or ''}"
    refused = _first_match(rules["refused_description_patterns"], text)
    if refused is not None:
        return f"description '{' '.join(text.split())}' matches /{refused}/ (dicom.rules.refused_description_patterns)"
    return None


def _image_type_hit(series: SeriesInfo, wanted: Sequence[str]) -> str | None:
    """The first ImageType value of the series that is in ``wanted``."""
    for value in _values(_first(series), "ImageType"):
        if value in wanted:
            return value
    return None


def dynamic_reason(series: SeriesInfo, rules: Mapping[str, Any]) -> str | None:
    """Why the series is (a frame of) a dynamic acquisition, or None."""
    sequence = str(_first(series).get("SequenceName", "") or "")
    hit = _first_match(rules["dynamic_patterns"], f"{_names(series)} {sequence}")
    if hit is not None:
        return f"'{' '.join(f'{_names(series)} {sequence}'.split())}' matches /{hit}/ (dicom.rules.dynamic_patterns)"
    image_type = _image_type_hit(series, rules["dynamic_image_types"])
    if image_type:
        return f"ImageType {image_type} (dicom.rules.dynamic_image_types)"
    limit = rules["dynamic_min_temporal_positions"]
    for keyword in ("NumberOfTemporalPositions", "TemporalPositionIdentifier"):
        values = [float_or_none(ds.get(keyword)) for ds in series.headers]
        top = max((v for v in values if v is not None), default=None)
        if limit is not None and top is not None and top >= limit:
            return f"{keyword} {_short_number(top)} (dicom.rules.dynamic_min_temporal_positions {_short_number(limit)})"
    limit = rules["dynamic_min_trigger_time_ms"]
    trigger = _number(series, "TriggerTime")
    if limit is not None and trigger is not None and trigger >= limit:
        return (f"TriggerTime {_short_number(trigger)} ms "
                f"(dicom.rules.dynamic_min_trigger_time_ms {_short_number(limit)})")
    return None


def contrast_reason(series: SeriesInfo, rules: Mapping[str, Any]) -> str | None:
    """Why the series was acquired after contrast injection, or None."""
    agent = str(_first(series).get("ContrastBolusAgent", "") or "").strip()
    if agent and not re.fullmatch(rules["contrast_agent_absent"], agent, flags=re.IGNORECASE):
        return f"ContrastBolusAgent '{agent}' (dicom.rules.contrast_agent_absent)"
    image_type = _image_type_hit(series, rules["contrast_image_types"])
    if image_type:
        return f"ImageType {image_type} (dicom.rules.contrast_image_types)"
    hit = _first_match(rules["contrast_patterns"], _names(series))
    if hit is not None:
        return f"'{_names(series)}' matches /{hit}/ (dicom.rules.contrast_patterns)"
    return None


def subtraction_reason(series: SeriesInfo, rules: Mapping[str, Any]) -> str | None:
    """Why the series is a subtraction image, or None."""
    image_type = _image_type_hit(series, rules["subtraction_image_types"])
    if image_type:
        return f"ImageType {image_type} (dicom.rules.subtraction_image_types)"
    hit = _first_match(rules["subtraction_patterns"], _names(series))
    if hit is not None:
        return f"'{_names(series)}' matches /{hit}/ (dicom.rules.subtraction_patterns)"
    return None


# Rule 3 in order: (short label, test).
KIND_EXCLUSIONS: tuple[tuple[str, Callable[[SeriesInfo, Mapping[str, Any]], str | None]], ...] = (
    ("dynamic", dynamic_reason),
    ("subtraction", subtraction_reason),
    ("post-contrast", contrast_reason),
)


# ---------------------------------------------------------------- rule 4: T1 candidates


def _scanning(series: SeriesInfo) -> list[str]:
    return _values(_first(series), "ScanningSequence")


def _sequence_points(series: SeriesInfo, rules: Mapping[str, Any]) -> tuple[int, list[str]]:
    """Count satisfied sequence preferences (SE, short TR, short TE) and describe them."""
    points, notes = 0, []
    wanted = rules["prefer_scanning_sequence"]
    if wanted and wanted in _scanning(series):
        points += 1
        notes.append(f"ScanningSequence {wanted}")
    for keyword, rule, name in (("RepetitionTime", "max_repetition_time_ms", "TR"),
                                ("EchoTime", "max_echo_time_ms", "TE")):
        value, limit = _number(series, keyword), rules[rule]
        if value is not None and limit is not None and value < limit:
            points += 1
            notes.append(f"{name} {value:g} ms < {limit:g}")
    return points, notes


def _timing_is_t1_like(series: SeriesInfo, rules: Mapping[str, Any]) -> bool:
    """Short TR and short TE (both present and below the rule limits)."""
    notes = _sequence_points(series, rules)[1]
    return any(n.startswith("TR ") for n in notes) and any(n.startswith("TE ") for n in notes)


def low_flip_reason(series: SeriesInfo, rules: Mapping[str, Any]) -> str | None:
    """Why a gradient echo (not inversion-prepared) is not T1-weighted: its flip angle is too low."""
    scanning, flip, limit = _scanning(series), _number(series, "FlipAngle"), rules["min_gre_flip_angle_deg"]
    if "GR" not in scanning or "IR" in scanning or flip is None or limit is None or flip >= limit:
        return None
    return f"gradient echo flip angle {flip:g} deg < {limit:g} (proton density; dicom.rules.min_gre_flip_angle_deg)"


# ---------------------------------------------------------------- rule 5: sets from one acquisition


def _rounded(series: SeriesInfo, keyword: str, digits: int = 2) -> float | None:
    value = _number(series, keyword)
    return None if value is None else round(value, digits)


def _orientation(series: SeriesInfo) -> tuple[float, ...]:
    values = [float_or_none(v) for v in (_first(series).get("ImageOrientationPatient") or [])]
    return tuple(round(v, 3) for v in values if v is not None)


def _grid(series: SeriesInfo) -> tuple[Any, ...]:
    """Orientation, matrix, slice count and first position: equal for images of one acquisition."""
    ds = _first(series)
    position = tuple(round(float(v), 1) for v in (ds.get("ImagePositionPatient") or []))
    return (_orientation(series), ds.get("Rows"), ds.get("Columns"), series.n_files, position)


def _sequence_key(series: SeriesInfo) -> tuple[Any, ...]:
    return (tuple(_scanning(series)), str(_first(series).get("MRAcquisitionType", "") or ""),
            _rounded(series, "RepetitionTime"), _rounded(series, "EchoTime"))


Dropped = tuple[SeriesInfo, str, str]  # series, short reason, full reason


def _groups(series: Sequence[SeriesInfo], key: Callable[[SeriesInfo], Any]) -> list[list[SeriesInfo]]:
    out: dict[Any, list[SeriesInfo]] = {}
    for s in series:
        out.setdefault(key(s), []).append(s)
    return list(out.values())


def flip_angle_sets(series: Sequence[SeriesInfo], rules: Mapping[str, Any]) -> tuple[list[SeriesInfo], list[Dropped]]:
    """Keep the highest flip angle of each variable-flip-angle set (same sequence, TR, TE, orientation, matrix)."""
    if not rules["prefer_highest_flip_angle"]:
        return list(series), []
    kept, dropped = [], []
    for group in _groups(series, lambda s: (_sequence_key(s), _orientation(s), _first(s).get("Rows"),
                                            _first(s).get("Columns"))):
        flips = {s.series_uid: _number(s, "FlipAngle") for s in group}
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
    image_types = _values(_first(series), "ImageType")
    for name, spec in rules["dixon_components"].items():
        if any(v in spec["image_types"] for v in image_types[2:]):  # values 3 and on; 1-2 are ORIGINAL/PRIMARY
            return name
    for name, spec in rules["dixon_components"].items():
        if _first_match(spec["patterns"], _names(series)):
            return name
    return None


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
    for group in _groups(series, lambda s: (_names(s).lower(), _sequence_key(s), _rounded(s, "FlipAngle"),
                                            _orientation(s), tuple(_values(_first(s), "ImageType")))):
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
    ds = _first(series)
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
    width, limit = left_right_width_mm(series), rules["both_hips_min_width_mm"]
    return limit is None or width is None or width >= limit


def fat_suppressed(series: SeriesInfo, rules: Mapping[str, Any]) -> bool:
    """True when the name or ScanOptions say fat saturation (or the series is a Dixon water image)."""
    options = _values(_first(series), "ScanOptions")
    if any(o in rules["fat_suppressed_scan_options"] for o in options):
        return True
    return _first_match(rules["fat_suppressed_patterns"], _names(series)) is not None


def rank_key(series: SeriesInfo, rules: Mapping[str, Any]) -> tuple[int, int, int, int, int]:
    """Higher is better: both hips, not fat-suppressed, sequence points, slices, series number."""
    return (int(_covers_both_hips(series, rules)), int(not fat_suppressed(series, rules)),
            _sequence_points(series, rules)[0], series.n_files, series.series_number or 0)


def _lost_because(loser: SeriesInfo, winner: SeriesInfo, rules: Mapping[str, Any]) -> str:
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


# ---------------------------------------------------------------- the selection


@dataclass
class Verdict:
    """What the rules said about one series: how far it got (``stage``) and why it stopped."""

    series: SeriesInfo
    stage: int  # 1 refused, 2 not T1 by name, 3 dynamic/post-contrast/subtraction, 4 not T1, 5 set, 6 ranked, 7 chosen
    short: str
    why: str


@dataclass
class Selection:
    """The chosen series, the record of why, the runner-up and every T1 candidate."""

    chosen: SeriesInfo
    reason: str
    verdicts: list[Verdict]
    candidates: list[SeriesInfo] = field(default_factory=list)
    runner_up: Verdict | None = None
    forced: str | None = None

    summary: str = ""  # console line, e.g. "series 26 'vibe_20deg' (T1 3D GRE, pre-contrast); not 25 (...)"


def _summary(chosen: SeriesInfo, runner_up: Verdict | None, verdicts: Sequence[Verdict], rules: Mapping[str, Any],
             forced: str | None) -> str:
    """The console line: chosen series, its kind, the runner-up with why it lost, the excluded T1-like series."""
    head = f"series {chosen.series_number} '{chosen.description or chosen.protocol_name}' ({describe(chosen, rules)})"
    if forced is not None:
        head += f", forced by series={forced}"
    head += "; no other T1 candidate" if runner_up is None else \
        f"; not {runner_up.series.series_number} ({runner_up.short})"
    excluded: dict[str, list[str]] = {}
    for v in sorted(verdicts, key=lambda v: v.series.series_number or 0):
        if v.stage == 3 and v.series is not chosen:
            excluded.setdefault(v.short, []).append(str(v.series.series_number))
    return head + "".join(f"; {kind}: {', '.join(numbers)}" for kind, numbers in excluded.items())


def describe(series: SeriesInfo, rules: Mapping[str, Any]) -> str:
    """Short kind of a series, e.g. ``T1 3D GRE, pre-contrast`` or ``T1 2D TSE, fat-suppressed, pre-contrast``."""
    scanning = _scanning(series)
    dims = str(_first(series).get("MRAcquisitionType", "") or "").upper()
    train = _number(series, "EchoTrainLength") or 1.0
    family = "GRE" if "GR" in scanning else ("TSE" if train > 1 else "SE") if "SE" in scanning else "MR"
    weight = "T1" if _first_match(rules["include_patterns"], _names(series)) or _timing_is_t1_like(series, rules) \
        else "not T1"
    parts = [" ".join(p for p in (weight, dims if dims in ("2D", "3D") else "", family) if p)]
    component = dixon_component(series, rules)
    if component is not None and re.search("dixon|ideal|flex", _names(series), re.IGNORECASE):
        parts.append(f"Dixon {component}")
    if fat_suppressed(series, rules):
        parts.append("fat-suppressed")
    kind = next((label for label, test in KIND_EXCLUSIONS if test(series, rules)), None)
    parts.append(kind or "pre-contrast")
    return ", ".join(parts)


def _verdicts(series: Sequence[SeriesInfo], rules: Mapping[str, Any]) -> tuple[list[Verdict], list[SeriesInfo]]:
    """Rules 1-5: a verdict for every series that stops, and the T1 candidates left for ranking."""
    verdicts: list[Verdict] = []
    named: list[tuple[SeriesInfo, str]] = []
    unnamed: list[SeriesInfo] = []
    for s in series:
        if rules["modalities"] and s.modality.upper() not in rules["modalities"]:
            verdicts.append(Verdict(s, 1, f"modality {s.modality or '?'}", f"modality {s.modality or '?'}"))
            continue
        anatomy = refused_anatomy(s, rules)
        if anatomy is not None:
            verdicts.append(Verdict(s, 1, "not a hip", f"not a hip: {anatomy}"))
            continue
        excluded = _first_match(rules["exclude_patterns"], _names(s))
        if excluded is not None:
            verdicts.append(Verdict(s, 2, f"excluded by /{excluded}/", f"excluded by /{excluded}/"))
            continue
        kind = next(((label, why) for label, test in KIND_EXCLUSIONS if (why := test(s, rules))), None)
        if kind is not None:
            verdicts.append(Verdict(s, 3, kind[0], f"{kind[0]}: {kind[1]}"))
            continue
        low_flip = low_flip_reason(s, rules)
        if low_flip is not None:
            verdicts.append(Verdict(s, 4, "flip angle too low for T1", f"not T1: {low_flip}"))
            continue
        included = _first_match(rules["include_patterns"], _names(s))
        if included is not None:
            named.append((s, included))
        else:
            unnamed.append(s)
    if named:
        candidates = [s for s, _ in named]
        verdicts += [Verdict(s, 4, "no T1 name", "no T1 pattern in description") for s in unnamed]
    else:
        candidates = [s for s in unnamed if _timing_is_t1_like(s, rules)]
        verdicts += [Verdict(s, 4, "not T1 timing", "no T1 pattern in description; TR or TE not short")
                     for s in unnamed if s not in candidates]
    return verdicts, candidates


def _why_candidate(series: SeriesInfo, rules: Mapping[str, Any]) -> str:
    included = _first_match(rules["include_patterns"], _names(series))
    return f"description matches /{included}/" if included else "no description matched; short TR and TE"


def _no_candidate_error(series: Sequence[SeriesInfo], verdicts: Sequence[Verdict]) -> DicomError:
    detail = "; ".join(f"{v.series.label()} {v.why}" for v in verdicts) or "none"
    if any(v.why.startswith("not a hip: ") for v in verdicts):
        return DicomError(f"{NOT_HIP_ANATOMY}: no hip T1 series among {len(series)} image series ({detail})")
    return DicomError(f"no T1 series among {len(series)} image series ({detail})")


def _choose(series: Sequence[SeriesInfo],
            rules: Mapping[str, Any]) -> tuple[SeriesInfo, list[Verdict], list[SeriesInfo]]:
    """Rules 1-6: the chosen series, every other series' verdict, and the T1 candidates."""
    if not series:
        raise DicomError("no DICOM image series found")
    verdicts, candidates = _verdicts(series, rules)
    if not candidates:
        raise _no_candidate_error(series, verdicts)
    left = list(candidates)
    for rule in SET_RULES:
        left, dropped = rule(left, rules)
        verdicts += [Verdict(s, 5, short, why) for s, short, why in dropped]
    ranked = sorted(left, key=lambda s: rank_key(s, rules), reverse=True)
    chosen = ranked[0]
    verdicts += [Verdict(s, 6, _lost_because(s, chosen, rules), f"ranked lower: {_lost_because(s, chosen, rules)}")
                 for s in ranked[1:]]
    return chosen, verdicts, candidates


def _runner_up(series: Sequence[SeriesInfo], chosen: SeriesInfo, verdicts: Sequence[Verdict],
               rules: Mapping[str, Any]) -> Verdict | None:
    """What the rules would choose without ``chosen``; else the first dynamic or post-contrast series."""
    by_uid = {v.series.series_uid: v for v in verdicts}
    try:
        second = _choose([s for s in series if s is not chosen], rules)[0]
        return by_uid.get(second.series_uid)
    except DicomError:
        return next((v for v in verdicts if v.stage == 3), None)


def _record(chosen: SeriesInfo, verdicts: Sequence[Verdict], rules: Mapping[str, Any], head: str) -> str:
    """The one-line selection record: the choice, its preferences, then every other series and why."""
    notes = _sequence_points(chosen, rules)[1]
    width = left_right_width_mm(chosen)
    parts = [f"series {chosen.label()}: {head}"] + ([", ".join(notes)] if notes else [])
    if width is not None:
        parts.append(f"{width:.0f} mm left-right")
    parts.append(f"{chosen.n_files} slices")
    others = [f"{v.series.label()} {v.why}" for v in sorted(verdicts, key=lambda v: (v.series.series_number or 0))
              if v.series is not chosen]
    if others:
        parts.append("not chosen: " + "; ".join(others))
    return "; ".join(parts)


def find_forced(series: Sequence[SeriesInfo], wanted: str) -> SeriesInfo:
    """The series ``series=`` names (SeriesNumber or SeriesInstanceUID); one-line error listing the study's series."""
    wanted = str(wanted).strip()
    hits = [s for s in series if s.series_uid == wanted or (wanted.isdigit() and s.series_number == int(wanted))]
    present = ", ".join(f"{s.series_number} '{s.description or s.protocol_name}'" for s in series) or "none"
    if not hits:
        raise DicomError(f"series={wanted} is not in the study; series present: {present}")
    if len(hits) > 1:
        uids = ", ".join(s.series_uid for s in hits)
        raise DicomError(f"series={wanted} matches {len(hits)} series; give a SeriesInstanceUID ({uids})")
    return hits[0]


def select_series(series: Sequence[SeriesInfo], rules: Mapping[str, Any] | None = None,
                  wanted: str = AUTO) -> Selection:
    """Choose the series to measure: by the rules (``wanted`` auto or all-t1) or the one ``wanted`` names."""
    merged = merge_rules(rules)
    wanted = str(wanted or AUTO).strip()
    if wanted not in (AUTO, ALL_T1):
        forced = find_forced(series, wanted)
        try:
            ruled, verdicts, candidates = _choose(series, merged)
            note = f"the rules choose #{ruled.series_number}"
        except DicomError as exc:
            ruled, verdicts, candidates, note = None, [], [], f"the rules choose none: {exc}"
        verdicts = [v for v in verdicts if v.series is not forced]
        if ruled is not None and ruled is not forced:
            verdicts.append(Verdict(ruled, 7, "the rules' choice", "the rules' choice"))
        reason = _record(forced, verdicts, merged, f"forced by series={wanted} ({note})")
        runner = next((v for v in verdicts if v.stage == 7), None)
        return Selection(forced, reason, verdicts, candidates, runner, wanted,
                         _summary(forced, runner, verdicts, merged, wanted))
    chosen, verdicts, candidates = _choose(series, merged)
    reason = _record(chosen, verdicts, merged, _why_candidate(chosen, merged))
    runner = _runner_up(series, chosen, verdicts, merged)
    return Selection(chosen, reason, verdicts, candidates, runner, None,
                     _summary(chosen, runner, verdicts, merged, None))


def select_t1_series(
    series: Sequence[SeriesInfo], rules: Mapping[str, Any] | None = None
) -> tuple[SeriesInfo, str]:
    """Pick the T1 series by the rules; return it and the one-line selection record.

    When every series is refused for its anatomy, the error starts with ``not_hip_anatomy:``.
    """
    selection = select_series(series, rules)
    return selection.chosen, selection.reason


def series_candidates(series: Sequence[SeriesInfo], rules: Mapping[str, Any] | None = None) -> list[SeriesInfo]:
    """Every T1 candidate (rules 1-4 passed; for ``series=all-t1``), in series order."""
    return list(select_series(series, rules).candidates)


def load_dicom_volume(
    folder: str | Path, rules: Mapping[str, Any] | None = None
) -> tuple[nib.Nifti1Image, dict[str, Any]]:
    """Find, select and load the T1 series of a DICOM study folder.

    Returns the image and an info dict: series uid/number/description, the
    selection reason, the number of files and the patient/study identifiers.
    """
    series = find_series(folder)
    if not series:
        raise DicomError(f"no DICOM image series found in {folder}")
    chosen, reason = select_t1_series(series, rules)
    image = load_series(chosen)
    info: dict[str, Any] = {
        "series_instance_uid": chosen.series_uid,
        "series_number": chosen.series_number,
        "series_description": chosen.description,
        "selection_reason": reason,
        "n_files": chosen.n_files,
        "n_series_found": len(series),
    }
    info.update(series_identifiers(chosen))
    return image, info
