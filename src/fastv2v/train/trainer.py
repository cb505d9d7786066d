"""The one training driver: a :class:`~fastv2v.train.recipe.Recipe` run from its first (or
resumed) step to its model file, the same way for every kind of model.

Exact resume: the checkpoint holds the trained models, their Adam states, the step, every
global RNG state and the recipe's own generators; data order is a function of (seed, step)
(:func:`fastv2v.train.state.resumable_batches`) and the learning rate one of the step
(:func:`fastv2v.train.loop.learning_rate`). Stopping at step N and resuming gives the same
weights, bit for bit, as never stopping (on the CPU; cuDNN kernels are not deterministic).
Under ``torchrun`` the run is data-parallel (:mod:`fastv2v.train.distributed`); only rank 0
writes files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch

from fastv2v.distributed import process_group
from fastv2v.train.distributed import TrainingContext, init_distributed
from fastv2v.train.loop import LOG, open_run, run_steps, seed_everything, truncate_log
from fastv2v.train.recipe import Optimizers, Recipe, adam_optimizers
from fastv2v.train.samples import collate_sample
from fastv2v.train.state import load_training_state, save_training_state

CHECKPOINT = "checkpoint.pt"


def run_training(
    config: Any,
    dataset: Iterable[Mapping[str, torch.Tensor]],
    make_recipe: Callable[[TrainingContext], Recipe],
    *,
    sample_batch: Mapping[str, torch.Tensor] | list[Mapping[str, torch.Tensor]] | None = None,
    progress: bool = True,
    max_steps: int | None = None,
    ctx: TrainingContext | None = None,
) -> Path:
    """Train (or, with ``config.resume``, continue) one run; returns its model file on every process.

    ``make_recipe(ctx)`` is called once the config and the run folder have passed their checks
    (so a distiller loads its teacher only for a run that can start) and before the global RNGs
    are seeded from ``config.seed``. Writes into ``config.out_dir``: ``checkpoint.pt`` every
    ``checkpoint_every`` steps and when stopping, ``samples/step_NNNNNN.png`` of
    ``sample_batch`` every ``sample_every`` steps and at the last step, ``log.jsonl`` and, when
    the call returns, ``recipe.export_name``. ``max_steps`` caps the steps of this call (a
    time-boxed chunk; resume later). ``ctx`` (default: torchrun's job, or a single process)
    splits each global batch over the processes.
    """
    config.validate()
    with process_group(config.device, ctx, join=init_distributed) as ctx:
        out, checkpoint_path = open_run(config, ctx, CHECKPOINT)
        recipe = make_recipe(ctx)
        seed_everything(config.seed)
        models = recipe.build_models(ctx.device)
        optimizers = adam_optimizers(config, models, recipe.trained)
        trained = {name: models[name] for name in recipe.trained}  # plain modules: what checkpoints hold
        step = resume(recipe, checkpoint_path, trained, optimizers, config) if config.resume else 0
        if ctx.is_main:
            truncate_log(out / LOG, step)
        end = config.steps if max_steps is None else min(config.steps, step + max_steps)
        step_models = {**models, **{name: ctx.wrap(m) for name, m in trained.items()}}  # DDP for the step
        sample = collate_sample(sample_batch, recipe.sample_keys)

        def checkpoint(at: int) -> None:
            extra = {"config": config.to_dict(), **recipe.checkpoint_extra(), "world_size": ctx.world_size}
            save_training_state(checkpoint_path, at, trained, optimizers, extra, generators=recipe.generators())

        def write_sample(at: int) -> None:
            recipe.write_sample(out / "samples" / f"step_{at:06d}.png", models, sample)

        if step < end:
            step = run_steps(
                ctx, config, dataset, step=step, end=end, out=out, optimizers=optimizers,
                train_step=lambda batch: recipe.train_step(step_models, optimizers, batch), checkpoint=checkpoint,
                check_batch=lambda batch: recipe.check_batch(batch, models),
                sample=write_sample if sample is not None else None, describe=recipe.describe, desc=recipe.desc,
                progress=progress,
            )  # fmt: skip
        elif ctx.is_main and not checkpoint_path.is_file():
            checkpoint(step)

        path = out / recipe.export_name
        if ctx.is_main:
            recipe.export(path, models, {"config": config.to_dict(), "step": step, "complete": step >= config.steps})
        ctx.barrier()  # the other processes return once the files are in place
        return path


def resume(recipe: Recipe, checkpoint: Path, trained: dict, optimizers: Optimizers, config: Any = None) -> int:
    """Load ``checkpoint`` into the trained models, their optimizers and the RNGs; returns its step.
    Every process loads it (to the CPU: RNG states must stay there; load_state_dict copies).
    With ``config``, first refuse settings other than the checkpoint's (see ``check_resume``)."""
    check = None if config is None else (lambda extra: config.check_resume(extra.get("config"), checkpoint.parent))
    state = load_training_state(checkpoint, trained, optimizers, generators=recipe.generators(), check=check)
    recipe.check_resumed(checkpoint, state.extra)
    return state.step
