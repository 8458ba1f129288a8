"""The inference-only install: `pip install .` gives the commands, the model and the configs, and no torch.

The slow test makes a clean virtual environment, installs the project into it with its dependencies
from the package index (non-editable), and runs onfh-infer on a demo scan from a folder outside the
checkout; the segmentation must equal the development install's. `make demo` must not install torch.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from conftest import sdist_tree

ROOT = Path(__file__).resolve().parents[1]
MAX_INSTALL_MB = 800


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def test_core_dependencies_hold_no_training_packages() -> None:
    core = " ".join(_project()["dependencies"]).lower()
    for name in ("torch", "monai", "lightning", "torchio", "dask", "pytest"):
        assert name not in core, name
    extras = _project()["optional-dependencies"]
    assert {"train", "dask", "dev", "pacs"} <= set(extras)
    assert any(d.startswith("torch==") for d in extras["train"])
    assert "pynetdicom" in core and "dicomweb-client" in core  # onfh-pacs works from the plain install


def test_licence_is_an_spdx_string() -> None:
    assert _project()["license"] == "Apache-2.0"


def test_make_demo_installs_no_extras() -> None:
    """`make demo` installs `-e .` only; torch (from TORCH_INDEX) and `.[dev]` belong to `make test`."""
    res = subprocess.run(["make", "-n", "-B", "demo"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    installs = [line for line in res.stdout.splitlines() if "pip install" in line]
    assert installs and all("torch" not in line and "[" not in line for line in installs), installs
    res = subprocess.run(["make", "-n", "-B", "test"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    text = res.stdout
    assert "--no-deps --index-url https://download.pytorch.org/whl/cpu torch==" in text and '".[dev]"' in text
    torch_pin = next(d for d in _project()["optional-dependencies"]["train"] if d.startswith("torch=="))
    assert f"torch=={torch_pin.split('==')[1]}" in text  # the Makefile's TORCH_VERSION is the extra's pin


def _du_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) / 2**20


def demo_scan(folder: Path) -> Path:
    """Demo patient 1's baseline scan (onfh-synth +preset=demo), made by the development install."""
    from onfh_seg.synth.cohort import generate_cohort, synth_config

    cfg = synth_config({"demo": True, "months": [0]})
    manifest = generate_cohort(cfg, folder)
    return sorted((manifest.parent / "images").glob("P01_m00*.nii.gz"))[0]


@pytest.mark.slow
def test_clean_venv_install_runs_onfh_infer_outside_the_checkout(tmp_path: Path) -> None:
    """`python3 -m venv v && v/bin/pip install .`: at most 800 MB, no torch, onfh-infer runs anywhere."""
    src = sdist_tree(tmp_path / "onfh-seg")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    start = time.monotonic()
    res = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(src)], capture_output=True, text=True,
                         timeout=1800)
    install_s = time.monotonic() - start
    assert res.returncode == 0, res.stderr[-3000:]
    assert "deprecat" not in (res.stdout + res.stderr).lower(), res.stderr[-3000:]
    size_mb = _du_mb(venv)
    print(f"clean venv install: {size_mb:.0f} MB, {install_s:.0f} s")
    assert size_mb <= MAX_INSTALL_MB
    py = str(venv / "bin" / "python")
    for module in ("torch", "monai", "lightning", "pytorch_lightning", "dask"):
        assert subprocess.run([py, "-c", f"import {module}"], capture_output=True).returncode != 0, module

    scan = demo_scan(tmp_path / "cohort")
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONFH_SEG_") and k != "PYTHONPATH"}
    for tool in ("onfh-track", "onfh-pacs", "onfh-synth"):
        out = subprocess.run([str(venv / "bin" / tool), "--help"], cwd=work, env=env, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0 and tool in out.stdout, out.stderr
    res = subprocess.run([str(venv / "bin" / "onfh-infer"), "-i", str(scan), "-o", "out"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    ref = subprocess.run([str(Path(sys.executable).parent / "onfh-infer"), "-i", str(scan), "-o", str(tmp_path / "ref")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert ref.returncode == 0, ref.stderr[-3000:]
    name = re.sub(r"\.nii(\.gz)?$", "", scan.name)
    import nibabel as nib
    import numpy as np

    mine = nib.load(str(work / "out" / f"{name}_seg.nii.gz"))
    theirs = nib.load(str(tmp_path / "ref" / f"{name}_seg.nii.gz"))
    assert np.array_equal(np.asarray(mine.dataobj), np.asarray(theirs.dataobj))
    assert np.array_equal(mine.affine, theirs.affine)
