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
import sys
from typing import Any

from onfh_seg.version import __version__

__all__ = ["__version__", "segment", "track"]


def _import_nibabel_without_pydicom() -> None:
    """Import nibabel with pydicom hidden from it: ``nibabel.nifti1`` imports pydicom whenever it is installed
    (for NIfTI DICOM extensions, which nibabel then keeps as raw bytes without it), and pydicom pulls in
    ``requests``: about 0.2 s on a quiet machine, over 1 s on a loaded one, in every process that reads a NIfTI
    file (issue 28). pydicom imports as usual afterwards (DICOM input, ``onfh_seg.io.dicom``). Nothing is
    hidden when either is already imported."""
    if "nibabel" in sys.modules or "pydicom" in sys.modules:
        return
    sys.modules["pydicom"] = None  # type: ignore[assignment]  # `import pydicom` raises ImportError meanwhile
    try:
        importlib.import_module("nibabel")
    finally:
        del sys.modules["pydicom"]


_import_nibabel_without_pydicom()

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
