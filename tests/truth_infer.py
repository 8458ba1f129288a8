"""Test stand-in for onfh-infer: its outputs written from a synthetic cohort's truth labels.

Used by the tests (``write_truth_infer_outputs``) and ``scripts/eval_tracking.py``
to separate tracking errors from segmentation errors.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from onfh_seg.infer.inputs import expand_input
from onfh_seg.io.files import atomic_write_bytes, atomic_write_text, sha256_file
from onfh_seg.io.nifti import load_nifti
from onfh_seg.measure import measure_scan
from onfh_seg.quality import qc_flags
from onfh_seg.run.outputs import MEASUREMENTS_SUFFIX, SEG_SUFFIX
from onfh_seg.track.identity import normalised_path


def write_truth_infer_outputs(manifest_path: str | Path, infer_dir: str | Path, reference: str = "acetabulum",
                              model_version: str = "truth-labels", progress: Callable[[str], None] | None = None) -> Path:
    """Emulate onfh-infer outputs from a synthetic cohort's truth labels.

    For each NIfTI image of the manifest with ``labels`` (one job per image,
    named as onfh-infer names it: ``infer.inputs.expand_input``): copies the
    labels to ``<infer_dir>/<name>_seg.nii.gz`` and writes
    ``<name>_measurements.json`` with the identity onfh-infer records and
    measurements from ``measure.measure_scan`` / ``quality.qc_flags``
    (docs/CONTRACTS.md).
    """
    infer_dir = Path(infer_dir)
    infer_dir.mkdir(parents=True, exist_ok=True)
    for job in expand_input(Path(manifest_path)):
        if job.kind != "nifti" or job.labels is None or not job.path.is_file():
            continue
        img = load_nifti(job.path)
        image = img.get_fdata(dtype=np.float32)
        labels = np.asarray(load_nifti(job.labels).dataobj).astype(np.uint8)
        hips = measure_scan(image, labels, img.affine, reference)
        meas = {"input": job.image_ref, "input_path": normalised_path(job.path), "input_kind": "nifti",
                "name": job.name, "input_sha256": sha256_file(job.path), "model_version": model_version,
                "status": "ok", "error": None, "qc_flags": qc_flags(image, labels, img.affine, hips),
                "mean_confidence": 1.0, "hips": hips, **job.meta}
        atomic_write_bytes(infer_dir / f"{job.name}{SEG_SUFFIX}", job.labels.read_bytes())
        atomic_write_text(infer_dir / f"{job.name}{MEASUREMENTS_SUFFIX}", json.dumps(meas, indent=1) + "\n")
        if progress:
            progress(job.name)
    return infer_dir
