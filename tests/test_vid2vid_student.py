"""Fast-Vid2Vid on a vid2vid teacher: the half-input, pruned sequential student, its student model
file, ``spatial`` and ``fast`` on it, and its part-time distillation."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import run_cli, synthetic_frame
from fastv2v.data.paired import rgb_to_tensor
from fastv2v.engine.loop import drive
from fastv2v.generators import Vid2VidGenerator, save_generator
from fastv2v.generators.student import halve_input
from fastv2v.generators.vid2vid import run_sequence
from fastv2v.generators.vid2vid_student import prune_vid2vid, vid2vid_student
from fastv2v.methods.student_model import StudentModel, load_student, save_student
from fastv2v.pipeline import Pipeline

H, W, T, T_G = 32, 64, 9, 3

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one thread


def _teacher(**kw):
    torch.manual_seed(0)
    config = {**dict(input_nc=3, ngf=8, n_downsample_G=2, n_blocks=3, n_frames_G=T_G), **kw}
    return Vid2VidGenerator(**config).eval()


def _inputs(g, n=1):
    torch.manual_seed(1)
    return torch.randn(n, T_G * g.input_nc, H, W), torch.rand(n, (T_G - 1) * 3, H, W) * 2 - 1


@pytest.mark.parametrize(
    "kw", [{}, {"norm": "instance", "fg": True, "label_nc": 4, "input_nc": 4, "fg_labels": (1,)}, {"no_flow": True}]
)
def test_pruning_to_the_full_width_is_the_identity(kw):
    """Keeping every channel must reproduce the teacher: the walk pairs every layer with its inputs."""
    teacher = _teacher(**kw)
    for p in teacher.parameters():  # non-trivial norms and biases, so a missed copy would show
        p.data.add_(torch.rand_like(p) * 0.1)
    student = Vid2VidGenerator(**{k: v for k, v in teacher.config.items() if k != "arch"})
    prune_vid2vid(teacher, student)
    x, prev = _inputs(teacher)
    if kw.get("label_nc"):
        x = torch.nn.functional.one_hot(torch.randint(0, 4, (1, T_G, H, W)), 4).permute(0, 1, 4, 2, 3).flatten(1, 2)
        x = x.float()
    for a, b in zip(student.eval()(x, prev), teacher(x, prev)):
        assert (a is None and b is None) or torch.equal(a, b)


def test_a_pruned_student_keeps_the_strongest_channels():
    teacher = _teacher()
    student = vid2vid_student(teacher, ngf=4)
    assert student.config["ngf"] == 4 and student.config["half_input"] and student.half_input
    stem_t, stem_s = teacher.model_down_seg[1], student.model_down_seg[1]
    strongest = torch.topk(stem_t.weight.abs().flatten(1).sum(1), 4).indices.sort().values
    assert torch.equal(stem_s.weight, stem_t.weight[strongest])
    x, prev = _inputs(teacher)
    y = student(x, prev)[0]
    assert y.shape == (1, 3, H, W)  # half input, full output
    with pytest.raises(Exception, match="between 1 and the teacher's 8"):
        vid2vid_student(teacher, ngf=9)


def test_half_input_at_full_width_starts_as_the_teacher_on_halved_frames():
    teacher = _teacher(label_nc=3)
    student = vid2vid_student(teacher)
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), teacher.state_dict().values()))
    ids = torch.randint(0, 3, (1, T_G, H, W))
    x = torch.nn.functional.one_hot(ids, 3).permute(0, 1, 4, 2, 3).flatten(1, 2).float()
    halved = student.halve(x)
    assert halved.shape == (1, T_G * 3, H // 2, W // 2)
    for t in range(T_G):  # each frame halved as a label map: one-hot again, never blended
        frame = halved[:, 3 * t : 3 * t + 3]
        assert torch.equal(frame, halve_input(x[:, 3 * t : 3 * t + 3], 3))
        assert torch.equal(frame.sum(1), torch.ones(1, H // 2, W // 2))


@pytest.fixture
def student_file(tmp_path):
    teacher = _teacher()
    path = tmp_path / "student.safetensors"
    save_student(path, StudentModel(teacher, vid2vid_student(teacher, ngf=4).eval(), interval=3))
    save_generator(tmp_path / "teacher.safetensors", teacher)
    return path


def _xs():
    return [rgb_to_tensor(synthetic_frame(3 * i, (H, W)))[None] for i in range(T)]


def _run(pipeline, xs):
    outs = list(drive(pipeline, xs))
    assert [o.index for o in outs] == list(range(len(xs)))
    return torch.cat([o.y for o in outs]), [o.key for o in outs]


def test_the_student_file_round_trips_and_names_its_methods(student_file, tmp_path):
    model = load_student(student_file)
    assert isinstance(model.student, Vid2VidGenerator) and model.student.config["ngf"] == 4
    assert Pipeline.from_file(student_file).describe() == "fast (interval 3, start zeros) on student.safetensors"
    load_student(student_file, teacher=load_student(student_file).teacher)  # its own teacher is accepted
    other = _teacher(n_blocks=2)
    with pytest.raises(Exception, match="does not|other|different|not the one"):
        load_student(student_file, teacher=other)


def test_spatial_is_the_students_own_loop(student_file):
    pipeline = Pipeline.from_file(student_file, "spatial")
    xs = _xs()
    ys, keys = _run(pipeline, xs)
    assert keys == [True] * T
    frames = torch.cat(xs)
    padded = torch.cat([frames[:1].expand(T_G - 1, -1, -1, -1), frames])
    torch.testing.assert_close(ys, run_sequence(pipeline.method.student, padded), atol=1e-5, rtol=0)
    teacher, _ = _run(Pipeline.from_file(student_file, "teacher"), xs)
    assert not torch.allclose(ys, teacher, atol=1e-3)  # the student, not the teacher, made them


def test_fast_runs_the_student_on_the_key_frames_and_interpolates_between(student_file):
    xs = _xs()
    spatial, _ = _run(Pipeline.from_file(student_file, "spatial"), xs)
    ys, keys = _run(Pipeline.from_file(student_file, "fast", interval=1), xs)
    assert torch.equal(ys, spatial) and keys == [True] * T  # interval 1: the student on every frame
    pipeline = Pipeline.from_file(student_file)  # the file's own: fast at interval 3
    ys, keys = _run(pipeline, xs)
    assert keys == [i % 3 == 0 or i == T - 1 for i in range(T)]
    key_inputs = torch.cat([x for x, k in zip(xs, keys) if k])
    padded = torch.cat([key_inputs[:1].expand(T_G - 1, -1, -1, -1), key_inputs])
    expected = run_sequence(pipeline.method.student, padded)
    torch.testing.assert_close(ys[torch.tensor(keys)], expected, atol=1e-5, rtol=0)
    assert not torch.equal(ys[1], ys[0]) and not torch.equal(ys[1], ys[3])  # interpolated between


def test_bench_reports_the_student_rows_against_the_teacher(student_file, tmp_path, capsys, make_image_folder):
    folder = make_image_folder([f"{i:03d}.png" for i in range(T)], size=(H, W))
    bench = tmp_path / "bench"
    code, _, err = run_cli(["bench", "--model", student_file, "--input", folder, "--methods", "teacher,spatial,fast",
                            "--intervals", "3", "--no-e2e", "--out", bench, "--quiet"], capsys)  # fmt: skip
    assert code == 0, err
    rows = {r["method"]: r for r in json.loads((bench / "bench.json").read_text())["results"]}
    assert set(rows) == {"teacher", "spatial", "fast"}
    teacher = rows["teacher"]["macs_per_frame"]["paper"]
    assert rows["spatial"]["macs_per_frame"]["paper"] < 0.6 * teacher  # half input, half width
    assert rows["fast"]["macs_per_frame"]["paper"] < rows["spatial"]["macs_per_frame"]["paper"]
    assert rows["teacher"]["psnr_vs_teacher"] is None  # the reference: the full-rate teacher
    assert 0 < rows["fast"]["psnr_vs_teacher"] < 60 and 0 < rows["spatial"]["psnr_vs_teacher"] < 60


def test_distill_writes_a_student_that_translate_runs(tmp_path, capsys):
    from fastv2v.data.scenes import NUM_CLASSES

    torch.manual_seed(0)
    teacher = Vid2VidGenerator(input_nc=NUM_CLASSES, label_nc=NUM_CLASSES, ngf=4, n_downsample_G=2, n_blocks=2,
                               n_frames_G=2, norm="instance")  # fmt: skip
    save_generator(tmp_path / "v2v.safetensors", teacher)
    out = tmp_path / "run"
    base = ["distill", "student", "--teacher", tmp_path / "v2v.safetensors", "--task", "scenes", "--clips", 1,
            "--size", "32x64", "--batch", 2, "--interval", 2, "--quiet"]  # fmt: skip
    code, _, err = run_cli(base + ["--steps", 2, "--out", out], capsys)
    assert code == 0, err
    model = load_student(out / "student.safetensors")
    assert model.student.config["ngf"] == 2 and model.interval == 2
    manifest = json.loads((out / "cache" / "vid2vid-teacher" / "manifest.json").read_text())
    assert manifest["clips"] == 1 and manifest["size"] == [32, 64]
    code, _, err = run_cli(base + ["--body", "resnet", "--out", tmp_path / "other"], capsys)
    assert code == 2 and "--body applies to per-frame teachers" in err and "Traceback" not in err
    code, _, err = run_cli(base + ["--width", 3, "--init", out / "student.safetensors", "--out", tmp_path / "w"],
                           capsys)  # fmt: skip
    assert code == 2 and "holds a student of ngf 2" in err and "asks for ngf 3" in err and "Traceback" not in err

    # stopped after 2 of 4 steps and resumed, the run ends where an unbroken one does
    for extra in (["--max-steps", 2, "--out", tmp_path / "a"], ["--resume", "--out", tmp_path / "a"],
                  ["--out", tmp_path / "b"]):  # fmt: skip
        code, _, err = run_cli(base + ["--steps", 4] + extra, capsys)
        assert code == 0, err
    resumed, unbroken = (load_student(tmp_path / r / "student.safetensors").student for r in "ab")
    assert all(torch.equal(x, y) for x, y in zip(resumed.state_dict().values(), unbroken.state_dict().values()))


def test_samples_walk_clips_gaps_and_frames(tmp_path):
    import numpy as np

    from fastv2v.train.vid2vid_student import TeacherSequences

    data = TeacherSequences(tmp_path, clips=2, frames_per_clip=10, frames_g=3, gaps=2, label_nc=4, rollout=3)
    assert data.per_gap == [(1, 8), (2, 6)] and len(data) == 28
    assert data.locate(0) == (0, 1, 0) and data.locate(7) == (0, 1, 7)  # k + (R-1) g stays inside the clip
    assert data.locate(8) == (0, 2, 0) and data.locate(13) == (0, 2, 5) and data.locate(14) == (1, 1, 0)
    labels = np.arange(20, dtype=np.uint8).reshape(20, 1, 1).repeat(2, 1).repeat(2, 2) % 4
    outputs = np.arange(20, dtype=np.float16).reshape(20, 1, 1, 1).repeat(3, 1).repeat(2, 2).repeat(2, 3)
    np.save(tmp_path / "labels.npy", labels), np.save(tmp_path / "outputs.npy", outputs)
    item = data[9]  # clip 0, gap 2, k = 1: key frames -3, -1 (before the video), 1, 3, 5
    assert item["start"].item() == 0 and item["labels"].shape == (5 * 4, 2, 2)
    assert torch.equal(item["previous"], torch.zeros(6, 2, 2))  # the zeros start's previous outputs
    assert [int(v) for v in item["targets"][::3, 0, 0]] == [1, 3, 5]
    assert [int(item["labels"][4 * i : 4 * i + 4, 0, 0].argmax()) for i in range(5)] == [0, 0, 1, 3, 1]  # ids % 4
    first = data[14]  # clip 1, k = 0: the video's first frame, its call raw only
    assert first["start"].item() == 1 and [int(v) for v in first["targets"][::3, 0, 0]] == [10, 11, 12]
    extra = TeacherSequences(tmp_path, clips=2, frames_per_clip=10, frames_g=3, gaps=2, label_nc=4, rollout=3,
                             starts=2)  # fmt: skip
    assert len(extra) == 36 and [extra.locate(i) for i in (7, 8, 9, 10, 18)] == [
        (0, 1, 7), (0, 1, 0), (0, 1, 0), (0, 2, 0), (1, 1, 0)]  # two more first-frame samples per gap  # fmt: skip
    with pytest.raises(Exception, match="lower --max-gap"):
        TeacherSequences(tmp_path, clips=1, frames_per_clip=4, frames_g=3, gaps=2, label_nc=4, rollout=3)


def test_profile_reports_the_teacher_and_its_student(student_file, capsys):
    code, out, err = run_cli(["profile", "--model", student_file, "--size", f"{H}x{W}"], capsys)
    assert code == 0, err
    assert "vid2vid (ngf 8" in out and "MACs per frame:" in out
    student = next(line for line in out.splitlines() if line.startswith("student ("))
    assert "exact" in student and "paper MACs per call" in student and "teacher / student = " in student
