"""The progress bar (img/s, loss, lr) and the per-window numbers the metrics file gets."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from contrastkit.training import dist

if TYPE_CHECKING:
    from contrastkit.training.engine.trainer import Trainer


class Progress:
    """One epoch's bar on rank 0, plus a window of steps for the next metrics record."""

    def __init__(self, trainer: Trainer, desc: str) -> None:
        self.trainer = trainer
        enabled = trainer.cfg.progress and dist.is_main()
        self.bar = tqdm(
            total=trainer.steps_per_epoch, initial=trainer.step_in_epoch, desc=desc,
            unit="step", disable=not enabled, dynamic_ncols=True, leave=False,
        )  # fmt: skip
        self._reset()
        self.logs: dict[str, torch.Tensor] = {}

    def _reset(self) -> None:
        self.t0 = time.perf_counter()
        self.steps = 0
        self.loss_sum = 0.0
        self.finite_steps = 0

    def update(self, loss: float, logs: dict[str, torch.Tensor]) -> None:
        self.steps += 1
        if math.isfinite(loss):
            self.loss_sum += loss
            self.finite_steps += 1
        self.logs = logs or self.logs
        self.bar.update(1)
        if self.steps % max(1, self.trainer.cfg.log_every) == 0 and not self.bar.disable:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self._lr():.3g}",
                                 img_s=f"{self._rate():.0f}")  # fmt: skip

    def _lr(self) -> float:
        return float(self.trainer.optimizer.param_groups[0]["lr"])

    def _rate(self) -> float:
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        return self.steps * self.trainer.global_batch / elapsed

    def window_record(self) -> dict[str, float]:
        """Mean loss, lr, images/s and the method's logs since the last record."""
        t = self.trainer
        record: dict[str, Any] = {
            "loss": self.loss_sum / self.finite_steps if self.finite_steps else math.nan,
            "lr": self._lr(),
            "img_per_s": self._rate(),
            "epoch": t.step / t.steps_per_epoch,
            "train_seconds": t.train_seconds,
        }
        record |= {k: float(v) for k, v in self.logs.items()}
        self._reset()
        return record

    def close(self) -> None:
        self.bar.close()
