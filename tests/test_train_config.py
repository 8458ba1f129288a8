"""onfh-train's configs are _target_ configs: every experiment composes, validates and instantiates (data module,
model, callbacks, logger, trainer) without fitting; callbacks and loggers are swapped from the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from pytorch_lightning import Trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from onfh_seg import config
from onfh_seg.model.data import SegDataModule
from onfh_seg.model.module import SegModule
from onfh_seg.train import instantiate_callbacks, instantiate_loggers

EXPERIMENTS = sorted(p.stem for p in (config.config_dir() / "experiment").glob("*.yaml"))


def _checked(overrides: list[str]) -> dict:
    """The train config composed with ``overrides``, resolved and validated as onfh-train does."""
    with initialize_config_dir(config_dir=str(config.config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("hydra", None)
    return config.validate("train", plain)


def test_every_group_of_the_train_config_has_a_target() -> None:
    cfg = _checked([])
    assert cfg["data"]["_target_"] == "onfh_seg.model.data.SegDataModule"
    assert cfg["model"]["_target_"] == "onfh_seg.model.module.SegModule"
    assert cfg["trainer"]["_target_"] == "pytorch_lightning.Trainer"
    assert all("_target_" in entry for entry in [*cfg["callbacks"].values(), *cfg["logger"].values()])


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_instantiates(experiment: str, tmp_path: Path) -> None:
    """``onfh-train experiment=X trainer=smoke``: the objects it would fit, built without fitting."""
    run_dir = tmp_path / "run"
    cfg = _checked([f"experiment={experiment}", "trainer=smoke", f"run_dir={run_dir}"])
    data = instantiate(cfg["data"], train_manifests=[], val_manifests=[], seed=cfg["seed"], _convert_="all")
    module = instantiate(cfg["model"], _convert_="all")
    callbacks = instantiate_callbacks(cfg["callbacks"])
    loggers = instantiate_loggers(cfg["logger"])
    trainer = instantiate(cfg["trainer"], callbacks=callbacks, logger=loggers, _convert_="all")
    assert isinstance(data, SegDataModule) and isinstance(module, SegModule) and isinstance(trainer, Trainer)
    assert module.hparams.stage == data.cfg["stage"] == cfg["data"]["stage"]
    assert module.hparams.max_steps == trainer.max_steps == cfg["trainer"]["max_steps"]
    assert list(module.hparams.patch_vox) == list(data.cfg["patch"]) and module.hparams.lr == cfg["model"]["lr"]
    names = [c.filename for c in callbacks]  # best, last, plus step milestones in some experiments
    assert names.count("best") == 1 and names.count("last") == 1
    assert all(n in ("best", "last", "step{step}") for n in names)
    assert all(isinstance(c, ModelCheckpoint) for c in callbacks)
    assert {Path(c.dirpath) for c in callbacks} == {run_dir.resolve() / "checkpoints"}
    assert [c.monitor for c in callbacks] [:2] == ["val/dice_mean", None]
    assert [type(lg) for lg in loggers] == [CSVLogger] and Path(loggers[0].root_dir) == run_dir / "logs"
    assert trainer.checkpoint_callbacks == callbacks and trainer.loggers == loggers
    assert not run_dir.exists()  # nothing written before fitting


def test_callbacks_and_logger_can_be_swapped_off() -> None:
    cfg = _checked(["callbacks=none", "logger=none"])
    assert instantiate_callbacks(cfg["callbacks"]) == [] and instantiate_loggers(cfg["logger"]) == []
    one = _checked(["callbacks.best_checkpoint=null"])
    assert [c.filename for c in instantiate_callbacks(one["callbacks"])] == ["last"]
    with pytest.raises(ValueError, match="callbacks.extra has no _target_"):
        instantiate_callbacks({"extra": {"monitor": "val/dice_mean"}})


def test_train_cli_takes_the_callbacks_and_logger_groups(tmp_path: Path) -> None:
    """``onfh-train callbacks=none logger=none --cfg job`` composes (and prints) without training."""
    exe = Path(sys.executable).with_name("onfh-train")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONFH_SEG_")}
    res = subprocess.run([str(exe), "callbacks=none", "logger=none", f"run_dir={tmp_path / 'run'}", "--cfg", "job"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    printed = OmegaConf.create(res.stdout)
    assert printed.callbacks == {} and printed.logger == {} and printed.trainer._target_ == "pytorch_lightning.Trainer"
    assert not (tmp_path / "run" / "checkpoints").exists()
