"""``--cache-teacher``: the frozen teacher's outputs on every training frame, computed once and
read memory-mapped instead of running the teacher each step.

The teacher is frozen, so its outputs on a frame never change; but they are not equivariant to
crops (zero/reflection padding at the borders) nor to flips (the kernels are not symmetric), so
a cached output is only exact for the very input it was computed on. The cache therefore holds
each training frame **centre-cropped** at the training size in **both orientations** (slot
``2 * frame + flip``), and a run with the cache trains on those centre crops
(:class:`~fastv2v.data.paired.FootageFrames` with ``fixed_crop``): random crop positions are
the price (none is paid when the footage already has the training aspect ratio; flips stay).

What is kept, per slot, as float16 ``.npy`` files (half the disk of float32; the rounding,
below 1e-3 relative, is far under an 8-bit output's step): the shortcut distiller's head
features ``a``, body features ``f`` and output ``y``; the student distiller's ``f`` and ``y``.
The files live in the run folder (``cache/teacher-<hash>/``, the hash over the teacher's
fingerprint, the frames, the size and the precision), are written under temporary names and
renamed, with ``manifest.json`` last, so a run stopped while caching recomputes them and a
resumed run reuses them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from fastv2v.errors import UserError

FORMAT = "fastv2v-teacher-cache-1"


class TeacherCache:
    """Memory-mapped teacher outputs by slot: :meth:`targets` gives ``{key: N x ... tensor}``."""

    def __init__(self, folder: Path, keys: Sequence[str], shapes: Mapping[str, Sequence[int]]):
        self.folder, self.keys = Path(folder), tuple(keys)
        self.shapes = {k: tuple(shapes[k]) for k in self.keys}
        self._maps: dict[str, np.ndarray] | None = None

    def _arrays(self) -> dict[str, np.ndarray]:
        if self._maps is None:
            self._maps = {k: np.load(self.folder / f"{k}.npy", mmap_mode="r") for k in self.keys}
        return self._maps

    def targets(self, slots: torch.Tensor, device: torch.device | str) -> dict[str, torch.Tensor]:
        """The cached outputs of ``slots`` (int tensor), float32 on ``device``."""
        idx = np.asarray(slots.detach().cpu().long().numpy())
        arrays = self._arrays()
        return {k: torch.from_numpy(np.ascontiguousarray(arrays[k][idx])).to(device=device, dtype=torch.float32)
                for k in self.keys}  # fmt: skip

    @property
    def nbytes(self) -> int:
        return sum(int(np.prod(s)) * 2 for s in self.shapes.values())


def build_teacher_cache(
    teacher: torch.nn.Module,
    dataset: Any,
    run_folder: Path,
    compute,
    keys: Sequence[str],
    *,
    fingerprint: str,
    precision: str = "fp32",
    device: torch.device | str = "cpu",
    batch: int = 8,
) -> TeacherCache:
    """Fill (or reuse) the cache of ``compute(teacher, x) -> {key: tensor}`` over
    ``dataset.teacher_frames()`` (slots in order). Refuses, in one sentence naming the folder,
    a cache that would not fit the free disk space."""
    from fastv2v.atomic import atomic_path
    from fastv2v.train.distributed import training_autocast

    if not hasattr(dataset, "teacher_frames"):
        raise UserError("--cache-teacher works on your own footage (--data without --task); drop it for built-in tasks.")
    device = torch.device(device)
    slots = 2 * dataset.frames_used()
    ident = json.dumps([FORMAT, fingerprint, dataset.cache_key(), list(dataset.size),
                        dataset.label_nc, dataset.instance, precision, list(keys)], default=str)  # fmt: skip
    folder = Path(run_folder) / "cache" / ("teacher-" + hashlib.sha1(ident.encode()).hexdigest()[:16])
    manifest = folder / "manifest.json"
    if manifest.is_file():
        info = json.loads(manifest.read_text())
        if info.get("format") == FORMAT and info.get("slots") == slots and all((folder / f"{k}.npy").is_file() for k in keys):
            return TeacherCache(folder, keys, info["shapes"])
    # one frame's outputs give the shapes
    first = next(iter(dataset.teacher_frames()))[1]
    with torch.no_grad(), training_autocast(device, precision):
        probe = compute(teacher, first[None].to(device))
    shapes = {k: (slots, *probe[k].shape[1:]) for k in keys}
    need = sum(int(np.prod(s)) * 2 for s in shapes.values())
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if need > free * 0.9:
        raise UserError(f"--cache-teacher needs {need / 1e9:.1f} GB in {folder} but only {free / 1e9:.1f} GB are free; "
                        "free some space, use a smaller --size or less footage, or drop --cache-teacher.")  # fmt: skip
    with contextlib.ExitStack() as stack:
        tmps = {k: stack.enter_context(atomic_path(folder / f"{k}.npy")) for k in keys}
        arrays = {k: np.lib.format.open_memmap(tmps[k], mode="w+", dtype=np.float16, shape=shapes[k]) for k in keys}

        def flush(pending: list) -> None:
            ids = [s for s, _ in pending]
            with torch.no_grad(), training_autocast(device, precision):
                out = compute(teacher, torch.stack([x for _, x in pending]).to(device))
            for k in keys:
                arrays[k][ids] = out[k].float().cpu().numpy().astype(np.float16)

        pending: list = []
        for slot, x in dataset.teacher_frames():
            pending.append((slot, x))
            if len(pending) == batch:
                flush(pending)
                pending = []
        if pending:
            flush(pending)
        for a in arrays.values():
            a.flush()
        del arrays
    with atomic_path(manifest) as tmp:
        tmp.write_text(json.dumps({"format": FORMAT, "slots": slots, "shapes": {k: list(s) for k, s in shapes.items()},
                                   "fingerprint": fingerprint, "bytes": need}))  # fmt: skip
    return TeacherCache(folder, keys, {k: list(s) for k, s in shapes.items()})

