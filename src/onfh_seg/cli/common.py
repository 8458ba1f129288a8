"""Shared helpers for the Hydra command-line entry points.

Configuration lookup and validation live in the library (:mod:`onfh_seg.config`);
this module only turns their exceptions into one-line messages and exit codes.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import MissingMandatoryValue

from onfh_seg import config as _config
from onfh_seg.config import ConfigError
from onfh_seg.errors import first_line
from onfh_seg.version import __version__


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
        print(f"error: {first_line(exc)}", file=sys.stderr)
        raise SystemExit(1)
    raise SystemExit(rc or 0)


def config_groups(folder: str) -> list[str]:
    """Names of the config groups (sub-folders of configs/), e.g. ``preset``."""
    return sorted(p.name for p in Path(folder).iterdir() if p.is_dir())


def version_line(config_name: str) -> str:
    """``<tool> <package version> (model <model version>)`` for ``--version``."""
    model = _config.model_version() or "not found"
    return f"{_config.TOOLS.get(config_name, config_name)} {__version__} (onfh-seg {__version__}, model {model})"


def override_hint(args: list[str]) -> str | None:
    """A one-line error for the first ``key=value`` Hydra cannot take as one plain value, else None.

    Paths with spaces, non-ASCII letters, ``( ) [ ] = ,`` break Hydra's override
    grammar (or turn into a sweep); the hint shows how to quote the value.
    """
    # function-level import: Hydra/OmegaConf load only when a config is composed or an error explained
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


# Hydra's own command-line flags (``hydra --help``): passed on as they are. Those marked True take a value.
# ``-i`` (Hydra's short form of --info) is taken by ``-i/--input``; ``--info`` still works.
HYDRA_FLAGS = {
    "-h": False, "--help": False, "-hh": False, "--hydra-help": False, "--version": False,
    "-c": True, "--cfg": True, "--resolve": False, "-p": True, "--package": True, "--info": False,
    "-r": False, "--run": False, "-m": False, "--multirun": False, "-sc": True, "--shell-completion": True,
    "-cp": True, "--config-path": True, "-cn": True, "--config-name": True, "-cd": True, "--config-dir": True,
    "--experimental-rerun": True,
}

# Short and long options for the input and the results folder, per tool (config name -> key).
INPUT_KEYS = {"infer": "input", "track": "manifest", "eval": "cohort"}
OUTPUT_KEY = "out_dir"


class ArgError(ValueError):
    """A command-line option that cannot be turned into a ``key=value`` override."""


def _group_options(config_name: str, folder: str) -> dict[str, bool]:
    """Config groups of ``folder`` -> whether ``config_name``'s defaults list names them (``key=``) or not (``+key=``)."""
    listed: set[str] = set()
    try:
        own = OmegaConf.to_container(OmegaConf.load(Path(folder) / f"{config_name}.yaml"))
        for entry in (own or {}).get("defaults", []) or []:  # type: ignore[union-attr]
            if isinstance(entry, dict):
                listed.update(str(k) for k in entry)
    except (OSError, ValueError):
        pass
    return {g: g in listed for g in config_groups(folder)}


def _default_of(config_name: str, key: str) -> tuple[bool, object]:
    """(whether ``key`` (dotted) is a key of the tool's defaults, its default value)."""
    try:
        node: object = _config.defaults(config_name)
    except (ConfigError, OSError, ValueError):
        return True, None  # no defaults to check against: let Hydra and the schema judge
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def translate_args(config_name: str, args: list[str], folder: str | None = None) -> list[str]:
    """Turn the command-line habits of the field into Hydra overrides.

    ``-i X`` / ``--input X`` / ``--input=X`` -> ``input=X`` (``manifest=`` for onfh-track, ``cohort=`` for
    onfh-eval); ``-o X`` / ``--output X`` -> ``out_dir=X``; any ``--some-key value`` or ``--some.key=value``
    -> ``some_key=value`` (a bare ``--flag`` of a true/false key -> ``flag=true``); ``--preset demo`` ->
    ``+preset=demo`` for a config group. Hydra's own flags (``--help``, ``--cfg job``, ``-m`` ...) and
    ``key=value`` overrides pass unchanged. Raises :class:`ArgError` with one line for what cannot be taken.
    """
    folder = folder or config_dir()
    groups = _group_options(config_name, folder)
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("-") or arg == "-" or arg.lstrip("-")[:1].isdigit():
            out.append(arg)
            continue
        name, has_value, value = arg.partition("=")
        if name in HYDRA_FLAGS:
            out.append(arg)
            if HYDRA_FLAGS[name] and not has_value and i < len(args):
                out.append(args[i])
                i += 1
            continue
        if name in ("-i", "--input"):
            key = INPUT_KEYS.get(config_name)
            if key is None:
                raise ArgError(f"{arg} is not an option of {_config.TOOLS.get(config_name, config_name)}: "
                               "use key=value (see --help)")
        elif name in ("-o", "--output", "--out"):
            key = OUTPUT_KEY
        elif name.startswith("--") and len(name) > 2:
            key = name[2:].replace("-", "_")
        else:
            raise ArgError(f"unknown option {arg}: use key=value, e.g. input=scan.nii.gz out_dir=results "
                           "(see --help)")
        if not has_value:
            nxt = args[i] if i < len(args) else None
            known, dflt = _default_of(config_name, key)
            takes_next = nxt is not None and not (nxt.startswith("-") and len(nxt) > 1 and not nxt[1].isdigit())
            if isinstance(dflt, bool) and takes_next and "=" in nxt:  # type: ignore[operator]
                takes_next = False  # a bare --flag followed by a key=value override
            if takes_next:
                value = nxt  # type: ignore[assignment]
                i += 1
            elif isinstance(dflt, bool) or not known:
                value = "true"  # --fast; an unknown --key is then reported by the key check
            else:
                raise ArgError(f"{arg} needs a value: {key}=VALUE")
        if key in groups and "." not in key:
            out.append(f"{'' if groups[key] else '+'}{key}={value}")
        else:
            out.append(_hydra_override(key, value))
    return out


def _hydra_override(key: str, value: str) -> str:
    """``key=value``, the value quoted for Hydra when its grammar would not take it as one plain value
    (the shell has already split the words, so ``-i "my (1).nii.gz"`` needs no second quoting)."""
    plain = f"{key}={value}"
    if override_hint([plain]) is None:
        return plain
    if "'" not in value:
        return f"{key}='{value}'"
    return f'{key}="' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _composed_once(config_name: str, folder: str, args: list[str]) -> DictConfig | None:
    """The job's configuration composed once with Hydra's compose API, its logging set up as ``hydra.main`` sets
    it, where that is all ``hydra.main`` would do: no command-line flag (``--help``, ``--cfg``, ``-m`` ...), and a
    config that runs in the current folder without an output subfolder. Else None (``hydra.main`` runs, which
    composes twice: once for the run mode, once for the run)."""
    if any(a.startswith("-") for a in args):
        return None
    # function-level import: Hydra loads only when a config is composed
    import logging.config

    from hydra import compose, initialize_config_dir
    from hydra.types import RunMode

    with initialize_config_dir(config_dir=folder, version_base="1.3", job_name=config_name):
        cfg = compose(config_name, overrides=list(args), return_hydra_config=True)
    h = cfg.hydra
    if (str(h.run.dir) != "." or h.output_subdir is not None or h.job.chdir or h.mode not in (None, RunMode.RUN)
            or h.job.env_set or h.callbacks):  # what hydra.main would also do: change folder, set variables, call back
        return None
    logging.config.dictConfig(OmegaConf.to_container(h.hydra_logging, resolve=False))  # type: ignore[arg-type]
    logging.config.dictConfig(OmegaConf.to_container(h.job_logging, resolve=False))  # type: ignore[arg-type]
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def hydra_main(config_name: str, task: Callable[[DictConfig], int | None], in_place: bool = True) -> None:
    """Start a Hydra app named ``config_name`` whose body is ``task(cfg)``.

    Before Hydra runs, ``--version`` is answered and the override keys are
    checked; the composed configuration is validated (:func:`onfh_seg.config.validate`)
    before ``task`` sees it. ``in_place``: the tool runs in the current folder (composed once,
    ``_composed_once``); False for a config that sets an output folder (``hydra.main`` composes). Every problem is one line on stderr (exit code 1 for a
    bad setting, 2 for an override Hydra cannot parse).
    """
    # function-level import: Hydra/OmegaConf load only when a config is composed or an error explained
    import hydra

    folder = config_dir()
    try:
        sys.argv[1:] = translate_args(config_name, sys.argv[1:], folder)
    except ArgError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2)
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

    def _run(cfg: DictConfig) -> None:
        try:
            plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
            checked = _config.validate(config_name, plain)  # type: ignore[arg-type]
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(1)
        run_guarded(lambda: task(OmegaConf.create(checked)))

    @hydra.main(version_base="1.3", config_path=folder, config_name=config_name)
    def _app(cfg: DictConfig) -> None:
        _run(cfg)

    try:
        cfg = _composed_once(config_name, folder, sys.argv[1:]) if in_place else None
        if cfg is not None:
            _run(cfg)  # exits (run_guarded)
        _app()
    except SystemExit:
        raise
    except Exception as exc:  # Hydra config errors (bad override syntax, unknown groups)
        print(f"error: {first_line(exc)}", file=sys.stderr)
        raise SystemExit(2)
