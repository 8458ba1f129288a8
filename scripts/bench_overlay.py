"""Time the per-scan overlay PNG (``report.overlay.overlay_png``) on the scans of an onfh-infer run.

    .venv/bin/python scripts/bench_overlay.py RESULTS_DIR [--scans 6] [--repeats 3]
    PYTHONPATH=<other checkout>/src .venv/bin/python scripts/bench_overlay.py RESULTS_DIR   # another version

For the first --scans ``<name>_measurements.json`` in RESULTS_DIR (sorted), loads the input image and the
segmentation, draws the overlay once (warm-up: imports and fonts), then times --repeats more; prints the
module timed and the median seconds per overlay (and each scan's mean).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("--scans", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    from onfh_seg.report import overlay

    print(f"module: {overlay.__file__}")
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "overlay.png"
        for path in sorted(a.results.glob("*_measurements.json"))[: a.scans]:
            meas = json.loads(path.read_text())
            name = meas["name"]
            img = nib.load(meas["input_path"])
            image = img.get_fdata(dtype=np.float32)
            labels = np.asarray(nib.load(str(a.results / f"{name}_seg.nii.gz")).dataobj)
            centres = {h["side"]: h["head_centre_ras_mm"] for h in meas["hips"] if h["head_centre_ras_mm"]}
            overlay.overlay_png(image, labels, img.affine, centres, out, name)
            t = time.perf_counter()
            for _ in range(a.repeats):
                overlay.overlay_png(image, labels, img.affine, centres, out, name)
            times.append((time.perf_counter() - t) / a.repeats)
    print(f"median {statistics.median(times):.3f} s per overlay over {len(times)} scans; "
          f"per scan: {', '.join(f'{v:.3f}' for v in times)}")


if __name__ == "__main__":
    main()
