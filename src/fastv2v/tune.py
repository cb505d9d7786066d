"""``fastv2v tune``: the fastest pipeline for *your* model on *your* clips that keeps the quality
you ask for (or the most faithful one at the speed-up you ask for).

Candidates: every training-free method with its key-frame schedules on the teacher (``repeat``,
``interp`` with fixed, ``peaks`` and adaptive key frames, ``minterpolate``, ``sparse``), and every
distilled method whose model file is given (``shortcut``, ``shortcut_auto``; ``spatial``,
``fast``). Each clip is measured by one :func:`fastv2v.bench.run_bench` (end to end, in one
process, the teacher first); PSNR to the teacher is pooled over all clips' frames (mean squared
error first) and the speed-up is the teacher's total end-to-end time over the candidate's. The
choice is written as one self-describing model file (:meth:`fastv2v.pipeline.Pipeline.save`), so
``fastv2v translate --model DIR/pipeline.safetensors`` runs exactly the measured pipeline.

Where the device computes bfloat16 natively (:func:`fastv2v.precision.native`), every candidate
is measured again under bf16 autocast (``... bf16``, the teacher itself among them) in the same
bench run (``backends=torch,torch:bf16``), its speed-up and its PSNR against the fp32 teacher;
the file of a bf16 choice records it, and ``--dtype auto`` (translate's default) runs it so.

``budget_seconds`` is checked between clips and, within a clip, between groups of candidates:
after the teacher and the first candidate, each further bench call takes as many candidates as
the remaining budget is expected to hold (at least one), and the candidates not measured by then
are left out; a clip after the first that is cut short is dropped whole (every candidate is
compared on the same clips). Each group pays one more teacher pass, its speed-ups measured
against that pass.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from fastv2v.errors import UserError

#: Runs on the teacher alone: ``(method, interval[, settings])``.
TRAINING_FREE = (
    ("repeat", 2), ("repeat", 4), ("interp", 2), ("interp", 4), ("interp", 8),
    ("interp", 4, {"keyframes": "peaks"}), ("interp", 4, {"keyframes": "auto"}), ("minterpolate", 4),
    ("sparse", None),
)  # fmt: skip
#: Runs that need a distilled part, by model-file kind (each runs on the files it fits).
DISTILLED = (("shortcut", 2), ("shortcut", 3), ("shortcut", 4), ("shortcut_auto", 3), ("spatial", None),
             ("fast", 2), ("fast", 4), ("fast", 8))  # fmt: skip


@dataclass
class Target:
    """``psnr=30`` (dB to the teacher, at least) or ``speedup=4`` (end to end, at least)."""

    metric: str
    value: float

    @classmethod
    def parse(cls, text: str) -> "Target":
        name, eq, value = text.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not eq or name not in ("psnr", "speedup") or not math.isfinite(number) or number <= 0:
            raise UserError(f"--target takes psnr=DB or speedup=X (e.g. psnr=30 or speedup=4), not {text!r}.")
        return cls(name, number)

    def met(self, c: "Candidate") -> bool:
        return (c.psnr >= self.value) if self.metric == "psnr" else (c.speedup >= self.value)


@dataclass
class Candidate:
    """One pipeline measured on every clip: pooled PSNR to the teacher, end-to-end speed-up."""

    model: str
    method: str
    interval: Any
    settings: dict
    clips: int = 0
    frames: int = 0
    squared_error: float = 0.0  # sum over frames of the per-frame MSE to the teacher (0..255 scale)
    seconds: float = 0.0  # end to end, all clips
    teacher_seconds: float = 0.0
    dtype: str = "fp32"

    @property
    def label(self) -> str:
        keyframes, subnet = self.settings.get("keyframes"), self.settings.get("subnet")
        extra = f"[{subnet}]" if subnet else ""
        extra += f" keyframes={keyframes}" if keyframes else ""
        extra += f" {self.dtype}" if self.dtype != "fp32" else ""
        return self.method + (f"@{self.interval}" if self.interval not in (None, 1) else "") + extra

    @property
    def psnr(self) -> float:
        mse = self.squared_error / max(self.frames, 1)
        return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)

    @property
    def speedup(self) -> float:
        return self.teacher_seconds / self.seconds if self.seconds > 0 else 0.0


@dataclass
class TuneResult:
    target: Target
    candidates: list[Candidate]
    chosen: Candidate | None
    closest: Candidate | None
    clips: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    size: tuple[int, int] | None = None  # the model resolution measured at (None: each clip's own)
    frames: int | None = None  # frames per clip measured (None: the bench's default, 0: all)
    backend: str = "torch"  # the runtime every candidate was measured on


def _runs(kinds: set[str]) -> list[tuple]:
    return list(TRAINING_FREE) + [r for r in DISTILLED if _kind_of(r[0]) in kinds]


def _kind_of(method: str) -> str | None:
    from fastv2v.pipeline import method_class

    return getattr(method_class(method), "model_kind", None)


def tune(
    models: Sequence[str | Path], inputs: Sequence[str | Path], target: Target, *, size=None, frames: int | None = None,
    budget_seconds: float | None = None, kernels: str | None = None, progress: bool = True, device: str = "cpu",
    dtypes: Sequence[str] | None = None, backend: str = "torch",
) -> TuneResult:
    """Measure the candidates on every clip (within the budget) and choose (see the module).
    ``dtypes``: the precisions to measure (None: fp32, and bf16 where ``device`` runs it natively
    in PyTorch). ``backend``: the runtime every candidate and the teacher run on (a graph
    backend measures fp32 graphs; methods it cannot run are listed as skipped)."""
    import torch

    from fastv2v.models import model_kind
    from fastv2v.precision import native

    if not models or not inputs:
        raise UserError("give at least one --model and one --input clip.")
    if dtypes is None:
        dtypes = ("fp32", "bf16") if backend == "torch" and native("bf16", torch.device(device)) else ("fp32",)
    kinds = {model_kind(m) for m in models}
    runs = _runs(kinds)
    start, by_key, clips, skipped = time.perf_counter(), {}, [], []
    left = (lambda: math.inf) if budget_seconds is None else (lambda: budget_seconds - (time.perf_counter() - start))
    runtimes = [backend] + [f"{backend}:{d}" for d in dtypes if d != "fp32"]
    for clip in inputs:
        if clips and left() <= 0:
            skipped.append(f"{clip}: not measured, the {budget_seconds:g} s budget was spent")
            continue
        bench = dict(size=size, frames=frames, kernels=kernels, progress=progress, device=device, backends=runtimes)
        found: dict = {}
        cut = _measure_clip(list(models), clip, runs, bench, left, found, skipped)
        if cut and clips:  # a later clip cut short: dropped, so every candidate has the same clips
            skipped.append(f"{clip}: not measured to the end, the {budget_seconds:g} s budget was spent")
            continue
        if cut:
            skipped.append(f"{clip}: the {budget_seconds:g} s budget was spent after {len(found)} candidates")
        clips.append(str(clip))
        for key, (row, teacher_s) in found.items():
            c = by_key.setdefault(key, Candidate(row["model"], row["method"], row["interval"],
                                                 row.get("settings") or {}, dtype=key[3]))  # fmt: skip
            n = row["frames"]
            psnr = row.get("psnr_vs_teacher")
            c.clips += 1
            c.frames += n
            c.squared_error += 0.0 if psnr is None else n * 255.0**2 / 10 ** (psnr / 10)
            c.seconds += n * row["e2e_ms_per_frame"] / 1000
            c.teacher_seconds += n * teacher_s
    candidates = [c for c in by_key.values() if c.clips == len(clips)]  # measured on every clip
    ok = [c for c in candidates if target.met(c)]
    if target.metric == "psnr":
        chosen = max(ok, key=lambda c: c.speedup, default=None)
        closest = max(candidates, key=lambda c: c.psnr, default=None)
    else:
        chosen = max(ok, key=lambda c: c.psnr, default=None)
        closest = max(candidates, key=lambda c: c.speedup, default=None)
    return TuneResult(target, candidates, chosen, None if chosen else closest, clips, skipped, size, frames, backend)


def _measure_clip(models, clip, runs, bench: dict, left, found: dict, skipped: list) -> bool:
    """Measure ``runs`` on every runtime of ``bench`` on one clip into ``found`` (key -> (row,
    the reference teacher's end-to-end seconds per frame)), in groups that fit the budget
    ``left()``; True when the budget cut the clip short. The reference is the first runtime's
    teacher (fp32); the other runtimes' teachers are candidates too."""
    from fastv2v.bench import run_bench

    per_run = None  # wall seconds one candidate is expected to take (the first call: teacher + one)
    todo = list(runs)
    while todo:
        if found and left() <= 0:
            return True
        if not math.isfinite(left()):  # no budget: one bench call, one teacher pass per runtime
            count = len(todo)
        else:  # the teacher and one candidate first, then as many as the budget is expected to hold
            count = 1 if per_run is None else max(1, int(left() // per_run))
        group, todo = todo[:count], todo[count:]
        tick = time.perf_counter()
        report = run_bench(models, clip, runs=group, **bench)
        if per_run is None:
            per_run = (time.perf_counter() - tick) / 2
        reference = report["runtimes"][0]
        rows = report["results"]
        teachers = {r["model"]: r for r in rows if r["method"] == "teacher" and r["runtime"] == reference}
        for row in rows:
            if row["method"] == "teacher" and (row["runtime"] == reference or row.get("shared_with")):
                continue  # the reference itself, or a teacher shared by two model files (one candidate is enough)
            base = teachers.get(row["model"], {}).get("e2e_ms_per_frame")
            if row.get("e2e_ms_per_frame") is None or base is None:
                skipped.append(f"{row['model']} {row['method']}@{row['interval']} on {clip}: "
                               f"{row['notes'].get('e2e_fps', 'no end-to-end time')}")  # fmt: skip
                continue
            key = (row["model"], row["method"], json.dumps(row.get("settings") or {}, sort_keys=True), row["precision"])
            found[key] = (row, base / 1000)
        skipped += [f"{s['model']} {s['method']}: {s['reason']}" for s in report["skipped"]
                    if "reported under" not in s["reason"] and "needs a trained" not in s["reason"]]  # fmt: skip
    return False


def write_result(result: TuneResult, models: Sequence[str | Path], out: Path) -> Path | None:
    """``tune.json``, ``tune.md``, ``pareto.png`` and, when a candidate met the target,
    ``pipeline.safetensors``; returns the pipeline file or None."""
    from fastv2v.atomic import atomic_path
    from fastv2v.pipeline import Pipeline

    out.mkdir(parents=True, exist_ok=True)
    pipeline_path = None
    if result.chosen is not None:
        c = result.chosen
        source = next(Path(m) for m in models if Path(m).name == c.model)
        settings = {k: v for k, v in c.settings.items() if v is not None}
        pipeline = Pipeline.from_file(source, c.method, **settings)
        pipeline.dtype = c.dtype  # `--dtype auto` runs the file at the precision it was measured at
        pipeline_path = pipeline.save(out / "pipeline.safetensors")
    data = {
        "target": asdict(result.target), "clips": result.clips, "size": result.size, "frames": result.frames,
        "backend": result.backend,
        "skipped": result.skipped,
        "chosen": _row(result.chosen), "closest": _row(result.closest),
        "candidates": [_row(c) for c in sorted(result.candidates, key=lambda c: -c.speedup)],
    }  # fmt: skip
    with atomic_path(out / "tune.json") as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str))
    with atomic_path(out / "tune.md") as tmp:
        tmp.write_text(_markdown(result))
    _plot(result, out / "pareto.png")
    return pipeline_path


def _row(c: Candidate | None) -> dict | None:
    if c is None:
        return None
    return {"pipeline": c.label, "model": c.model, "method": c.method, "interval": c.interval, "settings": c.settings,
            "dtype": c.dtype, "psnr_vs_teacher": None if math.isinf(c.psnr) else c.psnr, "e2e_speedup": c.speedup,
            "frames": c.frames}  # fmt: skip


def front(candidates: list[Candidate]) -> list[Candidate]:
    """The candidates no other beats on both speed-up and PSNR, fastest first."""
    best, out = -math.inf, []
    for c in sorted(candidates, key=lambda c: (-c.speedup, -c.psnr)):
        if c.psnr > best:
            out.append(c)
            best = c.psnr
    return out


def _markdown(result: TuneResult) -> str:
    t = result.target
    size = f"{result.size[0]}x{result.size[1]}" if result.size else "each clip's own size"
    counted = "all frames" if result.frames == 0 else f"the first {result.frames or 60} frames"
    lines = [f"# fastv2v tune: {t.metric} >= {t.value:g}", "",
             f"Clips: {', '.join(result.clips)}; {counted} of each at {size}. A buffered method makes a clip's "
             "last frame a key frame, so on a longer video the same pipeline's PSNR over those frames can differ "
             "slightly; run it with the same `--size`.", ""]  # fmt: skip
    if result.chosen:
        c = result.chosen
        lines.append(f"**Chosen:** `{c.label}` on `{c.model}`: {c.speedup:.2f}x end to end, {c.psnr:.2f} dB to the "
                     f"teacher (`pipeline.safetensors`, measured at {c.dtype}: `--dtype auto` runs it so"
                     + (f"; run with `--backend {result.backend}`" if result.backend != "torch" else "") + ").")  # fmt: skip
    else:
        c = result.closest
        lines.append(f"**No candidate meets the target**; the closest is `{c.label}` on `{c.model}` "
                     f"({c.speedup:.2f}x, {c.psnr:.2f} dB)." if c else "**No candidate could be measured.**")  # fmt: skip
    on_front = {id(c) for c in front(result.candidates)}
    lines += ["", "| pipeline | model file | e2e speed-up | PSNR to teacher (dB) | on the front |", "|---|---|---|---|---|"]
    for c in sorted(result.candidates, key=lambda c: -c.speedup):
        mark = " **chosen**" if c is result.chosen else ""
        lines.append(f"| {c.label}{mark} | `{c.model}` | {c.speedup:.2f}x | {c.psnr:.2f} | "
                     f"{'yes' if id(c) in on_front else ''} |")  # fmt: skip
    lines += [f"\nNot measured: {s}" for s in result.skipped]
    return "\n".join(lines) + "\n"


def _plot(result: TuneResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fastv2v.atomic import atomic_path

    fig, ax = plt.subplots(figsize=(6, 4))
    finite = [c for c in result.candidates if math.isfinite(c.psnr)]
    ax.scatter([c.speedup for c in finite], [c.psnr for c in finite], color="tab:blue", label="candidates")
    edge = [c for c in front(finite)]
    ax.plot([c.speedup for c in edge], [c.psnr for c in edge], color="tab:orange", label="Pareto front")
    for c in finite:
        ax.annotate(c.label, (c.speedup, c.psnr), fontsize=6)
    if result.chosen and math.isfinite(result.chosen.psnr):
        ax.scatter([result.chosen.speedup], [result.chosen.psnr], color="tab:red", marker="*", s=120, label="chosen")
    ax.set_xlabel("end-to-end speed-up over the teacher")
    ax.set_ylabel("PSNR to the teacher (dB)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
