"""Fast-Vid2Vid's methods (Zhuo et al., ECCV 2022): ``spatial`` and ``fast``.

Both run the distilled spatial student (:mod:`fastv2v.generators.student`: half-resolution
input, full-resolution output, a cheap body) instead of the teacher, and are built from a
student model file (``model_kind = "student"``, :mod:`fastv2v.methods.student_model`), which
carries the teacher too: the engine encodes frames with the teacher's ``encode_input`` (the
student downsamples them itself) and the benchmark judges the outputs against that teacher.

* ``spatial``: the student on every frame (spatial compression alone). Online and stateless,
  so the engine's ``--batch`` runs whole batches in one call. No key-frame interval.
* ``fast``: the whole of Fast-Vid2Vid: the student at key frames and the project's ``interp``
  (:class:`~fastv2v.methods.interpolate.Interp`, optical-flow interpolation at each frame's true
  position) between them; key frames are chosen by the same schedules as ``interp``
  (``fixed:N``, ``peaks`` -- the paper's rule --, ``auto``), by default ``fixed:interval`` with
  the model file's interval; the flow is measured between the two key frames (``flow="keys"``,
  see :class:`Fast`). Buffered (``push``/``flush``): it needs the next key frame, so it adds up
  to one key gap of latency.

What ``key`` means here: the frame's output came from a full pass of the method's generator,
which for these methods is the *student* (the teacher never runs). ``spatial`` marks every
frame key; ``fast`` marks its key frames, whose outputs are the student's.

On the CPU the student's tail (full-resolution transposed conv and 7x7 conv, half of its
time) runs through :func:`~fastv2v.generators.fast_parts.fast_tail` (equal to float rounding;
the plain modules under the MAC counter, with gradients, and off the CPU).
"""

from __future__ import annotations

from typing import Any

import torch

from fastv2v.errors import UserError
from fastv2v.generators.base import SplitGenerator
from fastv2v.generators.student import SpatialStudent, student_from_teacher
from fastv2v.methods.base import OnlineMethod, StreamState, kernel_choice, register, whole_interval
from fastv2v.methods.interpolate import Interp
from fastv2v.methods.student_model import DEFAULT_INTERVAL, KIND, StudentModel, check_compatible
from fastv2v.metrics.profile import count_parameters

__all__ = ["FAST_INTERPOLATION", "Fast", "Spatial", "StudentRunner"]


class StudentRunner:
    """``runner(x)`` = ``student(x)`` for inference; with ``kernels="fast"`` (opt-in) the tail
    runs the CPU fast kernels. Follows the input's device (the engine moves only the teacher)."""

    def __init__(self, student: SpatialStudent, kernels: str = "torch"):
        self.student = student
        self.kernels = kernel_choice(kernels)
        self._tail = None  # built on the first call

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        s = self.student
        p = next(s.parameters(), None)
        if p is not None and p.device != x.device:
            s.to(x.device)
        if self._tail is None:
            from fastv2v.generators.fast_parts import fast_tail

            self._tail = fast_tail(s) if self.kernels == "fast" else s.tail
        return self._tail(s.body(s.head(s.downsample_input(x))))


def _student_for(teacher: SplitGenerator, student: SpatialStudent | None, kwargs: dict[str, Any]) -> SpatialStudent:
    if student is None:  # untrained, initialised from the teacher: for profiling and tests
        student = student_from_teacher(teacher, **kwargs)
    elif kwargs:
        raise TypeError("give either a student or student settings, not both")
    check_compatible(teacher, student)
    p = next(teacher.parameters(), None)
    if p is not None:
        student = student.to(p.device)
    return student.eval()


@register
class Spatial(OnlineMethod):
    """The spatial student on every frame (Fast-Vid2Vid's spatial compression alone)."""

    name = "spatial"
    model_kind = KIND
    uses_interval = False

    def __init__(self, teacher: SplitGenerator, interval: int = 1, student: SpatialStudent | None = None,
                 kernels: str = "torch", **student_kwargs):  # fmt: skip
        super().__init__(teacher, 1)
        self.student = _student_for(teacher, student, student_kwargs)
        self.run = StudentRunner(self.student, kernels)

    batchable = True  # stateless: a batch of frames runs in one call (the engine's --batch)
    SETTINGS = ("kernels",)

    @classmethod
    def from_model(cls, model: Any, *, kernels: str | None = None) -> "Spatial":
        """From a student model file's bundle: every frame runs the student."""
        return cls(model.teacher, student=_trained_student(model, cls.name), kernels=kernel_choice(kernels))

    def settings(self) -> dict[str, Any]:
        return {"kernels": self.run.kernels}

    def parameter_count(self) -> int:
        return count_parameters(self.student)  # the teacher only rides along in the file; it never runs

    def step(self, x: torch.Tensor, state: StreamState) -> tuple[torch.Tensor, StreamState, bool]:
        return self.run(x), state, True

    def push(self, x: torch.Tensor, state: StreamState):
        return [(y, True) for y in self.run(x).split(1)], state

    def non_key_path(self):
        return self.run

    def describe(self) -> dict[str, Any]:
        return {"student": _summary(self.student)}


#: ``fast``'s interpolation settings unless given (see :class:`Fast`), on any teacher.
FAST_INTERPOLATION = {"flow": "keys", "preset": "fast"}


@register
class Fast(Interp):
    """Fast-Vid2Vid: the spatial student at key frames, ``interp`` between them (see the module
    docstring). ``interval``/``keyframes`` as for ``interp``; ``interp_kwargs`` (``flow``,
    ``preset``, ...) go to :class:`~fastv2v.methods.interpolate.Interp`, except that ``flow``
    defaults to ``"keys"`` for every input (flow between the two key frames only, as
    Fast-Vid2Vid's interpolation; on label maps that is ``interp``'s own choice): ``"direct"``
    costs two DIS flows per in-between frame, ``"keys"`` two per key gap (the three held-out edges
    clips with teacher key frames, PSNR to the teacher over all frames: 0.5 dB below ``"direct"``
    at gaps 2 and 4, 1.1 dB at gap 8, a loss the student's own distance to the teacher hides).
    ``preset`` defaults to DIS ``"fast"`` (0.8 ms a flow at 128x256 against 1.7 ms): on
    the smoothed edges inputs it was 0.1-0.3 dB *better* than ``"medium"`` at gaps 2, 4, 8 (mean
    of the three held-out clips), on the scenes outputs 0.07-0.17 dB worse, which the student's
    own distance to the teacher (about 22 dB) hides."""

    name = "fast"
    model_kind = KIND
    uses_interval = True

    SETTINGS = ("interval", "keyframes", "kernels")

    def __init__(self, teacher: SplitGenerator, interval: int = DEFAULT_INTERVAL, keyframes: Any = None, *,
                 student: SpatialStudent | None = None, student_kwargs: dict | None = None, kernels: str = "torch",
                 **interp_kwargs):  # fmt: skip
        super().__init__(teacher, interval, keyframes, **{**FAST_INTERPOLATION, **interp_kwargs})
        self.student = _student_for(teacher, student, dict(student_kwargs or {}))
        self.run = StudentRunner(self.student, kernels)

    @classmethod
    def from_model(cls, model: Any, *, interval: int | None = None, keyframes: Any = None,
                   kernels: str | None = None) -> "Fast":  # fmt: skip
        """From a student model file's bundle; ``interval`` None: the file's."""
        if interval == "auto":
            raise UserError("--interval auto is for --method shortcut; for --method fast use --keyframes auto "
                            "(adaptive key frames) or a whole-number --interval.")  # fmt: skip
        student = _trained_student(model, cls.name)
        return cls(model.teacher, whole_interval(interval, model.interval), keyframes, student=student,
                   kernels=kernel_choice(kernels))  # fmt: skip

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "kernels": self.run.kernels}

    def key_output(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)

    def parameter_count(self) -> int:
        return count_parameters(self.student)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "student": _summary(self.student)}



def _trained_student(model: Any, name: str) -> SpatialStudent:
    """The distilled student of a student bundle; a plain generator has none to offer."""
    if not isinstance(model, StudentModel):
        raise UserError(f"--method {name} needs a distilled student model file (made by `fastv2v distill student`), "
                        "not a plain generator; pass that file with --model.")  # fmt: skip
    return model.student


def _summary(student: SpatialStudent) -> dict[str, Any]:
    c = student.config
    return {"body": c["body"], "width": c["width"], "blocks": c["n_blocks"], "expansion": c["expansion"]}
