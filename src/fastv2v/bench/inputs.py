"""What a benchmark runs on: a user's video / folder / image, or a task's held-out clip.

Every method of a run sees the very same frames, decoded once and held in memory at model
size (so the model-only timing measures the model, not the decoder); that is why a benchmark
takes the first ``frames`` frames of a source rather than all of it. The end-to-end pass
decodes the source again from disk, as a user's translation would.

``--input scenes`` / ``edges`` (``scenes:N`` for held-out clip N) stand for a task's held-out
clip, which also has ground truth. Its input frames are written once to a temporary folder of
lossless PNGs (before any timing), so that the end-to-end pass has a real file to decode.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from fastv2v.errors import UserError

#: Frames benchmarked when ``frames`` is not given: enough for stable means, small enough to
#: keep every method's outputs in memory and finish in minutes on a laptop CPU.
DEFAULT_FRAMES = 60
#: Held-out clips are rendered at the tasks' training size unless ``size`` is given.
TASK_SIZE = (128, 256)

_TASK_SPEC = re.compile(r"(scenes|edges)(?::(\d+))?")


@dataclass
class BenchInput:
    """A resolved benchmark input. ``source`` is what the end-to-end pass decodes."""

    spec: str
    kind: str  # 'task' | 'video' | 'folder' | 'image'
    path: str
    height: int
    width: int
    fps: Fraction
    frames: int  # frames benchmarked
    frames_available: int | None
    task: str | None = None
    clip: str | None = None
    source: Path | None = None
    inputs: list[np.ndarray] | None = None  # task clips: the input frames (labels or RGB)
    targets: list[np.ndarray] | None = None  # task clips: ground truth
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def labels(self) -> bool | None:
        """Whether the frames are label maps (True), RGB (False), or either, per model (None)."""
        if self.task is None:
            return None
        return self.task == "scenes"

    def describe(self) -> dict:
        return {
            "path": self.path, "kind": self.kind, "task": self.task, "clip": self.clip, "frames": self.frames,
            "frames_available": self.frames_available, "height": self.height, "width": self.width,
            "fps": float(self.fps), "fps_exact": str(self.fps), "ground_truth": self.targets is not None,
        }  # fmt: skip

    def model_frames(self, labels: bool, resizer) -> list[np.ndarray]:
        """The benchmarked frames at model size (``resizer.to_model``), decoded once per kind.

        Only model-size frames are kept, so a 4K source costs no more memory than the model input.
        """
        key = (labels, repr(resizer))
        if key not in self._cache:
            if self.inputs is not None:
                self._cache[key] = [resizer.to_model(f) for f in self.inputs]
            else:
                from fastv2v.data.video import open_frames

                with open_frames(self.source, labels=labels) as frames:
                    self._cache[key] = [resizer.to_model(f) for f in itertools.islice(frames, self.frames)]
                if len(self._cache[key]) < self.frames:
                    raise UserError(
                        f"{self.source} yielded only {len(self._cache[key])} of its {self.frames} frames; "
                        "the file may be truncated: re-encode it or pass a smaller --frames."
                    )
        return self._cache[key]

    def write_source(self, folder: Path) -> None:
        """Task clips: write the input frames as lossless PNGs for the end-to-end pass."""
        if self.task is None:
            return
        from PIL import Image

        from fastv2v.data.labels import write_label_map

        folder.mkdir(parents=True, exist_ok=True)
        for i, frame in enumerate(self.inputs):
            path = folder / f"{i:06d}.png"
            if frame.ndim == 2:
                write_label_map(path, frame)
            else:
                Image.fromarray(frame).save(path)
        self.source = folder


def resolve_input(
    spec: str | Path,
    *,
    size: tuple[int, int] | None = None,
    frames: int | None = None,
) -> BenchInput:
    """Open ``spec`` (a path, or ``scenes``/``edges`` with an optional ``:N``) and check it.

    ``frames``: how many frames to benchmark (None: :data:`DEFAULT_FRAMES`; 0: all).
    A task keyword wins over a file of the same name; write ``./scenes`` for such a file.
    """
    if frames is not None and frames < 0:
        raise UserError(f"--frames must be 0 (all) or a positive number, not {frames}.")
    want = DEFAULT_FRAMES if frames is None else (frames or None)
    text = str(spec)
    match = _TASK_SPEC.fullmatch(text)
    if match:
        from fastv2v.data.paired import heldout_clip

        task, index = match[1], int(match[2] or 0)
        h, w = size or TASK_SIZE
        clip = heldout_clip(task, index, height=h, width=w, frames=want)
        pairs = list(itertools.islice(clip, want)) if want else list(clip)
        if len(pairs) < 2:
            raise UserError(f"held-out clip {text} has {len(pairs)} frames; a benchmark needs at least 2.")
        return BenchInput(
            spec=text, kind="task", path=f"{task}:{index}", height=h, width=w, fps=Fraction(clip.fps),
            frames=len(pairs), frames_available=clip.frames, task=task, clip=clip.name,
            inputs=[p[0] for p in pairs], targets=[p[1] for p in pairs],
        )  # fmt: skip
    from fastv2v.data.video import open_frames

    path = Path(text)
    with _open_any(path) as source:
        info = source.info
    if info.kind == "image":
        raise UserError(f"{path} is a single image; a benchmark needs a video or a folder of frames.")
    available = info.frames
    if available is None:  # a stream that does not say its length: count by decoding once
        with open_frames(path) as source:
            available = sum(1 for _ in source)
    n = min(want, available) if want else available
    if n < 2:
        raise UserError(f"{path} has {n} frame(s); a benchmark needs at least 2 frames.")
    return BenchInput(
        spec=text, kind=info.kind, path=str(path), height=info.height, width=info.width, fps=info.fps,
        frames=int(n), frames_available=available, source=path,
    )  # fmt: skip


def _open_any(path: Path):
    """Open for its info only: label maps that RGB reading refuses (16-bit) are tried as labels."""
    from fastv2v.data.video import open_frames

    try:
        return open_frames(path)
    except UserError as first:
        if not (path.is_dir() or path.suffix.lower() in (".png", ".tif", ".tiff", ".bmp", ".webp")):
            raise
        try:
            return open_frames(path, labels=True)
        except UserError:
            raise first from None
