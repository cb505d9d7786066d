"""``--backend onnxruntime|openvino``: the teacher, ``shortcut`` and ``fast`` pipelines run on
exported graphs give the torch pipeline's outputs (to 1e-3 before quantisation, and the same
8-bit frames up to rounding through ``fastv2v translate``); graphs of another model, methods that
cannot run on graphs and a precision a runtime cannot honour are one sentence each; ``--dtype
auto`` picks a native precision only when it is measured faster; ``fastv2v bench --backends``
reports every runtime in one table against the torch teacher."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnxruntime")

from fastv2v import precision  # noqa: E402
from fastv2v.cli import main  # noqa: E402
from fastv2v.errors import UserError  # noqa: E402
from fastv2v.methods.shortcut.model_file import ShortcutModel, save_shortcut  # noqa: E402
from fastv2v.methods.student_model import StudentModel, save_student  # noqa: E402
from fastv2v.pipeline import Pipeline  # noqa: E402
from fastv2v.runtimes import on_backend  # noqa: E402

from test_shortcut_model import make_block, make_teacher  # noqa: E402
from test_student import make_student  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one thread
try:
    import openvino  # noqa: F401

    BACKENDS = ["onnxruntime", "openvino"]
except ImportError:  # the test extra installs it; without it onnxruntime is still checked
    BACKENDS = ["onnxruntime"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    teacher = make_teacher()
    paths = {"teacher": folder / "teacher.safetensors", "shortcut": folder / "shortcut.safetensors",
             "student": folder / "student.safetensors"}  # fmt: skip
    from fastv2v.generators import save_generator

    save_generator(paths["teacher"], teacher)
    block = make_block()
    save_shortcut(paths["shortcut"], ShortcutModel(teacher, block, interval=3, info={"reuse_below": 0.05}))
    save_student(paths["student"], StudentModel(teacher, make_student(teacher), interval=3))
    return paths


def clip(n=8, size=(16, 32), seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, *size, generator=g) * 2 - 1
    return [torch.roll(base, shifts=i, dims=-1) + 0.05 * torch.rand(1, 3, *size, generator=g) for i in range(n)]


def outputs(pipeline, frames):
    """Every frame's float output (before quantisation) and whether it was a key frame."""
    method, state, out = pipeline.method, pipeline.method.init_state(), []
    with torch.inference_mode():
        for x in frames:
            ready, state = method.push(x, state)
            out += ready
        out += method.flush(state)
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind,method", [("teacher", "teacher"), ("teacher", "repeat"), ("shortcut", "shortcut"),
                                         ("shortcut", "shortcut_auto"), ("student", "spatial")])  # fmt: skip
def test_graph_outputs_match_torch(files, kind, method, backend):
    torch_pipeline = Pipeline.from_file(files[kind], method)
    graph_pipeline = on_backend(torch_pipeline, backend)
    frames = clip()
    want, got = outputs(torch_pipeline, frames), outputs(graph_pipeline, frames)
    assert [k for _, k in got] == [k for _, k in want]
    assert max(float((a - b).abs().max()) for (a, _), (b, _) in zip(got, want)) < 1e-3
    if kind == "shortcut":  # the gate and the block both ran: some non-key frames are not the key output
        assert not all(k for _, k in got)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fast_keys_match_and_between_frames_follow(files, backend):
    """``fast``: student key frames to 1e-3; the interpolated frames come from 8-bit key outputs,
    so they agree to a rounding step of those."""
    torch_pipeline = Pipeline.from_file(files["student"], "fast")
    want, got = outputs(torch_pipeline, clip()), outputs(on_backend(torch_pipeline, backend), clip())
    keys = [k for _, k in want]
    assert [k for _, k in got] == keys and any(keys) and not all(keys)
    for (a, key), (b, _) in zip(got, want):
        assert float((a - b).abs().max()) < (1e-3 if key else 2.5 / 127.5)


def write_frames(folder, n=6, size=(16, 32)):
    folder.mkdir()
    rng = np.random.default_rng(0)
    base = (rng.random((*size, 3)) * 255).astype(np.uint8)
    for i in range(n):
        Image.fromarray(np.roll(base, i, axis=1)).save(folder / f"{i:03d}.png")
    return folder


def read_frames(folder):
    return np.stack([np.asarray(Image.open(p), dtype=np.int16) for p in sorted(folder.glob("*.png"))])


@pytest.mark.parametrize("backend", BACKENDS)
def test_translate_on_a_backend_writes_the_torch_frames(files, tmp_path, backend):
    frames = write_frames(tmp_path / "in")
    for name in ("torch", backend):
        assert main(["translate", str(frames), str(tmp_path / name), "--model", str(files["shortcut"]),
                     "--backend", name, "--quiet"]) == 0  # fmt: skip
    a, b = read_frames(tmp_path / "torch"), read_frames(tmp_path / backend)
    assert a.shape == b.shape and np.abs(a - b).max() <= 1 and (a != b).mean() < 0.01


def test_graphs_of_another_model_are_refused(files, tmp_path, capsys):
    frames = write_frames(tmp_path / "in")
    assert main(["export", "--model", str(files["student"]), "--out", str(tmp_path / "g")]) == 0
    capsys.readouterr()
    code = main(["translate", str(frames), str(tmp_path / "out"), "--model", str(files["teacher"]), "--backend",
                 "onnxruntime", "--graphs", str(tmp_path / "g")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "not from teacher.safetensors" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    # the right graphs are taken, and --graphs without a graph backend is a mistake worth a sentence
    assert main(["export", "--model", str(files["teacher"]), "--out", str(tmp_path / "t")]) == 0
    assert main(["translate", str(frames), str(tmp_path / "out"), "--model", str(files["teacher"]), "--backend",
                 "onnxruntime", "--graphs", str(tmp_path / "t"), "--quiet"]) == 0  # fmt: skip
    assert main(["translate", str(frames), str(tmp_path / "o2"), "--model", str(files["teacher"]), "--graphs",
                 str(tmp_path / "t")]) == 2  # fmt: skip


def test_methods_and_precisions_a_backend_cannot_run(files, monkeypatch):
    with pytest.raises(UserError, match="stays on --backend torch"):
        on_backend(Pipeline.from_file(files["teacher"], "sparse"), "onnxruntime")
    with pytest.raises(UserError, match="fp32 graphs"):
        on_backend(Pipeline.from_file(files["teacher"]), "onnxruntime", dtype="bf16")
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2"}))
    with pytest.raises(UserError, match="quietly run fp32"):
        on_backend(Pipeline.from_file(files["teacher"]), "openvino", dtype="bf16")


def test_missing_runtime_says_which_extra(files, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name == "openvino":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    with pytest.raises(UserError, match=r'pip install "fastv2v\[openvino\]"'):
        on_backend(Pipeline.from_file(files["teacher"]), "openvino")


def test_dtype_auto_takes_a_native_precision_only_when_faster(monkeypatch, capsys):
    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    timings = {"fp32": 1.0, "bf16": 0.5, "fp16": 2.0}
    assert precision.choose_dtype("auto", cpu, timings.get) == "bf16"
    assert "bf16" in capsys.readouterr().err
    timings["bf16"] = 0.95  # native but hardly faster: fp32 keeps the exact outputs
    assert precision.choose_dtype("auto", cpu, timings.get) == "fp32"
    assert precision.choose_dtype("auto", cpu, timings.get, backend="onnxruntime") == "fp32"
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2"}))  # emulated: never timed, never taken
    assert precision.choose_dtype("auto", cpu, lambda d: pytest.fail("timed an emulated precision")) == "fp32"
    assert precision.choose_dtype("bf16", cpu, timings.get) == "bf16"  # an explicit choice is kept (and warned)


def test_dtype_default_comes_from_the_environment(monkeypatch, files, tmp_path, capsys):
    monkeypatch.setenv("FASTV2V_DTYPE", "auto")
    assert precision.default_dtype() == "auto"
    frames = write_frames(tmp_path / "in")
    assert main(["translate", str(frames), str(tmp_path / "out"), "--model", str(files["teacher"])]) == 0
    assert "--dtype auto:" in capsys.readouterr().err
    monkeypatch.setenv("FASTV2V_DTYPE", "fast")
    with pytest.raises(UserError, match="FASTV2V_DTYPE"):
        precision.default_dtype()


def test_bench_reports_each_backend_against_the_torch_teacher(files, tmp_path):
    from fastv2v.bench import run_bench

    frames = write_frames(tmp_path / "in", n=6)
    report = run_bench(str(files["shortcut"]), str(frames), methods="teacher,shortcut,sparse", intervals="3",
                       backends="onnxruntime,torch", e2e=True)  # fmt: skip
    rows = {(r["method"], r["runtime"]): r for r in report["results"]}
    assert report["runtimes"] == ["torch fp32", "onnxruntime fp32"]  # torch first: the reference
    reference = rows[("teacher", "torch fp32")]
    assert reference["psnr_vs_teacher"] is None and reference["speedup_vs_teacher"] == 1.0
    on_graphs = rows[("teacher", "onnxruntime fp32")]
    psnr = on_graphs["psnr_vs_teacher"]  # None: the same 8-bit frames (infinite PSNR)
    assert (psnr is None or psnr > 50) and on_graphs["e2e_speedup_vs_teacher"] > 0
    assert on_graphs["macs_per_frame"] == reference["macs_per_frame"]  # counted on the torch pipeline
    short = rows[("shortcut", "onnxruntime fp32")]
    assert abs(short["psnr_vs_teacher"] - rows[("shortcut", "torch fp32")]["psnr_vs_teacher"]) < 0.1
    assert [s["runtime"] for s in report["skipped"] if s["method"] == "sparse"] == ["onnxruntime fp32"]
    assert len(report["models"]) == 1
