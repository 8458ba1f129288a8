"""DICOM input: geometry against dcm2niix, series selection and clear errors."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import MPEG2MPML, ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

from onfh_seg.io.dicom import load_series
from onfh_seg.io.dicom_series import DicomError, find_series
from onfh_seg.io.dicom_select import load_dicom_volume, select_t1_series

SHARED = Path(__file__).resolve().parents[2] / "shared"
DECUBITUS = SHARED / "data" / "dicom" / "siemens_t1_decubitus"
POSITIONS = ("HFS", "HFP", "HFDL", "HFDR")
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"

needs_shared = pytest.mark.skipif(
    not DECUBITUS.is_dir(), reason=f"shared DICOM data not found at {DECUBITUS}"
)


def dcm2niix_binary() -> str | None:
    """Path of the dcm2niix binary shipped by the PyPI package, or on PATH."""
    try:
        import dcm2niix

        path = Path(str(dcm2niix.bin))
        if path.is_file():
            return str(path)
    except ImportError:
        pass
    return shutil.which("dcm2niix")


# ---------------------------------------------------------------------------
# synthetic series


def write_series(
    folder: Path,
    description: str,
    positions: Sequence[Sequence[float]] | None = None,
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    pixel_spacing: Sequence[float] = (0.5, 0.8),
    rows: int = 6,
    cols: int = 4,
    series_number: int = 1,
    tr: float = 500.0,
    te: float = 12.0,
    scanning_sequence: str = "SE",
    slope: float | None = None,
    orientations: dict[int, Sequence[float]] | None = None,
) -> list[Path]:
    """Write a small single-frame MR series; pixel value = 100*slice + 10*row + col."""
    if positions is None:
        positions = [(-10.0, -20.0, 3.0 * k) for k in range(5)]
    series_uid, study_uid, frame_uid = generate_uid(), "1.2.3.4.5", generate_uid()
    paths = []
    for k, pos in enumerate(positions):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MR_IMAGE_STORAGE
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality = "MR"
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", "P001", "19600101"
        ds.StudyDate, ds.AccessionNumber = "20240102", "ACC1"
        ds.SeriesDescription = ds.ProtocolName = description
        ds.SeriesNumber, ds.InstanceNumber = series_number, k + 1
        ds.ScanningSequence, ds.RepetitionTime, ds.EchoTime = scanning_sequence, tr, te
        ds.ImageOrientationPatient = list((orientations or {}).get(k, orientation))
        ds.ImagePositionPatient = list(pos)
        ds.PixelSpacing = list(pixel_spacing)
        ds.SliceThickness = 1.0  # deliberately unlike the position spacing
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        if slope is not None:
            ds.RescaleSlope, ds.RescaleIntercept = slope, -1.0
        r, c = np.mgrid[0:rows, 0:cols]
        ds.PixelData = (100 * k + 10 * r + c).astype(np.uint16).tobytes()
        path = folder / f"{series_number:02d}_{k:03d}.dcm"
        folder.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_text_sr(path: Path) -> None:
    """A non-image object (Basic Text SR)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = BASIC_TEXT_SR
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = BASIC_TEXT_SR, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.Modality = generate_uid(), "1.2.3.4.5", "SR"
    ds.ValueType = "CONTAINER"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


# ---------------------------------------------------------------------------
# real series vs dcm2niix


@needs_shared
@pytest.mark.parametrize("position", POSITIONS)
def test_matches_dcm2niix(position: str, tmp_path: Path) -> None:
    binary = dcm2niix_binary()
    if binary is None:
        pytest.skip("dcm2niix binary not found (pip package dcm2niix)")
    subprocess.run(
        [binary, "-z", "n", "-b", "n", "-f", "ref", "-o", str(tmp_path), str(DECUBITUS / position)],
        check=True, capture_output=True, timeout=60,
    )
    ref = nib.as_closest_canonical(nib.load(str(tmp_path / "ref.nii")))
    series = find_series(DECUBITUS / position)
    assert len(series) == 1 and series[0].n_files == 35
    ours = nib.as_closest_canonical(load_series(series[0]))
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours.get_fdata(), ref.get_fdata(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(ours.affine, ref.affine, rtol=0, atol=1e-3)


@needs_shared
def test_all_patient_positions_same_anatomy_orientation() -> None:
    codes, spacings = set(), set()
    for position in POSITIONS:
        # a head series (refused as a hip by default: tests/test_anatomy_gate.py); here it only carries geometry
        image, info = load_dicom_volume(DECUBITUS / position, {"refused_body_parts": []})
        codes.add(nib.aff2axcodes(image.affine))
        spacings.add(tuple(round(float(z), 3) for z in image.header.get_zooms()))
        assert info["n_files"] == 35
        assert "t1" in info["selection_reason"]
        assert set(info) >= {"PatientID", "StudyInstanceUID", "AccessionNumber", "StudyDate"}
        assert "PatientName" not in info and "PatientBirthDate" not in info
    assert codes == {("P", "I", "R")}  # sagittal: columns anterior->posterior, rows down, slices L->R
    assert spacings == {(1.016, 1.016, 4.8)}  # slice spacing from positions, not SliceThickness (4)


# ---------------------------------------------------------------------------
# synthetic geometry


def test_geometry_axes_spacing_and_values(tmp_path: Path) -> None:
    positions = [(-10.0, -20.0, 3.0 * k) for k in (3, 0, 4, 1, 2)]  # shuffled files
    write_series(tmp_path, "t1_tse_ax", positions=positions)
    image = load_series(find_series(tmp_path)[0])
    assert image.shape == (4, 6, 5)  # (columns, rows, slices)
    assert image.get_data_dtype() == np.int16
    expected = np.array([[-0.8, 0, 0, 10.0], [0, -0.5, 0, 20.0], [0, 0, 3.0, 0.0], [0, 0, 0, 1]])
    np.testing.assert_allclose(image.affine, expected, atol=1e-6)
    data = np.asanyarray(image.dataobj)
    # slice k of the volume is the file at z = 3k, whose pixels were written with k = file index
    file_index = {3: 0, 0: 1, 4: 2, 1: 3, 2: 4}
    for k in range(5):
        i, j = 3, 5  # column 3, row 5
        assert data[i, j, k] == 100 * file_index[k] + 10 * j + i


def test_rescale_applied_as_float(tmp_path: Path) -> None:
    write_series(tmp_path, "t1", slope=2.5)
    image = load_series(find_series(tmp_path)[0])
    assert image.get_data_dtype() == np.float32
    assert float(np.asanyarray(image.dataobj)[1, 2, 0]) == pytest.approx(2.5 * 21 - 1.0)


# ---------------------------------------------------------------------------
# selection


def test_t1_chosen_over_t2_with_reason(tmp_path: Path) -> None:
    write_series(tmp_path / "a", "t2_tse_cor_fs", series_number=3, tr=4000, te=80)
    write_series(tmp_path / "b", "t1_tse_cor", series_number=4)
    write_series(tmp_path / "c", "localizer", series_number=1, tr=8, te=4)
    image, info = load_dicom_volume(tmp_path)
    assert info["series_description"] == "t1_tse_cor"
    reason = info["selection_reason"]
    assert "t1_tse_cor" in reason and "/t1/" in reason
    assert "t2_tse_cor_fs" in reason and "excluded by /t2/" in reason
    assert "localizer" in reason
    assert info["PatientID"] == "P001" and info["AccessionNumber"] == "ACC1"
    assert "Doe" not in repr(info) and "19600101" not in repr(info)


def test_tie_break_by_sequence_then_slices(tmp_path: Path) -> None:
    write_series(tmp_path / "a", "T1W gradient", series_number=5, scanning_sequence="GR")
    write_series(tmp_path / "b", "T1W spin echo", series_number=6,
                 positions=[(0.0, 0.0, 2.0 * k) for k in range(3)])
    write_series(tmp_path / "c", "T1W spin echo long", series_number=7,
                 positions=[(0.0, 0.0, 2.0 * k) for k in range(4)])
    chosen, reason = select_t1_series(find_series(tmp_path))
    assert chosen.description == "T1W spin echo long"
    assert "ScanningSequence SE" in reason and "4 slices" in reason


def test_custom_rules_and_unknown_rule(tmp_path: Path) -> None:
    write_series(tmp_path / "a", "cor_weighted_A", series_number=1)
    write_series(tmp_path / "b", "cor_weighted_B", series_number=2)
    chosen, _ = select_t1_series(find_series(tmp_path), {"include_patterns": ["weighted_a"]})
    assert chosen.description == "cor_weighted_A"
    chosen, _ = select_t1_series(find_series(tmp_path), {"include_patterns": "weighted_b"})
    assert chosen.description == "cor_weighted_B"
    with pytest.raises(DicomError, match="unknown series selection rule"):
        select_t1_series(find_series(tmp_path), {"include": ["x"]})
    with pytest.raises(DicomError, match="invalid regex in rule 'exclude_patterns'"):
        select_t1_series(find_series(tmp_path), {"exclude_patterns": ["t2("]})
    with pytest.raises(DicomError, match="must be a number"):
        select_t1_series(find_series(tmp_path), {"max_echo_time_ms": "short"})


def test_unnamed_series_chosen_by_timing(tmp_path: Path) -> None:
    write_series(tmp_path / "a", "cor_seq_1", series_number=1, tr=3500, te=90)
    write_series(tmp_path / "b", "cor_seq_2", series_number=2, tr=550, te=10)
    chosen, reason = select_t1_series(find_series(tmp_path))
    assert chosen.description == "cor_seq_2"
    assert "no description matched; short TR and TE" in reason
    assert "#2 'cor_seq_2' no T1 pattern" not in reason


def test_no_t1_series_is_a_clear_error(tmp_path: Path) -> None:
    write_series(tmp_path, "t2_tse_sag", tr=4000, te=90)
    with pytest.raises(DicomError, match="no T1 series .*excluded by /t2/"):
        load_dicom_volume(tmp_path)


# ---------------------------------------------------------------------------
# errors


def test_no_image_series(tmp_path: Path) -> None:
    write_text_sr(tmp_path / "report.dcm")
    (tmp_path / "notes.txt").write_text("not dicom")
    assert find_series(tmp_path) == []
    with pytest.raises(DicomError, match="no DICOM image series"):
        load_dicom_volume(tmp_path)


def test_missing_slice(tmp_path: Path) -> None:
    write_series(tmp_path, "t1", positions=[(0.0, 0.0, z) for z in (0.0, 3.0, 6.0, 12.0, 15.0)])
    with pytest.raises(DicomError, match="missing slices"):
        load_dicom_volume(tmp_path)


def test_mixed_orientation(tmp_path: Path) -> None:
    write_series(tmp_path, "t1", orientations={2: (1, 0, 0, 0, 0, -1)})
    with pytest.raises(DicomError, match="mixed geometry: different ImageOrientationPatient"):
        load_dicom_volume(tmp_path)


def test_mixed_pixel_spacing(tmp_path: Path) -> None:
    paths = write_series(tmp_path, "t1")
    ds = pydicom.dcmread(paths[1])
    ds.PixelSpacing = [0.6, 0.8]
    ds.save_as(paths[1])
    with pytest.raises(DicomError, match="mixed geometry: different PixelSpacing"):
        load_dicom_volume(tmp_path)


def test_single_slice(tmp_path: Path) -> None:
    write_series(tmp_path, "t1", positions=[(0.0, 0.0, 0.0)])
    with pytest.raises(DicomError, match="single-slice series"):
        load_dicom_volume(tmp_path)


def test_duplicate_positions(tmp_path: Path) -> None:
    write_series(tmp_path, "t1", positions=[(0.0, 0.0, z) for z in (0.0, 3.0, 3.0, 6.0)])
    with pytest.raises(DicomError, match="duplicate slice positions"):
        load_dicom_volume(tmp_path)


@pytest.mark.parametrize(
    ("syntax", "message"),
    [(JPEG2000Lossless, "cannot decode pixel data with transfer syntax 'JPEG 2000"),
     (MPEG2MPML, "transfer syntax 'MPEG2 .*' has no available decoder")],
)
def test_compressed_transfer_syntax_is_a_clear_error(tmp_path: Path, syntax: str, message: str) -> None:
    paths = write_series(tmp_path, "t1")
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51not-a-real-codestream"])
        ds["PixelData"].VR = "OB"
        ds.save_as(path, enforce_file_format=True)
    with pytest.raises(DicomError, match=message):
        load_dicom_volume(tmp_path)


def test_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(DicomError, match="not a folder"):
        find_series(tmp_path / "missing")
