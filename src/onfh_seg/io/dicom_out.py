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

Only the study's identity is taken from the source (``io.dicom_derived``, which also holds our codes,
:func:`copy_patient_module` and :func:`snap_orientation`). The SR is built and written in ``io.dicom_sr``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from onfh_seg import labels
from onfh_seg.io.dicom_derived import (
    DCM_INTERFACE,
    MODEL_NAME,
    SCT_ACETABULUM,
    SCT_ANATOMICAL_STRUCTURE,
    SCT_FEMORAL_HEAD,
    SCT_MORPH_ABNORMAL,
    SCT_NECROSIS,
    new_instance,
    reference_copy,
    save_dataset,
    scrub,
    snap_orientation,
)
from onfh_seg.io.dicom_geometry import series_affine, series_shape, sort_slices
from onfh_seg.io.dicom_series import DicomError, slice_name
from onfh_seg.io.nifti import make_image

GRID_TOLERANCE_MM = 1e-3


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
    scrub(seg)
    return seg


def _segmentation(refs: list[Dataset], frames: np.ndarray, model_version: str,
                  series_number: int) -> hd.seg.Segmentation:
    """The highdicom Segmentation object of ``frames`` over the reference copies ``refs``."""
    return hd.seg.Segmentation(
        source_images=refs,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(model_version),
        **new_instance(series_number),
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
    return save_dataset(seg, out_path)
