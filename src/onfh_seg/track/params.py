"""What onfh-track is configured with (configs/track.yaml) and what it records per hip and timepoint."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from onfh_seg.measure import MIN_LESION_ML

TRACK_VERSION = "onfh-track/3"  # 3: regenerated_pct (%) replaces regenerated_fraction (0-1)
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
    "collapse_mm",
    "registration_shift_mm",
)
CATEGORICAL = ("arco_extent", "jic_type")


@dataclass(frozen=True)
class TrackParams:
    """Non-registration knobs (configs/track.yaml)."""

    reference: str = "acetabulum"
    grid_mm: float = 0.5
    boundary_mm: float | None = None  # None: half the coarsest voxel edge of the two scans + 1 mm
    collapse_cone_deg: float = 20.0
    hip_match_max_mm: float = 60.0
    write_tfm: bool = False
    min_correlation_n: int = 3
    min_lesion_ml: float = MIN_LESION_ML  # smaller baseline lesions count as none (as in measure: no ARCO class)

    @classmethod
    def from_dict(cls, d: Mapping | None) -> "TrackParams":
        d = dict(d or {})
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


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
