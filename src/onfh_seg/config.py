"""Configuration: where configs/ and models/ live, the defaults, and one validator for every entry point.

Defaults live in one place, ``configs/<name>.yaml``. Their types and allowed
values live in the schema dataclasses of :mod:`onfh_seg.config_schemas` (no defaults there). The command
lines (:mod:`onfh_seg.cli`) and the Python API (:mod:`onfh_seg.api`) both go
through :func:`validate`, so an unknown key or a wrong type is the same one-line
:class:`ConfigError` everywhere, e.g.::

    onfh-infer: unknown key 'provder' (did you mean 'provider'?)
    onfh-infer: tta='flase' is not allowed: expected true or false

Lookup of ``configs/`` and the model folder works in a source checkout, in an
installed wheel (both are package data under ``onfh_seg/_data``) and with the
environment variables ``ONFH_SEG_CONFIGS`` / ``ONFH_SEG_MODELS``. No import of
:mod:`onfh_seg.cli`; errors are exceptions, never ``SystemExit``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Union

from omegaconf import OmegaConf

from onfh_seg.config_schemas import (  # noqa: F401  (re-exported: config.<Schema>)
    SCHEMAS,
    TOOLS,
    AcquisitionSettings,
    DicomSettings,
    DiseaseSettings,
    EvalSettings,
    ExportSettings,
    InferSettings,
    Path_,
    QCSettings,
    Reference,
    RegistrationSettings,
    RepeatabilitySettings,
    SynthSettings,
    TrackSettings,
)

MISSING = "???"  # OmegaConf's mark for a mandatory value
PACKAGE_DATA = Path(__file__).resolve().parent / "_data"  # filled in when a wheel is built (setup.py)


class ConfigError(ValueError):
    """A bad setting, described in one line (key, value and what is allowed)."""


# ---------------------------------------------------------------- where things are


def config_dir() -> Path:
    """The ``configs/`` folder: ``ONFH_SEG_CONFIGS``, else the package data, else the source checkout."""
    env = os.environ.get("ONFH_SEG_CONFIGS")
    if env:
        path = Path(env).expanduser().resolve()
        if not path.is_dir():
            raise ConfigError(f"ONFH_SEG_CONFIGS={env} is not a folder")
        return path
    here = Path(__file__).resolve()
    for cand in (PACKAGE_DATA / "configs", here.parents[2] / "configs", Path.cwd() / "configs"):
        if (cand / "infer.yaml").is_file():
            return cand
    raise ConfigError("cannot find the configs/ folder; set ONFH_SEG_CONFIGS")


def resolve_model_dir(model_dir: str | Path) -> Path:
    """``model_dir`` as given if it exists (absolute, or relative to the working folder), else relative
    to the folder holding ``configs/`` (the source checkout or the installed package data)."""
    path = Path(str(model_dir)).expanduser()
    if path.is_absolute() or path.exists():
        return path
    try:
        beside = config_dir().parent / path
    except ConfigError:
        return path
    return beside if beside.exists() else path


def default_model_dir() -> Path:
    """The model folder onfh-infer uses by default (``model_dir`` of configs/infer.yaml, resolved)."""
    return resolve_model_dir(defaults("infer")["model_dir"])


def model_version(model_dir: str | Path | None = None) -> str | None:
    """``model_version`` of ``model_dir``'s model.json (default model when None); None if unreadable."""
    path = (resolve_model_dir(model_dir) if model_dir is not None else default_model_dir()) / "model.json"
    try:
        return str(json.loads(path.read_text(encoding="utf-8"))["model_version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ---------------------------------------------------------------- defaults


@lru_cache(maxsize=None)
def _defaults_cached(name: str, folder: str) -> dict:
    if not OmegaConf.has_resolver("now"):  # Hydra's ${now:...}, for run folders
        OmegaConf.register_new_resolver("now", lambda pattern: datetime.now().strftime(pattern))
    cfg = _compose(Path(folder), name)
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # type: ignore[return-value]


def _compose(folder: Path, name: str, group: str = ""):
    """``<folder>/<group>/<name>.yaml`` with its defaults list applied (group options such as
    ``- data: fine`` and same-group bases such as ``- fine``), as Hydra composes it without overrides."""
    path = folder / group / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no such configuration: {path}")
    own = OmegaConf.load(path)
    out = OmegaConf.create({})
    entries = list(own.pop("defaults", None) or [])
    own.pop("hydra", None)
    if "_self_" not in entries:
        entries.append("_self_")
    for entry in entries:
        if entry == "_self_":
            out = OmegaConf.merge(out, own)
        elif isinstance(entry, str):  # a base in the same group
            out = OmegaConf.merge(out, _compose(folder, entry, group))
        else:
            for grp, option in entry.items():
                if option is not None and not str(grp).startswith(("override ", "/")):
                    out = OmegaConf.merge(out, {grp: _compose(folder, str(option), grp)})
    return out


def defaults(name: str) -> dict:
    """The defaults of ``configs/<name>.yaml`` as a plain dict (mandatory values are ``"???"``)."""
    return copy.deepcopy(_defaults_cached(name, str(config_dir())))


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict:
    """``base`` updated by ``over``; nested mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def settings(name: str, overrides: Mapping[str, Any] | None = None, require: bool = True) -> dict:
    """Defaults of ``name`` merged with ``overrides`` (nested dicts), validated; see :func:`validate`."""
    over = dict(overrides or {})
    check_keys(name, over)  # before merging, so a misspelt nested key is reported as such
    return validate(name, merge(defaults(name), over), require=require)


# ---------------------------------------------------------------- typed settings


def typed(name: str, cfg: Mapping[str, Any], require: bool = True) -> Any:
    """A full configuration of ``name`` (e.g. Hydra's composed one) validated and returned as its schema
    dataclass (:class:`InferSettings`, :class:`TrackSettings`, ...; nested sections as their dataclasses).

    This is the object the entry points pass down: nothing below reads YAML or fills in defaults again.
    A YAML key without a schema field is validated but not carried (give it a field to use it).
    """
    return _build(SCHEMAS[name], validate(name, cfg, require=require))


def _build(schema: type, values: Mapping[str, Any]) -> Any:
    """``schema`` from validated ``values``; nested sections become their dataclasses."""
    return schema(**{k: _build(tp, values[k]) if dataclasses.is_dataclass(tp) and isinstance(values[k], Mapping)
                     else values[k] for k, (tp, _) in _fields(schema).items() if k in values})


def infer_settings(overrides: Mapping[str, Any] | None = None, require: bool = True) -> InferSettings:
    """onfh-infer's settings: configs/infer.yaml merged with ``overrides`` (nested dicts), validated, typed."""
    return _build(InferSettings, settings("infer", overrides, require=require))


def track_settings(overrides: Mapping[str, Any] | None = None, require: bool = True) -> TrackSettings:
    """onfh-track's settings: configs/track.yaml merged with ``overrides`` (nested dicts), validated, typed."""
    return _build(TrackSettings, settings("track", overrides, require=require))


as_dict = dataclasses.asdict  # a settings dataclass as a plain dict (nested sections as dicts): run records, hashes


# ---------------------------------------------------------------- validation


def _tool(name: str) -> str:
    return TOOLS.get(name, name)


def _unknown(name: str, key: str, allowed: Sequence[str]) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(allowed), n=1, cutoff=0.6)
    hint = f"did you mean '{_join(key, close[0])}'?" if close else f"allowed: {', '.join(allowed)}"
    return ConfigError(f"{_tool(name)}: unknown key '{key}' ({hint})")


def _join(key: str, last: str) -> str:
    return f"{key.rsplit('.', 1)[0]}.{last}" if "." in key else last


def _fields(schema: type) -> dict[str, Any]:
    """``{name: (type, metadata)}``; a field with a default in the schema is optional (``metadata["optional"]``)."""
    hints = typing.get_type_hints(schema)
    return {f.name: (hints[f.name], {**f.metadata, "optional": f.default is not dataclasses.MISSING})
            for f in dataclasses.fields(schema)}


def _allowed(schema: Any, dflt: Any) -> dict[str, tuple[Any, dict, Any]]:
    """Keys allowed at one level: ``{key: (type, metadata, default)}``.

    The schema gives the types; a key that is in the YAML but not (yet) in the
    schema is allowed too, typed by its default (bool, int, number, text, or
    anything for null), so a new YAML key never breaks a command.
    """
    dflt = dflt if isinstance(dflt, Mapping) else {}
    out: dict[str, tuple[Any, dict, Any]] = {}
    if dataclasses.is_dataclass(schema):
        for key, (tp, meta) in _fields(schema).items():
            out[key] = (tp, meta, dflt.get(key))
    for key, value in dflt.items():
        if key not in out:
            out[key] = (_type_of(value), {}, value)
    return out


def _type_of(value: Any) -> Any:
    """Schema type for a YAML default that has no schema field."""
    if isinstance(value, bool):
        return bool
    if isinstance(value, int):
        return int
    if isinstance(value, float):
        return float
    if isinstance(value, str) and value != MISSING:
        return str
    return Any


def check_keys(name: str, cfg: Mapping[str, Any]) -> None:
    """Every key of ``cfg`` (nested) exists in ``name``'s schema or YAML; one-line error with a suggestion."""
    schema = SCHEMAS.get(name)
    if schema is not None:
        _check_keys(name, schema, cfg, defaults(name), "")


def _check_keys(name: str, schema: Any, cfg: Mapping[str, Any], dflt: Any, prefix: str) -> None:
    allowed = _allowed(schema, dflt)
    for key, value in cfg.items():
        if key not in allowed:
            raise _unknown(name, prefix + str(key), list(allowed))
        tp, _, sub = allowed[key]
        if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
            _check_keys(name, tp, value, sub, f"{prefix}{key}.")


def check_override_keys(name: str, overrides: Sequence[str], groups: Sequence[str] = ()) -> None:
    """Check the keys of command-line overrides (``key=value``, ``+key=value``, ``~key``) before Hydra runs.

    ``hydra.*`` keys, config ``groups`` and anything that is not an override (``--help``) pass.
    """
    schema = SCHEMAS.get(name)
    if schema is None:
        return
    for item in overrides:
        if item.startswith("-") or ("=" not in item and not item.startswith("~")):
            continue
        key = item.split("=", 1)[0].lstrip("+~").strip()
        if not key or key.split(".")[0] in ("hydra", *groups):
            continue
        node, dflt = schema, defaults(name)
        parts = key.split(".")
        for depth, part in enumerate(parts):
            if not dataclasses.is_dataclass(node):
                break  # inside a free-form mapping (e.g. dicom.rules.include_patterns)
            allowed = _allowed(node, dflt)
            if part not in allowed:
                raise _unknown(name, ".".join(parts[: depth + 1]), list(allowed))
            node, _, dflt = allowed[part]


def validate(name: str, cfg: Mapping[str, Any], require: bool = True) -> dict:
    """Check a full configuration of ``name`` against its schema; return it as a plain dict.

    Unknown keys, missing keys, wrong types, values outside a choice or range:
    :class:`ConfigError` with one line naming the key, the value and what is
    allowed. ``require=False`` lets mandatory values stay ``"???"``.
    """
    schema = SCHEMAS.get(name)
    if schema is None:
        return dict(cfg)
    return _validate(name, schema, cfg, defaults(name), "", require)


def _validate(name: str, schema: Any, cfg: Any, dflt: Any, prefix: str, require: bool) -> dict:
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{_tool(name)}: {prefix.rstrip('.')}={_show(cfg)} is not allowed: expected a mapping")
    allowed = _allowed(schema, dflt)
    for key in cfg:
        if key not in allowed:
            raise _unknown(name, prefix + str(key), list(allowed))
    out: dict[str, Any] = {}
    for key, (tp, meta, sub) in allowed.items():
        full = prefix + key
        if key not in cfg:
            if meta.get("optional"):
                continue
            raise ConfigError(f"{_tool(name)}: missing key '{full}'")
        value = cfg[key]
        if isinstance(value, str) and value == MISSING:
            if require:
                raise ConfigError(f"{_tool(name)}: missing value for '{full}' (give {full}=...)")
            out[key] = value
            continue
        if dataclasses.is_dataclass(tp):
            out[key] = _validate(name, tp, value, sub, full + ".", require)
            continue
        ok, what = _check(tp, value)
        if not ok:
            raise ConfigError(f"{_tool(name)}: {full}={_show(value)} is not allowed: expected {what}")
        pattern = meta.get("pattern")
        if pattern is not None and not re.fullmatch(pattern, str(value)):
            raise ConfigError(f"{_tool(name)}: {full}={_show(value)} is not allowed: expected {meta['allowed']}")
        low = meta.get("min")
        if low is not None and isinstance(value, (int, float)) and not isinstance(value, bool) and value < low:
            raise ConfigError(f"{_tool(name)}: {full}={_show(value)} is not allowed: expected a number >= {low}")
        out[key] = _coerce(tp, value)
    return out


def _coerce(tp: Any, value: Any) -> Any:
    """A number given for a text setting becomes text (Hydra reads ``out_dir=2024`` as an int); else unchanged."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if origin is list and args and isinstance(value, (list, tuple)):
        return [_coerce(args[0], v) for v in value]
    if origin is dict and len(args) == 2 and isinstance(value, Mapping):
        return {k: _coerce(args[1], v) for k, v in value.items()}
    if origin in (Union, types.UnionType):
        for arg in args:
            if _check(arg, value)[0]:
                return _coerce(arg, value)
    return value


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value).replace("True", "true").replace("False", "false")


def _check(tp: Any, value: Any) -> tuple[bool, str]:
    """(value fits type ``tp``, description of what is allowed)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return True, "anything"
    if origin in (Union, types.UnionType):
        results = [_check(a, value) for a in args]
        return any(ok for ok, _ in results), " or ".join(desc for _, desc in results)
    if tp is type(None):
        return value is None, "null"
    if origin is Literal:
        return value in args, "one of " + ", ".join(str(a) for a in args)
    if tp is bool:
        return isinstance(value, bool), "true or false"
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), "an integer"
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    if tp is str:
        return isinstance(value, (str, int, float)) and not isinstance(value, bool), "text (a path or name)"
    if origin is tuple:
        desc = f"a list of {len(args)} ({', '.join(_check(a, None)[1] for a in args)})"
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            return False, desc
        return all(_check(a, v)[0] for a, v in zip(args, value)), desc
    if origin is list:
        desc = f"a list of {_check(args[0], None)[1]}"
        return isinstance(value, (list, tuple)) and all(_check(args[0], v)[0] for v in value), desc
    if origin is dict:
        desc = f"a mapping of {_check(args[1], None)[1]}" if args[1] is not Any else "a mapping"
        return isinstance(value, Mapping) and all(_check(args[1], v)[0] for v in value.values()), desc
    raise TypeError(f"unsupported schema type {tp!r}")
