"""Distributed helpers: rank, world size and collectives that are no-ops on one process.

Every loss in `contrastkit.training.losses` calls these unconditionally, so the same code runs on a
laptop CPU (no process group: identities) and under `torchrun` (gloo or NCCL).

Gathers assume every rank holds the same shape (DDP with `drop_last` batches), as
`torch.distributed.all_gather` requires.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def is_dist() -> bool:
    """True when a default process group exists (we run under torchrun or a test's spawn)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank; 0 without a process group."""
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    """Number of processes in the default group; 1 without a process group."""
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    """True on rank 0: the process that logs, writes checkpoints and exports."""
    return rank() == 0


def _all_gather_cat(x: Tensor) -> Tensor:
    """[B, ...] on every rank -> [B * world, ...], rank order (no autograd)."""
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x)
    return torch.cat(parts, dim=0)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sends every rank's gradient back to the slice's owner.

    `torch.distributed.nn.functional.all_gather` back-propagates with reduce_scatter,
    which gloo lacks; all_reduce(SUM) of the full gradient followed by taking the local
    slice is the same sum and works on every backend.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.batch = x.shape[0]
        return _all_gather_cat(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        # Clone: all_reduce works in place and autograd may still own `grad`.
        total = grad.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        start = rank() * ctx.batch
        return total[start : start + ctx.batch]


def gather_with_grad(x: Tensor) -> Tensor:
    """[B, ...] -> [B * world, ...] in rank order; gradients reach every rank's slice.

    On rank r the gradient of x is the sum over all ranks' losses of d loss / d x_r.
    DDP then averages parameter gradients over ranks, which gives exactly the gradient
    of the mean loss over the concatenated batch. Identity on one process.
    """
    if not is_dist():
        return x
    out: Tensor = _GatherWithGrad.apply(x)
    return out


class _AllReduceSumWithGrad(torch.autograd.Function):
    """y = sum over ranks of x, on every rank. Every rank's loss depends on y, so the
    gradient of x is the sum over ranks of d loss_s / d y: an all_reduce(SUM) again."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        out = x.contiguous().clone()  # all_reduce works in place; x may be needed elsewhere
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        total = grad.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total


def all_reduce_sum_with_grad(x: Tensor) -> Tensor:
    """Sum `x` over ranks, differentiably (batch statistics of Barlow Twins); identity
    on one process."""
    if not is_dist():
        return x
    out: Tensor = _AllReduceSumWithGrad.apply(x)
    return out


@torch.no_grad()
def gather_no_grad(x: Tensor) -> Tensor:
    """[B, ...] -> [B * world, ...] in rank order, detached (e.g. MoCo keys for the queue)."""
    if not is_dist():
        return x.detach()
    return _all_gather_cat(x.detach())


def all_reduce_sum_(x: Tensor) -> Tensor:
    """Sum `x` over ranks in place and return it; identity on one process. No autograd."""
    if is_dist():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def all_reduce_mean(x: Tensor) -> Tensor:
    """A new, detached tensor: the mean of `x` over ranks (for logging losses/metrics)."""
    out = x.detach().clone()
    if is_dist():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= world_size()
    return out


def broadcast_(x: Tensor, src: int = 0) -> Tensor:
    """Overwrite `x` in place with rank `src`'s copy and return it; identity on one process."""
    if is_dist():
        dist.broadcast(x, src=src)
    return x


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj` (picklable), in rank order; [obj] on one process."""
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every rank; no-op on one process."""
    if is_dist():
        dist.barrier()


def init_from_env(device: str | torch.device | None = None) -> bool:
    """Join the process group that torchrun describes in RANK/WORLD_SIZE/MASTER_* env vars.

    Backend: NCCL when training on CUDA (`device`, or CUDA available when `device` is
    None), else gloo. On CUDA the process also selects the GPU LOCAL_RANK, so NCCL and
    the model agree on the device. Returns True when a process group is (already) up,
    False when the env vars are absent (a plain single-process run).
    """
    if is_dist():
        return True
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return False
    on = torch.device("cuda" if torch.cuda.is_available() else "cpu") if device is None else device
    use_cuda = torch.device(on).type == "cuda"
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(
        backend="nccl" if use_cuda else "gloo",
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
    )
    return True


def cleanup() -> None:
    """Leave the process group (end of training); no-op on one process."""
    if is_dist():
        dist.destroy_process_group()
