"""PNG previews of generated scans (axial, coronal, sagittal through each head centre)."""

from __future__ import annotations

import json
from pathlib import Path

from onfh_seg.io.manifest import read_manifest, resolve
from onfh_seg.io.nifti import load_nifti
from onfh_seg.report.overlay import overlay_png


def preview_cohort(manifest: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write ``preview/<scan>.png`` for every scan row of a synthetic cohort manifest."""
    manifest = Path(manifest)
    out_dir = Path(out_dir) if out_dir else manifest.parent / "preview"
    written = []
    for row in read_manifest(manifest):
        if not row.get("image"):
            continue
        img = load_nifti(resolve(manifest, row["image"]))
        lab = load_nifti(resolve(manifest, row["labels"])) if row.get("labels") else None
        centres = {}
        if row.get("truth"):
            truth = json.loads(resolve(manifest, row["truth"]).read_text())
            centres = {h["side"]: h["head_centre_ras_mm"] for h in truth["hips"]}
        name = Path(row["image"]).name.replace(".nii.gz", "").replace(".nii", "")
        out = out_dir / f"{name}.png"
        title = f"{row['patient_id']} {row.get('timepoint', '')} ({row.get('months', '')} months) - synthetic"
        overlay_png(img.get_fdata(dtype="float32"), None if lab is None else lab.get_fdata().astype("uint8"),
                    img.affine, centres, out, title)
        written.append(out)
    return written
