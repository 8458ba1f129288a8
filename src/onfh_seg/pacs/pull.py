"""Pull mode: QIDO-RS query -> WADO-RS retrieve -> segment and measure -> STOW-RS SEG + SR.

Studies are chosen by StudyInstanceUID, by StudyDate range, or "new since
the last run" (StudyDate from the last run's date minus ``lookback_days``;
the ledger skips what was already handled). A study already sent or refused
with the same model version and settings (:class:`onfh_seg.pacs.state.Ledger`)
is not processed again; a study that failed (network, error) is tried again
next run. One audit line per study handled.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from onfh_seg.clock import ZULU, utc_timestamp
from onfh_seg.config_schemas import InferSettings
from onfh_seg.pacs.net import NetworkError, StudyRef, dicomweb_client, query_studies, retrieve_study, stow, with_retries
from onfh_seg.pacs.state import Ledger, append_audit, audit_record
from onfh_seg.pacs.study import StudyOutcome, process_study, study_settings_key

log = logging.getLogger("onfh_seg.pacs")


@dataclass
class PullSummary:
    """Counts of one pull run."""

    found: int = 0
    sent: int = 0
    refused: int = 0
    failed: int = 0
    skipped: int = 0
    studies: list[dict[str, Any]] = field(default_factory=list)

    def line(self) -> str:
        return (f"found {self.found}: sent {self.sent}, refused {self.refused}, failed {self.failed}, "
                f"skipped {self.skipped} (already done)")


def date_range(pull: Mapping[str, Any], ledger: Ledger) -> tuple[str, str] | None:
    """The StudyDate range to query (YYYYMMDD strings), or None for a StudyInstanceUID query."""
    if pull.get("study_uid"):
        return None
    if pull.get("since_last_run"):
        last = str(ledger.meta.get("last_run_date") or "")
        if not last:
            return ("", "")  # first run: everything
        start = date(int(last[:4]), int(last[4:6]), int(last[6:8])) - timedelta(days=int(pull.get("lookback_days") or 0))
        return (start.strftime("%Y%m%d"), "")
    lo, hi = str(pull.get("date_from") or ""), str(pull.get("date_to") or "")
    if not lo and not hi:
        raise ValueError("pull mode needs pull.study_uid, pull.date_from/pull.date_to or pull.since_last_run=true")
    for text in (lo, hi):
        if text and not (len(text) == 8 and text.isdigit()):
            raise ValueError(f"dates are YYYYMMDD, got {text!r}")
    return (lo, hi)


def handle_study(ref: StudyRef, client: Any, segmenter: Any, cfg: Mapping[str, Any], infer_cfg: InferSettings,
                 ledger: Ledger, key: str, work_dir: Path) -> dict[str, Any]:
    """Retrieve, process and send one study; record it in the ledger and the audit log; returns the audit line."""
    retries, backoff = int(cfg["retries"]), float(cfg["backoff_s"])
    url = str(cfg["pull"]["url"])
    t0 = time.perf_counter()
    durations: dict[str, float] = {}
    received: dict[str, Any] = {"via": "WADO-RS", "from": url}
    outcome = StudyOutcome("error")
    sent: list[str] = []
    with tempfile.TemporaryDirectory(prefix="onfh-pacs-", dir=work_dir) as tmp:
        try:
            t = time.perf_counter()
            received.update(retrieve_study(client, ref.study_uid, Path(tmp) / "in", retries, backoff))
            durations["retrieve_s"] = round(time.perf_counter() - t, 3)
            if not received["instances"]:
                outcome = StudyOutcome("refused", "no image instances in the study (only SEG/SR or none)")
            else:
                outcome = process_study(Path(tmp) / "in", Path(tmp) / "out", segmenter, infer_cfg,
                                        bool(cfg["deidentify"]))
                durations.update(outcome.timings)
                if outcome.status == "ready":
                    t = time.perf_counter()
                    sent = stow(client, outcome.files, retries, backoff)
                    durations["send_s"] = round(time.perf_counter() - t, 3)
        except NetworkError as exc:
            outcome.status, outcome.reason = "error", f"network: {exc}"
        except Exception as exc:  # one study's failure never stops the run
            outcome.status, outcome.reason = "error", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    status = "sent" if outcome.status == "ready" and sent else outcome.status
    durations["total_s"] = round(time.perf_counter() - t0, 3)
    record = audit_record(
        mode="pull", study_uid=ref.study_uid, accession=ref.accession, study_date=ref.study_date,
        received=received, series=outcome.series, status=status, reason=outcome.reason,
        qc_flags=outcome.qc_flags, hips=outcome.hips, destination=url if status == "sent" else None,
        sent_sop_instance_uids=sent, model_version=str(getattr(segmenter, "version", "unknown")),
        settings_key=key, durations=durations,
    )
    ledger.record(ref.study_uid, status, key, sent=sent, reason=outcome.reason)
    append_audit(Path(cfg["state_dir"]) / "audit.jsonl", record)
    return record


def run_pull(cfg: Mapping[str, Any], segmenter: Any, infer_cfg: InferSettings, client: Any = None) -> PullSummary:
    """One pull run (see the module docstring)."""
    state_dir = Path(cfg["state_dir"])
    state_dir.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(state_dir / "ledger.json")
    pull = cfg["pull"]
    client = client or dicomweb_client(str(pull["url"]), float(cfg["timeout_s"]))
    key = study_settings_key(segmenter, infer_cfg, bool(cfg["deidentify"]))
    today = date.today().strftime("%Y%m%d")
    span = date_range(pull, ledger)
    refs = with_retries(lambda: query_studies(client, pull.get("study_uid"), span, int(pull["limit"])),
                        "QIDO-RS studies", int(cfg["retries"]), float(cfg["backoff_s"]))
    summary = PullSummary(found=len(refs))
    work_dir = state_dir / "work"
    work_dir.mkdir(exist_ok=True)
    for ref in refs:
        if ledger.is_done(ref.study_uid, key):
            summary.skipped += 1
            continue
        record = handle_study(ref, client, segmenter, cfg, infer_cfg, ledger, key, work_dir)
        summary.studies.append(record)
        status = record["status"]
        if status == "sent":
            summary.sent += 1
        elif status == "refused":
            summary.refused += 1
        else:
            summary.failed += 1
        log.info("study %s: %s%s", ref.study_uid, status, f" ({record['reason']})" if record["reason"] else "")
    ledger.meta.update(last_run_date=today, last_run=utc_timestamp(ZULU))
    ledger.save()
    return summary
