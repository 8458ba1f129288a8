"""scripts/ship_fine.py: a judged export shipped into a model folder. Shipping the shipped network's own export
reproduces its model_version; another fine network changes it; a foreign coarse network or a missing text is
refused with one line and leaves the folder as it was."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from onfh_seg.io.files import sha256_file

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "ship_fine.py"
RECORD = {"checkpoint": "cand.ckpt (test)", "training": "a test turn", "selection": "a test rule"}


def _tree(tmp: Path) -> tuple[Path, Path, Path]:
    """A repository copy (models/ only), an export folder holding the shipped fine network, and a record."""
    root, export = tmp / "root", tmp / "export"
    (root / "models").mkdir(parents=True)
    export.mkdir()
    for f in ("model.json", "fine.onnx", "fine.ckpt"):
        shutil.copyfile(ROOT / "models" / f, root / "models" / f)
        shutil.copyfile(ROOT / "models" / f, export / f)
    rec = tmp / "record.json"
    rec.write_text(json.dumps(RECORD))
    return root, export, rec


def _ship(export: Path, root: Path, rec: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(export), "--root", str(root), "--record", str(rec)],
                          capture_output=True, text=True, timeout=120)


def test_same_network_keeps_version_and_writes_texts(tmp_path):
    root, export, rec = _tree(tmp_path)
    before = json.loads((root / "models" / "model.json").read_text())
    r = _ship(export, root, rec)
    assert r.returncode == 0, r.stderr
    after = json.loads((root / "models" / "model.json").read_text())
    assert after["model_version"] == before["model_version"]
    assert after["checkpoints"]["fine"] == RECORD["checkpoint"]
    assert after["training"]["fine"] == RECORD["training"] and after["training"]["selection"] == RECORD["selection"]
    assert after["training"]["coarse"] == before["training"]["coarse"]
    assert before["model_version"] in r.stdout
    assert not list((root / "models").glob("*.tmp"))


def test_other_fine_network_changes_version_and_sha(tmp_path):
    root, export, rec = _tree(tmp_path)
    with (export / "fine.onnx").open("ab") as f:
        f.write(b"\0")  # another network, as far as the checksum goes
    before = json.loads((root / "models" / "model.json").read_text())
    assert _ship(export, root, rec).returncode == 0
    after = json.loads((root / "models" / "model.json").read_text())
    assert after["fine"]["sha256"] == sha256_file(export / "fine.onnx") == sha256_file(root / "models" / "fine.onnx")
    assert after["model_version"] != before["model_version"]
    assert after["model_version"].startswith(before["software_version"] + "+synth.")


@pytest.mark.parametrize("what", ["coarse", "record"])
def test_refusals_leave_the_folder(tmp_path, what):
    root, export, rec = _tree(tmp_path)
    if what == "coarse":
        meta = json.loads((export / "model.json").read_text())
        meta["coarse"]["sha256"] = "0" * 64
        (export / "model.json").write_text(json.dumps(meta))
    else:
        rec.write_text(json.dumps({"checkpoint": "x"}))
    before = (root / "models" / "model.json").read_bytes()
    r = _ship(export, root, rec)
    assert r.returncode == 2
    assert r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1
    assert (root / "models" / "model.json").read_bytes() == before
