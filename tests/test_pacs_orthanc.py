"""Round trip against a real Orthanc (DICOMweb): pull mode sends SEG + SR for hip studies, refuses a head study,
and a second run sends nothing. Skipped with a reason when Orthanc is not installed (.ci/run installs it)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pynetdicom", reason="the 'pacs' extra (pynetdicom) is not installed")
pytest.importorskip("dicomweb_client", reason="the 'pacs' extra (dicomweb-client) is not installed")

from pacs_fixtures import DemoStudy, head_study, hip_studies, orthanc, study_files  # noqa: E402,F401

from onfh_seg.pacs.net import dicomweb_client, stow  # noqa: E402
from onfh_seg.pacs.state import read_audit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SEG_CLASS, SR_CLASS = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34"
INFER = {"tta": False, "overlay": False, "provider": "cpu", "threads": 2}


def dciodvfy_errors(path: Path) -> list[str]:
    """Lines starting with 'Error' from dciodvfy (skip when it is missing)."""
    binary = shutil.which("dciodvfy")
    if binary is None:
        pytest.skip("dciodvfy not installed (Debian package dicom3tools)")
    result = subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def results_in(client: Any, study_uid: str) -> dict[str, list]:
    """SEG and SR instances stored in a study: {"SEG": [datasets], "SR": [datasets]}."""
    out: dict[str, list] = {"SEG": [], "SR": []}
    for item in client.search_for_series(study_uid, fields=["Modality"]):
        modality = item["00080060"]["Value"][0]
        if modality in out:
            out[modality] += client.retrieve_series(study_uid, item["0020000E"]["Value"][0])
    return out


def referenced_uids(ds: Any) -> set[str]:
    """Every ReferencedSOPInstanceUID and SeriesInstanceUID anywhere in a dataset's sequences."""
    found: set[str] = set()
    for elem in ds.iterall():
        if elem.keyword in ("ReferencedSOPInstanceUID", "SeriesInstanceUID") and elem.value:
            found.add(str(elem.value))
    return found


@pytest.fixture(scope="module")
def pulled(orthanc, hip_studies, tmp_path_factory) -> dict[str, Any]:
    """Upload 4 hip studies + the shared head series by STOW-RS, then one pull run (in process, shipped model)."""
    from onfh_seg.config import infer_settings
    from onfh_seg.run.jobs import engine_spec
    from onfh_seg.pacs.pull import run_pull

    head = head_study()
    client = dicomweb_client(orthanc.dicomweb)
    for study in [*hip_studies, head]:
        stow(client, study_files(study))
    state = tmp_path_factory.mktemp("pacs_state")
    cfg = {"state_dir": str(state), "retries": 2, "backoff_s": 0.2, "timeout_s": 60, "deidentify": False,
           "pull": {"url": orthanc.dicomweb, "since_last_run": True, "lookback_days": 1, "limit": 100}}
    infer_cfg = infer_settings(INFER, require=False)
    summary = run_pull(cfg, engine_spec(infer_cfg, 1).build(), infer_cfg)
    return {"summary": summary, "client": client, "head": head, "state": state, "cfg": cfg}


def test_pull_sends_seg_and_sr_for_each_hip_study(pulled, hip_studies: list[DemoStudy], tmp_path: Path) -> None:
    summary, client = pulled["summary"], pulled["client"]
    assert (summary.found, summary.sent, summary.refused, summary.failed) == (5, 4, 1, 0), summary.studies
    for study in hip_studies:
        got = results_in(client, study.study_uid)
        assert len(got["SEG"]) == 1 and len(got["SR"]) == 1, study.folder.name
        seg, sr = got["SEG"][0], got["SR"][0]
        assert (seg.SOPClassUID, sr.SOPClassUID) == (SEG_CLASS, SR_CLASS)
        # filed with the right patient: the Patient module copied from the source (deidentify=false)
        for ds in (seg, sr):
            assert (ds.PatientID, str(ds.PatientName), ds.StudyInstanceUID) == (
                study.patient_id, study.patient_name, study.study_uid)
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == study.series_uid
        refs = referenced_uids(sr)
        assert seg.SOPInstanceUID in refs and study.series_uid in refs  # TID 1500 segment + source series
        assert dciodvfy_errors(study_files(study)[0]) == []  # the demo source itself is valid MR
        for name, ds in (("seg.dcm", seg), ("sr.dcm", sr)):
            ds.save_as(tmp_path / name, enforce_file_format=True)
            assert dciodvfy_errors(tmp_path / name) == [], name


def test_head_study_is_refused_with_its_reason_and_nothing_sent(pulled) -> None:
    head = pulled["head"]
    assert results_in(pulled["client"], head.study_uid) == {"SEG": [], "SR": []}
    lines = [r for r in read_audit(pulled["state"] / "audit.jsonl") if r["study_uid"] == head.study_uid]
    assert len(lines) == 1
    assert lines[0]["status"] == "refused" and lines[0]["reason"].startswith("not_hip_anatomy")
    assert lines[0]["destination"] is None and lines[0]["sent_sop_instance_uids"] == []


def test_audit_has_one_line_per_study_and_no_patient_name(pulled, hip_studies: list[DemoStudy]) -> None:
    path = pulled["state"] / "audit.jsonl"
    lines = read_audit(path)
    assert sorted(r["study_uid"] for r in lines) == sorted([s.study_uid for s in hip_studies] + [pulled["head"].study_uid])
    for record in lines:
        if record["status"] == "sent":
            assert record["series"]["selection_reason"] and record["destination"] == pulled["cfg"]["pull"]["url"]
            assert set(record["durations"]) >= {"retrieve_s", "process_s", "send_s", "total_s"}
            assert len(record["sent_sop_instance_uids"]) == 2 and record["hips"]
    text = path.read_text()
    for study in hip_studies:
        assert study.patient_name not in text and study.patient_name.split("^")[0] + "^" not in text


def test_second_run_sends_nothing(pulled, orthanc, hip_studies: list[DemoStudy]) -> None:
    """The CLI, same state and settings: every study is skipped; Orthanc still holds one SEG and one SR each."""
    state = pulled["state"]
    before = len(read_audit(state / "audit.jsonl"))
    proc = subprocess.run(
        [sys.executable, "-m", "onfh_seg.cli.pacs", "mode=pull", f"state_dir={state}", f"pull.url={orthanc.dicomweb}",
         "pull.date_from=19000101", *(f"infer.{k}={v}".lower() for k, v in INFER.items())],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "found 5: sent 0, refused 0, failed 0, skipped 5 (already done)" in proc.stdout
    assert len(read_audit(state / "audit.jsonl")) == before
    for study in hip_studies:
        got = results_in(pulled["client"], study.study_uid)
        assert (len(got["SEG"]), len(got["SR"])) == (1, 1)
