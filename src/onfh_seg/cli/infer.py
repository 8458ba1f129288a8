"""``onfh-infer``: segment and measure ONFH on T1 hip MRI. Hydra config: configs/infer.yaml.

Thin entry point: the composed configuration becomes onfh-infer's settings
(:class:`onfh_seg.config.InferSettings`) and goes to :func:`onfh_seg.api.infer_run`; no torch.
"""

from __future__ import annotations

import signal
import sys

from omegaconf import DictConfig

from onfh_seg import config
from onfh_seg.api import infer_run
from onfh_seg.cli.common import hydra_main, to_dict
from onfh_seg.run.records import provider_used


def run(cfg: DictConfig) -> int:
    """Run inference on ``cfg.input``; print the summary line; 1 if no scan succeeded."""
    settings = config.typed("infer", to_dict(cfg))
    # `docker stop` / kill send SIGTERM: stop like Ctrl-C, so no partial outputs are left behind
    signal.signal(signal.SIGTERM, _interrupt)
    result = infer_run(settings, command_line=["onfh-infer", *sys.argv[1:]])
    summary = result.batch
    used = provider_used(summary.results)
    if used:
        print(f"execution provider: {used}")  # what ONNX Runtime ran on, not what was asked for
    print(f"{summary.line()} -> {summary.out_dir}")
    if summary.failed:
        print(f"errors: {summary.out_dir / 'errors.csv'}", file=sys.stderr)
    if result.reanalysis is not None:
        print(f"{result.reanalysis.line} -> {result.reanalysis.table}")
    return summary.exit_code


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> None:
    hydra_main("infer", run)


if __name__ == "__main__":
    main()
