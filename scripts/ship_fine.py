"""Ship a judged fine candidate: its export's fine network into a model folder, and model.json updated.

    .venv/bin/python scripts/ship_fine.py EXPORT_DIR [--root .] --record models/training/<run>/ship.json

EXPORT_DIR is the candidate's export made by the judge (``<judge out>/j_<name>/export_<name>``: fine.onnx,
fine.ckpt and model.json exported with the shipped coarse network). The shipped coarse network must be the one the
export used (same coarse sha256), or the script refuses. ``--record`` is a JSON file with the three texts that
describe the candidate in model.json: ``checkpoint`` (where its checkpoint came from), ``training`` (how it was
trained) and ``selection`` (the rule it passed). Copies fine.onnx and fine.ckpt into ROOT/models (temporary names,
then renamed), writes fine's sha256, the three texts and the new model_version into ROOT/models/model.json, and
prints the new version. ROOT: the repository (default) or a copy of its tree, to run the tests with the candidate
before shipping (the tests look for ../shared beside it: place the copy beside the checkout).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from onfh_seg.export import model_version
from onfh_seg.io.files import atomic_write_text, sha256_file

TEXTS = ("checkpoint", "training", "selection")


def shipped_meta(meta: dict, export_meta: dict, fine_sha: str, record: dict[str, str]) -> dict:
    """The shipped model.json with the candidate's fine network and its three texts; a new model_version."""
    if export_meta["coarse"]["sha256"] != meta["coarse"]["sha256"]:
        raise ValueError("the export's coarse network is not the shipped one")
    if export_meta["fine"]["net"] != meta["fine"]["net"]:
        raise ValueError("the export's fine network has another architecture than the shipped one's model.json")
    out = json.loads(json.dumps(meta))
    out["fine"]["sha256"] = fine_sha
    out["checkpoints"]["fine"] = record["checkpoint"]
    out["training"]["fine"] = record["training"]
    out["training"]["selection"] = record["selection"]
    out["model_version"] = model_version(out)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("export_dir", type=Path)
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--record", type=Path, required=True, help="JSON with checkpoint, training, selection texts")
    a = ap.parse_args()
    models = a.root / "models"
    record = json.loads(a.record.read_text())
    missing = [k for k in TEXTS if not record.get(k)]
    if missing:
        print(f"error: {a.record} lacks {', '.join(missing)}", file=sys.stderr)
        return 2
    for f in ("fine.onnx", "fine.ckpt", "model.json"):
        if not (a.export_dir / f).is_file():
            print(f"error: {a.export_dir / f} missing", file=sys.stderr)
            return 2
    meta = json.loads((models / "model.json").read_text())
    onnx_sha = sha256_file(a.export_dir / "fine.onnx")
    try:
        new = shipped_meta(meta, json.loads((a.export_dir / "model.json").read_text()), onnx_sha, record)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for f in ("fine.onnx", "fine.ckpt"):
        tmp = models / (f + ".tmp")
        shutil.copyfile(a.export_dir / f, tmp)
        os.replace(tmp, models / f)
    atomic_write_text(models / "model.json", json.dumps(new, indent=1))
    print(f"{meta['model_version']} -> {new['model_version']} (fine.onnx {onnx_sha[:8]}, "
          f"fine.ckpt {sha256_file(models / 'fine.ckpt')[:8]}) in {models}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
