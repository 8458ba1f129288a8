"""CPU seconds per domain-randomised training sample, TorchIO's bias field against the separable one.

    .venv/bin/python scripts/bench_dr_sample.py [--cache cache/dr/fine_1.1mm_112/seed2112_shapes] [--samples 12] [--rounds 3]

Renders the same samples (fine_scar2's mixture, 96^3, one thread) alternately with ``tio.RandomBiasField`` and
``model.augment``'s separable field, ``--rounds`` times, and prints the CPU-s per sample of each, their ratio
per round, and whether the samples are identical. Same-run ratios only: absolute times drift on shared machines.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import onfh_seg.model.augment as augment
from onfh_seg.model.data import RandomisedPatchDataset, load_dr_items

ACQ = dict(realistic=0.35, gre=0.3, post_contrast=0.1, slab=0.2, mottle=0.35, mottle_max_loss=0.3, visible=1.0, scar=0.85)


def render(items, n: int, torchio_field: bool) -> tuple[float, list]:
    """CPU-s per sample and the samples, with TorchIO's or the separable bias field."""
    import torchio as tio

    fast = augment._fast_bias_classes
    if torchio_field:
        augment._fast_bias_classes = lambda: tio.RandomBiasField
    try:
        ds = RandomisedPatchDataset(items, (96, 96, 96), 1000, 0.67, 42, pool=1, spacing_mm=1.1, acquisitions=ACQ)
        t0 = time.process_time()
        out = [ds[i] for i in range(n)]
        return (time.process_time() - t0) / n, out
    finally:
        augment._fast_bias_classes = fast


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default="cache/dr/fine_1.1mm_112/seed2112_shapes")
    ap.add_argument("--samples", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(1)
    items = load_dr_items(sorted(Path(a.cache).glob("*.npz")))
    render(items, 1, False)  # warm-up: imports
    old, new, same = [], [], True
    for r in range(a.rounds):
        t_old, s_old = render(items, a.samples, True)
        t_new, s_new = render(items, a.samples, False)
        old.append(t_old)
        new.append(t_new)
        same &= all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(s_old, s_new))
        print(f"round {r + 1}: TorchIO field {t_old:.3f} CPU-s/sample, separable {t_new:.3f}, ratio {t_old / t_new:.2f}x")
    print(f"median: TorchIO {statistics.median(old):.3f}, separable {statistics.median(new):.3f} CPU-s/sample; "
          f"ratio {statistics.median(np.divide(old, new)):.2f}x; samples identical: {same}")


if __name__ == "__main__":
    main()
