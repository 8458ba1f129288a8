"""onfh-seg: segmentation, measurement and follow-up tracking of femoral head
osteonecrosis (ONFH) on T1-weighted hip MRI.

Python API (see :mod:`onfh_seg.api`)::

    from onfh_seg import segment, track

    labels, measurements = segment("scan.nii.gz")
    result = track("cohort/manifest.csv", "seg", "tracking")

Research software. The shipped model is trained on synthetic data only and is
not for clinical use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "segment", "track"]


def segment(*args: Any, **kwargs: Any) -> Any:
    """:func:`onfh_seg.api.segment` (imported on first use, so ``import onfh_seg`` stays light)."""
    from onfh_seg.api import segment as _segment

    return _segment(*args, **kwargs)


def track(*args: Any, **kwargs: Any) -> Any:
    """:func:`onfh_seg.api.track` (imported on first use)."""
    from onfh_seg.api import track as _track

    return _track(*args, **kwargs)


segment.__doc__ = "Segment and measure like onfh-infer; see onfh_seg.api.segment.\n\n" + (segment.__doc__ or "")
