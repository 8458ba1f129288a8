"""Benchmark batch throughput: local pool vs Dask local cluster, single scan end to end, peak RSS per worker.

    .venv/bin/python scripts/bench_batch.py [--scans 18] [--workers 2] [--repeats 3] [--single-repeats 5]
                                            [--provider cpu|cuda|auto] [--cohort DIR] [--keep DIR]

Without --cohort, a synthetic cohort of ceil(scans / 3) patients x 3 visits is generated
(onfh-synth, default acquisition, seed 2024) and its first --scans images are used (a manifest).
Each batch runs ``onfh-infer`` in a new process (its defaults: mirroring on since 2026-12-04, overlay on;
``provider=cpu``)
into a fresh out_dir: ``executor=local workers=N`` and ``executor=dask workers=N``; scans per minute =
scans / wall time of the whole command (start, imports, cluster start, all scans, run records), median of
--repeats; the runs alternate (pool, Dask, pool, Dask, ...) and the Dask/pool ratio is also given for each
back-to-back pair, so that a shared machine's drift does not pass for a difference. The two runs'
measurements.csv must be byte-identical (checked). Single scan: ``onfh-infer`` on one scan in a new process,
median of --single-repeats. Peak RSS: every process of the run is sampled every 0.1 s (psutil); the largest
resident size of any worker process and of the main process.
Prints a markdown table with the machine (CPU, cores, memory, load average before the run) and versions,
then the median seconds per scan of each stage (``run_manifest.json`` ``stage_seconds``) in the last
local-pool run and the last single-scan run, and the single scan's time outside the pipeline (start,
imports, model load, run records). Machine-independent measures from the same run: the CPU seconds of one
fine-network pass (96^3, one thread) and the CPU seconds per scan of the local pool divided by it (fine-pass
equivalents, FPE); the single scan against a bare ``python -c "import onnxruntime"`` process.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EXECUTORS = ("local", "dask")


def machine() -> str:
    """CPU model, usable cores, memory, OS, Python and library versions, load average now."""
    from importlib import metadata

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem = ""
    try:
        import psutil

        mem = f", {psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
    except ImportError:
        pass

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "-"

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{cpu}, {cores} usable cores{mem}; {platform.system()} {platform.release()}; Python "
            f"{platform.python_version()}, onnxruntime {version('onnxruntime')}, dask {version('dask')}; "
            f"load average before the run {load}")


def make_cohort(n_scans: int, dest: Path) -> Path:
    """A synthetic cohort with at least ``n_scans`` images; returns its manifest."""
    n_patients = max(1, math.ceil(n_scans / 3))
    # python -m rather than the onfh-synth script: also runs from a source tree on PYTHONPATH (scripts/gpu_check.py)
    cmd = [sys.executable, "-m", "onfh_seg.cli.synth", f"out_dir={dest}", f"n_patients={n_patients}", "seed=2024",
           "months=[0,3,16]"]
    res = subprocess.run(cmd, cwd=dest.parent, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"onfh-synth failed: {res.stderr.strip().splitlines()[-1:]}")
    return dest / "manifest.csv"


def first_scans(manifest: Path, n: int, dest: Path) -> tuple[Path, list[Path]]:
    """A manifest of the first ``n`` rows of ``manifest`` (absolute image paths) and those images."""
    with open(manifest, newline="") as fh:
        reader = csv.DictReader(fh)
        columns, rows = list(reader.fieldnames or []), list(reader)[:n]
    if len(rows) < n:
        raise SystemExit(f"{manifest} has {len(rows)} scans, fewer than --scans {n}")
    for r in rows:
        r["image"] = str((manifest.parent / r["image"]).resolve())
        if r.get("labels"):
            r["labels"] = str((manifest.parent / r["labels"]).resolve())
    with open(dest, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return dest, [Path(r["image"]) for r in rows]


class RssSampler:
    """Peak resident memory of a process and each of its descendants, sampled every ``interval_s``."""

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.peaks: dict[int, int] = {}
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.root] + self.root.children(recursive=True)
            except psutil.Error:
                break
            for p in procs:
                try:
                    self.peaks[p.pid] = max(self.peaks.get(p.pid, 0), p.memory_info().rss)
                except psutil.Error:
                    pass
            time.sleep(self.interval_s)

    def stop(self) -> tuple[int, int]:
        """(peak RSS of the main process, largest peak RSS of any other process) in bytes."""
        self._stop.set()
        self._thread.join()
        main = self.peaks.get(self.root.pid, 0)
        others = [v for k, v in self.peaks.items() if k != self.root.pid]
        return main, max(others, default=0)


def children_cpu_s() -> float:
    """CPU seconds (user + system) of all finished child processes of this one so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_infer(args: list[str], cwd: Path) -> tuple[float, int, int, float]:
    """Run onfh-infer; (wall seconds, main peak RSS, largest worker peak RSS, CPU seconds of the whole
    process tree). Exits on failure."""
    t0, c0 = time.perf_counter(), children_cpu_s()
    proc = subprocess.Popen([str(BIN / "onfh-infer"), *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    sampler = RssSampler(proc.pid)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    main, worker = sampler.stop()
    if proc.returncode != 0 or "failed 0" not in out:
        raise SystemExit(f"onfh-infer {' '.join(args)} failed:\n{out[-1000:]}\n{err[-2000:]}")
    return wall, main, worker, children_cpu_s() - c0


FINE_PASS = """
import json, sys, time
import numpy as np, onnxruntime as ort
so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1
meta = json.load(open(sys.argv[1] + "/model.json"))
sess = ort.InferenceSession(sys.argv[1] + "/" + meta["fine"]["file"], so, providers=["CPUExecutionProvider"])
x = np.random.default_rng(0).random((1, 1, 96, 96, 96), dtype=np.float32)
sess.run(None, {"image": x})
out = []
for _ in range(5):
    t = time.process_time(); sess.run(None, {"image": x}); out.append(time.process_time() - t)
print(sorted(out)[2])
"""


def fine_pass_cpu_s(model_dir: Path) -> float:
    """CPU seconds of one 96^3 pass of the fine network on one ONNX Runtime thread (median of 5 after a warm-up)."""
    res = subprocess.run([sys.executable, "-c", FINE_PASS, str(model_dir)], capture_output=True, text=True, check=True)
    return float(res.stdout.strip().splitlines()[-1])


def bare_import_s(repeats: int = 5) -> float:
    """Wall seconds of a new ``python -c "import onnxruntime"`` process (median): the floor of any single scan."""
    walls = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import onnxruntime"], check=True)
        walls.append(time.perf_counter() - t)
    return statistics.median(walls)


def mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", type=int, default=18)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="batch runs per executor (median)")
    ap.add_argument("--single-repeats", type=int, default=5, help="single-scan runs (median)")
    ap.add_argument("--provider", default="cpu", choices=("cpu", "cuda", "auto"), help="ONNX Runtime provider")
    ap.add_argument("--cohort", type=Path, help="an existing cohort manifest (default: generate one)")
    ap.add_argument("--keep", type=Path, help="keep the work folder here (default: a temporary folder)")
    ap.add_argument("--model-dir", type=Path, default=ROOT / "models", help="model whose fine pass is timed")
    a = ap.parse_args()
    if a.scans < 1 or a.workers < 1 or a.repeats < 1 or a.single_repeats < 1:
        raise SystemExit("--scans, --workers, --repeats and --single-repeats must be >= 1")

    desc = machine()
    # as an installed package has (pip compiles it): with PYTHONDONTWRITEBYTECODE set, each process would
    # compile onfh_seg again (~0.3 s); ``make bytecode`` does the same
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "src")], check=True)
    work = Path(tempfile.mkdtemp(prefix="bench_batch_")) if a.keep is None else a.keep.resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        source = a.cohort.resolve() if a.cohort else make_cohort(a.scans, work / "cohort")
        print(f"cohort: {source} ({time.perf_counter() - t:.1f} s)", file=sys.stderr)
        manifest, images = first_scans(source, a.scans, work / "bench_manifest.csv")
        common = [f"input={manifest}", f"provider={a.provider}", f"workers={a.workers}"]
        stages: dict[str, dict] = {}

        rows = []
        csvs: dict[str, bytes] = {}
        runs: dict[str, dict[str, list]] = {e: {"wall": [], "main": [], "worker": [], "cpu": []} for e in EXECUTORS}
        fine_cpu = [fine_pass_cpu_s(a.model_dir)]  # measured in the same run, between the batches too
        for i in range(a.repeats):  # interleaved, so that drift of a shared machine hits both alike
            for executor in EXECUTORS:
                out = work / f"out_{executor}_{i}"
                shutil.rmtree(out, ignore_errors=True)
                wall, main_rss, worker_rss, cpu = run_infer([*common, f"out_dir={out}", f"executor={executor}"], work)
                for key, value in zip(("wall", "main", "worker", "cpu"), (wall, main_rss, worker_rss, cpu)):
                    runs[executor][key].append(value)
                csvs.setdefault(executor, (out / "measurements.csv").read_bytes())
                if executor == "local":
                    stages["batch"] = run_record(out)
                print(f"{executor} run {i + 1}: {wall:.1f} s, {cpu:.1f} CPU-s", file=sys.stderr)
            fine_cpu.append(fine_pass_cpu_s(a.model_dir))
        for executor in EXECUTORS:
            walls = runs[executor]["wall"]
            wall = statistics.median(walls)
            rows.append((f"batch, {executor} (`executor={executor} workers={a.workers}`)",
                         f"{wall:.1f} s ({min(walls):.1f}-{max(walls):.1f})", f"{a.scans / wall * 60:.1f}",
                         f"{wall / a.scans:.2f} s", mib(max(runs[executor]["main"])), mib(max(runs[executor]["worker"]))))
        # Dask throughput / pool throughput of each back-to-back pair
        pair_ratios = [p / d for p, d in zip(runs["local"]["wall"], runs["dask"]["wall"])]
        identical = csvs["local"] == csvs["dask"]

        singles, single_rss = [], []
        for i in range(a.single_repeats):
            out = work / f"single_{i}"
            shutil.rmtree(out, ignore_errors=True)
            wall, main_rss, _, _ = run_infer([f"input={images[0]}", f"out_dir={out}", f"provider={a.provider}"], work)
            singles.append(wall)
            stages["single"] = run_record(out)
            stages["single"]["wall_s"] = wall
            single_rss.append(main_rss)
        s = statistics.median(singles)
        bare = bare_import_s()
        rows.append(("single scan, new process (`onfh-infer input=scan.nii.gz`)",
                     f"{s:.2f} s ({min(singles):.2f}-{max(singles):.2f})", f"{60 / s:.1f}", f"{s:.2f} s",
                     mib(max(single_rss)), "-"))
    finally:
        if a.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    local_rate, dask_rate = float(rows[0][2]), float(rows[1][2])
    print(f"\nMachine: {desc}\n")
    print(f"{a.scans} scans, onfh-infer defaults, provider={a.provider}; batch: median of {a.repeats}, single scan: "
          f"median of {a.single_repeats} (min-max in brackets)\n")
    print("| run | wall time | scans per minute | wall per scan | peak RSS main | peak RSS per worker |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print(f"\nDask / local pool throughput: {dask_rate / local_rate * 100:.1f}% (medians); per back-to-back pair "
          f"{', '.join(f'{r * 100:.1f}%' for r in pair_ratios)}, median {statistics.median(pair_ratios) * 100:.1f}%; "
          f"measurements.csv identical: {'yes' if identical else 'NO'}")
    fp = statistics.median(fine_cpu)
    cpu_scan = statistics.median(runs["local"]["cpu"]) / a.scans
    print(f"\nOne fine pass (96^3, one ONNX Runtime thread): {fp:.3f} CPU-s (median of {len(fine_cpu)} measurements "
          f"in this run). Local pool: {cpu_scan:.2f} CPU-s per scan = **{cpu_scan / fp:.1f} fine-pass equivalents (FPE)** "
          f"per scan. Single scan: {s:.2f} s = {s / bare:.1f}x a bare `python -c \"import onnxruntime\"` ({bare:.2f} s).")
    print_stages(stages)
    if not identical:
        raise SystemExit(1)


def run_record(out: Path) -> dict:
    """``stage_seconds``, ``provider_used`` and ``threads_per_worker`` of a run's ``run_manifest.json``."""
    import json

    record = json.loads((out / "run_manifest.json").read_text())
    return {k: record.get(k) for k in ("stage_seconds", "provider_used", "threads_per_worker")}


STAGES = ("load", "engine.normalise_s", "engine.resample_s", "engine.networks_s", "engine.coarse_s", "engine.search_s",
          "engine.fine_s",
          "engine.post_s", "segment", "measure", "write", "total")


def print_stages(stages: dict[str, dict]) -> None:
    """Median seconds per scan of each stage, batch (per worker) and single scan."""
    print("\nMedian seconds per scan by stage (run_manifest.json stage_seconds; normalise, resample and networks "
          "are parts of coarse + fine; segment = coarse + fine + post):\n")
    names = [k for k in ("batch", "single") if k in stages]
    print("| stage | " + " | ".join(f"{n} ({stages[n]['provider_used']}, {stages[n]['threads_per_worker']} thread(s))"
                                       for n in names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for key in STAGES:
        cells = [f"{stages[n]['stage_seconds'][key]['median']:.3f}" if key in (stages[n]["stage_seconds"] or {}) else "-"
                 for n in names]
        print(f"| {key} | " + " | ".join(cells) + " |")
    if "single" in stages and "total" in (stages["single"]["stage_seconds"] or {}):
        single = stages["single"]
        outside = single["wall_s"] - single["stage_seconds"]["total"]["median"]
        print(f"\nSingle scan (last run): {single['wall_s']:.2f} s wall, of which {outside:.2f} s outside the "
              "pipeline (interpreter start, imports, model load, run records).")


if __name__ == "__main__":
    main()
