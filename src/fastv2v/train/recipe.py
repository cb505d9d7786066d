"""What one kind of model tells the trainer: the :class:`Recipe` interface, and the helpers
recipes share.

:func:`fastv2v.train.trainer.run_training` does everything the kinds share (run folder,
seeding, Adam optimizers, resume, data, DDP, log, checkpoints, sample schedule, export hand-off);
a recipe says what is particular to its kind: the models it builds, one training step, the
first-batch check, the sample picture and the model file it ends with.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from fastv2v.errors import UserError

Models = Mapping[str, nn.Module]
Optimizers = Mapping[str, torch.optim.Optimizer]
Batch = Mapping[str, torch.Tensor]


class Recipe(ABC):
    """One kind of training run. Class attributes: ``desc`` (progress bar label), ``export_name``
    (the model file the run ends with), ``trained`` (the models that are optimised, checkpointed
    and wrapped for DDP) and ``sample_keys`` (the tensors of a sample batch)."""

    desc: str
    export_name: str
    trained: tuple[str, ...]
    sample_keys: tuple[str, ...]

    def __init__(self, config: Any):
        self.config = config

    @abstractmethod
    def build_models(self, device: torch.device) -> dict[str, nn.Module]:
        """Every model of a step (trained or not), in training mode, on ``device``; the global RNG
        is seeded just before, so the init is reproducible."""

    @abstractmethod
    def train_step(self, models: Models, optimizers: Optimizers, batch: Batch) -> dict[str, float]:
        """One update on this process's chunk of a global batch; the losses as floats. ``models``
        has the trained ones wrapped for DDP."""

    @abstractmethod
    def check_batch(self, batch: Batch, models: Models) -> None:
        """A UserError, as a sentence, when the first batch does not fit the models."""

    @abstractmethod
    def write_sample(self, path: Path, models: Models, sample: Batch) -> None:
        """The PNG of the models on the sample batch (without drawing random numbers)."""

    @abstractmethod
    def export(self, path: Path, models: Models, training: dict[str, Any]) -> None:
        """The model file (rank 0); ``training`` holds the config, the step and whether it is complete."""

    def generators(self) -> dict[str, torch.Generator]:
        """Random streams of the recipe's own that checkpoints keep (none by default)."""
        return {}

    def checkpoint_extra(self) -> dict[str, Any]:
        """Plain values every checkpoint keeps besides the config and the world size."""
        return {}

    def check_resumed(self, checkpoint: Path, extra: Mapping[str, Any]) -> None:
        """A UserError when the checkpoint's ``extra`` says it cannot be continued by this run."""

    def describe(self, losses: Mapping[str, float]) -> str:
        """The losses as the progress bar shows them."""
        return " ".join(f"{k}={v:.3f}" for k, v in losses.items())

    def check_frame_size(self, h: int, w: int) -> None:
        """Refuse data of another size than ``config.size`` (when set)."""
        size = self.config.size
        if size is not None and (h, w) != tuple(size):
            raise UserError(f"the data is {h}x{w} but the run is configured for {size[0]}x{size[1]}; make them agree.")


def adam_optimizers(config: Any, models: Models, names: Sequence[str]) -> dict[str, torch.optim.Optimizer]:
    """Adam for each of ``names`` with ``config.lr`` and ``config.betas`` (every kind's choice)."""
    return {name: torch.optim.Adam(models[name].parameters(), lr=config.lr, betas=tuple(config.betas)) for name in names}


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode for the block, then back in the mode it was in: samples, exports and
    calibration must neither draw dropout masks nor leave a training module in eval mode."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
