"""Ledger and audit log of onfh-pacs.

The ledger (``ledger.json``) maps StudyInstanceUID -> the outcome of its last
processing and the key of the model version and settings it was made with; a
study whose entry is final (sent or refused) with the same key is not
processed or sent again. The audit log (``audit.jsonl``) gets one JSON line per
study handled; it never holds a patient name (only the identifiers the
caller passes, see :func:`audit_record`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from onfh_seg.clock import ZULU, utc_timestamp
from onfh_seg.io.files import atomic_write_text

FINAL_STATUSES = ("sent", "refused")
# keys never written to the audit log, whatever a caller passes
FORBIDDEN_AUDIT_KEYS = ("PatientName", "patient_name", "PatientBirthDate", "patient_birth_date")


def settings_key(model_version: str, settings: Mapping[str, Any]) -> str:
    """A short hash of the model version and the result settings (what makes outputs differ)."""
    text = json.dumps({"model_version": model_version, "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class Ledger:
    """StudyInstanceUID -> last outcome, persisted atomically after every change."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.entries: dict[str, dict[str, Any]] = {}
        self.meta: dict[str, Any] = {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise ValueError(f"ledger {self.path} is not valid JSON: {exc}") from None
            self.entries = dict(data.get("studies") or {})
            self.meta = dict(data.get("meta") or {})

    def is_done(self, study_uid: str, key: str) -> bool:
        """True when ``study_uid`` was sent or refused with the same settings key."""
        entry = self.entries.get(study_uid) or {}
        return entry.get("key") == key and entry.get("status") in FINAL_STATUSES

    def record(self, study_uid: str, status: str, key: str, **extra: Any) -> None:
        """Store the outcome of ``study_uid`` and write the ledger."""
        self.entries[study_uid] = {"status": status, "key": key, "time": utc_timestamp(ZULU), **extra}
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps({"meta": self.meta, "studies": self.entries}, indent=1, sort_keys=True) + "\n")


def audit_record(**fields: Any) -> dict[str, Any]:
    """An audit line: the given fields minus any patient name or birth date, plus a UTC time."""
    return {"time": utc_timestamp(ZULU), **{k: v for k, v in fields.items() if k not in FORBIDDEN_AUDIT_KEYS}}


def append_audit(path: str | Path, record: Mapping[str, Any]) -> None:
    """Append one JSON line to the audit log (flushed and fsynced: a crash loses no finished line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(dict(record), sort_keys=True, default=str) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def read_audit(path: str | Path) -> list[dict[str, Any]]:
    """All audit lines of ``path`` (empty when absent)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
