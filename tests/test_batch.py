"""Batch inference (onfh_seg.run.batch): failure isolation, run records, worker-count independence, resume.

The plumbing tests use ``FakeSegmenter`` (defined here, tests only): it returns
the truth label map of images it knows (an onfh-synth cohort laid out as
``images/`` + ``labels/``), all background for any other image. The real
engine is exercised by tests/test_entrypoint.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from onfh_seg.config import infer_settings
from onfh_seg.config_schemas import InferSettings
from onfh_seg.run.batch import run_batch
from onfh_seg.infer.image_checks import validate_image
from onfh_seg.infer.image_read import load_nifti_checked
from onfh_seg.hips import find_heads, select_heads
from onfh_seg.infer.postprocess import clean_labels
from onfh_seg.measure import CSV_COLUMNS
from conftest import BIN, cli_env, no_temporaries, read_csv, run_cli, synth_cohort

FAKE_ENGINE = "test_batch:FakeSegmenter"


# ---------------------------------------------------------------- test double of the engine


@dataclass
class FakeResult:
    labels: np.ndarray
    mean_confidence: float
    head_centres_ras: list
    timings: dict = field(default_factory=dict)


def image_key(image: np.ndarray) -> str:
    arr = np.ascontiguousarray(np.asarray(image, np.float32))
    return hashlib.sha256(str(arr.shape).encode() + arr.tobytes()).hexdigest()


class FakeSegmenter:
    """Stand-in for ``onfh_seg.infer.engine.Segmenter`` (same constructor and ``segment``).

    ``model_dir`` is a folder with ``images/X.nii.gz`` and ``labels/X.nii.gz``
    pairs; ``segment`` returns the labels of the image with identical voxels
    (cleaned with ``clean_labels``), zeros for unknown images. Env
    ``FAKE_SEGMENTER_DELAY`` (s) slows each call, ``FAKE_SEGMENTER_VERSION``
    changes the model version.
    """

    def __init__(self, model_dir, provider: str = "auto", threads: int = 0, tta: bool = False, fast: bool = False):
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise FileNotFoundError(f"fake model folder not found: {self.model_dir}")
        self.version = os.environ.get("FAKE_SEGMENTER_VERSION", "fake-1.0")
        self.sha256 = hashlib.sha256(self.version.encode()).hexdigest()
        self.providers = ["CPUExecutionProvider"]
        self.threads, self.tta, self.fast = threads, tta, fast
        self.delay = float(os.environ.get("FAKE_SEGMENTER_DELAY", "0"))
        self._index: dict[str, Path] | None = None

    def _known(self) -> dict[str, Path]:
        if self._index is None:
            self._index = {}
            for img_path in sorted((self.model_dir / "images").glob("*.nii.gz")):
                lab_path = self.model_dir / "labels" / img_path.name
                if lab_path.is_file():
                    img, _ = load_nifti_checked(img_path)
                    image, _ = validate_image(np.asanyarray(img.dataobj), img.affine)
                    self._index[image_key(image)] = lab_path
        return self._index

    def segment(self, image: np.ndarray, affine: np.ndarray) -> FakeResult:
        t0 = time.perf_counter()
        if np.count_nonzero(image > 0) < 100:
            raise ValueError("image has almost no positive voxels; cannot normalise")
        if self.delay:
            time.sleep(self.delay)
        lab_path = self._known().get(image_key(image))
        labels = np.zeros(image.shape, np.uint8)
        if lab_path is not None:
            labels = np.asarray(nib.load(str(lab_path)).dataobj).astype(np.uint8)
        labels = clean_labels(labels, affine)
        _, heads = find_heads(labels, affine)
        centres = [h.centre_ras for h in select_heads(heads)]
        return FakeResult(labels, 0.95, centres, {"fake": time.perf_counter() - t0})


# ---------------------------------------------------------------- shared fixtures / helpers


def fake_model_dir(cohort: Path, dest: Path) -> Path:
    """A FakeSegmenter model folder holding the cohort's image/label pairs."""
    for sub in ("images", "labels"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
        for p in sorted((cohort / sub).glob("*.nii.gz")):
            shutil.copy(p, dest / sub / p.name)
    return dest


def write_crop(src_img: Path, src_lab: Path, k0: int, k1: int, out_img: Path, out_lab: Path) -> None:
    """Slices k0:k1 (3rd axis) of an image and its labels, with the matching affine."""
    for src, dst in ((src_img, out_img), (src_lab, out_lab)):
        img = nib.load(str(src))
        data = np.asanyarray(img.dataobj)[:, :, k0:k1]
        aff = img.affine.copy()
        aff[:3, 3] = img.affine[:3, :3] @ np.array([0, 0, k0]) + img.affine[:3, 3]
        out = nib.Nifti1Image(data, aff)
        out.set_sform(aff, 1)
        out.set_qform(aff, 1)
        dst.parent.mkdir(parents=True, exist_ok=True)
        nib.save(out, str(dst))


def truncated_copy(src: Path, dst: Path) -> None:
    raw = src.read_bytes()
    dst.write_bytes(raw[: len(raw) // 2])


def base_cfg(input_path: Path, out_dir: Path, model_dir: Path, **over) -> InferSettings:
    cfg = {
        "input": str(input_path), "out_dir": str(out_dir), "model_dir": str(model_dir), "provider": "auto",
        "threads": 0, "workers": 1, "tta": False, "fast": False, "reference": "acetabulum", "overlay": False,
        "resume": True, "engine": FAKE_ENGINE, "qc": {"head_ml_range": [15.0, 120.0], "min_confidence": 0.6},
        "dicom": {"write_seg": True, "write_sr": True, "rules": {}},
    }
    cfg.update(over)
    return infer_settings(cfg)


def factory(model_dir: Path):
    return lambda threads: FakeSegmenter(model_dir, threads=threads)


# ---------------------------------------------------------------- the batch of ten


@pytest.fixture(scope="module")
def batch_set(tmp_path_factory):
    """scans/ with 9 good scans (4 cohort + 5 crops) and 1 truncated .nii.gz; the fake model folder."""
    cohort = synth_cohort(tmp_path_factory)
    root = tmp_path_factory.mktemp("batch")
    model = fake_model_dir(cohort, root / "fake_model")
    scans = root / "scans"
    scans.mkdir()
    for p in sorted((cohort / "images").glob("*.nii.gz")):
        shutil.copy(p, scans / p.name)
    crops = [("P001_m00", 2, 15), ("P001_m06", 3, 18), ("P002_m00", 5, 30), ("P002_m06", 4, 28), ("P002_m00", 0, 20)]
    for n, (stem, k0, k1) in enumerate(crops):
        name = f"crop{n}_{stem}.nii.gz"
        write_crop(cohort / "images" / f"{stem}.nii.gz", cohort / "labels" / f"{stem}.nii.gz", k0, k1,
                   scans / name, model / "labels" / name)
        shutil.copy(scans / name, model / "images" / name)
    truncated_copy(cohort / "images" / "P001_m00.nii.gz", scans / "broken.nii.gz")
    return scans, model


@pytest.fixture(scope="module")
def reference_run(batch_set, tmp_path_factory):
    """One in-process workers=1 run of the batch (the reference for the other runs)."""
    scans, model = batch_set
    out = tmp_path_factory.mktemp("ref_out")
    summary = run_batch(base_cfg(scans, out, model), segmenter_factory=factory(model))
    return out, summary


def test_failure_isolation_and_run_records(batch_set, reference_run) -> None:
    scans, _ = batch_set
    out, summary = reference_run
    assert (summary.done, summary.skipped, summary.failed) == (9, 0, 1)
    assert summary.exit_code == 0 and summary.line() == "done 9, skipped 0, failed 1"

    cols, errors = read_csv(out / "errors.csv")
    assert cols == ["scan", "image", "error"]
    assert [e["scan"] for e in errors] == ["broken"]
    assert "truncated" in errors[0]["error"] and "\n" not in errors[0]["error"]
    broken = json.loads((out / "broken_measurements.json").read_text())
    assert broken["status"] == "error" and broken["hips"] == [] and "truncated" in broken["error"]
    assert not (out / "broken_seg.nii.gz").exists()

    cols, rows = read_csv(out / "measurements.csv")
    assert cols == list(CSV_COLUMNS)
    scans_in_csv = sorted({r["scan"] for r in rows})
    good = sorted(p.name[: -len(".nii.gz")] for p in scans.glob("*.nii.gz") if p.name != "broken.nii.gz")
    assert scans_in_csv == good
    assert all(r["model_version"] == "fake-1.0" for r in rows)
    assert any(r["side"] in ("right", "left") for r in rows)
    for name in good:
        assert (out / f"{name}_seg.nii.gz").is_file() and (out / f"{name}_measurements.json").is_file()

    manifest = json.loads((out / "run_manifest.json").read_text())
    for key in ("versions", "model", "providers", "started", "finished", "command_line", "config", "scans"):
        assert key in manifest
    for pkg in ("onfh_seg", "onnxruntime", "numpy", "nibabel"):
        assert manifest["versions"][pkg]
    assert manifest["model"]["version"] == "fake-1.0" and manifest["providers"] == ["CPUExecutionProvider"]
    assert manifest["counts"] == {"total": 10, "done": 9, "skipped": 0, "no_hip": 0, "failed": 1}
    assert all("total" in s["timings"] for s in manifest["scans"])
    assert no_temporaries(out) == []


def test_rerun_skips_done_scans_and_retries_failures(batch_set, reference_run, tmp_path) -> None:
    scans, model = batch_set
    ref_out, _ = reference_run
    out = tmp_path / "out"
    shutil.copytree(ref_out, out)
    summary = run_batch(base_cfg(scans, out, model), segmenter_factory=factory(model))
    assert (summary.done, summary.skipped, summary.failed) == (0, 9, 1)
    assert (out / "measurements.csv").read_bytes() == (ref_out / "measurements.csv").read_bytes()

    # a changed input or a new model version is processed again
    img = nib.load(str(scans / "P001_m00.nii.gz"))
    changed = scans.parent / "changed"
    changed.mkdir(exist_ok=True)
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj) + np.int16(1), img.affine, img.header), str(changed / "P001_m00.nii.gz"))
    summary = run_batch(base_cfg(changed, out, model), segmenter_factory=factory(model))
    assert (summary.done, summary.no_hip, summary.skipped) == (0, ["P001_m00"], 0)  # the fake knows no changed image
    os.environ["FAKE_SEGMENTER_VERSION"] = "fake-2.0"
    try:
        summary = run_batch(base_cfg(changed, out, model), segmenter_factory=factory(model))
    finally:
        del os.environ["FAKE_SEGMENTER_VERSION"]
    assert (summary.done + len(summary.no_hip), summary.skipped) == (1, 0)
    summary = run_batch(base_cfg(changed, out, model, resume=False), segmenter_factory=factory(model))
    assert (summary.done + len(summary.no_hip), summary.skipped) == (1, 0)


def test_same_csv_for_one_and_two_workers(batch_set, reference_run, tmp_path) -> None:
    scans, model = batch_set
    ref_out, _ = reference_run
    out = tmp_path / "out2"
    summary = run_batch(base_cfg(scans, out, model, workers=2))  # spawn pool, FakeSegmenter built per worker
    assert (summary.done, summary.skipped, summary.failed) == (9, 0, 1)
    assert (out / "measurements.csv").read_bytes() == (ref_out / "measurements.csv").read_bytes()
    assert (out / "errors.csv").read_bytes() == (ref_out / "errors.csv").read_bytes()
    manifest = json.loads((out / "run_manifest.json").read_text())
    assert manifest["workers"] == 2 and manifest["threads_per_worker"] >= 1
    for p in sorted(ref_out.glob("*_seg.nii.gz")):
        assert (out / p.name).read_bytes() == p.read_bytes(), p.name


def test_nothing_succeeded_exit_code(batch_set, tmp_path) -> None:
    scans, model = batch_set
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    shutil.copy(scans / "broken.nii.gz", only_bad / "broken.nii.gz")
    summary = run_batch(base_cfg(only_bad, tmp_path / "out", model), segmenter_factory=factory(model))
    assert (summary.done, summary.skipped, summary.failed) == (0, 0, 1) and summary.exit_code == 1


def test_kill_and_resume_via_cli(batch_set, reference_run, tmp_path) -> None:
    """Kill onfh-infer (SIGKILL) mid-run, rerun: finished scans are skipped and the results match."""
    scans, model = batch_set
    ref_out, _ = reference_run
    out = tmp_path / "out"
    args = [f"input={scans}", f"out_dir={out}", f"model_dir={model}", f"engine={FAKE_ENGINE}", "overlay=false",
            "tta=false"]  # the reference run's settings (each measurements JSON records them)
    proc = subprocess.Popen([str(BIN / "onfh-infer"), *args], cwd=tmp_path, env=cli_env(FAKE_SEGMENTER_DELAY="1.0"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(list(out.glob("*_measurements.json"))) < 3:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finished_before = len(list(out.glob("*_measurements.json")))
    assert 3 <= finished_before < 10, "the run ended before it could be interrupted"
    assert not (out / "measurements.csv").exists()

    res = run_cli(args, tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    last = res.stdout.strip().splitlines()[-1]
    skipped = int(last.split("skipped ")[1].split(",")[0])
    assert skipped >= finished_before - 1 and skipped > 0, last  # 'broken' may be among them (retried)
    assert "failed 1" in last
    assert (out / "measurements.csv").read_bytes() == (ref_out / "measurements.csv").read_bytes()
    for p in sorted(ref_out.glob("*_seg.nii.gz")):
        assert (out / p.name).read_bytes() == p.read_bytes(), p.name
    for p in sorted(ref_out.glob("*_measurements.json")):
        a, b = json.loads(p.read_text()), json.loads((out / p.name).read_text())
        for d in (a, b):
            d.pop("timings"), d.pop("input")
        assert a == b, p.name
    assert no_temporaries(out) == []


def test_sigterm_stops_a_pool_run_cleanly(batch_set, tmp_path) -> None:
    """SIGTERM (docker stop) to onfh-infer with 2 workers: exit 130, only complete scans on disk."""
    scans, model = batch_set
    out = tmp_path / "out"
    args = [f"input={scans}", f"out_dir={out}", f"model_dir={model}", f"engine={FAKE_ENGINE}", "overlay=false",
            "workers=2"]
    proc = subprocess.Popen([str(BIN / "onfh-infer"), *args], cwd=tmp_path, env=cli_env(FAKE_SEGMENTER_DELAY="1.0"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(list(out.glob("*_measurements.json"))) < 2 and proc.poll() is None:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err
    for seg in out.glob("*_seg.nii.gz"):
        meas = json.loads((out / seg.name.replace("_seg.nii.gz", "_measurements.json")).read_text())
        assert meas["status"] == "ok"
    assert no_temporaries(out) == []
    res = run_cli(args[:-1], tmp_path)
    assert res.returncode == 0 and "failed 1" in res.stdout.strip().splitlines()[-1], res.stderr[-2000:]
