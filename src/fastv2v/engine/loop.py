"""The one loop that drives a pipeline over frames, with pluggable observers.

``fastv2v translate``, every pass of ``fastv2v bench`` and the demo run a method through
:func:`drive`, so what one measures is what the other writes. Each *call* of the loop is one
``push`` of a chunk of frames (or the final ``flush``): encode the model-size input frames,
run the method, decode the outputs that became ready. Observers wrap every call:

* :class:`MacCounter`: the op-level MAC count of each call (``fastv2v.metrics.profile``);
* :class:`Timer`: the seconds of each call (model only: encode, method, decode);
* :class:`PeakMemory`: the peak memory over the whole pass;
* :class:`Collector`: the outputs and key flags, in frame order.

An online method answers each frame in its own call, so per-call cost is per-frame cost; a
buffered method's cost cannot be attributed to single frames (``attributable`` is False).
Each output is yielded with the input frame it belongs to, held here until it is ready, so a
caller can write input and output side by side; every input gets exactly one output, in order.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from fastv2v.errors import UserError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, dtype: str):
    """Autocast context for ``dtype`` (fp32: none). bf16 roughly halves CPU time with AVX-512 BF16."""
    if dtype not in DTYPES:
        raise UserError(f"unknown --dtype {dtype!r}; use fp32, bf16 or fp16.")
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype])


def check_labels(labels: np.ndarray, label_nc: int, source: str, index: int) -> None:
    """A label map may only hold IDs the model was trained on."""
    top = int(labels.max()) if labels.size else 0
    if top >= label_nc or (labels.size and int(labels.min()) < 0):
        raise UserError(
            f"{source}: frame {index} holds label ID {top}, but the model knows {label_nc} classes "
            f"(0..{label_nc - 1}); remap the labels or use a model trained with label_nc > {top}."
        )


@dataclass
class Output:
    """One output frame: its index, the model-size input it belongs to, the decoded output
    (uint8 ``H x W x C`` at model size), whether a full generator pass made it, and the raw
    model output ``y`` (``1 x C x H x W``)."""

    index: int
    frame: Any
    output: np.ndarray
    key: bool
    y: torch.Tensor


class Observer:
    """Base observer: ``start`` before the first call, ``call`` around each call, ``finish``
    after the last. ``no_grad``: the loop must run under ``torch.no_grad`` rather than
    ``inference_mode`` (the dispatch-level MAC counter sees no ops in inference mode)."""

    no_grad = False

    def start(self) -> None:
        pass

    def call(self, run: Callable[[], list[Output]], frames_in: int) -> list[Output]:
        return run()

    def finish(self) -> None:
        pass


@dataclass
class Held:
    """What the loop knows after a pass: the largest number of frames a call left waiting for
    their outputs (the latency a buffered method added)."""

    frames_in: int = 0
    most_waiting: int = 0


def drive(
    pipeline: Any,
    frames: Iterable[np.ndarray],
    *,
    observers: Iterable[Observer] = (),
    batch: int = 1,
    device: torch.device | str = "cpu",
    dtype: str = "fp32",
    source: str = "the input",
    held: Held | None = None,
) -> Iterator[Output]:
    """Run ``pipeline`` over model-size uint8 ``frames`` (RGB ``H x W x C`` or label maps
    ``H x W``; or model-input tensors ``1 x C x H x W``, already encoded); yield each
    :class:`Output` in frame order as soon as it is ready. ``pipeline`` may also be a bare
    method (its ``.teacher`` encodes and decodes).

    ``batch`` frames go into one call when the method is ``batchable`` (the teacher of a
    per-frame generator, the spatial student), else one (a sequential vid2vid teacher). The method's per-video state lives here, passed explicitly.
    """
    if batch < 1:
        raise UserError(f"--batch must be at least 1, not {batch}.")
    dev = device if isinstance(device, torch.device) else torch.device(device)
    observers = list(observers)
    method = getattr(pipeline, "method", pipeline)  # a Pipeline, or a bare method
    g = pipeline.teacher
    labels = g.input_kind == "labels"
    chunk_size = batch if getattr(method, "batchable", False) else 1
    grad = torch.no_grad if any(o.no_grad for o in observers) else torch.inference_mode
    held = held if held is not None else Held()
    waiting: collections.deque = collections.deque()
    box = {"state": None}

    def decoded(ready) -> list[Output]:
        outs = []
        for y, key in ready:
            for one, result in zip(y.split(1), g.decode_output(y).cpu().numpy()):
                index, frame = waiting.popleft()
                outs.append(Output(index, frame, result, bool(key), one))
        return outs

    def observed(run: Callable[[], list[Output]], frames_in: int) -> list[Output]:
        for observer in observers:
            run = (lambda inner, o: lambda: o.call(inner, frames_in))(run, observer)
        return run()

    def modes():  # entered per call, so the caller's code between yields keeps its own modes
        stack = contextlib.ExitStack()
        stack.enter_context(grad())
        stack.enter_context(autocast(dev, dtype))
        return stack

    for observer in observers:
        observer.start()
    try:
        box["state"] = method.init_state()
        for chunk in _chunks(frames, chunk_size):
            first = held.frames_in
            if labels and not isinstance(chunk[0], torch.Tensor):
                for i, frame in enumerate(chunk):
                    check_labels(frame, g.label_nc, source, first + i)
            waiting.extend(enumerate(chunk, first))
            held.frames_in += len(chunk)

            def push(chunk=chunk):
                with modes():
                    x = _encoded(g, chunk)
                    ready, box["state"] = method.push(x, box["state"])
                    return decoded(ready)

            outs = observed(push, len(chunk))
            held.most_waiting = max(held.most_waiting, len(waiting))
            yield from outs

        def flush():
            with modes():
                return decoded(method.flush(box["state"]))

        yield from observed(flush, 0)
    finally:
        for observer in observers:
            observer.finish()
    if waiting:
        done = held.frames_in - len(waiting)
        raise RuntimeError(f"{type(method).__name__} returned {done} outputs for {held.frames_in} frames")


def _encoded(g, chunk: list) -> torch.Tensor:
    """Model input of a chunk: uint8 frames are encoded by the teacher; tensors already are."""
    if isinstance(chunk[0], torch.Tensor):
        return torch.cat(chunk)
    return g.encode_input(torch.from_numpy(np.stack(chunk)))


def _chunks(frames: Iterable[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    iterator = iter(frames)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


# ---------------------------------------------------------------------------------------------
# observers


@dataclass
class _Call:
    frames_in: int
    keys: list[bool]


class _PerCall(Observer):
    """Bookkeeping shared by the observers that record something per call."""

    def __init__(self):
        self.calls: list[_Call] = []

    def start(self) -> None:
        self.calls = []

    @property
    def keys(self) -> list[bool]:
        return [k for c in self.calls for k in c.keys]

    @property
    def attributable(self) -> bool:
        """Every call took one frame and gave that frame's output (an online method, batch 1)."""
        return all(c.frames_in == len(c.keys) == 1 for c in self.calls if c.frames_in or c.keys)

    def _record(self, outs: list[Output], frames_in: int) -> None:
        self.calls.append(_Call(frames_in, [o.key for o in outs]))


class Timer(_PerCall):
    """Seconds of each call; ``per_frame`` when attributable (else None), ``seconds`` in all."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        super().__init__()
        self.clock = clock
        self.times: list[float] = []

    def start(self) -> None:
        super().start()
        self.times = []

    def call(self, run, frames_in):
        tick = self.clock()
        outs = run()
        self.times.append(self.clock() - tick)
        self._record(outs, frames_in)
        return outs

    @property
    def seconds(self) -> float:
        return float(sum(self.times))

    @property
    def per_frame(self) -> list[float] | None:
        if not self.attributable:
            return None
        return [t for t, c in zip(self.times, self.calls) if c.frames_in]


class MacCounter(_PerCall):
    """Multiply-accumulates of each call, counted at op dispatch (both conventions)."""

    no_grad = True

    def __init__(self):
        super().__init__()
        self.macs: list[tuple[int, int]] = []

    def start(self) -> None:
        super().start()
        self.macs = []

    def call(self, run, frames_in):
        from fastv2v.metrics.profile import profile

        box: dict[str, list[Output]] = {}

        def inner():
            box["outs"] = run()

        p = profile(inner)
        self.macs.append((p.macs_exact, p.macs_paper))
        self._record(box["outs"], frames_in)
        return box["outs"]

    @property
    def total(self) -> tuple[int, int]:
        return sum(m[0] for m in self.macs), sum(m[1] for m in self.macs)

    @property
    def per_frame(self) -> list[tuple[int, int]] | None:
        if not self.attributable:
            return None
        return [m for m, c in zip(self.macs, self.calls) if c.frames_in]


class PeakMemory(Observer):
    """Peak memory over the pass (:class:`fastv2v.bench.memory.PeakMemory`)."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = device
        self.meter = None

    def start(self) -> None:
        from fastv2v.bench.memory import PeakMemory as Meter

        self.meter = Meter(self.device)
        self.meter.__enter__()

    def finish(self) -> None:
        self.meter.__exit__(None, None, None)

    @property
    def peak_mb(self) -> float | None:
        return self.meter.peak_mb if self.meter else None

    @property
    def reason(self) -> str | None:
        return getattr(self.meter, "reason", None)


@dataclass
class Collector(Observer):
    """Outputs and key flags in frame order; with ``into`` (a preallocated ``N x H x W x C``
    uint8 array) the outputs are copied there instead of kept as a list."""

    into: np.ndarray | None = None
    outputs: list[np.ndarray] = field(default_factory=list)
    keys: list[bool] = field(default_factory=list)

    def start(self) -> None:
        self.outputs, self.keys = [], []

    def call(self, run, frames_in):
        outs = run()
        for o in outs:
            if self.into is not None:
                self.into[o.index] = o.output
            else:
                self.outputs.append(o.output)
            self.keys.append(o.key)
        return outs
