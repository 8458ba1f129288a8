"""What the follow-up report says in words: numbers, score names, versions and a summary per hip.

Pure functions over the patient record (``track.patient.compute_patient``);
they return plain text (HTML escaping is the caller's job). Numbers never
print as "-0.0": a value that rounds to zero prints unsigned.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from onfh_seg.measure import MIN_LESION_ML

DASH = "\u2013"
RC_FACTOR = 2.77  # repeatability coefficient = 2.77 x within-subject SD (QIBA)
HEIGHT_NOISE_PER_SLICE = 1.0 / 3.0  # head height loss noise: about a third of the slice spacing

# score -> (readable name, unit, which direction is better)
SCORES: dict[str, tuple[str, str, str]] = {
    "functional_rating_index": ("Functional Rating Index", "points, 0-40", "lower"),
    "vas_walking": ("Pain when walking (VAS)", "0-10", "lower"),
    "harris_hip_score": ("Harris Hip Score", "points, 0-100", "higher"),
    "rom_flexion_deg": ("Hip flexion, range of motion", "degrees", "higher"),
    "rom_flexion_vas": ("Pain on flexion (VAS)", "0-10", "lower"),
    "rom_abduction_deg": ("Hip abduction, range of motion", "degrees", "higher"),
    "rom_abduction_vas": ("Pain on abduction (VAS)", "0-10", "lower"),
    "rom_adduction_deg": ("Hip adduction, range of motion", "degrees", "higher"),
    "rom_adduction_vas": ("Pain on adduction (VAS)", "0-10", "lower"),
}
ARCO_EXTENT = {"A": "under 15 % of the head", "B": "15-30 % of the head", "C": "over 30 % of the head"}
JIC_TYPE = {
    "A": "medial third of the weight-bearing portion",
    "B": "up to the middle third of the weight-bearing portion",
    "C1": "lateral third, within the acetabular edge",
    "C2": "beyond the lateral acetabular edge",
}


def number(v, decimals: int = 1, signed: bool = False) -> str:
    """``v`` rounded to ``decimals``; a dash when missing or not finite; zero never carries a sign."""
    if v is None or v == "":
        return DASH
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if not math.isfinite(f):
        return DASH
    r = round(f, decimals)
    if r == 0:
        return f"{0.0:.{decimals}f}"
    return f"{r:{'+' if signed else ''}.{decimals}f}"


def rc_number(rc, decimals: int = 1) -> str:
    """A repeatability coefficient as printed: with ``decimals``, or one more where that shows it exactly (a
    configured RC of 1.45 mL reads "1.45", not "1.4", so a change of 1.42 mL is not "within the 1.4 mL limit"; a
    derived one such as 2.77 x 5 mm / 3 keeps ``decimals``)."""
    try:
        f = float(rc)
    except (TypeError, ValueError):
        return number(rc, decimals)
    exact = math.isfinite(f) and abs(round(f, decimals) - f) > 1e-9 and abs(round(f, decimals + 1) - f) < 1e-9
    return number(f, decimals + 1 if exact else decimals)


def months(m) -> str:
    """"6 mo" (months from baseline)."""
    return f"{float(m):g} mo"


def score_name(score: str) -> str:
    """Readable name of a clinical score (the identifier with spaces when unknown)."""
    return SCORES.get(score, (score.replace("_", " ").capitalize(), "", ""))[0]


def score_title(score: str) -> tuple[str, str]:
    """(title with unit and direction of better, unit) of a clinical score."""
    name, unit, better = SCORES.get(score, (score_name(score), "", ""))
    parts = [p for p in (unit, f"{better} is better" if better else "") if p]
    return (f"{name} ({'; '.join(parts)})" if parts else name), unit or "score"


def versions_text(record: Mapping, package_version: str) -> str:
    """Software and model versions in words a reader can quote."""
    models = sorted({str(s.get("model_version") or "unknown") for s in record.get("scans", [])}) or ["unknown"]
    software = str(record.get("software", ""))
    tool, _, fmt = software.partition("/")
    tracking = f"{tool or 'onfh-track'} record format {fmt}" if fmt else (software or "onfh-track")
    model_words = "segmentation model " + " and ".join(models)
    return f"onfh-seg {package_version} ({model_words}; tracking: {tracking})"


# ---------------------------------------------------------------- hips


def has_lesion(tp: Mapping) -> bool:
    """Whether a timepoint shows a measurable lesion (an ARCO extent class, or enough volume)."""
    extent = tp.get("arco_extent")
    if extent not in (None, ""):
        return extent != "none"
    vol = tp.get("lesion_volume_ml")
    return vol is not None and float(vol) >= MIN_LESION_ML


def is_healthy(hip: Mapping) -> bool:
    """No lesion at any timepoint."""
    return not any(has_lesion(tp) for tp in hip["timepoints"])


def healthy_line(hip: Mapping) -> str:
    """One line for a hip without a lesion."""
    tps = hip["timepoints"]
    names = [str(tp["timepoint"]) for tp in tps]
    visits = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    span = f"{float(tps[0]['months']):g}-{months(tps[-1]['months'])}" if len(tps) > 1 else months(tps[0]["months"])
    head = number(tps[-1].get("head_volume_ml"), 1)
    return f"{hip['hip'].capitalize()} hip: no lesion at {visits} ({span}); femoral head {head} mL."


def _extent_words(tp: Mapping) -> str:
    e = tp.get("arco_extent")
    if e in (None, "", "none"):
        return "no ARCO extent class (no measurable lesion)"
    return f"ARCO extent {e} ({ARCO_EXTENT.get(str(e), 'unknown')})"


def _jic_words(tp: Mapping) -> str:
    j = tp.get("jic_type")
    if j in (None, "", "none"):
        return "no JIC type"
    if j == "unknown":
        return "JIC type could not be determined"
    return f"JIC type {j} ({JIC_TYPE.get(str(j), 'unknown')})"


def class_changes(tps: Sequence[Mapping]) -> list[str]:
    """Changes of the ARCO extent class and the JIC type between consecutive visits, in words."""
    out = []
    for key, name in (("arco_extent", "ARCO extent"), ("jic_type", "JIC type")):
        for a, b in zip(tps, tps[1:]):
            va, vb = a.get(key) or "none", b.get(key) or "none"
            if va != vb:
                out.append(f"{name} {va} \u2192 {vb} between {a['timepoint']} and {b['timepoint']}")
    return out


def slice_spacing_mm(record: Mapping, timepoint: str) -> float | None:
    """Largest voxel edge (the slice spacing of 2D scans) of a timepoint's scan, if the record has it."""
    for s in record.get("scans", []):
        if s.get("timepoint") == timepoint and s.get("voxel_size_mm"):
            return float(max(s["voxel_size_mm"]))
    return None


def height_noise_mm(record: Mapping, timepoints: Sequence[str]) -> float | None:
    """Noise of the head height loss between scans: a third of the coarsest slice spacing among them."""
    spacings = [slice_spacing_mm(record, tp) for tp in timepoints]
    if not spacings or any(s is None for s in spacings):
        return None
    return HEIGHT_NOISE_PER_SLICE * max(spacings)  # type: ignore[type-var]


def collapse_statement(loss_mm: float | None, noise_mm: float | None, slice_mm: float | None,
                       rc_mm: float | None = None) -> str:
    """What the head height loss says about collapse, with its uncertainty: against ``rc_mm`` (a measured
    repeatability coefficient) when given, else against 2.77 x ``noise_mm`` (estimated from the slices)."""
    if loss_mm is None or not math.isfinite(float(loss_mm)):
        return "Head height along the lesion direction could not be measured, so no collapse statement is made."
    loss = f"Head height loss along the lesion direction: {number(loss_mm, 1)} mm"
    if rc_mm is not None:
        rc = float(rc_mm)
        noise = f"RC {rc_number(rc, 1)} mm from test-retest scans, so changes under it cannot be told from noise"
    elif noise_mm is None:
        return f"{loss} (measurement noise unknown: no voxel size recorded); no collapse statement is made."
    else:
        rc = RC_FACTOR * noise_mm
        noise = (f"measurement noise about \u00b1{number(noise_mm, 1)} mm on {number(slice_mm, 1)} mm slices, "
                 f"so changes under {rc_number(rc, 1)} mm cannot be told from noise")
    if abs(float(loss_mm)) <= rc:
        return f"{loss} ({noise}): within measurement noise, no collapse can be stated from these images."
    if float(loss_mm) > 0:
        return f"{loss} ({noise}): beyond measurement noise, the dome has flattened (consistent with collapse)."
    return f"{loss} ({noise}): the head measures taller than at baseline beyond noise; check the registration."


def judged(change, rc, unit: str, decimals: int, up: str = "increase", down: str = "decrease") -> str:
    """A change between visits against its repeatability coefficient, in words ('' when either is unknown)."""
    if change is None or rc is None or not math.isfinite(float(change)):
        return ""
    rc_text = f"RC {rc_number(rc, decimals)}{' ' + unit if unit else ''}"
    if abs(float(change)) > float(rc):
        return f"{rc_text}: a real {up if float(change) > 0 else down}"
    return f"within the {rc_text}: no change beyond measurement noise"


def hip_paragraph(hip: Mapping, record: Mapping) -> list[str]:
    """The plain-words summary of one hip, sentence by sentence."""
    tps = hip["timepoints"]
    b, last = tps[0], tps[-1]
    out = [f"At baseline ({b['timepoint']}, {months(b['months'])}) the lesion measured "
           f"{number(b.get('lesion_volume_ml'), 1)} mL, {number(b.get('percent_head_involved'), 1)} % of the femoral "
           f"head: {_extent_words(b)}; {_jic_words(b)}."]
    if len(tps) == 1:
        out.append("Only one scan of this hip: no change can be measured yet.")
        return out
    changes = class_changes(tps)
    out.append(("Changes between visits: " + "; ".join(changes) + ".") if changes
               else "ARCO extent and JIC type did not change between visits.")
    rep = record.get("repeatability") or {}
    verdict = judged(last.get("lesion_change_ml"), rep.get("lesion_volume_ml"), "mL", 1)
    out.append(f"At {last['timepoint']} ({months(last['months'])}) the lesion measured "
               f"{number(last.get('lesion_volume_ml'), 1)} mL ({number(last.get('lesion_change_ml'), 1, True)} mL, "
               f"{number(last.get('lesion_change_pct'), 1, True)} % from baseline"
               f"{'; ' + verdict if verdict else ''}): {_extent_words(last)}; {_jic_words(last)}.")
    if last.get("regenerated_pct") is not None:
        limit = rep.get("regenerated_pct")
        noise = "" if limit is None else (
            f" (noise limit {number(limit, 1)} points" + ("; within it" if last["regenerated_pct"] <= limit else "")
            + ")")
        out.append(f"Regenerated fraction: {number(last['regenerated_pct'], 1)} % of the baseline lesion is viable "
                   f"bone now{noise}.")
    if last.get("sir_baseline_zone") is not None and b.get("sir_baseline_zone") is not None:
        verdict = judged(last.get("sir_change"), rep.get("sir"), "", 2, "rise", "fall")
        out.append(f"Primary signal ratio (T1 SIR in the baseline lesion zone): {number(b['sir_baseline_zone'], 2)} "
                   f"at baseline, {number(last['sir_baseline_zone'], 2)} now "
                   f"({number(last.get('sir_change'), 2, True)}{'; ' + verdict if verdict else ''}; a rise means the "
                   "zone's signal moves towards normal marrow).")
    if (last.get("new_necrosis_ml") or 0) > 0:
        out.append(f"New lesion outside the baseline zone: {number(last['new_necrosis_ml'], 1)} mL.")
    noise = height_noise_mm(record, [b["timepoint"], last["timepoint"]])
    slice_mm = None if noise is None else noise / HEIGHT_NOISE_PER_SLICE
    out.append(collapse_statement(last.get("head_height_loss_mm"), noise, slice_mm, rep.get("head_height_loss_mm")))
    out.append("The ARCO extent class is the lesion's share of the head, not an ARCO stage (staging also needs "
               "radiographs and the clinical picture).")
    return out


# ---------------------------------------------------------------- headline and repeatability

ARROW = "\u2192"
# change measure -> key of its repeatability coefficient in the record's "repeatability" (configs/track.yaml)
RC_KEYS = {"lesion_change_ml": "lesion_volume_ml", "sir_change": "sir", "regenerated_pct": "regenerated_pct",
           "head_height_loss_mm": "head_height_loss_mm"}


def change_rc(record: Mapping, hip: Mapping, key: str) -> float | None:
    """Repeatability coefficient of change measure ``key`` of a hip (``RC_KEYS``); head height loss without a
    measured RC falls back to 2.77 x a third of the coarsest slice spacing of the hip's scans. None: unknown."""
    rc = (record.get("repeatability") or {}).get(RC_KEYS.get(key, ""))
    if rc is not None:
        return float(rc)
    if key == "head_height_loss_mm":
        noise = height_noise_mm(record, [str(tp["timepoint"]) for tp in hip["timepoints"]])
        return None if noise is None else RC_FACTOR * noise
    return None


def beyond_rc(value, rc: float | None) -> bool | None:
    """Whether a change exceeds its RC (None when either is unknown)."""
    if value is None or rc is None or not math.isfinite(float(value)):
        return None
    return abs(float(value)) > float(rc)


def _limit(value, rc: float | None, unit: str, decimals: int, what: str = "repeatability limit") -> str:
    """'beyond the 1.1 mL repeatability limit' / 'within ...' ('' when the RC is unknown)."""
    b = beyond_rc(value, rc)
    if b is None:
        return ""
    return f"{'beyond' if b else 'within'} the {rc_number(rc, decimals)}{' ' + unit if unit else ''} {what}"


def headline(hip: Mapping, record: Mapping) -> str:
    """One line per hip for the top of the report: lesion size then and now and whether the change is beyond
    noise, the ARCO extent class, the regenerated share and the head height loss (healthy hips:
    ``healthy_line``)."""
    if is_healthy(hip):
        return healthy_line(hip)
    tps = hip["timepoints"]
    b, last = tps[0], tps[-1]
    side = f"{str(hip['hip']).capitalize()} hip"
    if len(tps) == 1:
        return (f"{side}: lesion {number(b.get('lesion_volume_ml'), 1)} mL at {b['timepoint']}, "
                f"ARCO extent {b.get('arco_extent') or 'none'}; one scan only, no change measured yet.")
    ch = last.get("lesion_change_ml")
    limit = _limit(ch, change_rc(record, hip, "lesion_change_ml"), "mL", 1)
    pct = last.get("lesion_change_pct")
    inner = ", ".join(p for p in (f"{number(pct, 0, True)}%" if pct is not None else "", limit) if p)
    parts = [f"lesion {number(b.get('lesion_volume_ml'), 1)} {ARROW} {number(last.get('lesion_volume_ml'), 1)} mL"
             + (f" ({inner})" if inner else "")]
    e0, e1 = b.get("arco_extent") or "none", last.get("arco_extent") or "none"
    parts.append(f"ARCO extent {e0} {ARROW} {e1}" if e0 != e1 else f"ARCO extent {e0} (unchanged)")
    regen = last.get("regenerated_pct")
    if regen is not None:
        rc = change_rc(record, hip, "regenerated_pct")
        within = " (within the noise limit)" if beyond_rc(regen, rc) is False else ""
        parts.append(f"{number(regen, 0)}% of the baseline lesion regenerated{within}")
    if (last.get("new_necrosis_ml") or 0) >= MIN_LESION_ML:
        parts.append(f"new lesion {number(last['new_necrosis_ml'], 1)} mL outside the baseline zone")
    loss = last.get("head_height_loss_mm")
    if loss is not None and math.isfinite(float(loss)):
        rc = change_rc(record, hip, "head_height_loss_mm")
        b_rc = beyond_rc(loss, rc)
        judge = "" if b_rc is None else f" ({'beyond' if b_rc else 'within'} {rc_number(rc, 1)} mm)"
        parts.append(f"head height loss {number(loss, 1)} mm{judge}")
    else:
        parts.append("head height loss not measured")
    return f"{side} ({b['timepoint']} {ARROW} {last['timepoint']}): " + ", ".join(parts) + "."


def hips_affected(record: Mapping) -> str:
    """'right: lesion; left: no lesion' for the report header."""
    return "; ".join(f"{h['hip']}: {'no lesion' if is_healthy(h) else 'lesion'}" for h in record["hips"]) or "none"
