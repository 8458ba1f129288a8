"""DICOM input: which series of a study is the hip T1 series (rules from configs/infer.yaml ``dicom.rules``).

Series whose anatomy is refused (``BodyPartExamined``, descriptions) are
dropped first; among the rest, include/exclude patterns on the description,
then sequence preferences (spin echo, short TR and TE) pick one series.
``load_dicom_volume`` finds, selects and loads the T1 series of a folder.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from onfh_seg.io.dicom import DicomError, SeriesInfo, _float_or_none, find_series, load_series, series_identifiers

DEFAULT_T1_RULES: dict[str, Any] = {
    # Regexes (case-insensitive) searched in "SeriesDescription ProtocolName".
    "include_patterns": [r"t1", r"t1w", r"tse.*t1"],
    "exclude_patterns": [
        r"t2",
        r"stir",
        r"(^|[^a-z])fs([^a-z]|$)",
        r"fat.?sat",
        r"localizer|scout|survey|locali[sz]er",
        r"dixon.*(water|in)",
        r"(^|[^a-z])(post|gd|contrast|\+c)([^a-z]|$)",
    ],
    "modalities": ["MR"],
    # Anatomy (first filter): a series whose BodyPartExamined fully matches one of
    # these regexes, or whose SeriesDescription/ProtocolName/StudyDescription
    # matches a refused description pattern, is not a hip series. Empty or other
    # body parts pass (the image-based anatomy gate still checks them).
    "refused_body_parts": [
        "BRAIN", "HEAD", "HEADNECK", "NECK", "SKULL", "ORBIT", "IAC", "SINUS", "[CTL]?SPINE", "[CTL]SPINE",
        "KNEE", "ANKLE", "FOOT", "TOE", "SHOULDER", "ELBOW", "WRIST", "HAND", "FINGER", "ARM", "FOREARM",
        "CHEST", "THORAX", "BREAST", "HEART", "CARDIAC", "ABDOMEN", "LIVER", "KIDNEY",
    ],
    "refused_description_patterns": [
        r"(^|[^a-z])(brain|knee|shoulder|cardiac|breast|ankle|wrist|elbow)([^a-z]|$)",
        r"(^|[^a-z])([ctl]-?spine|spine|cervical|thoracic)([^a-z]|$)",
    ],
    # Sequence preferences: each satisfied one adds a point; ties broken by
    # most slices, then the later series (higher SeriesNumber).
    "prefer_scanning_sequence": "SE",
    "max_repetition_time_ms": 1000.0,
    "max_echo_time_ms": 30.0,
}


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
    number = _float_or_none(value)
    if number is None:
        raise DicomError(f"rule '{key}' must be a number, got {value!r}")
    return number


def merge_rules(rules: Mapping[str, Any] | None) -> dict[str, Any]:
    """Defaults overridden by ``rules``, validated; unknown keys are an error."""
    merged = dict(DEFAULT_T1_RULES)
    for key, value in dict(rules or {}).items():
        if key not in DEFAULT_T1_RULES:
            raise DicomError(f"unknown series selection rule '{key}' (known: {sorted(DEFAULT_T1_RULES)})")
        merged[key] = value
    for key in ("include_patterns", "exclude_patterns", "refused_body_parts", "refused_description_patterns"):
        merged[key] = _pattern_list(key, merged[key])
    for key in ("max_repetition_time_ms", "max_echo_time_ms"):
        merged[key] = _limit(key, merged[key])
    modalities = merged["modalities"]
    merged["modalities"] = [str(m).upper() for m in ([modalities] if isinstance(modalities, str) else modalities or [])]
    wanted = merged["prefer_scanning_sequence"]
    merged["prefer_scanning_sequence"] = str(wanted).upper() if wanted else None
    return merged


def _first_match(patterns: Sequence[str], text: str) -> str | None:
    """The first regex of ``patterns`` found in ``text`` (case-insensitive)."""
    for pattern in patterns:
        if re.search(pattern, text, flags=re.IGNORECASE):
            return pattern
    return None


NOT_HIP_ANATOMY = "not_hip_anatomy"  # prefix of the error when every series is refused for its anatomy


def refused_anatomy(series: SeriesInfo, rules: Mapping[str, Any]) -> str | None:
    """Why the series' headers say it is not a hip (BodyPartExamined, descriptions), or None."""
    ds = series.headers[0] if series.headers else Dataset()
    body_part = str(ds.get("BodyPartExamined", "") or "").strip()
    for pattern in rules["refused_body_parts"]:
        if body_part and re.fullmatch(pattern, body_part, flags=re.IGNORECASE):
            return f"BodyPartExamined {body_part} (refused by dicom.rules.refused_body_parts)"
    text = f"{series.description} {series.protocol_name} {ds.get('StudyDescription', '') or ''}"
    refused = _first_match(rules["refused_description_patterns"], text)
    if refused is not None:
        return f"description '{' '.join(text.split())}' matches /{refused}/ (dicom.rules.refused_description_patterns)"
    return None


def _sequence_points(series: SeriesInfo, rules: Mapping[str, Any]) -> tuple[int, list[str]]:
    """Count satisfied sequence preferences (SE, short TR, short TE) and describe them."""
    ds = series.headers[0]
    points, notes = 0, []
    wanted = rules["prefer_scanning_sequence"]
    scanning = ds.get("ScanningSequence", "")
    scanning_values = [str(v) for v in scanning] if isinstance(scanning, MultiValue) else [str(scanning)]
    if wanted and wanted in scanning_values:
        points += 1
        notes.append(f"ScanningSequence {wanted}")
    for keyword, rule, name in (
        ("RepetitionTime", "max_repetition_time_ms", "TR"),
        ("EchoTime", "max_echo_time_ms", "TE"),
    ):
        value, limit = _float_or_none(ds.get(keyword)), rules[rule]
        if value is not None and limit is not None and value < limit:
            points += 1
            notes.append(f"{name} {value:g} ms < {limit:g}")
    return points, notes


def _timing_is_t1_like(series: SeriesInfo, rules: Mapping[str, Any]) -> bool:
    """Short TR and short TE (both present and below the rule limits)."""
    notes = _sequence_points(series, rules)[1]
    return any(n.startswith("TR ") for n in notes) and any(n.startswith("TE ") for n in notes)


def select_t1_series(
    series: Sequence[SeriesInfo], rules: Mapping[str, Any] | None = None
) -> tuple[SeriesInfo, str]:
    """Pick the T1 series; return it and a one-line reason for the choice.

    First filter: series whose headers name another body part
    (``refused_anatomy``) are refused; when that leaves no T1 series the
    error starts with ``not_hip_anatomy:``. A series qualifies when its
    SeriesDescription/ProtocolName matches an include pattern and no exclude pattern (if none does: any non-excluded
    series with short TR and TE). Qualifying series are ranked by satisfied
    sequence preferences, then most slices, then the later series (higher
    SeriesNumber: a repeat usually replaces a failed acquisition).
    """
    rules = merge_rules(rules)
    if not series:
        raise DicomError("no DICOM image series found")
    rejected: list[tuple[SeriesInfo, str]] = []
    matched: list[tuple[SeriesInfo, str]] = []
    unnamed: list[SeriesInfo] = []
    for s in series:
        if rules["modalities"] and s.modality.upper() not in rules["modalities"]:
            rejected.append((s, f"modality {s.modality or '?'}"))
            continue
        anatomy = refused_anatomy(s, rules)
        if anatomy is not None:
            rejected.append((s, f"not a hip: {anatomy}"))
            continue
        text = f"{s.description} {s.protocol_name}"
        excluded = _first_match(rules["exclude_patterns"], text)
        if excluded is not None:
            rejected.append((s, f"excluded by /{excluded}/"))
            continue
        included = _first_match(rules["include_patterns"], text)
        if included is not None:
            matched.append((s, f"description matches /{included}/"))
        else:
            unnamed.append(s)
            rejected.append((s, "no T1 pattern in description"))
    candidates = matched or [
        (s, "no description matched; short TR and TE") for s in unnamed if _timing_is_t1_like(s, rules)
    ]
    if not candidates:
        detail = "; ".join(f"{s.label()} {why}" for s, why in rejected) or "none"
        if any(why.startswith("not a hip: ") for _, why in rejected):
            raise DicomError(f"{NOT_HIP_ANATOMY}: no hip T1 series among {len(series)} image series ({detail})")
        raise DicomError(f"no T1 series among {len(series)} image series ({detail})")

    def rank(item: tuple[SeriesInfo, str]) -> tuple[int, int, int]:
        s = item[0]
        return (_sequence_points(s, rules)[0], s.n_files, s.series_number or 0)

    ranked = sorted(candidates, key=rank, reverse=True)
    chosen, why = ranked[0]
    notes = _sequence_points(chosen, rules)[1]
    parts = [f"series {chosen.label()}: {why}"] + ([", ".join(notes)] if notes else [])
    parts.append(f"{chosen.n_files} slices")
    others = [f"{s.label()} ranked lower" for s, _ in ranked[1:]]
    others += [f"{s.label()} {reason}" for s, reason in rejected if s is not chosen]
    if others:
        parts.append("not chosen: " + "; ".join(others))
    return chosen, "; ".join(parts)


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
