"""Issue 23 item 1: one training call on a lent GPU machine, and the pieces that carry things there and back.

    python3 scripts/gpu_train.py run --out DIR [--exp fine_mottle3] [--budget-s 510] [--probe-s 45] [--t0 UNIX]
                                     [--workers N] [--ckpt-path CKPT] [--trainer gpu] [-- key=value ...]
    python3 scripts/gpu_train.py split FILE FOLDER --piece-mib N      # FOLDER/FILE.NN + FILE.sha256
    python3 scripts/gpu_train.py join FOLDER NAME DEST [--sha-folder F]
    python3 scripts/gpu_train.py unpack FOLDER DEST                   # a run's pieces from DIR, here

``run`` (what scripts/gpu_train.sh starts on the device, from the repository root with the carried packages
and ``src`` on PYTHONPATH):
1. a probe: ``onfh-train experiment=<exp> trainer=<trainer>`` for ``--probe-s`` seconds of training (one
   validation crop rendered, no validation, no checkpoint) that prints steps/s, samples/s and the share of
   time spent waiting for data; nvidia-smi is sampled every 2 s meanwhile (GPU utilisation);
2. the run: the same command with ``trainer.max_steps`` sized from the probe's rate to end near the budget
   (the learning-rate schedule then decays within the call), validation every ``--val-every-s`` seconds' worth
   of steps, and ``WallClockStop`` at ``--t0 + --budget-s`` (stops cleanly; the checkpoint is written after);
   one epoch spans the whole call (``data.samples_per_epoch``; validation on a step interval). Written when the
   persistent data workers repeated the first epoch's samples; ``model.data.EpochSampler`` has fixed that since;
3. the run folder (checkpoints/last.ckpt and best.ckpt with their tensors on the CPU, logs/, result.json,
   gpu_train.json) as ``result.tar`` in pieces of at most 15 MiB with ``result.tar.sha256``, plus
   metrics.csv, gpu_util.csv and gpu_train.log, in ``--out`` (a device call brings back 8 files of 16 MiB).
``unpack`` joins those pieces here, checks the checksum and unpacks the run folder; resume it with
``onfh-train experiment=<exp> ckpt_path=DEST/checkpoints/last.ckpt trainer.max_steps=<more than its step>``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from onfh_seg.io.files import atomic_write_text  # noqa: E402  (src on the path first: no install there)
from onfh_seg.io.pieces import join_pieces, split_file  # noqa: E402

MIB = 1 << 20
PIECE_MIB = 15  # files come back at most 16 MiB each
MAX_PIECES = 4  # 8 files come back: the pieces, the checksum, metrics.csv, gpu_util.csv, gpu_train.log


class GpuSampler(threading.Thread):
    """Samples nvidia-smi (GPU utilisation %, memory MiB) every ``every_s`` seconds into rows tagged with the
    current phase; records nothing where nvidia-smi is absent."""

    def __init__(self, every_s: float = 2.0):
        super().__init__(daemon=True)
        self.every_s, self.phase, self.rows, self.note = every_s, "start", [], ""
        self._stop = threading.Event()

    def run(self) -> None:
        query = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]
        while not self._stop.is_set():
            try:
                out = subprocess.run(query, capture_output=True, text=True, timeout=10, check=True).stdout
                util, mem = (float(v) for v in out.splitlines()[0].split(",")[:2])
                self.rows.append((round(time.time(), 1), self.phase, util, mem))
            except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
                self.note = f"nvidia-smi not read: {type(exc).__name__}"
                return
            self._stop.wait(self.every_s)

    def stop(self) -> None:
        self._stop.set()

    def summary(self, phase: str) -> dict:
        """Mean and median GPU utilisation and the largest memory use during ``phase``, from its first busy
        sample on (the run's setup before it leaves the GPU idle)."""
        rows = [r for r in self.rows if r[1] == phase]
        busy = next((i for i, r in enumerate(rows) if r[2] > 0), len(rows))
        util = sorted(r[2] for r in rows[busy:])
        mem = [r[3] for r in rows[busy:]]
        if not util:
            return {"samples": 0, "note": self.note or "no samples"}
        return {"samples": len(util), "util_mean_pct": round(sum(util) / len(util), 1),
                "util_median_pct": util[len(util) // 2], "mem_max_mib": max(mem)}

    def write(self, path: Path) -> None:
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["unix_time", "phase", "gpu_util_pct", "gpu_mem_mib"])
            w.writerows(self.rows)


def common_overrides(a: argparse.Namespace, work: Path) -> list[str]:
    """Overrides of both runs: the experiment on this machine's trainer, the carried tissue crops, its cores."""
    ov = [f"experiment={a.exp}", f"trainer={a.trainer}", f"data.randomise.out_dir={work / 'dr'}",
          f"data.randomise.workers={a.workers + 1}", f"data.num_workers={a.workers}",
          "++trainer.enable_progress_bar=false"]
    if a.trainer == "gpu":
        ov += ["trainer.deterministic=false", "++trainer.benchmark=true"]  # cuDNN picks the fastest 3D kernels
    if a.threads:
        ov.append(f"threads={a.threads}")
    if a.ckpt_path:
        ov += [f"ckpt_path={a.ckpt_path}", "init_from=null"]
    return ov + list(a.overrides)


def callback(name: str, target: str, **kwargs: object) -> list[str]:
    """``+callbacks.<name>.*`` overrides adding a callback entry."""
    return [f"+callbacks.{name}._target_={target}"] + [f"+callbacks.{name}.{k}={v}" for k, v in kwargs.items()]


def run_train(overrides: list[str], log: Path, timeout_s: float) -> tuple[int, float]:
    """Run ``onfh-train`` with ``overrides`` (output appended to ``log``) in a process group of its own, killed
    with its data workers after ``timeout_s`` (a group, not a session: the device ends it with the call);
    (exit code, 124 when killed; seconds)."""
    t = time.time()
    with open(log, "a") as fh:
        fh.write(f"\n$ onfh-train {' '.join(overrides)}\n")
        fh.flush()
        proc = subprocess.Popen([sys.executable, "-m", "onfh_seg.cli.train", *overrides], stdout=fh,
                                stderr=subprocess.STDOUT, process_group=0)
        try:
            rc = proc.wait(timeout=max(timeout_s, 1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = 124
    return rc, time.time() - t


def plan_steps(rate: float, seconds_left: float, setup_s: float, start_step: int, val_every_s: float,
               safety: float = 0.95) -> tuple[int, int]:
    """(max_steps, steps between validations) for a run that trains at ``rate`` steps/s from ``start_step``
    for what is left after its setup."""
    steps = max(10, int(rate * max(seconds_left - setup_s, 0.0) * safety))
    return start_step + steps, max(10, min(steps, int(rate * val_every_s)))


def checkpoint_step(path: str | None) -> int:
    """The global step a checkpoint was saved at (0 for none)."""
    if not path:
        return 0
    # function-level import: torch only where a checkpoint is read (split/join/unpack do without)
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=False).get("global_step", 0))


def cpu_copy(src: Path, dest: Path) -> None:
    """``src`` checkpoint with every tensor on the CPU (it then loads on a machine without a GPU too)."""
    # function-level import: torch only where a checkpoint is read
    import torch

    torch.save(torch.load(src, map_location="cpu", weights_only=False), dest)


def run_folder_files(run: Path) -> list[Path]:
    """What of a run folder comes back: checkpoints, CSV logs, the hydra config and the run records."""
    return [p for p in sorted(run.rglob("*")) if p.is_file() and (
        p.suffix in (".csv", ".yaml", ".json") or p.name in ("last.ckpt", "best.ckpt"))]


def pack_run(run: Path, out: Path, stage: Path) -> list[Path]:
    """``run`` as ``out/result.tar.NN`` + ``result.tar.sha256`` (checkpoints moved to the CPU, result.json's
    paths made relative to the run folder); best.ckpt is left out if the pieces would not fit."""
    files = run_folder_files(run)
    for drop_best in (False, True):
        tar_path = stage / "result.tar"
        with tarfile.open(tar_path, "w") as tar:
            for p in files:
                rel = p.relative_to(run)
                if p.suffix == ".ckpt":
                    if drop_best and p.name == "best.ckpt":
                        continue
                    cpu = stage / p.name
                    cpu_copy(p, cpu)
                    tar.add(cpu, arcname=str(rel))
                elif p.name == "result.json":
                    rec = json.loads(p.read_text())
                    for k in ("best", "last"):
                        if rec.get(k):
                            rec[k] = os.path.relpath(rec[k], run) if os.path.isabs(rec[k]) else rec[k]
                    (stage / "result.json").write_text(json.dumps(rec, indent=1))
                    tar.add(stage / "result.json", arcname=str(rel))
                else:
                    tar.add(p, arcname=str(rel))
        if tar_path.stat().st_size <= MAX_PIECES * PIECE_MIB * MIB:
            break
        print("result.tar too large for the files a call brings back: best.ckpt left out", flush=True)
    return split_file(tar_path, out, PIECE_MIB * MIB)


def probe_overrides(a: argparse.Namespace, work: Path) -> list[str]:
    """The probe: ``--probe-s`` seconds of training, one validation crop rendered and none run, no checkpoint
    callbacks or logger; its rate to ``work/probe_rate.json``."""
    ov = common_overrides(a, work) + [
        f"run_dir={work / 'probe'}", "logger=none", "callbacks.best_checkpoint=null",
        "callbacks.last_checkpoint=null", "data.randomise.val_samples=1",
        "++trainer.limit_val_batches=0", "trainer.max_steps=1000000", "data.samples_per_epoch=2000000"]
    ov += callback("budget", "onfh_seg.model.callbacks.WallClockStop", seconds=a.probe_s)
    return ov + callback("rate", "onfh_seg.model.callbacks.StepRate", every_s=10, warmup_steps=a.warmup_steps,
                         out=work / "probe_rate.json")


def probe(a: argparse.Namespace, work: Path, log: Path, sampler: GpuSampler, deadline: float) -> dict:
    """The probe run; its rate summary (StepRate) with the probe's wall seconds."""
    rate_json = work / "probe_rate.json"
    rate_json.unlink(missing_ok=True)
    ov = probe_overrides(a, work)
    sampler.phase = "probe"
    rc, took = run_train(ov, log, min(deadline - time.time(), a.probe_timeout_s))
    res = json.loads(rate_json.read_text()) if rate_json.is_file() else {}
    return {**res, "rc": rc, "wall_s": round(took, 1)}


def run_overrides(a: argparse.Namespace, work: Path, start: int, max_steps: int, val_every: int, batch: int,
                  deadline: float) -> list[str]:
    """The training run: ``max_steps`` and validation every ``val_every`` steps (also last.ckpt then), one
    epoch for the whole call, ``WallClockStop`` at ``deadline``; its rate to ``work/run/rate.json``."""
    ov = common_overrides(a, work) + [
        f"run_dir={work / 'run'}", f"trainer.max_steps={max_steps}", f"trainer.val_check_interval={val_every}",
        "trainer.check_val_every_n_epoch=1", f"data.samples_per_epoch={batch * (max_steps - start)}",
        f"++callbacks.last_checkpoint.every_n_train_steps={val_every}"]
    if a.ckpt_path:
        ov.append(f"seed={a.seed + start}")  # new training samples, not the first run's again
    ov += callback("budget", "onfh_seg.model.callbacks.WallClockStop", deadline=round(deadline, 1))
    return ov + callback("rate", "onfh_seg.model.callbacks.StepRate", every_s=30, warmup_steps=a.warmup_steps,
                         out=work / "run" / "rate.json")


def main_run(a: argparse.Namespace, work: Path, log: Path, sampler: GpuSampler, deadline: float,
             probed: dict) -> dict:
    """The training run sized from the probe; its plan and rate summary."""
    start = checkpoint_step(a.ckpt_path)
    rate = float(probed.get("steps_per_s") or 0.0) or a.fallback_rate
    setup_s = max(float(probed.get("wall_s", 0.0)) - a.probe_s, 0.0) + a.val_render_s
    max_steps, val_every = plan_steps(rate, deadline - time.time(), setup_s, start, a.val_every_s)
    batch = int(probed.get("samples", 0) / max(probed.get("steps", 0), 1)) or 2
    rate_json = work / "run" / "rate.json"
    ov = run_overrides(a, work, start, max_steps, val_every, batch, deadline)
    plan = {"start_step": start, "max_steps": max_steps, "val_every_steps": val_every,
            "rate_planned": rate, "setup_s_planned": round(setup_s, 1)}
    print(f"plan: {json.dumps(plan)}", flush=True)
    sampler.phase = "train"
    rc, took = run_train(ov, log, deadline - time.time() + a.grace_s)
    res = json.loads(rate_json.read_text()) if rate_json.is_file() else {}
    return {"plan": plan, **res, "rc": rc, "wall_s": round(took, 1)}


def cmd_run(a: argparse.Namespace) -> int:
    t0 = a.t0 or time.time()
    deadline = t0 + a.budget_s
    out, work = Path(a.out), Path(a.work)
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "probe", ignore_errors=True)
    shutil.rmtree(work / "run", ignore_errors=True)
    log = out / "gpu_train.log"
    sampler = GpuSampler()
    sampler.start()
    summary: dict = {"exp": a.exp, "trainer": a.trainer, "workers": a.workers, "budget_s": a.budget_s}
    summary["probe"] = probed = probe(a, work, log, sampler, deadline)
    summary["probe"]["gpu"] = sampler.summary("probe")
    print(f"probe: {json.dumps(summary['probe'])}", flush=True)
    if probed["rc"] != 0 or not probed.get("steps"):
        print(f"error: the probe failed (exit {probed['rc']}); see {log}", file=sys.stderr)
        return 1
    summary["run"] = main_run(a, work, log, sampler, deadline, probed)
    sampler.phase = "pack"
    summary["run"]["gpu"] = sampler.summary("train")
    sampler.stop()
    print(f"run: {json.dumps(summary['run'])}", flush=True)
    run = work / "run"
    atomic_write_text(run / "gpu_train.json", json.dumps(summary, indent=1))
    sampler.write(out / "gpu_util.csv")
    metrics = sorted(run.glob("logs/*/metrics.csv"))
    if metrics:
        shutil.copy2(metrics[-1], out / "metrics.csv")
    if not (run / "checkpoints" / "last.ckpt").is_file():
        print(f"error: the run wrote no checkpoint (exit {summary['run']['rc']}); see {log}", file=sys.stderr)
        return 1
    stage = work / "pack"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    pieces = pack_run(run, out, stage)
    print(f"packed {len(pieces)} pieces of result.tar in {out} ({time.time() - t0:.0f} s after start)", flush=True)
    return 0 if summary["run"]["rc"] == 0 else 1


def cmd_unpack(a: argparse.Namespace) -> int:
    dest = Path(a.dest)
    tar_path = dest.parent / f".{dest.name}.result.tar"
    join_pieces(a.folder, "result.tar", tar_path)
    try:
        with tarfile.open(tar_path) as tar:
            tar.extractall(dest, filter="data")
    finally:
        tar_path.unlink()
    last = dest / "checkpoints" / "last.ckpt"
    print(f"unpacked {dest}\nresume: onfh-train experiment=<exp> ckpt_path={last} trainer.max_steps=<more>")
    return 0


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="probe, train to the budget, pack the run folder (on the device)")
    r.add_argument("--out", required=True, help="where the pieces go ($OUT on the device)")
    r.add_argument("--work", default="/tmp/onfh_train", help="folder with dr/ (the carried tissue crops)")
    r.add_argument("--exp", default="fine_mottle3")
    r.add_argument("--trainer", default="gpu", help="configs/trainer group (cpu to try it here)")
    r.add_argument("--t0", type=float, default=0.0, help="when the call started (unix seconds; default: now)")
    r.add_argument("--budget-s", type=float, default=510.0, help="training stops this long after --t0")
    r.add_argument("--grace-s", type=float, default=45.0, help="after the budget, the run is killed")
    r.add_argument("--probe-s", type=float, default=45.0, help="seconds of training in the probe")
    r.add_argument("--probe-timeout-s", type=float, default=240.0, help="the probe is killed after this")
    r.add_argument("--warmup-steps", type=int, default=20, help="steps left out of the rates")
    r.add_argument("--val-every-s", type=float, default=90.0, help="validate every this many seconds of steps")
    r.add_argument("--val-render-s", type=float, default=40.0, help="estimated seconds to render the val crops")
    r.add_argument("--fallback-rate", type=float, default=1.0, help="steps/s when the probe measured none")
    r.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1), help="data-loader workers")
    r.add_argument("--threads", type=int, default=0, help="torch threads of the training process (0: default)")
    r.add_argument("--ckpt-path", default=None, help="resume this checkpoint (optimizer and step)")
    r.add_argument("--seed", type=int, default=42, help="the config's seed (a resumed run uses seed + step)")
    r.add_argument("overrides", nargs="*", help="more onfh-train overrides (after --)")
    s = sub.add_parser("split", help="cut a file into pieces with a checksum")
    s.add_argument("file")
    s.add_argument("folder")
    s.add_argument("--piece-mib", type=int, required=True)
    j = sub.add_parser("join", help="join pieces and check the checksum")
    j.add_argument("folder")
    j.add_argument("name")
    j.add_argument("dest")
    j.add_argument("--sha-folder", default=None)
    u = sub.add_parser("unpack", help="join a run's result.tar pieces and unpack the run folder")
    u.add_argument("folder")
    u.add_argument("dest")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse(sys.argv[1:] if argv is None else argv)
    if a.cmd == "run":
        return cmd_run(a)
    if a.cmd == "split":
        pieces = split_file(a.file, a.folder, a.piece_mib * MIB)
        print(f"{len(pieces)} pieces of {Path(a.file).name} in {a.folder}")
        return 0
    if a.cmd == "join":
        print(join_pieces(a.folder, a.name, a.dest, sha_folder=a.sha_folder))
        return 0
    return cmd_unpack(a)


if __name__ == "__main__":
    raise SystemExit(main())
