"""Fine-network width on the CPU (issue 23): training step and ONNX Runtime inference, as ratios in one run.

    .venv/bin/python scripts/bench_width.py [--repeats 5]

For the shipped fine architecture (MONAI UNet, strides 2-2-2-2, one residual unit, instance norm, kernel-2 up
sampling) at full, three-quarter and half channel width: one AdamW step on a batch of 2 x 96^3 (torch, one
thread) and one 96^3 forward pass in ONNX Runtime (one thread, as `scripts/bench_batch.py` times a fine pass).
The widths are measured alternately, and medians are given relative to full width.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import numpy as np
import onnxruntime as ort
import torch

from onfh_seg.model.network import build_unet

WIDTHS = {"full": [16, 32, 64, 128, 256], "3/4": [12, 24, 48, 96, 192], "half": [8, 16, 32, 64, 128]}


def session(net: torch.nn.Module) -> ort.InferenceSession:
    """A one-thread ONNX Runtime session of ``net`` (96^3 input)."""
    buf = io.BytesIO()
    torch.onnx.export(net.eval(), torch.zeros(1, 1, 96, 96, 96), buf, input_names=["x"], output_names=["y"],
                      dynamo=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    nets = {k: build_unet(ch, [2, 2, 2, 2], 1, "instance", 0.0, "leakyrelu", 2) for k, ch in WIDTHS.items()}
    sess = {k: session(n) for k, n in nets.items()}
    opts = {k: torch.optim.AdamW(n.parameters(), 1e-4) for k, n in nets.items()}
    x = torch.randn(2, 1, 96, 96, 96)
    xi = np.random.default_rng(0).standard_normal((1, 1, 96, 96, 96)).astype(np.float32)
    train = {k: [] for k in nets}
    infer = {k: [] for k in nets}
    for k in nets:  # warm-up
        sess[k].run(None, {"x": xi})
    for _ in range(a.repeats):
        for k, n in nets.items():
            n.train()
            t = time.process_time()
            n(x).mean().backward()
            opts[k].step()
            opts[k].zero_grad()
            train[k].append(time.process_time() - t)
            t = time.process_time()
            sess[k].run(None, {"x": xi})
            infer[k].append(time.process_time() - t)
    full_t, full_i = statistics.median(train["full"]), statistics.median(infer["full"])
    print("| width | parameters | train step, CPU-s (vs full) | ORT 96^3 pass, CPU-s (vs full) |\n|---|---|---|---|")
    for k, n in nets.items():
        t, i = statistics.median(train[k]), statistics.median(infer[k])
        print(f"| {k} {WIDTHS[k]} | {sum(p.numel() for p in n.parameters()):,} | {t:.2f} ({t / full_t:.2f}) "
              f"| {i:.3f} ({i / full_i:.2f}) |")


if __name__ == "__main__":
    main()
