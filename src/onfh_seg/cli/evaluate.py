"""``onfh-eval``: evaluate the shipped model on a held-out synthetic cohort (configs/eval.yaml)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from omegaconf import DictConfig

from onfh_seg.cli.common import hydra_main, to_dict


def run(cfg: DictConfig) -> int:
    from onfh_seg.evaluate import evaluate, format_summary
    from onfh_seg.io.manifest import write_manifest
    from onfh_seg.io.nifti import atomic_write_text
    from onfh_seg.synth.cohort import generate_cohort, synth_config

    c = to_dict(cfg)
    out = Path(c["out_dir"])
    manifest = c.get("cohort")
    if not manifest:
        gen = synth_config(c["generate"])
        manifest = out / "cohort" / "manifest.csv"
        if not manifest.exists():
            print(f"generating held-out cohort (seed {gen['seed']}, {gen['n_patients']} patients) ...", flush=True)
            generate_cohort(gen, manifest.parent)
    engine_kw = {"window": c.get("window"), "overlap": c.get("overlap"),
                 "lesion_threshold": c.get("lesion_threshold", "model")}
    summary, scans, hips = evaluate(manifest, c["model_dir"], int(c["workers"]), bool(c["tta"]), c["reference"],
                                    engine_kw=engine_kw)
    summary["command"] = " ".join(["onfh-eval"] + sys.argv[1:])
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    write_manifest(out / "scans.csv", scans, list(scans[0]))
    write_manifest(out / "hips.csv", hips, list(dict.fromkeys(k for h in hips for k in h)))
    print(format_summary({k: v for k, v in summary.items() if k != "command"}))
    print(f"wrote {out / 'summary.json'}, scans.csv, hips.csv")
    return 0


def main() -> None:
    hydra_main("eval", run)


if __name__ == "__main__":
    main()
