"""Export trained checkpoints to ONNX plus the metadata inference needs (``model.json``)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from onfh_seg.config import default_model_dir
from onfh_seg.config_schemas import ExportSettings
from onfh_seg.io.files import atomic_write_text, sha256_file
from onfh_seg.labels import LABELS
from onfh_seg.preprocess import NORM_CLIP, NORM_PERCENTILE
from onfh_seg.version import __version__


def load_module(ckpt: str | Path):
    """Load a ``SegModule`` from a Lightning checkpoint (CPU, eval mode)."""
    # function-level import: Lightning and MONAI (training extras, heavy) load only when a checkpoint is read
    from onfh_seg.model.module import SegModule

    m = SegModule.load_from_checkpoint(str(ckpt), map_location="cpu")
    return m.eval()


class _Softmax(torch.nn.Module):
    """Wraps the network so the ONNX graph outputs softmax probabilities."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # written out instead of torch.softmax: ONNX Runtime's Softmax on axis 1 of a 5D tensor
        # transposes the whole volume and took a third of the fine model's run time
        z = self.net(x)
        e = torch.exp(z - z.amax(dim=1, keepdim=True))
        return e / e.sum(dim=1, keepdim=True)


def export_onnx(module, out_path: str | Path, example_size: tuple[int, int, int]) -> Path:
    """Export a SegModule's network (softmax output) to ONNX with dynamic spatial axes."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    wrapped = _Softmax(module.net).eval()
    x = torch.zeros((1, 1) + tuple(example_size), dtype=torch.float32)
    with torch.no_grad():
        torch.onnx.export(
            wrapped, (x,), str(tmp), input_names=["image"], output_names=["probs"], opset_version=17,
            dynamic_axes={"image": {0: "batch", 2: "x", 3: "y", 4: "z"}, "probs": {0: "batch", 2: "x", 3: "y", 4: "z"}},
            dynamo=False,
        )
    tmp.replace(out_path)
    return out_path


def stage_meta(module, onnx_path: Path, crop_vox: int | None) -> dict:
    """Metadata of one exported stage."""
    hp = module.hparams
    return {
        "file": onnx_path.name,
        "sha256": sha256_file(onnx_path),
        "spacing_mm": float(hp.spacing_mm),
        "train_patch_vox": list(hp.patch_vox or []),
        "crop_vox": crop_vox,
        "divisor": int(np.prod(hp.net["strides"])),
        "net": dict(hp.net),
    }


def strip_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Weights-only copy of a Lightning checkpoint (no optimizer state), loadable with ``load_module``."""
    ck = torch.load(str(src), map_location="cpu", weights_only=False)
    keep = {k: ck[k] for k in ("state_dict", "hyper_parameters", "pytorch-lightning_version", "epoch", "global_step") if k in ck}
    return _save_checkpoint(keep, dst)


def _save_checkpoint(ck: dict, dst: str | Path) -> Path:
    """``torch.save`` to a temporary name, then rename (never a half-written checkpoint)."""
    dst = Path(dst)
    tmp = dst.with_name(dst.name + ".tmp")
    torch.save(ck, str(tmp))
    tmp.replace(dst)
    return dst


def average_checkpoints(srcs: list[str | Path], dst: str | Path) -> Path:
    """Weights-only checkpoint whose floating-point tensors are the mean of ``srcs``' (stochastic weight
    averaging over the milestones of one run); hyperparameters and step from the last source. The networks
    must have the same shapes (one architecture); integer buffers are taken from the last source."""
    if not srcs:
        raise ValueError("average_checkpoints: no checkpoints given")
    cks = [torch.load(str(s), map_location="cpu", weights_only=False) for s in srcs]
    keys = list(cks[-1]["state_dict"])
    if any(list(c["state_dict"]) != keys for c in cks):
        raise ValueError("average_checkpoints: the checkpoints hold different networks")
    avg = {}
    for k in keys:
        ts = [c["state_dict"][k] for c in cks]
        if any(t.shape != ts[-1].shape for t in ts):
            raise ValueError(f"average_checkpoints: {k} has different shapes")
        avg[k] = torch.stack([t.double() for t in ts]).mean(0).to(ts[-1].dtype) if ts[-1].is_floating_point() else ts[-1]
    keep = {k: cks[-1][k] for k in ("hyper_parameters", "pytorch-lightning_version", "epoch", "global_step") if k in cks[-1]}
    keep["state_dict"] = avg
    keep["averaged_from"] = [str(s) for s in srcs]
    return _save_checkpoint(keep, dst)


def model_version(meta: dict) -> str:
    """``<software>+synth.<hash>``: changes when either network or the inference rule (lesion threshold,
    fine-stage window, overlap) changes."""
    key = meta["coarse"]["sha256"] + meta["fine"]["sha256"]
    if meta.get("lesion_threshold") is not None:
        key += f"|lesion_threshold={meta['lesion_threshold']}"
    if "fine_window" in meta:
        key += f"|fine_window={meta['fine_window']}|overlap={meta.get('overlap', 0.5)}"
    return f"{meta.get('software_version', __version__)}+synth.{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def check_export_target(out_dir: str | Path, force: bool = False) -> None:
    """Refuse (``FileExistsError``, one line) to write into the shipped model's folder unless ``force``."""
    shipped = default_model_dir()
    if not force and shipped.exists() and Path(out_dir).resolve() == shipped.resolve():
        raise FileExistsError(f"out_dir {out_dir} holds the shipped model; choose another out_dir "
                              f"or set force=true to replace it")


def export_model(coarse_ckpt: str | Path, fine_ckpt: str | Path, out_dir: str | Path, fine_crop_vox: int = 96,
                 extra: dict | None = None, ship_checkpoints: bool = False,
                 lesion_threshold: float | None = None, force: bool = False) -> dict:
    """Export both cascade stages and write ``model.json``; returns the metadata.

    ``lesion_threshold``: the engine's lesion decision rule (``infer.windows.lesion_decision``), stored
    in ``model.json``; None keeps the plain argmax. The shipped model's folder is only
    overwritten with ``force`` (:func:`check_export_target`).
    """
    if lesion_threshold is not None and not 0.0 < float(lesion_threshold) < 1.0:
        raise ValueError(f"lesion_threshold must be in (0, 1), got {lesion_threshold}")
    check_export_target(out_dir, force)
    out_dir = Path(out_dir)
    coarse, fine = load_module(coarse_ckpt), load_module(fine_ckpt)
    c_path = export_onnx(coarse, out_dir / "coarse.onnx", (64, 64, 64))
    f_path = export_onnx(fine, out_dir / "fine.onnx", (fine_crop_vox,) * 3)
    meta = {
        "name": "onfh-seg",
        "software_version": __version__,
        "labels": {str(k): v for k, v in LABELS.items()},
        "normalisation": {"method": "divide by percentile of non-zero voxels, clip",
                          "percentile": NORM_PERCENTILE, "clip": list(NORM_CLIP)},
        "orientation": "RAS-aligned model grids (canonical)",
        "coarse": stage_meta(coarse, c_path, None),
        "fine": stage_meta(fine, f_path, fine_crop_vox),
        "training_data": "synthetic (onfh-synth); research only, not for clinical use",
        **(extra or {}),
    }
    if lesion_threshold is not None:
        meta["lesion_threshold"] = float(lesion_threshold)
    meta["fine_window"], meta["overlap"] = "patch", 0.5  # the engine's sliding window (training patch size)
    meta["model_version"] = model_version(meta)
    if ship_checkpoints:
        strip_checkpoint(coarse_ckpt, out_dir / "coarse.ckpt")
        strip_checkpoint(fine_ckpt, out_dir / "fine.ckpt")
        meta["checkpoints_shipped"] = {"coarse": "coarse.ckpt", "fine": "fine.ckpt"}
    atomic_write_text(out_dir / "model.json", json.dumps(meta, indent=1))
    return meta


def export_run(settings: ExportSettings) -> dict:
    """onfh-export's work: the target checked and the checkpoints found before anything is loaded, then
    :func:`export_model`; returns the model's metadata (``model.json``)."""
    check_export_target(settings.out_dir, settings.force)  # before loading anything
    for key, path in (("coarse_ckpt", settings.coarse_ckpt), ("fine_ckpt", settings.fine_ckpt)):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{key} not found: {path}")
    extra = {"checkpoints": {"coarse": settings.coarse_ckpt, "fine": settings.fine_ckpt},
             "training": settings.training or {}}
    return export_model(settings.coarse_ckpt, settings.fine_ckpt, settings.out_dir, settings.fine_crop_vox, extra,
                        ship_checkpoints=settings.ship_checkpoints, lesion_threshold=settings.lesion_threshold,
                        force=settings.force)
