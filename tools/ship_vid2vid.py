"""Ship a trained vid2vid-architecture teacher: store its weights in the package as float16,
run it sequentially on held-out clips, and write its model card with a sample image.

    python tools/ship_vid2vid.py --task scenes --run runs/vid2vid-scenes --command "fastv2v train vid2vid ..."

The card's numbers come from the stored float16 weights, run by the same pipeline and loop as
``fastv2v translate`` (its official sequential loop, ``--start zeros``), against ground truth and
against the shipped per-frame teacher of the task, which sees each frame alone.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from fastv2v.data.paired import heldout_clip
from fastv2v.demo import _visualise_input
from fastv2v.engine.loop import drive
from fastv2v.metrics.profile import count_parameters
from fastv2v.metrics.quality import MeanMeter, psnr, ssim
from fastv2v.pipeline import Pipeline
from fastv2v.tasks import WEIGHTS_DIR, shipped_teacher
from ship_teacher import store_float16  # tools/ is the script's folder

CLIPS, FRAMES, SAMPLE_AT = 4, 30, 15


def _warp_error(outs: list[np.ndarray], truth: list[np.ndarray]) -> float:
    """Mean absolute difference (0..1) between each output and the previous output warped by the
    true motion (DIS flow on the ground-truth frames): flicker the scene's motion does not explain."""
    from fastv2v.flow import estimate_flow, warp

    errors = []
    for i in range(1, len(outs)):
        flow = estimate_flow(truth[i], truth[i - 1])  # frame i's pixels in frame i - 1
        errors.append(float(np.abs(warp(outs[i - 1], flow).astype(np.float64) - outs[i]).mean() / 255.0))
    return float(np.mean(errors))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, choices=["scenes"])
    parser.add_argument("--run", required=True, type=Path, help="training run folder (fastv2v train vid2vid --out)")
    parser.add_argument("--command", required=True, help="the exact command(s) that trained it")
    args = parser.parse_args()

    target = WEIGHTS_DIR / f"{args.task}_vid2vid.safetensors"
    meta = store_float16(args.run / "vid2vid.safetensors", target, args.task)
    training = meta.get("training", {})

    config = training.get("config", {})
    size = tuple(config.get("size") or (128, 256))
    single = shipped_teacher(args.task)
    sequential = Pipeline.from_file(target, "teacher")
    pipelines = {"vid2vid": sequential,  # --start zeros: the first frame is the raw hallucination
                 "vid2vid, single-G start": Pipeline.from_file(target, "teacher", start=f"model:{single}"),
                 "per-frame": Pipeline.from_file(single, "teacher")}  # fmt: skip
    meters = {name: MeanMeter() for name in pipelines}
    rows, per_clip = [], []
    for index in range(CLIPS):
        clip = list(heldout_clip(args.task, index, height=size[0], width=size[1], frames=FRAMES))
        labels, truth = [x for x, _ in clip], [t for _, t in clip]
        line = {"clip": f"scene-{10000 + index}"}
        for name, pipeline in pipelines.items():
            outs = [o.output for o in drive(pipeline, labels)]
            scores = [(psnr(y, t), ssim(y, t)) for y, t in zip(outs, truth)]
            meters[name].update(psnr=float(np.mean([p for p, _ in scores])), ssim=float(np.mean([s for _, s in scores])),
                                warp=_warp_error(outs, truth))  # fmt: skip
            line[name] = (np.mean([p for p, _ in scores]), np.mean([s for _, s in scores]))
            if name == "vid2vid":
                rows.append(np.concatenate([_visualise_input(args.task, labels[SAMPLE_AT]), outs[SAMPLE_AT],
                                            truth[SAMPLE_AT]], axis=1))  # fmt: skip
        per_clip.append(line)
    sample = WEIGHTS_DIR / f"{args.task}_vid2vid_sample.jpg"
    cv2.imwrite(str(sample), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])

    gen = meta["generator"]
    params = count_parameters(sequential.teacher) / 1e6
    v, g, f = meters["vid2vid"], meters["vid2vid, single-G start"], meters["per-frame"]
    lines = [
        f"# Model card: `{target.name}`",
        "",
        "- **Task:** synthetic street-scene label maps (9 classes, `fastv2v.data.scenes`) -> RGB street scenes, "
        "generated sequentially: each frame from the last "
        f"{gen['n_frames_G']} label maps and the {gen['n_frames_G'] - 1} previous outputs.",
        f"- **Architecture:** NVIDIA vid2vid's single-scale `CompositeGenerator` (`fastv2v.generators.vid2vid`): ngf "
        f"{gen['ngf']}, {gen['n_downsample_G']} down-samplings, {gen['n_blocks']} residual blocks, {gen['norm']} norm, "
        f"flow {'off' if gen.get('no_flow') else 'on'}; {params:.2f} M parameters, stored as float16. It loads like an "
        "official `latest_net_G0.pth` (same key layout).",
        "- **Training data:** 64 synthetic clips (seeds 0-63), teacher-forced windows; flow supervised by DIS optical "
        "flow of the real frames instead of FlowNet2.",
        f"- **Resolution:** {size[0]}x{size[1]}.",
        f"- **Steps:** {training.get('step')} of batch {config.get('batch')} (L1 x{config.get('lambda_l1')}, LSGAN "
        f"x{config.get('lambda_gan')}, flow x{config.get('lambda_flow')}, warp x{config.get('lambda_warp')}, weight "
        f"x{config.get('lambda_weight')}; lr {config.get('lr')} with linear decay over the last "
        f"{config.get('decay_steps')} steps), on 2 CPU cores.",
        f"- **Command:** `{args.command}`",
        "",
        f"## Held-out quality ({CLIPS} held-out synthetic clips, seeds 10000-{10000 + CLIPS - 1}, {FRAMES} frames each)",
        "",
        "Run as `fastv2v translate` runs it: with `--start zeros` (the default: the first frame is the raw "
        f"hallucination) and with `--start model:{args.task}_teacher.safetensors` (vid2vid's `--use_single_G`: the "
        f"shipped per-frame teacher makes the first {gen['n_frames_G'] - 1} outputs), next to that per-frame teacher on "
        "the same frames. PSNR / SSIM to ground truth. Warping error: mean absolute difference of each output from "
        "the previous one warped by the true motion (lower: less flicker).",
        "",
        "| clip | vid2vid, zeros start | vid2vid, single-G start | per-frame teacher |",
        "|---|---|---|---|",
    ]
    for line in per_clip:
        lines.append(f"| {line['clip']} | " + " | ".join(f"{line[n][0]:.2f} dB / {line[n][1]:.3f}" for n in pipelines)
                     + " |")  # fmt: skip
    lines += [
        "| **all** | " + " | ".join(f"**{m.mean('psnr'):.2f} dB / {m.mean('ssim'):.3f}**" for m in (v, g, f)) + " |",
        "",
        "Warping error x10^-3: " + ", ".join(f"{n} {1000 * m.mean('warp'):.2f}" for n, m in meters.items()) + ".",
        "",
        f"Measured by `python tools/ship_vid2vid.py --task {args.task} ...` from the stored float16 weights.",
        "",
        f"Sample (frame {SAMPLE_AT} of each held-out clip; input | vid2vid output | ground truth):",
        "",
        f"![sample]({sample.name})",
        "",
    ]
    (WEIGHTS_DIR / f"{args.task}_vid2vid.md").write_text("\n".join(lines))
    print(json.dumps({"weights": str(target), **{n: {"psnr": m.mean("psnr"), "ssim": m.mean("ssim"),
                                                      "warp": m.mean("warp")} for n, m in meters.items()}}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
