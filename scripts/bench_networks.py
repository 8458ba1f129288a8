"""Micro-benchmark of candidate MONAI networks on the CPU (why the model card picks UNet).

    .venv/bin/python scripts/bench_networks.py

One AdamW training step on a batch of 2 x 64^3 and one 96^3 forward pass, 2 threads.
"""

from __future__ import annotations

import time

import torch
from monai.networks.nets import DynUNet, UNet


def main() -> None:
    torch.set_num_threads(2)
    nets = [
        ("UNet 16-32-64-128, 1 res unit", UNet(3, 1, 5, (16, 32, 64, 128), (2, 2, 2), num_res_units=1, norm="instance")),
        ("UNet 16-32-64-128-256, 1 res unit (fine stage)", UNet(3, 1, 5, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=1, norm="instance")),
        ("DynUNet 16-32-64-128", DynUNet(3, 1, 5, kernel_size=[3, 3, 3, 3], strides=[1, 2, 2, 2], upsample_kernel_size=[2, 2, 2],
                                          filters=[16, 32, 64, 128], norm_name="instance")),
    ]
    print("| network | parameters | train step (s) | forward 96^3 (s) |\n|---|---|---|---|")
    for name, net in nets:
        opt = torch.optim.AdamW(net.parameters(), 1e-3)
        x = torch.randn(2, 1, 64, 64, 64)
        for _ in range(3):
            t = time.perf_counter()
            net(x).mean().backward()
            opt.step()
            opt.zero_grad()
            dt = time.perf_counter() - t
        net.eval()
        with torch.no_grad():
            t = time.perf_counter()
            net(torch.randn(1, 1, 96, 96, 96))
            ft = time.perf_counter() - t
        print(f"| {name} | {sum(p.numel() for p in net.parameters()):,} | {dt:.2f} | {ft:.2f} |")


if __name__ == "__main__":
    main()
