"""Key-frame methods on a vid2vid (sequential) teacher: ``interp``, ``minterpolate`` and ``repeat``
run the teacher on the key-frame subsequence only (its window the last tG-1 key inputs, its
previous outputs the last tG-1 key outputs), so at interval 1 they are the ``teacher`` method and
at any interval the key outputs are ``run_sequence`` over the key frames."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import assert_videos_do_not_mix, frame_count, run_cli, synthetic_frame
from fastv2v.data.paired import rgb_to_tensor
from fastv2v.engine.loop import drive
from fastv2v.generators import Vid2VidGenerator
from fastv2v.generators.vid2vid import run_sequence
from fastv2v.pipeline import Pipeline

H, W, T, T_G = 32, 64, 8, 3
METHODS = ["interp", "minterpolate", "repeat"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one thread


@pytest.fixture
def model(tmp_path):
    """A tiny image-input vid2vid generator saved as an official checkpoint."""
    torch.manual_seed(0)
    g = Vid2VidGenerator(input_nc=3, ngf=4, n_downsample_G=2, n_blocks=2, n_frames_G=T_G)
    path = tmp_path / "latest_net_G0.pth"
    torch.save(g.state_dict(), path)
    return path


def _frames(offset=0, step=1):
    return [synthetic_frame(offset + step * i, (H, W)) for i in range(T)]


def _xs(frames):
    return [rgb_to_tensor(f)[None] for f in frames]


def _run(pipeline, xs):
    outs = list(drive(pipeline, xs))
    assert [o.index for o in outs] == list(range(len(xs)))  # one output per input, in order
    return torch.cat([o.y for o in outs]), [o.key for o in outs]


def _real(tmp_path):
    from PIL import Image

    folder = tmp_path / "real"
    folder.mkdir()
    for i in range(T_G - 1):
        Image.fromarray(synthetic_frame(50 + 9 * i, (H, W))).save(folder / f"{i:03d}.png")
    return folder


@pytest.mark.parametrize("method", METHODS)
def test_interval_one_is_the_teacher_exactly(method, model):
    xs = _xs(_frames())
    teacher, keys = _run(Pipeline.from_file(model), xs)
    pipeline = Pipeline.from_file(model, method, interval=1)
    assert pipeline.settings["start"] == "zeros" and pipeline.settings["interval"] == 1
    ys, keys_m = _run(pipeline, xs)
    assert torch.equal(ys, teacher) and keys_m == keys == [True] * T


@pytest.mark.parametrize("method", METHODS)
def test_key_frames_are_the_loop_over_the_key_frames(method, model):
    xs = _xs(_frames())
    pipeline = Pipeline.from_file(model, method, interval=3)
    ys, keys = _run(pipeline, xs)
    assert ys.shape == (T, 3, H, W)
    expected_keys = [i % 3 == 0 or (method != "repeat" and i == T - 1) for i in range(T)]  # buffered: last is key
    assert keys == expected_keys
    key_inputs = torch.cat([x for x, k in zip(xs, keys) if k])
    padded = torch.cat([key_inputs[:1].expand(T_G - 1, -1, -1, -1), key_inputs])  # zeros: the first key repeated
    torch.testing.assert_close(ys[torch.tensor(keys)], run_sequence(pipeline.teacher, padded), atol=1e-5, rtol=0)
    if method == "repeat":  # non-key frames repeat the last key output
        last = None
        for y, k in zip(ys, keys):
            last = y if k else last
            assert torch.equal(y, last)
    else:  # interpolated, not a copy of either key output
        assert not torch.equal(ys[1], ys[0]) and not torch.equal(ys[1], ys[3])


@pytest.mark.parametrize("method", ["interp", "repeat"])
def test_a_seeded_start_makes_the_first_frames_key_frames(method, model, tmp_path):
    real = _real(tmp_path)
    xs = _xs(_frames())
    pipeline = Pipeline.from_file(model, method, interval=4, start=f"video:{real}")
    assert pipeline.settings["start"] == f"video:{real}"
    ys, made = _run(pipeline, xs)
    keys = [i < T_G - 1 or i % 4 == 0 or (method == "interp" and i == T - 1) for i in range(T)]
    seeds = torch.stack([rgb_to_tensor(synthetic_frame(50 + 9 * i, (H, W))) for i in range(T_G - 1)])
    torch.testing.assert_close(ys[: T_G - 1], seeds, atol=1e-6, rtol=0)
    assert made[: T_G - 1] == [False] * (T_G - 1)  # no generator made the seeds
    assert made[T_G - 1 :] == keys[T_G - 1 :]
    key_inputs = torch.cat([x for x, k in zip(xs, keys) if k])
    expected = run_sequence(pipeline.teacher, key_inputs, previous=seeds)
    later = torch.tensor([k and i >= T_G - 1 for i, k in enumerate(keys)])
    torch.testing.assert_close(ys[later], expected, atol=1e-5, rtol=0)
    teacher, _ = _run(Pipeline.from_file(model, start=f"video:{real}"), xs)
    assert torch.equal(_run(Pipeline.from_file(model, method, interval=1, start=f"video:{real}"), xs)[0], teacher)


@pytest.mark.parametrize("method", METHODS)
def test_interleaved_videos_do_not_mix(method, model):
    pipeline = Pipeline.from_file(model, method, interval=3)
    assert_videos_do_not_mix(pipeline.method, _xs(_frames()), _xs(_frames(3, 7)))


def test_translate_and_bench_run_the_key_frame_methods(model, tmp_path, capsys, make_image_folder):
    folder = make_image_folder([f"{i:03d}.png" for i in range(T)], size=(H, W))
    out = tmp_path / "out.mp4"
    code, _, err = run_cli(["translate", folder, out, "--model", model, "--method", "interp", "--interval", 4,
                            "--quiet"], capsys)  # fmt: skip
    assert code == 0, err
    assert frame_count(out) == T
    bench = tmp_path / "bench"
    code, _, err = run_cli(["bench", "--model", model, "--input", folder, "--methods", "teacher,repeat,interp",
                            "--intervals", "2,4", "--no-e2e", "--out", bench, "--quiet"], capsys)  # fmt: skip
    assert code == 0, err
    rows = json.loads((bench / "bench.json").read_text())["results"]
    assert [(r["method"], r["interval"]) for r in rows] == [
        ("teacher", 1), ("repeat", 2), ("repeat", 4), ("interp", 2), ("interp", 4)]  # fmt: skip
    assert all(r["frames"] == T for r in rows) and rows[0]["keyframes"] == T
    assert [r["keyframes"] for r in rows[1:]] == [4, 2, 5, 3]  # interp: the last frame is a key frame too


def test_other_methods_name_the_sequential_ones(model, tmp_path, capsys, make_image_folder):
    folder = make_image_folder([f"{i:03d}.png" for i in range(T_G)], size=(H, W))
    code, _, err = run_cli(["translate", folder, tmp_path / "o.mp4", "--model", model, "--method", "reuse", "--quiet"],
                           capsys)  # fmt: skip
    assert code == 2 and "Traceback" not in err
    assert "use --method teacher, interp, minterpolate, repeat, spatial or fast for now" in err
