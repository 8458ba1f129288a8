"""``onfh-infer``: segment and measure ONFH on T1 hip MRI. Hydra config: configs/infer.yaml.

Thin entry point around :func:`onfh_seg.batch.run_batch`; no torch.
"""

from __future__ import annotations

import signal
import sys

from omegaconf import DictConfig

from onfh_seg.cli.common import hydra_main, to_dict


def run(cfg: DictConfig) -> int:
    """Run inference on ``cfg.input``; print the summary line; 1 if no scan succeeded."""
    from onfh_seg.batch import run_batch
    from onfh_seg.run_records import provider_used

    # `docker stop` / kill send SIGTERM: stop like Ctrl-C, so no partial outputs are left behind
    signal.signal(signal.SIGTERM, _interrupt)
    c, command_line = to_dict(cfg), ["onfh-infer", *sys.argv[1:]]
    reanalysis = None
    if c.get("reanalyse"):  # an earlier run: re-run what another model/settings made, compare (onfh_seg.reanalyse)
        from onfh_seg.reanalyse import run_reanalysis

        reanalysis = run_reanalysis(c, command_line=command_line)
        summary = reanalysis.batch
    else:
        summary = run_batch(c, command_line=command_line)
    used = provider_used(summary.results)
    if used:
        print(f"execution provider: {used}")  # what ONNX Runtime ran on, not what was asked for
    print(f"{summary.line()} -> {summary.out_dir}")
    if summary.failed:
        print(f"errors: {summary.out_dir / 'errors.csv'}", file=sys.stderr)
    if reanalysis is not None:
        print(f"{reanalysis.line} -> {reanalysis.table}")
    return summary.exit_code


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> None:
    hydra_main("infer", run)


if __name__ == "__main__":
    main()
