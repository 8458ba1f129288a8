"""``python -m onfh_seg.pacs.echo [host] [port] [ae_title]``: C-ECHO a DICOM node (the container's health check).

Defaults: 127.0.0.1, ``ONFH_PACS_PORT`` (11112), ``ONFH_PACS_AE_TITLE`` (ONFH_SEG). Exit code 0 when it answers.
"""

from __future__ import annotations

import os
import sys


def echo(host: str, port: int, ae_title: str, timeout_s: float = 5.0) -> bool:
    """True when ``ae_title`` at ``host:port`` accepts an association and answers C-ECHO with success."""
    # function-level import: optional dependency (pacs extra)
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title="ONFH_ECHO")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, port, ae_title=ae_title)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return getattr(status, "Status", None) == 0x0000
    finally:
        assoc.release()


def main() -> None:
    args = sys.argv[1:]
    host = args[0] if args else "127.0.0.1"
    port = int(args[1]) if len(args) > 1 else int(os.environ.get("ONFH_PACS_PORT", "11112"))
    ae_title = args[2] if len(args) > 2 else os.environ.get("ONFH_PACS_AE_TITLE", "ONFH_SEG")
    ok = echo(host, port, ae_title)
    print(f"C-ECHO {ae_title}@{host}:{port}: {'ok' if ok else 'no answer'}")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
