"""``onfh-export``: turn trained checkpoints into the shipped ONNX model (configs/export.yaml).

Thin entry point: the composed configuration becomes onfh-export's settings
(:class:`onfh_seg.config_schemas.ExportSettings`) and goes to :func:`onfh_seg.export.export_run`.
"""

from __future__ import annotations

from omegaconf import DictConfig

from onfh_seg import config
from onfh_seg.cli.common import hydra_main, to_dict


def run(cfg: DictConfig) -> int:
    """Export the checkpoints of ``cfg``; print where the model went."""
    settings = config.typed("export", to_dict(cfg))
    # function-level import: torch (a training extra) loads only when exporting: `--help` and argument errors stay fast
    from onfh_seg.export import export_run

    meta = export_run(settings)
    print(f"wrote {settings.out_dir}/coarse.onnx, fine.onnx, model.json (model_version {meta['model_version']})")
    return 0


def main() -> None:
    hydra_main("export", run)


if __name__ == "__main__":
    main()
