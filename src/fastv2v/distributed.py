"""Several processes (training or batch translation) on PyTorch's own ``torch.distributed``.

Launch with ``torchrun`` (one process per GPU, or several CPU processes); without torchrun's
environment everything runs as a single process and nothing below changes a result.

:func:`init_distributed` reads torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (and
``MASTER_ADDR`` / ``MASTER_PORT``), starts the process group (``nccl`` on CUDA, each process
on ``cuda:LOCAL_RANK``; ``gloo`` on the CPU) and returns a :class:`DistributedContext`:
``rank``, ``world_size``, ``is_main``, ``device``, ``barrier()``, ``shutdown()``,
``all_reduce_mean(values)``, ``all_gather_object(x)``, and the split of the work:
``shard_items(items)`` for whole jobs (videos), and for a global batch
``local_batch_size(global_batch)``, ``batch_slice(global_batch)`` and ``shard(tensors)``.
:func:`process_group` joins the job for the length of a ``with`` block unless a context is
given. Training adds DDP on top (:mod:`fastv2v.train.distributed`).

A global batch is split in contiguous chunks: rank ``r`` of ``W`` takes samples
``r*B/W .. (r+1)*B/W - 1``, so the global batch, not the per-process one, defines a run.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, TypeVar

import torch

from fastv2v.errors import UserError

T = TypeVar("T")
C = TypeVar("C", bound="DistributedContext")


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


def local_batch_size(global_batch: int, world_size: int) -> int:
    """One process's share of a global batch; a UserError unless ``world_size`` divides it."""
    if global_batch % world_size:
        raise UserError(
            f"the batch of {global_batch} does not split evenly over {world_size} processes; "
            f"use a batch that is a multiple of {world_size} (the batch is the global one, over all processes)."
        )
    return global_batch // world_size


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
        """Rank 0: the one process that writes files (checkpoints, logs, reports)."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

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

    # -- the split of the work -----------------------------------------------------------------
    def shard_items(self, items: Iterable[T]) -> list[T]:
        """Items ``rank, rank + world, ...`` of a list: whole jobs (videos) split across processes."""
        return list(items)[self.rank :: self.world_size]

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


@contextlib.contextmanager
def process_group(
    device: str | torch.device, ctx: C | None = None, *, join: Callable[[str | torch.device], C] = init_distributed
) -> Iterator[C]:
    """``ctx`` as given (the caller's job), or the one ``join(device)`` joins (torchrun's, a single
    process without it), left again when the block ends."""
    owns = ctx is None
    ctx = join(device) if owns else ctx
    try:
        yield ctx
    finally:
        if owns:
            ctx.shutdown()
