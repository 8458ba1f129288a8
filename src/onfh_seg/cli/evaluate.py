"""``onfh-eval``: evaluate the shipped model on labelled synthetic cohorts, side by side (configs/eval.yaml)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from omegaconf import DictConfig

from onfh_seg.cli.common import hydra_main, to_dict


def cohorts_from_config(c: dict) -> dict[str, list[str]]:
    """Named cohorts to evaluate: ``cohort`` (one manifest) and the non-null entries of ``cohorts``."""
    out: dict[str, list[str]] = {}
    if c.get("cohort"):
        out["cohort"] = [str(c["cohort"])]
    for name, ms in (c.get("cohorts") or {}).items():
        if not ms:
            continue
        ms = [ms] if isinstance(ms, str) else list(ms)
        if not all(isinstance(m, str) and m for m in ms):
            raise ValueError(f"cohorts.{name} must be a manifest path or a list of manifest paths")
        out[str(name)] = ms
    return out


def model_version(model_dir: str | Path) -> str | None:
    """``model_version`` from ``model_dir/model.json`` (None if absent)."""
    p = Path(model_dir) / "model.json"
    try:
        return json.loads(p.read_text()).get("model_version")
    except (OSError, ValueError):
        return None


def run(cfg: DictConfig) -> int:
    # function-level import: imported when the command runs: `--help` and argument errors stay fast
    from onfh_seg.evaluate import evaluate_cohorts, format_table
    from onfh_seg.io.manifest import write_manifest
    from onfh_seg.io.nifti import atomic_write_text
    from onfh_seg.synth.cohort import generate_cohort, synth_config

    c = to_dict(cfg)
    out = Path(c["out_dir"])
    workers = int(c["workers"])
    if workers < 1:
        raise ValueError("workers must be >= 1")
    cohorts = cohorts_from_config(c)
    if not cohorts:
        gen = synth_config(c["generate"])
        manifest = out / "cohort" / "manifest.csv"
        if not manifest.exists():
            print(f"generating held-out cohort (seed {gen['seed']}, {gen['n_patients']} patients) ...", flush=True)
            generate_cohort(gen, manifest.parent)
        cohorts = {"heldout": [str(manifest)]}
    if not (Path(c["model_dir"]) / "model.json").is_file():
        raise FileNotFoundError(f"no model.json in model_dir={c['model_dir']}")
    engine_kw = {"window": c.get("window"), "overlap": c.get("overlap"),
                 "lesion_threshold": c.get("lesion_threshold", "model")}

    def write_cohort(name: str, s: dict, scans: list[dict], hips: list[dict]) -> None:
        d = out / name
        write_manifest(d / "scans.csv", scans, list(dict.fromkeys(k for x in scans for k in x)))
        write_manifest(d / "hips.csv", hips, list(dict.fromkeys(k for h in hips for k in h)))
        atomic_write_text(d / "summary.json", json.dumps(s, indent=1))

    summaries = evaluate_cohorts(cohorts, c["model_dir"], out, workers, bool(c["tta"]), c["reference"],
                                 engine_kw=engine_kw, on_cohort=write_cohort)
    summary = {"model_version": model_version(c["model_dir"]), "command": " ".join(["onfh-eval"] + sys.argv[1:]),
               "tta": bool(c["tta"]), "cohorts": summaries}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    print(format_table(summaries))
    print(f"wrote {out / 'summary.json'} and per cohort {out}/<cohort>/{{summary.json,scans.csv,hips.csv,pred/}}")
    return 0


def main() -> None:
    hydra_main("eval", run)


if __name__ == "__main__":
    main()
