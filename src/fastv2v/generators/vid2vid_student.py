"""Fast-Vid2Vid's student of a vid2vid teacher: the teacher's own architecture on half-resolution
input (``half_input``: the spatially low-demand generator), optionally narrower (``ngf``), started
from the teacher's weights.

At the teacher's ``ngf`` every weight has the teacher's shape and is copied as it is. Narrower,
the student keeps the teacher's strongest channels (GAN Compression's way, as
:func:`fastv2v.generators.student.prune_from` does for per-frame students): each convolution keeps
the input channels the previous layer kept and its outputs of largest L1 weight norm; the
residual stream that both encoders write (their outputs are summed) and every residual block
reads and writes keeps one channel set, chosen by the encoders' last convolutions together; the
output heads keep all their outputs; norm layers keep their kept channels' parameters and
statistics. So distillation starts from a pruned teacher instead of from scratch.

Narrowing matters more than halving the input here: at 128x256 the scenes teacher (ngf 16) runs
60 ms a call on 2 cores, half input alone 54 ms (the decoders and full-resolution heads are
untouched), half input at ngf 8 33 ms.
"""

from __future__ import annotations

import torch
from torch import nn

from fastv2v.errors import UserError
from fastv2v.generators.resnet import ResnetBlock
from fastv2v.generators.student import _copy_strongest
from fastv2v.generators.vid2vid import Vid2VidGenerator

__all__ = ["vid2vid_student"]

_ENCODERS = ("model_down_seg", "model_down_img")
_CONV = (nn.Conv2d, nn.ConvTranspose2d)


def vid2vid_student(teacher: Vid2VidGenerator, ngf: int | None = None, half_input: bool = True) -> Vid2VidGenerator:
    """The student of ``teacher`` (its config with ``half_input`` and ``ngf``; None: the
    teacher's), started from the teacher's weights, on the teacher's device and in its mode."""
    config = {k: v for k, v in teacher.config.items() if k != "arch"}
    ngf = config["ngf"] if ngf is None else int(ngf)
    if not 1 <= ngf <= config["ngf"]:
        raise UserError(f"the student's ngf must be between 1 and the teacher's {config['ngf']}, not {ngf}.")
    student = Vid2VidGenerator(**{**config, "ngf": ngf, "half_input": half_input})
    if ngf == config["ngf"]:
        student.load_state_dict(teacher.state_dict())
    else:
        prune_vid2vid(teacher, student)
    p = next(teacher.parameters(), None)
    return student.to(p.device if p is not None else "cpu").train(teacher.training)


@torch.no_grad()
def prune_vid2vid(teacher: Vid2VidGenerator, student: Vid2VidGenerator) -> None:
    """Copy ``teacher``'s strongest channels into the narrower ``student`` (see the module notes)."""
    frames_in = torch.arange(teacher.input_nc * teacher.n_frames_G)
    previous_in = torch.arange(teacher.output_nc * (teacher.n_frames_G - 1))
    stream = _stream(teacher, student)
    for name, kept_in in zip(_ENCODERS, (frames_in, previous_in)):
        _chain(getattr(teacher, name), getattr(student, name), kept_in, stream)
    heads = {"model_up_img": ("model_final_img",), "model_up_flow": ("model_final_flow", "model_final_w")}
    for res, up in (("model_res_img", "model_up_img"), ("model_res_flow", "model_up_flow")):
        if not hasattr(teacher, res):
            continue
        _chain(getattr(teacher, res), getattr(student, res), stream)
        kept = _chain(getattr(teacher, up), getattr(student, up), stream)
        for head in heads[up]:
            _chain(getattr(teacher, head), getattr(student, head), kept, keep_all=True)
    if teacher.fg:
        kept = _chain(teacher.indv_down, student.indv_down, frames_in)
        kept = _chain(teacher.indv_res, student.indv_res, kept)
        kept = _chain(teacher.indv_up, student.indv_up, kept)
        _chain(teacher.indv_final, student.indv_final, kept, keep_all=True)


def _stream(teacher: Vid2VidGenerator, student: Vid2VidGenerator) -> torch.Tensor:
    """The residual stream's channels: largest summed L1 norm of the encoders' last convolutions' outputs."""
    norm = 0
    for name in _ENCODERS:
        conv = [m for m in getattr(teacher, name) if isinstance(m, _CONV)][-1]
        norm = norm + conv.weight.abs().flatten(1).sum(1)
    width = [m for m in student.model_down_seg if isinstance(m, _CONV)][-1].out_channels
    return torch.sort(torch.topk(norm, width).indices).values


def _chain(theirs: nn.Sequential, ours: nn.Sequential, kept: torch.Tensor, stream: torch.Tensor | None = None,
           *, keep_all: bool = False) -> torch.Tensor:  # fmt: skip
    """Walk one layer list: convolutions keep their strongest outputs (the last one before the
    residual blocks ``stream``; with ``keep_all`` every output), norms follow, residual blocks
    keep the stream; returns the channels the list's output keeps."""
    convs = [i for i, m in enumerate(theirs) if isinstance(m, _CONV)]
    for i, (mine, source) in enumerate(zip(ours, theirs)):
        if isinstance(source, ResnetBlock):
            inner = [j for j, m in enumerate(source.conv_block) if isinstance(m, _CONV)]
            mid = _layer(source.conv_block, mine.conv_block, inner[0], kept, None)
            _layer(source.conv_block, mine.conv_block, inner[1], mid, kept)
        elif isinstance(source, _CONV):
            last = convs and i == convs[-1]
            out = torch.arange(source.weight.shape[1 if isinstance(source, nn.ConvTranspose2d) else 0])
            kept = _layer(theirs, ours, i, kept, out if keep_all else (stream if last else None))
    return kept


def _layer(theirs: nn.Sequential, ours: nn.Sequential, index: int, kept_in: torch.Tensor,
           keep_out: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
    """Copy convolution ``index`` and the norm right after it (when there is one); the outputs kept."""
    kept = _copy_strongest(theirs[index], ours[index], kept_in, keep_out)
    if index + 1 < len(theirs) and isinstance(theirs[index + 1], nn.modules.batchnorm._NormBase):
        source, target = theirs[index + 1].state_dict(), ours[index + 1].state_dict()
        for key, value in target.items():
            if value.dim() == 1:
                value.copy_(source[key][kept])
    return kept
