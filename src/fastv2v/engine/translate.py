"""The streaming translator: frames in, model, frames out, with bounded memory.

Decoding runs ahead in a reader thread and encoding behind in a writer thread, so the model
never waits on FFmpeg; only ``batch`` frames plus two short queues are ever in memory. The output
appears at the requested path only once complete (the writer renames a temporary file).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from fastv2v.engine.streaming import BackgroundWriter, prefetch
from fastv2v.errors import UserError
from fastv2v.generators.base import SplitGenerator

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TranslateReport:
    """What a translation did and how fast, end to end and model only."""

    source: str
    output: str
    frames: int
    frames_lost: int
    seconds_total: float
    seconds_model: float
    input_size: tuple[int, int]
    model_size: tuple[int, int]
    fps: Any
    frames_buffered: int | None = None  # buffered methods: the most frames held back (added latency)

    @property
    def e2e_fps(self) -> float:
        return self.frames / self.seconds_total if self.seconds_total > 0 else float("nan")

    @property
    def model_fps(self) -> float:
        return self.frames / self.seconds_model if self.seconds_model > 0 else float("nan")

    def summary(self) -> str:
        text = (
            f"wrote {self.frames} frames to {self.output}: {self.e2e_fps:.2f} frames/s end to end "
            f"(decode + model + encode), {self.model_fps:.2f} frames/s model only"
        )
        if self.frames_buffered is not None:
            held = self.frames_buffered
            seconds = f" = {float(held / self.fps):.2f} s at {float(self.fps):.4g} fps" if self.fps else ""
            frames = f"{held} frame{'s' if held != 1 else ''}"
            text += f"; added latency: up to {frames}{seconds} held for the next key frame"
        return text


def autocast(device: torch.device, dtype: str):
    """Autocast context for ``dtype`` (fp32: none). bf16 roughly halves CPU time with AVX-512 BF16."""
    if dtype not in DTYPES:
        raise UserError(f"unknown --dtype {dtype!r}; use fp32, bf16 or fp16.")
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype])


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} was asked for but no CUDA GPU is available here; use --device cpu.")
    return torch.device(name)


def check_labels(labels: np.ndarray, label_nc: int, source: str, index: int) -> None:
    """A label map may only hold IDs the model was trained on."""
    top = int(labels.max()) if labels.size else 0
    if top >= label_nc or (labels.size and int(labels.min()) < 0):
        raise UserError(
            f"{source}: frame {index} holds label ID {top}, but the model knows {label_nc} classes "
            f"(0..{label_nc - 1}); remap the labels or use a model trained with label_nc > {top}."
        )


def batched(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


@dataclass
class StreamStats:
    frames: int = 0
    seconds_model: float = 0.0
    frames_buffered: int | None = None  # buffered methods: the most frames waiting for their output


def run_stream(
    generator: SplitGenerator,
    frames: Iterable[np.ndarray],
    sink: Callable[[np.ndarray, np.ndarray], None],
    *,
    runner: Callable | None = None,
    device: torch.device | str = "cpu",
    dtype: str = "fp32",
    batch: int = 1,
    source: str = "the input",
    total: int | None = None,
    progress: bool = True,
) -> StreamStats:
    """Run ``frames`` (model-size uint8 frames or label maps) through a method into ``sink``.

    ``sink(input_frame, output_frame)`` is called in order from a background thread. The
    method's per-video state is created here and passed explicitly, never kept on a module.
    Returns how many frames ran and the model-only seconds (encode_input -> decode_output).

    A buffered method (one with ``push(x, state) -> (ready, state)`` and ``flush(state)``, such
    as interpolation between key frames) gets one frame at a time; the input frames whose
    outputs are not ready yet wait here (at most one key gap of them), and the most that ever
    waited is ``frames_buffered`` (the latency the method adds).
    """
    from tqdm import tqdm

    if batch < 1:
        raise UserError(f"--batch must be at least 1, not {batch}.")
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    if runner is None:
        from fastv2v.methods.base import Teacher

        runner = Teacher(generator)
    labels = generator.input_kind == "labels"
    stats = StreamStats()
    state = runner.init_state()
    bar = tqdm(total=total, unit="frame", desc="translate", disable=not progress, file=sys.stderr)
    background = BackgroundWriter(lambda pair: sink(*pair), depth=2 * batch + 2)
    if getattr(runner, "push", None) is not None:
        try:
            _run_buffered(generator, frames, runner, state, background, bar, stats, dev, dtype, source, labels)
        finally:
            bar.close()
            background.close()
        return stats
    try:
        for chunk in batched(prefetch(frames, depth=2 * batch + 2), batch):
            if labels:
                for i, frame in enumerate(chunk):
                    check_labels(frame, generator.label_nc, source, stats.frames + i)
            tick = time.perf_counter()
            with torch.inference_mode(), autocast(dev, dtype):
                x = generator.encode_input(torch.from_numpy(np.stack(chunk)))
                y, state = runner(x, state)
                out = generator.decode_output(y).cpu().numpy()
            stats.seconds_model += time.perf_counter() - tick
            for frame, result in zip(chunk, out):
                background.submit((frame, result))
            stats.frames += len(chunk)
            bar.update(len(chunk))
    finally:
        bar.close()
        background.close()
    return stats


def _run_buffered(generator, frames, runner, state, background, bar, stats, dev, dtype, source, labels) -> None:
    """``run_stream`` for a buffered method: push frame by frame, write outputs as they come."""
    waiting: collections.deque = collections.deque()  # input frames whose outputs are not ready
    stats.frames_buffered = 0

    def emit(ready) -> list[np.ndarray]:
        return [generator.decode_output(y).cpu().numpy()[0] for y, _ in ready]

    for frame in prefetch(frames, depth=4):
        if labels:
            check_labels(frame, generator.label_nc, source, stats.frames)
        tick = time.perf_counter()
        with torch.inference_mode(), autocast(dev, dtype):
            ready, state = runner.push(generator.encode_input(torch.from_numpy(np.stack([frame]))), state)
            outs = emit(ready)
        stats.seconds_model += time.perf_counter() - tick
        waiting.append(frame)
        for result in outs:
            background.submit((waiting.popleft(), result))
        stats.frames_buffered = max(stats.frames_buffered, len(waiting))
        stats.frames += 1
        bar.update(1)
    tick = time.perf_counter()
    with torch.inference_mode(), autocast(dev, dtype):
        outs = emit(runner.flush(state))
    stats.seconds_model += time.perf_counter() - tick
    for result in outs:
        background.submit((waiting.popleft(), result))
    if waiting:
        done = stats.frames - len(waiting)
        raise RuntimeError(f"{type(runner).__name__} returned {done} outputs for {stats.frames} frames")


def constant_rate(frames, fps, source: str) -> Iterator[np.ndarray]:
    """The frames of a source, refusing a video whose timestamps are not evenly spaced.

    Interpolation between key frames places each in-between frame by its index, and the output
    is written at one constant rate: on a variable-frame-rate video the in-between frames would
    show the wrong moments and the timing of the result would differ from the input's. Such a file
    is refused, with the one command that makes it constant-rate. A frame interval within a quarter
    of the nominal one (timestamp rounding, 29.97 fps in a millisecond time base) is fine.
    """
    step = 1.0 / float(fps) if fps else None
    last = None
    for index, frame in enumerate(frames):
        now = getattr(frames, "frame_time", None)
        if step is not None and now is not None and last is not None:
            interval = now - last
            if abs(interval - step) > 0.25 * step:
                raise UserError(
                    f"{source} has a variable frame rate (frame {index} comes {interval * 1000:.1f} ms after the "
                    f"previous one, not {step * 1000:.1f} ms); interpolation needs evenly spaced frames, so convert it "
                    f"first: ffmpeg -i {source} -fps_mode cfr -r {fps} constant.mp4"
                )
        last = now
        yield frame


def translate(
    generator: SplitGenerator,
    source: str | Path,
    output: str | Path,
    *,
    runner: Callable | None = None,
    device: str = "cpu",
    dtype: str = "fp32",
    batch: int = 1,
    size: tuple[int, int] | None = None,
    resize_mode: str = "pad",
    progress: bool = True,
) -> TranslateReport:
    """Translate a video, image folder or image ``source`` into ``output`` (mp4, folder or image).

    ``runner(x, state) -> (y, state)`` is the method (default: the teacher on every frame).
    """
    from fastv2v.data.resize import Resizer
    from fastv2v.data.video import open_frames, open_writer

    dev = resolve_device(device)
    generator = generator.to(dev).eval()
    source, output = str(source), str(output)
    start = time.perf_counter()  # end to end: opening, decoding, model, encoding, muxing, renaming
    with open_frames(source, labels=generator.input_kind == "labels") as frames:
        info = frames.info
        resizer = Resizer((info.height, info.width), size=size, mode=resize_mode, multiple=generator.size_multiple)
        generator.check_size(*resizer.model_size, source=f"{source} (at model size)")
        audio = source if info.has_audio else None
        buffered = getattr(runner, "push", None) is not None
        decoded = constant_rate(frames, info.fps, source) if buffered and info.kind == "video" else frames
        with open_writer(output, fps=info.fps, audio_from=audio) as writer:
            stats = run_stream(
                generator, (resizer.to_model(f) for f in decoded),
                lambda _, result: writer.write(resizer.from_model(result)),
                runner=runner, device=dev, dtype=dtype, batch=batch, source=source, total=info.frames,
                progress=progress,
            )  # fmt: skip
            if buffered:
                _check_length(runner, stats.frames, source)  # before the output is put in place
        total = time.perf_counter() - start
        lost = frames.frames_lost
    return TranslateReport(
        source=source, output=output, frames=stats.frames, frames_lost=lost, seconds_total=total,
        seconds_model=stats.seconds_model, input_size=(info.height, info.width), model_size=resizer.model_size,
        fps=info.fps, frames_buffered=stats.frames_buffered,
    )  # fmt: skip


def _check_length(runner, frames: int, source: str) -> None:
    """A clip shorter than one key gap of the method's schedule is a mistake worth a sentence."""
    need = int(getattr(runner, "min_frames", 2) or 2)
    if frames < 2:
        raise UserError(f"{source} has {frames} frame{'s' if frames != 1 else ''}: there is nothing to interpolate; "
                        "use --method teacher.")  # fmt: skip
    if frames < need:
        spec = runner.describe().get("keyframes", "") if hasattr(runner, "describe") else ""
        raise UserError(
            f"{source} has {frames} frames, fewer than the {need} that one key-frame gap of "
            f"{spec or 'the schedule'} spans; use a smaller gap (--keyframes fixed:{frames - 1}) or --method teacher."
        )
