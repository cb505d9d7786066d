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
    force: bool

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

    #: Settings a resumed run may change without breaking exact continuation: where files go and
    #: how often, the device and loader workers, and the teacher's path (its weights are
    #: fingerprinted separately) or the student's warm start (the checkpoint overwrites it).
    RESUME_FREE = ("out_dir", "resume", "force", "device", "num_workers", "checkpoint_every", "sample_every",
                   "teacher", "init")  # fmt: skip

    def check_resume(self, stored: Any, source: Any) -> None:
        """Refuse to resume a run whose checkpoint was written with other settings (``stored``:
        its :meth:`to_dict`), unless ``force``: "--resume continues exactly" must keep holding.
        ``steps`` may grow or shrink while the lr is constant (``decay_steps`` 0 before and now):
        the steps already run are the same; with a decay the schedule itself would move."""
        if self.force or not isinstance(stored, dict):
            return
        new = self.to_dict()
        changed = [k for k in new if k in stored and k not in self.RESUME_FREE and stored[k] != new[k]]
        if "steps" in changed and stored.get("decay_steps") == 0 and new.get("decay_steps") == 0:
            changed.remove("steps")
        if not changed:
            return
        pairs = []
        for key in changed:  # a dict (the teacher's ``generator``) by its changed entries
            old, now = stored[key], new[key]
            if isinstance(old, dict) and isinstance(now, dict):
                keys = [k for k in sorted({*old, *now}) if old.get(k) != now.get(k)]
                pairs += [(_flag(k, old.get(k)), _flag(k, now.get(k))) for k in keys]
            else:
                pairs.append((_flag(key, old), _flag(key, now)))
        before, after = _listing([a for a, _ in pairs]), _listing([b for _, b in pairs])
        raise UserError(
            f"--resume: the run in {source} was started with {before}; you gave {after}, which would not continue it "
            "exactly; give the same settings, or --force to continue with the new ones."
        )


def _listing(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _flag(name: str, value: Any) -> str:
    """A stored setting as the command-line flag that gives it."""
    flag = "--" + name.lower().replace("_", "-")
    if value is None:
        return f"{flag} default"
    if isinstance(value, bool):
        return flag if value else f"no {flag}"
    if name == "size" and isinstance(value, list) and len(value) == 2:
        return f"{flag} {value[0]}x{value[1]}"
    if isinstance(value, list):
        return f"{flag} {','.join(str(v) for v in value)}"
    return f"{flag} {value}"


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
