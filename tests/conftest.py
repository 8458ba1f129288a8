"""Shared fixtures and helpers: small synthetic cohorts generated once per session, CLI runs, CSV and SR readers."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
SHARED = ROOT.parent / "shared"
BIN = Path(sys.executable).parent


def synth_cfg(**over) -> dict:
    """configs/synth.yaml as a plain dict with overrides (nested keys via dicts)."""
    from onfh_seg.synth.cohort import synth_config

    return synth_config(over)


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory) -> Path:
    """Two patients (one unilateral, one bilateral), three timepoints, small matrices."""
    from onfh_seg.synth.cohort import generate_cohort

    out = tmp_path_factory.mktemp("cohort")
    cfg = synth_cfg(n_patients=2, seed=5, months=[0, 6, 12], acquisition={"max_matrix": 200})
    return generate_cohort(cfg, out)


def synth_cohort(tmp_path_factory) -> Path:
    """A tiny onfh-synth cohort (2 patients x 2 visits), generated once per test session."""
    out = tmp_path_factory.getbasetemp() / "synth_cohort"
    if (out / "manifest.csv").is_file():
        return out
    work = tmp_path_factory.mktemp("synth_run")
    cmd = [str(BIN / "onfh-synth"), f"out_dir={out}", "n_patients=2", "seed=3", "months=[0,6]",
           "acquisition.max_matrix=160"]
    res = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    return out


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def cli_env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["ONFH_SEG_CONFIGS"] = str(ROOT / "configs")
    env.update(extra)
    return env


def run_cli(args: list[str], cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "onfh-infer"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=cli_env(**env))


def no_temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def walk(items: Any) -> list[Dataset]:
    """All content items of an SR content tree, depth first."""
    out = []
    for item in items:
        out.append(item)
        out.extend(walk(item.get("ContentSequence", [])))
    return out


def read_sr_hips(path: Path) -> dict[str, dict[str, Any]]:
    """Per side: {concept meaning: (value, unit) or coded value} from the SR, with pydicom only."""
    sr = pydicom.dcmread(path)
    hips: dict[str, dict[str, Any]] = {}
    for group in walk(sr.ContentSequence):
        template = group.get("ContentTemplateSequence")
        if group.ValueType != "CONTAINER" or not template or template[0].TemplateIdentifier != "1501":
            continue
        found: dict[str, Any] = {}
        side = None
        for item in group.ContentSequence:
            name = item.ConceptNameCodeSequence[0].CodeMeaning
            if item.ValueType == "NUM":
                value = item.MeasuredValueSequence[0]
                found[name] = (float(value.NumericValue), value.MeasurementUnitsCodeSequence[0].CodeValue)
            elif item.ValueType == "CODE":
                code = item.ConceptCodeSequence[0]
                found[name] = (code.CodeValue, code.CodingSchemeDesignator)
                if name == "Finding Site":
                    for mod in item.get("ContentSequence", []):
                        if mod.ConceptNameCodeSequence[0].CodeMeaning == "Laterality":
                            side = mod.ConceptCodeSequence[0].CodeMeaning.lower()
        assert side is not None
        hips[side] = found
    return hips


def write_dicom_series(src: Path, folder: Path, description: str = "t1_tse_cor", series_number: int = 3,
                       body_part: str = "HIP", patient_id: str = "P001") -> list[Path]:
    """The NIfTI ``src`` as a single-frame MR DICOM series with its values and world geometry unchanged
    (the library's converter, ``onfh_seg.pacs.demo.nifti_to_dicom_series``)."""
    from pydicom.uid import generate_uid

    from onfh_seg.pacs.demo import nifti_to_dicom_series

    return nifti_to_dicom_series(src, folder, patient_id=patient_id, patient_name=f"Synthetic^{patient_id}",
                                 study_uid=generate_uid(), study_date="20240101", description=description,
                                 series_number=series_number, body_part=body_part, rescale=False)


def comparable_measurements(path: Path) -> dict:
    d = json.loads(path.read_text())
    d.pop("timings", None)
    return d


def assert_same_outputs(out: Path, ref: Path) -> None:
    """onfh-infer outputs in ``out`` equal ``ref``'s: segmentation bytes, measurements JSON except timings,
    measurements.csv and errors.csv bytes."""
    segs = sorted(p.name for p in ref.glob("*_seg.nii.gz"))
    assert segs and segs == sorted(p.name for p in out.glob("*_seg.nii.gz"))
    for name in segs:
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    jsons = sorted(p.name for p in ref.glob("*_measurements.json"))
    assert jsons == sorted(p.name for p in out.glob("*_measurements.json"))
    for name in jsons:
        assert comparable_measurements(out / name) == comparable_measurements(ref / name), name
    for name in ("measurements.csv", "errors.csv"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name


def sdist_tree(dst: Path) -> Path:
    """What an sdist of the project holds (pyproject, setup.py, src, configs, the ONNX model)."""
    dst.mkdir(parents=True)
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy(ROOT / name, dst / name)
    shutil.copytree(ROOT / "src" / "onfh_seg", dst / "src" / "onfh_seg",
                    ignore=shutil.ignore_patterns("__pycache__", "_data"))
    shutil.copytree(ROOT / "configs", dst / "configs")
    (dst / "models").mkdir()
    for name in ("coarse.onnx", "fine.onnx", "model.json", "MODEL_CARD.md"):
        shutil.copy(ROOT / "models" / name, dst / "models" / name)
    return dst
