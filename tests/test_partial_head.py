"""Heads at the edge of the field of view: segmented where visible, flagged ``partial_head``, no class."""

from __future__ import annotations

from test_anatomy_gate import AFFINE, labels_with, mr_image

from onfh_seg.infer.anatomy import check_anatomy
from onfh_seg.infer.gate import measure_gated
from onfh_seg.measure import measurements_row


def test_head_cut_by_the_field_of_view_is_partial_not_implausible() -> None:
    # the grid spans x -150..148 mm: a 22 mm head centred at x=-138 loses a third of its width
    labels = labels_with({"centre": (90, 0, 0), "lesion": True}, {"centre": (-138, 0, 0), "lesion": True})
    result = check_anatomy(labels, AFFINE)
    assert result.passed
    by_x = sorted(result.heads, key=lambda h: h.component_centre_ras_mm[0])
    assert by_x[0].partial and by_x[0].plausible and not by_x[1].partial
    assert abs(by_x[0].radius_fit_mm - 22.0) < 2.0  # the cut face is left out of the sphere fit


def test_partial_head_is_measured_without_classes_and_untrusted() -> None:
    labels = labels_with({"centre": (90, 0, 0), "lesion": True}, {"centre": (-138, 0, 0), "lesion": True})
    gated = measure_gated(mr_image(), labels, AFFINE, mean_confidence=0.9)
    hips = {h["side"]: h for h in gated.hips}
    assert set(hips) == {"right", "left"}
    left, right = hips["left"], hips["right"]
    assert left["qc_flags"] == ["partial_head"] and left["trusted"] is False
    assert left["arco_extent"] == "not_assessed" and left["jic_type"] == "not_assessed"
    assert left["percent_head_involved"] is None and left["lesion_volume_ml"] > 0  # segmented where visible
    assert right["qc_flags"] == [] and right["trusted"] is True and right["arco_extent"] in ("A", "B", "C")
    assert "partial_head" in gated.flags and "implausible_head_volume" not in gated.flags
    row = measurements_row("s", "s.nii.gz", left, gated.flags, "v")
    assert row["hip_qc_flags"] == "partial_head" and row["trusted"] == "false"


def test_fully_visible_heads_are_not_partial() -> None:
    labels = labels_with({"centre": (90, 0, 0), "lesion": True}, {"centre": (-90, 0, 0)})
    gated = measure_gated(mr_image(), labels, AFFINE, mean_confidence=0.9)
    assert len(gated.hips) == 2 and all(h["qc_flags"] == [] and h["trusted"] for h in gated.hips)
