"""Temporal-consistency metrics: warping error (Lai et al. 2018) and tOF (Chu et al., TecoGAN).

A fast video method can score well frame by frame and still flicker. These metrics look at
consecutive frames:

* **warping error**: the previous output, motion-compensated with the flow of the *inputs*,
  should equal the current output wherever the motion is reliable. Flicker and swimming
  textures raise it; outputs that follow the input motion keep it near 0.
* **tOF**: the motion *of the outputs* should match the motion of a reference video (the
  teacher's outputs or ground truth). It penalises both flicker and frozen/jumpy outputs.

Lower is better for both. :class:`TemporalMeter` streams a video one frame at a time.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from fastv2v.flow import estimate_flow, occlusion_mask, resize_flow, to_gray, warp
from fastv2v.metrics.quality import MeanMeter

__all__ = ["TemporalMeter", "tof", "warping_error", "warping_error_from_flow"]


def warping_error_from_flow(prev_out, cur_out, flow, visible=None, data_range: float = 255) -> float:
    """Warping error given ``flow`` from the current frame to the previous one.

    ``flow = estimate_flow(cur, prev)`` (so ``warp(prev_out, flow)`` lands on the current
    grid) and ``visible`` an ``HxW`` bool mask of pixels with a reliable correspondence (None:
    all). Flow and mask at another resolution than the outputs are resized to it. Returns the
    mean squared error on the [0, 1] scale over visible pixels and all channels, or NaN when
    no pixel is visible.
    """
    prev = np.asarray(prev_out, dtype=np.float32) / float(data_range)
    cur = np.asarray(cur_out, dtype=np.float32) / float(data_range)
    if prev.shape != cur.shape:
        raise ValueError(f"outputs differ in shape: {prev.shape} vs {cur.shape}")
    h, w = cur.shape[:2]
    flow = resize_flow(flow, (h, w))
    warped = warp(prev, flow, border="replicate")
    d = warped - cur
    sq = d * d if d.ndim == 2 else (d * d).mean(axis=2)
    if visible is None:
        return float(sq.mean())
    visible = np.asarray(visible, dtype=bool)
    if visible.shape != (h, w):
        visible = cv2.resize(visible.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    n = int(visible.sum())
    if n == 0:
        return math.nan
    return float(sq[visible].sum(dtype=np.float64) / n)


def warping_error(
    prev_out,
    cur_out,
    prev_in,
    cur_in,
    *,
    preset: str = "medium",
    alpha1: float = 0.01,
    alpha2: float = 0.5,
    data_range: float = 255,
) -> float:
    """Warping error of an output pair, with motion measured on the input pair (Lai et al. 2018).

    ``E = sum_x M(x) * mean_c (O_t(x) - warp(O_{t-1})(x))^2 / sum_x M(x)`` on the [0, 1]
    scale: DIS flow from the current input to the previous one warps the previous output onto
    the current frame; ``M`` keeps pixels that pass the forward-backward consistency check and
    stay inside the frame (:func:`fastv2v.flow.occlusion_mask`). Squared error on [0, 1], as
    in the paper (values are small; if reported scaled, say so). ``prev_in``/``cur_in`` are
    whatever frames carry the true motion: the input
    video, or for label-map inputs the ground-truth or teacher frames. NaN if nothing is visible.
    """
    flow_cp = estimate_flow(cur_in, prev_in, preset)  # cur(x) ~ prev(x + flow_cp(x))
    flow_pc = estimate_flow(prev_in, cur_in, preset)
    visible = occlusion_mask(flow_cp, flow_pc, alpha1, alpha2)
    return warping_error_from_flow(prev_out, cur_out, flow_cp, visible, data_range)


# Farneback parameters of TecoGAN's metrics.py (pyr_scale, levels, winsize, iterations,
# poly_n, poly_sigma, flags): reproducing them makes tOF comparable with published numbers.
_TECOGAN_FARNEBACK = (0.5, 3, 15, 3, 5, 1.2, 0)


def _tecogan_crop(h: int, w: int) -> tuple[slice, slice]:
    """TecoGAN's ``crop_8x8``: a centred crop to a multiple of 32 leaving >= 8 px each side."""

    def one(n: int) -> slice:
        m = (n // 32) * 32
        while m > n - 16:
            m -= 32
        if m <= 0:  # frame too small for the protocol's crop: use all of it
            return slice(0, n)
        off = (n - m) // 2
        return slice(off, off + m)

    return one(h), one(w)


def _pair_flow(a, b, method: str, preset: str) -> np.ndarray:
    if method == "tecogan":
        return cv2.calcOpticalFlowFarneback(to_gray(a), to_gray(b), None, *_TECOGAN_FARNEBACK)
    if method == "dis":
        return estimate_flow(a, b, preset)
    raise ValueError(f"unknown tOF method {method!r}; choose 'tecogan' or 'dis'")


def tof(out_prev, out_cur, ref_prev, ref_cur, *, method: str = "tecogan", preset: str = "medium") -> float:
    """tOF: mean end-point distance (pixels) between the flow of the outputs and of a reference.

    ``mean_x |F(out_prev -> out_cur)(x) - F(ref_prev -> ref_cur)(x)|_2``. ``method="tecogan"``
    reproduces TecoGAN's protocol (OpenCV Farneback with their parameters on grey frames, the
    centred ``crop_8x8``), so numbers compare with published ones; ``method="dis"`` uses DIS
    over the whole frame, consistent with :func:`warping_error`.
    """
    if np.shape(out_prev) != np.shape(ref_prev) or np.shape(out_cur) != np.shape(ref_cur):
        raise ValueError("outputs and reference frames must have the same size for tOF")
    f_out = _pair_flow(out_prev, out_cur, method, preset)
    f_ref = _pair_flow(ref_prev, ref_cur, method, preset)
    d = f_out - f_ref
    epe = np.sqrt((d * d).sum(axis=-1))
    if method == "tecogan":
        epe = epe[_tecogan_crop(*epe.shape)]
    return float(epe.mean(dtype=np.float64))


class TemporalMeter:
    """Streams a video one frame at a time and averages the temporal metrics over frame pairs.

    ``update(out, inp=..., ref=...)`` per frame: the warping error is measured when the input
    of this and the previous frame are given, tOF when the reference of both is given. Call
    :meth:`new_video` between videos (the pair across the cut is meaningless; the means keep
    accumulating over all pairs of all videos) and :meth:`reset` to start over. Frames are
    copied, so the caller may reuse its buffers.
    """

    def __init__(
        self,
        *,
        preset: str = "medium",
        tof_method: str = "tecogan",
        alpha1: float = 0.01,
        alpha2: float = 0.5,
    ) -> None:
        self.preset = preset
        self.tof_method = tof_method
        self.alpha1 = alpha1
        self.alpha2 = alpha2
        self.reset()

    def reset(self) -> None:
        self._means = MeanMeter()
        self.pairs = 0
        self.new_video()

    def new_video(self) -> None:
        self._prev: tuple | None = None

    def update(self, out, inp=None, ref=None) -> dict[str, float]:
        """Add one frame; returns this pair's metrics (empty for the first frame of a video)."""
        copy = lambda x: None if x is None else np.array(x, copy=True)  # noqa: E731
        cur = (copy(out), copy(inp), copy(ref))
        prev, self._prev = self._prev, cur
        if prev is None:
            return {}
        values: dict[str, float] = {}
        if prev[1] is not None and cur[1] is not None:
            values["warping_error"] = warping_error(
                prev[0], cur[0], prev[1], cur[1], preset=self.preset, alpha1=self.alpha1, alpha2=self.alpha2
            )
        if prev[2] is not None and cur[2] is not None:
            values["tof"] = tof(prev[0], cur[0], prev[2], cur[2], method=self.tof_method, preset=self.preset)
        self.pairs += 1
        self._means.update(values)
        return values

    def result(self) -> dict[str, float | int | None]:
        """Means over all pairs so far; a metric never measured is None."""
        return {
            "warping_error": self._means.mean("warping_error"),
            "tof": self._means.mean("tof"),
            "pairs": self.pairs,
        }
