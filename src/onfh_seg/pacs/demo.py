"""Demo data for the round trip: a NIfTI scan (e.g. from onfh-synth) as a single-frame MR DICOM series."""

from __future__ import annotations

import argparse
import re
from datetime import date
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pydicom.valuerep import DSfloat


def ds(value: float) -> DSfloat:
    """A decimal string value of at most 16 characters (what the DS VR allows)."""
    return DSfloat(float(value), auto_format=True)


def nifti_to_dicom_series(nifti: str | Path, folder: str | Path, *, patient_id: str, patient_name: str,
                          study_uid: str, study_date: str, accession: str = "", study_id: str = "1",
                          description: str = "t1_tse_cor", series_number: int = 3,
                          body_part: str = "HIP", rescale: bool = True) -> list[Path]:
    """Write ``nifti`` as an MR series (the same world geometry) into ``folder``.

    Values become int16 scaled to 0..4000, or, with ``rescale=False``, are kept as they are (rounded).
    """
    img = nib.load(str(nifti))
    data = np.asarray(img.dataobj, dtype=np.float64)
    if data.ndim != 3:
        raise ValueError(f"{nifti}: expected a 3-D image, got shape {data.shape}")
    if rescale:
        lo, hi = float(data.min()), float(data.max())
        scaled = np.round((data - lo) / (hi - lo if hi > lo else 1.0) * 4000.0).astype(np.int16)
    else:
        scaled = np.round(np.clip(data, -32768, 32767)).astype(np.int16)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ img.affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row_dir, col_dir = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    series_uid, frame_uid = generate_uid(), generate_uid()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(scaled.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        out = Dataset()
        out.file_meta = meta
        out.SOPClassUID, out.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        out.StudyInstanceUID, out.SeriesInstanceUID, out.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        out.PatientName, out.PatientID, out.PatientBirthDate, out.PatientSex = patient_name, patient_id, "19700101", "O"
        out.StudyDate, out.StudyTime, out.AccessionNumber, out.StudyID = study_date, "120000", accession, study_id
        out.ReferringPhysicianName = ""
        out.Modality, out.BodyPartExamined, out.Manufacturer = "MR", body_part, "onfh-synth"
        out.SeriesDescription = out.ProtocolName = description
        out.SeriesNumber, out.InstanceNumber = series_number, k + 1
        out.ScanningSequence, out.SequenceVariant, out.ScanOptions, out.MRAcquisitionType = "SE", "NONE", "", "2D"
        out.RepetitionTime, out.EchoTime, out.EchoTrainLength = 500.0, 12.0, 1
        out.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        out.PatientPosition, out.Laterality = "FFS", ""  # feet first supine (a hip scan); Laterality: both sides
        out.PositionReferenceIndicator = ""
        out.ImageOrientationPatient = [ds(v) for v in (*row_dir, *col_dir)]
        out.ImagePositionPatient = [ds(v) for v in (lps @ np.array([0.0, 0.0, k, 1.0]))[:3]]
        out.PixelSpacing = [ds(spacing[1]), ds(spacing[0])]
        out.SliceThickness = ds(spacing[2])
        out.Rows, out.Columns = scaled.shape[1], scaled.shape[0]
        out.SamplesPerPixel, out.PhotometricInterpretation = 1, "MONOCHROME2"
        out.BitsAllocated, out.BitsStored, out.HighBit, out.PixelRepresentation = 16, 16, 15, 1
        out.PixelData = np.ascontiguousarray(scaled[:, :, k].T).tobytes()
        path = folder / f"IM{k:04d}.dcm"
        out.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    """``python -m onfh_seg.pacs.demo SCAN.nii.gz FOLDER``: a demo scan as a DICOM study, for the PACS walk-through."""
    parser = argparse.ArgumentParser(prog="python -m onfh_seg.pacs.demo",
                                     description="Write a NIfTI scan (e.g. from onfh-synth) as a one-series MR DICOM "
                                                 "study (same world geometry) to send to a PACS. Synthetic demo data only.")
    parser.add_argument("scan", help="a 3-D NIfTI scan, e.g. outputs/demo/cohort/images/P01_m00.nii.gz")
    parser.add_argument("folder", help="output folder for the DICOM files (IM0000.dcm, ...)")
    parser.add_argument("--patient-id", help="PatientID (default: the scan name up to the first '_')")
    parser.add_argument("--study-date", default=date.today().strftime("%Y%m%d"), help="StudyDate YYYYMMDD (default: today)")
    parser.add_argument("--accession", default="", help="AccessionNumber")
    args = parser.parse_args(argv)
    scan = Path(args.scan)
    if not scan.is_file():
        parser.exit(1, f"error: scan not found: {scan}\n")
    patient_id = args.patient_id or re.split(r"[_.]", scan.name)[0]
    study_uid = generate_uid()
    try:
        paths = nifti_to_dicom_series(scan, args.folder, patient_id=patient_id, patient_name=f"Demo^{patient_id}",
                                      study_uid=study_uid, study_date=args.study_date, accession=args.accession)
    except (ValueError, OSError) as exc:
        parser.exit(1, f"error: {str(exc).splitlines()[0]}\n")
    print(f"wrote {len(paths)} instances of study {study_uid} (patient {patient_id}) to {args.folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
