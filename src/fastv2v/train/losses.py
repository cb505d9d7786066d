"""GAN, feature-matching and VGG perceptual losses, shared by teacher training and distillation.

Discriminator outputs follow pix2pixHD's convention, which both discriminators in
:mod:`fastv2v.generators.discriminators` produce:

* a tensor: one discriminator's prediction;
* a list of tensors: one discriminator's layer outputs, the last being the prediction;
* a list of such lists: one per scale of a multiscale discriminator.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fastv2v.errors import UserError

GAN_MODES = ("lsgan", "hinge", "vanilla")

Predictions = torch.Tensor | list[torch.Tensor] | list[list[torch.Tensor]]


def final_predictions(predictions: Predictions) -> list[torch.Tensor]:
    """The prediction map of every scale (see the module docstring for the accepted shapes)."""
    if torch.is_tensor(predictions):
        return [predictions]
    if isinstance(predictions[0], (list, tuple)):
        return [scale[-1] for scale in predictions]
    return [predictions[-1]]


def _per_scale_features(features: Predictions) -> list[list[torch.Tensor]]:
    if torch.is_tensor(features):
        return [[features]]
    if isinstance(features[0], (list, tuple)):
        return [list(scale) for scale in features]
    return [list(features)]


class GANLoss(nn.Module):
    """Adversarial loss in the three usual forms, summed over discriminator scales (pix2pixHD).

    * ``lsgan``: least squares to 1 (real) / 0 (fake); pix2pixHD's default, stable gradients.
    * ``vanilla``: binary cross-entropy on logits; pix2pix's default.
    * ``hinge``: D gets ``relu(1 - x)`` on real and ``relu(1 + x)`` on fake, G gets ``-x``
      (SPADE / spectral-norm GANs); the G side therefore ignores ``target_is_real``.

    ``for_discriminator=False`` asks for the generator's loss (only hinge treats it differently).
    """

    def __init__(self, mode: str = "lsgan", real_label: float = 1.0, fake_label: float = 0.0):
        super().__init__()
        if mode not in GAN_MODES:
            raise UserError(f"unknown GAN loss {mode!r}; use one of {', '.join(GAN_MODES)}.")
        self.mode, self.real_label, self.fake_label = mode, real_label, fake_label

    def _single(self, pred: torch.Tensor, target_is_real: bool, for_discriminator: bool) -> torch.Tensor:
        if self.mode == "hinge":
            if not for_discriminator:
                return -pred.mean()
            return F.relu(1.0 - pred).mean() if target_is_real else F.relu(1.0 + pred).mean()
        target = torch.full_like(pred, self.real_label if target_is_real else self.fake_label)
        if self.mode == "lsgan":
            return F.mse_loss(pred, target)
        return F.binary_cross_entropy_with_logits(pred, target)

    def forward(self, predictions: Predictions, target_is_real: bool, for_discriminator: bool = True) -> torch.Tensor:
        preds = final_predictions(predictions)
        loss = self._single(preds[0], target_is_real, for_discriminator)
        for pred in preds[1:]:
            loss = loss + self._single(pred, target_is_real, for_discriminator)
        return loss


def feature_matching_loss(
    fake_features: Predictions, real_features: Predictions, layer_weights: Sequence[float] | None = None
) -> torch.Tensor:
    """pix2pixHD's discriminator feature matching: L1 between D's intermediate features of the
    fake and the real pair, weighted ``1/num_D`` per scale and ``layer_weights`` per layer.

    The prediction (last output of each scale) is left out; real features are detached, so
    only the generator is pulled. Default layer weights are pix2pixHD's ``4 / n_intermediate``
    (the per-scale total is 4 whatever the depth of D).
    """
    fake_scales, real_scales = _per_scale_features(fake_features), _per_scale_features(real_features)
    if len(fake_scales) != len(real_scales):
        raise ValueError(f"fake and real features come from {len(fake_scales)} and {len(real_scales)} scales")
    scale_weight = 1.0 / len(fake_scales)
    total = None
    for fake, real in zip(fake_scales, real_scales):
        n_inter = len(fake) - 1
        if n_inter < 1:
            raise ValueError("feature matching needs intermediate features; the discriminator returned only its prediction")
        weights = [4.0 / n_inter] * n_inter if layer_weights is None else list(layer_weights)
        if len(weights) != n_inter:
            raise ValueError(f"{len(weights)} layer weights for {n_inter} intermediate features")
        for w, f, r in zip(weights, fake[:-1], real[:-1]):
            term = (scale_weight * w) * F.l1_loss(f, r.detach())
            total = term if total is None else total + term
    return total


#: torchvision vgg19 ``features`` layout ("E" config): channels, "M" = max-pool.
_VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


def _vgg19_layer_names() -> list[str]:
    """``relu{block}_{conv}`` / ``conv..`` / ``pool{block}`` for each index of ``vgg19.features``."""
    names, block, conv = [], 1, 0
    for v in _VGG19_CFG:
        if v == "M":
            names.append(f"pool{block}")
            block, conv = block + 1, 0
        else:
            conv += 1
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
    return names


VGG19_LAYERS = {name: i for i, name in enumerate(_vgg19_layer_names())}


def _vgg19_features(upto: int) -> nn.Sequential:
    """``torchvision.models.vgg19().features[:upto + 1]`` with identical indices (hence state-dict
    keys), built directly so that the 120 M-parameter classifier is never allocated."""
    layers: list[nn.Module] = []
    cin = 3
    for v in _VGG19_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(cin, v, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            cin = v
    return nn.Sequential(*layers[: upto + 1])


class VGGPerceptualLoss(nn.Module):
    """Weighted L1 between VGG-19 features of two images in [-1, 1] (pix2pixHD's VGGLoss).

    The ImageNet weights come from a LOCAL file the user passes, never downloaded: torchvision's
    ``vgg19-dcbb9e9d.pth`` (full model or only ``features``), as ``.pth`` or ``.safetensors``.
    Defaults are pix2pixHD's layers and weights (relu1_1..relu5_1, 1/32 .. 1). Unlike pix2pixHD,
    inputs are mapped to ImageNet statistics first (``imagenet_normalize``), which is what the
    weights were trained on. The target's features are detached; the network is frozen.
    """

    DEFAULT_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    DEFAULT_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)

    def __init__(
        self,
        weights_path: str | os.PathLike,
        layers: Sequence[str] = DEFAULT_LAYERS,
        layer_weights: Sequence[float] = DEFAULT_WEIGHTS,
        imagenet_normalize: bool = True,
    ):
        super().__init__()
        unknown = [name for name in layers if name not in VGG19_LAYERS]
        if unknown:
            raise ValueError(f"unknown VGG-19 layers {unknown}; names look like 'relu3_1'")
        if len(layers) != len(layer_weights):
            raise ValueError("give one weight per VGG layer")
        self.indices = [VGG19_LAYERS[name] for name in layers]
        self.layer_weights = [float(w) for w in layer_weights]
        self.imagenet_normalize = imagenet_normalize
        self.features = _vgg19_features(max(self.indices))
        self.features.load_state_dict(_read_vgg19_weights(Path(weights_path), self.features))
        self.features.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> VGGPerceptualLoss:
        super().train(mode)
        self.features.eval()  # frozen feature extractor: never in training mode
        return self

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.imagenet_normalize:
            x = ((x + 1) * 0.5 - self.mean) / self.std
        return x

    def extract(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features at the configured layers, in order."""
        out, wanted = [], set(self.indices)
        x = self._prepare(x)
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in wanted:
                out.append(x)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx = self.extract(x)
        with torch.no_grad():
            fy = self.extract(y)
        loss = None
        for w, a, b in zip(self.layer_weights, fx, fy):
            term = w * F.l1_loss(a, b)
            loss = term if loss is None else loss + term
        return loss


def _read_vgg19_weights(path: Path, features: nn.Sequential) -> dict[str, torch.Tensor]:
    """The ``features`` part of a torchvision VGG-19 weights file, checked key by key."""
    from fastv2v.metrics.perceptual import load_state_dict

    what = "torchvision's VGG-19 ImageNet weights (vgg19-dcbb9e9d.pth)"
    state = load_state_dict(path, what)
    if any(k.startswith("features.") for k in state):
        state = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
    expected = features.state_dict()
    missing = [k for k in expected if k not in state]
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or wrong:
        detail = f"missing {missing[:3]}" if missing else f"shape mismatch at {wrong[:3]}"
        raise UserError(f"{path} is not a VGG-19 weights file ({detail}); pass {what}.")
    return {k: state[k].float() for k in expected}
