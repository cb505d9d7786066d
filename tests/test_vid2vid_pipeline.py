"""A vid2vid generator as the pipeline's sequential teacher: `translate` runs the official loop
over every frame, each start (zeros, video:, model:) matches ``run_sequence``, videos do not mix,
and what cannot run a vid2vid model says so in one sentence."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import assert_videos_do_not_mix, frame_count, run_cli, synthetic_frame
from fastv2v.data.labels import write_label_map
from fastv2v.data.paired import rgb_to_tensor
from fastv2v.data.video import open_frames
from fastv2v.engine.loop import MacCounter, drive
from fastv2v.generators import GlobalGenerator, Vid2VidGenerator, save_generator
from fastv2v.generators.vid2vid import run_sequence
from fastv2v.pipeline import Pipeline

H, W, T, LABEL_NC, T_G = 16, 24, 5, 4, 3


def _vid2vid(tmp_path, label_nc=LABEL_NC, name="latest_net_G0.pth"):
    """A tiny vid2vid generator saved as an official checkpoint (a plain ``torch.save`` state dict)."""
    torch.manual_seed(0)
    input_nc = label_nc or 3
    g = Vid2VidGenerator(input_nc=input_nc, ngf=4, n_downsample_G=2, n_blocks=2, n_frames_G=T_G, label_nc=label_nc)
    path = tmp_path / name
    torch.save(g.state_dict(), path)
    return path


def _labels(tmp_path, top=LABEL_NC - 1, frames=T):
    """A folder of moving label maps; the last frame holds class ``top``."""
    folder = tmp_path / "labels"
    folder.mkdir()
    for i in range(frames):
        ids = np.zeros((H, W), np.uint8)
        ids[2 + i : 8 + i, 3 + 2 * i : 10 + 2 * i] = 1 + i % 2
        ids[-4:, -6:] = top if i == frames - 1 else 2
        write_label_map(folder / f"{i:03d}.png", ids)
    return folder


def _real(tmp_path, frames=T_G - 1, size=(2 * H, 2 * W), name="real"):
    """A folder of real frames, by default at another size than the model (a start is stretched to it)."""
    from PIL import Image

    folder = tmp_path / name
    folder.mkdir()
    for i in range(frames):
        Image.fromarray(synthetic_frame(i, size)).save(folder / f"{i:03d}.png")
    return folder


def _single(tmp_path):
    torch.manual_seed(1)
    path = tmp_path / "single.safetensors"
    save_generator(path, GlobalGenerator(label_nc=LABEL_NC, ngf=4, n_downsampling=2, n_blocks=1))
    return path


def _inputs(pipeline, folder):
    g = pipeline.teacher
    with open_frames(folder, labels=g.input_kind == "labels") as frames:
        return [g.encode_input(torch.from_numpy(f[None].copy())) for f in frames]


def _outputs(pipeline, xs):
    return torch.cat([o.y for o in drive(pipeline, xs)])


def _seeds(pipeline, start, xs, tmp_path):
    """The first tG-1 outputs a seeded start gives, computed here independently of the method."""
    from fastv2v.data.resize import Resizer
    from fastv2v.generators import load_generator

    if start == "video":
        with open_frames(tmp_path / "real") as frames:
            real = [Resizer(f.shape[:2], size=(H, W), mode="stretch").to_model(f) for f in frames]
        return torch.stack([rgb_to_tensor(f) for f in real])
    single = load_generator(tmp_path / "single.safetensors")
    with torch.no_grad():
        return torch.cat([single(x) for x in xs[: T_G - 1]])


STARTS = [("zeros", LABEL_NC), ("zeros", 0), ("video", LABEL_NC), ("model", LABEL_NC)]


@pytest.mark.parametrize("start, label_nc", STARTS)
def test_each_start_equals_run_sequence(start, label_nc, tmp_path):
    model = _vid2vid(tmp_path, label_nc=label_nc)
    folder = _labels(tmp_path) if label_nc else _real(tmp_path, frames=T, size=(H, W), name="frames")
    spec = {"zeros": "zeros", "video": f"video:{_real(tmp_path)}", "model": f"model:{_single(tmp_path)}"}[start]
    pipeline = Pipeline.from_file(model, label_nc=label_nc or None, start=spec)
    assert pipeline.name == "teacher" and not pipeline.method.batchable
    xs = _inputs(pipeline, folder)
    ys = _outputs(pipeline, xs)
    labels = torch.cat(xs)
    assert ys.shape == (T, 3, H, W)
    if start == "zeros":  # the first frame repeated before the video, previous outputs zeros
        padded = torch.cat([labels[:1].expand(T_G - 1, -1, -1, -1), labels])
        torch.testing.assert_close(ys, run_sequence(pipeline.teacher, padded), atol=1e-5, rtol=0)
        return
    seeds = _seeds(pipeline, start, xs, tmp_path)
    torch.testing.assert_close(ys[: T_G - 1], seeds, atol=1e-5, rtol=0)
    expected = run_sequence(pipeline.teacher, labels, previous=seeds)
    torch.testing.assert_close(ys[T_G - 1 :], expected, atol=1e-5, rtol=0)


def test_translate_writes_every_frame_and_equals_the_loop(tmp_path, capsys):
    model, folder, real = _vid2vid(tmp_path), _labels(tmp_path), _real(tmp_path)
    out = tmp_path / "out"
    args = ["translate", folder, out, "--model", model, "--label-nc", LABEL_NC, "--start", f"video:{real}", "--quiet"]
    code, stdout, err = run_cli(args + ["--batch", "3"], capsys)  # --batch: still one frame per call
    assert code == 0, err
    assert frame_count(out) == T and f"wrote {T} frames" in stdout
    pipeline = Pipeline.from_file(model, label_nc=LABEL_NC, start=f"video:{real}")
    xs = _inputs(pipeline, folder)
    seeds = _seeds(pipeline, "video", xs, tmp_path)
    expected = pipeline.teacher.decode_output(run_sequence(pipeline.teacher, torch.cat(xs), previous=seeds))
    with open_frames(out) as written:
        frames = list(written)
    assert all(np.array_equal(a, b) for a, b in zip(frames[T_G - 1 :], expected.numpy(), strict=True))
    mp4 = tmp_path / "out.mp4"
    assert run_cli(["translate", folder, mp4, "--model", model, "--label-nc", LABEL_NC, "--quiet"], capsys)[0] == 0
    assert frame_count(mp4) == T


def test_saved_pipeline_keeps_the_start(tmp_path):
    model, real = _vid2vid(tmp_path), _real(tmp_path)
    saved = Pipeline.from_file(model, label_nc=LABEL_NC, start=f"video:{real}").save(tmp_path / "v2v.safetensors")
    again = Pipeline.from_file(saved)
    assert again.name == "teacher" and again.settings == {"start": f"video:{real}"}
    assert again.teacher.label_nc == LABEL_NC


def test_interleaved_videos_do_not_mix(tmp_path):
    pipeline = Pipeline.from_file(_vid2vid(tmp_path, label_nc=0), start=f"video:{_real(tmp_path)}")
    a = [rgb_to_tensor(synthetic_frame(i, (H, W)))[None] for i in range(T)]
    b = [rgb_to_tensor(synthetic_frame(7 * i + 3, (H, W)))[None] for i in range(T)]
    assert_videos_do_not_mix(pipeline.method, a, b)
    zeros = Pipeline.from_file(tmp_path / "latest_net_G0.pth")
    assert_videos_do_not_mix(zeros.method, a, b)


@pytest.mark.parametrize("method", ["shortcut", "sparse", "spatial", "fast", "reuse"])
def test_per_frame_methods_refuse_a_vid2vid_model(method, tmp_path, capsys):
    model, folder = _vid2vid(tmp_path), _labels(tmp_path)
    code, _, err = run_cli(["translate", folder, tmp_path / "o.mp4", "--model", model, "--label-nc", LABEL_NC,
                            "--method", method, "--quiet"], capsys)  # fmt: skip
    assert code == 2 and "Traceback" not in err and "latest_net_G0.pth" in err and err.count(". ") == 0
    if method in ("spatial", "fast"):  # they run on a vid2vid teacher, with the student distilled from it
        assert f"--method {method} needs a trained student model file (made by `fastv2v distill student`)" in err
    else:
        assert f"--method {method} needs a per-frame generator" in err and "use --method teacher" in err


@pytest.mark.parametrize("problem", ["label_id", "missing_start", "bad_start", "vid2vid_start", "start_on_per_frame"])
def test_bad_input_is_one_clear_sentence(problem, tmp_path, capsys):
    model = _vid2vid(tmp_path)
    folder = _labels(tmp_path, top=LABEL_NC + 3 if problem == "label_id" else LABEL_NC - 1)
    extra = {"missing_start": ["--start", "video:missing.mp4"], "bad_start": ["--start", "first"],
             "vid2vid_start": ["--start", f"model:{model}"]}.get(problem, [])  # fmt: skip
    if problem == "start_on_per_frame":
        model, extra = _single(tmp_path), ["--start", "zeros"]
    out = tmp_path / "o.mp4"
    code, _, err = run_cli(["translate", folder, out, "--model", model, "--label-nc", LABEL_NC, "--quiet", *extra],
                           capsys)  # fmt: skip
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1 and not out.exists()
    assert {
        "label_id": f"label ID {LABEL_NC + 3}",
        "missing_start": "missing.mp4 does not exist",
        "bad_start": "--start takes zeros, video:PATH or model:PATH",
        "vid2vid_start": "must be a per-frame generator",
        "start_on_per_frame": "--start applies to vid2vid",
    }[problem] in err


def test_bench_reports_the_teacher_row_with_its_macs(tmp_path, capsys):
    from fastv2v.generators import load_generator
    from fastv2v.metrics.profile import profile

    model = _vid2vid(tmp_path, label_nc=0)
    frames = _real(tmp_path, frames=3, size=(H, W), name="frames")
    out = tmp_path / "bench"
    code, _, err = run_cli(["bench", "--model", model, "--input", frames, "--methods", "teacher", "--no-e2e",
                            "--out", out, "--quiet"], capsys)  # fmt: skip
    assert code == 0, err
    row = json.loads((out / "bench.json").read_text())["results"][0]
    g = load_generator(model)
    window = torch.zeros(1, 3 * T_G, H, W, device="meta")
    one = profile(g, window, torch.zeros(1, 3 * (T_G - 1), H, W, device="meta"))
    assert row["method"] == "teacher" and row["frames"] == 3 and row["keyframes"] == 3
    counter = MacCounter()  # every call is one whole vid2vid call; the first (raw only) skips the warp
    list(drive(Pipeline.from_file(model), [synthetic_frame(i, (H, W)) for i in range(3)], observers=[counter]))
    assert counter.per_frame[1:] == [(one.macs_exact, one.macs_paper)] * 2
    assert 0.99 * one.macs_exact < counter.per_frame[0][0] < one.macs_exact
    assert row["macs_total"] == {"exact": counter.total[0], "paper": counter.total[1]}
    code, stdout, _ = run_cli(["profile", "--model", model, "--size", f"{H}x{W}"], capsys)
    assert code == 0 and "MACs per frame" in stdout


def test_dtype_auto_times_a_vid2vid_call_and_graph_backends_refuse_before_timing(tmp_path, monkeypatch):
    """``--dtype auto`` times one teacher call, which for vid2vid takes the window and the previous
    outputs; a graph backend refuses a sequential teacher before any precision is timed."""
    import fastv2v.precision as precision
    from fastv2v.errors import UserError
    from fastv2v.runtimes import _probe, prepare

    pipeline = Pipeline.from_file(_vid2vid(tmp_path), label_nc=LABEL_NC)
    assert _probe(pipeline, "torch", torch.device("cpu"), (H, W), None, None)("fp32") > 0
    monkeypatch.setattr(precision, "native", lambda dtype, device: True)  # as on a CPU with native bf16
    assert prepare(pipeline, dtype="auto", size=(H, W), quiet=True)[1] in ("fp32", "bf16", "fp16")

    def no_timing(*args, **kwargs):
        raise AssertionError("a precision was timed before the refusal")

    monkeypatch.setattr(precision, "best_seconds", no_timing)
    with pytest.raises(UserError, match="runs on --backend torch only"):
        prepare(pipeline, backend="openvino", dtype="auto", size=(H, W))
