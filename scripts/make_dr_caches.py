"""Render a training experiment's domain-randomised tissue caches (training and validation patients) without
training, as ``onfh-train`` would on its first run: e.g. on a fresh machine, the validation crops that
scripts/judge_fine.sh, val_dr.py and val_failure_modes.py read (cache/dr/fine_1.1mm_112/seed2112_shapes).

    .venv/bin/python scripts/make_dr_caches.py [EXPERIMENT]      (default fine_fskd36: about 5 minutes on 2 cores)

Seeded: the same crops each time; a cache already there is kept.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from onfh_seg.cli.common import to_dict
from onfh_seg.train import training_manifests

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def main() -> int:
    exp = sys.argv[1] if len(sys.argv) > 1 else "fine_fskd36"
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = to_dict(compose(config_name="train", overrides=[f"experiment={exp}"]))
    train_m, val_m = training_manifests(cfg["data"])
    dm = instantiate(cfg["data"], train_manifests=train_m, val_manifests=val_m, seed=int(cfg["seed"]), _convert_="all")
    dm.setup("fit")
    print(f"{exp}: {len(dm.train_ds)} training draws an epoch, {len(dm.val_ds)} validation crops; caches under "
          f"{cfg['data'].get('randomise', {}).get('out_dir', 'cache/dr')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
