"""Regenerate README's report pictures from a rendered onfh-track report (headless Chromium).

    .venv/bin/python scripts/report_pictures.py [--report outputs/demo/track/reports/P01.html] [--out docs/img]

Loads the report with a measuring script (``--dump-dom``) at 1000 and 1400 px to find the page boxes of the
top of the page down to the end of the first hip's image rows, and (at 1400 px) of its measurements table
down to the end of the clinical section; takes one full-page screenshot per width and crops those boxes into
``report_P01_1000.png``, ``report_P01_1400.png`` and ``report_P01_tables.png``. Prints the report to PDF
(``report.pdf.html_to_pdf``) and renders its pages at 100 dpi into ``report_P01_pdf_<n>.png`` (PyMuPDF, else
poppler's ``pdftoppm``). Every file is written atomically.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

WIDTHS = (1000, 1400)
PDF_DPI = 100
PROBE = """<script>window.addEventListener('load', () => {
  const box = e => { if (!e) return null; const r = e.getBoundingClientRect();
    return [Math.floor(r.left), Math.floor(r.top + window.scrollY), Math.ceil(r.right), Math.ceil(r.bottom + window.scrollY)]; };
  const w = document.documentElement.scrollWidth;
  const hip = document.querySelector('section.hip');
  const planes = hip ? [...hip.querySelectorAll('div.plane')] : [];
  const table = hip ? hip.querySelector('table.metrics') : null;
  const h2s = [...document.querySelectorAll('h2')];
  const methods = h2s.find(h => h.textContent.startsWith('Methods'));
  document.body.setAttribute('data-boxes', JSON.stringify({
    page: [0, 0, w, document.documentElement.scrollHeight],
    top: planes.length ? [0, 0, w, box(planes[planes.length - 1])[3] + 16] : null,
    tables: table && methods ? [0, box(table)[1] - 4, w, box(methods)[1] - 4] : null}));
});</script></body>"""


def chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    """Run headless Chromium with its own profile folder."""
    from onfh_seg.report.pdf import chromium_path

    exe = chromium_path()
    if exe is None:
        raise SystemExit("error: no Chromium on PATH (Debian package 'chromium')")
    return subprocess.run([exe, "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={profile}",
                           "--hide-scrollbars", *args], capture_output=True, text=True, timeout=180, check=True)


def page_boxes(report: Path, width: int, tmp: Path) -> dict:
    """The measuring script's boxes of ``report`` at ``width`` px."""
    probe = tmp / f"probe{width}.html"
    probe.write_text(report.read_text(encoding="utf-8").replace("</body>", PROBE), encoding="utf-8")
    dom = chromium(["--virtual-time-budget=10000", f"--window-size={width},1200", "--dump-dom", probe.as_uri()],
                   tmp / f"p{width}").stdout
    m = re.search(r'data-boxes="([^"]*)"', dom)
    if not m:
        raise SystemExit("error: the measuring script did not run")
    return json.loads(html.unescape(m.group(1)))


def save_png(image, path: Path) -> None:
    """Write a PIL image as PNG atomically and say so."""
    tmp_png = path.with_name(f".{path.name}.tmp")
    image.save(tmp_png, format="PNG", optimize=True)
    tmp_png.replace(path)
    print(f"{path}: {image.width} x {image.height} px")


def screenshots(report: Path, out: Path, prefix: str, tmp: Path) -> None:
    """The top of the page at each width, and the tables and charts at the widest."""
    from PIL import Image

    for width in WIDTHS:
        boxes = page_boxes(report, width, tmp)
        shot = tmp / f"page{width}.png"
        chromium(["--virtual-time-budget=10000", f"--window-size={width},{int(boxes['page'][3])}",
                  f"--screenshot={shot}", report.resolve().as_uri()], tmp / f"s{width}")
        page = Image.open(shot).convert("RGB")
        keys = ("top", "tables") if width == max(WIDTHS) else ("top",)
        for key in keys:
            box = boxes.get(key)
            if not box:
                print(f"{key} at {width} px: not in this report, skipped")
                continue
            crop = page.crop((0, max(0, box[1]), page.width, min(page.height, box[3])))
            save_png(crop, out / f"{prefix}_{width if key == 'top' else key}.png")


def pdf_pages(report: Path, out: Path, prefix: str, tmp: Path) -> None:
    """The report printed to PDF, each page as a PNG."""
    from PIL import Image

    from onfh_seg.report.pdf import html_to_pdf

    pdf = html_to_pdf(report, tmp / "report.pdf")
    try:
        import pymupdf

        pages = [Image.frombytes("RGB", (pix.width, pix.height), pix.samples)
                 for pix in (page.get_pixmap(dpi=PDF_DPI) for page in pymupdf.open(pdf))]
    except ImportError:
        if shutil.which("pdftoppm") is None:
            raise SystemExit("error: neither PyMuPDF nor pdftoppm (poppler-utils) to render the PDF pages") from None
        subprocess.run(["pdftoppm", "-r", str(PDF_DPI), "-png", str(pdf), str(tmp / "pdfpage")], check=True)
        pages = [Image.open(p).convert("RGB") for p in sorted(tmp.glob("pdfpage-*.png"))]
    for old in out.glob(f"{prefix}_pdf_*.png"):
        old.unlink()
    for n, page in enumerate(pages, start=1):
        save_png(page, out / f"{prefix}_pdf_{n}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--report", default="outputs/demo/track/reports/P01.html")
    ap.add_argument("--out", default="docs/img")
    ap.add_argument("--prefix", default="report_P01")
    a = ap.parse_args()
    report = Path(a.report)
    if not report.is_file():
        raise SystemExit(f"error: no report at {report} (run make demo first)")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        screenshots(report, out, a.prefix, Path(tmp))
        pdf_pages(report, out, a.prefix, Path(tmp))


if __name__ == "__main__":
    main()
