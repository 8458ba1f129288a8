"""Exceptions as one line of text: for per-scan error records (``one_line``) and the CLIs' messages
(``first_line``)."""

from __future__ import annotations

EXPECTED_ERRORS = (ValueError, OSError, EOFError, MemoryError)  # errors of bad input; others get their type named


def one_line(exc: BaseException) -> str:
    """A one-line description of an exception (type name added for unexpected ones)."""
    text = str(exc).strip().splitlines()[0].strip() if str(exc).strip() else ""
    if isinstance(exc, FileNotFoundError) and exc.filename and str(exc.filename) not in text:
        text = f"{text}: {exc.filename}" if text else f"file not found: {exc.filename}"
    if not isinstance(exc, EXPECTED_ERRORS) or not text:
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text[:500]


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when the message is empty."""
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
