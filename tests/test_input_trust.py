"""Issue 24: never measure the wrong side, the wrong patient or a corrupted image; never drop a row.

The phantom, the stand-in segmenter and the DICOM writer come from ``test_reliability_io`` (a tiny two-hip
"pelvis" with a lesion in the right head only). Each case here failed before the fix it covers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from nibabel.spatialimages import HeaderDataError
from pydicom.uid import generate_uid

from conftest import read_csv
from test_reliability_io import (
    CFG,
    ThresholdSegmenter,
    phantom_affine,
    run_one,
    set_fields,
    write_phantom_dicom,
    write_phantom_nifti,
)

from onfh_seg.config import infer_settings
from onfh_seg.config_schemas import InferSettings
from onfh_seg.run.batch import run_batch
from onfh_seg.cli.common import override_hint
from onfh_seg.infer.image_read import _first_line
from onfh_seg.infer.input_files import InputError
from onfh_seg.infer.inputs import expand_input
from onfh_seg.infer.pipeline import process_scan
from onfh_seg.pacs.listener import StudyQueue, handle_queued_study, store_instance
from onfh_seg.pacs.state import Ledger, read_audit


@pytest.fixture(scope="module")
def phantom_file(tmp_path_factory) -> Path:
    """The phantom as a NIfTI file (sform = qform)."""
    return write_phantom_nifti(tmp_path_factory.mktemp("trust_nifti") / "hip.nii")


@pytest.fixture(scope="module")
def hip_series(tmp_path_factory) -> Path:
    """The phantom as a DICOM series (one file per slice, IM0000.dcm ...)."""
    folder = tmp_path_factory.mktemp("trust_dicom") / "study"
    write_phantom_dicom(folder)
    return folder


def edit_slices(src: Path, dst: Path, edit: Callable[[pydicom.Dataset, int], None],
                only: int | None = None) -> Path:
    """A copy of the series ``src`` in ``dst`` with ``edit(ds, k)`` applied to every slice (or slice ``only``)."""
    shutil.copytree(src, dst)
    for k, path in enumerate(sorted(dst.glob("IM*.dcm"))):
        if only is None or k == only:
            ds = pydicom.dcmread(path)
            edit(ds, k)
            ds.save_as(path)
    return dst


def assert_refused(meas: dict, out: Path, *words: str) -> None:
    """Status error, a one-line message naming every word, and no image, SEG or SR output left."""
    assert meas["status"] == "error", meas.get("hips")
    assert "\n" not in meas["error"] and all(w in meas["error"] for w in words), meas["error"]
    name = meas["name"]
    assert not [p.name for p in out.iterdir() if p.name.startswith(name) and not p.name.endswith(".json")]


# ---------------------------------------------------------------- (a) negative or zero PixelSpacing


@pytest.mark.parametrize("spacing", [[-4.0, -4.0], [0.0, 4.0], [4.0, -4.0]])
def test_non_positive_pixel_spacing_is_refused(hip_series: Path, tmp_path: Path, spacing: list[float]) -> None:
    """PixelSpacing [-1, -1] mirrored the image: the right lesion was reported on the left (SEG and SR written)."""

    def set_spacing(ds: pydicom.Dataset, k: int) -> None:
        ds.PixelSpacing = spacing

    study = edit_slices(hip_series, tmp_path / "study", set_spacing)
    _, meas = run_one(study, tmp_path / "out")
    assert_refused(meas, tmp_path / "out", "PixelSpacing", "IM0000.dcm", "must be positive")


# ---------------------------------------------------------------- (b) per-slice inconsistencies


@pytest.mark.parametrize(
    ("keyword", "value"),
    [("RescaleSlope", 2.0), ("RescaleIntercept", 500.0), ("BitsStored", 8), ("HighBit", 7),
     ("PixelRepresentation", 0), ("PatientID", "OTHER"), ("StudyInstanceUID", "1.2.3.999"),
     ("FrameOfReferenceUID", "1.2.3.998"), ("PixelSpacing", [4.4, 4.0]),
     ("ImageOrientationPatient", [1, 0, 0, 0, 0.996, 0.0872])],
)
def test_one_inconsistent_slice_is_refused(hip_series: Path, tmp_path: Path, keyword: str, value: Any) -> None:
    """RescaleSlope 2 on one slice gave a healthy hip a false lesion; BitsStored 8 cut head volumes by 25 %."""

    def set_tag(ds: pydicom.Dataset, k: int) -> None:
        setattr(ds, keyword, value)
        if keyword == "RescaleSlope":
            ds.RescaleIntercept = 0
        if keyword == "RescaleIntercept":
            ds.RescaleSlope = 1

    study = edit_slices(hip_series, tmp_path / "study", set_tag, only=12)
    _, meas = run_one(study, tmp_path / "out")
    assert_refused(meas, tmp_path / "out", keyword, "IM0012.dcm", "(InstanceNumber 13)")


@pytest.mark.parametrize("slope", [0.0, -1.0, "nan"])
def test_unusable_rescale_slope_is_refused(hip_series: Path, tmp_path: Path, slope: Any) -> None:
    def set_slope(ds: pydicom.Dataset, k: int) -> None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, 0

    study = edit_slices(hip_series, tmp_path / "study", set_slope)
    _, meas = run_one(study, tmp_path / "out")
    assert_refused(meas, tmp_path / "out", "RescaleSlope", "IM0000.dcm")


def test_same_rescale_on_every_slice_is_measured(hip_series: Path, tmp_path: Path) -> None:
    """A header change that describes the data consistently is not refused (the stand-in is scale-invariant)."""

    def set_slope(ds: pydicom.Dataset, k: int) -> None:
        ds.RescaleSlope, ds.RescaleIntercept = 2, 10

    study = edit_slices(hip_series, tmp_path / "study", set_slope)
    result, meas = run_one(study, tmp_path / "out")
    assert result["status"] == "ok", result["error"]
    assert [h["side"] for h in meas["hips"]] == ["right", "left"] and meas["qc_flags"] == []


# ---------------------------------------------------------------- (c) one patient, one study, one row


def another_series(src: Path, dst: Path, **tags: Any) -> Path:
    """A copy of the series ``src`` as a new series (new UIDs) with ``tags`` set on every slice."""
    series_uid = generate_uid()

    def retag(ds: pydicom.Dataset, k: int) -> None:
        ds.SeriesInstanceUID, ds.SOPInstanceUID = series_uid, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesNumber = 7
        for key, value in tags.items():
            setattr(ds, key, value)

    return edit_slices(src, dst, retag)


@pytest.mark.parametrize(("tags", "words"), [
    ({"PatientID": "P002"}, ("2 patients", "PatientID 'P001' in IM0000.dcm", "'P002' in IM0000.dcm")),
    ({"StudyInstanceUID": "1.2.826.0.1.3680043.8.498.1"}, ("2 studies", "StudyInstanceUID", "1.2.826.0.1.3680043.8.498.1")),
])
def test_folder_with_two_patients_or_studies_is_refused(hip_series: Path, tmp_path: Path, tags: dict,
                                                        words: tuple[str, ...]) -> None:
    """A second patient's series in the study folder: one of them was measured, 'ranked lower' the only trace."""
    study = tmp_path / "study"
    shutil.copytree(hip_series, study / "a")
    another_series(hip_series, study / "b", **tags)
    [job] = expand_input(study)
    assert job.error is not None and all(w in job.error for w in words), job.error
    _, meas = run_one(study, tmp_path / "out")
    assert_refused(meas, tmp_path / "out", *words)


def test_manifest_row_of_another_patient_is_refused(hip_series: Path, tmp_path: Path) -> None:
    """A manifest row whose DICOM PatientID differs from its patient_id: refused, the matching row is measured."""
    shutil.copytree(hip_series, tmp_path / "p1")
    another_series(hip_series, tmp_path / "p2", PatientID="P002")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("patient_id,timepoint,months,image\nP001,m0,0,p1\nP001,m6,6,p2\n")
    jobs = expand_input(manifest)
    assert jobs[0].error is None, jobs[0].error
    assert "manifest patient_id 'P001' does not match the DICOM PatientID 'P002'" in jobs[1].error
    result = process_scan(jobs[1], tmp_path / "out", ThresholdSegmenter(), CFG)
    assert result["status"] == "error" and result["rows"] == []


# ---------------------------------------------------------------- (d) nothing dropped


def test_second_run_keeps_the_first_runs_rows(phantom_file: Path, tmp_path: Path) -> None:
    """A second run into the same out_dir rewrote measurements.csv with only its own scans."""
    first, second, out = tmp_path / "first", tmp_path / "second", tmp_path / "out"
    for folder, names in ((first, ("a.nii", "b.nii")), (second, ("c.nii",))):
        folder.mkdir()
        for name in names:
            shutil.copy(phantom_file, folder / name)
    (first / "bad.nii").write_bytes(b"not a nifti")
    cfg = {"out_dir": str(out), "workers": 1, "overlay": False}
    for folder in (first, second):
        run_batch(infer_settings({**cfg, "input": str(folder)}), segmenter_factory=lambda threads: ThresholdSegmenter())
    _, rows = read_csv(out / "measurements.csv")
    assert sorted({r["scan"] for r in rows}) == ["a", "b", "c"]
    assert [r["side"] for r in rows if r["scan"] == "a"] == ["right", "left"]
    _, errors = read_csv(out / "errors.csv")
    assert [e["scan"] for e in errors] == ["bad"] and "not a NIfTI file" in errors[0]["error"]


def test_manifest_values_of_earlier_runs_are_kept(phantom_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    for pid, name in (("P001", "a.nii"), ("P002", "b.nii")):
        shutil.copy(phantom_file, tmp_path / name)
        manifest = tmp_path / f"{pid}.csv"
        manifest.write_text(f"patient_id,timepoint,months,image\n{pid},m6,6,{name}\n")
        run_batch(infer_settings({"input": str(manifest), "out_dir": str(out), "workers": 1, "overlay": False}),
                  segmenter_factory=lambda threads: ThresholdSegmenter())
    cols, rows = read_csv(out / "measurements.csv")
    assert cols[:5] == ["scan", "image", "patient_id", "timepoint", "months"]
    assert {(r["scan"], r["patient_id"], r["months"]) for r in rows} == {("a", "P001", "6.0"), ("b", "P002", "6.0")}


# ---------------------------------------------------------------- (e) sform/qform and shear


def write_forms(path: Path, sform: np.ndarray, qform: np.ndarray, qform_code: int = 1) -> Path:
    """The phantom's voxels with the given sform (code 1) and qform."""
    img = nib.load(str(write_phantom_nifti(path.parent / f"src_{path.name}")))
    out = nib.Nifti1Image(np.asanyarray(img.dataobj), sform)
    out.set_sform(sform, 1)
    out.set_qform(qform, qform_code)
    nib.save(out, str(path))
    return path


def sheared(shift_mm: float) -> np.ndarray:
    """The phantom affine with its z axis leaning along x by ``shift_mm`` per slice (a sheared grid)."""
    affine = phantom_affine()
    affine[0, 2] = shift_mm
    return affine


def test_sform_only_shear_far_from_the_qform_is_refused(tmp_path: Path) -> None:
    """A sform-only shear 26 mm from the qform changed ARCO C -> B with only a warning in the JSON."""
    path = write_forms(tmp_path / "shear.nii", sheared(0.9), phantom_affine())
    _, meas = run_one(path, tmp_path / "out")
    assert_refused(meas, tmp_path / "out", "sform and qform place the image up to 26.1 mm apart",
                   "geometry=sform or geometry=qform")


def test_geometry_setting_picks_the_form(tmp_path: Path) -> None:
    """geometry=qform measures on the (orthogonal) qform; geometry=sform on the sheared sform, untrusted."""
    path = write_forms(tmp_path / "shear.nii", sheared(0.9), phantom_affine())
    result, meas = run_one(path, tmp_path / "q", geometry="qform")
    assert result["status"] == "ok" and meas["qc_flags"] == [], result["error"]
    assert all(h["trusted"] for h in meas["hips"]) and meas["image"]["orientation"] == "LAS"
    assert any(w.startswith("geometry=qform: the qform is used") for w in meas["warnings"]), meas["warnings"]
    result, meas = run_one(path, tmp_path / "s", geometry="sform")
    assert result["status"] == "ok" and meas["qc_flags"] == ["sheared_geometry"], result["error"]
    assert meas["hips"] and not any(h["trusted"] for h in meas["hips"])
    assert {r["trusted"] for r in result["rows"]} == {"false"}


def test_forms_a_voxel_apart_are_refused_unless_chosen(tmp_path: Path) -> None:
    moved = phantom_affine()
    moved[:3, 3] += [5.0, 0.0, 0.0]  # 5 mm: more than a 4 mm voxel
    path = write_forms(tmp_path / "moved.nii", moved, phantom_affine())
    _, meas = run_one(path, tmp_path / "out")
    assert_refused(meas, tmp_path / "out", "5 mm apart (more than a voxel, 4 mm)")
    result, _ = run_one(path, tmp_path / "out2", geometry="sform")
    assert result["status"] == "ok", result["error"]
    near = phantom_affine()
    near[:3, 3] += [1.0, 0.0, 0.0]  # within a voxel: measured with a warning
    result, meas = run_one(write_forms(tmp_path / "near.nii", near, phantom_affine()), tmp_path / "out3")
    assert result["status"] == "ok" and any("1 mm apart; the sform is used" in w for w in meas["warnings"])


def test_geometry_naming_an_unset_form_is_refused(tmp_path: Path) -> None:
    path = write_forms(tmp_path / "sonly.nii", phantom_affine(), phantom_affine(), qform_code=0)
    _, meas = run_one(path, tmp_path / "out", geometry="qform")
    assert_refused(meas, tmp_path / "out", "geometry=qform but the header has no qform (qform_code 0)")
    with pytest.raises(InputError, match="geometry='both' is not allowed"):
        expand_input(path, geometry="both")


# ---------------------------------------------------------------- (f) image content QC


PLANE_BYTES = 70 * 30 * 2  # one int16 slice of the phantom (x fastest)


def damaged(phantom: Path, path: Path, start: int, length: int, fill: int) -> Path:
    """A copy of the phantom NIfTI with ``length`` data bytes from ``start`` (after the 352-byte header) set to ``fill``."""
    raw = bytearray(phantom.read_bytes())
    raw[352 + start: 352 + start + length] = bytes([fill]) * length
    path.write_bytes(bytes(raw))
    return path


def assert_suspect(meas: dict, *words: str) -> None:
    """Measured, flagged suspect_image_content with the reason, and no hip trusted (so no SR group)."""
    assert meas["status"] == "ok", meas["error"]
    assert "suspect_image_content" in meas["qc_flags"], (meas["qc_flags"], meas["hips"])
    reasons = " ".join(meas["qc_reasons"]["suspect_image_content"])
    assert all(w in reasons for w in words), reasons
    assert not any(h["trusted"] for h in meas["hips"])
    assert any(w.startswith("suspect_image_content: ") for w in meas["warnings"])


@pytest.mark.parametrize(("start", "length", "fill", "words"), [
    (12 * PLANE_BYTES, 5 * PLANE_BYTES, 0xFF, ("value -1", "slices 12-16")),  # whole slices of -1 through both heads
    (13 * PLANE_BYTES + 1000, 3 * PLANE_BYTES, 0x00, ("value 0", "slices 13-16")),  # zeros from mid-slice
    (14 * PLANE_BYTES + 2 * 70 * 10, 2 * 70 * 8, 0xFF, ("value -1", "slice 14")),  # 8 rows inside one slice
])
def test_damaged_slab_is_flagged(phantom_file: Path, tmp_path: Path, start: int, length: int, fill: int,
                                 words: tuple[str, ...]) -> None:
    """1 MiB of 0xFF gave a healthy hip a false 7.9-18.5 mL lesion, 1 MiB of zeros changed head volumes: no flag."""
    path = damaged(phantom_file, tmp_path / "slab.nii", start, length, fill)
    _, meas = run_one(path, tmp_path / "out")
    assert_suspect(meas, "constant slab", *words)


def rewrite(phantom: Path, path: Path, change: Callable[[np.ndarray], np.ndarray], dtype: type = np.int16) -> Path:
    """The phantom's voxels changed by ``change`` (same header geometry)."""
    img = nib.load(str(phantom))
    out = nib.Nifti1Image(change(np.asarray(img.dataobj).astype(np.float64)).astype(dtype), img.affine)
    out.set_sform(img.affine, 1)
    out.set_qform(img.affine, 1)
    nib.save(out, str(path))
    return path


def scaled_slice(factor: float, k: int = 15) -> Callable[[np.ndarray], np.ndarray]:
    def change(data: np.ndarray) -> np.ndarray:
        data[:, :, k] *= factor
        return data
    return change


def nan_slab(data: np.ndarray) -> np.ndarray:
    data[:, :, 14:16] = np.nan
    return data


def wrapped_slice(data: np.ndarray) -> np.ndarray:
    data[:, :, 15] = np.mod(data[:, :, 15], 256)  # as BitsStored 8 on one slice
    return data


@pytest.mark.parametrize(("change", "dtype", "words", "factor"), [
    (scaled_slice(2.0), np.int16, ("slice 15 (x",), 2.0),
    (scaled_slice(0.5), np.int16, ("slice 15 (x",), 0.5),
    (wrapped_slice, np.int16, ("slice 15",), None),
    (nan_slab, np.float32, ("constant slab", "slices 14-15"), None),
])
def test_slice_scale_jump_or_nan_run_is_flagged(phantom_file: Path, tmp_path: Path, change: Any, dtype: type,
                                                words: tuple[str, ...], factor: float | None) -> None:
    path = rewrite(phantom_file, tmp_path / "scaled.nii", change, dtype)
    _, meas = run_one(path, tmp_path / "out")
    assert_suspect(meas, *words)
    if factor is not None:  # the factor found, within the rounding of int16 voxels
        found = re.search(r"slice 15 \(x([0-9.]+)\)", " ".join(meas["qc_reasons"]["suspect_image_content"]))
        assert found and float(found.group(1)) == pytest.approx(factor, rel=0.03)


def test_damaged_dicom_slice_is_flagged(hip_series: Path, tmp_path: Path) -> None:
    """A DICOM slice whose pixel data turned to 0xFF bytes: flagged, the SR is not written."""

    def blank(ds: pydicom.Dataset, k: int) -> None:
        ds.PixelData = b"\xff" * len(ds.PixelData)

    study = edit_slices(hip_series, tmp_path / "study", blank, only=14)
    _, meas = run_one(study, tmp_path / "out")
    assert_suspect(meas, "constant slab", "value -1", "slice 14")
    assert meas["outputs"]["dicom_sr"]["status"] == "not_written"


def test_clean_backgrounds_are_not_flagged(phantom_file: Path, tmp_path: Path) -> None:
    """Zero-filled air and zero padding slices at the ends are not damage."""

    def zero_air(data: np.ndarray) -> np.ndarray:
        data[data < 150] = 0
        return data

    def padded(data: np.ndarray) -> np.ndarray:
        data[:, :, :3] = 0
        data[:, :, -2:] = 0
        return data

    for change in (zero_air, padded):
        path = rewrite(phantom_file, tmp_path / f"{change.__name__}.nii", change)
        result, meas = run_one(path, tmp_path / "out")
        assert result["status"] == "ok" and "suspect_image_content" not in meas["qc_flags"], meas.get("qc_reasons")


def body_with_moving_edge(nx: int = 200, ny: int = 160, nz: int = 24) -> np.ndarray:
    """Thick coronal-like slices of an elliptical body in zero-filled air whose outline grows and shrinks by up to
    12 voxels from slice to slice (as 5 mm slices through the belly do), noisy tissue, air mostly zero with sparse
    low values (so runs of zeros of every length lie along the body's edge)."""
    rng = np.random.default_rng(0)
    x, y = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    data = np.zeros((nx, ny, nz), np.float32)
    for k in range(nz):
        ax, ay = 70 + 12 * np.sin(k / 2.0), 55 + 10 * np.cos(k / 1.5)
        body = ((x - nx / 2) / ax) ** 2 + ((y - ny / 2) / ay) ** 2 <= 1
        air = np.where(rng.uniform(size=(nx, ny)) < 0.06, rng.integers(1, 9, (nx, ny)), 0)  # sparse noise
        data[:, :, k] = np.where(body, 300 + 40 * rng.standard_normal((nx, ny)), air)
    return np.clip(data, 0, None)


def test_air_at_a_moving_body_edge_is_not_a_slab() -> None:
    """Zero-filled air beside a body outline that moves between thick slices (real CPTAC-UCEC coronal T1 pelvis
    scans were all flagged for it) is not damage; zeros written over tissue in the same image still are."""
    from onfh_seg.infer.content_qc import content_problems

    data = body_with_moving_edge()
    assert content_problems(data, 0.0043) == []
    damaged_data = data.copy()
    plane = damaged_data[:, :, 11].ravel(order="F")  # storage order, x fastest
    plane[70 * 200 + 60: 76 * 200 + 140] = 0  # 1,280 bytes-worth of voxels zeroed across six rows of the body
    damaged_data[:, :, 11] = plane.reshape((200, 160), order="F")
    reasons = content_problems(damaged_data, 0.0043)
    assert reasons and "value 0" in reasons[0] and "slice 11" in reasons[0], reasons


# ---------------------------------------------------------------- (g) a SEG that cannot be written is reported


def batch_cfg(study: Path, out: Path, **dicom: Any) -> InferSettings:
    return infer_settings({"input": str(study), "out_dir": str(out), "workers": 1, "overlay": False,
                           "dicom": {"write_seg": True, "write_sr": True, **dicom}})


@pytest.mark.parametrize(("keyword", "words"), [
    ("SliceThickness", "SliceThickness missing in slice IM0000.dcm (InstanceNumber 1): a DICOM SEG needs it"),
    ("FrameOfReferenceUID", "FrameOfReferenceUID missing in slice IM0000.dcm (InstanceNumber 1): a DICOM SEG needs it"),
])
def test_seg_failure_is_reported_and_no_sr_alone(hip_series: Path, tmp_path: Path, caplog, keyword: str,
                                                 words: str) -> None:
    """A missing SliceThickness lost the SEG with a raw AttributeError while the SR was still written; the CSV
    showed nothing."""

    def drop(ds: pydicom.Dataset, k: int) -> None:
        delattr(ds, keyword)

    study = edit_slices(hip_series, tmp_path / "study", drop)
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="onfh_seg.run.batch"):
        summary = run_batch(batch_cfg(study, out), segmenter_factory=lambda threads: ThresholdSegmenter())
    [result] = summary.results
    assert result["status"] == "ok", result["error"]
    meas = json.loads((out / f"{result['name']}_measurements.json").read_text())
    assert meas["outputs"]["dicom_seg"] == {"status": "error", "error": words}
    assert meas["outputs"]["dicom_sr"]["status"] == "not_written"
    assert "dicom.sr_without_seg=true" in meas["outputs"]["dicom_sr"]["reason"]
    assert not list(out.glob("*.dcm"))
    _, rows = read_csv(out / "measurements.csv")
    assert {r["output_errors"] for r in rows} == {f"dicom_seg: {words}"}
    assert f"{result['name']}: not written: dicom_seg: {words}" in caplog.text


def test_sr_without_seg_when_asked(hip_series: Path, tmp_path: Path) -> None:
    def drop(ds: pydicom.Dataset, k: int) -> None:
        del ds.SliceThickness

    study = edit_slices(hip_series, tmp_path / "study", drop)
    out = tmp_path / "out"
    summary = run_batch(batch_cfg(study, out, sr_without_seg=True), segmenter_factory=lambda threads: ThresholdSegmenter())
    [result] = summary.results
    meas = json.loads((out / f"{result['name']}_measurements.json").read_text())
    assert meas["outputs"]["dicom_seg"]["status"] == "error"
    assert meas["outputs"]["dicom_sr"] == f"{result['name']}_sr.dcm" and (out / meas["outputs"]["dicom_sr"]).is_file()
    assert meas["settings"]["dicom.sr_without_seg"] is True


# ---------------------------------------------------------------- (h) smaller holes


def ct_phantom(offset: float) -> np.ndarray:
    """A CT-like pelvis in Hounsfield units (+ ``offset``): air, fat, muscle and two bony heads."""
    world = np.stack(np.meshgrid(*(np.arange(n) * 4.0 - (n - 1) * 2.0 for n in (70, 30, 30)), indexing="ij"), -1)
    ct = np.full(world.shape[:-1], -1000.0)
    body = (world[..., 0] / 130.0) ** 2 + (world[..., 1] / 55.0) ** 2 < 1.0
    ct[body] = -100.0
    ct[body & ((world[..., 0] / 110.0) ** 2 + (world[..., 1] / 40.0) ** 2 < 1.0)] = 45.0
    for sign in (1.0, -1.0):
        ct[np.linalg.norm(world - [sign * 90.0, 0.0, 0.0], axis=-1) < 22.0] = 700.0
    return ct + np.random.default_rng(1).normal(0.0, 15.0, ct.shape) + offset


def test_ct_shifted_by_1024_is_refused(tmp_path: Path) -> None:
    """A CT stored without its intercept (air near 0) passed the CT check."""
    for offset, name in ((0.0, "ct"), (1024.0, "ct_shifted")):
        path = tmp_path / f"{name}.nii"
        img = nib.Nifti1Image(ct_phantom(offset).astype(np.int16), phantom_affine())
        img.set_qform(phantom_affine(), 1)
        nib.save(img, str(path))
        _, meas = run_one(path, tmp_path / "out")
        assert_refused(meas, tmp_path / "out", "image is not MR-like (looks like CT")
    assert "without its -1024 offset" in meas["error"]


def test_fifo_in_an_input_folder_is_named(phantom_file: Path, hip_series: Path, tmp_path: Path) -> None:
    """A FIFO inside an input folder was skipped without a word."""
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(phantom_file, folder / "a.nii")
    os.mkfifo(folder / "b.nii.gz")
    jobs = expand_input(folder)
    assert [j.path.name for j in jobs] == ["a.nii", "b.nii.gz"]
    result = process_scan(jobs[1], tmp_path / "out", ThresholdSegmenter(), CFG)
    assert result["status"] == "error" and "not a regular file (a FIFO (named pipe))" in result["error"]
    study = tmp_path / "study"
    shutil.copytree(hip_series, study)
    os.mkfifo(study / "zz_pipe")
    [job] = expand_input(study)
    assert job.error is None and job.dicom["non_regular_files_skipped"] == ["zz_pipe (a FIFO (named pipe))"]
    _, meas = run_one(study, tmp_path / "out2")
    assert "skipped 1 file that is not a regular file: zz_pipe (a FIFO (named pipe))" in meas["warnings"]


@pytest.mark.parametrize(("field", "value", "message"), [
    ("datatype", 99, "corrupt NIfTI header in bad.nii: unknown datatype code 99"),
    ("datatype", 5, "corrupt NIfTI header in bad.nii: unknown datatype code 5"),
])
def test_header_errors_say_what_is_wrong(phantom_file: Path, tmp_path: Path, field: str, value: int,
                                         message: str) -> None:
    """'corrupt NIfTI header in X: 99' named neither the field nor the problem."""
    path = tmp_path / "bad.nii"
    path.write_bytes(set_fields(phantom_file.read_bytes(), **{field: value}))
    _, meas = run_one(path, tmp_path / "out")
    assert meas["error"] == message


def test_tiny_dicom_spacing_is_one_clear_line(hip_series: Path, tmp_path: Path) -> None:
    """PixelSpacing 1e-300 gave 'HeaderDataError: Could not decompose affine:'."""

    def tiny(ds: pydicom.Dataset, k: int) -> None:
        ds.PixelSpacing = [1e-300, 1e-300]

    study = edit_slices(hip_series, tmp_path / "study", tiny)
    _, meas = run_one(study, tmp_path / "out")
    assert_refused(meas, tmp_path / "out", "implausible PixelSpacing 1e-300", "IM0000.dcm")
    assert "decompose" not in meas["error"] and "Error" not in meas["error"]


@pytest.mark.parametrize("value", ["it's (1).nii.gz", "o'neil [2].nii", "it's \"x\" $HOME.nii"])
def test_quoting_hint_for_an_apostrophe_works_in_a_shell(value: str) -> None:
    """The hint suggested single quotes, which cannot hold an apostrophe."""
    hint = override_hint([f"input={value}"])
    suggested = hint.split("e.g. ", 1)[1]
    arg = subprocess.run(["bash", "-c", f"printf %s {suggested}"], capture_output=True, text=True,
                         check=True).stdout  # what the shell hands onfh-infer
    override = OverridesParser.create().parse_override(arg)
    assert override.value() == value and not override.is_sweep_override()


def test_study_of_results_only_gets_one_audit_line(tmp_path: Path) -> None:
    """A study that brought only an SR was accepted and never recorded: no audit line."""
    state = tmp_path / "state"
    queue = StudyQueue(state)
    report = pydicom.Dataset()
    report.Modality, report.StudyInstanceUID, report.SOPInstanceUID = "SR", "1.2.826.0.1.7", "1.2.826.0.1.7.1"
    assert store_instance(queue, report, "MODALITY") == 0x0000
    assert queue.settled(0.0, now=time.time() + 1.0) == ["1.2.826.0.1.7"]
    ledger = Ledger(state / "ledger.json")
    record = handle_queued_study("1.2.826.0.1.7", queue, {"state_dir": str(state), "deidentify": False},
                                 ThresholdSegmenter(), {}, ledger, "key")
    assert record["status"] == "refused" and "no image instances in the study (only SEG/SR: 1 received)" in record["reason"]
    assert [(r["study_uid"], r["status"]) for r in read_audit(state / "audit.jsonl")] == [("1.2.826.0.1.7", "refused")]
    assert queue.settled(0.0, now=time.time() + 1.0) == [] and ledger.entries["1.2.826.0.1.7"]["status"] == "refused"


def test_nibabel_affine_error_is_worded_for_a_user() -> None:
    """'Could not decompose affine' (nibabel, with the matrix on the next lines) says nothing to a user."""
    message = _first_line(HeaderDataError("Could not decompose affine:\n[[nan 0 0 0]]"))
    assert message == "the affine cannot be written as a qform (degenerate or non-finite voxel axes)"
    assert _first_line(KeyError(99)) == "unknown code 99"
