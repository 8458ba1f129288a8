"""The known failure modes, each as its own slice of the fine validation crops (training styles only).

    .venv/bin/python scripts/val_failure_modes.py models/fine.ckpt outputs/train/fine_gre/run1/checkpoints/best.ckpt

Each validation crop (the fine_dr2 validation patients, seed 2112, tissue maps) is rendered twice with a
seeded contrast drawn from the T1 prior: once as a spin-echo-like T1 and once as a 3D gradient echo near
opposed phase (``synth.randomise.chemical_shift``: fatty marrow dark, dark lines at fat-water borders, the
joint's dark-bright-dark lines), and a third time as T1 with heterogeneous healthy marrow
(``synth.contrast.marrow_mottle``, red-marrow islands and trabecular streaks as real heads show; the fine_mottle
training draws it too, so for a network trained on it this rendering is in its training style), and a fourth time
as T1 with a physeal scar across the head's base (``synth.contrast.physeal_scar``, the closed growth plate: the
classic mimic of the double-line sign; fine_scar trains on it).

Crops come from the fine_dr2 validation patients (seed 2112) and 6 more validation patients with small
lesions (seed 2121, extent 3-12%; until 2026-12-04 seed 2113, which fine_healthy's training cohort and its
successors also use, so earlier small-lesion numbers are not comparable). Crops are grouped by what they hold:

* ``healthy``: no lesion: a false lesion (labels 2+3) over 0.5 mL is counted; those with a subchondral cyst (head,
  not lesion: a known mimic) are also counted apart as ``healthy cyst``;
* ``small``: lesion under 3.5 mL;
* ``bright core``: most of the necrotic core fat- or blood-like (Mitchell A/B);
* ``wide band``: the band is over 35% of the lesion;
* ``other``: the remaining lesions.

For each group and rendering: lesion (2+3) Dice and lesion volume error (median), false lesions on healthy
heads. No mirroring, as onfh-infer runs by default (``--tta``: mirrored and averaged, the engine's ``tta=true``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from onfh_seg.model.data import dr_normalise, extract_patch, load_dr_items
from onfh_seg.model.module import SegModule
from onfh_seg.synth.cohort import synth_config
from onfh_seg.synth.contrast import marrow_mottle, physeal_scar
from onfh_seg.synth.phantom import TISSUES
from onfh_seg.synth.randomise import build_dr_cohort, chemical_shift, random_contrast, render_random

VOX_ML = 1.1**3 / 1000.0
PATCH = (96, 96, 96)


def group(tissue: np.ndarray, labels: np.ndarray) -> str:
    """The failure-mode group of one crop from its truth."""
    lesion = np.isin(labels, (2, 3))
    if lesion.sum() * VOX_ML < 0.05:
        return "healthy"
    if lesion.sum() * VOX_ML < 3.5:
        return "small"
    core = labels == 2
    bright = np.isin(tissue, (TISSUES["core_fat"], TISSUES["core_blood"]))
    if core.any() and (bright & core).sum() > 0.5 * core.sum():
        return "bright core"
    if (labels == 3).sum() > 0.35 * lesion.sum():
        return "wide band"
    return "other"


def healthy_cyst(group_name: str, tissue: np.ndarray) -> bool:
    """A healthy crop holding a subchondral cyst (head, not lesion: a known mimic, also counted apart)."""
    return group_name == "healthy" and bool((tissue == TISSUES["cyst"]).any())


def small_lesion_items(out: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """Tissue crops of 6 validation patients (seed 2121, not a training seed) whose lesions are small
    (ONFH extent 3-12% of the head), rendered once into ``out``; only the diseased hips are kept."""
    cfg = synth_config({"seed": 2121, "n_patients": 6, "months": [0], "disease": {"extent": [0.03, 0.12]}})
    cfg["shapes"] = True
    items = load_dr_items(build_dr_cohort(cfg, out, "fine", 1.1, 112, workers=1, progress=False))
    return [(t, y) for t, y in items if np.isin(y, (2, 3)).any()]


# name -> partial-volume blur (voxels) of the chemical shift; "mottle": T1 with heterogeneous healthy marrow;
# "scar": T1 with a physeal scar
RENDERINGS = {"T1": None, "GRE opposed": 0.8, "T1 mottled marrow": "mottle", "T1 physeal scar": "scar"}
# --why-gre: is it the dark marrow of opposed phase, or the dark lines at fat-water borders (partial volume)?
WHY_GRE = {"T1": None, "opposed, no border lines": 0.0, "GRE opposed": 0.8, "opposed, wide border lines": 1.5}


def render_pair(tissue: np.ndarray, labels: np.ndarray, seed: int,
                renderings: dict[str, float | str | None] = RENDERINGS) -> dict[str, np.ndarray]:
    """The crop in each rendering (same contrast draw): T1, opposed phase with the given border blur, T1 with
    the healthy marrow made heterogeneous (``synth.contrast.marrow_mottle``: red-marrow islands, streaks), or T1
    with a physeal scar (``synth.contrast.physeal_scar``)."""
    out = {}
    for name, blur in renderings.items():
        rng = np.random.default_rng([seed, 11])
        c = random_contrast(rng, prior_prob=1.0)
        t = physeal_scar(tissue, labels, np.random.default_rng([seed, 14]), 1.1) if blur == "scar" else tissue
        img = render_random(t, labels, rng, c)
        if blur == "mottle":
            img = marrow_mottle(img, tissue, np.random.default_rng([seed, 13]))
        elif blur not in (None, "scar"):  # blur 0: the marrow darkens, but no border line forms
            img = chemical_shift(img, tissue, rng, phase_deg=180.0, blur_vox=blur)
        noise = rng.normal(0, 0.02 * float(np.percentile(img, 95)), img.shape).astype(np.float32)
        out[name] = dr_normalise(np.abs(img + noise), np.random.default_rng([seed, 12]))
    return out


def predict(m: SegModule, x: np.ndarray, tta: bool = False) -> np.ndarray:
    """Labels of one crop; with ``tta`` mirrored and averaged as the engine's ``tta=true``."""
    t = torch.from_numpy(x)[None, None]
    with torch.no_grad():
        p = torch.softmax(m.predict_volume(t), 1)
        if tta:
            p = 0.5 * (p + torch.softmax(m.predict_volume(torch.flip(t, (2,))), 1).flip(2))
    return p.argmax(1)[0].numpy()


def score_crops(crops: list[tuple[str, np.ndarray, dict[str, np.ndarray], bool]],
                predict_fn: Callable[[np.ndarray], np.ndarray]) -> dict[tuple[str, str], list]:
    """(group, rendering) -> [(lesion Dice, volume error %, predicted lesion mL)] over the crops; a healthy crop
    with a subchondral cyst is also counted under ``healthy cyst``."""
    res: dict[tuple[str, str], list] = {}
    for g, y, images, cyst in crops:
        true = np.isin(y, (2, 3))
        for style, x in images.items():
            pred = np.isin(predict_fn(x), (2, 3))
            den = int(pred.sum() + true.sum())
            dice = float("nan") if den == 0 else 2 * int((pred & true).sum()) / den
            verr = float("nan") if not true.any() else (pred.sum() - true.sum()) / true.sum() * 100
            res.setdefault((g, style), []).append((dice, verr, pred.sum() * VOX_ML))
            if cyst:
                res.setdefault(("healthy cyst", style), []).append((dice, verr, pred.sum() * VOX_ML))
    return res


def report_lines(res: dict[tuple[str, str], list]) -> list[str]:
    """One line per (group, rendering): false lesions over 0.5 mL for healthy groups, else median Dice and error."""
    lines = []
    for (g, style), v in sorted(res.items()):
        d = np.array(v)
        if g in ("healthy", "healthy cyst"):
            lines.append(f"{g:12s} {style:26s} n={len(v):2d}  false lesion > 0.5 mL: {(d[:, 2] > 0.5).sum()}, "
                         f"largest {d[:, 2].max():.2f} mL, total {d[:, 2].sum():.2f} mL")
        else:
            lines.append(f"{g:12s} {style:26s} n={len(v):2d}  lesion Dice median {np.nanmedian(d[:, 0]):.3f}, "
                         f"volume error median {np.nanmedian(d[:, 1]):+.1f}%")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ckpts", nargs="+")
    ap.add_argument("--cache", default="cache/dr/fine_1.1mm_112/seed2112_shapes")
    ap.add_argument("--small-cache", default="cache/dr/fine_1.1mm_112/seed2121_small",
                    help="validation patients with small lesions (extent 3-12%%), rendered here once")
    ap.add_argument("--why-gre", action="store_true",
                    help="healthy heads only: opposed phase with and without the dark fat-water border lines")
    ap.add_argument("--tta", action="store_true", help="mirror and average (the engine's tta=true)")
    a = ap.parse_args()
    torch.set_num_threads(2)
    small = [] if a.why_gre else small_lesion_items(Path(a.small_cache))
    crops = []
    for i, (tis, lab) in enumerate(load_dr_items(sorted(Path(a.cache).glob("*.npz"))) + small):
        centre = np.array(tis.shape) // 2
        t, y = extract_patch(tis, lab, centre, PATCH)
        g = group(t.astype(np.uint8), y)
        if a.why_gre and g != "healthy":
            continue
        images = render_pair(t.astype(np.uint8), y, 5000 + i, WHY_GRE if a.why_gre else RENDERINGS)
        crops.append((g, y, images, healthy_cyst(g, t)))
    print("crops:", {g: sum(c[0] == g for c in crops) for g in ("healthy", "small", "bright core", "wide band", "other")})
    for ck in a.ckpts:
        m = SegModule.load_from_checkpoint(ck, map_location="cpu").eval()
        res = score_crops(crops, lambda x: predict(m, x, a.tta))
        print(f"## {ck}")
        print("\n".join(report_lines(res)))


if __name__ == "__main__":
    main()
