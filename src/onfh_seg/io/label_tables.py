"""Label descriptions for viewers and analysis, written beside the segmentations once per out_dir.

* ``labels.json``: value, name, description and colour of every label, and the
  label groups (head = 1+2+3, lesion = 2+3);
* ``labels.ctbl``: a 3D Slicer colour table (load it with the ``_seg.nii.gz``
  as a colour node; ``value name R G B A`` per line);
* ``labels_itksnap.txt``: an ITK-SNAP label description file
  (Segmentation > Import Label Descriptions).

Everything comes from :mod:`onfh_seg.labels`; files are written atomically
and only when their content differs from what is already there.
"""

from __future__ import annotations

import json
from pathlib import Path

from onfh_seg.io.files import atomic_write_text
from onfh_seg.labels import HEAD_LABELS, LABEL_DESCRIPTIONS, LABEL_RGB, LABELS, LESION_LABELS

LABEL_TABLE_FILES = ("labels.json", "labels.ctbl", "labels_itksnap.txt")


def labels_json() -> str:
    """``labels.json`` text: one entry per label value, plus the head and lesion groups."""
    record = {
        "labels": [{"value": v, "name": LABELS[v], "description": LABEL_DESCRIPTIONS[v], "rgb": list(LABEL_RGB[v])}
                   for v in sorted(LABELS)],
        "groups": {"head": list(HEAD_LABELS), "lesion": list(LESION_LABELS)},
        "file": "<name>_seg.nii.gz (uint8, on the input's grid)",
    }
    return json.dumps(record, indent=2) + "\n"


def slicer_color_table() -> str:
    """3D Slicer colour table text (``.ctbl``): ``value name R G B A``; background fully transparent."""
    lines = ["# onfh-seg labels: 3D Slicer color table", f"# {len(LABELS)} values"]
    for v in sorted(LABELS):
        r, g, b = LABEL_RGB[v]
        lines.append(f"{v} {LABELS[v]} {r} {g} {b} {0 if v == 0 else 255}")
    return "\n".join(lines) + "\n"


def itksnap_label_description() -> str:
    """ITK-SNAP label description text: ``IDX R G B A VIS MSH "LABEL"`` per label."""
    lines = [
        "################################################",
        "# ITK-SnAP Label Description File (onfh-seg)",
        "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL",
        "################################################",
    ]
    for v in sorted(LABELS):
        r, g, b = LABEL_RGB[v]
        visible = 0 if v == 0 else 1
        name = "Clear Label" if v == 0 else LABELS[v]
        lines.append(f"{v:5d} {r:5d} {g:4d} {b:4d} {float(visible):8.2f} {visible:3d} {visible:3d}    \"{name}\"")
    return "\n".join(lines) + "\n"


def write_label_tables(out_dir: str | Path) -> list[Path]:
    """Write ``labels.json``, ``labels.ctbl`` and ``labels_itksnap.txt`` into ``out_dir`` (unchanged
    files are left alone); returns the paths."""
    out = Path(out_dir)
    paths = []
    for name, text in zip(LABEL_TABLE_FILES, (labels_json(), slicer_color_table(), itksnap_label_description())):
        path = out / name
        try:
            same = path.read_text(encoding="utf-8") == text
        except OSError:
            same = False
        if not same:
            atomic_write_text(path, text)
        paths.append(path)
    return paths
