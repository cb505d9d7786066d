"""Fit input frames to the size a model takes, and take the model's output back to content.

A :class:`Resizer` is built once per video (all frames share one size) and applied per frame:

* ``pad`` (default): scale to fit inside ``size`` keeping the aspect ratio, then pad to
  ``size`` and up to a multiple of ``multiple``; :meth:`Resizer.from_model` crops the padding
  off again, so nothing of the input is lost and nothing invented is returned.
* ``crop``: scale to cover ``size`` keeping the aspect ratio, centre-crop to ``size``, then crop
  down to a multiple; the output is the cropped view.
* ``stretch``: scale to ``size`` rounded to the nearest multiple, ignoring the aspect ratio.

The content is centred; padding is split evenly (the odd pixel goes bottom/right). RGB frames
are resampled with area averaging when shrinking and bilinear interpolation when enlarging,
and padded by reflection (a natural continuation, which convolutions handle better than a
constant border). Label maps (HxW integer IDs) are resampled nearest-neighbour and padded by
edge replication, so no ID is ever invented. Scale factors are computed with fractions, so the
fitted side lands exactly on ``size``.
"""

from __future__ import annotations

import re
from fractions import Fraction

import cv2
import numpy as np

from fastv2v.errors import UserError

MODES = ("pad", "crop", "stretch")


def parse_size(text: str) -> tuple[int, int]:
    """``"256x512"`` -> ``(256, 512)``: HEIGHT x WIDTH (``X`` and ``×`` also work; ``"256"`` is square)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX×]\s*(\d+)\s*)?", str(text))
    if not match or int(match[1]) == 0 or (match[2] is not None and int(match[2]) == 0):
        raise UserError(f"Invalid size {text!r}; write it as HEIGHTxWIDTH in pixels, e.g. 256x512.")
    height = int(match[1])
    return height, int(match[2]) if match[2] is not None else height


class Resizer:
    """Map frames of one source size to a model size and the model output back to content.

    Attributes (all ``(height, width)`` or plain ints, fixed at construction):

    * ``scaled_hw``: the input after resampling, before padding or cropping.
    * ``model_hw``: what :meth:`to_model` returns; a multiple of ``multiple`` on both sides.
    * ``box``: ``(top, left, height, width)`` of the content inside a model-sized frame; slice
      a tensor with it directly (``t[..., top:top+height, left:left+width]``) to skip a copy.
    * ``out_hw``: what :meth:`from_model` returns for a model-sized output: ``scaled_hw`` in
      pad mode (so with ``size=None`` exactly the input size), ``model_hw`` otherwise. The
      output is not resampled back to the input size.
    """

    def __init__(
        self,
        src_hw: tuple[int, int],
        size: tuple[int, int] | None = None,
        mode: str = "pad",
        multiple: int = 1,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        src_h, src_w = (int(v) for v in src_hw)
        if src_h < 1 or src_w < 1 or int(multiple) < 1:
            raise ValueError(f"bad src_hw {src_hw} or multiple {multiple}")
        self.src_hw, self.mode, self.multiple = (src_h, src_w), mode, int(multiple)
        self.size = None if size is None else (int(size[0]), int(size[1]))
        target_h, target_w = self.size or self.src_hw
        if target_h < 1 or target_w < 1:
            raise ValueError(f"bad size {size}")
        m = self.multiple

        if mode == "stretch":
            self.scaled_hw = (max(m, _round(Fraction(target_h, m)) * m), max(m, _round(Fraction(target_w, m)) * m))
            self.model_hw = self.scaled_hw
            self._offset = (0, 0)
        elif mode == "pad":
            scale = min(Fraction(target_h, src_h), Fraction(target_w, src_w))
            self.scaled_hw = (max(1, _round(src_h * scale)), max(1, _round(src_w * scale)))
            self.model_hw = (-(-target_h // m) * m, -(-target_w // m) * m)
            self._offset = ((self.model_hw[0] - self.scaled_hw[0]) // 2, (self.model_hw[1] - self.scaled_hw[1]) // 2)
        else:  # crop
            scale = max(Fraction(target_h, src_h), Fraction(target_w, src_w))
            self.scaled_hw = (max(target_h, _round(src_h * scale)), max(target_w, _round(src_w * scale)))
            self.model_hw = (target_h // m * m, target_w // m * m)
            if 0 in self.model_hw:
                raise UserError(
                    f"A {target_h}x{target_w} frame cannot be cropped to a multiple of {m} pixels; "
                    "use a larger size or pad mode."
                )
            self._offset = ((self.scaled_hw[0] - self.model_hw[0]) // 2, (self.scaled_hw[1] - self.model_hw[1]) // 2)

        if mode == "pad":
            self.box = (*self._offset, *self.scaled_hw)
        else:
            self.box = (0, 0, *self.model_hw)
        self.out_hw = self.box[2:]

    @property
    def model_size(self) -> tuple[int, int]:
        """Alias of ``model_hw`` (the name the engine uses)."""
        return self.model_hw

    def to_model(self, frame: np.ndarray) -> np.ndarray:
        """Resample, then pad or crop, an HxWxC image or HxW label map to ``model_hw``."""
        frame = np.asarray(frame)
        if frame.shape[:2] != self.src_hw:
            raise ValueError(f"frame is {frame.shape[:2]}, this Resizer was built for {self.src_hw}")
        labels = frame.ndim == 2
        if self.scaled_hw != self.src_hw:
            frame = _resize_nearest(frame, self.scaled_hw) if labels else _resize_image(frame, self.scaled_hw)
        top, left = self._offset
        mh, mw = self.model_hw
        if self.mode == "crop":
            return np.ascontiguousarray(frame[top : top + mh, left : left + mw])
        sh, sw = self.scaled_hw
        if (sh, sw) == (mh, mw):
            return frame
        pads = [(top, mh - sh - top), (left, mw - sw - left)] + [(0, 0)] * (frame.ndim - 2)
        # Reflection needs a neighbour to reflect; a 1-pixel-thin content falls back to the edge.
        mode = "edge" if labels or min(sh, sw) < 2 else "reflect"
        return np.pad(frame, pads, mode=mode)

    def from_model(self, output: np.ndarray) -> np.ndarray:
        """The content area of a model output (a view), dropping what :meth:`to_model` padded.

        The output may be an integer multiple ``k`` of ``model_hw`` (a generator that
        upsamples); the box is then scaled by ``k`` and the result is ``k * out_hw``.
        """
        output = np.asarray(output)
        oh, ow = output.shape[:2]
        mh, mw = self.model_hw
        if oh % mh or ow % mw or oh // mh != ow // mw:
            raise ValueError(f"output is {(oh, ow)}, expected {self.model_hw} or an integer multiple of it")
        k = oh // mh
        top, left, h, w = (v * k for v in self.box)
        return output[top : top + h, left : left + w]

    def __repr__(self) -> str:
        return (
            f"Resizer(src_hw={self.src_hw}, size={self.size}, mode={self.mode!r}, multiple={self.multiple}) "
            f"-> model {self.model_hw}, out {self.out_hw}"
        )


def _round(x: Fraction) -> int:
    """Round half up (Python's round() sends 2.5 to 2), so sizes do not depend on parity."""
    return int(x + Fraction(1, 2))


def _resize_image(frame: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    shrink = hw[0] <= frame.shape[0] and hw[1] <= frame.shape[1]
    out = cv2.resize(frame, (hw[1], hw[0]), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return out[..., None] if frame.ndim == 3 and out.ndim == 2 else out  # cv2 drops a single channel


def _resize_nearest(labels: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour by index, sampling pixel centres; exact for any integer dtype."""
    h, w = labels.shape[:2]
    rows = ((np.arange(hw[0]) * 2 + 1) * h) // (2 * hw[0])
    cols = ((np.arange(hw[1]) * 2 + 1) * w) // (2 * hw[1])
    return labels[rows[:, None], cols[None, :]]
