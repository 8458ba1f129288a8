"""onfh_seg.run.pool.map_jobs: one way to run jobs here, in a local process pool (and on Dask: tests/test_dask.py)."""

from __future__ import annotations

import os
from contextlib import closing

import pytest

from onfh_seg.run.pool import Executor, map_jobs


def _square(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def _die_on_three(x: int) -> int:
    if x == 3:
        os._exit(1)  # a worker that dies (as when killed or out of memory)
    return x


def test_in_process_runs_in_order_here() -> None:
    got = list(map_jobs(_square, [1, 2, 3], Executor("local", 1)))
    assert [i for i, _ in got] == [0, 1, 2] and [r[0] for _, r in got] == [1, 4, 9]
    assert {r[1] for _, r in got} == {os.getpid()}
    assert list(map_jobs(_square, [], Executor("local", 4))) == []


def test_pool_gives_every_result_by_index_from_other_processes() -> None:
    with closing(map_jobs(_square, [1, 2, 3, 4], Executor("local", 2))) as results:
        got = dict(results)
    assert {i: r[0] for i, r in got.items()} == {0: 1, 1: 4, 2: 9, 3: 16}
    assert os.getpid() not in {r[1] for r in got.values()}


def test_pool_worker_death_is_the_items_result_or_raised() -> None:
    with closing(map_jobs(_die_on_three, [1, 3], Executor("local", 2), on_error=lambda item, exc: f"died: {item}")) as results:
        got = dict(results)
    assert got[1] == "died: 3"
    with pytest.raises(Exception):
        with closing(map_jobs(_die_on_three, [3, 1], Executor("local", 2))) as results:
            list(results)
