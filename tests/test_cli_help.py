"""Every console entry point is a Hydra app whose --help explains its keys."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("name,key", [("synth", "out_dir"), ("train", "trainer"), ("export", "fine_ckpt"),
                                      ("infer", "input"), ("track", "infer_dir"), ("eval", "model_dir")])
def test_help_explains_keys(name, key):
    out = subprocess.run([str(BIN / f"onfh-{name}"), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"onfh-{name}" in out.stdout and key in out.stdout
