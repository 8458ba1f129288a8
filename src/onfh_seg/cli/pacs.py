"""``onfh-pacs``: pull mode (DICOMweb) or listener mode (C-STORE SCP). Hydra config: configs/pacs.yaml."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig

from onfh_seg import config
from onfh_seg.cli.common import hydra_main, to_dict
from onfh_seg.run.jobs import engine_spec

MODES = ("pull", "listen")


def check_config(cfg: Mapping[str, Any]) -> None:
    """One-line ValueError for a setting that cannot work."""
    if cfg["mode"] not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {cfg['mode']!r}")
    listen = cfg["listen"]
    for key in ("port", "dest_port"):
        if not 0 < int(listen[key]) < 65536:
            raise ValueError(f"listen.{key} must be a TCP port (1-65535), got {listen[key]}")
    for key in ("ae_title", "dest_ae"):
        if not 0 < len(str(listen[key]).strip()) <= 16:
            raise ValueError(f"listen.{key} must be 1-16 characters, got {listen[key]!r}")
    pull = cfg["pull"]
    if cfg["mode"] == "pull" and not (pull.get("study_uid") or pull.get("date_from") or pull.get("date_to")
                                      or pull.get("since_last_run")):
        raise ValueError("pull mode needs pull.study_uid, pull.date_from/pull.date_to or pull.since_last_run=true")
    if float(listen["settle_s"]) < 0 or int(cfg["retries"]) < 0 or float(cfg["backoff_s"]) < 0:
        raise ValueError("listen.settle_s, retries and backoff_s must not be negative")


def _missing_extra() -> str | None:
    try:  # function-level import: is the PACS client stack (pynetdicom, dicomweb-client) installed?
        import dicomweb_client  # noqa: F401
        import pynetdicom  # noqa: F401
    except ImportError as exc:
        return f"onfh-pacs needs pynetdicom and dicomweb-client (dependencies of onfh-seg: pip install .): {exc}"
    return None


def run(cfg: DictConfig) -> int:
    """Run one pull, or listen until SIGTERM; print the summary line."""
    plain = to_dict(cfg)
    check_config(plain)
    missing = _missing_extra()
    if missing:
        raise RuntimeError(missing)
    logging.getLogger("onfh_seg.pacs").setLevel(logging.INFO)
    for noisy in ("highdicom", "pynetdicom", "dicomweb_client"):  # one line per study is enough
        logging.getLogger(noisy).setLevel(logging.WARNING)
    infer_cfg = config.infer_settings(plain.get("infer") or {}, require=False)  # onfh-infer's, typed
    segmenter = engine_spec(infer_cfg, 1).build()
    if plain["mode"] == "pull":
        # function-level import: imported when the command runs: `--help` and argument errors stay fast
        from onfh_seg.pacs.pull import run_pull

        summary = run_pull(plain, segmenter, infer_cfg)
        print(f"{summary.line()}; audit: {plain['state_dir']}/audit.jsonl")
        return 1 if summary.failed else 0
    # function-level import: imported when the command runs: `--help` and argument errors stay fast
    from onfh_seg.pacs.listener import run_listener

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())  # finish the study in hand, then stop
    handled = run_listener(plain, segmenter, infer_cfg, stop,
                           on_ready=lambda: print(f"listening as {plain['listen']['ae_title']} on "
                                                  f"{plain['listen']['host']}:{plain['listen']['port']}", flush=True))
    print(f"stopped after {handled} studies; audit: {plain['state_dir']}/audit.jsonl")
    return 0


def main() -> None:
    hydra_main("pacs", run)


if __name__ == "__main__":
    main()
