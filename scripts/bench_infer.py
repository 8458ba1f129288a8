"""Benchmark inference: torch eager vs ONNX Runtime per scan, end to end, peak RSS.

    .venv/bin/python scripts/bench_infer.py [--scan PATH] [--coarse-ckpt C --fine-ckpt F] [--repeats 3]

Without --scan, the demo cohort's first pelvic scan is generated (onfh-synth +preset=demo).
The torch numbers use the weights-only checkpoints shipped beside the ONNX files (models/*.ckpt).
Prints a table: network time per scan (coarse + fine passes) for torch eager and ONNX Runtime,
the ratio (each backend in a fresh process; also per network and head; best of --repeats after a warm-up pass;
network inputs exactly as the engine feeds them, mirroring off), end-to-end onfh-infer wall time (load -> measurements written) and its peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def network_inputs(scan: Path, meta: dict) -> tuple[list[np.ndarray], list[str]]:
    """The exact arrays the engine feeds the networks for this scan (without mirroring): the coarse
    grid, then the fine sliding windows of each head crop; returns (arrays, group name per array)."""
    from onfh_seg.infer.engine import Segmenter
    from onfh_seg.infer.windows import sliding_window
    from onfh_seg.geometry import covering_grid, crop_grid, resample
    from onfh_seg.preprocess import normalise

    img = nib.load(str(scan))
    x = normalise(np.asarray(img.dataobj, np.float32))
    seg = Segmenter(ROOT / "models", provider="cpu")
    centres = seg.locate_heads(x, img.affine)
    c = meta["coarse"]
    g_aff, g_shape = covering_grid(x.shape, img.affine, c["spacing_mm"], multiple=c["divisor"])
    arrays, groups = [resample(x, img.affine, g_aff, g_shape, order=1)], ["coarse"]
    f = meta["fine"]
    for i, centre in enumerate(centres):
        a, s = crop_grid(centre, f["crop_vox"], f["spacing_mm"])
        windows: list[np.ndarray] = []

        def record(w: np.ndarray) -> np.ndarray:
            windows.append(w[0, 0].copy())
            return np.zeros((1, len(meta["labels"])) + w.shape[2:], np.float32)

        sliding_window(record, resample(x, img.affine, a, s, order=1), seg.window_vox, seg.overlap, f["divisor"])
        arrays += windows
        groups += [f"fine head {i + 1} ({len(windows)} x {windows[0].shape})"] * len(windows)
    return arrays, groups


def best_times(run, arrays: list[np.ndarray], repeats: int) -> list[float]:
    """Best-of-``repeats`` seconds per array (after one warm-up pass); ``run(i, array)`` runs one network."""
    for i, a in enumerate(arrays):
        run(i, a)
    best = [float("inf")] * len(arrays)
    for _ in range(repeats):
        for i, a in enumerate(arrays):
            t = time.perf_counter()
            run(i, a)
            best[i] = min(best[i], time.perf_counter() - t)
    return best


def time_ort(arrays: list[np.ndarray], repeats: int, threads: int) -> list[float]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = [ort.InferenceSession(str(ROOT / "models" / n), so, providers=["CPUExecutionProvider"]) for n in ("coarse.onnx", "fine.onnx")]
    return best_times(lambda i, a: sess[min(i, 1)].run(None, {"image": a[None, None]}), arrays, repeats)


def time_torch(arrays: list[np.ndarray], ckpts: list[str], repeats: int, threads: int) -> list[float]:
    import torch

    from onfh_seg.export import load_module

    torch.set_num_threads(threads)
    mods = [load_module(c) for c in ckpts]
    with torch.inference_mode():
        return best_times(lambda i, a: torch.softmax(mods[min(i, 1)](torch.from_numpy(a[None, None])), 1), arrays, repeats)


def end_to_end(scan: Path, repeats: int) -> tuple[float, float]:
    """Wall time and peak RSS (MiB) of `onfh-infer` on one scan (separate process each run)."""
    best = float("inf")
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            subprocess.run([str(Path(sys.executable).parent / "onfh-infer"), f"input={scan}", f"out_dir={d}", "resume=false"],
                           check=True, capture_output=True, cwd=ROOT)
            best = min(best, time.perf_counter() - t)
    rss_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return best, rss_kib / 1024


def time_in_subprocess(backend: str, arrays_npz: Path, ckpts: list[str], repeats: int, threads: int) -> list[float]:
    """Time one backend in a fresh process, so neither library's idle (spinning) thread pool competes."""
    cmd = [sys.executable, __file__, "--worker", backend, "--arrays", str(arrays_npz), "--repeats", str(repeats),
           "--threads", str(threads), "--coarse-ckpt", ckpts[0], "--fine-ckpt", ckpts[1]]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


def worker(args: argparse.Namespace) -> None:
    """``--worker ort|torch``: print the per-array best times (JSON) for the arrays in ``--arrays``."""
    z = np.load(args.arrays)
    arrays = [z[f"a{i}"] for i in range(len(z.files))]
    if args.worker == "ort":
        print(json.dumps(time_ort(arrays, args.repeats, args.threads)))
    else:
        print(json.dumps(time_torch(arrays, [args.coarse_ckpt, args.fine_ckpt], args.repeats, args.threads)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", choices=["ort", "torch"], help=argparse.SUPPRESS)
    ap.add_argument("--arrays", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--scan", type=Path)
    ap.add_argument("--coarse-ckpt")
    ap.add_argument("--fine-ckpt")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    meta = json.loads((ROOT / "models" / "model.json").read_text())
    scan = args.scan
    tmp = None
    if scan is None:
        tmp = tempfile.TemporaryDirectory()
        subprocess.run([str(Path(sys.executable).parent / "onfh-synth"), f"out_dir={tmp.name}", "+preset=demo"], check=True,
                       capture_output=True, cwd=ROOT)
        scan = Path(tmp.name) / "images" / "P01_m00.nii.gz"
    img = nib.load(str(scan))
    arrays, groups = network_inputs(scan, meta)
    ckpts = [args.coarse_ckpt or str(ROOT / "models" / "coarse.ckpt"), args.fine_ckpt or str(ROOT / "models" / "fine.ckpt")]
    with tempfile.TemporaryDirectory() as d:
        npz = Path(d) / "arrays.npz"
        np.savez(npz, **{f"a{i}": a for i, a in enumerate(arrays)})
        per_ort = time_in_subprocess("ort", npz, ckpts, args.repeats, args.threads)
        have_ckpts = all(c and Path(ROOT / c).exists() for c in ckpts)
        per_torch = time_in_subprocess("torch", npz, ckpts, args.repeats, args.threads) if have_ckpts else [float("nan")] * len(arrays)
    t_ort, t_torch = sum(per_ort), sum(per_torch)
    e2e, rss = end_to_end(scan, args.repeats)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, threads={args.threads}")
    print(f"scan: {scan.name} shape {img.shape} zooms {tuple(round(float(z), 2) for z in img.header.get_zooms())}; "
          f"network inputs (no mirroring): {', '.join(dict.fromkeys(groups))}; coarse {arrays[0].shape}")
    print("| measure | time (s) | ratio |")
    print("|---|---|---|")
    print(f"| torch eager, networks per scan | {t_torch:.2f} | 1.00 |")
    print(f"| ONNX Runtime, networks per scan | {t_ort:.2f} | {t_torch / t_ort:.2f}x faster |")
    for g in dict.fromkeys(groups):
        tt = sum(t for t, gg in zip(per_torch, groups) if gg == g)
        to = sum(t for t, gg in zip(per_ort, groups) if gg == g)
        print(f"| {g}: torch / ONNX Runtime | {tt:.3f} / {to:.3f} | {tt / to:.2f}x |")
    print(f"| onfh-infer end to end (load -> measurements written), 1 scan | {e2e:.2f} | |")
    print(f"| peak RSS of onfh-infer | {rss:.0f} MiB | |")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
