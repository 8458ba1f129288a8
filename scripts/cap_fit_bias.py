"""The anatomy gate's sphere fit on TRUE labels: fitted / true head radius, heads cut by the field of view apart.

    .venv/bin/python scripts/cap_fit_bias.py cache/dev_c8 cache/dev_c9 [...] [--below 0.9]

For every scan of each synthetic cohort folder (``labels/<scan>.nii.gz`` and ``truth/<scan>.json``) runs
``anatomy.check_anatomy`` on the true label map and matches each head component to the nearest true head. Prints the
partial heads (cut by the field of view) fitted below ``--below`` x their true radius and any head the gate fails,
then the ratio's minimum, 5th percentile and median for partial and whole heads. It shows how far the gate's
radius limit sits from what the fit gives on perfect labels. Development data only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from onfh_seg.infer.anatomy import check_anatomy


def cohort_rows(folder: Path) -> list[dict]:
    """One row per head component of the true label maps of a cohort folder."""
    rows = []
    for lp in sorted((folder / "labels").glob("*.nii.gz")):
        scan = lp.name[: -len(".nii.gz")]
        tp = folder / "truth" / f"{scan}.json"
        if not tp.exists():
            continue
        truth = json.loads(tp.read_text())
        img = nib.load(lp)
        for h in check_anatomy(np.asarray(img.dataobj).astype(np.uint8), img.affine).heads:
            c = np.asarray(h.component_centre_ras_mm)
            near = min(truth["hips"], key=lambda t: float(np.linalg.norm(np.asarray(t["head_centre_ras_mm"]) - c)))
            rows.append({"cohort": folder.name, "scan": scan, "side": near["side"], "partial": h.partial,
                         "ml": h.volume_ml, "fit_mm": h.radius_fit_mm, "true_mm": float(near["head_radius_mm"]),
                         "ratio": h.radius_fit_mm / float(near["head_radius_mm"]), "rel_rms": h.rel_rms,
                         "failures": h.failures})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cohorts", nargs="+", type=Path)
    ap.add_argument("--below", type=float, default=0.9)
    args = ap.parse_args()
    rows = [r for c in args.cohorts for r in cohort_rows(c)]
    if not rows:
        print("error: no labelled scan found", file=sys.stderr)
        return 2
    for r in rows:
        if (r["partial"] and r["ratio"] < args.below) or r["failures"]:
            print(f"{r['cohort']} {r['scan']} {r['side']}: {'partial' if r['partial'] else 'whole'} {r['ml']:.1f} mL, "
                  f"fit {r['fit_mm']:.1f} mm / true {r['true_mm']:.1f} mm = {r['ratio']:.2f}, RMS {r['rel_rms']:.3f} "
                  f"x radius {r['failures'] or ''}")
    for kind in (True, False):
        q = np.array([r["ratio"] for r in rows if r["partial"] == kind])
        if len(q):
            print(f"{'partial' if kind else 'whole'} heads {len(q)}: fitted / true radius min {q.min():.2f}, "
                  f"5th percentile {np.percentile(q, 5):.2f}, median {np.median(q):.2f}; smallest fit "
                  f"{min(r['fit_mm'] for r in rows if r['partial'] == kind):.1f} mm")
    return 0


if __name__ == "__main__":
    sys.exit(main())
