"""The elastic student's speed/quality curve and the temporal shift against its un-shifted twin.

    python benchmarks/elastic.py [--twin scenes=runs/twin-scenes/student.safetensors --twin edges=...]

For each task, ``fastv2v.bench.run_bench`` (the code of ``fastv2v bench``) on held-out clip 0 with
the shipped ``<task>_elastic.safetensors`` (``spatial`` once per sub-network, ``fast@4`` with the
whole student) and ``<task>_shift.safetensors`` (``spatial`` and ``fast@4``), plus the twin given
by ``--twin`` (the same student trained the same way without the shift; not shipped: its command is
in the shift card). Writes ``results/elastic.md`` (put into RESULTS.md) and
``results/elastic-<task>.png`` (end-to-end speed-up against PSNR to the teacher, one point per
sub-network). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from sections import command_line, publish

HERE = Path(__file__).resolve().parent
WEIGHTS = HERE.parent / "src" / "fastv2v" / "weights"
SECTION = "## Elastic student and temporal shift: held-out clips"
TASKS = ("scenes", "edges")


def main(argv: list[str] | None = None) -> int:
    from fastv2v.bench import run_bench
    from fastv2v.bench.report import markdown

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=60, help="frames of each held-out clip (default 60)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per method; the median is reported")
    p.add_argument("--twin", action="append", default=[], metavar="TASK=PATH", help="the un-shifted twin of a "
                   "task's shift student (repeat per task)")  # fmt: skip
    p.add_argument("--out", type=Path, default=HERE / "results" / "elastic.md")
    p.add_argument("--results-md", type=Path, default=HERE / "RESULTS.md", help="the page to put the section in")
    args = p.parse_args(argv)
    twins = dict(item.split("=", 1) for item in args.twin)
    command = command_line("elastic.py", p, args, ("frames", "repeats"))
    command += "".join(f" --twin {t}={path}" for t, path in twins.items())

    text = [SECTION, "", f"From `{command}` on {datetime.date.today()}. Model cards: "
            "`src/fastv2v/weights/<task>_elastic.md` and `<task>_shift.md` (means over every held-out clip).", ""]  # fmt: skip
    for task in TASKS:
        elastic, shift = WEIGHTS / f"{task}_elastic.safetensors", WEIGHTS / f"{task}_shift.safetensors"
        models = [str(m) for m in (elastic, shift) if m.exists()] + ([twins[task]] if task in twins else [])
        if not models:
            continue
        report = run_bench(models, task, methods="teacher,spatial,fast", intervals="4", frames=args.frames,
                           repeats=args.repeats, progress=True)  # fmt: skip
        figure = HERE / "results" / f"elastic-{task}.png"
        curve = plot_curve(report, elastic.name, figure, task)
        body = markdown(report, title=f"{task}: {', '.join(Path(m).name for m in models)}", level=3).split("\n")
        text += [f"### {task}", ""]
        if curve:
            text += [f"![{task}: elastic sub-networks]({figure.relative_to(HERE)})", "", *curve, ""]
        text += shift_summary(report, shift.name, Path(twins[task]).name if task in twins else None)
        text += [ln.replace("### ", "#### ", 1) if ln.startswith("### ") else ln for ln in body
                 if not ln.startswith("- command:")] + [""]  # fmt: skip
    publish("\n".join(text).rstrip("\n") + "\n", args.out, args.results_md)
    return 0


def _rows(report: dict, model: str, method: str) -> list[dict]:
    return [r for r in report["results"] if r["model"] == model and r["method"] == method]


def plot_curve(report: dict, model: str, path: Path, task: str) -> list[str]:
    """The sub-networks' end-to-end speed-up against PSNR to the teacher; one line per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in _rows(report, model, "spatial") if r.get("e2e_speedup_vs_teacher")]
    if not rows:
        return []
    lines = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for divisor, marker in ((1, "o"), (2, "s")):
        chosen = [r for r in rows if (r["settings"]["subnet"].partition("/")[2] or "1") == str(divisor)]
        if chosen:
            ax.plot([r["e2e_speedup_vs_teacher"] for r in chosen], [r["psnr_vs_teacher"] for r in chosen],
                    marker=marker, label="full input" if divisor == 1 else "half input")  # fmt: skip
        for r in chosen:
            ax.annotate(r["settings"]["subnet"], (r["e2e_speedup_vs_teacher"], r["psnr_vs_teacher"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=8)  # fmt: skip
    for r in rows:
        lines.append(f"- spatial[{r['settings']['subnet']}]: {r['macs_per_frame']['paper']:.3g} G paper MACs, "
                     f"e2e {r['e2e_speedup_vs_teacher']:.2f}×, model only {r['speedup_vs_teacher']:.2f}×, "
                     f"PSNR {r['psnr_vs_teacher']:.2f} dB to the teacher")  # fmt: skip
    ax.set_xlabel("end-to-end speed-up against the teacher")
    ax.set_ylabel("PSNR to the teacher (dB)")
    ax.set_title(f"{task}: one elastic student, {len(rows)} sub-networks")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return lines


def shift_summary(report: dict, shift: str, twin: str | None) -> list[str]:
    """Warping error and PSNR of the shifted student against its twin, per method."""
    if twin is None:
        return []
    lines = ["Temporal shift against its un-shifted twin (same warm start, steps and losses; warping error "
             "×10⁻³, lower is steadier):", ""]  # fmt: skip
    for method in ("spatial", "fast"):
        for a, b in zip(_rows(report, shift, method), _rows(report, twin, method)):
            at = f"@{a['interval']}" if a["interval"] not in (None, 1) else ""
            lines.append(f"- {method}{at}: warping error {a['warp_error'] * 1e3:.3f} shifted against "
                         f"{b['warp_error'] * 1e3:.3f} twin; tOF to the teacher {a['tof_vs_teacher']:.3f} against "
                         f"{b['tof_vs_teacher']:.3f}; PSNR {a['psnr_vs_teacher']:.2f} against "
                         f"{b['psnr_vs_teacher']:.2f} dB; {a['macs_per_frame']['paper']:.3g} against "
                         f"{b['macs_per_frame']['paper']:.3g} G paper MACs")  # fmt: skip
    return lines + [""]


if __name__ == "__main__":
    sys.exit(main())
