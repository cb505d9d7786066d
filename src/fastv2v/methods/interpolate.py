"""Interpolation between key-frame outputs (Fast-Vid2Vid's temporal half): ``interp`` and
``minterpolate``.

Key frames (chosen by a schedule, :mod:`fastv2v.methods.schedules`) run the teacher, so their
outputs are the teacher's, bit for bit. A frame ``i`` between key frames ``k0 < k1`` is made from
the two key outputs at its true position ``t = (i - k0) / (k1 - k0)``, which stays right when key
frames are unevenly spaced (the released Fast-Vid2Vid code feeds the key outputs to FFmpeg as an
evenly spaced stream, so an uneven gap puts its in-between frames at the wrong times).

These methods need the next key frame before they can output the frames before it, so they are
*buffered*: ``push(x, state) -> (ready, state)`` and ``flush(state) -> ready``, where ``ready`` is
a list of ``(y, key)`` in frame order (the protocol of :mod:`fastv2v.bench.runner` and of the
streaming engine). At most one key gap of frames (plus the schedule's look-ahead) is held; the
last frame of a clip becomes a key frame at ``flush``. ``step`` does not exist for them.

* ``minterpolate``: FFmpeg's ``minterpolate`` filter (``mi_mode=mci:mc_mode=obmc:me=epzs``,
  FFmpeg's other defaults, including its scene-change detection; the paper's baseline) through
  PyAV's filter graph: per key gap a fresh graph gets the two key outputs as frames at
  ``pts = 0`` and ``pts = k1 - k0`` (time base 1 s, so one "second" is one frame) and ``fps=1``,
  so FFmpeg's own output grid is exactly the frames in between, each with
  ``alpha = (i - k0) / (k1 - k0)`` computed by the filter from those timestamps. The filter emits
  the frames up to a key frame only once it has seen the frame after it, so the second key
  output is pushed once more at ``pts = 2 (k1 - k0)`` (only its arrival matters; it is not used
  for the gap's motion with the default bilateral motion estimation). The filter works in
  YUV 4:4:4 (it takes no RGB), which costs about 0.4 grey levels of rounding on the in-between
  frames; key frames never pass through it.
* ``interp``: the project's own, bidirectional optical flow (OpenCV DIS, :mod:`fastv2v.flow`),
  backward warping of both key outputs to the frame, and blending weights from the temporal
  distance and forward-backward consistency (:func:`fastv2v.flow.occlusion_mask`). See
  :class:`Interp` for the flow it uses.

MACs: the teacher on key frames is counted by the bench's op-level counter like any method. The
work between key frames is not torch ops on the CPU (OpenCV DIS flow, ``cv2.remap`` warps and
the blend of ``interp``; FFmpeg's motion estimation): it counts 0 MACs, and its time is measured
(``cost()``, and a ``macs_uncounted`` note in the bench report). Off the CPU ``interp``'s warps
run as ``grid_sample`` and are counted (4 MACs per output value).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable

import numpy as np
import torch

from fastv2v.errors import UserError
from fastv2v.generators.base import SplitGenerator
from fastv2v.methods.base import OnlineMethod, register, teacher_of, whole_interval
from fastv2v.methods.schedules import lookahead_of, parse_keyframes

__all__ = [
    "BufferedState", "Interp", "KeyframeInterpolation", "MInterpolate", "keep_zero_motion", "minterpolate_frames",
]

#: Safety bound on frames held for a schedule without a maximum gap of its own.
MAX_BUFFER = 64


@dataclass
class _Frame:
    index: int
    x: torch.Tensor  # model input (kept in case the frame becomes a key frame at the end)
    to_picture: Callable[[torch.Tensor], np.ndarray] = field(repr=False)
    flow_view: np.ndarray | None = field(default=None, repr=False)  # the picture as input flow sees it

    @functools.cached_property
    def picture(self) -> np.ndarray:
        """HxWx3 uint8 RGB picture of the input, or HxW int32 label map; made on first use only
        (a fixed schedule with flow on the outputs never looks at the inputs)."""
        return self.to_picture(self.x)


@dataclass
class _Key:
    index: int
    y: torch.Tensor  # the teacher's output (1 x C x H x W)
    frame: _Frame  # the key frame's input
    flow_view: np.ndarray | None = field(default=None, repr=False)  # the output as output flow sees it

    @functools.cached_property
    def output(self) -> np.ndarray:
        """The output as HxWxC uint8, as ``decode_output`` rounds it (output flow, FFmpeg)."""
        return _u8(self.y)

    @functools.cached_property
    def hwc(self) -> np.ndarray:
        """The output as HxWxC float32 (CPU), what OpenCV warps (made once per key frame; ``cv2.merge``
        of the channel planes: 6x faster than numpy's strided copy at 128x256)."""
        import cv2

        planes = self.y[0].detach().float().cpu().numpy()
        return cv2.merge(list(planes)) if len(planes) > 1 else np.ascontiguousarray(planes[0][..., None])


@dataclass
class BufferedState:
    """Per-video state of a buffered method: what waits for a decision or for the next key."""

    index: int = 0  # frames pushed
    schedule: Any = None  # the schedule's own state
    undecided: list[_Frame] = field(default_factory=list)  # waiting for the schedule
    pending: list[_Frame] = field(default_factory=list)  # non-key, waiting for the next key frame
    key: _Key | None = None  # the last key frame
    #: a sequential teacher's own state, advanced at key frames only (the vid2vid variants of
    #: :mod:`fastv2v.methods.vid2vid`); None for a per-frame teacher
    teacher_state: Any = None

    @property
    def held(self) -> int:
        return len(self.undecided) + len(self.pending)


def _u8(y: torch.Tensor) -> np.ndarray:
    """A model output (1 x C x H x W in [-1, 1]) as HxWxC uint8, as ``decode_output`` rounds it."""
    return SplitGenerator.decode_output(y)[0].cpu().numpy()


def _from_u8(image: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """HxWxC uint8 back to a model output that ``decode_output`` turns into the same bytes."""
    t = torch.from_numpy(np.ascontiguousarray(image)).to(like.device).permute(2, 0, 1)[None].float()
    return (t / 127.5 - 1.0).to(like.dtype)


class KeyframeInterpolation(OnlineMethod):
    """Base of the buffered methods: key frames run the teacher, the frames between are
    interpolated by :meth:`interpolate`. ``interval``: the fixed key gap (``fixed:interval``)
    unless ``keyframes`` names another schedule (``"peaks"``, a schedule object, ...)."""

    name = "keyframe-interpolation"
    uses_interval = True
    buffered = True
    #: what the interpolation between key frames costs outside torch (for the note)
    uncounted = ""

    def __init__(self, teacher: SplitGenerator, interval: int = 4, keyframes: Any = None,
                 max_buffer: int = MAX_BUFFER):  # fmt: skip
        super().__init__(teacher, interval)
        self.keyframes = parse_keyframes(keyframes, interval)
        self.max_buffer = int(max_buffer)
        self.labels = teacher.input_kind == "labels"
        self._cost = {"frames": 0, "seconds": 0.0}

    SETTINGS = ("interval", "keyframes")
    DEFAULT_INTERVAL = 4

    @classmethod
    def from_model(cls, model: Any, *, interval: int | None = None, keyframes: Any = None) -> "KeyframeInterpolation":
        """On a loaded model's teacher: ``fixed:interval`` key frames (default 4) unless
        ``keyframes`` names another schedule."""
        return cls(teacher_of(model), whole_interval(interval, cls.DEFAULT_INTERVAL), keyframes)

    def settings(self) -> dict[str, Any]:
        spec = getattr(self.keyframes, "spec", None)
        fixed = spec == f"fixed:{self.interval}"
        return {"interval": self.interval, "keyframes": None if fixed else spec}

    # -- what the engine and the bench read ----------------------------------------------------

    @property
    def latency(self) -> int:
        """The most frames held back before their output is ready (the added latency)."""
        return self.max_latency

    @property
    def max_latency(self) -> int:
        """The most frames held back before their output is ready (the added latency)."""
        gap = getattr(self.keyframes, "max_gap", None)
        if not gap:
            return self.max_buffer
        return min(self.max_buffer, gap - 1 + lookahead_of(self.keyframes))

    @property
    def min_frames(self) -> int:
        """The shortest clip this schedule is meant for (one whole key gap)."""
        return int(getattr(self.keyframes, "min_frames", 2) or 2)

    def describe(self) -> dict[str, Any]:
        return {"keyframes": getattr(self.keyframes, "spec", repr(self.keyframes)), "max_latency": self.max_latency}

    def cost(self) -> dict[str, float]:
        """Time spent outside torch on in-between frames so far (all runs of this object)."""
        n = self._cost["frames"]
        seconds = self._cost["seconds"]
        return {"frames": n, "seconds": seconds, "ms_per_frame": 1000 * seconds / n if n else 0.0}

    def bench_notes(self) -> dict[str, str]:
        c = self.cost()
        timing = f"; measured {c['ms_per_frame']:.2f} ms per in-between frame here" if c["frames"] else ""
        return {"macs_uncounted": f"{self.uncounted}: not torch ops, so counted as 0 MACs{timing}"}

    def non_key_path(self):
        """The torch work of one in-between frame from scratch references (for MAC profiling)."""

        def run(x: torch.Tensor):
            # stand-in key outputs (zeros, output-sized): only the in-between frame's own work runs
            y = torch.zeros(1, self.teacher.output_nc, *x.shape[-2:], device=x.device)
            frame = _Frame(1, x, self._picture)
            k0, k1 = _Key(0, y, frame), _Key(2, y, frame)
            return self.interpolate(k0, k1, [frame], [0.5])

        return run

    # -- the buffered protocol -----------------------------------------------------------------

    def init_state(self) -> BufferedState:
        return BufferedState(schedule=self.keyframes.init_state())

    def step(self, x, state):
        raise TypeError(f"{self.name} needs the next key frame: drive it with push(x, state) and flush(state)")

    def push(self, x: torch.Tensor, state: BufferedState) -> tuple[list[tuple[torch.Tensor, bool]], BufferedState]:
        """Take one frame (1 x C x H x W model input); return the outputs now ready, in order."""
        if x.shape[0] != 1:
            raise ValueError(f"{self.name}.push takes one frame at a time, got a batch of {x.shape[0]}")
        frame = _Frame(state.index, x, self._picture)
        seen = frame.picture if getattr(self.keyframes, "reads", "picture") == "picture" else None
        decisions, sched = self.keyframes.push(seen, state.schedule)
        s = BufferedState(state.index + 1, sched, state.undecided + [frame], list(state.pending), state.key,
                          state.teacher_state)  # fmt: skip
        ready = self._apply(s, decisions)
        if s.held > self.max_buffer:  # a schedule without a bound of its own
            if not s.pending:
                raise RuntimeError(f"{self.keyframes!r} looks further ahead than max_buffer={self.max_buffer} frames")
            ready += self._close(s, s.pending.pop())  # the last frame waiting becomes a key frame
        return ready, s

    def flush(self, state: BufferedState) -> list[tuple[torch.Tensor, bool]]:
        """The outputs of every frame still held; the last frame of the clip becomes a key frame."""
        s = BufferedState(state.index, state.schedule, list(state.undecided), list(state.pending), state.key,
                          state.teacher_state)  # fmt: skip
        ready = self._apply(s, self.keyframes.flush(s.schedule))
        if s.undecided:  # a schedule that left frames undecided: they are not key frames
            s.pending += s.undecided
            s.undecided = []
        if s.pending:
            last = s.pending.pop()
            ready += self._close(s, last)
        return ready

    def _apply(self, s: BufferedState, decisions: list[bool]) -> list[tuple[torch.Tensor, bool]]:
        if len(decisions) > len(s.undecided):
            raise RuntimeError(f"{self.keyframes!r} decided {len(decisions)} frames but only {len(s.undecided)} wait")
        ready = []
        for key in decisions:
            frame = s.undecided.pop(0)
            if key or s.key is None:  # the first frame is always a key frame
                ready += self._close(s, frame)
            else:
                s.pending.append(frame)
        return ready

    def key_output(self, x: torch.Tensor) -> torch.Tensor:
        """A key frame's output: the teacher, the same call as the teacher method, so
        bit-identical (a subclass may put a cheaper model there, e.g. ``fast``'s student)."""
        return self.teacher(x)

    def key_frame_output(self, s: BufferedState, frame: _Frame) -> tuple[torch.Tensor, bool]:
        """A key frame's output and whether a generator made it: :meth:`key_output` of its input for
        a per-frame teacher. A sequential teacher overrides this to advance ``s.teacher_state``
        (:mod:`fastv2v.methods.vid2vid`)."""
        return self.key_output(frame.x), True

    def _close(self, s: BufferedState, frame: _Frame) -> list[tuple[torch.Tensor, bool]]:
        """Run the key model on ``frame`` (a key frame), then interpolate the frames before it."""
        y, made = self.key_frame_output(s, frame)
        key = _Key(frame.index, y, frame)
        out: list[tuple[torch.Tensor, bool]] = []
        if s.pending:
            k0 = s.key
            span = key.index - k0.index
            ts = [(p.index - k0.index) / span for p in s.pending]
            out = [(yi, False) for yi in self._timed(k0, key, s.pending, ts)]
        s.pending = []
        s.key = key
        out.append((y, made))
        return out

    def _timed(self, k0: _Key, k1: _Key, frames: list[_Frame], ts: list[float]) -> list[torch.Tensor]:
        tick = time.perf_counter()
        ys = self.interpolate(k0, k1, frames, ts)
        self._cost["seconds"] += time.perf_counter() - tick
        self._cost["frames"] += len(frames)
        return ys

    def interpolate(self, k0: _Key, k1: _Key, frames: list[_Frame], ts: list[float]) -> list[torch.Tensor]:
        """Outputs of ``frames`` (between key frames ``k0`` and ``k1``) at positions ``ts`` in (0, 1)."""
        raise NotImplementedError

    # -- pictures ------------------------------------------------------------------------------

    def _picture(self, x: torch.Tensor) -> np.ndarray:
        """The input as the schedule and the flow see it: RGB uint8, or a label map."""
        if self.labels:
            return x[0, : self.teacher.label_nc].argmax(0).to(torch.int32).cpu().numpy()
        u8 = ((x[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        if u8.shape[2] == 1:
            return np.repeat(u8, 3, axis=2)
        return np.ascontiguousarray(u8[..., :3])


# ---------------------------------------------------------------------------------------------
# interp: optical flow


def keep_zero_motion(a: np.ndarray, b: np.ndarray, flow: np.ndarray, margin: float = 3.0,
                     sigma: float = 1.5) -> np.ndarray:  # fmt: skip
    """``flow`` (from ``a`` to ``b``) set to zero wherever zero motion explains ``a`` from ``b`` as
    well as the flow does, within ``margin`` grey levels: ``|a - b| <= |a - warp(b, flow)| +
    margin``, both residuals averaged over channels and smoothed (Gaussian, ``sigma`` pixels).

    DIS reports small motions in flat or flickering regions (a generator's output "boils" from
    frame to frame); warping by them resamples, and so blurs, pixels that did not move. Keeping
    zero motion unless the data ask for more is what a block matcher does with its zero-vector
    bias; on the shipped clips it raised the in-between SSIM by 0.04-0.07 and PSNR by 0.1-1.2 dB.
    """
    import cv2

    from fastv2v.flow import warp

    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    still, moved = cv2.absdiff(a32, b32), cv2.absdiff(a32, warp(b32, flow))
    if still.ndim == 3 and still.shape[2] > 1:  # mean over channels (cv2.transform: much faster than numpy)
        mean = np.full((1, still.shape[2]), 1.0 / still.shape[2], np.float32)
        still, moved = cv2.transform(still, mean), cv2.transform(moved, mean)
    still, moved = cv2.GaussianBlur(still, (0, 0), sigma), cv2.GaussianBlur(moved, (0, 0), sigma)
    if still.ndim == 3:
        still, moved = still[..., 0], moved[..., 0]
    out = flow.copy()
    out[still <= moved + margin] = 0
    return out


def photometric_visibility(frame: np.ndarray, key: np.ndarray, flow: np.ndarray, scale: float = 10.0,
                           sigma: float = 1.5) -> np.ndarray:  # fmt: skip
    """How well ``key`` warped by ``flow`` explains grey ``frame``: ``exp(-r / scale)`` with ``r`` the
    absolute residual in grey levels, smoothed by a Gaussian of ``sigma`` pixels. 1 where the warp
    is exact, falling towards 0 where the key frame shows something else (occluded, or the flow
    is wrong there); only the ratio of two keys' visibilities matters to the blend."""
    import cv2

    from fastv2v.flow import warp

    residual = cv2.absdiff(frame.astype(np.float32), warp(key.astype(np.float32), flow))
    residual = cv2.GaussianBlur(residual, (0, 0), sigma)
    return np.exp(residual * (-1.0 / scale))


@register
class Interp(KeyframeInterpolation):
    """Optical-flow interpolation between key-frame outputs (the project's own).

    Which flow (``flow``):

    * ``"direct"`` (default for picture inputs): every frame's input is available, so the flow is
      measured from the frame itself to each key frame's input, ``F_t0 = flow(x_t, x_k0)`` and
      ``F_t1 = flow(x_t, x_k1)``: the warp ``y_k0(p + F_t0(p))`` needs no assumption about how
      things moved in between (no linear-motion model). Which key frame sees a pixel is read
      from the inputs themselves: ``v0 = exp(-r0 / 10)`` with ``r0`` the grey-level residual
      ``|x_t - x_k0(p + F_t0)|`` (smoothed), so a pixel comes from the key frame whose warp
      explains it. Two DIS flows per in-between frame. Forward-backward consistency instead
      (two more flows, ``flow(x_k0, x_t)``, per frame) measured 0.03 dB worse on the three
      held-out edges clips at gap 4 and cost twice the time.
    * ``"keys"``: the flow between the two key frames only (two flows per gap), taken to time ``t``
      assuming linear motion (``F_t0 = -(1-t) t F_01 + t^2 F_10``, ``F_t1 = (1-t)^2 F_01 - t(1-t)
      F_10``, Super SloMo's approximation), with the forward-backward masks of the key frames
      carried along. Measured on the inputs when they are pictures (``source="input"``), on the
      outputs otherwise (label maps: ``source="output"``, the only choice: flow on the label
      maps themselves measured 0.1-0.8 dB worse than on the outputs).
    * ``"none"``: no motion at all, a cross-fade of the two key outputs (a baseline).

    Flow runs on grey pictures scaled by ``flow_scale`` (default 0.5: a quarter of the pixels);
    occlusion and visibility are worked out at that size too, and only the final flows and
    weights are resized to the output (:meth:`_blend`). At 128x256 on the held-out clips (shipped
    teachers, gaps 2, 4, 8, mean PSNR to the teacher) half-size flow was within -0.03..+0.13 dB of
    full-size flow and cut the in-between frame from 10-13 ms to 3-5 ms on one thread.

    Flow on the inputs is measured on them smoothed by a Gaussian of ``smooth`` pixels (default
    1.5; 0: off): DIS matches patches by their gradients, and sparse or noisy inputs (the edges
    task's one-pixel Canny lines) give it little to hold on to. On the three held-out edges clips
    this raised the in-between PSNR to the teacher by 0.2-0.4 dB at gaps 2, 4 and 8.

    DIS's variational refinement (``refine`` iterations; None: the preset's own, 5) is most of a
    flow's time at the flow size, and it is off by default (0): on the flow between key outputs it
    changed nothing (four held-out scenes clips, gaps 2 and 4: mean in-between PSNR to the teacher
    within 0.01 dB), on the smoothed edge-map inputs it cost 0.11-0.15 dB (three held-out edges
    clips, gaps 2, 4, 8, PSNR over all frames), and it takes a quarter to a third of the
    in-between frame's time off on both (docs/interpolation.md).

    Flow keeps zero motion where zero motion explains the frames as well, within ``zero_margin``
    grey levels (:func:`keep_zero_motion`; None: off). By default only for flow on the outputs:
    there the test sees what is warped; on inputs it does not, and where an input is flat (the
    black between edge lines) the teacher's output may still be textured and moving, so on the
    fast-moving held-out edges clip the test cost 0.1-0.6 dB (it still helped the slow ones a
    little; ``zero_margin=3`` turns it on for inputs too).

    Blending: ``w0 = (1-t) v0``, ``w1 = t v1`` with ``v`` the visibility (softened over 3x3
    pixels), ``y = (w0 warp0 + w1 warp1) / (w0 + w1)``; where neither key frame sees a pixel (both
    weights ~0) the temporal weights ``(1-t, t)`` alone blend the two warps, which is the best
    guess left.
    """

    name = "interp"

    @property
    def uncounted(self) -> str:
        return {"direct": "optical flow (OpenCV DIS, 2 flows per in-between frame), warps and blending",
                "keys": "optical flow (OpenCV DIS, 2 flows per key gap), warps and blending",
                "none": "the cross-fade"}[self.flow]  # fmt: skip

    def __init__(self, teacher: SplitGenerator, interval: int = 4, keyframes: Any = None, *,
                 flow: str = "auto", source: str = "auto", preset: str = "medium", refine: int | None = 0,
                 smooth: float = 1.5, zero_margin: float | None | str = "auto", flow_scale: float = 0.5,
                 max_buffer: int = MAX_BUFFER):  # fmt: skip
        super().__init__(teacher, interval, keyframes, max_buffer)
        if flow not in ("auto", "direct", "keys", "none"):
            raise UserError(f"unknown interp flow {flow!r}; use direct, keys or none.")
        if source not in ("auto", "input", "output"):
            raise UserError(f"unknown interp flow source {source!r}; use input or output.")
        if self.labels and (flow == "direct" or source == "input"):
            raise UserError("interp on label-map inputs measures flow on the key-frame outputs (flow=keys, "
                            "source=output); label maps carry no texture to track.")  # fmt: skip
        self.flow = ("keys" if self.labels else "direct") if flow == "auto" else flow
        self.source = ("output" if self.labels else "input") if source == "auto" else source
        if self.flow == "direct" and self.source == "output":
            raise UserError("interp flow=direct measures flow from each frame's input; it has no output yet.")
        if smooth < 0:
            raise UserError(f"interp smooth must be 0 (off) or a Gaussian sigma in pixels, not {smooth}.")
        if not 0 < flow_scale <= 1:
            raise UserError(f"interp flow_scale must be in (0, 1], not {flow_scale}.")
        on_outputs = self.flow == "keys" and self.source == "output"
        self.preset, self.smooth, self.flow_scale = preset, float(smooth), float(flow_scale)
        self.zero_margin = (3.0 if on_outputs else None) if zero_margin == "auto" else zero_margin
        if refine is not None and (isinstance(refine, bool) or int(refine) != refine or refine < 0):
            raise UserError(f"interp refine must be a number of iterations >= 0 or None (the preset's own), not {refine}.")
        self.refine = refine

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "flow": self.flow, "source": self.source, "preset": self.preset,
                "refine": self.refine, "smooth": self.smooth, "zero_margin": self.zero_margin,
                "flow_scale": self.flow_scale}  # fmt: skip

    def _flow(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        from fastv2v.flow import estimate_flow

        f = estimate_flow(a, b, self.preset, self.refine)
        return f if self.zero_margin is None else keep_zero_motion(a, b, f, self.zero_margin)

    def _flow_size(self, picture: np.ndarray) -> tuple[int, int]:
        """(width, height) flow runs at: ``flow_scale`` of the picture, kept at least 32 pixels a side
        (DIS's patches need room)."""
        h, w = picture.shape[:2]
        s = max(self.flow_scale, min(1.0, 32 / min(h, w)))
        return max(1, round(w * s)), max(1, round(h * s))

    def _view(self, picture: np.ndarray, smooth: float) -> np.ndarray:
        """``picture`` as flow sees it: grey, smoothed by ``smooth`` pixels, at the flow size."""
        import cv2

        from fastv2v.flow import to_gray

        grey = to_gray(picture)
        if smooth:
            grey = cv2.GaussianBlur(grey, (0, 0), smooth)
        size = self._flow_size(grey)
        return grey if size == grey.shape[::-1] else cv2.resize(grey, size, interpolation=cv2.INTER_AREA)

    def _flow_picture(self, frame: _Frame) -> np.ndarray:
        """A frame's input as flow on the inputs sees it (made once per frame)."""
        if frame.flow_view is None:
            frame.flow_view = self._view(frame.picture, self.smooth)
        return frame.flow_view

    def _flow_output(self, key: _Key) -> np.ndarray:
        """A key frame's output as flow on the outputs sees it (made once per key frame)."""
        if key.flow_view is None:
            key.flow_view = self._view(key.output, 0.0)
        return key.flow_view

    def interpolate(self, k0, k1, frames, ts):
        from fastv2v.flow import occlusion_mask, warp

        size = tuple(k0.y.shape[-2:])
        if self.flow == "none":
            zero, one = np.zeros((*size, 2), np.float32), np.ones(size, np.float32)
            return [self._blend(k0, k1, zero, zero, one, one, t, size) for t in ts]
        out = []
        if self.flow == "direct":
            p0, p1 = self._flow_picture(k0.frame), self._flow_picture(k1.frame)
            for frame, t in zip(frames, ts):
                c = self._flow_picture(frame)
                ft0, ft1 = self._flow(c, p0), self._flow(c, p1)
                v0, v1 = photometric_visibility(c, p0, ft0), photometric_visibility(c, p1, ft1)
                out.append(self._blend(k0, k1, ft0, ft1, v0, v1, t, size))
            return out
        if self.source == "input":
            a, b = self._flow_picture(k0.frame), self._flow_picture(k1.frame)
        else:
            a, b = self._flow_output(k0), self._flow_output(k1)
        f01, f10 = self._flow(a, b), self._flow(b, a)
        m0 = occlusion_mask(f01, f10).astype(np.float32)
        m1 = occlusion_mask(f10, f01).astype(np.float32)
        for t in ts:
            ft0 = -(1 - t) * t * f01 + t * t * f10
            ft1 = (1 - t) ** 2 * f01 - t * (1 - t) * f10
            v0, v1 = warp(m0, ft0), warp(m1, ft1)
            out.append(self._blend(k0, k1, ft0, ft1, v0, v1, t, size))
        return out

    @staticmethod
    def _blend(k0: _Key, k1: _Key, ft0, ft1, v0, v1, t, size):
        """Both key outputs warped to the frame and blended by visibility and time. The weights are
        worked out at the flow's size and only ``k0``'s share is resized (``k1`` gets the rest). On
        the CPU the warps are ``cv2.remap`` of the outputs as arrays and ``cv2.blendLinear`` mixes
        them (1.7x faster here than ``grid_sample`` at 128x256, same pixel convention, equal to
        4e-5 of the output range); elsewhere ``grid_sample`` on the device."""
        import cv2

        from fastv2v.flow import resize_flow, warp

        v0 = cv2.blur(np.asarray(v0, np.float32), (3, 3))
        v1 = cv2.blur(np.asarray(v1, np.float32), (3, 3))
        w0, w1 = (1 - t) * v0, t * v1
        hole = (w0 + w1) < 1e-3
        w0[hole], w1[hole] = 1 - t, t
        share0 = w0 / (w0 + w1)
        if ft0.shape[:2] != size:  # flow measured at a smaller size than the outputs
            ft0, ft1 = resize_flow(ft0, size), resize_flow(ft1, size)
            share0 = cv2.resize(share0, size[::-1], interpolation=cv2.INTER_LINEAR)
        y0 = k0.y
        if y0.device.type == "cpu" and y0.shape[1] <= 4:  # cv2.remap takes up to 4 channels
            out = cv2.blendLinear(warp(k0.hwc, ft0), warp(k1.hwc, ft1), share0, 1 - share0)
            out = out[..., None] if out.ndim == 2 else out
            return torch.from_numpy(out).permute(2, 0, 1)[None].contiguous().to(y0.dtype)
        share0 = torch.from_numpy(share0).to(y0.device, y0.dtype)
        return warp(y0, ft0) * share0 + warp(k1.y, ft1) * (1 - share0)


# ---------------------------------------------------------------------------------------------
# minterpolate: FFmpeg


_MI_OPTIONS = "mi_mode=mci:mc_mode=obmc:me=epzs"
_MI_MIN_SIDE = 32  # minterpolate's motion estimation refuses frames under 2 blocks (2 x 16 px)


def minterpolate_frames(a: np.ndarray, b: np.ndarray, gap: int, offsets: list[int],
                        options: str = _MI_OPTIONS) -> list[np.ndarray]:  # fmt: skip
    """FFmpeg ``minterpolate`` between two frames ``gap`` frames apart (HxWx3 RGB or grey uint8):
    the frames at ``offsets`` (each in 1..gap-1), in the order asked.

    ``a`` goes in at pts 0 and ``b`` at pts ``gap`` (time base 1 s) with ``fps=1``, so the filter's
    output grid is one frame per integer offset, each interpolated with ``alpha = offset / gap``.
    Frames smaller than 32 pixels on a side are padded (edge pixels repeated) and cropped back.
    """
    import av
    import av.filter
    import cv2

    if a.ndim == 3 and a.shape[2] == 1:
        return [g[..., None] for g in minterpolate_frames(a[..., 0], b[..., 0], gap, offsets, options)]
    if a.ndim == 2:
        fmt, work = "gray", "gray"
    elif a.shape[2] == 3:
        fmt, work = "rgb24", "yuv444p"  # minterpolate takes YUV or grey, not RGB
    else:
        raise UserError(f"minterpolate takes RGB or grey outputs, not {a.shape[2]}-channel ones; use --method interp.")
    h, w = a.shape[:2]
    ph, pw = max(0, _MI_MIN_SIDE - h), max(0, _MI_MIN_SIDE - w)
    if ph or pw:
        a = cv2.copyMakeBorder(a, 0, ph, 0, pw, cv2.BORDER_REPLICATE)
        b = cv2.copyMakeBorder(b, 0, ph, 0, pw, cv2.BORDER_REPLICATE)
    graph = av.filter.Graph()
    chain = [
        graph.add_buffer(width=a.shape[1], height=a.shape[0], format=fmt, time_base=Fraction(1, 1)),
        graph.add("format", work),
        graph.add("minterpolate", f"fps=1:{options}"),
        graph.add("format", fmt),
        graph.add("buffersink"),
    ]
    for up, down in zip(chain, chain[1:]):
        up.link_to(down)
    graph.configure()
    got: dict[int, np.ndarray] = {}
    for pts, image in ((0, a), (gap, b), (2 * gap, b)):  # the repeat of b releases the frames up to b
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format=fmt)
        frame.pts, frame.time_base = pts, Fraction(1, 1)
        graph.push(frame)
        while True:
            try:
                out = graph.pull()
            except (av.error.BlockingIOError, av.error.EOFError):
                break
            got[int(out.pts)] = out.to_ndarray(format=fmt)[:h, :w]
    missing = [o for o in offsets if o not in got]
    if missing:
        raise RuntimeError(f"minterpolate returned frames {sorted(got)} for a gap of {gap}, not {missing}")
    return [got[o] for o in offsets]


@register
class MInterpolate(KeyframeInterpolation):
    """FFmpeg ``minterpolate`` (``mi_mode=mci:mc_mode=obmc:me=epzs``) between key-frame outputs:
    the Fast-Vid2Vid paper's interpolation, fed the key outputs at their true frame distance
    (see :func:`minterpolate_frames`)."""

    name = "minterpolate"
    uncounted = "FFmpeg minterpolate (EPZS block matching, OBMC)"

    def __init__(self, teacher: SplitGenerator, interval: int = 4, keyframes: Any = None, *,
                 options: str = _MI_OPTIONS, max_buffer: int = MAX_BUFFER):  # fmt: skip
        super().__init__(teacher, interval, keyframes, max_buffer)
        self.options = options

    def interpolate(self, k0, k1, frames, ts):
        gap = k1.index - k0.index
        offsets = [f.index - k0.index for f in frames]
        images = minterpolate_frames(k0.output, k1.output, gap, offsets, self.options)
        return [_from_u8(image, k0.y) for image in images]
