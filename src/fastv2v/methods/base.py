"""The method protocol: how a method stands in for the teacher, frame after frame.

Every method speaks one protocol (the loop that drives it is :func:`fastv2v.engine.loop.drive`):

* ``init_state() -> state``: a plain per-video value, passed in and out explicitly and never
  kept on a module, so one method translates any number of videos at once.
* ``push(x, state) -> (ready, state)``: ``x`` is the next model-input frame (``1 x C x H x W``;
  ``N`` consecutive frames when the class is ``batchable``); ``ready`` lists ``(y, key)`` for the
  frames whose outputs are now known, oldest first, where ``key`` says a full generator pass made
  ``y``. An *online* method answers every frame at once (``latency`` 0); a *buffered* one
  (interpolation between key frames) may hold up to ``latency`` frames until a later frame decides.
* ``flush(state) -> ready``: the outputs of every frame still held when the video ends.

Over a video every input gets exactly one output, in order. Key frames of teacher-based methods
equal the teacher bit for bit (the same ops).

A method is built from a loaded model by one classmethod, ``from_model(model, **settings)``
(``model``: a teacher generator, or a model file's bundle whose ``.teacher`` it uses), and
``settings()`` returns the keyword arguments that rebuild it: model files store them, so
nothing is lost between writing and reading (:mod:`fastv2v.pipeline` assembles the two).
Class attributes: ``name`` (the registry and ``bench.json`` name), ``model_kind`` (None, or the
kind of model file whose trained part the method needs), ``SETTINGS`` (the setting names
``from_model`` takes), ``uses_interval`` (False: no key-frame interval to sweep).

Optional, for reports: ``parameter_count()``, ``non_key_path()`` (one non-key frame from
scratch references, for MAC profiles), ``bench_notes()`` (caveats such as work outside torch),
``describe()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from fastv2v.errors import UserError
from fastv2v.generators import teacher_of  # noqa: F401  (methods import it from here)
from fastv2v.generators.base import SplitGenerator
from fastv2v.methods.schedules import FixedKeys

Ready = list[tuple[torch.Tensor, bool]]


def whole_interval(interval: Any, default: int) -> int:
    """A key-frame interval setting: ``default`` for None, else a whole number >= 1."""
    if interval is None:
        return default
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or int(interval) != interval or interval < 1:
        raise UserError(f"the key-frame interval must be a whole number >= 1, not {interval!r}.")
    return int(interval)


@dataclass
class StreamState:
    """Per-video state of the built-in online methods: the reference from the last key frame
    and the key-frame schedule's own state."""

    reference: dict[str, torch.Tensor] = field(default_factory=dict)
    schedule: Any = None


#: ``kernels`` setting of the methods with CPU fast paths: ``torch`` (the plain modules) or ``fast``
#: (:mod:`fastv2v.generators.fast_parts`, opt-in: equal to float rounding, faster on the CPU).
KERNELS = ("torch", "fast")


def kernel_choice(kernels: str | None) -> str:
    """The ``kernels`` setting, ``torch`` when not given."""
    kernels = "torch" if kernels is None else kernels
    if kernels not in KERNELS:
        raise UserError(f"--kernels takes {' or '.join(KERNELS)}, not {kernels!r}.")
    return kernels


class OnlineMethod:
    """Base of the methods: key frames run the teacher and refresh the reference.

    Online subclasses implement ``step(x, state) -> (y, state, key)`` for one frame (or just
    ``non_key_frame``); ``push`` answers each frame with its own output. Buffered subclasses
    override ``push``/``flush`` and set ``latency``.
    """

    name = "method"
    uses_interval = True
    model_kind: str | None = None
    batchable = False
    latency = 0
    SETTINGS: tuple[str, ...] = ("interval",)
    DEFAULT_INTERVAL = 3

    def __init__(self, teacher: SplitGenerator, interval: int = DEFAULT_INTERVAL):
        self.teacher = teacher
        self.schedule = FixedKeys(whole_interval(interval, 1))  # a schedule of fastv2v.methods.schedules

    @classmethod
    def from_model(cls, model: Any, *, interval: int | None = None) -> "OnlineMethod":
        """The method on a loaded model's teacher (``interval`` None: the class default)."""
        return cls(teacher_of(model), whole_interval(interval, cls.DEFAULT_INTERVAL))

    def settings(self) -> dict[str, Any]:
        return {"interval": self.interval}

    @property
    def interval(self) -> int:
        return self.schedule.interval

    def init_state(self) -> StreamState:
        return StreamState(schedule=self.schedule.init_state())

    def push(self, x: torch.Tensor, state: Any) -> tuple[Ready, Any]:
        ready = []
        for frame in x.split(1):
            y, state, key = self.step(frame, state)
            ready.append((y, bool(key)))
        return ready, state

    def flush(self, state: Any) -> Ready:
        return []

    def step(self, x: torch.Tensor, state: StreamState) -> tuple[torch.Tensor, StreamState, bool]:
        (key,), schedule = self.schedule.push(None, state.schedule)
        if key:
            y, reference = self.key_frame(x)
            return y, StreamState(reference, schedule), True
        return self.non_key_frame(x, state.reference), StreamState(state.reference, schedule), False

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


class Teacher(OnlineMethod):
    """Every frame is a key frame: the baseline every other method is measured against.

    Per-frame generators only; a vid2vid generator (sequential) runs as
    :class:`fastv2v.methods.vid2vid.Vid2VidTeacher` under the same name, one frame per call."""

    name = "teacher"
    uses_interval = False
    batchable = True  # stateless: a batch of frames runs in one call (the engine's --batch)
    SETTINGS = ()

    def __init__(self, teacher: SplitGenerator, interval: int = 1):
        super().__init__(teacher, 1)

    @classmethod
    def from_model(cls, model: Any) -> "Teacher":
        return cls(teacher_of(model))

    def settings(self) -> dict[str, Any]:
        return {}

    def push(self, x, state):
        return [(y, True) for y in self.teacher(x).split(1)], state

    def step(self, x, state):
        return self.teacher(x), state, True


class Repeat(OnlineMethod):
    """Naive baseline: non-key frames repeat the last key frame's output."""

    name = "repeat"

    def key_frame(self, x, a=None):
        """The teacher's whole-frame call (the same ops as head, body, tail in turn, so
        bit-identical), keeping only its output: all a repeat needs, and all a graph backend gives."""
        y = self.teacher(x)
        return y, {"y": y}

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
