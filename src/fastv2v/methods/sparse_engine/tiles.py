"""Tile geometry and storage: output tile grids and the padded channels-last buffers.

Every node's input is a padded ``rows x cols x C`` buffer: the reflected or zero border lives in
the buffer itself, so a tile at the image border is gathered with exactly the pixels the dense
pass sees, and nothing is padded per frame (a buffer's border is refreshed only after a write
touches the pixels it copies). A node reads its active windows (tile + halo) with one
``index_select`` of whole channels-last rows and writes its output tiles through a strided view
of the next buffer's interior; nothing is copied at full size per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fastv2v.errors import UserError


@dataclass(frozen=True)
class _Grid:
    """``H x W`` output cut into ``th x tw`` tiles, ``ny x nx`` of them (the last ones ragged)."""

    H: int
    W: int
    th: int
    tw: int

    @property
    def ny(self) -> int:
        return -(-self.H // self.th)

    @property
    def nx(self) -> int:
        return -(-self.W // self.tw)

    @property
    def count(self) -> int:
        return self.ny * self.nx

    def whole(self, multiple: tuple[int, int] = (1, 1)) -> "_Grid":
        """One tile covering the whole output (sides rounded up to ``multiple``)."""
        mh, mw = multiple
        return _Grid(self.H, self.W, -(-self.H // mh) * mh, -(-self.W // mw) * mw)

    def tiles(self, mask: torch.Tensor) -> torch.Tensor:
        """Active tiles of a ``H x W`` bool mask as an ``n x 2`` (row, col) index tensor."""
        ph, pw = self.ny * self.th - self.H, self.nx * self.tw - self.W
        if ph or pw:
            mask = F.pad(mask, (0, pw, 0, ph))
        return mask.view(self.ny, self.th, self.nx, self.tw).any(3).any(1).nonzero()


@dataclass
class _Buffer:
    """Geometry of a node's padded channels-last input buffer ``rows x cols x C``."""

    C: int
    H: int
    W: int
    top: int
    left: int
    bottom: int  # rows after the interior that must hold border values (pad or zeros)
    right: int
    mode: str
    rows: int = 0
    cols: int = 0
    border_dst: torch.Tensor | None = None
    border_src: torch.Tensor | None = None

    def need(self, rows: int, cols: int) -> None:
        self.rows, self.cols = max(self.rows, rows), max(self.cols, cols)

    def finish(self) -> None:
        self.need(self.top + self.H + self.bottom, self.left + self.W + self.right)
        rows = torch.arange(self.top + self.H + self.bottom)
        cols = torch.arange(self.left + self.W + self.right)
        r, c = torch.meshgrid(rows, cols, indexing="ij")
        u, v = r - self.top, c - self.left
        border = (u < 0) | (u >= self.H) | (v < 0) | (v >= self.W)
        self.border_dst = (r * self.cols + c)[border]
        if self.mode == "zero":
            self.border_src = None
            return
        if self.mode == "reflect":
            if max(self.top, self.bottom) >= self.H or max(self.left, self.right) >= self.W:
                raise UserError(
                    f"reflection padding larger than the {self.H}x{self.W} feature map; use a larger input."
                )
            su = torch.where(u < 0, -u, torch.where(u >= self.H, 2 * (self.H - 1) - u, u))
            sv = torch.where(v < 0, -v, torch.where(v >= self.W, 2 * (self.W - 1) - v, v))
        else:  # replicate
            su, sv = u.clamp(0, self.H - 1), v.clamp(0, self.W - 1)
        self.border_src = ((su + self.top) * self.cols + sv + self.left)[border]

    def sources(self) -> torch.Tensor:
        """``H x W`` bool: interior pixels whose change must be copied into the border."""
        mask = torch.zeros(self.H, self.W, dtype=torch.bool)
        if self.border_src is not None:
            flat = self.border_src
            mask[flat // self.cols - self.top, flat % self.cols - self.left] = True
        return mask

    def band(self, grid: _Grid) -> torch.Tensor:
        """``ny x nx`` bool: tiles of ``grid`` whose write forces a border refresh (they hold a
        border source pixel, or run past the interior into the border rows)."""
        mask = F.pad(self.sources(), (0, grid.nx * grid.tw - self.W, 0, grid.ny * grid.th - self.H), value=True)
        return mask.view(grid.ny, grid.th, grid.nx, grid.tw).any(3).any(1)

    def refresh(self, buf: torch.Tensor) -> None:
        flat = buf.view(-1, self.C)
        if self.border_src is None:
            flat.index_fill_(0, self.border_dst, 0.0)
        else:
            flat.index_copy_(0, self.border_dst, flat.index_select(0, self.border_src))


def _view(buf: torch.Tensor, origin: tuple[int, int], step: tuple[int, int], window: tuple[int, int], ny, nx):
    """``ny x nx x wh x ww x C`` (possibly overlapping) windows of a ``rows x cols x C`` buffer."""
    _, cols, C = buf.shape
    row = cols * C
    return buf.as_strided(
        (ny, nx, window[0], window[1], C),
        (step[0] * row, step[1] * C, row, C, 1),
        buf.storage_offset() + (origin[0] * cols + origin[1]) * C,
    )


def _gather(buf: torch.Tensor, origin, step, window, iy: torch.Tensor, ix: torch.Tensor) -> torch.Tensor:
    """The windows of tiles ``(iy, ix)`` as an ``n x wh x ww x C`` batch. Each window row is one
    contiguous run of ``ww * C`` values in a channels-last buffer, so this is one
    ``index_select`` of whole runs (about 2x faster than advanced indexing of a 5-d view)."""
    rows, cols, C = buf.shape
    wh, ww = window
    if len(iy) == 1 and wh + origin[0] == rows and ww + origin[1] == cols:  # the whole buffer: a view
        return buf[origin[0] :, origin[1] :].unsqueeze(0)
    runs = buf.view(-1).as_strided((rows * cols - ww + 1, ww * C), (C, 1))
    base = (origin[0] + iy * step[0]) * cols + origin[1] + ix * step[1]
    starts = (base[:, None] + torch.arange(wh, device=buf.device) * cols).reshape(-1)
    return runs.index_select(0, starts).view(-1, wh, ww, C)


def _interior(buf: torch.Tensor, spec: _Buffer, grid: _Grid):
    """The interior of a buffer cut into ``grid``'s tiles: ``ny x nx x th x tw x C``."""
    return _view(buf, (spec.top, spec.left), (grid.th, grid.tw), (grid.th, grid.tw), grid.ny, grid.nx)
