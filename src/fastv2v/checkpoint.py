"""Self-describing checkpoints: safetensors weights plus a JSON config in the file's metadata.

A model file carries everything needed to rebuild its module (``{"kind": ..., "config": ...}``),
so ``fastv2v translate in.mp4 out.mp4 --model X.safetensors`` needs no other flag.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from fastv2v.atomic import atomic_path
from fastv2v.errors import UserError
from fastv2v.model_schema import config_problem

CONFIG_KEY = "fastv2v"


def save_model(path: str | os.PathLike, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    """Write ``tensors`` and ``config`` (JSON-serialisable) atomically to a .safetensors file."""
    from safetensors.torch import save_file

    # safetensors refuses shared or non-contiguous storage; weights are small, so copy.
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata={CONFIG_KEY: json.dumps(config, sort_keys=True)})


def read_config(path: str | os.PathLike) -> dict[str, Any] | None:
    """The fastv2v config stored in a .safetensors file, or None for a plain safetensors file;
    checked against :mod:`fastv2v.model_schema` so that a damaged file fails here, named, not
    deep inside a module constructor."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise UserError(f"{path} is not a readable .safetensors file ({exc}); re-export or re-download it.") from None
    text = meta.get(CONFIG_KEY)
    if not text:
        return None
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise UserError(damaged(path, f"its metadata is not valid JSON ({exc})")) from None
    problem = config_problem(config)
    if problem:
        raise UserError(damaged(path, problem))
    return config


def damaged(path: str | os.PathLike, problem: str) -> str:
    """The one sentence for a model file whose metadata breaks the schema."""
    return f"{path} is damaged: {problem}; re-export it, or use the original file."


def load_model_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Tensors and config of a .safetensors file, with a clear error for a broken file."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass the path of a model file with --model.")
    config = read_config(path)
    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise UserError(f"{path} could not be read ({exc}); the file may be truncated, re-export it.") from None
    return tensors, config
