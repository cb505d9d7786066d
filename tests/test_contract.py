"""The contract every registered method keeps with every shipped model file, through the one
assembler and the one loop: key frames are the teacher's (the student's for student methods),
bit for bit; two interleaved videos do not mix; every input gets one output, in order; and what
``fastv2v translate`` writes is what ``fastv2v bench`` measures."""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_videos_do_not_mix
from fastv2v.bench import run_bench
from fastv2v.bench.inputs import resolve_input
from fastv2v.cli import main
from fastv2v.engine.loop import drive
from fastv2v.errors import UserError
from fastv2v.pipeline import Pipeline, is_sequential, method_names
from fastv2v.tasks import WEIGHTS_DIR

SIZE = (32, 64)
FRAMES = 7
SHIPPED = sorted(p.name for p in WEIGHTS_DIR.glob("*.safetensors"))
STUDENT_METHODS = {"spatial", "fast"}


@pytest.fixture(scope="module")
def clips():
    """Two held-out clips per task at test size, as model-size frames."""
    out = {}
    for task in ("scenes", "edges"):
        out[task] = [resolve_input(f"{task}:{i}", size=SIZE, frames=FRAMES).inputs for i in (0, 1)]
    return out


def assemble(name: str, method: str) -> Pipeline:
    try:
        return Pipeline.from_file(WEIGHTS_DIR / name, method)
    except UserError as exc:
        pytest.skip(f"{method} does not run on {name}: {exc}")


@pytest.mark.parametrize("method", method_names())
@pytest.mark.parametrize("name", SHIPPED)
def test_every_method_on_every_shipped_file(name, method, clips):
    pipeline = assemble(name, method)
    task = name.split("_")[0]
    video_a, video_b = clips[task]
    outs = list(drive(pipeline, video_a))
    assert [o.index for o in outs] == list(range(len(video_a)))  # one output per input, in order
    assert all(o.frame is f for o, f in zip(outs, video_a))
    assert outs[0].key  # a video starts with a key frame
    g = pipeline.teacher
    xs = [g.encode_input(torch.from_numpy(f[None])) for f in video_a]
    if not is_sequential(g):  # a vid2vid key output depends on the key frames before it: test_vid2vid_methods.py
        with torch.no_grad():
            student = getattr(getattr(pipeline.method, "run", None), "student", None)
            if method != "spatial" and getattr(student, "temporal_shift", 0.0):
                # a shifted student remembers the last frame it ran: in `fast` the last key frame
                reference, past = [None] * len(xs), None
                for o, x in zip(outs, xs):
                    if o.key:
                        reference[o.index], past = student.step(x, past)
            elif method in STUDENT_METHODS:  # key frames are the student's, as `spatial` gives them
                reference = [o.y for o in drive(Pipeline.from_file(WEIGHTS_DIR / name, "spatial"), video_a)]
            else:
                reference = [g(x) for x in xs]
        for o, ref in zip(outs, reference):
            if o.key:
                assert torch.equal(o.y, ref), f"key frame {o.index} of {method} differs from its generator"
    if method == "teacher":
        assert all(o.key for o in outs)
    xb = [g.encode_input(torch.from_numpy(f[None])) for f in video_b]
    assert_videos_do_not_mix(pipeline.method, xs, xb)


def _write_frames(frames, folder):
    from fastv2v.data.labels import write_label_map

    folder.mkdir()
    for i, f in enumerate(frames):
        if f.ndim == 2:
            write_label_map(folder / f"{i:03d}.png", f)
        else:
            Image.fromarray(f).save(folder / f"{i:03d}.png")
    return folder


def _read_frames(folder):
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))]


def _psnr(outs, refs):
    mse = np.mean([np.mean((a.astype(np.float64) - b) ** 2) for a, b in zip(outs, refs)])
    return None if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.mark.parametrize("name", SHIPPED)
def test_translate_writes_what_bench_measures(name, tmp_path, capsys):
    """The file's own pipeline (its stored settings: interval, reuse gate; ``interp``, a buffered
    method, on a plain teacher file) through ``fastv2v translate`` and through ``fastv2v bench``
    gives the same PSNR to the teacher."""
    task = name.split("_")[0]
    inp = resolve_input(f"{task}:0", size=SIZE, frames=FRAMES + 2)
    source = _write_frames(inp.inputs, tmp_path / "source")
    model = str(WEIGHTS_DIR / name)
    method = None if Pipeline.from_file(model).name != "teacher" else "interp"
    written = {}
    for method in ("teacher", method):
        out = tmp_path / f"out-{method}"
        args = ["translate", str(source), str(out), "--model", model, "--quiet"]
        assert main(args + (["--method", method] if method else [])) == 0, capsys.readouterr().err
        written[method] = _read_frames(out)
    pipeline = Pipeline.from_file(model, method)
    report = run_bench(model, f"{task}:0", runs=[(pipeline.name, None)], size=SIZE, frames=FRAMES + 2, e2e=False)
    teacher_row, row = report["results"]
    assert len(written[method]) == len(written["teacher"]) == row["frames"]
    measured = _psnr(written[method], written["teacher"])
    if measured is None:
        assert row["psnr_vs_teacher"] is None
    else:
        assert row["psnr_vs_teacher"] == pytest.approx(measured, abs=1e-6)
    assert row["settings"] == pipeline.settings  # the file's settings, as translate ran them


@pytest.mark.parametrize("name,method", [("edges_shortcut.safetensors", "shortcut"), ("scenes_student.safetensors", "fast")])
def test_fast_kernels_are_opt_in_and_equal_to_rounding(name, method):
    """``kernels="fast"`` is a setting (default ``torch``) that changes generator outputs by float
    rounding only; the teacher's key frames stay the teacher's bit for bit (the student's key
    frames run the student with the chosen kernels). ``fast``'s in-between frames are not
    compared: optical flow on uint8 key outputs is not continuous in a rounding difference."""
    plain = Pipeline.from_file(WEIGHTS_DIR / name, method)
    fast = Pipeline.from_file(WEIGHTS_DIR / name, method, kernels="fast")
    assert plain.settings["kernels"] == "torch" and fast.settings["kernels"] == "fast"
    video = resolve_input(f"{name.split('_')[0]}:0", size=(128, 256), frames=5).inputs  # big enough to run fast
    tail = fast.method.fast_parts[1] if method == "shortcut" else None
    if tail is not None:
        with torch.no_grad():
            assert tail.why_plain(torch.zeros(1, fast.teacher.feature_channels, 32, 64)) is None
        assert plain.method.fast_parts[1] is not tail
    for a, b in zip(drive(plain, video), drive(fast, video)):
        assert a.key == b.key
        if a.key and method not in STUDENT_METHODS:
            assert torch.equal(a.y, b.y)
        elif a.key or method not in STUDENT_METHODS:
            torch.testing.assert_close(a.y, b.y, atol=1e-4, rtol=0)
    with pytest.raises(UserError, match="--kernels takes torch or fast"):
        Pipeline.from_file(WEIGHTS_DIR / name, method, kernels="cuda")


@pytest.mark.parametrize("name,method,settings", [
    ("edges_teacher.safetensors", "interp", {"interval": 2, "keyframes": "peaks"}),
    ("edges_shortcut.safetensors", "shortcut", {"interval": "auto"}),
    ("scenes_student.safetensors", "fast", {"interval": 8}),
    ("scenes_shortcut.safetensors", "repeat", {"interval": 4}),
])
def test_a_saved_pipeline_runs_as_it_was(name, method, settings, clips, tmp_path):
    """``Pipeline.save`` (what ``fastv2v tune`` writes): the file's own method and settings are the
    saved ones, and it gives the same outputs."""
    pipeline = Pipeline.from_file(WEIGHTS_DIR / name, method, **settings)
    again = Pipeline.from_file(pipeline.save(tmp_path / "pipeline.safetensors"))
    assert (again.name, again.settings) == (pipeline.name, pipeline.settings)
    video = clips[name.split("_")[0]][0]
    assert all(torch.equal(a.y, b.y) for a, b in zip(drive(pipeline, video), drive(again, video)))
