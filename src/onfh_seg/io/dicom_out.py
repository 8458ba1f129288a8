"""DICOM output: Segmentation (SEG) of the label map and a TID 1500 measurement SR.

The label map comes as a NIfTI image on the grid built by
:func:`onfh_seg.io.dicom.load_series` (array ``[column, row, sorted slice]``,
RAS+ affine). :func:`label_map_to_frames` turns it back into one
``[row, column]`` frame per source instance (in the sorted slice order), which
is what the SEG references frame by frame. A label map that was reoriented
(e.g. ``nib.as_closest_canonical``) is brought back to the source grid first.
Slice orientations that differ by float noise (within the reader's
``ORIENTATION_TOLERANCE``) are written as the first slice's
(:func:`snap_orientation`): highdicom requires exactly equal values.

Only PatientID, StudyInstanceUID, AccessionNumber, StudyDate, StudyTime and
StudyID (the study's identity) are taken from the source; names, birth dates, sex, age and everything else about
the patient are left empty. :func:`copy_patient_module` copies the Patient module from the source afterwards
(what a PACS needs to file the objects with the right patient; onfh-pacs does it unless ``deidentify=true``).
With ``seg`` given, the SR's hip groups are TID 1411 volumetric groups that reference the SEG's necrotic
segment and the source series (TID 1500 segmentation reference).
"""

from __future__ import annotations

import copy
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import highdicom as hd
import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from onfh_seg import labels
from onfh_seg.io.dicom_geometry import ORIENTATION_TOLERANCE, series_affine, series_shape, sort_slices
from onfh_seg.io.dicom_series import DicomError, slice_name
from onfh_seg.io.files import atomic_write_bytes
from onfh_seg.io.nifti import make_image

MANUFACTURER = "onfh-seg"
MODEL_NAME = "onfh-seg"
GRID_TOLERANCE_MM = 1e-3

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


def _scrub(ds: Dataset) -> None:
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


def _local_scheme_item() -> Dataset:
    """Coding Scheme Identification item declaring the local scheme."""
    item = Dataset()
    item.CodingSchemeDesignator = LOCAL_SCHEME
    item.CodingSchemeName = "onfh-seg local concepts"
    item.CodingSchemeResponsibleOrganization = "onfh-seg project"
    return item


def _save(ds: Dataset, out_path: str | Path) -> Path:
    """Encode a DICOM dataset (with file meta) and write it atomically."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    atomic_write_bytes(out_path, buffer.getvalue())
    return Path(out_path)


# ---------------------------------------------------------------------------
# label map <-> frames


def _on_grid(label_img: nib.Nifti1Image, affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """The label array reoriented onto the source grid, or DicomError if it is another grid."""
    data = np.asanyarray(label_img.dataobj)
    if data.ndim != 3:
        raise DicomError(f"label map must be 3D, got shape {data.shape}")
    transform = ornt_transform(io_orientation(label_img.affine), io_orientation(affine))
    moved = apply_orientation(data, transform)
    moved_affine = label_img.affine @ inv_ornt_aff(transform, data.shape)
    if moved.shape != shape or not np.allclose(moved_affine, affine, atol=GRID_TOLERANCE_MM):
        raise DicomError("label map is not on the source series grid (shape or affine differ)")
    return moved


def _as_labels(data: np.ndarray) -> np.ndarray:
    """Validate label values (0..4, integral) and return uint8."""
    if data.size and (np.any(data != np.round(data)) or data.min() < 0 or data.max() > max(labels.LABELS)):
        raise DicomError(f"label map values must be integers 0..{max(labels.LABELS)}")
    return data.astype(np.uint8)


def label_map_to_frames(
    label_img: nib.Nifti1Image, source_datasets: Sequence[Dataset]
) -> tuple[np.ndarray, list[Dataset]]:
    """Label map on the load_series grid -> frames ``[slice, row, column]`` + sorted sources.

    ``frames[k]`` belongs to ``sorted_sources[k]``.
    """
    sorted_sources = sort_slices(source_datasets)
    data = _on_grid(label_img, series_affine(sorted_sources), series_shape(sorted_sources))
    frames = np.ascontiguousarray(np.transpose(_as_labels(data), (2, 1, 0)))
    return frames, sorted_sources


def frames_to_label_map(frames: np.ndarray, source_datasets: Sequence[Dataset]) -> nib.Nifti1Image:
    """Inverse of :func:`label_map_to_frames` (``frames`` in sorted slice order)."""
    sorted_sources = sort_slices(source_datasets)
    shape = series_shape(sorted_sources)
    if frames.shape != (shape[2], shape[1], shape[0]):
        raise DicomError(f"frames shape {frames.shape} does not match the series {shape[::-1]}")
    data = np.transpose(_as_labels(np.asarray(frames)), (2, 1, 0))
    return make_image(data, series_affine(sorted_sources), np.uint8)


# ---------------------------------------------------------------------------
# segmentation


def _new_instance(series_number: int) -> dict[str, Any]:
    """The keyword arguments every derived object we write shares: new series and instance UIDs, our name."""
    return {"series_instance_uid": hd.UID(), "series_number": series_number, "sop_instance_uid": hd.UID(),
            "instance_number": 1, "manufacturer": MANUFACTURER}


def _algorithm(model_version: str) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name="onfh-seg", family=codes.cid7162.ArtificialIntelligence, version=model_version
    )


def segment_descriptions(model_version: str) -> list[hd.seg.SegmentDescription]:
    """Descriptions of segments 1-4 (segment number = label value)."""
    specs = [
        (labels.HEAD, "Femoral head", SCT_ANATOMICAL_STRUCTURE, SCT_FEMORAL_HEAD,
         "femoral head, viable bone (cortex and marrow)", (0, 200, 0)),
        (labels.NECROTIC, "Necrotic zone", SCT_MORPH_ABNORMAL, SCT_NECROSIS,
         "necrotic core of femoral head osteonecrosis", (220, 0, 0)),
        (labels.BAND, "Interface band", SCT_MORPH_ABNORMAL, DCM_INTERFACE,
         "reactive interface band (double-line sign)", (255, 200, 0)),
        (labels.ACETABULUM, "Acetabulum", SCT_ANATOMICAL_STRUCTURE, SCT_ACETABULUM,
         "acetabulum, bony socket (cortex and marrow)", (0, 90, 255)),
    ]
    out = []
    for number, label, category, prop_type, text, rgb in specs:
        desc = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=category,
            segmented_property_type=prop_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=_algorithm(model_version),
            display_color=hd.color.CIELabColor.from_rgb(*rgb),
        )
        desc.SegmentDescription = text
        out.append(desc)
    return out


# Tags every source slice must carry for a DICOM SEG (highdicom reads them; a missing one is named, not a traceback).
SEG_REQUIRED_KEYWORDS: tuple[str, ...] = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID",
                                          "FrameOfReferenceUID", "SliceThickness")


def check_seg_sources(sorted_sources: Sequence[Dataset]) -> None:
    """DicomError naming the tag and the slice when a source slice lacks what a DICOM SEG needs."""
    for ds in sorted_sources:
        for keyword in SEG_REQUIRED_KEYWORDS:
            if ds.get(keyword) in (None, ""):
                raise DicomError(f"{keyword} missing in slice {slice_name(ds)}: a DICOM SEG needs it")
        thickness = ds.get("SliceThickness")
        try:
            positive = float(thickness) > 0.0
        except (TypeError, ValueError):
            positive = False
        if not positive:
            raise DicomError(f"invalid SliceThickness {thickness!r} in slice {slice_name(ds)}: a DICOM SEG needs it > 0")


def build_dicom_seg(
    label_img: nib.Nifti1Image,
    source_datasets: Sequence[Dataset],
    model_version: str = "unknown",
    series_number: int = 9001,
) -> hd.seg.Segmentation:
    """A BINARY DICOM Segmentation of labels 1-4 referencing the source instances (DicomError, one line naming
    the tag, when the sources cannot carry one)."""
    frames, sorted_sources = label_map_to_frames(label_img, source_datasets)
    check_seg_sources(sorted_sources)
    refs = snap_orientation([reference_copy(ds) for ds in sorted_sources])
    try:
        seg = _segmentation(refs, frames, model_version, series_number)
    except AttributeError as exc:  # highdicom reading a tag the sources lack
        missing = getattr(exc, "name", None) or str(exc).rsplit(" ", 1)[-1].strip("'")
        raise DicomError(f"{missing} missing in the source slices: a DICOM SEG needs it") from None
    _scrub(seg)
    return seg


def _segmentation(refs: list[Dataset], frames: np.ndarray, model_version: str,
                  series_number: int) -> hd.seg.Segmentation:
    """The highdicom Segmentation object of ``frames`` over the reference copies ``refs``."""
    return hd.seg.Segmentation(
        source_images=refs,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(model_version),
        **_new_instance(series_number),
        manufacturer_model_name=MODEL_NAME,
        software_versions=str(model_version),
        device_serial_number="0",
        content_description="Femoral head osteonecrosis segmentation (research use only)",
        content_label="ONFH_SEG",
        series_description="onfh-seg segmentation",
        omit_empty_frames=bool(frames.any()),
    )


def write_dicom_seg(
    label_img: nib.Nifti1Image,
    source_datasets: Sequence[Dataset],
    out_path: str | Path,
    model_version: str = "unknown",
    series_number: int = 9001,
) -> Path:
    """Build the SEG (see :func:`build_dicom_seg`) and write it atomically."""
    seg = build_dicom_seg(label_img, source_datasets, model_version, series_number)
    return _save(seg, out_path)


# ---------------------------------------------------------------------------
# structured report


def _number(hip: Mapping[str, Any], key: str) -> float | None:
    """A finite float from ``hip[key]`` or None when absent/empty."""
    value = hip.get(key)
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DicomError(f"measurement '{key}' is not a number: {value!r}") from None
    return number if np.isfinite(number) else None


def lesion_absent(hip: Mapping[str, Any]) -> bool:
    """Whether a hip shows no measurable necrosis: ARCO extent 'none' (``measure`` gives it below its smallest
    lesion), or, without a class, a lesion volume of 0."""
    extent = hip.get("arco_extent")
    if extent not in (None, ""):
        return str(extent) == "none"
    volume = _number(hip, "lesion_volume_ml")
    return volume is not None and volume <= 0.0


def _hip_group(hip: Mapping[str, Any], model_version: str, seg: Dataset | None = None) -> Any:
    """TID 1501 group for one hip: volume, % head, SIR and ARCO extent (TID 1411 referencing the SEG's
    necrotic segment and its source series when ``seg`` is given). A hip without necrosis
    (``lesion_absent``) is coded as a femoral head finding with the qualitative evaluation "Necrosis:
    Absent" and its ARCO extent class, with no volume, % head or SIR (and no segment reference)."""
    side = str(hip.get("side", "")).lower()
    if side not in ("right", "left"):
        raise DicomError(f"hip side must be 'right' or 'left', got {hip.get('side')!r}")
    algorithm = hd.sr.AlgorithmIdentification(name="onfh-seg", version=str(model_version))
    absent = lesion_absent(hip)
    specs = [] if absent else [
        ("lesion_volume_ml", SCT_VOLUME, UCUM_ML),
        ("percent_head_involved", LOCAL_PERCENT_HEAD, UCUM_PERCENT),
        ("sir_necrotic", LOCAL_SIR, UCUM_NO_UNITS),
    ]
    measurements = [
        hd.sr.Measurement(name=name, value=value, unit=unit, algorithm_id=algorithm)
        for key, name, unit in specs
        if (value := _number(hip, key)) is not None
    ]
    evaluations = [hd.sr.QualitativeEvaluation(SCT_NECROSIS, SCT_ABSENT)] if absent else []
    extent = hip.get("arco_extent")
    if extent is not None:
        if str(extent) not in ARCO_EXTENT_CODES:
            raise DicomError(f"arco_extent must be one of {sorted(ARCO_EXTENT_CODES)}, got {extent!r}")
        evaluations.append(hd.sr.QualitativeEvaluation(LOCAL_ARCO_EXTENT, ARCO_EXTENT_CODES[str(extent)]))
    laterality = SCT_RIGHT if side == "right" else SCT_LEFT
    common = {
        "tracking_identifier": hd.sr.TrackingIdentifier(
            uid=hd.UID(), identifier=f"{side} femoral head" + ("" if absent else " necrosis")),
        "finding_type": SCT_FEMORAL_HEAD if absent else SCT_NECROSIS,
        "finding_category": SCT_ANATOMICAL_STRUCTURE if absent else SCT_MORPH_ABNORMAL,
        "finding_sites": [hd.sr.FindingSite(anatomic_location=SCT_FEMORAL_HEAD, laterality=laterality)],
        "algorithm_id": algorithm,
        "measurements": measurements or None,
        "qualitative_evaluations": evaluations or None,
    }
    if seg is None or absent:
        return hd.sr.MeasurementsAndQualitativeEvaluations(**common)
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=labels.NECROTIC,
            source_series=hd.sr.SourceSeriesForSegmentation(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)),
        **common,
    )


def build_dicom_sr(
    measurements: Mapping[str, Any],
    source_datasets: Sequence[Dataset],
    model_version: str | None = None,
    series_number: int = 9002,
    seg: Dataset | None = None,
) -> hd.sr.Comprehensive3DSR:
    """A TID 1500 Measurement Report (Comprehensive 3D SR) with one group per trusted hip.

    With ``seg`` (the DICOM SEG of the same scan) each group references its
    necrotic segment and source series, and the SEG is listed as evidence.

    Hips with ``trusted: false`` (a QC flag makes their numbers untrustworthy)
    get no measurement group; DicomError when no hip is left.
    """
    if not source_datasets:
        raise DicomError("no source instances to reference in the SR")
    version = str(model_version or measurements.get("model_version") or "unknown")
    hips = measurements.get("hips") or []
    if not isinstance(hips, Sequence) or isinstance(hips, (str, bytes)):
        raise DicomError("measurements 'hips' must be a list")
    if not hips:
        raise DicomError("no hip measurements to report (empty 'hips'): write no SR for this scan")
    hips = [h for h in hips if isinstance(h, Mapping) and h.get("trusted", True) is not False]
    if not hips:  # a QC flag made every hip untrustworthy (measurements JSON 'trusted': false)
        raise DicomError("no trusted hip measurements to report (all hips flagged by QC): write no SR for this scan")
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=hd.UID(), name="onfh-seg", manufacturer_name=MANUFACTURER, model_name=MODEL_NAME
    )
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=SCT_IMAGING_PROCEDURE,
        imaging_measurements=[_hip_group(hip, version, seg) for hip in hips],
    )
    refs = snap_orientation([reference_copy(ds) for ds in source_datasets])
    sr = hd.sr.Comprehensive3DSR(
        evidence=refs + ([seg] if seg is not None else []),
        content=report[0],
        **_new_instance(series_number),
        is_complete=True,
        series_description="onfh-seg measurements",
    )
    _scrub(sr)
    sr.CodingSchemeIdentificationSequence = [_local_scheme_item()]
    return sr


def write_dicom_sr(
    measurements: Mapping[str, Any],
    source_datasets: Sequence[Dataset],
    out_path: str | Path,
    model_version: str | None = None,
    series_number: int = 9002,
    seg: Dataset | None = None,
) -> Path:
    """Build the SR (see :func:`build_dicom_sr`) and write it atomically."""
    sr = build_dicom_sr(measurements, source_datasets, model_version, series_number, seg=seg)
    return _save(sr, out_path)
