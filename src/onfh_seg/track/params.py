"""What onfh-track is configured with (configs/track.yaml) and what it records per hip and timepoint."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from onfh_seg.config import defaults

TRACK_VERSION = "onfh-track/4"  # 4: head_height_loss_mm replaces collapse_mm; 3: regenerated_pct (%) replaces regenerated_fraction (0-1)
# numeric per-hip metrics, in table order
HIP_METRICS = (
    "head_volume_ml",
    "lesion_volume_ml",
    "percent_head_involved",
    "necrotic_core_volume_ml",
    "band_volume_ml",
    "lesion_change_ml",
    "lesion_change_pct",
    "regenerated_pct",
    "regenerated_volume_ml",
    "new_necrosis_ml",
    "sir_necrotic",
    "sir_lesion",
    "sir_baseline_zone",
    "sir_change",
    "head_height_loss_mm",
    "registration_shift_mm",
)
CATEGORICAL = ("arco_extent", "jic_type")


@dataclass(frozen=True)
class TrackParams:
    """Non-registration knobs of onfh-track; their defaults live only in configs/track.yaml."""

    reference: str
    grid_mm: float
    boundary_mm: float | None  # None: half the coarsest voxel edge of the two scans + 1 mm
    collapse_cone_deg: float
    hip_match_max_mm: float
    write_tfm: bool
    min_correlation_n: int
    min_lesion_ml: float  # smaller baseline lesions count as none (as in measure: no ARCO class)

    @classmethod
    def from_dict(cls, d: Mapping | None = None) -> "TrackParams":
        """``d`` over the defaults of configs/track.yaml (keys that are not parameters are ignored)."""
        merged = {**defaults("track"), **dict(d or {})}
        return cls(**{k: merged[k] for k in cls.__dataclass_fields__})


def num(v) -> float | None:
    """Float of a value, None if empty/non-numeric/non-finite."""
    if v is None or v == "":
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def rounded(v, nd: int = 4) -> float | None:
    """``v`` rounded to ``nd`` decimals, None if None or non-finite."""
    return None if v is None or not math.isfinite(float(v)) else round(float(v), nd)
