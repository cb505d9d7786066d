"""Conditional PatchGAN discriminators (pix2pix) and their multiscale stack (pix2pixHD).

Both return every layer's output, not only the final patch logits: pix2pixHD's feature-matching
loss (and the distillation recipes that reuse it) compare intermediate features of real and
fake pairs, and returning them costs nothing extra. The caller concatenates the conditional
input and the image along channels (``input_nc`` counts both), as pix2pix does.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastv2v.generators.resnet import norm_layer


def init_weights(module: nn.Module, gain: float = 0.02) -> nn.Module:
    """pix2pix / pix2pixHD initialisation: conv and linear weights ~ N(0, gain), biases 0,
    BatchNorm scales ~ N(1, gain). GAN training with these nets was tuned for it (PyTorch's
    default Kaiming-uniform init makes the early discriminator far too confident)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
    return module


class NLayerDiscriminator(nn.Module):
    """PatchGAN: ``n_layers`` stride-2 4x4 convs, one stride-1 conv, then 1-channel patch logits.

    ``forward`` returns the list of the ``n_layers + 2`` layer outputs; the last one is the
    prediction. ``padding=1`` is pix2pix's layer (70x70 receptive field for ``n_layers=3``);
    pix2pixHD uses 2, which also keeps tiny inputs (a 16x16 coarse scale) from shrinking to
    nothing. Conv bias is used only where the norm has no affine shift (upstream rule).
    Spectral norm (usually with ``norm="none"``) is offered for hinge-loss training.
    """

    def __init__(
        self,
        input_nc: int,
        ndf: int = 64,
        n_layers: int = 3,
        norm: str = "instance",
        use_spectral_norm: bool = False,
        padding: int = 1,
        init_gain: float = 0.02,
    ):
        super().__init__()
        if n_layers < 1:
            raise ValueError("n_layers must be at least 1")
        self.config: dict[str, Any] = dict(
            input_nc=input_nc, ndf=ndf, n_layers=n_layers, norm=norm,
            use_spectral_norm=use_spectral_norm, padding=padding,
        )  # fmt: skip
        make_norm = norm_layer(norm)
        use_bias = norm != "batch"
        convs: list[nn.Conv2d] = []

        def conv(cin: int, cout: int, stride: int, bias: bool = True) -> nn.Conv2d:
            layer = nn.Conv2d(cin, cout, kernel_size=4, stride=stride, padding=padding, bias=bias)
            convs.append(layer)
            return layer

        layers: list[nn.Sequential] = [nn.Sequential(conv(input_nc, ndf, 2), nn.LeakyReLU(0.2, True))]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1  # the last hidden layer keeps the resolution
            layers.append(
                nn.Sequential(conv(ndf * prev, ndf * mult, stride, use_bias), make_norm(ndf * mult), nn.LeakyReLU(0.2, True))
            )
        layers.append(nn.Sequential(conv(ndf * mult, 1, 1)))
        self.layers = nn.ModuleList(layers)
        init_weights(self, init_gain)
        if use_spectral_norm:  # after init: the parametrization wraps the initialised weight
            for layer in convs:
                nn.utils.parametrizations.spectral_norm(layer)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        return features


class MultiscaleDiscriminator(nn.Module):
    """pix2pixHD: ``num_D`` PatchGANs, scale ``i`` sees the pair average-pooled ``i`` times.

    Coarse scales judge global layout, the finest one texture, each with the same small net.
    ``forward`` returns one feature list per scale, finest first.
    """

    def __init__(
        self,
        input_nc: int,
        ndf: int = 64,
        n_layers: int = 3,
        num_D: int = 2,
        norm: str = "instance",
        use_spectral_norm: bool = False,
        padding: int = 2,
        init_gain: float = 0.02,
    ):
        super().__init__()
        if num_D < 1:
            raise ValueError("num_D must be at least 1")
        self.config: dict[str, Any] = dict(
            input_nc=input_nc, ndf=ndf, n_layers=n_layers, num_D=num_D, norm=norm,
            use_spectral_norm=use_spectral_norm, padding=padding,
        )  # fmt: skip
        self.discriminators = nn.ModuleList(
            NLayerDiscriminator(input_nc, ndf, n_layers, norm, use_spectral_norm, padding, init_gain)
            for _ in range(num_D)
        )

    @staticmethod
    def downsample(x: torch.Tensor) -> torch.Tensor:
        """pix2pixHD's ``AvgPool2d(3, stride=2, padding=1, count_include_pad=False)``."""
        return F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        results = []
        for i, d in enumerate(self.discriminators):
            if i:
                x = self.downsample(x)
            results.append(d(x))
        return results
