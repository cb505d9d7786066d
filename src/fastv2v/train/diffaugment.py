"""DiffAugment (Zhao et al., NeurIPS 2020) for conditional GANs.

Differentiable colour, translation and cutout applied to every image the discriminator sees,
real and generated alike, in both the D and the G step, so that D cannot memorise a small
training set while G still gets gradients through the augmentation. The ops and their ranges
are the official implementation's.

Conditional twist: the conditional input (label map, edge map) gets the SAME geometry as the
image it is paired with (same shift, same cutout hole), so D keeps judging consistent pairs.
Colour changes the image only, by default: colour-jittering a one-hot label map would make it
stop being one; pass ``color_condition=True`` for an image condition where it makes sense.

Randomness is drawn from an optional ``torch.Generator`` (on its own device) so a training run
can checkpoint and restore it; parameters are drawn once (:meth:`DiffAugment.sample`) and may be
applied to several pairs (:meth:`DiffAugment.apply`), e.g. the real and fake pair of one step,
which keeps pix2pixHD feature matching comparing like with like.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastv2v.errors import UserError

OPS = ("color", "translation", "cutout")


def parse_policy(policy: str | None) -> tuple[str, ...]:
    """``"color,translation,cutout"`` -> ops in the given order; ``""``/None -> no ops."""
    ops = tuple(p.strip() for p in (policy or "").split(",") if p.strip())
    bad = [p for p in ops if p not in OPS]
    if bad:
        raise UserError(f"unknown DiffAugment op {bad[0]!r}; use a comma-separated subset of {', '.join(OPS)}.")
    return ops


class DiffAugment:
    """Paired differentiable augmentation; a no-op (inputs returned as they are) for ``""``."""

    def __init__(
        self,
        policy: str = "color,translation,cutout",
        *,
        translation_ratio: float = 0.125,
        cutout_ratio: float = 0.5,
        color_condition: bool = False,
    ):
        self.ops = parse_policy(policy)
        self.translation_ratio, self.cutout_ratio = translation_ratio, cutout_ratio
        self.color_condition = color_condition

    @property
    def enabled(self) -> bool:
        return bool(self.ops)

    def sample(
        self, batch: int, height: int, width: int, *, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Random parameters for ``batch`` pairs, drawn in the official implementation's order."""
        device = generator.device if generator is not None else torch.device("cpu")

        def rand(*shape):
            return torch.rand(*shape, generator=generator, device=device)

        def randint(low, high, *shape):
            return torch.randint(low, high, shape, generator=generator, device=device)

        params: dict[str, torch.Tensor] = {}
        for op in self.ops:
            if op == "color":
                params["brightness"] = rand(batch, 1, 1, 1) - 0.5
                params["saturation"] = rand(batch, 1, 1, 1) * 2
                params["contrast"] = rand(batch, 1, 1, 1) + 0.5
            elif op == "translation":
                sh, sw = int(height * self.translation_ratio + 0.5), int(width * self.translation_ratio + 0.5)
                params["shift_y"] = randint(-sh, sh + 1, batch, 1, 1)
                params["shift_x"] = randint(-sw, sw + 1, batch, 1, 1)
            elif op == "cutout":
                ch, cw = self._cutout_size(height, width)
                params["cut_y"] = randint(0, height + (1 - ch % 2), batch, 1, 1)
                params["cut_x"] = randint(0, width + (1 - cw % 2), batch, 1, 1)
        return params

    def _cutout_size(self, height: int, width: int) -> tuple[int, int]:
        return int(height * self.cutout_ratio + 0.5), int(width * self.cutout_ratio + 0.5)

    def apply(
        self, params: dict[str, torch.Tensor], image: torch.Tensor, condition: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Augment ``image`` (and ``condition`` with the same geometry) with drawn ``params``."""
        if not self.ops:
            return image, condition
        p = {k: v.to(image.device) for k, v in params.items()}
        for op in self.ops:
            if op == "color":
                image = _color(image, p)
                if condition is not None and self.color_condition:
                    condition = _color(condition, p)
            else:
                both = image if condition is None else torch.cat([image, condition], dim=1)
                both = _translate(both, p) if op == "translation" else _cutout(both, p, *self._cutout_size(*both.shape[2:]))
                if condition is not None:
                    image, condition = both[:, : image.shape[1]], both[:, image.shape[1] :]
                else:
                    image = both
        return image, condition

    def __call__(
        self, image: torch.Tensor, condition: torch.Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Draw fresh parameters and apply them."""
        if not self.ops:
            return image, condition
        n, _, h, w = image.shape
        return self.apply(self.sample(n, h, w, generator=generator), image, condition)


def diff_augment(
    image: torch.Tensor,
    condition: torch.Tensor | None = None,
    policy: str = "color,translation,cutout",
    *,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One-call form of :class:`DiffAugment`."""
    return DiffAugment(policy)(image, condition, generator=generator)


def _color(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    x = x + p["brightness"].to(x.dtype)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * p["saturation"].to(x.dtype) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * p["contrast"].to(x.dtype) + mean


def _translate(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """Integer shift with zero fill: ``out[y, x] = in[y + dy, x + dx]`` (gather, differentiable)."""
    n, _, h, w = x.shape
    b, gy, gx = torch.meshgrid(
        torch.arange(n, device=x.device), torch.arange(h, device=x.device), torch.arange(w, device=x.device),
        indexing="ij",
    )  # fmt: skip
    gy = torch.clamp(gy + p["shift_y"] + 1, 0, h + 1)
    gx = torch.clamp(gx + p["shift_x"] + 1, 0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1])
    return padded.permute(0, 2, 3, 1)[b, gy, gx].permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, p: dict[str, torch.Tensor], ch: int, cw: int) -> torch.Tensor:
    """Zero one ``ch x cw`` rectangle per sample (clipped at the border), same for all channels."""
    n, _, h, w = x.shape
    b, gy, gx = torch.meshgrid(
        torch.arange(n, device=x.device), torch.arange(ch, device=x.device), torch.arange(cw, device=x.device),
        indexing="ij",
    )  # fmt: skip
    gy = torch.clamp(gy + p["cut_y"] - ch // 2, 0, h - 1)
    gx = torch.clamp(gx + p["cut_x"] - cw // 2, 0, w - 1)
    mask = torch.ones(n, h, w, dtype=x.dtype, device=x.device)
    mask[b, gy, gx] = 0
    return x * mask.unsqueeze(1)
