"""Evaluation of the shipped cascade on labelled synthetic cohorts, several side by side.

Per scan: Dice and 95% Hausdorff distance per label, lesion (2+3) Dice. Per hip
(within a ball around the true head centre): lesion and head Dice, lesion volume
error, SIR error against the SIR computed from the true labels on the same
image, ARCO extent class agreement, false lesion on healthy hips, whether a
fully visible head was missed. Per follow-up hip (with saved predictions): the
regenerated fraction (share of the baseline lesion that is viable head now,
mapped with the true transform to baseline) from the predictions against the
same quantity from the true labels. All numbers come from running the ONNX
models on the cohort. Cohorts: in-style validation, out-of-style A (the
default ``onfh-synth`` renderer), out-of-style B (``onfh_seg.synth.style_b``).
The cohort summary and the side-by-side table are in ``evaluate_summary``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from tqdm import tqdm

from onfh_seg import labels as L
from onfh_seg.config import model_version
from onfh_seg.config_schemas import EvalSettings
from onfh_seg.evaluate_summary import summarise
from onfh_seg.geometry import ball_mask, voxel_volume_ml
from onfh_seg.infer.engine import Segmenter
from onfh_seg.io.files import atomic_write_text
from onfh_seg.io.manifest import read_manifest, resolve, write_manifest
from onfh_seg.io.nifti import save_nifti
from onfh_seg.measure import arco_extent, measure_scan
from onfh_seg.run.outputs import output_paths, scan_name
from onfh_seg.run.pool import Executor, map_jobs
from onfh_seg.synth.cohort import generate_cohort, synth_config

HIP_BALL_PAD_MM = 8.0  # per-hip Dice: voxels within head radius + this of the true head centre


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks (NaN if both empty)."""
    s = a.sum() + b.sum()
    return float("nan") if s == 0 else float(2.0 * (a & b).sum() / s)


def hd95(a: np.ndarray, b: np.ndarray, spacing: np.ndarray) -> float:
    """Symmetric 95th-percentile Hausdorff distance (mm) between mask surfaces (NaN if one is empty)."""
    if not a.any() or not b.any():
        return float("nan")
    sa = a & ~ndimage.binary_erosion(a)
    sb = b & ~ndimage.binary_erosion(b)
    da = ndimage.distance_transform_edt(~sb, sampling=spacing)[sa]
    db = ndimage.distance_transform_edt(~sa, sampling=spacing)[sb]
    return float(max(np.percentile(da, 95), np.percentile(db, 95)))


def false_lesion_components_ml(pred: np.ndarray, hip_mask: np.ndarray, voxel_ml: float) -> float:
    """Largest predicted lesion (2+3) component inside a hip region, in mL."""
    cc, n = ndimage.label(np.isin(pred, L.LESION_LABELS) & hip_mask)
    if n == 0:
        return 0.0
    return float(np.bincount(cc.ravel())[1:].max() * voxel_ml)


def head_fully_visible(centre_ras: Sequence[float], radius_mm: float, affine: np.ndarray, shape: Sequence[int],
                       margin_mm: float = 2.0) -> bool:
    """Whether the head sphere (radius + margin) lies inside the scan's voxel box."""
    k = np.arange(200) + 0.5
    phi = np.arccos(1 - 2 * k / 200)
    theta = np.pi * (1 + 5**0.5) * k
    dirs = np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], axis=1)
    pts = np.asarray(centre_ras, float) + (radius_mm + margin_mm) * dirs
    inv = np.linalg.inv(affine)
    v = pts @ inv[:3, :3].T + inv[:3, 3]
    return bool(np.all(v >= -0.5) and np.all(v <= np.asarray(shape[:3]) - 0.5))


def _match(hips: list[dict], truth_hips: list[dict]) -> dict[str, dict]:
    """Map measured hips to truth sides by nearest head centre."""
    out = {}
    for h in hips:
        if h["head_centre_ras_mm"] is None:
            continue
        c = np.array(h["head_centre_ras_mm"])
        best = min(truth_hips, key=lambda t: np.linalg.norm(c - np.array(t["head_centre_ras_mm"])))
        if np.linalg.norm(c - np.array(best["head_centre_ras_mm"])) < 25:
            out[best["side"]] = h
    return out


_SEG = None
_SEG_ARGS: tuple | None = None  # what a pool worker's _SEG was built from


def make_segmenter(model_dir: str, threads: int, tta: bool, engine_kw: dict):
    """The ONNX cascade (``Segmenter``); anything with ``segment(image, affine)`` returning ``SegResult`` works."""
    return Segmenter(model_dir, provider="cpu", threads=threads, tta=tta, **engine_kw)


def _init(model_dir: str, threads: int, tta: bool, engine_kw: dict) -> None:
    global _SEG
    _SEG = make_segmenter(model_dir, threads, tta, engine_kw)


def _evaluate_in_worker(initargs: tuple, job: tuple) -> dict:
    """``evaluate_scan`` in a pool worker, its segmenter built once per worker process from ``initargs``."""
    global _SEG_ARGS
    if _SEG is None or _SEG_ARGS != initargs:
        _init(*initargs)
        _SEG_ARGS = initargs
    return evaluate_scan(job)


def evaluate_scan(args: tuple) -> dict:
    """Segment one scan, compare with its truth; save the prediction to ``pred_path`` if given."""
    manifest, row, reference, pred_path = args
    img_nii = nib.load(str(resolve(manifest, row["image"])))
    image = np.asarray(img_nii.dataobj, np.float32)
    truth_lab = np.asarray(nib.load(str(resolve(manifest, row["labels"]))).dataobj).astype(np.uint8)
    truth = json.loads(resolve(manifest, row["truth"]).read_text())
    res = _SEG.segment(image, img_nii.affine)
    pred = res.labels
    if pred_path:
        save_nifti(pred, img_nii.affine, pred_path, np.uint8)
    spacing = np.linalg.norm(img_nii.affine[:3, :3], axis=0)
    vml = voxel_volume_ml(img_nii.affine)
    acq = truth["acquisition"]
    scan = {"scan": Path(row["image"]).name, "patient_id": row.get("patient_id", ""), "months": row.get("months", ""),
            "style": truth.get("style", "a"), "protocol": acq.get("protocol", "2d"), "orientation": acq["orientation"],
            "slice_mm": acq["slice_thickness_mm"], "snr": acq["snr"],
            "mean_confidence": res.mean_confidence, **{f"t_{k}": v for k, v in res.timings.items()}}
    for c in range(1, L.NUM_CLASSES):
        scan[f"dice_{L.LABELS[c]}"] = dice(pred == c, truth_lab == c)
        scan[f"hd95_{L.LABELS[c]}"] = hd95(pred == c, truth_lab == c, spacing)
    scan["dice_lesion"] = dice(np.isin(pred, L.LESION_LABELS), np.isin(truth_lab, L.LESION_LABELS))
    m_pred = _match(measure_scan(image, pred, img_nii.affine, reference), truth["hips"])
    m_true = _match(measure_scan(image, truth_lab, img_nii.affine, reference), truth["hips"])
    hips = []
    for th in truth["hips"]:
        side = th["side"]
        visible = head_fully_visible(th["head_centre_ras_mm"], th["head_radius_mm"], img_nii.affine, image.shape)
        if side not in m_true:
            if visible:  # cannot happen for a generator cohort; recorded so that it is never silently dropped
                hips.append({"scan": scan["scan"], "side": side, "stage": th["stage"], "found": side in m_pred,
                             "head_fully_visible": True, "truth_head_not_measurable": True})
            continue  # head not in this field of view
        mt, mp = m_true[side], m_pred.get(side)
        ball = ball_mask(pred.shape, img_nii.affine, np.array(th["head_centre_ras_mm"]),
                         th["head_radius_mm"] + HIP_BALL_PAD_MM)
        t_les, p_les = np.isin(truth_lab, L.LESION_LABELS) & ball, np.isin(pred, L.LESION_LABELS) & ball
        hip = {"scan": scan["scan"], "side": side, "stage": th["stage"], "mitchell": th.get("mitchell", ""),
               "found": mp is not None, "head_fully_visible": visible,
               "head_dice": dice(np.isin(pred, L.HEAD_LABELS) & ball, np.isin(truth_lab, L.HEAD_LABELS) & ball),
               "lesion_dice": dice(p_les, t_les) if t_les.any() else float("nan"),
               "true_lesion_ml": mt["lesion_volume_ml"], "true_lesion_ml_continuous": th["lesion_volume_ml"],
               "pred_lesion_ml": mp["lesion_volume_ml"] if mp else 0.0,
               "true_extent_pct": th["extent_percent"], "pred_extent_pct": mp["percent_head_involved"] if mp else 0.0,
               "true_arco": arco_extent(th["extent_percent"], th["lesion_volume_ml"] > 0),
               "pred_arco": mp["arco_extent"] if mp else "none",
               "true_sir": mt["sir_necrotic"], "pred_sir": mp["sir_necrotic"] if mp else None}
        if th["stage"] == "0":
            big = ball_mask(pred.shape, img_nii.affine, np.array(th["head_centre_ras_mm"]), 2.5 * th["head_radius_mm"])
            hip["false_lesion_ml"] = false_lesion_components_ml(pred, big, vml)
        hips.append(hip)
    return {"scan": scan, "hips": hips}


# ----------------------------------------------------------------------------- regenerated fraction


def regenerated_fraction(base_lab: np.ndarray, base_aff: np.ndarray, lab: np.ndarray, aff: np.ndarray,
                         to_base: np.ndarray, centre_ras: Sequence[float], radius_mm: float) -> float | None:
    """Share of the baseline lesion (mapped onto this scan by ``to_base``, nearest neighbour) that is viable head now.

    Counted within ``radius_mm`` of the head centre on this scan's grid; None without a baseline lesion there.
    """
    ball = ball_mask(lab.shape, aff, np.asarray(centre_ras, float), radius_mm)
    idx = np.argwhere(ball)
    if len(idx) == 0:
        return None
    world = idx @ aff[:3, :3].T + aff[:3, 3]
    base_world = world @ to_base[:3, :3].T + to_base[:3, 3]
    inv = np.linalg.inv(base_aff)
    bv = np.rint(base_world @ inv[:3, :3].T + inv[:3, 3]).astype(int)
    ok = np.all((bv >= 0) & (bv < np.array(base_lab.shape)), axis=1)
    base_les = np.zeros(len(idx), bool)
    base_les[ok] = np.isin(base_lab[bv[ok, 0], bv[ok, 1], bv[ok, 2]], L.LESION_LABELS)
    if base_les.sum() == 0:
        return None
    now = lab[idx[:, 0], idx[:, 1], idx[:, 2]]
    return float((base_les & (now == L.HEAD)).sum() / base_les.sum())


def regenerated_errors(items: list[dict]) -> list[dict]:
    """Per follow-up diseased hip: regenerated fraction from predictions vs from the true labels (points).

    ``items``: one per scan with ``manifest``, ``row`` (manifest row), ``pred`` (saved prediction path)
    and ``scan`` (its name in the scan table).
    """
    groups: dict[tuple, list[dict]] = {}
    for it in items:
        groups.setdefault((str(it["manifest"]), it["row"]["patient_id"]), []).append(it)
    out = []
    for its in groups.values():
        its.sort(key=lambda it: float(it["row"]["months"]))
        b = its[0]
        base_aff = nib.load(str(resolve(b["manifest"], b["row"]["labels"]))).affine
        base_true = np.asarray(nib.load(str(resolve(b["manifest"], b["row"]["labels"]))).dataobj)
        base_pred = np.asarray(nib.load(str(b["pred"])).dataobj)
        for it in its[1:]:
            truth = json.loads(resolve(it["manifest"], it["row"]["truth"]).read_text())
            lab_nii = nib.load(str(resolve(it["manifest"], it["row"]["labels"])))
            true_now = np.asarray(lab_nii.dataobj)
            pred_now = np.asarray(nib.load(str(it["pred"])).dataobj)
            T = np.array(truth["transform_to_baseline"])
            for th in truth["hips"]:
                if th["stage"] == "0":
                    continue
                r = th["head_radius_mm"] + HIP_BALL_PAD_MM
                ft = regenerated_fraction(base_true, base_aff, true_now, lab_nii.affine, T, th["head_centre_ras_mm"], r)
                fp = regenerated_fraction(base_pred, base_aff, pred_now, lab_nii.affine, T, th["head_centre_ras_mm"], r)
                if ft is None:
                    continue
                out.append({"scan": it["scan"], "side": th["side"], "response": th["response"],
                            "regen_frac_true": ft, "regen_frac_pred": fp,
                            "regen_frac_true_continuous": th.get("regenerated_fraction"),
                            "regen_frac_error_pts": None if fp is None else 100 * abs(fp - ft)})
    return out


# ----------------------------------------------------------------------------- running


def cohort_rows(manifests: str | Path | Sequence[str | Path]) -> list[tuple[Path, dict]]:
    """(manifest, row) for every labelled scan with truth in one or several manifests."""
    ms = [manifests] if isinstance(manifests, (str, Path)) else list(manifests)
    if not ms:
        raise ValueError("no manifest given")
    if len({str(Path(m).resolve()) for m in ms}) < len(ms):
        raise ValueError(f"a manifest is listed twice: {[str(m) for m in ms]}")
    out = []
    for m in ms:
        m = Path(m)
        if not m.is_file():
            raise FileNotFoundError(f"manifest not found: {m}")
        rows = [r for r in read_manifest(m) if r.get("image") and r.get("labels") and r.get("truth")]
        if not rows:
            raise ValueError(f"no labelled scans with truth in {m}")
        out += [(m, r) for r in rows]
    return out


def manifest_tags(manifests: Sequence[Path]) -> dict[Path, str]:
    """Short unique name per manifest: its folder name, prefixed by its position if folder names repeat."""
    names = [m.parent.name for m in manifests]
    if len(set(names)) < len(names):
        names = [f"{i}_{n}" for i, n in enumerate(names)]
    return dict(zip(manifests, names))


def evaluate(manifest: str | Path | Sequence[str | Path], model_dir: str | Path, workers: int = 2, tta: bool = False,
             reference: str = "acetabulum", progress: bool = True, engine_kw: dict | None = None,
             pred_dir: str | Path | None = None) -> tuple[dict, list[dict], list[dict]]:
    """Run the model on every labelled scan of one or several manifests; returns (summary, scans, hips).

    ``engine_kw`` goes to ``Segmenter`` (e.g. ``window``, ``overlap``, ``lesion_threshold``). With
    ``pred_dir`` the predictions are saved there and the regenerated-fraction error is computed.
    ``workers <= 1`` runs in this process (``make_segmenter`` is called once).
    """
    pairs = cohort_rows(manifest)
    tags = manifest_tags(list(dict.fromkeys(m for m, _ in pairs)))
    multi = len(tags) > 1
    preds = []
    for m, r in pairs:
        stem = scan_name(r["image"])
        if multi:
            stem = f"{tags[m]}_{stem}"
        preds.append(None if pred_dir is None else str(output_paths(pred_dir, stem)["seg"]))
    jobs = [(str(m), r, reference, p) for (m, r), p in zip(pairs, preds)]
    initargs = (str(model_dir), max(1, 2 // max(1, workers)), tta, dict(engine_kw or {}))
    if workers <= 1:
        _init(*initargs)
        results = [evaluate_scan(j) for j in tqdm(jobs, desc="evaluate", disable=not progress)]
    else:
        done: dict[int, dict] = {}
        runs = map_jobs(partial(_evaluate_in_worker, initargs), jobs, Executor("local", workers))
        for i, result in tqdm(runs, total=len(jobs), desc="evaluate", disable=not progress):
            done[i] = result
        results = [done[i] for i in range(len(jobs))]
    scans = [r["scan"] for r in results]
    if multi:
        for (m, _), sc, res in zip(pairs, scans, results):
            sc["scan"] = f"{tags[m]}/{sc['scan']}"
            for h in res["hips"]:
                h["scan"] = sc["scan"]
    hips = [h for r in results for h in r["hips"]]
    regen = None
    if pred_dir is not None:
        regen = regenerated_errors([{"manifest": m, "row": r, "pred": p, "scan": sc["scan"]}
                                    for (m, r), p, sc in zip(pairs, preds, scans)])
        by_key = {(h["scan"], h["side"]): h for h in hips}
        for e in regen:
            if (e["scan"], e["side"]) in by_key:
                by_key[(e["scan"], e["side"])].update({k: v for k, v in e.items() if k.startswith("regen")})
    return summarise(scans, hips, regen), scans, hips


def evaluate_cohorts(cohorts: dict[str, str | Sequence[str]], model_dir: str | Path, out_dir: str | Path,
                     workers: int = 2, tta: bool = False, reference: str = "acetabulum",
                     engine_kw: dict | None = None, progress: bool = True,
                     on_cohort: Callable[[str, dict, list[dict], list[dict]], None] | None = None) -> dict[str, dict]:
    """Evaluate each named cohort (a manifest or a list of manifests); predictions go to ``out_dir/<name>/pred``."""
    for name, ms in cohorts.items():  # fail early, before any model run
        cohort_rows(ms)
        if not name or "/" in name:
            raise ValueError(f"bad cohort name: {name!r}")
    out: dict[str, dict] = {}
    for name, ms in cohorts.items():
        if progress:
            print(f"cohort {name}: {ms}", flush=True)
        s, scans, hips = evaluate(ms, model_dir, workers, tta, reference, progress, engine_kw,
                                  pred_dir=Path(out_dir) / name / "pred")
        s["manifests"] = [str(m) for m in ([ms] if isinstance(ms, (str, Path)) else ms)]
        out[name] = s
        if on_cohort:
            on_cohort(name, s, scans, hips)
    return out


# ---------------------------------------------------------------- onfh-eval


def named_cohorts(cohort: str | None, cohorts: Mapping[str, str | Sequence[str] | None]) -> dict[str, list[str]]:
    """Named cohorts to evaluate: ``cohort`` (one manifest, named "cohort") and the non-null entries of
    ``cohorts``."""
    out: dict[str, list[str]] = {}
    if cohort:
        out["cohort"] = [str(cohort)]
    for name, ms in (cohorts or {}).items():
        if not ms:
            continue
        ms = [ms] if isinstance(ms, str) else list(ms)
        if not all(isinstance(m, str) and m for m in ms):
            raise ValueError(f"cohorts.{name} must be a manifest path or a list of manifest paths")
        out[str(name)] = ms
    return out


def _write_cohort(out: Path, name: str, s: dict, scans: list[dict], hips: list[dict]) -> None:
    """``out/<name>/``: scans.csv, hips.csv and summary.json of one cohort."""
    d = out / name
    write_manifest(d / "scans.csv", scans, list(dict.fromkeys(k for x in scans for k in x)))
    write_manifest(d / "hips.csv", hips, list(dict.fromkeys(k for h in hips for k in h)))
    atomic_write_text(d / "summary.json", json.dumps(s, indent=1))


def eval_run(settings: EvalSettings, command_line: Sequence[str]) -> dict:
    """onfh-eval's work: every named cohort evaluated (with none, a held-out cohort generated from
    ``settings.generate``), ``out_dir/summary.json`` and per cohort ``out_dir/<cohort>/`` written; returns the
    summary (``cohorts``: name -> summary)."""
    out = Path(settings.out_dir)
    cohorts: dict[str, list[str]] = named_cohorts(settings.cohort, settings.cohorts)
    if not cohorts:
        gen = synth_config(settings.generate)
        manifest = out / "cohort" / "manifest.csv"
        if not manifest.exists():
            print(f"generating held-out cohort (seed {gen['seed']}, {gen['n_patients']} patients) ...", flush=True)
            generate_cohort(gen, manifest.parent)
        cohorts = {"heldout": [str(manifest)]}
    if not (Path(settings.model_dir) / "model.json").is_file():
        raise FileNotFoundError(f"no model.json in model_dir={settings.model_dir}")
    engine_kw = {"window": settings.window, "overlap": settings.overlap, "lesion_threshold": settings.lesion_threshold}
    summaries = evaluate_cohorts(cohorts, settings.model_dir, out, settings.workers, settings.tta, settings.reference,
                                 engine_kw=engine_kw, on_cohort=partial(_write_cohort, out))
    summary = {"model_version": model_version(settings.model_dir), "command": " ".join(command_line),
               "tta": settings.tta, "cohorts": summaries}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    return summary
