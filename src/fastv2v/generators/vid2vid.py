"""NVIDIA vid2vid's single-scale ``CompositeGenerator``, run exactly as its test script runs it.

Submodule and parameter names are the official ``state_dict`` names, so a ``latest_net_G0.pth``
loads with ``strict=True``. Two behaviours of the official test script are kept on purpose:

* it never calls ``eval()``, so every norm layer normalises with the current input's statistics;
  here that holds in eval mode too (``running_stats=True`` selects the checkpoint's statistics);
* its flow warping was written for ``grid_sample`` with ``align_corners=True`` semantics.

A generator call sees ``tG`` label frames (oldest first, concatenated along channels) and the
``tG - 1`` previous outputs; :func:`step` and :func:`run_sequence` feed its outputs back as the
official inference loop does.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastv2v.errors import UserError
from fastv2v.generators.base import SplitGenerator
from fastv2v.generators.resnet import ResnetBlock
from fastv2v.generators.student import halve_input

__all__ = ["Vid2VidGenerator", "infer_vid2vid_config", "is_vid2vid_state", "resample", "run_sequence", "step",
           "vid2vid_state_dict"]  # fmt: skip

FLOW_SCALE = 20.0  # the flow head predicts pixels / 20


class _InputStatsBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d over the current input's statistics (official test-time behaviour), buffers untouched."""

    def __init__(self, channels: int, running_stats: bool):
        super().__init__(channels)
        self.running_stats = running_stats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.running_stats:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)


class _InputStatsInstanceNorm(nn.InstanceNorm2d):
    """vid2vid's InstanceNorm2d (no affine, tracked stats that the test script never uses)."""

    def __init__(self, channels: int, running_stats: bool):
        super().__init__(channels, affine=False, track_running_stats=True)
        self.running_stats = running_stats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.running_stats:
            return F.instance_norm(x, self.running_mean, self.running_var, use_input_stats=False, eps=self.eps)
        return F.instance_norm(x, use_input_stats=True, eps=self.eps)


def _norm_factory(norm: str, running_stats: bool):
    layers = {"batch": _InputStatsBatchNorm, "instance": _InputStatsInstanceNorm}
    if norm not in layers:
        raise ValueError(f"vid2vid norm must be 'batch' or 'instance', not {norm!r}")
    return lambda channels: layers[norm](channels, running_stats)


def _stem(in_nc: int, ngf: int, norm) -> list[nn.Module]:
    return [nn.ReflectionPad2d(3), nn.Conv2d(in_nc, ngf, 7), norm(ngf), nn.ReLU(True)]


def _downs(ngf: int, n: int, norm, first_stride: int = 2) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i in range(n):
        c = ngf * 2**i
        layers += [nn.Conv2d(c, 2 * c, 3, stride=first_stride if i == 0 else 2, padding=1), norm(2 * c), nn.ReLU(True)]
    return layers


def _ups(ngf: int, n: int, norm) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i in range(n):
        c = ngf * 2 ** (n - i)
        layers += [nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1), norm(c // 2), nn.ReLU(True)]
    return layers


def _blocks(dim: int, count: int, norm) -> list[nn.Module]:
    return [ResnetBlock(dim, "reflect", norm, use_dropout=False, use_bias=True) for _ in range(count)]


def _head(ngf: int, out_nc: int, *activation: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_nc, 7), *activation)


def resample(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Warp ``image`` by ``flow`` (pixels, x then y): output (i, j) samples (j + fx, i + fy), border-clamped.

    The linspace grid with ``align_corners=True`` is the convention vid2vid was trained under
    (PyTorch 0.4's ``grid_sample``); sampling is done in float32, as the official fp16 path does.
    """
    n, _, h, w = flow.shape
    xs = torch.linspace(-1.0, 1.0, w, device=flow.device).view(1, 1, 1, w).expand(n, 1, h, w)
    ys = torch.linspace(-1.0, 1.0, h, device=flow.device).view(1, 1, h, 1).expand(n, 1, h, w)
    flow = flow.float()
    offset = torch.cat([flow[:, 0:1] / ((w - 1.0) / 2.0), flow[:, 1:2] / ((h - 1.0) / 2.0)], dim=1)
    grid = (torch.cat([xs, ys], dim=1) + offset).permute(0, 2, 3, 1)
    out = F.grid_sample(image.float(), grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.to(image.dtype)


class Vid2VidGenerator(nn.Module):
    """vid2vid ``CompositeGenerator``: hallucinated frame blended with the flow-warped previous output.

    ``input_nc`` is the per-frame channel count C: ``label_nc`` (+1 with ``use_instance``) for
    label maps, the image channels for image input (``label_nc == 0``). With ``fg`` a separate
    foreground branch is pasted in where the current label frame has a class of ``fg_labels``.

    ``half_input`` makes Fast-Vid2Vid's spatially low-demand student: the encoders see the label
    frames and the previous outputs at half resolution (:func:`~fastv2v.generators.student.halve_input`)
    and their first downsampling conv has stride 1, so every later layer runs at the sizes it
    runs at in the full generator and the output (and the flow warp of the full-resolution
    previous output) stays full size. Its weights have the full generator's shapes, so a
    teacher's weights start it (:func:`fastv2v.generators.vid2vid_student.vid2vid_student`).
    """

    def __init__(
        self,
        input_nc: int = 3,
        output_nc: int = 3,
        n_frames_G: int = 3,
        ngf: int = 128,
        n_downsample_G: int = 3,
        n_blocks: int = 9,
        norm: str = "batch",
        no_flow: bool = False,
        fg: bool = False,
        label_nc: int = 0,
        use_instance: bool = False,
        fg_labels: tuple[int, ...] | list[int] = (26,),
        running_stats: bool = False,
        half_input: bool = False,
    ):
        super().__init__()
        if (use_instance and not label_nc) or (label_nc and input_nc != label_nc + int(use_instance)):
            raise ValueError("input_nc must be label_nc (+1 with use_instance); use_instance needs label maps")
        self.config: dict[str, Any] = dict(
            arch="vid2vid", input_nc=input_nc, output_nc=output_nc, n_frames_G=n_frames_G, ngf=ngf,
            n_downsample_G=n_downsample_G, n_blocks=n_blocks, norm=norm, no_flow=no_flow, fg=fg, label_nc=label_nc,
            use_instance=use_instance, fg_labels=[int(c) for c in fg_labels], running_stats=running_stats,
        )  # fmt: skip
        if half_input:  # only when set, so the configs of full generators stay as they were
            self.config["half_input"] = True
        self.half_input = half_input
        self.input_nc, self.output_nc, self.n_frames_G = input_nc, output_nc, n_frames_G
        self.label_nc, self.use_instance, self.no_flow, self.fg = label_nc, use_instance, no_flow, fg
        self.fg_labels = tuple(self.config["fg_labels"])
        self.size_multiple = 2**n_downsample_G
        norm_layer = _norm_factory(norm, running_stats)
        n, n_enc, n_mid = n_downsample_G, n_blocks - n_blocks // 2, n_blocks // 2
        stride = 1 if half_input else 2
        labels_nc, prev_nc, dim = input_nc * n_frames_G, output_nc * (n_frames_G - 1), ngf * 2**n_downsample_G
        if fg:  # registered first, as upstream does, so the key order matches its files
            ngf_fg = ngf // 2 if n > 2 else ngf
            self.indv_down = nn.Sequential(*_stem(labels_nc, ngf_fg, norm_layer), *_downs(ngf_fg, n, norm_layer, stride))
            self.indv_res = nn.Sequential(*_blocks(ngf_fg * 2**n, n_blocks, norm_layer))
            self.indv_up = nn.Sequential(*_ups(ngf_fg, n, norm_layer))
            self.indv_final = _head(ngf_fg, output_nc, nn.Tanh())
        self.model_down_seg = nn.Sequential(
            *_stem(labels_nc, ngf, norm_layer), *_downs(ngf, n, norm_layer, stride), *_blocks(dim, n_enc, norm_layer)
        )
        self.model_down_img = nn.Sequential(
            *_stem(prev_nc, ngf, norm_layer), *_downs(ngf, n, norm_layer, stride), *_blocks(dim, n_enc, norm_layer)
        )
        self.model_res_img = nn.Sequential(*_blocks(dim, n_mid, norm_layer))
        self.model_up_img = nn.Sequential(*_ups(ngf, n, norm_layer))
        self.model_final_img = _head(ngf, output_nc, nn.Tanh())
        if not no_flow:
            self.model_res_flow = nn.Sequential(*_blocks(dim, n_mid, norm_layer))
            self.model_up_flow = nn.Sequential(*_ups(ngf, n, norm_layer))
            self.model_final_flow = _head(ngf, 2)
            self.model_final_w = _head(ngf, 1, nn.Sigmoid())

    check_size = SplitGenerator.check_size
    input_kind = SplitGenerator.input_kind  # "labels" or "image", as the engine asks every teacher
    decode_output = staticmethod(SplitGenerator.decode_output)

    def forward(
        self, input: torch.Tensor, img_prev: torch.Tensor, use_raw_only: bool = False, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        """The official 7-tuple ``(img_final, flow, weight, img_raw, img_feat, flow_feat, img_fg_feat)``.

        ``input``: ``N x tG*C x H x W`` label frames, oldest first; ``img_prev``: ``N x (tG-1)*3 x H x W``
        previous outputs, most recent last. ``use_raw_only`` skips the warp (the first frame of a
        ``--no_first_img`` run). ``mask`` (``N x [1 x] H x W``, fg only) defaults to the
        ``fg_labels`` of the current label frame. Without flow, ``flow``/``weight``/``flow_feat``
        are None; without fg, ``img_fg_feat`` is.
        """
        seen, seen_prev = (self.halve(input), F.avg_pool2d(img_prev, 2)) if self.half_input else (input, img_prev)
        down = self.model_down_seg(seen) + self.model_down_img(seen_prev)
        img_feat = self.model_up_img(self.model_res_img(down))
        img_raw = self.model_final_img(img_feat)
        flow = weight = flow_feat = img_fg_feat = None
        if not self.no_flow:
            flow_feat = self.model_up_flow(self.model_res_flow(down))
            flow = self.model_final_flow(flow_feat) * FLOW_SCALE
            weight = self.model_final_w(flow_feat)
        img_final = img_raw
        if not (use_raw_only or self.no_flow):
            warped = resample(img_prev[:, -self.output_nc :], flow)
            img_final = img_raw * weight + warped * (1 - weight)
        if self.fg:
            img_fg_feat = self.indv_up(self.indv_res(self.indv_down(seen)))
            img_fg = self.indv_final(img_fg_feat)
            if mask is None:
                mask = self.foreground_mask(input)
            mask = mask.reshape(img_raw.shape[0], 1, *img_raw.shape[2:])
            img_final = img_fg * mask + img_final * (1 - mask)
            img_raw = img_fg * mask + img_raw * (1 - mask)
        return img_final, flow, weight, img_raw, img_feat, flow_feat, img_fg_feat

    def halve(self, input: torch.Tensor) -> torch.Tensor:
        """The ``tG`` stacked input frames at half resolution, each as a model input is halved."""
        n, _, h, w = input.shape
        frames = input.reshape(n * self.n_frames_G, self.input_nc, h, w)
        return halve_input(frames, self.label_nc).reshape(n, -1, h // 2, w // 2)

    def foreground_mask(self, input: torch.Tensor) -> torch.Tensor:
        """``N x 1 x H x W``: where the current (last) label frame has one of ``fg_labels``."""
        if max(self.fg_labels, default=-1) >= self.input_nc:
            raise UserError(
                f"fg_labels {list(self.fg_labels)} name channels beyond the {self.input_nc} per frame; "
                "pass mask= or load the model with the label_nc it was trained with."
            )
        current = (self.n_frames_G - 1) * self.input_nc
        channels = [current + c for c in self.fg_labels]
        return input[:, channels].sum(dim=1, keepdim=True).clamp(0, 1)

    def encode_input(self, frames: torch.Tensor, instances: torch.Tensor | None = None) -> torch.Tensor:
        """Per-frame model input ``N x C x H x W`` from raw frames, as :meth:`SplitGenerator.encode_input`
        (uint8 images to [-1, 1]; label IDs to one-hot plus the instance-boundary channel), after
        refusing what would otherwise fail deep inside torch: label IDs out of range, bad sizes."""
        self.check_size(int(frames.shape[1]), int(frames.shape[2]))
        if self.label_nc and frames.numel():
            low, high = int(frames.min()), int(frames.max())
            if low < 0 or high >= self.label_nc:
                raise UserError(
                    f"the label maps hold class ID {high if high >= self.label_nc else low} but this model has "
                    f"{self.label_nc} classes (IDs 0 to {self.label_nc - 1}); map the labels to its classes."
                )
        return SplitGenerator.encode_input(self, frames, instances)


def step(
    generator: Vid2VidGenerator, window: torch.Tensor, previous: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One official inference call: ``window`` (tG x C x H x W, oldest first) and the previous
    outputs (tG-1 x 3 x H x W, oldest first; None for the ``--no_first_img`` start) to the new
    frame (3 x H x W) and the next call's previous outputs (oldest dropped, new frame appended)."""
    _, _, h, w = window.shape
    first = previous is None
    if first:
        previous = window.new_zeros(generator.n_frames_G - 1, generator.output_nc, h, w)
    frame = generator(window.reshape(1, -1, h, w), previous.reshape(1, -1, h, w), use_raw_only=first)[0][0]
    return frame, torch.cat([previous[1:], frame.unsqueeze(0)])


@torch.no_grad()
def run_sequence(
    generator: Vid2VidGenerator, labels: torch.Tensor, previous: torch.Tensor | None = None
) -> torch.Tensor:
    """Official sequential inference over one sequence: ``labels`` (T x C x H x W, encoded) to the
    ``T - tG + 1`` output frames for label frames ``tG-1 .. T-1``. ``previous`` seeds the loop with
    ``tG-1`` frames in [-1, 1] (``--use_real_img``); None starts as ``--no_first_img`` does."""
    t_g = generator.n_frames_G
    _check_sequence(generator, labels, previous)
    param = next(generator.parameters())
    labels = labels.to(param.device, param.dtype)
    if previous is not None:
        previous = previous.to(param.device, param.dtype)
    frames = []
    for k in range(labels.shape[0] - t_g + 1):
        frame, previous = step(generator, labels[k : k + t_g], previous)
        frames.append(frame)
    return torch.stack(frames)


def _check_sequence(generator: Vid2VidGenerator, labels: torch.Tensor, previous: torch.Tensor | None) -> None:
    t_g, c = generator.n_frames_G, generator.input_nc
    if labels.dim() != 4 or labels.shape[1] != c:
        raise UserError(f"the label frames must be T x {c} x H x W, not {tuple(labels.shape)}; encode them first.")
    if labels.shape[0] < t_g:
        raise UserError(f"this vid2vid model needs at least {t_g} frames per sequence, not {labels.shape[0]}.")
    h, w = labels.shape[2:]
    generator.check_size(h, w)
    expected = (t_g - 1, generator.output_nc, h, w)
    if previous is not None and tuple(previous.shape) != expected:
        raise UserError(f"the previous frames must be {' x '.join(map(str, expected))}, not {tuple(previous.shape)}.")


# --- reading official checkpoints -------------------------------------------------------------

_STATS = ("running_mean", "running_var", "num_batches_tracked")


def is_vid2vid_state(state: dict[str, Any]) -> bool:
    """Whether a state dict (``module.`` prefixed or not) is a vid2vid ``CompositeGenerator``'s,
    judged by its label encoder so that a partial file is still told its missing keys."""
    return any(k.removeprefix("module.").startswith("model_down_seg.") for k in state)


def vid2vid_state_dict(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Tensors only, ``module.`` stripped, and the ``num_batches_tracked`` that PyTorch 0.4 files
    lack filled in (it never affects the output). Norm running stats are all kept: vid2vid's
    InstanceNorm tracks them, unlike the other upstreams'."""
    out = {k.removeprefix("module."): v for k, v in state.items() if torch.is_tensor(v)}
    for key in [k for k in out if k.endswith(".running_mean")]:
        out.setdefault(key.removesuffix("running_mean") + "num_batches_tracked", torch.tensor(0, dtype=torch.long))
    return out


def infer_vid2vid_config(state: dict[str, Any], source: str = "the checkpoint", *, label_nc: int = 0) -> dict[str, Any]:
    """The config (with ``arch: "vid2vid"``) of a vid2vid generator, read off its tensors and checked
    against every key and shape. Channels cannot tell label maps from images: ``label_nc`` says
    which (0, the default, means image input); ``fg_labels`` keeps its default."""
    state = vid2vid_state_dict(state)
    seg = _tensor(state, "model_down_seg.1.weight", 4, source)
    prev = _tensor(state, "model_down_img.1.weight", 4, source)
    output_nc = int(_tensor(state, "model_final_img.1.weight", 4, source).shape[0])
    n_prev, rest = divmod(int(prev.shape[1]), output_nc)  # tG - 1 previous frames
    frame_nc, rest2 = divmod(int(seg.shape[1]), n_prev + 1)
    if rest or rest2 or n_prev < 1:
        raise UserError(
            f"{source} has mis-shaped keys model_down_seg.1.weight {tuple(seg.shape)} / model_down_img.1.weight "
            f"{tuple(prev.shape)}: their input channels are not a whole number of {output_nc}-channel frames."
        )
    n_down = sum(1 for k, v in state.items() if re.fullmatch(r"model_up_img\.\d+\.weight", k) and v.dim() == 4)
    n_enc = _block_count(state, "model_down_seg")
    if n_down < 1 or n_enc < 1:
        raise UserError(f"{source} lacks the keys of vid2vid's up-sampling or residual layers "
                        "(model_up_img.N.weight, model_down_seg.N.conv_block.*); it is not a complete generator.")  # fmt: skip
    if "model_down_seg.2.weight" in state:
        norm = "batch"
    elif "model_down_seg.2.running_mean" in state:
        norm = "instance"
    else:
        raise UserError(f"{source} lacks model_down_seg.2.weight / .running_mean (the first norm layer); "
                        "it is not a vid2vid generator saved with --norm batch or instance.")  # fmt: skip
    use_instance = bool(label_nc) and frame_nc == label_nc + 1
    if label_nc and frame_nc not in (label_nc, label_nc + 1):
        raise UserError(f"{source} takes {frame_nc} channels per frame, not label_nc {label_nc} (+1 with instance "
                        "maps); pass the label_nc the model was trained with.")  # fmt: skip
    config = dict(
        arch="vid2vid", input_nc=frame_nc, output_nc=output_nc, n_frames_G=n_prev + 1, ngf=int(seg.shape[0]),
        n_downsample_G=n_down, n_blocks=n_enc + _block_count(state, "model_res_img"), norm=norm,
        no_flow=not any(k.startswith("model_final_flow.") for k in state),
        fg=any(k.startswith("indv_down.") for k in state), label_nc=label_nc, use_instance=use_instance,
    )  # fmt: skip
    problem = _fit_problem(config, state)
    if problem:
        raise UserError(f"{source} is not a complete vid2vid generator ({problem}); check that the file is whole.")
    return config


def _tensor(state: dict[str, torch.Tensor], key: str, dims: int, source: str) -> torch.Tensor:
    if key not in state:
        raise UserError(f"{source} lacks the vid2vid key {key}; it is not a complete generator file.")
    if state[key].dim() != dims:
        raise UserError(f"{source} has a mis-shaped key {key} {tuple(state[key].shape)}; expected a {dims}-D tensor.")
    return state[key]


def _block_count(state: dict[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.conv_block\.")
    return len({m.group(1) for k in state if (m := pattern.match(k))})


def _fit_problem(config: dict[str, Any], state: dict[str, torch.Tensor]) -> str | None:
    """Missing, unexpected and mis-shaped keys against the generator ``config`` describes, or None."""
    with torch.device("meta"):  # shapes only: a forged width must not allocate memory
        expected = Vid2VidGenerator(**{k: v for k, v in config.items() if k != "arch"}).state_dict()
    parts = [
        (label, items) for label, items in (
            ("missing keys", [k for k in expected if k not in state]),
            ("unexpected keys", [k for k in state if k not in expected]),
            ("mis-shaped keys", [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
                                 for k, v in expected.items() if k in state and state[k].shape != v.shape]),
        ) if items
    ]  # fmt: skip
    return "; ".join(f"{label} {_few(items)}" for label, items in parts) or None


def _few(items: list[str], limit: int = 4) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")
