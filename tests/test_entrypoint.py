"""The container's command, run here: ``onfh-infer input=... out_dir=...`` (ENTRYPOINT + CMD of
docker/Dockerfile) with its environment (ONFH_SEG_MODELS, ONFH_SEG_CONFIGS), the real engine and the
shipped model, provider=auto. Without CUDA it must fall back to CPU and say so in the log.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import read_csv, synth_cohort

from onfh_seg.measure import CSV_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.skipif(
    not (MODELS / "fine.onnx").is_file(),
    reason=f"shipped model not found ({MODELS / 'fine.onnx'}); export it with onfh-export first",
)


def docker_command() -> list[str]:
    """ENTRYPOINT + CMD from the Dockerfile (exec form)."""
    text = DOCKERFILE.read_text()
    entry = json.loads(re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", text, re.M).group(1))
    cmd = json.loads(re.search(r"^CMD\s+(\[.*\])\s*$", text, re.M).group(1))
    return entry + cmd


def cuda_available() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def test_container_command_on_nifti_folder(tmp_path_factory, tmp_path: Path) -> None:
    command = docker_command()
    assert command == ["onfh-infer", "input=/input", "out_dir=/output"]
    cohort = synth_cohort(tmp_path_factory)
    inp, out, work = tmp_path / "input", tmp_path / "output", tmp_path / "work"
    for d in (inp, work):
        d.mkdir()
    shutil.copy(cohort / "images" / "P002_m00.nii.gz", inp / "P002_m00.nii.gz")
    args = [str(BIN / command[0])] + [a.replace("/input", str(inp)).replace("/output", str(out)) for a in command[1:]]

    env = dict(os.environ, ONFH_SEG_MODELS=str(MODELS), ONFH_SEG_CONFIGS=str(ROOT / "configs"),
               MPLCONFIGDIR=str(tmp_path / "mpl"))
    res = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-3000:]
    assert "done 1, skipped 0, failed 0" in res.stdout
    assert "Traceback" not in log

    meas = json.loads((out / "P002_m00_measurements.json").read_text())
    manifest = json.loads((out / "run_manifest.json").read_text())
    assert meas["status"] == "ok" and manifest["provider_requested"] == "auto"
    if cuda_available():
        assert meas["providers"][0] == "CUDAExecutionProvider", log
    else:
        # provider=auto without CUDA: a logged line says CPU is used and why
        assert re.search(r"CUDA.*(not available|unavailable|absent).*CPU", log, re.I), log[-3000:]
        assert meas["providers"] == ["CPUExecutionProvider"]
        assert manifest["providers"] == ["CPUExecutionProvider"]
    model_meta = json.loads((MODELS / "model.json").read_text())
    assert meas["model_version"] == manifest["model"]["version"] == model_meta["model_version"]
    for suffix in ("_seg.nii.gz", "_overlay.png"):
        assert (out / f"P002_m00{suffix}").is_file()
    cols, rows = read_csv(out / "measurements.csv")
    assert cols == list(CSV_COLUMNS) and rows
    assert sorted(p.name for p in work.iterdir()) == [], "nothing may be written to the working folder"
