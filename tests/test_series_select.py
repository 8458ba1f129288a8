"""Series selection on multi-series studies laid out like the three big vendors' (issue 29).

Each study is written as small 16x16 x 4-slice single-frame MR series with pydicom. Series
descriptions, SequenceName, ImageType, ScanOptions and the temporal/contrast tags follow the
vendor patterns listed, with their sources, in docs/series_selection.md. Every rule of
configs/dicom_rules.yaml has a test below that turns the rule off and sees the choice change.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from onfh_seg import config
from onfh_seg.run.batch import run_batch
from onfh_seg.infer.scan_jobs import selection_line
from onfh_seg.infer.inputs import expand_input
from onfh_seg.io.dicom_series import DicomError, SeriesInfo, find_series
from onfh_seg.io.dicom_select import merge_rules, select_series, select_t1_series, series_candidates
from test_batch import base_cfg, factory

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
COR = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)  # coronal: rows run right -> left, columns head -> foot
AX = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
STUDY_UID = "1.2.826.0.1.3680043.8.498.29"


def write_series(root: Path, number: int, description: str, *, tr: float = 500.0, te: float = 12.0,
                 flip: float | None = None, scanning: str | Sequence[str] = "SE", sequence_name: str | None = None,
                 acquisition: str = "2D", slices: int = 4, spacing_mm: float = 15.0,
                 orientation: Sequence[float] = COR, image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "M", "ND"),
                 scan_options: Sequence[str] | str = "", echo_train: int | None = None,
                 protocol: str | None = None, position: Sequence[float] = (-200.0, 0.0, 100.0),
                 **tags: Any) -> SeriesInfo:
    """A 16x16 x ``slices`` MR series under ``root/s<number>``; extra DICOM keywords in ``tags``."""
    folder = root / f"s{number:03d}"
    folder.mkdir(parents=True, exist_ok=True)
    series_uid, frame_uid = generate_uid(), generate_uid()
    normal = np.cross(orientation[:3], orientation[3:])
    for k in range(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MR_IMAGE_STORAGE, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MR_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = STUDY_UID, series_uid, frame_uid
        ds.Modality, ds.PatientID, ds.PatientName, ds.StudyDate = "MR", "P01", "Test^Hip", "20260101"
        ds.BodyPartExamined = "HIP"
        ds.SeriesNumber, ds.InstanceNumber = number, k + 1
        ds.SeriesDescription, ds.ProtocolName = description, protocol if protocol is not None else description
        ds.ImageType = list(image_type)
        ds.ScanningSequence = list(scanning) if not isinstance(scanning, str) else scanning
        ds.ScanOptions = list(scan_options) if not isinstance(scan_options, str) else scan_options
        ds.MRAcquisitionType, ds.RepetitionTime, ds.EchoTime = acquisition, tr, te
        if flip is not None:
            ds.FlipAngle = flip
        if sequence_name is not None:
            ds.SequenceName = sequence_name
        if echo_train is not None:
            ds.EchoTrainLength = echo_train
        for keyword, value in tags.items():
            setattr(ds, keyword, value(k) if callable(value) else value)
        ds.ImageOrientationPatient = list(orientation)
        ds.ImagePositionPatient = [float(v) for v in np.asarray(position) + 5.0 * k * normal]
        ds.PixelSpacing, ds.SliceThickness = [spacing_mm, spacing_mm], 5.0
        ds.Rows = ds.Columns = 16
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = (np.arange(256, dtype=np.uint16).reshape(16, 16) + 100 * k + number).tobytes()
        ds.save_as(folder / f"{k:03d}.dcm", enforce_file_format=True)
    [info] = [s for s in find_series(folder)]
    return info


def chosen(root: Path, rules: dict | None = None, wanted: str = "auto") -> int:
    """SeriesNumber the selection picks in the study under ``root``."""
    return select_series(find_series(root), rules, wanted).chosen.series_number


# ---------------------------------------------------------------- the study of the issue (Siemens 3T pelvis)


def siemens_vfa_twist_study(root: Path) -> Path:
    """The 8-series study of issue 29: T2 HASTE/TSE, a variable-flip-angle VIBE set and a TWIST frame."""
    write_series(root, 1, "t2_localizer", tr=1800, te=92, flip=150, sequence_name="*h2d1_320")
    write_series(root, 5, "t2_tse_tra", tr=4000, te=101, flip=150, sequence_name="*tse2d1_15", orientation=AX)
    write_series(root, 6, "t2_tse_cor", tr=4000, te=101, flip=150, sequence_name="*tse2d1_15")
    vibe = {"tr": 3.85, "te": 1.42, "scanning": "GR", "sequence_name": "*fl3d1", "acquisition": "3D"}
    write_series(root, 23, "fl3d_vibe_pre_flip_2deg_PD", flip=2, **vibe)
    write_series(root, 24, "fl3d_vibe_pre_flip_5deg", flip=5, **vibe)
    write_series(root, 25, "fl3d_vibe_pre_flip_10deg", flip=10, **vibe)
    write_series(root, 26, "fl3d_vibe_pre_flip_20deg", flip=20, **vibe)
    write_series(root, 27, "Twist_dynamic_TT=8.0s", flip=12, **{**vibe, "sequence_name": "*fldyn3d1"},
                 TriggerTime=8000.0)
    return root


def test_issue_study_chooses_the_pre_contrast_t1_and_says_why(tmp_path: Path) -> None:
    selection = select_series(find_series(siemens_vfa_twist_study(tmp_path)))
    assert selection.chosen.series_number == 26
    assert selection.summary.startswith("series 26 'fl3d_vibe_pre_flip_20deg' (T1 3D GRE, pre-contrast); not 25 (")
    assert "flip angle 10 < 20 of #26" in selection.summary
    assert selection.summary.endswith("; dynamic: 27")  # the series chosen before this rule existed
    reason = selection.reason
    assert "#27 'Twist_dynamic_TT=8.0s' dynamic:" in reason
    assert "#23 'fl3d_vibe_pre_flip_2deg_PD' excluded by /(^|[^a-z])pd([^a-z]|$)/" in reason
    assert "#24 'fl3d_vibe_pre_flip_5deg' not T1: gradient echo flip angle 5 deg < 6" in reason
    assert "#5 't2_tse_tra' excluded by /t2/" in reason


def test_console_prints_choice_and_runner_up_per_study(tmp_path: Path, caplog) -> None:
    study = siemens_vfa_twist_study(tmp_path / "study")
    [job] = expand_input(study)
    assert selection_line(job) == f"P01: {job.dicom['selection_summary']}"
    with caplog.at_level(logging.INFO, logger="onfh_seg.run.batch"):
        run_batch(base_cfg(study, tmp_path / "out", tmp_path), segmenter_factory=factory(tmp_path))
    assert any(r.getMessage().startswith("P01: series 26 'fl3d_vibe_pre_flip_20deg' (T1 3D GRE, pre-contrast); not 25")
               for r in caplog.records)
    meas = json.loads((tmp_path / "out" / "26_fl3d_vibe_pre_flip_20deg_measurements.json").read_text())
    assert meas["dicom"]["series_number"] == 26 and "dynamic" in meas["dicom"]["selection_reason"]


# ---------------------------------------------------------------- vendor study layouts


def test_siemens_hip_protocol_with_dixon_and_post_contrast(tmp_path: Path) -> None:
    write_series(tmp_path, 1, "localizer", tr=8.6, te=4.0, flip=20, scanning="GR", sequence_name="*fl2d1")
    write_series(tmp_path, 2, "t1_tse_cor", tr=550, te=11, flip=150, sequence_name="*tse2d1_3", echo_train=3,
                 slices=5)
    write_series(tmp_path, 3, "t2_tse_fs_cor", tr=3800, te=85, sequence_name="*tse2d1_15", scan_options="FS")
    write_series(tmp_path, 4, "pd_tse_fs_cor", tr=3000, te=30, sequence_name="*tse2d1_9", scan_options="FS")
    for number, suffix, part in ((5, "in", "IN_PHASE"), (6, "opp", "OPP_PHASE"), (7, "F", "FAT"), (8, "W", "WATER")):
        write_series(tmp_path, number, f"t1_vibe_dixon_cor_{suffix}", tr=4.0, te=2.4, flip=9, scanning="GR",
                     sequence_name="*fl3d2", acquisition="3D", image_type=("DERIVED", "PRIMARY", "DIXON", part))
    write_series(tmp_path, 9, "t1_vibe_fs_cor_post", tr=4.0, te=1.5, flip=10, scanning="GR", acquisition="3D",
                 scan_options="FS", ContrastBolusAgent="Gadovist", slices=6)
    write_series(tmp_path, 10, "t1_vibe_fs_cor_post_SUB", tr=4.0, te=1.5, flip=10, scanning="GR",
                 acquisition="3D", image_type=("DERIVED", "PRIMARY", "SUBTRACTION", "ND"), slices=6)
    selection = select_series(find_series(tmp_path))
    assert selection.chosen.series_number == 2
    assert selection.summary.startswith("series 2 't1_tse_cor' (T1 2D TSE, pre-contrast); not 5 ")
    assert "#9 't1_vibe_fs_cor_post' post-contrast: ContrastBolusAgent 'Gadovist'" in selection.reason
    assert "#10 't1_vibe_fs_cor_post_SUB' subtraction: ImageType SUBTRACTION" in selection.reason
    assert "#6 't1_vibe_dixon_cor_opp' Dixon out-of-phase; in-phase preferred" in selection.reason


def ge_study(root: Path) -> Path:
    """GE: 3-Plane Loc, Cor T1 FSE (fat-sat and not), STIR, LAVA-Flex components, DISCO phases, T1 +C."""
    write_series(root, 1, "3-Plane Loc SSFSE", tr=1500, te=80, sequence_name="ssfse")
    write_series(root, 2, "Cor T1 FSE", tr=600, te=9, echo_train=3, scan_options=["FAST_GEMS", "NPW_GEMS"])
    write_series(root, 3, "Cor T1 FSE FS", tr=600, te=9, echo_train=3, slices=6,
                 scan_options=["SAT_GEMS", "FAST_GEMS", "FS"])
    write_series(root, 4, "Cor STIR", tr=4500, te=40)
    for number, prefix in ((5, "WATER"), (6, "FAT"), (7, "InPhase"), (8, "OutPhase")):
        write_series(root, number, f"{prefix}: Cor LAVA-Flex", tr=6.5, te=2.2, flip=12, scanning="GR",
                     acquisition="3D", scan_options=["FAST_GEMS", "EDR_GEMS"], slices=3)
    for phase in range(1, 3):  # DISCO: one series per phase here, TemporalPositionIdentifier counts the phases
        write_series(root, 8 + phase, f"Ax DISCO phase {phase}", tr=3.9, te=1.7, flip=12, scanning="GR",
                     acquisition="3D", orientation=AX, TemporalPositionIdentifier=phase,
                     NumberOfTemporalPositions=8, slices=6)
    write_series(root, 12, "Cor T1 FSE +C", tr=600, te=9, echo_train=3, slices=6)
    return root


def test_ge_study_with_lava_flex_disco_and_plus_c(tmp_path: Path) -> None:
    selection = select_series(find_series(ge_study(tmp_path)))
    assert selection.chosen.series_number == 2
    # without #2 the rules would take the LAVA-Flex in-phase image (not fat-suppressed, unlike #3)
    assert selection.summary == ("series 2 'Cor T1 FSE' (T1 2D TSE, pre-contrast); "
                                 "not 7 (fewer sequence preferences (2 < 3)); dynamic: 9, 10; post-contrast: 12")
    assert "#3 'Cor T1 FSE FS' ranked lower: fat-suppressed" in selection.reason
    reason = selection.reason
    assert "#1 '3-Plane Loc SSFSE' excluded by /localizer" in reason
    assert "#9 'Ax DISCO phase 1' dynamic:" in reason and "#12 'Cor T1 FSE +C' post-contrast:" in reason
    assert "#5 'WATER: Cor LAVA-Flex' Dixon water; in-phase preferred" in reason
    assert "#7 'InPhase: Cor LAVA-Flex' ranked lower" in reason


def test_ge_lava_flex_in_phase_when_no_fse(tmp_path: Path) -> None:
    for number, prefix in ((5, "WATER"), (6, "FAT"), (7, "InPhase"), (8, "OutPhase")):
        write_series(tmp_path, number, f"{prefix}: Cor LAVA-Flex", tr=6.5, te=2.2, flip=12, scanning="GR",
                     acquisition="3D")
    selection = select_series(find_series(tmp_path))
    assert selection.chosen.series_number == 7
    assert "Dixon in-phase" in selection.summary


def test_philips_study_with_mdixon_image_types_and_dynamic_thrive(tmp_path: Path) -> None:
    write_series(tmp_path, 101, "Survey", tr=11, te=4.6, flip=15, scanning="GR")
    write_series(tmp_path, 201, "T2W_TSE_COR", tr=3000, te=100)
    write_series(tmp_path, 301, "T1W_TSE_COR", tr=500, te=8, protocol="T1W_TSE_COR", slices=3,
                 TemporalPositionIdentifier=1, NumberOfTemporalPositions=1)  # Philips fills these on static scans
    for number, part in ((401, "W"), (402, "F"), (403, "IP"), (404, "OP")):
        write_series(tmp_path, number, "T1_mDIXON_COR", tr=5.5, te=1.8, flip=10, scanning="GR", acquisition="3D",
                     image_type=("DERIVED", "PRIMARY", part, part, "DERIVED"), slices=5)
    write_series(tmp_path, 501, "DCE_THRIVE", tr=4.2, te=2.0, flip=10, scanning="GR", acquisition="3D", slices=6)
    write_series(tmp_path, 601, "T1W_THRIVE_SPAIR_post", tr=4.2, te=2.0, flip=10, scanning="GR",
                 acquisition="3D", slices=6)
    selection = select_series(find_series(tmp_path))
    assert selection.chosen.series_number == 301  # spin echo before the mDixon gradient echo, despite fewer slices
    assert selection.summary.endswith("not 403 (fewer sequence preferences (2 < 3)); dynamic: 501; post-contrast: 601")
    reason = selection.reason
    assert "#401 'T1_mDIXON_COR' Dixon water; in-phase preferred" in reason
    assert "#501 'DCE_THRIVE' dynamic:" in reason and "#601 'T1W_THRIVE_SPAIR_post' post-contrast:" in reason


def test_t1_fse_with_and_without_fat_suppression(tmp_path: Path) -> None:
    write_series(tmp_path, 3, "t1_tse_cor_fs", tr=600, te=10, scan_options="FS", slices=6)
    write_series(tmp_path, 4, "t1_tse_cor", tr=600, te=10)
    selection = select_series(find_series(tmp_path))
    assert selection.chosen.series_number == 4 and selection.summary.endswith("not 3 (fat-suppressed)")


def test_only_post_contrast_and_subtraction_is_an_error_naming_them(tmp_path: Path) -> None:
    write_series(tmp_path, 7, "t1_vibe_fs_cor_post", tr=4.0, te=1.5, flip=10, scanning="GR",
                 ContrastBolusAgent="Dotarem")
    write_series(tmp_path, 8, "t1_vibe_fs_cor_SUB", tr=4.0, te=1.5, flip=10, scanning="GR")
    with pytest.raises(DicomError, match="no T1 series .*post-contrast: ContrastBolusAgent 'Dotarem'.*subtraction"):
        select_t1_series(find_series(tmp_path))
    assert chosen(tmp_path, wanted="7") == 7  # still measurable when asked for


# ---------------------------------------------------------------- every rule changes the choice


def rule_study(tmp_path: Path, other: dict) -> Path:
    """A plain T1 TSE (#3) and a later series (#4, more slices) that only ``other`` sets apart."""
    write_series(tmp_path, 3, "t1_tse_cor", tr=600, te=10)
    spec = {"description": "t1_tse_cor_b", "tr": 600, "te": 10, "slices": 6, **other}
    write_series(tmp_path, 4, spec.pop("description"), **spec)
    return tmp_path


@pytest.mark.parametrize(("other", "rule_off"), [
    ({"Modality": "OT"}, {"modalities": []}),
    ({"description": "t1_tse_cor_dyn"}, {"dynamic_patterns": []}),
    ({"sequence_name": "*fldyn3d1"}, {"dynamic_patterns": []}),
    ({"image_type": ("ORIGINAL", "PRIMARY", "DYNAMIC", "NONE")}, {"dynamic_image_types": []}),
    ({"NumberOfTemporalPositions": 6, "TemporalPositionIdentifier": 2}, {"dynamic_min_temporal_positions": None}),
    ({"TriggerTime": 12000.0}, {"dynamic_min_trigger_time_ms": None}),
    ({"ContrastBolusAgent": "Gadovist 1.0"}, {"contrast_agent_absent": ".*"}),
    ({"description": "Cor T1 FSE +C"}, {"contrast_patterns": []}),
    ({"description": "t1_tse_cor_post"}, {"contrast_patterns": []}),
    ({"image_type": ("ORIGINAL", "PRIMARY", "POST_CONTRAST", "NONE")}, {"contrast_image_types": []}),
    ({"image_type": ("DERIVED", "PRIMARY", "SUBTRACTION")}, {"subtraction_image_types": []}),
    ({"description": "t1_tse_cor_SUB"}, {"subtraction_patterns": []}),
    ({"description": "pd_t1_tse_cor"}, {"exclude_patterns": ["t2"]}),
    ({"description": "t1_tse_cor_fs"}, {"fat_suppressed_patterns": []}),
    ({"scan_options": "FS"}, {"fat_suppressed_scan_options": []}),
    ({"spacing_mm": 10.0}, {"both_hips_min_width_mm": None}),
    ({"tr": 6.0, "te": 2.0, "scanning": "GR", "flip": 3.0},
     {"min_gre_flip_angle_deg": None, "prefer_scanning_sequence": None}),
])
def test_rule_changes_the_choice(tmp_path: Path, other: dict, rule_off: dict) -> None:
    study = rule_study(tmp_path, other)
    assert chosen(study) == 3, other
    assert chosen(study, rule_off) == 4, rule_off


def test_contrast_agent_none_is_pre_contrast(tmp_path: Path) -> None:
    study = rule_study(tmp_path, {"ContrastBolusAgent": "NONE"})
    assert chosen(study) == 4
    assert chosen(study, {"contrast_agent_absent": ""}) == 3


def test_highest_flip_angle_of_a_variable_flip_angle_set(tmp_path: Path) -> None:
    vibe = {"tr": 3.85, "te": 1.42, "scanning": "GR", "acquisition": "3D"}
    write_series(tmp_path, 24, "vfa_a", flip=20, **vibe)
    write_series(tmp_path, 25, "vfa_b", flip=10, **vibe)
    write_series(tmp_path, 26, "vfa_c", flip=8, **vibe)
    assert chosen(tmp_path) == 24
    assert chosen(tmp_path, {"prefer_highest_flip_angle": False}) == 26


UNRECOGNISED = {"in-phase": {}, "water": {}, "out-of-phase": {}, "fat": {}}  # components nothing matches


@pytest.mark.parametrize(("rules", "expected"), [
    (None, 10), ({"dixon_preference": ["water", "in-phase", "out-of-phase", "fat"]}, 12),
    ({"dixon_preference": []}, 13), ({"dixon_components": UNRECOGNISED}, 13)])
def test_dixon_preference_is_data(tmp_path: Path, rules: dict | None, expected: int) -> None:
    for number, suffix in ((10, "in"), (11, "opp"), (12, "W"), (13, "F")):
        write_series(tmp_path, number, f"t1_vibe_dixon_cor_{suffix}", tr=4.0, te=2.4, flip=9, scanning="GR",
                     acquisition="3D")
    assert chosen(tmp_path, rules) == expected


def test_later_repeat_of_an_identical_series(tmp_path: Path) -> None:
    write_series(tmp_path, 5, "t1_tse_cor", tr=600, te=10, slices=5)
    write_series(tmp_path, 8, "t1_tse_cor", tr=600, te=10, slices=4)  # repeated after motion
    assert chosen(tmp_path) == 8
    assert chosen(tmp_path, {"prefer_later_repeat": False}) == 5


def test_dixon_components_with_one_name_are_not_repeats(tmp_path: Path) -> None:
    for number, part in ((401, "IP"), (402, "W")):
        write_series(tmp_path, number, "T1_mDIXON_COR", tr=5.5, te=1.8, flip=10, scanning="GR",
                     image_type=("DERIVED", "PRIMARY", part, part, "DERIVED"))
    assert chosen(tmp_path) == 401


def test_rules_file_values_are_validated(tmp_path: Path) -> None:
    assert merge_rules(None)["dixon_preference"][0] == "in-phase"
    with pytest.raises(DicomError, match="unknown components"):
        merge_rules({"dixon_preference": ["inphase"]})
    with pytest.raises(DicomError, match="must be true or false"):
        merge_rules({"prefer_later_repeat": "yes"})
    with pytest.raises(DicomError, match="must be a number"):
        merge_rules({"both_hips_min_width_mm": "wide"})


# ---------------------------------------------------------------- series= : forced choice and all-t1


def test_forced_series_by_number_and_uid(tmp_path: Path) -> None:
    study = siemens_vfa_twist_study(tmp_path)
    selection = select_series(find_series(study), None, "27")
    assert selection.chosen.series_number == 27
    assert selection.summary == ("series 27 'Twist_dynamic_TT=8.0s' (T1 3D GRE, dynamic), forced by series=27; "
                                 "not 26 (the rules' choice)")
    assert "forced by series=27 (the rules choose #26)" in selection.reason
    uid = next(s.series_uid for s in find_series(study) if s.series_number == 6)
    assert chosen(study, wanted=uid) == 6


def test_forced_series_not_in_study_is_one_line(tmp_path: Path) -> None:
    study = siemens_vfa_twist_study(tmp_path / "study")
    [job] = expand_input(study, series="99")
    assert job.error == ("series=99 is not in the study; series present: 1 't2_localizer', 5 't2_tse_tra', "
                         "6 't2_tse_cor', 23 'fl3d_vibe_pre_flip_2deg_PD', 24 'fl3d_vibe_pre_flip_5deg', "
                         "25 'fl3d_vibe_pre_flip_10deg', 26 'fl3d_vibe_pre_flip_20deg', 27 'Twist_dynamic_TT=8.0s'")


def test_series_setting_is_validated() -> None:
    assert config.settings("infer", {"input": "x", "out_dir": "y", "series": 26})["series"] == "26"
    assert config.settings("infer", {"input": "x", "out_dir": "y"})["series"] == "auto"
    with pytest.raises(config.ConfigError, match="series='first' is not allowed: expected auto, all-t1"):
        config.settings("infer", {"input": "x", "out_dir": "y", "series": "first"})


def test_all_t1_measures_every_candidate_under_its_own_name(tmp_path: Path) -> None:
    study = siemens_vfa_twist_study(tmp_path / "study")
    assert [s.series_number for s in series_candidates(find_series(study))] == [25, 26]
    jobs = expand_input(study, series="all-t1")
    assert [j.name for j in jobs] == ["25_fl3d_vibe_pre_flip_10deg", "26_fl3d_vibe_pre_flip_20deg"]
    assert "the rules choose #26" in jobs[0].dicom["selection_reason"]
    summary = run_batch(base_cfg(study, tmp_path / "out", tmp_path, series="all-t1"),
                        segmenter_factory=factory(tmp_path))
    assert sorted(r["name"] for r in summary.results) == [j.name for j in jobs]
    for job in jobs:
        meas = json.loads((tmp_path / "out" / f"{job.name}_measurements.json").read_text())
        assert meas["dicom"]["series_number"] == job.series.series_number


def test_forced_number_shared_by_two_series_asks_for_a_uid(tmp_path: Path) -> None:
    first = write_series(tmp_path / "a", 5, "t1_tse_cor")
    second = write_series(tmp_path / "b", 5, "t1_tse_cor_mpr")  # e.g. a reformat saved under the same number
    with pytest.raises(DicomError, match="series=5 matches 2 series; give a SeriesInstanceUID"):
        select_series(find_series(tmp_path), None, "5")
    assert select_series(find_series(tmp_path), None, second.series_uid).chosen.series_uid == second.series_uid
    assert first.series_uid != second.series_uid


def test_dixon_water_by_image_type_or_dixon_name(tmp_path: Path) -> None:
    """``dixon_water`` (the fat_suppressed QC flag's second source): a Dixon-named series whose ImageType or name
    says water; not another component, and not a non-Dixon name with a stray "w" token."""
    from onfh_seg.io.dicom_rank import dixon_water
    from onfh_seg.io.dicom_rules import merge_rules

    write_series(tmp_path, 5, "WATER: Cor LAVA-Flex", tr=6.5, te=2.2, flip=12, scanning="GR", acquisition="3D")
    write_series(tmp_path, 7, "InPhase: Cor LAVA-Flex", tr=6.5, te=2.2, flip=12, scanning="GR", acquisition="3D")
    write_series(tmp_path, 401, "T1_mDIXON_COR", tr=5.5, te=1.8, flip=10, scanning="GR", acquisition="3D",
                 image_type=("DERIVED", "PRIMARY", "W", "W", "DERIVED"))
    write_series(tmp_path, 403, "T1_mDIXON_COR", tr=5.5, te=1.8, flip=10, scanning="GR", acquisition="3D",
                 image_type=("DERIVED", "PRIMARY", "IP", "IP", "DERIVED"))
    write_series(tmp_path, 9, "t1_tse_cor_w", tr=600, te=10)
    rules = merge_rules(None)
    water = {s.series_number: dixon_water(s, rules) for s in find_series(tmp_path)}
    assert water == {5: True, 7: False, 401: True, 403: False, 9: False}
