"""``onfh-eval``: evaluate the shipped model on labelled synthetic cohorts, side by side (configs/eval.yaml).

Thin entry point: the composed configuration becomes onfh-eval's settings
(:class:`onfh_seg.config_schemas.EvalSettings`) and goes to :func:`onfh_seg.evaluate.eval_run`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig

from onfh_seg import config
from onfh_seg.cli.common import hydra_main, to_dict


def run(cfg: DictConfig) -> int:
    """Evaluate the cohorts of ``cfg``; print the table and where the summaries went."""
    settings = config.typed("eval", to_dict(cfg))
    # function-level import: imported when the command runs: `--help` and argument errors stay fast
    from onfh_seg.evaluate import eval_run
    from onfh_seg.evaluate_summary import format_table

    summary = eval_run(settings, ["onfh-eval", *sys.argv[1:]])
    out = Path(settings.out_dir)
    print(format_table(summary["cohorts"]))
    print(f"wrote {out / 'summary.json'} and per cohort {out}/<cohort>/{{summary.json,scans.csv,hips.csv,pred/}}")
    return 0


def main() -> None:
    hydra_main("eval", run)


if __name__ == "__main__":
    main()
