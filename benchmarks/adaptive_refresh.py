"""Adaptive reference refresh against the fixed interval, at equal key-frame budgets.

    python benchmarks/adaptive_refresh.py            # shipped Shortcut-V2V models; writes results/adaptive_refresh.*
    python benchmarks/adaptive_refresh.py --quick    # tiny random model, a few frames, a temp folder

Two clips where a fixed interval is at its worst: a synthetic street clip with two scene cuts
(``scenes``, held-out seed, cuts at frames 17 and 38) and the held-out part of the real ``bikes``
clip (fast camera motion, ``edges``). For each target interval N, ``shortcut`` refreshes every N
frames and ``shortcut_auto`` refreshes when its drift signal says so, within a budget of one key
frame per N frames on average; both run in the same process through ``fastv2v.bench.run_bench``,
so MACs (counted op by op, key frames and the drift signal included) and PSNR/SSIM to the
teacher are measured the same way. The table pairs each N's two runs: the adaptive one should
spend at most the fixed one's MACs and reach a higher PSNR.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = (2, 3, 4, 5, 6, 8)
SIZE = (128, 256)
CUTS = (17, 38)


def scene_cut_clip(folder: Path, frames: int, size) -> Path:
    """Label maps of held-out scene seed 10003 with scene cuts, as a PNG folder."""
    from fastv2v.data.paired import HELDOUT_SEED_BASE
    from fastv2v.data.scenes import SceneConfig, write_clip

    out = folder / "scene_cuts"
    cuts = tuple(c for c in CUTS if c < frames) or (frames // 2,)
    write_clip(SceneConfig(seed=HELDOUT_SEED_BASE + 3, frames=frames, height=size[0], width=size[1], cut_at=cuts), out)
    return out


def quick_model(task: str, folder: Path) -> Path:
    sys.path.insert(0, str(HERE))
    from run_benchmarks import quick_model as make_quick

    return make_quick(task, "shortcut", folder)


def table(report: dict) -> list[str]:
    runs = {(r["method"], r.get("interval")): r for r in report["results"]}
    teacher = runs[("teacher", None)] if ("teacher", None) in runs else next(r for r in report["results"] if r["method"] == "teacher")
    rows = [
        "| target interval | method | key frames | MACs/frame exact (G) | paper (G) | PSNR to teacher (dB) | SSIM | ms/frame |",
        "|---|---|---|---|---|---|---|---|",
        f"| - | teacher | {teacher['keyframes']} | {teacher['macs_per_frame']['exact']:.3f} | "
        f"{teacher['macs_per_frame']['paper']:.3f} | inf | 1.000 | {teacher['ms_per_frame']:.1f} |",
    ]
    for n in report["intervals"]:
        for method in ("shortcut", "shortcut_auto"):
            r = runs.get((method, n))
            if r is None:
                continue
            rows.append(
                f"| {n} | {method} | {r['keyframes']} | {r['macs_per_frame']['exact']:.3f} | "
                f"{r['macs_per_frame']['paper']:.3f} | {r['psnr_vs_teacher']:.2f} | {r['ssim_vs_teacher']:.3f} | "
                f"{r['ms_per_frame']:.1f} |"
            )
    return rows


def fixed_curve_at(fixed: list[dict], macs: float) -> float | None:
    """PSNR of the fixed-interval runs, linearly interpolated at ``macs`` (None outside them)."""
    points = sorted((r["macs_total"]["exact"], r["psnr_vs_teacher"]) for r in fixed)
    for (m0, p0), (m1, p1) in zip(points, points[1:]):
        if m0 <= macs <= m1:
            return p0 if m1 == m0 else p0 + (p1 - p0) * (macs - m0) / (m1 - m0)
    return None


def verdicts(report: dict) -> list[str]:
    """Each adaptive run against the fixed-interval curve at the same MACs (op-level counts,
    key frames and the drift signal included)."""
    fixed = [r for r in report["results"] if r["method"] == "shortcut"]
    out = []
    for auto in (r for r in report["results"] if r["method"] == "shortcut_auto"):
        same_cost = fixed_curve_at(fixed, auto["macs_total"]["exact"])
        if same_cost is None:
            out.append(f"- auto@{auto['interval']}: {auto['keyframes']} key frames, outside the fixed runs' cost range")
            continue
        gain = auto["psnr_vs_teacher"] - same_cost
        out.append(
            f"- auto@{auto['interval']}: {auto['keyframes']} key frames, {auto['psnr_vs_teacher']:.2f} dB; the fixed "
            f"interval at the same MACs: {same_cost:.2f} dB ({gain:+.2f} dB)"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny random model, 12 frames, temporary output")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="folder for adaptive_refresh.md/.json (default benchmarks/results)")
    args = p.parse_args(argv)
    from fastv2v.bench import run_bench
    from fastv2v.tasks import shipped_shortcut

    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["python benchmarks/adaptive_refresh.py"] + [shlex.quote(a) for a in given])
    size = (32, 64) if args.quick else SIZE
    frames = 12 if args.quick else 60
    work = tempfile.TemporaryDirectory(prefix="fastv2v-adaptive-")
    out = args.out or (Path(work.name) / "results" if args.quick else HERE / "results")
    lines = ["# Adaptive reference refresh vs fixed interval (Shortcut-V2V)", "", f"Command: `{command}`", ""]
    everything = {}
    try:
        for task, spec, title in (
            ("scenes", None, f"synthetic street clip with scene cuts at {', '.join(map(str, CUTS))}"),
            ("edges", "edges:0", "real clip `bikes`, held-out part (fast camera motion)"),
        ):
            model = quick_model(task, Path(work.name)) if args.quick else shipped_shortcut(task)
            if model is None:
                lines += [f"## {task}", "", f"skipped: no shipped {task} Shortcut-V2V model in this install", ""]
                continue
            source = str(scene_cut_clip(Path(work.name), frames, size)) if spec is None else spec
            report = run_bench(
                [model], source, methods=("teacher", "shortcut", "shortcut_auto"), intervals=TARGETS, size=size,
                frames=frames, threads=args.threads, e2e=False, repeats=1, progress=True,
            )  # fmt: skip
            everything[task] = report
            inp = report["input"]
            lines += [f"## {task}: {title}", "", f"{inp['frames']} frames at {inp['height']}x{inp['width']}, "
                      f"model `{Path(str(model)).name}`, {report['threads']} threads, {report['dtype']}.", ""]  # fmt: skip
            lines += table(report) + [""] + verdicts(report) + [""]
        out.mkdir(parents=True, exist_ok=True)
        (out / "adaptive_refresh.md").write_text("\n".join(lines) + "\n")
        (out / "adaptive_refresh.json").write_text(json.dumps(everything, indent=1, default=str))
        print("\n".join(lines))
        print(f"wrote {out / 'adaptive_refresh.md'}")
    finally:
        work.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
