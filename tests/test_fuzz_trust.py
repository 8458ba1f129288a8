"""Issue 24: seeded mutations of NIfTI files and DICOM series, each classified; no silent wrong result.

Every mutated input is run through ``process_scan`` with the stand-in segmenter of ``test_reliability_io``
(intensity bands after a robust normalisation: scale-invariant, but it follows the image, so a mirrored or
damaged image gives a mirrored or damaged result). Each mutation carries what may come of it:

* ``same``: the image still shows the same anatomy (damaged voxels, a per-slice inconsistency, an invalid
  header value): refused with one line, flagged (a QC flag, an untrusted hip), or measured as before;
* ``refuse``: only a refusal is right (another patient's slices in the study);
* ``free``: the header consistently describes another geometry (all slices' spacing or orientation): any
  result is right, only no traceback.

A *silent wrong result* is a measured, unflagged scan with a side swap or a lost hip, a lesion over 0.5 mL
on the hip that has none (the left), or a head or lesion volume more than 5 % off. The default suite runs a
small seeded set; ``-m slow`` runs 1,000 (500 NIfTI, 500 DICOM) and checks the peak memory.
"""

from __future__ import annotations

import json
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from test_reliability_io import (
    CFG,
    UNEXPECTED,
    ThresholdSegmenter,
    fuzz_cases,
    phantom_affine,
    time_limit,
    write_phantom_dicom,
    write_phantom_nifti,
)

from onfh_seg.infer.inputs import expand_input
from onfh_seg.infer.pipeline import process_scan

SHAPE = (70, 30, 30)
HEADER_BYTES = 352
MAX_LEFT_LESION_ML = 0.5
VOLUME_TOLERANCE = 0.05
PEAK_MEMORY_BYTES = 2 * 2**30
CASE_SECONDS = 60


@dataclass
class Case:
    """One mutated input: ``what`` happened, the ``expect``ed class of outcome, ``path`` of the input."""

    what: str
    expect: str  # same | refuse | free
    path: Path


# ---------------------------------------------------------------- judging


def hips_by_side(meas: dict) -> dict[str, dict]:
    return {h["side"]: h for h in meas.get("hips") or []}


def flagged(meas: dict) -> bool:
    """A QC flag on the scan or an untrusted hip: the numbers are marked, not silent."""
    return bool(meas.get("qc_flags")) or any(not h.get("trusted", True) for h in meas.get("hips") or [])


def silent_wrong(meas: dict, baseline: dict) -> str | None:
    """Why an unflagged measurement is wrong against the unmutated scan's (None when it is right)."""
    got, ref = hips_by_side(meas), hips_by_side(baseline)
    if sorted(got) != sorted(ref):
        return f"sides {sorted(got)} instead of {sorted(ref)}"
    if got["left"]["lesion_volume_ml"] > MAX_LEFT_LESION_ML:
        return f"lesion of {got['left']['lesion_volume_ml']} mL on the left hip (none there)"
    for side, hip in ref.items():
        for key in ("head_volume_ml", "lesion_volume_ml"):
            want, have = hip[key], got[side][key]
            if want > 0 and abs(have - want) > VOLUME_TOLERANCE * want:
                return f"{side} {key} {have} instead of {want}"
    return None


def judge(case: Case, meas: dict, baseline: dict) -> str:
    """``refused``, ``flagged``, ``same``, ``free`` or ``WRONG: why`` (a silent wrong result)."""
    if meas["status"] == "error":
        error = meas["error"] or ""
        if not error or "\n" in error or UNEXPECTED.match(error):
            return f"WRONG: not a one-line error: {error!r}"
        return "refused"
    if case.expect == "refuse":
        return "WRONG: measured, should be refused"
    if case.expect == "free":
        return "free"
    if flagged(meas):
        return "flagged"
    why = silent_wrong(meas, baseline)
    return f"WRONG: {why}" if why else "same"


def run_cases(cases: list[Case], out: Path, baselines: dict[str, dict]) -> dict[str, int]:
    """Process every case (its own out_dir), judge it; fail on silent wrong results, lost inputs or hangs."""
    segmenter = ThresholdSegmenter()
    outcome: dict[str, int] = {}
    wrong, slow = [], []
    for i, case in enumerate(cases):
        case_out = out / f"c{i:04d}"
        t0 = time.perf_counter()
        with time_limit(CASE_SECONDS):
            jobs = expand_input(case.path, out_dir=case_out)
            for job in jobs:
                process_scan(job, case_out, segmenter, CFG)
        if time.perf_counter() - t0 > 20.0:
            slow.append(case.what)
        records = [json.loads(p.read_text()) for p in sorted(case_out.glob("*_measurements.json"))]
        assert len(records) == len(jobs) == 1, (case.what, "lost input")
        verdict = judge(case, records[0], baselines["dicom" if case.path.is_dir() else "nifti"])
        key = verdict.split(":")[0]
        outcome[key] = outcome.get(key, 0) + 1
        if verdict.startswith("WRONG"):
            wrong.append((case.what, verdict))
    assert not wrong, wrong[:10]
    assert not slow, slow
    return outcome


# ---------------------------------------------------------------- NIfTI mutations


def slab(raw: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """``length`` data bytes from ``start`` overwritten with one byte value (0x00, 0xFF or another)."""
    data_len = len(raw) - HEADER_BYTES
    length = int(np.exp(rng.uniform(np.log(64), np.log(data_len))))
    start = int(rng.integers(0, data_len - length + 1))
    fill = int(rng.choice([0x00, 0xFF, int(rng.integers(1, 255))]))
    out = bytearray(raw)
    out[HEADER_BYTES + start: HEADER_BYTES + start + length] = bytes([fill]) * length
    return f"slab of {length} bytes 0x{fill:02x} at {start}", bytes(out)


def with_voxels(raw: bytes, change: Callable[[np.ndarray], np.ndarray]) -> bytes:
    """NIfTI bytes whose voxels are ``change``d (header unchanged)."""
    img = nib.Nifti1Image.from_bytes(raw)
    data = change(np.asarray(img.dataobj).astype(np.float64)).astype(img.get_data_dtype())
    return nib.Nifti1Image(data, None, img.header).to_bytes()


def slice_scale(raw: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """One slice's values multiplied by a factor far from 1 (a wrong per-slice rescale)."""
    k = int(rng.integers(0, SHAPE[2]))
    factor = float(rng.choice([rng.uniform(0.2, 0.7), rng.uniform(1.45, 5.0)]))

    def change(data: np.ndarray) -> np.ndarray:
        data[:, :, k] *= factor
        return data

    return f"slice {k} x{factor:.2f}", with_voxels(raw, change)


def with_forms(raw: bytes, sform: np.ndarray, qform: np.ndarray) -> bytes:
    img = nib.Nifti1Image.from_bytes(raw)
    out = nib.Nifti1Image(np.asarray(img.dataobj), sform, img.header)
    out.set_sform(sform, 1)
    out.set_qform(qform, 1)
    return out.to_bytes()


def geometry(raw: bytes, rng: np.random.Generator) -> tuple[str, str, bytes]:
    """An sform moved or sheared away from the qform (``same``), or both forms changed alike (``free``)."""
    affine = phantom_affine()
    pick = int(rng.integers(0, 3))
    if pick == 0:
        moved = affine.copy()
        moved[:3, 3] += rng.normal(0.0, 6.0, 3)
        return f"sform moved {np.round(moved[:3, 3] - affine[:3, 3], 2).tolist()}", "same", with_forms(raw, moved, affine)
    if pick == 1:
        sheared = affine.copy()
        sheared[int(rng.integers(0, 3)), 2] += float(rng.uniform(-1.0, 1.0))
        return f"sform sheared {sheared[:3, 2].tolist()}", "same", with_forms(raw, sheared, affine)
    other = affine @ np.diag([float(rng.choice([-1.0, 1.0])), *rng.uniform(0.7, 1.4, 2), 1.0])
    return f"both forms {np.round(np.diag(other)[:3], 2).tolist()}", "free", with_forms(raw, other, other)


def nifti_cases(raw_int: bytes, raw_float: bytes, n: int, seed: int, folder: Path) -> list[Case]:
    """``n`` seeded NIfTI mutations: content damage, slice scale, geometry, header fields and bytes."""
    rng = np.random.default_rng(seed)
    header_cases = iter(fuzz_cases(raw_int, n, seed=seed + 1))
    folder.mkdir(parents=True, exist_ok=True)
    cases = []
    for i in range(n):
        raw = raw_float if rng.random() < 0.3 else raw_int
        pick = rng.random()
        expect = "same"
        if pick < 0.35:
            what, data = slab(raw, rng)
        elif pick < 0.5:
            what, data = slice_scale(raw, rng)
        elif pick < 0.65:
            what, expect, data = geometry(raw, rng)
        else:
            what, data, gz = next(header_cases)
            path = folder / f"n{i:04d}{'.nii.gz' if gz else '.nii'}"
            path.write_bytes(data)
            cases.append(Case(f"nifti {what}", "same", path))
            continue
        path = folder / f"n{i:04d}.nii"
        path.write_bytes(data)
        dtype = "float32" if raw is raw_float else "int16"
        cases.append(Case(f"nifti {dtype} {what}", expect, path))
    return cases


# ---------------------------------------------------------------- DICOM mutations


TAG_VALUES: dict[str, list[Any]] = {
    "PixelSpacing": [[-4.0, -4.0], [0.0, 0.0], [4.4, 4.0], [4.0, 2.0], [1e-300, 1e-300], [1e300, 1e300]],
    "ImageOrientationPatient": [[-1, 0, 0, 0, 1, 0], [1, 0, 0, 0, 0.996, 0.0872], [0, 0, 0, 0, 0, 0]],
    "ImagePositionPatient": "shift",
    "RescaleSlope": [2.0, 0.5, 0.0, -1.0, 1e6],
    "RescaleIntercept": [1000.0, -1000.0, 50.0],
    "BitsStored": [8, 12],
    "HighBit": [7, 11],
    "PixelRepresentation": [0],
    "PatientID": ["P002", ""],
    "StudyInstanceUID": ["1.2.826.0.1.3680043.8.498.77"],
    "FrameOfReferenceUID": ["1.2.826.0.1.3680043.8.498.78"],
    "SliceThickness": [None, 0.0, -4.0],
    "Rows": [29],
    "InstanceNumber": [None, 999],
}


def slice_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("IM*.dcm"))


def edit(path: Path, change: Callable[[pydicom.Dataset], None]) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)


def set_tag(ds: pydicom.Dataset, tag: str, value: Any) -> None:
    if value is None:
        if tag in ds:
            delattr(ds, tag)
    else:
        setattr(ds, tag, value)


def one_slice_tag(folder: Path, rng: np.random.Generator) -> tuple[str, str]:
    """One slice's tag changed: an inconsistency (``same``: refused, flagged or harmless)."""
    tag = str(rng.choice(sorted(TAG_VALUES)))
    k = int(rng.integers(0, SHAPE[2]))
    if TAG_VALUES[tag] == "shift":
        delta = rng.normal(0.0, 3.0, 3)

        def change(ds: pydicom.Dataset) -> None:
            ds.ImagePositionPatient = [f"{float(v) + d:.4f}" for v, d in zip(ds.ImagePositionPatient, delta)]

        edit(slice_files(folder)[k], change)
        return f"slice {k} ImagePositionPatient moved {np.round(delta, 2).tolist()}", "same"
    values = TAG_VALUES[tag]
    value = values[int(rng.integers(0, len(values)))]
    edit(slice_files(folder)[k], lambda ds: set_tag(ds, tag, value))
    return f"slice {k} {tag}={value!r}", "same"


def all_slices(folder: Path, rng: np.random.Generator) -> tuple[str, str]:
    """Every slice changed alike: invalid values (``same``: refused) or a consistent new geometry (``free``)."""
    pick = int(rng.integers(0, 5))
    if pick == 0:
        value = [[-4.0, -4.0], [0.0, 4.0], [4.0, -4.0]][int(rng.integers(0, 3))]
        change, what, expect = (lambda ds: set_tag(ds, "PixelSpacing", value)), f"PixelSpacing={value}", "same"
    elif pick == 1:
        slope = float(rng.uniform(0.1, 10.0))
        change, what, expect = (lambda ds: (set_tag(ds, "RescaleSlope", slope), set_tag(ds, "RescaleIntercept", 7))), \
            f"RescaleSlope={slope:.3f}", "same"
    elif pick == 2:
        factor = float(rng.uniform(0.7, 1.4))
        change, what, expect = (lambda ds: set_tag(ds, "PixelSpacing", [4.0 * factor, 4.0 * factor])), \
            f"PixelSpacing x{factor:.2f}", "free"
    elif pick == 3:
        change, what, expect = (lambda ds: set_tag(ds, "ImageOrientationPatient", [-1, 0, 0, 0, 1, 0])), \
            "rows flipped (ImageOrientationPatient)", "free"
    else:
        change, what, expect = (lambda ds: set_tag(ds, "SliceThickness", None)), "no SliceThickness", "same"
    for path in slice_files(folder):
        edit(path, change)
    return f"all slices {what}", expect


def missing_or_duplicate(folder: Path, rng: np.random.Generator) -> tuple[str, str]:
    """A slice removed, copied again (same instance), or copied as a new instance at the same position."""
    files = slice_files(folder)
    k = int(rng.integers(0, len(files)))
    pick = int(rng.integers(0, 3))
    if pick == 0:
        files[k].unlink()
        return f"slice {k} missing", "same"
    if pick == 1:
        (folder / "copy").mkdir(exist_ok=True)
        shutil.copy(files[k], folder / "copy" / files[k].name)
        return f"slice {k} duplicated (same instance)", "same"

    def renew(ds: pydicom.Dataset) -> None:
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()

    shutil.copy(files[k], folder / "IMdup.dcm")
    edit(folder / "IMdup.dcm", renew)
    return f"slice {k} duplicated (new instance)", "same"


def mixed_patients(folder: Path, rng: np.random.Generator) -> tuple[str, str]:
    """A copy of the series under another PatientID (or study) beside it: only a refusal is right."""
    series_uid = generate_uid()
    tag, value = [("PatientID", "P002"), ("StudyInstanceUID", generate_uid())][int(rng.integers(0, 2))]
    other = folder / "other"
    other.mkdir()
    for path in slice_files(folder):
        shutil.copy(path, other / path.name)

    def retag(ds: pydicom.Dataset) -> None:
        ds.SeriesInstanceUID, ds.SeriesNumber = series_uid, 8
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        setattr(ds, tag, value)

    for path in slice_files(other):
        edit(path, retag)
    return f"second series with another {tag}", "refuse"


def pixel_damage(folder: Path, rng: np.random.Generator) -> tuple[str, str]:
    """Part of one slice's pixel data overwritten with one byte value."""
    k = int(rng.integers(0, SHAPE[2]))
    fill = int(rng.choice([0x00, 0xFF, int(rng.integers(1, 255))]))
    size = SHAPE[0] * SHAPE[1] * 2
    length = int(rng.integers(128, size + 1))
    start = int(rng.integers(0, size - length + 1))

    def damage(ds: pydicom.Dataset) -> None:
        data = bytearray(ds.PixelData)
        data[start: start + length] = bytes([fill]) * length
        ds.PixelData = bytes(data)

    edit(slice_files(folder)[k], damage)
    return f"slice {k} pixel bytes {start}+{length} = 0x{fill:02x}", "same"


DICOM_MUTATIONS = (one_slice_tag, one_slice_tag, all_slices, missing_or_duplicate, mixed_patients, pixel_damage)


def dicom_cases(series: Path, n: int, seed: int, folder: Path) -> list[Case]:
    """``n`` seeded mutations of the phantom series, one study folder each."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        study = folder / f"d{i:04d}"
        shutil.copytree(series, study)
        mutate = DICOM_MUTATIONS[int(rng.integers(0, len(DICOM_MUTATIONS)))]
        what, expect = mutate(study, rng)
        cases.append(Case(f"dicom {what}", expect, study))
    return cases


# ---------------------------------------------------------------- the runs


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[bytes, bytes, Path, dict[str, dict]]:
    """Phantom NIfTI bytes (int16, float32), the phantom DICOM series and both baselines (two hips, no flag)."""
    root = tmp_path_factory.mktemp("fuzz_trust")
    path = write_phantom_nifti(root / "hip.nii")
    raw_int = path.read_bytes()
    img = nib.Nifti1Image.from_bytes(raw_int)
    raw_float = nib.Nifti1Image(np.asarray(img.dataobj).astype(np.float32), img.affine, img.header).to_bytes()
    series = root / "series"
    write_phantom_dicom(series)
    baselines = {}
    for kind, source in (("nifti", path), ("dicom", series)):
        [job] = expand_input(source)
        process_scan(job, root / f"base_{kind}", ThresholdSegmenter(), CFG)
        [meas] = [json.loads(p.read_text()) for p in (root / f"base_{kind}").glob("*_measurements.json")]
        assert meas["status"] == "ok" and not flagged(meas), meas
        assert sorted(hips_by_side(meas)) == ["left", "right"] and hips_by_side(meas)["left"]["lesion_volume_ml"] == 0
        baselines[kind] = meas
    return raw_int, raw_float, series, baselines


@pytest.mark.parametrize(
    ("n_nifti", "n_dicom", "seed"),
    [(80, 30, 24), pytest.param(500, 500, 2024, marks=pytest.mark.slow)],
    ids=["110", "1000-slow"],
)
def test_mutations_are_refused_flagged_or_right(inputs, tmp_path: Path, n_nifti: int, n_dicom: int,
                                                seed: int) -> None:
    """Every mutation accounted for; none measured silently wrong; no traceback, no hang; memory bounded."""
    raw_int, raw_float, series, baselines = inputs
    t0 = time.perf_counter()
    cases = nifti_cases(raw_int, raw_float, n_nifti, seed, tmp_path / "nifti")
    cases += dicom_cases(series, n_dicom, seed + 7, tmp_path / "dicom")
    outcome = run_cases(cases, tmp_path / "out", baselines)
    assert sum(outcome.values()) == n_nifti + n_dicom
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB
    assert peak <= PEAK_MEMORY_BYTES, f"peak memory {peak / 2**30:.2f} GiB"
    print(f"fuzz {n_nifti} NIfTI + {n_dicom} DICOM: {outcome}; {time.perf_counter() - t0:.0f} s, "
          f"peak {peak / 2**20:.0f} MiB")
