"""Listener mode against a real Orthanc: C-STORE a study to the SCP, SEG + SR arrive in Orthanc by C-STORE;
a listener killed mid-study processes it once after a restart; SIGTERM finishes the study in hand."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pynetdicom", reason="the 'pacs' extra (pynetdicom) is not installed")
pytest.importorskip("dicomweb_client", reason="the 'pacs' extra (dicomweb-client) is not installed")

from pacs_fixtures import DemoStudy, free_port, hip_studies, orthanc, study_files  # noqa: E402,F401

from onfh_seg.pacs.net import Destination, c_store, dicomweb_client, stow  # noqa: E402
from onfh_seg.pacs.state import read_audit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class Listener:
    """``onfh-pacs mode=listen`` as a child process, sending to Orthanc's DICOM port."""

    def __init__(self, state: Path, port: int, dest_port: int,
                 infer: tuple[str, ...] = ("infer.tta=false", "infer.provider=cpu", "infer.threads=2"),
                 settle_s: float = 1.0) -> None:
        cmd = [sys.executable, "-m", "onfh_seg.cli.pacs", "mode=listen", f"state_dir={state}",
               f"listen.port={port}", f"listen.settle_s={settle_s}", "listen.poll_s=0.1", f"listen.dest_port={dest_port}",
               "retries=1", "backoff_s=0.2", *infer]
        self.log = (state.parent / f"listener_{time.monotonic_ns()}.log").open("w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.port = port
        log_path = Path(self.log.name)
        deadline = time.monotonic() + 120
        while "listening as" not in log_path.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"listener did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.1)

    def send(self, study: DemoStudy) -> None:
        c_store(study_files(study), Destination("127.0.0.1", self.port, "ONFH_SEG"), "TEST_SCU", retries=0)

    def stop(self, sig: int) -> int:
        os.kill(self.proc.pid, sig)
        return self.proc.wait(timeout=120)


def results(orthanc: Any, study: DemoStudy) -> dict[str, int]:
    """How many SEG and SR instances Orthanc holds for the study."""
    counts = {"SEG": 0, "SR": 0}
    for series in orthanc.series_of_study(study.study_uid):
        if series.get("Modality") in counts:
            counts[series["Modality"]] += len(series["Instances"])
    return counts


def wait_for(condition, timeout_s: float = 120.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_listener_round_trip_kill_restart_and_sigterm(orthanc, hip_studies: list[DemoStudy], tmp_path: Path) -> None:
    a, b, c = hip_studies[:3]
    state = tmp_path / "state"
    port = free_port()
    listener = Listener(state, port, orthanc.dicom_port)
    try:
        # Orthanc (the PACS) pushes study A to the SCP; SEG + SR arrive in the same study in Orthanc
        stow(dicomweb_client(orthanc.dicomweb), study_files(a))
        orthanc.push_study(a.study_uid, "onfh", "ONFH_SEG", port)
        wait_for(lambda: results(orthanc, a) == {"SEG": 1, "SR": 1}, what="SEG+SR of study A")

        listener.send(b)  # killed while processing B
        wait_for(lambda: (state / "queue" / "processing" / b.study_uid).is_dir(), what="B in processing")
        assert listener.stop(signal.SIGKILL) == -signal.SIGKILL
        assert results(orthanc, b) == {"SEG": 0, "SR": 0}
    finally:
        if listener.proc.poll() is None:
            listener.proc.kill()

    restarted = Listener(state, port, orthanc.dicom_port)  # B is re-queued and processed once
    try:
        wait_for(lambda: results(orthanc, b) == {"SEG": 1, "SR": 1}, what="SEG+SR of study B after the restart")
        restarted.send(c)  # SIGTERM while C is in hand: C is finished, then the listener stops
        wait_for(lambda: (state / "queue" / "processing" / c.study_uid).is_dir(), what="C in processing")
        assert restarted.stop(signal.SIGTERM) == 0
    finally:
        if restarted.proc.poll() is None:
            restarted.proc.kill()
    for study in (a, b, c):
        assert results(orthanc, study) == {"SEG": 1, "SR": 1}, study.folder.name
    audit = read_audit(state / "audit.jsonl")
    assert sorted(r["study_uid"] for r in audit) == sorted(s.study_uid for s in (a, b, c))  # each processed once
    assert all(r["status"] == "sent" and r["received"]["via"] == "C-STORE" for r in audit)
    assert {r["study_uid"]: r["received"]["from"] for r in audit}[a.study_uid] == "ORTHANC"
    assert all(r["durations"]["last_instance_to_stored_s"] > 0 for r in audit)
    for left in (state / "queue" / "incoming", state / "queue" / "processing", state / "outbox"):
        assert list(left.iterdir()) == [], left  # nothing left queued or unsent


def test_results_wait_in_the_outbox_while_the_destination_is_down(orthanc, hip_studies: list[DemoStudy],
                                                                   tmp_path: Path) -> None:
    """Destination down: the study is made once, kept in the outbox with an audit line saying so, and sent later."""
    from onfh_seg.config import infer_settings
    from onfh_seg.run.jobs import engine_spec
    from onfh_seg.pacs.listener import StudyQueue, handle_queued_study, send_outbox
    from onfh_seg.pacs.state import Ledger
    from onfh_seg.pacs.study import study_settings_key

    import pydicom

    study = hip_studies[3]
    state = tmp_path / "state"
    queue = StudyQueue(state)
    for path in study_files(study):
        queue.add(pydicom.dcmread(path), "MODALITY", now=0.0)
    infer_cfg = infer_settings({"tta": False, "overlay": False, "provider": "cpu"}, require=False)
    segmenter = engine_spec(infer_cfg, 1).build()
    key = study_settings_key(segmenter, infer_cfg, False)
    ledger = Ledger(state / "ledger.json")
    down = {"state_dir": str(state), "retries": 1, "backoff_s": 0.0, "timeout_s": 5, "deidentify": False,
            "listen": {"ae_title": "ONFH_SEG", "dest_host": "127.0.0.1", "dest_port": free_port(), "dest_ae": "ORTHANC"}}
    record = handle_queued_study(study.study_uid, queue, down, segmenter, infer_cfg, ledger, key)
    assert record["status"] == "error" and "kept in the outbox" in record["reason"]
    assert not ledger.is_done(study.study_uid, key)
    assert (state / "outbox" / study.study_uid / "ready.json").is_file()
    assert results(orthanc, study) == {"SEG": 0, "SR": 0}
    up = {**down, "listen": {**down["listen"], "dest_port": orthanc.dicom_port}}
    assert send_outbox(state, up, ledger) == 1
    assert results(orthanc, study) == {"SEG": 1, "SR": 1}
    assert ledger.is_done(study.study_uid, key) and list((state / "outbox").iterdir()) == []
    assert send_outbox(state, up, ledger) == 0  # nothing left, nothing sent twice
    assert [r["status"] for r in read_audit(state / "audit.jsonl")] == ["error", "sent"]
