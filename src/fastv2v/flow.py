"""Optical flow (OpenCV DIS), backward warping and forward-backward occlusion checks.

Conventions, used everywhere in fastv2v:

* A flow field is ``HxWx2`` float32 (numpy) with channel 0 = horizontal displacement ``u``
  (pixels, +right) and channel 1 = vertical displacement ``v`` (pixels, +down). Torch flows
  are channels-first, ``(2,H,W)`` or ``(N,2,H,W)``, so they sit next to feature maps.
* ``estimate_flow(a, b)`` returns the flow *from a to b*: the pixel at ``x`` in ``a`` is found
  at ``x + flow(x)`` in ``b``, i.e. ``a(x) ~ b(x + flow(x))``.
* ``warp(image, flow)`` is backward warping: ``out(x) = image(x + flow(x))``. Hence
  ``warp(b, estimate_flow(a, b)) ~ a``: to bring frame ``b`` (or its output, or its features)
  onto frame ``a``'s pixel grid, estimate the flow from ``a`` to ``b``.
* Pixel ``x`` means the centre of pixel column ``x`` (0 .. W-1), the convention of
  ``cv2.remap`` and of ``grid_sample(align_corners=True)``, so both backends agree.

These functions are shared by the metrics (warping error, tOF) and by the interpolation
method (warping two key-frame outputs to an intermediate time), so they take plain arrays
and keep no state beyond a cached DIS instance per preset and thread.
"""

from __future__ import annotations

import functools
import threading

import cv2
import numpy as np

__all__ = [
    "DIS_PRESETS",
    "estimate_flow",
    "occlusion_mask",
    "resize_flow",
    "to_gray",
    "warp",
]

DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}

_BORDERS_CV2 = {
    "replicate": cv2.BORDER_REPLICATE,
    "zeros": cv2.BORDER_CONSTANT,
    # REFLECT_101 mirrors about the edge pixel centres, which is what grid_sample's
    # "reflection" does with align_corners=True: both backends give the same pixels.
    "reflect": cv2.BORDER_REFLECT_101,
}
_BORDERS_TORCH = {"replicate": "border", "zeros": "zeros", "reflect": "reflection"}
_INTERP_CV2 = {"linear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}
_INTERP_TORCH = {"linear": "bilinear", "nearest": "nearest"}

# DIS objects keep internal buffers and are not safe to share between threads (the engine
# runs decode, compute and metrics side by side), so the cache is per thread.
_local = threading.local()


def _dis(preset: str, refine: int | None = None):
    if preset not in DIS_PRESETS:
        raise ValueError(f"unknown DIS preset {preset!r}; choose one of {sorted(DIS_PRESETS)}")
    if refine is not None and refine < 0:
        raise ValueError(f"refine must be None (the preset's own) or a number of iterations >= 0, not {refine}")
    cache = getattr(_local, "dis", None)
    if cache is None:
        cache = _local.dis = {}
    inst = cache.get((preset, refine))
    if inst is None:
        inst = cache[(preset, refine)] = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])
        if refine is not None:
            inst.setVariationalRefinementIterations(int(refine))
    return inst


def to_gray(frame: np.ndarray) -> np.ndarray:
    """An RGB uint8 ``HxWx3`` (or already grey ``HxW``/``HxWx1``) frame as grey uint8 ``HxW``.

    Float frames are taken to be on the 0..255 scale (clipped and rounded), because optical
    flow estimators work on 8-bit intensities.
    """
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        frame = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[..., 0]
    if frame.ndim == 2:
        return np.ascontiguousarray(frame)
    if frame.ndim == 3 and frame.shape[2] == 3:
        return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    raise ValueError(f"expected an HxWx3 RGB or HxW grey frame, got shape {frame.shape}")


def estimate_flow(a: np.ndarray, b: np.ndarray, preset: str = "medium", refine: int | None = None) -> np.ndarray:
    """Dense flow from frame ``a`` to frame ``b`` (``a(x) ~ b(x + flow(x))``), ``HxWx2`` float32.

    DIS (Kroeger et al. 2016) on the grey frames: CPU-only, about 10 ms at 256x512 with the
    "medium" preset (2 ms with "fast"), accurate to a fraction of a pixel on textured
    regions, which is what metrics and motion-compensated interpolation need. ``preset`` is
    "ultrafast", "fast" or "medium" (slower presets are more accurate). ``refine``: the
    iterations of DIS's variational refinement (None: the preset's own, 5 for "fast" and
    "medium", 0 for "ultrafast"); the refinement is most of the time of a small flow (at 64x128,
    "medium" takes about 1.4 ms with it and 0.3 ms without). Flow is smooth across motion
    boundaries, so pair it with :func:`occlusion_mask` before trusting a warp.
    """
    ga, gb = to_gray(a), to_gray(b)
    if ga.shape != gb.shape:
        raise ValueError(f"frames differ in size: {ga.shape} vs {gb.shape}")
    try:
        return _dis(preset, refine).calc(ga, gb, None)
    except cv2.error:
        if min(ga.shape) < 16:  # DIS needs frames larger than its patches
            raise ValueError(f"{ga.shape[0]}x{ga.shape[1]} frames are too small for DIS optical flow") from None
        raise


@functools.lru_cache(maxsize=16)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    gx.setflags(write=False)
    gy.setflags(write=False)
    return gx, gy


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def warp(image, flow, border: str = "replicate", interpolation: str = "linear"):
    """Backward-warp ``image`` by ``flow``: ``out(x) = image(x + flow(x))``.

    numpy: ``image`` is ``HxW`` or ``HxWxC`` (any C; uint8, float32 or float64; the dtype is
    kept, uint8 is rounded), ``flow`` is ``HxWx2``; uses ``cv2.remap`` (sub-pixel positions
    are quantised to 1/32 px, plenty for frames and metrics).
    torch: ``image`` is ``(C,H,W)`` or ``(N,C,H,W)`` (frames or feature maps, any device,
    differentiable), ``flow`` a tensor ``(2,H,W)``/``(N,2,H,W)`` or a numpy ``HxWx2`` shared by
    the batch; uses ``grid_sample(align_corners=True)``.
    ``border`` says what samples outside the frame read: "replicate" (nearest edge pixel),
    "zeros" or "reflect"; ``interpolation`` is "linear" or "nearest" (for label maps).
    Use :func:`occlusion_mask` to know which output pixels are trustworthy.
    """
    if border not in _BORDERS_CV2:
        raise ValueError(f"unknown border {border!r}; choose one of {sorted(_BORDERS_CV2)}")
    if interpolation not in _INTERP_CV2:
        raise ValueError(f"unknown interpolation {interpolation!r}; choose 'linear' or 'nearest'")
    if _is_torch(image):
        return _warp_torch(image, flow, border, interpolation)
    return _warp_numpy(np.asarray(image), np.asarray(flow), border, interpolation)


def _warp_numpy(image: np.ndarray, flow: np.ndarray, border: str, interpolation: str) -> np.ndarray:
    h, w = image.shape[:2]
    if flow.shape != (h, w, 2):
        raise ValueError(f"flow shape {flow.shape} does not match image size {(h, w)}; expected {(h, w, 2)}")
    dtype = image.dtype
    src = image if dtype in (np.uint8, np.float32, np.float64) else image.astype(np.float32)
    gx, gy = _grid(h, w)
    map_x = gx + flow[..., 0].astype(np.float32, copy=False)
    map_y = gy + flow[..., 1].astype(np.float32, copy=False)
    out = cv2.remap(
        np.ascontiguousarray(src), map_x, map_y, _INTERP_CV2[interpolation],
        borderMode=_BORDERS_CV2[border], borderValue=0,
    )
    if out.ndim == 2 and image.ndim == 3:  # cv2 drops a trailing channel axis of size 1
        out = out[..., None]
    if out.dtype == dtype:
        return out
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(dtype)


def _warp_torch(image, flow, border: str, interpolation: str):
    import torch
    import torch.nn.functional as F

    squeeze = image.dim() == 3
    x = image.unsqueeze(0) if squeeze else image
    if x.dim() != 4:
        raise ValueError(f"expected a (C,H,W) or (N,C,H,W) tensor, got shape {tuple(image.shape)}")
    n, _, h, w = x.shape
    if isinstance(flow, np.ndarray):
        flow = torch.from_numpy(np.ascontiguousarray(flow, dtype=np.float32)).permute(2, 0, 1)
    flow = flow.to(device=x.device)
    if flow.dim() == 3:
        flow = flow.unsqueeze(0)
    if flow.dim() != 4 or flow.shape[1] != 2 or flow.shape[2:] != (h, w):
        raise ValueError(f"flow shape {tuple(flow.shape)} does not match image size {(h, w)}; expected (N,2,{h},{w})")
    integer = not (x.is_floating_point() or x.is_complex())
    xf = x.float() if integer else x
    flow = flow.to(xf.dtype)
    ys = torch.arange(h, device=x.device, dtype=xf.dtype).view(1, h, 1)
    xs = torch.arange(w, device=x.device, dtype=xf.dtype).view(1, 1, w)
    # Normalise pixel-centre coordinates to [-1, 1] (align_corners=True); a 1-pixel axis maps to 0.
    gx = (xs + flow[:, 0]) * (2.0 / max(w - 1, 1)) - 1.0
    gy = (ys + flow[:, 1]) * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack((gx, gy), dim=-1).expand(n, h, w, 2)
    out = F.grid_sample(
        xf, grid, mode=_INTERP_TORCH[interpolation], padding_mode=_BORDERS_TORCH[border], align_corners=True
    )
    if integer:
        info = torch.iinfo(x.dtype)
        out = out.round().clamp(info.min, info.max).to(x.dtype)
    return out[0] if squeeze else out


def resize_flow(flow, size: tuple[int, int]):
    """``flow`` resampled to ``size = (H, W)`` with its vectors rescaled to the new pixel units.

    Needed when flow is estimated at one resolution and applied at another (feature maps at
    1/4 resolution, or inputs and outputs of different sizes). numpy ``HxWx2`` or torch
    ``(2,H,W)``/``(N,2,H,W)``, as in :func:`warp`.
    """
    new_h, new_w = int(size[0]), int(size[1])
    if _is_torch(flow):
        import torch.nn.functional as F

        squeeze = flow.dim() == 3
        f = flow.unsqueeze(0) if squeeze else flow
        h, w = f.shape[-2:]
        if (h, w) == (new_h, new_w):
            return flow
        out = F.interpolate(f, size=(new_h, new_w), mode="bilinear", align_corners=False)
        scale = out.new_tensor([new_w / w, new_h / h]).view(1, 2, 1, 1)
        out = out * scale
        return out[0] if squeeze else out
    flow = np.asarray(flow, dtype=np.float32)
    h, w = flow.shape[:2]
    if (h, w) == (new_h, new_w):
        return flow
    out = cv2.resize(flow, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    out[..., 0] *= new_w / w
    out[..., 1] *= new_h / h
    return out


def occlusion_mask(flow_fw, flow_bw, alpha1: float = 0.01, alpha2: float = 0.5):
    """Boolean "visible" mask over frame ``a`` from forward-backward consistency.

    ``flow_fw = estimate_flow(a, b)`` and ``flow_bw = estimate_flow(b, a)``. A pixel ``x`` of
    ``a`` is visible in ``b`` when following ``w_f = flow_fw(x)`` and then the backward flow
    ``w_b = flow_bw(x + w_f)`` comes back to ``x`` (Sundaram et al. 2010, Ruder et al. 2016):
    it is marked occluded when
    ``|w_f + w_b|^2 > alpha1 * (|w_f|^2 + |w_b|^2) + alpha2`` (tolerance grows with the motion),
    and also when ``x + w_f`` lands outside frame ``b`` (content that left the frame has no
    correspondence). numpy ``HxWx2`` flows give an ``HxW`` mask; torch ``(N,2,H,W)`` flows
    give ``(N,H,W)`` (``(2,H,W)`` gives ``(H,W)``).
    """
    if not _is_torch(flow_fw):
        return _occlusion_mask_numpy(np.asarray(flow_fw, np.float32), np.asarray(flow_bw, np.float32), alpha1, alpha2)
    import torch

    bw_at = warp(flow_bw, flow_fw, border="replicate")
    s = flow_fw + bw_at
    lhs = (s * s).sum(-3)
    rhs = alpha1 * ((flow_fw * flow_fw).sum(-3) + (bw_at * bw_at).sum(-3)) + alpha2
    consistent = lhs <= rhs
    h, w = flow_fw.shape[-2:]
    xs = torch.arange(w, device=flow_fw.device, dtype=flow_fw.dtype).view(1, w)
    ys = torch.arange(h, device=flow_fw.device, dtype=flow_fw.dtype).view(h, 1)
    tx = xs + flow_fw[..., 0, :, :]
    ty = ys + flow_fw[..., 1, :, :]
    inside = (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
    return consistent & inside


def _occlusion_mask_numpy(fw: np.ndarray, bw: np.ndarray, alpha1: float, alpha2: float) -> np.ndarray:
    """:func:`occlusion_mask` on ``HxWx2`` arrays, one channel at a time: numpy's reductions over a
    trailing axis of 2 made the vectorised form 7x slower (2.3 ms against 0.34 ms at 128x256)."""
    h, w = fw.shape[:2]
    gx, gy = _grid(h, w)
    tx, ty = gx + fw[..., 0], gy + fw[..., 1]
    bw_at = cv2.remap(np.ascontiguousarray(bw), tx, ty, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    fx, fy, bx, by = fw[..., 0], fw[..., 1], bw_at[..., 0], bw_at[..., 1]
    sx, sy = fx + bx, fy + by
    consistent = sx * sx + sy * sy <= alpha1 * (fx * fx + fy * fy + bx * bx + by * by) + alpha2
    return consistent & (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
