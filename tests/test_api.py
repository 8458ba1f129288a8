"""Public Python API: ``from onfh_seg import segment, track`` with the CLI's defaults, validator and model lookup,
also from a non-editable wheel installed outside the repository."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import sdist_tree

from onfh_seg import config
from onfh_seg.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not (ROOT / "models" / "fine.onnx").is_file(), reason="shipped model not found")


@pytest.fixture(scope="module")
def one_scan(tmp_path_factory) -> Path:
    """One small synthetic pelvic scan (a one-patient, one-visit cohort)."""
    from onfh_seg.synth.cohort import generate_cohort, synth_config

    out = tmp_path_factory.mktemp("api_cohort")
    cfg = synth_config({"n_patients": 1, "seed": 5, "months": [0], "acquisition": {"max_matrix": 160}})
    generate_cohort(cfg, out)
    return out / "images" / "P001_m00.nii.gz"


def test_segmenter_defaults_are_the_cli_defaults() -> None:
    """Segmenter() with no arguments runs as onfh-infer does: mirroring on (since 2026-12-04), the shipped model."""
    from onfh_seg.infer.engine import Segmenter

    params = inspect.signature(Segmenter.__init__).parameters
    assert all(params[k].default is None for k in ("model_dir", "provider", "threads", "tta", "fast"))
    seg = Segmenter()
    cli = config.defaults("infer")
    assert seg.tta is cli["tta"] is True and seg.fast is cli["fast"] is False
    assert Path(seg.model_dir).resolve() == config.default_model_dir().resolve()
    assert seg.provider in seg.providers and seg.provider == seg.fine.get_providers()[0]


def test_segment_settings_go_through_the_cli_validator(one_scan: Path) -> None:
    from onfh_seg import segment

    with pytest.raises(ConfigError, match=r"tta='flase' is not allowed: expected true or false"):
        segment(one_scan, tta="flase")
    with pytest.raises(ConfigError, match=r"qc.min_confidence='high' is not allowed: expected a number"):
        segment(one_scan, qc={"min_confidence": "high"})
    with pytest.raises(ConfigError, match=r"unknown key 'qc.min_confidenc' \(did you mean 'qc.min_confidence'\?\)"):
        segment(one_scan, qc={"min_confidenc": 0.5})
    with pytest.raises(TypeError, match="provder"):  # a misspelt keyword argument: Python's own error
        segment(one_scan, provder="cpu")


def test_segment_and_track_take_the_config_keys_as_keywords() -> None:
    """The keyword arguments of segment() and track() are exactly the keys of configs/infer.yaml and
    configs/track.yaml (less the paths they take as arguments, and re-analysis, which is onfh-infer's)."""
    from onfh_seg import segment, track

    seg_keys = set(inspect.signature(segment).parameters) - {"image", "out_dir", "name"}
    assert seg_keys == set(config.defaults("infer")) - {"input", "out_dir", "reanalyse"}
    track_keys = set(inspect.signature(track).parameters) - {"manifest", "infer_dir", "out_dir"}
    assert track_keys == set(config.defaults("track")) - {"manifest", "infer_dir", "out_dir"}


def test_segment_in_memory_equals_written_outputs(one_scan: Path, tmp_path: Path) -> None:
    """A nibabel image in memory and a path with out_dir give the same labels and measurements."""
    from onfh_seg import segment

    from onfh_seg.api import ScanResult

    img = nib.load(str(one_scan))
    scan = segment(img, provider="cpu")
    assert isinstance(scan, ScanResult) and scan.name == "image"
    labels, meas = scan.labels, scan.measurements
    assert isinstance(labels, nib.Nifti1Image) and labels.shape == img.shape
    np.testing.assert_array_equal(labels.affine, img.affine)
    assert meas["status"] == "ok" and meas["hips"] and meas["model_version"] == config.model_version()
    assert set(np.unique(np.asarray(labels.dataobj))) <= {0, 1, 2, 3, 4}

    scan2 = segment(one_scan, out_dir=tmp_path / "seg", provider="cpu")
    labels2, meas2 = scan2.labels, scan2.measurements
    np.testing.assert_array_equal(np.asarray(labels.dataobj), np.asarray(labels2.dataobj))
    assert meas2["hips"] == meas["hips"] and meas2["qc_flags"] == meas["qc_flags"]
    written = nib.load(str(tmp_path / "seg" / "P001_m00_seg.nii.gz"))
    np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(labels2.dataobj))
    assert (tmp_path / "seg" / "measurements.csv").is_file() and (tmp_path / "seg" / "run_manifest.json").is_file()


def test_segment_reports_a_bad_scan_in_one_line(tmp_path: Path) -> None:
    from onfh_seg import segment

    bad = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((20, 20, 20), np.float32), np.eye(4)), str(bad))
    with pytest.raises(ValueError) as err:
        segment(bad)
    assert "constant" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
def test_non_editable_wheel_segments_and_tracks_outside_the_repository(tmp_path: Path) -> None:
    """Build a wheel, install it (no editable link, no environment variables) and run the README's
    example from a folder outside the repository on a tiny synthetic cohort (1 patient, 2 visits)."""
    from onfh_seg.synth.cohort import generate_cohort, synth_config

    src = sdist_tree(tmp_path / "src_tree")
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, capture_output=True, timeout=600)
    wheel = next((tmp_path / "dist").glob("onfh_seg-*.whl"))
    target = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    assert (target / "onfh_seg" / "_data" / "models" / "fine.onnx").is_file()
    assert (target / "onfh_seg" / "_data" / "configs" / "infer.yaml").is_file()

    work = tmp_path / "elsewhere"
    cfg = synth_config({"n_patients": 1, "seed": 5, "months": [0, 6], "acquisition": {"max_matrix": 160}})
    generate_cohort(cfg, work / "cohort")
    script = textwrap.dedent("""
        import json, sys
        import nibabel as nib
        import onfh_seg
        from onfh_seg import segment, track
        from onfh_seg.config import config_dir, default_model_dir

        scan = segment(nib.load("cohort/images/P001_m00.nii.gz"))
        scans = segment("cohort/manifest.csv", out_dir="seg")
        result = track("cohort/manifest.csv", "seg", "tracking")
        print(json.dumps({"module": onfh_seg.__file__, "configs": str(config_dir()), "models": str(default_model_dir()),
                          "hips": len(scan.measurements["hips"]), "scans": len(scans), "shape": list(scan.labels.shape),
                          "patients": sorted(result.records)}))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONFH_SEG_") and k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    res = subprocess.run([sys.executable, "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    import json

    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["module"].startswith(str(target)), out
    assert out["configs"].startswith(str(target)) and out["models"].startswith(str(target))
    assert out["hips"] >= 1 and out["scans"] == 2 and out["patients"] == ["P001"]
    assert (work / "seg" / "P001_m06_seg.nii.gz").is_file()
    assert (work / "tracking" / "longitudinal.csv").is_file() and (work / "tracking" / "reports" / "P001.html").is_file()
