"""Head finding on a synthetic cohort: visible heads found, on the right side, by the coarse stage and by the search.

    .venv/bin/python scripts/eval_locator.py cache/dev_c/manifest.csv --model-dir models [--model-dir outputs/export_x]

A head is *visible* when the scan holds at least ``--visible-ml`` (5 mL) of its labels 1-3 (truth JSON,
``scan_label_volumes_ml``). A found head counts for the side whose true centre it is nearest to, within 30 mm.
Also reports false heads (found more than 30 mm from any true head), healthy hips with a false lesion over
0.5 mL and per found head its lesion volume (labels 2-3 within 35 mm; mL, with the true one), and the sum of
|found - true| over found heads with a true lesion over 0.5 mL (line ``LESION:``), and over the same heads
|found - the true lesion inside the scan's field of view| (line ``LESION IN VIEW:``; truth JSON
``scan_label_volumes_ml``: a head cut by the field of view holds only part of its lesion there). Prints one
table per model directory.

By default the engine alone is counted (``Segmenter.segment``: coarse stage, head search, fine stage), as the
shipping rules so far name it. ``--pipeline`` counts what onfh-infer reports: the engine, then the anatomy gate and
its second look (``infer.scan_steps``, onfh-infer's settings), so a head the gate refuses is missed and a head the
second look recovers is found.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from onfh_seg.config import infer_settings
from onfh_seg.hips import find_heads
from onfh_seg.infer.anatomy import limits_from_config
from onfh_seg.infer.engine import Segmenter
from onfh_seg.infer.inputs import load_scan
from onfh_seg.infer.scan_jobs import ScanJob
from onfh_seg.infer.scan_steps import measure_scan, second_look, segment_scan

MATCH_MM = 30.0


def truth_heads(truth: dict, visible_ml: float) -> dict[str, dict]:
    """Per side: world centre, visible head volume in the scan (mL), lesion volume (mL): the whole head's and
    the part of it inside the scan's field of view."""
    pose_centres: dict[str, dict] = {}
    for h in truth["hips"]:
        v = h["scan_label_volumes_ml"]
        pose_centres[h["side"]] = {"visible_ml": v["femoral_head"] + v["necrotic_zone"] + v["interface_band"],
                                   "lesion_ml": h["lesion_volume_ml"], "centre": np.asarray(h["head_centre_ras_mm"]),
                                   "lesion_in_view_ml": v["necrotic_zone"] + v["interface_band"]}
    return {s: {**d, "visible": d["visible_ml"] >= visible_ml} for s, d in pose_centres.items()}


def pipeline_labels(seg: Segmenter, image: Path) -> tuple[np.ndarray, dict]:
    """Labels as onfh-infer reports them (engine, anatomy gate, second look; nothing written) and the head search
    record."""
    settings = infer_settings(require=False)
    limits = limits_from_config(settings.anatomy)
    scan = load_scan(ScanJob(kind="nifti", path=image, name=image.name, image_ref=str(image)))
    meas: dict = {}
    labels, confidence, found = segment_scan(scan, seg, {}, meas)
    labels, hips, flags = measure_scan(scan, labels, confidence, settings, limits, meas)
    labels, *_ = second_look(scan, seg, settings, limits, meas, {}, found, (labels, hips, flags, confidence))
    return np.asarray(labels), meas.get("head_search", {})


def score_scan(seg: Segmenter, image: Path, truth: dict, visible_ml: float, pipeline: bool = False) -> dict:
    """Run the cascade (``pipeline``: as onfh-infer reports it) on one scan and match found heads to the true
    ones."""
    img = nib.load(str(image))
    if pipeline:
        labels, search = pipeline_labels(seg, image)
    else:
        res = seg.segment(np.asanyarray(img.dataobj).astype(np.float32), img.affine)
        labels, search = res.labels, res.search
    _, heads = find_heads(labels, img.affine, min_ml=1.0)
    true = truth_heads(truth, visible_ml)
    vox_ml = float(abs(np.linalg.det(img.affine[:3, :3]))) / 1000.0
    out = {"found": 0, "visible": sum(t["visible"] for t in true.values()), "false_heads": 0, "false_lesion": 0,
           "search_added": search.get("heads_added", 0), "missed": [], "lesion_ml": {}, "lesion_in_view_ml": {}}
    matched = set()
    for h in heads:
        d = {s: float(np.linalg.norm(h.centre_ras - t["centre"])) for s, t in true.items()}
        side = min(d, key=d.get)
        if d[side] > MATCH_MM:
            out["false_heads"] += 1
            continue
        matched.add(side)
        near = np.linalg.norm(np.argwhere(np.isin(labels, (2, 3))) @ img.affine[:3, :3].T + img.affine[:3, 3]
                              - h.centre_ras, axis=1) < 35.0 if np.isin(labels, (2, 3)).any() else np.zeros(0, bool)
        out["lesion_ml"][side] = (round(float(near.sum() * vox_ml), 3), true[side]["lesion_ml"])
        out["lesion_in_view_ml"][side] = true[side]["lesion_in_view_ml"]
        if true[side]["lesion_ml"] == 0 and near.sum() * vox_ml > 0.5:
            out["false_lesion"] += 1
    for s, t in true.items():
        if t["visible"]:
            if s in matched:
                out["found"] += 1
            else:
                out["missed"].append(s)
    return out


def lesion_error(lesion_ml: dict[str, tuple[float, float]], min_true_ml: float = 0.5) -> tuple[float, int]:
    """Sum of |found - true| lesion volume (mL) over found heads whose true lesion is over ``min_true_ml``, and
    their number."""
    errors = [abs(found - true) for found, true in lesion_ml.values() if true > min_true_ml]
    return float(sum(errors)), len(errors)


def lesion_in_view_error(lesion_ml: dict[str, tuple[float, float]], in_view: dict[str, float],
                         min_true_ml: float = 0.5) -> float:
    """Over the hips ``lesion_error`` counts (true lesion over ``min_true_ml``), the sum of |found - the true lesion
    inside the field of view| (mL); ``in_view``: per side, the true lesion in view."""
    return float(sum(abs(found - in_view[s]) for s, (found, true) in lesion_ml.items() if true > min_true_ml))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("manifest")
    ap.add_argument("--model-dir", action="append", default=None)
    ap.add_argument("--visible-ml", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-search", action="store_true", help="the coarse stage alone (the engine before the head search)")
    ap.add_argument("--tta", action="store_true", help="mirror the measured crops (onfh-infer's default since "
                    "2026-12-04); without it no mirroring, as the fine shipping rules' references were measured")
    ap.add_argument("--pipeline", action="store_true", help="count what onfh-infer reports: the anatomy gate and "
                    "its second look after the engine")
    a = ap.parse_args()
    root = Path(a.manifest).parent
    rows = [r for r in csv.DictReader(open(a.manifest)) if r.get("image")]
    for model_dir in a.model_dir or ["models"]:
        seg = Segmenter(model_dir, provider="cpu", threads=a.threads, tta=a.tta)
        if a.no_search:
            seg._search = lambda *args, **kwargs: 0  # noqa: E731  (measurement only)
        tot = {"found": 0, "visible": 0, "false_heads": 0, "false_lesion": 0, "search_added": 0}
        err_ml, err_n, view_ml = 0.0, 0, 0.0
        print(f"## {model_dir} ({seg.version}){' as onfh-infer reports (gate, second look)' if a.pipeline else ''}")
        for r in rows:
            s = score_scan(seg, root / r["image"], json.loads((root / r["truth"]).read_text()), a.visible_ml,
                           a.pipeline)
            for k in tot:
                tot[k] += s[k]
            e, n = lesion_error(s["lesion_ml"])
            err_ml, err_n = err_ml + e, err_n + n
            view_ml += lesion_in_view_error(s["lesion_ml"], s["lesion_in_view_ml"])
            name = Path(r["image"]).name.replace(".nii.gz", "")
            print(f"{name}: found {s['found']}/{s['visible']} visible, missed {s['missed'] or '-'}, "
                  f"by search {s['search_added']}, false heads {s['false_heads']}, false lesions {s['false_lesion']}, "
                  f"lesion mL found/true {' '.join(f'{k} {v[0]}/{v[1]}' for k, v in sorted(s['lesion_ml'].items())) or '-'}")
        print(f"TOTAL: visible heads found {tot['found']}/{tot['visible']}, added by the search {tot['search_added']}, "
              f"false heads {tot['false_heads']}, healthy hips with a false lesion > 0.5 mL {tot['false_lesion']}")
        print(f"LESION: |found - true| summed over {err_n} found hips with a true lesion > 0.5 mL: {err_ml:.2f} mL")
        print(f"LESION IN VIEW: the same hips, |found - true lesion inside the field of view|: {view_ml:.2f} mL")


if __name__ == "__main__":
    main()
