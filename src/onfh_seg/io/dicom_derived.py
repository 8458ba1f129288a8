"""What every derived DICOM object onfh-seg writes (SEG, SR) shares: our name and codes, the identity rules
(reference copies of the sources, scrubbing), new UIDs and the atomic save.

Only PatientID, StudyInstanceUID, AccessionNumber, StudyDate, StudyTime and
StudyID (the study's identity) are taken from the source; names, birth dates, sex, age and everything else about
the patient are left empty. :func:`copy_patient_module` copies the Patient module from the source afterwards
(what a PACS needs to file the objects with the right patient; onfh-pacs does it unless ``deidentify=true``).
"""

from __future__ import annotations

import copy
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from onfh_seg.io.dicom_geometry import ORIENTATION_TOLERANCE
from onfh_seg.io.files import atomic_write_bytes

MANUFACTURER = "onfh-seg"
MODEL_NAME = "onfh-seg"

# Local (private) coding scheme for concepts without a standard code.
LOCAL_SCHEME = "99ONFH"

# Standard codes (SNOMED CT values as listed in DICOM PS3.16).
SCT_FEMORAL_HEAD = Code("2812003", "SCT", "Femoral head")
SCT_ACETABULUM = Code("37783008", "SCT", "Acetabulum")
SCT_NECROSIS = Code("6574001", "SCT", "Necrosis")
SCT_ABSENT = Code("272519000", "SCT", "Absent")
SCT_ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")
SCT_MORPH_ABNORMAL = Code("49755003", "SCT", "Morphologically Abnormal Structure")
SCT_RIGHT = Code("24028007", "SCT", "Right")
SCT_LEFT = Code("7771000", "SCT", "Left")
SCT_VOLUME = Code("118565006", "SCT", "Volume")
SCT_IMAGING_PROCEDURE = Code("363679005", "SCT", "Imaging procedure")
DCM_INTERFACE = Code("112082", "DCM", "Interface")

# Local codes.
LOCAL_PERCENT_HEAD = Code("PCTHEAD", LOCAL_SCHEME, "Percent of femoral head volume involved by necrosis")
LOCAL_SIR = Code("SIR", LOCAL_SCHEME, "T1 signal intensity ratio, necrotic zone to reference")
LOCAL_ARCO_EXTENT = Code("ARCOEXT", LOCAL_SCHEME, "ARCO extent class")
ARCO_EXTENT_CODES: dict[str, Code] = {
    "none": Code("ARCO-0", LOCAL_SCHEME, "No necrotic lesion"),
    "A": Code("ARCO-A", LOCAL_SCHEME, "ARCO extent A (< 15% of femoral head)"),
    "B": Code("ARCO-B", LOCAL_SCHEME, "ARCO extent B (15-30% of femoral head)"),
    "C": Code("ARCO-C", LOCAL_SCHEME, "ARCO extent C (> 30% of femoral head)"),
}

UCUM_ML = Code("ml", "UCUM", "milliliter")
UCUM_PERCENT = Code("%", "UCUM", "percent")
UCUM_NO_UNITS = Code("1", "UCUM", "no units")

# Attributes copied from a source instance into its reference copy.
REFERENCE_KEYWORDS: tuple[str, ...] = (
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
    "FrameOfReferenceUID", "Modality", "SeriesNumber", "InstanceNumber",
    "PatientID", "AccessionNumber", "StudyDate", "StudyTime", "StudyID",
    "Rows", "Columns", "PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient",
    "SliceThickness", "SpacingBetweenSlices", "SamplesPerPixel", "PhotometricInterpretation",
    "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "PositionReferenceIndicator",
)
# Type 2 attributes that must exist but stay empty (never copied).
BLANK_KEYWORDS: tuple[str, ...] = (
    "PatientName", "PatientBirthDate", "PatientSex", "ReferringPhysicianName",
)
# Attributes that must never appear in an output.
FORBIDDEN_KEYWORDS: tuple[str, ...] = (
    "PatientAge", "PatientSize", "PatientWeight", "OtherPatientIDs", "OtherPatientNames",
    "PatientAddress", "PatientBirthName", "PatientMotherBirthName", "EthnicGroup",
    "PatientComments", "InstitutionName", "InstitutionAddress", "StudyDescription",
    "OperatorsName", "PerformingPhysicianName", "NameOfPhysiciansReadingStudy",
)


# ---------------------------------------------------------------------------
# identifiers


def reference_copy(ds: Dataset) -> Dataset:
    """A header copy with only UIDs, geometry and the allowed identifiers."""
    out = Dataset()
    for keyword in REFERENCE_KEYWORDS:
        if keyword in ds:
            setattr(out, keyword, copy.deepcopy(ds[keyword].value))
    for keyword in BLANK_KEYWORDS:
        setattr(out, keyword, "")
    for keyword in ("PatientID", "AccessionNumber", "StudyDate", "StudyTime", "StudyID"):
        if keyword not in out:
            setattr(out, keyword, "")
    return out


def snap_orientation(refs: Sequence[Dataset]) -> list[Dataset]:
    """Give every reference the first one's ImageOrientationPatient when all agree within the reader's tolerance.

    Scanners write orientation vectors that differ by float noise (~1e-8)
    between slices; the volume reader accepts differences up to
    ``ORIENTATION_TOLERANCE`` but highdicom requires exactly equal values.
    Only this attribute is changed (in place on the given copies; nothing is
    recomputed). References that disagree by more are left as they are.
    """
    refs = list(refs)
    with_iop = [ds for ds in refs if "ImageOrientationPatient" in ds]
    if len(with_iop) < 2:
        return refs
    try:
        vectors = np.asarray([[float(v) for v in ds.ImageOrientationPatient] for ds in with_iop], dtype=float)
    except (TypeError, ValueError):
        return refs
    if vectors.shape[1] != 6 or not np.all(np.isfinite(vectors)):
        return refs
    if float(np.max(np.abs(vectors - vectors[0]))) <= ORIENTATION_TOLERANCE:
        first = with_iop[0].ImageOrientationPatient
        for ds in with_iop[1:]:
            ds.ImageOrientationPatient = copy.deepcopy(first)
    return refs


def scrub(ds: Dataset) -> None:
    """Blank patient names/dates and drop other patient attributes, in place."""
    for keyword in BLANK_KEYWORDS:
        setattr(ds, keyword, "")
    for keyword in FORBIDDEN_KEYWORDS:
        if keyword in ds:
            delattr(ds, keyword)


# Patient module attributes (PS3.3 C.7.1.1) copied by copy_patient_module.
PATIENT_MODULE_KEYWORDS: tuple[str, ...] = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "OtherPatientIDsSequence", "PatientBirthTime", "PatientComments",
)


def copy_patient_module(ds: Dataset, source: Dataset) -> Dataset:
    """Copy the Patient module attributes present in ``source`` into ``ds`` (in place; also returned)."""
    for keyword in PATIENT_MODULE_KEYWORDS:
        if keyword in source:
            setattr(ds, keyword, copy.deepcopy(source[keyword].value))
    return ds


def local_scheme_item() -> Dataset:
    """Coding Scheme Identification item declaring the local scheme."""
    item = Dataset()
    item.CodingSchemeDesignator = LOCAL_SCHEME
    item.CodingSchemeName = "onfh-seg local concepts"
    item.CodingSchemeResponsibleOrganization = "onfh-seg project"
    return item


def save_dataset(ds: Dataset, out_path: str | Path) -> Path:
    """Encode a DICOM dataset (with file meta) and write it atomically."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    atomic_write_bytes(out_path, buffer.getvalue())
    return Path(out_path)


def new_instance(series_number: int) -> dict[str, Any]:
    """The keyword arguments every derived object we write shares: new series and instance UIDs, our name."""
    return {"series_instance_uid": hd.UID(), "series_number": series_number, "sop_instance_uid": hd.UID(),
            "instance_number": 1, "manufacturer": MANUFACTURER}
