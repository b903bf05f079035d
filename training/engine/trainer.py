"""The one training loop for every method.

Reads top to bottom: build (data, backbone, method, DDP, optimiser), then per step
lr -> views -> loss under autocast -> backward -> finite check -> optimiser step ->
EMA -> hooks; per epoch kNN and a checkpoint. Methods know nothing of any of this.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch import nn

from contrastkit.training import dist
from contrastkit.training.augment import Augmenter
from contrastkit.training.config import TrainConfig
from contrastkit.training.data import Batch, load_data
from contrastkit.training.data.loader import FileData
from contrastkit.training.data.size import (
    CIFAR_STEM_MAX,
    recipe_line,
    settle_image_size,
    size_warning,
)
from contrastkit.training.data.skips import check_skipped
from contrastkit.training.encoders.nets.backbones import (
    BackboneSpec,
    build_backbone,
    enable_grad_checkpointing,
)
from contrastkit.training.engine.checkpoint import LAST, Checkpoint, all_finite, save_checkpoint
from contrastkit.training.engine.clip_start import start_model
from contrastkit.training.engine.knn_monitor import OnlineKNN
from contrastkit.training.engine.metrics import MetricsLogger
from contrastkit.training.engine.optim import (
    apply_lr,
    build_optimizer,
    optimizer_line,
    param_groups,
    resolve_optimizer_defaults,
)
from contrastkit.training.engine.pretrained import load_backbone
from contrastkit.training.engine.progress import Progress
from contrastkit.training.engine.runstate import capture_rng, restore_rng, seed_all, train_device
from contrastkit.training.engine.schedule import lr_at, scaled_lr
from contrastkit.training.engine.start_vs_end import StartVsEnd
from contrastkit.training.methods import MethodContext, Views, get_method
from contrastkit.training.methods.base import Method, MethodParams, MomentumMethod, split_views
from contrastkit.training.momentum import update_momentum

log = logging.getLogger("contrastive.train")


class NonFiniteError(RuntimeError):
    """Training produced non-finite losses or weights too often to continue."""


@dataclass
class RunResult:
    """What a finished (or stopped) run reports; also written to RUN/summary.json."""

    out: str
    method: str
    steps: int
    epochs: float
    loss: float | None
    knn_top1: float | None
    train_seconds: float
    images_per_second: float
    stopped: str  # "done" | "signal"


class Trainer:
    """Builds a run from a TrainConfig (+ the method's Params) and runs it.

    `resume` is a Checkpoint from `load_checkpoint`; the run continues exactly where it
    stopped (same batches, same random streams).
    """

    def __init__(self, cfg: TrainConfig, params: MethodParams, resume: Checkpoint | None = None):
        self.cfg = cfg
        self.out = Path(cfg.out)
        dist.init_from_env(None if cfg.device == "auto" else cfg.device)
        self.rank, self.world = dist.rank(), dist.world_size()
        self.device = train_device(cfg.device)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        seed_all(cfg.seed)  # identical initial weights on every rank
        self._fresh = resume is None
        # a whole pretrained model to fine-tune fixes the image size and normalisation
        self.start = start_model(cfg, resume)
        # None follows the data; resolved (and written into cfg) before anything is built
        self.image_size = self._settle_image_size(resumed=resume is not None)
        self.data = load_data(
            cfg.data, image_size=self.image_size, seed=cfg.seed, workers=cfg.workers,
            holdout=cfg.holdout, max_skipped=cfg.max_skipped,
        )  # fmt: skip
        self._warn_if_far_below()
        self.steps_per_epoch = self.data.steps_per_epoch(cfg.batch_size, self.world)
        self.total_steps = cfg.steps or cfg.epochs * self.steps_per_epoch
        self.global_batch = cfg.batch_size * self.world
        self.method = self._build_method(params)
        self.model: nn.Module = self.method
        if dist.is_dist():
            ids = [self.device.index] if self.device.type == "cuda" else None
            # Buffers (MoCo's queue, BN statistics) need no per-step broadcast: queues are
            # identical on every rank by construction, and SyncBN shares batch statistics.
            self.model = nn.parallel.DistributedDataParallel(
                self.method, device_ids=ids, broadcast_buffers=False
            )
        self.forward = torch.compile(self.model) if cfg.compile else self.model
        self.optimizer, self.peak_lr = self._build_optimizer()
        self.start_vs_end = StartVsEnd(cfg, self.method, self.out)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self._dtype() is torch.float16)
        norm = {}
        if self.start is not None:  # the pretrained model's own mean/std
            norm = {"mean": self.start.preprocess.mean, "std": self.start.preprocess.std}
        self.augment = Augmenter(
            self.device,
            seed=cfg.seed * 7919 + 17 * self.rank + 1,
            jitter_strength=cfg.jitter_strength,
            **norm,
        )
        self.metrics = MetricsLogger(self.out, enabled=dist.is_main(), tensorboard=cfg.tensorboard)
        self.knn = OnlineKNN(cfg, self.augment, self.device)
        self.step = self.epoch = self.step_in_epoch = self.bad_steps = 0
        self.train_seconds, self.last_loss = 0.0, math.nan
        self.last_knn: float | None = None
        self._skipped_reported = 0  # skipped samples already in the log
        self._stop_signal: int | None = None  # set by a signal on this rank
        self._stop_agreed = False  # some rank has a stop request: every rank stops here
        # Called after each online kNN evaluation (benchmarks record time-to-accuracy).
        self.knn_callbacks: list[Callable[[Trainer], None]] = []
        torch.manual_seed(cfg.seed * 7919 + self.rank)  # the run's own stream, per rank
        if resume is not None:
            self._restore(resume)

    # -- construction --------------------------------------------------------------
    def _settle_image_size(self, resumed: bool) -> int:
        """Resolve cfg.image_size (in place) and say, as the run's first lines, which size
        and recipe were chosen and why."""
        choice = settle_image_size(self.cfg, resumed=resumed)
        if dist.is_main():
            log.info("%s", choice.line())
            log.info("%s", recipe_line(self.cfg))
        return choice.size

    def _warn_if_far_below(self) -> None:
        """A warning line (never an error) when the size is far below the images' own."""
        message = size_warning(self.data, self.image_size) if dist.is_main() else None
        if message:
            log.warning("%s", message)

    def _build_method(self, params: MethodParams) -> Method[Any]:
        cfg, size = self.cfg, self.image_size
        method_cls = get_method(cfg.method)
        cifar = cfg.cifar_stem if cfg.cifar_stem is not None else size <= CIFAR_STEM_MAX
        cifar = cifar and "resnet" in cfg.backbone
        if self.start is not None:  # the pretrained model's image tower, shared
            self.backbone_spec = BackboneSpec(cfg.backbone, False, size)
            backbone, feat_dim = self.start.visual, self.start.embed_dim
        else:
            self.backbone_spec = BackboneSpec(cfg.backbone, cifar, size)
            backbone, feat_dim = build_backbone(self.backbone_spec)
            if cfg.init_from and self._fresh:  # a resumed run has its own weights
                load_backbone(backbone, Path(cfg.init_from))
        if cfg.grad_checkpointing and self.start is not None:
            self.start.model.set_grad_checkpointing(True)  # type: ignore[operator]
        elif cfg.grad_checkpointing:
            enable_grad_checkpointing(backbone)
        ctx = MethodContext(
            device=self.device,
            image_size=size,
            total_steps=self.total_steps,
            steps_per_epoch=self.steps_per_epoch,
            global_batch=self.global_batch,
            world_size=self.world,
            classes=self.data.classes,
            channels=self.data.channels,
            has_texts=self.data.has_texts,
            start=self.start,
        )
        method = method_cls(backbone, feat_dim, params, ctx)
        # SyncBN needs CUDA; a method may arrange its own statistics (MoCo's shuffled BN).
        sync_bn = cfg.sync_bn and method.allows_sync_bn
        if dist.is_dist() and self.device.type == "cuda" and sync_bn:
            method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
        method = method.to(self.device)
        if self.device.type == "cuda" and cfg.channels_last:
            method = method.to(memory_format=torch.channels_last)  # type: ignore[call-arg]
        return method

    def _build_optimizer(self) -> tuple[torch.optim.Optimizer, float]:
        cfg = self.cfg
        unset = [k for k in ("optimizer", "lr", "weight_decay") if getattr(cfg, k) is None]
        name, lr, wd = resolve_optimizer_defaults(cfg, type(self.method))
        method = self.method
        groups = param_groups(method, wd, method.no_weight_decay(), method.lr_scales())
        peak = scaled_lr(lr, self.global_batch, cfg.lr_scaling)
        opt = build_optimizer(name, groups, peak, cfg.momentum, cfg.lars_eta, cfg.lars_clip)
        if dist.is_main():
            log.info("%s", optimizer_line(cfg, type(self.method), peak, self.global_batch, unset))
        return opt, peak

    def _dtype(self) -> torch.dtype:
        p = self.cfg.precision
        if p == "auto":
            return torch.bfloat16 if self.device.type == "cuda" else torch.float32
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[p]

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        dtype = self._dtype()
        if dtype is torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    # -- the loop ------------------------------------------------------------------
    def fit(self) -> RunResult:
        """Train until `total_steps`; checkpoint each epoch and at the end."""
        previous = self._install_signal_handlers()
        try:
            if dist.is_main():
                self.out.mkdir(parents=True, exist_ok=True)
                (self.out / "config.json").write_text(_json(self.cfg.to_dict()))
            self.start_vs_end.at_start()
            while self.step < self.total_steps and not self._stopping:
                self._run_epoch()
            stopped = "signal" if self._stopping else "done"
            if stopped == "done":
                self.last_knn = self.knn.maybe_run(self.method, self._autocast)
                self._log_knn()
            self._save()
            if stopped == "done":
                self.start_vs_end.at_end()
            return self._result(stopped)
        finally:
            self.metrics.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _run_epoch(self) -> None:
        cfg = self.cfg
        batches = self.data.batches(
            self.epoch, cfg.batch_size, self.device, rank=self.rank,
            world_size=self.world, start_step=self.step_in_epoch,
        )  # fmt: skip
        epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        bar = Progress(self, f"epoch {self.epoch + 1}/{epochs}")
        for batch in batches:
            t0 = time.perf_counter()
            logs = self._train_step(batch)
            self.train_seconds += time.perf_counter() - t0
            self.step += 1
            self.step_in_epoch += 1
            bar.update(self.last_loss, logs)
            if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                self.metrics.log(self.step, "train", bar.window_record())
            if cfg.checkpoint_every_steps and self.step % cfg.checkpoint_every_steps == 0:
                self._save()
            if self.step >= self.total_steps or self._stopping:
                break
        bar.close()
        self._report_skipped()
        if self.step_in_epoch >= self.steps_per_epoch:
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
            if self.step < self.total_steps:
                self._end_of_epoch()

    def _end_of_epoch(self) -> None:
        cfg = self.cfg
        if cfg.knn_every and self.epoch % cfg.knn_every == 0:
            self.last_knn = self.knn.maybe_run(self.method, self._autocast)
            self._log_knn()
        if self.epoch % cfg.save_every == 0:
            self._save()

    def _train_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One optimiser step on a batch; returns the method's logs ({} when skipped)."""
        return self.step_on_views(self.make_views(batch))

    def make_views(self, batch: Batch) -> Views:
        """The method's augmented views of a batch, in the engine's memory format."""
        views = self.method.make_views(batch, self.augment)
        if self.device.type == "cuda" and self.cfg.channels_last:
            views.crops = [c.contiguous(memory_format=torch.channels_last) for c in views.crops]
        return views

    def step_on_views(self, views: Views) -> dict[str, torch.Tensor]:
        """lr, autocast forward, backward, finite check, optimiser, EMA, hooks.

        Does not advance `self.step` (the loop does); benchmarks call it on ready views.
        """
        lr = self._set_lr()
        self.optimizer.zero_grad(set_to_none=True)
        loss, logs = self._accumulate(views)
        if not self._finite(loss):
            self._skip_step(lr)
            return {}
        self.bad_steps = 0
        if self.cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.method.parameters(), self.cfg.grad_clip)
        self.method.on_before_step(self.step)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if isinstance(self.method, MomentumMethod):
            tau = self.method.momentum_at((self.step + 1) / self.total_steps)
            for online, target in self.method.momentum_pairs():
                update_momentum(online, target, tau)
        self.method.on_after_step(self.step)
        return logs

    def _accumulate(self, views: Views) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward + backward over `accumulate` micro-batches of the views, gradients
        summed (each loss / accumulate) -> (the mean loss, the mean logs). DDP reduces the
        gradients once, on the last micro-batch (no_sync before it)."""
        parts = split_views(views, self.cfg.accumulate)
        losses: list[torch.Tensor] = []
        logs: dict[str, list[torch.Tensor]] = {}
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            with self._no_sync(unless=last):
                with self._autocast():
                    out = self.forward(part)
                self.scaler.scale(out.loss / len(parts)).backward()
            losses.append(out.loss.detach())
            for k, v in out.logs.items():
                logs.setdefault(k, []).append(v.detach().float())
        mean = {k: torch.stack(v).mean() for k, v in logs.items()}
        return torch.stack(losses).float().mean(), mean

    def _no_sync(self, unless: bool) -> contextlib.AbstractContextManager[Any]:
        """DDP's no_sync (gradients kept local) unless `unless`, or when not distributed."""
        if unless or not isinstance(self.model, nn.parallel.DistributedDataParallel):
            return contextlib.nullcontext()
        return self.model.no_sync()

    def _set_lr(self) -> float:
        warmup = round(self.cfg.warmup_epochs * self.steps_per_epoch)
        warmup = min(warmup, self.total_steps // 2)
        lr = lr_at(self.step, self.total_steps, warmup, self.peak_lr, self.cfg.min_lr_ratio)
        apply_lr(self.optimizer, lr)  # each group's lr_scale applies on top (LLRD)
        return lr

    def _finite(self, loss: torch.Tensor) -> bool:
        """Is the loss finite on every rank? One collective and one host sync per step,
        the price of never applying a NaN update; also records the mean loss and whether
        any rank was asked to stop (a SIGTERM reaches one node's ranks first: they must
        all stop after the same step, or the others would wait in a collective)."""
        loss = loss.detach().float()
        bad = (~torch.isfinite(loss)).float()
        stop = torch.full_like(loss, float(self._stop_signal is not None))
        sums = dist.all_reduce_sum_(torch.stack([torch.nan_to_num(loss) * (1 - bad), bad, stop]))
        total, n_bad, n_stop = sums.tolist()
        self.last_loss = total / self.world if n_bad == 0 else math.nan
        self._stop_agreed = n_stop > 0
        return n_bad == 0

    @property
    def _stopping(self) -> bool:
        """Stop after this step? Alone, on a request; with several ranks, only when the
        last step's collective said some rank has one (so all stop at the same step)."""
        return self._stop_signal is not None if self.world == 1 else self._stop_agreed

    def _skip_step(self, lr: float) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.bad_steps += 1
        log.warning(
            "step %d: non-finite loss (lr %.3g); step skipped (%d in a row, limit %d)",
            self.step, lr, self.bad_steps, self.cfg.max_nonfinite,
        )  # fmt: skip
        if self.bad_steps >= self.cfg.max_nonfinite:
            raise NonFiniteError(
                f"{self.bad_steps} non-finite losses in a row at step {self.step}; stopping. "
                f"{self._last_good()}; try a lower lr, grad_clip, or precision=fp32."
            )

    # -- checkpoints -----------------------------------------------------------------
    def _save(self) -> None:
        rng = capture_rng(self.augment.state_dict(), self.device)  # every rank takes part
        if dist.is_main():
            model_state = self.method.state_dict()
            if not all_finite(list(model_state.values())):
                raise NonFiniteError(
                    f"weights became non-finite by step {self.step}; nothing saved. "
                    f"{self._last_good()}."
                )
            save_checkpoint(self.out / LAST, self._checkpoint(model_state, rng))
        dist.barrier()

    def _last_good(self) -> str:
        """Where the last finite weights are, naming only a file that exists."""
        path = self.out / LAST
        if path.is_file():
            return f"The last good checkpoint is {path}"
        return f"No checkpoint was written yet (none in {self.out})"

    def _checkpoint(self, model_state: dict[str, Any], rng: dict[str, Any]) -> Checkpoint:
        return Checkpoint(
            method=self.cfg.method,
            config=self.cfg.to_dict(),
            model=model_state,
            step=self.step,
            epoch=self.epoch,
            step_in_epoch=self.step_in_epoch,
            train_seconds=self.train_seconds,
            world_size=self.world,
            backbone=self.backbone_spec,
            feat_dim=self.method.feat_dim,
            optimizer=self.optimizer.state_dict(),
            scaler=self.scaler.state_dict(),
            rng=rng,
            start=self.start.description if self.start is not None else None,
        )

    def _restore(self, ckpt: Checkpoint) -> None:
        self.method.load_state_dict(ckpt.model)
        self.optimizer.load_state_dict(ckpt.optimizer)
        if ckpt.scaler:
            self.scaler.load_state_dict(ckpt.scaler)
        self.step, self.epoch, self.step_in_epoch = ckpt.step, ckpt.epoch, ckpt.step_in_epoch
        self.train_seconds = ckpt.train_seconds
        if ckpt.world_size != self.world:
            log.warning(
                "resuming a %s-process run on %s processes: batches and random streams "
                "differ from an uninterrupted run",
                ckpt.world_size,
                self.world,
            )
        aug = restore_rng(ckpt.rng, self.device)
        if aug is not None:
            self.augment.load_state_dict(aug)
        self.metrics.truncate_after(self.step)
        log.info("resumed from step %d (epoch %d)", self.step, self.epoch)

    # -- bookkeeping -----------------------------------------------------------------
    def _log_knn(self) -> None:
        if self.last_knn is not None:
            record = {"knn_top1": self.last_knn, "epoch": self.epoch,
                      "train_seconds": self.train_seconds}  # fmt: skip
            self.metrics.log(self.step, "knn", record)
            log.info("step %d: kNN top-1 %.4f", self.step, self.last_knn)
            for callback in self.knn_callbacks:
                callback(self)

    def _report_skipped(self) -> None:
        """After an epoch: a DataError when more samples were skipped than max_skipped
        allows (on every rank alike), else one log line if it met new bad samples: the
        running totals."""
        if isinstance(self.data, FileData):
            # Each rank decodes its own share: pool what they met, so all stop together
            # (one rank stopping alone would leave the others waiting in a collective).
            for found in dist.all_gather_objects(self.data.unreadable):
                self.data.merge_unreadable(found)
        check_skipped(self.data, self.cfg.max_skipped)
        counts = self.data.skipped_samples()
        total = sum(counts.values())
        if total > self._skipped_reported:
            self._skipped_reported = total
            reasons = ", ".join(f"{n} {why}" for why, n in counts.items())
            log.warning("epoch %d: %d samples skipped so far (%s)", self.epoch + 1, total, reasons)

    def request_stop(self, reason: int = 0) -> None:
        """Finish the step in flight, save a checkpoint and return from `fit` (as SIGTERM)."""
        self._stop_signal = reason

    def _result(self, stopped: str) -> RunResult:
        result = RunResult(
            out=str(self.out),
            method=self.cfg.method,
            steps=self.step,
            epochs=self.step / self.steps_per_epoch,
            loss=self.last_loss if math.isfinite(self.last_loss) else None,
            knn_top1=self.last_knn,
            train_seconds=self.train_seconds,
            images_per_second=self.step * self.global_batch / max(self.train_seconds, 1e-9),
            stopped=stopped,
        )
        if dist.is_main():
            (self.out / "summary.json").write_text(_json(dataclasses.asdict(result)))
        return result

    def _install_signal_handlers(self) -> dict[int, Any]:
        """SIGINT/SIGTERM finish the current step, save a checkpoint, and return."""

        def request_stop(signum: int, frame: FrameType | None) -> None:
            log.warning("signal %d: stopping after this step and saving a checkpoint", signum)
            self._stop_signal = signum

        previous: dict[int, Any] = {}
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, request_stop)
        return previous


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj, indent=2, default=str) + "\n"
