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
    #: What ``--cache-teacher`` keeps of the teacher per frame (see :meth:`teacher_outputs`).
    cache_keys: tuple[str, ...] = ("f", "y")

    def __init__(self, config: Any, device: str | torch.device, dataset: Any = None, ctx: Any = None):
        super().__init__(config)
        self.teacher = load_frozen_teacher(config, device)
        self.fingerprint = teacher_fingerprint(self.teacher)
        self.cache = None
        if getattr(config, "cache_teacher", False):
            self.cache = self._open_cache(dataset, device, ctx)

    @staticmethod
    def teacher_outputs(teacher, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The teacher's tensors a step needs of input ``x``: head features ``a``, body features
        ``f``, output ``y``."""
        a = teacher.head(x)
        f = teacher.body(a)
        return {"a": a, "f": f, "y": teacher.tail(f)}

    def _open_cache(self, dataset: Any, device, ctx: Any):
        """Build (rank 0; the others wait) or reuse the run's cache of the teacher's outputs."""
        from fastv2v.train.teacher_cache import build_teacher_cache

        def build():
            return build_teacher_cache(
                self.teacher, dataset, Path(self.config.out_dir), self.teacher_outputs, self.cache_keys,
                fingerprint=self.fingerprint, precision=self.config.precision, device=device,
            )  # fmt: skip

        if ctx is None or ctx.is_main:
            cache = build()
            if ctx is not None:
                ctx.barrier()
            return cache
        ctx.barrier()
        return build()  # reuses the finished cache

    def cached_targets(self, batch: Batch, both: bool) -> dict[str, torch.Tensor]:
        """The cached teacher outputs of a batch: of ``ref_slot`` then ``slot`` when ``both``."""
        slots = torch.cat([batch["ref_slot"], batch["slot"]]) if both else batch["slot"]
        device = next(iter(self.teacher.parameters())).device
        return self.cache.targets(slots, device)

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
        if self.cache is not None and "slot" not in batch:
            raise UserError("--cache-teacher needs footage items with cache slots (FootageFrames with fixed_crop).")
