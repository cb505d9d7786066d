"""The vid2vid teacher: a sequential generator (each output depends on its own previous outputs)
run as its official inference loop, one frame per call, with every frame of the video output.

The official loop (shared/reference/vid2vid.md, section 8) sees label frames ``k .. k+tG-1``
and the ``tG-1`` previous outputs, and never outputs frames ``0 .. tG-2``. Here every input
gets an output; how the sequence starts is the ``start`` setting (``--start``):

* ``zeros`` (default, the official ``--no_first_img``): the video is padded at its start by
  repeating its first frame, so the window always holds the last ``tG`` frames (frame 0's is
  ``[f0] * tG``, frame 1's ``[f0] * (tG-1) + [f1]``, ...); the previous outputs start as zeros
  and the first call uses the raw image only (no warp). The outputs equal
  ``run_sequence(g, [f0] * (tG-1) + frames)``.
* ``video:PATH`` (``--use_real_img``): the first ``tG-1`` frames of the real video or frame
  folder PATH, stretched to the model size, are the outputs of frames ``0 .. tG-2``
  (``key`` False: no generator made them) and the previous outputs of frame ``tG-1``.
* ``model:PATH`` (``--use_single_G``): a per-frame generator file makes those outputs, each
  from its own label frame (an instance channel the per-frame model lacks is dropped, as
  upstream does).

With a seeded start, frames from ``tG-1`` on equal ``run_sequence(g, frames, previous=seeds)``.
The per-video state (:class:`Vid2VidState`) is passed in and out, never kept on the module.

The key-frame methods (``interp``, ``minterpolate``, ``repeat``) on such a teacher are Fast-Vid2Vid's
"part-time" teacher: **the sequential teacher runs on the key-frame subsequence only**. At a key
frame its window holds the last ``tG-1`` *key* frames' inputs and its previous outputs are the
last ``tG-1`` *key* outputs (the frames in between never enter it: their outputs need the next
key output, so they cannot come before it). A zeros start repeats the first key frame (frame 0)
before the video; a seeded start makes frames ``0 .. tG-2`` key frames whose outputs are the seeds.
So the key outputs equal ``run_sequence(g, [k0] * (tG-1) + key_frames)`` (zeros), and with every
frame a key frame (interval 1) each method equals ``teacher`` exactly. The teacher's state
advances at key frames only and is part of the method's per-video state.

Fast-Vid2Vid's own methods run a student model file distilled from a vid2vid teacher (its
student a sequential, half-input, narrower vid2vid generator:
:mod:`fastv2v.generators.vid2vid_student`): ``spatial`` is that student's own loop on every
frame; ``fast`` runs it on the key-frame subsequence exactly as the part-time teacher above runs
the teacher, with interpolation between. At interval 1 ``fast`` equals ``spatial``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastv2v.errors import UserError
from fastv2v.generators.loading import teacher_of
from fastv2v.generators.vid2vid import Vid2VidGenerator, step
from fastv2v.methods.base import Repeat, whole_interval
from fastv2v.methods.interpolate import BufferedState, Interp, MInterpolate, _Frame
from fastv2v.methods.schedules import FixedKeys
from fastv2v.methods.student import FAST_INTERPOLATION
from fastv2v.methods.student_model import DEFAULT_INTERVAL as DEFAULT_STUDENT_INTERVAL
from fastv2v.methods.student_model import KIND as STUDENT
from fastv2v.metrics.profile import count_parameters

START_HELP = "zeros, video:PATH or model:PATH"


@dataclass
class Vid2VidState:
    """Per video: the last ``tG-1`` encoded input frames and the last ``tG-1`` outputs fed back
    (oldest first; None before the first frame, and ``previous`` None until a zeros start has run)."""

    window: torch.Tensor | None = None
    previous: torch.Tensor | None = None


class Vid2VidTeacher:
    """The teacher method for a :class:`Vid2VidGenerator`: the official loop, one frame per call
    (not ``batchable``: frame t needs the output of frame t-1). ``generator`` is the sequential
    generator it runs: the teacher here, the student for :class:`Vid2VidSpatial`."""

    name = "teacher"
    uses_interval = False
    model_kind = None
    batchable = False
    latency = 0
    SETTINGS = ("start",)

    def __init__(self, teacher: Vid2VidGenerator, start: str = "zeros", seed: Any = None):
        self.generator, self.start = teacher, start
        self.seed = seed  # video: the real frames (uint8); model: the per-frame generator; zeros: None

    @classmethod
    def from_model(cls, model: Any, *, start: str | None = None) -> "Vid2VidTeacher":
        """From a vid2vid generator, or the teacher of a student model file made from one."""
        teacher = teacher_of(model)
        return cls(teacher, *_start(start, teacher))

    def settings(self) -> dict[str, Any]:
        return {"start": self.start}

    def init_state(self) -> Vid2VidState:
        return Vid2VidState()

    @property
    def seeded(self) -> int:
        """How many first frames a seeded start gives the outputs of (``tG-1``; 0 for zeros)."""
        return 0 if self.seed is None else self.generator.n_frames_G - 1

    def push(self, x: torch.Tensor, state: Vid2VidState) -> tuple[list[tuple[torch.Tensor, bool]], Vid2VidState]:
        ready = []
        for frame in x.split(1):
            y, key, state = self._next(frame, state)
            ready.append((y, key))
        return ready, state

    def flush(self, state: Vid2VidState) -> list:
        return []

    def _next(self, x: torch.Tensor, state: Vid2VidState) -> tuple[torch.Tensor, bool, Vid2VidState]:
        t_g = self.generator.n_frames_G
        if state.window is None:  # zeros: the first frame stands in for the frames before the video
            window = x.expand(t_g, *x.shape[1:]) if self.seed is None else x
        else:
            window = torch.cat([state.window, x])
        if window.shape[0] < t_g:  # a seeded start: the given frame is this frame's output
            y, key = self._seed_frame(x, window.shape[0] - 1)
            previous = y if state.previous is None else torch.cat([state.previous, y])
            return y, key, Vid2VidState(window, previous)
        frame, previous = step(self.generator, window, state.previous)
        return frame.unsqueeze(0), True, Vid2VidState(window[1:], previous)

    def _seed_frame(self, x: torch.Tensor, index: int) -> tuple[torch.Tensor, bool]:
        if isinstance(self.seed, torch.nn.Module):
            return self.seed(x[:, : self.seed.input_nc]), True
        from fastv2v.data.paired import rgb_to_tensor
        from fastv2v.data.resize import Resizer

        real = self.seed[index]
        frame = Resizer(real.shape[:2], size=tuple(x.shape[2:]), mode="stretch").to_model(real)
        return rgb_to_tensor(frame).unsqueeze(0).to(x.device), False

    def bench_notes(self) -> dict[str, str]:
        return {"keyframes": f"sequential vid2vid teacher, started with {self.start}: one frame per call"}


def _start(start: str | None, teacher: Vid2VidGenerator) -> tuple[str, Any]:
    """The ``start`` setting (None: ``zeros``) and what it seeds the loop with, loaded (and
    checked) before any frame runs."""
    start = "zeros" if start is None else start
    return start, _load_seed(start, teacher)


def _load_seed(start: str, teacher: Vid2VidGenerator) -> Any:
    kind, _, path = start.partition(":")
    if start == "zeros":
        return None
    if kind not in ("video", "model") or not path:
        raise UserError(f"--start takes {START_HELP}, not {start!r}.")
    n = teacher.n_frames_G - 1
    if not Path(path).exists():
        what = "a video or folder of frames" if kind == "video" else "a per-frame generator file"
        raise UserError(f"--start {start}: {path} does not exist; give {what} for the first {n} outputs.")
    return _real_frames(path, n, teacher) if kind == "video" else _single_generator(path, teacher)


def _real_frames(path: str, n: int, teacher: Vid2VidGenerator) -> list[np.ndarray]:
    from fastv2v.data.video import open_frames

    if teacher.output_nc != 3:
        raise UserError(f"--start video:{path} gives RGB frames, but this model outputs {teacher.output_nc} channels.")
    with open_frames(path) as frames:
        first = list(itertools.islice(frames, n))
    if len(first) < n:
        raise UserError(f"--start video:{path} has {len(first)} frames; this vid2vid model starts from {n}.")
    return first


def _single_generator(path: str, teacher: Vid2VidGenerator) -> torch.nn.Module:
    """vid2vid's ``--use_single_G``: a per-frame generator on the same input (less any instance channel)."""
    from fastv2v.generators import SplitGenerator, load_generator

    labels = {"label_nc": teacher.label_nc} if teacher.label_nc and Path(path).suffix != ".safetensors" else {}
    g = load_generator(path, **labels)
    if not isinstance(g, SplitGenerator):
        raise UserError(f"--start model:{path} must be a per-frame generator (pix2pixHD, ResNet), not a vid2vid one.")
    channels = (teacher.input_nc, teacher.input_nc - int(teacher.use_instance))  # upstream drops the instance map
    if g.label_nc != teacher.label_nc or g.input_nc not in channels:
        raise UserError(
            f"--start model:{path} takes {g.input_nc} channels (label_nc {g.label_nc}), but the vid2vid model's "
            f"frames have {teacher.input_nc} (label_nc {teacher.label_nc}); give a generator of the same input."
        )
    if g.output_nc != teacher.output_nc:
        raise UserError(f"--start model:{path} outputs {g.output_nc} channels, the vid2vid model {teacher.output_nc}.")
    return g.eval()


# ---------------------------------------------------------------------------------------------
# key-frame methods: the sequential teacher on the key-frame subsequence (see the module notes)


class SequentialKeyframes:
    """Mixin that puts a sequential vid2vid teacher under a key-frame interpolation method
    (:class:`~fastv2v.methods.interpolate.KeyframeInterpolation`): each key frame is the next
    call of :class:`Vid2VidTeacher` over the key frames alone, its state (window of the last
    ``tG-1`` key inputs, the last ``tG-1`` key outputs) kept in ``BufferedState.teacher_state``;
    the frames between key frames are interpolated from the key outputs as on a per-frame
    teacher. With a seeded ``start`` frames ``0 .. tG-2`` are key frames (their outputs are the
    seeds, ``key`` False for ``video:``). ``generator``: the sequential generator run at key
    frames (default the teacher; ``fast`` gives its student)."""

    SETTINGS = ("interval", "keyframes", "start")

    def __init__(self, teacher: Vid2VidGenerator, interval: int = 4, keyframes: Any = None, *,
                 start: str = "zeros", seed: Any = None, generator: Vid2VidGenerator | None = None,
                 **options: Any):  # fmt: skip
        super().__init__(teacher, interval, keyframes, **options)
        self.start, self.seed = start, seed  # seed here too, so Pipeline.to moves a seed model
        self.sequence = Vid2VidTeacher(teacher if generator is None else generator, start, seed)

    @classmethod
    def from_model(cls, model: Any, *, interval: int | None = None, keyframes: Any = None,
                   start: str | None = None):  # fmt: skip
        teacher = teacher_of(model)
        start, seed = _start(start, teacher)
        return cls(teacher, whole_interval(interval, cls.DEFAULT_INTERVAL), keyframes, start=start, seed=seed)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "start": self.start}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "start": self.start}

    def init_state(self) -> BufferedState:
        state = super().init_state()
        state.teacher_state = self.sequence.init_state()
        return state

    def _apply(self, s: BufferedState, decisions: list[bool]) -> list[tuple[torch.Tensor, bool]]:
        n = self.sequence.seeded  # a seeded start: its frames are key frames, whatever the schedule says
        if n:
            decisions = [k or f.index < n for k, f in zip(decisions, s.undecided)] + decisions[len(s.undecided) :]
        return super()._apply(s, decisions)

    def key_frame_output(self, s: BufferedState, frame: _Frame) -> tuple[torch.Tensor, bool]:
        y, made, s.teacher_state = self.sequence._next(frame.x, s.teacher_state)
        return y, made

    def bench_notes(self) -> dict[str, str]:
        return {**super().bench_notes(), "sequential": (
            f"sequential vid2vid teacher on the key frames only (its window and previous outputs are "
            f"the previous key frames'), started with {self.start}")}  # fmt: skip


class Vid2VidInterp(SequentialKeyframes, Interp):
    """``interp`` on a vid2vid teacher: the teacher on the key-frame subsequence (its window the
    last ``tG-1`` key inputs, its previous outputs the last ``tG-1`` key outputs), optical-flow
    interpolation between key outputs as :class:`~fastv2v.methods.interpolate.Interp`. At
    interval 1 it equals the ``teacher`` method exactly."""


class Vid2VidMInterpolate(SequentialKeyframes, MInterpolate):
    """``minterpolate`` on a vid2vid teacher: the teacher on the key-frame subsequence (as
    :class:`Vid2VidInterp`), FFmpeg ``minterpolate`` between key outputs."""


@dataclass
class RepeatState:
    """Per video of :class:`Vid2VidRepeat`: the schedule's state, the teacher's (advanced at key
    frames only), the last key output and the frames seen."""

    schedule: Any = None
    teacher: Vid2VidState = field(default_factory=Vid2VidState)
    last: torch.Tensor | None = None
    index: int = 0


class Vid2VidRepeat:
    """``repeat`` on a vid2vid teacher: key frames (frame 0 and every ``interval``-th, plus frames
    ``0 .. tG-2`` of a seeded start) run the teacher on the key-frame subsequence (its window the
    last ``tG-1`` key inputs, its previous outputs the last ``tG-1`` key outputs); the frames
    between repeat the last key output. Online (no latency); at interval 1 it equals ``teacher``."""

    name = "repeat"
    uses_interval = True
    model_kind = None
    batchable = False
    latency = 0
    SETTINGS = ("interval", "start")
    DEFAULT_INTERVAL = Repeat.DEFAULT_INTERVAL

    def __init__(self, teacher: Vid2VidGenerator, interval: int = DEFAULT_INTERVAL, start: str = "zeros",
                 seed: Any = None):  # fmt: skip
        self.teacher, self.start, self.seed = teacher, start, seed
        self.schedule = FixedKeys(whole_interval(interval, 1))
        self.sequence = Vid2VidTeacher(teacher, start, seed)

    @classmethod
    def from_model(cls, model: Any, *, interval: int | None = None,
                   start: str | None = None) -> "Vid2VidRepeat":  # fmt: skip
        teacher = teacher_of(model)
        return cls(teacher, whole_interval(interval, cls.DEFAULT_INTERVAL), *_start(start, teacher))

    @property
    def interval(self) -> int:
        return self.schedule.interval

    def settings(self) -> dict[str, Any]:
        return {"interval": self.interval, "start": self.start}

    def init_state(self) -> RepeatState:
        return RepeatState(self.schedule.init_state())

    def push(self, x: torch.Tensor, state: RepeatState) -> tuple[list[tuple[torch.Tensor, bool]], RepeatState]:
        ready = []
        for frame in x.split(1):
            (key,), schedule = self.schedule.push(None, state.schedule)
            if key or state.index < self.sequence.seeded:
                y, made, teacher = self.sequence._next(frame, state.teacher)
                state = RepeatState(schedule, teacher, y, state.index + 1)
            else:
                y, made = state.last, False
                state = RepeatState(schedule, state.teacher, state.last, state.index + 1)
            ready.append((y, made))
        return ready, state

    def flush(self, state: RepeatState) -> list:
        return []

    def bench_notes(self) -> dict[str, str]:
        return {"sequential": f"sequential vid2vid teacher on the key frames only, started with {self.start}"}


# ---------------------------------------------------------------------------------------------
# Fast-Vid2Vid on a vid2vid teacher: its sequential student (a student model file)


class Vid2VidSpatial(Vid2VidTeacher):
    """``spatial`` on a vid2vid teacher: the distilled sequential student
    (:mod:`fastv2v.generators.vid2vid_student`: half-resolution input, narrower) in the official
    loop on every frame, feeding back its own outputs; the teacher only encodes and judges."""

    name = "spatial"
    model_kind = STUDENT

    def __init__(self, teacher: Vid2VidGenerator, student: Vid2VidGenerator, start: str = "zeros", seed: Any = None):
        super().__init__(student, start, seed)
        self.student = student

    @classmethod
    def from_model(cls, model: Any, *, start: str | None = None) -> "Vid2VidSpatial":
        return cls(model.teacher, _student_of(model, cls.name), *_start(start, model.teacher))

    def parameter_count(self) -> int:
        return count_parameters(self.student)

    def bench_notes(self) -> dict[str, str]:
        return {"sequential": f"sequential vid2vid student on every frame, started with {self.start}"}


class Vid2VidFast(SequentialKeyframes, Interp):
    """``fast`` on a vid2vid teacher: Fast-Vid2Vid's own setting. The sequential student runs on
    the key-frame subsequence (its window the last ``tG-1`` key inputs, its previous outputs the
    last ``tG-1`` key outputs: the part-time student it was distilled as), and optical-flow
    interpolation makes the frames between, as :class:`~fastv2v.methods.student.Fast` does
    (flow between the two key frames, DIS ``fast`` preset)."""

    name = "fast"
    model_kind = STUDENT
    DEFAULT_INTERVAL = DEFAULT_STUDENT_INTERVAL

    def __init__(self, teacher: Vid2VidGenerator, interval: int = DEFAULT_STUDENT_INTERVAL, keyframes: Any = None, *,
                 student: Vid2VidGenerator, start: str = "zeros", seed: Any = None, **options: Any):  # fmt: skip
        super().__init__(teacher, interval, keyframes, start=start, seed=seed, generator=student,
                         **{**FAST_INTERPOLATION, **options})  # fmt: skip
        self.student = student

    @classmethod
    def from_model(cls, model: Any, *, interval: int | None = None, keyframes: Any = None,
                   start: str | None = None) -> "Vid2VidFast":  # fmt: skip
        student = _student_of(model, cls.name)
        start, seed = _start(start, model.teacher)
        return cls(model.teacher, whole_interval(interval, model.interval), keyframes, student=student, start=start,
                   seed=seed)  # fmt: skip

    def parameter_count(self) -> int:
        return count_parameters(self.student)

    def bench_notes(self) -> dict[str, str]:
        return {**Interp.bench_notes(self), "sequential": (
            f"sequential vid2vid student on the key frames only (its window and previous outputs are the "
            f"previous key frames'), started with {self.start}")}  # fmt: skip


def _student_of(model: Any, name: str) -> Vid2VidGenerator:
    """The sequential student of a student model file made from a vid2vid teacher."""
    student = getattr(model, "student", None)
    if not isinstance(student, Vid2VidGenerator):
        raise UserError(f"--method {name} on a vid2vid teacher needs a student distilled from it (made by "
                        "`fastv2v distill student --teacher` with the vid2vid file); pass that file with --model.")  # fmt: skip
    return student


#: The methods that run a sequential (vid2vid) teacher, by name.
SEQUENTIAL: dict[str, type] = {m.name: m for m in (Vid2VidTeacher, Vid2VidInterp, Vid2VidMInterpolate, Vid2VidRepeat,
                                                  Vid2VidSpatial, Vid2VidFast)}  # fmt: skip
