"""The Shortcut-V2V model file: the teacher, the trained block and the default key-frame
interval in one self-describing ``.safetensors`` (kind ``shortcut``, part ``block`` with the
official Shortcut-V2V key names; the format is :mod:`fastv2v.bundle`'s).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from fastv2v.bundle import check_teacher as _check_teacher
from fastv2v.bundle import build_parts, info_of, method_settings, read_bundle, save_bundle, teacher_fingerprint
from fastv2v.errors import UserError
from fastv2v.generators import build_generator
from fastv2v.generators.base import SplitGenerator
from fastv2v.methods.shortcut.block import ShortcutBlock

__all__ = ["KIND", "ShortcutModel", "check_teacher", "load_shortcut", "save_shortcut", "teacher_fingerprint"]

KIND = "shortcut"


class ShortcutModel(nn.Module):
    """A teacher and its Shortcut block. ``model.block(a_t=..., a_ref=..., f_ref=...)`` returns
    ``(predicted body features, extras)``; ``model.teacher`` is the full generator;
    ``model.interval`` the key-frame interval the block was trained for; ``model.method`` the
    method the file runs by default and its settings (``{"name": "shortcut", "interval": ...,
    "reuse_below": ...}``; ``info["reuse_below"]``, where a trainer put its calibrated gate, is
    taken as the default gate)."""

    kind = KIND

    def __init__(self, teacher: SplitGenerator, block: ShortcutBlock, interval: int = 3, info: dict | None = None,
                 method: dict | None = None):  # fmt: skip
        super().__init__()
        if block.feature_channels != teacher.feature_channels:
            raise UserError(
                f"the Shortcut block takes {block.feature_channels}-channel features but the teacher's head gives "
                f"{teacher.feature_channels}; the block and the teacher do not belong together."
            )
        self.teacher, self.block = teacher, block
        self.interval = int(interval)
        self.info = dict(info or {})
        gate = float(self.info.pop("reuse_below", 0.0))
        self.method = {"name": "shortcut", "interval": self.interval, "reuse_below": gate, **(method or {})}

    def forward(self, a_t: torch.Tensor, a_ref: torch.Tensor, f_ref: torch.Tensor):
        return self.block(a_t, a_ref, f_ref)


def save_shortcut(path: str | os.PathLike, model: ShortcutModel) -> None:
    """Write the bundle atomically (teacher compacted to float16 where lossless, block float32)."""
    save_bundle(path, KIND, model.teacher, "block", model.block, model.interval, model.method, model.info)


def load_shortcut(
    path: str | os.PathLike, *, device: str | torch.device = "cpu", teacher: SplitGenerator | None = None
) -> ShortcutModel:
    """The bundle at ``path`` in eval mode. With ``teacher``, check that the bundle was made for
    that teacher (same weights) and refuse otherwise."""
    how = "`fastv2v distill shortcut` or `fastv2v import shortcut-v2v`"
    tensors, config = read_bundle(path, KIND, "Shortcut-V2V model", how)
    parts = build_parts(path, tensors, {
        "teacher": lambda: build_generator(config["generator"]["arch"], **config["generator"]),
        "block": lambda: ShortcutBlock(**config["block"]),
    })  # fmt: skip
    g, b = parts["teacher"], parts["block"]
    interval = config.get("interval", 3)
    defaults = {"name": "shortcut", "interval": interval, "reuse_below": 0.0}
    model = ShortcutModel(g, b, interval, info_of(config, "block"), method_settings(config, defaults))
    if teacher is not None:
        check_teacher(model, teacher, path)
    return model.eval().to(device)


def check_teacher(model: ShortcutModel, teacher: SplitGenerator, source: Any) -> None:
    """Refuse a teacher other than the one the block was trained with."""
    _check_teacher(model.teacher, teacher, source, "block")
