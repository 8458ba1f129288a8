"""``onfh-track``: follow each patient's hips over time. Hydra config: configs/track.yaml.

Lifecycle as onfh-infer: out_dir checked for writability before any work and
locked for the run (``.onfh-track.lock``; ``wait_lock=true`` waits), only this
package's own temporaries of ended processes removed at start, SIGTERM stops
like Ctrl-C, and pool workers end with this process (even on SIGKILL).
"""

from __future__ import annotations

import signal
import time
from typing import Any

from omegaconf import DictConfig
from tqdm import tqdm

from onfh_seg import config
from onfh_seg.api import track_run
from onfh_seg.cli.common import hydra_main, to_dict


def run(cfg: DictConfig) -> int:
    """Track the cohort of ``cfg.manifest`` from the onfh-infer outputs in ``cfg.infer_dir``."""
    settings = config.typed("track", to_dict(cfg))  # validated by hydra_main (onfh_seg.config)
    signal.signal(signal.SIGTERM, _interrupt)  # `docker stop` / kill: stop like Ctrl-C
    t0 = time.time()
    bars: list[Any] = []
    try:
        res = track_run(settings, progress=lambda pid, status: bars[0].update(1),
                        on_start=lambda n: bars.append(tqdm(total=n, desc="onfh-track patients", unit="patient")))
    finally:
        for bar in bars:
            bar.close()
    n_err = len({e["patient_id"] for e in res.errors if e["patient_id"]})
    print(
        f"onfh-track: {len(res.records)} of {len(res.records) + len(res.failed)} patients tracked "
        f"({len(res.tracked)} new, {len(res.resumed)} unchanged and skipped"
        f"{f'; {len(res.pdf_printed)} PDF printed from the existing report' if res.pdf_printed else ''}), "
        f"{n_err} with errors "
        f"(see {res.out_dir / 'errors.csv'}), {time.time() - t0:.1f} s. "
        f"Reports: {res.out_dir / 'reports'}; tables: {res.out_dir / 'longitudinal.csv'}, "
        f"{res.out_dir / 'cohort_summary.csv'}, {res.out_dir / 'correlations.csv'}"
    )
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> None:
    hydra_main("track", run)


if __name__ == "__main__":
    main()
