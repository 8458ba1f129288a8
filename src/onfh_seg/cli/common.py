"""Shared helpers for the Hydra command-line entry points."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue


def config_dir() -> str:
    """Absolute path of the configs/ folder (``ONFH_SEG_CONFIGS`` overrides)."""
    env = os.environ.get("ONFH_SEG_CONFIGS")
    if env:
        return str(Path(env).resolve())
    here = Path(__file__).resolve()
    for cand in (here.parents[3] / "configs", here.parents[1] / "configs", Path.cwd() / "configs"):
        if cand.is_dir():
            return str(cand)
    raise SystemExit("error: cannot find the configs/ folder; set ONFH_SEG_CONFIGS")


def to_dict(cfg: DictConfig) -> dict:
    """Resolved plain-dict copy of a config."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]


def run_guarded(fn: Callable[[], int | None]) -> None:
    """Run ``fn``; turn expected errors into a one-line message and exit code 1."""
    try:
        rc = fn()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130)
    except (ValueError, FileNotFoundError, OSError, RuntimeError, MissingMandatoryValue) as exc:
        print(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        raise SystemExit(1)
    raise SystemExit(rc or 0)


def hydra_main(config_name: str, task: Callable[[DictConfig], int | None]) -> None:
    """Start a Hydra app named ``config_name`` whose body is ``task(cfg)``."""
    import hydra

    @hydra.main(version_base="1.3", config_path=config_dir(), config_name=config_name)
    def _app(cfg: DictConfig) -> None:
        run_guarded(lambda: task(cfg))

    try:
        _app()
    except SystemExit:
        raise
    except Exception as exc:  # Hydra config errors (missing keys, bad overrides)
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        raise SystemExit(2)
