"""One entry point for every model file fastv2v reads: ``fastv2v.load_model(path)``.

A fastv2v ``.safetensors`` says what it holds (its metadata ``kind``): a teacher generator or
a Shortcut-V2V bundle (teacher + block + interval), or a Fast-Vid2Vid student bundle (teacher +
student + interval). Upstream ``.pth`` generator files load as
generators, their architecture read off the tensors.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from fastv2v.checkpoint import read_config
from fastv2v.errors import UserError


def model_kind(path: str | os.PathLike) -> str:
    """``"generator"``, ``"shortcut"``, ... for a model file (``.pth`` files are generators)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist; pass the path of a model file with --model.")
    if path.suffix == ".safetensors":
        return (read_config(path) or {}).get("kind", "generator")
    return "generator"


def load_model(path: str | os.PathLike, *, device: str | torch.device = "cpu", arch: str | None = None, **config: Any):
    """The model in ``path``, in eval mode: a :class:`~fastv2v.generators.SplitGenerator` (or a
    sequential :class:`~fastv2v.generators.Vid2VidGenerator`, ``label_nc`` given for label maps), or a
    :class:`~fastv2v.methods.shortcut.model_file.ShortcutModel` whose ``.block`` is the Shortcut
    block (``block(a_t=..., a_ref=..., f_ref=...)`` returns the predicted body features first)
    and ``.teacher`` the generator, or a :class:`~fastv2v.methods.student_model.StudentModel`
    (Fast-Vid2Vid: ``.student`` the spatial student, ``.teacher`` the generator it was distilled
    from). ``arch`` / ``config``: for upstream generator files only."""
    kind = model_kind(path)
    if kind == "generator":
        from fastv2v.generators import load_generator

        return load_generator(path, arch=arch, device=device, **config)
    if kind == "shortcut":
        from fastv2v.methods.shortcut.model_file import load_shortcut

        return load_shortcut(path, device=device)
    if kind == "student":
        from fastv2v.methods.student_model import load_student

        return load_student(path, device=device)
    raise UserError(f"{path} holds a {kind!r} model, which this version of fastv2v cannot run; upgrade fastv2v.")


def import_official_shortcut(teacher: str | os.PathLike, shortcut: str | os.PathLike, **kwargs: Any):
    """A teacher and block trained with the official Shortcut-V2V code as one fastv2v bundle
    (:func:`fastv2v.methods.shortcut.official.import_official`)."""
    from fastv2v.methods.shortcut.official import import_official

    return import_official(teacher, shortcut, **kwargs)


def save_shortcut(path: str | os.PathLike, model: Any) -> None:
    """Write a Shortcut-V2V bundle (:func:`fastv2v.methods.shortcut.model_file.save_shortcut`)."""
    from fastv2v.methods.shortcut.model_file import save_shortcut as save

    save(path, model)
