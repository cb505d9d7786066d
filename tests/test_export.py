"""``fastv2v export``: ONNX graphs and manifest for each kind of model file, checked with
onnxruntime against PyTorch (at the traced size and another, for the dynamic axes), the
Shortcut-V2V key/step state round trip, and the one-sentence errors."""

import json
import sys

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")

from fastv2v.cli import main  # noqa: E402
from fastv2v.export import export_onnx  # noqa: E402
from fastv2v.methods.shortcut.model_file import ShortcutModel, save_shortcut  # noqa: E402
from fastv2v.methods.student_model import StudentModel, save_student  # noqa: E402
from fastv2v.pipeline import Pipeline  # noqa: E402

from test_shortcut_model import make_block, make_teacher  # noqa: E402
from test_student import make_student  # noqa: E402

SIZES = [(16, 16), (24, 32)]  # traced at the first; the second proves height and width are dynamic
TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one thread


def session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def frames(n, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 3, *size, generator=g) * 2 - 1 for _ in range(n)]


def diff(a, b) -> float:
    return float(np.abs(np.asarray(a) - b.numpy()).max())


def check_plain(graph, module, seed=0):
    """``graph`` (onnxruntime) equals ``module`` (PyTorch) at both sizes."""
    run = session(graph)
    for size in SIZES:
        (x,) = frames(1, size, seed)
        with torch.no_grad():
            want = module(x)
        (got,) = run.run(None, {"x": x.numpy()})
        assert got.shape == tuple(want.shape) and diff(got, want) < TOL


@pytest.fixture
def shortcut_file(tmp_path):
    path = tmp_path / "shortcut.safetensors"
    save_shortcut(path, ShortcutModel(make_teacher(), make_block(), interval=2))
    return path


def test_teacher_generator(teacher, tmp_path):
    manifest = json.loads(export_onnx(teacher, tmp_path / "out", size=(16, 16)).read_text())
    assert list(manifest["graphs"]) == ["teacher"] and manifest["model"]["kind"] == "generator"
    check_plain(tmp_path / "out" / "teacher.onnx", Pipeline.from_file(teacher).teacher)


def test_shortcut_key_then_steps_match_pytorch(shortcut_file, tmp_path):
    manifest = json.loads(export_onnx(shortcut_file, tmp_path / "out", size=(16, 16)).read_text())
    out = tmp_path / "out"
    method = Pipeline.from_file(shortcut_file).method
    key, step = session(out / "shortcut_key.onnx"), session(out / "shortcut_step.onnx")
    state = [o["name"] for o in manifest["graphs"]["shortcut_key"]["outputs"][1:]]
    assert state == [i["name"] for i in manifest["graphs"]["shortcut_step"]["inputs"][1:]]
    for size in SIZES:
        x0, x1, x2 = frames(3, size, seed=1)
        with torch.no_grad():
            y0, reference = method.key_frame(x0)
            want = [method.non_key_frame(x, reference, gate=False) for x in (x1, x2)]
        y, *cached = key.run(None, {"x": x0.numpy()})
        assert diff(y, y0) < TOL
        for x, w in zip((x1, x2), want):  # state in, state out: the key frame's outputs feed each step
            got, drift = step.run(None, {"x": x.numpy(), **dict(zip(state, cached))})
            assert diff(got, w) < TOL
            with torch.no_grad():
                a = method.teacher.head(x)
            assert abs(float(drift) - float((a - reference["a"]).abs().mean() / reference["a"].abs().mean())) < TOL
    check_plain(out / "teacher.onnx", method.teacher)


def test_manifest_fields(shortcut_file, tmp_path):
    import hashlib

    manifest = json.loads(export_onnx(shortcut_file, tmp_path / "out", size=(16, 16), opset=17).read_text())
    assert manifest["format_version"] == 1 and manifest["opset"] == 17 and manifest["torch"] == torch.__version__
    assert manifest["model"] == {"file": "shortcut.safetensors", "kind": "shortcut",
                                 "sha256": hashlib.sha256(shortcut_file.read_bytes()).hexdigest()}  # fmt: skip
    assert manifest["method"] == {"name": "shortcut", "settings": {"interval": 2, "reuse_below": 0.0, "kernels": "torch"}}
    assert manifest["schedule"]["interval"] == 2 and manifest["schedule"]["reuse_below"] == 0.0
    assert "reuse_below" in manifest["schedule"]["reuse_gate"]
    assert manifest["input"]["encoding"] == "image" and manifest["input"]["range"] == [-1.0, 1.0]
    assert manifest["input"]["input_nc"] == 3 and manifest["input"]["label_nc"] == 0
    assert manifest["output"]["range"] == [-1.0, 1.0]
    graphs = manifest["graphs"]
    assert {g["file"] for g in graphs.values()} == {"teacher.onnx", "shortcut_key.onnx", "shortcut_step.onnx"}
    assert graphs["teacher"]["inputs"] == [{"name": "x", "shape": [1, 3, "height", "width"]}]
    assert graphs["shortcut_step"]["outputs"][0] == {"name": "y", "shape": [1, 3, "height", "width"]}
    assert all(g["size_multiple"] >= 4 for g in graphs.values())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["manifest.json", "teacher.onnx", "shortcut_key.onnx", "shortcut_step.onnx"])  # no temporaries left


def test_student(tmp_path):
    teacher = make_teacher()
    path = tmp_path / "student.safetensors"
    save_student(path, StudentModel(teacher, make_student(teacher), interval=2))
    manifest = json.loads(export_onnx(path, tmp_path / "out", size=(16, 16)).read_text())
    assert set(manifest["graphs"]) == {"teacher", "student"} and manifest["method"]["name"] == "fast"
    assert manifest["not_exported"]  # fast's interpolation between key frames is named
    pipeline = Pipeline.from_file(path)
    check_plain(tmp_path / "out" / "student.onnx", pipeline.model.student)


def test_cli_prints_each_file(shortcut_file, tmp_path, capsys):
    assert main(["export", "--model", str(shortcut_file), "--format", "onnx", "--out", str(tmp_path / "o"),
                 "--size", "16x16"]) == 0  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert [line.rsplit("/", 1)[-1] for line in lines] == [
        "teacher.onnx", "shortcut_key.onnx", "shortcut_step.onnx", "manifest.json"]  # fmt: skip


def one_sentence(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_missing_extra_says_how_to_install(shortcut_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    assert main(["export", "--model", str(shortcut_file), "--format", "onnx", "--out", str(tmp_path / "o")]) == 2
    assert 'pip install "fastv2v[onnx]"' in one_sentence(capsys)
    assert not (tmp_path / "o").exists()


def test_bad_model_path_and_unexportable_part(shortcut_file, tmp_path, monkeypatch, capsys):
    assert main(["export", "--model", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "o")]) == 2
    assert "missing.safetensors does not exist" in one_sentence(capsys)
    assert main(["export", "--model", str(shortcut_file), "--out", str(tmp_path / "o"), "--opset", "15"]) == 2
    assert "GridSample" in one_sentence(capsys)

    def refuse(module, *args, **kwargs):  # an op the exporter cannot translate
        if type(module).__name__ == "ShortcutStep":
            raise torch.onnx.errors.UnsupportedOperatorError("aten::foo", 17, 18)
        return real(module, *args, **kwargs)

    real = torch.onnx.export
    monkeypatch.setattr(torch.onnx, "export", refuse)
    assert main(["export", "--model", str(shortcut_file), "--out", str(tmp_path / "o"), "--size", "16x16"]) == 2
    assert "Shortcut-V2V block (non-key frame) cannot be exported" in one_sentence(capsys)
    assert not (tmp_path / "o" / "manifest.json").exists()
