"""Outputs a viewer and a statistician read: label tables beside the segmentations, manifest columns in
measurements.csv, numbers as numbers, the execution provider actually used."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from onfh_seg import config
from onfh_seg.io.label_tables import (
    itksnap_label_description,
    labels_json,
    slicer_color_table,
    write_label_tables,
)
from onfh_seg.labels import LABEL_RGB, LABELS


def test_slicer_and_itksnap_tables_list_every_label_with_its_colour() -> None:
    ctbl = [ln.split() for ln in slicer_color_table().splitlines() if ln and not ln.startswith("#")]
    assert [(int(v), name, tuple(map(int, rgb))) for v, name, *rgb, _ in ctbl] == [
        (v, LABELS[v], LABEL_RGB[v]) for v in sorted(LABELS)]
    assert all(len(row) == 6 for row in ctbl) and ctbl[0][5] == "0" and ctbl[1][5] == "255"
    snap = re.findall(r'^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+(\d)\s+(\d)\s+"([^"]+)"$',
                      itksnap_label_description(), re.M)
    assert [int(s[0]) for s in snap] == sorted(LABELS)
    assert [tuple(map(int, s[1:4])) for s in snap] == [LABEL_RGB[v] for v in sorted(LABELS)]
    assert snap[0][7] == "Clear Label" and snap[2][7] == LABELS[2]
    record = json.loads(labels_json())
    assert [e["value"] for e in record["labels"]] == sorted(LABELS)
    assert record["groups"] == {"head": [1, 2, 3], "lesion": [2, 3]}


def test_label_tables_are_written_once(tmp_path: Path) -> None:
    paths = write_label_tables(tmp_path)
    stamps = [p.stat().st_mtime_ns for p in paths]
    assert write_label_tables(tmp_path) == paths
    assert [p.stat().st_mtime_ns for p in paths] == stamps


@dataclass
class _Result:
    labels: np.ndarray
    mean_confidence: float = 1.0
    head_centres_ras: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)


class _EmptySegmenter:
    """Finds nothing; runs 'on' CUDA after a request for auto, as ONNX Runtime would report it."""

    version, sha256 = "test-1", "0" * 64
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    provider = providers[0]
    provider_options = {"CUDAExecutionProvider": {"use_tf32": "0"}, "CPUExecutionProvider": {}}

    def segment(self, image: np.ndarray, affine: np.ndarray) -> _Result:
        return _Result(np.zeros(image.shape, np.uint8))


def test_manifest_run_carries_patient_and_months_and_records_the_provider(tmp_path: Path) -> None:
    from onfh_seg.run.batch import run_batch

    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    rows = []
    for pid, tp, months in [("P1", "m00", "0"), ("P1", "m06", "6")]:
        data = (100 + 50 * rng.random((32, 32, 24))).astype(np.float32)
        nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0])), str(tmp_path / "images" / f"{pid}_{tp}.nii.gz"))
        rows.append({"patient_id": pid, "timepoint": tp, "months": months, "image": f"images/{pid}_{tp}.nii.gz"})
    with open(tmp_path / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "out"
    cfg = config.infer_settings({"input": str(tmp_path / "manifest.csv"), "out_dir": str(out), "overlay": False})
    summary = run_batch(cfg, segmenter_factory=lambda threads: _EmptySegmenter())
    assert (summary.done, summary.no_hip) == (0, ["P1_m00", "P1_m06"]), summary.results  # an empty segmenter finds no hip

    with open(out / "measurements.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        cols, table = reader.fieldnames, list(reader)
    assert cols[:5] == ["scan", "image", "patient_id", "timepoint", "months"]
    assert [(r["patient_id"], r["timepoint"], float(r["months"])) for r in table] == [("P1", "m00", 0.0),
                                                                                      ("P1", "m06", 6.0)]
    for name in ("labels.json", "labels.ctbl", "labels_itksnap.txt"):
        assert (out / name).is_file()
    run = json.loads((out / "run_manifest.json").read_text())
    assert run["provider_used"] == "CUDAExecutionProvider" and run["provider_requested"] == "auto"
    assert run["provider_options"]["CUDAExecutionProvider"]["use_tf32"] == "0"
    stages = run["stage_seconds"]  # per stage: total and median over the scans processed
    assert {"load", "segment", "measure", "write", "total"} <= set(stages)
    assert stages["total"]["scans"] == 2 and stages["total"]["total"] >= stages["total"]["median"] > 0
    meas = json.loads((out / "P1_m06_measurements.json").read_text())
    assert meas["months"] == 6.0 and meas["provider"] == "CUDAExecutionProvider"
