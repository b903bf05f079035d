"""Did the run make its model better? A CLIP run that starts from pretrained weights
(`--init-from`) scores its starting model before the first step and itself after the
last one, on the same held-out data, and writes the two side by side.

Held-out data (contrastkit.training.evaluate.data.holdout_eval_data): the pairs the run holds out
(`holdout`), scored by image-to-text and text-to-image recall@1/5/10; or a labelled
set's test queries, scored by zero-shot top-1 with the prompt-template ensemble.

Files in the run folder: eval_start.json (the start's scores, written before training,
so a resumed run still has them) and eval_before_after.json / .md (the table). Only the
main process evaluates; the others wait for it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contrastkit.training import dist
from contrastkit.training.augment import IMAGENET_MEAN, IMAGENET_STD
from contrastkit.training.encoders.base import Preprocess

if TYPE_CHECKING:
    from contrastkit.training.config import TrainConfig
    from contrastkit.training.evaluate.data import EvalData
    from contrastkit.training.methods.base import Method

log = logging.getLogger("contrastive.train")

START_FILE = "eval_start.json"


class StartVsEnd:
    """Scores the run's model at its start and its end (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, method: Method[Any], out: Path) -> None:
        self.cfg, self.method, self.out = cfg, method, out
        self.enabled = bool(
            cfg.before_after and cfg.init_from and getattr(method, "needs_text", False)
        )
        self._data: EvalData | None = None
        start = getattr(method, "start", None)
        self.start_name = start.description["reference"] if start is not None else cfg.init_from
        self.preprocess = start.preprocess if start is not None else _trained_preprocess(cfg)

    def at_start(self) -> None:
        """Score the starting model (a fresh run's step 0) into eval_start.json."""
        if not self.enabled or (self.out / START_FILE).is_file():
            return
        if dist.is_main():
            scores = self._score()
            if scores is not None:
                record = {"model": self.start_name, "metrics": scores}
                (self.out / START_FILE).write_text(json.dumps(record, indent=2) + "\n")
                log.info("start model on held-out data: %s", _short(scores))
        dist.barrier()

    def at_end(self) -> None:
        """Score the trained model; write and log the start-vs-end table."""
        path = self.out / START_FILE
        if not self.enabled:
            return
        if dist.is_main() and path.is_file():
            from contrastkit.training.evaluate.before_after import (
                before_after_lines,
                before_after_report,
                write_before_after,
            )

            before = json.loads(path.read_text())["metrics"]
            after = self._score()
            if after is not None:
                report = before_after_report(before, after, start=str(self.start_name),
                                             end=str(self.out))  # fmt: skip
                json_path, _ = write_before_after(self.out, report)
                for line in before_after_lines(report):
                    log.info("%s", line)
                log.info("start vs end saved in %s (and .md)", json_path)
        dist.barrier()

    def _score(self) -> dict[str, float] | None:
        from contrastkit.training.evaluate.before_after import MethodEncoder, evaluate_heldout

        data = self._heldout()
        if data is None:
            return None
        encoder = MethodEncoder(self.method, self.preprocess)  # type: ignore[arg-type]
        return evaluate_heldout(encoder, data)

    def _heldout(self) -> EvalData | None:
        if self._data is None:
            from contrastkit.training.evaluate.data import holdout_eval_data

            cfg = self.cfg
            assert cfg.image_size is not None
            self._data = holdout_eval_data(
                cfg.data, holdout=cfg.holdout, seed=cfg.seed, image_size=cfg.image_size
            )
            if self._data is None:
                log.info("no held-out data in %s: the start-vs-end comparison is skipped "
                         "(pairs data: set holdout above 0)", cfg.data)  # fmt: skip
                self.enabled = False
        return self._data


def _trained_preprocess(cfg: TrainConfig) -> Preprocess:
    """What an export of this run would use: the run's size, ImageNet mean/std."""
    return Preprocess(size=int(cfg.image_size or 224), mean=IMAGENET_MEAN, std=IMAGENET_STD)


def _short(scores: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
