"""onfh_seg.infer.inputs: input expansion, output names and one-line validation errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from onfh_seg.arrays import every_nth
from onfh_seg.infer.image_checks import looks_like_ct, looks_like_shifted_ct
from onfh_seg.infer.input_files import InputError
from onfh_seg.infer.inputs import expand_input, load_scan
from onfh_seg.infer.scan_jobs import ScanJob, dicom_series_name, sanitise
from onfh_seg.run.outputs import scan_name

SHARED = Path(__file__).resolve().parents[2] / "shared"
HFS = SHARED / "data" / "dicom" / "siemens_t1_decubitus" / "HFS"


def mr_like(shape=(24, 24, 12), seed=0) -> np.ndarray:
    """A noisy MR-like volume (positive, many distinct values)."""
    rng = np.random.default_rng(seed)
    data = rng.normal(300.0, 60.0, size=shape).clip(0, None)
    data[:3] = 0.0
    return data.astype(np.float32)


def save(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    affine = np.diag([1.0, 1.0, 3.0, 1.0]) if affine is None else affine
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, 1)
    img.set_qform(affine, 1)
    nib.save(img, str(path))
    return path


def job_for(path: Path) -> ScanJob:
    return expand_input(path)[0]


def one_line_error(path: Path, exc_type=InputError) -> str:
    with pytest.raises(exc_type) as info:
        load_scan(job_for(path))
    msg = str(info.value)
    assert msg and "\n" not in msg
    return msg


# ---------------------------------------------------------------- names and expansion


def test_names() -> None:
    assert scan_name(Path("a/scan.nii.gz")) == "scan"
    assert scan_name(Path("scan.NII")) == "scan"
    assert scan_name(Path("x.y.nii.gz")) == "x.y"
    assert scan_name(Path("my scan (2).nii.gz")) == "my scan (2)"  # kept as is: onfh-track derives the same name
    assert sanitise("T1 TSE cor / fs?") == "T1_TSE_cor_fs"
    assert dicom_series_name(3, "t1_tse cor") == "3_t1_tse_cor"
    assert dicom_series_name(None, "") == "S_series"


def test_expand_file_folder_manifest(tmp_path: Path) -> None:
    one = save(tmp_path / "scan.nii.gz", mr_like())
    [job] = expand_input(one)
    assert (job.kind, job.name, job.image_ref) == ("nifti", "scan", str(one))

    folder = tmp_path / "folder"
    folder.mkdir()
    for name in ("b.nii.gz", "a.nii", "notes.txt", "c.nii.gz"):
        (folder / name).write_bytes(b"x")
    assert [j.name for j in expand_input(folder)] == ["a", "b", "c"]

    for sub in ("s1", "s2"):
        (tmp_path / sub).mkdir()
        save(tmp_path / sub / "scan.nii.gz", mr_like())
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "patient_id,timepoint,months,image,labels\n"
        "P1,m00,0,s1/scan.nii.gz,lab/s1.nii.gz\n"
        "P1,m03,3,,\n"
        "P2,m00,0,s2/scan.nii.gz,\n"
        "P2,m00,0,s2/./scan.nii.gz,\n"
        "P3,m00,0,missing.nii.gz,\n"
    )
    jobs = expand_input(manifest)
    assert [j.name for j in jobs] == ["s1_scan", "s2_scan", "missing"]
    assert jobs[0].labels == tmp_path / "lab" / "s1.nii.gz" and jobs[1].labels is None
    assert jobs[0].meta == {"patient_id": "P1", "timepoint": "m00", "months": "0"}
    assert jobs[0].image_ref == "s1/scan.nii.gz" and jobs[0].path == tmp_path / "s1" / "scan.nii.gz"
    with pytest.raises(FileNotFoundError, match="input not found"):
        load_scan(jobs[2])

    bad = tmp_path / "bad.csv"
    bad.write_text("patient_id,file\nP1,x.nii.gz\n")
    with pytest.raises(InputError, match="no 'image' column"):
        expand_input(bad)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no NIfTI"):
        expand_input(empty)
    with pytest.raises(FileNotFoundError, match="input not found"):
        expand_input(tmp_path / "nope.nii.gz")


@pytest.mark.skipif(not HFS.is_dir(), reason=f"shared DICOM data not found at {HFS}")
def test_dicom_study_is_one_job_named_after_series() -> None:
    [job] = expand_input(HFS, {"refused_body_parts": []})  # a head series, used here for its geometry only
    assert job.kind == "dicom" and job.error is None
    info = job.dicom
    assert job.name == dicom_series_name(info["series_number"], info["series_description"])
    assert info["selection_reason"] and info["series_instance_uid"] and "PatientID" in info
    assert "PatientName" not in info and "PatientBirthDate" not in info
    scan = load_scan(job)
    assert scan.image.ndim == 3 and scan.image.dtype == np.float32
    assert len(scan.source_datasets) == info["n_files"] and len(scan.sha256) == 64


# ---------------------------------------------------------------- validation


def test_good_scan_and_4d_singleton(tmp_path: Path) -> None:
    data = mr_like()
    scan = load_scan(job_for(save(tmp_path / "ok.nii.gz", data)))
    assert scan.image.shape == data.shape and scan.warnings == []
    np.testing.assert_array_equal(scan.image, data)
    scan = load_scan(job_for(save(tmp_path / "single.nii.gz", data[..., None])))
    assert scan.image.shape == data.shape


def test_missing_truncated_and_not_nifti(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="input not found"):
        load_scan(ScanJob("nifti", tmp_path / "gone.nii.gz", "gone", "gone.nii.gz"))

    good = save(tmp_path / "good.nii.gz", mr_like((40, 40, 20)))
    raw = good.read_bytes()
    (tmp_path / "half.nii.gz").write_bytes(raw[: len(raw) // 2])
    assert "corrupt or truncated gzip" in one_line_error(tmp_path / "half.nii.gz")

    plain = gzip.decompress(raw)
    (tmp_path / "short.nii").write_bytes(plain[: len(plain) - 500])
    assert "truncated" in one_line_error(tmp_path / "short.nii")

    (tmp_path / "text.nii.gz").write_text("hello, I am not an image\n" * 40)
    assert "not a NIfTI file" in one_line_error(tmp_path / "text.nii.gz")
    (tmp_path / "tiny.nii").write_bytes(b"abc")
    assert "not a NIfTI file" in one_line_error(tmp_path / "tiny.nii")
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    assert "empty file" in one_line_error(tmp_path / "empty.nii.gz")


def test_dimensionality(tmp_path: Path) -> None:
    assert "4D" in one_line_error(save(tmp_path / "four.nii.gz", np.stack([mr_like(), mr_like(seed=1)], -1)))
    assert "2D" in one_line_error(save(tmp_path / "two.nii.gz", mr_like()[:, :, 0]))
    assert "2D" in one_line_error(save(tmp_path / "slab.nii.gz", mr_like()[:, :, :1]))


def test_nans_are_cleaned_with_a_warning(tmp_path: Path) -> None:
    data = mr_like()
    data[5, 5, 5] = np.nan
    data[6, 6, 6] = np.inf
    scan = load_scan(job_for(save(tmp_path / "nan.nii.gz", data)))
    assert np.all(np.isfinite(scan.image)) and scan.image[5, 5, 5] == 0.0
    assert len(scan.warnings) == 1 and "2 non-finite voxels" in scan.warnings[0]
    all_nan = np.full((8, 8, 8), np.nan, np.float32)
    assert "no finite voxels" in one_line_error(save(tmp_path / "allnan.nii.gz", all_nan))


def test_affine_checks(tmp_path: Path) -> None:
    data = mr_like()
    msg = one_line_error(save(tmp_path / "fine.nii.gz", data, np.diag([0.05, 0.05, 0.05, 1.0])))
    assert "implausible voxel spacing" in msg
    assert "implausible voxel spacing" in one_line_error(save(tmp_path / "coarse.nii.gz", data, np.diag([1, 1, 25.0, 1])))
    singular = np.array([[1.0, 1.0, 0, 0], [0, 0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 1]])
    img = nib.Nifti1Image(data, singular)  # write the singular matrix into the sform directly
    img.header.set_sform(singular, 1)
    img.header["qform_code"] = 0
    nib.save(img, str(tmp_path / "singular.nii.gz"))
    assert "not invertible" in one_line_error(tmp_path / "singular.nii.gz")


def test_ct_and_constant_images(tmp_path: Path) -> None:
    ct = mr_like() - 200.0
    ct[:8] = -1000.0  # air background in Hounsfield units
    assert one_line_error(save(tmp_path / "ct.nii.gz", ct)) == "image is not MR-like (looks like CT)"
    assert "constant" in one_line_error(save(tmp_path / "zeros.nii.gz", np.zeros((10, 10, 10), np.int16)))
    assert "constant" in one_line_error(save(tmp_path / "sevens.nii.gz", np.full((10, 10, 10), 7, np.int16)))


def test_header_without_orientation_refused_unless_allowed(tmp_path: Path) -> None:
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((24, 24, 12))
    hdr.set_zooms((1.0, 1.0, 3.0))
    hdr.set_data_dtype(np.float32)
    img = nib.Nifti1Image(mr_like(), None, hdr)  # no affine: sform_code = qform_code = 0
    nib.save(img, str(tmp_path / "noorient.nii.gz"))
    assert nib.load(str(tmp_path / "noorient.nii.gz")).header["sform_code"] == 0
    assert "qform_code and sform_code both 0" in one_line_error(tmp_path / "noorient.nii.gz")
    [job] = expand_input(tmp_path / "noorient.nii.gz", allow_unknown_orientation=True)
    scan = load_scan(job)
    assert scan.orientation_unknown and any("sides reported as 'unknown'" in w for w in scan.warnings)


@pytest.mark.parametrize("n_voxels", [999_983, 1_000_000, 1_999_999, 2_000_003, 2_999_999, 3_000_017])
def test_ct_checks_decide_the_same_on_the_image_and_on_its_sample(n_voxels: int) -> None:
    """``validate_image`` hands both CT checks the one sample they draw: a sample of that sample is itself, so
    they decide as on the whole image (a CT, a CT without its offset, an MR-like image)."""
    rng = np.random.default_rng(n_voxels)
    shape = (n_voxels // 1000, 10, 100) if n_voxels % 1000 == 0 else (n_voxels, 1, 1)
    for image in (rng.choice([-1000.0, 40.0, 700.0], n_voxels, p=[0.3, 0.6, 0.1]),  # CT in HU
                  rng.choice([24.0, 1064.0, 1724.0], n_voxels, p=[0.3, 0.6, 0.1]),  # CT without its offset
                  rng.gamma(2.0, 150.0, n_voxels)):  # MR-like
        image = np.asfortranarray(image.reshape(shape), np.float32)
        sample = every_nth(image, max(1, image.size // 1_000_000))
        assert np.array_equal(every_nth(sample, max(1, sample.size // 1_000_000)), sample)
        assert looks_like_ct(sample) == looks_like_ct(image)
        assert looks_like_shifted_ct(sample) == looks_like_shifted_ct(image)
