"""Write a benchmark report: ``bench.json`` (everything), ``bench.md`` (the table), ``pareto.png``.

The Markdown table is what a person reads first, so it shows the two questions side by side:
cost (MACs, model-only and end-to-end speed against the teacher measured in the same process)
and quality (fidelity to the teacher and ground truth, flicker). Every null cell is explained
under the table, with the reason the JSON carries.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from fastv2v.atomic import atomic_path
from fastv2v.errors import UserError

__all__ = ["clean", "markdown", "pareto", "write_report"]


def clean(obj: Any) -> Any:
    """A JSON-ready copy: numpy scalars to Python numbers, inf/NaN to None (JSON has neither)."""
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, os.PathLike):
        return str(obj)
    return obj


def write_report(report: dict, out_dir: str | os.PathLike, *, plot: bool = True) -> dict[str, Path]:
    """Write ``bench.json``, ``bench.md`` and ``pareto.png`` into ``out_dir``; returns their paths.

    Each file is written under a temporary name and renamed when complete.
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the report folder {out} ({exc.strerror}); pass a writable --out.") from None
    data = clean(report)
    paths = {"json": out / "bench.json", "md": out / "bench.md"}
    with atomic_path(paths["json"]) as tmp:
        tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    with atomic_path(paths["md"]) as tmp:
        tmp.write_text(markdown(data))
    if plot:
        paths["png"] = out / "pareto.png"
        with atomic_path(paths["png"]) as tmp:
            pareto(data, tmp)
    return paths


# ---------------------------------------------------------------------------------------------
# Markdown


def _f(value, digits: int = 2, scale: float = 1.0) -> str:
    return "—" if value is None else f"{value * scale:.{digits}f}"


def _pair(a, b, digits: int) -> str:
    if a is None and b is None:
        return "—"
    return f"{_f(a, digits)} / {_f(b, digits)}"


def _g(value) -> str:
    """G-MACs readable at any scale: 84.6, 5.30, 0.0123 (tiny test models stay non-zero)."""
    if value is None:
        return "—"
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _macs(d: dict | None, key: str) -> float | None:
    return None if d is None else d.get(key)


def _model_heading(m: dict, level: int = 3) -> str:
    macs = m["teacher_macs"]
    return (
        f"{'#' * level} {m['model']}\n\n{m.get('arch')} (ngf {m.get('ngf')}), {m['params_m']:.2f} M parameters, "
        f"{m['input_kind']} input, model size {m['model_height']}x{m['model_width']}; teacher "
        f"**{_g(macs['exact'])} G MACs exact / {_g(macs['paper'])} G paper** per frame."
    )


def table(rows: list[dict], ground_truth: bool) -> list[str]:
    """Markdown table lines for the result rows of one model."""
    head = [
        "method", "interval", "key frames", "GMACs/frame (paper / exact)", "non-key GMACs (paper)", "params (M)",
        "ms/frame", "speed-up", "e2e FPS", "e2e speed-up", "PSNR→teacher dB (all / non-key)",
        "SSIM→teacher (all / non-key)",
    ]  # fmt: skip
    if ground_truth:
        head += ["PSNR→GT dB", "SSIM→GT"]
    head += ["warp err ×10⁻³", "tOF→GT" if ground_truth else "tOF→teacher", "peak MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        teacher = r["method"] == "teacher"
        psnr = "reference" if teacher else _pair(r["psnr_vs_teacher"], r["psnr_vs_teacher_nonkey"], 2)
        ssim = "reference" if teacher else _pair(r["ssim_vs_teacher"], r["ssim_vs_teacher_nonkey"], 4)
        cells = [
            r["method"], str(r["interval"] if r["interval"] is not None else "—"), f"{r['keyframes']}/{r['frames']}",
            f"{_g(_macs(r['macs_per_frame'], 'paper'))} / {_g(_macs(r['macs_per_frame'], 'exact'))}",
            _g(_macs(r["macs_nonkey"], "paper")), _f(r["params_m"], 3), _f(r["ms_per_frame"], 1),
            _f(r["speedup_vs_teacher"], 2) + "×", _f(r["e2e_fps"], 1),
            _f(r["e2e_speedup_vs_teacher"], 2) + ("×" if r["e2e_speedup_vs_teacher"] is not None else ""),
            psnr, ssim,
        ]  # fmt: skip
        if ground_truth:
            cells += [_f(r["psnr_vs_gt"], 2), _f(r["ssim_vs_gt"], 4)]
        cells += [
            _f(r["warp_error"], 3, 1e3), _f(r["tof_vs_gt"] if ground_truth else r["tof_vs_teacher"], 3),
            _f(r["peak_mem_mb"], 1),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(report: dict, *, title: str = "fastv2v benchmark", level: int = 1) -> str:
    """The whole ``bench.md``: setup, one table per model, notes on nulls and skipped methods.

    ``level`` is the heading level of ``title`` (model headings go two below), so the same text
    can be a page of its own or a section of a larger document (``benchmarks/RESULTS.md``).
    """
    inp = report["input"]
    gt = bool(inp.get("ground_truth"))
    source = f"`{inp['path']}`"
    if inp.get("clip"):
        source += f" (held-out clip {inp['clip']})"
    lines = [
        f"{'#' * level} {title}",
        "",
        f"- input: {source}, {inp['frames']} frames of {inp['height']}x{inp['width']} at "
        f"{inp['fps']:.3g} fps{', with ground truth' if gt else ''}",
        f"- device: {report['device']}; torch {report['machine']['torch']}, {report['threads']} threads, "
        f"{report['dtype']}, batch {report['batch']}",
        "- every method ran in one process on the same frames, the teacher first, after warm-up",
    ]
    if report.get("command"):
        lines.append(f"- command: `{report['command']}`")
    for m in report["models"]:
        rows = [r for r in report["results"] if r["model"] == m["model"]]
        lines += ["", _model_heading(m, level + 2), ""] + table(rows, gt)
    lines += [
        "",
        "GMACs/frame: amortised over the whole clip, key frames included (paper convention counts "
        "transposed convolutions at output size, as published tables do; exact is the true count). "
        "ms/frame and speed-up: model only; e2e: decode + model + H.264 encode of the same frames. "
        "PSNR from the MSE averaged over frames (key frames equal the teacher exactly). Warping "
        f"error: flicker against the {_motion_text(report)} motion, lower is better. "
        "Full definitions: `conventions` in bench.json.",
    ]
    uncounted = _uncounted_notes(report)
    if uncounted:
        lines += ["", "Work outside torch, which the MAC columns do not count (its time is in ms/frame and e2e):"]
        lines += [f"- {n}" for n in uncounted]
    notes = _null_notes(report)
    if notes:
        lines += ["", "Empty cells (—):"] + [f"- {n}" for n in notes]
    if report.get("skipped"):
        lines += ["", "Skipped:"]
        for s in report["skipped"]:
            at = "" if s["interval"] is None else f"@{s['interval']}"
            lines.append(f"- {s['model']}: {s['method']}{at}: {s['reason']}")
    return "\n".join(lines) + "\n"


def _motion_text(report: dict) -> str:
    sources = sorted({r.get("warp_error_motion") for r in report["results"] if r.get("warp_error_motion")})
    return " / ".join(sources) or "input"


def _row_label(r: dict) -> str:
    """A result row as ``method@interval`` (``method`` alone when it has no interval)."""
    return r["method"] if r["interval"] is None else f"{r['method']}@{r['interval']}"


def _uncounted_notes(report: dict) -> list[str]:
    """One line per row whose method does work the MAC counter cannot see (``macs_uncounted``)."""
    out = []
    for r in report["results"]:
        reason = (r.get("notes") or {}).get("macs_uncounted")
        if reason:
            out.append(f"{_row_label(r)}: {reason}")
    return out


def _null_notes(report: dict) -> list[str]:
    """One line per distinct (metric, reason), naming the rows it applies to."""
    shown = {
        "psnr_vs_teacher_nonkey", "ssim_vs_teacher_nonkey", "psnr_vs_gt", "ssim_vs_gt", "e2e_fps", "warp_error",
        "tof_vs_teacher", "tof_vs_gt", "peak_mem_mb", "macs_nonkey", "psnr_vs_teacher", "keyframes",
    }  # fmt: skip
    gt = bool(report["input"].get("ground_truth"))
    grouped: dict[tuple[str, str], list[str]] = {}
    for r in report["results"]:
        if r["method"] == "teacher":
            continue  # its empty cells are "reference" / "every frame is a key frame" by definition
        for field, reason in (r.get("notes") or {}).items():
            if field not in shown or (not gt and field in ("psnr_vs_gt", "ssim_vs_gt", "tof_vs_gt")):
                continue
            if field != "keyframes" and r.get(field) is not None:
                continue  # an explanatory note on a value that exists
            grouped.setdefault((field, reason), []).append(_row_label(r))
    return [f"{field} ({', '.join(rows)}): {reason}" for (field, reason), rows in grouped.items()]


# ---------------------------------------------------------------------------------------------
# Pareto plot


def _front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both cost (lower x) and quality (higher y), by x."""
    best, front = -math.inf, []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def pareto(report: dict, path: str | os.PathLike) -> None:
    """Cost against PSNR to the teacher, one labelled point per method and interval.

    Left: amortised G-MACs per frame (paper convention); right: model-only ms per frame. The
    teacher's PSNR to itself is infinite, so it is a dashed vertical line at its cost. The
    dotted line joins each model's Pareto-optimal points.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    colors = {}
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive"]
    markers = ["o", "s", "^", "D", "v", "P"]
    models = [m["model"] for m in report["models"]]
    axis_specs = [
        (lambda r: _macs(r["macs_per_frame"], "paper"), "G-MACs per frame, amortised (paper convention)"),
        (lambda r: r["ms_per_frame"], "ms per frame, model only"),
    ]
    plotted = False
    for ax, (xof, xlabel) in zip(axes, axis_specs):
        for mi, model in enumerate(models):
            rows = [r for r in report["results"] if r["model"] == model]
            marker = markers[mi % len(markers)]
            points = []
            for r in rows:
                x, y = xof(r), r["psnr_vs_teacher"]
                if x is None:
                    continue
                if r["method"] == "teacher":
                    ax.axvline(x, color="0.4", linestyle="--", linewidth=1)
                    ax.annotate(f"teacher ({model})" if len(models) > 1 else "teacher", (x, 1.0),
                                xycoords=("data", "axes fraction"), rotation=90, va="top", ha="right",
                                fontsize=8, color="0.3")  # fmt: skip
                    continue
                if y is None:
                    continue
                color = colors.setdefault(r["method"], palette[len(colors) % len(palette)])
                ax.scatter([x], [y], color=color, marker=marker, zorder=3)
                ax.annotate(_row_label(r), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
                points.append((x, y))
                plotted = True
            front = _front(points)
            if len(front) > 1:
                xs, ys = zip(*front)
                ax.plot(xs, ys, linestyle=":", color="0.5", zorder=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("PSNR to the teacher, dB (all frames)")
        ax.set_xlim(left=0)
        ax.grid(True, alpha=0.3)
    if not plotted:
        for ax in axes:
            ax.text(0.5, 0.5, "no method besides the teacher", transform=ax.transAxes, ha="center", color="0.4")
    inp = report["input"]
    fig.suptitle(
        f"{inp['path']}: {inp['frames']} frames {inp['height']}x{inp['width']}, {report['device']}, "
        f"{report['threads']} threads, {report['dtype']}",
        fontsize=10,
    )
    with open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
