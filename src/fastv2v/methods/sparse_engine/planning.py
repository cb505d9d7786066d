"""The plan and the schedule: what runs where, and what it costs, before any convolution runs.

A ``_Plan`` is the geometry of the converted graph at one input shape and device (no video
state; the runner keeps one per shape): each node's output tile grid and whole-image fallback,
its input windows, how a change mask spreads through it, the buffers' extents and border bands,
and the MACs of a dense pass. A :class:`Schedule` is one frame's plan: the input change mask,
each node's active tiles and the MACs they will cost, which the method compares with its
break-even before it decides on a key frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch

from fastv2v.errors import UserError
from fastv2v.methods.sparse_engine.graph import _Graph, _Node
from fastv2v.methods.sparse_engine.masks import _axis_map, _axis_map_transposed
from fastv2v.methods.sparse_engine.tiles import _Buffer, _Grid


@dataclass
class _NodePlan:
    index: int
    src: int  # buffer index of the input
    dst: int  # buffer index the output goes to (len(nodes) is the output buffer)
    c_in: int
    c_out: int
    in_hw: tuple[int, int]
    grid: _Grid
    full: _Grid
    origin: tuple[int, int]
    maps: tuple = ()  # per-axis mask spread through this conv
    local_pad: tuple[int, int] = (0, 0)  # transposed: padding of the per-tile transposed conv
    band: torch.Tensor | None = None
    band_full: torch.Tensor | None = None
    skip: int | None = None

    def window(self, node: _Node, grid: _Grid) -> tuple[tuple[int, int], tuple[int, int]]:
        """(window size, window step) in input-buffer pixels for tiles of ``grid``."""
        (kh, kw), (sh, sw) = node.kernel, node.stride
        if node.transposed:
            ph, pw = node.conv.padding
            c0h, c0w = -((kh - 1 - ph) // sh), -((kw - 1 - pw) // sw)  # ceil((p - k + 1) / s)
            lh = (grid.th - 1 + ph) // sh - c0h + 1
            lw = (grid.tw - 1 + pw) // sw - c0w + 1
            return (lh, lw), (grid.th // sh, grid.tw // sw)
        return ((grid.th - 1) * sh + kh, (grid.tw - 1) * sw + kw), (grid.th * sh, grid.tw * sw)

    def macs(self, node: _Node, grid: _Grid, n: int) -> tuple[int, int]:
        """(exact, paper) MACs of ``n`` tiles of ``grid``, as the op-level profiler counts them."""
        w = node.conv.weight.numel()
        if not node.transposed:
            m = n * grid.th * grid.tw * w
            return m, m
        (wh, ww), _ = self.window(node, grid)
        (sh, sw), (kh, kw) = node.stride, node.kernel
        oh = (wh - 1) * sh - 2 * self.local_pad[0] + kh
        ow = (ww - 1) * sw - 2 * self.local_pad[1] + kw
        return n * wh * ww * w, n * oh * ow * w


@dataclass
class _Plan:
    shape: tuple[int, ...]
    buffers: list[_Buffer]
    nodes: list[_NodePlan]
    input_sources: torch.Tensor  # flat input pixels whose change must refresh the first border
    dense_macs: tuple[int, int]
    dilate: tuple | None
    reach: tuple | None


def _tile_for(tile: int | Mapping[int, int], factor: float) -> int:
    if isinstance(tile, Mapping):
        key = min(tile, key=lambda f: abs(math.log(f / factor)))
        return int(tile[key])
    return int(tile)


def _plan(graph: _Graph, shape: tuple[int, ...], tile, dilation: int, reach: int | None) -> _Plan:
    _, c, H0, W0 = shape
    buffers: list[_Buffer] = []
    plans: list[_NodePlan] = []
    h, w = H0, W0
    for i, node in enumerate(graph.nodes):
        conv = node.conv
        (kh, kw), (sh, sw) = node.kernel, node.stride
        if conv.in_channels != c:
            raise UserError(f"layer {i} of the converted part takes {conv.in_channels} channels but gets {c}.")
        if node.transposed:
            ph, pw = conv.padding
            oph, opw = conv.output_padding
            ho, wo = (h - 1) * sh - 2 * ph + kh + oph, (w - 1) * sw - 2 * pw + kw + opw
            c0h, c0w = -((kh - 1 - ph) // sh), -((kw - 1 - pw) // sw)
            top, left = max(0, -c0h), max(0, -c0w)
            bottom = max(0, (ho - 1 + ph) // sh - (h - 1))
            right = max(0, (wo - 1 + pw) // sw - (w - 1))
            buf = _Buffer(c, h, w, top, left, bottom, right, "zero")
            maps = (_axis_map_transposed(h, kh, sh, ph, oph), _axis_map_transposed(w, kw, sw, pw, opw))
        else:
            pl, pr, pt, pb = node.pad
            ho, wo = (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1
            buf = _Buffer(c, h, w, pt, pl, pb, pr, node.mode)
            maps = (_axis_map(h, kh, sh, pt, pb, node.mode), _axis_map(w, kw, sw, pl, pr, node.mode))
        if ho < 1 or wo < 1:
            raise UserError(f"the input {H0}x{W0} is too small for layer {i} of the converted part.")
        t = _tile_for(tile, H0 / ho)
        th, tw = min(t, ho), min(t, wo)
        if node.transposed:  # output tiles start on input pixels: multiples of the stride
            th, tw = -(-th // sh) * sh, -(-tw // sw) * sw
        grid = _Grid(ho, wo, th, tw)
        full = grid.whole((sh, sw) if node.transposed else (1, 1))
        p = _NodePlan(i, i, i + 1, c, conv.out_channels, (h, w), grid, full, (0, 0), maps)
        if node.transposed:
            ph, pw = conv.padding
            c0h, c0w = -((kh - 1 - ph) // sh), -((kw - 1 - pw) // sw)
            p.origin = (top + c0h, left + c0w)
            p.local_pad = (ph - sh * c0h, pw - sw * c0w)
            for g in (grid, full):
                (lh, lw), _ = p.window(node, g)
                got = ((lh - 1) * sh - 2 * p.local_pad[0] + kh, (lw - 1) * sw - 2 * p.local_pad[1] + kw)
                if got[0] < g.th or got[1] < g.tw or min(p.local_pad) < 0:
                    raise UserError("this transposed convolution's geometry is not supported by sparse inference.")
        buffers.append(buf)
        plans.append(p)
        c, h, w = conv.out_channels, ho, wo
    buffers.append(_Buffer(c, h, w, 0, 0, 0, 0, "zero"))  # the output
    for p, node in zip(plans, graph.nodes):
        skips = [s.index for s in node.epilogue if s.kind == "skip"]
        if skips:
            p.skip = skips[0]
            sb = buffers[p.skip]
            if (sb.H, sb.W, sb.C) != (p.grid.H, p.grid.W, p.c_out):
                raise UserError("a residual block changes the feature size; it cannot be converted.")
    # buffer extents: reads of every node's windows, writes of every tiling, skip reads
    writers: list[list[_Grid]] = [[] for _ in buffers]
    for p, node in zip(plans, graph.nodes):
        src = buffers[p.src]
        for g in (p.grid, p.full):
            (wh, ww), (st_h, st_w) = p.window(node, g)
            src.need(p.origin[0] + (g.ny - 1) * st_h + wh, p.origin[1] + (g.nx - 1) * st_w + ww)
            writers[p.dst].append(g)
            if p.skip is not None:
                sb = buffers[p.skip]
                sb.need(sb.top + g.ny * g.th, sb.left + g.nx * g.tw)
    for b, gs in zip(buffers, writers):
        for g in gs:
            b.need(b.top + g.ny * g.th, b.left + g.nx * g.tw)
        b.finish()
    for p in plans:
        p.band = buffers[p.dst].band(p.grid)
        p.band_full = buffers[p.dst].band(p.full)
    exact = paper = 0
    for p, node in zip(plans, graph.nodes):
        w_numel = node.conv.weight.numel()
        outs = p.grid.H * p.grid.W * w_numel
        exact += p.in_hw[0] * p.in_hw[1] * w_numel if node.transposed else outs
        paper += outs

    def dilate(r: int):
        return (_axis_map(H0, 2 * r + 1, 1, r, r, "zero"), _axis_map(W0, 2 * r + 1, 1, r, r, "zero"))

    return _Plan(
        tuple(shape), buffers, plans, buffers[0].sources().view(-1).nonzero()[:, 0], (exact, paper),
        dilate(dilation) if dilation else None, None if reach is None else dilate(reach),
    )  # fmt: skip


def _plan_to(plan: _Plan, device: torch.device) -> _Plan:
    """The plan with its index tensors on ``device`` (mask and tile work runs where the data is)."""

    def maps(m):
        return None if m is None else tuple((i.to(device), k, s) for i, k, s in m)

    for b in plan.buffers:
        b.border_dst = b.border_dst.to(device)
        b.border_src = None if b.border_src is None else b.border_src.to(device)
    for p in plan.nodes:
        p.maps, p.band, p.band_full = maps(p.maps), p.band.to(device), p.band_full.to(device)
    plan.input_sources = plan.input_sources.to(device)
    plan.dilate, plan.reach = maps(plan.dilate), maps(plan.reach)
    return plan


@dataclass
class Schedule:
    """One frame's plan: the input change mask, each node's active tiles (None: nothing to do),
    the ``reach`` cap (input resolution) and the MACs the tiles will cost."""

    changed: torch.Tensor
    tiles: list[torch.Tensor | None]
    reach: torch.Tensor | None
    macs: tuple[int, int]
    dense_macs: tuple[int, int]

    @property
    def changed_fraction(self) -> float:
        return int(self.changed.count_nonzero()) / self.changed.numel()

    @property
    def mac_fraction(self) -> float:
        """Predicted MACs over a dense pass's (exact convention)."""
        return self.macs[0] / max(self.dense_macs[0], 1)
