"""A precision the device only emulates is said, in one line, with the slowdown measured here."""

import torch

import fastv2v.precision as precision
from fastv2v.cli import main


def test_emulated_bf16_is_said_once(monkeypatch, teacher, make_video, tmp_path, capsys):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"sse4_2", "avx2", "fma"}))
    assert precision.native("bf16", torch.device("cpu")) is False
    out = tmp_path / "o.mp4"
    assert main(["translate", str(make_video(frames=2)), str(out), "--model", str(teacher), "--dtype", "bf16",
                 "--quiet"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--dtype bf16 is emulated here" in err and "slower than in fp32" in err
    assert out.exists()  # asked for, so it still runs


def test_native_or_fp32_says_nothing(monkeypatch, teacher, make_video, tmp_path, capsys):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    for dtype in ("bf16", "fp32"):
        out = tmp_path / f"{dtype}.mp4"
        assert main(["translate", str(make_video(frames=2)), str(out), "--model", str(teacher), "--dtype", dtype,
                     "--quiet"]) == 0  # fmt: skip
    assert capsys.readouterr().err == ""


def test_unknown_flags_are_not_guessed(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: None)
    assert precision.native("bf16", torch.device("cpu")) is None
    assert precision.warn_if_emulated("bf16", torch.device("cpu")) is None
