"""Ship an elastic student (``--kind elastic``) or a temporally shifted one (``--kind shift``):
store it in the package, measure it on the held-out clips and write its model card.

    python tools/ship_elastic.py --kind elastic --task scenes --run runs/elastic-scenes --command "fastv2v ..." \\
        [--alone w8=runs/alone-w8/student.safetensors ...]
    python tools/ship_elastic.py --kind shift --task scenes --run runs/shift-scenes --command "fastv2v ..." \\
        --twin runs/twin-scenes/student.safetensors

Every number comes from ``fastv2v.bench.run_bench`` (the same code as ``fastv2v bench``, so the
same PSNR, warping error and tOF definitions) on each held-out clip, model only (no timing: the
benchmark section in RESULTS.md times them). ``--alone``: students of one sub-network's size
trained alone, for the elastic card's comparison; ``--twin``: the same student trained the same
way without the shift, for the shift card's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from fastv2v.bench import run_bench
from fastv2v.methods.student_model import load_student
from fastv2v.metrics.profile import count_parameters
from fastv2v.tasks import WEIGHTS_DIR

sys.path.insert(0, str(Path(__file__).parent))
from ship_shortcut import CLIPS, ship  # noqa: E402


def bench_rows(models: list, task: str, index: int, methods: str, frames: int) -> list[dict]:
    """Every row (the teacher's first) of the benchmark of ``models`` on held-out clip ``index``."""
    report = run_bench(models, f"{task}:{index}", methods=methods, intervals=[4], frames=frames, e2e=False,
                       threads=1)  # fmt: skip
    return report["results"]


def psnr_mean(values: list[float]) -> float:
    """PSNR over clips from the mean MSE (as the benchmark averages frames)."""
    return float(10 * np.log10(1 / np.mean([10 ** (-v / 10) for v in values])))


def main() -> None:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--kind", choices=["elastic", "shift"], default="elastic", help="which student (default elastic)")
    options.add_argument("--alone", action="append", default=[], metavar="wN=PATH", help="elastic: a student of one "
                         "sub-network's size trained alone, for comparison (repeat)")  # fmt: skip
    options.add_argument("--twin", default=None, metavar="PATH", help="shift: the same student trained the same way "
                         "without the shift")  # fmt: skip
    kind = options.parse_known_args()[0].kind
    args, teacher, target, model, size = ship(__doc__, kind, load_student, run_file="student.safetensors",
                                              parents=(options,))  # fmt: skip
    card = elastic_card if kind == "elastic" else shift_card
    lines = card(args, model, target, size)
    (WEIGHTS_DIR / f"{args.task}_{kind}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB)")


def _header(args, model, target, size, what: str) -> list[str]:
    config = model.info["training"]["config"]
    return [
        f"# Model card: `{target.name}`",
        "",
        f"- **What:** {what} It was distilled from the shipped `{args.task}_teacher.safetensors`, which the file "
        "carries too.",
        f"- **Student:** {model.student.config}, {count_parameters(model.student) / 1e6:.3f} M parameters.",
        f"- **Training:** {model.info['training']['step']} steps of batch {config['batch']} at {size[0]}x{size[1]}, "
        f"lr {config['lr']} (linear decay over the last {config['decay_steps']}), motion-weighted output L1"
        + (", on frame pairs with the temporal term" if config.get("temporal") or config.get("temporal_shift") else "")
        + (f", warm-started from `{Path(config['init']).name}`" if config.get("init") else "")
        + f", on {args.hardware}.",
        f"- **Command:** `{args.command}`",
        "",
    ]


def elastic_card(args, model, target, size) -> list[str]:
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp())
    alone = {}  # each trained-alone file under a name of its own (the benchmark labels rows by file name)
    for item in args.alone:
        label, path = item.split("=", 1)
        alone[label] = folder / f"alone-{label.replace('/', '_')}.safetensors"
        shutil.copyfile(path, alone[label])
    by_name = {p.name: label for label, p in alone.items()}
    per_clip: dict[str, dict[int, float]] = {}
    costs: dict[str, dict] = {}
    for index in CLIPS[args.task]:
        for r in bench_rows([str(target)] + [str(p) for p in alone.values()], args.task, index, "spatial", args.frames):
            if r["method"] == "teacher":
                teacher_macs = r["macs_per_frame"]
                continue
            key = f"alone {by_name[r['model']]}" if r["model"] in by_name else r["settings"]["subnet"]
            per_clip.setdefault(key, {})[index] = r["psnr_vs_teacher"]
            costs.setdefault(key, r["macs_per_frame"])
    labels = model.student.config["elastic"]
    lines = _header(args, model, target, size, "one channel-pruned student whose narrower and lower-resolution "
                    "sub-networks run too (Anycost GAN's elastic channels and resolutions; sandwich rule).")  # fmt: skip
    lines += [
        "## Sub-networks: cost and held-out fidelity (`spatial`, PSNR in dB to the teacher)",
        "",
        "| sub-network | GMACs (paper / exact) | teacher / sub-network (paper) | "
        + " | ".join(f"clip {i}" for i in CLIPS[args.task]) + " | mean |",
        "|---|---|---|" + "---|" * (len(CLIPS[args.task]) + 1),
    ]
    for label in labels:
        c = costs[label]
        values = [per_clip[label][i] for i in CLIPS[args.task]]
        lines.append(f"| {label} | {c['paper']:.3g} / {c['exact']:.3g} | {teacher_macs['paper'] / c['paper']:.1f}x | "
                     + " | ".join(f"{v:.2f}" for v in values) + f" | {psnr_mean(values):.2f} |")  # fmt: skip
    for key, values_by_clip in per_clip.items():
        if key.startswith("alone "):
            values = [values_by_clip[i] for i in CLIPS[args.task]]
            lines.append(f"| {key} (trained alone) | | | " + " | ".join(f"{v:.2f}" for v in values)
                         + f" | {psnr_mean(values):.2f} |")  # fmt: skip
    lines += ["", f"Teacher: {teacher_macs['paper']:.3g} G paper / {teacher_macs['exact']:.3g} G exact MACs per "
              f"frame at {size[0]}x{size[1]}. Pick a sub-network with `fastv2v translate --model {target.name} "
              "--method spatial --subnet w8` or `--budget 0.1` (a fraction of the teacher's MACs).",
              "", f"Measured by `python tools/ship_elastic.py --kind elastic --task {args.task} ...` from the stored "
              f"file ({args.frames} frames per clip)."]  # fmt: skip
    return lines


def shift_card(args, model, target, size) -> list[str]:
    twin = args.twin
    if twin is None:
        raise SystemExit("--kind shift needs --twin: the same student trained the same way without the shift.")
    rows_by = {}
    for index in CLIPS[args.task]:
        for r in bench_rows([str(target), twin], args.task, index, "spatial,fast", args.frames):
            if r["method"] == "teacher":
                continue
            who = "shift" if r["model"] == target.name else "twin"
            rows_by.setdefault((who, f"{r['method']}@{r['interval']}" if r["interval"] else r["method"]), []).append(r)
    shift = model.student.config["temporal_shift"]
    lines = _header(args, model, target, size, f"a channel-pruned student with TSM's online temporal shift: in every "
                    f"residual block {shift:g} of the stream's channels entering the residual branch come from the "
                    "previous frame (no extra MACs; the previous frame's channels are per-video state).")  # fmt: skip
    lines += [
        "## Against its un-shifted twin (held-out clips, means over clips)",
        "",
        f"The twin: `{Path(twin).name}` (not shipped), the same student, warm start, steps and losses without the "
        "shift (its command: this card's with `--temporal` in place of `--temporal-shift`).",
        "",
        "| run | student | PSNR to teacher dB | warping error x10^-3 | tOF to teacher |",
        "|---|---|---|---|---|",
    ]
    for (who, run), rows in sorted(rows_by.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        psnr = psnr_mean([r["psnr_vs_teacher"] for r in rows])
        warp = np.mean([r["warp_error"] for r in rows]) * 1e3
        tof = np.mean([r["tof_vs_teacher"] for r in rows if r.get("tof_vs_teacher") is not None] or [np.nan])
        lines.append(f"| {run} | {who} | {psnr:.2f} | {warp:.3f} | {tof:.3f} |")
    lines += ["", f"Measured by `python tools/ship_elastic.py --kind shift --task {args.task} ...` from the stored "
              f"file ({args.frames} frames per clip; warping error against the motion of the ground truth for "
              "label inputs, of the input for pictures)."]  # fmt: skip
    return lines


if __name__ == "__main__":
    main()
