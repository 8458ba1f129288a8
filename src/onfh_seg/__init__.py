"""onfh-seg: segmentation, measurement and follow-up tracking of femoral head
osteonecrosis (ONFH) on T1-weighted hip MRI.

Python API (see :mod:`onfh_seg.api`)::

    from onfh_seg import segment, track

    scan = segment("scan.nii.gz")    # a ScanResult: scan.labels (nibabel image), scan.measurements
    result = track("cohort/manifest.csv", "seg", "tracking")  # a CohortResult

Research software. The shipped model is trained on synthetic data only and is
not for clinical use.
"""

from __future__ import annotations

import importlib
from typing import Any

from onfh_seg.version import __version__

__all__ = ["__version__", "segment", "track"]

# The subpackage ``onfh_seg.track`` shares its name with the API function ``track``. Importing the (empty)
# subpackage now and dropping the attribute the import machinery sets means ``from onfh_seg import track`` is
# always the function (through ``__getattr__`` below), whatever was imported before; ``onfh_seg.track.*``
# modules import as usual (``from onfh_seg.track.cohort import ...``).
importlib.import_module("onfh_seg.track")
globals().pop("track", None)


def __getattr__(name: str) -> Any:
    """``segment`` and ``track`` from :mod:`onfh_seg.api`, imported on first use (so ``import onfh_seg``
    and the command lines stay light)."""
    if name in ("segment", "track"):
        # function-level import: lazy: `import onfh_seg` stays light until the API is used
        from onfh_seg import api

        return getattr(api, name)
    raise AttributeError(f"module 'onfh_seg' has no attribute {name!r}")
