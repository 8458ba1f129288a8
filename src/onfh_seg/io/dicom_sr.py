"""DICOM output: the TID 1500 measurement SR (Comprehensive 3D SR), one measurement group per trusted hip.

With ``seg`` given, the SR's hip groups are TID 1411 volumetric groups that reference the SEG's necrotic
segment and the source series (TID 1500 segmentation reference). Identity rules as for every derived object
(``io.dicom_derived``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from onfh_seg import labels
from onfh_seg.io.dicom_derived import (
    ARCO_EXTENT_CODES,
    LOCAL_ARCO_EXTENT,
    LOCAL_PERCENT_HEAD,
    LOCAL_SIR,
    MANUFACTURER,
    MODEL_NAME,
    SCT_ABSENT,
    SCT_ANATOMICAL_STRUCTURE,
    SCT_FEMORAL_HEAD,
    SCT_IMAGING_PROCEDURE,
    SCT_LEFT,
    SCT_MORPH_ABNORMAL,
    SCT_NECROSIS,
    SCT_RIGHT,
    SCT_VOLUME,
    UCUM_ML,
    UCUM_NO_UNITS,
    UCUM_PERCENT,
    local_scheme_item,
    new_instance,
    reference_copy,
    save_dataset,
    scrub,
    snap_orientation,
)
from onfh_seg.io.dicom_series import DicomError


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
        **new_instance(series_number),
        is_complete=True,
        series_description="onfh-seg measurements",
    )
    scrub(sr)
    sr.CodingSchemeIdentificationSequence = [local_scheme_item()]
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
    return save_dataset(sr, out_path)
