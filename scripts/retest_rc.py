"""Repeatability coefficients of onfh-track's change measures from same-day retest cohorts (configs/track.yaml).

    .venv/bin/python scripts/retest_rc.py outputs/rt40_track/longitudinal.csv outputs/f3_track/longitudinal.csv

Each cohort is an onfh-synth cohort with ``retest=true`` and ``months=[0]`` (a baseline and a same-day repeat scan per
patient), segmented with onfh-infer and tracked with onfh-track. Per cohort and pooled over the cohorts: 1.96 x the RMS
of the repeat scan's change from the baseline (the 95% limit of a same-day change, as the limits in
``configs/track.yaml``), over the diseased hips, those with a ``sir_change`` row (a lesion at baseline): lesion change
(mL), change of % of the head involved (points), primary SIR change, regenerated fraction (points) and head height
loss (mm). The repeat scan's row of a hip is its last row of a metric, the baseline's its first.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import defaultdict
from pathlib import Path

MEASURES = {  # name printed: (metric, how the change is read)
    "lesion_ml": ("lesion_change_ml", "last"),
    "percent_head_pts": ("percent_head_involved", "last_minus_first"),
    "sir": ("sir_change", "last"),
    "regenerated_pts": ("regenerated_pct", "last"),
    "head_height_mm": ("head_height_loss_mm", "last"),
}


def retest_changes(path: Path) -> dict[str, list[float]]:
    """The repeat scan's change per measure, one value per diseased hip of one ``longitudinal.csv``."""
    rows: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            if r["value"] not in ("", "nan"):
                rows[(r["patient_id"], r["hip"])][r["metric"]].append(float(r["value"]))
    out: dict[str, list[float]] = {k: [] for k in MEASURES}
    for metrics in rows.values():
        if not metrics.get("sir_change"):
            continue
        for name, (metric, how) in MEASURES.items():
            v = metrics.get(metric)
            if v:
                out[name].append(v[-1] - v[0] if how == "last_minus_first" else v[-1])
    return out


def rc(values: list[float]) -> float:
    """1.96 x RMS of same-day changes (nan when there are none)."""
    return 1.96 * math.sqrt(sum(v * v for v in values) / len(values)) if values else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("longitudinal", nargs="+", type=Path, help="onfh-track's longitudinal.csv, one per retest cohort")
    a = ap.parse_args()
    pooled: dict[str, list[float]] = {k: [] for k in MEASURES}
    try:
        for p in a.longitudinal:
            ch = retest_changes(p)
            print(f"{p}: hips {len(ch['sir'])}  " + "  ".join(f"{k} {rc(v):.3f}" for k, v in ch.items()))
            for k, v in ch.items():
                pooled[k] += v
    except (OSError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"pooled: hips {len(pooled['sir'])}  " + "  ".join(f"{k} {rc(v):.3f}" for k, v in pooled.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
