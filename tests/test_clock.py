"""The one UTC clock keeps the two zone designators its records have always had."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from onfh_seg.clock import OFFSET, ZULU, utc_timestamp


@pytest.mark.parametrize("zone", [OFFSET, ZULU])
def test_utc_timestamp_is_iso_8601_utc_to_the_second(zone: str) -> None:
    before = datetime.now(timezone.utc).replace(microsecond=0)
    text = utc_timestamp(zone)
    after = datetime.now(timezone.utc)
    assert text.endswith(zone) and len(text) == len("2026-03-01T12:00:00") + len(zone)
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert when.utcoffset() == timedelta(0) and before <= when <= after


def test_utc_timestamp_refuses_another_zone() -> None:
    with pytest.raises(ValueError, match="zone"):
        utc_timestamp("+01:00")
