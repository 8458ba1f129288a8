"""``onfh-export``: turn trained checkpoints into the shipped ONNX model (configs/export.yaml)."""

from __future__ import annotations

from omegaconf import DictConfig

from onfh_seg.cli.common import hydra_main, to_dict


def run(cfg: DictConfig) -> int:
    # function-level import: imported when the command runs: `--help` and argument errors stay fast
    from pathlib import Path

    from onfh_seg.export import check_export_target, export_model

    c = to_dict(cfg)
    check_export_target(c["out_dir"], bool(c["force"]))  # before loading anything
    for k in ("coarse_ckpt", "fine_ckpt"):
        if not Path(c[k]).is_file():
            raise FileNotFoundError(f"{k} not found: {c[k]}")
    extra = {"checkpoints": {"coarse": c["coarse_ckpt"], "fine": c["fine_ckpt"]}, "training": c.get("training") or {}}
    meta = export_model(c["coarse_ckpt"], c["fine_ckpt"], c["out_dir"], int(c["fine_crop_vox"]), extra,
                        ship_checkpoints=bool(c["ship_checkpoints"]), lesion_threshold=c.get("lesion_threshold"), force=bool(c["force"]))
    print(f"wrote {c['out_dir']}/coarse.onnx, fine.onnx, model.json (model_version {meta['model_version']})")
    return 0


def main() -> None:
    hydra_main("export", run)


if __name__ == "__main__":
    main()
