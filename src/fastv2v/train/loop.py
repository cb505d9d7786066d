"""The steps of a run and the rules around them: the run folder, seeding, the lr schedule.

:func:`run_steps` feeds one process's chunk of each global batch (see
:mod:`fastv2v.train.distributed`) to a step function, sets the learning rate, averages the
losses over processes for the log, and on rank 0 writes ``log.jsonl``, checkpoints and samples
on schedule; :func:`fastv2v.train.trainer.run_training` drives it for every kind of model.
"""

from __future__ import annotations

import contextlib
import json
import random
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch

from fastv2v.atomic import atomic_path
from fastv2v.distributed import DistributedContext
from fastv2v.errors import UserError
from fastv2v.train.state import resumable_batches

LOG = "log.jsonl"


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and Python ``random`` (every trainer must be reproducible)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def learning_rate(config: Any, step: int) -> float:
    """``config.lr``, falling linearly to 0 over the last ``config.decay_steps`` of
    ``config.steps`` (pix2pix's schedule); a pure function of the step, so there is no
    scheduler state to checkpoint."""
    if config.decay_steps <= 0:
        return config.lr
    return config.lr * min(1.0, max(0.0, (config.steps - step) / config.decay_steps))


def open_run(config: Any, ctx: DistributedContext, checkpoint_name: str) -> tuple[Path, Path]:
    """``(run folder, checkpoint path)`` after the checks every run makes first: the device
    exists, the global batch splits over the processes, the folder rules of
    :func:`check_run_folder`."""
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {config.device!r} was asked for but CUDA is not available; use device 'cpu'.")
    ctx.local_batch_size(config.batch)
    out = Path(config.out_dir)
    checkpoint = out / checkpoint_name
    check_run_folder(out, checkpoint, config.resume, ctx)
    return out, checkpoint


def load_frozen_teacher(config: Any, device: str | torch.device | None = None):
    """A distiller's teacher from ``config.teacher``: eval mode, no parameter gradients."""
    from fastv2v.generators import load_generator

    teacher = load_generator(config.teacher, device=device or config.device)
    return teacher.eval().requires_grad_(False)


def check_run_folder(out: Path, checkpoint: Path, resume: bool, ctx: DistributedContext) -> None:
    """Refuse to overwrite a run or to resume a missing one; every process must see the
    checkpoint it will load. Creates the folder (rank 0)."""
    seen = ctx.all_gather_object(checkpoint.is_file())  # rank 0's view decides; all ranks must agree
    if resume and not seen[0]:
        raise UserError(f"{checkpoint} does not exist, so there is nothing to resume; start without --resume.")
    if not resume and seen[0]:
        raise UserError(f"{out} already holds a training run ({checkpoint}); resume it or choose another --out.")
    if resume and not all(seen):
        raise UserError(
            f"process {seen.index(False)} cannot see {checkpoint}; every process loads the checkpoint, so put the "
            "run folder on storage that every node shares."
        )
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)


def truncate_log(path: Path, step: int) -> None:
    """Drop log lines past the resumed step: those steps are about to be run again."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
    if len(kept) != len(lines):
        with atomic_path(path) as tmp:
            tmp.write_text("".join(line + "\n" for line in kept))


def run_steps(
    ctx: DistributedContext,
    config: Any,
    dataset: Iterable[Mapping[str, torch.Tensor]],
    *,
    step: int,
    end: int,
    out: Path,
    optimizers: Mapping[str, torch.optim.Optimizer],
    train_step: Callable[[Mapping[str, torch.Tensor]], dict[str, float]],
    checkpoint: Callable[[int], None],
    check_batch: Callable[[Mapping[str, Any]], None],
    sample: Callable[[int], None] | None,
    describe: Callable[[Mapping[str, float]], str],
    desc: str,
    progress: bool,
) -> int:
    """Run steps ``step .. end - 1``; returns the step reached.

    ``config`` provides ``batch`` (global), ``seed``, ``shuffle``, ``num_workers``, ``steps``,
    ``lr``, ``decay_steps``, ``checkpoint_every`` and ``sample_every``. ``checkpoint(step)``
    runs on rank 0 every ``checkpoint_every`` steps and at ``end``; ``sample(step)`` on rank 0
    every ``sample_every`` steps and at the run's last step; ``check_batch`` on the first batch;
    ``describe(losses)`` is the progress bar's text.
    """
    from tqdm.auto import tqdm

    if step >= end:
        return step
    batches = resumable_batches(
        dataset, config.batch, seed=config.seed, start_step=step, shuffle=config.shuffle,
        num_workers=config.num_workers, rank=ctx.rank, world_size=ctx.world_size,
    )  # fmt: skip
    first = step
    log = open(out / LOG, "a") if ctx.is_main else contextlib.nullcontext()
    with log, tqdm(total=config.steps, initial=step, disable=not progress or not ctx.is_main, desc=desc, unit="step") as bar:
        while step < end:
            batch = next(batches)
            if step == first:
                check_batch(batch)
            for optimizer in optimizers.values():
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(config, step)
            losses = ctx.all_reduce_mean(train_step(batch))
            step += 1
            if not ctx.is_main:
                continue
            log.write(json.dumps({"step": step, **losses}) + "\n")
            log.flush()
            bar.update(1)
            bar.set_postfix_str(describe(losses), refresh=False)
            if step == end or (config.checkpoint_every and step % config.checkpoint_every == 0):
                checkpoint(step)
            due = step == config.steps or (config.sample_every and step % config.sample_every == 0)
            if sample is not None and due:
                sample(step)
    return step

