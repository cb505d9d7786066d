"""Reproduce the project's headline table: shipped teachers, held-out clips, every method.

    python benchmarks/run_benchmarks.py            # the real thing: writes results/ and RESULTS.md
    python benchmarks/run_benchmarks.py --quick    # tiny random teachers, a few frames, a temp folder

For each task (``scenes``, ``edges``) it benchmarks the shipped teacher on held-out clip 0 with
``fastv2v.bench.run_bench`` (the same code as ``fastv2v bench``), writes
``results/<task>/bench.json|bench.md|pareto.png`` and regenerates ``RESULTS.md`` with both tables,
the machine (CPU model, cores, torch, threads, dtype) and the exact command. Per task it also
draws ``results/<task>-front.png`` from both suites' rows (end-to-end speed-up against PSNR to the
teacher, the training-free Pareto front as a line) and states, per distilled row, its margin
over that front at its own speed-up. Results are only
comparable on the same machine, so run it on an otherwise idle one.

Adding a method to the headline: append it to a suite in ``SUITES`` (a method that needs its
own model file goes in the suite of that file's kind); nothing else changes.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import shlex
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TASKS = ("scenes", "edges")
#: The headline suites, each a table per task: (name, the model file it runs on, methods in row
#: order (the teacher, re-measured in the same run, is always first), key-frame intervals).
#: Both model files carry the same shipped teacher.
SUITES = (
    ("shortcut", "shortcut", ("teacher", "repeat", "reuse", "shortcut", "shortcut_auto", "sparse"), (2, 3, 4)),
    ("fastvid2vid", "student", ("teacher", "repeat", "interp", "minterpolate", "spatial", "fast"), (2, 4, 8)),
)
HEADLINE_SIZE = (128, 256)  # the shipped teachers' training size
HEADLINE_FRAMES = 60
HEADLINE_REPEATS = 3  # timed passes per method; the median is reported
QUICK_SIZE = (32, 64)
QUICK_FRAMES = 6


def headline_model(task: str, kind: str, overrides: dict[str, str]) -> Path:
    """The model file a suite runs on for ``task`` (or ``--teacher task=PATH``): the shipped
    Shortcut-V2V or student file, which carries the shipped teacher, else the shipped teacher
    alone (the suite's own methods are then skipped with a note)."""
    from fastv2v.errors import UserError
    from fastv2v.tasks import shipped_shortcut, shipped_student, shipped_teacher

    if task in overrides:
        return Path(overrides[task])
    own = {"shortcut": shipped_shortcut, "student": shipped_student}[kind](task)
    path = own or shipped_teacher(task)
    if path is None:
        raise UserError(
            f"the shipped {task} teacher is not in this install yet (src/fastv2v/weights/{task}_teacher.safetensors); "
            f"train it, pass --teacher {task}=PATH, or try --quick."
        )
    return path


def quick_model(task: str, kind: str, folder: Path) -> Path:
    """A tiny randomly initialised teacher for ``task`` (ngf 4) with an untrained Shortcut block
    or student, saved as one model file of ``kind`` (so every row runs)."""
    import torch

    from fastv2v.generators import build_generator
    from fastv2v.generators.student import student_from_teacher
    from fastv2v.methods.shortcut import ShortcutBlock
    from fastv2v.methods.shortcut.model_file import ShortcutModel, save_shortcut
    from fastv2v.methods.student_model import StudentModel, save_student
    from fastv2v.tasks import generator_config

    torch.manual_seed(0)
    path = folder / f"{task}_random_ngf4_{kind}.safetensors"
    teacher = build_generator("resnet_6blocks", **generator_config(task, ngf=4))
    if kind == "shortcut":
        save_shortcut(path, ShortcutModel(teacher, ShortcutBlock(teacher.feature_channels, 4), interval=3))
    else:
        save_student(path, StudentModel(teacher, student_from_teacher(teacher), interval=4))
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=f"tiny random teachers, {QUICK_FRAMES} frames at "
                   f"{QUICK_SIZE[0]}x{QUICK_SIZE[1]}, written to a temporary folder unless --out is given")  # fmt: skip
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated tasks (default scenes,edges)")
    p.add_argument("--teacher", action="append", default=[], metavar="TASK=PATH",
                   help="benchmark this teacher file for TASK instead of the shipped one")  # fmt: skip
    p.add_argument("--frames", type=int, default=None, help=f"frames per clip (default {HEADLINE_FRAMES})")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--repeats", type=int, default=None,
                   help=f"timed passes per method, the median is reported (default {HEADLINE_REPEATS}; --quick: 1)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--kernels", default=None, choices=["torch", "fast"],
                   help="shortcut/spatial/fast: PyTorch's modules (default) or the opt-in fast CPU kernels")  # fmt: skip
    p.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--results-md", type=Path, default=None,
                   help="the page to regenerate (default benchmarks/RESULTS.md; --quick: next to OUT)")  # fmt: skip
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from fastv2v.bench import run_bench, write_report
    from fastv2v.bench.report import speed_front
    from fastv2v.errors import UserError

    try:
        overrides = dict(item.split("=", 1) for item in args.teacher)
    except ValueError:
        print("run_benchmarks: --teacher takes TASK=PATH, e.g. --teacher scenes=teacher.safetensors", file=sys.stderr)
        return 2
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        print(f"run_benchmarks: unknown task(s) {', '.join(unknown)}; use {', '.join(TASKS)}.", file=sys.stderr)
        return 2
    temp = tempfile.TemporaryDirectory(prefix="fastv2v-quick-") if args.quick and args.out is None else None
    out = args.out or (Path(temp.name) / "results" if temp else HERE / "results")
    results_md = args.results_md or (out.parent / "RESULTS.md" if args.quick else HERE / "RESULTS.md")
    size = QUICK_SIZE if args.quick else HEADLINE_SIZE
    frames = args.frames if args.frames is not None else (QUICK_FRAMES if args.quick else HEADLINE_FRAMES)
    repeats = args.repeats or (1 if args.quick else HEADLINE_REPEATS)
    models_dir = tempfile.TemporaryDirectory(prefix="fastv2v-quick-models-") if args.quick else None
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["python benchmarks/run_benchmarks.py"] + [shlex.quote(a) for a in given])
    sections, skipped, reports = [], [], {}
    try:
        for task, (suite, kind, methods, intervals) in itertools.product(tasks, SUITES):
            name = task if suite == SUITES[0][0] else f"{task}-{suite}"
            try:
                if args.quick and task not in overrides:
                    model = quick_model(task, kind, Path(models_dir.name))
                else:
                    model = headline_model(task, kind, overrides)
                out.mkdir(parents=True, exist_ok=True)
                report = run_bench(
                    [model], f"{task}:0", methods=methods, intervals=intervals, dtype=args.dtype, size=size,
                    frames=frames, device=args.device, threads=args.threads, repeats=repeats, progress=True,
                    kernels=args.kernels,
                )  # fmt: skip
            except UserError as exc:
                skipped.append(f"{name}: {exc}")
                print(f"run_benchmarks: skipped {name}: {exc}", file=sys.stderr)
                continue
            report["command"] = command
            paths = write_report(report, out / name)
            reports[name] = (report, paths)
            print(f"{name}: wrote {', '.join(str(p) for p in paths.values())}")
        if not reports:
            print("run_benchmarks: no task could run; nothing written.", file=sys.stderr)
            return 1
        fronts = {}  # task -> the figure over both suites' rows (None when no row has the numbers)
        for task in tasks:
            rows = [r for name, (report, _) in reports.items() if task_of(name) == task for r in report["results"]]
            if not rows:
                continue
            png = out / f"{task}-front.png"
            title = f"{task}: end-to-end speed-up against PSNR to the teacher, all suites"
            if speed_front(rows, png, title):
                print(f"{task}: wrote {png}")
            else:
                png.unlink(missing_ok=True)  # never leave an earlier run's figure next to this run's tables
                png = None
            fronts[task] = png
        results_md.parent.mkdir(parents=True, exist_ok=True)
        results_md.write_text(
            results_page(reports, skipped, command, results_md.parent, quick=args.quick, fronts=fronts)
        )
        print(f"wrote {results_md}")
    finally:
        if models_dir is not None:
            models_dir.cleanup()
        if temp is not None:
            print(f"(quick run: {temp.name} is removed on exit; pass --out to keep the files)")
            temp.cleanup()
    return 0


def task_of(name: str) -> str:
    """The task of a report name: ``scenes`` for ``scenes`` and ``scenes-fastvid2vid``."""
    return name.split("-", 1)[0]


def front_section(task: str, rows: list[dict], png: Path | None, base: Path) -> list[str]:
    """The per-task comparison over all suites' rows: the speed-front figure and one line per
    distilled row against the training-free front at its own end-to-end speed-up."""
    from fastv2v.bench.report import DISTILLED, FRONT_RULE, TRAINING_FREE, front_lines

    lines = ["", f"## {task}: distilled against training-free, end to end", ""]
    if png is None:
        return lines + ["No figure: no training-free or distilled row has both an end-to-end speed-up and a PSNR to "
                        "the teacher (was the end-to-end pass skipped?)."]  # fmt: skip
    lines += [
        f"![{task}: end-to-end speed-up against PSNR to the teacher]({os.path.relpath(png, base)})",
        "",
        f"Every suite's rows of this task together; each speed-up is against the teacher run of its own suite, "
        f"in the same process on the same clip. Training-free (blues): {', '.join(TRAINING_FREE)}; distilled "
        f"(reds and oranges): {', '.join(DISTILLED)}. {FRONT_RULE}",
        "",
    ]
    return lines + front_lines(rows)


def results_page(
    reports: dict, skipped: list[str], command: str, base: Path, *, quick: bool, fronts: dict | None = None
) -> str:
    """``RESULTS.md``: the machine, the command, one section per suite and task with its table and
    plot, and per task (``fronts``: task -> its speed-front figure or None) the distilled methods
    against the training-free front over all its suites' rows."""
    from fastv2v.bench import markdown

    first = next(iter(reports.values()))[0]
    m = first["machine"]
    lines = [
        "# fastv2v benchmark results",
        "",
        "Regenerated by `benchmarks/run_benchmarks.py`; do not edit by hand.",
        "",
    ]
    if quick:
        lines += ["**Quick run: tiny RANDOM teachers and a few frames. These numbers only show that the pipeline "
                  "works; they say nothing about the methods.**", ""]  # fmt: skip
    lines += [
        f"- machine: {m['cpu']}, {m['cores']} cores" + (f", GPU {m['gpu']}" if m.get("gpu") else ""),
        f"- software: torch {m['torch']}, Python {m['python']}, {m['platform']}",
        f"- settings: device {first['device']}, {first['threads']} threads, {first['dtype']}, batch {first['batch']}, "
        f"median of {first['repeats']} timed passes per method",
        f"- date: {datetime.date.today().isoformat()}",
        f"- command: `{command}`",
    ]
    names = list(reports)
    for i, (name, (report, paths)) in enumerate(reports.items()):
        inp = report["input"]
        title = f"{name}: held-out clip {inp['clip']}, {inp['frames']} frames at {inp['height']}x{inp['width']}"
        body = markdown(report, title=title, level=2).split("\n")
        lines += [""] + [ln for ln in body if not ln.startswith(("- command:", "- device:"))]  # in the header
        if "png" in paths:
            lines += [f"![{name}: cost against PSNR to the teacher]({os.path.relpath(paths['png'], base)})", ""]
        lines.append(f"Raw numbers: [{os.path.relpath(paths['json'], base)}]({os.path.relpath(paths['json'], base)})")
        task = task_of(name)
        if fronts is not None and task in fronts and (i + 1 == len(names) or task_of(names[i + 1]) != task):
            rows = [r for n, (rep, _) in reports.items() if task_of(n) == task for r in rep["results"]]
            lines += front_section(task, rows, fronts[task], base)  # after the task's last suite
    curve = HERE / "results" / "sparse_curve.md"
    if not quick and curve.exists():  # written by benchmarks/sparse_curve.py (fixed camera, 256x512)
        lines += ["", "## Sparse incremental inference: speed-up against changed area", "",
                  f"From `python benchmarks/sparse_curve.py` (its own command and machine are in the file):", ""]
        lines += [ln for ln in curve.read_text().splitlines() if not ln.startswith("# ")]
        lines = [ln.replace("](sparse_curve", "](results/sparse_curve") for ln in lines]
    if not quick:  # benchmarks/runtimes.py and vid2vid.py (their own commands and dates inside)
        from sections import extra_sections

        lines += extra_sections()
    if skipped:
        lines += ["", "## Skipped", ""] + [f"- {s}" for s in skipped]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
