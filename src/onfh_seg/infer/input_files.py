"""Inputs are regular files only: a FIFO or device is refused by ``stat`` without being opened for a blocking read.

Every problem with an input is an ``InputError`` (a ``ValueError``) with a one-line message.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from onfh_seg.io.files import sha256_file


class InputError(ValueError):
    """An unusable input, described in one line."""


def file_kind(mode: int) -> str:
    """A short name for a non-regular file type (FIFO, device, socket, ...)."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def require_regular_file(path: Path) -> os.stat_result:
    """``os.stat`` of ``path``; one-line error unless it is a regular file (never opens it)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"input not found: {path}") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"not a regular file ({file_kind(st.st_mode)}): {path}; give a NIfTI file, a folder or a .csv")
    return st


def sha256_regular_file(path: Path) -> str:
    """sha256 of a regular file, streamed in 1 MiB chunks (InputError for FIFOs, devices, folders)."""
    require_regular_file(path)
    return sha256_file(path)
