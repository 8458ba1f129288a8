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

The rules file and the tests of rules 1-4 are in ``io.dicom_rules``, the set
rules and the ranking (5, 6) in ``io.dicom_rank``; this module applies them in
order. ``select_series`` returns a ``Selection`` (chosen series, the one-line record,
the runner-up and the console summary); ``series=N`` or a SeriesInstanceUID
forces a choice, ``series_candidates`` lists every T1 candidate (``series=all-t1``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib

from onfh_seg.io.dicom import load_series
from onfh_seg.io.dicom_rank import (
    DIXON_NAME,
    SET_RULES,
    dixon_component,
    fat_suppressed,
    left_right_width_mm,
    lost_because,
    rank_key,
)
from onfh_seg.io.dicom_rules import (
    KIND_EXCLUSIONS,
    first_header,
    first_match,
    header_number,
    low_flip_reason,
    merge_rules,
    refused_anatomy,
    scanning_sequence,
    sequence_points,
    series_names,
    timing_is_t1_like,
)
from onfh_seg.io.dicom_series import DicomError, SeriesInfo, find_series, series_identifiers

NOT_HIP_ANATOMY = "not_hip_anatomy"  # prefix of the error when every series is refused for its anatomy
AUTO, ALL_T1 = "auto", "all-t1"  # values of the series= setting besides a SeriesNumber or SeriesInstanceUID


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
    scanning = scanning_sequence(series)
    dims = str(first_header(series).get("MRAcquisitionType", "") or "").upper()
    train = header_number(series, "EchoTrainLength") or 1.0
    family = "GRE" if "GR" in scanning else ("TSE" if train > 1 else "SE") if "SE" in scanning else "MR"
    weight = "T1" if first_match(rules["include_patterns"], series_names(series)) or timing_is_t1_like(series, rules) \
        else "not T1"
    parts = [" ".join(p for p in (weight, dims if dims in ("2D", "3D") else "", family) if p)]
    component = dixon_component(series, rules)
    if component is not None and DIXON_NAME.search(series_names(series)):
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
        excluded = first_match(rules["exclude_patterns"], series_names(s))
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
        included = first_match(rules["include_patterns"], series_names(s))
        if included is not None:
            named.append((s, included))
        else:
            unnamed.append(s)
    if named:
        candidates = [s for s, _ in named]
        verdicts += [Verdict(s, 4, "no T1 name", "no T1 pattern in description") for s in unnamed]
    else:
        candidates = [s for s in unnamed if timing_is_t1_like(s, rules)]
        verdicts += [Verdict(s, 4, "not T1 timing", "no T1 pattern in description; TR or TE not short")
                     for s in unnamed if s not in candidates]
    return verdicts, candidates


def _why_candidate(series: SeriesInfo, rules: Mapping[str, Any]) -> str:
    included = first_match(rules["include_patterns"], series_names(series))
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
    verdicts += [Verdict(s, 6, lost_because(s, chosen, rules), f"ranked lower: {lost_because(s, chosen, rules)}")
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
    notes = sequence_points(chosen, rules)[1]
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
