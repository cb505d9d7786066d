"""``--backend onnxruntime|openvino``: run a pipeline's per-frame models as exported graphs.

The pipeline stays the same object the torch backend runs (schedules, interpolation, the reuse
gate, encoding and decoding are unchanged); only the models a frame calls are swapped for their
graphs from :mod:`fastv2v.export`: the teacher (``teacher.onnx``; key frames of ``repeat``,
``interp`` and ``minterpolate`` and every frame of ``teacher``), Shortcut-V2V's key frame and step
(``shortcut_key.onnx`` / ``shortcut_step.onnx``, the cached reference passed in and out as
tensors) and the student (``student.onnx``). Methods that run the teacher's layers one by one
(``sparse``, ``reuse``) or a sequential vid2vid teacher stay on ``--backend torch``: said in one
sentence.

Graphs come from ``--graphs DIR`` (what ``fastv2v export`` wrote; checked against the model
file's SHA-256, so graphs of another model are refused) or are exported on first use into a
cache (``$FASTV2V_CACHE``, default ``~/.cache/fastv2v``), keyed by that hash.

Each runtime uses the same thread count as torch (``torch.get_num_threads()`` unless given), so
a benchmark compares runtimes, not thread pools. Precision: onnxruntime runs the fp32 graphs (on
the CPU it has no bf16 kernels for these ops); OpenVINO takes an inference-precision hint
(``bf16`` where the CPU computes it natively; elsewhere it would silently run fp32, so asking is
refused with one sentence).
"""

from __future__ import annotations

import atexit
import copy
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastv2v.errors import UserError

BACKENDS = ("torch", "onnxruntime", "openvino")
_EXTRA = {"onnxruntime": "onnx", "openvino": "openvino"}
#: methods whose per-frame models are all exported graphs
ON_GRAPHS = ("teacher", "repeat", "interp", "minterpolate", "shortcut", "shortcut_auto", "spatial", "fast")


def check_backend(backend: str) -> str:
    """The backend name, or one sentence listing them; its runtime imported (or how to install it)."""
    if backend not in BACKENDS:
        raise UserError(f"--backend takes {', '.join(BACKENDS)}, not {backend!r}.")
    if backend == "torch":
        return backend
    try:
        if backend == "onnxruntime":
            import onnxruntime  # noqa: F401
        else:
            import openvino  # noqa: F401
    except ImportError:
        raise UserError(f'--backend {backend} needs the {_EXTRA[backend]} extra; install it with '
                        f'pip install "fastv2v[{_EXTRA[backend]}]".') from None  # fmt: skip
    from fastv2v.export import require_onnx

    require_onnx()  # graphs are exported with the onnx package
    return backend


# --- one graph on one runtime -------------------------------------------------------------------


class Graph:
    """One exported graph compiled for a runtime: ``graph(x=..., a_ref=...)`` takes torch tensors
    by input name and returns the outputs as torch tensors in the graph's output order (fresh
    memory: a key frame's state outlives later calls)."""

    def __init__(self, path: Path, backend: str, *, threads: int, dtype: str = "fp32", device: str = "cpu"):
        self.path, self.backend, self.threads, self.dtype, self.device = path, backend, threads, dtype, device
        if backend == "onnxruntime":
            self._session = _ort_session(path, threads, dtype, device)
            self.inputs = [i.name for i in self._session.get_inputs()]
            self.outputs = [o.name for o in self._session.get_outputs()]
        else:
            import openvino as ov

            self._core = ov.Core()
            self._model = self._core.read_model(str(path))
            self.inputs = [p.get_any_name() for p in self._model.inputs]
            self.outputs = [p.get_any_name() for p in self._model.outputs]
            self._compiled: dict[tuple, Any] = {}  # one static-shape compilation per input shape

    def __call__(self, **feeds: torch.Tensor) -> tuple[torch.Tensor, ...]:
        like = next(iter(feeds.values()))
        arrays = {k: v.detach().to("cpu", torch.float32).contiguous().numpy() for k, v in feeds.items()}
        if self.backend == "onnxruntime":
            results = self._session.run(None, arrays)
        else:
            request = self._request(arrays)
            request.infer(arrays)
            results = [np.array(request.get_output_tensor(i).data, copy=True) for i in range(len(self.outputs))]
        return tuple(torch.from_numpy(np.ascontiguousarray(r)).to(like.device) for r in results)

    def _request(self, arrays: dict[str, np.ndarray]) -> Any:
        """OpenVINO: the graph reshaped to these inputs' static shapes and compiled once (static
        shapes let it pick its fastest kernels)."""
        shapes = tuple((k, a.shape) for k, a in sorted(arrays.items()))
        if shapes not in self._compiled:
            model = self._model.clone()
            model.reshape({k: list(s) for k, s in shapes})
            config = {"INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": "LATENCY",
                      "INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}[self.dtype]}  # fmt: skip
            compiled = self._core.compile_model(model, "CPU", config)
            self._compiled[shapes] = compiled.create_infer_request()
        return self._compiled[shapes]


def _ort_session(path: Path, threads: int, dtype: str, device: str) -> Any:
    import onnxruntime as ort

    if dtype != "fp32":
        raise UserError(f"--backend onnxruntime runs the exported fp32 graphs; --dtype {dtype} is not available "
                        "there (use --dtype fp32, or --backend openvino for bf16).")  # fmt: skip
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        have = ort.get_available_providers()
        providers = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in have] + providers
        if len(providers) == 1:
            raise UserError("--device cuda with --backend onnxruntime needs onnxruntime-gpu (its CUDA provider); "
                            "install it with pip install onnxruntime-gpu, or use --backend torch.")  # fmt: skip
    return ort.InferenceSession(str(path), options, providers=providers)


# --- where the graphs come from -----------------------------------------------------------------


def cache_root() -> Path:
    return Path(os.environ.get("FASTV2V_CACHE") or Path.home() / ".cache" / "fastv2v")


def graph_folder(pipeline: Any, graphs: str | os.PathLike | None = None) -> Path:
    """The folder holding ``pipeline``'s graphs: ``graphs`` (checked to be exported from the same
    model file) or the cache entry for the model file's SHA-256, exported there on first use; a
    model built in memory is exported into a temporary folder for this process."""
    from fastv2v.export import FORMAT_VERSION, _sha256, export_onnx

    digest = _sha256(pipeline.path) if pipeline.path is not None else None
    if graphs is not None:
        folder = Path(graphs)
        manifest = _read_manifest(folder)
        made_from = manifest.get("model", {})
        if digest is not None and made_from.get("sha256") != digest:
            raise UserError(f"{folder} holds graphs exported from {made_from.get('file') or 'another model'}, not from "
                            f"{pipeline.path.name} (their SHA-256 differs); export this model with fastv2v export "
                            f"--model {pipeline.path} --out DIR, or drop --graphs to export into the cache.")  # fmt: skip
        theirs = manifest.get("method", {}).get("settings", {}).get("subnet")
        if theirs != pipeline.settings.get("subnet"):
            raise UserError(f"{folder} holds the graphs of sub-network {theirs}, not {pipeline.settings.get('subnet')}; "
                            "export again with fastv2v export --subnet, or drop --graphs.")  # fmt: skip
        return folder
    if digest is None:
        folder = Path(tempfile.mkdtemp(prefix="fastv2v-graphs-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        export_onnx(pipeline, folder)
        return folder
    subnet = pipeline.settings.get("subnet")  # an elastic student's graphs are those of one sub-network
    part = f"-{subnet.replace('/', 'd')}" if subnet else ""
    folder = cache_root() / "graphs" / f"{digest[:24]}{part}-v{FORMAT_VERSION}"
    if not _complete(folder):  # absent, or an export cut short
        print(f"fastv2v: exporting {pipeline.path.name} to ONNX once (cached in {folder})", file=sys.stderr, flush=True)
        export_onnx(pipeline, folder)
    return folder


def _read_manifest(folder: Path) -> dict:
    path = folder / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"--graphs {folder} has no manifest.json; give the folder fastv2v export --out wrote.") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} cannot be read ({exc}); export the model again with fastv2v export.") from None
    if manifest.get("format") != "fastv2v-onnx":
        raise UserError(f"{path} is not a fastv2v export manifest; give the folder fastv2v export --out wrote.")
    return manifest


def _complete(folder: Path) -> bool:
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return all((folder / g["file"]).exists() for g in manifest.get("graphs", {}).values())


# --- the pipeline on a backend ------------------------------------------------------------------


class GraphTeacher:
    """The teacher as a graph for the calls methods make on whole frames (``teacher(x)``); every
    other attribute (encoding, sizes, input kind) is the torch teacher's."""

    def __init__(self, teacher: Any, graph: Graph):
        self._teacher, self._graph = teacher, graph

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._graph(x=x)[0]

    def __getattr__(self, name: str) -> Any:
        if name in ("head", "body", "tail", "model"):
            raise AttributeError(f"the {self._graph.backend} teacher graph runs whole frames only (no {name})")
        return getattr(self._teacher, name)


class GraphStudent:
    """The spatial student's graph in place of :class:`~fastv2v.methods.student.StudentRunner`
    (a student without the temporal shift: :func:`check_runs_on` refuses the others)."""

    shifts = False

    def __init__(self, graph: Graph, kernels: str):
        self._graph, self.kernels = graph, kernels

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._graph(x=x)[0]

    def step(self, x: torch.Tensor, past: tuple = ()) -> tuple[torch.Tensor, tuple]:
        return self(x), ()


def check_runs_on(pipeline: Any, backend: str) -> None:
    """Refuse, in one sentence, a pipeline that graph ``backend`` cannot run: a sequential
    (vid2vid) teacher, or a method outside :data:`ON_GRAPHS`. Before anything is exported or timed."""
    from fastv2v.pipeline import is_sequential

    if backend == "torch":
        return
    if is_sequential(pipeline.teacher):
        raise UserError(f"{pipeline.label} is a vid2vid (sequential) generator; it runs on --backend torch only.")
    if pipeline.name not in ON_GRAPHS:
        raise UserError(f"--method {pipeline.name} runs the teacher's layers one by one and stays on --backend torch; "
                        f"the graph backends run {', '.join(ON_GRAPHS)}.")  # fmt: skip
    run = getattr(pipeline.method, "run", None)
    if getattr(run, "shifts", False):
        raise UserError(f"{pipeline.label}'s student has the temporal shift, whose state the graph backends do not "
                        "carry yet; use --backend torch (fastv2v export writes its first/next graphs for your own "
                        "runtime).")  # fmt: skip


def on_backend(pipeline: Any, backend: str, *, dtype: str = "fp32", threads: int | None = None,
               device: str = "cpu", graphs: str | os.PathLike | None = None) -> Any:  # fmt: skip
    """``pipeline`` with its per-frame models running as graphs on ``backend`` (``torch``: the
    pipeline itself). ``dtype``: the runtime's compute precision; ``threads``: its thread count
    (default: torch's); ``graphs``: an export folder (default: the cache)."""
    from fastv2v.pipeline import Pipeline

    backend = check_backend(backend)
    if backend == "torch":
        return pipeline
    check_runs_on(pipeline, backend)
    if dtype not in ("fp32", "bf16", "fp16"):
        raise UserError(f"unknown --dtype {dtype!r}; use fp32, bf16 or fp16.")
    if backend == "openvino" and dtype != "fp32":
        _check_openvino_precision(dtype, device)
    folder = graph_folder(pipeline, graphs)
    manifest = _read_manifest(folder)
    threads = int(threads or torch.get_num_threads())

    def graph(name: str) -> Graph:
        entry = manifest.get("graphs", {}).get(name)
        if entry is None:
            raise UserError(f"{folder} has no {name} graph, which --method {pipeline.name} needs; export the model "
                            f"file it runs ({pipeline.label}) with fastv2v export.")  # fmt: skip
        return Graph(folder / entry["file"], backend, threads=threads, dtype=dtype, device=device)

    method = copy.copy(pipeline.method)  # same settings and schedule objects; only the models change
    if pipeline.name in ("shortcut", "shortcut_auto"):
        from fastv2v.methods.shortcut.on_graphs import ShortcutOnGraphs

        step = graph("shortcut_step")
        multiple = int(manifest["graphs"]["shortcut_step"]["size_multiple"])
        method = ShortcutOnGraphs(pipeline.method, graph("shortcut_key"), step, multiple)
    elif pipeline.name in ("spatial", "fast"):
        method.run = GraphStudent(graph("student"), pipeline.method.run.kernels)
        method.subnets = None  # one sub-network's graph: no switching
    else:
        method.teacher = GraphTeacher(pipeline.teacher, graph("teacher"))
    label = f"{pipeline.label} [{backend}{'' if dtype == 'fp32' else ' ' + dtype}]"
    return Pipeline(pipeline.teacher, method, kind=pipeline.kind, label=label, path=pipeline.path, model=pipeline.model)


def _check_openvino_precision(dtype: str, device: str) -> None:
    from fastv2v.precision import native

    if native(dtype, torch.device(device)) is False:
        raise UserError(f"--dtype {dtype} with --backend openvino needs a CPU that computes {dtype} natively "
                        f"(avx512_bf16 or AMX); this one does not, and OpenVINO would quietly run fp32 instead; "
                        "use --dtype fp32.")  # fmt: skip


def prepare(pipeline: Any, *, backend: str = "torch", dtype: str = "fp32", device: str = "cpu",
            graphs: str | os.PathLike | None = None, size: tuple[int, int] | None = None,
            threads: int | None = None, quiet: bool = False) -> tuple[Any, str]:  # fmt: skip
    """What ``translate``/``live``/``bench`` run: ``pipeline`` on ``backend`` at ``dtype``
    (``auto`` resolved by timing the teacher at ``size``, see :func:`fastv2v.precision.choose_dtype`).
    Returns the pipeline and the autocast precision the torch loop applies around it (``fp32``
    for graph backends: their precision is compiled into the runtime)."""
    from fastv2v.engine.translate import resolve_device
    from fastv2v.precision import choose_dtype

    backend = check_backend(backend)
    check_runs_on(pipeline, backend)
    dev = resolve_device(device)
    dtype = choose_dtype(dtype, dev, _probe(pipeline, backend, dev, size, threads, graphs), backend=backend,
                         quiet=quiet, tuned=getattr(pipeline, "dtype", None))  # fmt: skip
    if backend == "torch":
        return pipeline, dtype
    return on_backend(pipeline, backend, dtype=dtype, threads=threads, device=device, graphs=graphs), "fp32"


def _probe(pipeline: Any, backend: str, device: torch.device, size: tuple[int, int] | None, threads: int | None,
           graphs: Any):  # fmt: skip
    """``timed(precision) -> seconds`` of one teacher call at ``size`` (default 128x256, fitted);
    nothing is prepared (no input, no graph export) until a precision is timed."""
    from fastv2v.engine.loop import autocast
    from fastv2v.generators.loading import call_inputs
    from fastv2v.precision import best_seconds

    teacher = pipeline.teacher
    m = int(getattr(teacher, "size_multiple", 1) or 1)
    h, w = size or (128, 256)

    def timed(dtype: str) -> float:
        inputs = call_inputs(teacher, max(m, h // m * m), max(m, w // m * m), device)  # vid2vid: window + previous
        if backend == "torch":
            model = teacher.to(device)
            with torch.inference_mode(), autocast(device, dtype):
                return best_seconds(lambda: model(*inputs))
        (x,) = inputs  # a sequential teacher was refused by check_runs_on
        graph = Graph(graph_folder(pipeline, graphs) / "teacher.onnx", backend,
                      threads=int(threads or torch.get_num_threads()), dtype=dtype, device=str(device))  # fmt: skip
        return best_seconds(lambda: graph(x=x))

    return timed
