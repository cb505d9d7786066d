"""Distil Fast-Vid2Vid's spatially low-demand student from a frozen teacher (Zhuo et al., ECCV
2022, spatial knowledge distillation; GAN Compression's mapped feature distillation).

A sample is a pair of consecutive model inputs (frame k, frame k + 1; see
:func:`fastv2v.tasks.training_pairs` with ``pair_gap=1``). The student
(:class:`~fastv2v.generators.student.SpatialStudent`, initialised from the teacher where the
layers exist in both) runs on frame k + 1 downsampled by 2; the frozen teacher, in eval mode,
on the full-resolution frame gives the targets: its output ``O_t`` and its body output
``f_t``. Losses (weights in :class:`StudentTrainingConfig`):

* **motion-weighted output L1** (x10): ``mean(w * |O_s - O_t|)`` where ``w`` is the motion mask
  of Fast-Vid2Vid's spatial KD: the optical flow (OpenCV DIS, :mod:`fastv2v.flow`) from frame
  k + 1 to frame k, measured on the inputs (pictures; label maps as one grey level per class),
  ``w = 1 + motion_weight * |flow| / max |flow|``, normalised to mean 1 per frame, so moving
  regions weigh up to ``1 + motion_weight`` times more than still ones and the loss keeps the
  scale of a plain L1;
* **feature L1** (x5) between the student's body output through a 1x1 mapping conv
  (:func:`~fastv2v.generators.student.feature_mapping`, trained with the student, dropped at
  export) and the teacher's body output, both C channels at H/2;
* **LSGAN** (x1) with a spectral-norm PatchGAN whose real samples are teacher outputs
  (``lambda_gan`` 0: no discriminator runs at all, a third of the step time of a pruned
  student, for a student judged by its fidelity to the teacher);
* **perceptual** VGG-19 loss (x10), only with a local weights file (``vgg_weights``);
* optional **part-time (temporal) distillation** (``temporal=True``, Fast-Vid2Vid's temporal
  KD, adapted to a per-frame student): pairs ``(k, k + d)`` with ``d`` up to ``max_gap`` (a
  subsampled clip); the student runs on both frames, the output L1 covers both, and a
  temporal term (x``lambda_temporal``) asks the student's motion-compensated change between
  the two frames to equal the teacher's: ``|(S_{k+d} - warp(S_k, F)) - (T_{k+d} - warp(T_k,
  F))|`` with ``F`` the DIS flow from ``T_{k+d}`` to ``T_k`` (teacher outputs). The paper's flow
  L1 between the student's and the teacher's output flows needs a differentiable flow network
  (FlowNet2); this warp form is the same constraint with the non-differentiable DIS flow held
  fixed.

Adam (2e-4, 0.5/0.999) for student + mapping and for the discriminator. :class:`StudentRecipe`
is what the one driver (:func:`fastv2v.train.trainer.run_training`) needs for it: data-parallel
under ``torchrun``, atomic checkpoints that resume exactly; the run ends by writing one
self-describing model file (teacher + student + the ``fast`` method's default interval,
:mod:`fastv2v.methods.student_model`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fastv2v.errors import UserError
from fastv2v.generators.base import SplitGenerator
from fastv2v.generators.discriminators import NLayerDiscriminator
from fastv2v.generators.student import (
    BODIES,
    DEFAULT_EXPANSION,
    SpatialStudent,
    feature_mapping,
    student_from_teacher,
)
from fastv2v.methods.student_model import StudentModel, save_student
from fastv2v.train.config import DistillationConfig
from fastv2v.train.distill import DistillationRecipe
from fastv2v.train.distributed import TrainingContext, training_autocast
from fastv2v.train.losses import GANLoss, VGGPerceptualLoss
from fastv2v.train.recipe import Batch, Models, Optimizers, adam_optimizers, eval_mode
from fastv2v.train.samples import save_grid
from fastv2v.train.trainer import run_training

EXPORT = "student.safetensors"
TRAINED = ("G", "D")


@dataclass
class StudentTrainingConfig(DistillationConfig):
    """Everything that defines a student distillation run (stored in the checkpoint and the file).

    ``body``/``width``/``expansion``/``blocks``/``activation``: the student
    (:func:`~fastv2v.generators.student.student_from_teacher`; None: its defaults).
    ``interval``: the ``fast`` method's default key-frame interval written into the model file.
    ``motion_weight``: how much more the fastest-moving pixels weigh in the output L1 (0: a plain
    L1). ``flow_preset``: DIS preset of the motion mask and the temporal term. ``temporal``: the
    part-time distillation, on pairs up to ``max_gap`` frames apart (default 3). ``init``: a
    student model file to start from instead of the teacher's layers (a warm start; its student
    must have the architecture the other fields ask for and come from the same teacher).
    """

    teacher: str = ""
    out_dir: str = "runs/student"
    task: str | None = None
    body: str = "inverted"
    width: int | None = None
    expansion: int = DEFAULT_EXPANSION
    blocks: int | None = None
    activation: str = "relu"
    interval: int = 4
    size: tuple[int, int] | None = None
    batch: int = 4
    steps: int = 2000
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    decay_steps: int = 0
    lambda_out: float = 10.0
    motion_weight: float = 1.0
    flow_preset: str = "fast"
    lambda_feat: float = 5.0
    lambda_gan: float = 1.0
    lambda_vgg: float = 10.0
    vgg_weights: str | None = None
    temporal: bool = False
    max_gap: int | None = None
    lambda_temporal: float = 10.0
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
    init: str | None = None
    cache_teacher: bool = False  # footage only: the teacher's f/y per (centre-cropped) frame read from disk
    elastic: tuple[str, ...] | None = None
    lambda_consistency: float = 5.0
    temporal_shift: float = 0.0

    @property
    def paired(self) -> bool:
        """Whether the student runs on both frames of a pair (part-time distillation, or the
        temporal shift, which needs the previous frame)."""
        return self.temporal or self.temporal_shift > 0

    def subnets(self) -> list:
        """The elastic sub-networks, widest and full-size first (empty: not elastic)."""
        from fastv2v.generators.elastic import Subnet

        def cost(s: Subnet) -> tuple:  # MACs grow with the square of width / divisor
            return -((s.width / s.divisor) ** 2), s.divisor, -s.width

        return sorted({Subnet.parse(s) for s in self.elastic or ()}, key=cost)

    @property
    def gaps(self) -> int | tuple[int, int]:
        """``pair_gap`` for :func:`fastv2v.tasks.training_pairs`: consecutive frames, or with
        ``temporal`` gaps 1..max_gap (default 3)."""
        return (1, self.max_gap or 3) if self.paired else 1

    def validate(self) -> None:
        from fastv2v.flow import DIS_PRESETS

        super().validate()
        if self.body not in BODIES:
            raise UserError(f"unknown student body {self.body!r}; use one of {', '.join(BODIES)}.")
        if self.expansion < 1:
            raise UserError(f"expansion must be at least 1, not {self.expansion}.")
        for name in ("width", "max_gap"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, not {getattr(self, name)}.")
        if self.blocks is not None and self.blocks < 0:
            raise UserError(f"blocks must be 0 or more, not {self.blocks}.")
        if not self.lambda_gan >= 0:
            raise UserError(f"the GAN weight must be 0 (no discriminator) or positive, not {self.lambda_gan}.")
        if self.motion_weight < 0:
            raise UserError(f"motion_weight must be 0 (plain L1) or positive, not {self.motion_weight}.")
        if (self.elastic or self.temporal_shift) and self.body != "pruned":
            raise UserError("--elastic and --temporal-shift need --body pruned (the teacher's layers, narrower).")
        if self.elastic:
            subs = self.subnets()
            widest = self.width or 0
            if subs[0].width != widest or subs[0].divisor != 1:
                raise UserError(f"the elastic sub-networks must include the whole student (w{widest}); "
                                f"got {', '.join(s.label for s in subs)}.")  # fmt: skip
            if any(s.width > widest for s in subs) or len(subs) < 2:
                raise UserError(f"elastic sub-networks are at most --width {widest} wide, and at least two; "
                                f"got {', '.join(s.label for s in subs)}.")  # fmt: skip
        if self.lambda_consistency < 0:
            raise UserError(f"the consistency weight must be 0 or positive, not {self.lambda_consistency}.")
        if self.flow_preset not in DIS_PRESETS:
            raise UserError(f"unknown flow preset {self.flow_preset!r}; use one of {', '.join(DIS_PRESETS)}.")


class StudentTrainee(nn.Module):
    """The student and its feature mapping, trained together (one module, so one DDP wrapper
    sees every parameter): ``forward(x) -> (output, mapped body output, sub-network outputs)``.

    ``subnets``: elastic sub-networks to run as well (on the same weights); ``pair``: ``x`` is
    ``[first frames; second frames]`` and the second half runs after the first, fed its
    temporal-shift state (the shift's previous frame)."""

    def __init__(self, student: SpatialStudent, mapping: nn.Module):
        super().__init__()
        self.student, self.mapping = student, mapping

    def forward(self, x: torch.Tensor, subnets: tuple = (), pair: bool = False):
        if not subnets and not pair:
            y, f = self.student(x, features=True)
            return y, self.mapping(f), []
        y, f = self._run(x, None, pair, True)
        return y, self.mapping(f), [self._run(x, s, pair, False)[0] for s in subnets]

    def _run(self, x: torch.Tensor, subnet, pair: bool, features: bool):
        from fastv2v.generators.elastic import run_layers

        width, divisor = (None, 1) if subnet is None else (subnet.width, subnet.divisor)
        if not pair:
            out = run_layers(self.student, x, width, divisor, features=features)
            return out.y, out.features
        n = x.shape[0] // 2
        first = run_layers(self.student, x[:n], width, divisor, features=features)
        second = run_layers(self.student, x[n:], width, divisor, past=first.present, features=features)
        f = torch.cat([first.features, second.features]) if features else None
        return torch.cat([first.y, second.y]), f


def make_student(config: StudentTrainingConfig, teacher: SplitGenerator) -> SpatialStudent:
    kwargs = {"body": config.body, "expansion": config.expansion, "activation": config.activation}
    if config.body == "inverted":
        kwargs.update(width=config.width, blocks=config.blocks)
    elif config.body == "pruned":
        kwargs.update(width=config.width, temporal_shift=config.temporal_shift,
                      elastic=[s.label for s in config.subnets()] or None)  # fmt: skip
    try:
        student = student_from_teacher(teacher, **kwargs)
    except ValueError as exc:
        raise UserError(f"cannot build a student for this teacher: {exc}.") from None
    if config.init:
        warm_start(student, config.init, teacher)
    if config.elastic:  # the strongest channels first, so every sub-network starts from the best of them
        from fastv2v.generators.elastic import sort_channels

        sort_channels(student)
    return student


def warm_start(student: SpatialStudent, path: str | Path, teacher: SplitGenerator) -> None:
    """Copy the weights of the student in model file ``path`` into ``student``; refuse a file
    distilled from another teacher or holding a student of another architecture (one sentence
    naming the file and the setting that differs)."""
    from fastv2v.methods.student_model import load_student

    model = load_student(path, teacher=teacher)
    mine, theirs = student.config, model.student.config
    same_weights = {"elastic", "temporal_shift"}  # they change how the weights run, not what they are
    differ = [k for k in sorted((set(mine) | set(theirs)) - same_weights) if mine.get(k) != theirs.get(k)]
    if differ:
        settings = ", ".join(f"{k} {theirs.get(k)!r} (this run: {mine.get(k)!r})" for k in differ)
        raise UserError(f"{path}: its student differs from the one this run builds in {settings}; "
                        "give the same student settings or start without --init.")  # fmt: skip
    student.load_state_dict(model.student.state_dict())


def build_models(
    config: StudentTrainingConfig, teacher: SplitGenerator, device: str | torch.device | None = None
) -> dict[str, nn.Module]:
    """``{"G" (student + mapping), "D" (PatchGAN)[, "vgg"]}`` in training mode."""
    student = make_student(config, teacher)
    mapping = feature_mapping(student.feature_channels, teacher.feature_channels)
    d = NLayerDiscriminator(teacher.output_nc, config.ndf, config.n_layers_D, norm="none", use_spectral_norm=True)
    models: dict[str, nn.Module] = {"G": StudentTrainee(student, mapping), "D": d}
    if config.vgg_weights and config.lambda_vgg > 0:
        models["vgg"] = VGGPerceptualLoss(config.vgg_weights)
    device = torch.device(device or config.device)
    return {k: m.to(device).train() for k, m in models.items()}


def build_optimizers(config: StudentTrainingConfig, models: Mapping[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
    """Adam for student + mapping and for the discriminator."""
    return adam_optimizers(config, models, TRAINED)


# ---------------------------------------------------------------------------------------------
# motion


def flow_picture(x: torch.Tensor, label_nc: int) -> np.ndarray:
    """One model input (C x H x W) as the grey uint8 picture optical flow is measured on:
    pictures as their grey level, label maps as one grey level per class (spread over 0..255)."""
    if label_nc:
        labels = x[:label_nc].argmax(0).to(torch.int32).cpu().numpy()
        return (labels * (255 // max(label_nc - 1, 1))).astype(np.uint8)
    from fastv2v.flow import to_gray

    u8 = ((x[:3].detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    if u8.shape[0] == 1:
        return np.ascontiguousarray(u8[0])
    return to_gray(np.ascontiguousarray(u8.transpose(1, 2, 0)))


def motion_weights(frames: torch.Tensor, others: torch.Tensor, label_nc: int, strength: float,
                   preset: str = "fast") -> torch.Tensor:  # fmt: skip
    """Per-pixel loss weights ``N x 1 x H x W`` for ``frames`` from the flow to ``others`` (the
    neighbouring frames): ``1 + strength * |flow| / max |flow|``, normalised to mean 1 per frame
    (all ones for ``strength`` 0 or a still pair)."""
    n, _, h, w = frames.shape
    out = torch.ones(n, 1, h, w)
    if strength <= 0:
        return out.to(frames.device)
    from fastv2v.flow import estimate_flow

    for i in range(n):
        flow = estimate_flow(flow_picture(frames[i], label_nc), flow_picture(others[i], label_nc), preset)
        magnitude = torch.from_numpy(np.sqrt((flow.astype(np.float32) ** 2).sum(-1)))
        top = float(magnitude.max())
        if top > 1e-3:
            weight = 1.0 + strength * magnitude / top
            out[i, 0] = weight / weight.mean()
    return out.to(frames.device)


def output_flows(before: torch.Tensor, after: torch.Tensor, preset: str = "fast") -> torch.Tensor:
    """DIS flows ``N x 2 x H x W`` from each output of ``after`` to the one of ``before``
    (``after(x) ~ before(x + flow(x))``), measured on the outputs' grey pictures."""
    from fastv2v.flow import estimate_flow

    flows = [
        torch.from_numpy(estimate_flow(flow_picture(a, 0), flow_picture(b, 0), preset)).permute(2, 0, 1)
        for a, b in zip(after, before)
    ]
    return torch.stack(flows).to(before.device)


# ---------------------------------------------------------------------------------------------
# one step


def sandwich(config: StudentTrainingConfig) -> tuple:
    """The sub-networks besides the whole student that this step trains (Anycost's sandwich
    rule): the cheapest, and one drawn at random from the others (Python's ``random``, whose
    state the checkpoints keep); none for a student that is not elastic."""
    import random

    subs = config.subnets()
    if len(subs) < 2:
        return ()
    middle = subs[1:-1]
    return (subs[-1],) + ((random.choice(middle),) if middle else ())



@torch.no_grad()
def teacher_targets(teacher: SplitGenerator, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The frozen teacher's body output ``f`` and output ``y`` on full-resolution inputs."""
    f = teacher.body(teacher.head(x))
    return {"f": f, "y": teacher.tail(f)}


def distill_step(
    models: Mapping[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
    teacher: SplitGenerator,
    batch: Mapping[str, torch.Tensor],
    config: StudentTrainingConfig,
    targets: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """One update of student + mapping, then of the discriminator; returns the unweighted losses.
    Forward passes and losses run under ``config.precision``'s autocast (bf16 on GPU).
    ``targets``: the teacher's ``f``/``y`` of the student's inputs (reference frames first when
    ``temporal``), from a cache instead of running the teacher."""
    g, d = models["G"], models["D"]
    device = next(g.parameters()).device
    ref = batch["ref_input"].to(device=device, dtype=torch.float32)
    x = batch["input"].to(device=device, dtype=torch.float32)
    n = x.shape[0]
    label_nc = teacher.label_nc
    adversarial = config.lambda_gan > 0  # 0: fidelity only, the discriminator never runs
    if config.paired:  # part-time / temporal shift: the student on both frames of the (subsampled) pair
        inputs = torch.cat([ref, x])
        weight = motion_weights(inputs, torch.cat([x, ref]), label_nc, config.motion_weight, config.flow_preset)
    else:
        inputs = x
        weight = motion_weights(x, ref, label_nc, config.motion_weight, config.flow_preset)
    with training_autocast(device, config.precision):
        t = teacher_targets(teacher, inputs) if targets is None else targets
        y_hat, f_hat, y_subs = g(inputs, sandwich(config), config.temporal_shift > 0)
        gan = GANLoss("lsgan")

        losses = {"out": (weight * (y_hat - t["y"]).abs()).mean(), "feat": F.l1_loss(f_hat, t["f"])}
        loss = config.lambda_out * losses["out"] + config.lambda_feat * losses["feat"]
        if y_subs:  # Anycost's sandwich: each smaller sub-network learns the teacher and the whole student
            full = y_hat.detach()
            sub_out = [(weight * (y - t["y"]).abs()).mean() for y in y_subs]
            consistency = [F.l1_loss(y, full) for y in y_subs]
            loss = loss + config.lambda_out * sum(sub_out) + config.lambda_consistency * sum(consistency)
            losses["sub_out"] = sum(sub_out) / len(sub_out)
            losses["consistency"] = sum(consistency) / len(consistency)
        if adversarial:
            d.requires_grad_(False)
            try:
                losses["gan"] = gan(d(y_hat)[-1], True, for_discriminator=False)
            finally:
                d.requires_grad_(True)
            loss = loss + config.lambda_gan * losses["gan"]
        if "vgg" in models:
            losses["vgg"] = models["vgg"](y_hat, t["y"])
            loss = loss + config.lambda_vgg * losses["vgg"]
        if config.paired:
            from fastv2v.flow import warp

            flow = output_flows(t["y"][:n], t["y"][n:], config.flow_preset)
            student_change = y_hat[n:] - warp(y_hat[:n], flow)
            teacher_change = t["y"][n:] - warp(t["y"][:n], flow)
            losses["temporal"] = F.l1_loss(student_change, teacher_change)
            loss = loss + config.lambda_temporal * losses["temporal"]
    optimizers["G"].zero_grad(set_to_none=True)
    loss.backward()
    optimizers["G"].step()
    if not adversarial:
        return {k: float(v.detach()) for k, v in losses.items()}

    with training_autocast(device, config.precision):
        losses["D_real"] = gan(d(t["y"])[-1], True)
        losses["D_fake"] = gan(d(y_hat.detach())[-1], False)
    optimizers["D"].zero_grad(set_to_none=True)
    (0.5 * (losses["D_real"] + losses["D_fake"])).backward()
    optimizers["D"].step()
    return {k: float(v.detach()) for k, v in losses.items()}


# ---------------------------------------------------------------------------------------------
# the run


def distill_student(
    config: StudentTrainingConfig,
    dataset: Iterable[Mapping[str, torch.Tensor]],
    *,
    sample_batch: Mapping[str, torch.Tensor] | list[Mapping[str, torch.Tensor]] | None = None,
    progress: bool = True,
    max_steps: int | None = None,
    ctx: TrainingContext | None = None,
) -> Path:
    """Train (or with ``config.resume`` continue) a spatial student; returns the model file.

    ``dataset`` yields ``{"ref_input", "input"}`` model inputs of frame pairs
    (:func:`fastv2v.tasks.training_pairs` with ``pair_gap=config.gaps``). Writes into
    ``config.out_dir``: ``checkpoint.pt`` (every ``checkpoint_every`` steps and at the end),
    ``log.jsonl``, ``samples/step_NNNNNN.png`` (teacher | student | motion weights) and
    ``student.safetensors``. ``max_steps`` caps this call's steps (resume later). Under
    ``torchrun`` (``ctx``, default :func:`~fastv2v.train.distributed.init_distributed`) it trains
    data-parallel on chunks of the global batch; rank 0 writes the files.
    """
    return run_training(
        config, dataset, lambda ctx: StudentRecipe(config, ctx.device, dataset, ctx), sample_batch=sample_batch,
        progress=progress, max_steps=max_steps, ctx=ctx,
    )  # fmt: skip


class StudentRecipe(DistillationRecipe):
    """A spatial student (with its feature mapping) distilled from the frozen teacher."""

    desc = "student"
    export_name = EXPORT
    trained = TRAINED

    def build_models(self, device: torch.device) -> dict[str, nn.Module]:
        return build_models(self.config, self.teacher, device)

    def train_step(self, models: Models, optimizers: Optimizers, batch: Batch) -> dict[str, float]:
        targets = None
        if self.cache is not None:
            targets = self.cached_targets(batch, both=self.config.paired)
        return distill_step(models, optimizers, self.teacher, batch, self.config, targets)

    def check_batch(self, batch: Batch, models: Models) -> None:
        super().check_batch(batch, models)
        h, w = batch["input"].shape[2:]
        models["G"].student.check_size(h, w, "the training data")

    def write_sample(self, path: Path, models: Models, sample: Batch) -> None:
        write_samples(path, self.teacher, models["G"].student, sample, self.config)

    def export(self, path: Path, models: Models, training: dict[str, Any]) -> None:
        with eval_mode(models["G"].student) as student:
            save_student(path, StudentModel(self.teacher, student, self.config.interval, {"training": training}))


@torch.no_grad()
def write_samples(path: str | Path, teacher: SplitGenerator, student: SpatialStudent,
                  sample: Mapping[str, torch.Tensor], config: StudentTrainingConfig) -> None:  # fmt: skip
    """PNG, one row per pair: teacher | student | motion weights of the output L1 (white: the
    largest weight of the row)."""
    device = next(student.parameters()).device
    ref = sample["ref_input"].to(device=device, dtype=torch.float32)
    x = sample["input"].to(device=device, dtype=torch.float32)
    y_t = teacher_targets(teacher, x)["y"]
    with eval_mode(student):
        y_s = student(x)
    weight = motion_weights(x, ref, teacher.label_nc, max(config.motion_weight, 1.0), config.flow_preset)
    weight = weight / weight.amax(dim=(2, 3), keepdim=True)
    columns = [y_t, y_s] + ([weight * 2 - 1] if y_t.shape[1] in (1, 3) else [])  # grey next to grey or RGB
    save_grid(path, [(c.clamp(-1, 1) + 1) / 2 for c in columns])
