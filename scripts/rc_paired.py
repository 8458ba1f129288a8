"""Two networks' lesion-volume repeatability on one retest cohort, compared pair by pair.

    .venv/bin/python scripts/rc_paired.py <A>/cohort/hips.csv <B>/cohort/hips.csv [--also <A2> <B2>] [--boot 10000] [--seed 0]

Reads the per-hip tables ``onfh-eval`` writes for the same retest cohort (``cache/rt40``) with two networks, takes
the diseased hips found in a scan and its same-day repeat by both (``evaluate_summary.retest_pairs``), and prints
each network's RC (as ``onfh-eval``), the ratio RC_B / RC_A and its 95% interval from a paired bootstrap over the
pairs (the same pairs drawn for both). An interval that holds 1 means the cohort cannot tell the two apart.
``--also`` adds another retest cohort's two tables (repeatable): its pairs are pooled with the first cohort's.
Development data only.
"""

from __future__ import annotations

import argparse
import csv
import sys

import numpy as np

from onfh_seg.evaluate_summary import repeatability_coefficient, retest_pairs


def read_hips(path: str) -> list[dict]:
    """The rows of an ``onfh-eval`` hips.csv with the fields ``retest_pairs`` needs typed."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["found"] = r["found"] == "True"
        r["true_lesion_ml"] = float(r["true_lesion_ml"] or 0.0)
    return rows


def differences(path: str) -> dict[tuple[str, str], float]:
    """Lesion volume, scan minus repeat (mL), per (scan, side) pair."""
    return {(t["scan"], t["side"]): float(t["pred_lesion_ml"]) - float(r["pred_lesion_ml"])
            for t, r in retest_pairs(read_hips(path))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--also", nargs=2, action="append", default=[], metavar=("A", "B"),
                    help="another retest cohort's tables, pooled with the first")
    ap.add_argument("--boot", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    try:
        da, db = {}, {}
        for i, (path_a, path_b) in enumerate([(args.a, args.b), *args.also]):
            da.update({(i, *k): v for k, v in differences(path_a).items()})
            db.update({(i, *k): v for k, v in differences(path_b).items()})
    except (OSError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    keys = sorted(set(da) & set(db))
    if not keys:
        print("error: no retest pair found by both", file=sys.stderr)
        return 2
    a, b = np.array([da[k] for k in keys]), np.array([db[k] for k in keys])
    rc_a = repeatability_coefficient(a, np.zeros_like(a))[0]  # the differences against 0: RC of the pairs
    rc_b = repeatability_coefficient(b, np.zeros_like(b))[0]
    rng = np.random.default_rng(args.seed)
    idx = rng.integers(0, len(keys), (args.boot, len(keys)))
    ratios = np.sqrt(np.mean(b[idx] ** 2, axis=1) / np.mean(a[idx] ** 2, axis=1))
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    print(f"pairs {len(keys)} (A {len(da)}, B {len(db)}): RC A {rc_a:.2f} mL, B {rc_b:.2f} mL, "
          f"B/A {rc_b / rc_a:.2f}, paired bootstrap 95% {lo:.2f}-{hi:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
