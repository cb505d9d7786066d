"""Model files that carry their teacher: the teacher and a method's trained part in one
self-describing ``.safetensors`` (a Shortcut-V2V block, a Fast-Vid2Vid student).

Tensors are ``teacher.<key>`` and ``<part>.<key>``; the metadata is ``{"kind": ..., "generator":
<teacher config>, "<part>": <part config>, "interval": N, "method": {"name": ..., <settings>},
"teacher_fingerprint": ...}`` plus where it came from. ``interval`` is the key-frame interval the
part was trained for; ``method`` is the method the file runs by default with every setting it
takes (one serialised config, read back by :func:`method_settings` and applied by
:mod:`fastv2v.pipeline`, so no setting is lost between writing and reading). The teacher rides along so ``fastv2v translate --model`` and ``fastv2v
bench`` need nothing else, and so key frames are the very teacher the part was distilled from.
Teacher tensors that are exactly representable in float16 (a teacher shipped in float16) are
stored in float16: the same values, half the bytes; the part is stored in float32.

The fingerprint (SHA-256 of the teacher's float32 weights) catches a mismatched teacher: a
distilled part only makes sense with the teacher it was trained on.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from fastv2v.checkpoint import damaged, load_model_file, save_model
from fastv2v.errors import UserError

RESERVED = ("kind", "generator", "interval", "method", "teacher_fingerprint")


def teacher_fingerprint(teacher: nn.Module) -> str:
    """SHA-256 over the teacher's state (names, shapes, float32 values), 16 hex digits."""
    digest = hashlib.sha256()
    for name, tensor in sorted(teacher.state_dict().items()):
        value = tensor.detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{tuple(value.shape)};".encode())
        digest.update(value.numpy().tobytes())
    return digest.hexdigest()[:16]


def compact(tensor: torch.Tensor) -> torch.Tensor:
    """Float16 when that is lossless, else unchanged."""
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point() and tensor.dtype != torch.float16:
        half = tensor.half()
        if torch.equal(half.to(tensor.dtype), tensor):
            return half
    return tensor


def save_bundle(
    path: str | os.PathLike, kind: str, teacher: nn.Module, part_name: str, part: nn.Module, interval: int,
    method: dict, info: dict,
) -> None:
    """Write teacher + part atomically, with the metadata that rebuilds both and the method
    settings (``method``: ``{"name": ..., **settings}``)."""
    tensors = {f"teacher.{k}": compact(v) for k, v in teacher.state_dict().items()}
    tensors.update({f"{part_name}.{k}": v.detach().float().cpu() for k, v in part.state_dict().items()})
    config = {
        "kind": kind, "generator": teacher.config, part_name: part.config, "interval": int(interval),
        "method": dict(method), "teacher_fingerprint": teacher_fingerprint(teacher), **info,
    }  # fmt: skip
    save_model(path, tensors, config)


def read_bundle(path: str | os.PathLike, kind: str, what: str, how: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and config of a ``kind`` file, refusing anything else with one sentence
    (``what``: e.g. "Shortcut-V2V model"; ``how``: the command that makes one)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist; pass the {what} file made by {how}.")
    tensors, config = load_model_file(path)
    found = (config or {}).get("kind")
    if found != kind:
        described = f"a {found} model" if found else "not a fastv2v model file"
        raise UserError(f"{path} is {described}, not a {what}; make one with {how}.")
    return tensors, config


def build_parts(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], builders: dict[str, Callable[[], nn.Module]]
) -> dict[str, nn.Module]:
    """Each ``<name>`` module built and loaded from its ``<name>.*`` tensors. Built once on the
    meta device first and compared with the file's shapes: a config that disagrees with the
    weights (a forged ``ngf=100000``) is refused as damage before anything is allocated."""
    for name, build in builders.items():
        with torch.device("meta"):
            probe = build()
        prefix = f"{name}."
        for key, value in probe.state_dict().items():
            stored = tensors.get(prefix + key)
            if stored is None or tuple(stored.shape) != tuple(value.shape):
                found = "absent" if stored is None else f"{tuple(stored.shape)}"
                raise UserError(damaged(path, f"its {name} config does not match its weights ({prefix}{key}: "
                                              f"config {tuple(value.shape)}, file {found})"))  # fmt: skip
    modules = {name: build() for name, build in builders.items()}
    load_parts(path, tensors, modules)
    return modules


def load_parts(path: str | os.PathLike, tensors: dict[str, torch.Tensor], modules: dict[str, nn.Module]) -> None:
    """Load ``<name>.*`` tensors into each module (strict), naming a damaged file."""
    for name, module in modules.items():
        prefix = f"{name}."
        state = {k[len(prefix) :]: v.float() for k, v in tensors.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise UserError(f"{path} is damaged: its {name} weights do not fit its own config ({first}).") from None


def method_settings(config: dict, default: dict) -> dict[str, Any]:
    """The stored method settings; files written before they were stored in one place keep the
    interval and the reuse gate at the top level, which ``default`` (the kind's defaults) fills."""
    if isinstance(config.get("method"), dict):
        return {**default, **config["method"]}
    legacy = {k: config[k] for k in ("interval", "reuse_below") if k in config and k in default}
    return {**default, **legacy}


def info_of(config: dict, part_name: str) -> dict[str, Any]:
    """The metadata besides what rebuilds the model (e.g. ``training``, ``imported_from``)."""
    return {k: v for k, v in config.items() if k not in RESERVED and k != part_name}


def check_teacher(bundled: nn.Module, teacher: nn.Module, source: Any, part: str) -> None:
    """Refuse a teacher other than the one the bundle's ``part`` was distilled from."""
    theirs, ours = teacher_fingerprint(teacher), teacher_fingerprint(bundled)
    if theirs != ours:
        raise UserError(
            f"{source} was distilled from a different teacher (weights fingerprint {ours}, the given teacher's is "
            f"{theirs}); use the teacher it was trained with, or distil a new {part} for this one."
        )
