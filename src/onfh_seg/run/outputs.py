"""onfh-infer's per-scan output names, in one place: the suffixes, the paths in an out_dir and the scan-name rule.

A NIfTI input ``scan.nii.gz`` (any case of ``.nii``/``.nii.gz``) is the scan ``scan``; its outputs are
``scan_seg.nii.gz``, ``scan_overlay.png``, ``scan_seg.dcm``, ``scan_sr.dcm`` and ``scan_measurements.json``
(docs/CONTRACTS.md). Names only: no file is read or written here.
"""

from __future__ import annotations

from pathlib import Path

NIFTI_SUFFIXES = (".nii.gz", ".nii")
OUTPUT_SUFFIXES = {
    "seg": "_seg.nii.gz",
    "overlay": "_overlay.png",
    "dicom_seg": "_seg.dcm",
    "dicom_sr": "_sr.dcm",
    "measurements": "_measurements.json",
}
SEG_SUFFIX = OUTPUT_SUFFIXES["seg"]
MEASUREMENTS_SUFFIX = OUTPUT_SUFFIXES["measurements"]


def scan_name(path: str | Path) -> str:
    """The scan name of an input file: ``scan.nii.gz`` -> ``scan``, ``scan.NII`` -> ``scan``; other files lose
    their last suffix; a file named only ``.nii.gz`` is ``scan``."""
    path = Path(path)
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or "scan"
    return path.stem or name


def output_paths(out_dir: str | Path, name: str) -> dict[str, Path]:
    """All per-scan output paths of ``name`` in ``out_dir`` (``OUTPUT_SUFFIXES`` keys)."""
    out = Path(out_dir)
    return {key: out / f"{name}{suffix}" for key, suffix in OUTPUT_SUFFIXES.items()}


def is_tool_output(path: str | Path) -> bool:
    """True for file names onfh-infer writes (``<name>_seg.nii.gz``, ``_seg.dcm``, ``_sr.dcm``, ...)."""
    return Path(path).name.lower().endswith(tuple(OUTPUT_SUFFIXES.values()))
