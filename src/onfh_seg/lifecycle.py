"""Process lifecycle of the commands that run worker pools and write into an out_dir.

* :func:`die_with_parent` (a pool initializer): a worker gets SIGTERM when its
  parent process dies, even by SIGKILL (Linux ``prctl(PR_SET_PDEATHSIG)``), and a
  watchdog thread that sees the parent change (any OS) sends the same SIGTERM,
  then ends the worker hard after a grace period. Workers stay in their
  parent's process group, so ``kill -- -<pgid>`` reaches the whole run.
* :class:`DirLock`: one run per out_dir (``fcntl.flock`` on ``<out_dir>/.<tool>.lock``,
  holding pid, host and start time). A second run refuses with one line naming
  the holder, or waits (``wait=True``). The lock is released by the kernel when
  the last process holding it ends; pool workers inherit it
  (:class:`InheritedFd`), so a new run cannot start while a killed run's worker
  is still cleaning up.
* :func:`check_writable`: out_dir is probed before any work.
* :func:`remove_own_temporaries`: removes only this package's temporaries
  (``.<name>.onfh-tmp-<pid>-<random>.tmp``, see ``io.files.atomic_write_bytes``)
  whose writer process is gone; any other file (a user's ``.notes.tmp``) stays.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import logging
import os
import re
import signal
import socket
import tempfile
import threading
import time
from multiprocessing.reduction import DupFd
from pathlib import Path
from typing import Any

from onfh_seg.clock import OFFSET, utc_timestamp
from onfh_seg.io.files import TMP_MARK

log = logging.getLogger("onfh_seg.lifecycle")

PR_SET_PDEATHSIG = 1
WATCHDOG_INTERVAL_S = 1.0
WATCHDOG_GRACE_S = 30.0
_OWN_TMP = re.compile(r"^\..+" + re.escape(TMP_MARK) + r"(\d+)-[^/]*\.tmp$")


# ---------------------------------------------------------------- workers die with their parent


def set_parent_death_signal(signum: int) -> bool:
    """Ask the Linux kernel to send ``signum`` to this process when its parent dies; False elsewhere."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):  # not Linux (no prctl)
        return False


def _watch_parent(parent_pid: int, interval_s: float, grace_s: float) -> None:
    while os.getppid() == parent_pid:
        time.sleep(interval_s)
    os.kill(os.getpid(), signal.SIGTERM)  # the worker's own handler cleans up and ends it
    time.sleep(grace_s)
    os._exit(137)  # it did not end in time


def die_with_parent(parent_pid: int, interval_s: float = WATCHDOG_INTERVAL_S, grace_s: float = WATCHDOG_GRACE_S) -> None:
    """Pool initializer: end this worker (SIGTERM, then hard after ``grace_s``) when ``parent_pid`` dies.

    Call it after the worker's own SIGTERM handler is installed. ``parent_pid``
    is the parent's pid as the parent saw it (``os.getpid()`` there), so a parent
    that died before this ran is noticed too.
    """
    set_parent_death_signal(signal.SIGTERM)
    threading.Thread(target=_watch_parent, args=(int(parent_pid), interval_s, grace_s),
                     name="onfh-parent-watchdog", daemon=True).start()
    if os.getppid() != int(parent_pid):  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def pid_alive(pid: int) -> bool:
    """True when a process ``pid`` exists (on this host) and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


# ---------------------------------------------------------------- out_dir: writable, locked, own temporaries


def check_writable(folder: str | Path, what: str = "out_dir") -> None:
    """Raise a one-line ``OSError`` unless files can be created in ``folder`` (or, when it does not
    exist yet, in its nearest existing ancestor, where it would be created)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OSError(f"{what} is not a folder: {folder}")
    probe_dir = folder
    while not probe_dir.exists():
        if probe_dir.parent == probe_dir:
            break
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise OSError(f"{what} cannot be created: {probe_dir} is not a folder")
    if probe_dir != folder:  # not created yet: nothing is written into someone else's folder
        if not os.access(probe_dir, os.W_OK | os.X_OK):
            raise OSError(f"{what} cannot be created: {probe_dir} is not writable")
        return
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".write-probe{TMP_MARK}{os.getpid()}-", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise OSError(f"{what} is not writable: {folder} ({exc.strerror or type(exc).__name__})") from None


def own_temporary_pid(name: str) -> int | None:
    """The writer's pid if ``name`` is one of this package's temporaries, else None."""
    m = _OWN_TMP.match(name)
    return int(m.group(1)) if m else None


def remove_own_temporaries(folder: str | Path) -> list[Path]:
    """Delete this package's temporaries in ``folder`` (not recursive) whose writer is gone."""
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in sorted(folder.iterdir()):
        pid = own_temporary_pid(p.name)
        if pid is None or pid_alive(pid) or not p.is_file():
            continue
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def _holder_text(raw: str) -> str:
    """'onfh-infer pid 123 on host, started ...' from a lock file's record."""
    try:
        h = json.loads(raw)
        text = f"{h.get('tool', 'a run')} pid {h['pid']} on {h['host']}, started {h['started']}"
    except (ValueError, KeyError, TypeError):
        return "another process"
    if h["host"] == socket.gethostname() and not pid_alive(int(h["pid"])):
        text += " (ended; its workers are still stopping)"
    return text


class DirLockBusy(RuntimeError):
    """out_dir is locked by another run."""


def _same_file(fd: int, path: Path) -> bool:
    try:
        st, cur = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == (cur.st_dev, cur.st_ino)


class DirLock:
    """Exclusive lock of a folder for one run: ``<folder>/.<tool>.lock`` with ``fcntl.flock``.

    Use as a context manager. The kernel lock is what counts: it goes away with
    the last process that holds the file open, however it ends (a file left by a
    killed run is not a stale lock). A run that ends normally removes the file
    while still holding the lock; a run that was waiting on the removed file
    notices (another inode at the path) and locks the current one instead.
    """

    def __init__(self, folder: str | Path, tool: str, wait: bool = False, what: str = "out_dir") -> None:
        self.path = Path(folder) / f".{tool}.lock"
        self.tool, self.wait, self.what = tool, bool(wait), what
        self.fd: int | None = None

    def _lock_once(self) -> int | None:
        """Lock the file now at ``self.path``: its descriptor, or None when it was removed meanwhile."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                holder = _holder_text(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
                if not self.wait:
                    raise DirLockBusy(
                        f"{self.what} {self.path.parent} is in use by {holder} (lock {self.path.name}); "
                        f"wait for it to finish, choose another {self.what}, or set wait_lock=true") from None
                log.warning("%s %s is in use by %s; waiting for it to finish", self.what, self.path.parent, holder)
                fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        if _same_file(fd, self.path):
            return fd
        os.close(fd)
        return None

    def acquire(self) -> "DirLock":
        fd = None
        while fd is None:
            fd = self._lock_once()
        try:
            record = {"tool": self.tool, "pid": os.getpid(), "host": socket.gethostname(),
                      "started": utc_timestamp(OFFSET)}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode("utf-8"), 0)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file (still locked, so no other run holds it) and close it. Workers
        that inherited it hold the lock until they end."""
        if self.fd is not None:
            try:
                if _same_file(self.fd, self.path):
                    self.path.unlink()
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _rebuild_fd(dup: Any) -> int:
    return int(dup.detach())


class InheritedFd:
    """A file descriptor handed to a spawned (or forked) pool worker: the worker gets a
    duplicate of the same open file, so a lock held on it stays held while the worker lives."""

    def __init__(self, fd: int) -> None:
        self.fd = int(fd)

    def __reduce__(self) -> tuple:
        return (_rebuild_fd, (DupFd(self.fd),))
