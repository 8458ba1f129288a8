"""Model-update re-analysis (onfh_seg.run.reanalyse): exactly the scans of another model version run again, the
earlier outputs are kept, and reanalysis.csv compares old and new per scan and hip.

Two model versions: tests/test_batch.py's FakeSegmenter (version from env ``FAKE_SEGMENTER_VERSION``) and a
subclass whose version 2 labels every lesion voxel as plain femoral head (so lesion volumes and classes change).
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from onfh_seg.run.batch import run_batch
from onfh_seg.run.reanalyse import COLUMNS, previous_folder, run_reanalysis
from test_batch import BIN, FakeSegmenter, base_cfg, batch_set, cli_env, no_temporaries  # noqa: F401 (fixture)

ENGINE = "test_reanalyse:NoLesionV2Segmenter"


class NoLesionV2Segmenter(FakeSegmenter):
    """FakeSegmenter; as version ``fake-2.0`` it finds no lesion (necrotic zone and band become head)."""

    def segment(self, image, affine):
        result = super().segment(image, affine)
        if self.version == "fake-2.0":
            result.labels = np.where(np.isin(result.labels, (2, 3)), np.uint8(1), result.labels)
        return result


def factory(model: Path):
    return lambda threads: NoLesionV2Segmenter(model, threads=threads)


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def hips(meas: dict) -> dict[str, dict]:
    return {h["side"]: h for h in meas["hips"]}


@pytest.fixture
def earlier_run(batch_set, tmp_path, monkeypatch):
    """3 scans: all made with fake-1.0, then one of them again with fake-2.0 (already up to date)."""
    scans, model = batch_set
    inp = tmp_path / "scans"
    inp.mkdir()
    for name in ("P001_m00", "P001_m06", "P002_m00"):
        shutil.copy(scans / f"{name}.nii.gz", inp / f"{name}.nii.gz")
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(scans / "P002_m00.nii.gz", one / "P002_m00.nii.gz")
    earlier = tmp_path / "earlier"
    run_batch(base_cfg(inp, earlier, model, engine=ENGINE), segmenter_factory=factory(model))
    monkeypatch.setenv("FAKE_SEGMENTER_VERSION", "fake-2.0")
    run_batch(base_cfg(one, earlier, model, engine=ENGINE), segmenter_factory=factory(model))
    return inp, earlier, model


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_reanalysis_into_new_folder(earlier_run, tmp_path) -> None:
    inp, earlier, model = earlier_run
    before = snapshot(earlier)
    old = {n: json.loads((earlier / f"{n}_measurements.json").read_text()) for n in ("P001_m00", "P001_m06")}
    out = tmp_path / "new"
    res = run_reanalysis(base_cfg(inp, out, model, engine=ENGINE, reanalyse=str(earlier)),
                         segmenter_factory=factory(model))
    assert snapshot(earlier) == before  # the earlier run is kept as it was
    assert (res.batch.done, res.batch.skipped, res.batch.failed) == (2, 1, 0)  # exactly the fake-1.0 scans ran
    assert (out / "P002_m00_seg.nii.gz").read_bytes() == (earlier / "P002_m00_seg.nii.gz").read_bytes()

    rows = read_rows(out / "reanalysis.csv")
    assert list(rows[0]) == list(COLUMNS)
    assert sorted({r["scan"] for r in rows}) == ["P001_m00", "P001_m06"]
    for r in rows:
        assert (r["old_model_version"], r["new_model_version"], r["reason"]) == ("fake-1.0", "fake-2.0", "model changed")
        new = json.loads((out / f"{r['scan']}_measurements.json").read_text())
        a, b = hips(old[r["scan"]]).get(r["side"]), hips(new).get(r["side"])
        assert float(r["old_lesion_volume_ml"]) == a["lesion_volume_ml"]
        assert float(r["new_lesion_volume_ml"]) == b["lesion_volume_ml"] == 0.0
        assert r["old_jic_type"] == (a["jic_type"] or "") and r["new_jic_type"] == (b["jic_type"] or "")
        changed = a["jic_type"] != b["jic_type"] or a["arco_extent"] != b["arco_extent"]
        assert r["class_changed"] == ("true" if changed else "false")
    lesion_rows = [r for r in rows if float(r["old_lesion_volume_ml"]) > 0]
    assert lesion_rows and all(float(r["delta_lesion_volume_ml"]) < 0 for r in lesion_rows)
    n_changed = len({r["scan"] for r in rows if r["class_changed"] == "true"})
    assert n_changed >= 1
    assert res.line.startswith(f"re-analysis: 2 of 3 scans re-run (model fake-1.0 -> fake-2.0); {n_changed} changed class")
    assert no_temporaries(out) == []


def test_reanalysis_in_place_keeps_old_outputs(earlier_run) -> None:
    inp, earlier, model = earlier_run
    old_seg = (earlier / "P001_m00_seg.nii.gz").read_bytes()
    old_json = (earlier / "P001_m00_measurements.json").read_bytes()
    res = run_reanalysis(base_cfg(inp, earlier, model, engine=ENGINE, reanalyse=str(earlier)),
                         segmenter_factory=factory(model))
    assert (res.batch.done, res.batch.skipped) == (2, 1)
    prev = earlier / "previous" / "fake-1.0"
    assert (prev / "P001_m00_seg.nii.gz").read_bytes() == old_seg
    assert (prev / "P001_m00_measurements.json").read_bytes() == old_json
    assert sorted(p.name for p in prev.glob("*_measurements.json")) == ["P001_m00_measurements.json",
                                                                        "P001_m06_measurements.json"]
    assert (prev / "run_manifest.json").is_file() and (prev / "measurements.csv").is_file()
    assert json.loads((earlier / "P001_m00_measurements.json").read_text())["model_version"] == "fake-2.0"
    # nothing left to re-analyse: a second pass runs no scan and compares none
    again = run_reanalysis(base_cfg(inp, earlier, model, engine=ENGINE, reanalyse=str(earlier)),
                           segmenter_factory=factory(model))
    assert (again.batch.done, again.batch.skipped) == (0, 3) and again.rows == []
    assert again.line.startswith("re-analysis: 0 of 3 scans re-run; 0 changed class")


def test_previous_folder_names(tmp_path) -> None:
    assert previous_folder(tmp_path, {"model_version": "v1.2 (rc)"}, "model changed") == tmp_path / "previous" / "v1.2_rc"
    assert previous_folder(tmp_path, {"model_version": "v1"}, "settings changed (tta)").name == "v1+settings"
    assert previous_folder(tmp_path, {"model_version": "v1"}, "input changed").name == "v1+input-changed"


def test_cli_reanalyse(earlier_run, tmp_path) -> None:
    inp, earlier, model = earlier_run
    out = tmp_path / "cli"
    args = [f"input={inp}", f"out_dir={out}", f"model_dir={model}", f"engine={ENGINE}", "overlay=false", "tta=false"]
    res = subprocess.run([str(BIN / "onfh-infer"), *args, f"reanalyse={earlier}"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, env=cli_env(FAKE_SEGMENTER_VERSION="fake-2.0"))
    assert res.returncode == 0, res.stderr[-2000:]
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith("re-analysis: 2 of 3 scans re-run (model fake-1.0 -> fake-2.0);") and "reanalysis.csv" in last
    bad = subprocess.run([str(BIN / "onfh-infer"), *args, f"reanalyse={tmp_path / 'nope'}"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, env=cli_env())
    assert bad.returncode != 0 and "earlier run folder not found" in bad.stderr and "Traceback" not in bad.stderr


def perturbed_model(dest: Path) -> Path:
    """A copy of the shipped model whose fine network favours the necrotic zone (+1.5 on its output bias),
    with its own model version."""
    onnx = pytest.importorskip("onnx", reason="perturbing the model needs onnx (dev extra)")
    from onnx import numpy_helper

    src = Path(__file__).resolve().parents[1] / "models"
    if not (src / "fine.onnx").is_file():
        pytest.skip("the shipped model (models/fine.onnx) is not in this checkout")
    dest.mkdir(parents=True)
    shutil.copy(src / "coarse.onnx", dest / "coarse.onnx")
    model = onnx.load(str(src / "fine.onnx"))
    last = [n for n in model.graph.node if n.op_type == "Conv"][-1]
    init = next(i for i in model.graph.initializer if i.name == last.input[2])
    bias = numpy_helper.to_array(init).copy()
    bias[2] += 1.5  # label 2: necrotic zone
    init.CopyFrom(numpy_helper.from_array(bias, init.name))
    onnx.save(model, str(dest / "fine.onnx"))
    meta = json.loads((src / "model.json").read_text())
    meta["model_version"] = f"{meta['model_version']}+perturbed"
    (dest / "model.json").write_text(json.dumps(meta, indent=1))
    return dest


@pytest.mark.slow
def test_reanalysis_with_perturbed_shipped_model(batch_set, tmp_path) -> None:
    """The real engine: the shipped model, then a copy with perturbed weights; every scan re-runs and the
    table holds the two JSONs' numbers (~1 min on 2 busy cores: slow)."""
    scans, _ = batch_set
    inp = tmp_path / "scans"
    inp.mkdir()
    for name in ("P001_m00", "P002_m00"):
        shutil.copy(scans / f"{name}.nii.gz", inp / f"{name}.nii.gz")
    root = Path(__file__).resolve().parents[1]
    earlier = tmp_path / "earlier"
    over = {"engine": "onfh_seg.infer.engine:Segmenter", "provider": "cpu", "tta": False}
    first = run_batch(base_cfg(inp, earlier, root / "models", **over))
    assert first.done == 2
    model2 = perturbed_model(tmp_path / "model2")
    res = run_reanalysis(base_cfg(inp, tmp_path / "new", model2, reanalyse=str(earlier), **over))
    assert (res.batch.done, res.batch.skipped) == (2, 0)
    rows = read_rows(tmp_path / "new" / "reanalysis.csv")
    assert rows and {r["reason"] for r in rows} == {"model changed"}
    assert {r["new_model_version"] for r in rows} == {json.loads((model2 / "model.json").read_text())["model_version"]}
    for r in rows:
        old = hips(json.loads((earlier / f"{r['scan']}_measurements.json").read_text())).get(r["side"])
        new = hips(json.loads((tmp_path / "new" / f"{r['scan']}_measurements.json").read_text())).get(r["side"])
        if old and new:
            assert float(r["old_lesion_volume_ml"]) == old["lesion_volume_ml"]
            assert float(r["new_lesion_volume_ml"]) == new["lesion_volume_ml"]
    assert any(r["delta_lesion_volume_ml"] and float(r["delta_lesion_volume_ml"]) > 0 for r in rows)


def test_summary_line_names_a_settings_only_change() -> None:
    from onfh_seg.run.reanalyse import comparison_rows, summary_line

    hip = {"side": "right", "lesion_volume_ml": 2.0, "percent_head_involved": 10.0, "arco_extent": "A",
           "jic_type": "B", "sir_necrotic": 1.1}
    old = {"model_version": "v1", "hips": [hip]}
    new = {"model_version": "v1", "status": "ok", "hips": [{**hip, "lesion_volume_ml": 2.5, "jic_type": "C1"}]}
    rows = comparison_rows("s1", "settings changed (tta)", old, new)
    assert [(r["side"], r["delta_lesion_volume_ml"], r["jic_type_changed"], r["arco_extent_changed"]) for r in rows] == [
        ("right", 0.5, "true", "false")]
    assert summary_line(rows, 1, 4) == ("re-analysis: 1 of 4 scans re-run (model v1, same model); 1 changed class "
                                        "(JIC type or ARCO extent; 1 hips); largest lesion volume change 0.50 mL")
