"""Style B: a second hip T1 renderer, written apart from the default one, for out-of-style evaluation.

Only the *anatomy and disease geometry* is shared with ``phantom`` (patients,
hips, signed-distance shapes, disease course), so the label maps mean exactly
the same thing (``onfh_seg.labels``: lesion = 2+3 with the band on the viable
side, the subchondral plate is head). Everything that decides how a scan looks
is this module's own:

- **Tissue model**: another T1 contrast (brighter cartilage and muscle, darker
  fluid), marrow as red/yellow islands (thresholded band-limited noise, more red
  in the neck and pelvis), a thick dark subchondral plate, a dark labrum,
  necrotic cores split into fat-like / hemorrhagic / fluid-like / fibrous
  sub-regions, and an interface band whose dark part varies in width and fades
  to invisible in places.
- **Texture** (``style_b_texture``): smoothed random lattices (value noise,
  several octaves), not sums of plane waves.
- **Acquisition** (``style_b_scan``): 2D oblique thick-slice planes or 3D
  slabs, image formation in k-space (Gibbs ringing, motion ghosts), receive-coil
  bias, g-factor-scaled complex noise, magnitude image.

Labels and the regenerated mask are evaluated exactly at each scan voxel centre (``style_b_labels``).
The output layout and truth JSON are those of every renderer (``scan_files.write_scan``).
Selected with ``style: b`` in ``configs/synth.yaml`` (options under ``style_b``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import erfinv

from onfh_seg.synth.anatomy_sdf import body_sdf, femur_sdf
from onfh_seg.synth.patient import Hip, Patient, hip_state
from onfh_seg.synth.phantom import femoral_vessels, pelvis_near_hips
from onfh_seg.synth.plan import PatientPlan, timepoint_labels
from onfh_seg.synth.scan_files import acquisition_record, merge_scores, write_scan
from onfh_seg.synth.shapes import Points, dot, sd_ellipsoid, sub, take
from onfh_seg.synth.style_b_labels import fine_truth, hip_geometry, scan_labels
from onfh_seg.synth.style_b_scan import acquire_b, coil_range, plan_scans_b
from onfh_seg.synth.style_b_texture import (
    GridB,
    Lattice,
    Octaves,
    grid_points,
    make_lattice,
    make_octaves,
    smoothstep,
)

FINE_MM = 0.7  # per-hip intensity grid (default; option ``fine_mm``)
FINE_HALF_MM = 46.0
COARSE_MM = 2.5  # whole-body intensity grid (default; option ``coarse_mm``)


DEFAULTS: dict = {
    "protocols": {"oblique_2d": 0.6, "iso_3d": 0.4},
    "orientations_2d": {"axial": 0.35, "coronal": 0.45, "sagittal": 0.2},
    "orientations_3d": {"axial": 0.5, "coronal": 0.5},
    "small_fov_fraction": 0.25,
    "oblique_deg": [8.0, 30.0],
    "inplane_mm": [0.6, 1.0],
    "slice_mm": [3.0, 6.0],
    "gap_mm": [0.0, 1.5],
    "iso_mm": [0.8, 1.4],
    "snr": [10.0, 35.0],
    "max_matrix": 320,
    "ghost": [0.0, 0.6],
    "gfactor": [1.0, 1.8],
    "fine_mm": FINE_MM,
    "coarse_mm": COARSE_MM,
}


# ----------------------------------------------------------------------------- tissue model


@dataclass
class HipFields:
    """Random fields of one hip (anatomy frame, around the head)."""

    islands: Octaves  # red/yellow marrow islands
    grain: Lattice  # fine trabecular grain
    core_a: Lattice  # necrotic-core sub-regions
    core_b: Lattice
    band_vis: Lattice  # where the band is visible
    band_width: Lattice  # how much of the band is dark
    edema: Lattice


@dataclass
class Look:
    """Per-patient style-B appearance: tissue signals (fat = 1) and texture fields."""

    protocol: str
    t: dict[str, float]
    core: dict[str, float]
    red_bias: float  # patient-level shift of the red-marrow share (younger: more red)
    plate_mm: float  # subchondral plate / cortex thickness in the head
    body: Octaves
    septa: Lattice
    pelvic_islands: Octaves
    hips: dict[str, HipFields]


def sample_look(rng: np.random.Generator, pat: Patient, protocol: str) -> Look:
    """Draw style-B tissue signals and texture fields for one patient."""
    u = rng.uniform
    t = {
        "fat": 1.0, "muscle": u(0.36, 0.46), "fluid": u(0.08, 0.16), "cartilage": u(0.52, 0.66),
        "cortex": u(0.02, 0.06), "yellow": u(0.85, 0.96), "red": u(0.46, 0.62), "skin": u(0.5, 0.65),
        "labrum": u(0.05, 0.1), "band": u(0.03, 0.1), "bowel": u(0.3, 0.5), "tendon": u(0.04, 0.09),
        "vessel": u(0.7, 0.9) if protocol == "iso_3d" else u(0.02, 0.06),  # inflow-bright (3D GRE) or flow void
    }
    t["urine"] = t["fluid"] * u(0.8, 1.0)
    core = {"fat": u(0.78, 0.92), "hemorrhagic": u(0.6, 0.8), "fluid": u(0.1, 0.2), "fibrous": u(0.04, 0.12)}
    ax, ay = pat.body_axes
    lo = (-ax - 40, pat.body_y - ay * 1.1 - 40, -170.0)
    hi = (ax + 40, pat.body_y + ay + 40, 140.0)
    hips = {}
    for side, h in pat.hips.items():
        hlo, hhi = h.centre - FINE_HALF_MM - 4, h.centre + FINE_HALF_MM + 4
        hips[side] = HipFields(
            islands=make_octaves(rng, hlo, hhi, u(3.0, 5.0), 2),
            grain=make_lattice(rng, hlo, hhi, 0.9),
            core_a=make_lattice(rng, hlo, hhi, u(2.0, 3.5)),
            core_b=make_lattice(rng, hlo, hhi, u(1.5, 2.5)),
            band_vis=make_lattice(rng, hlo, hhi, u(3.0, 5.0)),
            band_width=make_lattice(rng, hlo, hhi, u(2.0, 3.5)),
            edema=make_lattice(rng, hlo, hhi, 4.0),
        )
    return Look(
        protocol=protocol, t=t, core=core, red_bias=float(u(-0.6, 0.6)), plate_mm=float(u(1.4, 2.4)),
        body=make_octaves(rng, lo, hi, 24.0, 1), septa=make_lattice(rng, lo, hi, 12.0),
        pelvic_islands=make_octaves(rng, lo, hi, 8.0, 2), hips=hips,
    )


# ----------------------------------------------------------------------------- rendering


def render_b(P: Points, pat: Patient, months: float, look: Look) -> np.ndarray:
    """Noiseless style-B T1 signal (float32, fat ~1) at points; depends on each point alone."""
    t = look.t
    n = np.shape(P[0])[0]
    img = np.zeros(n, np.float32)
    x, y, z = P
    body = body_sdf(P, pat)
    inside = body < 0
    if inside.any():
        Pi = take(P, inside)
        sig = np.float32(t["muscle"]) * (1 + np.float32(0.05) * look.body(Pi))
        septa = np.abs(look.septa((Pi[0], Pi[1], Pi[2] * np.float32(0.35)))) < 0.06  # fascial fat planes along the limb
        sig[septa] = np.float32(0.9 * t["fat"])
        img[inside] = sig
    img[inside & (body > -np.float32(pat.fat_mm))] = t["fat"]
    img[inside & (body > -1.0)] = t["skin"]
    cav = sd_ellipsoid(P, (0, 5, 15), (44, 60, 60)) < 0
    img[cav] = 0.93 * t["fat"]
    bl = sd_ellipsoid(P, (0, 35, 5), pat.bladder_axes)
    img[(bl < 0) & (bl > -1.5)] = t["muscle"]
    img[bl < -1.5] = t["urine"]
    rect = np.sqrt(x * x + (y + 48) ** 2)
    img[(rect < 14) & cav] = t["muscle"]
    img[(rect < 10) & cav] = t["bowel"]
    img[(rect < 5) & cav & (y > -48)] = 0.0  # gas
    for h in pat.hips.values():
        for v in femoral_vessels(P, h):
            img[v & inside] = t["vessel"]

    pel, near = pelvis_near_hips(P, pat)
    bone = pel < 0
    img[bone] = t["cortex"]
    pm = pel < -1.6
    if pm.any():
        red = smoothstep(0.5 + 0.6 * (look.pelvic_islands(take(P, pm)) + np.float32(0.8 + look.red_bias)))
        img[pm] = np.float32(t["yellow"]) + (np.float32(t["red"]) - np.float32(t["yellow"])) * red
    for side, h in pat.hips.items():
        m = near[side]
        if m.any():
            img[m] = _render_hip_b(take(P, m), h, months, pel[m], img[m], look, look.hips[side])
    return img


def _marrow(P: Points, h: Hip, rq: np.ndarray, look: Look, f: HipFields) -> np.ndarray:
    """Red/yellow marrow islands: mostly yellow in the head, more red towards the neck and trochanters."""
    t = look.t
    along = dot(sub(P, h.centre), h.neck_dir) / np.float32(h.radius)  # < 0.55 in the head, larger in the neck
    bias = np.float32(-1.2) + np.float32(0.6) * np.clip(along, -1.0, 2.5) + np.float32(look.red_bias)
    red = smoothstep(0.5 + 0.7 * (f.islands(P) + bias))
    sig = np.float32(t["yellow"]) + (np.float32(t["red"]) - np.float32(t["yellow"])) * red
    return sig * (1 + np.float32(0.04) * f.grain(P))


def _core_signal(P: Points, mitchell: str, look: Look, f: HipFields) -> np.ndarray:
    """Necrotic core: a main tissue with islands of a second (mixed: three tissues)."""
    c = look.core
    main, second, share = {"A": ("fat", "fibrous", 0.25), "B": ("hemorrhagic", "fibrous", 0.3),
                           "C": ("fluid", "hemorrhagic", 0.25), "D": ("fibrous", "fluid", 0.3)}.get(
        mitchell, ("fluid", "fat", 0.45))
    a = f.core_a(P)
    s = smoothstep((a - np.float32(np.sqrt(2) * erfinv(1 - 2 * share)) + 0.4) / 0.8)  # ~share of the core
    sig = np.float32(c[main]) + (np.float32(c[second]) - np.float32(c[main])) * s
    if mitchell == "mixed":  # fibrous strands through the mixed core
        b = np.abs(f.core_b(P)) < 0.25
        sig[b] = np.float32(c["fibrous"])
    return sig * (1 + np.float32(0.05) * f.grain(P))


def _render_hip_b(P: Points, h: Hip, months: float, pel: np.ndarray, img: np.ndarray, look: Look,
                  f: HipFields) -> np.ndarray:
    """Joint, femur and disease of one hip painted over ``img`` (returns the new values)."""
    t = look.t
    st = hip_state(h, months)
    img = img.copy()
    g = hip_geometry(P, h, months, pel)
    q = sub(P, h.centre)
    Rs = np.float32(h.radius + h.joint_mm)
    # joint: thin fluid line between thick bright cartilage layers; dark labrum at the rim
    jt = (g.rq > g.hr) & (g.rq < Rs) & g.in_cup
    img[jt] = t["fluid"]
    c = np.float32(min(2.2, 0.45 * h.joint_mm))
    img[jt & (g.rq > Rs - c)] = t["cartilage"]
    fc = (g.rq > g.hr) & (g.rq < g.hr + c) & (dot(q, h.neck_dir) < np.float32(0.35 * h.radius))
    img[fc] = t["cartilage"]
    ch = dot(q, h.cup_axis)
    lab_rim = (ch > np.float32(h.rim_h - 5)) & (ch < np.float32(h.rim_h + 1.5)) & (g.rq > g.hr) & (g.rq < Rs + 3) & (pel >= 0)
    img[lab_rim] = t["labrum"]
    if h.stage == "4":  # acetabular sclerosis
        img[g.acet & (g.rq < Rs + 3.0) & (ch < 0)] = 1.8 * t["cortex"]
    # femur: cortex (thicker subchondral plate in the head), marrow islands
    fem = femur_sdf(P, h, st.collapse_mm, g.hr)
    img[fem < 0] = t["cortex"]
    depth = np.clip((dot(sub(P, h.shaft_top), h.shaft_dir) - 20) / 40, 0, 1)
    in_head = g.rq < np.float32(h.radius + 3)
    thick = np.where(in_head, np.float32(look.plate_mm), np.float32(1.4) + np.float32(3.6) * depth)
    marrow = fem < -thick
    if not marrow.any():
        return img
    Pm = take(P, marrow)
    msig = _marrow(Pm, h, g.rq[marrow], look, f)
    if st.edema > 0:  # patchy marrow edema in head and neck (not labelled necrotic)
        rqm = g.rq[marrow]
        w = np.clip((np.float32(h.radius + 12) - rqm) / 14, 0, 1) * (0.7 + 0.3 * smoothstep(0.5 + 0.5 * f.edema(Pm)))
        msig = msig * (1 - w * np.float32(st.edema))
    img[marrow] = msig
    if not h.diseased:
        return img
    full_m = np.zeros(img.shape, np.float32)  # marrow signal where the lesion is (viable side of the band)
    full_m[marrow] = msig
    les = (g.core | g.band | g.regen) & marrow  # the dark subchondral plate stays over the lesion
    if not les.any():
        return img
    Pl = take(P, les)
    csig = _core_signal(Pl, h.mitchell, look, f)
    core_l, band_l, rg_l = g.core[les], g.band[les], g.regen[les]
    out = img[les]
    out[core_l] = csig[core_l]
    if band_l.any():
        Pb = take(Pl, band_l)
        d = g.band_depth[les][band_l]
        width = np.float32(0.3) + np.float32(0.7) * smoothstep(0.5 + 0.5 * f.band_width(Pb))
        vis = np.clip(np.float32(0.55) + np.float32(0.75) * f.band_vis(Pb), 0, 1) * np.float32(st.band_contrast)
        mb = full_m[les][band_l]
        mb = np.where(mb > 0, mb, np.float32(t["yellow"]))
        dark = mb + (np.float32(t["band"]) - mb) * vis
        out[band_l] = np.where(d < width, dark, csig[band_l])
    if rg_l.any():
        heal = np.float32(t["red"]) * (1 + np.float32(0.08) * f.grain(take(Pl, rg_l)))
        out[rg_l] = csig[rg_l] + (heal - csig[rg_l]) * np.float32(st.regen_signal)
    img[les] = out
    return img


# ----------------------------------------------------------------------------- grids


def render_grids_b(pat: Patient, months: float, look: Look, previous: dict | None = None,
                   fine_mm: float = FINE_MM, coarse_mm: float = COARSE_MM) -> dict:
    """Whole-body coarse grid and one fine grid per hip; follow-ups re-render only around diseased heads."""
    if previous is None:
        ax_, ay_ = pat.body_axes
        lo = np.array([-ax_ - 30, pat.body_y - ay_ * 1.1 - 30, -160.0])
        hi = np.array([ax_ + 30, pat.body_y + ay_ + 30, 130.0])
        shape = tuple(int(v) for v in np.ceil((hi - lo) / coarse_mm) + 1)
        coarse = GridB(lo, coarse_mm, shape, render_b(grid_points(lo, coarse_mm, shape), pat, months, look).reshape(shape))
        fine = {}
        nf = int(round(2 * FINE_HALF_MM / fine_mm)) + 1
        for side, h in pat.hips.items():
            o = h.centre - FINE_HALF_MM
            fine[side] = GridB(o, fine_mm, (nf,) * 3, render_b(grid_points(o, fine_mm, (nf,) * 3), pat, months, look).reshape((nf,) * 3))
        return {"coarse": coarse, "fine": fine}
    fine = {}
    for side, g0 in previous["fine"].items():
        h = pat.hips[side]
        img = g0.img.copy()
        if h.diseased:
            P = grid_points(g0.origin, g0.spacing, g0.shape)
            d2 = (P[0] - h.centre[0]) ** 2 + (P[1] - h.centre[1]) ** 2 + (P[2] - h.centre[2]) ** 2
            m = d2 < (h.radius + 18.0) ** 2
            flat = img.reshape(-1)
            flat[m] = render_b(take(P, m), pat, months, look)
        fine[side] = GridB(g0.origin, g0.spacing, g0.shape, img)
    return {"coarse": previous["coarse"], "fine": fine}


# ----------------------------------------------------------------------------- cohort


def style_options(cfg: dict) -> dict:
    """``cfg['style_b']`` over the module defaults."""
    opt = dict(DEFAULTS)
    opt.update(cfg.get("style_b") or {})
    return opt


def generate_patient_b(plan: PatientPlan, out_dir: Path, cfg: dict, index: int) -> list[dict]:
    """Render, acquire and write all style-B scans of one patient; return manifest rows."""
    pat = plan.patient
    seed = int(cfg["seed"])
    opt = style_options(cfg)
    protocol, scans = plan_scans_b(plan, opt, seed, index)
    look = sample_look(np.random.default_rng([seed, 0xB0, index]), pat, protocol)
    rng = np.random.default_rng([seed, 0xB1, index])
    rows: list[dict] = []
    base_grids = None
    base_lesion_ml: dict[str, float] = {}
    for i, (m, pose, scan, tp) in enumerate(zip(plan.months, plan.poses, scans, timepoint_labels(plan))):
        grids = render_grids_b(pat, m, look, base_grids, float(opt["fine_mm"]), float(opt["coarse_mm"]))
        if base_grids is None:
            base_grids = grids
        img = acquire_b(grids, scan, pose, rng)
        lab, rg = scan_labels(scan, pose, pat, m)
        name = f"{pat.patient_id}_{tp}"
        fine = fine_truth(pat, m)
        if i == 0:
            base_lesion_ml = {s: v["lesion_volume_ml"] for s, v in fine.items()}
        acquisition = acquisition_record(
            scan, coil_range(scan, pose), protocol=scan.protocol, oblique_deg=round(scan.oblique_deg, 3),
            phase_axis=scan.phase_axis, ghost_mm=round(scan.ghost_mm, 4), gfactor_max=round(scan.gfactor_max, 4),
            kspace_taper=scan.kspace_taper)
        rows.append(write_scan(out_dir, plan, name, tp, m, pose, scan.affine, (img, lab, rg), fine,
                               base_lesion_ml, acquisition, top={"style": "b"}))
    return merge_scores(rows, plan)
