"""Issue 15 item 6 in one run: the CUDA execution provider against the CPU provider, per network and end to end.

    python3 scripts/gpu_check.py --out DIR [--work DIR] [--scans 18] [--repeats 20] [--threads 0]

Run from the repository root with ``src`` on PYTHONPATH (``scripts/gpu_check.sh`` sets it up on a lent GPU
machine). Needs numpy, scipy, Pillow, nibabel, hydra-core and onnxruntime (``onnxruntime-gpu`` for the CUDA
rows; without it they are reported as not available, so the script also runs on a CPU-only machine).

1. A synthetic cohort (``onfh-synth n_patients=ceil(scans/3) seed=2024 months=[0,3,16]``, as
   scripts/bench_batch.py) is generated in --work (default DIR/work), where the runs write too.
2. Networks: the coarse network on the first scan's coarse grid and the fine network on its first 96^3
   crop, timed (median of --repeats after 3 warm-ups) for CPU (``--threads``, 0 = all cores), CUDA with
   ``use_tf32=0`` (onfh-infer's default) and CUDA with TF32; the CUDA probabilities against the CPU's
   (largest absolute difference, share of voxels with the same argmax).
3. End to end: ``onfh-infer`` over the cohort (``workers=1``, mirroring and overlay on) for the same three
   settings, each in a new process: wall time, median seconds per scan and stage (run_manifest.json
   ``stage_seconds``), the provider actually used and its options; the measurements.csv of each CUDA run
   against the CPU run's (identical bytes, or how many rows differ and by how much in lesion volume).
   Then one scan in a new process per setting.

Writes DIR/gpu_check.md (the tables) and DIR/gpu_check.json; prints the tables.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
# the bench cohort, made as bench_batch.py makes it
from bench_batch import first_scans, make_cohort

SETTINGS = (("cpu", "cpu", False), ("cuda", "cuda", False), ("cuda_tf32", "cuda", True))


def cli(module: str, *args: str) -> list[str]:
    """A ``python -m onfh_seg.cli.<module>`` command line (no console scripts needed)."""
    return [sys.executable, "-m", f"onfh_seg.cli.{module}", *args]


def gpu_name() -> str:
    """The GPU as nvidia-smi names it, or a note."""
    try:
        res = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=False)
        return res.stdout.strip() or res.stderr.strip() or "nvidia-smi printed nothing"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"no nvidia-smi ({type(exc).__name__})"


def cuda_available(model_dir: Path) -> tuple[bool, str]:
    """Whether a session of this onnxruntime really runs on the CUDA provider (after ``preload_dlls`` where it
    exists: onnxruntime-gpu lists CUDA as available even where the CUDA libraries are missing)."""
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception as exc:  # noqa: BLE001 - reported, the CPU rows still run
            return False, f"preload_dlls failed: {exc}"
    note = f"onnxruntime {ort.__version__}, providers {ort.get_available_providers()}"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False, note
    try:
        used = segmenter(model_dir, "cuda", False, 1).provider
    except Exception as exc:  # noqa: BLE001
        return False, f"{note}; a CUDA session failed: {str(exc).splitlines()[0]}"
    return used == "CUDAExecutionProvider", f"{note}; a CUDA session runs on {used}"


def segmenter(model_dir: Path, provider: str, tf32: bool, threads: int):
    """The Segmenter onfh-infer would build (its ``coarse`` and ``fine`` sessions are timed here)."""
    from onfh_seg.infer.engine import Segmenter

    return Segmenter(model_dir, provider=provider, threads=threads, cuda_tf32=tf32)


def network_inputs(image_path: Path, model_dir: Path) -> dict[str, np.ndarray]:
    """The first scan's coarse-grid input and its first fine crop, as the Segmenter makes them."""
    from onfh_seg.geometry import covering_grid, crop_grid, resample
    from onfh_seg.io.nifti import load_nifti
    from onfh_seg.preprocess import normalise

    img = load_nifti(image_path)
    seg = segmenter(model_dir, "cpu", False, 0)
    x = normalise(np.asarray(img.dataobj, np.float32))
    c, f = seg.meta["coarse"], seg.meta["fine"]
    g_aff, g_shape = covering_grid(x.shape, img.affine, c["spacing_mm"], multiple=c["divisor"])
    coarse = resample(x, img.affine, g_aff, g_shape, order=1)
    centre = seg.locate_heads(x, img.affine)[0]
    f_aff, f_shape = crop_grid(centre, int(f["crop_vox"]), f["spacing_mm"])
    fine = resample(x, img.affine, f_aff, f_shape, order=1)
    return {"coarse": coarse[None, None].astype(np.float32), "fine": np.ascontiguousarray(fine[None, None], np.float32)}


def time_networks(inputs: dict[str, np.ndarray], model_dir: Path, threads: int, repeats: int, cuda: bool) -> dict:
    """Per setting and network: median ms, and for CUDA the probabilities against the CPU provider's."""
    out: dict[str, dict] = {}
    ref: dict[str, np.ndarray] = {}
    for name, provider, tf32 in SETTINGS:
        if provider == "cuda" and not cuda:
            out[name] = {"error": "CUDA provider not available"}
            continue
        seg = segmenter(model_dir, provider, tf32, threads)
        coarse, fine = seg.coarse, seg.fine
        row: dict[str, dict] = {"provider_used": seg.provider, "provider_options": seg.provider_options}
        for net, sess in (("coarse", coarse), ("fine", fine)):
            x = inputs[net]
            for _ in range(3):
                p = sess.run(None, {"image": x})[0]
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                p = sess.run(None, {"image": x})[0]
                times.append(time.perf_counter() - t)
            cell = {"shape": list(x.shape[2:]), "median_ms": round(statistics.median(times) * 1000, 3),
                    "min_ms": round(min(times) * 1000, 3)}
            if name == "cpu":
                ref[net] = p
            else:
                cell["max_abs_prob_diff"] = float(np.abs(p - ref[net]).max())
                cell["argmax_equal_pct"] = float((p.argmax(1) == ref[net].argmax(1)).mean() * 100)
            row[net] = cell
        out[name] = row
    return out


def run_infer(args: list[str], cwd: Path) -> tuple[float, str]:
    """Wall seconds of one onfh-infer process; stops the check with its output when it fails."""
    t = time.perf_counter()
    res = subprocess.run(cli("infer", *args), cwd=cwd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    if res.returncode != 0:
        raise SystemExit(f"onfh-infer {' '.join(args)} failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return wall, res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""


def csv_difference(a: Path, b: Path) -> str:
    """'identical' or how many rows differ and the largest lesion-volume difference (mL)."""
    if a.read_bytes() == b.read_bytes():
        return "identical"
    with open(a, newline="") as fa, open(b, newline="") as fb:
        ra, rb = list(csv.DictReader(fa)), list(csv.DictReader(fb))
    if len(ra) != len(rb):
        return f"{len(ra)} vs {len(rb)} rows"
    diff = [i for i, (x, y) in enumerate(zip(ra, rb)) if x != y]
    vol = [abs(float(x["lesion_volume_ml"]) - float(y["lesion_volume_ml"])) for x, y in zip(ra, rb)
           if x.get("lesion_volume_ml") not in (None, "") and y.get("lesion_volume_ml") not in (None, "")]
    return f"{len(diff)} of {len(ra)} rows differ; lesion volume up to {max(vol, default=0.0):.3f} mL apart"


def end_to_end(manifest: Path, first_image: Path, work: Path, threads: int, cuda: bool) -> dict:
    """onfh-infer over the cohort and on one scan per setting, each in a new process."""
    out: dict[str, dict] = {}
    for name, provider, tf32 in SETTINGS:
        if provider == "cuda" and not cuda:
            out[name] = {"error": "CUDA provider not available"}
            continue
        common = [f"provider={provider}", f"cuda_tf32={'true' if tf32 else 'false'}", f"threads={threads}", "workers=1"]
        dest = work / f"out_{name}"
        shutil.rmtree(dest, ignore_errors=True)
        wall, line = run_infer([f"input={manifest}", f"out_dir={dest}", *common], ROOT)
        record = json.loads((dest / "run_manifest.json").read_text())
        single_dir = work / f"single_{name}"
        shutil.rmtree(single_dir, ignore_errors=True)
        single, _ = run_infer([f"input={first_image}", f"out_dir={single_dir}", *common], ROOT)
        n = record["counts"]["total"]
        out[name] = {"wall_s": round(wall, 2), "scans": n, "wall_per_scan_s": round(wall / n, 3), "summary": line,
                     "single_scan_wall_s": round(single, 2), "provider_used": record.get("provider_used"),
                     "provider_options": record.get("provider_options"),
                     "stage_median_s": {k: v["median"] for k, v in (record.get("stage_seconds") or {}).items()}}
        if name != "cpu" and "error" not in out["cpu"]:
            out[name]["measurements_vs_cpu"] = csv_difference(work / "out_cpu" / "measurements.csv",
                                                              dest / "measurements.csv")
    return out


def table(results: dict, header: list[str], cells) -> list[str]:
    """Markdown rows, one per setting: ``cells(result)`` after the setting's name, or its error."""
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for name, _, _ in SETTINGS:
        r = results[name]
        row = [r["error"]] + [""] * (len(header) - 2) if "error" in r else cells(r)
        lines.append("| " + " | ".join(str(c) for c in [name, *row]) + " |")
    return lines


def markdown(info: dict, nets: dict, e2e: dict) -> str:
    """The report: machine, per-network table, end-to-end table, per-stage table."""
    lines = [f"Machine: {info['machine']}; GPU: {info['gpu']}; {info['ort']}; CPU threads {info['threads']}", ""]
    lines += table(nets, ["setting", "provider used", "coarse ms", "fine 96^3 ms", "fine max abs prob diff vs CPU",
                          "fine argmax equal"],
                   lambda r: [r["provider_used"], r["coarse"]["median_ms"], r["fine"]["median_ms"],
                              r["fine"].get("max_abs_prob_diff", "-"), r["fine"].get("argmax_equal_pct", "-")])
    lines += [""] + table(e2e, ["setting", "cohort wall (s)", "per scan (s)", "single scan, new process (s)",
                                "measurements.csv vs CPU"],
                          lambda r: [f"{r['wall_s']} ({r['scans']} scans)", r["wall_per_scan_s"], r["single_scan_wall_s"],
                                     r.get("measurements_vs_cpu", "-")])
    stages = sorted({k for r in e2e.values() for k in r.get("stage_median_s", {})})
    if stages:
        names = [n for n, _, _ in SETTINGS if "error" not in e2e[n]]
        lines += ["", "| stage (median s per scan) | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for k in stages:
            lines.append(f"| {k} | " + " | ".join(str(e2e[n]["stage_median_s"].get(k, "-")) for n in names) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="results folder (gpu_check.md, gpu_check.json, work/)")
    ap.add_argument("--work", type=Path, help="cohort and run outputs (default: OUT/work)")
    ap.add_argument("--scans", type=int, default=18)
    ap.add_argument("--repeats", type=int, default=20, help="timed runs per network and setting")
    ap.add_argument("--threads", type=int, default=0, help="CPU provider threads (0: all cores)")
    a = ap.parse_args()
    if a.scans < 1 or a.repeats < 1 or a.threads < 0:
        raise SystemExit("--scans and --repeats must be >= 1, --threads >= 0")
    threads = a.threads or len(os.sched_getaffinity(0))
    a.out.mkdir(parents=True, exist_ok=True)
    work = a.work or a.out / "work"
    model_dir = ROOT / "models"
    cuda, ort_note = cuda_available(model_dir)
    info = {"machine": f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
                       f"Python {platform.python_version()}", "gpu": gpu_name(), "ort": ort_note, "threads": threads}
    print(f"{info['gpu']}; {ort_note}", file=sys.stderr)
    t = time.perf_counter()
    cohort = work / "cohort"
    cohort.mkdir(parents=True, exist_ok=True)
    source = cohort / "manifest.csv" if (cohort / "manifest.csv").is_file() else make_cohort(a.scans, cohort)
    manifest, images = first_scans(source, a.scans, work / f"first_{a.scans}.csv")
    print(f"cohort: {time.perf_counter() - t:.1f} s", file=sys.stderr)
    first = images[0]
    nets = time_networks(network_inputs(first, model_dir), model_dir, threads, a.repeats, cuda)
    print("networks done", file=sys.stderr)
    e2e = end_to_end(manifest.resolve(), first, work, threads, cuda)
    report = markdown(info, nets, e2e)
    (a.out / "gpu_check.md").write_text(report)
    (a.out / "gpu_check.json").write_text(json.dumps({"info": info, "networks": nets, "end_to_end": e2e}, indent=1))
    print(report)


if __name__ == "__main__":
    main()
