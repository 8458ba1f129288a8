"""Anatomy and disease of a synthetic hip phantom: sampling, and rendering on arbitrary points.

The phantom lives in its own *anatomy frame* (RAS+ mm, pelvis centre near the
origin, patient right at +x). Each scan places it in the scanner with a rigid
pose (see ``acquisition``). ``render`` returns the noiseless T1 signal (fat = 1),
the label map and the ``regenerated`` mask for one timepoint. The data model
(``Hip``, ``Patient``, ``hip_state``, the tissue tables) is in ``patient``.

Label geometry (see ``onfh_seg.labels``): the femoral head is the (possibly
collapsed) head sphere cut at the head-neck junction plane, perpendicular to the
neck axis at 0.55 x radius from the head centre. The acetabulum is pelvic bone
within 12 mm of the socket surface and inside the cup (the part of the socket
that covers the head, up to its rim plane).
"""

from __future__ import annotations

import numpy as np

from onfh_seg import labels as L
from onfh_seg.synth.anatomy_sdf import (  # also phantom.<name> for existing callers
    body_sdf,
    femur_sdf,
    head_radius_field,
    head_region,
    lesion_distance,
    pelvis_sdf,
    tract_distance,
)
from onfh_seg.synth.patient import CORE_TISSUE, MITCHELL_T1, T1, TISSUES, Hip, Patient, State, hip_state
from onfh_seg.synth.shapes import (
    Points,
    dot,
    make_waves,
    norm,
    sd_ellipsoid,
    sub,
    take,
    unit,
)


# ----------------------------------------------------------------------------- sampling


def sample_hip(rng: np.random.Generator, side: str, centre: np.ndarray, radius: float) -> Hip:
    """Random healthy hip anatomy around a given head centre."""
    s = 1.0 if side == "right" else -1.0
    nsa = np.deg2rad(rng.uniform(125, 138))  # neck-shaft angle
    antev = np.deg2rad(rng.uniform(8, 18))
    elev = nsa - np.pi / 2  # neck elevation above horizontal
    neck_dir = unit([s * np.cos(elev) * np.cos(antev), -np.cos(elev) * np.sin(antev), -np.sin(elev)])
    neck_len = radius * rng.uniform(2.1, 2.5)
    base = centre + neck_dir * neck_len
    shaft_dir = unit([-s * np.tan(np.deg2rad(rng.uniform(5, 9))), rng.uniform(-0.05, 0.05), -1.0])
    gt_centre = base + np.array([s * rng.uniform(12, 18), rng.uniform(-14, -6), rng.uniform(14, 22)])
    lt_centre = base + np.array([-s * 8, -12.0, -radius * 1.3])
    incl = np.deg2rad(rng.uniform(38, 50))
    av = np.deg2rad(rng.uniform(12, 22))
    cup_axis = unit([s * np.sin(incl), np.sin(av) * np.cos(incl), -np.cos(incl)])
    return Hip(
        side=side,
        centre=np.asarray(centre, float),
        radius=float(radius),
        neck_dir=neck_dir,
        neck_len=float(neck_len),
        neck_radius=float(radius * rng.uniform(0.60, 0.68)),
        gt_centre=gt_centre,
        gt_axes=(rng.uniform(12, 16), rng.uniform(17, 22), rng.uniform(20, 26)),
        shaft_top=base,
        shaft_dir=shaft_dir,
        lt_centre=lt_centre,
        joint_mm=float(rng.uniform(3.5, 5.0)),
        cup_axis=cup_axis,
        rim_h=float(radius * rng.uniform(0.15, 0.3)),
        head_waves=make_waves(rng, 6, 30, 70),
        serp_waves=make_waves(rng, 8, 9, 22),
        tex_waves=make_waves(rng, 6, 2.5, 7),
    )


def add_disease(rng: np.random.Generator, h: Hip, stage: str, extent: float, mitchell: str,
                response: str, edema: bool) -> None:
    """Put a necrotic segment in the anterosuperior head of ``h`` (in place)."""
    s = h.s
    h.stage, h.extent, h.mitchell, h.response = stage, float(extent), mitchell, response
    lat = rng.uniform(-0.15, 0.75)
    h.lesion_dir = unit([s * lat, rng.uniform(0.35, 0.8), 1.0])
    h.band_mm = float(rng.uniform(1.8, 3.5))
    h.edema = float(rng.uniform(0.3, 0.45)) if edema else 0.0
    h.collapse_mm = {"3A": rng.uniform(0.8, 2.0), "3B": rng.uniform(2.5, 4.0), "4": rng.uniform(3.0, 5.0)}.get(stage, 0.0)
    if stage == "4":
        h.joint_mm = float(rng.uniform(1.6, 2.4))
    # injection tract: posterolateral entry below the greater trochanter, aimed at the lesion
    entry = h.shaft_top + np.array([s * 22.0, -12.0, -18.0])
    h.tract_a = entry
    h.tract_b = h.centre + 0.55 * h.radius * h.lesion_dir
    h.regen_radius_mm = float(rng.uniform(4.0, 8.0))
    h.shrink_frac = float(rng.uniform(0.08, 0.2))
    h.grow_frac = float(rng.uniform(0.08, 0.18))
    h.collapse_growth_mm = float(rng.uniform(0.8, 2.5)) if response == "progressor" else 0.0


def calibrate_lesion(h: Hip, spacing: float = 0.6) -> None:
    """Choose the lesion ball radius so the lesion takes ``h.extent`` of the head volume."""
    if not h.diseased:
        return
    r = h.radius + 2
    ax = np.arange(-r, r + spacing, spacing, dtype=np.float32)
    P = np.meshgrid(ax + h.centre[0], ax + h.centre[1], ax + h.centre[2], indexing="ij")
    st = hip_state(h, 0.0)
    head = head_region(P, h, st.collapse_mm)
    D = lesion_distance(P, h)[head]
    h.lesion_R = float(np.quantile(D, h.extent))


# ----------------------------------------------------------------------------- render


def femoral_vessels(P: Points, h: Hip) -> list[np.ndarray]:
    """Masks of the femoral artery and vein in front of a hip (vertical tubes)."""
    x, y = P[0], P[1]
    out = []
    for dx, r in ((0.0, 4.0), (-10.0, 5.5)):
        v = np.sqrt((x - np.float32(h.centre[0] + h.s * (-12 + dx))) ** 2 + (y - np.float32(h.centre[1] + 40)) ** 2)
        out.append(v < r)
    return out


def pelvis_near_hips(P: Points, pat: Patient) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Pelvic signed distance where it matters (near the hips and the sacrum; 100 elsewhere), and
    the per-side masks of points near each hip."""
    x, y = P[0], P[1]
    pel = np.full(np.shape(x)[0], np.float32(100.0))
    near = {side: hip_near(P, h) for side, h in pat.hips.items()}
    sub_m = (np.abs(x) < 60) & (y < -60)
    for m in near.values():
        sub_m = sub_m | m
    if sub_m.any():
        pel[sub_m] = pelvis_sdf(take(P, sub_m), pat)
    return pel, near


def hip_near(P: Points, h: Hip) -> np.ndarray:
    """Points close enough to a hip's femur or acetabulum to need its geometry."""
    q = sub(P, h.centre)
    near = (q[0] * q[0] + q[1] * q[1] + q[2] * q[2]) < np.float32((h.radius + 75) ** 2)
    shaft_x = np.float32(h.shaft_top[0]) + (P[2] - np.float32(h.shaft_top[2])) * np.float32(h.shaft_dir[0] / h.shaft_dir[2])
    along = (P[2] < np.float32(h.shaft_top[2] + 10)) & (np.abs(P[0] - shaft_x) < 40) & (np.abs(q[1]) < 45)
    return near | along


def render(P: Points, pat: Patient, months: float, with_tissue: bool = False):
    """Noiseless T1 signal (float32, fat=1), labels (uint8) and regenerated mask at ``months``.

    Points are 1-D arrays (flattened grids). The result at a point depends only on
    that point, so rendering any subset gives the same values as a full render.
    With ``with_tissue`` a fourth array holds the tissue sub-label (``TISSUES``)
    of each point; the first three are unchanged by it.
    """
    n = np.shape(P[0])[0]
    T = TISSUES
    tis = np.zeros(n, np.uint8)
    img = np.zeros(n, np.float32)
    lab = np.zeros(n, np.uint8)
    regen = np.zeros(n, bool)
    x, y, z = P

    body = body_sdf(P, pat)
    inside = body < 0
    img[inside] = T1["muscle"]
    tis[inside] = T["muscle"]
    septa = pat.septa_waves((P[0], P[1], P[2] * 0.3))
    img[inside & (np.abs(septa) < 0.035)] = T1["fat"] * 0.9  # intermuscular fat planes (curvilinear)
    tis[inside & (np.abs(septa) < 0.035)] = T["fat_septa"]
    img[inside & (body > -np.float32(pat.fat_mm))] = T1["fat"]
    tis[inside & (body > -np.float32(pat.fat_mm))] = T["subcutaneous_fat"]
    img[inside & (body > -1.2)] = T1["skin"]
    tis[inside & (body > -1.2)] = T["skin"]

    # pelvic cavity: fat, bladder, rectum; femoral vessels
    cav = sd_ellipsoid(P, (0, 5, 15), (44, 60, 60)) < 0
    img[cav] = T1["fat"] * 0.95
    tis[cav] = T["pelvic_fat"]
    bl = sd_ellipsoid(P, (0, 35, 5), pat.bladder_axes)
    img[(bl < 0) & (bl > -2.0)] = T1["muscle"]
    tis[(bl < 0) & (bl > -2.0)] = T["bladder_wall"]
    img[bl < -2.0] = T1["urine"]
    tis[bl < -2.0] = T["urine"]
    rect = np.sqrt(x * x + (y + 48) ** 2)
    img[(rect < 14) & cav] = T1["muscle"] * 0.9
    tis[(rect < 14) & cav] = T["rectum_wall"]
    img[(rect < 9) & cav] = 0.05
    tis[(rect < 9) & cav] = T["rectum_content"]
    for h in pat.hips.values():
        for v in femoral_vessels(P, h):
            img[v & inside] = T1["vessel"]
            tis[v & inside] = T["vessel"]

    # pelvic bone: cortex and red marrow
    pel, hip_masks = pelvis_near_hips(P, pat)
    img[pel < 0] = T1["cortex"]
    tis[pel < 0] = T["pelvic_cortex"]
    img[pel < -1.8] = T1["red_marrow"]
    tis[pel < -1.8] = T["pelvic_marrow"]

    for side, h in pat.hips.items():
        m = hip_masks[side]
        if not m.any():
            continue
        Q = take(P, m)
        im_h, lab_h, rg_h, tis_h = img[m], lab[m], regen[m], tis[m]
        _render_hip(Q, h, months, pel[m], im_h, lab_h, rg_h, tis_h)
        img[m], lab[m], regen[m], tis[m] = im_h, lab_h, rg_h, tis_h
    if with_tissue:
        return img, lab, regen, tis
    return img, lab, regen


def _render_hip(P: Points, h: Hip, months: float, pel: np.ndarray, img: np.ndarray,
                lab: np.ndarray, regen: np.ndarray, tis: np.ndarray) -> None:
    """Paint joint, femur, head labels and disease of one hip into the given arrays."""
    T = TISSUES
    st = hip_state(h, months)
    q = sub(P, h.centre)
    rq = norm(q)
    tex = 1.0 + np.float32(0.06) * h.tex_waves(P)
    in_cup = dot(q, h.cup_axis) < np.float32(h.rim_h)
    Rs = np.float32(h.radius + h.joint_mm)
    hr = head_radius_field(P, h, st.collapse_mm)
    jt = (rq > hr) & (rq < Rs) & in_cup
    img[jt] = T1["fluid"]
    tis[jt] = T["joint_fluid"]
    img[jt & (rq > Rs - np.float32(min(1.8, h.joint_mm * 0.45)))] = T1["cartilage"]
    tis[jt & (rq > Rs - np.float32(min(1.8, h.joint_mm * 0.45)))] = T["cartilage"]
    img[(rq > hr) & (rq < hr + np.float32(min(1.6, h.joint_mm * 0.4)))] = T1["cartilage"]
    tis[(rq > hr) & (rq < hr + np.float32(min(1.6, h.joint_mm * 0.4)))] = T["cartilage"]
    acet = (pel < 0) & in_cup & (rq < Rs + np.float32(L.ACETABULUM_SHELL_MM))
    lab[acet] = L.ACETABULUM
    if h.stage == "4":
        img[acet & (rq < Rs + 3.5) & (dot(q, h.cup_axis) < 0)] = T1["cortex"] * 2
        tis[acet & (rq < Rs + 3.5) & (dot(q, h.cup_axis) < 0)] = T["acetabular_sclerosis"]
    img[acet] *= tex[acet]

    fem = femur_sdf(P, h, st.collapse_mm, hr)
    depth = np.clip((dot(sub(P, h.shaft_top), h.shaft_dir) - 20) / 40, 0, 1)
    marrow = fem < -(1.3 + 3.7 * depth)
    img[fem < 0] = T1["cortex"]
    tis[fem < 0] = T["femoral_cortex"]
    w_head = np.clip((h.radius + 4 - rq) / 10, 0, 1)
    w_gt = np.clip(-sd_ellipsoid(P, h.gt_centre, h.gt_axes) / 6, 0, 1)
    w = np.maximum(np.maximum(w_head, w_gt), depth)
    msig = (T1["red_marrow"] + (T1["yellow_marrow"] - T1["red_marrow"]) * w) * tex
    if st.edema > 0:
        msig = msig * (1 - np.clip((h.radius + 12 - rq) / 14, 0, 1) * np.float32(st.edema))
    img[marrow] = msig[marrow]
    mtis = np.where(w > 0.5, np.uint8(T["yellow_marrow"]), np.uint8(T["red_marrow"]))
    if st.edema > 0:
        mtis[np.clip((h.radius + 12 - rq) / 14, 0, 1) * st.edema > 0.08] = T["edema_marrow"]
    tis[marrow] = mtis[marrow]
    head = (rq <= hr) & (dot(q, h.neck_dir) < np.float32(L.HEAD_NECK_JUNCTION_FRACTION * h.radius))
    lab[head] = L.HEAD
    tis[head & (fem < 0) & ~marrow] = T["subchondral_plate"]
    for c, r in h.cysts:  # subchondral cysts: fluid-like, part of the head (a lesion painted later overrides)
        cy = marrow & head & (norm(sub(P, np.asarray(c, float))) < np.float32(r))
        img[cy] = T1["fluid"]
        tis[cy] = T["cyst"]
    if h.diseased:
        _render_lesion(P, h, st, head, tex, msig, img, lab, regen, tis)


def _render_lesion(P: Points, h: Hip, st: State, head: np.ndarray, tex: np.ndarray, msig: np.ndarray,
                   img: np.ndarray, lab: np.ndarray, regen: np.ndarray, tis: np.ndarray) -> None:
    """Paint the necrotic core, the interface band and the regenerated zone of a diseased hip (in place);
    ``tex`` and ``msig`` are the hip's texture and viable-marrow signal at the points."""
    T = TISSUES
    D = lesion_distance(P, h)
    base_les = head & (D < np.float32(h.lesion_R))
    les = head & (D < np.float32(st.lesion_R))
    band = les & (D >= np.float32(st.lesion_R - st.band_mm))
    if st.regen_radius > 0:  # regenerated channel along the injection tract, lined by the band
        td = tract_distance(P, h)
        les &= td >= np.float32(st.regen_radius)
        band = les & (band | (td < np.float32(st.regen_radius + st.band_mm)))
    core = les & ~band
    rg = base_les & ~les
    regen |= rg
    if h.mitchell == "mixed":
        mix = np.clip(0.5 + 0.8 * h.serp_waves((P[0] * 1.7, P[1] * 1.7, P[2] * 1.7)), 0, 1)
        csig = MITCHELL_T1["D"] + (MITCHELL_T1["A"] - MITCHELL_T1["D"]) * mix
    else:
        csig = np.full(head.shape, MITCHELL_T1[h.mitchell], np.float32)
    csig = csig * tex
    img[core] = csig[core]
    if h.mitchell == "mixed":
        ctis = np.where(mix > 0.5, np.uint8(T["core_fat"]), np.uint8(T["core_fibrous"]))
        tis[core] = ctis[core]
    else:
        tis[core] = CORE_TISSUE[h.mitchell]
    dark = np.float32(T1["cortex"] * 2.2)
    bsig = dark + (msig - dark) * np.float32(1 - st.band_contrast)
    img[band] = bsig[band]
    tis[band] = T["band"]
    rsig = csig + (msig * 0.92 - csig) * np.float32(st.regen_signal)
    img[rg] = rsig[rg]
    tis[rg] = T["regenerated"]
    lab[core] = L.NECROTIC
    lab[band] = L.BAND


# ----------------------------------------------------------------------------- patients


def sample_patient(rng: np.random.Generator, patient_id: str) -> Patient:
    """Random healthy pelvis with two hips (disease is added by the cohort sampler)."""
    r = rng.uniform(21.0, 27.5)
    half = rng.uniform(84, 96)
    y0 = rng.uniform(-4, 4)
    hips = {}
    for side, s in (("right", 1.0), ("left", -1.0)):
        c = np.array([s * half + rng.normal(0, 1), y0 + rng.normal(0, 1.5), rng.normal(0, 1.5)])
        hips[side] = sample_hip(rng, side, c, r * rng.uniform(0.97, 1.03))
    return Patient(
        patient_id=patient_id,
        body_axes=(float(rng.uniform(165, 195)), float(rng.uniform(105, 130))),
        body_y=float(rng.uniform(-12, -2)),
        fat_mm=float(rng.uniform(10, 32)),
        hips=hips,
        bladder_axes=(float(rng.uniform(25, 42)), float(rng.uniform(18, 30)), float(rng.uniform(20, 35))),
        body_waves=make_waves(rng, 5, 80, 200),
        septa_waves=make_waves(rng, 6, 12, 40),
        symphysis=np.array([0.0, 48.0 + rng.normal(0, 3), -32.0 + rng.normal(0, 3)]),
    )
