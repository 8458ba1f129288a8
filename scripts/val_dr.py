"""Score fine-stage checkpoints on the domain-randomised validation crops (training styles only).

    .venv/bin/python scripts/val_dr.py models/fine.ckpt outputs/train/fine_dr/<run>/checkpoints/best.ckpt
    .venv/bin/python scripts/val_dr.py --cache cache/dr/coarse_2mm_0/seed2202 --seed 2202 --patch 64 --pool 2 models/coarse.ckpt ...
    .venv/bin/python scripts/val_dr.py --cache cache/dr/coarse_2mm_0/seed2202 --seed 2202 --patch 64 --pool 2 --spacing 4 \
        --samples 48 --fg 0.5 --acq gre=0.35,post_contrast=0.15,slab=0.5 models/coarse.ckpt ...   # coarse_slab validation

Renders the same fixed validation set as ``onfh-train experiment=fine_dr`` (seeded) and prints the
per-label Dice of each checkpoint, the way training validation computes it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ckpts", nargs="+")
    ap.add_argument("--cache", default="cache/dr/fine_1.1mm_112/seed2102")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seed", type=int, default=2102)
    ap.add_argument("--patch", type=int, default=96, help="validation crop (voxels of the network grid)")
    ap.add_argument("--pool", type=int, default=1, help="tissue-map voxels per network voxel (coarse: 2)")
    ap.add_argument("--spacing", type=float, default=1.1, help="network grid spacing in mm (coarse: 4)")
    ap.add_argument("--fg", type=float, default=1.0, help="share of crops centred on foreground")
    ap.add_argument("--acq", default="", help="acquisitions as in data.randomise.acquisitions, e.g. gre=0.35,post_contrast=0.15,slab=0.5")
    a = ap.parse_args()
    from onfh_seg.labels import LABELS
    from onfh_seg.model.data import RandomisedPatchDataset, load_dr_items
    from onfh_seg.model.module import SegModule, dice_per_label

    torch.set_num_threads(1)
    acq = {k: float(v) for k, v in (kv.split("=") for kv in a.acq.split(",") if kv)}
    ds = RandomisedPatchDataset(load_dr_items(sorted(Path(a.cache).glob("*.npz"))), (a.patch,) * 3, a.samples, a.fg, a.seed,
                                pool=a.pool, spacing_mm=a.spacing, acquisitions=acq)
    val = [ds[i] for i in range(len(ds))]
    for ck in a.ckpts:
        m = SegModule.load_from_checkpoint(ck, map_location="cpu").eval()
        with torch.no_grad():
            d = torch.stack([dice_per_label(m.predict_volume(x[None]).argmax(1, keepdim=True), y[None]) for x, y in val])
        mean = torch.nanmean(d, 0).numpy()
        names = [LABELS[c] for c in range(1, len(LABELS))]
        print(ck, " ".join(f"{n}={v:.3f}" for n, v in zip(names, mean)), f"mean={np.nanmean(mean):.3f}")


if __name__ == "__main__":
    main()
