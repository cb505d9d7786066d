"""Write a benchmark report: ``bench.json`` (everything), ``bench.md`` (the table), ``pareto.png``.

The Markdown table is what a person reads first, so it shows the two questions side by side:
cost (MACs, model-only and end-to-end speed against the teacher measured in the same process)
and quality (fidelity to the teacher and ground truth, flicker). Every null cell is explained
under the table, with the reason the JSON carries.

For ``benchmarks/RESULTS.md`` it also draws, per task, the speed front (:func:`speed_front`): end-to-end
speed-up against PSNR to the teacher over both suites' rows, the distilled methods against the
training-free Pareto front, and words the comparison per distilled row (:func:`front_lines`).
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

__all__ = [
    "DISTILLED", "FRONT_RULE", "TRAINING_FREE", "clean", "front_lines", "front_psnr_at", "markdown", "pareto",
    "speed_front", "training_free_front", "write_report",
]  # fmt: skip


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
        teacher = r["method"] == "teacher" and "psnr_vs_teacher" in r.get("notes", {})  # the reference itself
        psnr = "reference" if teacher else _pair(r["psnr_vs_teacher"], r["psnr_vs_teacher_nonkey"], 2)
        ssim = "reference" if teacher else _pair(r["ssim_vs_teacher"], r["ssim_vs_teacher_nonkey"], 4)
        cells = [
            _with_runtime(_method_text(r), r, rows), str(r["interval"] if r["interval"] is not None else "—"), f"{r['keyframes']}/{r['frames']}",
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
            on = f" [{s['runtime']}]" if len(report.get("runtimes") or []) > 1 and s.get("runtime") else ""
            lines.append(f"- {s['model']}: {s['method']}{at}{on}: {s['reason']}")
    return "\n".join(lines) + "\n"


def _motion_text(report: dict) -> str:
    sources = sorted({r.get("warp_error_motion") for r in report["results"] if r.get("warp_error_motion")})
    return " / ".join(sources) or "input"


def _row_label(r: dict) -> str:
    """A result row as ``method@interval`` (``method`` alone when it has no interval), with the
    elastic sub-network it ran when it names one (``spatial[w8/2]``)."""
    return _method_text(r) if r["interval"] is None else f"{_method_text(r)}@{r['interval']}"


def _method_text(r: dict) -> str:
    subnet = (r.get("settings") or {}).get("subnet")
    return f"{r['method']}[{subnet}]" if subnet else r["method"]


def _with_runtime(text: str, r: dict, rows: list[dict]) -> str:
    """``text [onnxruntime fp32]`` when the rows ran on more than one runtime."""
    several = len({row.get("runtime") for row in rows}) > 1
    return f"{text} [{r['runtime']}]" if several and r.get("runtime") else text


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


# ---------------------------------------------------------------------------------------------
# Speed front: distilled methods against the training-free ones, end to end

#: Methods that need nothing besides the teacher (key frames plus cheap propagation).
TRAINING_FREE = ("repeat", "reuse", "interp", "minterpolate", "sparse")
#: Methods that run a model distilled from the teacher (their own model file).
DISTILLED = ("shortcut", "shortcut_auto", "spatial", "fast")
_FREE_COLORS = {"repeat": "#08306b", "reuse": "#2171b5", "interp": "#4292c6", "minterpolate": "#6baed6",
                "sparse": "#17becf"}  # fmt: skip
_DISTILLED_COLORS = {"shortcut": "#a50f15", "shortcut_auto": "#ef3b2c", "spatial": "#d94801", "fast": "#fd8d3c"}
_METHOD_MARKERS = {"repeat": "o", "reuse": "s", "interp": "^", "minterpolate": "v", "sparse": "D",
                   "shortcut": "o", "shortcut_auto": "s", "spatial": "^", "fast": "D"}  # fmt: skip
#: How :func:`front_lines` compares, for the page that shows them.
FRONT_RULE = (
    "The line is the training-free Pareto front: the training-free rows that no other training-free row "
    "matches or beats on both end-to-end speed-up and PSNR to the teacher (better on at least one). "
    "The front's PSNR at a distilled row's speed-up is a linear interpolation between the two neighbouring "
    "front points (the straight line drawn, not a staircase); at a speed-up below the front's slowest point "
    "it is that point's PSNR (a faster training-free row reaches it); beyond the front's fastest point there "
    "is nothing to compare with. Margin = the row's PSNR minus the front's, positive when the distilled "
    "row lies above the front."
)


def _speed_point(r: dict) -> tuple[float, float] | None:
    """(e2e speed-up against the teacher, PSNR to the teacher) of a row, or None when either is missing."""
    x, y = r.get("e2e_speedup_vs_teacher"), r.get("psnr_vs_teacher")
    if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
        return None
    return float(x), float(y)


def _missing_reason(r: dict) -> str:
    """Why a row has no point in the speed front (the row's own note where it has one)."""
    notes = r.get("notes") or {}
    for key, field in (("e2e_speedup_vs_teacher", "e2e_fps"), ("psnr_vs_teacher", "psnr_vs_teacher")):
        value = r.get(key)
        if value is None or not math.isfinite(value):
            reason = notes.get(key) or notes.get(field)
            what = "no e2e speed-up" if key.startswith("e2e") else "no PSNR to the teacher"
            return f"{what}: {reason}" if reason else what
    return ""


def training_free_front(rows: list[dict]) -> list[tuple[float, float, str]]:
    """The training-free Pareto front of ``rows`` as ``(e2e speed-up, PSNR, method@interval)``,
    by speed-up: a training-free row with both numbers is on it unless another training-free row
    is at least as fast and at least as close to the teacher, and better on one of the two (a
    row that only ties a faster one, as ``repeat`` and ``reuse`` do in PSNR, is not on it)."""
    points = [(p[0], p[1], _row_label(r)) for r in rows if r["method"] in TRAINING_FREE for p in [_speed_point(r)] if p]
    front = [
        (x, y, label) for x, y, label in points
        if not any(x2 >= x and y2 >= y and (x2 > x or y2 > y) for x2, y2, _ in points)
    ]  # fmt: skip
    return sorted(front, key=lambda p: (p[0], -p[1]))


def front_psnr_at(front: list[tuple[float, float, str]], speedup: float) -> tuple[float | None, str]:
    """The front's PSNR at ``speedup`` and how it was found (linear interpolation between the
    two neighbouring front points); ``None`` beyond the front's fastest point or without a front."""
    if not front:
        return None, "no training-free row with an e2e speed-up and a PSNR to compare with"
    fastest = front[-1]
    if speedup > fastest[0]:
        return None, (f"beyond the training-free front (its fastest point: {fastest[2]} at {fastest[0]:.2f}×, "
                      f"{fastest[1]:.2f} dB)")  # fmt: skip
    slowest = front[0]
    if speedup < slowest[0]:
        return slowest[1], f"{slowest[2]} at {slowest[0]:.2f}× is faster"
    for (xa, ya, a), (xb, yb, b) in zip(front, front[1:] + [front[-1]]):
        if speedup == xa:
            return ya, f"at {a}"
        if xa < speedup < xb:
            y = ya + (yb - ya) * (speedup - xa) / (xb - xa)
            return y, f"linear between {a} ({xa:.2f}×, {ya:.2f} dB) and {b} ({xb:.2f}×, {yb:.2f} dB)"
    raise AssertionError("unreachable: speedup lies within the front")  # pragma: no cover


def front_lines(rows: list[dict]) -> list[str]:
    """One Markdown bullet per distilled row: its e2e speed-up and PSNR, the training-free
    front's PSNR at that speed-up (see :data:`FRONT_RULE`) and the margin in dB; then one bullet
    per reason that leaves rows out of the figure, naming them. The teacher's row is never compared."""
    front = training_free_front(rows)
    lines, left_out = [], {}  # reason -> the rows it leaves out of the figure
    for r in rows:
        if r["method"] == "teacher":
            continue
        point = _speed_point(r)
        if point is None:
            if r["method"] in TRAINING_FREE or r["method"] in DISTILLED:
                x = r.get("e2e_speedup_vs_teacher")
                at = f" (e2e {x:.2f}×)" if x is not None and math.isfinite(x) else ""
                left_out.setdefault(_missing_reason(r), []).append(f"{_row_label(r)}{at}")
            continue
        if r["method"] not in DISTILLED:
            continue
        x, y = point
        head = f"- {_row_label(r)}: e2e {x:.2f}×, PSNR {y:.2f} dB; "
        front_y, how = front_psnr_at(front, x)
        if front_y is None:
            lines.append(head + how)
            continue
        margin = y - front_y
        side = "above" if margin > 0 else "below" if margin < 0 else "on"
        lines.append(
            head + f"training-free front at {x:.2f}×: {front_y:.2f} dB ({how}); "
            f"margin {margin:+.2f} dB ({side} the front)"
        )
    return lines + [f"- not in the figure: {', '.join(labels)}: {reason}" for reason, labels in left_out.items()]


def speed_front(rows: list[dict], path: str | os.PathLike, title: str) -> bool:
    """Write the figure end-to-end speed-up against the teacher (x) vs PSNR to the teacher (y)
    for ``rows`` (any number of suites' rows of one clip) to ``path``, atomically; returns False,
    writing nothing, when no training-free or distilled row has both numbers.

    Training-free methods are blues, distilled ones reds and oranges, each point is labelled
    ``method@interval``, and the training-free Pareto front (:func:`training_free_front`) is a
    line, so a distilled point above the line beats every training-free method at its speed.
    """
    order = TRAINING_FREE + DISTILLED
    points = [(r, p) for r in rows if r["method"] in order for p in [_speed_point(r)] if p]
    if not points:
        return False
    points.sort(key=lambda rp: order.index(rp[0]["method"]))  # the legend: training-free first
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.axvline(1.0, color="0.4", linestyle="--", linewidth=1)
    ax.annotate("teacher (1×)", (1.0, 1.0), xycoords=("data", "axes fraction"), rotation=90, va="top", ha="right",
                fontsize=8, color="0.3")  # fmt: skip
    front = training_free_front(rows)
    if front:
        xs, ys, _ = zip(*front)
        ax.plot(xs, ys, color=_FREE_COLORS["reuse"], alpha=0.6, linewidth=1.5, zorder=2,
                label="training-free Pareto front")  # fmt: skip
    seen = set()
    for r, (x, y) in points:
        method = r["method"]
        color = _FREE_COLORS.get(method) or _DISTILLED_COLORS[method]
        family = "training-free" if method in TRAINING_FREE else "distilled"
        label = None if method in seen else f"{method} ({family})"
        seen.add(method)
        ax.scatter([x], [y], color=color, marker=_METHOD_MARKERS.get(method, "o"), zorder=3, label=label,
                   edgecolors="black" if family == "distilled" else "none", linewidths=0.5)  # fmt: skip
        ax.annotate(_row_label(r), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8, color=color)
    ax.set_xlabel("end-to-end speed-up against the teacher (decode + model + H.264 encode), ×")
    ax.set_ylabel("PSNR to the teacher, dB (all frames)")
    ax.set_xlim(0, max(1.0, max(x for _, (x, _) in points)) * 1.1)  # room for the labels on the right
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title, fontsize=10)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            fig.savefig(f, format="png", dpi=110)
    return True
