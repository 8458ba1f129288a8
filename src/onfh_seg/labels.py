"""Label definitions shared by every stage (do not renumber: other tools read them).

0 background
1 femoral head: viable bone and marrow of the head, including its cortex /
  subchondral plate, from the articular surface down to the head-neck junction
  (the plane perpendicular to the neck axis at ``HEAD_NECK_JUNCTION_FRACTION``
  x head radius from the head centre, on the neck side). Articular cartilage is
  not part of the head.
2 necrotic zone (core): dead bone inside the reactive interface.
3 reactive interface band (the T1 low-signal band; "double-line sign" on T2).
4 acetabulum: the bony socket of the pelvis (cortex and marrow) within
  ``ACETABULUM_SHELL_MM`` of the acetabular cartilage surface, over the cup
  that covers the head; acetabular cartilage, labrum and joint fluid excluded.

Lesion = 2 + 3 (the zone the band outlines). Head = 1 + 2 + 3.
"""

from __future__ import annotations

BACKGROUND = 0
HEAD = 1
NECROTIC = 2
BAND = 3
ACETABULUM = 4

LABELS: dict[int, str] = {
    BACKGROUND: "background",
    HEAD: "femoral_head",
    NECROTIC: "necrotic_zone",
    BAND: "interface_band",
    ACETABULUM: "acetabulum",
}
NUM_CLASSES = len(LABELS)
LABEL_DESCRIPTIONS: dict[int, str] = {
    BACKGROUND: "background",
    HEAD: "femoral head: viable bone and marrow down to the head-neck junction (incl. subchondral plate)",
    NECROTIC: "necrotic zone (core) inside the reactive interface",
    BAND: "reactive interface band (T1 low-signal band)",
    ACETABULUM: "acetabulum: bony socket within 12 mm of the cartilage surface",
}
# display colours (RGB 0-255), as in the overlays and reports: yellow, red, cyan, green
LABEL_RGB: dict[int, tuple[int, int, int]] = {
    BACKGROUND: (0, 0, 0),
    HEAD: (255, 255, 0),
    NECROTIC: (255, 0, 0),
    BAND: (0, 255, 255),
    ACETABULUM: (0, 255, 0),
}
LESION_LABELS = (NECROTIC, BAND)
HEAD_LABELS = (HEAD, NECROTIC, BAND)

HEAD_NECK_JUNCTION_FRACTION = 0.55
ACETABULUM_SHELL_MM = 12.0
