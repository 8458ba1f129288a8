"""A scan's record beyond the pixels: its ``measurements.csv`` rows, the settings that change its outputs
(recorded in its measurements JSON) and whether an earlier run already made it as asked (resume).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from onfh_seg.config_schemas import InferSettings
from onfh_seg.infer.inputs import input_sha256
from onfh_seg.infer.scan_jobs import ScanJob
from onfh_seg.io.files import read_json_dict
from onfh_seg.measure import SIDE_ORDER, measurements_row
from onfh_seg.run.outputs import output_paths


def output_errors(meas: Mapping[str, Any]) -> list[str]:
    """``"<output>: <error>"`` for every output of a scan that could not be written (``outputs`` entries with
    status error)."""
    outputs = meas.get("outputs") or {}
    return [f"{key}: {value.get('error')}" for key, value in outputs.items()
            if isinstance(value, Mapping) and value.get("status") == "error"]


def rows_from_measurements(meas: Mapping[str, Any]) -> list[dict]:
    """``measurements.csv`` rows of one scan's measurements dict (one per hip, or one empty-hip row)."""
    hips = list(meas.get("hips") or []) or [None]
    problems = "; ".join(output_errors(meas)) or None
    return [
        measurements_row(meas["name"], meas["input"], hip, meas.get("qc_flags") or [], meas.get("model_version") or "",
                         problems)
        for hip in hips
    ]


def row_sort_key(row: Mapping[str, Any]) -> tuple:
    side = row.get("side")
    return (str(row["scan"]), SIDE_ORDER.index(side) if side in SIDE_ORDER else -1)


# ---------------------------------------------------------------- resume

# Settings that change a scan's outputs (dotted config key -> the default the code uses). Each scan's
# measurements JSON records them ("settings"); resume re-runs a scan when one differs. Not here because
# results do not depend on them: workers, threads, provider, resume, progress, out_dir. The model's own
# settings (lesion threshold, window, overlap) are part of its version.
RESULT_SETTINGS: tuple[str, ...] = (
    "tta", "fast", "reference", "overlay", "qc.head_ml_range", "qc.min_confidence",
    "dicom.write_seg", "dicom.write_sr", "dicom.sr_without_seg", "dicom.rules", "geometry",
    "anatomy",  # {enabled: ...} plus any AnatomyLimits overrides
)


def _plain(value: Any) -> Any:
    """A JSON-comparable copy of a setting (numbers as floats, mappings sorted, sequences as lists)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return str(value)


def result_settings(settings: InferSettings) -> dict[str, Any]:
    """The settings that change a scan's outputs (``RESULT_SETTINGS`` keys, JSON-comparable; a null
    ``dicom.rules`` is ``{}``)."""
    values = {"tta": settings.tta, "fast": settings.fast, "reference": settings.reference, "overlay": settings.overlay,
              "qc.head_ml_range": settings.qc.head_ml_range, "qc.min_confidence": settings.qc.min_confidence,
              "dicom.write_seg": settings.dicom.write_seg, "dicom.write_sr": settings.dicom.write_sr,
              "dicom.sr_without_seg": settings.dicom.sr_without_seg, "dicom.rules": settings.dicom.rules or {},
              "geometry": settings.geometry, "anatomy": settings.anatomy}
    return {key: _plain(values[key]) for key in RESULT_SETTINGS}


def changed_settings(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Keys of ``current`` whose value differs from (or is missing in) ``recorded``."""
    return [k for k, v in current.items() if k not in recorded or _plain(recorded[k]) != v]


def resume_check(job: ScanJob, out_dir: str | Path, model_version: str, settings: Mapping[str, Any],
                 resume: bool = True) -> tuple[dict | None, str | None]:
    """``(measurements, None)`` when ``job`` is already done as asked, else ``(None, reason)``.

    Done means ``<name>_measurements.json`` has status ok, the same
    ``input_sha256`` as the input now, the same ``model_version`` and
    ``settings``, and every output it lists exists. ``reason`` says why a
    finished scan runs again (``"input changed"``, ``"model changed"``,
    ``"settings changed (tta)"``, ``"outputs missing (seg)"``, ``"resume=false"``);
    it is None for a scan without a finished earlier output (new, or failed before).
    """
    paths = output_paths(out_dir, job.name)
    meas = read_json_dict(paths["measurements"])
    if meas is None or meas.get("status") != "ok":
        return None, None
    if not resume:
        return None, "resume=false"
    recorded_outputs = [k for k, v in (meas.get("outputs") or {"seg": paths["seg"].name}).items()
                        if v and not (isinstance(v, Mapping) and v.get("status") == "not_written")]
    missing = [k for k in recorded_outputs if k in paths and not paths[k].is_file()]
    if missing:
        return None, f"outputs missing ({', '.join(missing)})"
    sha = input_sha256(job)
    if sha is None or sha != meas.get("input_sha256"):
        return None, "input changed"
    if meas.get("model_version") != model_version:
        return None, "model changed"
    if not isinstance(meas.get("settings"), Mapping):
        return None, "settings not recorded"
    changed = changed_settings(meas["settings"], settings)
    if changed:
        return None, f"settings changed ({', '.join(changed)})"
    return meas, None
