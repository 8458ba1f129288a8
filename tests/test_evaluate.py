"""onfh-eval: per-hip measures, regenerated fraction, several cohorts side by side (with stand-in segmenters)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from omegaconf import OmegaConf

from conftest import ROOT, synth_cfg
from onfh_seg import evaluate as E
from onfh_seg import labels as L
from onfh_seg.infer.engine import SegResult
from onfh_seg.io.manifest import read_csv_rows, read_manifest, resolve, write_manifest

FAST_B = {"max_matrix": 64, "fine_mm": 1.3, "coarse_mm": 4.0, "slice_mm": [5.0, 6.0], "iso_mm": [2.0, 2.5],
          "protocols": {"oblique_2d": 1.0, "iso_3d": 0.0}, "small_fov_fraction": 0.0}


@pytest.fixture(scope="module")
def tiny_b(tmp_path_factory) -> Path:
    """One style-B patient (a diseased responder hip and a healthy hip), baseline and a follow-up."""
    from onfh_seg.synth.cohort import generate_cohort

    cfg = synth_cfg(n_patients=1, seed=4, months=[0, 9], style="b", style_b=FAST_B,
                    disease={"stages": {"1": 0, "2": 0, "3A": 1, "3B": 0, "4": 0}, "extent": [0.2, 0.3],
                             "responses": {"responder": 1, "stable": 0, "progressor": 0}})
    return generate_cohort(cfg, tmp_path_factory.mktemp("tiny_b"))


def _key(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image, np.float32).tobytes()).hexdigest()


class StandIn:
    """Returns the true labels of a known image, passed through ``edit``."""

    def __init__(self, manifests: list[Path], edit=lambda lab: lab):
        self.truth = {}
        for m in manifests:
            for r in read_manifest(m):
                if r["image"]:
                    img = np.asarray(nib.load(str(resolve(m, r["image"]))).dataobj, np.float32)
                    self.truth[_key(img)] = np.asarray(nib.load(str(resolve(m, r["labels"]))).dataobj).astype(np.uint8)
        self.edit = edit

    def segment(self, image: np.ndarray, affine: np.ndarray) -> SegResult:
        lab = self.edit(self.truth[_key(image)].copy())
        return SegResult(labels=lab, mean_confidence=1.0, head_centres_ras=[], timings={"total": 0.0})


def _use(monkeypatch, seg) -> None:
    monkeypatch.setattr(E, "make_segmenter", lambda *a, **k: seg)


def test_oracle_scores_perfectly(tiny_b, monkeypatch, tmp_path):
    _use(monkeypatch, StandIn([tiny_b]))
    s, scans, hips = E.evaluate(tiny_b, ROOT / "models", workers=1, progress=False, pred_dir=tmp_path / "pred")
    assert s["n_scans"] == 2 and s["n_diseased_hips"] == 2 and s["n_healthy_hips"] == 2
    assert s["lesion_dice_median_hips"] == 1.0 and s["head_dice_median_hips"] == 1.0
    assert s["median_abs_lesion_volume_error_pct"] == 0.0
    assert s["arco_agreement_pct"] >= 50.0  # healthy hips agree; the true class comes from the continuous extent
    assert s["healthy_hips_with_false_necrosis_gt_0_5ml"] == 0 and s["missed_hips_fully_visible_head"] == 0
    assert s["n_hips_fully_visible_head"] == 4
    assert s["n_regenerated_pairs"] == 1 and s["regenerated_fraction_error_max_pts"] == 0.0
    follow = [h for h in hips if "regen_frac_true" in h]
    assert len(follow) == 1 and follow[0]["regen_frac_true"] > 0.0  # a responder regains marrow
    assert len(list((tmp_path / "pred").glob("*_seg.nii.gz"))) == 2


def test_errors_are_counted(tiny_b, monkeypatch, tmp_path):
    def no_lesion(lab):
        lab[np.isin(lab, L.LESION_LABELS)] = L.HEAD
        return lab

    _use(monkeypatch, StandIn([tiny_b], no_lesion))
    s, _, _ = E.evaluate(tiny_b, ROOT / "models", workers=1, progress=False, pred_dir=tmp_path / "p1")
    assert s["lesion_dice_median_hips"] == 0.0 and s["median_abs_lesion_volume_error_pct"] == pytest.approx(100.0)
    assert s["worst_lesion_volume_error_pct"] == pytest.approx(-100.0) and s["head_dice_median_hips"] == 1.0
    assert s["regenerated_fraction_error_max_pts"] > 10  # no predicted baseline lesion: the whole true fraction
    assert s["arco_agreement_pct"] == 50.0  # healthy hips still agree

    def nothing(lab):
        return np.zeros_like(lab)

    _use(monkeypatch, StandIn([tiny_b], nothing))
    s, _, hips = E.evaluate(tiny_b, ROOT / "models", workers=1, progress=False)
    assert s["missed_hips_fully_visible_head"] == 4 and s["hips_found_pct"] == 0.0
    assert "n_regenerated_pairs" not in s  # no saved predictions


def test_false_lesion_on_healthy_hip(tiny_b, monkeypatch):
    t = json.loads(resolve(tiny_b, read_manifest(tiny_b)[0]["truth"]).read_text())
    healthy = [h for h in t["hips"] if h["stage"] == "0"][0]
    aff = nib.load(str(resolve(tiny_b, read_manifest(tiny_b)[0]["labels"]))).affine

    def fake_lesion(lab):
        if lab.shape != tuple(t["acquisition"]["shape"]):
            return lab
        ball = E.ball_mask(lab.shape, aff, np.array(healthy["head_centre_ras_mm"]), 9.0)
        lab[ball & (lab == L.HEAD)] = L.NECROTIC
        return lab

    _use(monkeypatch, StandIn([tiny_b], fake_lesion))
    s, _, _ = E.evaluate(tiny_b, ROOT / "models", workers=1, progress=False)
    assert s["healthy_hips_with_false_necrosis_gt_0_5ml"] >= 1 and s["worst_false_lesion_ml_healthy"] > 0.5


def test_head_fully_visible():
    aff = np.diag([1.0, 1.0, 4.0, 1.0])
    assert E.head_fully_visible([50, 50, 100], 20, aff, (100, 100, 50))
    assert not E.head_fully_visible([15, 50, 100], 20, aff, (100, 100, 50))
    assert not E.head_fully_visible([50, 50, 10], 20, aff, (100, 100, 50))


def test_regenerated_fraction_with_a_transform():
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    base = np.zeros((40, 40, 40), np.uint8)
    base[10:30, 10:30, 10:30] = L.HEAD
    base[10:30, 10:30, 20:30] = L.NECROTIC
    now = np.zeros_like(base)  # the same hip shifted by +3 voxels in x, the upper half of the lesion healed
    now[13:33, 10:30, 10:30] = L.HEAD
    now[13:33, 10:30, 25:30] = L.NECROTIC
    to_base = np.eye(4)
    to_base[0, 3] = -3.0
    f = E.regenerated_fraction(base, aff, now, aff, to_base, [22, 19.5, 19.5], 30.0)
    assert f == pytest.approx(0.5)
    assert E.regenerated_fraction(np.zeros_like(base), aff, now, aff, to_base, [22, 19.5, 19.5], 30.0) is None


def test_cli_table_with_several_cohorts(tiny_b, monkeypatch, tmp_path, capsys):
    from onfh_seg.cli.evaluate import run

    _use(monkeypatch, StandIn([tiny_b]))
    cfg = OmegaConf.load(ROOT / "configs" / "eval.yaml")
    cfg.pop("defaults")
    cfg.pop("hydra")
    cfg.out_dir = str(tmp_path / "eval")
    cfg.workers = 1
    second = tmp_path / "second" / "manifest.csv"  # the same scans through a manifest with absolute paths
    rows = read_manifest(tiny_b)
    for r in rows:
        for k in ("image", "labels", "regenerated", "truth"):
            r[k] = str(resolve(tiny_b, r[k])) if r.get(k) else ""
    write_manifest(second, rows, list(rows[0]))
    cfg.cohorts.in_style = [str(tiny_b), str(second)]  # a list of manifests is one cohort
    cfg.cohorts.out_of_style_b = str(tiny_b)
    assert run(cfg) == 0
    out = capsys.readouterr().out
    header = [line for line in out.splitlines() if line.startswith("measure")][0]
    assert "in_style" in header and "out_of_style_b" in header and "out_of_style_a" not in header
    assert any(line.startswith("lesion_dice_small_median_hips") for line in out.splitlines())
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert set(summary["cohorts"]) == {"in_style", "out_of_style_b"} and summary["model_version"]
    assert summary["cohorts"]["in_style"]["n_scans"] == 4 and summary["cohorts"]["out_of_style_b"]["n_scans"] == 2
    for name in ("in_style", "out_of_style_b"):
        assert (tmp_path / "eval" / name / "hips.csv").is_file() and (tmp_path / "eval" / name / "scans.csv").is_file()
    scans = read_csv_rows(tmp_path / "eval" / "in_style" / "scans.csv", required=("scan",))
    assert sorted(r["scan"] for r in scans) == sorted(f"{d}/P001_m{m}.nii.gz" for d in (tiny_b.parent.name, "second")
                                                      for m in ("00", "09"))
    assert len(list((tmp_path / "eval" / "in_style" / "pred").glob("*_seg.nii.gz"))) == 4
    with pytest.raises(ValueError, match="twice"):
        E.cohort_rows([tiny_b, tiny_b])
    assert E.manifest_tags([Path("a/v/m.csv"), Path("b/v/m.csv")]) == {Path("a/v/m.csv"): "0_v", Path("b/v/m.csv"): "1_v"}


def test_cli_rejects_bad_cohort(tmp_path):
    with pytest.raises(ValueError, match="cohorts.x"):
        E.named_cohorts(None, {"x": [1, 2]})
    assert E.named_cohorts("a.csv", {"b": None, "c": ["x.csv"]}) == {"cohort": ["a.csv"], "c": ["x.csv"]}
    with pytest.raises(FileNotFoundError):
        E.evaluate_cohorts({"x": str(tmp_path / "missing.csv")}, ROOT / "models", tmp_path)


def test_val_failure_modes_counts_healthy_cyst_crops_apart() -> None:
    """scripts/val_failure_modes.py: a healthy crop with a subchondral cyst is scored under ``healthy`` and again
    under ``healthy cyst``; false lesions over 0.5 mL are counted per rendering; lesion groups get Dice/error."""
    import importlib.util

    from onfh_seg.synth.phantom import TISSUES

    spec = importlib.util.spec_from_file_location("val_failure_modes", ROOT / "scripts" / "val_failure_modes.py")
    vfm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vfm)
    tissue = np.full((10, 10, 10), TISSUES["yellow_marrow"], np.uint8)
    with_cyst = tissue.copy()
    with_cyst[2:4, 2:4, 2:4] = TISSUES["cyst"]
    healthy = np.ones((10, 10, 10), np.uint8)  # head only
    assert vfm.group(tissue, healthy) == "healthy"
    assert vfm.healthy_cyst("healthy", with_cyst) and not vfm.healthy_cyst("healthy", tissue)
    assert not vfm.healthy_cyst("small", with_cyst)
    diseased = healthy.copy()
    diseased[3:8, 3:8, 3:8] = 2  # 125 voxels of 1.331 uL: 0.17 mL, a small lesion
    assert vfm.group(tissue, diseased) == "small"
    false = np.zeros((10, 10, 10), np.int64)
    false[:, :, :5] = 2  # 500 voxels: 0.67 mL of false lesion
    images = {"T1": np.zeros((10, 10, 10), np.float32), "GRE opposed": np.ones((10, 10, 10), np.float32)}
    crops = [("healthy", healthy, images, True), ("healthy", healthy, images, False),
             ("small", diseased, images, False)]
    res = vfm.score_crops(crops, lambda x: false if x.mean() > 0.5 else diseased)  # GRE: false lesion / exact
    assert len(res[("healthy", "GRE opposed")]) == 2 and len(res[("healthy cyst", "GRE opposed")]) == 1
    assert res[("small", "T1")][0][:2] == (1.0, 0.0)
    lines = dict((ln[:12].strip() + "|" + ln[13:39].strip(), ln) for ln in vfm.report_lines(res))
    assert "false lesion > 0.5 mL: 1, largest 0.67 mL" in lines["healthy cyst|GRE opposed"]
    assert "false lesion > 0.5 mL: 2" in lines["healthy|GRE opposed"]
    assert "false lesion > 0.5 mL: 0, largest 0.17 mL" in lines["healthy cyst|T1"]
    assert "lesion Dice median 1.000, volume error median +0.0%" in lines["small|T1"]
