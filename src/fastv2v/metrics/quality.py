"""Per-frame fidelity metrics (PSNR, SSIM) and a running mean over a video.

Frames are numpy ``HxWx3`` (or ``HxW``) arrays; uint8 frames use ``data_range=255``. Both
metrics compare a method's output with a reference (the teacher's output or ground truth),
frame by frame; :class:`MeanMeter` averages them over a video without keeping frames.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import cv2
import numpy as np

__all__ = ["MeanMeter", "mse", "psnr", "ssim"]

# Wang et al. 2004 constants; the same as MATLAB ssim_index.m and
# skimage.metrics.structural_similarity(gaussian_weights=True, use_sample_covariance=False).
SSIM_WIN = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    return a.astype(np.float64, copy=False), b.astype(np.float64, copy=False)


def mse(a, b) -> float:
    """Mean squared error over all pixels and channels, in the units of the inputs."""
    a, b = _pair(a, b)
    d = a - b
    return float(np.mean(d * d))


def psnr(a, b, data_range: float = 255) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / MSE)`` over all channels.

    Identical images give ``inf`` (MSE is 0): that is the true value, and averaging it into a
    video mean makes the mean ``inf`` too, which says "some frame was reproduced exactly"
    rather than hiding it behind an arbitrary cap.
    """
    err = mse(a, b)
    if err == 0.0:
        return math.inf
    return 10.0 * math.log10(float(data_range) ** 2 / err)


def ssim(a, b, data_range: float = 255) -> float:
    """Structural similarity (Wang et al. 2004), mean over the valid region and the channels.

    Gaussian window 11x11, sigma 1.5, K1 = 0.01, K2 = 0.03, population (co)variances, each
    channel separately, borders where the window does not fit excluded (the reference MATLAB
    code's "valid" filtering). Computed in float64 with ``cv2.GaussianBlur`` (a few ms at
    256x512). Identical images give exactly 1.0.
    """
    x, y = _pair(a, b)
    if x.ndim not in (2, 3):
        raise ValueError(f"expected an HxW or HxWxC image, got shape {x.shape}")
    h, w = x.shape[:2]
    if h < SSIM_WIN or w < SSIM_WIN:
        raise ValueError(f"SSIM needs images of at least {SSIM_WIN}x{SSIM_WIN} pixels, got {h}x{w}")
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    pad = SSIM_WIN // 2

    def blur(img: np.ndarray) -> np.ndarray:
        # The border mode is irrelevant: every pixel it affects is cropped below.
        out = cv2.GaussianBlur(img, (SSIM_WIN, SSIM_WIN), SSIM_SIGMA, borderType=cv2.BORDER_REFLECT)
        return out[pad : h - pad, pad : w - pad]

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x * mu_x
    syy = blur(y * y) - mu_y * mu_y
    sxy = blur(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (sxx + syy + c2)
    # Mean over pixels per channel, then over channels (equal-sized channels: same as the
    # grand mean, kept explicit to match the definition).
    smap = num / den
    if smap.ndim == 3:
        return float(np.mean(smap.mean(axis=(0, 1))))
    return float(smap.mean())


class MeanMeter:
    """Running means of named per-frame metrics (constant memory over a long video).

    ``update(psnr=31.2, ssim=0.94)`` or ``update({"psnr": ...})``. ``None`` (metric
    unavailable for this frame) and NaN (undefined, e.g. no visible pixels) are skipped and
    counted in :attr:`skipped`; ``inf`` is kept (see :func:`psnr`). Weighted updates
    (``weight=n``) merge means computed elsewhere.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._sum: dict[str, float] = {}
        self._count: dict[str, float] = {}
        self.skipped: dict[str, int] = {}

    def update(self, values: Mapping[str, float | None] | None = None, /, weight: float = 1.0, **kw) -> None:
        items = dict(values or {}, **kw)
        for name, value in items.items():
            self._sum.setdefault(name, 0.0)
            self._count.setdefault(name, 0.0)
            if value is None or math.isnan(float(value)):
                self.skipped[name] = self.skipped.get(name, 0) + 1
                continue
            self._sum[name] += float(value) * weight
            self._count[name] += weight

    def count(self, name: str) -> float:
        return self._count.get(name, 0.0)

    def mean(self, name: str | None = None):
        """Mean of one metric (None if it never had a value), or a dict of all of them."""
        if name is not None:
            n = self._count.get(name, 0.0)
            return self._sum[name] / n if n else None
        return {k: self.mean(k) for k in self._sum}

    def __repr__(self) -> str:
        return f"MeanMeter({self.mean()})"
