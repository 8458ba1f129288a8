"""One identity for a scan from onfh-infer to onfh-track; one manifest reader; settings-aware resume.

A small onfh-synth cohort is laid out the awkward ways users lay out theirs
(a DICOM folder, an upper-case ``.NII.GZ``, two ``scan.nii.gz`` in different
folders, a manifest with a byte-order mark and CRLF line endings, a repeated
row), segmented by onfh-infer's batch runner with ``WorldTruthSegmenter``
(a stand-in engine, tests only: the truth labels of the cohort scan that
shares the input's world grid) and then tracked by onfh-track.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import write_dicom_series

from onfh_seg.config import infer_settings, track_settings
from onfh_seg.config_schemas import InferSettings, TrackSettings
from onfh_seg.run.batch import run_batch
from onfh_seg.io.manifest import CsvError, ManifestError, read_csv_rows, read_manifest, resolve
from onfh_seg.track.identity import read_infer_dir
from onfh_seg.track.cohort import track_cohort
from onfh_seg.track.inputs import collect_patients

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- stand-in engine (tests only)


@dataclass
class TruthResult:
    labels: np.ndarray
    mean_confidence: float
    timings: dict = field(default_factory=dict)


class WorldTruthSegmenter:
    """Returns the truth labels of the known scan whose voxels lie on the input's world grid.

    ``pairs`` are (image path, labels path). A known scan matches when the
    input grid is the known grid up to axis order and flips (a DICOM copy,
    a renamed copy) and the intensities agree; anything else gets all zeros.
    """

    version = "world-truth-1"
    sha256 = None
    providers = ["CPUExecutionProvider"]

    def __init__(self, pairs: list[tuple[Path, Path]]):
        self.known = [(nib.load(str(i)), nib.load(str(lab))) for i, lab in pairs]

    @staticmethod
    def _index_map(known_affine: np.ndarray, known_shape, affine: np.ndarray, shape) -> tuple | None:
        """Index arrays taking the known grid onto the input grid, None if the grids differ."""
        m = np.linalg.inv(known_affine) @ affine
        rot = np.round(m[:3, :3])
        if not np.allclose(m[:3, :3], rot, atol=1e-3) or not np.allclose(m[:3, 3], np.round(m[:3, 3]), atol=1e-3):
            return None
        ijk = np.indices(shape).reshape(3, -1)
        src = (rot @ ijk + np.round(m[:3, 3])[:, None]).astype(int)
        if np.any(src < 0) or np.any(src >= np.asarray(known_shape)[:, None]):
            return None
        return tuple(src)

    def segment(self, image: np.ndarray, affine: np.ndarray) -> TruthResult:
        for img, lab in self.known:
            idx = self._index_map(img.affine, img.shape, affine, image.shape)
            if idx is None:
                continue
            known = np.asarray(img.dataobj, np.float32)[idx].reshape(image.shape)
            if np.allclose(known, image, atol=1e-3 * float(np.ptp(image))):
                labels = np.asarray(lab.dataobj, np.uint8)[idx].reshape(image.shape)
                return TruthResult(labels, 0.95)
        return TruthResult(np.zeros(image.shape, np.uint8), 0.5)


# ---------------------------------------------------------------- awkward layouts


def write_csv_bom_crlf(path: Path, rows: list[dict], columns: list[str]) -> None:
    """A manifest as a spreadsheet on Windows saves it: UTF-8 BOM, CRLF line endings."""
    lines = [",".join(columns)] + [",".join(str(r.get(c, "")) for c in columns) for r in rows]
    path.write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode("utf-8"))


def infer_cfg(input_path: Path, out_dir: Path, **over) -> InferSettings:
    cfg = {"input": str(input_path), "out_dir": str(out_dir), "model_dir": "unused", "provider": "auto",
           "threads": 1, "workers": 1, "tta": False, "fast": False, "reference": "acetabulum", "overlay": False,
           "resume": True, "qc": {"head_ml_range": [15.0, 120.0], "min_confidence": 0.6},
           "dicom": {"write_seg": False, "write_sr": False, "rules": {}}}
    cfg.update(over)
    return infer_settings(cfg)


def track_cfg(manifest: Path, infer_dir: Path, out_dir: Path) -> TrackSettings:
    return track_settings({"manifest": str(manifest), "infer_dir": str(infer_dir), "out_dir": str(out_dir),
                           "report": False, "workers": 1})


@pytest.fixture(scope="module")
def layout(request, tmp_path_factory):
    """P001: DICOM folder + ``.NII.GZ``; P002: ``a/scan.nii.gz`` + ``b/scan.nii.gz``; P003: good + truncated."""
    src = request.getfixturevalue("small_cohort")  # tests/conftest.py
    rows = {(r["patient_id"], r["timepoint"]): r for r in read_manifest(src)}
    img = {k: resolve(src, r["image"]) for k, r in rows.items()}
    lab = {k: resolve(src, r["labels"]) for k, r in rows.items()}
    root = tmp_path_factory.mktemp("identity")
    write_dicom_series(img["P001", "m00"], root / "dicom" / "P001_m00")
    shutil.copy(img["P001", "m06"], root / "P001_M06.NII.GZ")
    for sub, tp in (("a", "m00"), ("b", "m06")):
        (root / sub).mkdir()
        shutil.copy(img["P002", tp], root / sub / "scan.nii.gz")
    shutil.copy(img["P001", "m06"], root / "P003_m00.nii.gz")
    raw = img["P002", "m00"].read_bytes()
    (root / "P003_m06.nii.gz").write_bytes(raw[: len(raw) // 2])
    manifest_rows = [
        {"patient_id": "P001", "timepoint": "m00", "months": 0, "image": "dicom/P001_m00", "harris_hip_score": 50},
        {"patient_id": "P001", "timepoint": "m06", "months": 6, "image": "P001_M06.NII.GZ", "harris_hip_score": 60},
        {"patient_id": "P001", "timepoint": "m06", "months": 6, "image": "P001_M06.NII.GZ", "harris_hip_score": 60},
        {"patient_id": "P002", "timepoint": "m00", "months": 0, "image": "a/scan.nii.gz"},
        {"patient_id": "P002", "timepoint": "m06", "months": 6, "image": "b/scan.nii.gz"},
        {"patient_id": "P002", "timepoint": "m09", "months": 9, "image": "", "harris_hip_score": 70},
        {"patient_id": "P003", "timepoint": "m00", "months": 0, "image": "P003_m00.nii.gz"},
        {"patient_id": "P003", "timepoint": "m06", "months": 6, "image": "P003_m06.nii.gz"},
    ]
    write_csv_bom_crlf(root / "manifest.csv", manifest_rows,
                       ["patient_id", "timepoint", "months", "image", "harris_hip_score"])
    pairs = [(img[k], lab[k]) for k in rows]
    summary = run_batch(infer_cfg(root / "manifest.csv", root / "infer"),
                        segmenter_factory=lambda threads: WorldTruthSegmenter(pairs))
    return root, summary, pairs


def test_infer_names_and_records_each_awkward_row(layout):
    root, summary, _ = layout
    assert (summary.done, summary.skipped, summary.failed) == (5, 0, 1), summary.line()
    names = {r["input"]: r["name"] for r in summary.results}
    assert names["dicom/P001_m00"] == "3_t1_tse_cor"
    assert names["P001_M06.NII.GZ"] == "P001_M06"
    assert names["a/scan.nii.gz"] == "a_scan" and names["b/scan.nii.gz"] == "b_scan"
    for ref, name in names.items():
        meas = json.loads((root / "infer" / f"{name}_measurements.json").read_text())
        assert meas["name"] == name and meas["input"] == ref
        assert meas["input_path"] == str((root / ref).resolve())
        assert meas["input_kind"] == ("dicom" if ref.startswith("dicom/") else "nifti")
    record = json.loads((root / "infer" / "run_manifest.json").read_text())
    by_name = {s["name"]: s for s in record["scans"]}
    assert by_name["b_scan"]["input_path"] == str((root / "b" / "scan.nii.gz").resolve())
    assert by_name["b_scan"]["settings"]["tta"] is False and by_name["b_scan"]["input_sha256"]
    ok = json.loads((root / "infer" / "a_scan_measurements.json").read_text())
    assert [h["side"] for h in ok["hips"]] == ["right", "left"]  # the stand-in engine found the truth


def test_track_finds_every_scan_onfh_infer_segmented(layout, tmp_path):
    root, _, _ = layout
    res = track_cohort(track_cfg(root / "manifest.csv", root / "infer", tmp_path / "track"))
    assert sorted(res.records) == ["P001", "P002", "P003"] and not res.failed
    for pid in ("P001", "P002"):
        rec = res.records[pid]
        assert [s["timepoint"] for s in rec["scans"]] == ["m00", "m06"], pid
        assert all([tp["timepoint"] for tp in h["timepoints"]] == ["m00", "m06"] for h in rec["hips"]), pid
        assert rec["hips"] and not rec["errors"], (pid, rec["errors"])
    assert res.records["P002"]["visits"][-1]["months"] == 9.0  # the clinic visit row
    reasons = {(e["patient_id"], e["timepoint"]): e["reason"] for e in res.errors}
    assert set(reasons) == {("P003", "m06")}
    # the failed follow-up carries onfh-infer's error, not "segmentation not found"
    assert reasons["P003", "m06"].startswith("onfh-infer failed:") and "truncated" in reasons["P003", "m06"]


def test_failed_scan_error_comes_from_the_run_records_without_its_json(layout, tmp_path):
    root, _, _ = layout
    infer = tmp_path / "infer"
    shutil.copytree(root / "infer", infer)
    (infer / "P003_m06_measurements.json").unlink()  # e.g. its worker died before writing it
    patients, _ = collect_patients(root / "manifest.csv", infer)
    reason = {e["timepoint"]: e["reason"] for e in patients["P003"].errors}["m06"]
    assert "truncated" in reason and "not found" not in reason
    (infer / "run_manifest.json").unlink()  # errors.csv alone still names the error
    patients, _ = collect_patients(root / "manifest.csv", infer)
    assert "truncated" in {e["timepoint"]: e["reason"] for e in patients["P003"].errors}["m06"]


def test_scan_without_a_head_names_onfh_infers_qc_flag(layout, tmp_path):
    root, _, _ = layout
    infer = tmp_path / "infer"
    shutil.copytree(root / "infer", infer)
    meas = json.loads((infer / "b_scan_measurements.json").read_text())
    meas.update(hips=[], qc_flags=["not_hip_anatomy"])  # what the anatomy gate records
    (infer / "b_scan_measurements.json").write_text(json.dumps(meas))
    patients, _ = collect_patients(root / "manifest.csv", infer)
    reasons = {e["timepoint"]: e["reason"] for e in patients["P002"].errors}
    assert reasons == {"m06": "no femoral head found (onfh-infer QC: not_hip_anatomy)"}


def test_changed_image_is_named_not_tracked(layout, tmp_path):
    root, _, _ = layout
    work = tmp_path / "copy"
    shutil.copytree(root, work, ignore=shutil.ignore_patterns("infer"))
    shutil.copytree(root / "infer", work / "infer")
    img = nib.load(str(work / "b" / "scan.nii.gz"))
    changed = nib.Nifti1Image(np.asanyarray(img.dataobj) + np.int16(1), img.affine, img.header)
    nib.save(changed, str(work / "b" / "scan.nii.gz"))
    shutil.rmtree(work / "dicom" / "P001_m00")
    write_dicom_series(root / "P001_M06.NII.GZ", work / "dicom" / "P001_m00")  # another image, same folder
    # the old infer_dir recorded the original files (paths in root/): match by the image as written
    patients, _ = collect_patients(work / "manifest.csv", work / "infer")
    reasons = {(p.patient_id, e["timepoint"]): e["reason"] for p in patients.values() for e in p.errors}
    assert "image changed after onfh-infer" in reasons["P002", "m06"] and "b/scan.nii.gz" in reasons["P002", "m06"]
    assert "image changed after onfh-infer" in reasons["P001", "m00"] and "dicom/P001_m00" in reasons["P001", "m00"]
    assert ("P002", "m00") not in reasons and ("P001", "m06") not in reasons


def test_not_segmented_image_is_named(layout, tmp_path):
    root, _, _ = layout
    shutil.copy(root / "P001_M06.NII.GZ", tmp_path / "new.nii.gz")
    (tmp_path / "m.csv").write_text(f"patient_id,months,image\nP9,0,{tmp_path / 'new.nii.gz'}\n")
    patients, _ = collect_patients(tmp_path / "m.csv", root / "infer")
    assert patients["P9"].errors[0]["reason"].startswith("not segmented by onfh-infer:")


def test_index_prefers_the_latest_run_for_one_image_under_two_names(layout, tmp_path):
    root, _, _ = layout
    infer = tmp_path / "infer"
    shutil.copytree(root / "infer", infer)
    old = json.loads((infer / "a_scan_measurements.json").read_text())
    (infer / "scan_measurements.json").write_text(json.dumps({**old, "name": "scan"}))  # an older run's name
    rec = read_infer_dir(infer).find(root / "a" / "scan.nii.gz", "a/scan.nii.gz")
    assert rec is not None and rec.name == "a_scan"


def test_same_file_name_elsewhere_is_not_taken_for_a_recorded_scan(layout, tmp_path):
    """Only records from before ``input_path`` fall back to the old name rule (file name without .nii.gz)."""
    root, _, _ = layout
    other = tmp_path / "elsewhere"
    other.mkdir()
    shutil.copy(root / "P003_m00.nii.gz", other / "P003_m00.nii.gz")
    (tmp_path / "m.csv").write_text(f"patient_id,months,image\nP9,0,{other / 'P003_m00.nii.gz'}\n")
    patients, _ = collect_patients(tmp_path / "m.csv", root / "infer")
    assert patients["P9"].errors[0]["reason"].startswith("not segmented by onfh-infer:")

    infer = tmp_path / "legacy"
    shutil.copytree(root / "infer", infer)
    (infer / "run_manifest.json").unlink()
    meas = json.loads((infer / "P003_m00_measurements.json").read_text())
    for key in ("input_path", "input_kind", "name"):
        del meas[key]
    meas["input"] = "P003_m00.nii.gz"  # as the old truth stand-in wrote it
    (infer / "P003_m00_measurements.json").write_text(json.dumps(meas))
    patients, _ = collect_patients(tmp_path / "m.csv", infer)
    assert patients["P9"].errors == [] and patients["P9"].scans[0].name == "P003_m00"


def test_one_image_on_two_rows_of_a_patient_is_one_scan(layout, tmp_path):
    root, _, _ = layout
    (tmp_path / "m.csv").write_text(
        "patient_id,months,image,side\n"
        f"P1,0,{root / 'a' / 'scan.nii.gz'},right\nP1,0,{root / 'a' / 'scan.nii.gz'},left\n"
        f"P1,6,{root / 'b' / 'scan.nii.gz'},right\n")
    patients, _ = collect_patients(tmp_path / "m.csv", root / "infer")
    assert [s.name for s in patients["P1"].scans] == ["a_scan", "b_scan"] and patients["P1"].errors == []


# ---------------------------------------------------------------- resume keyed on what changes outputs


def test_resume_reruns_on_changed_settings_only(layout, tmp_path):
    root, _, pairs = layout
    out = tmp_path / "out"
    scan = root / "P001_M06.NII.GZ"

    def run(**over):
        return run_batch(infer_cfg(scan, out, **over), segmenter_factory=lambda threads: WorldTruthSegmenter(pairs))

    assert run().line() == "done 1, skipped 0, failed 0"
    assert run(threads=2, workers=3, provider="cpu").line() == "done 0, skipped 1, failed 0"  # no result change
    assert run(tta=True).line() == "done 1, skipped 0, failed 0; re-run 1: settings changed (tta)"
    meas = json.loads((out / "P001_M06_measurements.json").read_text())
    record = json.loads((out / "run_manifest.json").read_text())
    assert meas["settings"]["tta"] is True and record["scans"][0]["settings"]["tta"] is True
    assert record["scans"][0]["rerun_reason"] == "settings changed (tta)"
    assert run(tta=True).line() == "done 0, skipped 1, failed 0"
    record = json.loads((out / "run_manifest.json").read_text())
    assert record["config"]["tta"] is True and record["scans"][0]["settings"]["tta"] is True

    line = run(tta=True, reference="viable_head", qc={"head_ml_range": [15, 120], "min_confidence": 0.7}).line()
    assert line.endswith("re-run 1: settings changed (reference, qc.min_confidence)")
    same = {"tta": True, "reference": "viable_head", "qc": {"head_ml_range": [15, 120], "min_confidence": 0.7}}
    assert run(**same, resume=False).line() == "done 1, skipped 0, failed 0; re-run 1: resume=false"
    assert run(**same, overlay=True).line().endswith("re-run 1: settings changed (overlay)")
    (out / "P001_M06_overlay.png").unlink()
    assert run(**same, overlay=True).line().endswith("re-run 1: outputs missing (overlay)")

    meas = json.loads((out / "P001_M06_measurements.json").read_text())
    del meas["settings"]  # outputs of a version that did not record settings
    (out / "P001_M06_measurements.json").write_text(json.dumps(meas))
    assert run(**same, overlay=True).line().endswith("re-run 1: settings not recorded")


# ---------------------------------------------------------------- the one manifest reader


def test_manifest_reader_tolerates_bom_crlf_blank_and_repeated_rows(tmp_path, caplog):
    path = tmp_path / "m.csv"
    text = "\ufeffpatient_id , months,image\r\nP1, 0 ,a.nii.gz\r\n\r\n,,\r\nP1,0,a.nii.gz,,\r\nP1,6\r\n"
    path.write_bytes(text.encode("utf-8"))
    with caplog.at_level(logging.WARNING, logger="onfh_seg.manifest"):
        rows = read_manifest(path, required=("patient_id", "months", "image"))
    assert rows == [{"patient_id": "P1", "months": "0", "image": "a.nii.gz"},
                    {"patient_id": "P1", "months": "6", "image": ""}]
    assert "line 5 repeats line 2" in caplog.text


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"patient_id,months,file\nP1,0,x\n", "has no 'image' column"),
    (b"patient_id\nP1\n", "has no 'months', 'image' columns"),
    (b"patient_id,image,image\nP1,a,b\n", "named twice: image"),
    (b"patient_id,months,image\nP1,0,a,b\n", "line 2: 4 fields but the header has 3"),
    (b"patient_id,months,image\nP\xe9,0,a\n", "is not UTF-8"),
    (b'patient_id,months,image\nP1,0,"a\n', "malformed CSV"),
])
def test_manifest_reader_one_line_errors(tmp_path, content, message):
    path = tmp_path / "m.csv"
    path.write_bytes(content)
    with pytest.raises(ManifestError, match=message) as info:
        read_manifest(path, required=("patient_id", "months", "image"))
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        read_manifest(tmp_path / "missing.csv")


def test_csv_rows_reader_for_files_that_are_not_manifests(tmp_path):
    """errors.csv and the like: the manifest reader's rules, errors that say "CSV file" (a CsvError)."""
    path = tmp_path / "errors.csv"
    path.write_bytes(b"\xef\xbb\xbfscan, error\r\n P1_m00 ,bad\r\n\r\nP1_m00,bad\r\n")
    assert read_csv_rows(path, required=("scan", "error")) == [{"scan": "P1_m00", "error": "bad"}]
    with pytest.raises(CsvError, match=r"^CSV file .* has no 'image' column") as info:
        read_csv_rows(path, required=("image",))
    assert not isinstance(info.value, ManifestError) and issubclass(ManifestError, CsvError)
    with pytest.raises(FileNotFoundError, match="^CSV file not found"):
        read_csv_rows(tmp_path / "missing.csv")


@pytest.mark.slow
def test_onfh_track_cli_reads_the_bom_manifest(layout, tmp_path):
    """The same manifest (BOM, CRLF) through onfh-track's own entry point: the counts it prints."""
    import subprocess
    import sys

    root, _, _ = layout
    exe = str(Path(sys.executable).parent / "onfh-track")
    res = subprocess.run([exe, f"manifest={root / 'manifest.csv'}", f"infer_dir={root / 'infer'}",
                          f"out_dir={tmp_path / 'o'}", "report=false"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "3 of 3 patients tracked" in res.stdout
    with open(tmp_path / "o" / "errors.csv", newline="") as fh:
        assert [(r["patient_id"], r["timepoint"]) for r in csv.DictReader(fh)] == [("P003", "m06")]
