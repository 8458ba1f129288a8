"""How stable is the fine network's lesion call on a head? One plain pass at the crop centre the cascade measured,
the same crop shifted by 3 mm along each axis (6 passes), and the crop's left-right mirrored pass.

    .venv/bin/python scripts/lesion_stability.py [--models models] [--shift-mm 3] INPUT [INPUT ...]

INPUT: a NIfTI file, or an onfh-synth manifest.csv (its truth JSON gives each found head's true lesion volume:
the nearest true head centre within 30 mm). For every head the cascade finds (``Segmenter.segment``, default
settings) one line: head centre (RAS mm), true lesion volume (synthetic only), then the lesion (labels 2+3)
volume in mL on the 1.1 mm crop grid, after the crop clean-up and model.json's lesion threshold, as the
cascade decides it: at the centre; min / median / max over the 6 shifted crops; the mirrored pass alone; and
the average of the plain and mirrored passes (the engine's ``tta``). A diagnostic (issue 22 item 4, why healthy
real heads get lesions): it changes nothing, and writes nothing.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from onfh_seg.geometry import crop_grid
from onfh_seg.infer.engine import Segmenter
from onfh_seg.infer.windows import keep_main_components, lesion_decision, sliding_window
from onfh_seg.preprocess import normalise


def inputs(paths: list[str]) -> list[tuple[str, Path, list[dict]]]:
    """(name, image path, true hips) for each NIfTI or each row of a manifest."""
    out = []
    for p in map(Path, paths):
        if p.suffix == ".csv":
            for row in csv.DictReader(p.open()):
                truth = json.loads((p.parent / row["truth"]).read_text())["hips"] if row.get("truth") else []
                out.append((f"{row['patient_id']}_{row['timepoint']}", p.parent / row["image"], truth))
        else:
            out.append((p.name.split(".")[0], p, []))
    return out


def lesion_ml(seg: Segmenter, probs: np.ndarray) -> float:
    """Lesion volume (mL, crop grid) of crop probabilities, after the crop clean-up and the lesion threshold."""
    probs, _ = keep_main_components(probs)
    lab = lesion_decision(probs, seg.lesion_threshold)
    return float(np.isin(lab, (2, 3)).sum()) * float(seg.meta["fine"]["spacing_mm"]) ** 3 / 1000.0


def crop_probs(seg: Segmenter, x: np.ndarray, affine: np.ndarray, centre: np.ndarray,
               mirrored: bool = False) -> np.ndarray:
    """The fine network's probabilities on the crop around ``centre`` (``mirrored``: of the left-right mirrored crop,
    mirrored back)."""
    f = seg.meta["fine"]
    f_aff, f_shape = crop_grid(centre, int(f["crop_vox"]), f["spacing_mm"])
    xf = seg._crop_image(x, affine, f_aff, f_shape)

    def run(a: np.ndarray) -> np.ndarray:
        if not mirrored:
            return seg.fine.run(None, {"image": a})[0]
        return seg.fine.run(None, {"image": np.ascontiguousarray(a[:, :, ::-1])})[0][:, :, ::-1]

    return sliding_window(run, xf, seg.window_vox, seg.overlap, f["divisor"])


def true_lesion(truth: list[dict], centre: np.ndarray) -> str:
    """The nearest true hip's lesion volume (mL) within 30 mm, else '-'."""
    near = [(np.linalg.norm(np.asarray(h["head_centre_ras_mm"]) - centre), h) for h in truth]
    near = [(d, h) for d, h in near if d < 30.0]
    return f"{min(near, key=lambda t: t[0])[1]['lesion_volume_ml']:.2f}" if near else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("--models", default="models")
    ap.add_argument("--shift-mm", type=float, default=3.0)
    args = ap.parse_args()
    seg = Segmenter(args.models, provider="cpu", threads=1)
    s = args.shift_mm
    shifts = [np.array(v, float) for v in ((s, 0, 0), (-s, 0, 0), (0, s, 0), (0, -s, 0), (0, 0, s), (0, 0, -s))]
    print("scan | head centre RAS mm | true | centre | shifted min/median/max | mirrored | average")
    for name, path, truth in inputs(args.inputs):
        img = nib.load(str(path))
        raw = np.asarray(img.dataobj, np.float32)
        x = normalise(raw)
        for c in seg.segment(raw, img.affine).head_centres_ras:
            c = np.asarray(c, float)
            moved = [lesion_ml(seg, crop_probs(seg, x, img.affine, c + d)) for d in shifts]
            plain, flipped = crop_probs(seg, x, img.affine, c), crop_probs(seg, x, img.affine, c, mirrored=True)
            print(f"{name} | {np.round(c, 1).tolist()} | {true_lesion(truth, c)} | {lesion_ml(seg, plain):.2f} | "
                  f"{min(moved):.2f}/{float(np.median(moved)):.2f}/{max(moved):.2f} | {lesion_ml(seg, flipped):.2f} | "
                  f"{lesion_ml(seg, 0.5 * (plain + flipped)):.2f}", flush=True)

if __name__ == "__main__":
    main()
