"""One way to run many independent jobs: :func:`map_jobs` over this process, a local process pool or Dask.

Used by the batch (:mod:`onfh_seg.run.batch`, one job per scan) and by onfh-track (one job per patient).

* ``Executor("local", workers=1)`` (or a single item): in this process, in order;
* ``Executor("local", workers=N)``: a ``ProcessPoolExecutor`` (spawn) of N workers. Ctrl-C goes to the
  main process only; SIGTERM from it (or from the kernel when it dies, :func:`onfh_seg.lifecycle.die_with_parent`)
  interrupts the job in hand (``KeyboardInterrupt``: the job removes its partial outputs) and ends the worker;
  ``keep_fd`` (e.g. the out_dir lock) stays open in every worker while it lives;
* ``Executor("dask", workers=N, scheduler=None|address)``: one Dask task per item (:mod:`onfh_seg.run.dask_exec`).

An exception in the consumer (Ctrl-C included) stops the workers: queued items are cancelled, running ones
get SIGTERM and a grace period, then are killed.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from onfh_seg.lifecycle import InheritedFd, die_with_parent
from onfh_seg.run.dask_exec import dask_client, submit_in_order

log = logging.getLogger("onfh_seg.run.pool")

OnError = Callable[[Any, BaseException], Any]


@dataclass(frozen=True)
class Executor:
    """Where :func:`map_jobs` runs the jobs: ``kind`` local | dask, ``workers`` processes, the Dask
    ``scheduler`` (None: a local cluster), ``keep_fd`` a file descriptor the local pool's workers keep open."""

    kind: str = "local"
    workers: int = 1
    scheduler: str | None = None
    keep_fd: int | None = None


def map_jobs(fn: Callable[[Any], Any], items: Sequence[Any], executor: Executor,
             on_error: OnError | None = None) -> Iterator[tuple[int, Any]]:
    """``(index, fn(item))`` for each item, in completion order.

    ``fn`` must be picklable for a pool or Dask (a module-level function or a ``functools.partial`` of one)
    and should not raise for a bad item. ``on_error(item, exc)`` is the result of an item whose worker died
    (killed, out of memory) or whose task was cancelled; without it that exception is raised here.
    """
    if not items:
        return
    workers = max(1, min(int(executor.workers), len(items)))
    if executor.kind == "dask":
        yield from _map_dask(fn, items, workers, executor.scheduler, on_error)
    elif workers == 1:
        for i, item in enumerate(items):
            yield i, fn(item)
    else:
        yield from _map_pool(fn, items, workers, executor.keep_fd, on_error)


# ---------------------------------------------------------------- Dask


def _map_dask(fn: Callable[[Any], Any], items: Sequence[Any], workers: int, scheduler: str | None,
              on_error: OnError | None) -> Iterator[tuple[int, Any]]:
    with dask_client(workers, scheduler) as (client, _):
        for i, fut in submit_in_order(client, fn, ((item,) for item in items), "onfh-job"):
            try:
                result = fut.result()
            except (Exception, asyncio.CancelledError) as exc:  # its workers died (KilledWorker), or the
                if on_error is None:  # scheduler went away (the task was cancelled)
                    raise
                result = on_error(items[i], exc)
            yield i, result


# ---------------------------------------------------------------- local process pool

_WORKER: dict[str, Any] = {}


def _worker_sigterm(signum: int, frame: Any) -> None:
    if _WORKER.get("stopping"):
        return  # a second SIGTERM (e.g. kernel and watchdog) must not interrupt the clean-up
    _WORKER["stopping"] = True
    if _WORKER.get("busy"):
        raise KeyboardInterrupt  # the job removes its partial outputs, then the worker ends
    os._exit(143)


def _init_worker(log_level: int, parent_pid: int | None = None, keep_fd: InheritedFd | None = None) -> None:
    """Pool initializer: signals (see the module docstring), the parent watch, logging to stderr."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _worker_sigterm)
    if keep_fd is not None:
        _WORKER["keep_fd"] = keep_fd
    if parent_pid is not None:
        die_with_parent(parent_pid)
    logging.basicConfig(level=log_level, format="%(message)s", stream=sys.stderr)


def _pool_call(fn: Callable[[Any], Any], item: Any) -> Any:
    """Run one job in a pool worker; stopped by the main process (SIGTERM): end the worker."""
    _WORKER["busy"] = True
    try:
        return fn(item)
    except KeyboardInterrupt:  # partial outputs are already removed by the job
        os._exit(143)
    finally:
        _WORKER["busy"] = False


def _ignore_stop_signals() -> dict[int, Any]:
    """Ignore SIGINT/SIGTERM while the workers are being stopped (a second Ctrl-C must not cut the
    clean-up short); returns the previous handlers. No-op outside the main thread."""
    previous: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, signal.SIG_IGN)
        except ValueError:  # not the main thread
            pass
    return previous


def stop_pool(executor: ProcessPoolExecutor, grace_s: float = 30.0) -> None:
    """Cancel queued jobs, stop the running ones (SIGTERM: they clean up), wait up to ``grace_s``
    for the workers, then kill any that is left."""
    previous = _ignore_stop_signals()
    try:
        processes = list(getattr(executor, "_processes", {}).values())  # no public API before Python 3.14
        executor.shutdown(wait=False, cancel_futures=True)
        for proc in processes:
            try:
                proc.terminate()
            except (OSError, ValueError, AttributeError):
                pass
        deadline = time.monotonic() + grace_s
        for proc in processes:
            try:
                proc.join(timeout=max(0.0, deadline - time.monotonic()))
                if proc.is_alive():
                    log.warning("worker %s did not stop in %.0f s; killing it", proc.pid, grace_s)
                    proc.kill()
                    proc.join(timeout=5)
            except (OSError, ValueError, AttributeError, AssertionError):
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _map_pool(fn: Callable[[Any], Any], items: Sequence[Any], workers: int, keep_fd: int | None,
              on_error: OnError | None) -> Iterator[tuple[int, Any]]:
    ctx = multiprocessing.get_context("spawn")
    inherited = InheritedFd(keep_fd) if keep_fd is not None else None
    executor = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                   initargs=(logging.getLogger().getEffectiveLevel(), os.getpid(), inherited))
    try:
        pending = {executor.submit(_pool_call, fn, item): i for i, item in enumerate(items)}
        while pending:
            finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for fut in finished:
                i = pending.pop(fut)
                try:
                    result = fut.result()
                except Exception as exc:  # a worker died (e.g. killed, out of memory)
                    if on_error is None:
                        raise
                    result = on_error(items[i], exc)
                yield i, result
    except BaseException:
        stop_pool(executor)
        raise
    executor.shutdown(wait=True)
