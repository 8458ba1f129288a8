"""The working tree must leave room on a device call (docs/development.md: 64 MiB travel per call, the tree
included): tracked files stay under 48 MiB, so wheels, tissue crops or a checkpoint still fit beside them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIMIT_MIB = 48


def tracked_files() -> list[Path]:
    """Files git tracks in this checkout (those that exist on disk)."""
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True).stdout
    return [ROOT / p for p in out.decode().split("\0") if p and (ROOT / p).is_file()]


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_tracked_tree_leaves_room_on_a_device_call() -> None:
    sizes = {p: p.stat().st_size for p in tracked_files()}
    total = sum(sizes.values())
    biggest = sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
    detail = ", ".join(f"{p.relative_to(ROOT)} {s / 2**20:.1f} MiB" for p, s in biggest)
    assert total < LIMIT_MIB * 2**20, f"tracked files {total / 2**20:.1f} MiB >= {LIMIT_MIB} MiB; largest: {detail}"
