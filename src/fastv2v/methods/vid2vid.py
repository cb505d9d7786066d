"""The vid2vid teacher: a sequential generator (each output depends on its own previous outputs)
run as its official inference loop, one frame per call, with every frame of the video output.

The official loop (shared/reference/vid2vid.md, section 8) sees label frames ``k .. k+tG-1``
and the ``tG-1`` previous outputs, and never outputs frames ``0 .. tG-2``. Here every input
gets an output; how the sequence starts is the ``start`` setting (``--start``):

* ``zeros`` (default, the official ``--no_first_img``): the video is padded at its start by
  repeating its first frame, so the window always holds the last ``tG`` frames (frame 0's is
  ``[f0] * tG``, frame 1's ``[f0] * (tG-1) + [f1]``, ...); the previous outputs start as zeros
  and the first call uses the raw image only (no warp). The outputs equal
  ``run_sequence(g, [f0] * (tG-1) + frames)``.
* ``video:PATH`` (``--use_real_img``): the first ``tG-1`` frames of the real video or frame
  folder PATH, stretched to the model size, are the outputs of frames ``0 .. tG-2``
  (``key`` False: no generator made them) and the previous outputs of frame ``tG-1``.
* ``model:PATH`` (``--use_single_G``): a per-frame generator file makes those outputs, each
  from its own label frame (an instance channel the per-frame model lacks is dropped, as
  upstream does).

With a seeded start, frames from ``tG-1`` on equal ``run_sequence(g, frames, previous=seeds)``.
The per-video state (:class:`Vid2VidState`) is passed in and out, never kept on the module.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastv2v.errors import UserError
from fastv2v.generators.vid2vid import Vid2VidGenerator, step

START_HELP = "zeros, video:PATH or model:PATH"


@dataclass
class Vid2VidState:
    """Per video: the last ``tG-1`` encoded input frames and the last ``tG-1`` outputs fed back
    (oldest first; None before the first frame, and ``previous`` None until a zeros start has run)."""

    window: torch.Tensor | None = None
    previous: torch.Tensor | None = None


class Vid2VidTeacher:
    """The teacher method for a :class:`Vid2VidGenerator`: the official loop, one frame per call
    (not ``batchable``: frame t needs the output of frame t-1)."""

    name = "teacher"
    uses_interval = False
    model_kind = None
    batchable = False
    latency = 0
    SETTINGS = ("start",)

    def __init__(self, teacher: Vid2VidGenerator, start: str = "zeros", seed: Any = None):
        self.teacher, self.start = teacher, start
        self.seed = seed  # video: the real frames (uint8); model: the per-frame generator; zeros: None

    @classmethod
    def from_model(cls, model: Vid2VidGenerator, *, start: str | None = None) -> "Vid2VidTeacher":
        start = "zeros" if start is None else start
        return cls(model, start, _load_seed(start, model))

    def settings(self) -> dict[str, Any]:
        return {"start": self.start}

    def init_state(self) -> Vid2VidState:
        return Vid2VidState()

    def push(self, x: torch.Tensor, state: Vid2VidState) -> tuple[list[tuple[torch.Tensor, bool]], Vid2VidState]:
        ready = []
        for frame in x.split(1):
            y, key, state = self._next(frame, state)
            ready.append((y, key))
        return ready, state

    def flush(self, state: Vid2VidState) -> list:
        return []

    def _next(self, x: torch.Tensor, state: Vid2VidState) -> tuple[torch.Tensor, bool, Vid2VidState]:
        t_g = self.teacher.n_frames_G
        if state.window is None:  # zeros: the first frame stands in for the frames before the video
            window = x.expand(t_g, *x.shape[1:]) if self.seed is None else x
        else:
            window = torch.cat([state.window, x])
        if window.shape[0] < t_g:  # a seeded start: the given frame is this frame's output
            y, key = self._seed_frame(x, window.shape[0] - 1)
            previous = y if state.previous is None else torch.cat([state.previous, y])
            return y, key, Vid2VidState(window, previous)
        frame, previous = step(self.teacher, window, state.previous)
        return frame.unsqueeze(0), True, Vid2VidState(window[1:], previous)

    def _seed_frame(self, x: torch.Tensor, index: int) -> tuple[torch.Tensor, bool]:
        if isinstance(self.seed, torch.nn.Module):
            return self.seed(x[:, : self.seed.input_nc]), True
        from fastv2v.data.paired import rgb_to_tensor
        from fastv2v.data.resize import Resizer

        real = self.seed[index]
        frame = Resizer(real.shape[:2], size=tuple(x.shape[2:]), mode="stretch").to_model(real)
        return rgb_to_tensor(frame).unsqueeze(0).to(x.device), False

    def bench_notes(self) -> dict[str, str]:
        return {"keyframes": f"sequential vid2vid teacher, started with {self.start}: one frame per call"}


def _load_seed(start: str, teacher: Vid2VidGenerator) -> Any:
    """What ``start`` seeds the loop with, loaded (and checked) before any frame runs."""
    kind, _, path = start.partition(":")
    if start == "zeros":
        return None
    if kind not in ("video", "model") or not path:
        raise UserError(f"--start takes {START_HELP}, not {start!r}.")
    n = teacher.n_frames_G - 1
    if not Path(path).exists():
        what = "a video or folder of frames" if kind == "video" else "a per-frame generator file"
        raise UserError(f"--start {start}: {path} does not exist; give {what} for the first {n} outputs.")
    return _real_frames(path, n, teacher) if kind == "video" else _single_generator(path, teacher)


def _real_frames(path: str, n: int, teacher: Vid2VidGenerator) -> list[np.ndarray]:
    from fastv2v.data.video import open_frames

    if teacher.output_nc != 3:
        raise UserError(f"--start video:{path} gives RGB frames, but this model outputs {teacher.output_nc} channels.")
    with open_frames(path) as frames:
        first = list(itertools.islice(frames, n))
    if len(first) < n:
        raise UserError(f"--start video:{path} has {len(first)} frames; this vid2vid model starts from {n}.")
    return first


def _single_generator(path: str, teacher: Vid2VidGenerator) -> torch.nn.Module:
    """vid2vid's ``--use_single_G``: a per-frame generator on the same input (less any instance channel)."""
    from fastv2v.generators import SplitGenerator, load_generator

    labels = {"label_nc": teacher.label_nc} if teacher.label_nc and Path(path).suffix != ".safetensors" else {}
    g = load_generator(path, **labels)
    if not isinstance(g, SplitGenerator):
        raise UserError(f"--start model:{path} must be a per-frame generator (pix2pixHD, ResNet), not a vid2vid one.")
    channels = (teacher.input_nc, teacher.input_nc - int(teacher.use_instance))  # upstream drops the instance map
    if g.label_nc != teacher.label_nc or g.input_nc not in channels:
        raise UserError(
            f"--start model:{path} takes {g.input_nc} channels (label_nc {g.label_nc}), but the vid2vid model's "
            f"frames have {teacher.input_nc} (label_nc {teacher.label_nc}); give a generator of the same input."
        )
    if g.output_nc != teacher.output_nc:
        raise UserError(f"--start model:{path} outputs {g.output_nc} channels, the vid2vid model {teacher.output_nc}.")
    return g.eval()


#: The methods that run a sequential (vid2vid) teacher, by name.
SEQUENTIAL: dict[str, type] = {Vid2VidTeacher.name: Vid2VidTeacher}
