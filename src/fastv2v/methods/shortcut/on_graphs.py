"""Shortcut-V2V on exported graphs (``--backend onnxruntime|openvino``): the same schedule and
reuse gate as :class:`~fastv2v.methods.shortcut.method.ShortcutMethod`, with the key frame and
the non-key step run by ``shortcut_key`` / ``shortcut_step`` (:mod:`fastv2v.export`), whose
reference travels as explicit tensors in the per-video state.

Two differences from the torch method, both about cost, not outputs: the step graph computes
the drift the gate and the adaptive schedule read inside the same call as the block, so a frame
the gate reuses still pays for the block; and with the adaptive schedule a frame that turns out
to be a key frame has run the step first (its drift decides).
"""

from __future__ import annotations

from typing import Any

import torch

from fastv2v.errors import UserError
from fastv2v.methods.base import StreamState


class ShortcutOnGraphs:
    """``method`` (a torch :class:`ShortcutMethod` or :class:`ShortcutAuto`) with its frames run
    by the ``key`` and ``step`` graphs; sides must be multiples of ``multiple``. Settings,
    schedule, gate and everything reports read are the torch method's."""

    latency = 0
    batchable = False

    def __init__(self, method: Any, key: Any, step: Any, multiple: int):
        self.method, self.key, self.step_graph, self.multiple = method, key, step, int(multiple)
        self.teacher, self.schedule, self.name = method.teacher, method.schedule, method.name
        self.state_names = key.outputs[1:]  # the reference, in the order the step takes it

    def __getattr__(self, name: str) -> Any:  # reports: parameter_count, describe, non_key_path, ...
        return getattr(self.method, name)

    def settings(self) -> dict[str, Any]:
        return self.method.settings()

    def init_state(self) -> StreamState:
        return self.method.init_state()

    def push(self, x: torch.Tensor, state: StreamState):
        ready = []
        for frame in x.split(1):
            y, state, key = self.step(frame, state)
            ready.append((y, key))
        return ready, state

    def flush(self, state: StreamState) -> list:
        return []

    def step(self, x: torch.Tensor, state: StreamState) -> tuple[torch.Tensor, StreamState, bool]:
        stepped = None
        if self.method.adaptive and state.reference:
            stepped = self._step(x, state.reference)
        signal = float(stepped[1]) if stepped is not None else None
        (key,), schedule = self.schedule.push(signal if self.method.adaptive else None, state.schedule)
        if key:
            y, reference = self.key_frame(x)
            return y, StreamState(reference, schedule), True
        return self.non_key_frame(x, state.reference, stepped=stepped), StreamState(state.reference, schedule), False

    def key_frame(self, x: torch.Tensor, a: Any = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The key graph: the teacher's output and the reference the step takes, by name."""
        self._check_frame(x)
        y, *reference = self.key(x=x)
        return y, {"y": y, **dict(zip(self.state_names, reference))}

    def non_key_frame(self, x: torch.Tensor, reference: dict[str, torch.Tensor], gate: bool = True,
                      stepped: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:  # fmt: skip
        """The step graph's output, or the key frame's where the calibrated gate says so;
        ``stepped``: the step's ``(y, drift)`` when already run."""
        y, drift = stepped if stepped is not None else self._step(x, reference)
        if gate and self.method.reuse_below > 0 and float(drift) < self.method.reuse_below:
            return reference["y"]  # hardly moved: the key frame's output (the calibrated gate)
        return y

    def _step(self, x: torch.Tensor, reference: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        y, drift = self.step_graph(x=x, **{k: reference[k] for k in self.state_names})
        return y, drift

    def _check_frame(self, x: torch.Tensor) -> None:
        h, w = x.shape[-2:]
        if h % self.multiple or w % self.multiple:
            raise UserError(f"frames of {h}x{w} do not fit the Shortcut-V2V graphs, which need sides that are "
                            f"multiples of {self.multiple}; use such a --size.")  # fmt: skip
