"""Training smoke run, Hydra composition, ONNX export parity (ONNX Runtime vs torch)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from onfh_seg.cli.common import config_dir

TINY = ["model.net.channels=[4,8,16]", "model.net.strides=[2,2]", "model.lr=1e-2", "data.patch_vox=[32,32,32]",
        "data.samples_per_epoch=4", "data.batch_size=2", "data.num_workers=0", "data.augment=false",
        "trainer.max_steps=24", "trainer.check_val_every_n_epoch=3", "trainer.log_every_n_steps=1"]
GEN = ("data.generate={n_patients: 1, seed: 7, months: [0], "
       "acquisition: {max_matrix: 128, orientations: {coronal: 1}, small_fov_fraction: 0}}")


def _cfg(overrides: list[str], run_dir: Path | str = "unused") -> dict:
    """The resolved train config; ``run_dir`` is set before resolving (checkpoints and logs go below it)."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, f"run_dir={run_dir}"])
    return OmegaConf.to_container(cfg, resolve=True)


def test_train_config_composes():
    fine = _cfg([])
    coarse = _cfg(["experiment=coarse"])
    assert fine["data"]["stage"] == "fine" and coarse["data"]["stage"] == "coarse"
    assert coarse["model"]["net"]["channels"] != fine["model"]["net"]["channels"]
    assert _cfg(["trainer.max_steps=7"])["trainer"]["max_steps"] == 7


def test_export_run_checks_target_and_checkpoints_before_loading(tmp_path):
    from onfh_seg import config
    from onfh_seg.export import export_run

    def settings(**over):
        ckpts = {"coarse_ckpt": str(tmp_path / "coarse.ckpt"), "fine_ckpt": str(tmp_path / "fine.ckpt")}
        return config.typed("export", config.settings("export", {**ckpts, "out_dir": str(tmp_path / "out"), **over}))

    with pytest.raises(FileExistsError, match="holds the shipped model"):
        export_run(settings(out_dir=str(config.default_model_dir())))
    with pytest.raises(FileNotFoundError, match="^coarse_ckpt not found: "):
        export_run(settings())
    (tmp_path / "coarse.ckpt").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="^fine_ckpt not found: "):
        export_run(settings())
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    from onfh_seg.train import train

    root = tmp_path_factory.mktemp("train")
    out = {}
    for stage, extra in (("fine", ["data.val_vox=[64,64,64]", "data.crop_vox=80"]), ("coarse", ["experiment=coarse"])):
        cfg = _cfg(extra + TINY + [GEN, "data.generate_val=null", f"data.cache_dir={root / 'cache'}"], root / stage)
        cfg["data"]["val_manifests"] = []
        cfg["data"]["generate_val"] = cfg["data"]["generate"]
        out[stage] = train(cfg)
        out[stage]["run_dir"] = root / stage
    return out


def test_smoke_training_loss_falls_and_checkpoints(smoke_runs):
    for stage, res in smoke_runs.items():
        assert Path(res["last"]).is_file() and Path(res["best"]).is_file(), stage
        import torch

        assert torch.load(res["last"], map_location="cpu", weights_only=False)["global_step"] == 24  # final weights
        rows = list(csv.DictReader(open(next((res["run_dir"] / "logs").rglob("metrics.csv")))))
        losses = [float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")]
        assert len(losses) >= 20
        assert np.mean(losses[-5:]) < np.mean(losses[:5]), (stage, losses)
        assert "val/dice_mean" in res["metrics"]


def test_training_without_callbacks_or_logger(smoke_runs, tmp_path):
    """``callbacks=none logger=none``: no best.ckpt and no logs; the final weights still go to last.ckpt, which
    the run record then names as the best."""
    from onfh_seg.train import train

    cache = smoke_runs["fine"]["run_dir"].parent / "cache"  # the smoke runs' generated cohort, reused
    tiny = [o for o in TINY if not o.startswith("trainer.max_steps=")]
    cfg = _cfg(["data.val_vox=[64,64,64]", "data.crop_vox=80", *tiny, GEN, "data.generate_val=null",
                f"data.cache_dir={cache}", "trainer.max_steps=4", "callbacks=none", "logger=none"], tmp_path / "run")
    cfg["data"]["val_manifests"] = []
    cfg["data"]["generate_val"] = cfg["data"]["generate"]
    res = train(cfg)
    import torch

    assert res["best"] == res["last"] == str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["last.ckpt"]
    assert torch.load(res["last"], map_location="cpu", weights_only=False)["global_step"] == 4
    assert not (tmp_path / "run" / "logs").exists() and (tmp_path / "run" / "result.json").is_file()


def test_killed_run_resumes_from_the_latest_epoch(tmp_path, monkeypatch):
    """last.ckpt holds the latest epoch end (not only the best one): a run killed at step 13 resumes from step 12."""
    import torch

    from onfh_seg.model.module import SegModule
    from onfh_seg.train import train

    cfg = _cfg(["data.val_vox=[64,64,64]", "data.crop_vox=80", *TINY, GEN, "data.generate_val=null",
                f"data.cache_dir={tmp_path / 'cache'}", "trainer.check_val_every_n_epoch=100"], tmp_path / "run")
    cfg["data"]["val_manifests"] = []
    cfg["data"]["generate_val"] = cfg["data"]["generate"]
    step = SegModule.training_step

    def killed_at_13(self, batch, idx):
        if self.global_step == 13:
            raise RuntimeError("killed")
        return step(self, batch, idx)

    monkeypatch.setattr(SegModule, "training_step", killed_at_13)
    with pytest.raises(RuntimeError, match="killed"):
        train(cfg)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 12  # 2 steps per epoch
    monkeypatch.undo()
    res = train({**cfg, "ckpt_path": str(last)})
    assert torch.load(res["last"], map_location="cpu", weights_only=False)["global_step"] == 24


def test_onnx_matches_torch(smoke_runs, tmp_path):
    import onnxruntime as ort
    import torch

    from onfh_seg.export import export_model, load_module

    meta = export_model(smoke_runs["coarse"]["last"], smoke_runs["fine"]["last"], tmp_path, fine_crop_vox=48,
                        ship_checkpoints=True)
    assert (tmp_path / "model.json").is_file() and meta["fine"]["sha256"] and meta["model_version"]
    from onfh_seg.export import model_version

    assert meta["model_version"] == model_version(meta) and (meta["fine_window"], meta["overlap"]) == ("patch", 0.5)
    for key, value in (("fine", {**meta["fine"], "sha256": "0" * 64}), ("coarse", {**meta["coarse"], "sha256": "0" * 64}),
                       ("fine_window", "crop"), ("overlap", 0.25)):
        assert model_version({**meta, key: value}) != meta["model_version"], key  # networks and rule are in the version
    with pytest.raises(ValueError):
        export_model(smoke_runs["coarse"]["last"], smoke_runs["fine"]["last"], tmp_path / "bad", 48, lesion_threshold=1.5)
    thr = export_model(smoke_runs["coarse"]["last"], smoke_runs["fine"]["last"], tmp_path / "thr", 48, lesion_threshold=0.7)
    assert thr["lesion_threshold"] == 0.7 and thr["model_version"] != meta["model_version"]  # the rule is part of the version
    assert load_module(tmp_path / "fine.ckpt").hparams.stage == "fine"  # weights-only copy loads
    for stage in ("coarse", "fine"):
        module = load_module(smoke_runs[stage]["last"])
        rng = np.random.default_rng(0)
        x = rng.uniform(0, 1.2, size=(1, 1, 48, 40, 32)).astype(np.float32)
        with torch.no_grad():
            ref = torch.softmax(module(torch.from_numpy(x)), 1).numpy()
        sess = ort.InferenceSession(str(tmp_path / f"{stage}.onnx"), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"image": x})[0]
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() < 1e-4
        assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.9999


def test_average_checkpoints_is_the_mean_of_the_weights(smoke_runs, tmp_path):
    import torch

    from onfh_seg.export import average_checkpoints, load_module

    src = smoke_runs["fine"]["last"]
    ck = torch.load(str(src), map_location="cpu", weights_only=False)
    shifted = {**ck, "state_dict": {k: (v + 1.0 if v.is_floating_point() else v) for k, v in ck["state_dict"].items()}}
    torch.save(shifted, str(tmp_path / "shifted.ckpt"))
    out = average_checkpoints([src, tmp_path / "shifted.ckpt"], tmp_path / "avg.ckpt")
    got = torch.load(str(out), map_location="cpu", weights_only=False)
    assert "optimizer_states" not in got and len(got["averaged_from"]) == 2
    floats = [k for k, v in ck["state_dict"].items() if v.is_floating_point()]
    assert floats
    for k in floats:
        assert torch.allclose(got["state_dict"][k], ck["state_dict"][k] + 0.5, atol=1e-6), k
    assert load_module(out).hparams.stage == "fine"  # loads like any checkpoint (onfh-export, judge_fine.sh)
    missing = {**ck, "state_dict": dict(list(ck["state_dict"].items())[1:])}
    torch.save(missing, str(tmp_path / "other.ckpt"))
    with pytest.raises(ValueError, match="different networks"):
        average_checkpoints([src, tmp_path / "other.ckpt"], tmp_path / "bad.ckpt")
    with pytest.raises(ValueError):
        average_checkpoints([], tmp_path / "none.ckpt")
    assert not (tmp_path / "bad.ckpt").exists()
