"""Sparse incremental inference on the CPU: speed-up against changed area, the real clip, and
SIGE's measured kernels as the bar to beat.

    python benchmarks/sparse_curve.py                      # shipped scenes teacher, else random init
    python benchmarks/sparse_curve.py --teacher PATH --threads 1 --frames 30
    python benchmarks/sparse_curve.py --quick              # tiny sizes: checks the pipeline only

Writes ``benchmarks/results/sparse_curve.json``, ``.md`` and ``.png`` (``--out`` to change).

What it measures, always against dense PyTorch in the same process, same threads, after
warm-up, with dense and sparse runs interleaved (so a machine that is busy in bursts slows both
alike; the ratios are the result, absolute times are only comparable within one run):

1. exactness: with thresholds 0 and no reach limit the sparse pass equals the dense pass with
   the same frozen statistics; an unchanged frame costs no MACs;
2. the curve: speed-up and MAC fraction of the whole scenes teacher (256x512 by default)
   against changed input area from 1 % to 50 %, for synthetic label edits (scattered small
   squares, the worst case for halos, and one compact block) under three settings: ``exact``
   (no reach limit), ``default`` (the method's default, reach 16 px) and ``sige`` (reach 0: every
   layer recomputes the changed tiles, halos read cached neighbours, as SIGE does); the
   break-even area where sparse stops paying;
3. the real clip: a fixed-camera scenes clip, per-frame MACs, time and PSNR to the teacher and
   to the dense frozen-statistics pass; and the ``sparse`` method end to end (key frames
   included) at a few maximum intervals;
4. SIGE's shapes from ``methods.md`` section 6: one 3x3 conv 256->256 at 64x128 and six
   residual blocks at 64x128 (SIGE's own CPU kernels on this machine: 11.9x / 5.0x / 3.3x /
   1.6x / 0.96x and 9.1x / 4.0x / 2.4x / 1.26x / 0.74x at 1 / 5 / 10 / 25 / 50 % changed area);
5. time outside the convolutions (gather, scatter, masks, Python) per frame.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
SIGE_FRACTIONS = (0.01, 0.05, 0.1, 0.25, 0.5)
SIGE_CONV = (11.9, 5.0, 3.3, 1.6, 0.96)  # methods.md section 6, 2 threads, block 6 (4x4 outputs)
SIGE_BLOCKS = (9.1, 4.0, 2.4, 1.26, 0.74)
SIGE_DENSE_MS = {"conv": 21.5, "blocks": 267.0}
SETTINGS = {
    "exact": {"reach": None},
    "default": {"reach": 16},
    "sige": {"reach": 0},
}


def _median(xs):
    return float(statistics.median(xs)) if xs else float("nan")


def interleaved(fns: dict, reps: int) -> dict[str, float]:
    """Median seconds of each callable, run round-robin ``reps`` times after one warm-up each."""
    for f in fns.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: _median(v) for k, v in times.items()}


def psnr_uint8(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two generator outputs after decoding to uint8 (the project's convention)."""
    from fastv2v.generators.base import SplitGenerator
    from fastv2v.metrics.quality import psnr

    return psnr(SplitGenerator.decode_output(a)[0].numpy(), SplitGenerator.decode_output(b)[0].numpy())


def mean_psnr(pairs) -> float:
    """PSNR of the MSE averaged over frames first (as ``fastv2v bench`` does)."""
    from fastv2v.generators.base import SplitGenerator

    errs = [
        float(((SplitGenerator.decode_output(a).float() - SplitGenerator.decode_output(b).float()) ** 2).mean())
        for a, b in pairs
    ]
    if not errs:
        return float("nan")
    m = float(np.mean(errs))
    return math.inf if m == 0 else 10 * math.log10(255**2 / m)


# ---------------------------------------------------------------------------------------------
# synthetic edits of controlled area


def square_mask(h: int, w: int, fraction: float, pattern: str, seed: int = 0, side: int | None = None) -> np.ndarray:
    """A bool ``h x w`` mask of about ``fraction`` area: ``scattered`` squares (each inside its
    own cell of a grid, so they never merge) or one ``compact`` rectangle in the middle."""
    mask = np.zeros((h, w), bool)
    if pattern == "compact":
        area = fraction * h * w
        bh = int(round(min(h, math.sqrt(area * h / w))))
        bw = int(round(min(w, area / max(bh, 1))))
        top, left = (h - bh) // 2, (w - bw) // 2
        mask[top : top + bh, left : left + bw] = True
        return mask
    cell = side or max(4, h // 8)
    sq = max(1, cell * 3 // 4)
    cells = [(r, c) for r in range(0, h - cell + 1, cell) for c in range(0, w - cell + 1, cell)]
    n = max(1, min(len(cells), int(round(fraction * h * w / sq**2))))
    rng = np.random.default_rng(seed)
    for i in rng.choice(len(cells), n, replace=False):
        r, c = cells[i]
        mask[r : r + sq, c : c + sq] = True
    return mask


# ---------------------------------------------------------------------------------------------
# the measurements


def teacher_and_clip(args):
    from fastv2v.data.scenes import NUM_CLASSES, render_clip
    from fastv2v.generators import ResnetGenerator, load_generator
    from fastv2v.tasks import shipped_teacher

    path = args.teacher or shipped_teacher("scenes")
    if path is not None:
        g = load_generator(path)
        source = str(path)
    else:
        torch.manual_seed(0)
        g = ResnetGenerator(label_nc=NUM_CLASSES, ngf=args.ngf, n_blocks=6).eval()
        source = f"random init ResnetGenerator(label_nc={NUM_CLASSES}, ngf={args.ngf}, n_blocks=6)"
    g = g.float().eval()
    clip = render_clip(height=args.height, width=args.width, fixed_camera=True, seed=args.seed, frames=args.frames + 1)
    labels = [torch.from_numpy(lab) for lab, _ in clip]
    return g, source, labels


def runner_for(g, setting: str, **extra):
    from fastv2v.methods.sparse import DEFAULT_TILE
    from fastv2v.methods.sparse_engine import SparseRunner

    return SparseRunner(g.model, tile=extra.pop("tile", DEFAULT_TILE), **SETTINGS[setting], **extra)


def measure_exactness(g, labels) -> dict:
    x0, x1 = g.encode_input(labels[0][None]), g.encode_input(labels[-1][None])
    r = runner_for(g, "exact")
    with torch.no_grad():
        _, cache = r.key(x0)
        y1, s1 = r.update(x1, cache)
        err = float((y1 - r.dense_frozen(x1, cache)).abs().max())
        t = time.perf_counter()
        y2, s2 = r.update(x1, cache)
        same_ms = (time.perf_counter() - t) * 1e3
    return {
        "max_abs_error_vs_dense_frozen": err,
        "changed_fraction": s1.changed,
        "unchanged_frame": {"macs_exact": s2.macs_exact, "ms": same_ms, "output_identical": bool(torch.equal(y1, y2))},
    }


def measure_curve(g, labels, args) -> dict:
    """Whole-teacher speed-up against changed area, synthetic edits of the first clip frame."""
    from fastv2v.data.scenes import NUM_CLASSES

    base = labels[0]
    h, w = base.shape
    x0 = g.encode_input(base[None])
    rows = []
    for pattern in ("scattered", "compact"):
        for frac in args.fractions:
            m = torch.from_numpy(square_mask(h, w, frac, pattern, seed=1, side=max(8, h // 8)))
            edited = torch.where(m, (base + 1) % NUM_CLASSES, base)
            x1 = g.encode_input(edited[None])
            changed = float(m.float().mean())
            fns = {"dense": lambda: g(x1)}
            runners = {}
            for setting in SETTINGS:
                r = runner_for(g, setting)
                with torch.no_grad():
                    _, cache = r.key(x0)
                flip = {"i": 0, "stats": []}

                def sparse(r=r, cache=cache, flip=flip):  # toggles edited <-> base: same area each call
                    flip["i"] ^= 1
                    _, s = r.update(x1 if flip["i"] else x0, cache)
                    flip["stats"].append(s)

                fns[setting] = sparse
                runners[setting] = flip
            with torch.no_grad():
                times = interleaved(fns, args.reps)
            for setting, flip in runners.items():
                st = flip["stats"]
                rows.append({
                    "pattern": pattern, "target": frac, "changed": changed, "setting": setting,
                    "dense_ms": times["dense"] * 1e3, "sparse_ms": times[setting] * 1e3,
                    "speedup": times["dense"] / times[setting],
                    "mac_fraction": _median([s.mac_fraction for s in st]),
                    "outside_conv_ms": _median([(s.total_s - s.conv_s) * 1e3 for s in st]),
                    "conv_ms": _median([s.conv_s * 1e3 for s in st]),
                    "gather_ms": _median([s.gather_s * 1e3 for s in st]),
                })  # fmt: skip
            print(f"  {pattern:9s} {changed:6.3f}  " + "  ".join(
                f"{r['setting']} {r['speedup']:.2f}x ({r['mac_fraction']:.2f} MACs)" for r in rows[-len(SETTINGS):]
            ), flush=True)  # fmt: skip
    return {"rows": rows, "break_even": break_evens(rows)}


def _crossing(points: list[tuple[float, float]], level: float = 1.0) -> float | None:
    """The x where y falls through ``level`` (linear between the two points around it)."""
    pts = sorted(points)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if y0 >= level > y1:
            return x0 + (y0 - level) * (x1 - x0) / (y0 - y1)
    return None


def break_evens(rows) -> dict:
    """Per setting and pattern: changed area and MAC fraction at which sparse = dense time."""
    out = {}
    for setting in SETTINGS:
        for pattern in ("scattered", "compact"):
            sel = [r for r in rows if r["setting"] == setting and r["pattern"] == pattern]
            out[f"{setting}/{pattern}"] = {
                "changed_area": _crossing([(r["changed"], r["speedup"]) for r in sel]),
                "mac_fraction": _crossing([(r["mac_fraction"], r["speedup"]) for r in sel]),
                "note": None if min((r["speedup"] for r in sel), default=0) < 1 else "still faster at the largest area",
            }
    return out


def measure_clip(g, labels, args) -> dict:
    """The real fixed-camera clip: the engine frame by frame, then the method end to end."""
    from fastv2v.methods.sparse import SparseMethod

    xs = [g.encode_input(lab[None]) for lab in labels]
    with torch.no_grad():
        g(xs[0])  # warm-up
    per_setting = {}
    for setting in SETTINGS:
        r = runner_for(g, setting)
        frames = []
        with torch.no_grad():
            _, cache = r.key(xs[0])
            for x in xs[1:]:
                t = time.perf_counter()
                y, s = r.update(x, cache)
                sparse_s = time.perf_counter() - t
                t = time.perf_counter()
                yd = g(x)
                dense_s = time.perf_counter() - t
                frames.append({
                    "changed": s.changed, "mac_fraction": s.mac_fraction, "sparse_ms": sparse_s * 1e3,
                    "dense_ms": dense_s * 1e3, "outside_conv_ms": (s.total_s - s.conv_s) * 1e3,
                    "conv_ms": s.conv_s * 1e3, "gather_ms": s.gather_s * 1e3,
                    "psnr_teacher": psnr_uint8(y, yd), "psnr_frozen": psnr_uint8(y, r.dense_frozen(x, cache)),
                })  # fmt: skip
        per_setting[setting] = {
            "changed": _median([f["changed"] for f in frames]),
            "mac_fraction": _median([f["mac_fraction"] for f in frames]),
            "speedup": sum(f["dense_ms"] for f in frames) / sum(f["sparse_ms"] for f in frames),
            "outside_conv_ms": _median([f["outside_conv_ms"] for f in frames]),
            "conv_ms": _median([f["conv_ms"] for f in frames]),
            "gather_ms": _median([f["gather_ms"] for f in frames]),
            "sparse_ms": _median([f["sparse_ms"] for f in frames]),
            "dense_ms": _median([f["dense_ms"] for f in frames]),
            "psnr_frozen_min": min(f["psnr_frozen"] for f in frames),
            "psnr_teacher_last": frames[-1]["psnr_teacher"],
            "frames": frames,
        }
        p = per_setting[setting]
        print(f"  clip {setting:8s} changed {p['changed']:.4f}  MACs {p['mac_fraction']:.3f}  "
              f"{p['speedup']:.2f}x  outside conv {p['outside_conv_ms']:.1f} ms", flush=True)  # fmt: skip
    methods = []
    for interval in args.intervals:
        method = SparseMethod(g, max_interval=interval)
        state = method.init_state()
        pairs, flags, sparse_s, dense_s = [], [], 0.0, 0.0
        with torch.no_grad():
            for x in xs:
                t = time.perf_counter()
                y, state, key = method.step(x, state)
                sparse_s += time.perf_counter() - t
                t = time.perf_counter()
                yd = g(x)
                dense_s += time.perf_counter() - t
                pairs.append((y, yd))
                flags.append(key)
        keys = sum(flags)
        exact, paper = method.macs_per_frame(state)
        dense = state.last.dense_macs_exact
        methods.append({
            "max_interval": interval, "options": {k: v for k, v in method.describe().items() if k != "tile"},
            "frames": len(xs), "key_frames": keys, "macs_per_frame_exact": exact, "macs_per_frame_paper": paper,
            "dense_macs_exact": dense, "mac_fraction": exact / dense, "speedup": dense_s / sparse_s,
            "psnr_teacher": mean_psnr(pairs),
            "psnr_teacher_nonkey": mean_psnr([p for p, k in zip(pairs, flags) if not k]),
        })  # fmt: skip
        m = methods[-1]
        print(f"  method max_interval {interval}: {keys} key frames, MACs/frame {m['mac_fraction']:.3f} of dense, "
              f"{m['speedup']:.2f}x, PSNR {m['psnr_teacher']:.1f} dB", flush=True)  # fmt: skip
    return {"settings": per_setting, "method": methods}


def measure_sige_shapes(args) -> dict:
    """SIGE's two CPU shapes, dense (frozen-statistics norm) against the sparse engine."""
    from fastv2v.generators.resnet import ResnetBlock, norm_layer
    from fastv2v.methods.sparse_engine import SparseRunner, run_frozen

    torch.manual_seed(0)
    c, h, w = args.sige_channels, args.sige_size[0], args.sige_size[1]
    shapes = {
        "conv": nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3)).eval(),
        "blocks": nn.Sequential(
            *[ResnetBlock(c, "reflect", norm_layer("instance"), False, True) for _ in range(6)]
        ).eval(),
    }
    x0 = torch.randn(1, c, h, w)
    out = {}
    for name, net in shapes.items():
        rows = []
        for frac, sige in zip(SIGE_FRACTIONS, SIGE_CONV if name == "conv" else SIGE_BLOCKS):
            m = torch.from_numpy(square_mask(h, w, frac, "scattered", seed=2, side=8))
            x1 = x0 + m.float() * 0.5
            fns, stats = {}, {}
            for setting, tile in (("sige", 4), ("sige", 8), ("exact", 8)):
                r = SparseRunner(net, tile=tile, **SETTINGS[setting])
                with torch.no_grad():
                    _, cache = r.key(x0)
                key = f"{setting}/tile{tile}"
                flip = {"i": 0, "stats": []}

                def sparse(r=r, cache=cache, flip=flip):  # the mask is given, as in SIGE's benchmark
                    flip["i"] ^= 1
                    x = x1 if flip["i"] else x0
                    flip["stats"].append(r.update(x, cache, r.schedule(x, cache, changed=m))[1])

                fns[key] = sparse
                stats[key] = flip
                if "dense" not in fns:
                    affines = cache.affines
                    fns["dense"] = lambda net=net, affines=affines: run_frozen(net, x1, affines)
            with torch.no_grad():
                times = interleaved({"dense": fns.pop("dense"), **fns}, args.reps)
            row = {
                "fraction": float(m.float().mean()), "target": frac, "sige_speedup": sige,
                "dense_ms": times["dense"] * 1e3,
            }  # fmt: skip
            for key, flip in stats.items():
                st = flip["stats"]
                row[key] = {
                    "speedup": times["dense"] / times[key], "ms": times[key] * 1e3,
                    "mac_fraction": _median([s.mac_fraction for s in st]),
                    "outside_conv_share": _median([(s.total_s - s.conv_s) / s.total_s for s in st]),
                    "gather_share": _median([s.gather_s / s.total_s for s in st]),
                }
            rows.append(row)
            print(f"  {name:6s} {row['fraction']:.3f}  SIGE {sige:5.2f}x  ours " + "  ".join(
                f"{k} {v['speedup']:.2f}x" for k, v in row.items() if isinstance(v, dict)
            ), flush=True)  # fmt: skip
        out[name] = rows
    return out


# ---------------------------------------------------------------------------------------------
# reports


def _db(v) -> str:
    return "exact" if v is None or v == math.inf else f"{v:.1f} dB"


def write_markdown(report: dict, path: Path) -> None:
    from fastv2v.metrics.profile import format_gmacs

    env = report["environment"]
    lines = [
        "# Sparse incremental inference: speed-up against changed area",
        "",
        f"Generated {report['date']} by `{report['command']}`.",
        f"Teacher: {report['teacher']} at {report['size'][0]}x{report['size'][1]}; "
        f"{env['threads']} thread(s), fp32, {env['cpu']}, torch {env['torch']}.",
        "",
        "Every ratio is dense / sparse wall-clock measured in the same process, interleaved "
        f"(median of {report['reps']} repetitions). " + report["caveat"],
        "",
        "## Exactness",
        "",
        f"- thresholds 0, no reach limit: max |sparse - dense with frozen statistics| = "
        f"{report['exactness']['max_abs_error_vs_dense_frozen']:.2e} "
        f"({100 * report['exactness']['changed_fraction']:.1f} % of the input changed)",
        f"- unchanged frame: {report['exactness']['unchanged_frame']['macs_exact']} MACs, "
        f"{report['exactness']['unchanged_frame']['ms']:.2f} ms, output identical: "
        f"{report['exactness']['unchanged_frame']['output_identical']}",
        "",
        "## Whole teacher against changed area (synthetic label edits)",
        "",
        "`exact`: no reach limit (equals the dense frozen-statistics pass); `default`: the `sparse` "
        "method's default (reach 16 px); `sige`: reach 0 (SIGE's semantics).",
        "",
        "| pattern | changed area | setting | MACs (of dense) | dense ms | sparse ms | speed-up | outside conv ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["curve"]["rows"]:
        lines.append(
            f"| {r['pattern']} | {100 * r['changed']:.1f} % | {r['setting']} | {r['mac_fraction']:.3f} | "
            f"{r['dense_ms']:.0f} | {r['sparse_ms']:.0f} | {r['speedup']:.2f}x | {r['outside_conv_ms']:.1f} |"
        )
    lines += [
        "",
        "Break-even (sparse time = dense time). Where none is reached, the sparse pass stays faster "
        "even with every layer active: each layer then runs as one whole-image convolution with the "
        "norm folded into it, which is cheaper than the teacher's convolution plus InstanceNorm. "
        "Tiling stops paying per layer, and `dense_above` handles that (see SIGE's shapes below).",
        "",
    ]
    for k, v in report["curve"]["break_even"].items():
        area = "n/a" if v["changed_area"] is None else f"{100 * v['changed_area']:.0f} % changed area"
        macs = "n/a" if v["mac_fraction"] is None else f"{v['mac_fraction']:.2f} of dense MACs"
        lines.append(f"- {k}: {area}, {macs}" + (f" ({v['note']})" if v["note"] else ""))
    clip = report["clip"]
    lines += [
        "",
        "## Real clip (fixed camera)",
        "",
        "Engine frame by frame after one key frame (no refresh), medians over the clip:",
        "",
        "| setting | changed input | MACs (of dense) | dense ms | sparse ms | speed-up | outside conv ms "
        "| min PSNR to dense frozen | PSNR to teacher, last frame |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for k, v in clip["settings"].items():
        lines.append(
            f"| {k} | {100 * v['changed']:.2f} % | {v['mac_fraction']:.3f} | {v['dense_ms']:.0f} | "
            f"{v['sparse_ms']:.0f} | {v['speedup']:.2f}x | {v['outside_conv_ms']:.1f} | "
            f"{_db(v['psnr_frozen_min'])} | {_db(v['psnr_teacher_last'])} |"
        )
    lines += [
        "",
        "The `sparse` method end to end (default options; key frames included in every number):",
        "",
        "| max interval | key frames | MACs per frame (of dense) | MACs per frame exact / paper | speed-up "
        "| PSNR to teacher | non-key PSNR |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in clip["method"]:
        lines.append(
            f"| {m['max_interval']} | {m['key_frames']}/{m['frames']} | {m['mac_fraction']:.3f} | "
            f"{format_gmacs(m['macs_per_frame_exact'])} / {format_gmacs(m['macs_per_frame_paper'])} | "
            f"{m['speedup']:.2f}x | "
            f"{_db(m['psnr_teacher'])} | {_db(m['psnr_teacher_nonkey'])} |"
        )
    lines += [
        "",
        "## SIGE's shapes (methods.md section 6)",
        "",
        f"Dense baseline: the same layers with frozen-statistics norm. SIGE's figures were measured with "
        f"2 threads on an idle machine (dense conv {SIGE_DENSE_MS['conv']} ms, "
        f"six blocks {SIGE_DENSE_MS['blocks']} ms); "
        "ours with the threads and load stated above, so compare speed-ups, not milliseconds.",
        "",
    ]
    for name, rows in report["sige"].items():
        keys = [k for k, v in rows[0].items() if isinstance(v, dict)]
        crossings = {k: _crossing([(r["fraction"], r[k]["speedup"]) for r in rows]) for k in keys}
        crossings["SIGE"] = _crossing([(r["fraction"], r["sige_speedup"]) for r in rows])
        lines += [
            f"**{'one 3x3 conv' if name == 'conv' else 'six residual blocks'}** "
            f"({report['sige_shape'][0]} channels at {report['sige_shape'][1]}x{report['sige_shape'][2]})",
            "",
            "| changed area | dense ms | SIGE | " + " | ".join(keys) + " |",
            "|---|---|---|" + "---|" * len(keys),
        ]
        for r in rows:
            lines.append(
                f"| {100 * r['fraction']:.1f} % | {r['dense_ms']:.1f} | {r['sige_speedup']:.2f}x | "
                + " | ".join(f"{r[k]['speedup']:.2f}x" for k in keys) + " |"
            )
        lines += [
            "",
            "Break-even (changed area where the speed-up falls through 1): "
            + ", ".join(f"{k} {'n/a' if v is None else f'{100 * v:.0f} %'}" for k, v in crossings.items()),
            "",
        ]
    lines += [
        "## Time outside the convolutions",
        "",
        "Gathers and scatters touch only active tiles (one `index_select` of whole channels-last rows "
        "per layer, one `index_put_` of the results); border refreshes copy only the border pixels; "
        "the input stage reads and writes only the changed pixels; one copy of the output per frame. "
        "No layer copies its full tensor (a layer above `dense_above` active tiles runs on its whole "
        "buffer instead). 'Outside' below is everything but the convolution calls: the window "
        "gathers (shown separately), the scatters, the masks, the epilogues and Python.",
        "",
    ]
    for name, rows in report["sige"].items():
        key = "sige/tile8"
        shares = ", ".join(
            f"{100 * r['fraction']:.0f} %: {100 * r[key]['outside_conv_share']:.0f} % "
            f"(gathers {100 * r[key]['gather_share']:.0f} %)"
            for r in rows
        )
        lines.append(f"- {name} ({key}), share of the sparse time outside the convolutions: {shares}")
    for k, v in clip["settings"].items():
        lines.append(
            f"- real clip, {k}: of {v['sparse_ms']:.0f} ms per frame, {v['conv_ms']:.0f} ms in convolutions, "
            f"{v['gather_ms']:.0f} ms gathering their windows, {v['outside_conv_ms'] - v['gather_ms']:.0f} ms "
            "in everything else"
        )
    path.write_text("\n".join(lines) + "\n")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    ax = axes[0]
    colors = {"exact": "tab:blue", "default": "tab:green", "sige": "tab:orange"}
    for setting in SETTINGS:
        for pattern, style in (("scattered", "-o"), ("compact", "--s")):
            sel = [r for r in report["curve"]["rows"] if r["setting"] == setting and r["pattern"] == pattern]
            ax.plot([100 * r["changed"] for r in sel], [r["speedup"] for r in sel], style, color=colors[setting],
                    label=f"{setting}, {pattern}", markersize=4)  # fmt: skip
        v = report["clip"]["settings"][setting]
        ax.plot([100 * v["changed"]], [v["speedup"]], "*", color=colors[setting], markersize=14,
                label=f"{setting}, real clip")  # fmt: skip
    ax.axhline(1, color="k", lw=0.8)
    ax.axhline(3, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("changed input area (%)")
    ax.set_ylabel("speed-up over the dense teacher (wall-clock)")
    h, w = report["size"]
    ax.set_title(f"whole teacher, {h}x{w}, {report['environment']['threads']} thread(s)")
    ax.legend(fontsize=7)
    ax = axes[1]
    for name, marker in (("conv", "o"), ("blocks", "s")):
        rows = report["sige"][name]
        xs = [100 * r["fraction"] for r in rows]
        ax.plot(xs, [r["sige_speedup"] for r in rows], "--" + marker, color="grey", label=f"SIGE kernels, {name}")
        for key, style, color in (("sige/tile4", "-", "tab:orange"), ("sige/tile8", ":", "tab:red")):
            label = f"ours (reach 0, tile {key[-1]}), {name}"
            ax.plot(xs, [r[key]["speedup"] for r in rows], style + marker, color=color, label=label)
    ax.axhline(1, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("changed area (%)")
    ax.set_ylabel("speed-up over dense")
    ax.set_title("SIGE's shapes: 3x3 conv and six residual blocks, 256 ch at 64x128")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _clean(o):
    """JSON-safe: non-finite floats become null (the Markdown keeps inf for exact frames)."""
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--teacher", type=Path, default=None, help="scenes teacher file (default: the shipped one, else random init)"
    )
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--ngf", type=int, default=32, help="width of the random-init teacher when no file is given")
    p.add_argument("--frames", type=int, default=30, help="frames of the real clip after its key frame")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=5, help="interleaved timing repetitions (median)")
    p.add_argument("--intervals", default="5,10,30", help="max intervals for the end-to-end method runs")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--quick", action="store_true", help="tiny sizes, checks that the script runs")
    p.add_argument("--report-only", action="store_true", help="rewrite the .md and .png from the .json in --out")
    args = p.parse_args(argv)
    stem = args.out / "sparse_curve"
    if args.report_only:
        report = json.loads(stem.with_suffix(".json").read_text())
        write_markdown(report, stem.with_suffix(".md"))
        plot(report, stem.with_suffix(".png"))
        print(f"wrote {stem}.md, .png")
        return 0
    args.fractions = FRACTIONS
    args.sige_channels, args.sige_size = 256, (64, 128)
    args.intervals = [int(i) for i in args.intervals.split(",")]
    if args.quick:
        args.height, args.width, args.ngf, args.frames, args.reps = 64, 128, 8, 4, 1
        args.fractions, args.sige_channels, args.sige_size, args.intervals = (0.05, 0.3), 16, (16, 32), [3]
    torch.set_num_threads(args.threads)
    g, source, labels = teacher_and_clip(args)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/sparse_curve.py", *(argv if argv is not None else sys.argv[1:])]),
        "teacher": source,
        "size": [args.height, args.width],
        "reps": args.reps,
        "environment": {
            "threads": args.threads, "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__, "load_average_at_start": load,
        },  # fmt: skip
        "caveat": (
            f"The machine's load average was {load:.1f} on {os.cpu_count()} cores at the start of this run; "
            "with other processes competing, absolute times are inflated and noisy, but dense and sparse "
            "were measured interleaved, so their ratios stand."
            if load is not None
            else ""
        ),
    }
    print("exactness", flush=True)
    report["exactness"] = measure_exactness(g, labels)
    print("curve", flush=True)
    report["curve"] = measure_curve(g, labels, args)
    print("real clip", flush=True)
    report["clip"] = measure_clip(g, labels, args)
    print("SIGE shapes", flush=True)
    report["sige"] = measure_sige_shapes(args)
    report["sige_shape"] = [args.sige_channels, *args.sige_size]
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = stem.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_clean(report), indent=1))
    tmp.replace(stem.with_suffix(".json"))
    write_markdown(report, stem.with_suffix(".md"))
    plot(report, stem.with_suffix(".png"))
    print(f"wrote {stem}.json, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
