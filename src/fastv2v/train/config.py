"""What every training config does with its fields: the JSON copy and the shared checks.

Each config is a dataclass that declares all of its own fields (so their order and defaults
stay its own); these bases add the methods, for the run settings every kind has (``batch``,
``steps``, ``checkpoint_every``, ``sample_every``, ``decay_steps``, ``precision``) and those
every distiller has (``teacher``, ``interval``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import PurePath
from typing import Any

from fastv2v.errors import UserError
from fastv2v.train.distributed import check_precision


class TrainingConfig:
    """Base of the training config dataclasses."""

    batch: int
    steps: int
    checkpoint_every: int
    sample_every: int
    decay_steps: int
    precision: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy (paths as strings, tuples as lists), as checkpoints and model files store it."""
        values = dataclasses.asdict(self)  # type: ignore[call-overload]
        return json.loads(json.dumps({k: str(v) if isinstance(v, PurePath) else v for k, v in values.items()}))

    def validate(self) -> None:
        """A UserError naming the first setting no run can use (before any file is touched)."""
        for name in ("batch", "steps"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, not {getattr(self, name)}.")
        for name in ("checkpoint_every", "sample_every", "decay_steps"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be 0 (off) or positive, not {getattr(self, name)}.")
        check_precision(self.precision)


class DistillationConfig(TrainingConfig):
    """Base of the configs of runs that distil a frozen teacher into a ``fast``-style model file."""

    teacher: str
    interval: int

    def validate(self) -> None:
        super().validate()
        if not self.teacher:
            raise UserError("no teacher given; pass the teacher's model file with --teacher.")
        if int(self.interval) != self.interval or self.interval < 1:
            raise UserError(f"the key-frame interval must be a whole number >= 1, not {self.interval}.")
