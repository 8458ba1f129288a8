"""Benchmark: time to generate one three-timepoint patient at default size.

    .venv/bin/python scripts/bench_synth.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from onfh_seg.synth.cohort import generate_patient, plan_patient, synth_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cfg = synth_config({"months": [0, 3, 12]})
    times = []
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            plan = plan_patient(i, cfg)
            generate_patient(plan, Path(d), int(cfg["seed"]))
            times.append(time.perf_counter() - t0)
            shapes = [g.shape for g in plan.geoms]
            print(f"patient {i}: {times[-1]:.2f} s  ({plan.geoms[0].orientation}, {plan.geoms[0].fov_kind}, {shapes[0]})")
    print(f"median {sorted(times)[len(times) // 2]:.2f} s per three-timepoint patient (default config, 1 process)")


if __name__ == "__main__":
    main()
