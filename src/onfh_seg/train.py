"""Training entry, as lightning-hydra-template does it: instantiate and fit.

The config (``configs/train.yaml`` composed with its groups) holds a ``_target_`` for the data module
(``data``), the LightningModule (``model``), each callback (``callbacks``), each logger (``logger``) and
the ``trainer``; :func:`train` instantiates them with :func:`hydra.utils.instantiate` and fits. What is
left here is what no ``_target_`` does: the seed and threads, the training cohort (generated from
``data.generate`` / ``data.generate_val``, checked to exist), weights to start from (``init_from``),
the run to resume (``ckpt_path``) and the run record ``<run_dir>/result.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import Logger

from onfh_seg.io.files import atomic_write_text
from onfh_seg.synth.cohort import generate_cohort, synth_config


def generate_training_cohort(gen: dict, cache_dir: str) -> str:
    """Generate (once) a synthetic cohort for training; returns its manifest path."""
    cfg = synth_config(gen)
    out = Path(cache_dir) / f"synth_seed{cfg['seed']}_n{cfg['n_patients']}"
    manifest = out / "manifest.csv"
    if not manifest.exists():
        generate_cohort(cfg, out)
    return str(manifest)


def training_manifests(data: dict) -> tuple[list[str], list[str]]:
    """(training, validation) manifests for ``data``: cohorts generated from ``generate`` / ``generate_val``
    or the ones given, each checked to exist; none for domain-randomised data (``randomise``: the data
    module renders its own)."""
    train_m, val_m = list(data.get("train_manifests") or []), list(data.get("val_manifests") or [])
    if data.get("generate"):
        train_m = [generate_training_cohort(data["generate"], data["cache_dir"])]
        if data.get("generate_val"):
            val_m = [generate_training_cohort(data["generate_val"], data["cache_dir"])]
    if data.get("randomise"):
        return [], []
    if not train_m:
        raise ValueError("no training data: set data.train_manifests=[...] or data.generate")
    for m in train_m + val_m:
        if not Path(m).is_file():
            raise FileNotFoundError(f"manifest not found: {m}")
    return train_m, val_m


def _targets(group: str, cfg: dict | None) -> list[dict]:
    """The entries of a ``callbacks`` / ``logger`` config, in order; a null entry is left out."""
    out = []
    for name, entry in (cfg or {}).items():
        if entry is None:
            continue
        if not isinstance(entry, dict) or "_target_" not in entry:
            raise ValueError(f"{group}.{name} has no _target_: each {group} entry is a mapping with a _target_")
        out.append(entry)
    return out


def instantiate_callbacks(cfg: dict | None) -> list[Callback]:
    """The Lightning callbacks of the ``callbacks`` group (none for ``callbacks=none``)."""
    return [instantiate(entry, _convert_="all") for entry in _targets("callbacks", cfg)]


def instantiate_loggers(cfg: dict | None) -> list[Logger]:
    """The Lightning loggers of the ``logger`` group (none for ``logger=none``)."""
    return [instantiate(entry, _convert_="all") for entry in _targets("logger", cfg)]


def best_checkpoint(trainer: pl.Trainer, last: Path) -> Path:
    """The best checkpoint of the first monitoring ModelCheckpoint (relative to the working folder when
    inside it: no machine-specific path in the run record); ``last`` when there is none."""
    monitors = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.monitor]
    best = Path(monitors[0].best_model_path) if monitors and monitors[0].best_model_path else last
    if best.is_absolute() and best.is_relative_to(Path.cwd()):
        best = best.relative_to(Path.cwd())
    return best


def load_weights(module: pl.LightningModule, path: str) -> None:
    """Start ``module`` from the weights of checkpoint ``path`` (fine-tuning; no optimizer state)."""
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    module.load_state_dict(state)


def train(cfg: dict[str, Any]) -> dict:
    """Train one stage from a resolved train config; returns the best/last checkpoint paths, the final
    metrics and the seconds spent fitting (also written to ``<run_dir>/result.json``)."""
    for what, path in (("init_from", cfg.get("init_from")), ("model.teacher", cfg["model"].get("teacher"))):
        if path and not Path(path).is_file():
            raise FileNotFoundError(f"{what}: no checkpoint at {path}")
    pl.seed_everything(int(cfg["seed"]), workers=True)
    torch.set_num_threads(int(cfg.get("threads") or torch.get_num_threads()))
    run_dir = Path(cfg["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    train_m, val_m = training_manifests(cfg["data"])
    datamodule = instantiate(cfg["data"], train_manifests=train_m, val_manifests=val_m, seed=int(cfg["seed"]),
                             _convert_="all")
    module = instantiate(cfg["model"], _convert_="all")
    if cfg.get("init_from"):
        load_weights(module, cfg["init_from"])
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer = instantiate(cfg["trainer"], callbacks=instantiate_callbacks(cfg.get("callbacks")),
                          logger=loggers or False, _convert_="all")
    t0 = time.time()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    last = run_dir / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(str(last))  # the final weights, whatever the callbacks did
    result = {"best": str(best_checkpoint(trainer, last)), "last": str(last),
              "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
              "seconds": round(time.time() - t0, 1)}
    atomic_write_text(run_dir / "result.json", json.dumps(result, indent=1))
    return result
