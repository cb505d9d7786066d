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

from dataclasses import dataclass, replace
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
    runs the CPU fast kernels. Follows the input's device (the engine moves only the teacher).
    A student with the temporal shift runs frame by frame: ``runner.step(x, past)`` gives
    ``(y, present)`` (:meth:`SpatialStudent.step`)."""

    def __init__(self, student: SpatialStudent, kernels: str = "torch"):
        self.student = student
        self.kernels = kernel_choice(kernels)
        self.shifts = bool(getattr(student, "temporal_shift", 0.0))
        if self.shifts and self.kernels == "fast":
            raise UserError("--kernels fast is not available for a student with the temporal shift; use torch.")
        self._tail = None  # built on the first call

    def _follow(self, x: torch.Tensor) -> SpatialStudent:
        s = self.student
        p = next(s.parameters(), None)
        if p is not None and p.device != x.device:
            s.to(x.device)
        return s

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        s = self._follow(x)
        if self._tail is None:
            from fastv2v.generators.fast_parts import fast_tail

            self._tail = fast_tail(s) if self.kernels == "fast" else s.tail
        return s.upsample_output(self._tail(s.body(s.head(s.downsample_input(x)))), x.shape[-2:])

    def step(self, x: torch.Tensor, past: tuple = ()) -> tuple[torch.Tensor, tuple]:
        """One frame of a video: ``(y, present)``; without a shift ``(runner(x), ())``."""
        if not self.shifts:
            return self(x), ()
        return self._follow(x).step(x, past or None)


@dataclass
class StudentState:
    """Per-video state of ``spatial`` (and of ``fast``'s key frames): the sub-network running now
    (None: the method's own) and the temporal shift's memory of the last frame it ran."""

    subnet: str | None = None
    past: tuple = ()


class Subnetworks:
    """The sub-networks of one (elastic) student, each copied out once when first used, so a
    video can switch between them at any frame without reloading anything."""

    def __init__(self, student: SpatialStudent, kernels: str):
        from fastv2v.generators.elastic import Subnet

        self.student, self.kernels = student, kernels
        self.labels = list(student.config.get("elastic") or [Subnet(int(student.config["width"])).label])
        self.whole = self.labels[0]
        self._runners: dict[str, StudentRunner] = {}

    def check(self, label: str | None) -> str:
        """``label`` as a known sub-network (None: the whole student); one sentence otherwise."""
        from fastv2v.generators.elastic import Subnet

        if label is None:
            return self.whole
        wanted = Subnet.parse(label).label
        if wanted not in self.labels:
            raise UserError(f"this student has no sub-network {label!r}; it has {', '.join(self.labels)}"
                            + ("" if len(self.labels) > 1 else " (it was not distilled with --elastic)") + ".")
        return wanted

    def runner(self, label: str | None) -> StudentRunner:
        label = self.check(label)
        if label not in self._runners:
            from fastv2v.generators.elastic import Subnet, subnetwork

            sub = Subnet.parse(label)
            whole = sub.width == int(self.student.config["width"]) and sub.divisor == 1
            model = self.student if whole else subnetwork(self.student, sub).eval()
            self._runners[label] = StudentRunner(model, self.kernels)
        return self._runners[label]

    def by_speed(self, fps: float, x: torch.Tensor, teacher: SplitGenerator,
                 repeats: int = 3) -> tuple[str, dict[str, float]]:  # fmt: skip
        """The costliest sub-network whose model time on ``x`` (one model-size input, timed here:
        one warm-up call, then the median of ``repeats``) is within ``1 / fps``; with each one's
        seconds. None fits: the fastest, so a slow machine still runs as fast as it can."""
        import time

        if not fps > 0:
            raise UserError(f"--fps is a frame rate above 0 (e.g. 30), not {fps}.")
        seconds: dict[str, float] = {}
        with torch.inference_mode():
            for label in self.labels:
                run = self.runner(label)
                run.step(x)
                times = []
                for _ in range(repeats):
                    tick = time.perf_counter()
                    run.step(x)
                    times.append(time.perf_counter() - tick)
                seconds[label] = sorted(times)[len(times) // 2]
        fitting = [label for label in self.costs(teacher) if seconds[label] <= 1.0 / fps]  # costliest first
        return (fitting[0] if fitting else min(seconds, key=seconds.get)), seconds

    def costs(self, teacher: SplitGenerator) -> dict[str, float]:
        """Each sub-network's exact MACs as a fraction of the teacher's, costliest first."""
        from fastv2v.generators.loading import call_inputs
        from fastv2v.metrics.profile import profile

        h = w = self.student.size_multiple * 16  # fully convolutional: the ratios hardly depend on the size
        teacher_macs = profile(teacher, *call_inputs(teacher, h, w, "meta")).macs_exact
        costs = {label: profile(self.runner(label).student, *call_inputs(teacher, h, w, "meta")).macs_exact
                 / teacher_macs for label in self.labels}  # fmt: skip
        return dict(sorted(costs.items(), key=lambda kv: -kv[1]))

    def by_budget(self, teacher: SplitGenerator, budget: float) -> str:
        """The costliest sub-network within ``budget`` x the teacher's MACs (exact convention)."""
        if not budget > 0:
            raise UserError(f"--budget is a fraction of the teacher's MACs above 0 (e.g. 0.3), not {budget}.")
        costs = self.costs(teacher)
        fitting = [label for label, share in costs.items() if share <= budget]
        if not fitting:
            cheapest = min(costs, key=costs.get)
            raise UserError(f"no sub-network of this student costs at most {budget:g} of the teacher's MACs; the "
                            f"cheapest, {cheapest}, costs {costs[cheapest]:.3f}. Raise --budget.")
        return fitting[0]


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
    """The spatial student on every frame (Fast-Vid2Vid's spatial compression alone).

    ``subnet``: the sub-network of an elastic student to run (``w8``, ``w16/2``; None: the whole
    student), or ``budget``: the costliest one within that fraction of the teacher's MACs. A
    student with the temporal shift keeps its memory of the last frame in the per-video state
    (:class:`StudentState`), so it runs frame by frame; :meth:`switch` changes the sub-network of
    a video between two frames."""

    name = "spatial"
    model_kind = KIND
    uses_interval = False
    SETTINGS = ("kernels", "subnet", "budget")

    def __init__(self, teacher: SplitGenerator, interval: int = 1, student: SpatialStudent | None = None,
                 kernels: str = "torch", subnet: str | None = None, budget: float | None = None,
                 **student_kwargs):  # fmt: skip
        super().__init__(teacher, 1)
        _take_student(self, teacher, student, student_kwargs, kernels, subnet, budget)
        self.batchable = not self.run.shifts  # stateless: a batch of frames runs in one call (--batch)

    @classmethod
    def from_model(cls, model: Any, *, kernels: str | None = None, subnet: str | None = None,
                   budget: float | None = None) -> "Spatial":  # fmt: skip
        """From a student model file's bundle: every frame runs the student (or its ``subnet``)."""
        return cls(model.teacher, student=_trained_student(model, cls.name), kernels=kernel_choice(kernels),
                   subnet=subnet, budget=budget)  # fmt: skip

    def settings(self) -> dict[str, Any]:
        return {"kernels": self.run.kernels, "subnet": _shown(self.subnets, self.subnet)}

    def parameter_count(self) -> int:
        return count_parameters(self.run.student)  # the teacher only rides along in the file; it never runs

    def init_state(self) -> StudentState:
        return StudentState(self.subnet)

    def switch(self, state: StudentState, subnet: str | None) -> StudentState:
        """``state`` with the sub-network ``subnet`` (None: the method's own) from the next frame on."""
        return replace(state, subnet=_switch_target(self, subnet))

    def step(self, x: torch.Tensor, state: StudentState) -> tuple[torch.Tensor, StudentState, bool]:
        y, present = _runner(self, state).step(x, state.past)
        return y, replace(state, past=present), True

    def push(self, x: torch.Tensor, state: StudentState):
        run = _runner(self, state)
        if not run.shifts:  # no memory between frames: the whole batch in one call
            return [(y, True) for y in run(x).split(1)], state
        return super().push(x, state)

    def non_key_path(self):
        return self.run

    def describe(self) -> dict[str, Any]:
        return {"student": _summary(self.run.student)}


def _runner(method: Any, state: StudentState):
    """What runs ``state``'s sub-network: the method's own runner (which a graph backend replaces),
    or another sub-network's after a switch."""
    return method.run if state.subnet == method.subnet else method.subnets.runner(state.subnet)


def _switch_target(method: Any, subnet: str | None) -> str:
    """The sub-network a :meth:`switch` to ``subnet`` runs (None: the method's own)."""
    if method.subnets is None:
        raise UserError("this pipeline runs one sub-network's graph on a graph backend; switching sub-networks "
                        "needs --backend torch.")  # fmt: skip
    return method.subnets.check(subnet or method.subnet)


def _take_student(method: Any, teacher: SplitGenerator, student: SpatialStudent | None, student_kwargs: dict,
                  kernels: str, subnet: str | None, budget: float | None) -> None:  # fmt: skip
    """Give ``spatial`` or ``fast`` its student, the student's sub-networks, the one to run (the one
    ``budget`` affords, which wins over a ``subnet`` a file stores, else ``subnet``) and its runner."""
    method.student = _student_for(teacher, student, student_kwargs)
    method.subnets = Subnetworks(method.student, kernel_choice(kernels))
    if budget is not None:
        method.subnet = method.subnets.by_budget(teacher, float(budget))
    else:
        method.subnet = method.subnets.check(subnet)
    method.run = method.subnets.runner(method.subnet)


def _shown(subnets: Subnetworks, subnet: str) -> str | None:
    """The ``subnet`` setting as stored: None for the whole student of a student that is not elastic."""
    return subnet if len(subnets.labels) > 1 else None


#: ``fast``'s interpolation settings unless given (see :class:`Fast`), on any teacher.
FAST_INTERPOLATION = {"flow": "keys", "preset": "fast", "refine": None}


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
    own distance to the teacher (about 22 dB) hides. ``refine`` stays the preset's own (5) on every
    input: the model cards' ``fast`` columns were measured so; without it the scenes gaps measured
    the same (4 held-out clips, within 0.06 dB) for 0.4 ms less per in-between frame at gap 2."""

    name = "fast"
    model_kind = KIND
    uses_interval = True

    SETTINGS = ("interval", "keyframes", "kernels", "subnet", "budget")

    def __init__(self, teacher: SplitGenerator, interval: int = DEFAULT_INTERVAL, keyframes: Any = None, *,
                 student: SpatialStudent | None = None, student_kwargs: dict | None = None, kernels: str = "torch",
                 subnet: str | None = None, budget: float | None = None, **interp_kwargs):  # fmt: skip
        super().__init__(teacher, interval, keyframes, **{**FAST_INTERPOLATION, **interp_kwargs})
        _take_student(self, teacher, student, dict(student_kwargs or {}), kernels, subnet, budget)

    @classmethod
    def from_model(cls, model: Any, *, interval: int | None = None, keyframes: Any = None,
                   kernels: str | None = None, subnet: str | None = None, budget: float | None = None) -> "Fast":  # fmt: skip
        """From a student model file's bundle; ``interval`` None: the file's."""
        if interval == "auto":
            raise UserError("--interval auto is for --method shortcut; for --method fast use --keyframes auto "
                            "(adaptive key frames) or a whole-number --interval.")  # fmt: skip
        student = _trained_student(model, cls.name)
        return cls(model.teacher, whole_interval(interval, model.interval), keyframes, student=student,
                   kernels=kernel_choice(kernels), subnet=subnet, budget=budget)  # fmt: skip

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "kernels": self.run.kernels, "subnet": _shown(self.subnets, self.subnet)}

    def init_state(self):
        state = super().init_state()
        state.teacher_state = StudentState(self.subnet)
        return state

    def switch(self, state, subnet: str | None):
        """``state`` with the sub-network ``subnet`` for the key frames from the next one on."""
        state.teacher_state = replace(state.teacher_state, subnet=_switch_target(self, subnet))
        return state

    def key_output(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)

    def key_frame_output(self, s, frame) -> tuple[torch.Tensor, bool]:
        """The student at a key frame; a temporally shifted student remembers the last key frame."""
        student_state = s.teacher_state
        y, present = _runner(self, student_state).step(frame.x, student_state.past)
        s.teacher_state = replace(student_state, past=present)
        return y, True

    def parameter_count(self) -> int:
        return count_parameters(self.run.student)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "student": _summary(self.run.student)}



def _trained_student(model: Any, name: str) -> SpatialStudent:
    """The distilled student of a student bundle; a plain generator has none to offer."""
    if not isinstance(model, StudentModel):
        raise UserError(f"--method {name} needs a distilled student model file (made by `fastv2v distill student`), "
                        "not a plain generator; pass that file with --model.")  # fmt: skip
    return model.student


def _summary(student: SpatialStudent) -> dict[str, Any]:
    c = student.config
    extra = {k: c[k] for k in ("divisor", "temporal_shift", "elastic") if c.get(k)}
    return {"body": c["body"], "width": c["width"], "blocks": c["n_blocks"], "expansion": c["expansion"], **extra}
