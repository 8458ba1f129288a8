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
    ap.add_argument("--tta", action="store_true", help="also score with left-right mirroring (the engine's tta)")
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
    names = [LABELS[c] for c in range(1, len(LABELS))]
    for ck in a.ckpts:
        m = SegModule.load_from_checkpoint(ck, map_location="cpu").eval()
        for mirror in ([False, True] if a.tta else [False]):
            with torch.no_grad():
                preds = [predict(m, x[None], mirror).argmax(1, keepdim=True) for x, _ in val]
            d = torch.stack([dice_per_label(p, y[None]) for p, (_, y) in zip(preds, val)]).numpy()
            lesion = np.array([lesion_dice(p, y[None]) for p, (_, y) in zip(preds, val)])
            per_crop = np.nanmean(d, 1)  # each crop's mean over the labels it holds
            lo, hi = bootstrap_ci(per_crop)
            print(ck, "mirror" if mirror else "", " ".join(f"{n}={v:.3f}" for n, v in zip(names, np.nanmean(d, 0))),
                  f"mean={np.nanmean(np.nanmean(d, 0)):.3f}", f"crop-mean={np.nanmean(per_crop):.3f} [95% CI {lo:.3f}-{hi:.3f}]",
                  f"lesion(2+3)={np.nanmean(lesion):.3f} (n={int(np.isfinite(lesion).sum())})")


def predict(m, x: torch.Tensor, mirror: bool) -> torch.Tensor:
    """Logits of one crop, optionally averaged with the left-right mirrored pass (as the engine's ``tta``)."""
    out = torch.softmax(m.predict_volume(x), 1)
    if mirror:
        out = 0.5 * (out + torch.softmax(m.predict_volume(torch.flip(x, (2,))), 1).flip(2))
    return out


def lesion_dice(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Dice of the lesion (labels 2+3), NaN where neither has one."""
    p, t = torch.isin(pred, torch.tensor([2, 3])), torch.isin(target, torch.tensor([2, 3]))
    den = int(p.sum() + t.sum())
    return float("nan") if den == 0 else 2.0 * int((p & t).sum()) / den


def bootstrap_ci(values: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of the finite values."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, (n, v.size))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


if __name__ == "__main__":
    main()
