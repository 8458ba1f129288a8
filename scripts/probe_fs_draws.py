"""False lesions of fine-network checkpoints on healthy heads drawn fat-suppressed as in training (issue 22 item 4).

    .venv/bin/python scripts/probe_fs_draws.py models/fine.ckpt outputs/train/fine_fskd2/run1/checkpoints/step1500.ckpt

Draws ``--samples`` crops (96^3 at 1.1 mm) from the validation patients' tissue maps (``--cache``, the fine_mix
validation cache, seed 2112) with fine_fsplain3's acquisitions and the fat-suppressed T1 without contrast agent on
every crop without lesion; keeps the crops that hold a head and no lesion; runs each checkpoint as validation does
(``SegModule.predict_volume``) and prints, per checkpoint, how many get a false lesion (labels 2+3) over 0.5 mL.
Development data only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from onfh_seg.labels import LESION_LABELS
from onfh_seg.model.data import RandomisedPatchDataset, load_dr_items
from onfh_seg.model.module import SegModule

ACQ = {"realistic": 0.0, "mottle": 0.35, "mottle_max_loss": 0.3, "scar": 0.6, "fat_sat_plain": 1.0,
       "fat_sat_red_lo": 0.6, "fat_sat_red_hi": 1.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ckpts", nargs="+")
    ap.add_argument("--cache", default="cache/dr/fine_1.1mm_112/seed2112_shapes")
    ap.add_argument("--samples", type=int, default=60)
    ap.add_argument("--seed", type=int, default=77)
    a = ap.parse_args()
    torch.set_num_threads(1)
    items = load_dr_items(sorted(Path(a.cache).glob("*.npz")))
    ds = RandomisedPatchDataset(items, (96, 96, 96), a.samples, 1.0, seed=a.seed, spacing_mm=1.1, acquisitions=ACQ)
    nets = {c: SegModule.load_from_checkpoint(c, map_location="cpu").eval() for c in a.ckpts}
    vols: dict[str, list[float]] = {c: [] for c in nets}
    for i in range(len(ds)):
        x, y = ds[i][0], ds[i][1].numpy()
        if np.isin(y, LESION_LABELS).any() or (y == 1).sum() < 1000:  # crops of a head without lesion only
            continue
        for c, net in nets.items():
            with torch.no_grad():
                pred = net.predict_volume(x[None]).argmax(1).numpy()
            vols[c].append(float(np.isin(pred, LESION_LABELS).sum() * 1.1 ** 3 / 1000))
    for c, v in vols.items():
        arr = np.array(v)
        print(f"{c}: n={len(arr)} false lesion > 0.5 mL: {(arr > 0.5).sum()}, median {np.median(arr):.2f} mL, "
              f"largest {arr.max():.2f} mL")


if __name__ == "__main__":
    main()
