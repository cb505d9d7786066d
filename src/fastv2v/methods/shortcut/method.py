"""The Shortcut-V2V method: key frames run the teacher (bit for bit) and cache what the block
needs; non-key frames run ``tail(block(head(x), cached reference))``. The block itself is
:mod:`fastv2v.methods.shortcut.block`; its model file :mod:`fastv2v.methods.shortcut.model_file`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable

import torch

from fastv2v.errors import UserError
from fastv2v.generators.base import SplitGenerator
from fastv2v.methods.adaptive import AdaptiveInterval, drift_score
from fastv2v.methods.base import OnlineMethod, StreamState, register
from fastv2v.methods.shortcut.block import ShortcutBlock

__all__ = ["ShortcutAuto", "ShortcutMethod"]


# ---------------------------------------------------------------------------------------------


@contextmanager
def _uncounted():
    """Run without any active dispatch mode (the MAC counter), for scratch references."""
    from torch.utils._python_dispatch import _disable_current_modes

    with _disable_current_modes():
        yield


@register
class ShortcutMethod(OnlineMethod):
    """Key frames: the teacher (bit-identical) plus ``block.prepare_reference`` cached in the
    reference; non-key frames: ``tail(block.predict(head(x), prepared))``.

    ``block`` defaults to a freshly initialised :class:`ShortcutBlock` sized for the teacher
    (untrained: for profiling and tests; load trained weights into ``method.block``).
    ``interval="auto"`` (or an :class:`~fastv2v.methods.adaptive.AdaptiveInterval` as
    ``schedule``) refreshes the reference when the head features drift, at the average cost of
    the fixed interval ``target`` (default 3). ``reuse_below``: a non-key frame whose head
    features drifted less than this from the key frame's (:func:`drift_score`) shows the key
    frame's output instead of running the block and the tail; the distiller calibrates it on
    training pairs (0 when the block wins everywhere) and stores it in the model file.
    """

    name = "shortcut"
    model_kind = "shortcut"  # the benchmark needs a trained bundle; an untrained block says nothing
    PREFIX = "shortcut."

    def __init__(
        self,
        teacher: SplitGenerator,
        interval: int | str = 3,
        block: ShortcutBlock | None = None,
        *,
        schedule: AdaptiveInterval | None = None,
        reuse_below: float = 0.0,
        **block_kwargs,
    ):
        if interval == "auto":
            schedule, interval = schedule or AdaptiveInterval(3), 1
        super().__init__(teacher, interval)
        if schedule is not None:
            self.schedule = schedule
        channels = teacher.feature_channels
        if block is None:
            block = ShortcutBlock(feature_channels=channels, **block_kwargs)
            p = next(teacher.parameters(), None)
            if p is not None:
                block = block.to(p.device)
            block.eval()
        elif block_kwargs:
            raise TypeError("give either a block or block settings, not both")
        if block.feature_channels != channels:
            raise UserError(
                f"this Shortcut block was built for {block.feature_channels}-channel features, but the teacher's "
                f"head gives {channels} channels (ngf {channels // 2}); use a block made for this teacher."
            )
        self.block = block
        self.reuse_below = float(reuse_below)
        self._fast: tuple[Callable, Callable] | None = None

    @property
    def fast_parts(self) -> tuple[Callable, Callable]:
        """``(head, tail)`` for non-key frames: the teacher's head and tail, equal to float
        rounding and faster on the CPU (:mod:`fastv2v.generators.fast_parts`; elsewhere, and
        under the MAC counter, they run the plain modules). Key frames never use them, so they
        stay bit-identical to the teacher."""
        if self._fast is None:
            from fastv2v.generators.fast_parts import fast_head, fast_tail

            self._fast = (fast_head(self.teacher, channels_last=True), fast_tail(self.teacher))
        return self._fast

    @classmethod
    def from_model(
        cls, path, *, interval: int | None = None, device: str | torch.device = "cpu", teacher: SplitGenerator | None = None
    ) -> "ShortcutMethod":
        """The method from a Shortcut-V2V model file (teacher + block + default interval);
        ``interval`` None uses the file's; ``teacher``, when given, must be the file's teacher."""
        from fastv2v.methods.shortcut.model_file import load_shortcut

        model = load_shortcut(path, device=device, teacher=teacher)
        gate = model.info.get("reuse_below", 0.0)
        if interval == "auto":
            return cls(model.teacher, block=model.block, schedule=AdaptiveInterval(model.interval), reuse_below=gate)
        return cls(model.teacher, model.interval if interval is None else interval, block=model.block, reuse_below=gate)

    def _prepared(self, reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        n = len(self.PREFIX)
        return {k[n:]: v for k, v in reference.items() if k.startswith(self.PREFIX)}

    def _check_frame(self, x: torch.Tensor, a: torch.Tensor) -> None:
        h, w = a.shape[-2:]
        if h % 2 or w % 2:
            stride = max(1, x.shape[-2] // max(h, 1))
            raise UserError(
                f"frames of {x.shape[-2]}x{x.shape[-1]} give {h}x{w} head features, but Shortcut-V2V needs even "
                f"feature sides: use frame sides that are multiples of {2 * stride} (--size)."
            )

    @property
    def adaptive(self) -> bool:
        return isinstance(self.schedule, AdaptiveInterval)

    def step(self, x: torch.Tensor, state: StreamState) -> tuple[torch.Tensor, StreamState, bool]:
        if not self.adaptive:
            return super().step(x, state)
        if state.since_key is None:
            y, reference = self.key_frame(x)
            return y, StreamState(since_key=1, reference=reference, schedule=self.schedule.start()), True
        a = self.fast_parts[0](x)
        self._check_frame(x, a)
        score = drift_score(a, state.reference["a"])
        key, schedule = self.schedule.decide(state.since_key, score, state.schedule)
        if key:  # the plain head again: key frames are the teacher's own ops, bit for bit
            y, reference = self.key_frame(x)
            return y, StreamState(since_key=1, reference=reference, schedule=schedule), True
        y = self.non_key_frame(x, state.reference, a, drift=score)
        return y, StreamState(since_key=state.since_key + 1, reference=state.reference, schedule=schedule), False

    def key_frame(self, x: torch.Tensor, a: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        y, reference = super().key_frame(x, a)
        self._check_frame(x, reference["a"])
        prepared = self.block.prepare_reference(reference["a"], reference["f"])
        reference.update({self.PREFIX + k: v for k, v in prepared.items()})
        return y, reference

    def non_key_frame(
        self,
        x: torch.Tensor,
        reference: dict[str, torch.Tensor],
        a: torch.Tensor | None = None,
        gate: bool = True,
        drift: float | None = None,
    ) -> torch.Tensor:
        """``tail(block(head(x)))``; ``a``: the head features when already computed, ``drift``:
        their :func:`drift_score` when already known (the adaptive schedule measured it)."""
        head, tail = self.fast_parts
        if a is None:
            a = head(x)
            self._check_frame(x, a)
        if gate and self.reuse_below > 0:
            drift = drift_score(a, reference["a"]) if drift is None else drift
            if drift < self.reuse_below:
                return reference["y"]  # hardly moved: the key frame's output beats the block (calibrated)
        f_hat, _ = self.block.predict(a, self._prepared(reference), aligned=False)
        return tail(f_hat)

    # --- profiling ---------------------------------------------------------------------------
    def _scratch_reference(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with _uncounted(), torch.no_grad():
            _, reference = self.key_frame(x)
        return reference

    def non_key_path(self) -> Callable[[torch.Tensor], Any]:
        """``x -> tail(predict(head(x), prepared))`` with ``prepared`` from a key frame on ``x``
        built outside any MAC counter: profiling it counts one non-key frame only (the block's
        path, never the ``reuse_below`` shortcut)."""

        def path(x: torch.Tensor) -> torch.Tensor:
            return self.non_key_frame(x, self._scratch_reference(x), gate=False)

        return path

    def key_frame_extra_path(self) -> Callable[[torch.Tensor], Any]:
        """``x -> prepare_reference(a, f)`` with the teacher's ``a`` and ``f`` for ``x`` computed
        outside any MAC counter: what a key frame costs on top of the teacher."""

        def path(x: torch.Tensor) -> dict[str, torch.Tensor]:
            with _uncounted(), torch.no_grad():
                a = self.teacher.head(x)
                f = self.teacher.body(a)
            return self.block.prepare_reference(a, f)

        return path

    def parts(self, x: torch.Tensor) -> dict[str, Callable[[], Any]]:
        """Zero-argument callables for each part of a non-key frame on ``x`` (inputs of each part
        precomputed): ``head``, ``block`` (predict), ``tail``, and ``prepare`` (key-frame extra).
        For per-part timing and MAC profiles."""
        head, tail = self.fast_parts
        with torch.no_grad():
            reference = self._scratch_reference(x)
            prepared = self._prepared(reference)
            a = head(x)
            f_hat, _ = self.block.predict(a, prepared, aligned=False)
        b = self.block
        return {
            "head": lambda: head(x),
            "block": lambda: b.predict(a, prepared, aligned=False),
            "tail": lambda: tail(f_hat),
            "prepare": lambda: b.prepare_reference(reference["a"], reference["f"]),
        }


@register
class ShortcutAuto(ShortcutMethod):
    """Shortcut-V2V with the adaptive reference refresh; its interval is the *target* average
    interval (the key-frame budget), so ``shortcut_auto`` at N costs what ``shortcut`` at N costs
    on average (the benchmark compares them at equal amortised MACs)."""

    name = "shortcut_auto"

    def __init__(self, teacher: SplitGenerator, interval: int = 3, block: ShortcutBlock | None = None, **kwargs):
        super().__init__(teacher, block=block, schedule=AdaptiveInterval(interval), **kwargs)

    @classmethod
    def from_model(cls, path, *, interval=None, device="cpu", teacher=None) -> "ShortcutAuto":
        from fastv2v.methods.shortcut.model_file import load_shortcut

        model = load_shortcut(path, device=device, teacher=teacher)
        interval = model.interval if interval is None else interval
        return cls(model.teacher, interval, block=model.block, reuse_below=model.info.get("reuse_below", 0.0))
