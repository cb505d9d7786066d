"""Variable frame rate: each output frame keeps its input frame's time, and audio stays in sync."""

from fractions import Fraction

import av
import numpy as np

from conftest import synthetic_frame
from fastv2v.cli import main
from fastv2v.data.video import open_frames, open_writer

MS = Fraction(1, 1000)
#: frame times in ms, with gaps of 0.2 s and 0.4 s (a screen recording, a phone clip)
VFR_MS = [0, 100, 200, 400, 500, 600, 1000, 1100]


def make_vfr(path, times_ms=VFR_MS, audio=True):
    """An H.264 mp4 whose frames sit at ``times_ms``, with a tone until 0.1 s after the last."""
    with av.open(str(path), "w") as c:
        video = c.add_stream("libx264", rate=10)
        video.height, video.width, video.pix_fmt = 32, 48, "yuv420p"
        video.time_base = video.codec_context.time_base = MS
        if audio:
            sound = c.add_stream("aac", rate=48000)
            sound.layout = "mono"
        for i, t in enumerate(times_ms):
            frame = av.VideoFrame.from_ndarray(synthetic_frame(i), format="rgb24")
            frame.pts, frame.time_base = t, MS
            c.mux(video.encode(frame))
        c.mux(video.encode(None))
        if audio:
            n = 48 * (times_ms[-1] + 100)
            tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / 48000)).astype(np.float32)
            for start in range(0, n, 1024):
                af = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[None, start : start + 1024]), "fltp", "mono")
                af.sample_rate, af.pts, af.time_base = 48000, start, Fraction(1, 48000)
                c.mux(sound.encode(af))
            c.mux(sound.encode(None))
    return path


def frame_times(path):
    """Presentation times (seconds, exact) of the video frames, the video time base, audio seconds."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        times = [f.pts * v.time_base for f in c.decode(v)]
        a = c.streams.audio[0] if c.streams.audio else None
        audio = a.duration * a.time_base if a is not None and a.duration else None
        return times, v.time_base, audio


def test_variable_frame_rate_video_keeps_frame_times_and_audio(teacher, tmp_path, capsys):
    src = make_vfr(tmp_path / "vfr.mp4")
    out = tmp_path / "out.mp4"
    assert main(["translate", str(src), str(out), "--model", str(teacher), "--quiet"]) == 0
    (times_in, _, audio_in), (times_out, base_out, audio_out) = frame_times(src), frame_times(out)
    assert len(times_out) == len(VFR_MS)
    t0 = times_in[0]
    assert all(abs((b - t0) - a) <= base_out for a, b in zip(times_out, times_in)), (times_in, times_out)
    assert times_out[VFR_MS.index(1000)] == 1  # not at 0.82 s, where evenly spaced frames would put it
    assert audio_in is not None and audio_out is not None
    assert abs(audio_out - audio_in) <= Fraction(1024, 48000)  # within one AAC packet


def test_writer_takes_frame_times(tmp_path):
    # Irregular times are kept; 29.97 fps rounded to milliseconds goes back onto the exact grid;
    # a repeated time (a damaged input) still gets its frame, one tick later.
    ntsc = Fraction(30000, 1001)
    cases = {  # name: (fps the reader reports, input times, output times)
        "vfr.mp4": (Fraction(40, 9), [0, 100, 300, 1000], [0, Fraction(1, 10), Fraction(3, 10), 1]),
        "ntsc.mp4": (ntsc, [0, 33, 67, 100, 133], [k / ntsc for k in range(5)]),
    }
    for name, (fps, times_ms, expected) in cases.items():
        with open_writer(tmp_path / name, fps=fps, time_base=MS) as w:
            for i, t in enumerate(times_ms):
                w.write(synthetic_frame(i), time=t * MS)
        assert frame_times(tmp_path / name)[0] == expected
    with open_writer(tmp_path / "dup.mp4", fps=25, time_base=MS) as w:
        for i, t in enumerate([0, 40, 40, 120]):
            w.write(synthetic_frame(i), time=t * MS)
    times = frame_times(tmp_path / "dup.mp4")[0]
    assert len(times) == 4 and times[1] == Fraction(40, 1000) < times[2] <= times[1] + MS < times[3]
    with open_frames(tmp_path / "ntsc.mp4") as frames:
        assert frames.info.fps == ntsc
