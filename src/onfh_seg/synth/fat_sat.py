"""Fat-suppressed T1 contrasts for domain-randomised training (issue 22): ``fat_sat_contrast`` suppresses fat and
the fat share of marrow (fatty marrow keeps its water alone), with or without contrast agent, optionally with a
necrotic core set apart from the suppressed marrow."""

from __future__ import annotations

import numpy as np

from onfh_seg.synth.contrast import CORE_GAP, CORE_TISSUES, N_TISSUES, T, T1_PRIOR, Contrast

FAT_TISSUES = ("subcutaneous_fat", "fat_septa", "pelvic_fat")
ENHANCING = ("muscle", "vessel", "bladder_wall", "skin", "rectum_wall")


BONE_TISSUES = ("subchondral_plate", "femoral_cortex", "pelvic_cortex", "acetabular_sclerosis")


def fat_sat_contrast(rng: np.random.Generator, enhance: bool = True,
                     red_left: tuple[float, float] = (0.25, 0.55), marrow_left: tuple[float, float] = (0.1, 0.35),
                     bone_like_marrow: float = 0.0, visible_core: bool = False) -> Contrast:
    """A fat-saturated post-contrast T1 (the fat-suppressed frames of issue 22): the T1 prior with fat and the fat
    share of marrow suppressed, so healthy marrow is dark (as dark as a fluid or fibrous core; ``random_contrast``'s
    draws never had dark viable marrow); muscle, vessels, skin, bladder and rectal walls, edema and the reactive
    interface band enhance, the necrotic core does not: the lesion shows by its bright band. ``enhance=False``: the
    same suppression without contrast agent (nothing enhances; the same draws up to the enhancement). ``red_left``:
    the share of red, regenerated and pelvic marrow's signal left (less fat in it than in yellow marrow);
    ``marrow_left``: the share of fatty marrow's signal left (its water). ``bone_like_marrow``: the share of draws in
    which cortex, subchondral plate and sclerosis are drawn at 50-100% of the suppressed marrow's mean (a suppressed
    marrow as dark as bone: no dark rim under the cartilage); 0 draws exactly as before. ``visible_core``: every
    necrotic-core sub-type is set apart from the suppressed fatty marrow (darker, to at most 60% of it, or brighter by
    at least 0.08 and 15% of it), so a lesion in a fat-suppressed head shows by its core alone; the band darker than
    the marrow (the random draws' rule); False draws exactly as before."""
    prior = np.array([T1_PRIOR[k] for k in sorted(T, key=T.get)], np.float32)
    mean = np.clip(prior + rng.normal(0, 0.06, N_TISSUES), 0.0, 1.2)
    for k in FAT_TISSUES:
        mean[T[k]] *= rng.uniform(0.03, 0.2)
    left = rng.uniform(*marrow_left)  # what is left of fatty marrow: its water
    mean[T["yellow_marrow"]] *= left
    mean[T["core_fat"]] *= left * rng.uniform(0.8, 1.2)
    for k in ("red_marrow", "regenerated", "pelvic_marrow"):
        mean[T[k]] *= rng.uniform(*red_left)
    if bone_like_marrow > 0 and rng.uniform() < bone_like_marrow:
        for k in BONE_TISSUES:
            mean[T[k]] = mean[T["yellow_marrow"]] * rng.uniform(0.5, 1.0)
    if enhance:
        for k in ENHANCING:
            mean[T[k]] = min(1.2, mean[T[k]] * rng.uniform(1.3, 2.5) + rng.uniform(0.0, 0.2))
        viable = float(max(mean[T["yellow_marrow"]], mean[T["red_marrow"]]))
        mean[T["edema_marrow"]] = min(1.2, max(mean[T["edema_marrow"]], viable) * rng.uniform(1.1, 1.8))
        mean[T["band"]] = min(1.2, max(viable, 0.1) * rng.uniform(2.0, 4.0))  # the enhancing reactive interface
    mean[T["air"]] = rng.uniform(0.0, 0.05)
    std = rng.uniform(0.0, 0.06, N_TISSUES).astype(np.float32)
    texture = rng.uniform(0.0, 0.12, N_TISSUES).astype(np.float32)
    band_gap = float(rng.uniform(0.0, 0.3)) if rng.uniform() < 0.5 else 0.0
    if visible_core:  # drawn last: every other draw as without it
        _set_core_apart(mean, rng)
    return Contrast(mean.astype(np.float32), std, texture, band_gap)


def _set_core_apart(mean: np.ndarray, rng: np.random.Generator) -> None:
    """In place: each necrotic-core sub-type darker than the suppressed fatty marrow (to 0-60% of it, only where the
    marrow keeps at least 0.12) or brighter by 0.08-0.5 and at least ``CORE_GAP`` of it; the band at 0-55% of it."""
    viable = float(mean[T["yellow_marrow"]])
    for k in CORE_TISSUES:
        if viable >= 0.12 and rng.uniform() < 0.5:
            mean[T[k]] = viable * rng.uniform(0.0, 0.6)
        else:
            mean[T[k]] = min(1.2, viable + rng.uniform(max(0.08, CORE_GAP * viable), 0.5))
    mean[T["band"]] = viable * rng.uniform(0.0, 0.55)
