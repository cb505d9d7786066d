"""What every distiller's recipe shares: a frozen teacher, its fingerprint, frame-pair data."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from fastv2v.bundle import teacher_fingerprint
from fastv2v.errors import UserError
from fastv2v.train.loop import load_frozen_teacher
from fastv2v.train.recipe import Batch, Models, Recipe


class DistillationRecipe(Recipe):
    """A recipe that distils the teacher of ``config.teacher``, loaded frozen (eval mode, no
    gradients) on ``device``. Samples are frame pairs of teacher inputs (``ref_input``,
    ``input``). The teacher's fingerprint goes into every checkpoint, so that continuing a run
    with another teacher is refused instead of silently mixing two."""

    sample_keys = ("ref_input", "input")

    def __init__(self, config: Any, device: str | torch.device):
        super().__init__(config)
        self.teacher = load_frozen_teacher(config, device)
        self.fingerprint = teacher_fingerprint(self.teacher)

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"teacher_fingerprint": self.fingerprint}

    def check_resumed(self, checkpoint: Path, extra: Mapping[str, Any]) -> None:
        saved = extra.get("teacher_fingerprint")
        if saved is not None and saved != self.fingerprint:
            raise UserError(
                f"{checkpoint} was trained with a different teacher (fingerprint {saved}, {self.config.teacher} is "
                f"{self.fingerprint}); resume with the same --teacher."
            )

    def check_batch(self, batch: Batch, models: Models) -> None:
        """Pairs of the teacher's inputs at a size it takes; a kind adds its own checks."""
        if not isinstance(batch, Mapping) or "input" not in batch or "ref_input" not in batch:
            raise UserError("distillation samples must be dicts with 'ref_input' and 'input' frame pairs (pair_gap set).")
        x = batch["input"]
        if x.dim() != 4 or x.shape[1] != self.teacher.input_nc:
            raise UserError(
                f"the data gives {tuple(x.shape[1:])} inputs but the teacher takes {self.teacher.input_nc} channels; "
                "distil with data of the teacher's task."
            )
        h, w = x.shape[2:]
        self.check_frame_size(h, w)
        self.teacher.check_size(h, w, "the training data")
