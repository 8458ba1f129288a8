"""Lightning callbacks for training under a wall-clock budget (a lent GPU machine runs one call for at most
10 minutes, scripts/gpu_train.py): ``WallClockStop`` asks the trainer to stop at a deadline, so that the run
ends cleanly and its checkpoint is written in time; ``StepRate`` reports training steps per second and the
share of training time spent waiting for the data loader (a data-bound run waits, a GPU-bound one does not).
Both are config entries: ``+callbacks.budget._target_=onfh_seg.model.callbacks.WallClockStop ...``."""

from __future__ import annotations

import json
import time
from typing import Any, Callable

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from onfh_seg.io.files import atomic_write_text


def budget_reached(now: float, deadline: float | None) -> bool:
    """True once ``now`` is at or past ``deadline`` (never for no deadline)."""
    return deadline is not None and now >= deadline


class WallClockStop(Callback):
    """Stop training after the batch that ends at or past a deadline: ``deadline`` (seconds since the epoch,
    ``time.time()``: a whole call's budget, setup included) or ``seconds`` after the first training batch
    (a probe: data workers started, first kernels chosen)."""

    def __init__(self, deadline: float | None = None, seconds: float | None = None,
                 clock: Callable[[], float] = time.time):
        if (deadline is None) == (seconds is None):
            raise ValueError("WallClockStop needs exactly one of deadline= and seconds=")
        self.deadline, self.seconds, self.clock = deadline, seconds, clock
        self.stopped_at_step: int | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        if self.deadline is None:
            self.deadline = self.clock() + float(self.seconds or 0.0)
        elif self.stopped_at_step is None and budget_reached(self.clock(), self.deadline):
            self.stopped_at_step = int(trainer.global_step)
            trainer.should_stop = True
            print(f"wall-clock budget reached at step {trainer.global_step}: stopping", flush=True)


def rate_summary(steps: int, samples: int, train_s: float, wait_s: float) -> dict[str, float]:
    """Steps and samples per second of training time, and the share of it spent waiting for data."""
    t = max(train_s, 1e-9)
    return {"steps": steps, "samples": samples, "train_s": round(train_s, 2), "steps_per_s": round(steps / t, 3),
            "samples_per_s": round(samples / t, 3), "data_wait_share": round(min(1.0, wait_s / t), 3)}


class StepRate(Callback):
    """Print the training rate every ``every_s`` seconds and at the end (after ``warmup_steps``: data workers
    starting, cuDNN choosing kernels); validation time is left out. ``out``: also write the final summary
    (:func:`rate_summary`) there as JSON."""

    def __init__(self, every_s: float = 30.0, warmup_steps: int = 20, out: str | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.every_s, self.warmup_steps, self.out, self.clock = float(every_s), int(warmup_steps), out, clock
        self.steps = self.samples = 0
        self.train_s = self.wait_s = self.val_s = 0.0
        self._seen = 0
        self._batch_start = 0.0
        self._last_end: float | None = None
        self._val_since_end = 0.0
        self._val_start: float | None = None
        self._last_print = 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        now = self.clock()
        if self._last_end is not None and self._seen > self.warmup_steps:
            gap = now - self._last_end - self._val_since_end
            self.wait_s += max(gap, 0.0)
            self.train_s += max(gap, 0.0)
        self._batch_start = now

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = self.clock()
        self._seen += 1
        if self._seen > self.warmup_steps:
            self.steps += 1
            self.samples += int(len(batch[0]))
            self.train_s += now - self._batch_start
        elif self._seen == self.warmup_steps:
            self._last_print = now
        self._last_end, self._val_since_end = now, 0.0
        if self.steps and now - self._last_print >= self.every_s:
            self._last_print = now
            print(f"step {trainer.global_step}: {self._line()}", flush=True)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_start = self.clock()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._val_start is not None:
            took = self.clock() - self._val_start
            self.val_s += took
            self._val_since_end += took
            self._val_start = None

    def summary(self) -> dict[str, float]:
        """The rate so far (:func:`rate_summary`) and the validation seconds."""
        return {**rate_summary(self.steps, self.samples, self.train_s, self.wait_s), "val_s": round(self.val_s, 2)}

    def _line(self) -> str:
        s = self.summary()
        return (f"{s['steps_per_s']:.2f} steps/s, {s['samples_per_s']:.1f} samples/s, "
                f"waiting for data {100 * s['data_wait_share']:.0f}% of training time")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        print(f"training rate after {self.warmup_steps} warm-up steps: {self._line()}", flush=True)
        if self.out:
            atomic_write_text(self.out, json.dumps(self.summary(), indent=1))
