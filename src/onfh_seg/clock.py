"""The one UTC clock: now as ISO 8601 to the second, in the zone designator each record has always used."""

from __future__ import annotations

from datetime import datetime, timezone

OFFSET = "+00:00"  # run_manifest.json (started, finished) and lock files: 2026-03-01T12:00:00+00:00
ZULU = "Z"  # the PACS ledger and audit log: 2026-03-01T12:00:00Z


def utc_timestamp(zone: str) -> str:
    """The current UTC time as ISO 8601 to the second, ending in ``zone`` (:data:`OFFSET` or :data:`ZULU`)."""
    if zone not in (OFFSET, ZULU):
        raise ValueError(f"zone must be {OFFSET!r} or {ZULU!r}, not {zone!r}")
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + zone
