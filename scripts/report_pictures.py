"""Regenerate README's report pictures from a rendered onfh-track report (headless Chromium).

    .venv/bin/python scripts/report_pictures.py [--report outputs/demo/track/reports/P01.html] [--out docs/img]

Loads the report once with a measuring script (``--dump-dom``) to find the page boxes of the first hip
section (summary + image views), the first trajectory charts and the "imaging change beside clinical
change" section, takes one full-page screenshot at the same window size, and crops those boxes into
``report_P01_views.png``, ``report_P01_trajectories.png`` and ``report_P01_changes.png``.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import subprocess
import tempfile
from pathlib import Path

WIDTH = 1400
PROBE = """<script>window.addEventListener('load', () => {
  const box = e => { if (!e) return null; const r = e.getBoundingClientRect();
    return [Math.floor(r.left), Math.floor(r.top + window.scrollY), Math.ceil(r.right), Math.ceil(r.bottom + window.scrollY)]; };
  const hip = document.querySelector('section.hip');
  const views = hip ? [...hip.querySelectorAll('div.views')] : [];
  const h2s = [...document.querySelectorAll('h2')];
  const traj = h2s.find(h => h.textContent.startsWith('Trajectories'));
  const change = h2s.find(h => h.textContent.startsWith('Imaging change'));
  const section_end = h => { let e = h.nextElementSibling, last = h;
    while (e && e.tagName !== 'H2') { last = e; e = e.nextElementSibling; } return last; };
  const span = (a, b) => a && b ? [Math.min(box(a)[0], box(b)[0]), box(a)[1], Math.max(box(a)[2], box(b)[2]), box(b)[3]] : null;
  document.body.setAttribute('data-boxes', JSON.stringify({
    page: [0, 0, document.documentElement.scrollWidth, document.documentElement.scrollHeight],
    views: hip && views.length ? span(hip.querySelector('h2'), views[views.length - 1]) : null,
    trajectories: traj ? span(traj, traj.nextElementSibling) : null,
    changes: change ? span(change, section_end(change)) : null}));
});</script></body>"""


def chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    from onfh_seg.report.pdf import chromium_path

    exe = chromium_path()
    if exe is None:
        raise SystemExit("error: no Chromium on PATH (Debian package 'chromium')")
    return subprocess.run([exe, "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={profile}",
                           "--hide-scrollbars", *args], capture_output=True, text=True, timeout=180, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--report", default="outputs/demo/track/reports/P01.html")
    ap.add_argument("--out", default="docs/img")
    ap.add_argument("--prefix", default="report_P01")
    a = ap.parse_args()
    from PIL import Image

    report = Path(a.report)
    if not report.is_file():
        raise SystemExit(f"error: no report at {report} (run make demo first)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        probe = tmp / "probe.html"
        probe.write_text(report.read_text(encoding="utf-8").replace("</body>", PROBE), encoding="utf-8")
        dom = chromium(["--virtual-time-budget=10000", f"--window-size={WIDTH},1200", "--dump-dom", probe.as_uri()],
                       tmp / "p1").stdout
        m = re.search(r'data-boxes="([^"]*)"', dom)
        if not m:
            raise SystemExit("error: the measuring script did not run")
        boxes = json.loads(html.unescape(m.group(1)))
        height = int(boxes["page"][3])
        shot = tmp / "page.png"
        chromium(["--virtual-time-budget=10000", f"--window-size={WIDTH},{height}", f"--screenshot={shot}",
                  report.resolve().as_uri()], tmp / "p2")
        page = Image.open(shot).convert("RGB")
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        for key in ("views", "trajectories", "changes"):
            box = boxes.get(key)
            if not box:
                print(f"{key}: not in this report, skipped")
                continue
            pad = 8
            crop = page.crop((max(0, box[0] - pad), max(0, box[1] - pad), min(page.width, box[2] + pad),
                              min(page.height, box[3] + pad)))
            path = out / f"{a.prefix}_{key}.png"
            tmp_png = path.with_name(f".{path.name}.tmp")
            crop.save(tmp_png, format="PNG", optimize=True)
            tmp_png.replace(path)
            print(f"{path}: {crop.width} x {crop.height} px")


if __name__ == "__main__":
    main()
