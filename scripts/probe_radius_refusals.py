"""Which heads the anatomy gate refuses for their sphere radius alone, on a synthetic cohort (development data).

    .venv/bin/python scripts/probe_radius_refusals.py cache/dev_c8/manifest.csv OUT.json [--model-dir models]

Runs ``scripts/eval_locator.py --tta --pipeline --threads 1`` (what onfh-infer reports: engine, gate, second look)
with the gate's per-head check wrapped (measurement only): every check, in the engine's head search and in the gate,
whose only failure is a fitted radius under the lower limit is recorded with its scan, the partial flag (cut by the
field of view), fitted radius, volume, relative RMS and the distance to the nearest true head centre. Prints
eval_locator's table, then ``RADIUS-ONLY <n> partial <n> true(<30mm) <n>``, and writes the records to OUT.json. It
shows what a lower radius limit for cut heads would let through: true caps, or other structures.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

import onfh_seg.infer.anatomy as anatomy


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest")
    ap.add_argument("out_json", type=Path)
    ap.add_argument("--model-dir", default="models")
    args = ap.parse_args()
    spec = importlib.util.spec_from_file_location("eval_locator", Path(__file__).with_name("eval_locator.py"))
    loc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loc)
    current: dict = {}
    records: list[dict] = []
    check_head, score_scan = anatomy.check_head, loc.score_scan
    lowest = anatomy.AnatomyLimits().radius_mm[0]

    def recording_check(*a, **k):
        h = check_head(*a, **k)
        if h.failures and all(f.startswith("head sphere radius") for f in h.failures) and h.radius_fit_mm < lowest:
            c = np.asarray(h.component_centre_ras_mm)
            d = min(float(np.linalg.norm(np.asarray(t["head_centre_ras_mm"]) - c)) for t in current["truth"]["hips"])
            records.append({"scan": current["scan"], "partial": h.partial, "radius_mm": round(h.radius_fit_mm, 2),
                            "ml": round(h.volume_ml, 2), "rel_rms": round(h.rel_rms, 3),
                            "true_head_within_mm": round(d, 1)})
        return h

    def scan_named(seg, image, truth, *a, **k):
        current.update(truth=truth, scan=Path(image).name)
        return score_scan(seg, image, truth, *a, **k)

    anatomy.check_head, loc.score_scan = recording_check, scan_named
    sys.argv = ["eval_locator", args.manifest, "--tta", "--pipeline", "--threads", "1", "--model-dir", args.model_dir]
    loc.main()
    tmp = args.out_json.with_suffix(".tmp")
    tmp.write_text(json.dumps(records, indent=1))
    tmp.replace(args.out_json)
    print(f"RADIUS-ONLY {len(records)} partial {sum(r['partial'] for r in records)} "
          f"true(<30mm) {sum(r['true_head_within_mm'] < 30 for r in records)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
