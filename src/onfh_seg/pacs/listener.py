"""Listener mode: a C-STORE SCP with an on-disk queue; SEG + SR sent to a destination by C-STORE (or STOW-RS).

On disk, under ``state_dir``::

    queue/incoming/<StudyInstanceUID>/<SOPInstanceUID>.dcm   instances as received
    queue/incoming/<StudyInstanceUID>/.study.json            first/last arrival (epoch s), count, calling AE
    queue/processing/<StudyInstanceUID>/                     the study in hand
    queue/failed/<StudyInstanceUID>/                         studies whose processing failed (kept to inspect)
    outbox/<StudyInstanceUID>/                               SEG + SR made, not yet confirmed sent (ready.json)
    ledger.json, audit.jsonl

A study starts once no instance arrived for ``settle_s`` seconds (arrival
times are on disk, so they survive a restart). A restart moves
``processing/`` back to ``incoming/`` (processed again from the start) and sends
what ``outbox/`` holds (the same files, so the same SOPInstanceUIDs: a PACS
files them once); the ledger keeps a study sent or refused with the same
model and settings from being processed again. SIGTERM stops accepting
associations and ends after the study in hand; an interrupt (SIGINT) during
processing re-queues it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from onfh_seg.config_schemas import InferSettings
from onfh_seg.io.files import atomic_write_text
from onfh_seg.pacs.net import Destination, NetworkError, c_store, dicomweb_client, stow
from onfh_seg.pacs.state import Ledger, append_audit, audit_record
from onfh_seg.pacs.study import OUR_MODALITIES, StudyOutcome, process_study, study_settings_key

log = logging.getLogger("onfh_seg.pacs")
UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
STUDY_STATE = ".study.json"


class StudyQueue:
    """The on-disk queue of received studies (thread-safe within one process)."""

    def __init__(self, state_dir: str | Path) -> None:
        self.root = Path(state_dir) / "queue"
        self.incoming, self.processing, self.failed = (self.root / n for n in ("incoming", "processing", "failed"))
        for folder in (self.incoming, self.processing, self.failed):
            folder.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()

    def add(self, ds: Any, calling_ae: str, now: float | None = None) -> None:
        """Store one received instance (temporary name, then rename) and update its study's arrival times."""
        study, sop = str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)
        if not UID_RE.match(study) or not UID_RE.match(sop):
            raise ValueError("StudyInstanceUID/SOPInstanceUID missing or not a UID")
        now = time.time() if now is None else now
        with self.lock:
            folder = self.incoming / study
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{sop}.{os.getpid()}.tmp"
            ds.save_as(tmp, enforce_file_format=True)
            os.replace(tmp, folder / f"{sop}.dcm")
            state = read_study_state(folder)
            state.update(first_received=state.get("first_received", now), last_received=now,
                         instances=len(list(folder.glob("*.dcm"))), calling_ae=calling_ae)
            atomic_write_text(folder / STUDY_STATE, json.dumps(state) + "\n")

    def note_results(self, ds: Any, calling_ae: str, now: float | None = None) -> None:
        """Record that a result object (SEG, SR) of a study arrived, without storing it: a study that brings
        nothing else is still handled once (refused, with its audit line). Ignored while the study is in hand."""
        study = str(ds.get("StudyInstanceUID", "") or "")
        if not UID_RE.match(study) or (self.processing / study).exists():
            return
        now = time.time() if now is None else now
        with self.lock:
            folder = self.incoming / study
            folder.mkdir(parents=True, exist_ok=True)
            state = read_study_state(folder)
            state.update(first_received=state.get("first_received", now), last_received=now,
                         instances=len(list(folder.glob("*.dcm"))), calling_ae=calling_ae,
                         results_received=int(state.get("results_received", 0)) + 1)
            atomic_write_text(folder / STUDY_STATE, json.dumps(state) + "\n")

    def settled(self, settle_s: float, now: float | None = None) -> list[str]:
        """Studies whose last instance arrived at least ``settle_s`` ago, oldest first."""
        now = time.time() if now is None else now
        ready = []
        for folder in self.incoming.iterdir():
            last = last_arrival(folder)
            if last is not None and now - last >= settle_s:
                ready.append((last, folder.name))
        return [uid for _, uid in sorted(ready)]

    def claim(self, study: str) -> Path:
        """Move a study from incoming/ to processing/ (new instances then start a new incoming folder)."""
        with self.lock:
            target = self.processing / study
            if target.exists():
                _merge(self.incoming / study, target)
            else:
                os.replace(self.incoming / study, target)
            return target

    def requeue(self, study: str) -> None:
        """Put a study in hand back into incoming/ (merged with anything that arrived since)."""
        with self.lock:
            source, target = self.processing / study, self.incoming / study
            if not source.exists():
                return
            if target.exists():
                _merge(source, target)
            else:
                os.replace(source, target)

    def requeue_all(self) -> list[str]:
        """After a restart: every study left in processing/ goes back to incoming/ (half-written instances of a
        crash, ``.*.tmp``, are removed: the sender had no success status for them and sends them again)."""
        for partial in list(self.incoming.glob("*/.*.tmp")) + list(self.processing.glob("*/.*.tmp")):
            partial.unlink(missing_ok=True)
        studies = sorted(p.name for p in self.processing.iterdir() if p.is_dir())
        for study in studies:
            self.requeue(study)
        return studies

    def finish(self, study: str, failed: bool = False) -> None:
        """Remove a handled study (or keep it under failed/)."""
        source = self.processing / study
        if failed:
            target = self.failed / study
            shutil.rmtree(target, ignore_errors=True)
            os.replace(source, target)
        else:
            shutil.rmtree(source, ignore_errors=True)


def read_study_state(folder: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((folder / STUDY_STATE).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return {}


def last_arrival(folder: Path) -> float | None:
    """When the study's last instance arrived: its state file, else its newest file (a crash between writing an
    instance and the state); None for a folder with neither (being created right now)."""
    state = read_study_state(folder)
    if "last_received" in state:
        return float(state["last_received"])
    times = [p.stat().st_mtime for p in folder.glob("*.dcm")] if folder.is_dir() else []
    return max(times) if times else None


def _merge(source: Path, target: Path) -> None:
    """Move source's instances into target (keeping the later arrival state), then remove source."""
    for item in source.glob("*.dcm"):
        os.replace(item, target / item.name)
    a, b = read_study_state(source), read_study_state(target)
    if a or b:
        merged = {**a, **b, "last_received": max(float(a.get("last_received", 0)), float(b.get("last_received", 0))),
                  "instances": len(list(target.glob("*.dcm")))}
        atomic_write_text(target / STUDY_STATE, json.dumps(merged) + "\n")
    shutil.rmtree(source, ignore_errors=True)


# ---------------------------------------------------------------- SCP


def start_scp(queue: StudyQueue, host: str, port: int, ae_title: str) -> Any:
    """Start the C-STORE SCP (non-blocking); returns the server (``.shutdown()`` stops it)."""
    # function-level import: optional dependency (pacs extra)
    from pynetdicom import AE, AllStoragePresentationContexts, evt
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=ae_title)
    ae.maximum_pdu_size = 0
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax)
    ae.add_supported_context(Verification)

    def on_store(event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        return store_instance(queue, ds, str(event.assoc.requestor.ae_title).strip())

    return ae.start_server((host, port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])


def store_instance(queue: StudyQueue, ds: Any, calling_ae: str) -> int:
    """The C-STORE status for one received instance: images are queued; results (SEG, SR: ours or another
    tool's) are accepted and only noted (never processed), so a study of results alone still gets its audit line."""
    try:
        if str(ds.get("Modality", "")) in OUR_MODALITIES:
            queue.note_results(ds, calling_ae)
        else:
            queue.add(ds, calling_ae)
    except ValueError:
        return 0xC000  # cannot understand
    except OSError:
        return 0xA700  # out of resources (disk)
    return 0x0000


# ---------------------------------------------------------------- worker


def _send(files: list[Path], cfg: Mapping[str, Any]) -> tuple[list[str], str]:
    listen = cfg["listen"]
    retries, backoff = int(cfg["retries"]), float(cfg["backoff_s"])
    if listen.get("dest_url"):
        client = dicomweb_client(str(listen["dest_url"]), float(cfg["timeout_s"]))
        return stow(client, files, retries, backoff), str(listen["dest_url"])
    dest = Destination(str(listen["dest_host"]), int(listen["dest_port"]), str(listen["dest_ae"]))
    return c_store(files, dest, str(listen["ae_title"]), retries, backoff, float(cfg["timeout_s"])), str(dest)


def send_outbox(state_dir: Path, cfg: Mapping[str, Any], ledger: Ledger) -> int:
    """Send every study waiting in outbox/ (made before a crash or a network failure); returns how many were sent."""
    outbox = state_dir / "outbox"
    sent = 0
    for folder in sorted(p for p in outbox.iterdir() if p.is_dir()) if outbox.is_dir() else []:
        try:
            pending = json.loads((folder / "ready.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            shutil.rmtree(folder, ignore_errors=True)  # made but never marked ready: the study is still queued
            continue
        study = folder.name
        if not ledger.is_done(study, pending["key"]):
            try:
                uids, where = _send([folder / n for n in pending["files"]], cfg)
            except (NetworkError, RuntimeError, OSError) as exc:
                log.warning("study %s: still not sent (%s)", study, exc)
                continue
            record = {**pending["audit"], "status": "sent", "destination": where, "sent_sop_instance_uids": uids,
                      "note": "sent from the outbox (made earlier)"}
            ledger.record(study, "sent", pending["key"], sent=uids)
            append_audit(state_dir / "audit.jsonl", audit_record(**record))
            sent += 1
        shutil.rmtree(folder, ignore_errors=True)
    return sent


def handle_queued_study(study: str, queue: StudyQueue, cfg: Mapping[str, Any], segmenter: Any,
                        infer_cfg: InferSettings, ledger: Ledger, key: str) -> dict[str, Any]:
    """Process one settled study from the queue, send its SEG + SR, record it; returns the audit line."""
    state_dir = Path(cfg["state_dir"])
    folder = queue.claim(study)
    info = read_study_state(folder)
    received = {"via": "C-STORE", "from": info.get("calling_ae"), "instances": info.get("instances"),
                "first_received": info.get("first_received"), "last_received": info.get("last_received")}
    t0 = time.perf_counter()
    base = dict(mode="listen", study_uid=study, received=received,
                model_version=str(getattr(segmenter, "version", "unknown")), settings_key=key)
    if ledger.is_done(study, key):  # late instances of a study already handled with these settings
        record = audit_record(**base, status="skipped", reason="already processed with this model and settings "
                              f"({ledger.entries[study]['status']}); instances received later are not processed")
        append_audit(state_dir / "audit.jsonl", record)
        queue.finish(study)
        return record
    work = state_dir / "work" / study
    shutil.rmtree(work, ignore_errors=True)
    try:
        if any(folder.glob("*.dcm")):
            outcome = process_study(folder, work, segmenter, infer_cfg, bool(cfg["deidentify"]))
        else:  # only results (SEG/SR) arrived for this study
            outcome = StudyOutcome("refused", f"no image instances in the study (only SEG/SR: "
                                              f"{info.get('results_received', 0)} received)")
    except BaseException:
        queue.requeue(study)  # interrupted: the study goes back to the queue, nothing is recorded
        shutil.rmtree(work, ignore_errors=True)
        raise
    durations = dict(outcome.timings)
    record = dict(base, series=outcome.series, status=outcome.status, reason=outcome.reason,
                  qc_flags=outcome.qc_flags, hips=outcome.hips, destination=None, sent_sop_instance_uids=[])
    if outcome.status == "ready":
        outbox = state_dir / "outbox" / study
        shutil.rmtree(outbox, ignore_errors=True)
        outbox.mkdir(parents=True)
        for f in outcome.files:
            os.replace(f, outbox / f.name)
        atomic_write_text(outbox / "ready.json", json.dumps(
            {"key": key, "files": [f.name for f in outcome.files], "audit": record}, default=str) + "\n")
        queue.finish(study)  # the results are safe in the outbox: the received instances are no longer needed
        t = time.perf_counter()
        try:
            uids, where = _send([outbox / f.name for f in outcome.files], cfg)
            durations["send_s"] = round(time.perf_counter() - t, 3)
            record.update(status="sent", destination=where, sent_sop_instance_uids=uids)
            ledger.record(study, "sent", key, sent=uids)
            shutil.rmtree(outbox, ignore_errors=True)
        except (NetworkError, RuntimeError, OSError) as exc:
            record.update(status="error", reason=f"send failed, kept in the outbox for a later try: {exc}")
    else:
        ledger.record(study, outcome.status, key, reason=outcome.reason)
        queue.finish(study, failed=outcome.status == "error")
    shutil.rmtree(work, ignore_errors=True)
    durations["total_s"] = round(time.perf_counter() - t0, 3)
    last = info.get("last_received")
    if record["status"] == "sent" and last:
        durations["last_instance_to_stored_s"] = round(time.time() - float(last), 3)
    out = audit_record(**record, durations=durations)
    append_audit(state_dir / "audit.jsonl", out)
    return out


def run_listener(cfg: Mapping[str, Any], segmenter: Any, infer_cfg: InferSettings,
                 stop: threading.Event | None = None, on_ready: Callable[[], None] | None = None) -> int:
    """Receive, queue, process and send until ``stop`` is set (or ``listen.max_studies`` studies were handled)."""
    stop = stop or threading.Event()
    listen = cfg["listen"]
    state_dir = Path(cfg["state_dir"])
    queue = StudyQueue(state_dir)
    ledger = Ledger(state_dir / "ledger.json")
    key = study_settings_key(segmenter, infer_cfg, bool(cfg["deidentify"]))
    requeued = queue.requeue_all()
    if requeued:
        log.info("re-queued %d interrupted studies", len(requeued))
    send_outbox(state_dir, cfg, ledger)
    server = start_scp(queue, str(listen["host"]), int(listen["port"]), str(listen["ae_title"]))
    log.info("listening as %s on %s:%s", listen["ae_title"], listen["host"], listen["port"])
    if on_ready:
        on_ready()
    handled = 0
    max_studies = int(listen.get("max_studies") or 0)
    last_outbox = time.monotonic()
    try:
        while not stop.is_set():
            studies = queue.settled(float(listen["settle_s"]))
            if not studies:
                if time.monotonic() - last_outbox > float(listen.get("outbox_retry_s") or 60):
                    send_outbox(state_dir, cfg, ledger)
                    last_outbox = time.monotonic()
                stop.wait(float(listen.get("poll_s") or 0.5))
                continue
            record = handle_queued_study(studies[0], queue, cfg, segmenter, infer_cfg, ledger, key)
            log.info("study %s: %s%s", studies[0], record["status"], f" ({record['reason']})" if record.get("reason") else "")
            handled += 1
            if max_studies and handled >= max_studies:
                break
    finally:
        server.shutdown()
    return handled
