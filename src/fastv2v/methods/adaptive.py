"""Adaptive key frames: refresh the reference when the video says so, not every N frames.

A fixed interval spends a full teacher pass every N frames whatever happens: on a static
stretch it refreshes for nothing, and after a scene cut it keeps predicting from a reference
that shows another scene for up to N - 1 frames (the limit the Shortcut-V2V paper names).

:class:`AdaptiveInterval` decides per frame from a cheap drift score, the relative change of
the frame's head features against the key frame's (``mean |a_t - a_ref| / mean |a_ref|``; the
head runs on every frame anyway, so the score costs one pass over a feature map and no MACs):

* it keeps a running *unit*, the typical drift per frame of this video (an average of
  ``score / frames since the key frame``, with outliers such as cuts clipped), so the rule
  needs no per-video tuning;
* it refreshes when the drift exceeds ``target x unit`` (what a fixed interval of ``target``
  would tolerate on steady motion), scaled by ``2 ** (1 - credit)``;
* *credit* is the key-frame budget: ``+1 / target`` per frame, ``-1`` per key frame, at most
  4. A drift-triggered refresh needs a credit of at least 0, so the long-run key-frame rate,
  and with it the amortised cost, is at most that of the fixed interval ``target``; key frames
  saved on static stretches lower the threshold later, so they are spent where things move;
* ``max_interval`` forces a refresh however small the drift (a bound on staleness).

A scene cut gives a drift many times the unit, so it refreshes as soon as the budget allows
(at once unless a key frame was spent in the last ``target`` frames).
"""

from __future__ import annotations

import math

import torch

from fastv2v.errors import UserError

MAX_CREDIT = 4.0
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
        if since_key >= self.max_interval:
            key = True
        elif credit < 0:
            key = False  # over budget: wait until the key frames spent are earned back
        elif unit is None:
            key = since_key >= self.target
        else:
            key = score > self.target * unit * 2.0 ** (1.0 - credit)
        per_frame = score / since_key
        if unit is None:
            unit = per_frame
        else:  # clipped, so a cut nudges the unit instead of resetting it
            unit = UNIT_MOMENTUM * unit + (1 - UNIT_MOMENTUM) * min(per_frame, UNIT_OUTLIER * unit)
        if key:
            credit -= 1.0
        credit = min(credit, MAX_CREDIT)
        return key, {"credit": credit, "unit": unit}
