"""Training (and batch translation) on several processes: PyTorch's own ``torch.distributed``.

Launch with ``torchrun`` (one process per GPU, or several CPU processes); without torchrun's
environment everything runs as a single process and nothing below changes a result.

    torchrun --nproc-per-node 2 -m fastv2v.cli train teacher --task scenes --out runs/t --device cuda

:func:`init_distributed` reads torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (and
``MASTER_ADDR`` / ``MASTER_PORT``), starts the process group (``nccl`` on CUDA, each process
on ``cuda:LOCAL_RANK``; ``gloo`` on the CPU) and returns a :class:`DistributedContext`:
``rank``, ``world_size``, ``is_main``, ``device``, ``wrap(module)`` (DistributedDataParallel when
there are several processes, the module itself otherwise), ``barrier()``, ``shutdown()``,
``all_reduce_mean(losses)`` for logging, ``all_gather_object(x)``, and the data split:
``local_batch_size(global_batch)``, ``batch_slice(global_batch)``, ``shard(tensors)`` and
``shard_items(items)``.

The data split keeps the *global* batch fixed. :func:`fastv2v.train.state.resumable_batches`
draws global batches whose order is a pure function of (seed, step); with ``rank`` and
``world_size`` it hands each process its contiguous chunk of every global batch (rank ``r`` of
``W`` takes samples ``r*B/W .. (r+1)*B/W - 1``) and reads only those samples. DDP averages the
gradients, so W processes x B/W samples take the same step as 1 process x B samples (to float
rounding, for losses that are means over samples and per-sample normalisation such as
InstanceNorm; BatchNorm statistics would be per process), and a run resumed with another
number of processes continues the same sample stream. Randomness drawn per sample (DiffAugment
parameters) is drawn for the whole global batch on every process, from the same generator, and
then sharded (:meth:`DistributedContext.shard`), so it matches the single-process run too. The
global RNGs are seeded alike on every process, so dropout masks repeat across processes.

Adopting it in a trainer with the shape of :mod:`fastv2v.train.teacher` (a ``models`` dict, an
``optimizers`` dict, ``train_step``, ``resumable_batches`` and ``save/load_training_state``)::

    ctx = init_distributed(config.device)                 # single process without torchrun
    ctx.local_batch_size(config.batch)                    # UserError unless world size divides it
    models = build_models(config, device=ctx.device)      # same seed everywhere -> same init
    optimizers = build_optimizers(config, models)         # on the plain modules' parameters
    trained = {"G": models["G"], ...}                      # the modules that are checkpointed
    if resuming:                                          # every process loads the checkpoint
        step = load_training_state(ckpt, trained, optimizers, generators=...).step
    step_models = {**models, **{k: ctx.wrap(m) for k, m in trained.items()}}   # DDP for the step only
    batches = resumable_batches(data, config.batch, seed=..., start_step=step, rank=ctx.rank,
                                world_size=ctx.world_size)                         # this process's chunk
    ...
        losses = ctx.all_reduce_mean(train_step(step_models, optimizers, next(batches), config))
        if ctx.is_main:                                    # only rank 0 writes logs, checkpoints,
            save_training_state(ckpt, step, trained, optimizers, ...)   # samples and exports
    ctx.barrier(); ctx.shutdown()

Checkpoints hold the *plain* modules' state (no ``module.`` prefix; :func:`unwrap` gets the
module out of a wrapper), so they resume on any number of processes, and rank 0 writes them
atomically (:mod:`fastv2v.atomic`). Only modules with trainable parameters should be wrapped
(:meth:`DistributedContext.wrap` returns frozen ones as they are). A module called several
times per step (a GAN discriminator scoring real and fake pairs, frozen for G's pass) is fine
under DDP as long as each of its parameters receives a gradient in exactly one backward pass
per step, as in :func:`fastv2v.train.teacher.train_step`. Every process loads the checkpoint
itself, so multi-node runs need ``--out`` on storage that every node sees.

Mixed precision: :func:`training_autocast` gives bf16 autocast (``precision="bf16"``), which
needs no loss scaling and suits GAN training; fp16 would need a GradScaler per optimizer and
is refused with a clear message (:func:`check_precision`).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, TypeVar

import torch
from torch import nn

from fastv2v.errors import UserError

PRECISIONS = ("fp32", "bf16", "fp16")
T = TypeVar("T")


def distributed_env() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from torchrun's environment; None when not launched by it."""
    if "WORLD_SIZE" not in os.environ and "RANK" not in os.environ:
        return None
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise UserError(
            "RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them); unset them or launch with torchrun."
        ) from None
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"RANK={rank} and WORLD_SIZE={world} do not fit together; launch with torchrun.")
    return rank, world, local


def is_main_process() -> bool:
    """True on rank 0 or without torchrun: the process that prints summaries and writes files."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    env = distributed_env()
    return env is None or env[0] == 0


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside a DistributedDataParallel (or DataParallel) wrapper."""
    while isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        module = module.module
    return module


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the job; a single process has rank 0 of world size 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    owns_group: bool = field(default=False, compare=False)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, logs, samples and exports."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    # -- models --------------------------------------------------------------------------------
    def wrap(self, module: nn.Module, **ddp_kwargs: Any) -> nn.Module:
        """DistributedDataParallel around ``module`` when there are several processes (gradients
        are averaged across them in ``backward``); the module itself otherwise, or when it has no
        trainable parameters. Keep the plain module for checkpoints (or :func:`unwrap`)."""
        if not self.is_distributed or not any(p.requires_grad for p in module.parameters()):
            return module
        if self.device.type == "cuda":
            ddp_kwargs.setdefault("device_ids", [self.device.index])
        return nn.parallel.DistributedDataParallel(module, **ddp_kwargs)

    # -- collectives ---------------------------------------------------------------------------
    def barrier(self) -> None:
        """Wait until every process reaches this point (nothing to wait for in one process)."""
        if not self.is_distributed:
            return
        if self.backend == "nccl":
            torch.distributed.barrier(device_ids=[self.device.index])
        else:
            torch.distributed.barrier()

    def all_reduce_mean(self, values: Mapping[str, float]) -> dict[str, float]:
        """The mean over processes of each float (same keys on every process), e.g. the losses of
        one step: with equal shards that is the loss of the global batch. For logging only."""
        values = dict(values)
        if not self.is_distributed or not values:
            return {k: float(v) for k, v in values.items()}
        keys = sorted(values)
        comm = self.device if self.backend == "nccl" else torch.device("cpu")
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=comm)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        t = (t / self.world_size).cpu()
        mean = dict(zip(keys, t.tolist()))
        return {k: mean[k] for k in values}

    def all_gather_object(self, obj: T) -> list[T]:
        """Every process's ``obj`` (picklable), in rank order, on every process."""
        if not self.is_distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def shutdown(self) -> None:
        """End the process group if :func:`init_distributed` started it (idempotent)."""
        if self.owns_group and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    # -- data ----------------------------------------------------------------------------------
    def local_batch_size(self, global_batch: int) -> int:
        """This process's share of a global batch; a UserError unless the world size divides it."""
        return local_batch_size(global_batch, self.world_size)

    def batch_slice(self, global_batch: int) -> slice:
        """The samples of a global batch this process takes: a contiguous chunk, rank order."""
        n = self.local_batch_size(global_batch)
        return slice(self.rank * n, (self.rank + 1) * n)

    def shard(self, tensors: T) -> T:
        """This process's chunk (dim 0) of a tensor, or of every tensor in a dict, drawn for the
        whole global batch (e.g. per-sample augmentation parameters); identity in one process."""
        if not self.is_distributed:
            return tensors
        if isinstance(tensors, torch.Tensor):
            return tensors[self.batch_slice(tensors.shape[0])]
        if isinstance(tensors, Mapping):
            return type(tensors)((k, self.shard(v)) for k, v in tensors.items())  # type: ignore[call-arg]
        raise TypeError(f"shard takes a tensor or a dict of tensors, not {type(tensors).__name__}")

    def shard_items(self, items: Iterable[T]) -> list[T]:
        """Items ``rank, rank + world, ...`` of a list: whole jobs (videos) split across processes."""
        return list(items)[self.rank :: self.world_size]


def local_batch_size(global_batch: int, world_size: int) -> int:
    if global_batch % world_size:
        raise UserError(
            f"the batch of {global_batch} does not split evenly over {world_size} processes; "
            f"use a batch that is a multiple of {world_size} (the batch is the global one, over all processes)."
        )
    return global_batch // world_size


def init_distributed(device: str | torch.device = "cpu", *, backend: str | None = None) -> DistributedContext:
    """Join the job torchrun started (or a process group that is already running), else a
    single-process context. ``device`` ``"cuda"`` becomes ``cuda:LOCAL_RANK`` under torchrun;
    the backend is nccl on CUDA and gloo on the CPU unless ``backend`` says otherwise."""
    dist = torch.distributed
    env = distributed_env()
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {str(device)!r} was asked for but CUDA is not available here; use device 'cpu'.")
    already = dist.is_available() and dist.is_initialized()
    if env is None and not already:
        return DistributedContext(device=device)
    if already:
        rank, world = dist.get_rank(), dist.get_world_size()
        local = env[2] if env is not None else rank
    else:
        rank, world, local = env  # type: ignore[misc]
    if device.type == "cuda":
        if world > 1 and device.index is not None and device.index != local:
            raise UserError(
                f"device {str(device)!r} was given to every process, but under torchrun each process uses "
                "cuda:LOCAL_RANK; pass device 'cuda' (or limit GPUs with CUDA_VISIBLE_DEVICES)."
            )
        index = local if world > 1 or device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise UserError(
                f"process {rank} wants cuda:{index} but this machine has {torch.cuda.device_count()} GPUs; "
                "start at most that many processes per node (--nproc-per-node)."
            )
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    if already:
        return DistributedContext(rank, world, local, device, dist.get_backend(), owns_group=False)
    if world == 1:
        return DistributedContext(0, 1, local, device)
    if not dist.is_available():
        raise UserError("this PyTorch build has no torch.distributed; run a single process.")
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise UserError(
            f"WORLD_SIZE={world} is set but {' and '.join(missing)} is not; launch the processes with torchrun."
        )
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world)
    return DistributedContext(rank, world, local, device, backend, owns_group=True)


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
