"""``onfh-synth``: generate a synthetic longitudinal hip T1 MRI cohort."""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig

from onfh_seg.cli.common import hydra_main, to_dict


def run(cfg: DictConfig) -> int:
    """Generate the cohort described by ``cfg`` (and previews if asked)."""
    # function-level import: imported when the command runs: `--help` and argument errors stay fast
    from tqdm import tqdm

    from onfh_seg.synth.cohort import generate_cohort
    from onfh_seg.synth.preview import preview_cohort

    c = to_dict(cfg)
    out = Path(c["out_dir"])
    n = 2 if c.get("demo") else int(c["n_patients"])
    if n < 1:
        raise ValueError("n_patients must be >= 1")
    t0 = time.time()
    with tqdm(total=n, desc="onfh-synth patients", unit="patient") as bar:
        manifest = generate_cohort(c, out, progress=lambda pid: bar.update(1))
    print(f"wrote {manifest} ({n} patients, {time.time() - t0:.1f} s)")
    if c.get("preview"):
        pngs = preview_cohort(manifest)
        print(f"wrote {len(pngs)} previews under {out / 'preview'}")
    return 0


def main() -> None:
    hydra_main("synth", run)


if __name__ == "__main__":
    main()
