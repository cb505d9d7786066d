"""``sparse``: recompute only what changed since the last frame (SIGE / DeltaCNN for video).

In a fixed-camera clip most of each frame equals the last, so most of every layer's output
does too. A key frame runs the teacher (its exact output) and caches every layer's input with
the norm statistics frozen; each following frame recomputes only the tiles of each layer that
its input changes can reach, and reuses the cache elsewhere. The engine is the package
:mod:`fastv2v.methods.sparse_engine`; this module is the online method around it: when to
take a key frame, and what each frame cost.

A frame becomes a key frame (a dense teacher pass that also refreshes the frozen statistics;
the schedule is :class:`~fastv2v.methods.schedules.BreakEven`, with the size check here)
when

* it is the first, or its size changed;
* ``max_interval`` frames have passed since the last key frame: frozen InstanceNorm statistics
  drift from the true ones as the content moves, and this bounds the drift;
* the sparse pass would cost more than ``break_even`` of a dense one. The engine's schedule
  predicts the MACs before any convolution runs (exactly, with ``feature_threshold`` 0), so the
  decision uses the real active area of every layer, not just the input's.

**Moving footage never costs more than the teacher.** A key pass that fills the cache costs about
1.5x a plain teacher pass (every layer's input copied out, the norm statistics taken), which is
wasted when the next frame changes too much again: on a panning camera every frame is a key
frame, and ``sparse`` measured 0.7x the teacher's speed. So the second key frame in a row that
the cost forced (``part="all"``) runs the plain teacher, the same call as the teacher method, and
the method stays in that *dense streak* (plain passes, no cache) while frames keep changing
past break-even: a streak frame is compared with the previous frame (changed input pixels,
then the predicted cost with the cached plan), which costs well under a millisecond when the
whole picture moves. The first frame predicted below break-even refills the cache and sparse
frames follow.

``state.last`` holds the :class:`~fastv2v.methods.sparse_engine.FrameStats` of the latest frame
(key flag, changed input fraction, per-layer active fraction, MACs actually computed, seconds
in and outside the convolutions) and ``state.totals`` their sums, so a benchmark can report the
real MACs per frame.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from fastv2v.errors import UserError
from fastv2v.generators.base import SplitGenerator
from fastv2v.methods.base import OnlineMethod, register, teacher_of, whole_interval
from fastv2v.methods.schedules import BreakEven
from fastv2v.methods.sparse_engine import (
    FrameStats,
    SparseCache,
    SparseRunner,
    run_freezing_norms,
    run_frozen,
)

__all__ = ["DEFAULT_TILE", "FrameStats", "SparseMethod", "SparseRunner", "SparseState"]

# Output tile side per downsampling factor (measured on the scenes teacher at 256x512, see
# docs/sparse.md): 4x4 tiles in the 1/4-resolution body follow a change mask closely enough
# that scattered edits do not merge into one big active area, and cost little more per pixel
# than 8x8 ones; at full resolution (few channels) 8x8 keeps the tile count down.
DEFAULT_TILE: dict[int, int] = {1: 8, 2: 8, 4: 4, 8: 4, 16: 4}


@dataclass
class SparseState:
    """Per-video state of :class:`SparseMethod`. ``cache`` is updated in place by each step,
    so a state passed to ``step`` must not be reused afterwards (use the returned one)."""

    schedule: int | None = None  # the BreakEven schedule's state
    cache: SparseCache | None = None
    head_affines: list | None = None  # part="body": the head's norms, frozen at the key frame
    streak: torch.Tensor | None = None  # in a dense streak: the last input (the cache is stale)
    forced: int = 0  # key frames in a row that the cost forced
    last: FrameStats | None = None
    totals: dict[str, float] = field(
        default_factory=lambda: {"frames": 0, "keys": 0, "macs_exact": 0, "macs_paper": 0, "seconds": 0.0}
    )


@register
class SparseMethod(OnlineMethod):
    """Sparse incremental inference of a teacher (``part="all"``) or of its body only
    (``part="body"``: head and tail run densely every frame).

    Options (see :class:`~fastv2v.methods.sparse_engine.SparseRunner` for the engine's):
    ``threshold`` (input change that counts, 0 = any), ``dilation`` (pixels added around the
    changed input), ``reach`` (how far, in input pixels, recomputation may spread beyond the
    changed input; None = exact), ``feature_threshold`` (DeltaCNN's per-layer threshold),
    ``tile`` (output tile side, or ``{factor: side}``), ``max_interval``, ``break_even``
    (predicted fraction of dense MACs above which a dense key frame runs instead),
    ``dense_above`` (per-layer fraction of tiles above which that layer runs densely).
    """

    name = "sparse"
    uses_interval = False  # its own schedule: change-driven, with a maximum interval

    def __init__(
        self,
        teacher: SplitGenerator,
        max_interval: int = 8,
        *,
        threshold: float = 0.0,
        dilation: int = 0,
        reach: int | None = 16,
        feature_threshold: float = 0.0,
        tile: int | Mapping[int, int] | None = None,
        break_even: float = 0.5,
        dense_above: float = 0.7,
        part: str = "all",
    ):
        super().__init__(teacher, max_interval)
        if part not in ("all", "body"):
            raise UserError(f"the sparse part must be 'all' or 'body', not {part!r}.")
        self.schedule = BreakEven(max_interval, break_even)
        self.part, self.break_even = part, float(break_even)
        self.options: dict[str, Any] = dict(
            threshold=threshold, dilation=dilation, reach=reach, feature_threshold=feature_threshold,
            tile=DEFAULT_TILE if tile is None else tile, dense_above=dense_above,
        )  # fmt: skip
        body = part == "body"
        self.runner = SparseRunner(teacher.body if body else teacher.model, input_is_feature=body, **self.options)
        self._dense_parts: dict[tuple, tuple[tuple[int, int], tuple[int, int]]] = {}

    SETTINGS = ("interval", "threshold")

    @classmethod
    def from_model(cls, model: Any, *, interval: int | None = None, threshold: float | None = None) -> "SparseMethod":
        """On a loaded model's teacher: ``interval`` is the most frames between dense passes
        (default 8), ``threshold`` the input change that counts (default 0: exact)."""
        threshold = 0.0 if threshold is None else float(threshold)
        if not threshold >= 0:  # NaN too: it would turn every comparison false and break exactness
            raise UserError(f"the sparse threshold must be a number >= 0, not {threshold}.")
        return cls(teacher_of(model), whole_interval(interval, 8), threshold=threshold)

    def settings(self) -> dict[str, Any]:
        return {"interval": self.max_interval, "threshold": self.options["threshold"]}

    @property
    def max_interval(self) -> int:
        return self.schedule.max_interval

    def init_state(self) -> SparseState:
        return SparseState()

    def describe(self) -> dict[str, Any]:
        """The options, for reports."""
        return {"part": self.part, "max_interval": self.max_interval, "break_even": self.break_even, **self.options}

    # -- one frame --------------------------------------------------------------------------------

    def step(self, x: torch.Tensor, state: SparseState) -> tuple[torch.Tensor, SparseState, bool]:
        start = time.perf_counter()
        t, body = self.teacher, self.part == "body"
        with torch.no_grad():
            cache, head_affines = state.cache, state.head_affines
            changed = cache is None or (not body and (cache.plan.shape != tuple(x.shape) or cache.ref.device != x.device))
            if state.streak is not None and not changed and self._still_moving(x, state.streak, cache):
                return self._plain(x, state, start)
            sparse: dict[str, Any] = {}

            def cost() -> float:
                """The predicted fraction of a dense pass (the break-even schedule's signal)."""
                a = x
                if body:  # the head's norms are frozen too, or every head output pixel would move with them
                    a = run_frozen(t.head, x, head_affines)
                    sparse["head"] = True
                    if cache.plan.shape != tuple(a.shape) or cache.ref.device != a.device:
                        return math.inf
                sparse["a"], sparse["schedule"] = a, self.runner.schedule(a, cache)
                return sparse["schedule"].mac_fraction

            streak_ended = state.streak is not None and not changed
            (key,), schedule = self.schedule.push((lambda: math.inf) if changed or streak_ended else cost, state.schedule)
            forced = state.forced + 1 if key and "schedule" in sparse and sparse["schedule"].mac_fraction > self.break_even else 0
            if forced > 1 and not body:  # the picture keeps moving: a cache would be wasted
                return self._plain(x, state, start)
            heads = 1
            if key:
                a = x
                if body:  # the real head (a second one when the frozen head ran for the signal)
                    a, head_affines = run_freezing_norms(t.head, x)
                    heads += int(sparse.get("head", False))
                f, cache = self.runner.key(a, cache)
                plan = cache.plan
                stats = self._dense_stats(plan)
            else:
                # the dense tail consumes the body output at once: no copy of the cache needed
                f, stats = self.runner.update(sparse["a"], cache, sparse["schedule"], copy=not body)
            y = t.tail(f) if body else f
        if body:
            head, tail = self._head_tail_macs(tuple(x.shape))
            stats.macs_exact += heads * head[0] + tail[0]
            stats.macs_paper += heads * head[1] + tail[1]
            stats.dense_macs_exact += head[0] + tail[0]
            stats.dense_macs_paper += head[1] + tail[1]
        new = SparseState(schedule=schedule, cache=cache, head_affines=head_affines, forced=forced)
        return y, self._account(new, state, stats, key, start), key

    def _still_moving(self, x: torch.Tensor, previous: torch.Tensor, cache: SparseCache) -> bool:
        """In a dense streak: whether a sparse pass from the previous frame would still cost more
        than break-even (the changed input alone, then the predicted cost with the cached plan)."""
        mask = self.runner.change_mask(x, previous, cache.plan)
        if mask.float().mean().item() > self.break_even:  # every layer's active area covers the input's
            return True
        return self.runner.schedule(x, cache, changed=mask).mac_fraction > self.break_even

    def _plain(self, x: torch.Tensor, state: SparseState, start: float) -> tuple[torch.Tensor, SparseState, bool]:
        """A dense streak frame: the plain teacher (bit for bit the teacher method's output); the
        cache is kept only for its plan."""
        y = self.teacher(x)
        (_, schedule) = self.schedule.push(lambda: math.inf, state.schedule)
        new = SparseState(schedule=schedule, cache=state.cache, head_affines=state.head_affines,
                          streak=x, forced=state.forced + 1)  # fmt: skip
        return y, self._account(new, state, self._dense_stats(state.cache.plan), True, start), True

    @staticmethod
    def _dense_stats(plan) -> FrameStats:
        return FrameStats(
            key=True, changed=1.0, active=[1.0] * len(plan.nodes),
            macs_exact=plan.dense_macs[0], macs_paper=plan.dense_macs[1],
            dense_macs_exact=plan.dense_macs[0], dense_macs_paper=plan.dense_macs[1],
        )  # fmt: skip

    @staticmethod
    def _account(new: SparseState, old: SparseState, stats: FrameStats, key: bool, start: float) -> SparseState:
        """``new`` with this frame's stats and the running totals."""
        stats.total_s = time.perf_counter() - start
        totals = dict(old.totals)
        totals["frames"] += 1
        totals["keys"] += int(key)
        totals["macs_exact"] += stats.macs_exact
        totals["macs_paper"] += stats.macs_paper
        totals["seconds"] += stats.total_s
        new.last, new.totals = stats, totals
        return new

    def _head_tail_macs(self, shape: tuple[int, ...]) -> tuple[tuple[int, int], tuple[int, int]]:
        """(exact, paper) MACs of the dense head and of the dense tail at this input shape, from
        the layer geometry alone (no op runs, so an op-level MAC counter around ``step`` does
        not see them twice)."""
        if shape not in self._dense_parts:
            t = self.teacher
            head = SparseRunner(t.head).plan(shape)
            h = head.buffers[-1]
            b = self.runner.plan((1, h.C, h.H, h.W)).buffers[-1]
            tail = SparseRunner(t.tail).plan((1, b.C, b.H, b.W))
            self._dense_parts[shape] = (head.dense_macs, tail.dense_macs)
        return self._dense_parts[shape]

    def macs_per_frame(self, state: SparseState) -> tuple[float, float]:
        """(exact, paper) MACs per frame so far, key frames included."""
        n = max(state.totals["frames"], 1)
        return state.totals["macs_exact"] / n, state.totals["macs_paper"] / n
