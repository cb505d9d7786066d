"""The model card a footage distillation ends with: ``DIR/<name>.md`` next to ``DIR/<name>.safetensors``,
in the form of the shipped models' cards (``src/fastv2v/weights/*.md``): what the file is, the
teacher it was distilled from (name and SHA-256), the footage (clips, frames used, the held-out
part), the settings, the steps and final losses of ``log.jsonl``, and the held-out benchmark
(``bench.md``)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from fastv2v.atomic import atomic_path

#: Settings that only say where files go or how often; left out of the card's settings line.
_PLUMBING = ("out_dir", "resume", "force", "checkpoint_every", "sample_every", "num_workers", "teacher", "shuffle")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _final_losses(log: Path) -> tuple[int, dict[str, float]]:
    last: dict[str, Any] = {}
    if log.is_file():
        for line in log.read_text().splitlines():
            if line.strip():
                last = json.loads(line)
    step = int(last.pop("step", 0))
    return step, {k: float(v) for k, v in last.items()}


def write_footage_card(model: str | Path, config: Any, train: Any, heldout: Any, bench_md: str | Path | None) -> Path:
    """Write ``<model stem>.md`` beside ``model`` (atomically); returns its path."""
    model = Path(model)
    settings = config.to_dict()
    teacher = Path(settings["teacher"])
    step, losses = _final_losses(model.parent / "log.jsonl")
    kind = model.stem
    h, w = train.size
    what = {"shortcut": "a Shortcut-V2V block (with the teacher it was distilled from)",
            "student": "a Fast-Vid2Vid spatial student (with the teacher it was distilled from)"}.get(kind, kind)  # fmt: skip
    inputs = f"label maps ({train.label_nc} classes)" if train.label_nc else "RGB frames"
    crop = ("centre crops (teacher outputs cached: `--cache-teacher`), random flips" if settings.get("cache_teacher")
            else "random crops and flips")  # fmt: skip
    lines = [
        f"# Model card: `{model.name}`",
        "",
        f"- **What:** {what}, distilled on your own footage with `fastv2v distill {kind}`; "
        f"`fastv2v translate IN OUT --model {model.name}` runs it.",
        f"- **Teacher:** `{teacher.name}`, SHA-256 `{file_sha256(teacher) if teacher.is_file() else 'unavailable'}`.",
        f"- **Data:** {len(train.names)} clip(s) of {inputs} at {h}x{w} ({crop}); "
        f"{train.frames_used()} training frames, {heldout.frames_used()} held out (the last 10 % of every clip, "
        "never trained on).",
        "",
        "| clip | training frames | held-out frames |",
        "|---|---|---|",
    ]
    for i, name in enumerate(train.names):
        lines.append(f"| {name} | {len(train.clips[i])} | {len(heldout.clips[i])} |")
    shown = {k: v for k, v in settings.items() if k not in _PLUMBING}
    lines += [
        "",
        f"- **Settings:** `{json.dumps(shown, sort_keys=True)}`",
        f"- **Steps:** {step} of {settings.get('steps')} ({'complete' if step >= settings.get('steps', 0) else 'stopped early; resume with --resume'}).",
        "- **Final losses (unweighted, last step):** "
        + (", ".join(f"{k} {v:.4f}" for k, v in losses.items()) if losses else "none logged") + ".",
    ]  # fmt: skip
    if bench_md is not None and Path(bench_md).is_file():
        body = Path(bench_md).read_text().strip().splitlines()
        body = [("##" + line) if line.startswith("# ") else line for line in body]  # nest its headings
        lines += ["", f"## Held-out benchmark (`{Path(bench_md).name}`, the held-out end of {heldout.names[0]})", "",
                  *body]  # fmt: skip
    path = model.with_suffix(".md")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return path
