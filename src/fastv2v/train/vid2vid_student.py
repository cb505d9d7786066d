"""Distil Fast-Vid2Vid's student from a frozen vid2vid teacher: spatial compression (half-resolution
input, narrower layers: :func:`~fastv2v.generators.vid2vid_student.vid2vid_student`) and the
part-time student (it runs on a subsampled clip, judged against the full-rate teacher there).

**Targets.** The teacher is sequential, so its output at frame k depends on every frame before it.
The run first plays the teacher over every training clip exactly as ``translate --method teacher``
does (zeros start, its own outputs fed back) and keeps its outputs (float16) and the label IDs in
the run folder (:class:`TeacherSequences`, ``cache/vid2vid-teacher/``, written under temporary names
and renamed, the manifest last; a resumed run reuses it when the teacher's fingerprint matches).
Those full-rate outputs are what ``fastv2v bench`` judges every method against.

**A sample** is one clip, one gap ``g`` (1 .. ``max_gap``) and a first frame ``k``: the label
frames ``k - (tG-1) g, ..., k, ..., k + (R-1) g`` (``R``: ``rollout``), the teacher's outputs at
``k - (tG-1) g, ..., k - g`` (the student's first previous outputs) and at ``k .. k + (R-1) g``
(the targets). That is the key-frame subsequence of ``--method fast`` at interval ``g`` (gap 1:
``spatial``). Samples start at every frame, the first one included: key frames before the video
are the zeros start's (frame 0's label map, a zero previous output), and at ``k = 0`` the first
call uses the raw image only, as the zeros start does at run time. ``starts`` more samples per
clip and gap begin at frame 0: every video goes through its first frame, the raw hallucination
that every later frame warps from, so its error is inherited by all of them.

**A step** runs the student ``R`` times in a row, each call's previous outputs ending with the
ones it made itself (gradients flow through them), so it learns to continue from what it made,
as it must at run time: a sequential generator's errors compound. (The first run here, 2 calls
per sample and no sample at the start, reached 33 dB to the teacher when fed the teacher's
previous outputs but 18 dB running on its own, its first frame at 12 dB.) Loss: ``lambda_l1`` x
L1 to the teacher's outputs of every frame [+ ``lambda_vgg`` x VGG with local weights]. No
discriminator: the student is judged by its fidelity to the teacher, and its teacher already
carries the GAN. ``init``: a student file of this teacher and these settings to start from (a
warm start) instead of the teacher's strongest channels.
Adam (``lr``, 0.5/0.999); exact resume, DDP and the export through the one driver
(:func:`fastv2v.train.trainer.run_training`); the export is a student model file (teacher +
student + ``fast``'s default interval), which ``translate``/``bench`` run as ``fast`` and
``spatial``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from fastv2v.errors import UserError
from fastv2v.generators.vid2vid import Vid2VidGenerator
from fastv2v.generators.vid2vid_student import vid2vid_student
from fastv2v.methods.student_model import StudentModel, save_student
from fastv2v.train.config import DistillationConfig
from fastv2v.train.distill import DistillationRecipe
from fastv2v.train.distributed import TrainingContext, training_autocast
from fastv2v.train.losses import VGGPerceptualLoss
from fastv2v.train.recipe import Batch, Models, Optimizers, eval_mode
from fastv2v.train.samples import save_grid
from fastv2v.train.trainer import run_training

EXPORT = "student.safetensors"
KEYS = ("labels", "previous", "targets", "start")
CACHE = "vid2vid-teacher"


@dataclass
class Vid2VidStudentConfig(DistillationConfig):
    """Everything that defines a vid2vid student run (stored in the checkpoint and the file).

    ``ngf``: the student's base width (None: half the teacher's); ``half_input``: the student sees
    half-resolution inputs (Fast-Vid2Vid's spatial compression); ``max_gap``: the largest key gap
    trained (default ``interval``); ``interval``: ``fast``'s default written into the file.
    ``clips`` x ``frames_per_clip``: the training clips of the scenes task the teacher is played on.
    """

    teacher: str = ""
    out_dir: str = "runs/vid2vid-student"
    task: str = "scenes"
    ngf: int | None = None
    half_input: bool = True
    interval: int = 4
    max_gap: int | None = None
    rollout: int = 3
    starts: int = 8
    init: str | None = None
    clips: int = 32
    frames_per_clip: int = 60
    size: tuple[int, int] = (128, 256)
    batch: int = 4
    steps: int = 3000
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    decay_steps: int = 0
    lambda_l1: float = 10.0
    lambda_vgg: float = 10.0
    vgg_weights: str | None = None
    checkpoint_every: int = 200
    sample_every: int = 500
    seed: int = 0
    resume: bool = False
    force: bool = False
    shuffle: bool = True
    num_workers: int = 0
    device: str = "cpu"
    precision: str = "fp32"

    @property
    def gaps(self) -> int:
        """The largest key gap a sample spans."""
        return self.max_gap or self.interval

    def validate(self) -> None:
        super().validate()
        if self.task != "scenes":
            raise UserError(f"vid2vid students distil on the scenes task for now, not {self.task!r}; use --task scenes.")
        if self.ngf is not None and self.ngf < 1:
            raise UserError(f"the student's width must be at least 1, not {self.ngf}.")
        if self.starts < 0:
            raise UserError(f"--starts must be 0 or more, not {self.starts}.")
        if self.rollout < 1:
            raise UserError(f"--rollout must be at least 1, not {self.rollout}.")
        if self.gaps < 1:
            raise UserError(f"--max-gap must be at least 1, not {self.gaps}.")
        if self.clips < 1:
            raise UserError(f"--clips must be at least 1, not {self.clips}.")


class TeacherSequences(Dataset):
    """The samples of the module notes, read from the teacher's cached full-rate outputs.

    ``frames_g``: the teacher's tG; ``gaps``: gaps 1 .. ``gaps``; ``rollout``: the frames the
    student makes in a row; ``starts``: that many more samples per clip and gap that begin at
    frame 0. Item ``i`` walks clips, then gaps, then first frames ``k`` (from 0; then the extra
    starts), so the data order is a function of the index alone (exact resume). Key frames before the
    video are the zeros start's: frame 0's label map, a zero previous output, and ``start`` 1
    when frame ``k`` is frame 0 itself (its call uses the raw image only). The arrays are opened
    on first use, after :func:`build_teacher_sequences` has written them."""

    def __init__(self, cache: Path, *, clips: int, frames_per_clip: int, frames_g: int, gaps: int, label_nc: int,
                 rollout: int = 2, starts: int = 0):  # fmt: skip
        self.cache, self.frames_g, self.label_nc, self.rollout = Path(cache), frames_g, label_nc, rollout
        self.clips, self.frames, self.starts = clips, frames_per_clip, starts
        self.per_gap = [(g, frames_per_clip - (rollout - 1) * g) for g in range(1, gaps + 1)]
        if self.per_gap[-1][1] < 1:
            raise UserError(f"a gap of {gaps} with a rollout of {rollout} frames needs clips longer than "
                            f"{(rollout - 1) * gaps} frames, not {frames_per_clip}; lower --max-gap.")  # fmt: skip
        self.per_clip = sum(n + starts for _, n in self.per_gap)
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.clips * self.per_clip

    def locate(self, index: int) -> tuple[int, int, int]:
        """``(clip, gap, k)`` of item ``index``."""
        clip, rest = divmod(int(index), self.per_clip)
        for gap, count in self.per_gap:
            if rest < count + self.starts:
                return clip, gap, rest if rest < count else 0
            rest -= count + self.starts
        raise IndexError(index)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        if self._arrays is None:
            self._arrays = (np.load(self.cache / "labels.npy", mmap_mode="r"),
                            np.load(self.cache / "outputs.npy", mmap_mode="r"))  # fmt: skip
        labels, outputs = self._arrays
        clip, gap, k = self.locate(index)
        first = clip * self.frames
        seen = [k + gap * j for j in range(1 - self.frames_g, self.rollout)]  # the window, then the later frames
        rows = [first + max(0, f) for f in seen]
        ids = torch.from_numpy(np.ascontiguousarray(labels[rows])).long()
        one_hot = F.one_hot(ids, self.label_nc).permute(0, 3, 1, 2).float().flatten(0, 1)
        made = torch.from_numpy(np.ascontiguousarray(outputs[rows])).float()
        made[torch.tensor(seen) < 0] = 0.0  # before the video: the zeros start's previous outputs
        return {"labels": one_hot, "previous": made[: self.frames_g - 1].flatten(0, 1),
                "targets": made[self.frames_g - 1 :].flatten(0, 1), "start": torch.full((1, 1, 1), float(k == 0))}  # fmt: skip


@torch.no_grad()
def build_teacher_sequences(teacher: Vid2VidGenerator, cache: Path, fingerprint: str, *, clips: int,
                            frames_per_clip: int, size: tuple[int, int], progress: bool = False) -> Path:  # fmt: skip
    """Play ``teacher`` over the scenes task's training clips (the ``teacher`` method: zeros start)
    and store label IDs (uint8) and outputs (float16) in ``cache``; reused when its manifest
    matches. Written under temporary names, renamed, the manifest last."""
    from fastv2v.data.paired import SceneFrames
    from fastv2v.methods.vid2vid import Vid2VidTeacher

    h, w = size
    manifest = {"format": "fastv2v-vid2vid-teacher-1", "teacher": fingerprint, "clips": clips,
                "frames_per_clip": frames_per_clip, "size": [h, w]}  # fmt: skip
    path = cache / "manifest.json"
    if path.is_file() and json.loads(path.read_text()) == manifest:
        return cache
    cache.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    scenes = SceneFrames("train", clips=clips, frames_per_clip=frames_per_clip, height=h, width=w)
    total = clips * frames_per_clip
    tmp = {name: cache / f"{name}.{os.getpid()}.tmp.npy" for name in ("labels", "outputs")}
    labels = np.lib.format.open_memmap(tmp["labels"], "w+", np.uint8, (total, h, w))
    outputs = np.lib.format.open_memmap(tmp["outputs"], "w+", np.float16, (total, teacher.output_nc, h, w))
    method = Vid2VidTeacher(teacher)
    device = next(teacher.parameters()).device
    for clip in range(clips):
        ids = torch.stack([scenes[clip * frames_per_clip + f]["input"] for f in range(frames_per_clip)])
        made, _ = method.push(teacher.encode_input(ids).to(device), method.init_state())
        rows = slice(clip * frames_per_clip, (clip + 1) * frames_per_clip)
        labels[rows] = ids.numpy().astype(np.uint8)
        outputs[rows] = torch.cat([y for y, _ in made]).cpu().numpy().astype(np.float16)
        if progress:
            print(f"\rteacher outputs: clip {clip + 1}/{clips}", end="", flush=True)
    if progress:
        print()
    labels.flush()
    outputs.flush()
    del labels, outputs  # closes the memory maps before the files are renamed
    for name, source in tmp.items():
        os.replace(source, cache / f"{name}.npy")
    path.write_text(json.dumps(manifest))
    return cache


def distill_vid2vid_student(
    config: Vid2VidStudentConfig,
    *,
    sample_batch: Iterable[Mapping[str, torch.Tensor]] | None = None,
    progress: bool = True,
    max_steps: int | None = None,
    ctx: TrainingContext | None = None,
) -> Path:
    """Train (or, with ``config.resume``, continue) a vid2vid student; returns the student model
    file. ``sample_batch`` (default: four training samples spread over the clips) is drawn in the
    progress pictures. Writes ``checkpoint.pt``, ``samples/``, ``log.jsonl``, the teacher cache and
    ``student.safetensors`` into ``config.out_dir``; ``max_steps`` caps this call's steps."""
    from fastv2v.data.scenes import NUM_CLASSES

    config.validate()
    frames_g = _teacher_frames(config.teacher)
    cache = Path(config.out_dir) / "cache" / CACHE
    data = TeacherSequences(cache, clips=config.clips, frames_per_clip=config.frames_per_clip, frames_g=frames_g,
                            gaps=config.gaps, label_nc=NUM_CLASSES, rollout=config.rollout,
                            starts=config.starts)  # fmt: skip
    if sample_batch is None:  # a generator: read only once the recipe has written the cache
        step = max(1, len(data) // 4)
        sample_batch = (data[i * step] for i in range(min(4, len(data))))
    return run_training(config, data, lambda ctx: Vid2VidStudentRecipe(config, ctx.device, ctx, progress),
                        sample_batch=sample_batch, progress=progress, max_steps=max_steps, ctx=ctx)  # fmt: skip


def _teacher_frames(path: str) -> int:
    """The teacher's tG, read before the run starts (a per-frame teacher is refused here)."""
    from fastv2v.generators import load_generator

    teacher = load_generator(path)
    if not isinstance(teacher, Vid2VidGenerator):
        raise UserError(f"{path} is a per-frame generator; this distiller takes a vid2vid teacher.")
    return teacher.n_frames_G


def unroll(g: nn.Module, labels: torch.Tensor, previous: torch.Tensor, start: torch.Tensor, t_g: int,
           c: int) -> list[torch.Tensor]:  # fmt: skip
    """The student's rollout over a sample: one output per frame after the first window, each
    call's previous outputs ending with the ones it made itself. ``start`` (N x 1 x 1 x 1) marks
    the samples whose first call is the video's first frame (raw image only, as the zeros start)."""
    made = []
    for i in range(labels.shape[1] // c - t_g + 1):
        final, _, _, raw = g(labels[:, i * c : (i + t_g) * c], previous)[:4]
        y = torch.where(start > 0, raw, final) if i == 0 else final
        made.append(y)
        previous = torch.cat([previous[:, y.shape[1] :], y], dim=1)
    return made


class Vid2VidStudentRecipe(DistillationRecipe):
    """The sequential student of a frozen vid2vid teacher (see the module notes)."""

    desc = "vid2vid student"
    export_name = EXPORT
    trained = ("G",)
    sample_keys = KEYS

    def __init__(self, config: Vid2VidStudentConfig, device: Any, ctx: Any = None, progress: bool = False):
        super().__init__(config, device)  # distill_vid2vid_student has refused a per-frame teacher
        cache = Path(config.out_dir) / "cache" / CACHE

        def build() -> None:
            build_teacher_sequences(self.teacher, cache, self.fingerprint, clips=config.clips,
                                    frames_per_clip=config.frames_per_clip, size=tuple(config.size),
                                    progress=progress)  # fmt: skip

        if ctx is None or ctx.is_main:
            build()
        if ctx is not None:
            ctx.barrier()  # the other ranks read what rank 0 wrote

    def build_models(self, device: torch.device) -> dict[str, nn.Module]:
        ngf = self.config.ngf or max(1, self.teacher.config["ngf"] // 2)
        student = vid2vid_student(self.teacher, ngf, self.config.half_input)
        if self.config.init:  # a warm start from a student of this teacher and these settings
            from fastv2v.methods.student_model import load_student

            earlier = load_student(self.config.init, teacher=self.teacher).student
            if earlier.config != student.config:
                raise UserError(f"--init {self.config.init} holds a student of ngf {earlier.config['ngf']}, half input "
                                f"{earlier.config.get('half_input', False)}; this run asks for ngf {ngf}, half input "
                                f"{self.config.half_input}.")  # fmt: skip
            student.load_state_dict(earlier.state_dict())
        models: dict[str, nn.Module] = {"G": student.to(device).train()}
        if self.config.vgg_weights and self.config.lambda_vgg > 0:
            models["vgg"] = VGGPerceptualLoss(self.config.vgg_weights).to(device)
        return models

    def train_step(self, models: Models, optimizers: Optimizers, batch: Batch) -> dict[str, float]:
        g = models["G"]
        device = next(g.parameters()).device
        labels, previous, targets, start = (batch[k].to(device=device, dtype=torch.float32) for k in KEYS)
        terms: dict[str, torch.Tensor] = {}
        with training_autocast(device, self.config.precision):
            made = unroll(g, labels, previous, start, self.teacher.n_frames_G, self.teacher.input_nc)
            terms["L1"] = F.l1_loss(torch.cat(made, dim=1), targets)
            if "vgg" in models:
                terms["VGG"] = sum(models["vgg"](y, targets[:, 3 * i : 3 * i + 3]) for i, y in enumerate(made)) / len(made)
            loss = self.config.lambda_l1 * terms["L1"] + self.config.lambda_vgg * terms.get("VGG", 0.0)
        optimizers["G"].zero_grad(set_to_none=True)
        loss.backward()
        optimizers["G"].step()
        return {k: float(v.detach()) for k, v in terms.items()}

    def check_batch(self, batch: Batch, models: Models) -> None:
        if not isinstance(batch, Mapping) or any(k not in batch for k in KEYS):
            raise UserError("vid2vid student samples must be dicts with 'labels', 'previous', 'targets' and 'start' "
                            "(TeacherSequences items).")  # fmt: skip
        t_g, c, out, r = self.teacher.n_frames_G, self.teacher.input_nc, self.teacher.output_nc, self.config.rollout
        expected = {"labels": (t_g - 1 + r) * c, "previous": (t_g - 1) * out, "targets": r * out}
        for key, channels in expected.items():
            if batch[key].dim() != 4 or batch[key].shape[1] != channels:
                raise UserError(f"the data's {key} have {tuple(batch[key].shape[1:])} per sample but the teacher "
                                f"needs {channels} channels; build the data for this teacher.")  # fmt: skip
        h, w = batch["labels"].shape[2:]
        self.check_frame_size(h, w)
        self.teacher.check_size(h, w, "the training data")

    @torch.no_grad()
    def write_sample(self, path: Path, models: Models, sample: Batch) -> None:
        """One row per sample: teacher | student for each frame of the rollout."""
        g = models["G"]
        device = next(g.parameters()).device
        labels, previous, targets, start = (sample[k].to(device=device, dtype=torch.float32) for k in KEYS)
        with eval_mode(g):
            made = unroll(g, labels, previous, start, self.teacher.n_frames_G, self.teacher.input_nc)
        columns = [x for i, y in enumerate(made) for x in (targets[:, 3 * i : 3 * i + 3], y)]
        save_grid(path, [(x.clamp(-1, 1) + 1) / 2 for x in columns])

    def export(self, path: Path, models: Models, training: dict[str, Any]) -> None:
        with eval_mode(models["G"]) as student:
            save_student(path, StudentModel(self.teacher, student, self.config.interval, {"training": training}))
