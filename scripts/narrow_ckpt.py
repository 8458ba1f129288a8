"""Write a narrower fine network's starting checkpoint from a wider trained one (issue 23: the architecture step).

    .venv/bin/python scripts/narrow_ckpt.py models/fine.ckpt outputs/train/fine_half/init.ckpt --channels 8,16,32,64,128

Each level keeps its channels with the largest L1 filter norms (``model.network.narrow_unet_state``); the
hyperparameters name the new widths, so ``onfh-train ... init_from=<out>`` with the same ``model.net.channels``
starts from it. Weights only, no optimizer state.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path

import torch

from onfh_seg.model.network import narrow_unet_state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("wide", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--channels", required=True, help="comma-separated widths, e.g. 8,16,32,64,128")
    args = ap.parse_args()
    channels = [int(c) for c in args.channels.split(",")]
    ckpt = torch.load(args.wide, map_location="cpu", weights_only=False)
    net = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    hp = dict(ckpt["hyper_parameters"])
    hp["net"] = {**hp["net"], "channels": channels}
    state = {f"net.{k}": v for k, v in narrow_unet_state(net, channels).items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    torch.save({"state_dict": state, "hyper_parameters": hp,
                "pytorch-lightning_version": ckpt.get("pytorch-lightning_version"), "narrowed_from": str(args.wide),
                "narrowed_from_sha256": hashlib.sha256(args.wide.read_bytes()).hexdigest()}, tmp)
    os.replace(tmp, args.out)
    n = sum(v.numel() for v in state.values())
    print(f"wrote {args.out}: channels {channels}, {n:,} parameters (from {sum(v.numel() for v in net.values()):,})")


if __name__ == "__main__":
    main()
