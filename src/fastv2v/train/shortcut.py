"""Distil a Shortcut-V2V block from a frozen teacher (Chung et al., ICCV 2023, section 3.3).

A sample is a pair of model inputs (frame k, frame k + d), d drawn uniformly from
``1 .. max_gap`` (``interval - 1`` by default, the paper's rule; larger for the adaptive
refresh, which may hold a reference longer). The teacher, frozen and in eval mode, gives the
reference ``a_ref, f_ref, O_ref`` and the targets ``a_t, f_t, O_t``; the block predicts
``f^_t = S(a_t, a_ref, f_ref)`` and the teacher's own tail renders ``O^_t`` (gradients flow
through the frozen tail into the block). Losses, with the paper's weights:

* feature L1 ``|f^_t - f_t|`` (x5),
* alignment L1 between the *unmasked* warped reference features and ``f_t`` (x5),
* output L1 ``|O^_t - O_t|`` (x10), and a perceptual loss (x10) only with a local VGG19 file,
* LSGAN with a spectral-norm PatchGAN whose real samples are teacher outputs (x1),
* temporal LSGAN with a spectral-norm 3-D PatchGAN on the (O_ref, O) pair (x1): real is
  ``(O_ref, O_t)``, fake ``(O_ref, O^_t)``, and the block is trained to make its pair look
  *real*. (The released code's generator-side temporal target is inverted, which trains the
  block away from temporal consistency; this does not copy that.)

Adam (2e-4, 0.5/0.999) for the block and both discriminators. :class:`ShortcutRecipe` is what the
one driver (:func:`fastv2v.train.trainer.run_training`) needs for it: data-parallel under
``torchrun``, atomic checkpoints that resume exactly; the run ends by writing one self-describing
model file (teacher + block + interval, :mod:`fastv2v.methods.shortcut.model_file`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from fastv2v.errors import UserError
from fastv2v.generators.base import SplitGenerator
from fastv2v.generators.discriminators import NLayerDiscriminator
from fastv2v.methods.shortcut.block import ShortcutBlock
from fastv2v.methods.shortcut.model_file import ShortcutModel, save_shortcut
from fastv2v.train.config import DistillationConfig
from fastv2v.train.distill import DistillationRecipe
from fastv2v.train.distributed import TrainingContext, training_autocast
from fastv2v.train.losses import GANLoss, VGGPerceptualLoss
from fastv2v.train.recipe import Batch, Models, Optimizers, adam_optimizers, eval_mode
from fastv2v.train.samples import save_grid
from fastv2v.train.trainer import run_training

EXPORT = "shortcut.safetensors"
TRAINED = ("block", "D", "D_T")


@dataclass
class ShortcutTrainingConfig(DistillationConfig):
    """Everything that defines a distillation run (stored in the checkpoint and the model file).

    ``teacher``: the teacher's model file. ``hidden`` None: half the feature channels (the
    paper's 64 for 128). ``max_gap`` None: ``interval - 1`` (at least 1). ``reference_skip``:
    the block adds the warped full reference features (see :class:`ShortcutBlock`; False
    trains the official architecture). ``precision`` ``"bf16"``: forward passes and losses under
    bfloat16 autocast (GPU; fp16 is refused, it would need loss scaling). ``calibration_pairs``:
    training pairs on which the exported file's ``reuse_below`` gate is calibrated (0: none). ``init_gain``: the
    block's Xavier gain; the official code's 0.02 starts the block's output near zero and
    needs far more steps than a CPU run has, so plain Xavier (1.0) is the default here.
    """

    teacher: str = ""
    out_dir: str = "runs/shortcut"
    task: str | None = None
    interval: int = 3
    max_gap: int | None = None
    hidden: int | None = None
    global_layers: int = 2
    local_layers: int = 3
    groups: int = 4
    init_gain: float = 1.0
    reference_skip: bool = True
    size: tuple[int, int] | None = None
    batch: int = 4
    steps: int = 2000
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    decay_steps: int = 0
    lambda_feat: float = 5.0
    lambda_align: float = 5.0
    lambda_out: float = 10.0
    lambda_gan: float = 1.0
    lambda_temporal: float = 1.0
    lambda_vgg: float = 10.0
    vgg_weights: str | None = None
    ndf: int = 32
    n_layers_D: int = 3
    checkpoint_every: int = 200
    sample_every: int = 500
    seed: int = 0
    resume: bool = False
    force: bool = False  # resume even with settings other than the checkpoint's
    shuffle: bool = True
    num_workers: int = 0
    device: str = "cpu"
    precision: str = "fp32"
    calibration_pairs: int = 64
    cache_teacher: bool = False  # footage only: the teacher's a/f/y per (centre-cropped) frame read from disk

    @property
    def gaps(self) -> tuple[int, int]:
        return 1, (max(1, self.interval - 1) if self.max_gap is None else self.max_gap)

    def validate(self) -> None:
        super().validate()
        if self.max_gap is not None and self.max_gap < 1:
            raise UserError(f"max_gap must be at least 1 frame, not {self.max_gap}.")


class TemporalPatchDiscriminator(nn.Module):
    """3-D PatchGAN over a pair of frames (``N x C x 2 x H x W``): the first 3-D conv spans
    both frames (kernel 2 x 4 x 4), the rest are per-time 1 x 4 x 4 convs, as a 2-D PatchGAN
    with ``n_layers`` stride-2 layers; spectral norm, no norm layers, LeakyReLU 0.2."""

    def __init__(self, input_nc: int = 3, ndf: int = 32, n_layers: int = 3):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        layers: list[nn.Module] = []
        cin = input_nc
        for n in range(n_layers + 1):
            cout = ndf * min(2**n, 8)
            kt = 2 if n == 0 else 1
            stride = (1, 2, 2) if n < n_layers else (1, 1, 1)
            layers += [nn.Conv3d(cin, cout, (kt, 4, 4), stride, (0, 1, 1)), nn.LeakyReLU(0.2, True)]
            cin = cout
        layers.append(nn.Conv3d(cin, 1, (1, 4, 4), 1, (0, 1, 1)))
        self.model = nn.Sequential(*layers)
        for m in self.model:
            if isinstance(m, nn.Conv3d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)
                sn(m)

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        return self.model(torch.stack([before, after], dim=2))


def build_models(
    config: ShortcutTrainingConfig, teacher: SplitGenerator, device: str | torch.device | None = None
) -> dict[str, nn.Module]:
    """``{"block", "D" (PatchGAN), "D_T" (3-D PatchGAN)[, "vgg"]}`` in training mode."""
    channels = teacher.feature_channels
    hidden = config.hidden or channels // 2
    try:
        block = ShortcutBlock(
            channels, hidden, config.groups, config.global_layers, config.local_layers, config.reference_skip
        )
        block.reset_parameters(gain=config.init_gain)
    except ValueError as exc:
        raise UserError(f"cannot build a Shortcut block for this teacher: {exc}.") from None
    out_nc = teacher.output_nc
    d = NLayerDiscriminator(out_nc, config.ndf, config.n_layers_D, norm="none", use_spectral_norm=True)
    models: dict[str, nn.Module] = {"block": block, "D": d, "D_T": TemporalPatchDiscriminator(out_nc, config.ndf, config.n_layers_D)}
    if config.vgg_weights and config.lambda_vgg > 0:
        models["vgg"] = VGGPerceptualLoss(config.vgg_weights)
    device = torch.device(device or config.device)
    return {k: m.to(device).train() for k, m in models.items()}


def build_optimizers(config: ShortcutTrainingConfig, models: Mapping[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
    """Adam for the block and both discriminators."""
    return adam_optimizers(config, models, TRAINED)


@torch.no_grad()
def teacher_targets(teacher: SplitGenerator, ref_input: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The frozen teacher on both frames of the pairs, in one batch: ``a/f/y`` of reference
    and current frame."""
    n = x.shape[0]
    a = teacher.head(torch.cat([ref_input, x]))
    f = teacher.body(a)
    y = teacher.tail(f)
    return {"a_ref": a[:n], "f_ref": f[:n], "y_ref": y[:n], "a_t": a[n:], "f_t": f[n:], "y_t": y[n:]}


def distill_step(
    models: Mapping[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
    teacher: SplitGenerator,
    batch: Mapping[str, torch.Tensor],
    config: ShortcutTrainingConfig,
    targets: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """One update of the block, then of both discriminators; returns the unweighted losses.
    Forward passes and losses run under ``config.precision``'s autocast (bf16 on GPU).
    ``targets``: the teacher's ``a/f/y`` of reference then current frames, from a cache (the
    teacher's head and body then do not run; its tail still renders the block's features)."""
    block, d, d_t = models["block"], models["D"], models["D_T"]
    device = next(block.parameters()).device
    ref = batch["ref_input"].to(device=device, dtype=torch.float32)
    x = batch["input"].to(device=device, dtype=torch.float32)
    gan = GANLoss("lsgan")
    with training_autocast(device, config.precision):
        if targets is None:
            t = teacher_targets(teacher, ref, x)
        else:
            n = x.shape[0]
            t = {f"{k}{end}": targets[k][part] for k in ("a", "f", "y")
                 for end, part in (("_ref", slice(0, n)), ("_t", slice(n, None)))}  # fmt: skip
        f_hat, extras = block(t["a_t"], t["a_ref"], t["f_ref"], aligned=True)
        y_hat = teacher.tail(f_hat)
        for net in (d, d_t):
            net.requires_grad_(False)
        try:
            losses = {
                "feat": F.l1_loss(f_hat, t["f_t"]),
                "align": F.l1_loss(extras["aligned"], t["f_t"]),
                "out": F.l1_loss(y_hat, t["y_t"]),
                "gan": gan(d(y_hat)[-1], True, for_discriminator=False),
                "temporal": gan(d_t(t["y_ref"], y_hat), True, for_discriminator=False),
            }
        finally:
            for net in (d, d_t):
                net.requires_grad_(True)
        loss = (
            config.lambda_feat * losses["feat"] + config.lambda_align * losses["align"]
            + config.lambda_out * losses["out"] + config.lambda_gan * losses["gan"]
            + config.lambda_temporal * losses["temporal"]
        )  # fmt: skip
        if "vgg" in models:
            losses["vgg"] = models["vgg"](y_hat, t["y_t"])
            loss = loss + config.lambda_vgg * losses["vgg"]
    optimizers["block"].zero_grad(set_to_none=True)
    loss.backward()
    optimizers["block"].step()

    fake = y_hat.detach()
    with training_autocast(device, config.precision):
        losses["D_real"] = gan(d(t["y_t"])[-1], True)
        losses["D_fake"] = gan(d(fake)[-1], False)
        losses["DT_real"] = gan(d_t(t["y_ref"], t["y_t"]), True)
        losses["DT_fake"] = gan(d_t(t["y_ref"], fake), False)
    optimizers["D"].zero_grad(set_to_none=True)
    optimizers["D_T"].zero_grad(set_to_none=True)
    (0.5 * (losses["D_real"] + losses["D_fake"] + losses["DT_real"] + losses["DT_fake"])).backward()
    optimizers["D"].step()
    optimizers["D_T"].step()
    return {k: float(v.detach()) for k, v in losses.items()}


@torch.no_grad()
def calibrate_reuse_below(teacher: SplitGenerator, block: ShortcutBlock, pairs: Iterable[Mapping[str, torch.Tensor]]) -> dict:
    """The head-feature drift below which showing the key frame's output beats the block.

    On each pair: the drift (:func:`~fastv2v.methods.schedules.drift_score`), the block's output
    error and the key frame output's error against the teacher. The threshold minimises the
    total error of "key output below it, block above it"; 0 (never reuse) when the block wins
    anyway. Computed on training pairs, never on held-out data. Returns ``reuse_below``, the
    number of pairs and the error of each choice (MSE on [-1, 1]).
    """
    from fastv2v.methods.schedules import drift_score

    rows = []
    with eval_mode(block):
        for item in pairs:
            ref, x = (item[k].float().unsqueeze(0) if item[k].dim() == 3 else item[k].float()
                      for k in ("ref_input", "input"))  # fmt: skip
            t = teacher_targets(teacher, ref, x)
            y_hat = teacher.tail(block(t["a_t"], t["a_ref"], t["f_ref"])[0])
            rows.append((drift_score(t["a_t"], t["a_ref"]), float(F.mse_loss(y_hat, t["y_t"])),
                         float(F.mse_loss(t["y_ref"], t["y_t"]))))  # fmt: skip
    rows.sort()
    block_only = sum(r[1] for r in rows)
    best, threshold, below = block_only, 0.0, 0.0
    for i in range(1, len(rows) + 1):
        below += rows[i - 1][2]
        total = below + sum(r[1] for r in rows[i:])
        if total < best:
            upper = rows[i][0] if i < len(rows) else rows[-1][0] * 1.01
            best, threshold = total, (rows[i - 1][0] + upper) / 2
    n = max(1, len(rows))
    return {"reuse_below": threshold, "pairs": len(rows), "mse_block": block_only / n, "mse_gated": best / n,
            "mse_repeat": sum(r[2] for r in rows) / n}  # fmt: skip


def calibration_pairs(dataset: Any, count: int) -> list:
    """``count`` training pairs spread evenly over an indexable dataset (none otherwise)."""
    if count <= 0 or not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__") or len(dataset) == 0:
        return []
    return [dataset[int(i)] for i in torch.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().long()]


def distill_shortcut(
    config: ShortcutTrainingConfig,
    dataset: Iterable[Mapping[str, torch.Tensor]],
    *,
    sample_batch: Mapping[str, torch.Tensor] | list[Mapping[str, torch.Tensor]] | None = None,
    progress: bool = True,
    max_steps: int | None = None,
    ctx: TrainingContext | None = None,
) -> Path:
    """Train (or with ``config.resume`` continue) a Shortcut block; returns the model file.

    ``dataset`` yields ``{"ref_input", "input"}`` model inputs of frame pairs (e.g.
    :func:`fastv2v.tasks.training_pairs` with ``pair_gap=config.gaps``). Writes into
    ``config.out_dir``: ``checkpoint.pt`` (every ``checkpoint_every`` steps and at the end),
    ``log.jsonl``, ``samples/step_NNNNNN.png`` (reference output | teacher | shortcut) and
    ``shortcut.safetensors``. ``max_steps`` caps this call's steps (resume later). Under
    ``torchrun`` (``ctx``, default :func:`~fastv2v.train.distributed.init_distributed`) it trains
    data-parallel on chunks of the global batch; rank 0 writes the files.
    """
    return run_training(
        config, dataset, lambda ctx: ShortcutRecipe(config, ctx.device, dataset, ctx), sample_batch=sample_batch,
        progress=progress, max_steps=max_steps, ctx=ctx,
    )  # fmt: skip


class ShortcutRecipe(DistillationRecipe):
    """A Shortcut-V2V block distilled from the frozen teacher; the exported file's reuse gate is
    calibrated on pairs of ``dataset`` (the training data)."""

    desc = "shortcut"
    export_name = EXPORT
    trained = TRAINED
    cache_keys = ("a", "f", "y")

    def __init__(self, config: ShortcutTrainingConfig, device: str | torch.device, dataset: Any, ctx: Any = None):
        super().__init__(config, device, dataset, ctx)
        self.dataset = dataset

    def build_models(self, device: torch.device) -> dict[str, nn.Module]:
        return build_models(self.config, self.teacher, device)

    def train_step(self, models: Models, optimizers: Optimizers, batch: Batch) -> dict[str, float]:
        targets = None if self.cache is None else self.cached_targets(batch, both=True)
        return distill_step(models, optimizers, self.teacher, batch, self.config, targets)

    def check_batch(self, batch: Batch, models: Models) -> None:
        super().check_batch(batch, models)
        h, w = batch["input"].shape[2:]
        stride = 4  # head features at H/2 must have even sides for the block's half-resolution alignment
        if h % stride or w % stride:
            raise UserError(f"the training frames are {h}x{w}; Shortcut-V2V needs sides that are multiples of {stride}.")

    def write_sample(self, path: Path, models: Models, sample: Batch) -> None:
        write_samples(path, self.teacher, models["block"], sample)

    def export(self, path: Path, models: Models, training: dict[str, Any]) -> None:
        block = models["block"]
        pairs = calibration_pairs(self.dataset, self.config.calibration_pairs)
        gate = calibrate_reuse_below(self.teacher, block, pairs)
        info = {"training": training, "reuse_below": gate["reuse_below"], "reuse_calibration": gate}
        with eval_mode(block):
            save_shortcut(path, ShortcutModel(self.teacher, block, self.config.interval, info))


@torch.no_grad()
def write_samples(path: str | Path, teacher: SplitGenerator, block: ShortcutBlock, sample: Mapping[str, torch.Tensor]) -> None:
    """PNG, one row per pair: reference output (what ``repeat`` shows) | teacher | shortcut."""
    device = next(block.parameters()).device
    ref = sample["ref_input"].to(device=device, dtype=torch.float32)
    x = sample["input"].to(device=device, dtype=torch.float32)
    t = teacher_targets(teacher, ref, x)
    with eval_mode(block):
        y_hat = teacher.tail(block(t["a_t"], t["a_ref"], t["f_ref"])[0])
    save_grid(path, [(y.clamp(-1, 1) + 1) / 2 for y in (t["y_ref"], t["y_t"], y_hat)])
