"""ResNet-style generators whose layers and ``state_dict`` keys are exactly upstream's.

* :class:`ResnetGenerator`: pytorch-CycleGAN-and-pix2pix's ``ResnetGenerator`` (also used by
  RecycleGAN and Unsupervised-RecycleGAN): two stride-2 downsamplings, ``n_blocks`` residual
  blocks, conv bias only with InstanceNorm.
* :class:`GlobalGenerator`: pix2pixHD's ``GlobalGenerator`` (vid2vid's first scale):
  ``n_downsampling`` stages, conv bias always, label-map or image input.

Both are one flat ``nn.Sequential`` called ``model``, so ``model.10.conv_block.1.weight`` etc.
match upstream files key for key.
"""

from __future__ import annotations

import functools
from typing import Any

from torch import nn

from fastv2v.generators.base import SplitGenerator

NORMS = ("instance", "batch", "none")
PADDINGS = ("reflect", "replicate", "zero")


def norm_layer(norm: str):
    """Upstream's ``get_norm_layer``: InstanceNorm without affine or running stats."""
    if norm == "instance":
        return functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
    if norm == "batch":
        return functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True)
    if norm == "none":
        return lambda channels: nn.Identity()
    raise ValueError(f"norm must be one of {NORMS}, not {norm!r}")


class ResnetBlock(nn.Module):
    """``x + conv_block(x)``; ``conv_block`` = pad, conv3x3, norm, ReLU, [dropout], pad, conv3x3, norm."""

    def __init__(self, dim: int, padding_type: str, norm, use_dropout: bool, use_bias: bool):
        super().__init__()
        layers: list[nn.Module] = []
        for second in (False, True):
            pad = 0
            if padding_type == "reflect":
                layers.append(nn.ReflectionPad2d(1))
            elif padding_type == "replicate":
                layers.append(nn.ReplicationPad2d(1))
            elif padding_type == "zero":
                pad = 1
            else:
                raise ValueError(f"padding_type must be one of {PADDINGS}, not {padding_type!r}")
            layers += [nn.Conv2d(dim, dim, kernel_size=3, padding=pad, bias=use_bias), norm(dim)]
            if not second:
                layers.append(nn.ReLU(True))
                if use_dropout:
                    layers.append(nn.Dropout(0.5))
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv_block(x)


def resnet_layers(
    input_nc: int,
    output_nc: int,
    ngf: int,
    n_downsampling: int,
    n_blocks: int,
    norm: str,
    use_dropout: bool,
    padding_type: str,
    use_bias: bool,
) -> list[nn.Module]:
    """The shared encoder / residual blocks / decoder layer list of both upstream generators."""
    make_norm = norm_layer(norm)
    layers: list[nn.Module] = [
        nn.ReflectionPad2d(3),
        nn.Conv2d(input_nc, ngf, kernel_size=7, padding=0, bias=use_bias),
        make_norm(ngf),
        nn.ReLU(True),
    ]
    for i in range(n_downsampling):
        mult = 2**i
        layers += [
            nn.Conv2d(ngf * mult, ngf * mult * 2, kernel_size=3, stride=2, padding=1, bias=use_bias),
            make_norm(ngf * mult * 2),
            nn.ReLU(True),
        ]
    mult = 2**n_downsampling
    for _ in range(n_blocks):
        layers.append(ResnetBlock(ngf * mult, padding_type, make_norm, use_dropout, use_bias))
    for i in range(n_downsampling):
        mult = 2 ** (n_downsampling - i)
        layers += [
            nn.ConvTranspose2d(
                ngf * mult, ngf * mult // 2, kernel_size=3, stride=2, padding=1, output_padding=1, bias=use_bias
            ),
            make_norm(ngf * mult // 2),
            nn.ReLU(True),
        ]
    layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0), nn.Tanh()]
    return layers


def shortcut_split(n_downsampling: int, n_blocks: int) -> tuple[int, int]:
    """Shortcut-V2V's cut: head ends after the first downsampling conv (before its norm); body
    ends after the transposed conv that returns to that resolution (before its norm).

    For the 2-downsampling ResNet generator this is (5, 11 + n_blocks): 5/17 for 6 blocks.
    """
    head_end = 5
    body_end = 4 + 3 * n_downsampling + n_blocks + 3 * (n_downsampling - 2) + 1
    return head_end, body_end


class ResnetGenerator(SplitGenerator):
    """CycleGAN / pix2pix ``resnet_{n}blocks`` generator (upstream-identical layers and keys)."""

    def __init__(
        self,
        input_nc: int = 3,
        output_nc: int = 3,
        ngf: int = 64,
        n_blocks: int = 9,
        norm: str = "instance",
        use_dropout: bool = False,
        padding_type: str = "reflect",
        label_nc: int = 0,
    ):
        super().__init__()
        if label_nc:
            input_nc = label_nc
        self.config: dict[str, Any] = dict(
            arch=f"resnet_{n_blocks}blocks", input_nc=input_nc, output_nc=output_nc, ngf=ngf,
            n_blocks=n_blocks, norm=norm, use_dropout=use_dropout, padding_type=padding_type, label_nc=label_nc,
        )  # fmt: skip
        self.input_nc, self.output_nc, self.label_nc = input_nc, output_nc, label_nc
        use_bias = norm == "instance"  # upstream: bias only where the norm has no affine shift
        self.model = nn.Sequential(
            *resnet_layers(input_nc, output_nc, ngf, 2, n_blocks, norm, use_dropout, padding_type, use_bias)
        )
        self.split = shortcut_split(2, n_blocks)
        self.size_multiple = 4


class GlobalGenerator(SplitGenerator):
    """pix2pixHD ``GlobalGenerator`` (vid2vid's first scale) with label-map or image input.

    ``label_nc > 0``: integer label maps are one-hot encoded to ``label_nc`` channels, plus one
    instance-boundary channel when ``use_instance``; ``label_nc == 0``: ``input_nc``-channel images.
    """

    def __init__(
        self,
        label_nc: int = 0,
        input_nc: int = 3,
        output_nc: int = 3,
        ngf: int = 64,
        n_downsampling: int = 4,
        n_blocks: int = 9,
        norm: str = "instance",
        padding_type: str = "reflect",
        use_instance: bool = False,
    ):
        super().__init__()
        if n_downsampling < 2:
            raise ValueError("the head/body/tail split needs at least 2 downsampling stages")
        if label_nc:
            input_nc = label_nc + int(use_instance)
        self.config = dict(
            arch="global", label_nc=label_nc, input_nc=input_nc, output_nc=output_nc, ngf=ngf,
            n_downsampling=n_downsampling, n_blocks=n_blocks, norm=norm, padding_type=padding_type,
            use_instance=use_instance,
        )  # fmt: skip
        self.input_nc, self.output_nc = input_nc, output_nc
        self.label_nc, self.use_instance = label_nc, use_instance
        self.model = nn.Sequential(
            *resnet_layers(input_nc, output_nc, ngf, n_downsampling, n_blocks, norm, False, padding_type, True)
        )
        self.split = shortcut_split(n_downsampling, n_blocks)
        self.size_multiple = 2**n_downsampling
