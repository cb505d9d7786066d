"""Change masks through the layers: which output pixels a changed input pixel reaches.

An exact, separable spread of a bool mask through a convolution's kernel (reflected borders and
transposed convolutions included), used for the input ``dilation``, each node's receptive field
and the ``reach`` cap; and a change mask brought to another resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _axis_map(n: int, k: int, s: int, lo: int, hi: int, mode: str) -> tuple[torch.Tensor, int, int]:
    """How a mask spreads along one axis through a conv: ``(index, k, step)`` such that
    ``out[o] = any(m_ext[index][o * step : o * step + k])``, where ``m_ext`` is the mask with
    one False sentinel appended (index ``n``). Border modes map padded positions to the pixel
    they copy, so a change next to a reflected border also lands where the conv sees it."""
    u = torch.arange(n + lo + hi) - lo
    if mode == "reflect":
        u = torch.where(u < 0, -u, torch.where(u >= n, 2 * (n - 1) - u, u))
    elif mode == "replicate":
        u = u.clamp(0, n - 1)
    else:
        u = torch.where((u >= 0) & (u < n), u, n)
    return u, k, s


def _axis_map_transposed(n: int, k: int, s: int, p: int, op: int) -> tuple[torch.Tensor, int, int]:
    """A transposed conv is a stride-1 conv over the input with ``s - 1`` zeros between pixels,
    padded by ``k - 1 - p`` (plus the output padding after)."""
    lo, hi = k - 1 - p, k - 1 - p + op
    j = torch.arange((n - 1) * s + 1 + lo + hi) - lo
    valid = (j >= 0) & (j % s == 0) & (j // s < n)
    return torch.where(valid, j // s, n), k, 1


def _spread(mask: torch.Tensor, maps) -> torch.Tensor:
    """Output pixels whose receptive field holds a True input pixel: separable, exact, as an
    OR of ``k`` strided slices per axis (far cheaper than pooling a float mask)."""
    out = F.pad(mask, (0, 1, 0, 1))  # the False sentinel row and column
    for axis, (index, k, step) in enumerate(maps):
        a = out.index_select(axis, index)
        n_out = (a.shape[axis] - k) // step + 1
        span = (n_out - 1) * step + 1
        out = a.narrow(axis, 0, span)[(slice(None),) * axis + (slice(None, None, step),)].clone()
        for d in range(1, k):
            out |= a.narrow(axis, d, span)[(slice(None),) * axis + (slice(None, None, step),)]
    return out


def _resize_mask(mask: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """A change mask at another resolution: a pixel is changed if any pixel it covers is."""
    h, w = mask.shape
    if (h, w) == (H, W):
        return mask
    if h % H == 0 and w % W == 0:
        return mask.view(H, h // H, W, w // W).any(3).any(1)
    return F.adaptive_max_pool2d(mask[None, None].float(), (H, W))[0, 0] > 0
