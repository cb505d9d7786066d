"""Run every method on the same frames in one process and measure what users ask about.

For each model, the teacher runs first (its outputs are the reference), then every other
method at every key-frame interval, all with the same threads, dtype and device. Each run is a
:class:`~fastv2v.pipeline.Pipeline` assembled from the model file exactly as ``fastv2v
translate`` assembles it (the file's stored settings, e.g. the calibrated reuse gate, with the
interval on top), driven by the same loop (:func:`fastv2v.engine.loop.drive`) in four passes
over the same in-memory, model-size frames:

1. **MACs**: every call runs under the op-level MAC counter (:class:`~fastv2v.engine.loop.
   MacCounter`), so the cost is what the run actually did, frame by frame: key frames, non-key
   frames and any data-dependent work (sparse methods) are counted as they happened, never
   estimated. This pass also warms up every code path.
2. **warm-up**: a few plain frames (one key-frame interval), untimed.
3. **model only**: encode, method, decode per frame, timed, with the peak memory sampled; its
   outputs are what the quality metrics judge.
4. **end to end**: :func:`fastv2v.engine.translate.translate` itself on the source file (decode
   in a reader thread, resize, run, encode an H.264 mp4 to a temporary file in a writer
   thread), timed from opening to the finished file.

Which methods exist, what they take and how they are built is the assembler's business
(:mod:`fastv2v.pipeline`); the method protocol is documented in :mod:`fastv2v.methods.base`.
A method that cannot run with a model file (a ``UserError`` while assembling) is skipped for
that model, with the message as the note.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import platform
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from fastv2v.bench.inputs import BenchInput, resolve_input
from fastv2v.bench.report import clean
from fastv2v.engine.loop import Collector, MacCounter, Timer, drive
from fastv2v.engine.loop import PeakMemory as PeakMemoryObserver
from fastv2v.errors import UserError
from fastv2v.metrics.profile import count_parameters
from fastv2v.precision import warn_if_emulated

DEFAULT_METHODS = ("teacher", "repeat", "reuse")
DEFAULT_INTERVALS = (2, 3, 4)

CONVENTIONS = {
    "macs": "G multiply-accumulates per frame in two conventions: exact (true multiply-adds) and paper "
    "(transposed convolutions at output size, as thop/torchprofile and published tables count them). "
    "macs_per_frame is the run's total over all frames divided by the frame count, key frames included, "
    "with the key pattern this run actually had; macs_nonkey is the mean over its non-key frames "
    "(a method whose every frame is a key frame, like the teacher: its per-frame cost).",
    "time": "ms_per_frame: model only (encode_input, method step, decode_output to uint8), batch 1, after "
    "warm-up, on frames already decoded into memory; with repeats > 1 the median pass (all in *_runs). "
    "e2e_fps: decode the source from disk, resize, run, "
    "encode an H.264 mp4 to a temporary file, timed from opening the source to the finished file.",
    "psnr": "PSNR = 10 log10(255^2 / MSE) with the MSE averaged over the frames first (all frames, or only "
    "the non-key frames for *_nonkey), so key frames that equal the teacher exactly (MSE 0) keep the "
    "all-frames value finite and meaningful; SSIM is the mean of per-frame SSIM (key frames count as 1.0 "
    "when they equal the teacher). The teacher's own PSNR to itself is infinite and reported as null.",
    "warp_error": "warping error (Lai et al. 2018): squared error on the [0,1] scale between each output and "
    "the previous output warped by the input's optical flow (DIS), over pixels with consistent forward-"
    "backward flow, averaged over consecutive pairs; lower means less flicker. warp_error_motion names "
    "the frames the flow was measured on.",
    "tof": "tOF (TecoGAN protocol): mean end-point distance in pixels between the optical flow of consecutive "
    "outputs and that of the reference (teacher outputs or ground truth).",
    "peak_mem_mb": "MiB added at the peak during the model-only pass above the level before it (CPU: resident "
    "set size sampled every 2 ms from /proc/self/statm after returning freed heap to the OS; CUDA: "
    "torch.cuda.max_memory_allocated). Output buffers are allocated before the pass and not counted.",
}


class _Skip(Exception):
    """A method that cannot run with this model file (reported, not raised)."""


# ---------------------------------------------------------------------------------------------
# parsing


def parse_methods(text: str | Sequence[str]) -> list[str]:
    """``"teacher,repeat,reuse"`` -> names, each checked against the registry, teacher first."""
    from fastv2v.pipeline import registry

    METHODS = registry()
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if not names:
        raise UserError("--methods is empty; name at least one method, e.g. teacher,repeat,reuse.")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise UserError(
            f"unknown method{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"the registered methods are: {', '.join(sorted(METHODS))}."
        )
    ordered = ["teacher"] + [n for n in dict.fromkeys(names) if n != "teacher"]
    return ordered


def parse_intervals(text: str | Sequence[int]) -> list[int]:
    """``"2,3,4"`` -> [2, 3, 4]; each a whole number >= 1."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for item in items:
        try:
            value = int(str(item).strip())
        except ValueError:
            raise UserError(
                f"--intervals takes whole numbers separated by commas (e.g. 2,3,4), not {item!r}."
            ) from None
        if value < 1:
            raise UserError(f"a key-frame interval must be at least 1, not {value}.")
        out.append(value)
    if not out:
        raise UserError("--intervals is empty; give e.g. 2,3,4.")
    return list(dict.fromkeys(out))


def parse_backends(text: str | Sequence[str]) -> list[tuple[str, str | None]]:
    """``"torch,openvino:bf16"`` -> [("torch", None), ("openvino", "bf16")]: each backend, with
    its own precision after a colon (default: the run's --dtype); torch first when present, so
    the other backends' speed-ups and fidelity are against the torch teacher."""
    from fastv2v.runtimes import BACKENDS, check_backend

    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if str(t).strip()]
    out: list[tuple[str, str | None]] = []
    for item in items:
        backend, _, dtype = item.partition(":")
        if backend not in BACKENDS or dtype not in ("", "fp32", "bf16", "fp16"):
            raise UserError(f"--backends takes {', '.join(BACKENDS)} (each optionally :fp32, :bf16 or :fp16) separated "
                            f"by commas, not {item!r}.")  # fmt: skip
        check_backend(backend)
        out.append((backend, dtype or None))
    if not out:
        raise UserError("--backends is empty; give e.g. torch,onnxruntime,openvino.")
    out = list(dict.fromkeys(out))
    return sorted(out, key=lambda r: r[0] != "torch")


def runtime_label(runtime: tuple[str, str | None], dtype: str) -> str:
    return f"{runtime[0]} {runtime[1] or dtype}"


# ---------------------------------------------------------------------------------------------
# models


@dataclass
class ModelEntry:
    """One ``--model``: the label used in the report, its file (None: in memory), its kind, the
    loaded model (a generator or a bundle) and its teacher."""

    label: str
    path: Path | None
    kind: str
    model: Any
    teacher: Any
    kernels: str | None = None  # for the methods that have CPU fast paths
    runtime: tuple[str, str | None] = ("torch", None)  # (backend, its precision; None: the run's --dtype)

    def describe(self, hw: tuple[int, int], macs_total: tuple[int, int], frames: int) -> dict:
        g = self.teacher
        return {
            "model": self.label, "path": None if self.path is None else str(self.path), "kind": self.kind,
            "arch": g.config.get("arch"), "ngf": g.config.get("ngf"), "input_kind": g.input_kind,
            "params_m": count_parameters(g) / 1e6, "model_height": hw[0], "model_width": hw[1],
            "teacher_macs": {"exact": macs_total[0] / frames / 1e9, "paper": macs_total[1] / frames / 1e9},
        }  # fmt: skip

    def pipeline(self, name: str, interval: int | None, settings: dict | None = None):
        """The run ``name@interval`` assembled as ``fastv2v translate`` assembles it, or
        :class:`_Skip` with the reason it cannot run with this model."""
        from fastv2v.pipeline import Pipeline, takes

        kernels = self.kernels if takes(name, "kernels") else None
        try:
            return Pipeline.from_model(self.model, name, label=self.label, path=self.path, interval=interval,
                                       kernels=kernels, **(settings or {}))  # fmt: skip
        except UserError as exc:
            raise _Skip(str(exc)) from None

    def on_runtime(self, pipeline, dtype: str, device: torch.device):
        """``pipeline`` on this entry's backend (its graphs exported once into the cache), or
        :class:`_Skip` with the reason it cannot run there."""
        from fastv2v.runtimes import on_backend

        backend, own = self.runtime
        try:
            return on_backend(pipeline, backend, dtype=own or dtype, device=str(device))
        except UserError as exc:
            raise _Skip(str(exc)) from None


def load_model(item: Any, device: torch.device) -> ModelEntry:
    """A path (teacher or method bundle), a generator, or ``(label, generator)``."""
    from fastv2v.generators.base import SplitGenerator

    if isinstance(item, tuple):
        label, generator = item
        generator = generator.to(device).eval()
        return ModelEntry(str(label), None, "generator", generator, generator)
    if isinstance(item, SplitGenerator):
        label = f"{item.config.get('arch', type(item).__name__)} (in memory)"
        generator = item.to(device).eval()
        return ModelEntry(label, None, "generator", generator, generator)
    from fastv2v.models import load_model as load
    from fastv2v.generators import teacher_of

    path = Path(item)
    model = load(path, device=device)
    teacher = teacher_of(model)
    return ModelEntry(path.name, path, getattr(model, "kind", "generator"), model, teacher.eval())


# ---------------------------------------------------------------------------------------------
# the passes (one loop: fastv2v.engine.loop.drive)


def _count_macs(pipeline, frames: list[np.ndarray], dev, dtype: str) -> tuple[MacCounter, tuple]:
    """Pass 1: every call under the MAC counter (also the warm-up of every code path); the
    counter and the shape of one output."""
    counter = MacCounter()
    last = None
    for out in drive(pipeline, frames, observers=[counter], device=dev, dtype=dtype):
        last = out.output
    return counter, tuple(last.shape)


def _nonkey_path_macs(pipeline, frame: np.ndarray) -> tuple[int, int] | None:
    """MACs of one non-key frame from the method's ``non_key_path`` (buffered methods, whose run
    cannot attribute cost to frames)."""
    from fastv2v.metrics.profile import profile

    method = pipeline.method
    path = method.non_key_path() if hasattr(method, "non_key_path") else None
    if path is None:
        return None
    with torch.no_grad():
        p = profile(path, pipeline.teacher.encode_input(torch.from_numpy(np.stack([frame]))))
    return p.macs_exact, p.macs_paper


def _timed(pipeline, frames, dev, dtype: str, out: np.ndarray) -> tuple[Timer, PeakMemoryObserver, Collector]:
    """Pass 3: model-only time per call (encode, method, decode), outputs into ``out``."""
    timer, memory, collector = Timer(), PeakMemoryObserver(dev), Collector(into=out)
    for _ in drive(pipeline, frames, observers=[memory, timer, collector], device=dev, dtype=dtype):
        pass
    return timer, memory, collector


def _end_to_end(pipeline, inp: BenchInput, size, dev, dtype: str, folder: Path, limit: int | None = None) -> float:
    """Pass 4: ``translate`` itself, from opening the source to a finished mp4."""
    from fastv2v.engine.translate import translate

    target = folder / "e2e.mp4"
    report = translate(pipeline, inp.source, target, device=str(dev), dtype=dtype, size=None if inp.task else size,
                       progress=False, max_frames=limit or inp.frames)  # fmt: skip
    target.unlink(missing_ok=True)
    return report.seconds_total


# ---------------------------------------------------------------------------------------------
# metrics


def _psnr_of_mse(mean_mse: float) -> float | None:
    return None if mean_mse == 0 else 10.0 * math.log10(255.0**2 / mean_mse)


class _Notes(dict):
    """Reasons for null metrics, keyed by field name (``result["notes"]``)."""


def _fidelity(outs, refs, keys, prefix: str, notes: _Notes, nonkey: bool) -> dict:
    """PSNR (pooled MSE) and SSIM (mean) of outputs against references, all and non-key frames."""
    from fastv2v.metrics.quality import mse, ssim

    result: dict[str, Any] = {}
    fields = [f"psnr_{prefix}", f"ssim_{prefix}"]
    fields += [f"psnr_{prefix}_nonkey", f"ssim_{prefix}_nonkey"] if nonkey else []
    if refs is None:
        for name in fields:
            result[name] = None
            notes[name] = "no ground truth for this input"
        return result
    if outs[0].shape != refs[0].shape:
        for name in fields:
            result[name] = None
            notes[name] = f"outputs are {outs[0].shape[:2]} but the reference frames are {refs[0].shape[:2]}"
        return result
    errors = np.array([mse(o, r) for o, r in zip(outs, refs)])
    try:
        sims = np.array([ssim(o, r) for o, r in zip(outs, refs)])
    except ValueError as exc:  # frames smaller than the 11x11 SSIM window
        sims = None
        for name in fields[1::2]:
            notes[name] = str(exc)
    groups = [("", np.ones(len(keys), bool))]
    if nonkey:
        groups.append(("_nonkey", ~np.asarray(keys)))
    for suffix, mask in groups:
        p, s = f"psnr_{prefix}{suffix}", f"ssim_{prefix}{suffix}"
        if not mask.any():
            result[p] = result[s] = None
            notes[p] = notes[s] = "every frame of this run is a key frame"
            continue
        result[p] = _psnr_of_mse(float(errors[mask].mean()))
        if result[p] is None:
            notes[p] = "identical to the reference on every frame (PSNR is infinite)"
        result[s] = None if sims is None else float(sims[mask].mean())
    return result


@dataclass
class _Motion:
    """Optical flow between consecutive frames of the motion reference (computed once per model)."""

    source: str
    flows: list | None
    reason: str | None = None


def _motion(frames: list[np.ndarray], source: str) -> _Motion:
    from fastv2v.flow import estimate_flow, occlusion_mask

    flows = []
    try:
        for prev, cur in zip(frames, frames[1:]):
            fwd = estimate_flow(cur, prev)
            flows.append((fwd, occlusion_mask(fwd, estimate_flow(prev, cur))))
    except ValueError as exc:
        return _Motion(source, None, f"optical flow failed on the {source} frames: {exc}")
    return _Motion(source, flows)


def _temporal(outs, motion: _Motion, teacher_outs, targets, notes: _Notes) -> dict:
    from fastv2v.metrics.temporal import tof, warping_error_from_flow

    result: dict[str, Any] = {"warp_error": None, "warp_error_motion": motion.source}
    if motion.flows is None:
        notes["warp_error"] = motion.reason
    else:
        errors = [warping_error_from_flow(a, b, f, v) for (a, b), (f, v) in zip(zip(outs, outs[1:]), motion.flows)]
        errors = [e for e in errors if not math.isnan(e)]
        result["warp_error"] = float(np.mean(errors)) if errors else None
        if not errors:
            notes["warp_error"] = "no pixel had reliable motion in any frame pair"
    for name, refs in (("tof_vs_teacher", teacher_outs), ("tof_vs_gt", targets)):
        if refs is None:
            result[name], notes[name] = None, "no ground truth for this input"
        elif refs[0].shape != outs[0].shape:
            result[name], notes[name] = None, "reference frames differ in size from the outputs"
        else:
            values = [tof(outs[i - 1], outs[i], refs[i - 1], refs[i]) for i in range(1, len(outs))]
            result[name] = float(np.mean(values))
    return result


# ---------------------------------------------------------------------------------------------
# the benchmark


def machine_info(device: torch.device) -> dict:
    """What ran the benchmark: CPU model, cores, torch, threads, GPU."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "threads": torch.get_num_threads(), "gpu": None,
    }  # fmt: skip
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _device_text(device: torch.device, machine: dict) -> str:
    if device.type == "cuda":
        return f"{device} ({machine['gpu']})"
    return f"cpu ({machine['cpu']}, {machine['cores']} cores)"


def _say(progress: bool, text: str) -> None:
    if progress:
        print(f"bench: {text}", file=sys.stderr, flush=True)


def run_bench(
    models: Any = None,
    input: str | os.PathLike = "scenes",
    *,
    methods: str | Sequence[str] = DEFAULT_METHODS,
    intervals: str | Sequence[int] = DEFAULT_INTERVALS,
    dtype: str = "fp32",
    size: tuple[int, int] | None = None,
    frames: int | None = None,
    device: str = "cpu",
    threads: int | None = None,
    e2e: bool = True,
    repeats: int = 1,
    progress: bool = False,
    fid_weights: str | os.PathLike | None = None,
    lpips_weights: str | os.PathLike | None = None,
    lpips_backbone: str | os.PathLike | None = None,
    runs: Sequence[tuple[str, int | None]] | None = None,
    kernels: str | None = None,
    backends: str | Sequence[str] = ("torch",),
) -> dict:
    """Benchmark ``methods`` of each model on the first ``frames`` frames of ``input``.

    ``models``: a path, a generator, ``(label, generator)``, or a list of those (None: the
    shipped teacher of a task input). ``input``: a video, a folder of frames, or ``scenes`` /
    ``edges`` (``scenes:N``) for a task's held-out clip, which adds ground-truth metrics.
    ``size``: model resolution (HxW; task clips are rendered at it, default 128x256).
    ``threads``: torch threads for the whole run (restored afterwards). ``repeats``: timed passes
    per method (model only and end to end); the median is reported, every pass is kept in
    ``*_runs`` so the spread is visible. ``fid_weights`` / ``lpips_weights`` (+ ``lpips_backbone``):
    local weight files for the FID and LPIPS columns (null with a reason without them).
    ``runs``: explicit ``(method, interval)`` pairs (or ``(method, interval, settings)``, e.g.
    ``{"keyframes": "peaks"}``) instead of every method at every interval (interval None: the
    model file's own setting, else the method's default). ``kernels``:
    ``torch`` or ``fast`` for the methods that have CPU fast paths (None: their default).
    ``backends``: run every method on each (``torch``, ``onnxruntime``, ``openvino``, each
    optionally ``:bf16`` etc.; :func:`parse_backends`) with the same threads; rows say their
    ``runtime``, and speed-ups and fidelity are against the torch teacher when torch is listed.
    Returns the report as a JSON-ready dict (see ``bench.json``); :func:`write_report` writes it.
    """
    from fastv2v.engine.loop import DTYPES
    from fastv2v.engine.translate import resolve_device

    if dtype not in DTYPES:
        raise UserError(f"unknown --dtype {dtype!r}; use {', '.join(DTYPES)}.")
    if runs is not None:
        runs = [(r[0], r[1], dict(r[2]) if len(r) > 2 else {}) for r in runs]
        names = parse_methods([name for name, _, _ in runs])
        runs = [("teacher", None, {})] + [r for r in runs if r[0] != "teacher"]
        steps = sorted({k for _, k, _ in runs if isinstance(k, int)})
    else:
        names, steps = parse_methods(methods), parse_intervals(intervals)
        runs = runs_for(names, steps)
    dev = resolve_device(device)
    emulated = warn_if_emulated(dtype, dev)
    if int(repeats) != repeats or repeats < 1:
        raise UserError(f"--repeats must be a whole number of at least 1, not {repeats}.")
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be at least 1, not {threads}.")
    inp = resolve_input(input, size=size, frames=frames)
    if models is None:
        models = [_shipped(inp)]
    elif isinstance(models, (str, os.PathLike, tuple)) or not isinstance(models, Sequence):
        models = [models]
    if not models:
        raise UserError("no --model given; pass at least one model file.")
    runtimes = parse_backends(backends)
    entries = [dataclasses.replace(load_model(m, dev), kernels=kernels) for m in models]
    from fastv2v.bench.perceptual import PerceptualColumns

    perceptual = PerceptualColumns(fid_weights, lpips_weights, lpips_backbone)
    for entry in entries:  # before any work: a mismatch is the user's to fix, not a run to waste
        takes_labels = entry.teacher.input_kind == "labels"
        if inp.labels is not None and inp.labels != takes_labels:
            have, want = ("label maps", "RGB frames") if inp.labels else ("RGB frames", "label maps")
            raise UserError(
                f"--input {inp.spec} gives {have}, but {entry.label} takes {want}; pass a matching model or input."
            )

    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        machine = machine_info(dev)
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        report: dict[str, Any] = {
            "fastv2v": _version(), "created": now, "device": _device_text(dev, machine),
            "threads": torch.get_num_threads(), "dtype": dtype, "batch": 1, "repeats": repeats,
            "runtimes": [runtime_label(r, dtype) for r in runtimes],
            "machine": machine, "input": inp.describe(), "methods": names, "intervals": steps, "kernels": kernels,
            "precision_warning": emulated,
            "models": [], "teacher_macs": None, "results": [], "skipped": [], "conventions": CONVENTIONS,
        }  # fmt: skip
        shared: dict = {}
        with tempfile.TemporaryDirectory(prefix="fastv2v-bench-") as tmp:
            folder = Path(tmp)
            if e2e:
                inp.write_source(folder / "source")
            for entry in entries:
                for runtime in runtimes:
                    _bench_model(dataclasses.replace(entry, runtime=runtime), inp, runs, size, dev, dtype, e2e,
                                 repeats, folder, report, progress, perceptual, shared)  # fmt: skip
        report["teacher_macs"] = report["models"][0]["teacher_macs"] if report["models"] else None
        return clean(report)
    finally:
        torch.set_num_threads(old_threads)


def _version() -> str:
    from fastv2v import __version__

    return __version__


def _shipped(inp: BenchInput):
    from fastv2v.tasks import shipped_teacher

    if inp.task is None:
        raise UserError(
            "no --model given; pass a model file (the shipped teachers are used only for --input scenes/edges)."
        )
    path = shipped_teacher(inp.task)
    if path is None:
        raise UserError(
            f"this install ships no {inp.task} teacher yet; pass --model, or train one with "
            f"`fastv2v train teacher --task {inp.task} --out DIR`."
        )
    return path


def runs_for(names: Sequence[str], steps: Sequence[int]) -> list[tuple[str, int | None]]:
    """``(method, interval)`` pairs in report order: the teacher, then each method per interval."""
    from fastv2v.pipeline import uses_interval

    runs: list[tuple[str, int | None]] = []
    for name in names:
        if uses_interval(name):
            runs += [(name, k) for k in steps]
        else:
            runs.append((name, None))
    return runs


def with_subnets(model: Any, runs: Sequence[tuple]) -> list[tuple]:
    """``runs`` with every ``spatial`` run that names no sub-network repeated once per
    sub-network of an elastic student (each its own row, widest first); other models unchanged."""
    student = getattr(model, "student", None)
    labels = list(getattr(student, "config", {}).get("elastic") or [])
    out: list[tuple] = []
    for run in runs:
        name, interval, settings = run if len(run) == 3 else (*run, {})
        if name == "spatial" and len(labels) > 1 and "subnet" not in settings and "budget" not in settings:
            out += [(name, interval, {**settings, "subnet": label}) for label in labels]
        else:
            out.append((name, interval, settings))
    return out


def _bench_model(
    entry: ModelEntry, inp: BenchInput, runs, size, dev, dtype, e2e, repeats, folder, report, progress, perceptual,
    shared: dict,
) -> None:
    """Benchmark every run of one model; rows and skips are appended to ``report``. ``shared``:
    what earlier models measured, by teacher weights: model files that carry the same teacher (a
    shortcut file and a student file distilled from it) share one teacher run, and a method that
    needs nothing but the teacher runs once per teacher."""
    from fastv2v.bundle import teacher_fingerprint
    from fastv2v.pipeline import needs_trained_part
    from fastv2v.data.resize import Resizer
    from fastv2v.engine.loop import check_labels

    g = entry.teacher
    labels = g.input_kind == "labels"
    # Task clips are rendered at the model size already; other inputs are fitted to it (padded).
    resizer = Resizer((inp.height, inp.width), size=None if inp.task else size, multiple=g.size_multiple)
    frames = inp.model_frames(labels, resizer)
    if labels:
        for i, f in enumerate(frames):
            check_labels(f, g.label_nc, inp.path, i)
    targets = inp.targets
    # Motion for the warping error: the input itself when it is a picture; for label maps the
    # ground truth, or failing that the teacher's outputs (computed after the teacher ran).
    motion = None
    if not labels:
        motion = _motion([resizer.from_model(f) for f in frames], "input")
    elif targets is not None:
        motion = _motion(targets, "ground truth")
    teacher_outs: list[np.ndarray] | None = None
    teacher_row: dict | None = None
    runtime = runtime_label(entry.runtime, dtype)
    on_graphs = entry.runtime[0] != "torch"
    loop_dtype = "fp32" if on_graphs else entry.runtime[1] or dtype  # a graph runtime's precision is compiled in
    fingerprint = (teacher_fingerprint(g), repr(resizer), runtime)
    teachers, measured = shared.setdefault("teachers", {}), shared.setdefault("runs", {})
    references = shared.setdefault("references", {})  # the torch teacher, which other runtimes are judged by
    runs = with_subnets(entry.model, runs)
    for index, run in enumerate(runs):
        name, interval, settings = run if len(run) == 3 else (*run, {})
        label = (name if interval is None else f"{name}@{interval}") + "".join(f" {k}={v}" for k, v in settings.items())
        label += f" [{runtime}]" if on_graphs or len(report["runtimes"]) > 1 else ""
        key = (fingerprint, name, interval, tuple(sorted(settings.items())))
        earlier = measured.get(key)
        if name != "teacher" and earlier is not None and not needs_trained_part(name):
            reason = f"the same run on the same teacher is reported under {earlier}"
            report["skipped"].append({"model": entry.label, "method": name, "interval": interval, "runtime": runtime,
                                      "reason": reason})  # fmt: skip
            continue
        if name == "teacher" and fingerprint in teachers:
            first, teacher_outs, motion, described = teachers[fingerprint]
            shared = f"the teacher run of {first['model']}, which carries the same teacher weights (measured once)"
            teacher_row = {**first, "model": entry.label, "shared_with": first["model"],
                           "notes": {**first["notes"], "model": shared}}  # fmt: skip
            if runtime == references[fingerprint[:2]][2]:
                report["models"].append({**described, "model": entry.label, "kind": entry.kind,
                                         "path": None if entry.path is None else str(entry.path)})  # fmt: skip
            report["results"].append(teacher_row)
            _say(progress, f"{entry.label}: teacher (shared with {first['model']})")
            continue
        try:
            counted = entry.pipeline(name, interval, settings)  # the torch pipeline: the MAC counter sees its ops
            pipeline = entry.on_runtime(counted, dtype, dev) if on_graphs else counted
        except _Skip as exc:
            report["skipped"].append({"model": entry.label, "method": name, "interval": interval, "runtime": runtime,
                                      "reason": str(exc)})  # fmt: skip
            _say(progress, f"{entry.label}: skipped {label}: {exc}")
            continue
        _say(progress, f"{entry.label}: {label} ({index + 1}/{len(runs)}) on {len(frames)} frames")
        measured[key] = entry.label
        notes = _Notes()
        method = pipeline.method
        macs, out_shape = _count_macs(counted, frames, dev, dtype)
        for _ in drive(pipeline, frames[: min(len(frames), (interval or 1) + 1)], device=dev, dtype=loop_dtype):
            pass  # warm-up
        buffer = np.empty((len(frames), *out_shape), np.uint8)
        buffer.fill(0)  # resident before the memory baseline, so the outputs kept are not counted
        passes = [_timed(pipeline, frames, dev, loop_dtype, buffer) for _ in range(repeats)]
        timer, _, collector = sorted(passes, key=lambda p: p[0].seconds)[(len(passes) - 1) // 2]  # the median pass
        seconds, times, keys = timer.seconds, timer.per_frame, collector.keys
        peaks = [p[1].peak_mb for p in passes if p[1].peak_mb is not None]
        outs = [resizer.from_model(o) for o in buffer]
        if keys != macs.keys:
            notes["keyframes"] = "the key pattern differed between the MAC pass and the timed pass"
        n = len(frames)
        row: dict[str, Any] = {
            "model": entry.label, "method": name, "interval": 1 if name == "teacher" else _interval_of(pipeline, interval),
            "settings": pipeline.settings, "runtime": runtime, "precision": entry.runtime[1] or dtype, "frames": n,
            "keyframes": int(sum(keys)),
        }  # fmt: skip
        if on_graphs:
            notes["macs_per_frame"] = f"counted on the torch pipeline; {entry.runtime[0]} runs the same graphs' ops"
        nonkey_path = None if macs.attributable else _nonkey_path_macs(counted, frames[-1])
        row.update(_cost(counted.method, macs, nonkey_path, n, notes))
        ms = 1000.0 * seconds / n
        row["ms_per_frame"] = ms
        row["ms_per_frame_runs"] = [1000.0 * p[0].seconds / n for p in passes]
        row["model_fps"] = 1000.0 / ms
        row["ms_key"], row["ms_nonkey"] = _split_times(times, keys, notes)
        e2e_seconds = None
        if not e2e:
            notes["e2e_fps"] = "end-to-end pass not run (e2e=False)"
        elif out_shape[-1] != 3:
            notes["e2e_fps"] = f"outputs have {out_shape[-1]} channels; the mp4 writer takes RGB"
        else:
            if name == "teacher":  # first e2e pass of this model: pay one-time costs (codec, file cache) untimed
                _end_to_end(pipeline, inp, size, dev, loop_dtype, folder, limit=2)
            try:
                e2e_runs = sorted(_end_to_end(pipeline, inp, size, dev, loop_dtype, folder) for _ in range(repeats))
            except UserError as exc:  # what translate refuses (e.g. a clip shorter than one key gap)
                notes["e2e_fps"] = f"fastv2v translate refuses this run: {exc}"
            else:
                e2e_seconds = e2e_runs[(len(e2e_runs) - 1) // 2]
                row["e2e_fps_runs"] = [n / t for t in e2e_runs]
        row["e2e_fps"] = n / e2e_seconds if e2e_seconds else None
        row["e2e_ms_per_frame"] = 1000.0 * e2e_seconds / n if e2e_seconds else None
        if name == "teacher":
            teacher_row, teacher_outs = row, outs
            if motion is None:
                motion = _motion(outs, "teacher output")
            if fingerprint[:2] not in references:  # the first runtime listed (torch when listed) is the reference
                references[fingerprint[:2]] = (row, outs, runtime)
            if runtime == references[fingerprint[:2]][2]:
                report["models"].append(entry.describe(resizer.model_hw, macs.total, n))
            teachers[fingerprint] = (row, outs, motion, report["models"][-1])
        reference_row, reference_outs, reference_runtime = references.get(fingerprint[:2], (teacher_row, teacher_outs,
                                                                                           runtime))  # fmt: skip
        row["speedup_vs_teacher"] = reference_row["ms_per_frame"] / ms
        t_e2e = reference_row["e2e_ms_per_frame"]
        row["e2e_speedup_vs_teacher"] = t_e2e / row["e2e_ms_per_frame"] if t_e2e and row["e2e_ms_per_frame"] else None
        row.update(_fidelity(outs, reference_outs, keys, "vs_teacher", notes, nonkey=True))
        if runtime != reference_runtime:
            notes["speedup_vs_teacher"] = f"against the teacher on {reference_runtime}"
        elif name == "teacher":
            notes["psnr_vs_teacher"] = "the teacher is the reference (its PSNR to itself is infinite)"
        row.update(_fidelity(outs, targets, keys, "vs_gt", notes, nonkey=False))
        row.update(_temporal(outs, motion, teacher_outs, targets, notes))
        values, reasons = perceptual.row(outs, teacher_outs, targets)
        row.update(values)
        notes.update(reasons)
        row["peak_mem_mb"] = max(peaks) if peaks else None
        if not peaks:
            notes["peak_mem_mb"] = passes[0][1].reason
        for field_name, reason in (method.bench_notes() if hasattr(method, "bench_notes") else {}).items():
            notes.setdefault(field_name, reason)  # the method's own caveats (e.g. work the MAC counter cannot see)
        row["notes"] = dict(notes)
        report["results"].append(row)
        del pipeline, method, buffer, outs


def _interval_of(pipeline, asked: int | None) -> int | str | None:
    """The run's key-frame interval: the one asked for, else the one the pipeline resolved (a
    model file's own); None for methods without one (their own schedule)."""
    from fastv2v.pipeline import uses_interval

    if asked is not None or not uses_interval(pipeline.name):
        return asked
    return pipeline.settings.get("interval")


def _cost(method, macs: MacCounter, nonkey_path: tuple[int, int] | None, n: int, notes: _Notes) -> dict:
    """MACs amortised over the run and per non-key frame (G), and parameters (M)."""
    exact, paper = macs.total
    row: dict[str, Any] = {
        "macs_total": {"exact": exact, "paper": paper},
        "macs_per_frame": {"exact": exact / n / 1e9, "paper": paper / n / 1e9},
        "params_m": count_parameters(method) / 1e6,
    }
    keys = np.asarray(macs.keys)
    if macs.per_frame is not None:
        costs = np.asarray(macs.per_frame, dtype=np.float64)
        if keys.all():
            row["macs_nonkey"] = dict(row["macs_per_frame"])
            notes["macs_nonkey"] = "every frame is a key frame: the per-frame cost"
        else:
            row["macs_nonkey"] = {"exact": costs[~keys, 0].mean() / 1e9, "paper": costs[~keys, 1].mean() / 1e9}
        row["macs_key"] = (
            {"exact": costs[keys, 0].mean() / 1e9, "paper": costs[keys, 1].mean() / 1e9} if keys.any() else None
        )  # fmt: skip
        return row
    row["macs_key"] = None
    notes["macs_key"] = "a buffered method: its cost is not attributable to single frames"
    if nonkey_path is None:
        row["macs_nonkey"] = None
        notes["macs_nonkey"] = "a buffered method without non_key_path(): not attributable"
    else:
        row["macs_nonkey"] = {"exact": nonkey_path[0] / 1e9, "paper": nonkey_path[1] / 1e9}
        notes["macs_nonkey"] = "profiled from the method's non_key_path(), not from the run"
    return row


def _split_times(times, keys, notes: _Notes):
    if times is None:
        notes["ms_key"] = notes["ms_nonkey"] = "a buffered method: time is not attributable to frames"
        return None, None
    t, k = np.asarray(times), np.asarray(keys)
    key = 1000.0 * float(t[k].mean()) if k.any() else None
    nonkey = 1000.0 * float(t[~k].mean()) if (~k).any() else None
    if nonkey is None:
        notes["ms_nonkey"] = "every frame is a key frame"
    return key, nonkey
