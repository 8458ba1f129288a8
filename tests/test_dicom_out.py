"""DICOM output: SEG and TID 1500 SR round trips, identifiers, dciodvfy validation."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from onfh_seg import labels
from onfh_seg.io.dicom import load_series
from onfh_seg.io.dicom_geometry import sort_slices
from onfh_seg.io.dicom_series import DicomError, find_series
from onfh_seg.io.dicom_out import frames_to_label_map, label_map_to_frames, write_dicom_seg
from onfh_seg.io.dicom_sr import write_dicom_sr
from onfh_seg.io.nifti import make_image
from conftest import read_sr_hips

SHARED = Path(__file__).resolve().parents[2] / "shared"
HFS = SHARED / "data" / "dicom" / "siemens_t1_decubitus" / "HFS"

needs_shared = pytest.mark.skipif(not HFS.is_dir(), reason=f"shared DICOM data not found at {HFS}")

MEASUREMENTS: dict[str, Any] = {
    "model_version": "test-0.1",
    "status": "ok",
    "hips": [
        {"side": "right", "lesion_volume_ml": 14.0, "percent_head_involved": 26.9,
         "sir_necrotic": 0.41, "arco_extent": "B", "head_volume_ml": 52.1},
        {"side": "left", "lesion_volume_ml": 3.25, "percent_head_involved": 6.5,
         "sir_necrotic": 0.73, "arco_extent": "A", "head_volume_ml": 50.0},
    ],
}


# ---------------------------------------------------------------------------
# helpers


@pytest.fixture(scope="module")
def hfs() -> tuple[nib.Nifti1Image, list[Dataset], nib.Nifti1Image]:
    """The real HFS series, its headers and a label map with four spheres (labels 1-4)."""
    if not HFS.is_dir():
        pytest.skip(f"shared DICOM data not found at {HFS}")
    series = find_series(HFS)[0]
    image = load_series(series)
    world = nib.affines.apply_affine(image.affine, np.indices(image.shape).reshape(3, -1).T)
    world = world.reshape(*image.shape, 3)
    centre = world[128, 128, 17]
    label = np.zeros(image.shape, np.uint8)
    offsets = {labels.HEAD: (0, 0, 0), labels.NECROTIC: (0, 30, 10), labels.BAND: (0, -30, 0),
               labels.ACETABULUM: (20, 0, -40)}
    for value, offset in offsets.items():
        inside = np.linalg.norm(world - (centre + np.array(offset)), axis=-1) < 12.0
        label[inside] = value
    return image, list(series.headers), make_image(label, image.affine, np.uint8)


def read_seg_label_map(path: Path, source: list[Dataset]) -> np.ndarray:
    """Rebuild the NIfTI-space label array from a SEG file using pydicom only."""
    seg = pydicom.dcmread(path)
    bits = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    sorted_source = sort_slices(source)
    index = {str(ds.SOPInstanceUID): k for k, ds in enumerate(sorted_source)}
    frames = np.zeros((len(sorted_source), seg.Rows, seg.Columns), np.uint8)
    for f, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        ref = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = index[str(ref)]
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(position, [float(v) for v in sorted_source[k].ImagePositionPatient], atol=1e-3)
        frames[k][bits[f] > 0] = number
    return np.transpose(frames, (2, 1, 0))


def dciodvfy_errors(path: Path) -> list[str]:
    """Lines starting with 'Error' from dciodvfy (skip the test when it is missing)."""
    binary = shutil.which("dciodvfy")
    if binary is None:
        pytest.skip("dciodvfy not installed (Debian package dicom3tools)")
    result = subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


# ---------------------------------------------------------------------------
# SEG


@needs_shared
def test_seg_round_trip(hfs, tmp_path: Path) -> None:
    image, source, label_img = hfs
    out = write_dicom_seg(label_img, source, tmp_path / "seg.dcm", model_version="test-0.1")
    seg = pydicom.dcmread(out)
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == source[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == source[0].FrameOfReferenceUID
    rebuilt = read_seg_label_map(out, source)
    np.testing.assert_array_equal(rebuilt, np.asanyarray(label_img.dataobj))
    assert set(np.unique(rebuilt)) == {0, 1, 2, 3, 4}


@needs_shared
def test_seg_segment_codes(hfs, tmp_path: Path) -> None:
    _, source, label_img = hfs
    seg = pydicom.dcmread(write_dicom_seg(label_img, source, tmp_path / "seg.dcm"))
    found = {
        int(s.SegmentNumber): (
            s.SegmentedPropertyCategoryCodeSequence[0].CodeValue,
            s.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator,
            s.SegmentedPropertyTypeCodeSequence[0].CodeValue,
        )
        for s in seg.SegmentSequence
    }
    assert found == {
        labels.HEAD: ("91723000", "SCT", "2812003"),
        labels.NECROTIC: ("49755003", "SCT", "6574001"),
        labels.BAND: ("49755003", "DCM", "112082"),
        labels.ACETABULUM: ("91723000", "SCT", "37783008"),
    }
    band = [s for s in seg.SegmentSequence if s.SegmentNumber == labels.BAND][0]
    assert "double-line sign" in band.SegmentDescription


@needs_shared
def test_frames_follow_reoriented_label_maps(hfs) -> None:
    _, source, label_img = hfs
    frames, sorted_source = label_map_to_frames(label_img, source)
    canonical = nib.as_closest_canonical(label_img)
    assert canonical.shape != label_img.shape or not np.allclose(canonical.affine, label_img.affine)
    frames_canonical, _ = label_map_to_frames(canonical, source)
    np.testing.assert_array_equal(frames, frames_canonical)
    back = frames_to_label_map(frames, sorted_source)
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), np.asanyarray(label_img.dataobj))
    np.testing.assert_allclose(back.affine, label_img.affine)


@needs_shared
def test_wrong_grid_or_labels_rejected(hfs, tmp_path: Path) -> None:
    _, source, label_img = hfs
    shifted = label_img.affine.copy()
    shifted[:3, 3] += 5.0
    with pytest.raises(DicomError, match="not on the source series grid"):
        write_dicom_seg(make_image(label_img.get_fdata(), shifted, np.uint8), source, tmp_path / "x.dcm")
    bad = np.asanyarray(label_img.dataobj).copy()
    bad[0, 0, 0] = 9
    with pytest.raises(DicomError, match="label map values"):
        write_dicom_seg(make_image(bad, label_img.affine, np.uint8), source, tmp_path / "x.dcm")
    assert not (tmp_path / "x.dcm").exists()


@needs_shared
def test_empty_label_map_writes_valid_seg(hfs, tmp_path: Path) -> None:
    _, source, label_img = hfs
    empty = make_image(np.zeros(label_img.shape, np.uint8), label_img.affine, np.uint8)
    out = write_dicom_seg(empty, source, tmp_path / "empty.dcm")
    assert not read_seg_label_map(out, source).any()


# ---------------------------------------------------------------------------
# SR


@needs_shared
def test_sr_round_trip(hfs, tmp_path: Path) -> None:
    _, source, _ = hfs
    out = write_dicom_sr(MEASUREMENTS, source, tmp_path / "sr.dcm")
    sr = pydicom.dcmread(out)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    hips = read_sr_hips(out)
    assert set(hips) == {"right", "left"}
    for hip in MEASUREMENTS["hips"]:
        found = hips[hip["side"]]
        assert found["Volume"] == (pytest.approx(hip["lesion_volume_ml"]), "ml")
        assert found["Percent of femoral head volume involved by necrosis"] == (
            pytest.approx(hip["percent_head_involved"]), "%")
        assert found["T1 signal intensity ratio, necrotic zone to reference"] == (
            pytest.approx(hip["sir_necrotic"]), "1")
        assert found["ARCO extent class"] == (f"ARCO-{hip['arco_extent']}", "99ONFH")
        assert found["Finding Site"] == ("2812003", "SCT")
    schemes = [item.CodingSchemeDesignator for item in sr.CodingSchemeIdentificationSequence]
    assert "99ONFH" in schemes


@needs_shared
def test_sr_missing_values_and_bad_input(hfs, tmp_path: Path) -> None:
    _, source, _ = hfs
    no_lesion = {"hips": [{"side": "left", "lesion_volume_ml": 0.0, "percent_head_involved": 0.0,
                           "sir_necrotic": None, "arco_extent": "none"}]}
    hips = read_sr_hips(write_dicom_sr(no_lesion, source, tmp_path / "sr.dcm"))
    assert "T1 signal intensity ratio, necrotic zone to reference" not in hips["left"]
    assert hips["left"]["ARCO extent class"] == ("ARCO-0", "99ONFH")
    # absence of necrosis coded as such: a qualitative "Necrosis: Absent", no volume or % head finding
    assert hips["left"]["Necrosis"] == ("272519000", "SCT")
    assert "Volume" not in hips["left"] and "Percent of femoral head volume involved by necrosis" not in hips["left"]
    with pytest.raises(DicomError, match="side"):
        write_dicom_sr({"hips": [{"side": "middle"}]}, source, tmp_path / "bad.dcm")
    with pytest.raises(DicomError, match="no hip measurements"):
        write_dicom_sr({"hips": []}, source, tmp_path / "bad.dcm")
    with pytest.raises(DicomError, match="arco_extent"):
        write_dicom_sr({"hips": [{"side": "left", "arco_extent": "D"}]}, source, tmp_path / "bad.dcm")
    assert not (tmp_path / "bad.dcm").exists()


# ---------------------------------------------------------------------------
# identifiers and validation


@needs_shared
def test_only_identifiers_copied(hfs, tmp_path: Path) -> None:
    _, source, label_img = hfs
    outputs = [write_dicom_seg(label_img, source, tmp_path / "seg.dcm"),
               write_dicom_sr(MEASUREMENTS, source, tmp_path / "sr.dcm")]
    for path in outputs:
        ds = pydicom.dcmread(path)
        assert ds.PatientID == source[0].PatientID
        assert ds.StudyInstanceUID == source[0].StudyInstanceUID
        assert ds.StudyDate == source[0].StudyDate
        for keyword in ("PatientName", "PatientBirthDate", "PatientSex"):
            assert str(ds.get(keyword, "")) == ""
        for keyword in ("PatientAge", "PatientWeight", "PatientSize", "InstitutionName", "StudyDescription"):
            assert keyword not in ds
        raw = path.read_bytes()
        assert str(source[0].PatientBirthDate).encode() not in raw
        assert str(source[0].InstitutionName).encode() not in raw


@needs_shared
def test_dciodvfy_accepts_seg_and_sr(hfs, tmp_path: Path) -> None:
    _, source, label_img = hfs
    seg = write_dicom_seg(label_img, source, tmp_path / "seg.dcm")
    sr = write_dicom_sr(MEASUREMENTS, source, tmp_path / "sr.dcm")
    assert dciodvfy_errors(seg) == []
    assert dciodvfy_errors(sr) == []
