"""Shared helpers for the Hydra command-line entry points.

Configuration lookup and validation live in the library (:mod:`onfh_seg.config`);
this module only turns their exceptions into one-line messages and exit codes.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from onfh_seg import config as _config
from onfh_seg.config import ConfigError


def config_dir() -> str:
    """Absolute path of the configs/ folder (``ONFH_SEG_CONFIGS`` overrides); exits with a message if absent."""
    try:
        return str(_config.config_dir())
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None


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


def config_groups(folder: str) -> list[str]:
    """Names of the config groups (sub-folders of configs/), e.g. ``preset``."""
    return sorted(p.name for p in Path(folder).iterdir() if p.is_dir())


def version_line(config_name: str) -> str:
    """``<tool> <package version> (model <model version>)`` for ``--version``."""
    from onfh_seg import __version__

    model = _config.model_version() or "not found"
    return f"{_config.TOOLS.get(config_name, config_name)} {__version__} (onfh-seg {__version__}, model {model})"


def override_hint(args: list[str]) -> str | None:
    """A one-line error for the first ``key=value`` Hydra cannot take as one plain value, else None.

    Paths with spaces, non-ASCII letters, ``( ) [ ] = ,`` break Hydra's override
    grammar (or turn into a sweep); the hint shows how to quote the value.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    multirun = any(a in ("-m", "--multirun") for a in args)
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            sweep = parser.parse_override(arg).is_sweep_override()
        except HydraException:  # the grammar rejects the value (parse errors are HydraException)
            sweep = True
        if sweep and not multirun:
            key, value = arg.split("=", 1)
            return f"could not parse '{arg}': quote the value, e.g. {quoted_override(key, value)}"
    return None


def quoted_override(key: str, value: str) -> str:
    """``key=value`` quoted for Hydra and then for a POSIX shell, e.g. ``input="'my (1).nii'"``; a value with an
    apostrophe becomes a double-quoted Hydra string (``input="\\"it's.nii\\""``), since single quotes cannot hold it."""
    if "'" not in value:
        return f"{key}=\"'{value}'\""
    hydra = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    shell = hydra.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("`", "\\`")
    return f'{key}="{shell}"'


def hydra_main(config_name: str, task: Callable[[DictConfig], int | None]) -> None:
    """Start a Hydra app named ``config_name`` whose body is ``task(cfg)``.

    Before Hydra runs, ``--version`` is answered and the override keys are
    checked; the composed configuration is validated (:func:`onfh_seg.config.validate`)
    before ``task`` sees it. Every problem is one line on stderr (exit code 1 for a
    bad setting, 2 for an override Hydra cannot parse).
    """
    import hydra

    folder = config_dir()
    if "--version" in sys.argv[1:]:
        print(version_line(config_name))
        raise SystemExit(0)
    hint = override_hint(sys.argv[1:])
    if hint:
        print(f"error: {hint}", file=sys.stderr)
        raise SystemExit(2)
    try:
        _config.check_override_keys(config_name, sys.argv[1:], groups=config_groups(folder))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1)

    @hydra.main(version_base="1.3", config_path=folder, config_name=config_name)
    def _app(cfg: DictConfig) -> None:
        try:
            plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
            checked = _config.validate(config_name, plain)  # type: ignore[arg-type]
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(1)
        run_guarded(lambda: task(OmegaConf.create(checked)))

    try:
        _app()
    except SystemExit:
        raise
    except Exception as exc:  # Hydra config errors (bad override syntax, unknown groups)
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        raise SystemExit(2)
