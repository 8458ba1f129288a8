"""Cohort manifest (CSV) reading and writing: the one reader every stage uses.

Required columns: ``patient_id, timepoint, months, image``. Optional: ``labels``
(truth), ``truth`` (JSON record), ``regenerated``, ``hip``/``side`` and clinical
scores. Paths are relative to the manifest's folder. Rows may carry scores with
an empty ``image`` (a clinic visit without a scan).

:func:`read_manifest` is the only manifest reader (onfh-infer inputs,
onfh-track, training data, evaluation). It accepts a UTF-8 byte-order mark,
Windows (CRLF) line endings, surrounding whitespace in names and values and
trailing empty fields; it skips blank lines (also lines of commas only) and
drops a row that repeats an earlier row exactly (with a logged warning). Everything it cannot use is a
:class:`ManifestError` (a ``ValueError``) with a one-line message naming the
file and, where there is one, the line: a missing file, an empty file,
non-UTF-8 text, a missing or repeated column, a row with more (non-empty)
fields than the header, broken quoting.

:func:`read_csv_rows` reads any other CSV file of the project (e.g. onfh-infer's ``errors.csv``) by the same
rules; its errors are :class:`CsvError` and say "CSV file" where a manifest's say "manifest".
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from pathlib import Path

from onfh_seg.io.files import atomic_write_text

log = logging.getLogger("onfh_seg.manifest")

REQUIRED_COLUMNS = ("patient_id", "timepoint", "months", "image")
CLINICAL_COLUMNS = (
    "functional_rating_index",
    "vas_walking",
    "harris_hip_score",
    "rom_flexion_deg",
    "rom_flexion_vas",
    "rom_abduction_deg",
    "rom_abduction_vas",
    "rom_adduction_deg",
    "rom_adduction_vas",
)
DEFAULT_REQUIRED = ("patient_id", "image")


class CsvError(ValueError):
    """An unusable CSV file, described in one line."""


class ManifestError(CsvError):
    """An unusable manifest, described in one line."""


def _csv_text(path: Path, what: str, error: type[CsvError]) -> str:
    """The file's text (BOM removed); one-line errors for a missing, unreadable or non-UTF-8 file."""
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    if not path.is_file():
        raise error(f"{what} is not a file: {path}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 CSV") from None


def _header(path: Path, fields: list[str] | None, required: Sequence[str], what: str, error: type[CsvError]) -> list[str]:
    """Stripped column names; one-line errors for no header, repeated or missing columns."""
    if not fields or not any(f.strip() for f in fields):
        raise error(f"{what} {path} is empty (no header line)")
    names = [f.strip() for f in fields]
    repeated = sorted({n for n in names if n and names.count(n) > 1})
    if repeated:
        raise error(f"{what} {path}: column(s) named twice: {', '.join(repeated)}")
    missing = [c for c in required if c not in names]
    if missing:
        which = ", ".join(repr(c) for c in missing)
        raise error(
            f"{what} {path} has no {which} column{'s' if len(missing) > 1 else ''} "
            f"(columns: {', '.join(n for n in names if n)})"
        )
    return names


def read_manifest(path: str | Path, required: Sequence[str] = DEFAULT_REQUIRED, warn: bool = True) -> list[dict[str, str]]:
    """Rows of a manifest CSV as dicts of stripped strings, in file order (see the module docstring).

    ``required`` are the columns the caller needs. Blank lines are skipped and
    an exact repeat of an earlier row is dropped with a warning (``warn=False``:
    silently, for a second reading of the same file); a short row gets empty
    values for its missing fields.
    """
    return _read_rows(Path(path), required, warn, "manifest", ManifestError)


def read_csv_rows(path: str | Path, required: Sequence[str] = (), warn: bool = True) -> list[dict[str, str]]:
    """Rows of a CSV file that is not a manifest (e.g. ``errors.csv``), read as :func:`read_manifest` reads
    one; errors are :class:`CsvError`."""
    return _read_rows(Path(path), required, warn, "CSV file", CsvError)


def _read_rows(path: Path, required: Sequence[str], warn: bool, what: str,
               error: type[CsvError]) -> list[dict[str, str]]:
    """The rows of :func:`read_manifest` and :func:`read_csv_rows`; ``what`` names the file in errors."""
    text = _csv_text(path, what, error)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        names = _header(path, next(reader, None), required, what, error)
        rows: list[dict[str, str]] = []
        seen: dict[tuple[str, ...], int] = {}
        for fields in reader:
            values = [v.strip() for v in fields]
            if not any(values):
                continue  # blank line (or commas only)
            line = reader.line_num
            if len(values) > len(names) and any(values[len(names):]):
                raise error(
                    f"{what} {path} line {line}: {len(values)} fields but the header has {len(names)} "
                    "(an unquoted comma in a value?)"
                )
            values = values[: len(names)] + [""] * (len(names) - len(values))  # trailing empty fields dropped
            key = tuple(values)
            if key in seen:
                if warn:
                    log.warning("%s %s line %d repeats line %d; the repeat is ignored", what, path, line,
                                seen[key])
                continue
            seen[key] = line
            rows.append({n: v for n, v in zip(names, values) if n})
    except csv.Error as exc:
        raise error(f"{what} {path} line {reader.line_num}: malformed CSV ({exc})") from None
    return rows


def resolve(manifest_path: str | Path, rel: str) -> Path:
    """Resolve a manifest path entry relative to the manifest's folder."""
    p = Path(rel)
    return p if p.is_absolute() else Path(manifest_path).parent / p


def write_manifest(path: str | Path, rows: list[dict], columns: list[str] | None = None) -> None:
    """Write rows atomically; columns default to the required ones then the rest in first-seen order."""
    if columns is None:
        columns = list(REQUIRED_COLUMNS)
        for r in rows:
            for k in r:
                if k not in columns:
                    columns.append(k)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    atomic_write_text(path, buf.getvalue())
