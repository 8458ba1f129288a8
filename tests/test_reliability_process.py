"""Process lifecycle (issue 11, item 4): no orphan workers, one run per out_dir, writability first, own temporaries only.

* ``kill -9`` of the main ``onfh-infer`` process with ``workers=2`` mid-run:
  no process of the run is left after a short grace period (checked over the
  whole process group), nothing half-written, no scan finished after the kill;
  the resumed run's outputs equal an uninterrupted run's (seg bytes,
  measurements JSON minus timings, measurements.csv);
* SIGTERM of the main process: exit 130, no process left, lock released;
* the pools of ``onfh-synth`` and ``onfh-track`` end with their parent too;
* a second run into a locked out_dir refuses with one line naming the holder
  (or waits with ``wait_lock=true``), for onfh-infer and onfh-track;
* a read-only out_dir fails before any work;
* start-up clean-up removes only this package's temporaries of ended
  processes (a user's ``.notes.tmp`` survives).

The plumbing runs use the test engine ``FakeSegmenter`` of tests/test_batch.py
(truth labels of the synthetic cohort, an optional delay per scan); the
variant with the shipped ONNX model is marked slow. Linux only (``/proc``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from onfh_seg.run.batch import run_batch
from onfh_seg.lifecycle import DirLock, own_temporary_pid, remove_own_temporaries
from conftest import BIN, ROOT, assert_same_outputs, cli_env, no_temporaries, synth_cohort
from test_batch import FAKE_ENGINE, base_cfg, factory, fake_model_dir, write_crop

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs Linux /proc")

DEAD_PID = 4194305  # above the kernel's largest pid_max: no such process can exist
GRACE_S = 15.0


# ---------------------------------------------------------------- helpers


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state, ppid, pgrp, ...), None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    alive = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            f = _stat_fields(int(d.name))
            if f is not None and int(f[2]) == pgid and f[0] != "Z":
                alive.append(int(d.name))
    return sorted(alive)


def children_of(pid: int) -> list[int]:
    """Live direct children of ``pid``."""
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            f = _stat_fields(int(d.name))
            if f is not None and int(f[1]) == pid and f[0] != "Z":
                kids.append(int(d.name))
    return sorted(kids)


def wait_until(cond, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return bool(cond())


def start(cmd: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    """A command in its own session (process group = its pid), output captured."""
    return subprocess.Popen(cmd, cwd=cwd, env=cli_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_parent_only(proc: subprocess.Popen) -> float:
    """SIGKILL the main process alone (not its group); returns the time of the kill."""
    t_kill = time.time()
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    return t_kill


def infer_cmd(scans: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return [str(BIN / "onfh-infer"), f"input={scans}", f"out_dir={out}", f"model_dir={model}",
            f"engine={FAKE_ENGINE}", "overlay=false", *extra]


def run(cmd: list[str], cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=cli_env(**env))


def assert_nothing_half_written(out: Path) -> None:
    """Every segmentation belongs to a finished scan; no temporaries; no run records of an unfinished run."""
    assert no_temporaries(out) == []
    for seg in out.glob("*_seg.nii.gz"):
        meas = out / seg.name.replace("_seg.nii.gz", "_measurements.json")
        assert meas.is_file(), f"{seg.name} without its measurements"
        assert json.loads(meas.read_text())["status"] == "ok", meas.name
    for p in out.glob("*_measurements.json"):
        json.loads(p.read_text())  # complete JSON
    assert not (out / "measurements.csv").exists() and not (out / "run_manifest.json").exists()


# ---------------------------------------------------------------- data


@pytest.fixture(scope="module")
def scan_set(tmp_path_factory):
    """scans/ with 8 scans (4 of the synthetic cohort, 4 slabs of them) and the FakeSegmenter model folder."""
    cohort = synth_cohort(tmp_path_factory)
    root = tmp_path_factory.mktemp("lifecycle")
    model = fake_model_dir(cohort, root / "fake_model")
    scans = root / "scans"
    scans.mkdir()
    for p in sorted((cohort / "images").glob("*.nii.gz")):
        shutil.copy(p, scans / p.name)
    for n, (stem, k0, k1) in enumerate([("P001_m00", 2, 15), ("P001_m06", 3, 18), ("P002_m00", 5, 30),
                                         ("P002_m06", 4, 28)]):
        name = f"slab{n}_{stem}.nii.gz"
        write_crop(cohort / "images" / f"{stem}.nii.gz", cohort / "labels" / f"{stem}.nii.gz", k0, k1,
                   scans / name, model / "labels" / name)
        shutil.copy(scans / name, model / "images" / name)
    return scans, model, cohort


@pytest.fixture(scope="module")
def reference_out(scan_set, tmp_path_factory):
    """An uninterrupted run (workers=1, in this process) with the settings the CLI composes."""
    from onfh_seg.config import infer_settings

    scans, model, _ = scan_set
    out = tmp_path_factory.mktemp("ref") / "out"
    cfg = infer_settings( {"input": str(scans), "out_dir": str(out), "model_dir": str(model),
                          "engine": FAKE_ENGINE, "overlay": False})
    summary = run_batch(cfg)
    assert (summary.done, summary.skipped, summary.failed) == (8, 0, 0)
    return out


# ---------------------------------------------------------------- kill -9, SIGTERM


def test_kill9_of_main_process_leaves_no_worker_and_resume_equals_uninterrupted(scan_set, reference_out, tmp_path):
    scans, model, _ = scan_set
    out = tmp_path / "out"
    proc = start(infer_cmd(scans, out, model, "workers=2"), tmp_path, FAKE_SEGMENTER_DELAY="1.5")
    try:
        started = wait_until(lambda: len(list(out.glob("*_measurements.json"))) >= 2 or proc.poll() is not None, 120)
        assert started and proc.poll() is None, "the run ended before it could be killed"
        members = group_members(proc.pid)
        workers = children_of(proc.pid)
        assert len(workers) >= 2 and set(workers) <= set(members), (workers, members)  # one process group
        t_kill = kill_parent_only(proc)
        gone = wait_until(lambda: group_members(proc.pid) == [], GRACE_S)
        left = group_members(proc.pid)
    finally:
        kill_group(proc.pid)
    assert gone, f"processes of the killed run still alive after {GRACE_S} s: {left}"
    assert_nothing_half_written(out)
    finished = sorted(p.name for p in out.glob("*_measurements.json"))
    assert 2 <= len(finished) < 8
    late = [p.name for p in out.iterdir() if p.stat().st_mtime > t_kill + 1.0]
    assert late == [], f"written after the main process was killed: {late}"

    res = run(infer_cmd(scans, out, model), tmp_path)  # resume (in one process: cheaper to start)
    assert res.returncode == 0, res.stderr[-2000:]
    last = res.stdout.strip().splitlines()[-1]
    assert f"skipped {len(finished)}" in last and "failed 0" in last, last
    assert_same_outputs(out, reference_out)
    assert no_temporaries(out) == [] and not (out / ".onfh-infer.lock").exists()


def test_sigterm_of_main_process_stops_cleanly_without_children(scan_set, tmp_path):
    scans, model, _ = scan_set
    out = tmp_path / "out"
    proc = start(infer_cmd(scans, out, model, "workers=2"), tmp_path, FAKE_SEGMENTER_DELAY="1.5")
    try:
        started = wait_until(lambda: len(list(out.glob("*_measurements.json"))) >= 1 or proc.poll() is not None, 120)
        assert started and proc.poll() is None, "the run ended before it could be stopped"
        assert len(children_of(proc.pid)) >= 2
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        stop_s = time.monotonic() - t0
        gone = wait_until(lambda: group_members(proc.pid) == [], 5)
        left = group_members(proc.pid)
    finally:
        kill_group(proc.pid)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err
    assert stop_s < 20, f"stopping took {stop_s:.1f} s"
    assert gone, f"processes left after SIGTERM: {left}"
    assert_nothing_half_written(out)
    assert not (out / ".onfh-infer.lock").exists()


def test_synth_pool_workers_end_with_their_parent(tmp_path):
    out = tmp_path / "cohort"
    proc = start([str(BIN / "onfh-synth"), f"out_dir={out}", "n_patients=4", "workers=2", "seed=9",
                  "acquisition.max_matrix=96"], tmp_path)
    try:
        assert wait_until(lambda: len(children_of(proc.pid)) >= 2 or proc.poll() is not None, 60)
        assert proc.poll() is None, "onfh-synth ended before it could be killed"
        kill_parent_only(proc)
        gone = wait_until(lambda: group_members(proc.pid) == [], GRACE_S)
        left = group_members(proc.pid)
    finally:
        kill_group(proc.pid)
    assert gone, f"onfh-synth workers still alive after {GRACE_S} s: {left}"
    assert no_temporaries(out) == []


def test_track_pool_workers_end_with_their_parent(scan_set, tmp_path):
    from truth_infer import write_truth_infer_outputs

    _, _, cohort = scan_set
    infer = write_truth_infer_outputs(cohort / "manifest.csv", tmp_path / "infer")
    out = tmp_path / "track"
    proc = start([str(BIN / "onfh-track"), f"manifest={cohort / 'manifest.csv'}", f"infer_dir={infer}",
                  f"out_dir={out}", "workers=2", "report=false"], tmp_path)
    try:
        assert wait_until(lambda: len(children_of(proc.pid)) >= 2 or proc.poll() is not None, 60)
        assert proc.poll() is None, "onfh-track ended before it could be killed"
        kill_parent_only(proc)
        gone = wait_until(lambda: group_members(proc.pid) == [], GRACE_S)
        left = group_members(proc.pid)
    finally:
        kill_group(proc.pid)
    assert gone, f"onfh-track workers still alive after {GRACE_S} s: {left}"


# ---------------------------------------------------------------- one run per out_dir


def test_second_run_into_a_locked_out_dir_refuses_with_one_line_or_waits(scan_set, tmp_path):
    scans, model, _ = scan_set
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(scans / "P001_m00.nii.gz", one / "P001_m00.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    with DirLock(out, "onfh-infer"):  # this test process plays the running onfh-infer
        waiting = start(infer_cmd(one, out, model, "wait_lock=true"), tmp_path)
        try:
            res = run(infer_cmd(one, out, model), tmp_path)  # meanwhile the waiting run starts up
            assert res.returncode == 1
            lines = res.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: out_dir"), res.stderr
            assert f"in use by onfh-infer pid {os.getpid()}" in lines[0] and "wait_lock=true" in lines[0]
            time.sleep(1.0)
            assert waiting.poll() is None, waiting.communicate()[1][-2000:]
            assert sorted(p.name for p in out.iterdir()) == [".onfh-infer.lock"]
        except BaseException:
            kill_group(waiting.pid)
            raise
    try:
        stdout, err = waiting.communicate(timeout=120)
    finally:
        kill_group(waiting.pid)
    assert waiting.returncode == 0, err[-2000:]
    assert "waiting for it to finish" in stdout + err
    assert (out / "P001_m00_seg.nii.gz").is_file() and not (out / ".onfh-infer.lock").exists()


def test_track_refuses_a_locked_out_dir(scan_set, tmp_path):
    _, _, cohort = scan_set
    out = tmp_path / "track"
    out.mkdir()
    with DirLock(out, "onfh-track"):
        res = subprocess.run([str(BIN / "onfh-track"), f"manifest={cohort / 'manifest.csv'}",
                              f"infer_dir={tmp_path / 'infer'}", f"out_dir={out}"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120, env=cli_env())
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and f"in use by onfh-track pid {os.getpid()}" in lines[0], res.stderr


def test_lock_is_released_when_its_holder_is_killed(tmp_path):
    """The kernel lock dies with its holder, however it ends: the file left behind is no stale lock."""
    code = ("import sys, time; from onfh_seg.lifecycle import DirLock; "
            f"DirLock({str(tmp_path)!r}, 'onfh-infer').acquire(); print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RuntimeError, match=f"pid {holder.pid}"):
            DirLock(tmp_path, "onfh-infer").acquire()
    finally:
        holder.kill()
        holder.communicate(timeout=30)
    assert (tmp_path / ".onfh-infer.lock").exists()
    with DirLock(tmp_path, "onfh-infer"):
        pass
    assert not (tmp_path / ".onfh-infer.lock").exists()


_HELD: dict[str, int] = {}


def _keep_fd(fd: int) -> None:
    _HELD["fd"] = fd


def _held_fd_after(seconds: float) -> int:
    time.sleep(seconds)
    return _HELD["fd"]


def test_pool_workers_hold_the_lock_until_they_end(tmp_path):
    """A worker that outlives its parent still holds out_dir's lock: no new run can start beside it."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from onfh_seg.lifecycle import DirLockBusy, InheritedFd

    lock = DirLock(tmp_path, "onfh-infer").acquire()
    pool = ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=_keep_fd,
                               initargs=(InheritedFd(lock.fd),))
    try:
        busy = pool.submit(_held_fd_after, 4.0)
        assert wait_until(lambda: len(children_of(os.getpid())) >= 1, 30)
        time.sleep(1.0)
        os.close(lock.fd)  # the parent's own descriptor is gone, as when it is killed
        lock.fd = None
        with pytest.raises(DirLockBusy, match="in use by onfh-infer"):
            DirLock(tmp_path, "onfh-infer").acquire()
        assert busy.result(timeout=60) >= 0
    finally:
        pool.shutdown()
    with DirLock(tmp_path, "onfh-infer"):  # the worker has ended: free
        pass


# ---------------------------------------------------------------- read-only out_dir


def _make_read_only(folder: Path) -> bool:
    """chmod 555; as root (which ignores modes) also the immutable attribute. False if still writable."""
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    if os.access(folder, os.W_OK):
        subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
    try:
        (folder / ".probe").write_bytes(b"")
    except OSError:
        return True
    (folder / ".probe").unlink()
    return False


def _undo_read_only(folder: Path) -> None:
    subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
    folder.chmod(0o755)


def test_read_only_out_dir_fails_before_any_work(scan_set, tmp_path):
    scans, model, _ = scan_set
    out = tmp_path / "ro"
    out.mkdir()
    (out / "keep.txt").write_text("results of an earlier run\n")
    if not _make_read_only(out):
        _undo_read_only(out)
        pytest.skip("cannot make a read-only folder here (root without chattr +i support)")
    built: list[int] = []

    def counting_factory(threads: int):
        built.append(threads)
        return factory(model)(threads)

    try:
        with pytest.raises(OSError, match="out_dir is not writable"):
            run_batch(base_cfg(scans, out, model), segmenter_factory=counting_factory)
        assert built == [], "a segmenter was built for a read-only out_dir"
        with pytest.raises(OSError, match="out_dir cannot be created"):
            run_batch(base_cfg(scans, out / "sub", model), segmenter_factory=counting_factory)
        t0 = time.monotonic()
        res = run(infer_cmd(scans, out, model, "workers=2"), tmp_path, FAKE_SEGMENTER_DELAY="5")
        elapsed = time.monotonic() - t0
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    finally:
        _undo_read_only(out)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: out_dir is not writable"), res.stderr
    assert elapsed < 8 * 5 / 2 - 5, f"{elapsed:.1f} s: the error came after the scans were computed"


# ---------------------------------------------------------------- own temporaries only


def test_startup_cleanup_removes_only_own_temporaries_of_ended_processes(scan_set, tmp_path):
    scans, model, _ = scan_set
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(scans / "P002_m00.nii.gz", one / "P002_m00.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    foreign = [".notes.tmp", ".x.tmp", ".P002_m00_seg.nii.gz.tmp", "draft.tmp",
               f".P002_m00_seg.nii.gz.onfh-tmp-{DEAD_PID}-abc.tmp.bak"]
    live = f".measurements.csv.onfh-tmp-{os.getpid()}-k3j2.tmp"  # a running process's write in progress
    dead = [f".P002_m00_seg.nii.gz.onfh-tmp-{DEAD_PID}-q1w2e3.tmp", f".errors.csv.onfh-tmp-{DEAD_PID}-zz.tmp"]
    for name in foreign + [live] + dead:
        (out / name).write_text("x")
    summary = run_batch(base_cfg(one, out, model), segmenter_factory=factory(model))
    assert (summary.done, summary.failed) == (1, 0)
    left = {p.name for p in out.iterdir()}
    assert set(foreign) <= left and live in left
    assert not (set(dead) & left)
    assert own_temporary_pid(dead[0]) == DEAD_PID and own_temporary_pid(".notes.tmp") is None
    assert own_temporary_pid(foreign[-1]) is None
    assert remove_own_temporaries(out) == []  # nothing more to remove: the live one stays


def test_atomic_write_temporaries_carry_the_writer_pid(tmp_path, monkeypatch):
    """The temporary of an interrupted atomic write is named so that clean-up can recognise it."""
    from onfh_seg.io import files

    seen: list[str] = []
    real_replace = os.replace

    def spy_replace(src, dst):
        seen.append(Path(src).name)
        return real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", spy_replace)
    files.atomic_write_text(tmp_path / "a.json", "{}")
    assert len(seen) == 1 and own_temporary_pid(seen[0]) == os.getpid(), seen
    assert seen[0].startswith(".a.json.onfh-tmp-")


# ---------------------------------------------------------------- the shipped model (slow)


@pytest.mark.slow
def test_kill9_and_resume_with_the_shipped_model(scan_set, tmp_path):
    """As the first test, with the real ONNX engine (a few seconds per scan on 2 cores)."""
    if not (ROOT / "models" / "model.json").is_file():
        pytest.skip("shipped model not found in models/")
    _, _, cohort = scan_set
    scans = cohort / "images"
    args = ["fast=true", "overlay=false", f"model_dir={ROOT / 'models'}"]
    cmd = lambda out, *extra: [str(BIN / "onfh-infer"), f"input={scans}", f"out_dir={out}", *args, *extra]  # noqa: E731
    ref = tmp_path / "ref"
    res = run(cmd(ref), tmp_path, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]

    out = tmp_path / "out"
    proc = start(cmd(out, "workers=2"), tmp_path)
    try:
        started = wait_until(lambda: len(list(out.glob("*_measurements.json"))) >= 1 or proc.poll() is not None, 600)
        assert started and proc.poll() is None, "the run ended before it could be killed"
        t_kill = kill_parent_only(proc)
        gone = wait_until(lambda: group_members(proc.pid) == [], 40)
        left = group_members(proc.pid)
    finally:
        kill_group(proc.pid)
    assert gone, f"processes of the killed run still alive: {left}"
    assert_nothing_half_written(out)
    late = [p.name for p in out.iterdir() if p.stat().st_mtime > t_kill + 1.0]
    assert late == [], f"written after the main process was killed: {late}"
    res = run(cmd(out, "workers=2"), tmp_path, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    assert_same_outputs(out, ref)
