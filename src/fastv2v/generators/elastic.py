"""One pruned student, many costs (Anycost GAN's elastic channels) and a memory of the last frame
(TSM's online temporal shift), both on :class:`~fastv2v.generators.student.SpatialStudent`'s
pruned body: the teacher's own layer list at ``width`` base channels.

**Elastic widths and resolutions** (Lin et al., "Anycost GANs", CVPR 2021). A sub-network keeps
the *first* ``k`` of every layer's ``width``-multiple channels (``k``, ``2k``, ``4k`` where the
full student has ``width``, ``2 width``, ``4 width``), and may also run on the input downsampled
by ``divisor`` (2x2 steps, as :func:`~fastv2v.generators.student.halve_input`), its output
brought back to full size bilinearly. So the first channels must be the ones that matter most:
:func:`sort_channels` reorders a pruned student's channels by the L1 norm of their weights
without changing what it computes, and elastic training (:mod:`fastv2v.train.student`) then
teaches every sub-network at once. :func:`run_layers` runs any sub-network on the shared
weights (slices, for training); :func:`subnetwork` copies one out as a plain, smaller
:class:`SpatialStudent` (for inference and export: no slicing per call).

**Online temporal shift** (Lin et al., "TSM", ICCV 2019, online form). In every residual block
the first ``shift`` fraction of the stream's channels entering the residual branch are replaced
by the same channels of the *previous frame's* block input (past only: nothing waits for a
future frame); the identity path keeps the current frame. Zero extra MACs; the previous frame's
channels are the method's explicit per-video state (``past``: one tensor per block), returned
as ``present`` by every call. At a video's first frame (``past`` None) a block uses its own
channels, so the first frame is the un-shifted network. When a sub-network switches mid-video
the channels the last frame computed are used and the rest come from the current frame; a
switch of resolution starts the memory afresh (other feature sizes).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fastv2v.errors import UserError

__all__ = [
    "DIVISORS",
    "Subnet",
    "StudentPass",
    "parse_fraction",
    "run_layers",
    "shift_channels",
    "sort_channels",
    "subnetwork",
]

#: input-resolution divisors a sub-network may run at (each a power of two: 2x2 steps)
DIVISORS = (1, 2, 4)


@dataclass(frozen=True, order=True)
class Subnet:
    """A sub-network of an elastic student: ``width`` base channels on the input divided by ``divisor``."""

    width: int
    divisor: int = 1

    @property
    def label(self) -> str:
        """``w8`` (8 base channels, full input) or ``w8/2`` (half input)."""
        return f"w{self.width}" + (f"/{self.divisor}" if self.divisor > 1 else "")

    @classmethod
    def parse(cls, text: str) -> "Subnet":
        body = str(text).strip().lower().removeprefix("w")
        width, _, divisor = body.partition("/")
        try:
            sub = cls(int(width), int(divisor or 1))
        except ValueError:
            raise UserError(f"a sub-network is written w<width>[/<divisor>] (e.g. w8 or w16/2), not {text!r}.") from None
        if sub.width < 1 or sub.divisor not in DIVISORS:
            raise UserError(f"{text!r}: a sub-network needs a width of at least 1 and an input divisor in "
                            f"{', '.join(map(str, DIVISORS))}.")  # fmt: skip
        return sub


def parse_fraction(text: str | float) -> float:
    """``1/8``, ``0.125`` or ``0`` as a float in [0, 1)."""
    try:
        value = float(Fraction(str(text).strip()))
    except (ValueError, ZeroDivisionError):
        raise UserError(f"the temporal shift is a fraction of channels such as 1/8 or 0.25, not {text!r}.") from None
    if not 0 <= value < 1:
        raise UserError(f"the temporal shift must be at least 0 and below 1 (a fraction of channels), not {text}.")
    return value


def shift_channels(channels: int, shift: float) -> int:
    """How many of ``channels`` the temporal shift replaces (at least one when shifting at all)."""
    return 0 if shift <= 0 else max(1, int(channels * shift))


class StudentPass(NamedTuple):
    """What :func:`run_layers` returns: the output, the body output when ``features`` asked (the
    feature loss's input), and the temporal shift's state for the next frame (one tensor per
    residual block; empty without a shift)."""

    y: torch.Tensor
    features: torch.Tensor | None
    present: tuple[torch.Tensor, ...]


def _is_block(layer: nn.Module) -> bool:
    return hasattr(layer, "conv_block")


def _norm(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    if isinstance(layer, nn.InstanceNorm2d) and not layer.affine and not layer.track_running_stats:
        return F.instance_norm(x, eps=layer.eps)  # the module itself warns on fewer channels
    if isinstance(layer, nn.BatchNorm2d):
        sl = slice(0, c)
        mean = None if layer.running_mean is None else layer.running_mean[sl]
        var = None if layer.running_var is None else layer.running_var[sl]
        training = layer.training or mean is None
        return F.batch_norm(x, mean, var, layer.weight[sl] if layer.affine else None,
                            layer.bias[sl] if layer.affine else None, training, layer.momentum or 0.0, layer.eps)  # fmt: skip
    return layer(x)


def _conv(layer: nn.Conv2d | nn.ConvTranspose2d, x: torch.Tensor, out: int) -> torch.Tensor:
    cin = int(x.shape[1])
    if isinstance(layer, nn.ConvTranspose2d):
        w = layer.weight[:cin, :out]
        b = None if layer.bias is None else layer.bias[:out]
        return F.conv_transpose2d(x, w, b, layer.stride, layer.padding, layer.output_padding, 1, layer.dilation)
    w = layer.weight[:out, :cin]
    b = None if layer.bias is None else layer.bias[:out]
    return F.conv2d(x, w, b, layer.stride, layer.padding, layer.dilation)


def _out_channels(layer: nn.Module) -> int:
    return layer.weight.shape[1] if isinstance(layer, nn.ConvTranspose2d) else layer.weight.shape[0]


def _sequence(layers: Sequence[nn.Module], x: torch.Tensor, scale: Fraction, keep_last: bool) -> torch.Tensor:
    convs = [i for i, m in enumerate(layers) if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d):
            full = int(_out_channels(layer))
            out = full if keep_last and i == convs[-1] else int(full * scale)
            x = _conv(layer, x, out)
        elif isinstance(layer, nn.InstanceNorm2d | nn.BatchNorm2d):
            x = _norm(layer, x)
        else:
            x = layer(x)
    return x


def run_layers(
    student: nn.Module,
    x: torch.Tensor,
    width: int | None = None,
    divisor: int = 1,
    past: Sequence[torch.Tensor] | None = None,
    features: bool = False,
) -> StudentPass:
    """The pruned ``student`` on the full-resolution model input ``x`` as the sub-network of
    ``width`` base channels (None: all) on the input divided by ``divisor``, its temporal shift
    (if it has one) fed by ``past``. ``features``: also the body output (for the feature loss).
    Gradients flow into the shared weights."""
    from fastv2v.generators.student import halve_input

    full = int(student.config["width"])
    width = full if width is None else int(width)
    scale = Fraction(width, full)
    if not 1 <= width <= full:
        raise UserError(f"this student has {full} base channels; a sub-network of {width} does not exist.")
    shift = float(student.config.get("temporal_shift", 0.0))
    h, w = x.shape[-2:]
    for _ in range(divisor.bit_length() - 1):
        x = halve_input(x, student.label_nc)
    layers = list(student.model)
    body_end = student.split[1]  # the residual blocks are all in the body
    present: list[torch.Tensor] = []
    f = _body(layers[:body_end], x, scale, shift, past, present)
    y = _sequence(layers[body_end:], f, scale, keep_last=True)
    if divisor > 1:
        y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
    return StudentPass(y, f if features else None, tuple(present))


def _body(layers: list[nn.Module], x: torch.Tensor, scale: Fraction, shift: float,
          past: Sequence[torch.Tensor] | None, present: list[torch.Tensor]) -> torch.Tensor:  # fmt: skip
    """Head and body: plain layers sliced; each residual block's branch reads the shifted
    channels of ``past`` (its entry, by block order) and appends its own to ``present``."""
    start = 0
    for i, layer in enumerate(layers):
        if not _is_block(layer):
            continue
        x = _sequence(layers[start:i], x, scale, keep_last=False)
        start = i + 1
        n = shift_channels(int(x.shape[1]), shift)
        branch = x
        if n:
            before = past[len(present)] if past is not None and len(present) < len(past) else None
            if before is not None and before.shape[-2:] == x.shape[-2:] and before.shape[0] == x.shape[0]:
                have = min(int(before.shape[1]), n)  # after a switch: the channels the last frame had
                branch = torch.cat([before[:, :have], x[:, have:]], dim=1)
            present.append(x[:, :n])
        x = x + _sequence(list(layer.conv_block), branch, scale, keep_last=False)
    return _sequence(layers[start:], x, scale, keep_last=False)


@torch.no_grad()
def sort_channels(student: nn.Module) -> nn.Module:
    """Reorder a pruned student's channels, in place, so each layer's strongest come first (L1
    norm of their weights, largest first); the student computes the same function (up to float
    summation order). The residual stream keeps one order through every block, set by the last
    downsampling conv. Needs InstanceNorm without affine (or no norm): nothing else to move."""
    if any(isinstance(m, nn.BatchNorm2d) or getattr(m, "affine", False) for m in student.model.modules()):
        raise UserError("an elastic student needs a teacher with instance norm (or none), not batch norm.")
    convs: list[tuple[nn.Module, nn.Module | None]] = []  # (conv, the residual block it is in, or None)
    for layer in student.model:
        if _is_block(layer):
            convs += [(m, layer) for m in layer.conv_block if isinstance(m, nn.Conv2d)]
        elif isinstance(layer, nn.Conv2d | nn.ConvTranspose2d):
            convs.append((layer, None))
    reading: torch.Tensor | None = None  # the order of the channels the next conv reads
    stream: torch.Tensor | None = None
    for index, (conv, block) in enumerate(convs):
        if reading is not None:
            _permute_inputs(conv, reading)
        if index == len(convs) - 1:  # the output image's channels stay as they are
            break
        writes_stream = block is not None and conv is not _first_conv(block)
        order = stream if writes_stream else torch.argsort(_strength(conv), descending=True, stable=True)
        if block is None and convs[index + 1][1] is not None:  # the downsampling conv that starts the stream
            stream = order
        _permute_outputs(conv, order)
        reading = order
    return student


def _first_conv(block: nn.Module) -> nn.Module:
    return next(m for m in block.conv_block if isinstance(m, nn.Conv2d))


def _strength(conv: nn.Module) -> torch.Tensor:
    w = conv.weight.transpose(0, 1) if isinstance(conv, nn.ConvTranspose2d) else conv.weight
    return w.abs().flatten(1).sum(1)


def _permute_outputs(conv: nn.Module, order: torch.Tensor) -> None:
    conv.weight.copy_(conv.weight[:, order] if isinstance(conv, nn.ConvTranspose2d) else conv.weight[order])
    if conv.bias is not None:
        conv.bias.copy_(conv.bias[order])


def _permute_inputs(conv: nn.Module, order: torch.Tensor) -> None:
    conv.weight.copy_(conv.weight[order] if isinstance(conv, nn.ConvTranspose2d) else conv.weight[:, order])


@torch.no_grad()
def subnetwork(student: nn.Module, subnet: Subnet) -> nn.Module:
    """The sub-network ``subnet`` of the pruned ``student`` as a plain :class:`SpatialStudent` of
    ``subnet.width`` base channels (weights copied: the first channels of every layer), running
    on the input divided by ``subnet.divisor``; it keeps the temporal shift and drops the
    elastic list. Equal to :func:`run_layers` with that width and divisor."""
    from fastv2v.generators.student import build_student

    config = dict(student.config)
    full = int(config["width"])
    if subnet.width > full:
        raise UserError(f"this student has {full} base channels; the sub-network {subnet.label} does not exist.")
    config.update(width=subnet.width, divisor=subnet.divisor, elastic=None)
    small = build_student(config)
    for ours, theirs in zip(small.model.modules(), student.model.modules()):
        for name, mine in ours.named_parameters(recurse=False):
            mine.copy_(_leading(getattr(theirs, name), mine.shape))
        for name, mine in ours.named_buffers(recurse=False):
            if mine is not None and mine.dim():
                mine.copy_(_leading(getattr(theirs, name), mine.shape))
    p = next(student.parameters(), None)
    return small.to(p.device if p is not None else "cpu").train(student.training)


def _leading(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The leading block of ``t`` of ``shape`` (the first channels along every axis)."""
    return t[tuple(slice(0, n) for n in shape)]
