"""Edge maps of real footage: the Sketch2Face task's input (edge map video -> RGB video).

Exact recipe of :func:`edge_map` (defaults of :class:`EdgeParams`), run at the resolution
the model sees, so edge thickness is the same in training and at inference:

1. grey = OpenCV ``COLOR_RGB2GRAY`` (0.299 R + 0.587 G + 0.114 B, uint8);
2. ``GaussianBlur(grey, ksize=(0, 0), sigmaX=1.0)`` (OpenCV derives a 7x7 kernel);
3. ``Canny(blurred, 50, 100, apertureSize=3, L2gradient=True)``: hysteresis thresholds on the
   Euclidean magnitude of the 3x3 Sobel gradient;
4. optional dilation by a (2 * ``dilate`` + 1)-pixel square (off by default).

The result is uint8 H x W with values {0, 255} (white edges on black). Fixed thresholds are
the default because per-frame automatic thresholds change with the content and make edges
flicker; ``EdgeParams(auto=True)`` picks thresholds from the median grey level (the classic
"auto-Canny": 0.67 x median and 1.33 x median), and :func:`prepare_edges` then freezes the
thresholds of the clip's first frame for the whole clip.

A generator sees an edge map as a 3-channel image (:func:`edges_to_rgb` replicates the one
channel), so an edge video decoded as RGB feeds a model exactly like any other RGB input and
the engine needs no special case; the cost is two extra input channels in the first conv.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from fastv2v.errors import UserError

__all__ = ["EdgeParams", "edge_map", "edges_to_rgb", "prepare_edges"]


@dataclass(frozen=True)
class EdgeParams:
    """Canny settings; see the module docstring for exactly how they are used."""

    sigma: float = 1.0
    low: float = 50.0
    high: float = 100.0
    auto: bool = False
    auto_spread: float = 0.33
    dilate: int = 0

    def __post_init__(self):
        if self.sigma < 0 or self.low < 0 or self.high < self.low or self.dilate < 0:
            raise UserError(
                f"Edge parameters sigma={self.sigma}, low={self.low}, high={self.high}, dilate={self.dilate} "
                "are invalid; use sigma >= 0, 0 <= low <= high and dilate >= 0."
            )

    def frozen_for(self, rgb: np.ndarray) -> "EdgeParams":
        """Fixed thresholds: those ``auto`` would pick for this frame (for a whole clip)."""
        if not self.auto:
            return self
        low, high = _auto_thresholds(_blurred_grey(rgb, self.sigma), self.auto_spread)
        return replace(self, auto=False, low=low, high=high)


def _blurred_grey(rgb: np.ndarray, sigma: float) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim not in (2, 3) or (rgb.ndim == 3 and rgb.shape[2] not in (1, 3)):
        raise ValueError(f"edge_map needs a uint8 HxWx3 RGB (or HxW grey) frame, got {rgb.dtype} {rgb.shape}")
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 and rgb.shape[2] == 3 else rgb.reshape(rgb.shape[:2])
    if sigma > 0:
        grey = cv2.GaussianBlur(grey, (0, 0), sigmaX=sigma, sigmaY=sigma)
    return np.ascontiguousarray(grey)


def _auto_thresholds(grey: np.ndarray, spread: float) -> tuple[float, float]:
    median = float(np.median(grey))
    return max(0.0, (1 - spread) * median), min(255.0, (1 + spread) * median)


def edge_map(rgb: np.ndarray, params: EdgeParams | None = None) -> np.ndarray:
    """Binary edge map (uint8 H x W, 0 or 255) of an RGB frame; deterministic."""
    p = params or EdgeParams()
    grey = _blurred_grey(rgb, p.sigma)
    low, high = _auto_thresholds(grey, p.auto_spread) if p.auto else (p.low, p.high)
    edges = cv2.Canny(grey, low, high, apertureSize=3, L2gradient=True)
    if p.dilate:
        edges = cv2.dilate(edges, np.ones((2 * p.dilate + 1, 2 * p.dilate + 1), np.uint8))
    return edges


def edges_to_rgb(edges: np.ndarray) -> np.ndarray:
    """H x W edge map -> H x W x 3 uint8 (the channel replicated): the generator's input form."""
    edges = np.asarray(edges)
    return np.ascontiguousarray(np.repeat(edges[..., None], 3, axis=-1))


def prepare_edges(
    in_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    size: tuple[int, int] | None = None,
    resize_mode: str = "crop",
    params: EdgeParams | None = None,
    paired_out: str | os.PathLike | None = None,
    progress: bool = False,
) -> int:
    """Write the edge-map video of a raw video (backs ``fastv2v prepare edges IN OUT``).

    ``size`` (height, width): resize each frame first (``resize_mode`` of
    :class:`fastv2v.data.resize.Resizer`: crop, pad or stretch), so edges are detected at the
    resolution the model will run at. ``out_path``: a video (``.mp4/.mkv/.mov``, written
    lossless so the map stays exactly binary; it plays in FFmpeg-based players) or a folder of
    PNGs (no suffix). ``paired_out``: also write the resized RGB frames there (the target
    video for training a teacher). The output appears only when complete. Returns the number
    of frames written.
    """
    from fastv2v.data.resize import Resizer
    from fastv2v.data.video import open_frames, open_writer

    in_path, out_path = Path(in_path), Path(out_path)
    if paired_out is not None and Path(paired_out).absolute() == out_path.absolute():
        raise UserError(f"{out_path} is given as both the edge output and the RGB output; choose two paths.")
    base = params or EdgeParams()
    with open_frames(in_path) as frames:
        info = frames.info
        resizer = Resizer((info.height, info.width), size=size, mode=resize_mode) if size else None
        lossless = out_path.suffix.lower() in (".mp4", ".mkv", ".mov")
        with open_writer(out_path, fps=info.fps, lossless=lossless) as writer:
            rgb_writer = open_writer(paired_out, fps=info.fps) if paired_out is not None else None
            try:
                frozen = None
                iterator = frames
                if progress:
                    from tqdm import tqdm

                    iterator = tqdm(frames, total=info.frames, unit="frame", desc="edges")
                for frame in iterator:
                    if resizer is not None:
                        frame = resizer.to_model(frame)
                    frozen = frozen or base.frozen_for(frame)
                    writer.write(edges_to_rgb(edge_map(frame, frozen)))
                    if rgb_writer is not None:
                        rgb_writer.write(frame)
            except BaseException as exc:
                if rgb_writer is not None:
                    rgb_writer.abort(exc)
                raise
            if rgb_writer is not None:
                rgb_writer.close()
            count = writer.frames_written
    return count
