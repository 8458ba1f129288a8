"""Training samples change from epoch to epoch, also with data workers that live across epochs.

Before ``EpochSampler`` the epoch was set on the main process's copy of the dataset, which persistent data
workers never saw: every epoch of a run with workers repeated epoch 0's samples."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from onfh_seg.model.data import EpochSampler, PatchDataset


class Echo(Dataset):
    """Returns the index it was asked for."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int):
        return torch.tensor([float(index)])


class Toy(pl.LightningModule):
    """Records the indices each training epoch saw."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: dict[int, list[int]] = {}

    def training_step(self, batch, _):
        self.seen.setdefault(self.current_epoch, []).extend(int(v) for v in batch.flatten())
        return (self.w * batch).sum() ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_epoch_sampler_puts_the_epoch_in_the_index() -> None:
    s = EpochSampler(3)
    assert list(s) == [0, 1, 2] and len(s) == 3
    s.set_epoch(2)
    assert list(s) == [6, 7, 8]


def test_lightning_sets_the_epoch_with_persistent_workers(tmp_path) -> None:
    """Through Lightning's fit with one persistent worker, each epoch sees its own indices."""
    loader = DataLoader(Echo(), batch_size=2, sampler=EpochSampler(4), num_workers=1, persistent_workers=True)
    model = Toy()
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, loader)
    assert model.seen == {0: [0, 1, 2, 3], 1: [4, 5, 6, 7], 2: [8, 9, 10, 11]}


def test_patch_dataset_sample_is_a_function_of_seed_epoch_and_index() -> None:
    rng = np.random.default_rng(0)
    items = [(rng.normal(size=(24, 24, 24)).astype(np.float32), (rng.uniform(size=(24, 24, 24)) > 0.7).astype(np.uint8))]
    ds = PatchDataset(items, (8, 8, 8), length=5, fg_prob=0.5, augment=False, seed=3)
    first, again, next_epoch = ds[2][0], ds[2][0], ds[5 + 2][0]
    assert torch.equal(first, again) and not torch.equal(first, next_epoch)
