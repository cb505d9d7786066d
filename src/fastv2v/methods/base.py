"""What a method is: a way to produce each frame's output more cheaply than the teacher.

An online method turns one model-input frame into one output frame given the video's state,
``step(x, state) -> (y, state, key)``, where ``key`` says whether the full teacher ran. The
state is a plain object created by ``init_state()`` and passed in and out explicitly (never
kept on a module), so one model can translate two videos at once. A schedule decides which
frames are key.

Methods register under the names ``bench.json`` uses (``teacher``, ``repeat``, ``reuse``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch

from fastv2v.errors import UserError
from fastv2v.generators.base import SplitGenerator


class FixedInterval:
    """Frame 0 and every ``interval``-th frame after the last key frame are key frames."""

    def __init__(self, interval: int):
        if int(interval) != interval or interval < 1:
            raise UserError(f"the key-frame interval must be a whole number >= 1, not {interval}.")
        self.interval = int(interval)

    def is_key(self, since_key: int | None) -> bool:
        """``since_key``: frames since the last key frame (None before the first)."""
        return since_key is None or since_key >= self.interval


@dataclass
class StreamState:
    """Per-video state of the built-in online methods: the reference from the last key frame,
    and the key-frame schedule's own state (adaptive schedules keep a budget there)."""

    since_key: int | None = None
    reference: dict[str, torch.Tensor] = field(default_factory=dict)
    schedule: dict = field(default_factory=dict)


class OnlineMethod:
    """Base of online methods: key frames run the teacher and refresh the reference.

    Class attributes the benchmark reads: ``uses_interval`` (False: run once, not per key-frame
    interval) and ``model_kind`` (None: built from a teacher generator; otherwise the kind of
    self-describing model file the method is built from, via ``from_model(path, interval=...,
    device=...)``).
    """

    name = "method"
    uses_interval = True
    model_kind: str | None = None

    def __init__(self, teacher: SplitGenerator, interval: int = 1):
        self.teacher = teacher
        self.schedule = FixedInterval(interval)

    @property
    def interval(self) -> int:
        return self.schedule.interval

    def init_state(self) -> StreamState:
        return StreamState()

    def step(self, x: torch.Tensor, state: StreamState) -> tuple[torch.Tensor, StreamState, bool]:
        if self.schedule.is_key(state.since_key):
            y, reference = self.key_frame(x)
            return y, StreamState(since_key=1, reference=reference), True
        y = self.non_key_frame(x, state.reference)
        return y, StreamState(since_key=state.since_key + 1, reference=state.reference), False

    def key_frame(self, x: torch.Tensor, a: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The teacher's output (the same ops, so bit-identical) and what later frames reuse;
        ``a``: the head features of ``x`` when already computed."""
        t = self.teacher
        a = t.head(x) if a is None else a
        f = t.body(a)
        y = t.tail(f)
        return y, {"a": a, "f": f, "y": y}

    def non_key_frame(self, x: torch.Tensor, reference: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def non_key_path(self) -> Callable[[torch.Tensor], Any] | None:
        """A callable running one non-key frame from scratch references, for MAC profiling."""
        return None

    def __call__(self, x: torch.Tensor, state: StreamState) -> tuple[torch.Tensor, StreamState]:
        """Batch form for the streaming engine: frames of ``x`` are consecutive, run in order."""
        outputs = []
        for frame in x.split(1):
            y, state, _ = self.step(frame, state)
            outputs.append(y)
        return torch.cat(outputs), state


class Teacher(OnlineMethod):
    """Every frame is a key frame: the baseline every other method is measured against."""

    name = "teacher"
    uses_interval = False

    def __init__(self, teacher: SplitGenerator, interval: int = 1):
        super().__init__(teacher, 1)

    def step(self, x, state):
        return self.teacher(x), state, True

    def __call__(self, x, state):
        """Stateless, so a whole batch runs in one call (the engine's ``--batch`` throughput)."""
        return self.teacher(x), state


class Repeat(OnlineMethod):
    """Naive baseline: non-key frames repeat the last key frame's output."""

    name = "repeat"

    def non_key_frame(self, x, reference):
        return reference["y"]


class Reuse(OnlineMethod):
    """Naive baseline: the current head features are ignored; the key frame's body features go
    through the tail again (what the shortcut block would be with no alignment at all)."""

    name = "reuse"

    def non_key_frame(self, x, reference):
        return self.teacher.tail(reference["f"])


METHODS: dict[str, type[OnlineMethod]] = {m.name: m for m in (Teacher, Repeat, Reuse)}


def register(method: type[OnlineMethod]) -> type[OnlineMethod]:
    """Add a method class under its ``name`` (used as a decorator by method modules)."""
    METHODS[method.name] = method
    return method


def run_online(method: OnlineMethod, frames: Iterable[torch.Tensor]) -> Iterator[tuple[torch.Tensor, bool]]:
    """Outputs and key flags of a method over a stream of model-input frames (1 x C x H x W)."""
    state = method.init_state()
    for x in frames:
        y, state, key = method.step(x, state)
        yield y, key
