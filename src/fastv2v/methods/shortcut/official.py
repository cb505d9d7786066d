"""Import a model trained with the official Shortcut-V2V code (github.com/indigopyj/Shortcut-V2V).

The official scripts save the teacher as an upstream CycleGAN/RecycleGAN generator
(``latest_net_G_A.pth``) and the block as its own state dict (``latest_net_ShortcutV2V.pth``),
with the key names :class:`~fastv2v.methods.shortcut.ShortcutBlock` keeps. The block's shape
(feature channels, hidden width, HetConv groups, layers per offset generator) is read off the
tensors; every shape is checked; the global deformable conv's ``offset_conv``, which the
official forward never calls, is dropped. The result is one fastv2v model file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from fastv2v.errors import UserError
from fastv2v.generators import load_generator, upstream_state_dict
from fastv2v.methods.shortcut.block import ShortcutBlock
from fastv2v.methods.shortcut.model_file import ShortcutModel

UNUSED = ("global_deform_conv.offset_conv.weight", "global_deform_conv.offset_conv.bias")


def _read(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass the official Shortcut block file (latest_net_ShortcutV2V.pth).")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"{path} could not be read as a PyTorch checkpoint ({type(exc).__name__}); "
                        "check that it is a complete .pth file.") from None  # fmt: skip
    if not isinstance(state, dict):
        raise UserError(f"{path} holds a {type(state).__name__}, not a state dict.")
    return upstream_state_dict(state)


def _layers(state: dict[str, torch.Tensor], generator: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(rf"{generator}\.model\.(\d+)\.conv3x3\.weight$", k))}
    return len(found)


def infer_block_config(state: dict[str, torch.Tensor], source: str = "the Shortcut file") -> dict[str, int]:
    """``ShortcutBlock`` arguments read off an official state dict."""
    needed = ("cr1.0.weight", "offset_generator_global.model.0.conv3x3.weight")
    absent = [k for k in needed if k not in state]
    if absent:
        raise UserError(f"{source} is not a Shortcut-V2V block state dict (missing keys {', '.join(absent)}); "
                        "pass the latest_net_ShortcutV2V.pth the official training wrote.")  # fmt: skip
    hidden, channels = (int(v) for v in state["cr1.0.weight"].shape[:2])
    per_group = int(state["offset_generator_global.model.0.conv3x3.weight"].shape[1])
    return dict(
        feature_channels=channels, hidden=hidden, groups=max(1, 2 * channels // per_group),
        global_layers=_layers(state, "offset_generator_global"), local_layers=_layers(state, "offset_generator_local"),
    )  # fmt: skip


def load_official_block(path: str | os.PathLike) -> ShortcutBlock:
    """The official block file as a :class:`ShortcutBlock` in eval mode (shapes all checked)."""
    path = Path(path)
    state = {k: v for k, v in _read(path).items() if k not in UNUSED}
    config = infer_block_config(state, str(path))
    try:
        block = ShortcutBlock(**config)
    except (ValueError, UserError) as exc:
        raise UserError(f"{path} describes a block this code cannot build ({exc}).") from None
    expected = block.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]  # fmt: skip
    problems = [f"{label} {_few(keys)}" for label, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)) if keys]  # fmt: skip
    if problems:
        raise UserError(f"{path} does not fit a Shortcut-V2V block with {config} ({'; '.join(problems)}); "
                        "is it a complete latest_net_ShortcutV2V.pth?")  # fmt: skip
    block.load_state_dict(state, strict=True)
    return block.eval()


def import_official(
    teacher: str | os.PathLike, shortcut: str | os.PathLike, interval: int = 3, arch: str | None = None
) -> ShortcutModel:
    """The official teacher generator and Shortcut block as one bundle."""
    generator = load_generator(teacher, arch=arch)
    block = load_official_block(shortcut)
    if block.feature_channels != generator.feature_channels:
        raise UserError(
            f"{shortcut} takes {block.feature_channels}-channel features but the teacher {teacher} gives "
            f"{generator.feature_channels} (ngf {generator.config.get('ngf')}); pass the teacher it was trained with."
        )
    if int(interval) != interval or interval < 1:
        raise UserError(f"the key-frame interval must be a whole number >= 1, not {interval}.")
    source = {"imported_from": {"teacher": Path(teacher).name, "shortcut": Path(shortcut).name,
                                "code": "github.com/indigopyj/Shortcut-V2V"}}  # fmt: skip
    return ShortcutModel(generator, block, int(interval), source)


def _few(items: list[str], limit: int = 4) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")
