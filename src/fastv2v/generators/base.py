"""What every teacher generator declares: its head / body / tail split and its input encoding.

A generator here is one flat ``nn.Sequential`` named ``model`` (the upstream layout, so upstream
checkpoints load unchanged). The split is two indices into it: ``head = model[:h]``,
``body = model[h:b]``, ``tail = model[b:]``, and ``tail(body(head(x))) == model(x)`` exactly,
because it is the same modules run in the same order.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fastv2v.errors import UserError


class SplitGenerator(nn.Module):
    """Base class: a flat upstream ``model`` plus the split and input description.

    Subclasses set ``self.model``, ``self.split`` (head end, body end), ``self.config``
    (the JSON-serialisable constructor arguments, with ``arch``), ``self.size_multiple``
    (input sides must be multiples of it) and ``self.label_nc`` (0 for image input).
    """

    model: nn.Sequential
    split: tuple[int, int]
    config: dict[str, Any]
    size_multiple: int
    label_nc: int = 0
    use_instance: bool = False
    input_nc: int
    output_nc: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    @property
    def head(self) -> nn.Sequential:
        return self.model[: self.split[0]]

    @property
    def body(self) -> nn.Sequential:
        return self.model[self.split[0] : self.split[1]]

    @property
    def tail(self) -> nn.Sequential:
        return self.model[self.split[1] :]

    @property
    def feature_channels(self) -> int:
        """Channels of the head output and of the body output (they are equal by design)."""
        return int(self.config["ngf"]) * 2

    @property
    def input_kind(self) -> str:
        return "labels" if self.label_nc > 0 else "image"

    def encode_input(self, frames: torch.Tensor, instances: torch.Tensor | None = None) -> torch.Tensor:
        """Model input from raw frames.

        Image input: uint8 ``N x H x W x C`` -> float ``N x C x H x W`` in [-1, 1], computed as
        upstream's ``Normalize(0.5, 0.5)`` after ``ToTensor``. Label input: integer ``N x H x W``
        class IDs -> one-hot ``label_nc`` channels, plus the pix2pixHD instance-boundary channel
        when the generator uses one (boundaries of ``instances``, or of the labels if none given).
        """
        device = next(self.parameters()).device
        if self.label_nc == 0:
            if frames.dim() == 3:  # a single-channel image without its channel axis
                frames = frames.unsqueeze(-1)
            x = frames.to(device).permute(0, 3, 1, 2).float().div(255.0)
            if x.shape[1] != self.input_nc:
                raise UserError(
                    f"the model takes {self.input_nc}-channel frames but got {x.shape[1]} channels; "
                    "give it the kind of input it was trained on."
                )
            return (x - 0.5) / 0.5
        labels = frames.to(device).long()
        if labels.dim() == 4:
            labels = labels[..., 0]
        one_hot = torch.zeros(labels.shape[0], self.label_nc, *labels.shape[1:], device=device)
        one_hot.scatter_(1, labels.unsqueeze(1), 1.0)
        if not self.use_instance:
            return one_hot
        edges = instance_edges(labels if instances is None else instances.to(device).long())
        return torch.cat([one_hot, edges], dim=1)

    @staticmethod
    def decode_output(y: torch.Tensor) -> torch.Tensor:
        """Float ``N x C x H x W`` in [-1, 1] -> uint8 ``N x H x W x C`` (rounded, not truncated)."""
        return ((y.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)

    def check_size(self, height: int, width: int, source: str = "the input") -> None:
        m = self.size_multiple
        if height % m or width % m:
            raise UserError(
                f"{source} is {height}x{width} but this generator needs sides that are multiples of {m}; "
                f"pass --size with such a size (e.g. {height // m * m or m}x{width // m * m or m})."
            )


def instance_edges(instances: torch.Tensor) -> torch.Tensor:
    """pix2pixHD's boundary map: 1 where a pixel's instance differs from a 4-neighbour."""
    t = instances
    edge = torch.zeros_like(t, dtype=torch.bool)
    horizontal = t[:, :, 1:] != t[:, :, :-1]
    vertical = t[:, 1:, :] != t[:, :-1, :]
    edge[:, :, 1:] |= horizontal
    edge[:, :, :-1] |= horizontal
    edge[:, 1:, :] |= vertical
    edge[:, :-1, :] |= vertical
    return edge.unsqueeze(1).float()
