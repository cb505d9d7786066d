"""Train a vid2vid teacher of our own: :class:`~fastv2v.generators.Vid2VidGenerator` on windows
of consecutive frames of the synthetic ``scenes`` task.

A sample (:class:`SceneWindows`) is ``T`` consecutive frames of one clip, ``T = tG`` (``tG + 1``
with ``recurrent``), laid out the way the generator takes them (frames along channels, oldest
first): ``labels`` ``T*C x H x W`` one-hot, ``frames`` ``T*3 x H x W`` RGB in [-1, 1], and
``flows`` ``(T-tG+1)*2 x H x W``: for each generated frame ``k`` the DIS optical flow (pixels,
x then y) from real frame ``k`` to real frame ``k-1``. That is vid2vid's flow convention: output
pixel ``(i, j)`` samples the previous frame at ``(j + fx, i + fy)``, so
``resample(frame[k-1], flow) ~ frame[k]`` (:func:`fastv2v.flow.estimate_flow` from the current to
the previous frame, its ``warp`` being the same backward warp).

One step, the official training's losses as far as a CPU budget allows (no temporal
discriminator, no multi-scale D, no FlowNet2: DIS instead):

* generate frame ``tG-1`` from the label window and the ``tG-1`` previous *real* frames
  (teacher forcing, what the official training does for the first frames of a sequence); with
  ``recurrent`` also frame ``tG``, whose previous frames end with the generated one (gradients
  flow through it, as within one official training chunk);
* G: ``lambda_l1`` x L1 to the real frame, ``lambda_gan`` x LSGAN against a small spectral-norm
  PatchGAN on (current label map, image), ``lambda_flow`` x masked L1 between the generator's
  flow and the DIS flow (pixels), ``lambda_warp`` x masked L1 between the real previous frame
  warped by the generator's flow and the real current frame, ``lambda_weight`` x the masked
  weight regulariser (the official ``loss_W``: the hallucination weight pulled to 0, i.e.
  towards warping, where the flow is trusted) [+ ``lambda_vgg`` x VGG with local weights].
  The mask is the official FlowNet confidence: 1 where the real previous frame warped by the
  reference flow matches the current frame (sum of squared channel errors < ``conf_threshold``
  on the [-1, 1] scale); masked L1 is the official ``MaskedL1Loss`` (mean of ``|a*m - b*m|``);
* D: LSGAN on the real and the (detached) generated pairs. G steps, then D, as the teacher recipe.

Norm: ``instance`` by default, not the official ``batch``. The model normalises every norm layer
with the current input's statistics at inference (official test.py never calls ``eval()``), one
frame at a time; at batch 1 BatchNorm is per-frame statistics too, i.e. InstanceNorm plus an
affine, but at batch > 1 it would pool statistics over the batch in training and not at
inference. InstanceNorm normalises the same way at any batch size (``norm="batch"`` is there).

Exact resume, DDP and the export go through the one driver
(:func:`fastv2v.train.trainer.run_training`); the export is a self-describing
``vid2vid.safetensors`` (:func:`fastv2v.generators.save_generator`) that ``Pipeline.from_file``
and ``fastv2v translate`` run as the sequential teacher.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from fastv2v.errors import UserError
from fastv2v.flow import DIS_PRESETS, estimate_flow
from fastv2v.generators import Vid2VidGenerator, build_generator, save_generator
from fastv2v.generators.discriminators import NLayerDiscriminator, init_weights
from fastv2v.generators.vid2vid import resample
from fastv2v.train.config import TrainingConfig
from fastv2v.train.distributed import TrainingContext, training_autocast
from fastv2v.train.losses import GANLoss, VGGPerceptualLoss
from fastv2v.train.recipe import Batch, Models, Optimizers, Recipe, eval_mode
from fastv2v.train.samples import save_grid
from fastv2v.train.trainer import run_training

EXPORT = "vid2vid.safetensors"
TRAINED = ("G", "D")
KEYS = ("labels", "frames", "flows")


@dataclass
class Vid2VidTrainingConfig(TrainingConfig):
    """Everything that defines a vid2vid teacher run (stored in the checkpoint and the export).

    Generator: ``ngf``, ``frames_g`` (tG, label frames per call), ``n_downsample``, ``n_blocks``,
    ``norm`` (see the module docstring for why ``instance``). Loss weights as the official
    training (lambda_F = lambda_T = 10, L1 standing in for its VGG term at 10 without VGG
    weights). ``recurrent`` adds a second generated frame per sample that takes the first as its
    previous frame (about twice the step time). ``size`` (H, W), when given, is checked against
    the data; H and W must be multiples of ``2**n_downsample``.
    """

    out_dir: str = "runs/vid2vid"
    task: str = "scenes"
    ngf: int = 16
    frames_g: int = 3
    n_downsample: int = 2
    n_blocks: int = 4
    norm: str = "instance"
    size: tuple[int, int] | None = None
    batch: int = 1
    steps: int = 10_000
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    decay_steps: int = 0
    recurrent: bool = False
    lambda_l1: float = 10.0
    lambda_gan: float = 1.0
    lambda_flow: float = 10.0
    lambda_warp: float = 10.0
    lambda_weight: float = 1.0
    lambda_vgg: float = 10.0
    vgg_weights: str | None = None
    conf_threshold: float = 0.02
    flow_preset: str = "medium"  # DIS preset of the flow targets (the data's, kept here so resume checks it)
    ndf: int = 32
    n_layers_D: int = 3
    checkpoint_every: int = 1000
    sample_every: int = 500
    seed: int = 0
    resume: bool = False
    force: bool = False
    shuffle: bool = True
    num_workers: int = 0
    device: str = "cpu"
    precision: str = "fp32"

    @property
    def window(self) -> int:
        """Frames per sample: tG, plus one with ``recurrent``."""
        return self.frames_g + int(self.recurrent)

    def generator_config(self) -> dict[str, Any]:
        """:class:`Vid2VidGenerator` arguments for the task (label maps for ``scenes``)."""
        from fastv2v.data.scenes import NUM_CLASSES

        return dict(input_nc=NUM_CLASSES, label_nc=NUM_CLASSES, output_nc=3, n_frames_G=self.frames_g, ngf=self.ngf,
                    n_downsample_G=self.n_downsample, n_blocks=self.n_blocks, norm=self.norm)  # fmt: skip

    def validate(self) -> None:
        super().validate()
        if self.task != "scenes":
            raise UserError(f"vid2vid teachers train on the scenes task for now, not {self.task!r}; use --task scenes.")
        for name, low in (("ngf", 1), ("frames_g", 2), ("n_downsample", 1), ("n_blocks", 1), ("ndf", 1),
                          ("n_layers_D", 1)):  # fmt: skip
            if getattr(self, name) < low:
                raise UserError(f"{name} must be at least {low}, not {getattr(self, name)}.")
        if self.flow_preset not in DIS_PRESETS:
            raise UserError(f"unknown DIS preset {self.flow_preset!r}; use one of {', '.join(DIS_PRESETS)}.")
        if self.norm not in ("instance", "batch"):
            raise UserError(f"norm must be 'instance' or 'batch', not {self.norm!r}.")
        if self.size is not None and any(s % 2**self.n_downsample for s in self.size):
            raise UserError(f"--size {self.size[0]}x{self.size[1]} is not a multiple of {2**self.n_downsample} "
                            f"(2**n_downsample) in both dimensions; pick one that is.")  # fmt: skip


class SceneWindows(Dataset):
    """Windows of ``frames`` consecutive synthetic scene frames, as the module docstring lays them
    out. Clips, seeds and the train / held-out split are :class:`~fastv2v.data.paired.SceneFrames`'
    (whose scene cache this reuses); item ``i`` is clip ``i // per_clip``, first frame
    ``i % per_clip``. ``frames_g`` (tG) says which frames get a flow target: ``frames_g-1 ..
    frames-1``. Deterministic: no random choices (DIS is deterministic on the CPU)."""

    def __init__(
        self,
        split: str = "train",
        *,
        frames: int = 3,
        frames_g: int | None = None,
        clips: int = 64,
        frames_per_clip: int = 60,
        height: int = 128,
        width: int = 256,
        flow_preset: str = "medium",
    ):
        from fastv2v.data.paired import SceneFrames

        frames_g = frames if frames_g is None else frames_g
        if not 2 <= frames_g <= frames:
            raise UserError(f"a window needs 2 <= frames_g <= frames, not frames_g {frames_g} and frames {frames}.")
        if flow_preset not in DIS_PRESETS:
            raise UserError(f"unknown DIS preset {flow_preset!r}; use one of {', '.join(DIS_PRESETS)}.")
        # pair_gap = frames - 1: SceneFrames checks that a window fits in a clip and counts the windows
        self.scenes = SceneFrames(split, clips=clips, frames_per_clip=frames_per_clip, height=height, width=width,
                                  pair_gap=frames - 1)  # fmt: skip
        self.frames, self.frames_g, self.flow_preset = frames, frames_g, flow_preset
        self.num_classes = self.scenes.num_classes

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        from fastv2v.data.paired import labels_to_tensor, rgb_to_tensor

        if not 0 <= index < len(self):
            raise IndexError(index)
        clip, start = divmod(int(index), self.scenes.per_clip)
        scene = self.scenes._scene(self.scenes.first_seed + clip)
        rendered = [scene.frame(start + k) for k in range(self.frames)]
        labels = torch.stack([labels_to_tensor(lab) for lab, _ in rendered])
        labels = F.one_hot(labels, self.num_classes).permute(0, 3, 1, 2).float().flatten(0, 1)
        frames = torch.cat([rgb_to_tensor(rgb) for _, rgb in rendered])
        flows = [
            torch.from_numpy(estimate_flow(rendered[k][1], rendered[k - 1][1], self.flow_preset)).permute(2, 0, 1)
            for k in range(self.frames_g - 1, self.frames)
        ]
        return {"labels": labels, "frames": frames, "flows": torch.cat(flows).float().contiguous()}


def build_vid2vid_models(
    config: Vid2VidTrainingConfig, device: str | torch.device | None = None
) -> dict[str, nn.Module]:
    """``{"G": Vid2VidGenerator, "D": spectral-norm PatchGAN on (label, image)[, "vgg": VGG loss]}``,
    initialised N(0, 0.02) (the official init) and in training mode."""
    device = torch.device(device or config.device)
    g = init_weights(build_generator("vid2vid", **config.generator_config()))
    d = NLayerDiscriminator(g.input_nc + g.output_nc, ndf=config.ndf, n_layers=config.n_layers_D, norm="none",
                            use_spectral_norm=True)  # fmt: skip
    models: dict[str, nn.Module] = {"G": g.to(device).train(), "D": d.to(device).train()}
    if config.vgg_weights and config.lambda_vgg > 0:
        models["vgg"] = VGGPerceptualLoss(config.vgg_weights).to(device)
    return models


def masked_l1(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The official ``MaskedL1Loss``: ``mean |a*m - b*m|`` with the 1-channel mask broadcast."""
    mask = mask.expand_as(a)
    return F.l1_loss(a * mask, b * mask)


@torch.no_grad()
def flow_confidence(current: torch.Tensor, previous: torch.Tensor, flow: torch.Tensor, threshold: float = 0.02):
    """The official FlowNet confidence: 1 where ``previous`` warped by ``flow`` matches ``current``
    (sum over channels of the squared error, images in [-1, 1], below ``threshold``), else 0."""
    error = (current.float() - resample(previous.float(), flow.float())).pow(2).sum(dim=1, keepdim=True)
    return (error < threshold).float()


def train_step(
    models: Mapping[str, nn.Module], optimizers: Mapping[str, torch.optim.Optimizer], batch: Mapping[str, torch.Tensor],
    config: Vid2VidTrainingConfig,
) -> dict[str, float]:  # fmt: skip
    """One G and one D update on ``batch`` (see the module docstring); the unweighted loss terms,
    averaged over the generated frames: ``G_GAN``, ``G_L1``, ``F_flow``, ``F_warp``, ``W``,
    ``G_VGG`` (with VGG), ``D_real``, ``D_fake``."""
    g, d = models["G"], models["D"]
    device = next(g.parameters()).device
    labels, frames, flows = (batch[k].to(device=device, dtype=torch.float32) for k in KEYS)
    t_g, c = config.frames_g, labels.shape[1] // config.window
    gan = GANLoss("lsgan")
    terms: dict[str, torch.Tensor] = {}

    def add(name: str, value: torch.Tensor) -> None:
        terms[name] = terms[name] + value if name in terms else value

    with training_autocast(device, config.precision):
        previous = frames[:, : (t_g - 1) * 3]  # teacher forcing: the real frames before the first generated one
        steps = flows.shape[1] // 2
        for s in range(steps):
            k = s + t_g - 1  # the frame generated now
            window, label = labels[:, s * c : (k + 1) * c], labels[:, k * c : (k + 1) * c]
            real, real_prev = frames[:, 3 * k : 3 * k + 3], frames[:, 3 * k - 3 : 3 * k]
            fake, flow, weight = g(window, previous)[:3]
            flow_ref = flows[:, 2 * s : 2 * s + 2]
            conf = flow_confidence(real, real_prev, flow_ref, config.conf_threshold)
            add("D_fake", gan(d(torch.cat([label, fake.detach()], dim=1)), False))
            add("D_real", gan(d(torch.cat([label, real], dim=1)), True))
            d.requires_grad_(False)  # G's pass through D must not accumulate D gradients
            try:
                add("G_GAN", gan(d(torch.cat([label, fake], dim=1)), True, for_discriminator=False))
            finally:
                d.requires_grad_(True)
            add("G_L1", F.l1_loss(fake, real))
            add("F_flow", masked_l1(flow, flow_ref, conf))
            add("F_warp", masked_l1(resample(real_prev, flow), real, conf))
            add("W", masked_l1(weight, torch.zeros_like(weight), conf))
            if "vgg" in models:
                add("G_VGG", models["vgg"](fake, real))
            previous = torch.cat([previous[:, 3:], fake], dim=1)  # recurrent: the output becomes a previous frame
        terms = {name: value / steps for name, value in terms.items()}
        weights = {"G_GAN": config.lambda_gan, "G_L1": config.lambda_l1, "F_flow": config.lambda_flow,
                   "F_warp": config.lambda_warp, "W": config.lambda_weight, "G_VGG": config.lambda_vgg}  # fmt: skip
        loss_g = sum(weights[name] * terms[name] for name in weights if name in terms)

    optimizers["G"].zero_grad(set_to_none=True)
    loss_g.backward()
    optimizers["G"].step()
    optimizers["D"].zero_grad(set_to_none=True)
    (0.5 * (terms["D_fake"] + terms["D_real"])).backward()
    optimizers["D"].step()
    order = ("G_GAN", "G_L1", "F_flow", "F_warp", "W", "G_VGG", "D_real", "D_fake")
    return {k: float(terms[k].detach()) for k in order if k in terms}


def train_vid2vid(
    config: Vid2VidTrainingConfig,
    dataset: Iterable[Mapping[str, torch.Tensor]],
    *,
    sample_batch: Mapping[str, torch.Tensor] | list[Mapping[str, torch.Tensor]] | None = None,
    progress: bool = True,
    max_steps: int | None = None,
    ctx: TrainingContext | None = None,
) -> Path:
    """Train (or, with ``config.resume``, continue) a vid2vid teacher; returns the exported file.

    ``dataset`` yields :class:`SceneWindows` items of ``config.window`` frames. Writes into
    ``config.out_dir``: ``checkpoint.pt``, ``samples/step_NNNNNN.png`` (label | output |
    hallucinated | weight | real rows of ``sample_batch``), ``log.jsonl`` and
    ``vid2vid.safetensors``; ``max_steps`` caps the steps of this call (resume later)."""
    return run_training(config, dataset, lambda ctx: Vid2VidRecipe(config), sample_batch=sample_batch,
                        progress=progress, max_steps=max_steps, ctx=ctx)  # fmt: skip


class Vid2VidRecipe(Recipe):
    """A :class:`Vid2VidGenerator` trained from scratch on frame windows against a PatchGAN."""

    desc = "vid2vid"
    export_name = EXPORT
    trained = TRAINED
    sample_keys = KEYS

    def build_models(self, device: torch.device) -> dict[str, nn.Module]:
        return build_vid2vid_models(self.config, device)

    def train_step(self, models: Models, optimizers: Optimizers, batch: Batch) -> dict[str, float]:
        return train_step(models, optimizers, batch, self.config)

    def describe(self, losses: Mapping[str, float]) -> str:
        names = {"G_GAN": "G", "G_L1": "L1", "F_flow": "flow", "F_warp": "warp", "W": "w", "G_VGG": "vgg",
                 "D_real": "Dr", "D_fake": "Df"}  # fmt: skip
        return " ".join(f"{names.get(k, k)}={v:.3f}" for k, v in losses.items())

    def check_batch(self, batch: Batch, models: Models) -> None:
        g: Vid2VidGenerator = models["G"]  # type: ignore[assignment]
        if not isinstance(batch, Mapping) or any(k not in batch for k in KEYS):
            raise UserError("vid2vid training samples must be dicts with 'labels', 'frames' and 'flows' "
                            "(SceneWindows items).")
        t, n_gen = self.config.window, self.config.window - self.config.frames_g + 1
        labels, frames, flows = (batch[k] for k in KEYS)
        expected = {"labels": t * g.input_nc, "frames": t * g.output_nc, "flows": 2 * n_gen}
        for key, channels in expected.items():
            if batch[key].dim() != 4 or batch[key].shape[1] != channels:
                raise UserError(
                    f"the data's {key} are {tuple(batch[key].shape[1:])} per sample but this run needs {channels} "
                    f"channels ({t}-frame windows, tG {self.config.frames_g}); build the data with frames={t}."
                )
        if not labels.shape[2:] == frames.shape[2:] == flows.shape[2:]:
            raise UserError("labels, frames and flows of a sample must have one size.")
        h, w = labels.shape[2:]
        self.check_frame_size(h, w)
        g.check_size(h, w, "the training data")

    @torch.no_grad()
    def write_sample(self, path: Path, models: Models, sample: Batch) -> None:
        """One row per sample, teacher forced: current label | output | hallucinated | weight | real."""
        from fastv2v.train.teacher import visualize_input

        g: Vid2VidGenerator = models["G"]  # type: ignore[assignment]
        device = next(g.parameters()).device
        labels, frames = (sample[k].to(device=device, dtype=torch.float32) for k in ("labels", "frames"))
        t_g, c = self.config.frames_g, g.input_nc
        with eval_mode(g):
            fake, _, weight, raw = g(labels[:, : t_g * c], frames[:, : (t_g - 1) * 3])[:4]
        label = visualize_input(labels[:, (t_g - 1) * c : t_g * c], g.label_nc)
        real = frames[:, (t_g - 1) * 3 : t_g * 3]
        save_grid(path, [label, *[(x.clamp(-1, 1) + 1) / 2 for x in (fake, raw)], weight, (real + 1) / 2])

    def export(self, path: Path, models: Models, training: dict[str, Any]) -> None:
        save_generator(path, models["G"], training=training)
