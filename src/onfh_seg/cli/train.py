"""``onfh-train``: train (or fine-tune) a segmentation stage. Hydra config: configs/train.yaml."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from onfh_seg.cli.common import hydra_main, to_dict


def run(cfg: DictConfig) -> int:
    """Print the composed config, instantiate its data module, model, callbacks, logger and trainer, and fit."""
    # function-level import: torch and Lightning (the [train] extra, heavy): imported only to train
    from onfh_seg.train import train

    c = to_dict(cfg)
    print(OmegaConf.to_yaml(cfg))
    res = train(c)
    print(f"best checkpoint: {res['best']}\nlast checkpoint: {res['last']}")
    return 0


def main() -> None:
    hydra_main("train", run, in_place=False)  # a run folder (hydra.run.dir): hydra.main composes


if __name__ == "__main__":
    main()
