"""Reliability of the input/output layer (issue 11): hostile files, our own outputs, writer failures.

A tiny synthetic "pelvis" (two femoral heads 180 mm apart, each with a socket,
a necrotic core in the right one) is segmented by ``ThresholdSegmenter``, a
stand-in for the engine that labels intensity bands after a robust min-max
normalisation: it is invariant to intensity scaling, like the real model, but
follows the image content, so a shifted or mirrored image gives a shifted or
mirrored result (a hash-lookup stand-in would hide that). DICOM cases write the
same phantom as a small DICOM series; the SEG orientation case uses the shared
Siemens series (skipped when ../shared is absent).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from conftest import write_dicom_series

from onfh_seg.config import infer_settings
from onfh_seg.infer.input_files import InputError
from onfh_seg.infer.inputs import expand_input, load_scan
from onfh_seg.infer.pipeline import process_scan
from onfh_seg.run.outputs import OUTPUT_SUFFIXES
from onfh_seg.infer.postprocess import clean_labels
from onfh_seg.io.dicom import load_series
from onfh_seg.io.dicom_series import find_series

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
HFS = SHARED / "data" / "dicom" / "siemens_t1_decubitus" / "HFS"
BIN = Path(sys.executable).parent

VOXEL_MM = 4.0
SHAPE = (70, 30, 30)  # x 280 mm, y 120 mm, z 120 mm
HEAD_R, LESION_R, SOCKET_R = 22.0, 8.0, (24.0, 32.0)
HEAD_X = 90.0  # heads at x = +-90 mm (right hip at larger x in RAS)
LEVELS = {"background": 100.0, "head": 600.0, "lesion": 250.0, "socket": 400.0}


# ---------------------------------------------------------------- phantom and stand-in segmenter


def phantom_values(world: np.ndarray, seed: int = 0) -> np.ndarray:
    """Image intensities at RAS points ``world`` (..., 3): heads, sockets, a lesion in the right head."""
    image = np.full(world.shape[:-1], LEVELS["background"])
    for sign in (1.0, -1.0):
        centre = np.array([sign * HEAD_X, 0.0, 0.0])
        d = np.linalg.norm(world - centre, axis=-1)
        above = world[..., 2] > centre[2] + 2.0
        image[(d >= SOCKET_R[0]) & (d <= SOCKET_R[1]) & above] = LEVELS["socket"]
        image[d < HEAD_R] = LEVELS["head"]
        if sign > 0:
            image[np.linalg.norm(world - (centre + [0.0, 0.0, 8.0]), axis=-1) < LESION_R] = LEVELS["lesion"]
    noise = np.random.default_rng(seed).normal(0.0, 10.0, size=image.shape)
    return np.clip(image + noise, 0, None)


def grid_world(shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    ijk = np.indices(shape).reshape(3, -1).T
    return (ijk @ affine[:3, :3].T + affine[:3, 3]).reshape(*shape, 3)


def phantom_affine() -> np.ndarray:
    """RAS affine of the phantom grid, centred on the world origin (axes L->R flipped: LAS, as scanners write)."""
    affine = np.diag([-VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
    affine[:3, 3] = -affine[:3, :3] @ ((np.array(SHAPE) - 1) / 2.0)
    return affine


def write_phantom_nifti(path: Path, affine: np.ndarray | None = None) -> Path:
    """The phantom as int16 NIfTI (sform = qform, codes 1)."""
    affine = phantom_affine() if affine is None else affine
    data = phantom_values(grid_world(SHAPE, affine)).astype(np.int16)
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, 1)
    img.set_qform(affine, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def write_phantom_dicom(folder: Path, body_part: str = "HIP") -> list[Path]:
    """The phantom as an axial single-frame MR series (rows along LPS x, columns along LPS y), written
    by the shared converter from a NIfTI on that grid."""
    cols, rows, n_slices = SHAPE
    affine = np.diag([-VOXEL_MM, -VOXEL_MM, VOXEL_MM, 1.0])  # LPS +x, +y, +z as RAS columns
    affine[:3, 3] = np.array([(cols - 1) / 2, (rows - 1) / 2, -(n_slices - 1) / 2]) * VOXEL_MM
    nifti = write_phantom_nifti(folder.parent / f"{folder.name}_source.nii.gz", affine)
    return write_dicom_series(nifti, folder, description="t1_tse_tra", body_part=body_part)


@dataclass
class StandInResult:
    labels: np.ndarray
    mean_confidence: float
    head_centres_ras: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)


class ThresholdSegmenter:
    """Engine stand-in: intensity bands after a robust min-max normalisation (1st-99.5th percentile)."""

    version = "threshold-1"
    sha256 = None
    providers = ["CPUExecutionProvider"]

    def segment(self, image: np.ndarray, affine: np.ndarray) -> StandInResult:
        lo, hi = np.percentile(image, [1.0, 99.5])
        norm = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
        labels = np.zeros(image.shape, np.uint8)
        labels[(norm > 0.15) & (norm <= 0.45)] = 2
        labels[(norm > 0.45) & (norm <= 0.8)] = 4
        labels[norm > 0.8] = 1
        return StandInResult(clean_labels(labels, affine), 0.95)


CFG = infer_settings({"overlay": False, "dicom": {"write_seg": True, "write_sr": True}}, require=False)


def run_one(path: Path, out: Path, **expand: Any) -> tuple[dict, dict]:
    """process_scan of the single job of ``path``: (result, measurements JSON)."""
    [job] = expand_input(path, **expand)
    result = process_scan(job, out, ThresholdSegmenter(), CFG)
    meas = json.loads((out / f"{job.name}_measurements.json").read_text())
    return result, meas


def summary(meas: dict) -> dict[str, tuple[float, float, np.ndarray]]:
    """Per side: head volume, lesion volume, head centre."""
    return {h["side"]: (h["head_volume_ml"], h["lesion_volume_ml"], np.asarray(h["head_centre_ras_mm"], float))
            for h in meas["hips"]}


def same_result(a: dict, b: dict) -> bool:
    """Same sides, volumes within 2 % or 0.25 mL, head centres within 1 mm."""
    sa, sb = summary(a), summary(b)
    if sorted(sa) != sorted(sb):
        return False
    for side, (head, lesion, centre) in sa.items():
        head_b, lesion_b, centre_b = sb[side]
        for x, y in ((head, head_b), (lesion, lesion_b)):
            if abs(x - y) > max(0.25, 0.02 * abs(y)):
                return False
        if float(np.max(np.abs(centre - centre_b))) > 1.0:
            return False
    return True


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Fail (instead of hanging) when the block takes longer than ``seconds`` (SIGALRM)."""

    def _alarm(signum: int, frame: Any) -> None:
        raise TimeoutError(f"took longer than {seconds} s (hang?)")

    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> tuple[Path, dict]:
    """The phantom NIfTI and its measurements JSON (both hips found, right lesion, no flag)."""
    root = tmp_path_factory.mktemp("phantom")
    path = write_phantom_nifti(root / "hip.nii")
    result, meas = run_one(path, root / "out")
    assert result["status"] == "ok", result["error"]
    return path, meas


def test_phantom_is_measured_as_two_hips(phantom) -> None:
    _, meas = phantom
    assert [h["side"] for h in meas["hips"]] == ["right", "left"], meas
    assert meas["qc_flags"] == [] and meas["warnings"] == [], meas
    right, left = meas["hips"]
    assert right["lesion_volume_ml"] > 1.0 and left["lesion_volume_ml"] == 0.0
    assert right["head_centre_ras_mm"][0] > 0 > left["head_centre_ras_mm"][0]


# ---------------------------------------------------------------- item 2: a writer's failure never loses the rest


def perturb_orientation(folder: Path, scale: float = 1e-8, seed: int = 0) -> int:
    """Add float noise (different per file, |d| <= scale) to every ImageOrientationPatient; files changed."""
    rng = np.random.default_rng(seed)
    changed = 0
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path)
        iop = [float(v) + float(rng.uniform(-scale, scale)) for v in ds.ImageOrientationPatient]
        ds.ImageOrientationPatient = [f"{v:.10f}" for v in iop]  # DS: at most 16 characters
        ds.save_as(path)
        changed += 1
    return changed


@pytest.mark.skipif(not HFS.is_dir(), reason=f"shared DICOM data not found at {HFS}")
def test_seg_written_despite_orientation_noise(tmp_path: Path) -> None:
    from onfh_seg.io.dicom_out import write_dicom_seg
    from onfh_seg.io.dicom_sr import write_dicom_sr
    from onfh_seg.io.nifti import make_image

    series_dir = tmp_path / "HFS"
    shutil.copytree(HFS, series_dir)
    assert perturb_orientation(series_dir) == 35
    [series] = find_series(series_dir)
    iops = {tuple(str(v) for v in ds.ImageOrientationPatient) for ds in series.headers}
    assert len(iops) > 1, "the copy must have differing orientations"
    image = load_series(series)  # the reader accepts noise below its tolerance
    labels = np.zeros(image.shape, np.uint8)
    labels[100:140, 100:140, 10:20] = 1
    labels[110:120, 110:120, 12:16] = 2
    seg_path = write_dicom_seg(make_image(labels, image.affine, np.uint8), list(series.headers), tmp_path / "x_seg.dcm")
    seg = pydicom.dcmread(seg_path)
    assert seg.Modality == "SEG"
    shared_iop = [float(v) for v in seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
                  .ImageOrientationPatient]
    first = sorted(series.headers, key=lambda d: float(d.InstanceNumber))[0]
    np.testing.assert_allclose(shared_iop, [float(v) for v in first.ImageOrientationPatient], atol=1e-6)
    sr = pydicom.dcmread(write_dicom_sr({"hips": [{"side": "right", "lesion_volume_ml": 1.0}]},
                                        list(series.headers), tmp_path / "x_sr.dcm"))
    assert sr.Modality == "SR"
    # the source headers themselves are left untouched
    assert len({tuple(str(v) for v in ds.ImageOrientationPatient) for ds in series.headers}) == len(iops)


def test_orientation_beyond_tolerance_is_not_snapped() -> None:
    from onfh_seg.io.dicom_derived import snap_orientation

    a, b, c = Dataset(), Dataset(), Dataset()
    a.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    b.ImageOrientationPatient = [1, 0, 1e-8, 0, 1, 0]
    c.ImageOrientationPatient = [1, 0, 0.01, 0, 1, 0]
    snapped = snap_orientation([a, b])
    assert [float(v) for v in snapped[1].ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    kept = snap_orientation([a, c])
    assert float(kept[1].ImageOrientationPatient[2]) == 0.01


@pytest.fixture(scope="module")
def hip_dicom(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hip_dicom") / "study"
    write_phantom_dicom(folder)
    return folder


def test_dicom_phantom_writes_seg_and_sr(hip_dicom: Path, tmp_path: Path) -> None:
    result, meas = run_one(hip_dicom, tmp_path / "out")
    assert result["status"] == "ok", result["error"]
    assert [h["side"] for h in meas["hips"]] == ["right", "left"]
    assert isinstance(meas["outputs"]["dicom_seg"], str) and isinstance(meas["outputs"]["dicom_sr"], str)


def test_orientation_noise_does_not_lose_the_dicom_outputs(hip_dicom: Path, tmp_path: Path) -> None:
    study = tmp_path / "study"
    shutil.copytree(hip_dicom, study)
    perturb_orientation(study, scale=3.3e-8)  # as the GE series of issue 11
    result, meas = run_one(study, tmp_path / "out")
    assert result["status"] == "ok", result["error"]
    assert meas["outputs"]["dicom_seg"] == f"{result['name']}_seg.dcm", meas["outputs"]
    assert meas["outputs"]["dicom_sr"] == f"{result['name']}_sr.dcm", meas["outputs"]
    assert not any("not written" in w for w in meas["warnings"])
    seg = pydicom.dcmread(tmp_path / "out" / meas["outputs"]["dicom_seg"])
    assert seg.Modality == "SEG" and len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) > 0


@pytest.mark.parametrize("failing", ["write_dicom_seg", "write_dicom_sr"])
def test_failing_dicom_writer_keeps_nifti_json_and_rows(hip_dicom: Path, tmp_path: Path, monkeypatch, failing: str) -> None:
    import onfh_seg.io.dicom_out as dicom_out
    import onfh_seg.io.dicom_sr as dicom_sr

    def broken(*args: Any, **kwargs: Any) -> None:
        raise ValueError("Source images must have a shared orientation.")

    monkeypatch.setattr(dicom_out if failing == "write_dicom_seg" else dicom_sr, failing, broken)
    out = tmp_path / "out"
    result, meas = run_one(hip_dicom, out)
    name = result["name"]
    assert result["status"] == "ok" and meas["status"] == "ok" and meas["error"] is None
    assert len(result["rows"]) == 2 and [h["side"] for h in meas["hips"]] == ["right", "left"]
    assert (out / f"{name}_seg.nii.gz").is_file()
    key, other = ("dicom_seg", "dicom_sr") if failing == "write_dicom_seg" else ("dicom_sr", "dicom_seg")
    assert meas["outputs"][key] == {"status": "error", "error": "Source images must have a shared orientation."}
    assert not (out / f"{name}{OUTPUT_SUFFIXES[key]}").exists()
    if failing == "write_dicom_seg":  # no SR alone unless dicom.sr_without_seg=true (issue 24)
        assert meas["outputs"][other]["status"] == "not_written" and not (out / f"{name}_sr.dcm").exists()
    else:
        assert meas["outputs"][other] == f"{name}{OUTPUT_SUFFIXES[other]}" and (out / meas["outputs"][other]).is_file()
    assert any("not written: Source images must have a shared orientation" in w for w in meas["warnings"])
    assert [p for p in out.iterdir() if p.name.endswith(".tmp")] == []


# ---------------------------------------------------------------- item 3: inputs are only inputs


def test_second_run_into_the_input_folder_ignores_own_outputs(phantom, tmp_path: Path) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(phantom[0], folder / "hip.nii")
    first = [process_scan(job, folder, ThresholdSegmenter(), CFG) for job in expand_input(folder, out_dir=folder)]
    assert [r["status"] for r in first] == ["ok"] and (folder / "hip_seg.nii.gz").is_file()
    jobs = expand_input(folder, out_dir=folder)
    assert [j.path.name for j in jobs] == ["hip.nii"]


def test_dicom_folder_with_our_outputs_is_still_read_as_dicom(hip_dicom: Path, tmp_path: Path) -> None:
    study = tmp_path / "study"
    shutil.copytree(hip_dicom, study)
    result, _ = run_one(study, study)  # out_dir = the DICOM folder
    assert result["status"] == "ok", result["error"]
    assert any(p.name.endswith("_seg.nii.gz") for p in study.iterdir())
    assert any(p.name.endswith("_seg.dcm") for p in study.iterdir())
    [job] = expand_input(study, out_dir=study)
    assert job.kind == "dicom" and job.error is None and job.series.n_files == SHAPE[2]


def test_out_dir_inside_the_input_folder_is_not_searched(hip_dicom: Path, tmp_path: Path) -> None:
    study = tmp_path / "study"
    shutil.copytree(hip_dicom, study)
    out = study / "results"
    shutil.copytree(hip_dicom, out / "copy")  # a DICOM copy inside out_dir must not be read
    [job] = expand_input(study, out_dir=out)
    assert job.error is None and job.series.n_files == SHAPE[2]
    assert not any(out in p.parents for p in job.series.files)


def test_outputs_named_as_inputs_are_refused(phantom, tmp_path: Path) -> None:
    seg = tmp_path / "hip_seg.nii.gz"
    shutil.copy(phantom[0], seg)
    with pytest.raises(InputError, match="is an onfh-infer output"):
        expand_input(seg)
    manifest = tmp_path / "manifest.csv"
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(phantom[0], out / "inside.nii")
    shutil.copy(phantom[0], tmp_path / "good.nii")
    manifest.write_text("patient_id,timepoint,months,image\nP1,m0,0,good.nii\nP1,m6,6,hip_seg.nii.gz\n"
                        "P1,m12,12,out/inside.nii\n")
    jobs = {j.path.name: j for j in expand_input(manifest, out_dir=out)}
    assert jobs["good.nii"].error is None
    assert "onfh-infer output" in jobs["hip_seg.nii.gz"].error
    assert "lies in out_dir" in jobs["out/inside.nii".split("/")[-1]].error


def test_fifo_and_devices_are_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "scan.nii.gz"
    os.mkfifo(fifo)
    csv_fifo = tmp_path / "list.csv"
    os.mkfifo(csv_fifo)
    with time_limit(20):
        for path, kind in ((fifo, "FIFO"), (csv_fifo, "FIFO"), (Path("/dev/zero"), "character device")):
            with pytest.raises(InputError, match=f"not a regular file \\(.*{kind}") as info:
                expand_input(path)
            assert "\n" not in str(info.value)
        # a FIFO named in a manifest: that scan fails with one line, the others run
        manifest = tmp_path / "manifest.csv"
        manifest.write_text("image\nscan.nii.gz\n/dev/zero\n")
        jobs = expand_input(manifest)
        for job in jobs:
            with pytest.raises(InputError, match="not a regular file"):
                load_scan(job)
        # a FIFO inside a DICOM folder is skipped, never opened
        study = tmp_path / "study"
        write_phantom_dicom(study)
        os.mkfifo(study / "zz_pipe")
        [job] = expand_input(study)
        assert job.error is None and job.series.n_files == SHAPE[2]


def nifti_bytes(shape: tuple[int, ...], dtype=np.int16, data: bytes | None = None) -> bytes:
    """A single-file NIfTI-1 (header + extension flag) declaring ``shape``, followed by ``data``."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr.set_sform(np.eye(4), 1)
    hdr.set_qform(np.eye(4), 1)
    hdr["vox_offset"] = 352
    return hdr.binaryblock + b"\0\0\0\0" + (data if data is not None else b"")


def test_header_size_checked_before_reading(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.nii.gz"
    bomb.write_bytes(gzip.compress(nifti_bytes((2048, 2048, 800)) + bytes(1 << 20)))  # claims 6.4 GB
    [job] = expand_input(bomb)
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match=r"image too large: 2048x2048x800 voxels .*max_image_mb=1024"):
            load_scan(job)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.1f} MiB before refusing"
    sparse = tmp_path / "huge.nii"  # a 2.4 GB plain file (sparse on disk): refused from its header
    with open(sparse, "wb") as fh:
        fh.write(nifti_bytes((1024, 1024, 600), np.float32))
        fh.truncate(352 + 1024 * 1024 * 600 * 4)
    [job] = expand_input(sparse)
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match=r"image too large: 1024x1024x600 voxels = 2400 MiB"):
            load_scan(job)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.1f} MiB before refusing"
    small = tmp_path / "small.nii"
    small.write_bytes(nifti_bytes((64, 64, 64), np.float32, bytes(64**3 * 4)))
    [job] = expand_input(small, max_image_mb=0.5)
    with pytest.raises(InputError, match="above max_image_mb=0.5"):
        load_scan(job)


def test_gzip_larger_than_its_header_is_bounded(tmp_path: Path) -> None:
    """The header promises 16 kB; the gzip unpacks to 200 MB: refused after reading one byte too many."""
    path = tmp_path / "liar.nii.gz"
    with gzip.open(path, "wb", compresslevel=9) as fh:
        fh.write(nifti_bytes((32, 32, 8)))
        chunk = bytes(1 << 20)
        for _ in range(200):
            fh.write(chunk)
    assert path.stat().st_size < 1 << 20
    [job] = expand_input(path)
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match="data size does not match the header: more than"):
            load_scan(job)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.1f} MiB while refusing"


# ---------------------------------------------------------------- item 6: header gate


HDR = nib.nifti1.header_dtype


def set_fields(raw: bytes, **values: Any) -> bytes:
    """``raw`` (uncompressed little-endian NIfTI-1) with header fields replaced."""
    hdr = np.frombuffer(bytearray(raw[:348]), dtype=HDR.newbyteorder("<")).copy()
    for name, value in values.items():
        hdr[name] = value
    return hdr.tobytes() + raw[348:]


def refused(path: Path, pattern: str, **expand: Any) -> str:
    [job] = expand_input(path, **expand)
    with pytest.raises(InputError, match=pattern) as info:
        load_scan(job)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_vox_offset_below_352_refused(phantom, tmp_path: Path) -> None:
    raw = phantom[0].read_bytes()
    for offset in (0.0, 348.0, 344.0):
        path = tmp_path / f"off{int(offset)}.nii"
        # keep the data size consistent with the header, as a shifted reader would see it
        path.write_bytes(set_fields(raw, vox_offset=offset)[: len(raw) - (352 - int(offset))])
        refused(path, r"vox_offset .* < 352 in a single-file NIfTI-1")


def test_no_orientation_refused_or_measured_without_sides(phantom, tmp_path: Path) -> None:
    path = tmp_path / "noorient.nii"
    path.write_bytes(set_fields(phantom[0].read_bytes(), qform_code=0, sform_code=0))
    refused(path, "qform_code and sform_code both 0")
    result, meas = run_one(path, tmp_path / "out", allow_unknown_orientation=True)
    assert result["status"] == "ok", result["error"]
    assert [h["side"] for h in meas["hips"]] == ["unknown", "unknown"]
    assert any("sides reported as 'unknown'" in w for w in meas["warnings"])
    assert {r["side"] for r in result["rows"]} == {"unknown"}
    assert not (tmp_path / "out" / "noorient_sr.dcm").exists()


@pytest.mark.parametrize(
    ("fields", "pattern"),
    [
        ({"pixdim": (1, np.nan)}, "invalid voxel sizes"),
        ({"pixdim": (2, 0.0)}, "invalid voxel sizes"),
        ({"srow_x": [0.0, 0.0, 0.0, 0.0], "qform_code": 0}, "not invertible"),
        ({"srow_y": [0.0, np.inf, 0.0, 0.0], "qform_code": 0}, "not finite"),
        ({"srow_x": [4.0, 0.0, 0.0, -138.0]}, r"sform \(RAS\) and qform \(LAS\) disagree"),
        ({"qform_code": 9}, "invalid qform_code"),
        ({"datatype": 77}, "corrupt NIfTI header"),
    ],
)
def test_bad_geometry_refused(phantom, tmp_path: Path, fields: dict, pattern: str) -> None:
    path = tmp_path / "bad.nii"
    raw = phantom[0].read_bytes()
    if "pixdim" in fields:  # (index, value): one element of the stored pixdim
        index, value = fields["pixdim"]
        pixdim = nib.Nifti1Header(raw[:348], check=False)["pixdim"].copy()
        pixdim[index] = value
        fields = {**fields, "pixdim": pixdim}
    path.write_bytes(set_fields(raw, **fields))
    refused(path, pattern)


def test_data_size_must_match_header(phantom, tmp_path: Path) -> None:
    raw = phantom[0].read_bytes()
    (tmp_path / "long.nii").write_bytes(raw + bytes(100))
    refused(tmp_path / "long.nii", "more than the .* bytes it promises")
    (tmp_path / "short.nii").write_bytes(raw[:-100])
    refused(tmp_path / "short.nii", "truncated NIfTI data")
    dims = np.array([3, SHAPE[0], SHAPE[1], SHAPE[2] - 1, 1, 1, 1, 1], np.int16)  # one slice fewer
    (tmp_path / "dims.nii").write_bytes(set_fields(raw, dim=dims))
    refused(tmp_path / "dims.nii", "more than the .* bytes it promises")


# ---------------------------------------------------------------- item 7: shear, duplicate DICOM, quoting


def test_sheared_affine_is_flagged_untrusted(phantom, tmp_path: Path) -> None:
    affine = phantom_affine()
    affine[0, 2] = 0.4  # z axis leans 5.7 degrees towards x: a sheared grid (the qform cannot hold it)
    path = write_phantom_nifti(tmp_path / "shear.nii", affine)
    result, meas = run_one(path, tmp_path / "out", geometry="sform")  # sform and qform are 11.6 mm apart
    assert result["status"] == "ok", result["error"]
    assert any(w.startswith("sheared affine: voxel axes 5.71 degrees") for w in meas["warnings"]), meas["warnings"]
    assert meas["qc_flags"] == ["sheared_geometry"] and not any(h["trusted"] for h in meas["hips"])
    result, meas = run_one(phantom[0], tmp_path / "out2")
    assert not any("sheared" in w for w in meas["warnings"])



@pytest.mark.parametrize("description, fat_sat", [("t1_vibe_fs_tra", True), ("t1_vibe_dixon_tra_W", True),
                                                  ("t1_vibe_tra", False)])
def test_fat_suppressed_series_is_measured_but_untrusted(tmp_path: Path, description: str, fat_sat: bool) -> None:
    """Issue 22: on fat-suppressed T1 most healthy heads got a false lesion (model card, accept_fs). A DICOM series
    whose name (or ScanOptions) says fat suppression, or a Dixon water image, is measured, flagged ``fat_suppressed``
    with its reason, and no hip of it is trusted, so no DICOM SR is written; the same series without it is trusted."""
    cols, rows, n_slices = SHAPE
    affine = np.diag([-VOXEL_MM, -VOXEL_MM, VOXEL_MM, 1.0])
    affine[:3, 3] = np.array([(cols - 1) / 2, (rows - 1) / 2, -(n_slices - 1) / 2]) * VOXEL_MM
    nifti = write_phantom_nifti(tmp_path / "source.nii.gz", affine)
    write_dicom_series(nifti, tmp_path / "study", description=description, series_number=9)
    [job] = expand_input(tmp_path / "study")
    assert job.dicom["fat_suppressed"] is fat_sat
    result, meas = run_one(tmp_path / "study", tmp_path / "out")
    assert result["status"] == "ok", result["error"]
    assert [h["side"] for h in meas["hips"]] == ["right", "left"]
    if fat_sat:
        assert meas["qc_flags"] == ["fat_suppressed"] and not any(h["trusted"] for h in meas["hips"])
        assert "series 9 is fat-suppressed" in meas["qc_reasons"]["fat_suppressed"][0]
        assert any(w.startswith("fat_suppressed: series 9") for w in meas["warnings"])
        assert meas["outputs"]["dicom_sr"]["status"] == "not_written", meas["outputs"]
    else:
        assert meas["qc_flags"] == [] and all(h["trusted"] for h in meas["hips"])
        assert isinstance(meas["outputs"]["dicom_sr"], str)

def test_duplicate_dicom_instances_are_deduplicated(hip_dicom: Path, tmp_path: Path) -> None:
    study = tmp_path / "study"
    shutil.copytree(hip_dicom, study / "a")
    shutil.copytree(hip_dicom, study / "b")
    [job] = expand_input(study)
    assert job.error is None, job.error
    assert job.series.n_files == SHAPE[2] and job.series.duplicates == SHAPE[2]
    assert job.dicom["duplicate_instances_skipped"] == SHAPE[2]
    assert all(p.parent.name == "a" for p in job.series.files)
    scan = load_scan(job)
    assert scan.image.shape == SHAPE


def test_override_parse_errors_hint_at_quoting() -> None:
    from onfh_seg.cli.common import override_hint

    for value in ("my (1).nii.gz", "scan[1].nii.gz", "a=b.nii.gz", "a,b.nii.gz", "ñandú.nii.gz"):
        hint = override_hint([f"input={value}", "out_dir=out"])
        assert hint == f"could not parse 'input={value}': quote the value, e.g. input=\"'{value}'\""
    assert override_hint(["input='my (1).nii.gz'", "out_dir=out", "dicom.rules={include_patterns: [t1]}"]) is None


def test_cli_prints_the_quoting_hint(tmp_path: Path) -> None:
    env = dict(os.environ, ONFH_SEG_CONFIGS=str(ROOT / "configs"))
    res = subprocess.run([str(BIN / "onfh-infer"), "input=my (1).nii.gz", f"out_dir={tmp_path / 'o'}"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 2
    assert res.stderr.strip() == "error: could not parse 'input=my (1).nii.gz': quote the value, e.g. input=\"'my (1).nii.gz'\""


# ---------------------------------------------------------------- item 6: seeded fuzz of header fields and bytes


FUZZ_N = 300  # default suite: ~15 s of CPU (about 45 s wall on a busy 2-core machine)
UNEXPECTED = re.compile(r"^[A-Za-z_.]*(Error|Exception|Warning)\b:?")  # one_line() prefixes unexpected types


def _field_values(value: np.ndarray, rng: np.random.Generator) -> list[Any]:
    """Candidate replacement values for one header element (specials, neighbours, random)."""
    if value.dtype.kind == "f":
        v = float(value)
        return [0.0, -0.0, 1.0, -1.0, np.nan, np.inf, -np.inf, 1e30, -1e30, 1e-30, -v, 2 * v, v + 1, v + 0.5,
                float(rng.normal(0, 1000))]
    if value.dtype.kind in "iu":
        info = np.iinfo(value.dtype)
        v = int(value)
        candidates = [0, 1, -1, 2, 3, 4, 5, 7, 8, 16, 127, 348, 352, info.max, info.min, v + 1, v - 1, -v,
                      int(rng.integers(info.min, info.max))]
        return [c for c in candidates if info.min <= c <= info.max]
    return [bytes(rng.integers(0, 256, size=value.dtype.itemsize, dtype=np.uint8))]


def mutate_field(raw: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    hdr = np.frombuffer(bytearray(raw[:348]), dtype=HDR.newbyteorder("<")).copy()
    name = str(rng.choice([n for n in HDR.names if n not in ("descrip", "aux_file", "db_name", "data_type")]))
    target = hdr[name][0]
    index: tuple[int, ...] = ()
    if np.ndim(target):
        index = (int(rng.integers(0, len(target))),)
    element = np.asarray(target[index] if index else target)
    values = _field_values(element, rng)
    value = values[int(rng.integers(0, len(values)))]
    with np.errstate(all="ignore"):
        if index:
            hdr[name][0][index] = value
        else:
            hdr[name][0] = value
    return f"{name}{list(index) if index else ''}={value!r}", hdr.tobytes() + raw[348:]


def mutate_bytes(raw: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    data = bytearray(raw)
    spots = []
    for _ in range(int(rng.integers(1, 5))):
        pos = int(rng.integers(0, 352)) if rng.random() < 0.6 else int(rng.integers(0, len(data)))
        data[pos] = int(rng.integers(0, 256))
        spots.append(pos)
    return f"bytes at {spots}", bytes(data)


def mutate_structure(raw: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    kind = int(rng.integers(0, 3))
    pos = int(rng.integers(0, len(raw)))
    if kind == 0:
        return f"truncated at {pos}", raw[:pos]
    extra = bytes(rng.integers(0, 256, size=int(rng.integers(1, 2000)), dtype=np.uint8))
    if kind == 1:
        return f"{len(extra)} bytes appended", raw + extra
    return f"{len(extra)} bytes inserted at {pos}", raw[:pos] + extra + raw[pos:]


def fuzz_cases(raw: bytes, n: int, seed: int) -> list[tuple[str, bytes, bool]]:
    """``n`` seeded mutations of an uncompressed NIfTI: (description, file bytes, gzip?)."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(n):
        pick = rng.random()
        if pick < 0.55:
            what, data = mutate_field(raw, rng)
        elif pick < 0.85:
            what, data = mutate_bytes(raw, rng)
        else:
            what, data = mutate_structure(raw, rng)
        gz = rng.random() < 0.25
        if gz:
            data = gzip.compress(data, compresslevel=1, mtime=0)
            if rng.random() < 0.3:  # damage the compressed stream too
                damaged = bytearray(data)
                pos = int(rng.integers(0, len(damaged)))
                damaged[pos] ^= 1 << int(rng.integers(0, 8))
                data, what = bytes(damaged), f"{what}; gzip byte {pos} flipped"
        cases.append((what, data, gz))
    return cases


@pytest.mark.parametrize(
    ("n", "seed"), [(FUZZ_N, 11), pytest.param(1500, 12, marks=pytest.mark.slow)], ids=["300", "1500-slow"]
)
def test_fuzzed_headers_are_refused_flagged_or_unchanged(phantom, tmp_path: Path, n: int, seed: int) -> None:
    """Seeded mutations: no traceback, no hang, every file accounted for, and no accepted file
    whose result differs from the unmutated scan's without a QC flag or warning."""
    path, baseline = phantom
    raw = path.read_bytes()
    cases = fuzz_cases(raw, n, seed=seed)
    scans, out = tmp_path / "scans", tmp_path / "out"
    scans.mkdir()
    names = []
    for i, (_, data, gz) in enumerate(cases):
        name = f"m{i:04d}"
        (scans / f"{name}{'.nii.gz' if gz else '.nii'}").write_bytes(data)
        names.append(name)
    segmenter = ThresholdSegmenter()
    outcome: dict[str, int] = {"refused": 0, "flagged": 0, "same": 0}
    silent_changes, slow = [], []
    with time_limit(60 * n // 30):
        for (what, _, _), job in zip(cases, expand_input(scans, out_dir=out)):
            t0 = time.perf_counter()
            result = process_scan(job, out, segmenter, CFG)
            if time.perf_counter() - t0 > 10.0:
                slow.append((job.name, what))
            meas = json.loads((out / f"{job.name}_measurements.json").read_text())
            assert meas["status"] == result["status"] in ("ok", "error"), (job.name, what)
            if result["status"] == "error":
                error = result["error"]
                assert error and "\n" not in error and not UNEXPECTED.match(error), (what, error)
                outcome["refused"] += 1
            elif meas["qc_flags"] or meas.get("warnings"):
                outcome["flagged"] += 1
            elif same_result(meas, baseline):
                outcome["same"] += 1
            else:
                silent_changes.append((job.name, what, summary(meas), summary(baseline)))
    accounted = sorted(p.name[: -len("_measurements.json")] for p in out.glob("*_measurements.json"))
    assert accounted == sorted(names), "every mutated file must have its measurements JSON"
    assert not slow, slow
    assert not silent_changes, silent_changes[:5]
    assert sum(outcome.values()) == n
    print(f"fuzz {n}: {outcome}")


def test_run_batch_wires_out_dir_and_size_limit(phantom, tmp_path: Path) -> None:
    """onfh-infer's batch passes out_dir and max_image_mb to the input layer."""
    from onfh_seg.run.batch import run_batch

    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(phantom[0], folder / "hip.nii")
    cfg = {"input": str(folder), "out_dir": str(folder), "workers": 1, "overlay": False, "resume": False}
    for _ in range(2):  # the second run finds hip_seg.nii.gz etc. beside the scan
        summary = run_batch(infer_settings(cfg), segmenter_factory=lambda threads: ThresholdSegmenter())
        assert (summary.done, summary.failed) == (1, 0), [r["error"] for r in summary.results]
    assert sorted(p.name for p in folder.glob("*_measurements.json")) == ["hip_measurements.json"]
    small = dataclasses.replace(infer_settings({**cfg, "out_dir": str(tmp_path / "small")}), max_image_mb=0.1)  # below
    summary = run_batch(small,  # the command line's minimum of 1 MiB, to refuse this small phantom
                        segmenter_factory=lambda threads: ThresholdSegmenter())
    assert summary.failed == 1 and "above max_image_mb=0.1" in summary.results[0]["error"]
