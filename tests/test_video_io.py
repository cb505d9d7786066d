"""Video I/O: reading, writing, audio, labels, truncation, errors, atomic outputs."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from conftest import synthetic_frame
from fastv2v.data.labels import read_label_map, write_label_map
from fastv2v.data.video import natural_key, open_frames, open_writer, parse_fps
from fastv2v.errors import UserError

NTSC = Fraction(30000, 1001)


def _leftovers(folder, keep):
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def _audio_seconds(path):
    with av.open(str(path)) as c:
        if not c.streams.audio:
            return None
        s = c.streams.audio[0]
        return float(s.duration * s.time_base), s.codec_context.name


# ---- reading -------------------------------------------------------------------------------


def test_read_video_info_and_frames(make_video):
    path = make_video(frames=8, size=(32, 48), audio=True)
    with open_frames(path) as src:
        info = src.info
        assert (info.kind, info.height, info.width, info.fps, info.frames, info.has_audio) == (
            "video", 32, 48, NTSC, 8, True)
        frames = list(src)
    assert len(frames) == 8 and src.frames_lost == 0
    assert all(f.shape == (32, 48, 3) and f.dtype == np.uint8 for f in frames)
    assert np.abs(frames[5].astype(int) - synthetic_frame(5)).mean() < 6
    # A second pass starts again from the first frame.
    with open_frames(path) as src:
        assert len(list(src)) == 8 and len(list(src)) == 8


def test_round_trip_keeps_count_size_and_exact_fps(make_video, tmp_path):
    src_path = make_video(frames=8)
    for ext in ("mp4", "mkv"):
        out = tmp_path / f"out.{ext}"
        with open_frames(src_path) as src, open_writer(out, fps=src.info.fps) as w:
            for f in src:
                w.write(f)
        with av.open(str(out)) as c:
            assert c.streams.video[0].average_rate == NTSC
        with open_frames(out) as back:
            assert (back.info.height, back.info.width, back.info.fps) == (32, 48, NTSC)
            assert len(list(back)) == 8 and back.frames_lost == 0


def test_odd_size_is_padded_by_one_pixel_and_lossless_is_exact(tmp_path):
    frames = [synthetic_frame(i, (33, 47)) for i in range(3)]
    with open_writer(tmp_path / "odd.mp4", fps=25) as w:
        for f in frames:
            w.write(f)
    with open_frames(tmp_path / "odd.mp4") as src:
        out = list(src)
    assert out[0].shape == (34, 48, 3) and len(out) == 3
    assert np.abs(out[1][:33, :47].astype(int) - frames[1]).mean() < 6
    with open_writer(tmp_path / "exact.mp4", fps=25, lossless=True) as w:
        for f in frames:
            w.write(f)
    with open_frames(tmp_path / "exact.mp4") as src:
        assert all(np.array_equal(a, b) for a, b in zip(src, frames, strict=True))


def test_audio_is_copied_or_transcoded(make_video, tmp_path):
    for name, codec in (("a.mp4", "aac"), ("p.mkv", "pcm_s16le")):  # copy, then transcode
        src_path = make_video(name, frames=12, audio=True, audio_codec=codec)
        out = tmp_path / f"out_{name}.mp4"
        with open_frames(src_path) as src, open_writer(out, fps=src.info.fps, audio_from=src_path) as w:
            for f in src:
                w.write(f)
        seconds, out_codec = _audio_seconds(out)
        assert out_codec == "aac"
        assert abs(seconds - 12 / NTSC) < 0.05
    # No audio stream in the source: the output has none either.
    silent = make_video("silent.mp4", frames=2)
    with open_writer(tmp_path / "none.mp4", fps=NTSC, audio_from=silent) as w:
        w.write(synthetic_frame(0))
    assert _audio_seconds(tmp_path / "none.mp4") is None


def test_folder_is_sorted_naturally(make_image_folder):
    names = ["1.png", "2.png", "10.png", "frame_11.jpg", "frame_100.png"]
    written = ["frame_100.png", "10.png", "1.png", "frame_11.jpg", "2.png"]
    assert sorted(written, key=natural_key) == names
    folder = make_image_folder(written)
    (folder / "notes.txt").write_text("not a frame")
    (folder / ".hidden.png").write_bytes(b"")
    with open_frames(folder, fps="24000/1001") as src:
        assert (src.info.kind, src.info.frames, src.info.fps) == ("folder", 5, Fraction(24000, 1001))
        blue = [int(f[0, 0, 2]) for f in src]  # synthetic_frame(k) has blue = 40 * k
    assert np.allclose(blue, [40 * written.index(n) for n in names], atol=8)  # jpg is lossy


def test_single_image_and_default_fps(make_image_folder):
    folder = make_image_folder(["a.png"])
    with open_frames(folder / "a.png") as src:
        assert (src.info.kind, src.info.frames, src.info.fps) == ("image", 1, Fraction(25))
        (frame,) = list(src)
    assert np.array_equal(frame, synthetic_frame(0))


def test_label_maps_palette_and_16bit(tmp_path):
    ids = np.array([[0, 1, 2], [3, 4, 250]], dtype=np.uint8)
    palette = np.random.default_rng(0).integers(0, 256, (256, 3), dtype=np.uint8)
    write_label_map(tmp_path / "p.png", ids, palette=palette)
    assert Image.open(tmp_path / "p.png").mode == "P"
    read = read_label_map(tmp_path / "p.png")
    assert read.dtype == np.uint8 and np.array_equal(read, ids)  # indices, not colours

    deep = np.array([[0, 300], [65535, 7]], dtype=np.uint16)
    folder = tmp_path / "labels"
    folder.mkdir()
    write_label_map(folder / "0.png", deep)
    write_label_map(folder / "1.png", deep[::-1])
    with open_frames(folder, labels=True) as src:
        maps = list(src)
    assert maps[0].dtype == np.uint16 and np.array_equal(maps[0], deep) and np.array_equal(maps[1], deep[::-1])

    with pytest.raises(UserError, match="only 10 classes"):
        list(open_frames(tmp_path / "p.png", labels=True, num_classes=10))


def test_labels_and_rgb_mixups_are_refused(tmp_path, make_video):
    # All refused at open time, before any model work.
    Image.fromarray(synthetic_frame(1)).save(tmp_path / "rgb.png")
    with pytest.raises(UserError, match="colour image"):
        open_frames(tmp_path / "rgb.png", labels=True)
    jpegs = tmp_path / "jpeg_labels"
    jpegs.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(jpegs / "0.jpg")
    with pytest.raises(UserError, match="JPEG"):
        open_frames(jpegs, labels=True)
    write_label_map(tmp_path / "deep.png", np.array([[0, 1000]], dtype=np.uint16))
    with pytest.raises(UserError, match="deep.png"):
        open_frames(tmp_path / "deep.png")
    with pytest.raises(UserError, match="lossless"):
        open_frames(make_video(), labels=True)


def test_truncated_video_yields_what_decodes(make_video, tmp_path):
    full = make_video(frames=16, noise=30)
    data = full.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with open_frames(cut) as src:
        assert src.info.frames == 16
        frames = list(src)
    assert 0 < len(frames) < 16 and src.frames_lost == 16 - len(frames)


def test_unreadable_inputs_give_user_errors(tmp_path, make_video):
    missing = tmp_path / "missing.mp4"
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    empty = tmp_path / "empty"
    empty.mkdir()
    other = tmp_path / "other"
    other.mkdir()
    (other / "readme.txt").write_text("hi")
    head_only = tmp_path / "head.mp4"  # index at the end, cut before it: nothing decodes
    head_only.write_bytes(make_video("late.mp4", faststart=False).read_bytes()[:1000])
    for path, words in ((missing, "does not exist"), (text, "not a video"), (empty, "is empty"),
                        (other, "no image"), (head_only, "truncated")):
        with pytest.raises(UserError, match=words) as err:
            open_frames(path)
        assert str(path) in str(err.value)


def test_zero_frame_video_is_an_error(tmp_path):
    path = tmp_path / "zero.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 48, 32, "yuv420p"
        c.mux(s.encode(None))
    with pytest.raises(UserError, match=str(path)):
        open_frames(path)


def test_parse_fps():
    assert parse_fps("30000/1001") == NTSC and parse_fps(29.97) == NTSC and parse_fps("25") == 25
    with pytest.raises(UserError):
        parse_fps("fast")


# ---- writing -------------------------------------------------------------------------------


def test_folder_and_image_outputs(tmp_path):
    out = tmp_path / "frames"
    with open_writer(out, fps=25) as w:
        for i in range(3):
            w.write(synthetic_frame(i))
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000001.png", "000002.png"]
    with open_frames(out) as src:
        assert all(np.array_equal(a, synthetic_frame(i)) for i, a in enumerate(src))
    with open_writer(out, fps=25) as w:  # a previous output folder is replaced
        w.write(synthetic_frame(9))
    assert [p.name for p in out.iterdir()] == ["000000.png"]

    with open_writer(tmp_path / "one.png", fps=25) as w:
        w.write(synthetic_frame(4))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "one.png")), synthetic_frame(4))
    with pytest.raises(UserError, match="single image"):
        with open_writer(tmp_path / "two.png", fps=25) as w:
            w.write(synthetic_frame(0))
            w.write(synthetic_frame(1))
    assert _leftovers(tmp_path, {"frames", "one.png"}) == []


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    for name in ("out.mp4", "out.png", "outdir"):
        with pytest.raises(RuntimeError):
            with open_writer(tmp_path / name, fps=NTSC) as w:
                w.write(synthetic_frame(0))
                raise RuntimeError("model crashed")
        with pytest.raises(KeyboardInterrupt):
            with open_writer(tmp_path / name, fps=NTSC) as w:
                w.write(synthetic_frame(0))
                raise KeyboardInterrupt
    assert _leftovers(tmp_path, set()) == []


def test_writer_errors_at_open_time(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="does not exist") as err:
        open_writer(tmp_path / "nope" / "out.mp4", fps=25)
    assert "out.mp4" in str(err.value)
    monkeypatch.setattr("os.access", lambda *a, **k: False)  # as root, chmod cannot deny us
    with pytest.raises(UserError, match="permission") as err:
        open_writer(tmp_path / "locked.mp4", fps=25)
    assert "locked.mp4" in str(err.value)
    monkeypatch.undo()
    with pytest.raises(UserError, match="unsupported extension"):
        open_writer(tmp_path / "out.avi", fps=25)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.tex").write_text("precious")
    with pytest.raises(UserError, match="other files"):
        open_writer(busy, fps=25)
    with pytest.raises(UserError, match="does not exist"):
        open_writer(tmp_path / "a.mp4", fps=25, audio_from=tmp_path / "missing.mp4")
    # Zero frames: an error, and no empty file.
    with pytest.raises(UserError, match="No frames"):
        with open_writer(tmp_path / "empty.mp4", fps=25):
            pass
    assert _leftovers(tmp_path, {"busy"}) == []
