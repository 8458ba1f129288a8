"""Held-out evaluation of the shipped cascade on a synthetic cohort with shifted acquisition.

Per scan: Dice and 95% Hausdorff distance per label, lesion (2+3) Dice. Per hip:
lesion volume error, SIR error against the SIR computed from the true labels on
the same image, ARCO extent class agreement, false necrotic components on
healthy hips. All numbers come from running the ONNX models on the cohort.
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from onfh_seg import labels as L
from onfh_seg.infer.postprocess import ball_mask, voxel_volume_ml
from onfh_seg.io.manifest import read_manifest, resolve
from onfh_seg.measure import arco_extent, measure_scan

TARGETS = {
    "dice_femoral_head": 0.95, "dice_necrotic_zone": 0.90, "dice_interface_band": 0.70, "dice_acetabulum": 0.90,
    "dice_lesion": 0.90, "median_abs_lesion_volume_error_pct": 5.0, "healthy_hips_with_false_necrosis_gt_0_5ml": 0,
    "median_abs_sir_error": 0.05, "arco_agreement_pct": 90.0,
}


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


def _init(model_dir: str, threads: int, tta: bool, engine_kw: dict) -> None:
    global _SEG
    from onfh_seg.infer.engine import Segmenter

    _SEG = Segmenter(model_dir, provider="cpu", threads=threads, tta=tta, **engine_kw)


def evaluate_scan(args: tuple[str, dict, str]) -> dict:
    """Segment one scan and compare with its truth."""
    manifest, row, reference = args
    img_nii = nib.load(str(resolve(manifest, row["image"])))
    image = np.asarray(img_nii.dataobj, np.float32)
    truth_lab = np.asarray(nib.load(str(resolve(manifest, row["labels"]))).dataobj).astype(np.uint8)
    truth = json.loads(resolve(manifest, row["truth"]).read_text())
    res = _SEG.segment(image, img_nii.affine)
    pred = res.labels
    spacing = np.linalg.norm(img_nii.affine[:3, :3], axis=0)
    vml = voxel_volume_ml(img_nii.affine)
    scan = {"scan": Path(row["image"]).name, "orientation": truth["acquisition"]["orientation"],
            "slice_mm": truth["acquisition"]["slice_thickness_mm"], "snr": truth["acquisition"]["snr"],
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
        if side not in m_true:
            continue  # head not (fully) in this field of view
        mt, mp = m_true[side], m_pred.get(side)
        hip = {"scan": scan["scan"], "side": side, "stage": th["stage"], "found": mp is not None,
               "true_lesion_ml": mt["lesion_volume_ml"], "true_lesion_ml_continuous": th["lesion_volume_ml"],
               "pred_lesion_ml": mp["lesion_volume_ml"] if mp else 0.0,
               "true_extent_pct": th["extent_percent"], "pred_extent_pct": mp["percent_head_involved"] if mp else 0.0,
               "true_arco": arco_extent(th["extent_percent"], th["lesion_volume_ml"] > 0),
               "pred_arco": mp["arco_extent"] if mp else "none",
               "true_sir": mt["sir_necrotic"], "pred_sir": mp["sir_necrotic"] if mp else None}
        if th["stage"] == "0":
            ball = ball_mask(pred.shape, img_nii.affine, np.array(th["head_centre_ras_mm"]), 2.5 * th["head_radius_mm"])
            hip["false_lesion_ml"] = false_lesion_components_ml(pred, ball, vml)
        hips.append(hip)
    return {"scan": scan, "hips": hips}


def summarise(scans: list[dict], hips: list[dict]) -> dict:
    """Cohort summary with the issue's targets."""
    s: dict = {"n_scans": len(scans), "n_hips": len(hips)}
    for c in list(L.LABELS.values())[1:] + ["lesion"]:
        v = np.array([x[f"dice_{c}"] for x in scans], float)
        s[f"dice_{c}"] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
        if c != "lesion":
            h = np.array([x[f"hd95_{c}"] for x in scans], float)
            s[f"hd95_median_mm_{c}"] = float(np.nanmedian(h)) if np.isfinite(h).any() else float("nan")
    dis = [h for h in hips if h["stage"] != "0" and h["true_lesion_ml"] > 0]
    err = [100 * abs(h["pred_lesion_ml"] - h["true_lesion_ml"]) / h["true_lesion_ml"] for h in dis]
    err_c = [100 * abs(h["pred_lesion_ml"] - h["true_lesion_ml_continuous"]) / h["true_lesion_ml_continuous"] for h in dis]
    s["median_abs_lesion_volume_error_pct"] = float(np.median(err)) if err else float("nan")
    s["median_abs_lesion_volume_error_vs_continuous_pct"] = float(np.median(err_c)) if err_c else float("nan")
    sir = [abs(h["pred_sir"] - h["true_sir"]) for h in dis if h["pred_sir"] is not None and h["true_sir"] is not None]
    s["median_abs_sir_error"] = float(np.median(sir)) if sir else float("nan")
    s["n_sir_pairs"] = len(sir)
    agree = [h["pred_arco"] == h["true_arco"] for h in hips]
    s["arco_agreement_pct"] = float(100 * np.mean(agree)) if agree else float("nan")
    healthy = [h for h in hips if h["stage"] == "0"]
    s["n_healthy_hips"] = len(healthy)
    s["healthy_hips_with_false_necrosis_gt_0_5ml"] = int(sum(h.get("false_lesion_ml", 0) > 0.5 for h in healthy))
    s["hips_found_pct"] = float(100 * np.mean([h["found"] for h in hips])) if hips else float("nan")
    return s


def evaluate(manifest: str | Path, model_dir: str | Path, workers: int = 2, tta: bool = False,
             reference: str = "acetabulum", progress: bool = True,
             engine_kw: dict | None = None) -> tuple[dict, list[dict], list[dict]]:
    """Run the model on every labelled scan of ``manifest``; returns (summary, scans, hips).

    ``engine_kw`` goes to ``Segmenter`` (e.g. ``window``, ``overlap``, ``lesion_threshold``)."""
    from tqdm import tqdm

    rows = [r for r in read_manifest(manifest) if r.get("image") and r.get("labels") and r.get("truth")]
    if not rows:
        raise ValueError(f"no labelled scans with truth in {manifest}")
    threads = max(1, 2 // max(1, workers))
    jobs = [(str(manifest), r, reference) for r in rows]
    with ProcessPoolExecutor(workers, initializer=_init, initargs=(str(model_dir), threads, tta, dict(engine_kw or {}))) as pool:
        results = list(tqdm(pool.map(evaluate_scan, jobs), total=len(jobs), desc="evaluate", disable=not progress))
    scans = [r["scan"] for r in results]
    hips = [h for r in results for h in r["hips"]]
    return summarise(scans, hips), scans, hips


def format_summary(s: dict) -> str:
    """Human-readable table with targets."""
    lines = [f"{'metric':50s} {'value':>10s} {'target':>10s}"]
    for k, v in s.items():
        t = TARGETS.get(k)
        tv = "" if t is None else (f">= {t}" if k.startswith("dice") or k == "arco_agreement_pct" else f"<= {t}")
        val = f"{v:.4f}" if isinstance(v, float) else str(v)
        lines.append(f"{k:50s} {val:>10s} {tv:>10s}")
    return "\n".join(lines)
