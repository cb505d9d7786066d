"""The dense pass over the converted modules, with every norm observed or frozen.

A key frame runs the real modules (the output is the teacher's, bit for bit) while the engine
is shown every node's input and every norm's input statistics. InstanceNorm has no statistics
of its own to reuse, so the key frame's are frozen as a per-channel ``(scale, shift)``;
:func:`run_frozen` is the dense pass with those frozen norms (what the sparse pass equals with
thresholds 0 and no reach limit, and how a dense head runs between key frames).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from fastv2v.generators.resnet import ResnetBlock
from fastv2v.methods.sparse_engine.graph import _NORMS, _PADS


def _uses_input_stats(m: nn.Module) -> bool:
    return m.training or not m.track_running_stats


def _dense_walk(
    modules: Sequence[nn.Module],
    x: torch.Tensor,
    on_node_input: Callable[[int, torch.Tensor], None] | None,
    norm: Callable[[int, nn.Module, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Run the modules exactly as their ``Sequential`` would (same ops, same order), telling
    the caller each node's input and letting it run (and observe) every norm."""
    counter = {"node": 0, "norm": 0}

    def walk(mods, x):
        node_input = None
        for m in mods:
            if isinstance(m, ResnetBlock):
                x = x + walk(m.conv_block, x)
            elif isinstance(m, nn.Sequential):
                x = walk(m, x)
            elif isinstance(m, (*_PADS, nn.ConstantPad2d)):
                node_input = x
                x = m(x)
            elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                if on_node_input is not None:
                    on_node_input(counter["node"], x if node_input is None else node_input)
                counter["node"] += 1
                node_input = None
                x = m(x)
            elif isinstance(m, _NORMS):
                x = norm(counter["norm"], m, x)
                counter["norm"] += 1
            else:
                x = m(x)
        return x

    return walk(modules, x)


def run_freezing_norms(modules: Sequence[nn.Module], x: torch.Tensor) -> tuple[torch.Tensor, list]:
    """Run the layers as they are (the exact output) and return the per-channel ``(scale,
    shift)`` of every norm, frozen from this input's statistics."""
    affines = []

    def norm(i: int, m: nn.Module, t: torch.Tensor) -> torch.Tensor:
        stats = None
        if _uses_input_stats(m):
            var, mean = torch.var_mean(t, dim=(2, 3), unbiased=False)
            stats = (mean[0], var[0])
        affines.append(_affine(m, stats))
        return m(t)

    return _dense_walk(list(modules), x, None, norm), affines


def run_frozen(modules: Sequence[nn.Module], x: torch.Tensor, affines: list) -> torch.Tensor:
    """Run the layers densely with every norm replaced by its frozen ``(scale, shift)``."""

    def norm(i: int, m: nn.Module, t: torch.Tensor) -> torch.Tensor:
        scale, shift = affines[i]
        return t * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)

    return _dense_walk(list(modules), x, None, norm)


def _affine(m: nn.Module, stats: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A norm as per-channel ``scale, shift``: frozen key-frame statistics or running ones."""
    if stats is not None:
        mean, var = stats
    else:
        mean, var = m.running_mean, m.running_var
    scale = torch.rsqrt(var + m.eps)
    shift = -mean * scale
    if m.weight is not None:
        scale = scale * m.weight
        shift = shift * m.weight + m.bias
    return scale.detach().contiguous(), shift.detach().contiguous()
