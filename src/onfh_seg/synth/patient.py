"""The synthetic phantom's data model: patients and hips, their disease course, and the tissue tables.

``Hip`` and ``Patient`` hold the anatomy and disease parameters (drawn by ``phantom``); ``hip_state``
gives a hip's disease state at a timepoint. ``T1`` holds the default renderer's relative T1 signal per
tissue and ``TISSUES`` the tissue sub-labels of the domain-randomised training renderer. Shared by every
renderer (``phantom``, ``anatomy_sdf``, ``style_b``, ``style_c``, ``randomise``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from onfh_seg.synth.shapes import Waves


# Relative T1 signal, fat = 1.0 (shared/notes/onfh-mri.md).
T1 = {
    "fat": 1.0,
    "yellow_marrow": 0.93,
    "red_marrow": 0.70,
    "cartilage": 0.40,
    "muscle": 0.33,
    "fluid": 0.22,
    "urine": 0.18,
    "cortex": 0.05,
    "vessel": 0.07,
    "air": 0.0,
    "skin": 0.5,
    "tendon": 0.06,
}
MITCHELL_T1 = {"A": 0.88, "B": 0.78, "C": 0.24, "D": 0.13}

# Tissue sub-labels (finer than the segmentation labels), for the domain-randomised
# training renderer (``onfh_seg.synth.randomise``), which draws an intensity per
# sub-label and per image. ``render(..., with_tissue=True)`` returns them.
TISSUES: dict[str, int] = {
    "air": 0, "muscle": 1, "fat_septa": 2, "subcutaneous_fat": 3, "skin": 4, "pelvic_fat": 5,
    "bladder_wall": 6, "urine": 7, "rectum_wall": 8, "rectum_content": 9, "vessel": 10,
    "pelvic_cortex": 11, "pelvic_marrow": 12, "joint_fluid": 13, "cartilage": 14, "acetabular_sclerosis": 15,
    "femoral_cortex": 16, "subchondral_plate": 17, "red_marrow": 18, "yellow_marrow": 19, "edema_marrow": 20,
    "core_fat": 21, "core_blood": 22, "core_fluid": 23, "core_fibrous": 24, "band": 25, "regenerated": 26,
    "cyst": 27,
}
N_TISSUES = max(TISSUES.values()) + 1
CORE_TISSUE = {"A": TISSUES["core_fat"], "B": TISSUES["core_blood"], "C": TISSUES["core_fluid"], "D": TISSUES["core_fibrous"]}
STAGES = ("0", "1", "2", "3A", "3B", "4")
RESPONSES = ("responder", "stable", "progressor")


@dataclass
class Hip:
    """Geometry and disease of one hip (side: 'right' at +x or 'left')."""

    side: str
    centre: np.ndarray
    radius: float
    neck_dir: np.ndarray  # unit vector from head centre towards the neck
    neck_len: float
    neck_radius: float
    gt_centre: np.ndarray
    gt_axes: tuple[float, float, float]
    shaft_top: np.ndarray
    shaft_dir: np.ndarray
    lt_centre: np.ndarray
    joint_mm: float
    cup_axis: np.ndarray  # acetabular opening direction
    rim_h: float
    head_waves: Waves
    serp_waves: Waves
    tex_waves: Waves
    # disease
    stage: str = "0"
    extent: float = 0.0  # fraction of head volume at baseline
    mitchell: str = "none"
    edema: float = 0.0  # fractional T1 drop of head/neck marrow at baseline
    lesion_dir: np.ndarray = field(default_factory=lambda: np.zeros(3))
    band_mm: float = 0.0
    lesion_R: float = 0.0  # radius of the lesion ball around the dome point (set by calibration)
    response: str = "stable"
    tract_a: np.ndarray = field(default_factory=lambda: np.zeros(3))
    tract_b: np.ndarray = field(default_factory=lambda: np.zeros(3))
    regen_radius_mm: float = 0.0
    shrink_frac: float = 0.0
    grow_frac: float = 0.0
    collapse_mm: float = 0.0
    collapse_growth_mm: float = 0.0
    # shape diversity (used by the domain-randomised training data; the default renderer keeps "ball", no cysts)
    lesion_shape: str = "ball"
    foci: tuple = ()  # extra lesion directions (unit vectors) for "multifocal"
    cysts: tuple = ()  # subchondral cysts: ((x, y, z) centre in mm, radius mm), head label, fluid-like signal

    @property
    def s(self) -> float:
        return 1.0 if self.side == "right" else -1.0

    @property
    def diseased(self) -> bool:
        return self.stage != "0"

    @property
    def dome(self) -> np.ndarray:
        return self.centre + self.radius * self.lesion_dir


@dataclass
class Patient:
    """Whole-pelvis phantom parameters."""

    patient_id: str
    body_axes: tuple[float, float]
    body_y: float
    fat_mm: float
    hips: dict[str, Hip]
    bladder_axes: tuple[float, float, float]
    body_waves: Waves
    septa_waves: Waves
    symphysis: np.ndarray


@dataclass(frozen=True)
class State:
    """Disease state of one hip at one timepoint (derived from months and response)."""

    lesion_R: float
    regen_radius: float
    band_mm: float
    band_contrast: float  # 1 = full low-signal band, 0 = invisible
    collapse_mm: float
    edema: float
    regen_signal: float  # fraction of the way from necrotic to marrow signal


def hip_state(h: Hip, months: float) -> State:
    """Disease state of a hip ``months`` after baseline."""
    if not h.diseased:  # a healthy hip may still carry bone-marrow edema (not necrosis)
        return State(0.0, 0.0, 0.0, 0.0, 0.0, float(h.edema), 0.0)
    g = 1.0 - np.exp(-months / 5.0)  # response progress, 0 at baseline
    R, regen, band, contrast, collapse, edema = h.lesion_R, 0.0, h.band_mm, 1.0, h.collapse_mm, h.edema
    if h.response == "responder":
        R = h.lesion_R * (1.0 - h.shrink_frac * g)
        regen = h.regen_radius_mm * g
        band = max(1.5, h.band_mm * (1.0 - 0.3 * g))
        contrast = 1.0 - 0.45 * g
        edema = h.edema * (1.0 - g)
    elif h.response == "progressor":
        R = h.lesion_R * (1.0 + h.grow_frac * g)
        collapse = h.collapse_mm + h.collapse_growth_mm * g
    return State(float(R), float(regen), float(band), float(contrast), float(collapse), float(edema), float(min(1.0, g * 1.3)))
