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
from fastv2v.methods.schedules import AdaptiveInterval, drift_score
from fastv2v.methods.base import OnlineMethod, StreamState, kernel_choice, register, whole_interval
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
    ``interval="auto"`` (or an :class:`~fastv2v.methods.schedules.AdaptiveInterval` as
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
        kernels: str = "torch",
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
        self.kernels = kernel_choice(kernels)
        self._fast: tuple[Callable, Callable] | None = None

    @property
    def fast_parts(self) -> tuple[Callable, Callable]:
        """``(head, tail)`` for non-key frames: the teacher's own modules, or with ``kernels=
        "fast"`` (opt-in) the CPU kernels of :mod:`fastv2v.generators.fast_parts`, equal to float
        rounding and faster on the CPU (elsewhere, and under the MAC counter, they run the plain
        modules). Key frames never use them, so they stay bit-identical to the teacher."""
        if self._fast is None:
            if self.kernels == "fast":
                from fastv2v.generators.fast_parts import fast_head, fast_tail

                self._fast = (fast_head(self.teacher, channels_last=True), fast_tail(self.teacher))
            else:
                self._fast = (self.teacher.head, self.teacher.tail)
        return self._fast

    SETTINGS = ("interval", "max_interval", "reuse_below", "kernels")

    @classmethod
    def from_model(
        cls, model: Any, *, interval: int | str | None = None, max_interval: int | None = None,
        reuse_below: float | None = None, kernels: str | None = None,
    ) -> "ShortcutMethod":
        """From a Shortcut-V2V bundle (teacher + trained block): ``interval`` None is the
        interval the block was trained for, ``"auto"`` the adaptive refresh at that average
        (``max_interval``: its bound); ``reuse_below``: the reuse gate (the file stores the
        calibrated one); ``kernels``: ``torch`` (default) or ``fast`` (the CPU fast head and tail)."""
        block = _trained_block(model, cls.name)
        gate = 0.0 if reuse_below is None else float(reuse_below)
        kernels = kernel_choice(kernels)
        if interval == "auto":
            schedule = AdaptiveInterval(model.interval, max_interval)
            return cls(model.teacher, block=block, schedule=schedule, reuse_below=gate, kernels=kernels)
        if max_interval is not None:
            raise UserError("--max-interval bounds --interval auto; give it with --interval auto.")
        return cls(model.teacher, whole_interval(interval, model.interval), block=block, reuse_below=gate,
                   kernels=kernels)  # fmt: skip

    def settings(self) -> dict[str, Any]:
        common = {"reuse_below": self.reuse_below, "kernels": self.kernels}
        if self.adaptive:
            return {"interval": "auto", "max_interval": self.schedule.max_interval, **common}
        return {"interval": self.interval, **common}

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
        a = score = None
        if state.reference:  # the drift of the head features from the key frame's: the schedule's signal
            a = self.fast_parts[0](x)
            self._check_frame(x, a)
            score = drift_score(a, state.reference["a"])
        (key,), schedule = self.schedule.push(score, state.schedule)
        if key:  # the plain head again: key frames are the teacher's own ops, bit for bit
            y, reference = self.key_frame(x)
            return y, StreamState(reference, schedule), True
        y = self.non_key_frame(x, state.reference, a, drift=score)
        return y, StreamState(state.reference, schedule), False

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

    def __init__(self, teacher: SplitGenerator, interval: int = 3, block: ShortcutBlock | None = None, *,
                 max_interval: int | None = None, **kwargs):  # fmt: skip
        super().__init__(teacher, block=block, schedule=AdaptiveInterval(interval, max_interval), **kwargs)

    @classmethod
    def from_model(
        cls, model: Any, *, interval: int | None = None, max_interval: int | None = None,
        reuse_below: float | None = None, kernels: str | None = None,
    ) -> "ShortcutAuto":
        """``interval``: the target average interval (None: the one the block was trained for)."""
        target = whole_interval(interval, model.interval)
        gate = 0.0 if reuse_below is None else float(reuse_below)
        return cls(model.teacher, target, block=_trained_block(model, cls.name), reuse_below=gate,
                   max_interval=max_interval, kernels=kernel_choice(kernels))  # fmt: skip

    def settings(self) -> dict[str, Any]:
        return {"interval": self.schedule.target, "max_interval": self.schedule.max_interval,
                "reuse_below": self.reuse_below, "kernels": self.kernels}  # fmt: skip


def _trained_block(model: Any, name: str) -> ShortcutBlock:
    """The trained block of a Shortcut-V2V bundle; a plain generator has none to offer."""
    block = getattr(model, "block", None)
    if not isinstance(block, ShortcutBlock):
        raise UserError(f"--method {name} needs a trained Shortcut-V2V model file (made by `fastv2v distill "
                        "shortcut`), not a plain generator; pass that file with --model.")  # fmt: skip
    return block
