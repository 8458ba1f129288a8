"""Python API: :func:`segment` and :func:`track`, as the command lines run them.

    from onfh_seg import segment, track

    labels, meas = segment("scan.nii.gz")                  # in memory: nibabel label image + measurements
    labels, meas = segment(nib.load("scan.nii.gz"), tta=False)
    segment("cohort/manifest.csv", out_dir="seg")          # every scan, outputs as onfh-infer writes them
    result = track("cohort/manifest.csv", "seg", "tracking", workers=2)

Settings are the keys of ``configs/infer.yaml`` / ``configs/track.yaml``,
validated by the same validator as the command lines
(:func:`onfh_seg.config.settings`), with the same defaults (test-time mirroring
on) and the same model lookup (the shipped model, in a source checkout or an
installed wheel). Nested settings are dicts: ``qc={"min_confidence": 0.5}``.
Research use only: the shipped model is trained on synthetic data.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from onfh_seg import config

__all__ = ["segment", "track"]


@lru_cache(maxsize=2)
def _segmenter(spec: Any) -> Any:
    """One segmenter per engine spec, reused across calls (loading the ONNX sessions takes a while)."""
    return spec.build()


def _in_memory(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """A copy of ``img`` whose voxels are in memory (the file behind it may be deleted)."""
    return type(img)(np.asarray(img.dataobj), img.affine, img.header)


def _save_input(image: nib.Nifti1Image, folder: Path, name: str) -> Path:
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise TypeError(f"image must be a path or a nibabel NIfTI image, got {type(image).__name__}")
    path = folder / f"{name}.nii.gz"
    nib.save(image, str(path))
    return path


def segment(image: str | Path | nib.Nifti1Image, out_dir: str | Path | None = None, *, name: str = "image",
            **settings: Any) -> tuple[Any, Any]:
    """Segment and measure like ``onfh-infer``; returns ``(label image, measurements)``.

    ``image``: a NIfTI path, a nibabel NIfTI image (its outputs are named
    ``name``), a DICOM study folder, or, with ``out_dir``, a folder of NIfTI
    files or a cohort manifest CSV. The label image is a uint8 nibabel image on
    the input's grid (0 background, 1 femoral head, 2 necrotic zone, 3
    interface band, 4 acetabulum); the measurements are the contents of
    ``<name>_measurements.json`` (``hips``: per-hip volumes, % of head, ARCO,
    JIC, SIR; ``qc_flags``, ``model_version``, ``provider``...). For a folder
    or manifest both are lists in scan order.

    ``out_dir=None`` writes nothing (the overlay is not drawn); otherwise
    ``out_dir`` receives exactly what onfh-infer writes there, and finished
    scans are skipped on re-runs (``resume``). A scan that fails raises
    ``ValueError`` with the one-line reason; a bad setting raises
    :class:`onfh_seg.config.ConfigError`.
    """
    from onfh_seg.batch import engine_spec, run_batch
    from onfh_seg.infer.inputs import expand_input

    with tempfile.TemporaryDirectory(prefix="onfh-seg-") as tmp:
        src = Path(image) if isinstance(image, (str, Path)) else _save_input(image, Path(tmp), name)
        work = Path(out_dir) if out_dir is not None else Path(tmp) / "out"
        over = {"overlay": False} if out_dir is None else {}
        cfg = config.settings("infer", {**over, **settings, "input": str(src), "out_dir": str(work)})
        single = len(expand_input(src, dict((cfg["dicom"] or {}).get("rules") or {}), series=cfg["series"])) == 1
        if not single and out_dir is None:
            raise ValueError(f"{src} holds several scans; give out_dir=... to segment them all")
        spec = engine_spec(cfg, 1)
        summary = run_batch(cfg, segmenter_factory=(lambda threads: _segmenter(spec)) if cfg["workers"] == 1 else None,
                            command_line=["onfh_seg.segment", str(src)])
        labels, measurements = [], []
        for res in summary.results:
            if res["status"] == "error":
                raise ValueError(f"{res['name']}: {res['error']}")
            meas_path = work / f"{res['name']}_measurements.json"
            measurements.append(json.loads(meas_path.read_text(encoding="utf-8")))
            labels.append(_in_memory(nib.load(str(work / f"{res['name']}_seg.nii.gz"))))
    return (labels[0], measurements[0]) if single else (labels, measurements)


def track(manifest: str | Path, infer_dir: str | Path, out_dir: str | Path, **settings: Any) -> Any:
    """Follow each patient's hips over time like ``onfh-track``; returns the cohort result.

    ``infer_dir`` holds the outputs of :func:`segment` / ``onfh-infer`` for the
    manifest's images. Writes ``out_dir`` as onfh-track does (longitudinal.csv,
    patients/<pid>.json, reports/<pid>.html, cohort_summary.csv,
    correlations.csv, errors.csv). The result has ``records`` (per patient:
    every number), ``tracked``, ``resumed``, ``failed``, ``errors`` and ``out_dir``.
    """
    cfg = config.settings("track", {**settings, "manifest": str(manifest), "infer_dir": str(infer_dir),
                                    "out_dir": str(out_dir)})
    if not Path(cfg["manifest"]).is_file():
        raise FileNotFoundError(f"manifest not found: {cfg['manifest']}")
    from onfh_seg.track.cohort import track_cohort

    with tracking_run(cfg):
        return track_cohort(cfg)


@contextmanager
def tracking_run(cfg: Mapping[str, Any]) -> Iterator[Path]:
    """onfh-track's run lifecycle around tracking a validated configuration: ``out_dir`` checked for
    writability, locked while the block runs (``wait_lock``), this package's dead temporaries removed."""
    from onfh_seg.lifecycle import DirLock, check_writable, remove_own_temporaries

    if not str(cfg["out_dir"] or "").strip():
        raise ValueError("out_dir is empty")
    out_dir = Path(str(cfg["out_dir"]))
    check_writable(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_writable(out_dir)
    with DirLock(out_dir, "onfh-track", wait=bool(cfg["wait_lock"])):
        for folder in (out_dir, out_dir / "patients", out_dir / "reports", out_dir / "transforms"):
            remove_own_temporaries(folder)
        yield out_dir
