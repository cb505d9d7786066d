"""Key-frame schedules: which frames run the full generator. One protocol for every method.

A schedule sees one frame at a time, through the *signal* it reads (``reads``), and may look a
few frames ahead before deciding, so a method can stream with bounded memory. State is passed
in and out explicitly, as for methods:

* ``init_state() -> state``
* ``push(signal, state) -> (decisions, state)``: ``decisions`` are booleans (key or not) for the
  oldest frames not yet decided, in frame order, possibly none (an online schedule, ``lookahead``
  0, decides each frame at once: exactly one decision per push).
* ``flush(state) -> decisions``: the decisions for every frame still undecided at the end.
* ``reads``: what the signal of a frame is: ``None`` (nothing; the schedule decides by position),
  ``"picture"`` (the input as ``HxWx3`` uint8 RGB or an ``HxW`` label map), ``"drift"`` (a float:
  how far the frame has drifted from the last key frame; None for the first frame) or ``"cost"``
  (a zero-argument callable returning the fraction of a full pass the frame would cost as a
  non-key frame; called only when the schedule needs it).
* ``lookahead``: how many later frames a decision may wait for; ``max_gap``: the longest key gap
  the schedule makes (None: no bound of its own); ``spec``: the text form.

Frame 0 is always a key frame. Which frame is the last one is not known while streaming, so the
interpolating methods make the last frame a key frame themselves (there is nothing to interpolate
towards after it); :func:`key_indices` does the same for a whole clip in memory.

Schedules:

* :class:`FixedKeys` (``fixed:N``): frame 0 and every N-th frame (``reads`` None). Every online
  method's fixed interval (``repeat``, ``reuse``, ``shortcut``).
* :class:`PeakKeys` (``peaks``): the Fast-Vid2Vid rule (released ``util/keyframes.py``): the
  change between consecutive inputs, the sum of absolute differences in CIE LUV
  (:func:`frame_change`; for label maps the fraction of pixels whose label changed), smoothed
  with a Hann window, and key frames at its strict local maxima (``argrelextrema(s,
  np.greater)``), the frame *after* the change (as the released code's ``f + 1``), plus the first
  and last frame. A minimum gap drops maxima too close to the previous key frame, and a maximum
  gap adds a key frame when none came for that long, so a static clip still gets key frames and
  the buffer stays bounded.
* :class:`AdaptiveInterval` (``auto``; ``reads`` drift): refresh when the video says so, within
  the key-frame budget of a fixed interval (Shortcut-V2V's ``--interval auto`` on head-feature
  drift; ``interp --keyframes auto`` through :class:`OnlineKeys`, on picture drift).
* :class:`BreakEven` (``reads`` cost): ``sparse``'s refresh: a dense pass whenever the sparse one
  would cost more than a fraction of it, and at least every ``max_interval`` frames.
* :class:`OnlineKeys` adapts a drift-reading schedule, or any object with ``is_key(since_key)``,
  to picture signals.
"""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import cv2
import numpy as np

from fastv2v.errors import UserError

__all__ = [
    "DEFAULT_PEAK_MAX_GAP",
    "DEFAULT_PEAK_WINDOW",
    "AdaptiveInterval",
    "BreakEven",
    "drift_score",
    "FixedKeys",
    "OnlineKeys",
    "PeakKeys",
    "frame_change",
    "hann_smooth",
    "key_indices",
    "lookahead_of",
    "picture_drift",
    "parse_keyframes",
    "register_keyframes",
]

#: Default maximum key gap of ``peaks`` (frames): bounds the buffer on a static clip.
DEFAULT_PEAK_MAX_GAP = 8
#: Hann window length of ``peaks``: 3, as in the released Fast-Vid2Vid code (``len_windows=3``).
#: ``np.hanning(3)`` is ``[0, 1, 0]``, so that default does not smooth at all; 5 is the shortest
#: window that does (``[0, .5, 1, .5, 0]``).
DEFAULT_PEAK_WINDOW = 3

_SPECS: dict[str, Callable[..., Any]] = {}


# ---------------------------------------------------------------------------------------------
# the change signal


def frame_change(prev: np.ndarray, cur: np.ndarray) -> float:
    """How much the input changed from ``prev`` to ``cur``.

    RGB pictures (``HxWx3`` uint8): the mean over pixels of the summed absolute differences of
    the CIE LUV values (OpenCV's 8-bit LUV), the Fast-Vid2Vid signal divided by the pixel count
    (which changes no local maximum). Label maps (``HxW`` integers): the fraction of pixels whose
    label changed. Grey pictures (``HxWx1``) are taken as RGB with equal channels.
    """
    prev, cur = np.asarray(prev), np.asarray(cur)
    if prev.shape != cur.shape:
        raise ValueError(f"frames differ in shape: {prev.shape} vs {cur.shape}")
    if cur.ndim == 2:
        return float(np.count_nonzero(prev != cur)) / max(cur.size, 1)
    a, b = _luv(prev), _luv(cur)
    return float(cv2.absdiff(a, b).sum(dtype=np.int64)) / max(cur.shape[0] * cur.shape[1], 1)


def _luv(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = np.repeat(frame, 3, axis=2)
    if frame.dtype != np.uint8:
        frame = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2Luv)


def hann_weights(length: int) -> np.ndarray:
    """``np.hanning(length)`` (length 1: ``[1]``), the released code's window."""
    return np.ones(1) if length == 1 else np.hanning(length)


def hann_smooth(signal: Iterable[float], length: int = DEFAULT_PEAK_WINDOW) -> np.ndarray:
    """The signal convolved with a normalised Hann window of odd ``length``.

    Near the ends the window is cut to the samples that exist and renormalised (the released
    code reflects the signal instead; only the first and last ``length // 2`` samples differ).
    """
    x = np.asarray(list(signal), dtype=np.float64)
    _check_window(length)
    w, h = hann_weights(length), length // 2
    out = np.empty_like(x)
    for j in range(len(x)):
        lo, hi = max(0, j - h), min(len(x), j + h + 1)
        ww = w[lo - j + h : hi - j + h]
        out[j] = float(np.dot(ww, x[lo:hi]) / ww.sum()) if ww.sum() > 0 else x[j]
    return out


def _check_window(length: int) -> None:
    if int(length) != length or length < 1 or length % 2 == 0:
        raise UserError(f"the peaks window must be an odd whole number >= 1 (e.g. 3 or 5), not {length}.")


# ---------------------------------------------------------------------------------------------
# schedules


class FixedKeys:
    """``fixed:N``: frame 0 and every ``N``-th frame are key frames (the method adds the last)."""

    lookahead = 0
    reads = None  # decides by position alone

    def __init__(self, interval: int):
        if int(interval) != interval or interval < 1:
            raise UserError(f"the key-frame gap must be a whole number >= 1, not {interval}.")
        self.interval = int(interval)

    @property
    def max_gap(self) -> int:
        return self.interval

    @property
    def min_frames(self) -> int:
        """The shortest clip that holds one whole key gap."""
        return self.interval + 1

    @property
    def spec(self) -> str:
        return f"fixed:{self.interval}"

    def init_state(self) -> int:
        return 0  # frames seen

    def push(self, frame: Any, state: int) -> tuple[list[bool], int]:
        return [state % self.interval == 0], state + 1

    def flush(self, state: int) -> list[bool]:
        return []

    def __repr__(self) -> str:
        return f"FixedKeys({self.interval})"


@dataclass
class PeakState:
    """Streaming state of :class:`PeakKeys`."""

    seen: int = 0  # frames pushed
    decided: int = 0  # frames decided (all frames before this index)
    last_key: int = -1
    prev: Any = None  # the previous frame's picture
    # change[j] for frames j >= base (change[0] of frame 0 does not exist and is never stored)
    base: int = 1
    change: list[float] = field(default_factory=list)


class PeakKeys:
    """``peaks``: key frames at local maxima of the smoothed input change (Fast-Vid2Vid).

    ``window``: Hann window length (odd; default 3 as released, which does not smooth; 5 does).
    ``min_gap``: a maximum closer than this to the previous key frame is dropped (default 1:
    none is; strict maxima are at least 2 apart anyway). ``max_gap``: a frame this far from the
    previous key frame becomes key even without a maximum (default 8), so a static clip still
    gets key frames and at most ``max_gap - 1 + lookahead`` frames wait in the buffer.
    A decision waits for ``window // 2 + 1`` later frames (``lookahead``).
    """

    def __init__(self, window: int = DEFAULT_PEAK_WINDOW, min_gap: int = 1, max_gap: int | None = None):
        _check_window(window)
        max_gap = DEFAULT_PEAK_MAX_GAP if max_gap is None else max_gap
        for name, value in (("min", min_gap), ("max", max_gap)):
            if int(value) != value or value < 1:
                raise UserError(f"peaks {name} gap must be a whole number >= 1, not {value}.")
        if min_gap > max_gap:
            raise UserError(f"peaks min gap ({min_gap}) is larger than its max gap ({max_gap}).")
        self.window, self.min_gap, self.max_gap = int(window), int(min_gap), int(max_gap)
        self.weights = hann_weights(self.window)

    lookahead = property(lambda self: self.window // 2 + 1)
    min_frames = 2
    reads = "picture"

    @property
    def spec(self) -> str:
        return f"peaks:window={self.window},min={self.min_gap},max={self.max_gap}"

    def init_state(self) -> PeakState:
        return PeakState()

    def push(self, frame: np.ndarray, state: PeakState) -> tuple[list[bool], PeakState]:
        s = PeakState(state.seen, state.decided, state.last_key, frame, state.base, list(state.change))
        if state.prev is not None:
            s.change.append(frame_change(state.prev, frame))
        s.seen += 1
        # frame j needs s[j+1], i.e. the change up to frame j + 1 + window // 2
        ready = s.seen - self.lookahead - 1
        decisions = self._decide(s, last=ready, end=None)
        self._trim(s)
        return decisions, s

    def flush(self, state: PeakState) -> list[bool]:
        s = PeakState(state.seen, state.decided, state.last_key, state.prev, state.base, list(state.change))
        return self._decide(s, last=s.seen - 1, end=s.seen)

    # -- helpers -------------------------------------------------------------------------------

    def _smoothed(self, s: PeakState, j: int, end: int | None) -> float | None:
        """Smoothed change of frame j (None where it does not exist: frame 0, or past the end)."""
        top = s.base + len(s.change)  # change known for frames < top
        if j < 1 or (end is not None and j >= end):
            return None
        h = self.window // 2
        lo, hi = max(1, j - h), min(top, j + h + 1)
        w = self.weights[lo - j + h : hi - j + h]
        x = np.asarray(s.change[lo - s.base : hi - s.base])
        total = w.sum()
        return float(np.dot(w, x) / total) if total > 0 else float(s.change[j - s.base])

    def _decide(self, s: PeakState, last: int, end: int | None) -> list[bool]:
        out = []
        while s.decided <= last:
            j = s.decided
            key = j == 0
            if not key:
                here = self._smoothed(s, j, end)
                left, right = self._smoothed(s, j - 1, end), self._smoothed(s, j + 1, end)
                peak = left is not None and right is not None and here > left and here > right
                gap = j - s.last_key
                key = (peak and gap >= self.min_gap) or gap >= self.max_gap
            if key:
                s.last_key = j
            out.append(key)
            s.decided += 1
        return out

    def _trim(self, s: PeakState) -> None:
        keep_from = max(1, s.decided - self.window // 2 - 2)
        if keep_from > s.base:
            del s.change[: keep_from - s.base]
            s.base = keep_from

    def __repr__(self) -> str:
        return f"PeakKeys(window={self.window}, min_gap={self.min_gap}, max_gap={self.max_gap})"


def picture_drift(ref: np.ndarray, cur: np.ndarray) -> float:
    """How far ``cur`` has drifted from the key frame's ``ref``, relative and scale-free: the
    fraction of changed labels for label maps, ``mean |LUV(cur) - LUV(ref)| / mean |LUV(ref)|``
    for pictures (the picture analogue of the head-feature drift that adaptive schedules use)."""
    ref, cur = np.asarray(ref), np.asarray(cur)
    if cur.ndim == 2:
        return frame_change(ref, cur)
    a, b = _luv(ref).astype(np.float32), _luv(cur).astype(np.float32)
    return float(np.abs(b - a).mean() / max(float(np.abs(a).mean()), 1e-8))


@dataclass
class OnlineState:
    since_key: int | None = None  # frames since the last key frame (None before the first)
    key_picture: Any = None  # the last key frame's picture (for drift signals)
    rule: Any = None  # a drift-reading schedule's own state


class OnlineKeys:
    """Adapts an online rule to picture signals (no look-ahead). The rule is either

    * a schedule that ``reads`` drift (as :class:`AdaptiveInterval`): it is given the drift of the
      frame's picture from the last key frame's, :func:`picture_drift` (no model work, no MACs); or
    * any object with ``is_key(since_key)`` or ``is_key(since_key, picture)``, ``since_key`` =
      frames since the last key frame, None before the first.

    Its ``max_gap``, ``max_interval`` or ``interval`` attribute, if any, is the maximum gap (and
    bounds the interpolating method's buffer). Frame 0 is always a key frame.
    """

    lookahead = 0
    min_frames = 2
    reads = "picture"

    def __init__(self, rule: Any):
        self.rule = rule
        self._drift = getattr(rule, "reads", None) == "drift"
        self._with_frame = False
        if not self._drift:
            try:
                params = [p for p in inspect.signature(rule.is_key).parameters.values()
                          if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]  # fmt: skip
                self._with_frame = len(params) >= 2
            except (TypeError, ValueError):
                pass
        gap = getattr(rule, "max_gap", None) or getattr(rule, "max_interval", None) or getattr(rule, "interval", None)
        self.max_gap = int(gap) if gap else None

    @property
    def spec(self) -> str:
        return getattr(self.rule, "spec", None) or f"{type(self.rule).__name__}"

    def init_state(self) -> OnlineState:
        return OnlineState(rule=self.rule.init_state() if self._drift else None)

    def push(self, frame: Any, state: OnlineState) -> tuple[list[bool], OnlineState]:
        since = state.since_key
        rule = state.rule
        if self._drift:
            drift = None if since is None else picture_drift(state.key_picture, frame)
            (key,), rule = self.rule.push(drift, rule)
        else:
            key = since is None or (self.rule.is_key(since, frame) if self._with_frame else self.rule.is_key(since))
        key = bool(key)
        return [key], OnlineState(1 if key else since + 1, frame if key else state.key_picture, rule)

    def flush(self, state: OnlineState) -> list[bool]:
        return []


# ---------------------------------------------------------------------------------------------
# adaptive refresh: drift within a key-frame budget


MAX_CREDIT = 4.0
MIN_CREDIT = -2.0  # borrowing for cuts: at most two key frames over the budget, then earned back
DUE = 0.5  # with one key frame's credit, refresh at this fraction of the usual drift
CUT = 3.0  # drift this many times faster than usual since the key frame: a cut, refresh even over budget
EPS = 1e-9  # credit is a sum of 1/target steps: compare with a little slack
UNIT_OUTLIER = 3.0  # per-frame drift counts at most this many units when the unit is updated
UNIT_MOMENTUM = 0.97  # slow: the unit is the video's typical drift, not the last few frames'


def drift_score(a, a_ref) -> float:
    """Relative L1 change of head features against the reference's."""
    return float(drift_tensor(a, a_ref))


def drift_tensor(a, a_ref):
    """:func:`drift_score` as a 0-d tensor (traceable: the exported step graph computes it)."""
    return (a - a_ref).abs().mean() / a_ref.abs().mean().clamp_min(1e-8)


class AdaptiveInterval:
    """Refresh the reference when the video says so, not every N frames.

    A fixed interval spends a full teacher pass every N frames whatever happens: on a static
    stretch it refreshes for nothing, and after a scene cut it keeps predicting from a reference
    that shows another scene for up to N - 1 frames (the limit the Shortcut-V2V paper names).
    This schedule decides per frame from a cheap drift signal (for Shortcut-V2V the relative
    change of the frame's head features against the key frame's, :func:`drift_score`; the head
    runs on every frame anyway, so it costs one pass over a feature map and no MACs):

    * it keeps a running *unit*, the typical drift per frame of this video (a slow average of
      ``drift / frames since the key frame``, each sample clipped at 3 units so a cut only
      nudges it), so the rule needs no per-video tuning; ``usual = target x unit`` is the drift
      a fixed interval of ``target`` tolerates on steady motion;
    * *credit* is the key-frame budget: ``+1 / target`` per frame, ``-1`` per key frame, at most
      4. Within budget (credit >= 0) it refreshes once the drift reaches ``usual / 2 x 2 ** (1 -
      credit)``: about every ``target`` frames on steady motion, later on static stretches (the
      credit saved lowers the threshold afterwards, so key frames are spent where things move);
    * over budget only a *cut* refreshes: drift 3x faster than usual since the key frame. It
      borrows, down to a credit of -2, so at most two key frames beyond the fixed interval's
      count over a whole video, earned back before the next drift-triggered refresh;
    * ``max_interval`` forces a refresh however small the drift (a bound on staleness).

    So the long-run key-frame rate, and with it the amortised cost, is that of the fixed interval
    ``target`` (plus at most two), and a scene cut refreshes at once. Measured against the fixed
    interval at equal cost: ``benchmarks/adaptive_refresh.py``. State: a plain dict per video
    (``since``, ``credit``, ``unit``).
    """

    lookahead = 0
    min_frames = 2
    reads = "drift"

    def __init__(self, target: float = 3, max_interval: int | None = None):
        if not target >= 1:
            raise UserError(f"the target key-frame interval must be >= 1, not {target}.")
        self.target = float(target)
        self.max_interval = int(max_interval) if max_interval is not None else max(2, math.ceil(2 * self.target))
        if self.max_interval < 1:
            raise UserError(f"the maximum key-frame interval must be >= 1, not {max_interval}.")

    @property
    def interval(self) -> float:
        return self.target

    @property
    def max_gap(self) -> int:
        return self.max_interval

    @property
    def spec(self) -> str:
        return f"auto:target={self.target:g},max={self.max_interval}"

    def init_state(self) -> None:
        return None  # before the first frame

    def start(self) -> dict[str, float | None]:
        """The rule's state after the first key frame of a video."""
        return {"credit": 0.0, "unit": None}

    def push(self, drift: float | None, state: dict | None) -> tuple[list[bool], dict]:
        if state is None:  # the first frame
            return [True], {"since": 1, **self.start()}
        key, rule = self.decide(state["since"], drift, {"credit": state["credit"], "unit": state["unit"]})
        return [key], {"since": 1 if key else state["since"] + 1, **rule}

    def flush(self, state: dict | None) -> list[bool]:
        return []

    def decide(self, since_key: int, score: float, state: dict) -> tuple[bool, dict]:
        """Whether the frame ``since_key`` frames after the last key frame, whose drift is
        ``score``, becomes a key frame; and the rule's new state (``credit``, ``unit``)."""
        credit = state["credit"] + 1.0 / self.target
        unit = state["unit"]
        usual = self.target * unit if unit is not None else None
        if since_key >= self.max_interval:
            key = True
        elif usual is None:
            key = since_key >= self.target
        elif credit >= -EPS:  # within budget: refresh at the usual drift, sooner with credit saved
            key = score >= DUE * usual * 2.0 ** (1.0 - credit)
        elif credit >= MIN_CREDIT + 1 - EPS:  # over budget: only a cut borrows a key frame
            key = score >= CUT * unit * since_key
        else:
            key = False
        per_frame = score / since_key
        if unit is None:
            unit = per_frame
        else:  # clipped, so a cut nudges the unit instead of resetting it
            unit = UNIT_MOMENTUM * unit + (1 - UNIT_MOMENTUM) * min(per_frame, UNIT_OUTLIER * unit)
        if key:
            credit -= 1.0
        credit = min(credit, MAX_CREDIT)
        return key, {"credit": credit, "unit": unit}


# ---------------------------------------------------------------------------------------------
# break-even refresh (sparse)


class BreakEven:
    """A dense pass whenever the sparse one would cost more than ``break_even`` of it (the
    signal, evaluated only when needed), and at least every ``max_interval`` frames: frozen
    normalisation statistics drift from the true ones as the content moves, and this bounds
    the drift. State: frames since the last key frame (None before the first)."""

    lookahead = 0
    min_frames = 1
    reads = "cost"

    def __init__(self, max_interval: int = 8, break_even: float = 0.5):
        if int(max_interval) != max_interval or max_interval < 1:
            raise UserError(f"the maximum interval must be a whole number >= 1, not {max_interval}.")
        if not 0 < break_even <= 1:
            raise UserError(f"break_even must be a fraction in (0, 1], not {break_even}.")
        self.max_interval, self.break_even = int(max_interval), float(break_even)

    @property
    def interval(self) -> int:
        return self.max_interval

    @property
    def max_gap(self) -> int:
        return self.max_interval

    @property
    def spec(self) -> str:
        return f"break-even:{self.break_even:g},max={self.max_interval}"

    def init_state(self) -> None:
        return None

    def push(self, cost: Callable[[], float], state: int | None) -> tuple[list[bool], int]:
        key = state is None or state >= self.max_interval or cost() > self.break_even
        return [key], 1 if key else state + 1

    def flush(self, state: int | None) -> list[bool]:
        return []


# ---------------------------------------------------------------------------------------------
# parsing


def register_keyframes(name: str, factory: Callable[..., Any]) -> None:
    """Make ``--keyframes NAME[:OPTIONS]`` build ``factory(options: str, interval: int | None)``.

    The hook for schedules written elsewhere (``auto``, in ``fastv2v.methods.schedules``): the
    factory returns a schedule (the protocol above) or an online rule with ``is_key``.
    """
    _SPECS[name] = factory


_FIXED = re.compile(r"fixed(?::(\d+))?")
_PEAKS = re.compile(r"peaks(?::(.*))?")
_HELP = "use fixed:N (a key frame every N frames), peaks (at peaks of input change, the Fast-Vid2Vid rule; " \
        "options peaks:window=5,min=2,max=12) or auto (adaptive)"  # fmt: skip


def parse_keyframes(spec: Any = None, interval: int | None = None) -> Any:
    """A schedule from ``fixed:N`` / ``peaks[:window=W,min=M,max=N]`` / ``auto``, or an object.

    ``None`` (or ``fixed``) means ``fixed:interval``. An object that already speaks the protocol
    (``init_state``/``push``/``flush``) is returned as is; one with only ``is_key`` is wrapped in
    :class:`OnlineKeys`. ``peaks`` takes ``interval`` as its maximum gap unless ``max`` is given.
    """
    if spec is None or (isinstance(spec, str) and spec.strip() in ("", "fixed")):
        return FixedKeys(4 if interval is None else interval)
    if not isinstance(spec, str):
        if getattr(spec, "reads", None) == "drift":
            return OnlineKeys(spec)
        if all(hasattr(spec, a) for a in ("init_state", "push", "flush")):
            return spec
        if hasattr(spec, "is_key"):
            return OnlineKeys(spec)
        raise UserError(f"a key-frame schedule must be a spec text or have is_key(), not {type(spec).__name__}.")
    text = spec.strip()
    if m := _FIXED.fullmatch(text):
        return FixedKeys(int(m.group(1)))
    if m := _PEAKS.fullmatch(text):
        options = _options(m.group(1) or "", text)
        unknown = set(options) - {"window", "min", "max"}
        if unknown:
            raise UserError(
                f"unknown option {sorted(unknown)[0]!r} in --keyframes {text!r}; peaks takes window, min, max."
            )
        if any(not isinstance(v, int) for v in options.values()):
            raise UserError(f"--keyframes {text!r}: peaks takes whole numbers of frames.")
        return PeakKeys(window=options.get("window", DEFAULT_PEAK_WINDOW), min_gap=options.get("min", 1),
                        max_gap=options.get("max", interval))  # fmt: skip
    name, _, rest = text.partition(":")
    if name == "auto" and name not in _SPECS:
        return _auto(rest, interval)
    if name in _SPECS:
        return parse_keyframes(_SPECS[name](rest, interval))
    raise UserError(f"unknown --keyframes {text!r}; {_HELP}.")


def _auto(rest: str, interval: int | None) -> Any:
    """``auto``: :class:`AdaptiveInterval` on picture drift with the interval as the average gap
    (``auto:max=N`` sets its maximum gap), unless something else registered ``auto``."""
    if "auto" in _SPECS:
        return parse_keyframes(_SPECS["auto"](rest, interval))
    options = _options(rest, f"auto:{rest}")
    if set(options) - {"target", "max"}:
        raise UserError(f"unknown option in --keyframes 'auto:{rest}'; auto takes target and max (e.g. "
                        "auto:target=4,max=12).")  # fmt: skip
    target = options.get("target", 4 if interval is None else interval)  # the spec AdaptiveInterval writes
    return OnlineKeys(AdaptiveInterval(target, options.get("max")))


def _options(text: str, spec: str) -> dict[str, int | float]:
    out: dict[str, int | float] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not re.fullmatch(r"\d+(\.\d+)?", value.strip()):
            raise UserError(f"--keyframes {spec!r}: options are name=number separated by commas, e.g. "
                            "peaks:window=5,max=12.")  # fmt: skip
        number = float(value)
        out[key.strip()] = int(number) if number.is_integer() else number
    return out


def key_indices(schedule: Any, frames: Iterable[Any]) -> list[int]:
    """The key frames a schedule picks on a whole clip in memory, the last frame included."""
    schedule = parse_keyframes(schedule)
    state, decisions, count = schedule.init_state(), [], 0
    for frame in frames:
        ready, state = schedule.push(frame, state)
        decisions += ready
        count += 1
    decisions += schedule.flush(state)
    if len(decisions) != count:
        raise RuntimeError(f"{schedule!r} decided {len(decisions)} of {count} frames")
    keys = [i for i, k in enumerate(decisions) if k]
    if count and keys[-1] != count - 1:
        keys.append(count - 1)
    return keys


def lookahead_of(schedule: Any) -> int:
    return int(getattr(schedule, "lookahead", 0) or 0)

