"""Conversion: a generator's module tree -> the engine's node graph.

A generator (or a slice of one, such as its body) is converted *programmatically* into a list
of convolution nodes: each node is ``[pad] conv`` followed by an element-wise epilogue (norm,
activation, residual add). No sparse twin of any network is written by hand; any flat
``nn.Sequential`` of pads, ``Conv2d``/``ConvTranspose2d``, norms, point-wise activations and
``ResnetBlock`` converts. A norm right after a conv is marked to be folded into its weights;
any other layer is refused here, before a frame runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from torch import nn

from fastv2v.errors import UserError
from fastv2v.generators.resnet import ResnetBlock

_PADS = {nn.ReflectionPad2d: "reflect", nn.ReplicationPad2d: "replicate", nn.ZeroPad2d: "zero"}
_NORMS = (nn.InstanceNorm2d, nn.BatchNorm2d)
_ACTS = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.ELU, nn.Hardtanh)
_IDENTITY = (nn.Identity, nn.Dropout, nn.Dropout2d)  # inference: dropout is the identity


@dataclass
class _Step:
    """One element-wise step after a conv (or before the first one): act, norm or skip add."""

    kind: str  # "act" | "norm" | "skip"
    module: nn.Module | None = None
    index: int = -1  # norm index, or the node whose input is the residual block's input


@dataclass
class _Node:
    conv: nn.Conv2d | nn.ConvTranspose2d
    transposed: bool
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int, int, int]  # left, right, top, bottom (regular conv only)
    mode: str  # border mode of the padding: reflect / replicate / zero
    fold: int | None = None  # norm folded into this conv's weights
    epilogue: list[_Step] = field(default_factory=list)


def _pad_of(module: nn.Module) -> tuple[str, tuple[int, int, int, int]]:
    for cls, mode in _PADS.items():
        if isinstance(module, cls):
            pad = module.padding
            pad = (pad,) * 4 if isinstance(pad, int) else tuple(pad)
            return mode, pad
    if isinstance(module, nn.ConstantPad2d) and module.value == 0:
        pad = module.padding
        return "zero", ((pad,) * 4 if isinstance(pad, int) else tuple(pad))
    raise TypeError


def _make_node(conv: nn.Module, pending: tuple[str, tuple[int, int, int, int]] | None) -> _Node:
    name = type(conv).__name__
    kernel, stride = tuple(conv.kernel_size), tuple(conv.stride)
    if tuple(conv.dilation) != (1, 1):
        raise UserError(
            f"sparse inference does not support dilated convolutions ({name} with dilation {conv.dilation})."
        )
    if isinstance(conv, nn.ConvTranspose2d):
        if pending is not None:
            raise UserError("sparse inference cannot convert a padding layer in front of a transposed convolution.")
        if conv.padding_mode != "zeros":
            raise UserError(
                f"sparse inference supports only zero padding in transposed convolutions, not {conv.padding_mode!r}."
            )
        return _Node(conv, True, kernel, stride, (0, 0, 0, 0), "zero")
    if isinstance(conv.padding, str):
        raise UserError(f"sparse inference needs numeric conv padding, not padding={conv.padding!r}.")
    ph, pw = conv.padding
    if pending is not None and (ph or pw):
        raise UserError("sparse inference cannot convert a padding layer followed by a padded convolution.")
    if pending is not None:
        mode, pad = pending
    else:
        mode = {"zeros": "zero", "reflect": "reflect", "replicate": "replicate"}.get(conv.padding_mode)
        if mode is None:
            raise UserError(f"sparse inference does not support padding_mode={conv.padding_mode!r}.")
        pad = (pw, pw, ph, ph)
    return _Node(conv, False, kernel, stride, pad, mode)


@dataclass
class _Graph:
    prologue: list[_Step]
    nodes: list[_Node]
    norms: list[nn.Module]


def _compile(modules: Sequence[nn.Module]) -> _Graph:
    prologue: list[_Step] = []
    nodes: list[_Node] = []
    norms: list[nn.Module] = []
    target = prologue
    pending = None

    def walk(mods: Sequence[nn.Module]) -> None:
        nonlocal target, pending
        for m in mods:
            if isinstance(m, ResnetBlock):
                first = next(iter(m.conv_block), None)
                starts_with_conv = isinstance(first, (nn.Conv2d, *_PADS, nn.ConstantPad2d))
                if pending is not None or not starts_with_conv:
                    raise UserError("sparse inference converts residual blocks that start with a pad or a conv.")
                start = len(nodes)
                walk(m.conv_block)
                if len(nodes) == start or pending is not None:
                    raise UserError("a residual block without a convolution cannot be converted.")
                target.append(_Step("skip", index=start))
            elif isinstance(m, nn.Sequential):
                walk(m)
            elif isinstance(m, (*_PADS, nn.ConstantPad2d)):
                if pending is not None:
                    raise UserError("sparse inference cannot convert two padding layers in a row.")
                try:
                    pending = _pad_of(m)
                except TypeError:
                    raise UserError(f"sparse inference supports zero constant padding only, not {m}.") from None
            elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nodes.append(_make_node(m, pending))
                pending = None
                target = nodes[-1].epilogue
            elif pending is not None:
                raise UserError(
                    f"sparse inference needs a convolution after a padding layer, not {type(m).__name__}."
                )
            elif isinstance(m, _NORMS):
                norms.append(m)
                if nodes and target is nodes[-1].epilogue and not target and nodes[-1].fold is None:
                    nodes[-1].fold = len(norms) - 1  # norm right after the conv: folded into it
                else:
                    target.append(_Step("norm", m, len(norms) - 1))
            elif isinstance(m, _ACTS):
                target.append(_Step("act", m))
            elif isinstance(m, _IDENTITY):
                continue
            else:
                raise UserError(
                    f"sparse inference cannot convert a {type(m).__name__} layer; it supports pads, "
                    "Conv2d, ConvTranspose2d, Instance/BatchNorm, point-wise activations and ResnetBlock."
                )

    walk(modules)
    if pending is not None:
        raise UserError("the converted part ends with a padding layer.")
    if not nodes:
        raise UserError("the converted part has no convolution; there is nothing to run sparsely.")
    return _Graph(prologue, nodes, norms)
