"""executor=dask (onfh_seg.run.dask_exec): same outputs as the local pool, resume, failure isolation, a killed worker.

Uses the ten-scan batch of tests/test_batch.py (9 good scans, 1 truncated) and
its ``FakeSegmenter``; a 2-worker local Dask cluster runs in the default suite.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("distributed", reason="executor=dask needs dask[distributed] (pip install 'onfh-seg[dask]')")

from onfh_seg.run.batch import run_batch  # noqa: E402
from onfh_seg.run.dask_exec import open_client  # noqa: E402
from onfh_seg.run.jobs import cached_segmenter  # noqa: E402
from onfh_seg.run import dask_exec  # noqa: E402
from onfh_seg.io.files import TMP_MARK
from conftest import assert_same_outputs  # noqa: E402
from test_batch import (  # noqa: E402,F401  (fixtures)
    BIN, FAKE_ENGINE, FakeSegmenter, base_cfg, batch_set, cli_env, no_temporaries, reference_run, run_cli,
)


class KillingSegmenter(FakeSegmenter):
    """FakeSegmenter whose first ``segment`` call in the whole run (env ``KILL_MARKER``, a file created once)
    leaves a temporary in out_dir (env ``KILL_OUT``), as an interrupted atomic write would, and SIGKILLs its
    own worker process."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        builds = os.environ.get("BUILD_LOG")
        if builds:  # one line per construction: "<pid>"
            with open(builds, "a") as fh:
                fh.write(f"{os.getpid()}\n")

    def segment(self, image, affine):
        marker = os.environ.get("KILL_MARKER")
        if marker:
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                fd = None
            if fd is not None:
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                tmp = Path(os.environ["KILL_OUT"]) / f".victim_seg.nii.gz{TMP_MARK}{os.getpid()}-abc.tmp"
                tmp.write_bytes(b"half")
                os.kill(os.getpid(), signal.SIGKILL)
        return super().segment(image, affine)


def test_dask_two_workers_match_pool_and_one_worker(batch_set, reference_run, tmp_path) -> None:
    """onfh-infer executor=dask workers=2 == in-process workers=1 == 2-process pool; a broken scan is isolated; a
    second Dask run (1 worker, through scheduler=ADDRESS) skips the finished scans and retries the failed one."""
    scans, model = batch_set
    ref, _ = reference_run
    pool = tmp_path / "pool"
    summary = run_batch(base_cfg(scans, pool, model, workers=2))
    assert (summary.done, summary.failed) == (9, 1)
    out = tmp_path / "dask"
    res = run_cli([f"input={scans}", f"out_dir={out}", f"model_dir={model}", f"engine={FAKE_ENGINE}", "overlay=false",
                   "tta=false", "executor=dask", "workers=2"], tmp_path)  # the CLI: progress bar, summary line
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == f"done 9, skipped 0, failed 1 -> {out}"
    assert "onfh-infer: 100%|" in res.stderr and "failed broken: " in res.stdout + res.stderr
    assert_same_outputs(out, ref)
    assert_same_outputs(out, pool)
    manifest = json.loads((out / "run_manifest.json").read_text())
    assert manifest["executor"] == "dask" and manifest["workers"] == 2 and manifest["scheduler"] is None
    assert manifest["counts"] == {"total": 10, "done": 9, "skipped": 0, "no_hip": 0, "failed": 1}
    assert no_temporaries(out) == []

    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster:
        summary = run_batch(base_cfg(scans, out, model, executor="dask", scheduler=cluster.scheduler_address))
    assert (summary.done, summary.skipped, summary.failed) == (0, 9, 1)
    assert_same_outputs(out, ref)
    manifest = json.loads((out / "run_manifest.json").read_text())
    assert manifest["scheduler"] == cluster.scheduler_address and manifest["threads_per_worker"] == 1


def test_killed_worker_scan_runs_again_elsewhere(batch_set, reference_run, tmp_path, monkeypatch) -> None:
    """A worker SIGKILLed in the middle of a scan: Dask runs that scan on another worker; outputs complete and
    identical, the dead worker's temporary removed; each worker process built its segmenter once."""
    scans, model = batch_set
    ref, _ = reference_run
    out = tmp_path / "out"
    out.mkdir()
    marker = tmp_path / "killed.pid"
    monkeypatch.setenv("KILL_MARKER", str(marker))
    monkeypatch.setenv("KILL_OUT", str(out))
    monkeypatch.setenv("BUILD_LOG", str(tmp_path / "builds.txt"))
    summary = run_batch(base_cfg(scans, out, model, workers=2, executor="dask", engine="test_dask:KillingSegmenter"))
    assert marker.is_file(), "no worker was killed"
    builds = (tmp_path / "builds.txt").read_text().split()
    assert len(builds) == len(set(builds)) <= 3, builds  # one model load per worker process (2 + the restarted one)
    assert marker.read_text() in builds
    assert (summary.done, summary.skipped, summary.failed) == (9, 0, 1)
    assert_same_outputs(out, ref)
    assert no_temporaries(out) == []


def test_engine_missing_on_the_workers_stops_the_run_with_one_line(batch_set, tmp_path) -> None:
    scans, model = batch_set
    with pytest.raises(RuntimeError, match=r"^segmenter not available: .*engine 'test_batch:NoSuchEngine'.*no NoSuchEngine$"):
        run_batch(base_cfg(scans, tmp_path / "out", model, workers=2, executor="dask", engine="test_batch:NoSuchEngine"))
    assert not (tmp_path / "out" / "measurements.csv").exists()
    assert no_temporaries(tmp_path / "out") == []


def test_segmenter_built_once_per_process(tmp_path) -> None:
    """The per-process cache builds a segmenter once per engine spec; a failure is one line, every time."""
    from onfh_seg.run.jobs import EngineSpec

    spec = EngineSpec("test_batch:FakeSegmenter", str(tmp_path), "cpu", 1, False, False)
    first = cached_segmenter(spec)
    assert cached_segmenter(spec) is first
    bad = EngineSpec("test_batch:FakeSegmenter", str(tmp_path / "missing"), "cpu", 1, False, False)
    for _ in range(2):
        with pytest.raises(RuntimeError, match="fake model folder not found"):
            cached_segmenter(bad)


def test_without_distributed_executor_dask_is_one_line(batch_set, tmp_path, monkeypatch) -> None:
    import sys

    scans, model = batch_set
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(RuntimeError, match=r"^executor=dask needs dask.distributed: pip install 'onfh-seg\[dask\]'$"):
        run_batch(base_cfg(scans, tmp_path / "out", model, executor="dask"))
    assert not (tmp_path / "out").exists()  # refused before any work


def test_unreachable_scheduler_is_one_line(monkeypatch) -> None:
    monkeypatch.setattr(dask_exec, "CONNECT_TIMEOUT_S", 1)
    with pytest.raises(OSError, match=r"^cannot reach the Dask scheduler tcp://127\.0\.0\.1:9: "):
        open_client(1, "tcp://127.0.0.1:9")


def test_missing_scheduler_file_is_one_line(tmp_path) -> None:
    with pytest.raises(OSError, match="^cannot reach the Dask scheduler .*: scheduler file not found: "):
        open_client(1, str(tmp_path / "scheduler.json"))


def test_cli_scheduler_without_dask_is_one_line(batch_set, tmp_path) -> None:
    scans, model = batch_set
    res = subprocess.run([str(BIN / "onfh-infer"), f"input={scans}", f"out_dir={tmp_path / 'o'}",
                          f"model_dir={model}", "scheduler=tcp://127.0.0.1:9"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120, env=cli_env())
    assert res.returncode != 0
    assert "scheduler= needs executor=dask" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_track_on_dask_matches_local(tmp_path_factory, tmp_path) -> None:
    """onfh-track with executor=dask (one task per patient, 2 workers) writes the same files as workers=1 (~40 s: slow)."""
    from conftest import synth_cohort as make_cohort
    from onfh_seg.config import track_settings
    from onfh_seg.track.cohort import track_cohort
    from truth_infer import write_truth_infer_outputs

    synth_cohort = make_cohort(tmp_path_factory)
    infer = write_truth_infer_outputs(synth_cohort / "manifest.csv", tmp_path / "infer")
    outs = []
    for name, over in (("local", {}), ("dask", {"executor": "dask", "workers": 2})):
        cfg = track_settings({"manifest": str(synth_cohort / "manifest.csv"), "infer_dir": str(infer),
                              "out_dir": str(tmp_path / name), "report": False, **over})
        res = track_cohort(cfg)
        assert len(res.records) == 2 and not res.failed
        outs.append(tmp_path / name)
    files = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*") if p.is_file())
    assert files and files == sorted(p.relative_to(outs[1]) for p in outs[1].rglob("*") if p.is_file())
    for f in files:
        assert (outs[0] / f).read_bytes() == (outs[1] / f).read_bytes(), f


def _worker_settings() -> tuple[dict, str | None]:
    import dask

    keys = [k for k in dask_exec.LOCAL_WORKER_CONFIG if k != "distributed.nanny.pre-spawn-environ"]
    return {k: dask.config.get(k) for k in keys}, os.environ.get("OMP_NUM_THREADS")


def test_local_cluster_workers_run_with_the_local_worker_config() -> None:
    """Every worker process of a local cluster gets LOCAL_WORKER_CONFIG (no profiler, slow ticks) and the
    client's environment (Dask's pre-spawn OMP_NUM_THREADS=1 is not applied)."""
    with dask_exec.dask_client(2, None) as (client, remote):
        got = client.run(_worker_settings)
    assert not remote and len(got) == 2
    expected = {k: v for k, v in dask_exec.LOCAL_WORKER_CONFIG.items() if k != "distributed.nanny.pre-spawn-environ"}
    assert expected["distributed.admin.tick.interval"] == "1s"
    for settings, omp in got.values():
        assert settings == expected
        assert omp == os.environ.get("OMP_NUM_THREADS")
