"""The streaming translator: frames in, pipeline, frames out, with bounded memory.

Decoding runs ahead in a reader thread and encoding behind in a writer thread, so the model
never waits on FFmpeg; only ``batch`` frames plus two short queues are ever in memory. The
pipeline runs through the one loop, :func:`fastv2v.engine.loop.drive`, as in the benchmark. The output
appears at the requested path only once complete (the writer renames a temporary file).
"""

from __future__ import annotations

import collections
import itertools
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from fastv2v.engine.loop import Held, Observer, Timer, drive
from fastv2v.engine.streaming import BackgroundWriter, prefetch
from fastv2v.errors import UserError
from fastv2v.precision import warn_if_emulated


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
    audio_packets_dropped: int = 0  # damaged audio packets of the input left out (said in the summary)

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
        if self.audio_packets_dropped:
            n = self.audio_packets_dropped
            packets = f"{n} damaged audio packet{'s' if n != 1 else ''}"
            text += f"; {packets} of {self.source} could not be copied and were left out"
        return text


def resolve_device(name: str) -> torch.device:
    """``--device``: cpu, cuda or cuda:N, refused with one sentence when it cannot run here."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {name!r} is not a device name; use cpu, cuda or cuda:N.") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name} is not supported; use cpu, cuda or cuda:N.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} was asked for but no CUDA GPU is available here; use --device cpu.")
    return device


@dataclass
class StreamStats:
    frames: int = 0
    seconds_model: float = 0.0
    frames_buffered: int | None = None  # buffered methods: the most frames waiting for their output


def run_stream(
    pipeline: Any,
    frames: Iterable[np.ndarray],
    sink: Callable[[np.ndarray, np.ndarray], None],
    *,
    device: torch.device | str = "cpu",
    dtype: str = "fp32",
    batch: int = 1,
    source: str = "the input",
    total: int | None = None,
    progress: bool = True,
    observers: Iterable[Observer] = (),
) -> StreamStats:
    """Run model-size ``frames`` through ``pipeline`` (:func:`fastv2v.engine.loop.drive`) into
    ``sink(input_frame, output_frame)``, called in order from a background writer thread while
    decoding runs ahead in a reader thread. Returns the frame count, the model-only seconds and,
    for a buffered method, the most frames it held back (the latency it added)."""
    from tqdm import tqdm

    dev = device if isinstance(device, torch.device) else resolve_device(device)
    timer, held = Timer(), Held()
    bar = tqdm(total=total, unit="frame", desc="translate", disable=not progress, file=sys.stderr)
    background = BackgroundWriter(lambda pair: sink(*pair), depth=2 * batch + 2)
    try:
        decoded = prefetch(frames, depth=2 * batch + 2)
        for out in drive(pipeline, decoded, observers=[timer, *observers], batch=batch, device=dev, dtype=dtype,
                         source=source, held=held):  # fmt: skip
            background.submit((out.frame, out.output))
            bar.update(1)
    finally:
        bar.close()
        background.close()
    buffered = getattr(pipeline, "latency", 0) > 0
    return StreamStats(held.frames_in, timer.seconds, held.most_waiting if buffered else None)


def constant_rate(frames, fps, source: str) -> Iterator[np.ndarray]:
    """The frames of a source, refusing a video whose timestamps are not evenly spaced.

    Interpolation between key frames places each in-between frame by its index, as if frames
    were evenly spaced: on a variable-frame-rate video the in-between frames would show the
    wrong moments (per-frame methods keep each frame's own time instead, see :func:`translate`). Such a file
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
    pipeline: Any,
    source: str | Path,
    output: str | Path,
    *,
    device: str = "cpu",
    dtype: str = "fp32",
    batch: int = 1,
    size: tuple[int, int] | None = None,
    resize_mode: str = "pad",
    progress: bool = True,
    max_frames: int | None = None,
    complete_only: bool = False,
) -> TranslateReport:
    """Translate a video, image folder or image ``source`` into ``output`` (mp4, folder or image)
    with ``pipeline`` (:class:`fastv2v.pipeline.Pipeline`; a bare generator runs the teacher).
    ``max_frames``: translate only the first that many frames (the benchmark's clip length).
    ``complete_only``: a truncated ``source`` is an error and its partial output is not put in
    place (``--input-list``, where an output at its path must mean a complete one); otherwise the
    frames that decoded are written and ``frames_lost`` says how many did not."""
    from fastv2v.data.resize import Resizer
    from fastv2v.atomic import same_file
    from fastv2v.data.video import check_output, open_frames, open_writer

    dev = resolve_device(device)
    warn_if_emulated(dtype, dev)
    if not hasattr(pipeline, "method"):
        from fastv2v.pipeline import Pipeline

        pipeline = Pipeline.from_model(pipeline)
    pipeline = pipeline.to(dev)
    generator = pipeline.teacher
    source, output = str(source), str(output)
    check_output(output)  # first: it refuses a name too long to even look up
    if Path(output).exists() and same_file(output, source):  # also through a symbolic or hard link
        raise UserError(f"{output} is the input itself; give another output path (the input is never overwritten).")
    start = time.perf_counter()  # end to end: opening, decoding, model, encoding, muxing, renaming
    with open_frames(source, labels=generator.input_kind == "labels") as frames:
        info = frames.info
        resizer = Resizer((info.height, info.width), size=size, mode=resize_mode, multiple=pipeline.size_multiple)
        generator.check_size(*resizer.model_size, source=f"{source} (at model size)")
        audio = source if info.has_audio else None
        buffered = pipeline.latency > 0
        decoded = constant_rate(frames, info.fps, source) if buffered and info.kind == "video" else frames
        # Each output frame is written at its input frame's time (outputs come in input order, one
        # each), so a variable frame rate survives and copied audio stays in sync.
        times: collections.deque = collections.deque()
        decoded = _stamped(decoded, frames, times)
        if max_frames is not None:
            decoded = itertools.islice(decoded, max_frames)
        with open_writer(output, fps=info.fps, audio_from=audio, time_base=info.time_base) as writer:
            stats = run_stream(
                pipeline, (resizer.to_model(f) for f in decoded),
                lambda _, result: writer.write(resizer.from_model(result), time=times.popleft()),
                device=dev, dtype=dtype, batch=batch, source=source, total=info.frames, progress=progress,
            )  # fmt: skip
            if buffered:
                _check_length(pipeline, stats.frames, source)  # before the output is put in place
            if complete_only and frames.frames_lost:
                raise UserError(
                    f"{source} is truncated: {frames.frames_lost} frames could not be decoded after frame "
                    f"{stats.frames}, so nothing was written to {output}; re-copy or re-encode the input and run again."
                )
        total = time.perf_counter() - start
        lost = frames.frames_lost
        dropped = getattr(writer, "audio_packets_dropped", 0)
    return TranslateReport(
        source=source, output=output, frames=stats.frames, frames_lost=lost, seconds_total=total,
        seconds_model=stats.seconds_model, input_size=(info.height, info.width), model_size=resizer.model_size,
        fps=info.fps, frames_buffered=stats.frames_buffered, audio_packets_dropped=dropped,
    )  # fmt: skip


def _stamped(frames: Iterable[np.ndarray], source: Any, times: collections.deque) -> Iterator[np.ndarray]:
    """``frames``, recording each one's presentation time (``source.frame_seconds``) in ``times``."""
    for frame in frames:
        times.append(getattr(source, "frame_seconds", None))
        yield frame


def _check_length(pipeline, frames: int, source: str) -> None:
    """A clip shorter than one key gap of the method's schedule is a mistake worth a sentence."""
    runner = pipeline.method
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
