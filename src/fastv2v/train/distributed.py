"""Data-parallel training: DDP on top of the process group of :mod:`fastv2v.distributed`.

Launch with ``torchrun`` (one process per GPU, or several CPU processes); without it a run is a
single process and nothing here changes a result.

    torchrun --nproc-per-node 2 -m fastv2v.cli train teacher --task scenes --out runs/t --device cuda

:func:`init_distributed` joins the job like :func:`fastv2v.distributed.init_distributed` and
returns a :class:`TrainingContext`, whose ``wrap(module)`` puts a trained module in
DistributedDataParallel when there are several processes. The run itself
(:func:`fastv2v.train.trainer.run_training`) keeps the *global* batch fixed:
:func:`fastv2v.train.state.resumable_batches` draws global batches whose order is a pure
function of (seed, step) and hands each process its contiguous chunk. DDP averages the
gradients, so W processes x B/W samples take the same step as 1 process x B samples (to float
rounding, for losses that are means over samples and per-sample normalisation such as
InstanceNorm; BatchNorm statistics would be per process), and a run resumed with another
number of processes continues the same sample stream. Randomness drawn per sample (DiffAugment
parameters) is drawn for the whole global batch on every process, from the same generator, and
then sharded (:meth:`~fastv2v.distributed.DistributedContext.shard`), so it matches the
single-process run too. The global RNGs are seeded alike on every process, so dropout masks
repeat across processes.

Checkpoints hold the *plain* modules' state (no ``module.`` prefix; :func:`unwrap` gets the
module out of a wrapper), so they resume on any number of processes. Only modules with
trainable parameters are wrapped. A module called several times per step (a GAN
discriminator scoring real and fake pairs, frozen for G's pass) is fine under DDP as long as
each of its parameters receives a gradient in exactly one backward pass per step, as in
:func:`fastv2v.train.teacher.train_step`. Every process loads the checkpoint itself, so
multi-node runs need ``--out`` on storage that every node sees.

Mixed precision: :func:`training_autocast` gives bf16 autocast (``precision="bf16"``), which
needs no loss scaling and suits GAN training; fp16 would need a GradScaler per optimizer and
is refused with a clear message (:func:`check_precision`).

The process-group helpers that are not about training live in :mod:`fastv2v.distributed` and
are re-exported here for the imports that predate it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import torch
from torch import nn

from fastv2v import distributed
from fastv2v.distributed import DistributedContext, distributed_env, is_main_process, local_batch_size
from fastv2v.errors import UserError

__all__ = [
    "PRECISIONS",
    "DistributedContext",
    "TrainingContext",
    "check_precision",
    "distributed_env",
    "init_distributed",
    "is_main_process",
    "local_batch_size",
    "training_autocast",
    "unwrap",
]

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclasses.dataclass(frozen=True)
class TrainingContext(DistributedContext):
    """A :class:`~fastv2v.distributed.DistributedContext` that can also wrap modules for DDP."""

    def wrap(self, module: nn.Module, **ddp_kwargs: Any) -> nn.Module:
        """DistributedDataParallel around ``module`` when there are several processes (gradients
        are averaged across them in ``backward``); the module itself otherwise, or when it has no
        trainable parameters. Keep the plain module for checkpoints (or :func:`unwrap`)."""
        if not self.is_distributed or not any(p.requires_grad for p in module.parameters()):
            return module
        if self.device.type == "cuda":
            ddp_kwargs.setdefault("device_ids", [self.device.index])
        return nn.parallel.DistributedDataParallel(module, **ddp_kwargs)


def init_distributed(device: str | torch.device = "cpu", *, backend: str | None = None) -> TrainingContext:
    """:func:`fastv2v.distributed.init_distributed`, as a :class:`TrainingContext`."""
    ctx = distributed.init_distributed(device, backend=backend)
    return TrainingContext(**{f.name: getattr(ctx, f.name) for f in dataclasses.fields(ctx)})


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside a DistributedDataParallel (or DataParallel) wrapper."""
    while isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        module = module.module
    return module


def check_precision(precision: str) -> None:
    """Accept fp32 and bf16; refuse fp16 (and anything else) with the reason."""
    if precision == "fp16":
        raise UserError(
            "precision fp16 needs loss scaling (a GradScaler per optimizer), which training here does not do; "
            "use bf16 (as fast on recent GPUs, no scaling needed) or fp32."
        )
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; use fp32 or bf16.")


def training_autocast(device: torch.device | str, precision: str = "fp32"):
    """Autocast for the forward passes and losses of a training step (not the backward): none for
    fp32, bfloat16 for bf16 (weights, gradients and optimizer state stay fp32)."""
    check_precision(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
