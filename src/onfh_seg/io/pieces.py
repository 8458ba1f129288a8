"""A large file carried in pieces (a device call brings back files of at most 16 MiB; one takes at most 64 MiB
in all): ``split_file`` cuts it into ``<name>.00``, ``<name>.01``, ... beside ``<name>.sha256`` (the whole
file's SHA-256 in ``sha256sum`` format); ``join_pieces`` puts them together again and checks that checksum."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from onfh_seg.io.files import TMP_MARK, atomic_write_text, sha256_file

CHUNK = 1 << 20


def piece_paths(folder: str | Path, name: str) -> list[Path]:
    """The pieces ``<name>.NN`` in ``folder``, in order; raises ValueError when a number is missing."""
    pat = re.compile(re.escape(name) + r"\.(\d{2,})$")
    found = sorted((int(m.group(1)), p) for p in Path(folder).iterdir() if (m := pat.match(p.name)))
    numbers = [n for n, _ in found]
    if numbers != list(range(len(numbers))):
        raise ValueError(f"pieces of {name} in {folder}: have numbers {numbers}, expected 0..{len(numbers) - 1}")
    return [p for _, p in found]


def split_file(src: str | Path, folder: str | Path, piece_bytes: int, name: str | None = None) -> list[Path]:
    """Cut ``src`` into pieces of ``piece_bytes`` (the last one shorter) named ``<name>.NN`` in ``folder``
    and write ``<name>.sha256``; returns the pieces. Earlier pieces of that name there are removed first."""
    if piece_bytes < 1:
        raise ValueError(f"piece_bytes must be at least 1, got {piece_bytes}")
    src, folder = Path(src), Path(folder)
    name = name or src.name
    folder.mkdir(parents=True, exist_ok=True)
    for old in piece_paths_any(folder, name):
        old.unlink()
    pieces: list[Path] = []
    with open(src, "rb") as fh:
        while True:
            data = fh.read(piece_bytes)
            if not data and pieces:
                break
            piece = folder / f"{name}.{len(pieces):02d}"
            tmp = piece.with_name(f".{piece.name}{TMP_MARK}{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, piece)
            pieces.append(piece)
            if len(data) < piece_bytes:
                break
    atomic_write_text(folder / f"{name}.sha256", f"{sha256_file(src)}  {name}\n")
    return pieces


def piece_paths_any(folder: Path, name: str) -> list[Path]:
    """Every ``<name>.NN`` in ``folder`` whatever its numbers (for clearing out an earlier split)."""
    pat = re.compile(re.escape(name) + r"\.\d{2,}$")
    return [p for p in folder.iterdir() if pat.match(p.name)]


def expected_sha256(folder: str | Path, name: str) -> str:
    """The checksum recorded in ``<name>.sha256`` (first word of its first line)."""
    text = (Path(folder) / f"{name}.sha256").read_text(encoding="utf-8").split()
    if not text or not re.fullmatch(r"[0-9a-f]{64}", text[0]):
        raise ValueError(f"{Path(folder) / (name + '.sha256')} holds no SHA-256")
    return text[0]


def join_pieces(folder: str | Path, name: str, dest: str | Path, sha_folder: str | Path | None = None) -> Path:
    """Join ``<name>.NN`` of ``folder`` into ``dest`` and check it against ``<name>.sha256`` (in ``sha_folder``,
    default ``folder``); ``dest`` appears only when the checksum matches (else ValueError, nothing left)."""
    pieces = piece_paths(folder, name)
    if not pieces:
        raise ValueError(f"no pieces {name}.00 ... in {folder}")
    want = expected_sha256(sha_folder or folder, name)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}{TMP_MARK}{os.getpid()}.tmp")
    h = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for p in pieces:
                with open(p, "rb") as fh:
                    for chunk in iter(lambda: fh.read(CHUNK), b""):
                        h.update(chunk)
                        out.write(chunk)
        if h.hexdigest() != want:
            raise ValueError(f"{len(pieces)} pieces of {name} joined have SHA-256 {h.hexdigest()}, "
                             f"expected {want}: a piece is missing, stale or damaged")
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest

