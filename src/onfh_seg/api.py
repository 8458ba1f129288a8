"""Python API: :func:`segment` and :func:`track`, and :func:`infer_run` / :func:`track_run`, the one route the
command lines take from their settings to the work.

    from onfh_seg import segment, track

    scan = segment("scan.nii.gz")                          # in memory: scan.labels (nibabel), scan.measurements
    scan = segment(nib.load("scan.nii.gz"), tta=False)
    scans = segment("cohort/manifest.csv", out_dir="seg")  # every scan, outputs as onfh-infer writes them
    result = track("cohort/manifest.csv", "seg", "tracking", workers=2)

Keyword arguments are the keys of ``configs/infer.yaml`` / ``configs/track.yaml``; one left out (None) takes
its default there. They are validated by the same validator as the command lines
(:func:`onfh_seg.config.infer_settings`), with the same model lookup (the shipped model, in a source checkout
or an installed wheel). Nested settings are dicts: ``qc={"min_confidence": 0.5}``.
Research use only: the shipped model is trained on synthetic data.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import nibabel as nib
import numpy as np

from onfh_seg import config
from onfh_seg.config_schemas import InferSettings, TrackSettings
from onfh_seg.infer.inputs import expand_input
from onfh_seg.io.manifest import read_manifest
from onfh_seg.lifecycle import DirLock, check_writable, remove_own_temporaries
from onfh_seg.run.batch import run_batch
from onfh_seg.run.jobs import EngineSpec, SegmenterFactory, engine_spec
from onfh_seg.run.outputs import output_paths
from onfh_seg.run.reanalyse import Reanalysis, run_reanalysis
from onfh_seg.run.records import BatchSummary

if TYPE_CHECKING:  # tracking's modules (SimpleITK, matplotlib) load only when tracking runs: see __getattr__
    from onfh_seg.track.cohort import CohortResult

__all__ = ["CohortResult", "InferRun", "ScanResult", "infer_run", "segment", "track", "track_run"]


@dataclass
class ScanResult:
    """One segmented scan: ``labels`` is a uint8 nibabel image on the input's grid (0 background, 1 femoral
    head, 2 necrotic zone, 3 interface band, 4 acetabulum); ``measurements`` the contents of
    ``<name>_measurements.json`` (``hips``: per-hip volumes, % of head, ARCO, JIC, SIR; ``qc_flags``,
    ``model_version``, ``provider``...)."""

    name: str
    labels: nib.Nifti1Image
    measurements: dict[str, Any]


@dataclass
class InferRun:
    """What an onfh-infer run did: the batch summary and, with ``reanalyse``, the re-analysis."""

    batch: BatchSummary
    reanalysis: Reanalysis | None = None


# ---------------------------------------------------------------- the routes of the command lines


def infer_run(settings: InferSettings, *, segmenter_factory: SegmenterFactory | None = None,
              command_line: list[str] | None = None) -> InferRun:
    """Run onfh-infer with ``settings``: the batch, or with ``settings.reanalyse`` the re-analysis of an earlier
    run (:mod:`onfh_seg.run.reanalyse`). ``segmenter_factory(threads)`` replaces the engine in this process."""
    if settings.reanalyse:
        reanalysis = run_reanalysis(settings, segmenter_factory=segmenter_factory, command_line=command_line)
        return InferRun(reanalysis.batch, reanalysis)
    return InferRun(run_batch(settings, segmenter_factory=segmenter_factory, command_line=command_line))


def track_run(settings: TrackSettings, *, progress: Callable[[str, str], None] | None = None,
              on_start: Callable[[int], None] | None = None) -> CohortResult:
    """Run onfh-track with ``settings``: out_dir checked (before anything is read), the manifest found, then
    under :func:`tracking_run` (out_dir locked) ``on_start(number of patients)`` and every patient
    (``progress(patient_id, status)``)."""
    if not str(settings.out_dir or "").strip():
        raise ValueError("out_dir is empty")
    check_writable(Path(str(settings.out_dir)))
    if not Path(settings.manifest).is_file():
        raise FileNotFoundError(f"manifest not found: {settings.manifest}")
    with tracking_run(settings):
        if on_start is not None:
            on_start(len({r.get("patient_id") for r in read_manifest(settings.manifest, warn=False)}))
        # function-level import: tracking pulls in SimpleITK and matplotlib, which onfh-infer's start-up skips
        from onfh_seg.track.cohort import track_cohort

        return track_cohort(settings, progress=progress)


@contextmanager
def tracking_run(settings: TrackSettings) -> Iterator[Path]:
    """onfh-track's run lifecycle: ``out_dir`` checked for writability, locked while the block runs
    (``wait_lock``), this package's dead temporaries removed."""
    if not str(settings.out_dir or "").strip():
        raise ValueError("out_dir is empty")
    out_dir = Path(str(settings.out_dir))
    check_writable(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_writable(out_dir)
    with DirLock(out_dir, "onfh-track", wait=bool(settings.wait_lock)):
        for folder in (out_dir, out_dir / "patients", out_dir / "reports", out_dir / "transforms"):
            remove_own_temporaries(folder)
        yield out_dir


# ---------------------------------------------------------------- segment


@lru_cache(maxsize=2)
def _segmenter(spec: EngineSpec) -> Any:
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


def _given(values: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments that were given (None: the configured default)."""
    return {k: v for k, v in values.items() if v is not None}


def segment(
    image: str | Path | nib.Nifti1Image, out_dir: str | Path | None = None, *, name: str = "image",
    tta: bool | None = None, fast: bool | None = None, reference: Literal["acetabulum", "viable_head"] | None = None,
    overlay: bool | None = None, resume: bool | None = None, provider: Literal["auto", "cpu", "cuda"] | None = None,
    threads: int | None = None, cuda_tf32: bool | None = None, workers: int | None = None,
    model_dir: str | Path | None = None, engine: str | None = None, executor: Literal["local", "dask"] | None = None,
    scheduler: str | None = None, series: str | None = None, geometry: Literal["auto", "sform", "qform"] | None = None,
    max_image_mb: float | None = None, allow_unknown_orientation: bool | None = None, wait_lock: bool | None = None,
    qc: Mapping[str, Any] | None = None, anatomy: Mapping[str, Any] | None = None,
    dicom: Mapping[str, Any] | None = None,
) -> ScanResult | list[ScanResult]:
    """Segment and measure like ``onfh-infer``; returns a :class:`ScanResult` (a list, in scan order, for a
    folder or manifest).

    ``image``: a NIfTI path, a nibabel NIfTI image (its outputs are named
    ``name``), a DICOM study folder, or, with ``out_dir``, a folder of NIfTI
    files or a cohort manifest CSV. ``out_dir=None`` writes nothing (the overlay is not drawn); otherwise
    ``out_dir`` receives exactly what onfh-infer writes there, and finished
    scans are skipped on re-runs (``resume``). A scan that fails raises
    ``ValueError`` with the one-line reason; a bad setting raises
    :class:`onfh_seg.config.ConfigError`.
    """
    given = _given({"tta": tta, "fast": fast, "reference": reference, "overlay": overlay, "resume": resume,
                    "provider": provider, "threads": threads, "cuda_tf32": cuda_tf32, "workers": workers,
                    "model_dir": None if model_dir is None else str(model_dir), "engine": engine,
                    "executor": executor, "scheduler": scheduler, "series": series, "geometry": geometry,
                    "max_image_mb": max_image_mb, "allow_unknown_orientation": allow_unknown_orientation,
                    "wait_lock": wait_lock, "qc": qc, "anatomy": anatomy, "dicom": dicom})
    with tempfile.TemporaryDirectory(prefix="onfh-seg-") as tmp:
        src = Path(image) if isinstance(image, (str, Path)) else _save_input(image, Path(tmp), name)
        work = Path(out_dir) if out_dir is not None else Path(tmp) / "out"
        over = {"overlay": False} if out_dir is None else {}
        settings = config.infer_settings({**over, **given, "input": str(src), "out_dir": str(work)})
        single = len(expand_input(src, dict(settings.dicom.rules or {}), series=settings.series)) == 1
        if not single and out_dir is None:
            raise ValueError(f"{src} holds several scans; give out_dir=... to segment them all")
        spec = engine_spec(settings, 1)
        factory = (lambda threads: _segmenter(spec)) if settings.workers == 1 else None
        run = infer_run(settings, segmenter_factory=factory, command_line=["onfh_seg.segment", str(src)])
        scans = []
        for res in run.batch.results:
            if res["status"] == "error":
                raise ValueError(f"{res['name']}: {res['error']}")
            paths = output_paths(work, res["name"])
            scans.append(ScanResult(res["name"], _in_memory(nib.load(str(paths["seg"]))),
                                    json.loads(paths["measurements"].read_text(encoding="utf-8"))))
    return scans[0] if single else scans


# ---------------------------------------------------------------- track


def track(
    manifest: str | Path, infer_dir: str | Path, out_dir: str | Path, *,
    workers: int | None = None, executor: Literal["local", "dask"] | None = None, scheduler: str | None = None,
    resume: bool | None = None, wait_lock: bool | None = None, report: bool | None = None,
    report_pdf: bool | None = None, reference: Literal["acetabulum", "viable_head"] | None = None,
    grid_mm: float | None = None, boundary_mm: float | None = None, collapse_cone_deg: float | None = None,
    hip_match_max_mm: float | None = None, write_tfm: bool | None = None, min_correlation_n: int | None = None,
    min_lesion_ml: float | None = None, registration: Mapping[str, Any] | None = None,
    repeatability: Mapping[str, Any] | None = None,
) -> CohortResult:
    """Follow each patient's hips over time like ``onfh-track``; returns the :class:`CohortResult`.

    ``infer_dir`` holds the outputs of :func:`segment` / ``onfh-infer`` for the
    manifest's images. Writes ``out_dir`` as onfh-track does (longitudinal.csv,
    patients/<pid>.json, reports/<pid>.html, cohort_summary.csv,
    correlations.csv, errors.csv). The result has ``records`` (per patient:
    every number), ``tracked``, ``resumed``, ``failed``, ``errors`` and ``out_dir``.
    """
    given = _given({"workers": workers, "executor": executor, "scheduler": scheduler, "resume": resume,
                    "wait_lock": wait_lock, "report": report, "report_pdf": report_pdf, "reference": reference,
                    "grid_mm": grid_mm, "boundary_mm": boundary_mm, "collapse_cone_deg": collapse_cone_deg,
                    "hip_match_max_mm": hip_match_max_mm, "write_tfm": write_tfm,
                    "min_correlation_n": min_correlation_n, "min_lesion_ml": min_lesion_ml,
                    "registration": registration, "repeatability": repeatability})
    settings = config.track_settings({**given, "manifest": str(manifest), "infer_dir": str(infer_dir),
                                      "out_dir": str(out_dir)})
    return track_run(settings)


def __getattr__(name: str) -> Any:
    """``CohortResult``, imported on first use (tracking's modules stay off onfh-infer's start-up)."""
    if name == "CohortResult":
        # function-level import: onfh_seg.track.cohort pulls in SimpleITK and matplotlib
        from onfh_seg.track.cohort import CohortResult

        return CohortResult
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
