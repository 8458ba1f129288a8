"""The GPU training call's pure parts (scripts/gpu_train.py, issue 23 item 1): files cut into pieces and
joined with a checksum, the wall-clock budget and rate callbacks, the step plan, the overrides it composes
and the run folder packed there and unpacked here. No device, network or venv."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from onfh_seg import config
from onfh_seg.io.pieces import join_pieces, piece_paths, split_file
from onfh_seg.model.callbacks import StepRate, WallClockStop, rate_summary
from onfh_seg.train import instantiate_callbacks

ROOT = Path(__file__).resolve().parents[1]


def _driver():
    spec = importlib.util.spec_from_file_location("gpu_train", ROOT / "scripts" / "gpu_train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Clock:
    """A settable clock for the callbacks."""

    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize("size", [0, 1, 4096, 10_000])
def test_split_and_join_give_back_the_same_bytes(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    pieces = split_file(src, tmp_path / "p", 4096)
    assert [p.name for p in pieces] == [f"big.bin.{i:02d}" for i in range(max(1, -(-size // 4096)))]
    assert all(p.stat().st_size <= 4096 for p in pieces)
    sha_line = (tmp_path / "p" / "big.bin.sha256").read_text()
    assert sha_line == f"{hashlib.sha256(data).hexdigest()}  big.bin\n"  # sha256sum's format
    out = join_pieces(tmp_path / "p", "big.bin", tmp_path / "out" / "big.bin")
    assert out.read_bytes() == data


def test_a_new_split_replaces_the_old_pieces(tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(os.urandom(9000))
    split_file(src, tmp_path / "p", 1000)
    src.write_bytes(os.urandom(2500))
    split_file(src, tmp_path / "p", 1000)
    assert len(piece_paths(tmp_path / "p", "f")) == 3
    assert join_pieces(tmp_path / "p", "f", tmp_path / "j").read_bytes() == src.read_bytes()


def test_join_refuses_damaged_or_missing_pieces(tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(os.urandom(3000))
    pieces = split_file(src, tmp_path / "p", 1000)
    damaged = bytearray(pieces[1].read_bytes())
    damaged[5] ^= 0xFF
    pieces[1].write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="SHA-256"):
        join_pieces(tmp_path / "p", "f", tmp_path / "out")
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["f", "p"]
    pieces[1].unlink()
    with pytest.raises(ValueError, match="expected 0..1"):
        join_pieces(tmp_path / "p", "f", tmp_path / "out")


def test_wall_clock_stop_stops_after_the_batch_at_the_deadline() -> None:
    clock = Clock(100.0)
    cb = WallClockStop(deadline=110.0, clock=clock)
    trainer = SimpleNamespace(should_stop=False, global_step=5)
    cb.on_train_batch_end(trainer)
    assert trainer.should_stop is False
    clock.t, trainer.global_step = 110.0, 9
    cb.on_train_batch_end(trainer)
    assert trainer.should_stop is True and cb.stopped_at_step == 9


def test_wall_clock_stop_in_seconds_counts_from_the_first_batch() -> None:
    clock = Clock(0.0)
    cb = WallClockStop(seconds=30, clock=clock)
    trainer = SimpleNamespace(should_stop=False, global_step=1)
    clock.t = 50.0  # setup and the first batch (workers starting) took 50 s
    cb.on_train_batch_end(trainer)
    clock.t = 79.0
    cb.on_train_batch_end(trainer)
    assert trainer.should_stop is False
    clock.t = 80.0
    cb.on_train_batch_end(trainer)
    assert trainer.should_stop is True
    with pytest.raises(ValueError, match="exactly one"):
        WallClockStop()


def test_step_rate_leaves_out_warm_up_and_validation_and_counts_data_waits() -> None:
    clock = Clock(0.0)
    cb = StepRate(every_s=1e9, warmup_steps=1, clock=clock)
    trainer = SimpleNamespace(global_step=0)
    batch = (torch.zeros(2, 1), torch.zeros(2, 1))

    def step(wait: float, compute: float) -> None:
        clock.t += wait
        cb.on_train_batch_start(trainer, None, batch, 0)
        clock.t += compute
        cb.on_train_batch_end(trainer, None, None, batch, 0)

    step(5.0, 5.0)  # warm-up: not counted
    step(1.0, 1.0)  # the gap after warm-up is not counted either
    step(1.0, 1.0)
    cb.on_validation_start(trainer, None)
    clock.t += 100.0
    cb.on_validation_end(trainer, None)
    step(1.0, 1.0)
    s = cb.summary()
    assert s["steps"] == 3 and s["samples"] == 6
    assert s["train_s"] == pytest.approx(5.0) and s["val_s"] == pytest.approx(100.0)
    assert s["steps_per_s"] == pytest.approx(0.6) and s["data_wait_share"] == pytest.approx(0.4)
    assert rate_summary(0, 0, 0.0, 0.0)["steps_per_s"] == 0.0


def test_the_plan_fits_the_steps_into_what_is_left_of_the_budget() -> None:
    plan_steps = _driver().plan_steps
    max_steps, val_every = plan_steps(rate=10.0, seconds_left=400.0, setup_s=100.0, start_step=500,
                                      val_every_s=60.0, safety=1.0)
    assert (max_steps, val_every) == (3500, 600)
    assert plan_steps(10.0, 50.0, 100.0, 0, 60.0)[0] == 10  # no time left: a token run, still a checkpoint


def _composed(ov: list[str]) -> dict:
    """The train config for ``ov``, key-checked, composed and validated as onfh-train does."""
    config.check_override_keys("train", ov, groups=["data", "model", "trainer", "callbacks", "logger",
                                                    "experiment"])
    with initialize_config_dir(config_dir=str(config.config_dir()), version_base="1.3"):
        cfg = OmegaConf.to_container(compose("train", overrides=ov), resolve=True)
    cfg.pop("hydra", None)
    return config.validate("train", cfg)


def test_the_driver_overrides_compose_validate_and_instantiate(tmp_path: Path) -> None:
    drv = _driver()
    a = drv.parse(["run", "--out", str(tmp_path), "--workers", "15", "--", "data.batch_size=4"])
    cfg = _composed(drv.run_overrides(a, tmp_path, start=0, max_steps=3000, val_every=500, batch=4, deadline=1e9))
    assert cfg["trainer"]["accelerator"] == "gpu" and cfg["trainer"]["benchmark"] is True
    assert cfg["trainer"]["max_steps"] == 3000 and cfg["trainer"]["val_check_interval"] == 500
    assert cfg["data"]["num_workers"] == 15 and cfg["data"]["batch_size"] == 4
    assert cfg["data"]["samples_per_epoch"] == 12000  # one epoch for the whole call
    assert cfg["data"]["randomise"]["out_dir"] == str(tmp_path / "dr")
    kinds = [type(c).__name__ for c in instantiate_callbacks(cfg["callbacks"])]
    assert kinds == ["ModelCheckpoint", "ModelCheckpoint", "WallClockStop", "StepRate"]
    probe = _composed(drv.probe_overrides(a, tmp_path))
    assert probe["logger"] is None or not any(probe["logger"].values())
    assert probe["trainer"]["limit_val_batches"] == 0 and probe["data"]["randomise"]["val_samples"] == 1
    kinds = [type(c).__name__ for c in instantiate_callbacks(probe["callbacks"])]
    assert kinds == ["WallClockStop", "StepRate"]


def test_a_run_folder_packed_there_unpacks_here(tmp_path: Path) -> None:
    drv = _driver()
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "logs" / "version_0").mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.arange(3.0)}, "global_step": 7}, run / "checkpoints" / "last.ckpt")
    (run / "logs" / "version_0" / "metrics.csv").write_text("step,train/loss\n0,1.0\n")
    (run / "result.json").write_text(json.dumps({"best": str(run / "checkpoints" / "last.ckpt"),
                                                 "last": str(run / "checkpoints" / "last.ckpt")}))
    (run / "ignored.bin").write_bytes(b"x")
    (tmp_path / "stage").mkdir()
    pieces = drv.pack_run(run, tmp_path / "out", tmp_path / "stage")
    assert pieces and (tmp_path / "out" / "result.tar.sha256").is_file()
    assert drv.main(["unpack", str(tmp_path / "out"), str(tmp_path / "back")]) == 0
    back = tmp_path / "back"
    assert drv.checkpoint_step(str(back / "checkpoints" / "last.ckpt")) == 7
    assert (back / "logs" / "version_0" / "metrics.csv").read_text().startswith("step,")
    assert json.loads((back / "result.json").read_text())["last"] == "checkpoints/last.ckpt"
    assert not (back / "ignored.bin").exists()
