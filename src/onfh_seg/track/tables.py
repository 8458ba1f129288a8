"""Cohort tables of onfh-track, computed from the per-patient records (no I/O).

``longitudinal.csv`` (``tidy_rows``), ``cohort_summary.csv`` (``summary_rows``),
``correlations.csv`` (``correlations``, Spearman of imaging change with score
change) and ``errors.csv`` (``error_rows``); ``cohort_tables`` gives all four as
CSV text keyed by file name.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence

from onfh_seg.io.manifest import CLINICAL_COLUMNS
from onfh_seg.report.words import RC_KEYS
from onfh_seg.stats import spearman
from onfh_seg.track.params import HIP_METRICS

TIDY_COLUMNS = ("patient_id", "hip", "months", "metric", "value")
IMAGING_CHANGE = ("lesion_change_pct", "regenerated_pct", "sir_change")
SUMMARY_COLUMNS = (
    "patient_id", "hip", "baseline_months", "last_months", "baseline_lesion_ml", "last_lesion_ml",
    "lesion_change_ml", "lesion_change_pct", "regenerated_pct", "sir_baseline_zone_baseline",
    "sir_baseline_zone_last", "sir_change", "new_necrosis_ml", "head_height_loss_mm",
)
CORRELATION_COLUMNS = ("imaging_metric", "score_change", "n", "rho", "p_value", "note")
ERROR_COLUMNS = ("patient_id", "timepoint", "reason")
# change measure -> its repeatability coefficient in the record's "repeatability" (configs/track.yaml); a follow-up
# gets a "<change>_beyond_rc" row (1: beyond measurement noise, 0: within it) when the RC is known
CHANGE_RC = tuple(RC_KEYS.items())  # the report's mapping (report.words.RC_KEYS), so CSV and report agree


def tidy_rows(record: dict) -> list[dict]:
    """``longitudinal.csv`` rows (patient_id, hip, months, metric, value); scores use hip "patient"."""
    rows = []
    pid = record["patient_id"]
    rep = record.get("repeatability") or {}
    for h in record["hips"]:
        for i, tp in enumerate(h["timepoints"]):
            for k in HIP_METRICS:
                v = tp.get(k)
                if v is not None:
                    rows.append({"patient_id": pid, "hip": h["hip"], "months": tp["months"], "metric": k, "value": v})
            for k, rc_key in CHANGE_RC if i else ():
                v, rc = tp.get(k), rep.get(rc_key)
                if v is not None and rc is not None:
                    rows.append({"patient_id": pid, "hip": h["hip"], "months": tp["months"],
                                 "metric": f"{k}_beyond_rc", "value": int(abs(float(v)) > float(rc))})
    for v in record.get("visits", []):
        for c in CLINICAL_COLUMNS:
            if c in v:
                rows.append({"patient_id": pid, "hip": "patient", "months": v["months"], "metric": c, "value": v[c]})
    return rows


def summary_rows(record: dict) -> list[dict]:
    """Cohort summary rows (one per hip) of one patient record."""
    out = []
    for h in record["hips"]:
        tps = h["timepoints"]
        b, last = tps[0], tps[-1]
        row = {
            "patient_id": record["patient_id"], "hip": h["hip"], "baseline_months": b["months"],
            "last_months": last["months"], "baseline_lesion_ml": b.get("lesion_volume_ml"),
            "last_lesion_ml": last.get("lesion_volume_ml"), "lesion_change_ml": last.get("lesion_change_ml"),
            "lesion_change_pct": last.get("lesion_change_pct"),
            "regenerated_pct": last.get("regenerated_pct"),
            "sir_baseline_zone_baseline": b.get("sir_baseline_zone"),
            "sir_baseline_zone_last": last.get("sir_baseline_zone"), "sir_change": last.get("sir_change"),
            "new_necrosis_ml": last.get("new_necrosis_ml"), "head_height_loss_mm": last.get("head_height_loss_mm"),
        }
        for c, sc in record.get("score_changes", {}).items():
            row[f"{c}_baseline"] = sc["baseline"]
            row[f"{c}_last"] = sc["last"]
            row[f"{c}_change"] = sc["change"]
        out.append(row)
    return out


def correlations(summary: list[dict], min_n: int = 3) -> list[dict]:
    """Spearman of each imaging change (``IMAGING_CHANGE``) with each score change,
    over hips with a baseline lesion (scores are per patient, so both hips of a
    bilateral patient carry the same score change)."""
    hips = [r for r in summary if (r.get("baseline_lesion_ml") or 0) > 0]
    out = []
    for c in CLINICAL_COLUMNS:
        key = f"{c}_change"
        if not any(key in r for r in summary):
            continue
        for m in IMAGING_CHANGE:
            res = spearman([r.get(m) for r in hips], [r.get(key) for r in hips], min_n)
            out.append({"imaging_metric": m, "score_change": key, **res})
    return out


def csv_text(rows: list[dict], columns: Sequence[str]) -> str:
    """CSV text with the given columns (None -> empty)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    return buf.getvalue()


def summary_columns(rows: list[dict]) -> list[str]:
    cols = list(SUMMARY_COLUMNS)
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    return cols


def error_rows(records: Mapping[str, dict], failed: Mapping[str, str], bad_rows: Sequence[Mapping]) -> list[dict]:
    """``errors.csv`` rows: bad manifest rows, then per patient (sorted) its failure or its timepoint errors."""
    errors = [{"patient_id": r["patient_id"], "timepoint": r["timepoint"], "reason": r["reason"]} for r in bad_rows]
    for pid in sorted(set(records) | set(failed)):
        if pid in failed:
            errors.append({"patient_id": pid, "timepoint": "", "reason": failed[pid]})
        else:
            errors += [{"patient_id": pid, **e} for e in records[pid].get("errors", [])]
    return errors


def cohort_tables(records: Mapping[str, dict], min_correlation_n: int = 3) -> dict[str, str]:
    """CSV text of ``longitudinal.csv``, ``cohort_summary.csv`` and ``correlations.csv`` from the records."""
    tidy = [r for rec in records.values() for r in tidy_rows(rec)]
    summary = [r for rec in records.values() for r in summary_rows(rec)]
    corr = correlations(summary, min_correlation_n)
    return {
        "longitudinal.csv": csv_text(tidy, TIDY_COLUMNS),
        "cohort_summary.csv": csv_text(summary, summary_columns(summary)),
        "correlations.csv": csv_text(corr, CORRELATION_COLUMNS),
    }
