"""Training entry: compose data + model + trainer configs and fit with Lightning."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch



def generate_training_cohort(gen: dict, cache_dir: str) -> str:
    """Generate (once) a synthetic cohort for training; returns its manifest path."""
    from onfh_seg.synth.cohort import generate_cohort, synth_config

    cfg = synth_config(gen)
    out = Path(cache_dir) / f"synth_seed{cfg['seed']}_n{cfg['n_patients']}"
    manifest = out / "manifest.csv"
    if not manifest.exists():
        generate_cohort(cfg, out)
    return str(manifest)


def train(cfg: dict) -> dict:
    """Train one stage; returns paths of the best/last checkpoints and the final metrics."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.loggers import CSVLogger

    from onfh_seg.model.data import SegDataModule
    from onfh_seg.model.module import SegModule

    pl.seed_everything(int(cfg["seed"]), workers=True)
    torch.set_num_threads(int(cfg.get("threads") or torch.get_num_threads()))
    run_dir = Path(cfg["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    data = dict(cfg["data"])
    if data.get("generate"):
        data["train_manifests"] = [generate_training_cohort(data["generate"], data["cache_dir"])]
        if data.get("generate_val"):
            data["val_manifests"] = [generate_training_cohort(data["generate_val"], data["cache_dir"])]
    if data.get("randomise"):  # domain-randomised tissue maps are rendered by the data module itself
        data["train_manifests"], data["val_manifests"] = [], []
    elif not data.get("train_manifests"):
        raise ValueError("no training data: set data.train_manifests=[...] or data.generate")
    for m in list(data["train_manifests"]) + list(data.get("val_manifests") or []):
        if not Path(m).is_file():
            raise FileNotFoundError(f"manifest not found: {m}")
    dm = SegDataModule(**data, seed=int(cfg["seed"]))
    mcfg = cfg["model"]
    module = SegModule(net=mcfg["net"], lr=mcfg["lr"], weight_decay=mcfg["weight_decay"],
                       max_steps=cfg["trainer"]["max_steps"], stage=data["stage"], spacing_mm=data["spacing_mm"],
                       patch_vox=list(data["patch_vox"]), dice_weight=float(mcfg.get("dice_weight", 1.0)),
                       ce_weight=float(mcfg.get("ce_weight", 1.0)))
    if cfg.get("init_from"):
        state = torch.load(cfg["init_from"], map_location="cpu", weights_only=False)["state_dict"]
        module.load_state_dict(state)
    ckpt = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor="val/dice_mean", mode="max",
                           save_top_k=1)
    # the latest state at every epoch end, so a killed run resumes with ckpt_path=<run>/checkpoints/last.ckpt
    latest = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last", monitor=None, save_top_k=1,
                             enable_version_counter=False, save_on_train_epoch_end=True)
    trainer = pl.Trainer(**cfg["trainer"], default_root_dir=str(run_dir), logger=CSVLogger(str(run_dir), name="logs"),
                         callbacks=[ckpt, latest], enable_model_summary=False)
    t0 = time.time()
    trainer.fit(module, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
    trainer.save_checkpoint(str(run_dir / "checkpoints" / "last.ckpt"))  # the final weights, whatever the monitor did
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    best = Path(ckpt.best_model_path) if ckpt.best_model_path else run_dir / "checkpoints" / "last.ckpt"
    if best.is_absolute() and best.is_relative_to(Path.cwd()):
        best = best.relative_to(Path.cwd())  # no machine-specific paths in the run record
    result = {"best": str(best), "last": str(run_dir / "checkpoints" / "last.ckpt"),
              "metrics": metrics, "seconds": round(time.time() - t0, 1)}
    (run_dir / "result.json").write_text(json.dumps(result, indent=1))
    return result
