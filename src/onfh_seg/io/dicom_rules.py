"""DICOM series selection, the rules (``configs/dicom_rules.yaml``) and the header tests of rules 1-4.

``merge_rules`` validates the rules file with a run's overrides; the tests
here each say why a series is refused, excluded or not T1 (or None):

1. ``refused_anatomy``: another body part;
2. (``exclude_patterns``, applied in ``io.dicom_select``) names that are not T1;
3. ``KIND_EXCLUSIONS``: dynamic, subtraction and post-contrast series;
4. ``low_flip_reason``, ``timing_is_t1_like``: T1 weighting from TR, TE and flip angle.

Rules 5 and 6 (sets from one acquisition, ranking) are in ``io.dicom_rank``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from onfh_seg import config
from onfh_seg.io.dicom_series import DicomError, SeriesInfo, float_or_none

RULES_FILE = "dicom_rules"  # configs/dicom_rules.yaml

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


def first_header(series: SeriesInfo) -> Dataset:
    """The first header of a series (an empty one when it has none)."""
    return series.headers[0] if series.headers else Dataset()


def header_values(ds: Dataset, keyword: str) -> list[str]:
    """A (multi-valued) attribute as a list of upper-case strings."""
    value = ds.get(keyword, "")
    items = list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]
    return [str(v).strip().upper() for v in items if str(v).strip()]


def header_number(series: SeriesInfo, keyword: str) -> float | None:
    """A numeric attribute of the series' first header, or None."""
    return float_or_none(first_header(series).get(keyword))


def series_names(series: SeriesInfo) -> str:
    """SeriesDescription and ProtocolName."""
    return f"{series.description} {series.protocol_name}".strip()


def first_match(patterns: Sequence[str], text: str) -> str | None:
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
    ds = first_header(series)
    body_part = str(ds.get("BodyPartExamined", "") or "").strip()
    for pattern in rules["refused_body_parts"]:
        if body_part and re.fullmatch(pattern, body_part, flags=re.IGNORECASE):
            return f"BodyPartExamined {body_part} (refused by dicom.rules.refused_body_parts)"
    text = f"{series.description} {series.protocol_name} {ds.get('StudyDescription', '') or ''}"
    refused = first_match(rules["refused_description_patterns"], text)
    if refused is not None:
        return f"description '{' '.join(text.split())}' matches /{refused}/ (dicom.rules.refused_description_patterns)"
    return None


def _image_type_hit(series: SeriesInfo, wanted: Sequence[str]) -> str | None:
    """The first ImageType value of the series that is in ``wanted``."""
    for value in header_values(first_header(series), "ImageType"):
        if value in wanted:
            return value
    return None


def dynamic_reason(series: SeriesInfo, rules: Mapping[str, Any]) -> str | None:
    """Why the series is (a frame of) a dynamic acquisition, or None."""
    sequence = str(first_header(series).get("SequenceName", "") or "")
    text = f"{series_names(series)} {sequence}"
    hit = first_match(rules["dynamic_patterns"], text)
    if hit is not None:
        return f"'{' '.join(text.split())}' matches /{hit}/ (dicom.rules.dynamic_patterns)"
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
    trigger = header_number(series, "TriggerTime")
    if limit is not None and trigger is not None and trigger >= limit:
        return (f"TriggerTime {_short_number(trigger)} ms "
                f"(dicom.rules.dynamic_min_trigger_time_ms {_short_number(limit)})")
    return None


def contrast_reason(series: SeriesInfo, rules: Mapping[str, Any]) -> str | None:
    """Why the series was acquired after contrast injection, or None."""
    agent = str(first_header(series).get("ContrastBolusAgent", "") or "").strip()
    if agent and not re.fullmatch(rules["contrast_agent_absent"], agent, flags=re.IGNORECASE):
        return f"ContrastBolusAgent '{agent}' (dicom.rules.contrast_agent_absent)"
    image_type = _image_type_hit(series, rules["contrast_image_types"])
    if image_type:
        return f"ImageType {image_type} (dicom.rules.contrast_image_types)"
    hit = first_match(rules["contrast_patterns"], series_names(series))
    if hit is not None:
        return f"'{series_names(series)}' matches /{hit}/ (dicom.rules.contrast_patterns)"
    return None


def subtraction_reason(series: SeriesInfo, rules: Mapping[str, Any]) -> str | None:
    """Why the series is a subtraction image, or None."""
    image_type = _image_type_hit(series, rules["subtraction_image_types"])
    if image_type:
        return f"ImageType {image_type} (dicom.rules.subtraction_image_types)"
    hit = first_match(rules["subtraction_patterns"], series_names(series))
    if hit is not None:
        return f"'{series_names(series)}' matches /{hit}/ (dicom.rules.subtraction_patterns)"
    return None


# Rule 3 in order: (short label, test).
KIND_EXCLUSIONS: tuple[tuple[str, Callable[[SeriesInfo, Mapping[str, Any]], str | None]], ...] = (
    ("dynamic", dynamic_reason),
    ("subtraction", subtraction_reason),
    ("post-contrast", contrast_reason),
)


# ---------------------------------------------------------------- rule 4: T1 candidates


def scanning_sequence(series: SeriesInfo) -> list[str]:
    """ScanningSequence values of the first header (upper case), e.g. ``["SE"]`` or ``["GR", "IR"]``."""
    return header_values(first_header(series), "ScanningSequence")


def sequence_points(series: SeriesInfo, rules: Mapping[str, Any]) -> tuple[int, list[str]]:
    """Count satisfied sequence preferences (SE, short TR, short TE) and describe them."""
    points, notes = 0, []
    wanted = rules["prefer_scanning_sequence"]
    if wanted and wanted in scanning_sequence(series):
        points += 1
        notes.append(f"ScanningSequence {wanted}")
    for keyword, rule, name in (("RepetitionTime", "max_repetition_time_ms", "TR"),
                                ("EchoTime", "max_echo_time_ms", "TE")):
        value, limit = header_number(series, keyword), rules[rule]
        if value is not None and limit is not None and value < limit:
            points += 1
            notes.append(f"{name} {value:g} ms < {limit:g}")
    return points, notes


def timing_is_t1_like(series: SeriesInfo, rules: Mapping[str, Any]) -> bool:
    """Short TR and short TE (both present and below the rule limits)."""
    notes = sequence_points(series, rules)[1]
    return any(n.startswith("TR ") for n in notes) and any(n.startswith("TE ") for n in notes)


def low_flip_reason(series: SeriesInfo, rules: Mapping[str, Any]) -> str | None:
    """Why a gradient echo (not inversion-prepared) is not T1-weighted: its flip angle is too low."""
    scanning, flip = scanning_sequence(series), header_number(series, "FlipAngle")
    limit = rules["min_gre_flip_angle_deg"]
    if "GR" not in scanning or "IR" in scanning or flip is None or limit is None or flip >= limit:
        return None
    return f"gradient echo flip angle {flip:g} deg < {limit:g} (proton density; dicom.rules.min_gre_flip_angle_deg)"
