"""PDF of an HTML report through headless Chromium (the Debian package ``chromium``), when it is installed.

Reports are filed: ``html_to_pdf`` prints the report with the report's print
style sheet (A4, one hip per page set). Nothing is downloaded; without
Chromium on PATH ``chromium_path`` is None and callers say so in one line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def chromium_path() -> str | None:
    """The first Chromium-like browser on PATH, or None."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def html_to_pdf(html_path: Path, pdf_path: Path, timeout_s: float = 120.0) -> Path:
    """Print ``html_path`` to ``pdf_path`` (temporary name, then rename). Raises ``RuntimeError`` without
    Chromium or when printing fails (one line)."""
    exe = chromium_path()
    if exe is None:
        raise RuntimeError("no Chromium on PATH (Debian package 'chromium'): cannot write the PDF report")
    pdf_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{pdf_path.name}.", suffix=".tmp", dir=pdf_path.parent)
    os.close(fd)
    try:
        with tempfile.TemporaryDirectory(prefix="onfh-chromium-") as profile:
            cmd = [exe, "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={profile}",
                   "--no-pdf-header-footer", f"--print-to-pdf={tmp}", Path(html_path).resolve().as_uri()]
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        if res.returncode != 0 or os.path.getsize(tmp) == 0:
            last = (res.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"Chromium could not print {html_path.name}: {last}")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, pdf_path)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"Chromium did not finish printing {html_path.name} in {timeout_s:g} s") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return pdf_path
