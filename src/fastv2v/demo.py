"""``fastv2v demo``: what fastv2v does, shown on the project's own held-out clips in minutes.

Per task (synthetic label maps -> street scenes; edge maps of a real clip -> its frames) it
benchmarks a few headline pipelines against the shipped teacher on a held-out clip (one
:func:`fastv2v.bench.run_bench` over the shipped model files, which carry the same teacher, so
it runs once: end-to-end and model-only speed, MACs, fidelity and flicker), picks the *recommended* one (the fastest end to end among those within
1 dB of the best fidelity to the teacher), writes ``<task>/side_by_side.mp4`` (input | teacher |
recommended), ``<task>/bench.md`` and a short ``report.md``. ``full=True`` benchmarks every
registered method at intervals 2, 3 and 4 instead (many minutes). Where a task ships a vid2vid
(sequential) teacher, it gets its own row: the part-time teacher (``interp``, ``minterpolate``,
``repeat``) and, with its shipped sequential student, ``fast``, against that teacher on every frame.

Without shipped weights (a bare checkout before training) it uses a randomly initialised teacher
and the training-free methods, and says so, so the pipeline itself can still be seen working.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from fastv2v.errors import UserError

DEMO_FRAMES = 40
DEMO_SIZE = (128, 256)
#: Within this many dB of the best fidelity, the fastest pipeline is recommended.
QUALITY_MARGIN_DB = 1.0
#: The headline runs: ``(method, interval)``, None: the model file's own setting. Each runs on
#: the model files it fits; the training-free ones once per teacher.
HEADLINE = [("shortcut", None), ("fast", None), ("interp", 2), ("interp", 4), ("repeat", 4)]
#: The headline runs on a shipped vid2vid (sequential) teacher: Fast-Vid2Vid's part-time teacher,
#: and ``fast`` with the teacher's sequential student where one is shipped.
VID2VID_HEADLINE = [("fast", None), ("interp", 2), ("interp", 4), ("minterpolate", 4), ("repeat", 4)]


def _models(task: str) -> tuple[list, str, bool]:
    """The model files to benchmark (or an in-memory random teacher), how they are described,
    and whether they are trained."""
    from fastv2v.generators import build_generator
    from fastv2v.tasks import generator_config, shipped_shortcut, shipped_student, shipped_teacher

    teacher = shipped_teacher(task)
    if teacher is not None:
        bundles = [p for p in (shipped_shortcut(task), shipped_student(task)) if p is not None]
        return bundles or [teacher], f"shipped teacher `{teacher.name}`", True
    torch.manual_seed(0)
    g = build_generator("resnet_6blocks", **generator_config(task)).eval()
    text = "a RANDOMLY INITIALISED teacher (no trained weights in this install), so the output is noise"
    return [(f"{task} teacher", g)], text, False


def _visualise_input(task: str, frame: np.ndarray) -> np.ndarray:
    if task == "scenes":
        from fastv2v.data.scenes import colorize_labels

        return colorize_labels(frame)
    return frame


def recommend(rows: list[dict], margin: float = QUALITY_MARGIN_DB) -> dict | None:
    """The fastest row end to end (model only when there is no end-to-end figure) among the
    non-teacher rows within ``margin`` dB of the best PSNR to the teacher."""
    rows = [r for r in rows if r["method"] != "teacher" and r.get("psnr_vs_teacher") is not None]
    if not rows:
        return None
    best = max(r["psnr_vs_teacher"] for r in rows)
    close = [r for r in rows if r["psnr_vs_teacher"] >= best - margin]
    return max(close, key=lambda r: r.get("e2e_speedup_vs_teacher") or r["speedup_vs_teacher"])


def run_task(task: str, out: Path, *, frames: int = DEMO_FRAMES, size=DEMO_SIZE, progress: bool = True,
             full: bool = False, vid2vid: bool = False) -> dict:  # fmt: skip
    """Benchmark the task's headline pipelines; write the side-by-side video and the reports.
    ``vid2vid``: on the task's shipped vid2vid teacher instead (its folder ``<task>-vid2vid``)."""
    from fastv2v.bench import run_bench, write_report
    from fastv2v.tasks import shipped_vid2vid, shipped_vid2vid_student

    if vid2vid:
        model, student = shipped_vid2vid(task), shipped_vid2vid_student(task)
        models, described, trained = [student or model], f"shipped vid2vid teacher `{model.name}` (sequential)", True
        headline = [run for run in VID2VID_HEADLINE if student is not None or run[0] != "fast"]
        methods = ("teacher", "repeat", "interp", "minterpolate") + (("spatial", "fast") if student else ())
    else:
        models, described, trained = _models(task)
        headline, methods = HEADLINE, _all_methods()
    name = f"{task}-vid2vid" if vid2vid else task
    folder = out / name
    folder.mkdir(exist_ok=True)
    if full:
        report = run_bench(models, f"{task}:0", methods=methods, intervals=(2, 3, 4), frames=frames,
                           size=size, progress=progress)  # fmt: skip
    else:
        report = run_bench(models, f"{task}:0", runs=headline, frames=frames, size=size, progress=progress)
    report["command"] = f"fastv2v demo{' --full' if full else ''} ({described})"
    write_report(report, folder)
    rows = report["results"]
    teacher_row = next(r for r in rows if r["method"] == "teacher")
    chosen = recommend(rows)
    video = folder / "side_by_side.mp4"
    _side_by_side(task, models, chosen, video, frames=frames, size=size)
    return {
        "task": name, "teacher": described, "trained": trained, "video": f"{name}/{video.name}",
        "bench": f"{name}/bench.md", "clip": report["input"].get("clip"), "frames": report["input"]["frames"],
        "teacher_e2e_fps": teacher_row["e2e_fps"], "rows": [_summary(r) for r in rows if r["method"] != "teacher"],
        "recommended": _summary(chosen) if chosen else None,
    }  # fmt: skip


def _all_methods() -> tuple[str, ...]:
    from fastv2v.pipeline import method_names

    return tuple(method_names())


def _summary(row: dict) -> dict:
    label = row["method"] + (f"@{row['interval']}" if row.get("interval") not in (None, 1) else "")
    return {
        "pipeline": label, "model": row["model"], "settings": row.get("settings"),
        "e2e_speedup": row.get("e2e_speedup_vs_teacher"), "model_speedup": row["speedup_vs_teacher"],
        "psnr_vs_teacher": row.get("psnr_vs_teacher"), "psnr_vs_gt": row.get("psnr_vs_gt"),
        "macs_paper": row["macs_per_frame"]["paper"], "warp_error": row.get("warp_error"),
    }  # fmt: skip


def _side_by_side(task: str, models: list, chosen: dict | None, video: Path, *, frames: int, size) -> None:
    """input | teacher | recommended pipeline, through the same loop the benchmark used."""
    from fastv2v.data.paired import heldout_clip
    from fastv2v.data.video import open_writer
    from fastv2v.engine.loop import drive
    from fastv2v.pipeline import Pipeline, uses_interval

    def assemble(model, name=None, interval=None):
        if isinstance(model, tuple):
            return Pipeline.from_model(model[1], name, interval=interval)
        return Pipeline.from_file(model, name, interval=interval)

    clip = heldout_clip(task, 0, height=size[0], width=size[1], frames=frames)
    inputs = [x for x, _ in clip][:frames]
    teacher = assemble(models[0], "teacher")
    if chosen is None:
        method = teacher
    else:
        source = next(m for m in models if (m[0] if isinstance(m, tuple) else Path(m).name) == chosen["model"])
        name = chosen["method"]
        method = assemble(source, name, chosen["interval"] if uses_interval(name) else None)
    with open_writer(video, fps=clip.fps) as writer:
        for a, b in zip(drive(teacher, inputs), drive(method, inputs)):
            writer.write(np.concatenate([_visualise_input(task, a.frame), a.output, b.output], axis=1))


def run_demo(out: Path, *, frames: int = DEMO_FRAMES, size=DEMO_SIZE, progress: bool = True,
             full: bool = False) -> Path:  # fmt: skip
    """Run every task that can run here and write ``report.md``; returns the report's path."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the demo folder {out} ({exc.strerror}); pass a writable --out.") from None
    from fastv2v.tasks import shipped_vid2vid

    results, skipped = [], []
    for task in ("scenes", "edges"):
        try:
            results.append(run_task(task, out, frames=frames, size=size, progress=progress, full=full))
        except UserError as exc:
            if task == "edges" and "scikit-video" in str(exc):
                skipped.append(f"edges: {exc}")
                continue
            raise
        if shipped_vid2vid(task) is not None:
            results.append(run_task(task, out, frames=frames, size=size, progress=progress, full=full, vid2vid=True))
    report = out / "report.md"
    text = _report_markdown(results, skipped, size, frames)
    report.write_text(text)
    (out / "demo.json").write_text(json.dumps({"results": results, "skipped": skipped}, indent=2))
    print(text)
    print(f"report: {report}")
    return report


def _report_markdown(results: list[dict], skipped: list[str], size, frames: int) -> str:
    lines = [
        "# fastv2v demo",
        "",
        f"Held-out clips, {frames} frames at {size[0]}x{size[1]}, {torch.get_num_threads()} threads, fp32, CPU; "
        f"torch {torch.__version__}. Speed-ups against the teacher in the same run (end to end: decode + model + "
        "H.264 encode); PSNR of each pipeline's frames to the teacher's. **recommended**: the fastest end to end "
        f"within {QUALITY_MARGIN_DB:g} dB of the best PSNR. Full tables: `<task>/bench.md`.",
    ]
    for r in results:
        note = "" if r["trained"] else " (random teacher: the outputs are noise)"
        lines += ["", f"## {r['task']}: {r['teacher']}{note}", "",
                  f"Video (input | teacher | recommended): `{r['video']}`; teacher end to end: "
                  f"{_num(r['teacher_e2e_fps'], 1)} frames/s.", "",
                  "| pipeline | model file | e2e speed-up | model-only speed-up | G paper MACs/frame | "
                  "PSNR to teacher (dB) | warping error |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for row in r["rows"]:
            name = row["pipeline"] + (" **recommended**" if row == r["recommended"] else "")
            lines.append(f"| {name} | `{row['model']}` | {_times(row['e2e_speedup'])} | {_times(row['model_speedup'])} | "
                         f"{_num(row['macs_paper'])} | {_num(row['psnr_vs_teacher'])} | "
                         f"{_num(row['warp_error'], 4)} |")  # fmt: skip
    lines += [f"\nSkipped {s}" for s in skipped]
    return "\n".join(lines) + "\n"


def _num(value, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _times(value) -> str:
    return "n/a" if value is None else f"{value:.2f}x"
