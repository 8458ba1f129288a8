#!/usr/bin/env python
"""Evaluate onfh-track on a held-out synthetic cohort (registration TRE, regenerated fraction, SIR change).

Usage (from the repository root):

    .venv/bin/python scripts/eval_tracking.py --out /tmp/eval_tracking --n-patients 6 --seed 9100 --months 0 3 12

    # also from onfh-infer outputs of the shipped model (runs onfh-infer on the cohort first):
    .venv/bin/python scripts/eval_tracking.py --out /tmp/eval_tracking --model-dir models
    # or from onfh-infer outputs that already exist:
    .venv/bin/python scripts/eval_tracking.py --out /tmp/eval_tracking --infer-dir /tmp/eval_tracking/infer_model

What it does:

1. Generates a cohort with ``onfh-synth`` settings (configs/synth.yaml) and a
   seed that differs from training cohorts, unless ``--out/cohort`` exists.
2. "truth" arm: onfh-infer outputs emulated from the truth labels
   (``tests/truth_infer.write_truth_infer_outputs``), so only tracking is measured.
   "model" arm (with ``--model-dir`` or ``--infer-dir``): the real onfh-infer
   outputs.
3. Tracks every patient (``track_patient``, registration per hip) and, as the
   reference, the same segmentation of the truth arm with the generator's true
   transforms.
4. Reports per follow-up and hip, and summarised (median, max):
   * TRE (mm): |estimated(p) - true(p)| for p = truth head centre, dome point
     and lesion centroid (from the truth labels) of that hip in the follow-up;
   * regenerated-fraction error (percentage points) against the generator's
     ``regenerated_fraction`` (truth JSON);
   * SIR-change error against the SIR change computed from the truth labels
     with the true transform (same definition: baseline lesion zone);
   * head height loss vs the generator's collapse change (information only).
   Requirements: median TRE <= 1 mm, |regenerated fraction error| <= 5 points,
   |SIR change error| <= 0.05 (checked on the max). Exit code 1 if one fails.

A summary is written to ``--out/eval_tracking.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from onfh_seg.geometry import mask_centroid_ras  # noqa: E402
from onfh_seg.io.manifest import read_manifest, resolve  # noqa: E402
from onfh_seg.io.files import atomic_write_text
from onfh_seg.io.nifti import load_nifti
from onfh_seg.labels import LESION_LABELS  # noqa: E402
from onfh_seg.geometry import apply  # noqa: E402
from onfh_seg.track.inputs import collect_patients  # noqa: E402
from onfh_seg.track.params import TrackParams  # noqa: E402
from onfh_seg.track.patient import track_patient  # noqa: E402
from onfh_seg.track.register import RegistrationParams, target_registration_error  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
from truth_infer import write_truth_infer_outputs  # noqa: E402  (the test stand-in for onfh-infer)


def synth_config(seed: int, n: int, months: list[float], max_matrix: int | None) -> dict:
    from omegaconf import OmegaConf

    base = OmegaConf.load(ROOT / "configs" / "synth.yaml")
    base.pop("defaults", None)
    base.pop("hydra", None)
    over: dict = {"seed": seed, "n_patients": n, "months": months}
    if max_matrix:
        over["acquisition"] = {"max_matrix": max_matrix}
    return OmegaConf.to_container(OmegaConf.merge(base, over), resolve=True)


def track_config() -> tuple[TrackParams, RegistrationParams]:
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "track.yaml"))
    return TrackParams.from_dict(cfg), RegistrationParams.from_dict(cfg["registration"])


def truth_lesion_centroids(manifest: Path, row: dict, centres: list[np.ndarray]) -> list[np.ndarray | None]:
    """Centroid of the truth lesion (2+3) nearest each truth head centre, in the scan's world."""
    img = load_nifti(resolve(manifest, row["labels"]))
    lab = np.asarray(img.dataobj)
    idx = np.argwhere(np.isin(lab, LESION_LABELS))
    if idx.size == 0:
        return [None] * len(centres)
    xyz = idx @ img.affine[:3, :3].T + img.affine[:3, 3]
    d = np.stack([np.linalg.norm(xyz - c, axis=1) for c in centres], axis=1)
    near = np.argmin(d, axis=1)
    out = []
    for i in range(len(centres)):
        sel = (near == i) & (d[:, i] < 40.0)
        out.append(xyz[sel].mean(axis=0) if sel.sum() > 20 else None)
    return out


def evaluate_arm(name: str, manifest: Path, infer_dir: Path, out: Path, ref_records: dict | None,
                 params: TrackParams, reg: RegistrationParams) -> tuple[dict, list[dict]]:
    """Track every patient from ``infer_dir``; compare with truth. Returns (records, rows)."""
    patients, _ = collect_patients(manifest, infer_dir)
    rows_by_name = {Path(r["image"]).name: r for r in read_manifest(manifest) if r.get("image")}
    records, rows = {}, []
    for pid, p in patients.items():
        t0 = time.time()
        truth = {s.timepoint: json.loads(resolve(manifest, rows_by_name[s.image.name]["truth"]).read_text())
                 for s in p.scans}
        true_T = {tp: np.array(t["transform_to_baseline"]) for tp, t in truth.items()}
        try:
            rec = track_patient(p, out / name, params, reg)
        except ValueError as exc:
            print(f"  {name} {pid}: not tracked: {exc}")
            continue
        records[pid] = rec
        for hip in rec["hips"]:
            c0 = np.array(hip["baseline_head_centre_ras_mm"])
            base_t = truth[hip["timepoints"][0]["timepoint"]]
            base_truth_hip = min(base_t["hips"], key=lambda h: np.linalg.norm(np.subtract(h["head_centre_ras_mm"], c0)))
            for tp in hip["timepoints"][1:]:
                t = tp["timepoint"]
                T = true_T[t]
                centre_fu = apply(np.linalg.inv(T), c0)
                centres = [np.array(h["head_centre_ras_mm"]) for h in truth[t]["hips"]]
                k = int(np.argmin([np.linalg.norm(c - centre_fu) for c in centres]))
                th = truth[t]["hips"][k]
                row = {"arm": name, "patient_id": pid, "hip": hip["hip"], "timepoint": t,
                       "truth_side": th["side"], "response": th.get("response")}
                if tp.get("transform"):
                    est = np.array(json.loads((out / name / tp["transform"]).read_text())["matrix_ras"])
                    pts = {"head_centre": np.array(th["head_centre_ras_mm"])}
                    if th.get("dome_point_ras_mm"):
                        pts["dome_point"] = np.array(th["dome_point_ras_mm"])
                    lc = truth_lesion_centroids(manifest, rows_by_name[[s for s in p.scans if s.timepoint == t][0].image.name],
                                                centres)[k]
                    if lc is not None:
                        pts["lesion_centroid"] = lc
                    tre = target_registration_error(est, T, np.array(list(pts.values())))
                    row.update({f"tre_{n}_mm": float(e) for n, e in zip(pts, tre)})
                if tp.get("regenerated_pct") is not None and base_truth_hip.get("lesion_volume_ml"):
                    row["regen_est"] = tp["regenerated_pct"]  # % (onfh-track)
                    row["regen_truth"] = 100.0 * th["regenerated_fraction"]  # truth JSON: fraction 0-1
                    row["regen_err_pp"] = row["regen_est"] - row["regen_truth"]
                if ref_records is not None and pid in ref_records and tp.get("sir_change") is not None:
                    ref_hip = min(ref_records[pid]["hips"], key=lambda h: np.linalg.norm(
                        np.subtract(h["baseline_head_centre_ras_mm"], c0)))
                    ref_tp = next((x for x in ref_hip["timepoints"] if x["timepoint"] == t), None)
                    if ref_tp and ref_tp.get("sir_change") is not None:
                        row["sir_change_est"] = tp["sir_change"]
                        row["sir_change_ref"] = ref_tp["sir_change"]
                        row["sir_change_err"] = tp["sir_change"] - ref_tp["sir_change"]
                if tp.get("head_height_loss_mm") is not None:
                    row["collapse_est_mm"] = tp["head_height_loss_mm"]
                    row["collapse_truth_mm"] = th["collapse_mm"] - base_truth_hip["collapse_mm"]
                rows.append(row)
        print(f"  {name} {pid}: {len(rec['hips'])} hip(s), {len(p.scans)} scans, {time.time() - t0:.1f} s")
    return records, rows


def reference_records(manifest: Path, infer_dir: Path, out: Path, params: TrackParams) -> dict:
    """Truth labels + true transforms: the reference for SIR change."""
    patients, _ = collect_patients(manifest, infer_dir)
    rows_by_name = {Path(r["image"]).name: r for r in read_manifest(manifest) if r.get("image")}
    recs = {}
    for pid, p in patients.items():
        T = {s.timepoint: np.array(json.loads(resolve(manifest, rows_by_name[s.image.name]["truth"]).read_text())
                                   ["transform_to_baseline"]) for s in p.scans}
        recs[pid] = track_patient(p, out / "reference", params, fixed_transforms=T, write_transforms=False)
    return recs


def summarise(rows: list[dict]) -> dict:
    def stat(key, absolute=True):
        v = np.array([r[key] for r in rows if key in r], float)
        if absolute:
            v = np.abs(v)
        return {"n": int(v.size), "median": float(np.median(v)) if v.size else None,
                "max": float(v.max()) if v.size else None}

    tre_all = [r[k] for r in rows for k in r if k.startswith("tre_")]
    t = np.array(tre_all, float)
    return {
        "tre_mm": {"n": int(t.size), "median": float(np.median(t)) if t.size else None,
                   "max": float(t.max()) if t.size else None},
        "tre_head_centre_mm": stat("tre_head_centre_mm"),
        "tre_dome_point_mm": stat("tre_dome_point_mm"),
        "tre_lesion_centroid_mm": stat("tre_lesion_centroid_mm"),
        "regenerated_fraction_error_pp": stat("regen_err_pp"),
        "sir_change_error": stat("sir_change_err"),
        "collapse_error_mm": {"n": sum("collapse_est_mm" in r for r in rows),
                              "median": float(np.median([abs(r["collapse_est_mm"] - r["collapse_truth_mm"])
                                                         for r in rows if "collapse_est_mm" in r] or [np.nan]))},
    }


def print_rows(rows: list[dict]) -> None:
    print(f"{'arm':6} {'pid':5} {'hip':7} {'tp':4} {'resp':10} {'TRE c/d/l mm':>18} {'regen est/truth':>16} "
          f"{'SIRchg est/ref':>15} {'coll est/true':>14}")
    for r in rows:
        tre = "/".join(f"{r[k]:.2f}" for k in ("tre_head_centre_mm", "tre_dome_point_mm", "tre_lesion_centroid_mm")
                       if k in r)
        reg = f"{r['regen_est']:.1f}/{r['regen_truth']:.1f}%" if "regen_est" in r else "-"
        sir = f"{r['sir_change_est']:+.3f}/{r['sir_change_ref']:+.3f}" if "sir_change_est" in r else "-"
        col = f"{r['collapse_est_mm']:+.1f}/{r['collapse_truth_mm']:+.1f}" if "collapse_est_mm" in r else "-"
        print(f"{r['arm']:6} {r['patient_id']:5} {r['hip']:7} {r['timepoint']:4} {str(r['response']):10} {tre:>18} "
              f"{reg:>16} {sir:>15} {col:>14}")


def check(summary: dict) -> list[str]:
    fails = []
    if summary["tre_mm"]["median"] is None or summary["tre_mm"]["median"] > 1.0:
        fails.append(f"median TRE {summary['tre_mm']['median']} mm > 1 mm")
    r = summary["regenerated_fraction_error_pp"]
    if r["max"] is not None and r["max"] > 5.0:
        fails.append(f"regenerated fraction error up to {r['max']:.2f} points > 5")
    s = summary["sir_change_error"]
    if s["max"] is not None and s["max"] > 0.05:
        fails.append(f"SIR change error up to {s['max']:.3f} > 0.05")
    return fails


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="work folder (cohort, onfh-infer outputs, tracking)")
    ap.add_argument("--n-patients", type=int, default=6)
    ap.add_argument("--seed", type=int, default=9100, help="cohort seed (use one not used for training)")
    ap.add_argument("--months", type=float, nargs="+", default=[0, 3, 12])
    ap.add_argument("--max-matrix", type=int, default=None, help="acquisition.max_matrix (default: synth.yaml)")
    ap.add_argument("--model-dir", type=Path, default=None, help="run onfh-infer with this model folder")
    ap.add_argument("--infer-dir", type=Path, default=None, help="existing onfh-infer outputs for the cohort")
    ap.add_argument("--workers", type=int, default=1, help="onfh-synth / onfh-infer workers")
    args = ap.parse_args(argv)

    out: Path = args.out
    cohort = out / "cohort"
    manifest = cohort / "manifest.csv"
    if not manifest.is_file():
        from onfh_seg.synth.cohort import generate_cohort

        t0 = time.time()
        cfg = synth_config(args.seed, args.n_patients, args.months, args.max_matrix)
        cfg["workers"] = args.workers
        generate_cohort(cfg, cohort)
        print(f"generated {args.n_patients} patients (seed {args.seed}) in {time.time() - t0:.0f} s: {manifest}")
    else:
        print(f"using existing cohort {manifest}")
    params, reg = track_config()

    truth_infer = out / "infer_truth"
    if not truth_infer.is_dir():
        write_truth_infer_outputs(manifest, truth_infer)
    for sub in ("truth", "model", "reference"):
        shutil.rmtree(out / sub, ignore_errors=True)
    ref = reference_records(manifest, truth_infer, out, params)
    records, rows = evaluate_arm("truth", manifest, truth_infer, out, ref, params, reg)
    arms = {"truth": rows}

    model_infer = args.infer_dir
    if model_infer is None and args.model_dir is not None:
        exe = Path(sys.executable).parent / "onfh-infer"
        if not exe.is_file():
            print("onfh-infer is not installed; skipping the model arm")
        else:
            model_infer = out / "infer_model"
            cmd = [str(exe), f"input={manifest}", f"out_dir={model_infer}", f"model_dir={args.model_dir}",
                   f"workers={args.workers}"]
            print("running:", " ".join(cmd))
            subprocess.run(cmd, check=False)
    if model_infer is not None and Path(model_infer).is_dir():
        _, mrows = evaluate_arm("model", manifest, Path(model_infer), out, ref, params, reg)
        arms["model"] = mrows

    print()
    print_rows([r for rows_ in arms.values() for r in rows_])
    result = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
              "cohort": str(manifest), "seed": args.seed, "n_patients": args.n_patients, "months": args.months,
              "arms": {}}
    rc = 0
    for name, rows_ in arms.items():
        s = summarise(rows_)
        fails = check(s)
        result["arms"][name] = {"summary": s, "failures": fails, "rows": rows_}
        print(f"\n[{name}] TRE median {s['tre_mm']['median']:.3f} mm, max {s['tre_mm']['max']:.3f} mm "
              f"(n={s['tre_mm']['n']}; head centre median {s['tre_head_centre_mm']['median']:.3f}, "
              f"lesion centroid median {s['tre_lesion_centroid_mm']['median'] or float('nan'):.3f})")
        r, c = s["regenerated_fraction_error_pp"], s["sir_change_error"]
        if r["n"]:
            print(f"[{name}] regenerated fraction |error|: median {r['median']:.2f}, max {r['max']:.2f} points (n={r['n']})")
        if c["n"]:
            print(f"[{name}] SIR change |error|: median {c['median']:.4f}, max {c['max']:.4f} (n={c['n']})")
        print(f"[{name}] head height loss |error| vs generator collapse change: median "
              f"{s['collapse_error_mm']['median']:.2f} mm (information only)")
        print(f"[{name}] requirements: {'PASS' if not fails else 'FAIL: ' + '; '.join(fails)}")
        if fails and name == "truth":
            rc = 1
    atomic_write_text(out / "eval_tracking.json", json.dumps(result, indent=1, default=float) + "\n")
    print(f"\nwrote {out / 'eval_tracking.json'}")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
