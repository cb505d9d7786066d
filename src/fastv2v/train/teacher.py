"""Train a per-frame teacher: pix2pix / pix2pixHD conditional GAN on (input, target) pairs.

The dataset yields dicts ``{"input": float CxHxW model input (one-hot labels or an image in
[-1, 1], exactly what ``generator.encode_input`` produces), "target": float 3xHxW in [-1, 1]}``.

One step (pix2pixHD's order, so G's feature-matching target and D's loss come from the same
discriminator weights): ``fake = G(input)``; D scores the fake pair (detached) and the real
pair; G's loss is GAN + ``lambda_feat`` * feature matching + ``lambda_l1`` * L1
(+ ``lambda_vgg`` * VGG); G steps, then D steps. With DiffAugment one random augmentation is
drawn per step and applied to the real and both fake pairs, input and image alike.

:class:`TeacherRecipe` is what the one driver (:func:`fastv2v.train.trainer.run_training`) needs
for it. Exact resume: the checkpoint holds G, D, both Adam states, the step, every RNG state and
the DiffAugment generator; stopping at step N and resuming gives the same weights, bit for bit,
as never stopping (on the CPU). Launched by ``torchrun`` the same code trains data-parallel
(DDP, :mod:`fastv2v.train.distributed`): ``batch`` stays the global batch, each process takes its
chunk of it, gradients are averaged, so N processes follow the single-process run to float
rounding and a checkpoint resumes on any number of processes. Only rank 0 writes files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fastv2v.errors import UserError
from fastv2v.generators import SplitGenerator, build_generator, save_generator
from fastv2v.generators.discriminators import MultiscaleDiscriminator, init_weights
from fastv2v.train.config import TrainingConfig
from fastv2v.train.diffaugment import DiffAugment
from fastv2v.train.distributed import TrainingContext, training_autocast
from fastv2v.train.losses import GANLoss, VGGPerceptualLoss, feature_matching_loss
from fastv2v.train.recipe import Batch, Models, Optimizers, Recipe, adam_optimizers, eval_mode
from fastv2v.train.samples import save_grid
from fastv2v.train.trainer import run_training

EXPORT = "generator.safetensors"
TRAINED = ("G", "D")


@dataclass
class TeacherTrainingConfig(TrainingConfig):
    """Everything that defines a teacher training run (stored in the checkpoint and the export).

    Loss weights default to pix2pixHD's recipe with L1 standing in for its VGG term when no
    VGG weights are given: LSGAN over 2 scales + 10 x feature matching + 10 x L1 (+ 10 x VGG
    with ``vgg_weights``). Feature matching is what keeps outputs sharp; pix2pix's
    100 x L1 with vanilla GAN and one scale (``gan_mode="vanilla"``, ``lambda_l1=100``,
    ``lambda_feat=0``, ``num_D=1``) is blurrier but also available.

    ``generator`` holds the generator's constructor arguments besides ``arch``, e.g.
    ``{"ngf": 32, "label_nc": 12}`` for label maps or ``{"ngf": 32, "input_nc": 1}`` for edge
    maps. ``size`` (H, W), when given, is checked against the data. ``decay_steps`` > 0 makes
    the learning rate fall linearly to 0 over the last that many steps (pix2pix's schedule).
    ``diffaugment`` is a policy such as ``"color,translation,cutout"`` ("" = off).
    ``batch`` is the global batch: under torchrun each of N processes takes ``batch / N``.
    ``precision`` ``"bf16"`` runs forward passes and losses under bfloat16 autocast (fp16 is
    refused: it would need loss scaling).
    """

    out_dir: str = "runs/teacher"
    arch: str = "resnet_9blocks"
    generator: dict[str, Any] = field(default_factory=lambda: {"ngf": 64})
    size: tuple[int, int] | None = None
    batch: int = 1
    steps: int = 10_000
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    decay_steps: int = 0
    gan_mode: str = "lsgan"
    lambda_l1: float = 10.0
    lambda_feat: float = 10.0
    lambda_vgg: float = 10.0
    vgg_weights: str | None = None
    ndf: int = 64
    num_D: int = 2
    n_layers_D: int = 3
    norm_D: str = "instance"
    spectral_norm_D: bool = False
    diffaugment: str = ""
    checkpoint_every: int = 1000
    sample_every: int = 500
    seed: int = 0
    resume: bool = False
    force: bool = False  # resume even with settings other than the checkpoint's
    shuffle: bool = True
    num_workers: int = 0
    device: str = "cpu"
    precision: str = "fp32"

    def validate(self) -> None:
        super().validate()
        GANLoss(self.gan_mode)
        DiffAugment(self.diffaugment)


def build_teacher_models(config: TeacherTrainingConfig, device: str | torch.device | None = None) -> dict[str, nn.Module]:
    """``{"G": generator, "D": multiscale discriminator[, "vgg": perceptual loss]}``, initialised
    pix2pix-style (N(0, 0.02)) and in training mode. Seed the global RNG first for a
    reproducible init."""
    device = torch.device(device or config.device)
    g = init_weights(build_generator(config.arch, **config.generator))
    d = MultiscaleDiscriminator(
        g.input_nc + g.output_nc, ndf=config.ndf, n_layers=config.n_layers_D, num_D=config.num_D,
        norm=config.norm_D, use_spectral_norm=config.spectral_norm_D,
    )  # fmt: skip
    models: dict[str, nn.Module] = {"G": g.to(device).train(), "D": d.to(device).train()}
    if config.vgg_weights and config.lambda_vgg > 0:
        models["vgg"] = VGGPerceptualLoss(config.vgg_weights).to(device)
    return models


def build_optimizers(config: TeacherTrainingConfig, models: Mapping[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
    """Adam for G and for D with the configured learning rate and betas."""
    return adam_optimizers(config, models, TRAINED)


def train_step(
    models: Mapping[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
    batch: Mapping[str, torch.Tensor],
    config: TeacherTrainingConfig,
    *,
    generator: torch.Generator | None = None,
    ctx: TrainingContext | None = None,
) -> dict[str, float]:
    """One D and one G update on ``batch``; returns the loss terms as floats.

    ``generator`` drives DiffAugment (the global RNG when None). Under DDP (``models`` wrapped
    by ``ctx.wrap``) ``batch`` is this process's chunk of the global batch and ``ctx`` makes
    DiffAugment draw parameters for the global batch and keep this chunk's, as one process
    would. The forward passes and losses run under ``config.precision``'s autocast. Keys: ``G_GAN``, ``G_feat``,
    ``G_L1``, ``G_VGG`` (when a VGG loss is configured), ``D_real``, ``D_fake``; unweighted
    values, except that the GAN terms are summed over discriminator scales.
    """
    g, d = models["G"], models["D"]
    device = next(g.parameters()).device
    x = batch["input"].to(device=device, dtype=torch.float32)
    real = batch["target"].to(device=device, dtype=torch.float32)
    gan = GANLoss(config.gan_mode)
    augment = DiffAugment(config.diffaugment)
    params = None
    if augment.enabled:
        world = ctx.world_size if ctx is not None else 1
        params = augment.sample(x.shape[0] * world, *x.shape[2:], generator=generator)
        params = ctx.shard(params) if ctx is not None else params

    def pair(image: torch.Tensor) -> torch.Tensor:
        image, cond = augment.apply(params, image, x) if params is not None else (image, x)
        return torch.cat([cond, image], dim=1)

    with training_autocast(device, config.precision):
        fake = g(x)
        pred_fake_d = d(pair(fake.detach()))
        pred_real = d(pair(real))
        loss_d_fake = gan(pred_fake_d, False)
        loss_d_real = gan(pred_real, True)

        d.requires_grad_(False)  # G's pass through D must not accumulate D gradients
        try:
            pred_fake_g = d(pair(fake))
        finally:
            d.requires_grad_(True)
        losses = {"G_GAN": gan(pred_fake_g, True, for_discriminator=False)}
        losses["G_feat"] = feature_matching_loss(pred_fake_g, pred_real) if config.lambda_feat else fake.new_zeros(())
        losses["G_L1"] = F.l1_loss(fake, real)
        loss_g = losses["G_GAN"] + config.lambda_feat * losses["G_feat"] + config.lambda_l1 * losses["G_L1"]
        if "vgg" in models:
            losses["G_VGG"] = models["vgg"](fake, real)
            loss_g = loss_g + config.lambda_vgg * losses["G_VGG"]

    optimizers["G"].zero_grad(set_to_none=True)
    loss_g.backward()
    optimizers["G"].step()
    optimizers["D"].zero_grad(set_to_none=True)
    (0.5 * (loss_d_fake + loss_d_real)).backward()
    optimizers["D"].step()

    losses["D_real"], losses["D_fake"] = loss_d_real, loss_d_fake
    return {k: float(v.detach()) for k, v in losses.items()}


def train_teacher(
    config: TeacherTrainingConfig,
    dataset: Iterable[Mapping[str, torch.Tensor]],
    *,
    sample_batch: Mapping[str, torch.Tensor] | list[Mapping[str, torch.Tensor]] | None = None,
    progress: bool = True,
    max_steps: int | None = None,
    ctx: TrainingContext | None = None,
) -> Path:
    """Train (or, with ``config.resume``, continue) a teacher; returns the exported generator.

    Writes into ``config.out_dir``: ``checkpoint.pt`` every ``checkpoint_every`` steps and when
    stopping, ``samples/step_NNNNNN.png`` (input | output | target rows of ``sample_batch``)
    every ``sample_every`` steps and at the last step, ``log.jsonl`` (one line of losses per
    step) and ``generator.safetensors`` when the call returns. ``max_steps`` caps the steps
    run by this call (a time-boxed chunk; resume later). Seeds the global RNGs from
    ``config.seed`` (training must be reproducible); thread counts are left to the caller.

    ``ctx`` (default: :func:`~fastv2v.train.distributed.init_distributed`, which joins a job
    torchrun started and is a single process otherwise) makes the run data-parallel: every
    process trains on its chunk of each global batch, rank 0 writes every file (logging the
    losses averaged over processes), every process loads the checkpoint when resuming.
    """
    return run_training(
        config, dataset, lambda ctx: TeacherRecipe(config, ctx), sample_batch=sample_batch, progress=progress,
        max_steps=max_steps, ctx=ctx,
    )  # fmt: skip


class TeacherRecipe(Recipe):
    """A generator trained from scratch against its discriminator on (input, target) pairs.
    ``ctx`` lets DiffAugment draw for the global batch and keep this process's chunk; its
    generator is checkpointed so that a resumed run draws the same augmentations."""

    desc = "teacher"
    export_name = EXPORT
    trained = TRAINED
    sample_keys = ("input", "target")

    def __init__(self, config: TeacherTrainingConfig, ctx: TrainingContext):
        super().__init__(config)
        self.ctx = ctx
        self.augment_rng = torch.Generator().manual_seed(config.seed + 1)

    def build_models(self, device: torch.device) -> dict[str, nn.Module]:
        return build_teacher_models(self.config, device)

    def train_step(self, models: Models, optimizers: Optimizers, batch: Batch) -> dict[str, float]:
        return train_step(models, optimizers, batch, self.config, generator=self.augment_rng, ctx=self.ctx)

    def generators(self) -> dict[str, torch.Generator]:
        return {"diffaugment": self.augment_rng}

    def describe(self, losses: Mapping[str, float]) -> str:
        names = {"G_GAN": "G", "G_feat": "feat", "G_L1": "L1", "G_VGG": "vgg", "D_real": "Dr", "D_fake": "Df"}
        return " ".join(f"{names.get(k, k)}={v:.3f}" for k, v in losses.items())

    def check_batch(self, batch: Batch, models: Models) -> None:
        """Catch a dataset / generator mismatch on the first batch with a sentence, not a conv error."""
        g: SplitGenerator = models["G"]  # type: ignore[assignment]
        if not isinstance(batch, Mapping) or "input" not in batch or "target" not in batch:
            raise UserError("training samples must be dicts with 'input' and 'target' tensors; adapt the dataset.")
        x, y = batch["input"], batch["target"]
        if x.dim() != 4 or y.dim() != 4:
            raise UserError(
                f"training samples must be CxHxW tensors, got input {tuple(x.shape[1:])} and target {tuple(y.shape[1:])}."
            )
        if x.shape[1] != g.input_nc:
            raise UserError(
                f"the data gives {x.shape[1]}-channel inputs but the generator takes {g.input_nc}; "
                "set label_nc (label maps) or input_nc (images) in the generator config to match."
            )
        if y.shape[1] != g.output_nc:
            raise UserError(
                f"the data gives {y.shape[1]}-channel targets but the generator outputs {g.output_nc}; set output_nc."
            )
        if x.shape[2:] != y.shape[2:]:
            raise UserError(f"inputs are {tuple(x.shape[2:])} but targets {tuple(y.shape[2:])}; pairs must have one size.")
        h, w = x.shape[2:]
        self.check_frame_size(h, w)
        g.check_size(h, w, "the training data")

    def write_sample(self, path: Path, models: Models, sample: Batch) -> None:
        write_sample_grid(path, models["G"], sample)  # type: ignore[arg-type]

    def export(self, path: Path, models: Models, training: dict[str, Any]) -> None:
        save_generator(path, models["G"], training=training)


def label_palette(n: int) -> torch.Tensor:
    """Fixed ``n x 3`` colours in [0, 1] for class IDs (the PASCAL VOC bit-interleaving map,
    also pix2pixHD's for non-Cityscapes data): distinct, stable across runs, any ``n``."""
    pal = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return torch.from_numpy(pal).float() / 255.0


def visualize_input(x: torch.Tensor, label_nc: int = 0) -> torch.Tensor:
    """Model input -> RGB in [0, 1]: label inputs as palette colours of the argmax class (extra
    channels such as instance edges ignored), image inputs mapped from [-1, 1]."""
    if label_nc > 0:
        ids = x[:, :label_nc].argmax(dim=1)
        return label_palette(label_nc).to(x.device)[ids].permute(0, 3, 1, 2)
    rgb = (x[:, :3] if x.shape[1] >= 3 else x[:, :1].expand(-1, 3, -1, -1)).clamp(-1, 1)
    return (rgb + 1) / 2


@torch.no_grad()
def write_sample_grid(path: str | Path, g: SplitGenerator, sample: Mapping[str, torch.Tensor]) -> None:
    """PNG with one row per sample: input | output | target. G runs in eval mode (no dropout,
    so writing samples draws no random numbers and leaves training unchanged)."""
    device = next(g.parameters()).device
    x = sample["input"].to(device=device, dtype=torch.float32)
    y = sample["target"].to(device=device, dtype=torch.float32)
    with eval_mode(g):
        fake = g(x)
    save_grid(path, [visualize_input(x, g.label_nc), (fake.clamp(-1, 1) + 1) / 2, (y.clamp(-1, 1) + 1) / 2])
