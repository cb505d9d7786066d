"""Ship the Fast-Vid2Vid student of the shipped vid2vid teacher: store the student model file in the
package, evaluate ``spatial`` and ``fast`` against that teacher on held-out clips, and write its card.

    python tools/ship_vid2vid_student.py --task scenes --run runs/v2v-student --command "fastv2v distill student ..."

The run's ``student.safetensors`` must have been distilled from the shipped vid2vid teacher
(checked by fingerprint). Every number comes from the stored file, run by the same pipelines and
loop as ``fastv2v translate``: the reference is the teacher on every frame (its official sequential
loop, ``--start zeros``), as in ``fastv2v bench``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from fastv2v.data.paired import heldout_clip
from fastv2v.engine.loop import drive
from fastv2v.generators import load_generator
from fastv2v.generators.loading import call_inputs
from fastv2v.methods.student_model import load_student
from fastv2v.metrics.profile import count_parameters, format_gmacs, profile
from fastv2v.metrics.quality import MeanMeter, psnr
from fastv2v.pipeline import Pipeline
from fastv2v.tasks import WEIGHTS_DIR, shipped_vid2vid
from ship_vid2vid import CLIPS, FRAMES, _warp_error  # tools/ is the script's folder

RUNS = [("spatial", 1), ("fast", 2), ("fast", 4), ("interp", 2), ("interp", 4), ("repeat", 4)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, choices=["scenes"])
    parser.add_argument("--run", required=True, type=Path, help="distillation run folder (fastv2v distill student --out)")
    parser.add_argument("--command", required=True, help="the exact command(s) that trained it")
    parser.add_argument("--hardware", default="2 CPU cores", help="what it trained on, for the card")
    args = parser.parse_args()
    torch.set_num_threads(1)

    teacher = load_generator(shipped_vid2vid(args.task))
    target = WEIGHTS_DIR / f"{args.task}_vid2vid_student.safetensors"
    load_student(args.run / "student.safetensors", teacher=teacher)  # refuses another teacher
    shutil.copyfile(args.run / "student.safetensors", target)
    model = load_student(target, teacher=teacher)
    config = model.info["training"]["config"]
    size = tuple(config.get("size") or (128, 256))

    meters = {run: MeanMeter() for run in [("teacher", 1), *RUNS]}
    per_clip = []
    for index in range(CLIPS):
        clip = list(heldout_clip(args.task, index, height=size[0], width=size[1], frames=FRAMES))
        labels, truth = [x for x, _ in clip], [t for _, t in clip]
        reference = [o.output for o in drive(Pipeline.from_model(model, "teacher"), labels)]
        line = {"clip": f"scene-{10000 + index}"}
        for name, interval in meters:
            settings = {"interval": interval} if name not in ("teacher", "spatial") else {}
            pipeline = Pipeline.from_model(model, name, **settings)
            outs = reference if name == "teacher" else [o.output for o in drive(pipeline, labels)]
            to_teacher = None if name == "teacher" else _psnr(outs, reference)
            meters[(name, interval)].update(psnr=to_teacher, psnr_gt=_psnr(outs, truth), warp=_warp_error(outs, truth))
            line[(name, interval)] = to_teacher
        per_clip.append(line)

    window = call_inputs(teacher, *size, "meta")  # the label window and the previous outputs, shapes only
    full, small = profile(teacher, *window), profile(model.student, *window)
    s = model.student.config
    label = {run: (run[0] if run[0] in ("teacher", "spatial") else f"{run[0]}@{run[1]}") for run in meters}
    lines = [
        f"# Model card: `{target.name}`",
        "",
        f"- **What:** Fast-Vid2Vid's student of `{args.task}_vid2vid.safetensors` (the file carries that teacher): "
        f"the teacher's own vid2vid architecture on **half-resolution input** (its first downsampling conv at stride "
        f"1, so the output stays {size[0]}x{size[1]}) at **ngf {s['ngf']}** instead of {teacher.config['ngf']}, "
        "started from the teacher's strongest channels; sequential like its teacher (it feeds back its own outputs).",
        f"- **Cost per call:** {format_gmacs(small.macs_paper)} paper / {format_gmacs(small.macs_exact)} exact MACs "
        f"against the teacher's {format_gmacs(full.macs_paper)} / {format_gmacs(full.macs_exact)} "
        f"({full.macs_paper / small.macs_paper:.2f}x fewer, paper convention); "
        f"{count_parameters(model.student) / 1e6:.3f} M parameters against {count_parameters(teacher) / 1e6:.3f} M.",
        f"- **Distillation:** part-time (Fast-Vid2Vid's temporal KD): the teacher played over {config['clips']} "
        f"training clips of {config['frames_per_clip']} frames; each sample a key gap of 1 to "
        f"{config.get('max_gap') or config['interval']} frames, the student at key frame k from the teacher's "
        "previous key outputs, then at the next key frames from its own, L1 to the full-rate teacher at each "
        f"(x{config['lambda_l1']}), {config.get('rollout', 2)} calls in a row per sample, "
        f"{config.get('starts', 0)} extra samples per clip and gap at the first frame; the last run: "
        f"{model.info['training']['step']} steps of batch {config['batch']}, lr {config['lr']} with linear decay over "
        f"the last {config['decay_steps']}{', warm-started from the run before it' if config.get('init') else ''}, "
        f"on {args.hardware} (every run in the command below).",
        f"- **Default method:** `fast` at interval {model.interval}.",
        f"- **Command:** `{args.command}`",
        "",
        f"## Held-out fidelity ({CLIPS} held-out synthetic clips, seeds 10000-{10000 + CLIPS - 1}, {FRAMES} frames each)",
        "",
        "PSNR to the teacher on every frame (its sequential loop, the reference of `fastv2v bench`) and to ground "
        "truth; warping error x10^-3 (mean absolute difference of each output from the previous one warped by the "
        "true motion; lower: less flicker). `interp`/`repeat` run the teacher itself on the key frames only.",
        "",
        "| pipeline | PSNR to teacher | PSNR to ground truth | warping error |",
        "|---|---|---|---|",
    ]
    for run, m in meters.items():
        to_teacher = "reference" if run[0] == "teacher" else f"{m.mean('psnr'):.2f} dB"
        lines.append(f"| {label[run]} | {to_teacher} | {m.mean('psnr_gt'):.2f} dB | {1000 * m.mean('warp'):.2f} |")
    lines += [
        "",
        "Per clip, PSNR to the teacher: " + "; ".join(
            f"{line['clip']} " + ", ".join(f"{label[r]} {line[r]:.2f}" for r in RUNS) for line in per_clip) + ".",
        "",
        f"Measured by `python tools/ship_vid2vid_student.py --task {args.task} ...` from the stored file. End-to-end "
        "speed: `benchmarks/RESULTS.md`, section vid2vid.",
        "",
    ]
    (WEIGHTS_DIR / f"{args.task}_vid2vid_student.md").write_text("\n".join(lines))
    print(json.dumps({label[r]: m.mean() for r, m in meters.items()}, indent=2))


def _psnr(outs: list[np.ndarray], references: list[np.ndarray]) -> float:
    """PSNR (dB) from the MSE over all frames (as ``fastv2v bench``)."""
    mse = np.mean([np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2) for a, b in zip(outs, references)])
    return float(10 * np.log10(255.0**2 / mse)) if mse > 0 else float("inf")


if __name__ == "__main__":
    main()
