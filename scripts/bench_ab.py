"""Per-scan cost of this checkout against another one, alternating in one run (issue 28).

    .venv/bin/python scripts/bench_ab.py --base-src OTHER_CHECKOUT/src [--scans 18] [--workers 2]
                                         [--repeats 3] [--single-repeats 3] [--cohort manifest.csv]
                                         [--base-model-dir DIR] [--model-dir DIR]

Two models on the same code: ``--base-src src --base-model-dir models --model-dir <export of a candidate>
--outputs-may-differ`` (each version's ``onfh-infer`` gets its ``model_dir=``; FPE stays in passes of the base's
fine network, the one measured each round, and the candidate's own pass is printed beside it).

Absolute times on a shared machine drift by more than the differences measured here, so both versions run in
the same session, alternating (base, this, base, this, ...), and the results are ratios of back-to-back runs.
Each run is a new ``onfh-infer`` process of the same Python environment with ``PYTHONPATH`` set to the
version's ``src`` (the helpers of ``scripts/bench_batch.py`` run it and sample every process's memory):

* batch: ``executor=local workers=N provider=cpu`` on the first ``--scans`` scans (default: the cohort
  bench_batch.py generates), CPU seconds of the whole process tree, wall time, largest peak RSS of a worker;
  the two versions' ``measurements.csv`` must be byte-identical (checked; ``--outputs-may-differ`` only reports
  it, for versions whose outputs differ on purpose, e.g. another default);
* single scan: one scan in a new process, wall time, against a bare ``python -c "import onnxruntime"`` timed
  right after it;
* one fine-network pass (96^3, one thread), measured once per round: CPU-s per scan / that = fine-pass
  equivalents (FPE).

Prints a markdown table of medians and per-round ratios (base / this: > 1 means this checkout is cheaper).
``scripts/bench_ab.sh`` alternates batch runs of a commit and the working tree only (wall and CPU time,
all outputs compared); this adds the single scan, FPE and memory, for two checkouts already on disk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_batch import ROOT, bare_import_s, fine_pass_cpu_s, first_scans, machine, make_cohort, mib, run_infer  # noqa: E402


def run_version(src: Path, args: list[str], cwd: Path) -> tuple[float, int, int, float]:
    """``run_infer`` with ``src`` first on the path (wall s, main RSS, worker RSS, CPU-s)."""
    os.environ["PYTHONPATH"] = str(src)
    return run_infer(args, cwd)


def median_row(name: str, runs: dict[str, list], scans: int, fine: float) -> str:
    cpu = statistics.median(runs["cpu"]) / scans
    return (f"| {name} | {statistics.median(runs['wall']):.1f} s | {cpu:.2f} | {cpu / fine:.1f} | "
            f"{statistics.median(runs['single']):.2f} s | {statistics.median(runs['single_ratio']):.1f}x | "
            f"{mib(max(runs['worker']))} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-src", type=Path, required=True, help="the other version's src folder")
    ap.add_argument("--scans", type=int, default=18)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--single-repeats", type=int, default=3, help="single-scan runs per version and round")
    ap.add_argument("--cohort", type=Path, help="an existing cohort manifest (default: generate one)")
    ap.add_argument("--keep", type=Path, help="keep the work folder here (default: a temporary folder)")
    ap.add_argument("--base-model-dir", type=Path, help="the base version's model_dir (default: its own default)")
    ap.add_argument("--model-dir", type=Path, help="this version's model_dir (default: its own default)")
    ap.add_argument("--outputs-may-differ", action="store_true",
                    help="report, do not fail on, different measurements.csv (outputs changed on purpose)")
    a = ap.parse_args()
    versions = {"base": a.base_src.resolve(), "this": (ROOT / "src").resolve()}
    desc = machine()
    for src in versions.values():  # as an installed package has
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(src)], check=True)
    work = Path(tempfile.mkdtemp(prefix="bench_ab_")) if a.keep is None else a.keep.resolve()
    work.mkdir(parents=True, exist_ok=True)
    runs = {v: {k: [] for k in ("wall", "cpu", "worker", "single", "single_ratio")} for v in versions}
    fine, fine_this, csvs = [], [], {}
    model_args = {"base": [f"model_dir={a.base_model_dir.resolve()}"] if a.base_model_dir else [],
                  "this": [f"model_dir={a.model_dir.resolve()}"] if a.model_dir else []}
    try:
        os.environ["PYTHONPATH"] = str(versions["this"])
        source = a.cohort.resolve() if a.cohort else make_cohort(a.scans, work / "cohort")
        manifest, images = first_scans(source, a.scans, work / "bench_manifest.csv")
        for i in range(a.repeats):
            fine.append(fine_pass_cpu_s((a.base_model_dir or ROOT / "models").resolve()))
            if a.model_dir:
                fine_this.append(fine_pass_cpu_s(a.model_dir.resolve()))
            for name, src in versions.items():
                out = work / f"out_{name}_{i}"
                shutil.rmtree(out, ignore_errors=True)
                wall, _, worker, cpu = run_version(src, [f"input={manifest}", f"out_dir={out}", "provider=cpu",
                                                         f"workers={a.workers}", *model_args[name]], work)
                csvs.setdefault(name, (out / "measurements.csv").read_bytes())
                runs[name]["wall"].append(wall)
                runs[name]["cpu"].append(cpu)
                runs[name]["worker"].append(worker)
                for j in range(a.single_repeats):
                    single = work / f"single_{name}_{i}_{j}"
                    s, _, _, _ = run_version(src, [f"input={images[0]}", f"out_dir={single}", "provider=cpu",
                                                   *model_args[name]], work)
                    runs[name]["single"].append(s)
                    runs[name]["single_ratio"].append(s / bare_import_s(1))
                print(f"round {i + 1} {name}: batch {wall:.1f} s, {cpu:.1f} CPU-s; single {s:.2f} s", file=sys.stderr)
    finally:
        if a.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    fp = statistics.median(fine)
    print(f"\nMachine: {desc}\n")
    print(f"{a.scans} scans, `workers={a.workers} provider=cpu`, "
          f"{a.repeats} rounds alternating base and this; each version's own defaults otherwise; medians. "
          f"One fine pass: {fp:.3f} CPU-s"
          + (f" (this version's fine network: {statistics.median(fine_this):.3f})" if fine_this else "") + ".\n")
    print("| version | batch wall | CPU-s per scan | FPE per scan | single scan | single / bare import | "
          "peak RSS per worker |")
    print("|---|---|---|---|---|---|---|")
    for name in versions:
        print(median_row(name, runs[name], a.scans, fp))
    wall_r = [b / t for b, t in zip(runs["base"]["wall"], runs["this"]["wall"])]
    cpu_r = [b / t for b, t in zip(runs["base"]["cpu"], runs["this"]["cpu"])]
    print(f"\nBatch throughput this / base per round: {', '.join(f'{r:.2f}' for r in wall_r)} "
          f"(median {statistics.median(wall_r):.2f}x); CPU-s base / this: {', '.join(f'{r:.2f}' for r in cpu_r)} "
          f"(median {statistics.median(cpu_r):.2f}x). measurements.csv identical: "
          f"{'yes' if csvs['base'] == csvs['this'] else 'NO'}")
    if csvs["base"] != csvs["this"] and not a.outputs_may_differ:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
