"""``fastv2v live``: a generated clip streamed over loopback UDP (MPEG-TS, real-time pacing) through
the command, as a camera or network source would be (there is no camera here)."""

from __future__ import annotations

import json
import socket
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from fastv2v.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "fastv2v" / "weights"
SHORTCUT = WEIGHTS / "edges_shortcut.safetensors"
TEACHER = WEIGHTS / "edges_teacher.safetensors"
FPS = 25
SIZE = (64, 128)


def moving(i: int) -> np.ndarray:
    h, w = SIZE
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x * 2 + 5 * i) % 256, (y * 3 + 3 * i) % 256, np.full_like(x, (7 * i) % 256)], -1).astype(np.uint8)


def free_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _listening(port: int) -> bool:
    """Whether the receiver has bound the port (FFmpeg's UDP input does not share it)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("127.0.0.1", port))
        return False
    except OSError:
        return True
    finally:
        s.close()


class Sender(threading.Thread):
    """Stream ``frames`` frames at 25 fps to udp://127.0.0.1:port as MPEG-TS once the receiver
    listens; ``static``: the same picture every frame."""

    def __init__(self, frames: int = 60, static: bool = False):
        super().__init__(daemon=True)
        self.port, self.frames, self.static = free_port(), frames, static
        self.sent = 0

    def run(self) -> None:
        deadline = time.monotonic() + 60
        while not _listening(self.port) and time.monotonic() < deadline:
            time.sleep(0.02)
        with av.open(f"udp://127.0.0.1:{self.port}?pkt_size=1316", "w", format="mpegts") as out:
            stream = out.add_stream("mpeg2video", rate=FPS)
            stream.height, stream.width = SIZE
            stream.pix_fmt = "yuv420p"
            stream.options = {"g": "12", "bf": "0"}
            start = time.perf_counter()
            for i in range(self.frames):
                frame = av.VideoFrame.from_ndarray(moving(0 if self.static else i), format="rgb24")
                frame.pts, frame.time_base = i, Fraction(1, FPS)
                out.mux(stream.encode(frame))
                self.sent += 1
                pause = start + (i + 1) / FPS - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
            out.mux(stream.encode(None))

    @property
    def url(self) -> str:
        return f"udp://127.0.0.1:{self.port}"


def run_live(tmp_path, *extra, frames=60, static=False, model=SHORTCUT, name="out.mp4"):
    sender = Sender(frames, static)
    sender.start()
    report = tmp_path / "report.json"
    rc = main(["live", sender.url, str(tmp_path / name), "--model", str(model), "--source-timeout", "1",
               "--report", str(report), "--quiet", *extra])  # fmt: skip
    sender.join(timeout=30)
    return rc, (json.loads(report.read_text()) if report.exists() else None), sender


def decoded_frames(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def test_udp_stream_is_translated_within_the_budget(tmp_path, capsys):
    rc, report, sender = run_live(tmp_path, "--max-latency-ms", "250", "--skip-below", "0", frames=100)
    assert rc == 0
    out = tmp_path / "out.mp4"
    frames = report["frames"]
    assert decoded_frames(out) == frames["written"] > 0
    assert frames["written"] >= sender.sent // 2  # the start (probing, warm-up) may drop some, not most
    assert frames["key"] > 0 and frames["non_key"] > 0  # shortcut: its own key gap
    assert report["fps"] > 10 and report["latency_ms"]["p50"] > 0
    assert report["latency_ms"]["max"] <= 250  # never behind by more than the budget
    assert frames["dropped"] == frames["captured"] - frames["written"]
    err = capsys.readouterr()
    assert "frames/s" in err.out and "latency p50" in err.out and "dropped" in err.out
    assert "stopped cleanly" in err.err
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]


def test_per_second_lines_are_printed(tmp_path, capsys):
    sender = Sender(45)
    sender.start()
    rc = main(["live", sender.url, str(tmp_path / "o.mp4"), "--model", str(SHORTCUT), "--source-timeout", "1"])
    sender.join(timeout=30)
    assert rc == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("live:")]
    assert lines and all("frames/s" in line and "p95" in line and "dropped" in line for line in lines)


def test_a_source_that_vanishes_stops_cleanly_and_the_file_is_valid(tmp_path, capsys):
    rc, report, _ = run_live(tmp_path, "--duration", "30", frames=30)  # the sender just stops after 30 frames
    assert rc == 0
    assert report["ended"].endswith("(the stream ended or the sender went away)")
    assert decoded_frames(tmp_path / "out.mp4") == report["frames"]["written"] > 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sent nothing for 1 s" in err[0]


def test_an_unopenable_sink_is_one_sentence_and_leaves_nothing(tmp_path, capsys):
    rc = main(["live", "udp://127.0.0.1:9", str(tmp_path / "missing" / "out.mp4"), "--model", str(SHORTCUT)])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_a_buffered_method_is_refused(tmp_path, capsys):
    rc = main(["live", "udp://127.0.0.1:9", str(tmp_path / "out.mp4"), "--model", str(TEACHER), "--method", "interp"])
    assert rc == 2
    assert "cannot run live" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_static_stream_is_mostly_skipped(tmp_path):
    rc, report, _ = run_live(tmp_path, static=True, frames=125)  # 5 s: a loaded machine's slow start fits
    assert rc == 0
    frames = report["frames"]
    assert frames["skipped"] >= 0.7 * frames["written"] > 0
    assert frames["key"] + frames["non_key"] <= 0.3 * frames["written"]


def test_the_teacher_repeats_under_load_and_keeps_the_budget(tmp_path):
    """The teacher (about 60 ms a frame here, 40 ms between frames) cannot keep up: the last
    output is shown again (the key gap grows) and nothing is written late."""
    rc, report, _ = run_live(tmp_path, "--max-latency-ms", "150", "--max-gap", "4", model=TEACHER, frames=60)
    assert rc == 0
    assert report["frames"]["key"] > 0
    assert report["latency_ms"]["max"] <= 150
    assert report["key_gap"]["max"] <= 4


def test_under_load_the_key_gap_grows_before_frames_drop():
    """The controller on its own, fed a 25 fps stream by a model slower than real time: first
    non-key frames replace key frames (the gap grows past the method's own), only then drops."""
    import torch

    from fastv2v.engine.live import Captured, Controller, LiveStats
    from fastv2v.pipeline import Pipeline

    pipeline = Pipeline.from_file(SHORTCUT, "shortcut", interval=2)
    method = pipeline.method
    slow_key, slow_non_key = method.key_frame, method.non_key_frame

    def key_frame(x, a=None):
        time.sleep(0.09)
        return slow_key(x, a)

    def non_key_frame(x, reference, *args, **kwargs):
        time.sleep(0.05)  # slower than the 40 ms between frames: the queue must grow
        return slow_non_key(x, reference, *args, **kwargs)

    method.key_frame, method.non_key_frame = key_frame, non_key_frame
    stats = LiveStats()
    controller = Controller(pipeline, torch.device("cpu"), budget=0.25, max_gap=6, skip_below=0, stats=stats)
    controller.key_cost.value, controller.cheap_cost.value = 0.09, 0.05
    start = time.perf_counter()
    written = []
    for i in range(50):
        at = start + i / FPS
        if time.perf_counter() < at:
            time.sleep(at - time.perf_counter())
        out = controller.step(Captured(i, moving(i), None, at), 0)
        if out is not None:
            written.append((out.kind, time.perf_counter() - at))
    assert stats.grown_at is not None and stats.first_drop_at is not None
    assert stats.grown_at < stats.first_drop_at  # the gap grew before anything was dropped
    assert stats.native_gap == 2 < stats.max_gap <= 6
    assert stats.dropped > 0 and stats.keys > 0
    assert max(late for _, late in written) <= 0.25 + 0.05  # the writer's own check keeps the rest
