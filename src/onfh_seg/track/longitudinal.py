"""onfh-track in one import: the names of the tracking modules, for existing callers.

The code lives by concern:

* ``track.params``: ``TrackParams``, ``TRACK_VERSION``, the per-hip metrics;
* ``track.inputs``: manifest rows grouped by patient with onfh-infer's record
  of each scan (``collect_patients``, ``input_hash``, ``load_scan``);
* ``track.changes``: change measures of a hip between two scans
  (``match_hips``, ``lesion_changes``, ``ray_extent``, ``boundary_width``);
* ``track.patient``: one patient registered and measured (``compute_patient``
  computes, ``save_transforms`` writes, ``track_patient`` does both);
* ``track.tables``: the cohort CSV tables computed from the records;
* ``track.cohort``: the cohort run of onfh-track (``track_cohort``).
"""

from __future__ import annotations

from onfh_seg.track.changes import boundary_width, hip_names, lesion_changes, match_hips, ray_extent
from onfh_seg.track.cohort import HASHED_KEYS, CohortResult, track_cohort
from onfh_seg.track.inputs import PatientInput, ScanData, ScanInput, collect_patients, input_hash, load_scan
from onfh_seg.track.params import CATEGORICAL, HIP_METRICS, TRACK_VERSION, TrackParams
from onfh_seg.track.patient import compute_patient, save_transforms, score_changes, track_patient
from onfh_seg.track.tables import (
    CORRELATION_COLUMNS,
    ERROR_COLUMNS,
    SUMMARY_COLUMNS,
    TIDY_COLUMNS,
    correlations,
    spearman,
    summary_rows,
    tidy_rows,
)

__all__ = [
    "CATEGORICAL", "CORRELATION_COLUMNS", "ERROR_COLUMNS", "HASHED_KEYS", "HIP_METRICS", "SUMMARY_COLUMNS",
    "TIDY_COLUMNS", "TRACK_VERSION", "CohortResult", "PatientInput", "ScanData", "ScanInput", "TrackParams",
    "boundary_width", "collect_patients", "compute_patient", "correlations", "hip_names", "input_hash",
    "lesion_changes", "load_scan", "match_hips", "ray_extent", "save_transforms", "score_changes", "spearman",
    "summary_rows", "tidy_rows", "track_cohort", "track_patient",
]
