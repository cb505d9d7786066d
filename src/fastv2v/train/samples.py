"""The sample pictures a run writes: its fixed sample batch and the PNG grid drawn from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from fastv2v.atomic import atomic_path


def collate_sample(sample: Any, keys: Sequence[str]) -> dict[str, torch.Tensor] | None:
    """``keys`` of a sample batch as ``N x C x H x W`` tensors: a batch (dict) as given, a list of
    dataset items collated, a lone item's ``C x H x W`` tensors made a batch of one."""
    if sample is None:
        return None
    if not isinstance(sample, Mapping):
        sample = torch.utils.data.default_collate(list(sample))
    return {k: sample[k] if sample[k].dim() == 4 else sample[k].unsqueeze(0) for k in keys}


def save_grid(path: str | Path, columns: Sequence[torch.Tensor]) -> None:
    """A PNG with one row per sample and one column per ``N x C x H x W`` tensor in [0, 1]
    (one channel shown as grey), written atomically so a killed run leaves no half picture."""
    from torchvision.utils import save_image

    columns = [c.expand(-1, 3, -1, -1) if c.shape[1] == 1 else c for c in columns]
    grid = torch.stack(columns, dim=1).flatten(0, 1).cpu()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_image(grid, str(tmp), nrow=len(columns), padding=2, format="png")
