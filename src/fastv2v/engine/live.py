"""Live translation: a camera, a network stream or standard input in, translated frames out, in
real time (``fastv2v live SOURCE SINK --model M``).

Three threads with bounded queues: *capture* decodes the source (PyAV) and resizes each frame to
the model size; *model* runs the pipeline's online method under a latency budget; *writer*
encodes to the sink. The main thread prints the statistics once a second and stops everything
on the end of the source, ``--duration``, Ctrl-C or SIGTERM; the output is always finalised.

The schedule (the model thread, :class:`Controller`) reads the age of the oldest waiting frame
(its capture time to now) against ``budget``, with running estimates of what a key frame, a
non-key frame and a write cost:

1. a frame whose model input differs from the last processed one by less than ``skip_below``
   (mean absolute difference, uint8) shows the last output again (``skipped``);
2. while a key frame would still finish well within the budget, the method runs as it always
   does (its own key-frame schedule);
3. under load an elastic student (``spatial`` with a student file distilled with
   ``--elastic``) first steps down to its next cheaper sub-network (no reload: ``switch`` in the
   per-video state), and back up one step at a time once a wider one fits well within the budget
   again (``subnet_switches``, ``subnet``);
4. under load the key gap grows: the method's non-key path (``non_key_frame``) runs instead of a
   key frame, or, for methods without one (``teacher``, ``spatial``, ``sparse``), the last output
   is shown again (``repeated``), up to ``max_gap`` frames since the last key frame;
5. only a frame that cannot be finished within the budget even so is dropped (``dropped``: not
   written at all); the writer also drops a frame that would be written past its budget.

Latency is measured from the moment the capture thread has the decoded frame to the moment the
writer has handed the translated frame to the encoder.
"""

from __future__ import annotations

import collections
import json
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import av
import numpy as np
import torch

from fastv2v.engine.loop import autocast
from fastv2v.errors import UserError

#: Stream URL schemes a source or a sink may name.
STREAM_SCHEMES = ("udp", "rtp", "rtsp", "rtmp", "rtmps", "http", "https", "tcp", "srt", "hls")
#: FFmpeg muxer for each sink scheme (the sink carries H.264 unless ``rawvideo`` is asked for).
SINK_FORMATS = {"udp": "mpegts", "tcp": "mpegts", "srt": "mpegts", "rtp": "rtp_mpegts", "rtmp": "flv", "rtmps": "flv"}
_AVError = (av.error.FFmpegError, OSError)
_END = object()


def is_stream_url(text: str) -> bool:
    return "://" in text and text.split("://", 1)[0].lower() in STREAM_SCHEMES


# ---------------------------------------------------------------------------------------------
# statistics


@dataclass
class LiveStats:
    """Counts and latencies of a live run, shared by the threads (guarded by ``lock``)."""

    captured: int = 0
    written: int = 0
    keys: int = 0
    non_keys: int = 0
    repeated: int = 0  # the last output shown again because the model was behind (teacher-like methods)
    skipped: int = 0  # the similarity gate: an unchanged frame shows the last output
    dropped: int = 0  # not written at all (too late even for the cheapest path)
    dropped_capture: int = 0  # of those: the input queue was full
    max_gap: int = 0  # the longest key gap the schedule used (frames)
    native_gap: int = 1  # the method's own key gap
    grown_at: int | None = None  # the first frame the schedule grew the gap for
    first_drop_at: int | None = None  # the first frame dropped
    subnet: str | None = None  # an elastic student's sub-network running now
    subnet_switches: int = 0  # how often the load changed it
    latencies: list[float] = field(default_factory=list)  # seconds, capture to write
    first_write: float | None = None
    last_write: float | None = None
    started: float = field(default_factory=time.perf_counter)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def drop(self, index: int, capture: bool = False) -> None:
        with self.lock:
            self.dropped += 1
            self.dropped_capture += int(capture)
            if self.first_drop_at is None:
                self.first_drop_at = index

    def percentiles(self, since: int = 0) -> dict[str, float]:
        lat = np.asarray(self.latencies[since:], dtype=np.float64) * 1000
        if lat.size == 0:
            return {"p50": math.nan, "p95": math.nan, "max": math.nan}
        return {"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)), "max": float(lat.max())}

    def line(self, fps: float, since: int = 0) -> str:
        p = self.percentiles(since)
        return (f"{fps:5.1f} frames/s, latency p50 {p['p50']:.0f} ms p95 {p['p95']:.0f} ms max {p['max']:.0f} ms; "
                f"key {self.keys}, non-key {self.non_keys}, repeated {self.repeated}, skipped {self.skipped}, "
                f"dropped {self.dropped}")  # fmt: skip


@dataclass
class LiveReport:
    """What a live run did: the summary printed at the end and written by ``--report``."""

    source: str
    sink: str
    method: str
    model_size: tuple[int, int]
    budget_ms: float
    seconds: float
    stats: LiveStats
    ended: str  # why the run stopped, one sentence

    @property
    def fps(self) -> float:
        """Frames written per second while frames were coming (first write to last write)."""
        s = self.stats
        if s.written < 2 or s.first_write is None or s.last_write <= s.first_write:
            return math.nan
        return (s.written - 1) / (s.last_write - s.first_write)

    def to_dict(self) -> dict[str, Any]:
        s = self.stats
        return {
            "source": self.source, "sink": self.sink, "method": self.method, "model_size": list(self.model_size),
            "budget_ms": self.budget_ms, "seconds": round(self.seconds, 3), "fps": _number(self.fps),
            "latency_ms": {k: _number(v) for k, v in s.percentiles().items()},
            "frames": {"captured": s.captured, "written": s.written, "key": s.keys, "non_key": s.non_keys,
                       "repeated": s.repeated, "skipped": s.skipped, "dropped": s.dropped,
                       "dropped_capture": s.dropped_capture},
            "key_gap": {"native": s.native_gap, "max": s.max_gap, "grown_at": s.grown_at,
                        "first_drop_at": s.first_drop_at},
            "subnet": {"last": s.subnet, "switches": s.subnet_switches},
            "ended": self.ended,
        }  # fmt: skip

    def summary(self) -> str:
        return f"wrote {self.stats.written} frames to {self.sink} over {self.seconds:.1f} s: " + self.stats.line(self.fps)


def _number(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 2)


# ---------------------------------------------------------------------------------------------
# sources


@dataclass
class Captured:
    index: int
    frame: np.ndarray  # model-size uint8 input
    seconds: Fraction | None  # presentation time in the source
    at: float  # perf_counter when the capture thread had it


def open_source(spec: str, *, input_format: str | None = None, options: dict[str, str] | None = None,
                open_timeout: float = 10.0, read_timeout: float = 2.0):  # fmt: skip
    """An FFmpeg input for ``spec``: a camera device (``/dev/video0``: v4l2), a stream URL, a
    file, or ``-`` (standard input: encoded, or raw with ``--input-format rawvideo`` and its
    ``video_size``/``pixel_format`` options). One sentence when it cannot be opened."""
    url, fmt = spec, input_format
    if spec == "-":
        url = "pipe:0"
    elif spec.startswith("/dev/video") and fmt is None:
        fmt = "v4l2"
    elif not is_stream_url(spec) and not Path(spec).exists():
        raise UserError(f"{spec} is neither an existing file or device nor a stream URL "
                        f"({', '.join(STREAM_SCHEMES)}://...), nor - for standard input; check the source.")  # fmt: skip
    try:
        container = av.open(url, format=fmt, options=dict(options or {}), timeout=(open_timeout, read_timeout),
                            metadata_errors="replace")  # fmt: skip
    except _AVError as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise UserError(f"the source {spec} could not be opened ({reason}); check that it is sending "
                        f"(waited {open_timeout:g} s) and its address or format.") from None  # fmt: skip
    if not container.streams.video:
        container.close()
        raise UserError(f"the source {spec} carries no video stream; give a video source.")
    return container


class Capture(threading.Thread):
    """Decode the source into model-size frames; a full queue drops its oldest frame (counted),
    so a slow model never stalls the network reader."""

    def __init__(self, container, spec: str, to_model: Callable[[np.ndarray], np.ndarray], size: tuple[int, int],
                 queue: "LatestQueue", stats: LiveStats, stop: threading.Event, read_timeout: float):  # fmt: skip
        super().__init__(name="fastv2v-capture", daemon=True)
        self.container, self.spec, self.to_model, self.size = container, spec, to_model, size
        self.queue, self.stats, self.stop, self.read_timeout = queue, stats, stop, read_timeout
        self.ended = f"{spec} ended"
        self.error: BaseException | None = None
        self.fps: Fraction | None = None

    def run(self) -> None:
        stream = self.container.streams.video[0]
        base = Fraction(stream.time_base) if stream.time_base else None
        h, w = self.size
        index = 0
        try:
            for packet in self.container.demux(stream):
                if self.stop.is_set():
                    self.ended = f"stopped reading {self.spec}"
                    break
                try:
                    frames = packet.decode()
                except _AVError:
                    continue  # a damaged packet: its frame is lost upstream, the stream goes on
                for frame in frames:
                    at = time.perf_counter()
                    if (frame.height, frame.width) != (h, w):
                        frame = frame.reformat(width=w, height=h)
                    rgb = frame.to_ndarray(format="rgb24")
                    seconds = Fraction(frame.pts) * base if frame.pts is not None and base is not None else None
                    item = Captured(index, self.to_model(rgb), seconds, at)
                    with self.stats.lock:
                        self.stats.captured += 1
                    lost = self.queue.put(item)
                    if lost is not None:
                        self.stats.drop(lost.index, capture=True)
                    index += 1
        except av.error.ExitError:
            self.ended = (f"{self.spec} sent nothing for {self.read_timeout:g} s (the stream ended or the sender "
                          "went away)")  # fmt: skip
        except _AVError as exc:
            self.ended = f"{self.spec} failed mid-stream ({getattr(exc, 'strerror', None) or exc})"
        except BaseException as exc:  # a bug: handed to the main thread
            self.error = exc
        finally:
            self.queue.close()


class LatestQueue:
    """A bounded FIFO whose ``put`` never blocks: when full, the oldest item is pushed out and
    returned (the caller counts it as dropped)."""

    def __init__(self, depth: int):
        self.items: collections.deque = collections.deque()
        self.depth = max(1, depth)
        self.closed = False
        self.cond = threading.Condition()

    def put(self, item: Any) -> Any:
        with self.cond:
            lost = self.items.popleft() if len(self.items) >= self.depth else None
            self.items.append(item)
            self.cond.notify()
            return lost

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def get(self, timeout: float = 0.1) -> Any:
        """The oldest item; ``_END`` once closed and empty; None on timeout."""
        with self.cond:
            if not self.items and not self.closed:
                self.cond.wait(timeout)
            if self.items:
                return self.items.popleft()
            return _END if self.closed else None

    def __len__(self) -> int:
        return len(self.items)


# ---------------------------------------------------------------------------------------------
# sinks


class StreamSink:
    """H.264 (or raw frames) to a stream URL or standard output, through PyAV; written as it
    comes (a stream has no temporary name to rename). Same ``write``/``close``/``abort`` as
    :class:`fastv2v.data.video.FrameWriter`."""

    def __init__(self, spec: str, fps: Fraction, fmt: str | None = None):
        scheme = spec.split("://", 1)[0].lower() if "://" in spec else None
        self.spec, self.fps = spec, fps
        self.format = fmt or (SINK_FORMATS.get(scheme, "mpegts") if spec == "-" or scheme else None)
        url = "pipe:1" if spec == "-" else spec
        if scheme == "udp" and "pkt_size" not in spec:
            url += ("&" if "?" in spec else "?") + "pkt_size=1316"
        try:
            self.container = av.open(url, "w", format=self.format, timeout=10.0)
        except _AVError as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise UserError(f"the sink {spec} could not be opened ({reason}); check the address and that the "
                            "receiver accepts it.") from None  # fmt: skip
        self.stream = None
        self.frames_written = 0
        self.last_pts = -1
        self.first: Fraction | None = None

    def write(self, frame: np.ndarray, time: Fraction | None = None) -> None:
        h, w = frame.shape[:2]
        raw = self.format == "rawvideo"
        try:
            if self.stream is None:
                self.stream = self.container.add_stream("rawvideo" if raw else "libx264", rate=self.fps)
                self.stream.height, self.stream.width = h + (0 if raw else h % 2), w + (0 if raw else w % 2)
                self.stream.pix_fmt = "rgb24" if raw else "yuv420p"
                if not raw:
                    self.stream.options = {"preset": "ultrafast", "tune": "zerolatency", "crf": "20"}
                self.stream.codec_context.time_base = Fraction(1, 1000)
                self.size = (h, w)
            if not raw and (h % 2 or w % 2):
                frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            if time is not None:
                self.first = time if self.first is None else self.first
                pts = round((time - self.first) * 1000)
            else:
                pts = round(self.frames_written * 1000 / self.fps)
            pts = max(pts, self.last_pts + 1)
            vf.pts, vf.time_base, self.last_pts = pts, Fraction(1, 1000), pts
            self.container.mux(self.stream.encode(vf))
        except _AVError as exc:
            raise UserError(f"writing to {self.spec} failed ({getattr(exc, 'strerror', None) or exc}); "
                            "check the receiver.") from None  # fmt: skip
        self.frames_written += 1

    def close(self) -> None:
        try:
            if self.stream is not None:
                self.container.mux(self.stream.encode(None))
            self.container.close()
        except _AVError:
            pass

    abort = close


def check_sink(spec: str) -> str:
    """``file`` or ``stream``, refusing in one sentence a file sink that cannot be written (before
    the model loads)."""
    from fastv2v.data.video import check_output

    if spec == "-" or is_stream_url(spec):
        return "stream"
    if "://" in spec:
        raise UserError(f"{spec} is not a sink this command writes; use a file, -, or a "
                        f"{'/'.join(sorted(SINK_FORMATS))} URL.")  # fmt: skip
    if check_output(spec) != "video":
        raise UserError(f"{spec}: a live output is a video file (.mp4, .mov or .mkv), a stream URL or -.")
    return "file"


# ---------------------------------------------------------------------------------------------
# the schedule


class _Estimate:
    """A running estimate of a cost in seconds (exponential average, quick to rise)."""

    def __init__(self, value: float = 0.0):
        self.value = value

    def add(self, seconds: float) -> None:
        rate = 0.5 if seconds > self.value else 0.1  # a slowdown counts at once, a recovery slowly
        self.value += rate * (seconds - self.value)


@dataclass
class Emitted:
    item: Captured
    output: np.ndarray  # model-size uint8
    kind: str  # key | non_key | repeated | skipped


class Controller:
    """Decides, frame by frame, how much work each frame gets under the latency budget (the
    module docstring gives the order: skip, native, grow the key gap, drop)."""

    #: fraction of the budget a frame may use up (age plus predicted work) and still run natively
    GROW_AT = 0.6

    def __init__(self, pipeline: Any, device: torch.device, budget: float, max_gap: int, skip_below: float,
                 stats: LiveStats, dtype: str = "fp32"):  # fmt: skip
        from fastv2v.methods.base import OnlineMethod, StreamState

        self.pipeline, self.method, self.g = pipeline, pipeline.method, pipeline.teacher
        self.device, self.budget, self.max_gap, self.skip_below, self.stats = device, budget, max_gap, skip_below, stats
        self.dtype = dtype  # the torch autocast precision (graph backends: fp32, theirs is compiled in)
        self.state = self.method.init_state()
        own = type(self.method).non_key_frame is not OnlineMethod.non_key_frame
        self.controllable = own and isinstance(self.state, StreamState)  # a cheaper path the schedule can call
        self.native_gap = int(getattr(getattr(self.method, "schedule", None), "max_gap", 1) or 1)
        stats.native_gap = self.native_gap
        self.key_cost, self.cheap_cost, self.write_cost = _Estimate(), _Estimate(), _Estimate(0.002)
        self.since_key = 0  # frames since the last key frame (the gap in use)
        subnets = getattr(self.method, "subnets", None)
        elastic = subnets is not None and len(subnets.labels) > 1 and hasattr(self.method, "switch")
        self.ladder = list(subnets.costs(self.g)) if elastic else []  # costliest first
        self.rung = self.ladder.index(self.method.subnet) if self.ladder else 0
        self.rung_cost: dict[str, float] = {}  # seconds per frame of each sub-network (warm-up, then running)
        stats.subnet = self.ladder[self.rung] if self.ladder else None
        self.last_input: np.ndarray | None = None
        self.last_output: np.ndarray | None = None

    # -- model calls ---------------------------------------------------------------------------
    def _encode(self, frame: np.ndarray) -> torch.Tensor:
        return self.g.encode_input(torch.from_numpy(frame[None])).to(self.device)

    def _decode(self, y: torch.Tensor) -> np.ndarray:
        return self.g.decode_output(y).cpu().numpy()[0]

    def native(self, frame: np.ndarray) -> tuple[np.ndarray, bool]:
        with torch.inference_mode(), autocast(self.device, self.dtype):
            ready, self.state = self.method.push(self._encode(frame), self.state)
            (y, key), = ready  # online methods answer each frame at once
            return self._decode(y), bool(key)

    def forced_key(self, frame: np.ndarray) -> np.ndarray:
        from fastv2v.methods.base import StreamState

        with torch.inference_mode(), autocast(self.device, self.dtype):
            y, reference = self.method.key_frame(self._encode(frame))
            self.state = StreamState(reference, _schedule_after_key(self.method.schedule, self.state.schedule))
            return self._decode(y)

    def forced_non_key(self, frame: np.ndarray) -> np.ndarray:
        from fastv2v.methods.base import StreamState

        with torch.inference_mode(), autocast(self.device, self.dtype):
            y = self.method.non_key_frame(self._encode(frame), self.state.reference)
            self.state = StreamState(self.state.reference, _schedule_after_non_key(self.state.schedule))
            return self._decode(y)

    def warm_up(self, frame: np.ndarray) -> None:
        """Run the paths once each (first calls are slow) to seed the cost estimates; the state
        is reset afterwards."""
        for _ in range(2):
            self.state = self.method.init_state()
            tick = time.perf_counter()
            self.native(frame)
            self.key_cost.value = time.perf_counter() - tick
        if self.controllable:
            tick = time.perf_counter()
            self.forced_non_key(frame)
            self.cheap_cost.value = time.perf_counter() - tick
        for label in self.ladder:  # each sub-network's cost, so a step down knows what it buys
            for _ in range(2):
                self.state = self.method.switch(self.method.init_state(), label)
                tick = time.perf_counter()
                self.native(frame)
                self.rung_cost[label] = time.perf_counter() - tick
        self.state = self.method.init_state()
        if self.ladder:
            self.key_cost.value = self.rung_cost[self.ladder[self.rung]]

    def _climb(self, age: float, write: float) -> None:
        """An elastic student under load: one sub-network cheaper when a key frame no longer
        fits the budget, one wider when the wider one fits well within it (half the budget)."""
        if not self.ladder:
            return
        here = self.ladder[self.rung]
        self.rung_cost[here] = self.key_cost.value
        wider = self.ladder[self.rung - 1] if self.rung > 0 else None
        if age + self.key_cost.value * 1.3 + write > self.budget and self.rung + 1 < len(self.ladder):
            self.rung += 1
        elif wider is not None and age + self.rung_cost.get(wider, math.inf) + write <= 0.5 * self.GROW_AT * self.budget:
            self.rung -= 1
        else:
            return
        label = self.ladder[self.rung]
        self.state = self.method.switch(self.state, label)
        self.key_cost.value = self.rung_cost.get(label, self.key_cost.value)
        with self.stats.lock:
            self.stats.subnet = label
            self.stats.subnet_switches += 1

    # -- the decision ----------------------------------------------------------------------------
    def step(self, item: Captured, waiting: int) -> Emitted | None:
        """The output of one frame, or None when it is dropped."""
        now = time.perf_counter()
        age = now - item.at
        if self.skip_below > 0 and self.last_input is not None and self.last_output is not None:
            if _mean_abs_diff(item.frame, self.last_input) < self.skip_below:
                with self.stats.lock:
                    self.stats.skipped += 1
                return Emitted(item, self.last_output, "skipped")
        write = self.write_cost.value * (1 + waiting)
        self._climb(age, write)
        key_fits = age + self.key_cost.value * 1.3 + write <= self.budget
        relaxed = age + self.key_cost.value + write <= self.GROW_AT * self.budget
        can_wait = self.last_output is not None and self.since_key + 1 < self.max_gap
        if relaxed or (key_fits and not can_wait):
            tick = time.perf_counter()
            if can_wait or self.since_key == 0 or not self.controllable:
                out, key = self.native(item.frame)
            else:  # the longest gap allowed: this frame must be a key frame
                out, key = self.forced_key(item.frame), True
            spent = time.perf_counter() - tick
            (self.key_cost if key else self.cheap_cost).add(spent)
            return self._emitted(item, out, "key" if key else "non_key")
        if can_wait:  # behind: grow the key gap rather than drop
            cheap = self.cheap_cost.value * 1.3 if self.controllable else 0.0
            if age + cheap + write <= self.budget:
                with self.stats.lock:
                    if self.stats.grown_at is None:
                        self.stats.grown_at = item.index  # the first time load, not the method, set the gap
                if self.controllable:
                    tick = time.perf_counter()
                    out = self.forced_non_key(item.frame)
                    self.cheap_cost.add(time.perf_counter() - tick)
                    return self._emitted(item, out, "non_key")
                self.since_key += 1
                with self.stats.lock:
                    self.stats.repeated += 1
                    self.stats.max_gap = max(self.stats.max_gap, self.since_key + 1)
                return Emitted(item, self.last_output, "repeated")
        self.stats.drop(item.index)
        return None

    def _emitted(self, item: Captured, out: np.ndarray, kind: str) -> Emitted:
        self.last_input, self.last_output = item.frame, out
        with self.stats.lock:
            if kind == "key":
                self.stats.keys += 1
                self.since_key = 0
            else:
                self.stats.non_keys += 1
                self.since_key += 1
            self.stats.max_gap = max(self.stats.max_gap, self.since_key + 1 if kind != "key" else 1)
        return Emitted(item, out, kind)


def _schedule_after_key(schedule: Any, state: Any) -> Any:
    """A method's schedule state after a key frame the live schedule forced: the next key frame
    one usual gap later."""
    if isinstance(state, int):  # FixedKeys: frames seen, a key frame at each multiple of the interval
        return 1
    if isinstance(state, dict) and "since" in state:  # AdaptiveInterval
        return {**state, "since": 1}
    if state is None and hasattr(schedule, "start"):
        return {"since": 1, **schedule.start()}
    return state


def _schedule_after_non_key(state: Any) -> Any:
    if isinstance(state, int):
        return state + 1
    if isinstance(state, dict) and "since" in state:
        return {**state, "since": state["since"] + 1}
    return state


def _mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return math.inf
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# ---------------------------------------------------------------------------------------------
# the run


def live(
    pipeline: Any,
    source: str,
    sink: str,
    *,
    device: str = "cpu",
    dtype: str = "fp32",
    size: tuple[int, int] | None = None,
    resize_mode: str = "pad",
    budget_ms: float = 200.0,
    max_gap: int = 8,
    skip_below: float = 1.0,
    fps: Fraction | None = None,
    duration: float | None = None,
    input_format: str | None = None,
    input_options: dict[str, str] | None = None,
    output_format: str | None = None,
    open_timeout: float = 10.0,
    read_timeout: float = 2.0,
    queue_depth: int = 4,
    quiet: bool = False,
    log: Any = None,
) -> LiveReport:
    """Translate ``source`` into ``sink`` live with ``pipeline`` (an online method); see the
    module docstring. Returns the report once the source ends, ``duration`` seconds pass, or the
    run is interrupted (KeyboardInterrupt is re-raised after the output is finalised, with the
    report on the exception as ``report``)."""
    from fastv2v.data.resize import Resizer
    from fastv2v.data.video import open_writer
    from fastv2v.engine.translate import resolve_device

    log = log or sys.stderr
    if pipeline.latency > 0:
        raise UserError(f"--method {pipeline.name} holds frames until the next key frame (a whole key gap of latency), "
                        "so it cannot run live; use an online method: teacher, repeat, reuse, shortcut, "
                        "shortcut_auto, sparse or spatial.")  # fmt: skip
    if budget_ms <= 0:
        raise UserError(f"--max-latency-ms must be positive, not {budget_ms:g}.")
    if max_gap < 1:
        raise UserError(f"--max-gap must be a whole number >= 1, not {max_gap}.")
    if skip_below < 0:
        raise UserError(f"--skip-below must be >= 0 (0 turns the similarity gate off), not {skip_below:g}.")
    from fastv2v.pipeline import is_sequential

    if is_sequential(pipeline.teacher):
        raise UserError(f"{pipeline.label} is a vid2vid (sequential) model, which live does not run yet; use a "
                        "per-frame generator.")  # fmt: skip
    if pipeline.teacher.input_kind == "labels":
        raise UserError(f"{pipeline.label} takes label maps, which a live video stream cannot carry; "
                        "use an RGB-input model.")  # fmt: skip
    kind = check_sink(sink)
    dev = resolve_device(device)
    pipeline = pipeline.to(dev)
    budget = budget_ms / 1000
    container = open_source(source, input_format=input_format, options=input_options, open_timeout=open_timeout,
                            read_timeout=read_timeout)  # fmt: skip
    stats = LiveStats()
    stop = threading.Event()
    writer = None
    try:
        stream = container.streams.video[0]
        stream.thread_type = "SLICE"  # frame threads would hold frames back (latency)
        h, w = stream.codec_context.height, stream.codec_context.width
        if not h or not w:
            raise UserError(f"the source {source} does not say its frame size; give --input-option video_size=WxH.")
        rate = fps or stream.average_rate or stream.guessed_rate or stream.base_rate or Fraction(25)
        rate = Fraction(rate.numerator, rate.denominator)
        resizer = Resizer((h, w), size=size, mode=resize_mode, multiple=pipeline.size_multiple)
        pipeline.teacher.check_size(*resizer.model_size, source=f"{source} (at model size)")
        controller = Controller(pipeline, dev, budget, max_gap, skip_below, stats, dtype)
        rng = np.random.default_rng(0)
        controller.warm_up(rng.integers(0, 256, (*resizer.model_size, 3), dtype=np.uint8))
        if kind == "file":
            writer = open_writer(sink, fps=rate, preset="veryfast",
                                 time_base=Fraction(stream.time_base) if stream.time_base else None)  # fmt: skip
        else:
            writer = StreamSink(sink, rate, output_format)
        inputs = LatestQueue(queue_depth)
        outputs = LatestQueue(2 * queue_depth)
        capture = Capture(container, source, resizer.to_model, (h, w), inputs, stats, stop, read_timeout)
        failures: list[BaseException] = []
        stats.started = time.perf_counter()
        model_thread = threading.Thread(target=_model_loop, name="fastv2v-model",
                                        args=(controller, inputs, outputs, stop, failures), daemon=True)  # fmt: skip
        writer_thread = threading.Thread(target=_write_loop, name="fastv2v-writer",
                                         args=(writer, resizer, controller, outputs, budget, stats, stop, failures),
                                         daemon=True)  # fmt: skip
        for thread in (capture, model_thread, writer_thread):
            thread.start()
        interrupted: BaseException | None = None
        ended = None
        try:
            ended = _monitor(stats, (capture, model_thread, writer_thread), stop, duration, quiet, log)
        except KeyboardInterrupt as exc:  # Ctrl-C / SIGTERM: stop cleanly, keep what was written
            interrupted = exc
            ended = "interrupted"
        stop.set()
        for thread in (capture, model_thread, writer_thread):
            thread.join()
        if capture.error is not None:
            failures.append(capture.error)
        if failures:
            raise failures[0]
        seconds = time.perf_counter() - stats.started
        ended = ended or capture.ended
        done, writer = writer, None
        done.close()  # finalises the container (a file: moved into place)
    finally:
        stop.set()
        if writer is not None:
            writer.abort()
        container.close()
    report = LiveReport(source, sink, pipeline.name, resizer.model_size, budget_ms, seconds, stats, ended)
    if interrupted is not None:
        interrupted.report = report  # type: ignore[attr-defined]
        raise interrupted
    return report


def _model_loop(controller: Controller, inputs: LatestQueue, outputs: LatestQueue, stop: threading.Event,
                failures: list) -> None:  # fmt: skip
    try:
        while not stop.is_set():
            item = inputs.get()
            if item is None:
                continue
            if item is _END:
                break
            emitted = controller.step(item, len(outputs))
            if emitted is not None:
                lost = outputs.put(emitted)
                if lost is not None:  # the writer cannot keep up: its oldest frame goes
                    controller.stats.drop(lost.item.index)
    except BaseException as exc:
        failures.append(exc)
        stop.set()
    finally:
        outputs.close()


def _write_loop(writer, resizer, controller: Controller, outputs: LatestQueue, budget: float, stats: LiveStats,
                stop: threading.Event, failures: list) -> None:  # fmt: skip
    try:
        while True:
            emitted = outputs.get()
            if emitted is None:
                continue
            if emitted is _END:
                break
            item = emitted.item
            if time.perf_counter() - item.at + controller.write_cost.value > budget:
                stats.drop(item.index)  # finished too late: writing it would break the budget
                continue
            tick = time.perf_counter()
            writer.write(resizer.from_model(emitted.output), time=item.seconds)
            done = time.perf_counter()
            controller.write_cost.add(done - tick)
            with stats.lock:
                stats.written += 1
                stats.latencies.append(done - item.at)
                stats.first_write = done if stats.first_write is None else stats.first_write
                stats.last_write = done
    except BaseException as exc:
        failures.append(exc)
        stop.set()


def _monitor(stats: LiveStats, threads, stop: threading.Event, duration: float | None, quiet: bool, log) -> str | None:
    """Print one line a second until the threads finish or ``duration`` passes."""
    start = time.perf_counter()
    last_time, last_written, last_lat = start, 0, 0
    while any(t.is_alive() for t in threads):
        threads[-1].join(timeout=0.05)
        now = time.perf_counter()
        if duration is not None and now - start >= duration:
            stop.set()
            return f"--duration {duration:g} s reached"
        if now - last_time >= 1.0:
            with stats.lock:
                written, n = stats.written, len(stats.latencies)
                line = stats.line((written - last_written) / (now - last_time), since=last_lat)
            if not quiet:
                print(f"live: {line}", file=log, flush=True)
            last_time, last_written, last_lat = now, written, n
    return None


def write_report(report: LiveReport, path: str | os.PathLike) -> None:
    from fastv2v.atomic import atomic_path

    with atomic_path(Path(path)) as tmp:
        Path(tmp).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
