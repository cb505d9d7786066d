"""Shared test fixtures: tiny videos and frame folders made at test time (no files checked in).

``make_video`` writes with PyAV directly, not through fastv2v's writer, so reader tests do not
depend on the code they check.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

# The command line's --dtype defaults to auto, which picks bf16 on CPUs that compute it natively
# when it pays: the suite pins fp32 (also for the commands it runs as subprocesses) so outputs
# compare exactly on every CPU model; tests of auto pass --dtype auto themselves.
os.environ["FASTV2V_DTYPE"] = "fp32"
# Graphs exported on the fly by --backend onnxruntime/openvino go to a cache of the test session.
os.environ["FASTV2V_CACHE"] = tempfile.mkdtemp(prefix="fastv2v-test-cache-")
atexit.register(shutil.rmtree, os.environ["FASTV2V_CACHE"], ignore_errors=True)


def run_cli(args, capsys) -> tuple[int, str, str]:
    """``fastv2v ARGS`` in process (arguments made strings): its exit code, stdout and stderr."""
    from fastv2v.cli import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def synthetic_frame(index: int, size: tuple[int, int] = (32, 48)) -> np.ndarray:
    """A smooth RGB frame that moves with ``index`` (gradients compress well and decode stably)."""
    h, w = size
    y, x = np.mgrid[0:h, 0:w]
    r = (x * 160 // max(w - 1, 1) + 5 * index) % 256
    g = (y * 160 // max(h - 1, 1) + 3 * index) % 256
    b = np.full_like(x, (40 * index) % 256)
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


@pytest.fixture
def one_thread():
    """Tiny networks gain nothing from threads, and on shared cores OpenMP spin-waiting makes
    them 10-30x slower: modules of tiny tensors run single-threaded (``pytestmark =
    pytest.mark.usefixtures("one_thread")``), restored afterwards for the other modules."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def make_video(tmp_path):
    """Factory: ``make_video(path=None, frames=8, size=(32, 48), fps=30000/1001, audio=False)``.

    Writes H.264 frames from :func:`synthetic_frame` (sizes must be even) and, with
    ``audio=True``, a 440 Hz tone as long as the video (AAC, or ``audio_codec``). ``faststart``
    puts the mp4 index first, as most web videos have it, so that a truncated copy still opens;
    ``noise`` adds that much random noise so that a byte cut lands mid-video, not mid-keyframe.
    Returns the path.
    """

    def make(
        path: str | Path | None = None,
        frames: int = 8,
        size: tuple[int, int] = (32, 48),
        fps: Fraction = Fraction(30000, 1001),
        audio: bool = False,
        audio_codec: str = "aac",
        faststart: bool = True,
        noise: int = 0,
    ) -> Path:
        path = Path(path) if path is not None else tmp_path / "input.mp4"
        if not path.is_absolute():
            path = tmp_path / path
        fps = Fraction(fps)
        rng = np.random.default_rng(0)
        options = {"movflags": "+faststart"} if faststart and path.suffix in (".mp4", ".mov") else {}
        with av.open(str(path), mode="w", options=options) as container:
            video = container.add_stream("libx264", rate=fps)
            video.height, video.width = size
            video.pix_fmt = "yuv420p"
            video.options = {"crf": "18"}
            video.time_base = 1 / fps
            video.codec_context.time_base = 1 / fps
            if audio:
                sound = container.add_stream(audio_codec, rate=48000)
                sound.layout = "mono"
            for i in range(frames):
                rgb = synthetic_frame(i, size)
                if noise:  # incompressible detail: every frame then takes a similar share of bytes
                    rgb = np.clip(rgb + rng.integers(-noise, noise + 1, rgb.shape), 0, 255).astype(np.uint8)
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts, frame.time_base = i, 1 / fps
                container.mux(video.encode(frame))
            container.mux(video.encode(None))
            if audio:
                n = int(48000 * frames / fps)
                tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / 48000)).astype(np.float32)
                layout_fmt = "s16" if audio_codec.startswith("pcm_s16") else "fltp"
                data = (tone * 32767).astype(np.int16) if layout_fmt == "s16" else tone
                chunk = 1024
                for start in range(0, n, chunk):
                    piece = data[None, start : start + chunk]
                    af = av.AudioFrame.from_ndarray(np.ascontiguousarray(piece), format=layout_fmt, layout="mono")
                    af.sample_rate, af.pts, af.time_base = 48000, start, Fraction(1, 48000)
                    container.mux(sound.encode(af))
                container.mux(sound.encode(None))
        return path

    return make


@pytest.fixture
def make_image_folder(tmp_path):
    """Factory: ``make_image_folder(names, size=(32, 48), folder=None)`` writes RGB PNG frames.

    Frame ``k`` of the sorted-by-intent list ``names`` holds ``synthetic_frame(k)``, so a test
    can check the order frames come back in. Returns the folder.
    """

    def make(names, size=(32, 48), folder=None) -> Path:
        folder = Path(folder) if folder is not None else tmp_path / "frames"
        folder.mkdir(parents=True, exist_ok=True)
        for k, name in enumerate(names):
            Image.fromarray(synthetic_frame(k, size)).save(folder / name)
        return folder

    return make


@pytest.fixture
def teacher(tmp_path):
    """A tiny upstream CycleGAN generator file (DataParallel ``module.`` keys, as upstream saves)."""
    import torch

    from fastv2v.generators import ResnetGenerator

    torch.manual_seed(0)
    path = tmp_path / "latest_net_G_A.pth"
    torch.save({f"module.{k}": v for k, v in ResnetGenerator(ngf=4, n_blocks=1).state_dict().items()}, path)
    return path


def frame_count(path) -> int:
    """Frames in a video, folder or image, as fastv2v decodes them."""
    from fastv2v.data.video import open_frames

    with open_frames(path) as frames:
        return sum(1 for _ in frames)


def visible(folder) -> list[str]:
    """The names in a folder a user sees (hidden temporaries and records left out)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def run_online(method, xs):
    """Raw outputs and key flags of a method over model-input tensors, through the one loop."""
    from fastv2v.engine.loop import drive

    return [(o.y, o.key) for o in drive(method, xs)]


def assert_videos_do_not_mix(method, video_a, video_b) -> None:
    """Each video's outputs are the same whether it runs alone or interleaved frame by frame with
    another one through the same method (push/flush): the per-video state really is per video."""
    import torch

    def alone(frames):
        state, out = method.init_state(), []
        for x in frames:
            ready, state = method.push(x, state)
            out += ready
        return out + method.flush(state)

    with torch.no_grad():
        alone_a, alone_b = alone(video_a), alone(video_b)
        sa, sb, mixed_a, mixed_b = method.init_state(), method.init_state(), [], []
        for xa, xb in zip(video_a, video_b):
            ready, sa = method.push(xa, sa)
            mixed_a += ready
            ready, sb = method.push(xb, sb)
            mixed_b += ready
        mixed_a += method.flush(sa)
        mixed_b += method.flush(sb)
    assert len(alone_a) == len(video_a) and len(alone_b) == len(video_b)
    assert all(torch.equal(p, q) and k == l for (p, k), (q, l) in zip(alone_a, mixed_a))
    assert all(torch.equal(p, q) and k == l for (p, k), (q, l) in zip(alone_b, mixed_b))
