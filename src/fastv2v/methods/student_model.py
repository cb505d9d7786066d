"""The Fast-Vid2Vid student model file: one self-describing ``.safetensors`` that bundles the
teacher, the distilled spatial student and the default key-frame interval of ``fast``.

Tensors are stored as ``teacher.<key>`` and ``student.<key>``; the metadata holds
``{"kind": "student", "generator": <teacher config>, "student": <student config>,
"interval": N, "teacher_fingerprint": ...}`` plus where it came from (``training``). The
teacher rides along so ``fastv2v translate --model student.safetensors`` and ``fastv2v bench``
need nothing else: the engine encodes frames with the teacher's ``encode_input``, the
benchmark judges the student against that very teacher. As in the Shortcut-V2V file
(:mod:`fastv2v.methods.shortcut_model`), teacher tensors that are exactly representable in
float16 are stored in float16, the student in float32, and the teacher's fingerprint catches a
``--teacher`` that is not the one the student was distilled from.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastv2v.checkpoint import load_model_file, save_model
from fastv2v.errors import UserError
from fastv2v.generators import build_generator
from fastv2v.generators.base import SplitGenerator
from fastv2v.generators.student import SpatialStudent, build_student
from fastv2v.methods.shortcut_model import teacher_fingerprint

__all__ = ["KIND", "StudentModel", "check_compatible", "check_teacher", "load_student", "save_student"]

KIND = "student"
#: ``fast``'s default key-frame interval when a file does not say (Fast-Vid2Vid's street scenes
#: average about one key frame in four).
DEFAULT_INTERVAL = 4


def check_compatible(teacher: SplitGenerator, student: SpatialStudent, source: Any = "the student") -> None:
    """Refuse a student that cannot stand in for ``teacher`` (other input or output)."""
    mine = (student.input_nc, student.output_nc, student.label_nc, bool(student.use_instance))
    theirs = (teacher.input_nc, teacher.output_nc, teacher.label_nc, bool(getattr(teacher, "use_instance", False)))
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
                 info: dict | None = None):  # fmt: skip
        super().__init__()
        check_compatible(teacher, student)
        if int(interval) != interval or interval < 1:
            raise UserError(f"the key-frame interval must be a whole number >= 1, not {interval}.")
        self.teacher, self.student = teacher, student
        self.interval = int(interval)
        self.info = dict(info or {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)

    def config(self) -> dict[str, Any]:
        return {
            "kind": KIND, "generator": self.teacher.config, "student": self.student.config,
            "interval": self.interval, "teacher_fingerprint": teacher_fingerprint(self.teacher), **self.info,
        }  # fmt: skip


def _compact(tensor: torch.Tensor) -> torch.Tensor:
    """Float16 when that is lossless (a float16-shipped teacher), else unchanged."""
    if tensor.is_floating_point() and tensor.dtype != torch.float16:
        half = tensor.half()
        if torch.equal(half.to(tensor.dtype), tensor):
            return half
    return tensor


def save_student(path: str | os.PathLike, model: StudentModel) -> None:
    """Write the bundle atomically (teacher compacted to float16 where lossless, student float32)."""
    tensors = {f"teacher.{k}": _compact(v.detach().cpu()) for k, v in model.teacher.state_dict().items()}
    tensors.update({f"student.{k}": v.detach().float().cpu() for k, v in model.student.state_dict().items()})
    save_model(path, tensors, model.config())


def load_student(
    path: str | os.PathLike, *, device: str | torch.device = "cpu", teacher: SplitGenerator | None = None
) -> StudentModel:
    """The bundle at ``path`` in eval mode. With ``teacher``, check that the student was distilled
    from that teacher (same weights) and refuse otherwise."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist; pass the student model file made by `fastv2v distill student`.")
    tensors, config = load_model_file(path)
    kind = (config or {}).get("kind")
    if kind != KIND:
        what = f"a {kind} model" if kind else "not a fastv2v model file"
        raise UserError(f"{path} is {what}, not a Fast-Vid2Vid student model; make one with "
                        "`fastv2v distill student`.")  # fmt: skip
    try:
        g = build_generator(config["generator"]["arch"], **config["generator"])
        s = build_student(config["student"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path} is damaged: its configuration cannot be built ({exc}).") from None
    for prefix, module in (("teacher.", g), ("student.", s)):
        state = {k[len(prefix) :]: v.float() for k, v in tensors.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise UserError(f"{path} is damaged: its {prefix[:-1]} weights do not fit its own config ({first}).") from None
    info = {k: v for k, v in config.items() if k not in ("kind", "generator", "student", "interval", "teacher_fingerprint")}
    check_compatible(g, s, f"{path}'s student")
    model = StudentModel(g, s, config.get("interval", DEFAULT_INTERVAL), info)
    if teacher is not None:
        check_teacher(model, teacher, path)
    return model.eval().to(device)


def check_teacher(model: StudentModel, teacher: SplitGenerator, source: Any) -> None:
    """Refuse a teacher other than the one the student was distilled from."""
    theirs, ours = teacher_fingerprint(teacher), teacher_fingerprint(model.teacher)
    if theirs != ours:
        raise UserError(
            f"{source} was distilled from a different teacher (weights fingerprint {ours}, the given teacher's is "
            f"{theirs}); use the teacher it was trained with, or distil a new student for this one."
        )
