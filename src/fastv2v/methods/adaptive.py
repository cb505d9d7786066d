"""Adaptive key frames: refresh the reference when the video says so, not every N frames.

A fixed interval spends a full teacher pass every N frames whatever happens: on a static
stretch it refreshes for nothing, and after a scene cut it keeps predicting from a reference
that shows another scene for up to N - 1 frames (the limit the Shortcut-V2V paper names).

:class:`AdaptiveInterval` decides per frame from a cheap drift score, the relative change of
the frame's head features against the key frame's (``mean |a_t - a_ref| / mean |a_ref|``; the
head runs on every frame anyway, so the score costs one pass over a feature map and no MACs):

* it keeps a running *unit*, the typical drift per frame of this video (a slow average of
  ``score / frames since the key frame``, each sample clipped at 3 units so a cut only nudges
  it), so the rule needs no per-video tuning; ``usual = target x unit`` is the drift a fixed
  interval of ``target`` tolerates on steady motion;
* *credit* is the key-frame budget: ``+1 / target`` per frame, ``-1`` per key frame, at most 4.
  Within budget (credit >= 0) it refreshes once the drift reaches ``usual / 2 x 2 ** (1 -
  credit)``: about every ``target`` frames on steady motion, later on static stretches (the
  credit saved lowers the threshold afterwards, so key frames are spent where things move);
* over budget only a *cut* refreshes: drift 3x faster than usual since the key frame. It
  borrows, down to a credit of -2, so at most two key frames beyond the fixed interval's count
  over a whole video, earned back before the next drift-triggered refresh;
* ``max_interval`` forces a refresh however small the drift (a bound on staleness).

So the long-run key-frame rate, and with it the amortised cost, is that of the fixed interval
``target`` (plus at most two), and a scene cut refreshes at once. Measured against the fixed
interval at equal cost: ``benchmarks/adaptive_refresh.py``.
"""

from __future__ import annotations

import math

import torch

from fastv2v.errors import UserError

MAX_CREDIT = 4.0
MIN_CREDIT = -2.0  # borrowing for cuts: at most two key frames over the budget, then earned back
DUE = 0.5  # with one key frame's credit, refresh at this fraction of the usual drift
CUT = 3.0  # drift this many times faster than usual since the key frame: a cut, refresh even over budget
EPS = 1e-9  # credit is a sum of 1/target steps: compare with a little slack
UNIT_OUTLIER = 3.0  # per-frame drift counts at most this many units when the unit is updated
UNIT_MOMENTUM = 0.97  # slow: the unit is the video's typical drift, not the last few frames'


def drift_score(a: torch.Tensor, a_ref: torch.Tensor) -> float:
    """Relative L1 change of head features against the reference's."""
    return float((a - a_ref).abs().mean() / a_ref.abs().mean().clamp_min(1e-8))


class AdaptiveInterval:
    """Key-frame decisions from a drift score within a budget of one key frame per ``target``
    frames on average (see the module docstring). State is a plain dict, kept per video."""

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

    def start(self) -> dict[str, float | None]:
        """State after the first key frame of a video."""
        return {"credit": 0.0, "unit": None}

    def decide(self, since_key: int, score: float, state: dict) -> tuple[bool, dict]:
        """Whether the frame ``since_key`` frames after the last key frame, whose drift is
        ``score``, becomes a key frame; and the new state."""
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
