"""Training checkpoints that are atomic and resume a run exactly.

Exact resumption needs more than weights: the optimizer moments, the step counter, and every
random stream the next steps will draw from (torch CPU and CUDA, numpy, Python ``random``,
and the dedicated ``torch.Generator`` objects a training loop uses for data order or
augmentation). A checkpoint is written to a temporary sibling and renamed into place, so a
run killed while saving still leaves the previous complete checkpoint.

Everything is stored as tensors and plain Python values, so files load with
``torch.load(weights_only=True)`` (no pickled code runs when resuming).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from fastv2v.atomic import atomic_path, remove_stale_temporaries
from fastv2v.distributed import local_batch_size
from fastv2v.errors import UserError

FORMAT = "fastv2v-training-state-1"


def capture_rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Every random stream's state: torch CPU, CUDA (all devices, if initialised), numpy,
    Python ``random``, and the named ``generators``."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "python": random.getstate(),
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    """Inverse of :func:`capture_rng_state`; a named generator missing from ``state`` is an error
    because resuming without it would silently change the run."""
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state(
        (npst["bit_generator"], npst["key"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["gauss"])
    )
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda = state["cuda"][: torch.cuda.device_count()]
        for i, s in enumerate(cuda):
            torch.cuda.set_rng_state(s, i)
    saved = state.get("generators", {})
    for name, g in (generators or {}).items():
        if name not in saved:
            raise KeyError(f"the checkpoint has no state for random generator {name!r}")
        g.set_state(saved[name])


@dataclass
class TrainingState:
    """What :func:`load_training_state` gives back besides restoring modules in place."""

    step: int
    extra: dict[str, Any] = field(default_factory=dict)


def save_training_state(
    path: str | os.PathLike,
    step: int,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    extra: dict[str, Any] | None = None,
    *,
    generators: dict[str, torch.Generator] | None = None,
) -> None:
    """Write modules, optimizers, step, RNG states and ``extra`` (plain values) atomically.

    Call it between steps: the state then is exactly what the next step starts from.
    """
    payload = {
        "format": FORMAT,
        "step": int(step),
        "modules": {name: m.state_dict() for name, m in modules.items()},
        "optimizers": {name: o.state_dict() for name, o in optimizers.items()},
        "rng": capture_rng_state(generators),
        "extra": extra or {},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_training_state(
    path: str | os.PathLike,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    *,
    generators: dict[str, torch.Generator] | None = None,
    restore_rng: bool = True,
    map_location: str | torch.device = "cpu",
    check: Callable[[dict[str, Any]], None] | None = None,
) -> TrainingState:
    """Restore what :func:`save_training_state` wrote into freshly built ``modules`` and
    ``optimizers`` (same names, same architecture), and the RNG states unless told not to.
    ``check(extra)`` runs first, so that a run resumed with other settings is refused with
    its own message rather than a shape mismatch."""
    path = Path(path)
    remove_stale_temporaries(path)  # checkpoint writes a killed run left (their owner is gone)
    if not path.is_file():
        raise UserError(f"{path} does not exist; there is no training checkpoint to resume from.")
    try:
        payload = torch.load(str(path), map_location=map_location, weights_only=True)
    except Exception as exc:
        raise UserError(
            f"{path} could not be read as a training checkpoint ({type(exc).__name__}); it may be truncated."
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(
            f"{path} is not a fastv2v training checkpoint; point resume at the checkpoint.pt of a training run."
        )
    if check is not None:
        check(dict(payload.get("extra") or {}))
    for kind, key, targets in (("module", "modules", modules), ("optimizer", "optimizers", optimizers)):
        absent = [name for name in targets if name not in payload[key]]
        if absent:
            raise UserError(f"{path} has no {kind} {absent[0]!r}; it was written by a different kind of training run.")
    for name, module in modules.items():
        try:
            module.load_state_dict(payload["modules"][name])
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise UserError(
                f"{path} holds a {name} that does not fit the configured one ({first}); "
                "resume with the same architecture settings it was trained with."
            ) from None
    for name, optimizer in optimizers.items():
        try:
            optimizer.load_state_dict(payload["optimizers"][name])
        except ValueError as exc:
            raise UserError(
                f"{path} holds optimizer state for {name} that does not fit ({exc}); resume with the same settings."
            ) from None
    if restore_rng:
        try:
            restore_rng_state(payload["rng"], generators)
        except KeyError as exc:
            raise UserError(
                f"{path} lacks a random state the run needs ({exc.args[0]}); it was written by different code."
            ) from None
    return TrainingState(step=int(payload["step"]), extra=dict(payload.get("extra") or {}))


class _StepSampler(torch.utils.data.Sampler):
    """Endless index stream whose position is a pure function of (seed, sample count).

    Epoch ``e`` is ``randperm(n)`` drawn from a generator seeded with ``(seed, e)``, so the
    stream can be restarted at any sample without replaying the ones before it.
    """

    def __init__(self, n: int, seed: int, start: int, shuffle: bool):
        self.n, self.seed, self.start, self.shuffle = n, seed, start, shuffle

    def __iter__(self):
        epoch, pos = divmod(self.start, self.n)
        while True:
            if self.shuffle:
                order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
            else:
                order = torch.arange(self.n)
            for i in order[pos:].tolist():
                yield i
            epoch, pos = epoch + 1, 0


def resumable_batches(
    dataset,
    batch_size: int,
    *,
    seed: int = 0,
    start_step: int = 0,
    shuffle: bool = True,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
):
    """An endless iterator of collated batches; batch ``k`` is the same whether the stream was
    started at 0 and advanced ``k`` times or started with ``start_step=k`` (what resume needs).

    ``batch_size`` is the global batch. With ``world_size`` > 1 (data-parallel training, see
    :mod:`fastv2v.train.distributed`) process ``rank`` gets its contiguous chunk of each global
    batch, ``batch_size // world_size`` samples, and reads only those from an indexable dataset
    (its DataLoader workers decode its own samples); the global stream does not depend on the
    number of processes, so a run resumes on any number of them.

    * Indexable datasets (``__len__`` + ``__getitem__``, e.g. a list of dicts): a shuffled
      epoch-by-epoch index stream (see :class:`_StepSampler`); resuming costs nothing.
    * ``IterableDataset`` or any re-iterable: read in order, epoch after epoch (``set_epoch(e)``
      is called when the dataset has it); resuming skips the first ``start_step`` batches,
      which is exact when each pass yields the same samples.

    Batches may span an epoch boundary, so every batch has ``batch_size`` samples. The
    DataLoader gets its own ``torch.Generator`` so creating it does not consume the global
    RNG (which the training step's dropout and a dataset's augmentation draw from). With
    ``num_workers > 0`` a dataset's own randomness is exact on resume only if it depends on the
    sample index rather than on a worker's running RNG.
    """
    from torch.utils.data import DataLoader, IterableDataset, default_collate

    local = local_batch_size(batch_size, world_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of {world_size} processes")
    first, last = rank * local, (rank + 1) * local
    loader_rng = torch.Generator().manual_seed(seed * 1_000_003 + start_step)
    if not isinstance(dataset, IterableDataset) and hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__"):
        n = len(dataset)
        if n == 0:
            raise UserError("the training dataset is empty; check the data folder.")
        sampler = _StepSampler(n, seed, start_step * batch_size, shuffle)
        if world_size == 1:
            loader = DataLoader(
                dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, generator=loader_rng,
                persistent_workers=num_workers > 0,
            )  # fmt: skip
        else:
            loader = DataLoader(
                dataset, batch_sampler=_ShardedBatches(sampler, batch_size, first, last), num_workers=num_workers,
                generator=loader_rng, persistent_workers=num_workers > 0,
            )  # fmt: skip
        yield from loader
        return
    if iter(dataset) is dataset:
        raise TypeError(
            "the dataset is a one-shot iterator; pass a Dataset or a re-iterable so training can loop and resume"
        )

    def samples():
        epoch = 0
        while True:
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
            if isinstance(dataset, IterableDataset):
                source = DataLoader(dataset, batch_size=None, num_workers=num_workers, generator=loader_rng)
            else:
                source = dataset
            empty = True
            for sample in source:
                empty = False
                yield sample
            if empty:
                raise UserError("the training dataset yielded no samples; check the data folder.")
            epoch += 1

    stream = samples()
    for _ in range(start_step * batch_size):
        next(stream)
    while True:  # every process reads the whole stream and keeps its chunk of each batch
        yield default_collate([next(stream) for _ in range(batch_size)][first:last])


class _ShardedBatches(torch.utils.data.Sampler):
    """Index lists ``[first:last]`` of each consecutive ``batch_size`` indices of ``sampler``:
    one process's chunk of every global batch."""

    def __init__(self, sampler, batch_size: int, first: int, last: int):
        self.sampler, self.batch_size, self.first, self.last = sampler, batch_size, first, last

    def __iter__(self):
        indices = iter(self.sampler)
        while True:
            batch = [next(indices) for _ in range(self.batch_size)]
            yield batch[self.first : self.last]
