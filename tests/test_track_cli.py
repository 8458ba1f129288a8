"""``onfh-track`` end to end on a tiny cohort: outputs, errors.csv, resume, bad input."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from onfh_seg.config import track_settings
from onfh_seg.io.manifest import read_manifest, resolve, write_manifest
from onfh_seg.track.cohort import HASHED_KEYS, track_cohort
from onfh_seg.track.inputs import collect_patients, input_hash
from onfh_seg.track.tables import ERROR_COLUMNS, TIDY_COLUMNS
from truth_infer import write_truth_infer_outputs

EXE = str(Path(sys.executable).parent / "onfh-track")
ROOT = Path(__file__).resolve().parents[1]


def default_config() -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "track.yaml"))


HASHED = {k: default_config().get(k) for k in HASHED_KEYS}


def run_track(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=300)


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as fh:
        r = csv.DictReader(fh)
        return list(r.fieldnames or []), list(r)


@pytest.fixture(scope="module")
def cohort(request, tmp_path_factory):
    """P001 with its 12-month segmentation missing, P002 at 0 and 6 months, P003 whose image is missing."""
    src = request.getfixturevalue("small_cohort")  # tests/conftest.py
    root = tmp_path_factory.mktemp("cli")
    rows = []
    for r in read_manifest(src):
        if r["patient_id"] == "P002" and float(r["months"]) > 6:
            continue
        for k in ("image", "labels", "truth", "regenerated"):
            if r.get(k):
                r[k] = str(resolve(src, r[k]))
        rows.append(r)
    rows.append({"patient_id": "P003", "timepoint": "m00", "months": 0, "image": str(root / "nowhere_m00.nii.gz"),
                 "harris_hip_score": 50})
    write_manifest(root / "manifest.csv", rows)
    infer = write_truth_infer_outputs(root / "manifest.csv", root / "infer")
    (infer / "P001_m12_seg.nii.gz").unlink()
    return root


def test_cli_end_to_end_errors_and_resume(cohort):
    out = cohort / "out"
    args = (f"manifest={cohort / 'manifest.csv'}", f"infer_dir={cohort / 'infer'}", f"out_dir={out}")
    res = run_track(*args)
    assert res.returncode == 0, res.stderr[-2000:]
    last = res.stdout.strip().splitlines()[-1]
    assert "2 of 3 patients tracked" in last and str(out / "reports") in last

    cols, rows = read_csv(out / "longitudinal.csv")
    assert tuple(cols) == TIDY_COLUMNS
    assert {r["patient_id"] for r in rows} == {"P001", "P002"}
    assert {r["metric"] for r in rows} >= {"lesion_volume_ml", "regenerated_pct", "sir_change"}
    assert {float(r["months"]) for r in rows if r["patient_id"] == "P001" and r["hip"] != "patient"} == {0.0, 6.0}

    cols, errors = read_csv(out / "errors.csv")
    assert tuple(cols) == ERROR_COLUMNS
    by_pid = {(e["patient_id"], e["timepoint"]): e["reason"] for e in errors}
    assert "segmentation not found" in by_pid[("P001", "m12")]
    assert "image not found" in by_pid[("P003", "")]
    assert all("\n" not in e["reason"] for e in errors)

    p2 = json.loads((out / "patients" / "P002.json").read_text())
    assert p2["input_hash"] and [h["hip"] for h in p2["hips"]] == ["right", "left"]
    for h in p2["hips"]:
        t = json.loads((out / "transforms" / f"P002_{h['hip']}_m06.json").read_text())
        assert len(t["matrix_ras"]) == 4 and t["timepoint"] == "m06"
    html = (out / "reports" / "P001.html").read_text()
    assert "not for clinical use" in html and "segmentation not found" in html

    cols, summary = read_csv(out / "cohort_summary.csv")
    assert {"patient_id", "hip", "baseline_lesion_ml", "last_lesion_ml", "lesion_change_ml", "regenerated_pct",
            "sir_change", "head_height_loss_mm", "harris_hip_score_change"} <= set(cols)
    assert "collapse_mm" not in cols  # one name per quantity: the report's "head height loss"
    cols, corr = read_csv(out / "correlations.csv")
    assert tuple(cols) == ("imaging_metric", "score_change", "n", "rho", "p_value", "note")
    assert all(c["rho"] == "n/a" for c in corr if int(c["n"]) < 3)

    # resume: nothing changed -> both skipped, outputs untouched
    stamp = (out / "patients" / "P002.json").stat().st_mtime_ns
    res = run_track(*args)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "0 new, 2 unchanged" in res.stdout
    assert (out / "patients" / "P002.json").stat().st_mtime_ns == stamp
    assert read_csv(out / "longitudinal.csv")[1] == rows

    # the PDF of existing results: printed from the HTML report, no patient re-registered or re-measured
    from onfh_seg.report.pdf import chromium_path

    if chromium_path() is not None:
        tstamp = (out / "transforms" / "P002_right_m06.json").stat().st_mtime_ns
        res = run_track(*args, "report_pdf=true")
        assert res.returncode == 0, res.stderr[-2000:]
        assert "0 new, 2 unchanged and skipped; 2 PDF printed from the existing report" in res.stdout
        assert (out / "patients" / "P002.json").stat().st_mtime_ns == stamp
        assert (out / "transforms" / "P002_right_m06.json").stat().st_mtime_ns == tstamp
        assert (out / "reports" / "P002.pdf").read_bytes().startswith(b"%PDF")

    # a changed input (new measurements of one scan) changes that patient's hash only
    before = {pid: input_hash(p, HASHED) for pid, p in collect_patients(cohort / "manifest.csv", cohort / "infer")[0].items()}
    meas = cohort / "infer" / "P002_m06_measurements.json"
    m = json.loads(meas.read_text())
    m["model_version"] = "v2"
    meas.write_text(json.dumps(m))
    after = {pid: input_hash(p, HASHED) for pid, p in collect_patients(cohort / "manifest.csv", cohort / "infer")[0].items()}
    assert before["P001"] == after["P001"] and before["P002"] != after["P002"]
    assert before["P002"] == p2["input_hash"]


def test_cli_bad_input_is_one_line(cohort, tmp_path):
    res = run_track(f"manifest={tmp_path / 'missing.csv'}", f"infer_dir={cohort / 'infer'}", f"out_dir={tmp_path}")
    assert res.returncode != 0
    assert res.stderr.strip().startswith("error:") and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1

    only_bad = tmp_path / "bad.csv"
    write_manifest(only_bad, [{"patient_id": "P009", "timepoint": "m00", "months": 0,
                               "image": str(tmp_path / "none.nii.gz")}])
    cfg = track_settings({"manifest": str(only_bad), "infer_dir": str(cohort / "infer"), "out_dir": str(tmp_path / "o")})
    with pytest.raises(ValueError, match="no usable patients"):
        track_cohort(cfg)
    _, errors = read_csv(tmp_path / "o" / "errors.csv")
    assert errors[0]["patient_id"] == "P009" and "image not found" in errors[0]["reason"]


@pytest.mark.slow
def test_cli_results_do_not_depend_on_workers(cohort, tmp_path):
    outs = []
    for w in (1, 2):
        out = tmp_path / f"w{w}"
        res = run_track(f"manifest={cohort / 'manifest.csv'}", f"infer_dir={cohort / 'infer'}", f"out_dir={out}",
                        f"workers={w}")
        assert res.returncode == 0, res.stderr[-2000:]
        outs.append(out)
    files = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(outs[1]) for p in outs[1].rglob("*") if p.is_file())
    for f in files:
        assert (outs[0] / f).read_bytes() == (outs[1] / f).read_bytes(), f
    shutil.rmtree(tmp_path)
