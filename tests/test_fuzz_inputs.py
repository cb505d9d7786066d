"""Broken inputs through `fastv2v translate`, generated at test time (a small fuzz, a few seconds).

Whatever the damage, the command either succeeds with a readable output of every frame that
decoded, or exits 2 with one sentence naming the file and leaves nothing behind: no output and
no hidden temporaries. A truncated video is the one exception: the frames that decoded are
written, and the error says so (the "is truncated" message).
"""

import re
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import synthetic_frame
from fastv2v.cli import main
from fastv2v.data.video import open_frames
from fastv2v.generators import GlobalGenerator, ResnetGenerator, save_generator

CUTS = [0.01, 0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.75, 0.9, 0.99]  # fractions of the file kept


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny RGB teacher (an upstream .pth) and a tiny label-map teacher (.safetensors)."""
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    rgb = folder / "latest_net_G_A.pth"
    torch.save({f"module.{k}": v for k, v in ResnetGenerator(ngf=4, n_blocks=1).state_dict().items()}, rgb)
    labels = folder / "labels.safetensors"
    save_generator(labels, GlobalGenerator(label_nc=4, ngf=4, n_downsampling=2, n_blocks=1))
    return {"rgb": rgb, "labels": labels}


def translate_checked(src: Path, model: Path, tmp_path: Path, capsys) -> tuple[int, str]:
    """Run the CLI on ``src`` into a fresh folder, check the outcome is an allowed one, and
    return the exit code and the error line (empty on success)."""
    folder = tmp_path / f"out_{src.name}"
    folder.mkdir()
    out = folder / "result.mp4"
    code = main(["translate", str(src), str(out), "--model", str(model), "--quiet"])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    left = sorted(p.name for p in folder.iterdir())
    if code == 0:
        written = int(re.search(r"wrote (\d+) frames", captured.out).group(1))
        with open_frames(src, labels="labels" in model.name) as frames:
            decoded = sum(1 for _ in frames)
        with open_frames(out) as frames:
            assert sum(1 for _ in frames) == written == decoded
        assert left == ["result.mp4"]
        return code, ""
    lines = captured.err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("fastv2v: error: "), captured.err
    assert str(src) in lines[0]
    if " is truncated: " in lines[0]:  # the frames that decoded were written, and that is said
        kept = int(re.search(r"the (\d+) that decoded are in", lines[0]).group(1))
        with open_frames(out) as frames:
            assert sum(1 for _ in frames) == kept > 0
        assert left == ["result.mp4"]
    else:
        assert left == [], left
    return code, lines[0]


def fuzz_corpus(make_video, make_image_folder, tmp_path) -> list[tuple[Path, str]]:
    """The broken inputs, each with the model kind it is given to."""
    rng = np.random.default_rng(0)
    cases = []
    full = make_video("full.mp4", frames=8, audio=True, noise=30).read_bytes()
    for k, keep in enumerate(CUTS):  # truncated: refused early on, partly decoded later
        cut = tmp_path / f"cut{k}.mp4"
        cut.write_bytes(full[: int(len(full) * keep)])
        cases.append((cut, "rgb"))
    for ext in (".mp4", ".mkv"):  # random bytes overwritten anywhere: header, tags, index, frames
        data = np.frombuffer(make_video(f"clean{ext}", frames=6, audio=True, noise=30).read_bytes(), np.uint8)
        for k in range(3):
            damaged = data.copy()
            damaged[rng.integers(0, len(damaged), 30)] = rng.integers(0, 256, 30, dtype=np.uint8)
            src = tmp_path / f"flipped{k}{ext}"
            src.write_bytes(damaged.tobytes())
            cases.append((src, "rgb"))
    not_media = {
        "random.mp4": rng.integers(0, 256, 4000, dtype=np.uint8).tobytes(),
        "random.png": rng.integers(0, 256, 4000, dtype=np.uint8).tobytes(),
        "notes.mp4": b"this is not a video\n" * 40,
        "empty.mp4": b"",
    }
    for name, data in not_media.items():
        (tmp_path / name).write_bytes(data)
        cases.append((tmp_path / name, "rgb"))
    folder = make_image_folder([f"{i}.png" for i in range(5)])
    (folder / "3.png").write_bytes((folder / "3.png").read_bytes()[:60])  # cut inside the image data
    cases.append((folder, "rgb"))
    for mode in ("RGB", "CMYK", "F"):  # not label maps
        src = tmp_path / f"labels_{mode}.tif"
        Image.fromarray(synthetic_frame(1, (16, 16))).convert(mode).save(src)
        cases.append((src, "labels"))
    return cases


def test_fuzzed_inputs_translate_or_fail_in_one_sentence(models, make_video, make_image_folder, tmp_path, capsys):
    outcomes = {}
    for src, kind in fuzz_corpus(make_video, make_image_folder, tmp_path):
        outcomes[src.name] = translate_checked(src, models[kind], tmp_path, capsys)
    errors = [line for _, line in outcomes.values()]
    assert any(" is truncated: " in line for line in errors)  # a partly decodable cut is reported
    assert "3.png" in outcomes["frames"][1]  # the corrupt frame is named, not just its folder
    for name in ("random.mp4", "random.png", "notes.mp4", "empty.mp4", "labels_RGB.tif", "labels_F.tif"):
        assert outcomes[name][0] == 2, name


@pytest.mark.parametrize("ext,tag", [(".mp4", b"Lavf"), (".mp4", b"VideoHandler"), (".mp4", b"SoundHandler"),
                                     (".mkv", b"Lavf")])  # fmt: skip
def test_garbled_metadata_does_not_stop_the_frames(ext, tag, models, make_video, tmp_path, capsys):
    # Tags that are not valid UTF-8 (a damaged header, a tool writing Latin-1) used to crash the
    # reader with a UnicodeDecodeError; the frames are all there, so the file translates.
    data = make_video(f"tagged{ext}", frames=3, audio=True).read_bytes()
    assert tag in data
    src = tmp_path / f"garbled{ext}"
    src.write_bytes(data.replace(tag, b"\xff\xfe" + tag[2:]))
    assert translate_checked(src, models["rgb"], tmp_path, capsys)[0] == 0


def test_unreadable_audio_stream_is_one_sentence(models, make_video, tmp_path, capsys):
    # An audio track of an unknown codec (here its codec ID is garbled) cannot be carried over;
    # it used to end in an AttributeError traceback.
    data = make_video("sound.mkv", frames=3, audio=True).read_bytes()
    assert b"A_AAC" in data
    src = tmp_path / "odd_audio.mkv"
    src.write_bytes(data.replace(b"A_AAC", b"A_ZZZ"))
    code, error = translate_checked(src, models["rgb"], tmp_path, capsys)
    assert code == 2 and "audio stream that cannot be read" in error


def test_out_of_order_audio_packet_is_left_out_and_said(models, make_video, tmp_path, capsys):
    # A damaged block time puts one audio packet before its predecessor; the muxer refuses it.
    # The translation goes on without that packet (as players do) and the summary says so.
    src = make_video("sound.mkv", frames=8, audio=True)
    with av.open(str(src)) as c:
        blocks = [p.pos for p in c.demux(c.streams.audio[0]) if p.size]
    data = bytearray(src.read_bytes())
    first, third = blocks[1], blocks[3]  # each at its block's track number (2), then a 2-byte time
    assert data[first] == data[third] == 0x82
    data[third + 1 : third + 3] = data[first + 1 : first + 3]
    src.write_bytes(bytes(data))
    out = tmp_path / "out.mp4"
    assert main(["translate", str(src), str(out), "--model", str(models["rgb"]), "--quiet"]) == 0
    assert "1 damaged audio packet of " in capsys.readouterr().out
    with av.open(str(out)) as c:
        assert len(c.streams.audio) == 1 and c.streams.video[0].frames == 8
