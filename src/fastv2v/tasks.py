"""The project's two paired video tasks, as the trainers, the demo and the benchmark see them.

* ``scenes``: synthetic label maps -> street scenes (the Segmentation2City analogue).
* ``edges``: Canny edge maps of real footage -> the frames (the Sketch2Face analogue).

This module turns each into what a generator consumes (encoded model inputs), names the
teacher architecture the project ships for it, and finds the shipped weights.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from fastv2v.errors import UserError

TASKS = ("scenes", "edges")
WEIGHTS_DIR = Path(__file__).parent / "weights"


def generator_config(task: str, ngf: int = 32) -> dict[str, Any]:
    """Generator constructor arguments (besides ``arch``) for a task's input and output."""
    from fastv2v.data.scenes import NUM_CLASSES

    check_task(task)
    if task == "scenes":
        return {"ngf": ngf, "label_nc": NUM_CLASSES, "output_nc": 3}
    return {"ngf": ngf, "input_nc": 3, "output_nc": 3}


def check_task(task: str) -> None:
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; use one of {', '.join(TASKS)}.")


class EncodedPairs(Dataset):
    """A paired dataset with label-map inputs one-hot encoded, as the generator's model input."""

    def __init__(self, frames: Dataset, label_nc: int):
        self.frames, self.label_nc = frames, label_nc

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = dict(self.frames[index])
        for key in ("input", "ref_input"):
            if key in item and not item[key].is_floating_point():
                item[key] = F.one_hot(item[key].long(), self.label_nc).permute(2, 0, 1).float()
        return item

    def set_epoch(self, epoch: int) -> None:  # passed on to datasets that reshuffle per epoch
        if hasattr(self.frames, "set_epoch"):
            self.frames.set_epoch(epoch)


def training_pairs(
    task: str,
    split: str = "train",
    *,
    height: int = 128,
    width: int = 256,
    videos: Sequence[str | os.PathLike] | None = None,
    clips: int = 64,
    pair_gap: int | tuple[int, int] | None = None,
) -> Dataset:
    """Model-ready ``{"input", "target"}`` samples of a task's train or held-out split."""
    from fastv2v.data.paired import EdgeFrames, SceneFrames
    from fastv2v.data.scenes import NUM_CLASSES

    check_task(task)
    if task == "scenes":
        frames = SceneFrames(split, clips=clips if split == "train" else min(clips, 4), height=height,
                             width=width, pair_gap=pair_gap)  # fmt: skip
        return EncodedPairs(frames, NUM_CLASSES)
    return EdgeFrames(expand_videos(videos), split, height=height, width=width, pair_gap=pair_gap)


def footage_pairs(
    paths: Sequence[str | os.PathLike], split: str = "train", *, height: int = 128, width: int = 256,
    pair_gap: int | tuple[int, int] | None = None,
) -> Dataset:
    """Frame pairs of a user's own RGB footage (``--data`` without ``--task``): videos, folders of
    videos or of frames, or text files listing them (one path a line, relative to the list)."""
    from fastv2v.data.paired import FootageFrames

    return FootageFrames(footage_paths(paths), split, height=height, width=width, pair_gap=pair_gap)


def footage_paths(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The clips ``--data`` names: a video, a folder of videos, a folder of frames (one clip) or a
    ``.txt`` list of any of these."""
    images = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.suffix.lower() == ".txt" and path.is_file():
            lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
            listed = [path.parent / line for line in lines if line and not line.startswith("#")]
            if not listed:
                raise UserError(f"{path} lists no clips; write one video or frame-folder path per line.")
            found += footage_paths(listed)
        elif path.is_dir() and any(p.suffix.lower() in images for p in path.iterdir()):
            found.append(path)  # a folder of frames is one clip
        else:
            found += expand_videos([path]) or []
    if not found:
        raise UserError("--data names no clips; give videos, folders of frames or videos, or a .txt list.")
    return found


def expand_videos(paths: Sequence[str | os.PathLike] | None) -> list[Path] | None:
    """Video paths from files and folders of videos (None: the built-in sample clips)."""
    if not paths:
        return None
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            videos = sorted(p for p in path.iterdir() if p.suffix.lower() in {".mp4", ".mov", ".mkv", ".avi", ".webm"})
            if not videos:
                raise UserError(f"{path} holds no videos (.mp4, .mov, .mkv, .avi, .webm); point --data at video files.")
            found += videos
        elif path.is_file():
            found.append(path)
        else:
            raise UserError(f"{path} does not exist; pass video files or folders of videos with --data.")
    return found


def shipped_teacher(task: str) -> Path | None:
    """The teacher the package ships for ``task``, or None when this install has none."""
    return _shipped(task, "teacher")


def shipped_shortcut(task: str) -> Path | None:
    """The Shortcut-V2V model (shipped teacher + trained block) for ``task``, or None."""
    return _shipped(task, "shortcut")


def shipped_student(task: str) -> Path | None:
    """The Fast-Vid2Vid student model (shipped teacher + trained student) for ``task``, or None."""
    return _shipped(task, "student")


def shipped_vid2vid(task: str) -> Path | None:
    """The vid2vid-architecture (sequential) teacher shipped for ``task``, or None."""
    return _shipped(task, "vid2vid")


def shipped_vid2vid_student(task: str) -> Path | None:
    """The Fast-Vid2Vid student model of the shipped vid2vid teacher (teacher + sequential student), or None."""
    return _shipped(task, "vid2vid_student")


def _shipped(task: str, what: str) -> Path | None:
    check_task(task)
    path = WEIGHTS_DIR / f"{task}_{what}.safetensors"
    return path if path.is_file() else None
