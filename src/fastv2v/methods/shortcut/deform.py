"""Modulated deformable convolution (DCNv2) that is fast on the CPU, and its building blocks.

``deform_conv2d`` computes exactly what ``torchvision.ops.deform_conv2d`` computes,

    out(p) = bias + sum_k W_k * m_k(p) * x(p * stride - padding + dilation * p_k + offset_k(p)),

with bilinear sampling and zero outside the input, and is differentiable in every argument.
torchvision's CPU kernel builds the whole ``9C x HW`` column matrix with a scalar loop and is
the bottleneck of the Shortcut-V2V block (about 300 ms for 64 -> 64 channels at 128 x 256 on
one core); this one is 7-8x faster on the same shapes (see docs/shortcut.md). How:

* **Channels-last gathers.** The input is laid out as rows of ``C`` contiguous values (NHWC)
  with a zero border, so each bilinear corner is one contiguous row read, and a sample is the
  weighted sum of four rows: exactly what ``F.embedding_bag(mode="sum", per_sample_weights=...)``
  does in one fused, vectorised kernel. The modulation mask is folded into the four bilinear
  weights (one multiply per tap, not per channel).
* **No validity masks.** Sampling positions are clamped to ``[-1, H]`` x ``[-1, W]`` and the
  table has a zero border of 1 before and 2 after, so every corner index is in range and a
  corner outside the input reads a zero row: the same values (and the same zero gradients
  for positions fully outside) as torchvision's per-corner checks, with no branches.
* **Cache-sized chunks.** Columns are gathered for a block of output pixels at a time and
  multiplied by the ``(K*C) x C_out`` weight matrix right away, while they are still in cache;
  the full column matrix never exists in inference (gradient mode keeps the pieces for
  backward, as any conv does).

Building blocks used by the Shortcut-V2V block (``shortcut.py``):

* :func:`blended_deform_conv2d`: AdaBD's two modulated deformable convolutions that share one
  weight, ``W*(m . cols(x_new)) + W*((1 - m) . sampled(x_ref))``, as ONE convolution over blended
  columns (linearity), with the zero-offset branch as a fifth "corner" of each sample: one
  gather, one matrix product. Extra linear maps (e.g. a following 1x1 conv) can be chained in
  the same pass.
* :func:`flow_sample`: ``x(p + origin + offset(p))`` for a 2-channel per-pixel offset, bilinear,
  zero outside: a deformable convolution whose nine taps share one offset is a plain
  convolution followed by this (see shortcut.py).

Only ``groups == 1`` and one offset group are supported (all that Shortcut-V2V uses); other
cases raise ``NotImplementedError`` rather than compute something else. Under CPU autocast the
gathers and products run in the autocast dtype (bfloat16), like a convolution would; positions
and bilinear weights are always computed in float32.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["deform_conv2d", "blended_deform_conv2d", "flow_sample", "padded_rows", "weight_matrix"]

# Output pixels per chunk in inference: 1024 pixels x 9 taps x 64 channels of float32 columns
# are 2.4 MB, about one core's L2. Measured on the project machine (docs/shortcut.md).
CHUNK = 1024


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"expected an int or a pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def weight_matrix(weight: torch.Tensor) -> torch.Tensor:
    """``(C_out, C_in, kh, kw)`` conv weight -> ``(kh*kw*C_in, C_out)`` matrix whose row
    ``k*C_in + c`` multiplies channel ``c`` of tap ``k`` (the column layout used here)."""
    c_out = weight.shape[0]
    return weight.permute(2, 3, 1, 0).reshape(-1, c_out)


def padded_rows(*xs: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``N x C x H x W`` tensors -> one table of ``(N*(H+3)*(W+3)) x C`` rows each (NHWC),
    stacked, with a zero border of 1 before and 2 after each spatial side."""
    n, c, h, w = xs[0].shape
    dtype = xs[0].dtype if dtype is None else dtype
    table = xs[0].new_empty(len(xs), n, h + 3, w + 3, c, dtype=dtype)
    table[:, :, 0].zero_()
    table[:, :, h + 1 :].zero_()
    table[:, :, 1 : h + 1, 0].zero_()
    table[:, :, 1 : h + 1, w + 1 :].zero_()
    for i, x in enumerate(xs):
        table[i, :, 1 : h + 1, 1 : w + 1] = x.permute(0, 2, 3, 1)
    return table.view(-1, c)


def _taps(out_hw, kernel, stride, padding, dilation, device, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Undeformed sampling rows and columns, shaped ``(Ho, 1, K)`` and ``(1, Wo, K)``."""
    (ho, wo), (kh, kw) = out_hw, kernel
    ty = (torch.arange(kh, device=device) * dilation[0]).repeat_interleave(kw)
    tx = (torch.arange(kw, device=device) * dilation[1]).repeat(kh)
    py = (torch.arange(ho, device=device) * stride[0] - padding[0]).view(ho, 1, 1) + ty.view(1, 1, -1)
    px = (torch.arange(wo, device=device) * stride[1] - padding[1]).view(1, wo, 1) + tx.view(1, 1, -1)
    return py.to(dtype), px.to(dtype)


def _plan(offset, mask, in_hw, out_hw, kernel, stride, padding, dilation, slots=4):
    """Row indices and bilinear weights of every sample: ``(N, Ho, Wo, K, slots)`` each.

    Bags are ordered (n, i, j, k) so that the gathered columns of one output pixel are
    contiguous (tap-major, channel-minor). Slots 0-3 are the four corners of the padded
    table (:func:`padded_rows`); slots beyond 3 are left for the caller to fill. ``mask`` (or None)
    multiplies the weights.
    """
    n = offset.shape[0]
    (h, w), (ho, wo) = in_hw, out_hw
    k = kernel[0] * kernel[1]
    ftype = torch.float64 if offset.dtype == torch.float64 else torch.float32
    off = offset.to(ftype).view(n, k, 2, ho, wo).permute(0, 3, 4, 1, 2)  # n, ho, wo, k, (dy, dx)
    py, px = _taps(out_hw, kernel, stride, padding, dilation, offset.device, ftype)
    y = (off[..., 0] + py).clamp(-1, h)
    x = (off[..., 1] + px).clamp(-1, w)
    y0, x0 = y.floor(), x.floor()
    ly, lx = y - y0, x - x0
    hy, hx = 1 - ly, 1 - lx
    if mask is not None:
        m = mask.to(ftype).view(n, k, ho, wo).permute(0, 2, 3, 1)
        hy, ly = hy * m, ly * m
    wp, hp = w + 3, h + 3
    idx = torch.empty((n, ho, wo, k, slots), dtype=torch.int64, device=offset.device)
    # Top-left corner row in the padded table: (y0 + 1, x0 + 1), plus the image's block.
    first = idx[..., 0]
    torch.mul(y0.to(torch.int64), wp, out=first)
    first.add_(x0.to(torch.int64)).add_(wp + 1)
    if n > 1:
        first.add_((torch.arange(n, device=offset.device) * (hp * wp)).view(n, 1, 1, 1))
    torch.add(first, 1, out=idx[..., 1])
    torch.add(first, wp, out=idx[..., 2])
    torch.add(first, wp + 1, out=idx[..., 3])
    ws = offset.new_empty((n, ho, wo, k, slots), dtype=ftype)
    ws[..., 0] = hy * hx
    ws[..., 1] = hy * lx
    ws[..., 2] = ly * hx
    ws[..., 3] = ly * lx
    return idx, ws


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    device = tensors[0].device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return torch.promote_types(tensors[0].dtype, tensors[1].dtype) if len(tensors) > 1 else tensors[0].dtype


def _gather_linear(
    idx: torch.Tensor,
    ws: torch.Tensor,
    table: torch.Tensor,
    taps: int,
    linears: Sequence[tuple[torch.Tensor, torch.Tensor | None]],
    images: int = 1,
    channels_first: bool = False,
    chunk: int | None = None,
) -> torch.Tensor:
    """Gather ``taps`` samples x ``C`` channels per output pixel and apply ``linears`` in turn
    (each ``(matrix, bias)``; no activation between them).

    Returns ``pixels x C_out`` (NHWC order), or with ``channels_first`` ``images x C_out x
    pixels_per_image`` (NCHW order, written directly by the last product).
    """
    channels = table.shape[1]
    pixels = idx.shape[0] // taps
    per_image = pixels // images
    width = linears[-1][0].shape[1] if linears else taps * channels

    def columns(p0: int, p1: int) -> torch.Tensor:
        s = slice(p0 * taps, p1 * taps)
        return F.embedding_bag(idx[s], table, per_sample_weights=ws[s], mode="sum").view(p1 - p0, taps * channels)

    def apply(y: torch.Tensor, mats) -> torch.Tensor:
        for mat, bias in mats:
            y = torch.mm(y, mat) if bias is None else torch.addmm(bias, y, mat)
        return y

    differentiable = torch.is_grad_enabled() and (
        table.requires_grad or ws.requires_grad or any(m.requires_grad or (b is not None and b.requires_grad) for m, b in linears)
    )
    if differentiable:  # one piece: autograd keeps the columns for backward anyway
        y = apply(columns(0, pixels), linears)
        return y.view(images, per_image, width).transpose(1, 2) if channels_first else y

    if not linears:  # a plain gather: no product to keep in cache, so no chunks
        y = columns(0, pixels)
        return y.view(images, per_image, width).transpose(1, 2) if channels_first else y

    chunk = CHUNK if chunk is None else chunk
    out = table.new_empty((images, width, per_image) if channels_first else (pixels, width))
    for image in range(images):
        for i0 in range(0, per_image, chunk):
            i1 = min(i0 + chunk, per_image)
            p0, p1 = image * per_image + i0, image * per_image + i1
            y = apply(columns(p0, p1), linears[:-1])
            mat, bias = linears[-1]
            # The bias is added while the chunk is in cache (addmm's out= would first broadcast-
            # copy it, which is slower).
            if channels_first:  # out^T = mat^T y^T (+ bias), straight into the NCHW rows
                dst = torch.mm(mat.t(), y.t(), out=out[image, :, i0:i1])
                if bias is not None:
                    dst += bias[:, None]
            else:
                dst = torch.mm(y, mat, out=out[p0:p1])
                if bias is not None:
                    dst += bias
    return out


def _check(name: str, x: torch.Tensor, dims: int = 4) -> None:
    if x.dim() != dims:
        raise ValueError(f"{name} must be {dims}-D, got shape {tuple(x.shape)}")


def _out_size(h, w, kernel, stride, padding, dilation) -> tuple[int, int]:
    ho = (h + 2 * padding[0] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    return ho, wo


def _check_offsets(offset, mask, n, kernel, out_hw, what="input") -> None:
    k = kernel[0] * kernel[1]
    _check("offset", offset)
    if offset.shape[1] != 2 * k:
        if offset.shape[1] % (2 * k) == 0:
            raise NotImplementedError("only one offset group is supported (offset must have 2*kh*kw channels)")
        raise ValueError(f"offset must have 2*kh*kw = {2 * k} channels, got {offset.shape[1]}")
    if offset.shape[0] != n or tuple(offset.shape[2:]) != tuple(out_hw):
        raise ValueError(f"offset must be {(n, 2 * k, *out_hw)} for this {what}, got {tuple(offset.shape)}")
    if mask is not None:
        _check("mask", mask)
        if tuple(mask.shape) != (n, k, *out_hw):
            if mask.shape[1] != k and mask.shape[1] % k == 0:
                raise NotImplementedError("only one offset group is supported (mask must have kh*kw channels)")
            raise ValueError(f"mask must be {(n, k, *out_hw)}, got {tuple(mask.shape)}")


def _finish(out: torch.Tensor, n: int, hw: tuple[int, int], channels_first: bool = False) -> torch.Tensor:
    """``pixels x C`` (NHWC order) -> ``N x C x H x W`` in channels-last memory, or
    ``N x C x pixels`` (channels_first) -> ``N x C x H x W``; no copy."""
    if channels_first:
        return out.reshape(n, out.shape[1], hw[0], hw[1])
    return out.view(n, hw[0], hw[1], out.shape[1]).permute(0, 3, 1, 2)


def deform_conv2d(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride=(1, 1),
    padding=(0, 0),
    dilation=(1, 1),
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same arguments and result as ``torchvision.ops.deform_conv2d`` (groups 1, one offset
    group). ``offset``: ``N x 2K x Ho x Wo`` as (dy, dx) pairs per tap, taps row-major over the
    kernel; ``mask``: ``N x K x Ho x Wo`` or None. The result is in channels-last memory."""
    _check("input", input)
    _check("weight", weight)
    n, c, h, w = input.shape
    c_out, c_in, kh, kw = weight.shape
    if c_in != c:
        if c % c_in == 0:
            raise NotImplementedError("grouped deformable convolution is not supported (groups must be 1)")
        raise ValueError(f"weight expects {c_in} input channels, input has {c}")
    kernel, stride, padding, dilation = (kh, kw), _pair(stride), _pair(padding), _pair(dilation)
    out_hw = _out_size(h, w, kernel, stride, padding, dilation)
    _check_offsets(offset, mask, n, kernel, out_hw)
    dtype = _compute_dtype(input, weight)
    with torch.autocast(input.device.type, enabled=False):
        idx, ws = _plan(offset, mask, (h, w), out_hw, kernel, stride, padding, dilation)
        idx, ws = idx.view(-1, 4), ws.view(-1, 4)
        linears = [(weight_matrix(weight).to(dtype), None if bias is None else bias.to(dtype))]
        out = _gather_linear(idx, ws.to(dtype), padded_rows(input, dtype=dtype), kh * kw, linears)
    return _finish(out, n, out_hw)


def blended_deform_conv2d(
    x_new: torch.Tensor,
    x_ref: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    padding=(1, 1),
    then: Sequence[tuple[torch.Tensor, torch.Tensor | None]] = (),
    channels_first: bool = False,
) -> torch.Tensor:
    """``deform_conv2d(x_new, 0, weight, mask=mask) + deform_conv2d(x_ref, offset, weight,
    mask=1 - mask)`` (plus ``bias`` once) computed as one convolution over blended columns.

    Stride and dilation 1; ``x_new`` and ``x_ref`` have the same shape; output size = input
    size when ``padding`` is "same" (k // 2). ``then``: further ``(matrix, bias)`` linear maps
    (``C_prev x C_next`` matrices, e.g. a following 1x1 conv as ``weight[:, :, 0, 0].t()``)
    applied to each chunk while it is in cache. Result in channels-last memory, or contiguous
    NCHW with ``channels_first`` (written directly, no transposing copy).
    """
    _check("x_new", x_new)
    _check("x_ref", x_ref)
    if x_new.shape != x_ref.shape:
        raise ValueError(f"x_new and x_ref must have the same shape, got {tuple(x_new.shape)} and {tuple(x_ref.shape)}")
    n, c, h, w = x_new.shape
    c_out, c_in, kh, kw = weight.shape
    if c_in != c:
        raise ValueError(f"weight expects {c_in} input channels, inputs have {c}")
    kernel, padding = (kh, kw), _pair(padding)
    if not all(0 <= p <= 1 for p in padding):
        raise NotImplementedError("blended_deform_conv2d supports padding 0 or 1 (the zero-offset taps must stay in the table border)")
    one = (1, 1)
    out_hw = _out_size(h, w, kernel, one, padding, one)
    _check_offsets(offset, mask, n, kernel, out_hw)
    dtype = _compute_dtype(x_new, weight)
    k = kh * kw
    with torch.autocast(x_new.device.type, enabled=False):
        # Reference branch: four bilinear corners weighted by (1 - m); slot 4: the new branch,
        # the integer tap position in the second table, weighted by m.
        idx, ws = _plan(offset, 1 - mask, (h, w), out_hw, kernel, one, padding, one, slots=5)
        py, px = _taps(out_hw, kernel, one, padding, one, x_new.device)
        hp, wp = h + 3, w + 3
        first = (py.long() + 1) * wp + (px.long() + 1)  # (ho, wo, k), inside the zero border
        idx[..., 4] = first.unsqueeze(0) + (torch.arange(n, device=x_new.device) * (hp * wp) + n * hp * wp).view(n, 1, 1, 1)
        ws[..., 4] = mask.view(n, k, *out_hw).permute(0, 2, 3, 1)
        idx, ws = idx.view(-1, 5), ws.view(-1, 5)
        table = padded_rows(x_ref, x_new, dtype=dtype)
        linears = [(weight_matrix(weight).to(dtype), None if bias is None else bias.to(dtype))]
        linears += [(mat.to(dtype), None if b is None else b.to(dtype)) for mat, b in then]
        out = _gather_linear(idx, ws.to(dtype), table, k, linears, images=n, channels_first=channels_first)
    return _finish(out, n, out_hw, channels_first)


def flow_sample(
    x: torch.Tensor, offset: torch.Tensor, origin=(0, 0), size: tuple[int, int] | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """``out[:, :, i, j] = x~(i + origin_y + dy(i, j), j + origin_x + dx(i, j))``: bilinear,
    ``x~`` zero outside ``x``; ``offset`` is ``N x 2 x Ho x Wo`` as (dy, dx), like one tap of a
    deformable convolution. Output ``N x C x Ho x Wo`` in channels-last memory.

    ``x`` may also be the :func:`padded_rows` of an ``N x C x H x W`` map (to reuse it across
    calls), with ``size=(H, W)``. ``dtype``: of the gather and the result (default: the
    autocast dtype under autocast, else ``x``'s).
    """
    _check("offset", offset)
    if x.dim() == 2:
        if size is None:
            raise ValueError("flow_sample on padded rows needs size=(H, W) of the map")
        (h, w), n = size, offset.shape[0]
        if x.shape[0] != n * (h + 3) * (w + 3):
            raise ValueError(f"rows of shape {tuple(x.shape)} do not hold {n} maps of {h}x{w}")
    else:
        _check("x", x)
        n, _, h, w = x.shape
    if offset.shape[1] != 2 or offset.shape[0] != n:
        raise ValueError(f"offset must be N x 2 x Ho x Wo for an input of batch {n}, got {tuple(offset.shape)}")
    out_hw = tuple(offset.shape[2:])
    dtype = _compute_dtype(x) if dtype is None else dtype
    with torch.autocast(x.device.type, enabled=False):
        # A 1x1 "kernel" with padding -origin puts output (i, j) at input (i + origin).
        idx, ws = _plan(offset, None, (h, w), out_hw, (1, 1), (1, 1), (-origin[0], -origin[1]), (1, 1))
        idx, ws = idx.view(-1, 4), ws.view(-1, 4)
        rows = x.to(dtype) if x.dim() == 2 else padded_rows(x, dtype=dtype)
        out = _gather_linear(idx, ws.to(dtype), rows, 1, [])
    return _finish(out, n, out_hw)
