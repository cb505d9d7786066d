"""Ship a distilled Shortcut-V2V model: store it in the package, evaluate it on held-out clips
against the teacher and the naive baselines, and write its model card.

    python tools/ship_shortcut.py --task scenes --run runs/shortcut-scenes --command "fastv2v distill shortcut ..."

The run's ``shortcut.safetensors`` must have been distilled from the shipped teacher (checked by
fingerprint); the card's numbers are computed from the stored file.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import torch

from fastv2v.data.paired import heldout_clip
from fastv2v.engine.loop import drive
from fastv2v.generators import load_generator
from fastv2v.methods.shortcut.model_file import load_shortcut
from fastv2v.metrics.profile import count_parameters, format_gmacs, profile
from fastv2v.pipeline import Pipeline
from fastv2v.tasks import WEIGHTS_DIR, shipped_teacher

CLIPS = {"scenes": range(4), "edges": range(3)}


def psnr_of(outputs, references, keys) -> tuple[float, float]:
    """PSNR (dB) to the teacher over all frames and over non-key frames (from mean MSE)."""
    mse = [float(((a - b) ** 2).mean() / 4) for a, b in zip(outputs, references)]
    nonkey = [m for m, k in zip(mse, keys) if not k]

    def db(values):
        return 10 * np.log10(1 / np.mean(values)) if values and np.mean(values) > 0 else float("inf")

    return db(mse), db(nonkey)


def ship(doc: str, kind: str, load, run_file: str | None = None, parents: tuple = ()):
    """Parse the ship command line (with the options of the ``parents`` parsers), store
    ``<run>/<run_file>`` (default ``<kind>.safetensors``) as the package's
    ``<task>_<kind>.safetensors`` after ``load(path, teacher=...)`` has checked it was distilled
    from the shipped teacher; returns ``(args, teacher, target, model, size)``, the model read
    back from the stored file."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0], parents=list(parents))
    parser.add_argument("--task", required=True, choices=["scenes", "edges"])
    parser.add_argument("--run", required=True, type=Path, help="distillation run folder")
    parser.add_argument("--command", required=True, help="the exact command(s) that trained it")
    parser.add_argument("--frames", type=int, default=40, help="frames per held-out clip (default 40)")
    parser.add_argument("--hardware", default="2 CPU cores", help="what it trained on, for the card")
    args = parser.parse_args()
    torch.set_num_threads(1)

    teacher = load_generator(shipped_teacher(args.task))
    target = WEIGHTS_DIR / f"{args.task}_{kind}.safetensors"
    source = args.run / (run_file or f"{kind}.safetensors")
    load(source, teacher=teacher)  # refuses another teacher
    shutil.copyfile(source, target)
    model = load(target, teacher=teacher)
    size = tuple(model.info["training"]["config"].get("size") or (128, 256))
    return args, teacher, target, model, size


def main() -> None:
    args, teacher, target, model, size = ship(__doc__, "shortcut", load_shortcut)
    config = model.info["training"]["config"]

    rows = []
    with torch.no_grad():
        for index in CLIPS[args.task]:
            clip = heldout_clip(args.task, index, height=size[0], width=size[1], frames=args.frames)
            xs = [teacher.encode_input(torch.from_numpy(np.stack([x]))) for x, _ in clip]
            reference = [teacher(x) for x in xs]
            for n in (2, 3, 4):
                row = {"clip": clip.name, "frames": len(xs), "interval": n}
                for name in ("shortcut", "repeat", "reuse"):  # the file's settings (reuse gate), interval n
                    out = list(drive(Pipeline.from_model(model, name, interval=n), xs))
                    row[name] = psnr_of([o.y for o in out], reference, [o.key for o in out])
                rows.append(row)
    x = torch.zeros(1, teacher.input_nc, *size)
    full = profile(teacher, x)
    nonkey = profile(Pipeline.from_model(model, "shortcut", interval=3).method.non_key_path(), x)
    block_params = count_parameters(model.block)

    lines = [
        f"# Model card: `{target.name}`",
        "",
        f"- **What:** a Shortcut-V2V block distilled from the shipped `{args.task}_teacher.safetensors` (the file "
        "carries that teacher too: `fastv2v translate in.mp4 out.mp4 --model` this file).",
        f"- **Block:** {model.block.config}, {block_params / 1e6:.3f} M parameters "
        f"(teacher {count_parameters(teacher) / 1e6:.2f} M); reference skip "
        f"{'on' if model.block.reference_skip else 'off'} (docs/shortcut.md).",
        f"- **Default interval:** {model.interval}; trained on pairs 1..{config.get('max_gap') or model.interval - 1} "
        "frames apart.",
        f"- **Reuse gate:** non-key frames whose head features drifted less than {model.method['reuse_below']:.3f} "
        "from the key frame's show the key frame's output (calibrated on 64 training pairs: "
        f"{model.info.get('reuse_calibration')}).",
        f"- **Training:** {model.info['training']['step']} steps of batch {config['batch']} at {size[0]}x{size[1]}, "
        f"lr {config['lr']} (linear decay over the last {config['decay_steps']}), losses feature L1 x5, alignment "
        "L1 x5, output L1 x10, LSGAN x1, temporal LSGAN x1, on 2 CPU cores.",
        f"- **Command:** `{args.command}`",
        f"- **Cost at {size[0]}x{size[1]}:** teacher {format_gmacs(full.macs_exact)} exact / "
        f"{format_gmacs(full.macs_paper)} paper MACs per frame; non-key frame {format_gmacs(nonkey.macs_exact)} / "
        f"{format_gmacs(nonkey.macs_paper)} ({full.macs_exact / nonkey.macs_exact:.2f}x / "
        f"{full.macs_paper / nonkey.macs_paper:.2f}x fewer).",
        "",
        "## Held-out fidelity to the teacher (PSNR in dB over all frames / non-key frames only)",
        "",
        "| clip | interval | shortcut | repeat | reuse |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        cells = " | ".join(f"{r[m][0]:.2f} / {r[m][1]:.2f}" for m in ("shortcut", "repeat", "reuse"))
        lines.append(f"| {r['clip']} | {r['interval']} | {cells} |")
    for n in (2, 3, 4):
        sel = [r for r in rows if r["interval"] == n]
        mean = {m: np.mean([r[m][1] for r in sel]) for m in ("shortcut", "repeat", "reuse")}
        lines.append(f"| **mean** | {n} | **{mean['shortcut']:.2f}** | {mean['repeat']:.2f} | {mean['reuse']:.2f} |")
    lines += ["", f"Measured by `python tools/ship_shortcut.py --task {args.task} ...` from the stored file "
              f"({args.frames} frames per clip; the mean row averages non-key PSNR over clips)."]  # fmt: skip
    (WEIGHTS_DIR / f"{args.task}_shortcut.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
