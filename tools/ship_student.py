"""Ship a distilled Fast-Vid2Vid student: store it in the package, evaluate it on held-out clips
against the teacher and the baselines, and write its model card.

    python tools/ship_student.py --task scenes --run runs/student-scenes --command "fastv2v distill student ..."

The run's ``student.safetensors`` must have been distilled from the shipped teacher (checked by
fingerprint); the card's numbers are computed from the stored file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from fastv2v.data.paired import heldout_clip
from fastv2v.engine.loop import drive
from fastv2v.methods.student_model import load_student
from fastv2v.pipeline import Pipeline
from fastv2v.metrics.profile import count_parameters, format_gmacs, profile
from fastv2v.tasks import WEIGHTS_DIR

sys.path.insert(0, str(Path(__file__).parent))
from ship_shortcut import CLIPS, psnr_of, ship  # noqa: E402


def main() -> None:
    args, teacher, target, model, size = ship(__doc__, "student", load_student)
    config = model.info["training"]["config"]

    rows = []
    with torch.no_grad():
        for index in CLIPS[args.task]:
            clip = heldout_clip(args.task, index, height=size[0], width=size[1], frames=args.frames)
            pairs = list(clip)
            xs = [teacher.encode_input(torch.from_numpy(np.stack([x]))) for x, _ in pairs]
            reference = [teacher(x) for x in xs]
            truth = [torch.from_numpy(np.ascontiguousarray(t)).permute(2, 0, 1)[None].float() / 127.5 - 1
                     for _, t in pairs]  # ground-truth RGB in the outputs' [-1, 1] range
            spatial = [o.y for o in drive(Pipeline.from_model(model, "spatial"), xs)]
            row = {"clip": clip.name, "spatial": psnr_of(spatial, reference, [False] * len(xs))[0],
                   "spatial_gt": psnr_of(spatial, truth, [False] * len(xs))[0],
                   "teacher_gt": psnr_of(reference, truth, [False] * len(xs))[0]}  # fmt: skip
            for n in (2, 4, 8):
                for name in ("fast", "interp", "repeat"):
                    out = list(drive(Pipeline.from_model(model, name, interval=n), xs))
                    row[f"{name}@{n}"] = psnr_of([o.y for o in out], reference, [o.key for o in out])[0]
            rows.append(row)
    x = torch.zeros(1, teacher.input_nc, *size)
    full, student = profile(teacher, x), profile(model.student, x)
    pruned = model.student.config.get("body") == "pruned"
    kind_text = ("channel-pruned student (GAN Compression's way: the teacher's layers at "
                 f"{model.student.config['width']} base channels, started from its strongest channels)" if pruned
                 else "Fast-Vid2Vid spatial student")  # fmt: skip
    input_text = "full-size input" if pruned else "input halved inside `forward`"
    params = count_parameters(model.student)

    lines = [
        f"# Model card: `{target.name}`",
        "",
        f"- **What:** a {kind_text} distilled from the shipped `{args.task}_teacher.safetensors` (the "
        "file carries that teacher too: `fastv2v translate in.mp4 out.mp4 --model` this file runs `fast`).",
        f"- **Student:** {model.student.config}, {params / 1e6:.3f} M parameters "
        f"(teacher {count_parameters(teacher) / 1e6:.2f} M); {input_text}.",
        f"- **Default interval of `fast`:** {model.interval}.",
        f"- **Training:** {model.info['training']['step']} steps of batch {config['batch']} at {size[0]}x{size[1]}, "
        f"lr {config['lr']} (linear decay over the last {config['decay_steps']}), motion-weighted output L1, feature "
        f"L1 through a 1x1 mapping{', LSGAN' if config.get('lambda_gan', 1.0) > 0 else ' (no GAN term: --gan-weight 0)'}"
        f", on {args.hardware}"
        + (f", warm-started from `{Path(config['init']).name}` (`--init`; see the command)." if config.get("init")
           else "."),
        f"- **Command:** `{args.command}`",
        f"- **Cost at {size[0]}x{size[1]}:** teacher {format_gmacs(full.macs_exact)} exact / "
        f"{format_gmacs(full.macs_paper)} paper MACs per frame; student {format_gmacs(student.macs_exact)} / "
        f"{format_gmacs(student.macs_paper)} ({full.macs_exact / student.macs_exact:.2f}x / "
        f"{full.macs_paper / student.macs_paper:.2f}x fewer).",
        "",
        "## Held-out fidelity (PSNR in dB over all frames)",
        "",
        "To the teacher's output: `spatial` (student on every frame), `fast` (student key frames + interp), "
        "`interp` (teacher key frames + interp) and `repeat` at key-frame gaps 2, 4, 8; and to the ground truth "
        "for the teacher and `spatial`.",
        "",
        "| clip | spatial | fast@2 | fast@4 | fast@8 | interp@4 | repeat@4 | teacher vs GT | spatial vs GT |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows + [{"clip": "**mean**", **{k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "clip"}}]:
        cells = [r["spatial"], r["fast@2"], r["fast@4"], r["fast@8"], r["interp@4"], r["repeat@4"], r["teacher_gt"],
                 r["spatial_gt"]]  # fmt: skip
        lines.append(f"| {r['clip']} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    lines += ["", f"Measured by `python tools/ship_student.py --task {args.task} ...` from the stored file "
              f"({args.frames} frames per clip)."]  # fmt: skip
    (WEIGHTS_DIR / f"{args.task}_student.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
