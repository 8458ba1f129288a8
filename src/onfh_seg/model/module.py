"""LightningModule: U-Net, Dice + cross-entropy loss, per-label validation Dice."""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

from onfh_seg.labels import LABELS, NUM_CLASSES
from onfh_seg.model.network import build_unet


def dice_per_label(pred: torch.Tensor, target: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """Dice of each foreground label (NaN where absent in both)."""
    out = []
    for c in range(1, num_classes):
        p, t = pred == c, target == c
        denom = p.sum() + t.sum()
        out.append(torch.tensor(float("nan")) if denom == 0 else 2.0 * (p & t).sum().float() / denom.float())
    return torch.stack(out)


def load_teacher(path: str) -> torch.nn.Module:
    """The network of a trained checkpoint, frozen, for distillation (its own widths from its hyperparameters)."""
    return SegModule.load_from_checkpoint(path, map_location="cpu").net.eval().requires_grad_(False)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0,
                      weight: torch.Tensor | None = None) -> torch.Tensor:
    """Voxel-mean KL divergence of the student's class distribution from the teacher's (both logits, softened by
    ``temperature``), times temperature^2 (Hinton et al. 2015). ``weight`` (one per sample): the batch mean is
    weighted by it, so samples of weight 0 are not distilled (0 when every weight is 0)."""
    t = float(temperature)
    kl = F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), reduction="none", log_target=True)
    per_sample = kl.sum(1).flatten(1).mean(1) * t * t
    if weight is None:
        return per_sample.mean()
    w = weight.to(per_sample)
    return (per_sample * w).sum() / w.sum().clamp_min(1.0)


def soft_lesion_ml(logits: torch.Tensor, voxel_ml: float) -> torch.Tensor:
    """Per sample: softmax of labels 2 + 3 summed over the voxels, in mL."""
    return F.softmax(logits, 1)[:, 2:4].sum(1).flatten(1).sum(1) * voxel_ml


def true_lesion_ml(target: torch.Tensor, voxel_ml: float) -> torch.Tensor:
    """Per sample: voxels labelled 2 or 3, in mL."""
    return (target == 2).logical_or(target == 3).flatten(1).sum(1).float() * voxel_ml


def false_lesion_ml(logits: torch.Tensor, target: torch.Tensor, voxel_ml: float) -> torch.Tensor:
    """Batch mean of the soft lesion volume (mL: softmax of labels 2 + 3 summed over voxels) on the samples whose
    truth holds no lesion; samples with a lesion count 0. A healthy crop's false lesion barely moves Dice (its
    absent classes are saturated) or the voxel-mean cross-entropy (a 0.5 mL false band on a subchondral cyst was
    0.07-0.12% of the loss, 2026-12-07): this term prices it in mL, as the healthy-hip rules count it."""
    soft = soft_lesion_ml(logits, voxel_ml)
    return (soft * (true_lesion_ml(target, voxel_ml) == 0).to(soft)).mean()


def lesion_volume_error_ml(logits: torch.Tensor, target: torch.Tensor, voxel_ml: float) -> torch.Tensor:
    """Batch mean of |soft lesion volume - true lesion volume| (mL; labels 2 + 3). On a lesion-free sample it is
    ``false_lesion_ml``'s; on a sample with a lesion it pulls the soft volume to the true one both ways, so pricing
    false lesions on healthy crops does not also teach the network to call less lesion where there is one
    (fine_fskd25, fp_weight 0.2 alone: rt40 median lesion Dice 0.877 against 0.925, 2026-12-07)."""
    return (soft_lesion_ml(logits, voxel_ml) - true_lesion_ml(target, voxel_ml)).abs().mean()


def retest_view(x: torch.Tensor, max_deg: float, max_shift_vox: float, noise_sd: float) -> torch.Tensor:
    """The batch as a same-day repeat scan might show it: each sample turned by up to ``max_deg`` degrees about a
    random axis and shifted by up to ``max_shift_vox`` voxels per axis (trilinear, border values), with fresh
    Gaussian noise of ``noise_sd`` (the crops' normalised units) added. Drawn from torch's seeded generator."""
    b, dev = x.shape[0], x.device
    axis = F.normalize(torch.randn(b, 3, device=dev), dim=1)
    angle = (torch.rand(b, device=dev) * 2 - 1) * math.radians(max_deg)
    k = torch.zeros(b, 3, 3, device=dev)  # the cross-product matrix of each axis (Rodrigues' formula)
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    k = k - k.transpose(1, 2)
    s, c = torch.sin(angle)[:, None, None], torch.cos(angle)[:, None, None]
    rot = torch.eye(3, device=dev).expand(b, 3, 3) + s * k + (1 - c) * (k @ k)
    size = torch.tensor(x.shape[:1:-1], dtype=x.dtype, device=dev)  # (W, H, D): affine_grid's x, y, z order
    shift = (torch.rand(b, 3, device=dev) * 2 - 1) * max_shift_vox * 2.0 / size
    grid = F.affine_grid(torch.cat([rot.to(x.dtype), shift[:, :, None]], 2), list(x.shape), align_corners=False)
    moved = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return moved + noise_sd * torch.randn_like(moved)


def lesion_consistency_ml(logits: torch.Tensor, logits_repeat: torch.Tensor, voxel_ml: float) -> torch.Tensor:
    """Batch mean of |soft lesion volume on the crop - on its ``retest_view``| (mL): a lesion measured the same on
    a same-day repeat, which the retest rules count (the pooled repeatability coefficient of lesion volume)."""
    return (soft_lesion_ml(logits, voxel_ml) - soft_lesion_ml(logits_repeat, voxel_ml)).abs().mean()


class SegModule(pl.LightningModule):
    """3D segmentation of femoral head (1), necrotic zone (2), interface band (3), acetabulum (4).

    ``teacher`` (a checkpoint) with ``kd_weight`` > 0: the loss adds ``kd_weight`` x ``distillation_loss`` against
    that network's logits on the same batch (e.g. a narrower network learning from the shipped one). The teacher
    is loaded when fitting starts and is not part of this module's weights or checkpoints. ``fp_weight`` > 0: the
    loss adds ``fp_weight`` x ``false_lesion_ml`` (soft lesion mL on lesion-free samples); ``volume_weight`` > 0:
    ``volume_weight`` x ``lesion_volume_error_ml`` (|soft - true lesion mL| on every sample); ``consistency_weight``
    > 0: ``consistency_weight`` x ``lesion_consistency_ml`` against a second pass on each crop's ``retest_view``
    (turned up to ``consistency_deg``, shifted up to ``consistency_shift_vox``, noise ``consistency_noise``).
    """

    def __init__(self, net: dict, lr: float = 2e-3, weight_decay: float = 1e-5, max_steps: int = 1000,
                 stage: str = "fine", spacing_mm: float = 1.1, patch_vox: list[int] | None = None,
                 dice_weight: float = 1.0, ce_weight: float = 1.0, teacher: str | None = None,
                 kd_weight: float = 0.0, kd_temperature: float = 1.0, fp_weight: float = 0.0,
                 volume_weight: float = 0.0, consistency_weight: float = 0.0, consistency_deg: float = 3.0,
                 consistency_shift_vox: float = 2.0, consistency_noise: float = 0.05):
        super().__init__()
        self.save_hyperparameters()
        self.net = build_unet(**net, out_channels=NUM_CLASSES)
        # dice_weight / ce_weight: the shipped fine stage was fine-tuned on cross-entropy only (model card)
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True,
                               lambda_dice=dice_weight, lambda_ce=ce_weight)
        self.val_scores: list[torch.Tensor] = []
        self._teacher: list[torch.nn.Module] = []  # a list: not a submodule, so not in state_dict or parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def on_fit_start(self) -> None:
        if self.hparams.get("teacher") and self.hparams.get("kd_weight", 0.0) > 0 and not self._teacher:
            self._teacher.append(load_teacher(self.hparams.teacher).to(self.device))

    def training_step(self, batch, _):
        x, y = batch[0], batch[1]
        weight = batch[2] if len(batch) > 2 else None  # per-sample distillation weight (RandomisedPatchDataset)
        logits = self(x)
        loss = self.loss(logits, y)
        if self._teacher:
            with torch.no_grad():
                target = self._teacher[0](x)
            kd = distillation_loss(logits, target, self.hparams.kd_temperature, weight)
            self.log("train/kd", kd, on_step=True, on_epoch=True, batch_size=x.shape[0])
            loss = loss + self.hparams.kd_weight * kd
        if self.hparams.get("fp_weight", 0.0) > 0:
            fp = false_lesion_ml(logits, y, float(self.hparams.spacing_mm) ** 3 / 1000.0)
            self.log("train/false_lesion_ml", fp, on_step=True, on_epoch=True, batch_size=x.shape[0])
            loss = loss + self.hparams.fp_weight * fp
        if self.hparams.get("volume_weight", 0.0) > 0:
            ve = lesion_volume_error_ml(logits, y, float(self.hparams.spacing_mm) ** 3 / 1000.0)
            self.log("train/lesion_volume_error_ml", ve, on_step=True, on_epoch=True, batch_size=x.shape[0])
            loss = loss + self.hparams.volume_weight * ve
        if self.hparams.get("consistency_weight", 0.0) > 0:
            h = self.hparams
            repeat = self(retest_view(x, h.consistency_deg, h.consistency_shift_vox, h.consistency_noise))
            cons = lesion_consistency_ml(logits, repeat, float(h.spacing_mm) ** 3 / 1000.0)
            self.log("train/lesion_consistency_ml", cons, on_step=True, on_epoch=True, batch_size=x.shape[0])
            loss = loss + h.consistency_weight * cons
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=x.shape[0])
        return loss

    def predict_volume(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a whole validation volume, the way the inference engine runs the stage: the fine
        stage in Gaussian-blended training-patch windows (overlap 0.5, instance-norm statistics as in
        training), the coarse stage in one pass."""
        patch = self.hparams.patch_vox
        if self.hparams.stage != "fine" or not patch or all(s <= p for s, p in zip(x.shape[2:], patch)):
            return self(x)
        # function-level import: MONAI's inferers only for sliding-window validation
        from monai.inferers import sliding_window_inference

        return sliding_window_inference(x, tuple(patch), sw_batch_size=2, predictor=self, overlap=0.5, mode="gaussian")

    def validation_step(self, batch, _):
        x, y = batch
        pred = self.predict_volume(x).argmax(1, keepdim=True)
        self.val_scores.append(dice_per_label(pred, y))

    def on_validation_epoch_end(self) -> None:
        if not self.val_scores:
            return
        d = torch.nanmean(torch.stack(self.val_scores), dim=0)
        for c, v in zip(range(1, NUM_CLASSES), d):
            self.log(f"val/dice_{LABELS[c]}", torch.nan_to_num(v, nan=0.0))
        self.log("val/dice_mean", torch.nan_to_num(d, nan=0.0).mean(), prog_bar=True)
        self.val_scores.clear()

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = max(1, int(self.hparams.max_steps))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.02, (1 - min(s, total) / total) ** 0.9))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
