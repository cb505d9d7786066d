"""``fastv2v export``: ONNX graphs of what a pipeline runs per frame, plus ``manifest.json``.

A runtime without PyTorch (onnxruntime, TensorRT, a browser) needs the graphs *and* the
schedule that ties them together, so both are written: ``teacher.onnx`` always; for a
Shortcut-V2V file ``shortcut_key.onnx`` (``x -> y`` plus the cached reference as explicit
outputs) and ``shortcut_step.onnx`` (``x`` plus that reference -> ``y``): state in, state out,
as TSM's online demo does, because a graph cannot keep state between calls; for a student
file ``student.onnx``. Every file is written atomically (:mod:`fastv2v.atomic`).

The Shortcut block's PyTorch code is a CPU-tuned formulation (``embedding_bag`` gathers,
chunked in-place products) that does not export; the step graph is the same function written
with standard ops (GridSample for the deformable taps, opset >= 16), and the tests compare it
with ``non_key_frame(x, reference, gate=False)``. The reuse gate (``reuse_below``) is a
data-dependent branch, so it stays out of the graph: the step also outputs its ``drift`` and
the manifest tells a runtime to show the key frame's ``y`` when ``drift < reuse_below``.

onnx and onnxruntime are an optional extra (``pip install "fastv2v[onnx]"``), imported lazily.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastv2v.atomic import atomic_path, check_output_folder
from fastv2v.errors import UserError
from fastv2v.methods.schedules import drift_tensor

FORMAT_VERSION = 1
_RANGE = [-1.0, 1.0]


def require_onnx() -> Any:
    """The ``onnx`` module, or one sentence saying how to install the extra."""
    try:
        import onnx
        import onnxruntime  # noqa: F401  (the extra installs both; the manifest is checked with it)
    except ImportError:
        raise UserError('ONNX export needs the onnx extra; install it with pip install "fastv2v[onnx]".') from None
    return onnx


# --- the Shortcut-V2V graphs ------------------------------------------------------------------


def _sample(x: torch.Tensor, py: torch.Tensor, px: torch.Tensor) -> torch.Tensor:
    """``x`` at pixel positions ``(py, px)`` (``N x Ho x Wo``), bilinear, zero outside: what
    :func:`~fastv2v.methods.shortcut.deform.flow_sample` computes, as one ONNX GridSample."""
    h, w = x.shape[-2], x.shape[-1]
    grid = torch.stack([px * (2.0 / (w - 1)) - 1, py * (2.0 / (h - 1)) - 1], dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def _ramp(n: Any, like: torch.Tensor) -> torch.Tensor:
    return torch.arange(n, dtype=like.dtype, device=like.device)


class _Folded(nn.Module):
    """A HetConv's weights folded once, outside the graph (``folded`` itself uses index writes)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        w3, w1, b = (t.detach().clone() for t in layer.folded())
        self.register_buffer("w3", w3)
        self.register_buffer("w1", w1)
        self.register_buffer("b", b)
        self.groups = layer.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(F.conv2d(x, self.w1, self.b) + F.conv2d(x, self.w3, padding=1, groups=self.groups))


class ShortcutKey(nn.Module):
    """Key frame: the teacher, plus the reference the step needs (``global_ref``: the ``a_ref``
    half of the first global HetConv; ``ref_maps``: the half-resolution, conv-ed
    ``[cr2(a_ref), cr1(f_ref)]`` on [-1, H/2] x [-1, W/2]; ``a_ref`` for the reuse gate;
    ``f_ref`` when the block has ``reference_skip``): ``ShortcutBlock.prepare_reference``."""

    def __init__(self, teacher: nn.Module, block: nn.Module):
        super().__init__()
        self.teacher, self.block = teacher, block
        w3, w1, b = (t.detach().clone() for t in block.offset_generator_global.hetconvs()[0].folded())
        c, half = block.feature_channels, block.hidden // 2
        self.register_buffer("w1", w1[:, c:])
        self.register_buffer("b", b)
        self.register_buffer("w3", w3[half:])
        self.half, self.groups = half, block.groups // 2

    def forward(self, x: torch.Tensor):
        t, blk = self.teacher, self.block
        a = t.head(x)
        f = t.body(a)
        y = t.tail(f)
        weight = blk.global_deform_conv.regular_conv.weight
        maps = [F.conv2d(F.avg_pool2d(m, 2), weight, padding=2) for m in (blk.cr2(a), blk.cr1(f))]
        d = F.avg_pool2d(a, 2)
        g = F.conv2d(d, self.w1, self.b)
        g = torch.cat([g[:, : self.half], g[:, self.half :] + F.conv2d(d, self.w3, padding=1, groups=self.groups)], 1)
        out = (y, g, torch.cat(maps, 1), a)
        return out + (f,) if blk.reference_skip else out


class ShortcutStep(nn.Module):
    """Non-key frame: ``tail(block.predict(head(x), reference))`` from :class:`ShortcutKey`'s
    reference, plus ``drift`` (:func:`~fastv2v.methods.schedules.drift_score`) for the gate."""

    def __init__(self, teacher: nn.Module, block: nn.Module):
        super().__init__()
        self.teacher, self.block = teacher, block
        g = block.offset_generator_global.hetconvs()
        w3, w1, _ = (t.detach().clone() for t in g[0].folded())
        c, self.half, self.groups = block.feature_channels, block.hidden // 2, block.groups // 2
        self.register_buffer("g_w1", w1[:, :c])
        self.register_buffer("g_w3", w3[: self.half])
        self.global_layers = nn.ModuleList(_Folded(layer) for layer in g[1:])
        self.local_layers = nn.ModuleList(_Folded(layer) for layer in block.offset_generator_local.hetconvs())
        w = block.mask_deform_conv.regular_conv.weight.detach()
        self.register_buffer("adabd", w.reshape(w.shape[0], -1, 1, 1).clone())  # taps row-major, channel-major

    def forward(self, x: torch.Tensor, global_ref: torch.Tensor, ref_maps: torch.Tensor, a_ref: torch.Tensor,
                f_ref: torch.Tensor | None = None):  # fmt: skip
        t, blk = self.teacher, self.block
        a = t.head(x)
        drift = drift_tensor(a, a_ref)
        # coarse alignment at half resolution (bilinear x1/2 of even sides == 2x2 average)
        d = F.avg_pool2d(a, 2)
        g = F.conv2d(d, self.g_w1) + global_ref
        g = F.relu(torch.cat([g[:, : self.half] + F.conv2d(d, self.g_w3, padding=1, groups=self.groups),
                              g[:, self.half :]], 1))  # fmt: skip
        for layer in self.global_layers:
            g = layer(g)
        offset = blk.offset_generator_global.head(g)  # N x 2 x H/2 x W/2, (dy, dx)
        h2, w2 = offset.shape[-2], offset.shape[-1]
        # conv-then-warp: the cached maps start one pixel before the features (origin 1)
        warped = _sample(ref_maps, offset[:, 0] + 1 + _ramp(h2, offset)[:, None], offset[:, 1] + 1 + _ramp(w2, offset))
        up = F.interpolate(warped, scale_factor=2.0, mode="bilinear", align_corners=False)
        hid = blk.hidden
        a_al, f_al = up[:, :hid], up[:, hid:]
        # fine offsets and the AdaBD mask
        cr_t = blk.cr2(a)
        l = torch.cat([cr_t, a_al], 1)
        for layer in self.local_layers:
            l = layer(l)
        om = blk.offset_generator_local.head(l)
        h, w = om.shape[-2], om.shape[-1]
        off = om[:, :18].unflatten(1, (9, 2))  # N x 9 taps x (dy, dx) x H x W
        mask = torch.sigmoid(om[:, 18:27]).unsqueeze(1)  # N x 1 x 9 x H x W
        ky = torch.tensor([k // 3 - 1 for k in range(9)], dtype=om.dtype)[:, None, None]
        kx = torch.tensor([k % 3 - 1 for k in range(9)], dtype=om.dtype)[:, None, None]
        py = off[:, :, 0] + _ramp(h, om)[:, None] + ky  # N x 9 x H x W
        px = off[:, :, 1] + _ramp(w, om) + kx
        ref = _sample(f_al, py.flatten(1, 2), px.flatten(1, 2)).unflatten(2, (9, -1))  # N x hid x 9 x H x W
        pad = F.pad(cr_t, (1, 1, 1, 1))
        new = torch.stack([pad[:, :, i : i + h, j : j + w] for i in range(3) for j in range(3)], 2)
        cols = (mask * new + (1 - mask) * ref).flatten(1, 2)  # channel-major, tap-minor: the weight's order
        f_hat = blk.recon_ref(F.conv2d(cols, self.adabd))
        if f_ref is not None:  # reference_skip: the key frame's body features, warped by the coarse offset
            flow = 2 * F.interpolate(offset, scale_factor=2.0, mode="bilinear", align_corners=False)
            f_hat = f_hat + _sample(f_ref, flow[:, 0] + _ramp(h, om)[:, None], flow[:, 1] + _ramp(w, om))
        return t.tail(f_hat), drift


# --- exporting ---------------------------------------------------------------------------------


def _io(names: list[str], shapes: list[tuple[int, ...]], dynamic: dict[str, dict[int, str]]) -> list[dict]:
    return [{"name": n, "shape": [dynamic.get(n, {}).get(i, int(s)) for i, s in enumerate(shape)]}
            for n, shape in zip(names, shapes)]  # fmt: skip


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
            dynamic: dict[str, dict[int, str]], opset: int, part: str) -> dict:  # fmt: skip
    """Export one graph atomically; any exporter failure becomes one sentence naming ``part``."""
    with torch.no_grad():
        results = module(*args)
    results = results if isinstance(results, tuple) else (results,)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, args, str(tmp), dynamo=False, opset_version=opset, input_names=inputs,
                              output_names=outputs, dynamic_axes=dynamic, do_constant_folding=True)  # fmt: skip
        except Exception as exc:  # the exporter raises many types; all mean "this part cannot export"
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"the {part} cannot be exported to ONNX opset {opset}: {reason}") from None
    return {"file": path.name, "inputs": _io(inputs, [a.shape for a in args], dynamic),
            "outputs": _io(outputs, [r.shape for r in results], dynamic)}  # fmt: skip


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _trace_size(size: tuple[int, int] | None, multiple: int) -> tuple[int, int]:
    """The example frame size the graphs are traced at (their height and width stay dynamic)."""
    if size is None:
        side = -(-64 // multiple) * multiple
        return side, side
    h, w = size
    if h % multiple or w % multiple or h <= 0 or w <= 0:
        raise UserError(f"--size {h}x{w} does not fit this model, which needs sides that are multiples of {multiple}; "
                        f"pass e.g. --size {max(h // multiple, 1) * multiple}x{max(w // multiple, 1) * multiple}.")  # fmt: skip
    return h, w


def export_onnx(path_or_pipeline: Any, out_dir: str | os.PathLike, *, size: tuple[int, int] | None = None,
                opset: int = 17) -> Path:  # fmt: skip
    """Write the pipeline's ONNX graphs and ``manifest.json`` into ``out_dir``; returns the
    manifest's path. ``path_or_pipeline``: a model file or a :class:`~fastv2v.pipeline.Pipeline`;
    ``size``: the (H, W) frame size to trace at (default 64x64, rounded up to what the model
    needs); the graphs' height and width stay dynamic."""
    from fastv2v.generators.base import SplitGenerator
    from fastv2v.pipeline import Pipeline

    onnx = require_onnx()
    if isinstance(path_or_pipeline, Pipeline):
        pipeline = path_or_pipeline
    else:
        pipeline = Pipeline.from_file(path_or_pipeline)
    teacher = pipeline.teacher
    if not isinstance(teacher, SplitGenerator):
        raise UserError(f"{pipeline.label} is a sequential (vid2vid) generator, whose frames depend on its own "
                        "previous outputs; ONNX export takes per-frame generators only for now.")  # fmt: skip
    kind = pipeline.kind
    teacher = teacher.cpu().eval()
    multiple = int(teacher.size_multiple)
    block = getattr(pipeline.model, "block", None) if kind == "shortcut" else None
    student = getattr(pipeline.model, "student", None) if kind == "student" else None
    if student is not None and hasattr(pipeline.method, "run"):  # spatial / fast: the sub-network they run
        student = pipeline.method.run.student
    if block is not None and opset < 16:
        raise UserError(f"the Shortcut block's deformable sampling needs ONNX GridSample (opset 16 or newer), "
                        f"not opset {opset}; pass --opset 17.")  # fmt: skip
    if block is not None:  # the block needs even feature sides: twice the head's stride
        with torch.no_grad():
            probe = teacher.head(torch.zeros(1, teacher.input_nc, 4 * multiple, 4 * multiple))
        multiple = max(multiple, 2 * (4 * multiple // probe.shape[-2]))
    if student is not None:
        multiple = max(multiple, int(student.size_multiple))  # on the full-size input
    h, w = _trace_size(size, multiple)
    out = Path(out_dir)
    check_output_folder(out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    x = torch.rand(1, teacher.input_nc, h, w) * 2 - 1
    frame = {"x": {2: "height", 3: "width"}, "y": {2: "height", 3: "width"}}
    graphs: dict[str, dict] = {}
    graphs["teacher"] = _export(teacher, (x,), out / "teacher.onnx", ["x"], ["y"], frame, opset, "teacher generator")
    graphs["teacher"]["runs"] = "every frame of method teacher; the reference the others are judged against"
    notes: list[str] = []
    if block is not None:
        block = block.cpu().eval()
        key, step = ShortcutKey(teacher, block).eval(), ShortcutStep(teacher, block).eval()
        state = ["global_ref", "ref_maps", "a_ref"] + (["f_ref"] if block.reference_skip else [])
        with torch.no_grad():
            reference = key(x)[1:]
        dyn = dict(frame)
        for name, tensor in zip(state, reference):  # e.g. ref_maps: height/8 + 2 (a border for the warp)
            border = 2 if name == "ref_maps" else 0
            stride, extra = h // (tensor.shape[-2] - border), f" + {border}" if border else ""
            dyn[name] = {2: f"height/{stride}{extra}", 3: f"width/{stride}{extra}"}
        graphs["shortcut_key"] = _export(key, (x,), out / "shortcut_key.onnx", ["x"], ["y"] + state, dyn, opset,
                                         "Shortcut-V2V key frame (teacher + reference)")  # fmt: skip
        graphs["shortcut_key"]["runs"] = "key frames: the teacher's output plus the state the step needs"
        graphs["shortcut_step"] = _export(step, (x, *reference), out / "shortcut_step.onnx", ["x"] + state,
                                          ["y", "drift"], dyn, opset, "Shortcut-V2V block (non-key frame)")  # fmt: skip
        graphs["shortcut_step"]["runs"] = "non-key frames: takes the last key frame's state outputs by name"
    if student is not None and getattr(student, "temporal_shift", 0.0):
        graphs.update(_shifted_student_graphs(student.cpu().eval(), x, out, frame, opset))
    elif student is not None:
        student = student.cpu().eval()
        graphs["student"] = _export(student, (x,), out / "student.onnx", ["x"], ["y"], frame, opset,
                                    "spatial student")  # fmt: skip
        graphs["student"]["runs"] = "every frame (spatial) or key frames (fast); it shrinks the input inside"
        if pipeline.name != "spatial":
            notes.append(f"method {pipeline.name} fills the frames between key frames by optical-flow "
                         "interpolation (fastv2v.methods.interpolate), which is not exported")  # fmt: skip
    for graph in graphs.values():
        graph["size_multiple"] = multiple if graph["file"] != "teacher.onnx" else int(teacher.size_multiple)
        onnx.checker.check_model(str(out / graph["file"]))
    manifest = _manifest(pipeline, teacher, graphs, opset, (h, w), notes)
    path = out / "manifest.json"
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


class StudentFirst(nn.Module):
    """A temporally shifted student's first frame: ``x -> (y, present...)`` (no previous frame)."""

    def __init__(self, student: nn.Module):
        super().__init__()
        self.student = student

    def forward(self, x: torch.Tensor):
        from fastv2v.generators.elastic import run_layers

        out = run_layers(self.student, x, divisor=self.student.scale)
        return (out.y, *out.present)


class StudentNext(StudentFirst):
    """Every later frame: ``(x, past...) -> (y, present...)``, the last call's ``present`` as ``past``."""

    def forward(self, x: torch.Tensor, *past: torch.Tensor):
        from fastv2v.generators.elastic import run_layers

        out = run_layers(self.student, x, divisor=self.student.scale, past=past)
        return (out.y, *out.present)


def _shifted_student_graphs(student: nn.Module, x: torch.Tensor, out: Path, frame: dict, opset: int) -> dict:
    """``student_first.onnx`` and ``student_next.onnx``: the shift's memory of the last frame as
    explicit outputs and inputs (state in, state out, as TSM's online demo)."""
    first, after = StudentFirst(student).eval(), StudentNext(student).eval()
    with torch.no_grad():
        present = first(x)[1:]
    past_names = [f"past{i}" for i in range(len(present))]
    present_names = [f"present{i}" for i in range(len(present))]
    dyn = dict(frame)
    for name, tensor in zip(past_names + present_names, list(present) * 2):
        stride = x.shape[-2] // tensor.shape[-2]
        dyn[name] = {2: f"height/{stride}", 3: f"width/{stride}"}
    graphs = {
        "student_first": _export(first, (x,), out / "student_first.onnx", ["x"], ["y"] + present_names, dyn, opset,
                                 "temporally shifted student (first frame)"),
        "student_next": _export(after, (x, *present), out / "student_next.onnx", ["x"] + past_names,
                                ["y"] + present_names, dyn, opset, "temporally shifted student (next frames)"),
    }  # fmt: skip
    graphs["student_first"]["runs"] = "the student's first frame of a video: y plus the shift's state"
    graphs["student_next"]["runs"] = "each later student frame: feed the last call's present<i> as past<i>"
    return graphs


def _manifest(pipeline: Any, teacher: Any, graphs: dict, opset: int, traced: tuple[int, int], notes: list) -> dict:
    import onnx

    settings = dict(pipeline.method.settings())
    interval = settings.get("interval")
    schedule: dict[str, Any] = {"interval": interval, "latency": pipeline.latency}
    if "shortcut_key" in graphs:
        schedule.update(
            first_frame="shortcut_key",
            key="shortcut_key" if interval != "auto" else "shortcut_key when the adaptive schedule says so "
            "(fastv2v.methods.schedules.AdaptiveInterval on the step's drift)",
            non_key="shortcut_step",
            rule="frame i is a key frame when i % interval == 0" if interval != "auto" else "adaptive",
            reuse_below=float(settings.get("reuse_below", 0.0)),
            reuse_gate="not in the graph (a data-dependent branch): when reuse_below > 0 and a step's drift < "
            "reuse_below, show the last key frame's y instead of the step's y",
        )  # fmt: skip
    elif "student_first" in graphs:
        schedule.update(first_frame="student_first", key="student_next", state="present<i> of one student call is "
                        "past<i> of the next (the temporal shift's memory of the last student frame)",
                        rule="every frame" if pipeline.name == "spatial" else "key frames by the method's schedule "
                        "(keyframes setting)")  # fmt: skip
    elif "student" in graphs:
        schedule.update(key="student", rule="every frame" if pipeline.name == "spatial" else "key frames by the "
                        "method's schedule (keyframes setting)")  # fmt: skip
    else:
        schedule.update(key="teacher", rule="every frame")
    path = pipeline.path
    return {
        "format": "fastv2v-onnx",
        "format_version": FORMAT_VERSION,
        "model": {"file": path.name if path else None, "sha256": _sha256(path) if path else None,
                  "kind": pipeline.kind},  # fmt: skip
        "method": {"name": pipeline.name, "settings": settings},
        "schedule": schedule,
        "input": {
            "encoding": teacher.input_kind,
            "input_nc": int(teacher.input_nc),
            "label_nc": int(teacher.label_nc),
            "use_instance": bool(getattr(teacher, "use_instance", False)),
            "layout": "N x C x H x W float32, N = 1",
            "range": _RANGE if teacher.label_nc == 0 else [0.0, 1.0],
            "value": "(pixel / 255 - 0.5) / 0.5, RGB" if teacher.label_nc == 0 else "one-hot label channels"
            + (" plus the instance-boundary channel" if getattr(teacher, "use_instance", False) else ""),
        },
        "output": {"output_nc": int(teacher.output_nc), "range": _RANGE, "value": "pixel = (y + 1) / 2 * 255"},
        "graphs": graphs,
        "size": {"traced": list(traced), "note": "height and width are dynamic; each graph's sides must be "
                 "multiples of its size_multiple"},  # fmt: skip
        "not_exported": notes,
        "opset": opset,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
    }
