"""The Shortcut-V2V model file: one self-describing ``.safetensors`` that bundles the teacher,
the trained block and the default key-frame interval.

Tensors are stored as ``teacher.<key>`` and ``block.<key>`` (the block's keys are the official
Shortcut-V2V ones); the metadata holds ``{"kind": "shortcut", "generator": <teacher config>,
"block": <block config>, "interval": N, "teacher_fingerprint": ...}`` plus where it came from.
The teacher rides along so ``fastv2v translate --model shortcut.safetensors`` needs nothing
else, and so key frames are the very teacher the block was distilled from. Teacher tensors that
are exactly representable in float16 (a teacher shipped in float16) are stored in float16: the
same values, half the bytes.

The fingerprint (SHA-256 of the teacher's float32 weights) is how a mismatched teacher is
caught: a block only makes sense with the features of the teacher it was trained on.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastv2v.checkpoint import load_model_file, save_model
from fastv2v.errors import UserError
from fastv2v.generators import build_generator
from fastv2v.generators.base import SplitGenerator
from fastv2v.methods.shortcut import ShortcutBlock

KIND = "shortcut"


def teacher_fingerprint(teacher: nn.Module) -> str:
    """SHA-256 over the teacher's state (names, shapes, float32 values), 16 hex digits."""
    digest = hashlib.sha256()
    for name, tensor in sorted(teacher.state_dict().items()):
        value = tensor.detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{tuple(value.shape)};".encode())
        digest.update(value.numpy().tobytes())
    return digest.hexdigest()[:16]


class ShortcutModel(nn.Module):
    """A teacher and its Shortcut block. ``model.block(a_t=..., a_ref=..., f_ref=...)`` returns
    ``(predicted body features, extras)``; ``model.teacher`` is the full generator;
    ``model.interval`` the key-frame interval the block was trained for."""

    kind = KIND

    def __init__(self, teacher: SplitGenerator, block: ShortcutBlock, interval: int = 3, info: dict | None = None):
        super().__init__()
        if block.feature_channels != teacher.feature_channels:
            raise UserError(
                f"the Shortcut block takes {block.feature_channels}-channel features but the teacher's head gives "
                f"{teacher.feature_channels}; the block and the teacher do not belong together."
            )
        self.teacher, self.block = teacher, block
        self.interval = int(interval)
        self.info = dict(info or {})

    def forward(self, a_t: torch.Tensor, a_ref: torch.Tensor, f_ref: torch.Tensor):
        return self.block(a_t, a_ref, f_ref)

    def config(self) -> dict[str, Any]:
        return {
            "kind": KIND, "generator": self.teacher.config, "block": self.block.config, "interval": self.interval,
            "teacher_fingerprint": teacher_fingerprint(self.teacher), **self.info,
        }  # fmt: skip


def _compact(tensor: torch.Tensor) -> torch.Tensor:
    """Float16 when that is lossless (a float16-shipped teacher), else unchanged."""
    if tensor.is_floating_point() and tensor.dtype != torch.float16:
        half = tensor.half()
        if torch.equal(half.to(tensor.dtype), tensor):
            return half
    return tensor


def save_shortcut(path: str | os.PathLike, model: ShortcutModel) -> None:
    """Write the bundle atomically (teacher compacted to float16 where lossless, block float32)."""
    tensors = {f"teacher.{k}": _compact(v) for k, v in model.teacher.state_dict().items()}
    tensors.update({f"block.{k}": v.float() for k, v in model.block.state_dict().items()})
    save_model(path, tensors, model.config())


def load_shortcut(
    path: str | os.PathLike, *, device: str | torch.device = "cpu", teacher: SplitGenerator | None = None
) -> ShortcutModel:
    """The bundle at ``path`` in eval mode. With ``teacher``, check that the bundle was made for
    that teacher (same weights) and refuse otherwise."""
    path = Path(path)
    tensors, config = load_model_file(path)
    kind = (config or {}).get("kind")
    if kind != KIND:
        what = f"a {kind} model" if kind else "not a fastv2v model file"
        raise UserError(f"{path} is {what}, not a Shortcut-V2V model; make one with `fastv2v distill shortcut` "
                        "or `fastv2v import shortcut-v2v`.")  # fmt: skip
    g = build_generator(config["generator"]["arch"], **config["generator"])
    b = ShortcutBlock(**config["block"])
    for prefix, module in (("teacher.", g), ("block.", b)):
        state = {k[len(prefix) :]: v.float() for k, v in tensors.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise UserError(f"{path} is damaged: its {prefix[:-1]} weights do not fit its own config ({first}).") from None
    info = {k: v for k, v in config.items() if k not in ("kind", "generator", "block", "interval", "teacher_fingerprint")}
    model = ShortcutModel(g, b, config.get("interval", 3), info)
    if teacher is not None:
        check_teacher(model, teacher, path)
    return model.eval().to(device)


def check_teacher(model: ShortcutModel, teacher: SplitGenerator, source: Any) -> None:
    """Refuse a teacher other than the one the block was trained with."""
    theirs, ours = teacher_fingerprint(teacher), teacher_fingerprint(model.teacher)
    if theirs != ours:
        raise UserError(
            f"{source} was distilled from a different teacher (weights fingerprint {ours}, the given teacher's is "
            f"{theirs}); use the teacher it was trained with, or distil a new block for this one."
        )
