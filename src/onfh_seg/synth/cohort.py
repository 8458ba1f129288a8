"""Synthetic longitudinal cohorts: patients, disease course, scans, files, manifest.

Layout written under ``out_dir`` (nnU-Net-like)::

    images/<pid>_m<MM>.nii.gz        T1 image, int16 scanner units
    labels/<pid>_m<MM>.nii.gz        label map, uint8, same grid
    regenerated/<pid>_m<MM>.nii.gz   necrotic at baseline and viable now (uint8)
    truth/<pid>_m<MM>.json           ground-truth record
    manifest.csv                     one row per scan or clinic visit

Patients are planned in ``plan``, written by ``scan_files``; the renderer is picked by ``style``
(a: ``phantom`` + ``acquisition``; dr: ``randomise.restyle_grids``; b: ``style_b``; c: ``style_c``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from onfh_seg import labels as L
from onfh_seg.config import as_dict, config_dir
from onfh_seg.config_schemas import SynthSettings
from onfh_seg.io.manifest import write_manifest
from onfh_seg.lifecycle import die_with_parent
from onfh_seg.synth.acquisition import FINE_MM, acquire, render_grids
from onfh_seg.synth.patient import Patient
from onfh_seg.synth.plan import PatientPlan, plan_demo, plan_patient, timepoint_labels
from onfh_seg.synth.preview import preview_cohort
from onfh_seg.synth.randomise import restyle_grids
from onfh_seg.synth.scan_files import acquisition_record, merge_scores, volume_record, write_scan
from onfh_seg.synth.style_b import generate_patient_b
from onfh_seg.synth.style_c import generate_patient_c


def _fine_truth(grids: dict, pat: Patient, months: float) -> dict[str, dict]:
    """Continuous ground-truth volumes per hip from the 0.8 mm fine grids."""
    vox_ml = FINE_MM**3 / 1000.0
    out = {}
    for side, g in grids["fine"].items():
        lab = g.lab
        head = np.isin(lab, L.HEAD_LABELS).sum() * vox_ml
        core = (lab == L.NECROTIC).sum() * vox_ml
        band = (lab == L.BAND).sum() * vox_ml
        out[side] = volume_record(head, core, band, g.regen.sum() * vox_ml)
    return out


def generate_patient(plan: PatientPlan, out_dir: Path, seed: int, style: str = "a") -> list[dict]:
    """Render, acquire and write all scans of one patient; return manifest rows.

    ``style="dr"`` replaces the phantom's T1 contrast by a random one per scan (the training
    renderer's style, ``synth.randomise.restyle_grids``), for in-style evaluation."""
    pat = plan.patient
    rng = np.random.default_rng([seed, 7, int(pat.patient_id[1:])])
    style_rng = np.random.default_rng([seed, 8, int(pat.patient_id[1:])])
    rows = []
    base_grids = None
    base_lesion_ml = {}
    for i, (m, pose, geom, tp) in enumerate(zip(plan.months, plan.poses, plan.geoms, timepoint_labels(plan))):
        grids = render_grids(pat, m, previous=base_grids)
        if base_grids is None:
            base_grids = grids
        acq_grids = grids
        if style == "dr":
            acq_grids = restyle_grids(grids, pat, m, style_rng)
        img, lab, rg = acquire(acq_grids, geom, pose, rng)
        name = f"{pat.patient_id}_{tp}"
        fine = _fine_truth(grids, pat, m)
        if i == 0:
            base_lesion_ml = {s: v["lesion_volume_ml"] for s, v in fine.items()}
        acquisition = acquisition_record(geom, geom.bias_amplitude)
        row = write_scan(out_dir, plan, name, tp, m, pose, geom.affine, (img, lab, rg), fine, base_lesion_ml,
                         acquisition)
        rows.append(row)
    return merge_scores(rows, plan)


def _job(args) -> list[dict]:
    kind, index, cfg, out_dir = args
    plan = plan_demo(index, cfg) if kind == "demo" else plan_patient(index, cfg)
    if cfg.get("style", "a") == "b":  # out-of-style renderer (held out from training)
        return generate_patient_b(plan, Path(out_dir), cfg, index)
    if cfg.get("style", "a") == "c":  # thin-slab gradient-echo renderer (held out from training)
        return generate_patient_c(plan, Path(out_dir), cfg, index)
    return generate_patient(plan, Path(out_dir), int(cfg["seed"]), style=cfg.get("style", "a"))


def generate_cohort(cfg: dict, out_dir: str | Path, progress=None) -> Path:
    """Generate a whole cohort and its manifest; returns the manifest path."""
    if cfg.get("style", "a") not in ("a", "b", "c", "dr"):
        raise ValueError(f"style must be a, b, c or dr, got {cfg.get('style')!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kind = "demo" if cfg.get("demo") else "random"
    n = 2 if kind == "demo" else int(cfg["n_patients"])
    jobs = [(kind, i, cfg, str(out_dir)) for i in range(n)]
    rows: list[dict] = []
    workers = max(1, int(cfg.get("workers", 1)))
    if workers == 1:
        results = map(_job, jobs)
    else:
        pool = ProcessPoolExecutor(workers, initializer=die_with_parent, initargs=(os.getpid(),))  # no orphans
        results = pool.map(_job, jobs)
    for r in results:
        rows.extend(r)
        if progress:
            progress(r[0]["patient_id"])
    if workers > 1:
        pool.shutdown()
    rows.sort(key=lambda r: (r["patient_id"], float(r["months"])))
    cols = ["patient_id", "timepoint", "months", "image", "labels", "regenerated", "truth", "age", "sex",
            "orientation", "affected_sides"]
    score_cols = [c for c in ("functional_rating_index", "vas_walking", "harris_hip_score", "rom_flexion_deg",
                              "rom_flexion_vas", "rom_abduction_deg", "rom_abduction_vas", "rom_adduction_deg",
                              "rom_adduction_vas") if any(c in r for r in rows)]
    manifest = out_dir / "manifest.csv"
    write_manifest(manifest, rows, cols + score_cols)
    return manifest


def synth_config(overrides: dict | None = None) -> dict:
    """configs/synth.yaml as a plain dict, merged with ``overrides`` (nested dicts)."""
    base = OmegaConf.load(Path(config_dir()) / "synth.yaml")
    base.pop("defaults", None)
    base.pop("hydra", None)
    return OmegaConf.to_container(OmegaConf.merge(base, overrides or {}), resolve=True)


# ---------------------------------------------------------------- onfh-synth


@dataclass
class SynthRun:
    """What onfh-synth made: the manifest, how long the cohort took, and the previews (``preview=true``)."""

    manifest: Path
    seconds: float
    previews: list[Path] = field(default_factory=list)


def cohort_size(settings: SynthSettings) -> int:
    """The number of patients onfh-synth makes (the demo cohort has two)."""
    return 2 if settings.demo else settings.n_patients


def synth_run(settings: SynthSettings, progress: Callable[[str], None] | None = None) -> SynthRun:
    """onfh-synth's work: the cohort of ``settings`` in ``settings.out_dir`` (``progress(patient_id)`` after each
    patient), then its previews when ``settings.preview``."""
    t0 = time.time()
    manifest = generate_cohort(as_dict(settings), settings.out_dir, progress=progress)
    seconds = time.time() - t0
    return SynthRun(manifest, seconds, preview_cohort(manifest) if settings.preview else [])
