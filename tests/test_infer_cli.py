"""onfh-infer end to end: output names, seg on the input grid, JSON/CSV contract, bad inputs, DICOM, no torch.

Plumbing runs use ``FakeSegmenter`` (tests/test_batch.py) through the
``engine=`` key; the abdominal MR check uses the real engine and shipped model
when ``models/fine.onnx`` exists.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import cli_env, no_temporaries, read_csv, run_cli, synth_cohort
from test_batch import FAKE_ENGINE, base_cfg, factory, truncated_copy

from onfh_seg.run.batch import run_batch
from onfh_seg.run.records import BatchSummary
from onfh_seg.infer.inputs import expand_input, load_scan
from onfh_seg.infer.scan_jobs import dicom_series_name
from onfh_seg.measure import CSV_COLUMNS, HIP_KEYS, HIP_QC_KEYS
from onfh_seg.quality import QC_FLAGS

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
ABDOMEN = SHARED / "data" / "nifti" / "abdomen_mr_t1_3mm.nii.gz"
HFS = SHARED / "data" / "dicom" / "siemens_t1_decubitus" / "HFS"
MODELS = ROOT / "models"
HAVE_MODEL = (MODELS / "fine.onnx").is_file() and (MODELS / "model.json").is_file()
CONTRACT_KEYS = ("input", "input_sha256", "model_version", "status", "error", "qc_flags", "mean_confidence", "hips")
EXTRA_KEYS = ("model_sha256", "providers", "timings", "software")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return synth_cohort(tmp_path_factory)


@pytest.fixture(scope="module")
def fake_model(cohort) -> Path:
    return cohort  # images/ + labels/ pairs: exactly what FakeSegmenter reads


def save_like(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, 1)
    img.set_qform(affine, 1)
    nib.save(img, str(path))
    return path


def mr_like(shape=(40, 40, 16), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.normal(300.0, 60.0, size=shape).clip(0, None)
    data[:4] = 0.0
    return data.astype(np.float32)


# ---------------------------------------------------------------- no torch on the inference path


def test_inference_modules_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import onfh_seg.cli.infer, onfh_seg.run.batch, onfh_seg.infer.pipeline, onfh_seg.infer.inputs\n"
        "import onfh_seg.infer.engine, onfh_seg.infer.postprocess, onfh_seg.measure, onfh_seg.report.overlay\n"
        "import onfh_seg.io.dicom, onfh_seg.io.dicom_out, onfh_seg.preprocess\n"
        "import onfh_seg.run.jobs as b; b.load_engine_class(b.DEFAULT_ENGINE)\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'lightning', 'monai')))\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


def test_cli_run_with_torch_blocked(cohort, fake_model, tmp_path: Path) -> None:
    """A whole onfh-infer run (overlay included) in a process where importing torch fails."""
    out = tmp_path / "out"
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # any 'import torch' now raises ImportError\n"
        "from onfh_seg.cli.infer import main\n"
        f"sys.argv = ['onfh-infer', 'input={cohort / 'images' / 'P002_m00.nii.gz'}', 'out_dir={out}',\n"
        f"            'model_dir={fake_model}', 'engine={FAKE_ENGINE}']\n"
        "main()\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=cli_env(), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "done 1, skipped 0, failed 0" in res.stdout
    assert json.loads((out / "P002_m00_measurements.json").read_text())["status"] == "ok"


def test_nifti_run_does_not_import_pydicom(cohort, tmp_path: Path) -> None:
    """Reading, segmenting (a stand-in segmenter), measuring and writing a NIfTI scan (overlay included) never
    imports pydicom (nor requests through it); pydicom still imports afterwards, for DICOM input."""
    code = (
        "import sys, types\n"
        "import numpy as np\n"
        "import onfh_seg.cli.infer, onfh_seg.run.batch\n"
        "from onfh_seg.config import infer_settings\n"
        "from onfh_seg.infer.inputs import expand_input\n"
        "from onfh_seg.infer.pipeline import process_scan\n"
        "from onfh_seg.run.jobs import DEFAULT_ENGINE, load_engine_class\n"
        "load_engine_class(DEFAULT_ENGINE)\n"
        "class Empty:\n"
        "    def segment(self, image, affine):\n"
        "        return types.SimpleNamespace(labels=np.zeros(image.shape, np.uint8), mean_confidence=1.0)\n"
        f"job = expand_input({str(cohort / 'images' / 'P002_m00.nii.gz')!r})[0]\n"
        f"out = process_scan(job, {str(tmp_path / 'out')!r}, Empty(), infer_settings({{'input': 'x', 'out_dir': 'y'}}))\n"
        "assert out['status'] == 'ok' and any(n.endswith('_overlay.png') for n in out['outputs']), out\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('pydicom', 'requests', 'highdicom'))\n"
        "assert not loaded, loaded[:5]\n"
        "import pydicom.dataset\n"
        "print('ok', pydicom.dataset.Dataset.__name__)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=cli_env(), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "ok Dataset"


# ---------------------------------------------------------------- CLI basics


def test_help_explains_keys(tmp_path: Path) -> None:
    res = run_cli(["--help"], tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    for key in ("input=", "out_dir=", "model_dir=", "provider=auto|cpu|cuda", "threads=", "workers=", "tta=",
                "fast=", "reference=acetabulum|viable_head", "overlay=", "resume=", "measurements.csv"):
        assert key in res.stdout, key
    assert not list(tmp_path.iterdir()), "help must not write files"


def test_missing_input_and_keys_are_one_line_errors(tmp_path: Path) -> None:
    res = run_cli([f"input={tmp_path / 'nope.nii.gz'}", f"out_dir={tmp_path / 'out'}"], tmp_path, timeout=120)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [f"error: input not found: {tmp_path / 'nope.nii.gz'}"]
    assert not (tmp_path / "out").exists()
    res = run_cli([f"input={tmp_path}"], tmp_path, timeout=120)
    assert res.returncode != 0 and "Traceback" not in res.stderr and "out_dir" in res.stderr
    res = run_cli([f"input={tmp_path}", f"out_dir={tmp_path / 'o'}", "provider=tpu"], tmp_path, timeout=120)
    assert res.returncode == 1 and "provider" in res.stderr and "Traceback" not in res.stderr


# ---------------------------------------------------------------- one good scan


def test_outputs_names_grid_json_csv(cohort, fake_model, tmp_path: Path) -> None:
    src = cohort / "images" / "P002_m00.nii.gz"
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(src, scans / "P002_m00.nii.gz")
    nib.save(nib.load(str(src)), str(scans / "plain.nii"))  # uncompressed input, same voxels
    out = tmp_path / "out"
    res = run_cli([f"input={scans}", f"out_dir={out}", f"model_dir={fake_model}", f"engine={FAKE_ENGINE}"], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1].startswith("done 2, skipped 0, failed 0")
    assert "Traceback" not in res.stderr
    assert "execution provider: CPUExecutionProvider" in res.stdout  # the one used, printed

    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([
        "P002_m00_seg.nii.gz", "P002_m00_measurements.json", "P002_m00_overlay.png",
        "plain_seg.nii.gz", "plain_measurements.json", "plain_overlay.png",
        "measurements.csv", "errors.csv", "run_manifest.json",
        "labels.json", "labels.ctbl", "labels_itksnap.txt",  # label tables for viewers, once per out_dir
    ])
    assert no_temporaries(out) == [] and not (tmp_path / "infer.log").exists()

    # seg: uint8 on exactly the input grid (shape, affine, sform/qform and codes), labels as in truth
    src_img = nib.load(str(src))
    seg = nib.load(str(out / "P002_m00_seg.nii.gz"))
    assert seg.shape == src_img.shape and seg.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(seg.affine, src_img.affine)
    for get in ("get_sform", "get_qform"):
        m_seg, code_seg = getattr(seg, get)(coded=True)
        m_src, code_src = getattr(src_img, get)(coded=True)
        np.testing.assert_array_equal(m_seg, m_src)
        assert code_seg == code_src
    truth = np.asarray(nib.load(str(cohort / "labels" / "P002_m00.nii.gz")).dataobj)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 3, 4}
    assert np.mean(np.asarray(seg.dataobj) == truth) > 0.999

    meas = json.loads((out / "P002_m00_measurements.json").read_text())
    for key in CONTRACT_KEYS + EXTRA_KEYS:
        assert key in meas, key
    assert meas["status"] == "ok" and meas["error"] is None and meas["input"] == str(scans / "P002_m00.nii.gz")
    assert meas["input_sha256"] == __import__("hashlib").sha256((scans / "P002_m00.nii.gz").read_bytes()).hexdigest()
    assert meas["model_version"] == "fake-1.0" and meas["providers"] == ["CPUExecutionProvider"]
    assert [h["side"] for h in meas["hips"]] == ["right", "left"]
    for hip in meas["hips"]:
        assert tuple(hip) == HIP_KEYS + HIP_QC_KEYS
    assert set(meas["qc_flags"]) <= set(QC_FLAGS)
    assert (out / "P002_m00_overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    cols, rows = read_csv(out / "measurements.csv")
    assert cols == list(CSV_COLUMNS)
    assert [(r["scan"], r["side"]) for r in rows] == [("P002_m00", "right"), ("P002_m00", "left"),
                                                      ("plain", "right"), ("plain", "left")]
    cols, errors = read_csv(out / "errors.csv")
    assert cols == ["scan", "image", "error"] and errors == []


def test_console_names_scans_with_a_head_set_aside() -> None:
    """A scan measured with one hip after the anatomy gate refused a structure found as a head (flag
    ``head_set_aside``) counts as done, and the console names it: a head may be missing there."""
    summary = BatchSummary.of(Path("."), [{"name": "a", "status": "ok", "set_aside": True},
                                          {"name": "b", "status": "ok", "no_hip": True},
                                          {"name": "c", "status": "ok"}])
    assert (summary.done, summary.set_aside, summary.no_hip) == (2, ["a"], ["b"])
    assert summary.line() == ("done 2 (a head set aside by the anatomy gate in a), no hip found 1 (b), skipped 0, "
                              "failed 0")


def test_seg_keeps_unusual_header_geometry(fake_model, tmp_path: Path) -> None:
    """sform code 2 with qform code 0 (as in the shared abdominal MR) and a 4D singleton input."""
    data = mr_like()[..., None]
    aff = np.array([[0.0, 0.0, -3.0, 50.0], [-1.2, 0.0, 0.0, 20.0], [0.0, 1.1, 0.0, -30.0], [0, 0, 0, 1.0]])
    img = nib.Nifti1Image(data, aff)
    img.set_sform(aff, 2)
    img.set_qform(None, 0)
    nib.save(img, str(tmp_path / "odd.nii.gz"))
    out = tmp_path / "out"
    summary = run_batch(base_cfg(tmp_path / "odd.nii.gz", out, fake_model), segmenter_factory=factory(fake_model))
    assert (summary.done, summary.no_hip, summary.failed) == (0, ["odd"], 0) and summary.exit_code == 0
    assert summary.line() == "done 0, no hip found 1 (odd), skipped 0, failed 0"
    seg = nib.load(str(out / "odd_seg.nii.gz"))
    assert seg.shape == data.shape[:3]
    assert int(seg.header["sform_code"]) == 2 and int(seg.header["qform_code"]) == 0
    np.testing.assert_array_equal(seg.affine, nib.load(str(tmp_path / "odd.nii.gz")).affine)
    meas = json.loads((out / "odd_measurements.json").read_text())
    assert meas["qc_flags"][0] == "no_femoral_head_found" and meas["hips"] == []


# ---------------------------------------------------------------- bad inputs


def make_bad_inputs(folder: Path, cohort: Path) -> dict[str, str]:
    """Bad NIfTI files and the expected fragment of their one-line error."""
    folder.mkdir(parents=True, exist_ok=True)
    truncated_copy(cohort / "images" / "P001_m00.nii.gz", folder / "truncated.nii.gz")
    eye = np.diag([1.0, 1.0, 3.0, 1.0])
    save_like(folder / "fourd.nii.gz", np.stack([mr_like(), mr_like(seed=1)], -1), eye)
    save_like(folder / "twod.nii.gz", mr_like()[:, :, 0], eye)
    save_like(folder / "spacing.nii.gz", mr_like(), np.diag([0.05, 0.05, 0.05, 1.0]))
    save_like(folder / "huge_spacing.nii.gz", mr_like(), np.diag([1.0, 1.0, 30.0, 1.0]))
    ct = mr_like() - 100.0
    ct[:10] = -1000.0
    save_like(folder / "ct.nii.gz", ct, eye)
    save_like(folder / "constant.nii.gz", np.full((20, 20, 10), 5, np.int16), eye)
    (folder / "text.nii.gz").write_text("not an image\n" * 100)
    return {
        "truncated": "corrupt or truncated gzip",
        "fourd": "image is 4D",
        "twod": "image is 2D",
        "spacing": "implausible voxel spacing",
        "huge_spacing": "implausible voxel spacing",
        "ct": "image is not MR-like (looks like CT)",
        "constant": "image is empty or constant",
        "text": "not a NIfTI file",
    }


def test_bad_inputs_fail_alone_and_are_isolated(cohort, fake_model, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    expected = make_bad_inputs(bad, cohort)
    out = tmp_path / "out"
    args = [f"input={bad}", f"out_dir={out}", f"model_dir={fake_model}", f"engine={FAKE_ENGINE}"]
    res = run_cli(args, tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert res.stdout.strip().splitlines()[-1].startswith(f"done 0, skipped 0, failed {len(expected)}")
    _, errors = read_csv(out / "errors.csv")
    got = {e["scan"]: e["error"] for e in errors}
    assert sorted(got) == sorted(expected)
    for name, fragment in expected.items():
        assert fragment in got[name], (name, got[name])
        meas = json.loads((out / f"{name}_measurements.json").read_text())
        assert meas["status"] == "error" and meas["error"] == got[name] and meas["hips"] == []
    assert sorted(p.name for p in out.glob("*_seg.nii.gz")) == [] and list(out.glob("*.png")) == []
    assert read_csv(out / "measurements.csv")[1] == []
    assert no_temporaries(out) == []

    # one good scan among them: exit 0, the others still listed
    shutil.copy(cohort / "images" / "P001_m06.nii.gz", bad / "good.nii.gz")
    nan = mr_like()
    nan[10, 10, 5] = np.nan
    save_like(bad / "nans.nii.gz", nan, np.diag([1.0, 1.0, 3.0, 1.0]))
    res = run_cli(args + ["overlay=false"], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    # the scan without a head is counted apart and named, not as done or failed
    assert res.stdout.strip().splitlines()[-1].startswith(f"done 1, no hip found 1 (nans), skipped 0, failed {len(expected)}")
    meas = json.loads((out / "nans_measurements.json").read_text())
    assert meas["status"] == "ok" and any("non-finite" in w for w in meas["warnings"])
    assert "no_femoral_head_found" in meas["qc_flags"]
    assert no_temporaries(out) == []


@pytest.mark.skipif(not ABDOMEN.is_file(), reason=f"shared abdominal MR not found at {ABDOMEN}")
def test_abdominal_mr_has_no_femoral_head(fake_model, tmp_path: Path) -> None:
    """Real engine and model when shipped (models/fine.onnx), else the fake (plumbing only)."""
    out = tmp_path / "out"
    if HAVE_MODEL:
        cfg = base_cfg(ABDOMEN, out, MODELS, engine="onfh_seg.infer.engine:Segmenter", provider="cpu", overlay=True)
        summary = run_batch(cfg)
    else:
        summary = run_batch(base_cfg(ABDOMEN, out, fake_model, overlay=True), segmenter_factory=factory(fake_model))
    assert (summary.done, summary.no_hip, summary.failed) == (0, ["abdomen_mr_t1_3mm"], 0)
    assert summary.line() == "done 0, no hip found 1 (abdomen_mr_t1_3mm), skipped 0, failed 0"
    meas = json.loads((out / "abdomen_mr_t1_3mm_measurements.json").read_text())
    assert meas["status"] == "ok", meas["error"]
    refusal = {"no_femoral_head_found", "not_hip_anatomy"} & set(meas["qc_flags"])  # no head, or the gate's refusal
    assert refusal and meas["hips"] == []
    seg = nib.load(str(out / "abdomen_mr_t1_3mm_seg.nii.gz"))
    src = nib.load(str(ABDOMEN))
    assert seg.shape == src.shape and np.array_equal(seg.affine, src.affine)
    assert not np.isin(np.asarray(seg.dataobj), (2, 3)).any(), "no lesion may be invented"
    _, rows = read_csv(out / "measurements.csv")
    assert len(rows) == 1 and rows[0]["side"] == "" and refusal <= set(rows[0]["qc_flags"].split(";"))
    assert (out / "abdomen_mr_t1_3mm_overlay.png").is_file()


# ---------------------------------------------------------------- DICOM study


def two_hip_labels(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """Two 'femoral heads' (spheres of ~39 mL, 150 mm apart, each under an acetabular cup) with a
    necrotic core in one: what the anatomy gate accepts as a pair of hips."""
    ijk = np.indices(shape).reshape(3, -1).T
    world = (ijk @ affine[:3, :3].T + affine[:3, 3]).reshape(*shape, 3)
    centre = world.reshape(-1, 3).mean(0)
    labels = np.zeros(shape, np.uint8)
    for dx, dy, lesion in ((45.0, 60.0, True), (-45.0, -60.0, False)):
        c = centre + np.array([dx, dy, 0.0])
        off = world - c
        d = np.linalg.norm(off, axis=-1)
        labels[(d > 23.0) & (d < 33.0) & (off[..., 2] > 0.3 * d)] = 4  # socket over the top of the head
        labels[d < 21.0] = 1
        if lesion:
            labels[np.linalg.norm(world - (c + np.array([0, 0, 8.0])), axis=-1) < 8.0] = 2
    return labels


@pytest.mark.skipif(not HFS.is_dir(), reason=f"shared DICOM data not found at {HFS}")
def test_dicom_study_writes_seg_sr_and_series_info(tmp_path: Path) -> None:
    # the real series is a head (refused as a hip by its BodyPartExamined): here it only carries
    # DICOM geometry and identifiers for the fake hip labels, so the header filter is off
    rules = {"refused_body_parts": []}
    [job] = expand_input(HFS, rules)
    scan = load_scan(job)
    model = tmp_path / "fake_model"
    (model / "images").mkdir(parents=True)
    (model / "labels").mkdir()
    save_like(model / "images" / "hfs.nii.gz", scan.image, scan.affine)
    save_like(model / "labels" / "hfs.nii.gz", two_hip_labels(scan.image.shape, scan.affine), scan.affine)

    out = tmp_path / "out"
    dicom_cfg = {"write_seg": True, "write_sr": True, "rules": rules}
    summary = run_batch(base_cfg(HFS, out, model, overlay=True, dicom=dicom_cfg), segmenter_factory=factory(model))
    assert (summary.done, summary.failed) == (1, 0), summary.results[0]["error"]
    name = job.name
    assert name == dicom_series_name(job.dicom["series_number"], job.dicom["series_description"])
    for suffix in ("_seg.nii.gz", "_measurements.json", "_overlay.png", "_seg.dcm", "_sr.dcm"):
        assert (out / f"{name}{suffix}").is_file(), suffix
    meas = json.loads((out / f"{name}_measurements.json").read_text())
    assert [h["side"] for h in meas["hips"]] == ["right", "left"]
    info = meas["dicom"]
    assert info["selection_reason"] and info["series_instance_uid"] == job.series.series_uid
    assert "PatientID" in info and "StudyInstanceUID" in info and "PatientName" not in info
    assert meas["outputs"]["dicom_seg"] == f"{name}_seg.dcm" and meas["outputs"]["dicom_sr"] == f"{name}_sr.dcm"

    seg = pydicom.dcmread(out / f"{name}_seg.dcm")
    sr = pydicom.dcmread(out / f"{name}_sr.dcm")
    assert seg.Modality == "SEG" and sr.Modality == "SR"
    src = pydicom.dcmread(job.series.files[0], stop_before_pixels=True)
    for ds in (seg, sr):
        assert str(ds.StudyInstanceUID) == str(src.StudyInstanceUID)
        assert str(ds.get("PatientName", "")) == "" and str(ds.get("PatientBirthDate", "")) == ""

    # no hip -> neither SEG nor SR (the reason recorded), and the stale ones from the earlier run are removed
    (model / "labels" / "hfs.nii.gz").unlink()
    summary = run_batch(base_cfg(HFS, out, model, resume=False, dicom=dicom_cfg), segmenter_factory=factory(model))
    assert (summary.done, summary.no_hip) == (0, [name])
    meas = json.loads((out / f"{name}_measurements.json").read_text())
    assert meas["hips"] == [] and "no_femoral_head_found" in meas["qc_flags"]
    assert not (out / f"{name}_seg.dcm").exists() and not (out / f"{name}_sr.dcm").exists()
    assert meas["outputs"]["dicom_seg"]["status"] == "not_written"
    assert meas["outputs"]["dicom_sr"]["status"] == "not_written"
    assert no_temporaries(out) == []


class _FakeSession:
    """Stands in for onnxruntime.InferenceSession: records the providers argument it was given."""

    made: list = []

    def __init__(self, path, options=None, providers=None):
        self.providers_arg = providers
        _FakeSession.made.append(providers)

    def get_providers(self):
        return [p[0] if isinstance(p, tuple) else p for p in self.providers_arg]

    def get_provider_options(self):
        return {(p[0] if isinstance(p, tuple) else p): dict(p[1]) if isinstance(p, tuple) else {} for p in self.providers_arg}


@pytest.mark.parametrize("tf32", [None, True])
def test_cuda_provider_runs_without_tf32_unless_asked(monkeypatch, tf32) -> None:
    """With CUDA offered, both sessions get the CUDA provider with use_tf32=0 (configs/infer.yaml
    cuda_tf32: false) or 1 when asked; what the session reports is kept for the run record."""
    import onnxruntime as ort

    from onfh_seg.config import infer_settings
    from onfh_seg.run.jobs import EngineSpec, engine_spec
    from onfh_seg.infer.engine import Segmenter

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", _FakeSession)
    _FakeSession.made = []
    seg = Segmenter(MODELS, provider="auto", threads=1, cuda_tf32=tf32)
    want = "1" if tf32 else "0"
    assert _FakeSession.made == [[("CUDAExecutionProvider", {"use_tf32": want}), "CPUExecutionProvider"]] * 2
    assert seg.provider == "CUDAExecutionProvider"
    assert seg.provider_options["CUDAExecutionProvider"] == {"use_tf32": want}
    spec = engine_spec(infer_settings({"model_dir": str(MODELS), "cuda_tf32": bool(tf32)}, require=False), workers=1)
    assert isinstance(spec, EngineSpec) and spec.cuda_tf32 is bool(tf32)
    assert spec.build().provider_options["CUDAExecutionProvider"] == {"use_tf32": want}
    _FakeSession.made = []
    Segmenter(MODELS, provider="cpu", threads=1, cuda_tf32=tf32)  # the CPU provider takes no such option
    assert _FakeSession.made == [["CPUExecutionProvider"]] * 2


def test_cuda_tf32_must_be_a_boolean(tmp_path) -> None:
    res = run_cli([f"input={tmp_path}", f"out_dir={tmp_path / 'o'}", "cuda_tf32=sometimes"], tmp_path)
    assert res.returncode != 0 and "cuda_tf32" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
