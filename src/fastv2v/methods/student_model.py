"""The Fast-Vid2Vid student model file: the teacher, the distilled spatial student and the
default key-frame interval of ``fast`` in one self-describing ``.safetensors`` (kind
``student``, part ``student``; the format is :mod:`fastv2v.bundle`'s). The student of a vid2vid
teacher is itself a (half-input, narrower) vid2vid generator
(:mod:`fastv2v.generators.vid2vid_student`). The engine encodes
frames with the teacher's ``encode_input``; the benchmark judges the student against that very
teacher.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from fastv2v.bundle import check_teacher as _check_teacher
from fastv2v.bundle import build_parts, info_of, method_settings, read_bundle, save_bundle
from fastv2v.errors import UserError
from fastv2v.generators import build_generator
from fastv2v.generators.base import SplitGenerator
from fastv2v.generators.student import SpatialStudent, build_student

__all__ = ["KIND", "StudentModel", "check_compatible", "check_teacher", "load_student", "save_student"]

KIND = "student"
#: ``fast``'s default key-frame interval when a file does not say (Fast-Vid2Vid's street scenes
#: average about one key frame in four).
DEFAULT_INTERVAL = 4


def check_compatible(teacher: SplitGenerator, student: SpatialStudent, source: Any = "the student") -> None:
    """Refuse a student that cannot stand in for ``teacher`` (other input or output)."""
    mine = (student.input_nc, student.output_nc, student.label_nc, bool(student.use_instance))
    theirs = (teacher.input_nc, teacher.output_nc, teacher.label_nc, bool(getattr(teacher, "use_instance", False)))
    ngf = student.config.get("ngf"), teacher.config.get("ngf")
    sequential = student.config.get("arch") == "vid2vid"  # a vid2vid student's ngf is its own (pruned) width
    if sequential != (teacher.config.get("arch") == "vid2vid"):
        raise UserError(f"{source} and the teacher must both be vid2vid (sequential) generators or both per-frame "
                        "ones; the student and the teacher do not belong together.")  # fmt: skip
    # a per-frame student is always built with its teacher's ngf (a pruned one's weights do not show it)
    if ngf[0] != ngf[1] and not sequential:
        raise UserError(f"{source} says it was made for a teacher of ngf {ngf[0]}, but the teacher has ngf {ngf[1]}; "
                        "the student and the teacher do not belong together.")  # fmt: skip
    if mine != theirs:
        raise UserError(
            f"{source} takes {student.input_nc} input channels (label classes {student.label_nc}) and gives "
            f"{student.output_nc}, but the teacher takes {teacher.input_nc} (label classes {teacher.label_nc}) and "
            f"gives {teacher.output_nc}; the student and the teacher do not belong together."
        )


class StudentModel(nn.Module):
    """A teacher and its spatial student. ``model.student(x)`` is the student on a
    full-resolution model input (it downsamples by itself); ``model.teacher`` the generator;
    ``model.interval`` the default key-frame interval of the ``fast`` method."""

    kind = KIND

    def __init__(self, teacher: SplitGenerator, student: SpatialStudent, interval: int = DEFAULT_INTERVAL,
                 info: dict | None = None, method: dict | None = None):  # fmt: skip
        super().__init__()
        check_compatible(teacher, student)
        if int(interval) != interval or interval < 1:
            raise UserError(f"the key-frame interval must be a whole number >= 1, not {interval}.")
        self.teacher, self.student = teacher, student
        self.interval = int(interval)
        self.info = dict(info or {})
        self.method = {"name": "fast", "interval": self.interval, **(method or {})}  # the file's default method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)


def save_student(path: str | os.PathLike, model: StudentModel) -> None:
    """Write the bundle atomically (teacher compacted to float16 where lossless, student float32)."""
    save_bundle(path, KIND, model.teacher, "student", model.student, model.interval, model.method, model.info)


def load_student(
    path: str | os.PathLike, *, device: str | torch.device = "cpu", teacher: SplitGenerator | None = None
) -> StudentModel:
    """The bundle at ``path`` in eval mode. With ``teacher``, check that the student was distilled
    from that teacher (same weights) and refuse otherwise."""
    tensors, config = read_bundle(path, KIND, "Fast-Vid2Vid student model", "`fastv2v distill student`")
    try:
        parts = build_parts(path, tensors, {
            "teacher": lambda: build_generator(config["generator"]["arch"], **config["generator"]),
            "student": lambda: _build_student(config["student"]),
        })  # fmt: skip
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path} is damaged: its configuration cannot be built ({exc}).") from None
    g, s = parts["teacher"], parts["student"]
    check_compatible(g, s, f"{path}'s student")
    interval = config.get("interval", DEFAULT_INTERVAL)
    method = method_settings(config, {"name": "fast", "interval": interval})
    model = StudentModel(g, s, interval, info_of(config, "student"), method)
    if teacher is not None:
        check_teacher(model, teacher, path)
    return model.eval().to(device)


def _build_student(config: dict) -> nn.Module:
    """A per-frame :class:`SpatialStudent`, or a vid2vid teacher's sequential student."""
    if config.get("arch") == "vid2vid":
        return build_generator("vid2vid", **config)
    return build_student(config)


def check_teacher(model: StudentModel, teacher: SplitGenerator, source: Any) -> None:
    """Refuse a teacher other than the one the student was distilled from."""
    _check_teacher(model.teacher, teacher, source, "student")
