"""Build hook: ship configs/ and the ONNX model as package data (``onfh_seg/_data``).

Everything else is in pyproject.toml. In a source checkout (and an editable
install) the package finds ``configs/`` and ``models/`` beside ``src/``; an
installed wheel finds the copies made here (:func:`onfh_seg.config.config_dir`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
MODEL_FILES = ("coarse.onnx", "fine.onnx", "model.json", "MODEL_CARD.md")


class BuildPyWithData(build_py):
    """build_py that also copies configs/**/*.yaml and the shipped ONNX model into onfh_seg/_data."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads configs/ and models/ from the checkout
        data = Path(self.build_lib) / "onfh_seg" / "_data"
        for src in sorted((ROOT / "configs").rglob("*.yaml")):
            dst = data / "configs" / src.relative_to(ROOT / "configs")
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        for name in MODEL_FILES:
            src = ROOT / "models" / name
            if src.is_file():
                (data / "models").mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, data / "models" / name)


setup(cmdclass={"build_py": BuildPyWithData})
