"""`fastv2v translate` end to end: formats, frame rate, audio, and every bad input."""

import subprocess
import sys
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from conftest import run_cli
from fastv2v.cli import main
from fastv2v.data.labels import write_label_map
from fastv2v.data.video import open_frames
from fastv2v.generators import GlobalGenerator, ResnetGenerator, load_generator, save_generator


def test_video_keeps_ntsc_rate_and_audio(teacher, make_video, tmp_path, capsys):
    src = make_video(frames=6, size=(32, 48), fps=Fraction(30000, 1001), audio=True)
    out = tmp_path / "out.mp4"
    code, stdout, _ = run_cli(["translate", src, out, "--model", teacher, "--quiet"], capsys)
    assert code == 0
    assert "frames/s end to end" in stdout and "model only" in stdout
    with av.open(str(out)) as c:
        assert c.streams.video[0].average_rate == Fraction(30000, 1001)
        assert len(c.streams.audio) == 1
    with open_frames(out) as frames:
        assert len(list(frames)) == 6 and (frames.info.height, frames.info.width) == (32, 48)


def test_output_equals_teacher_per_frame(teacher, make_video, tmp_path, capsys):
    src = make_video(frames=3, size=(32, 48))
    out = tmp_path / "frames"
    batched = tmp_path / "batched"
    assert run_cli(["translate", src, out, "--model", teacher, "--quiet"], capsys)[0] == 0
    assert run_cli(["translate", src, batched, "--model", teacher, "--quiet", "--batch", "2"], capsys)[0] == 0
    g = load_generator(teacher)
    with open_frames(src) as frames, open_frames(out) as written, open_frames(batched) as batch_written:
        for frame, result, batch_result in zip(frames, written, batch_written, strict=True):
            with torch.no_grad():
                expected = g.decode_output(g(g.encode_input(torch.from_numpy(frame[None]))))[0].numpy()
            assert np.array_equal(result, expected)  # lossless PNG output: bit-exact teacher frames
            # Batched convolutions may round differently in the last float bit: at most one level.
            assert np.abs(batch_result.astype(int) - expected).max() <= 1


def test_single_image_and_size_option(teacher, make_image_folder, tmp_path, capsys):
    folder = make_image_folder(["1.png"], size=(30, 40))
    out = tmp_path / "one.png"
    code, _, _ = run_cli(["translate", folder / "1.png", out, "--model", teacher, "--size", "32x40", "--quiet"], capsys)
    assert code == 0 and out.exists()


def test_label_map_folder_with_unknown_id_is_refused(tmp_path, capsys):
    g = GlobalGenerator(label_nc=4, ngf=4, n_downsampling=2, n_blocks=1)
    model = tmp_path / "labels.safetensors"
    save_generator(model, g)
    folder = tmp_path / "labels"
    folder.mkdir()
    for i, top in enumerate([3, 7]):
        ids = np.zeros((16, 16), np.uint8)
        ids[4:8, 4:8] = top
        write_label_map(folder / f"{i}.png", ids)
    out = tmp_path / "scene.mp4"
    code, _, err = run_cli(["translate", folder, out, "--model", model, "--quiet"], capsys)
    assert code == 2 and "label ID 7" in err and "4 classes" in err and str(folder) in err
    assert not out.exists() and list(tmp_path.glob("*partial*")) == []


@pytest.mark.parametrize("problem", ["missing", "not_video", "zero_frames", "bad_keys", "unwritable"])
def test_bad_input_is_one_clear_sentence(problem, teacher, make_video, tmp_path, capsys):
    src, out, model, extra = make_video(frames=2), tmp_path / "out.mp4", teacher, []
    if problem == "missing":
        src = tmp_path / "nowhere.mp4"
    elif problem == "not_video":
        src = tmp_path / "notes.mp4"
        src.write_text("not a video\n" * 20)
    elif problem == "zero_frames":
        src = tmp_path / "zero.mp4"
        with av.open(str(src), "w") as c:
            s = c.add_stream("libx264", rate=25)
            s.width, s.height, s.pix_fmt = 48, 32, "yuv420p"
            c.mux(s.encode(None))
    elif problem == "bad_keys":
        extra = ["--arch", "resnet_9blocks"]
    elif problem == "unwritable":
        out = tmp_path / "no" / "such" / "dir" / "out.mp4"
    code, _, err = run_cli(["translate", src, out, "--model", model, "--quiet", *extra], capsys)
    assert code != 0
    line = err.strip()
    assert line.startswith("fastv2v: error:") and "\n" not in line and "Traceback" not in line
    named = {"missing": src, "not_video": src, "zero_frames": src, "bad_keys": model, "unwritable": out.parent}
    assert str(named[problem]) in line
    if problem == "bad_keys":
        assert "missing keys" in line and "unexpected keys" in line
    assert not out.exists()


def test_truncated_video_translates_what_decodes_then_fails(teacher, make_video, tmp_path, capsys):
    full = make_video(frames=16, noise=30)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(full.read_bytes()[: int(full.stat().st_size * 0.6)])
    out = tmp_path / "out.mp4"
    code, _, err = run_cli(["translate", cut, out, "--model", teacher, "--quiet"], capsys)
    assert code != 0 and "truncated" in err and str(cut) in err
    with open_frames(out) as frames:
        assert 0 < len(list(frames)) < 16


def test_interrupted_run_leaves_no_output(teacher, make_video, tmp_path, monkeypatch, capsys):
    src = make_video(frames=6)
    out = tmp_path / "out.mp4"
    calls = {"n": 0}
    forward = ResnetGenerator.forward

    def interrupt_on_third(self, x):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return forward(self, x)

    monkeypatch.setattr(ResnetGenerator, "forward", interrupt_on_third)
    code, _, err = run_cli(["translate", src, out, "--model", teacher, "--quiet"], capsys)
    assert code == 130 and "interrupted" in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == sorted(["input.mp4", teacher.name])


def test_console_script_prints_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "fastv2v.cli", "translate", str(tmp_path / "x.mp4"), str(tmp_path / "y.mp4"),
         "--model", str(tmp_path / "m.pth")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "does not exist" in result.stderr


@pytest.mark.parametrize("method", ["sparse", "repeat"])
def test_online_methods_through_translate(method, teacher, make_video, tmp_path, capsys):
    out = tmp_path / "frames"
    code, _, _ = run_cli(["translate", make_video(frames=4), out, "--model", teacher, "--quiet", "--method", method,
                          "--interval", "2"], capsys)  # fmt: skip
    assert code == 0
    with open_frames(out) as frames:
        assert len(list(frames)) == 4


def test_method_needing_a_bundle_says_so(teacher, make_video, tmp_path, capsys):
    code, _, err = run_cli(["translate", make_video(frames=2), tmp_path / "o.mp4", "--model", teacher, "--quiet",
                            "--method", "shortcut"], capsys)  # fmt: skip
    assert code == 2 and "needs a trained shortcut model file" in err


@pytest.mark.parametrize("extra,message", [
    ([], "is the input itself"),
    (["--device", "bogus"], "is not a device name"),
    (["--method", "sparse", "--threshold", "nan"], "threshold must be a number >= 0, not nan"),
    (["--method", "repeat", "--keyframes", "peaks"], "--keyframes does not apply to --method repeat"),
])
def test_more_bad_options_are_one_sentence_and_leave_the_input_alone(extra, message, teacher, make_video, capsys):
    src = make_video(frames=3)
    before = src.read_bytes()
    out = src if not extra else src.with_name("out.mp4")
    assert main(["translate", str(src), str(out), "--model", str(teacher), "--quiet", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert src.read_bytes() == before
