"""The runner: key frames and sparse frames of one converted part, and the state they pass on.

:class:`SparseRunner` holds no per-video state. :meth:`~SparseRunner.key` runs the dense pass
and fills a :class:`SparseCache` (the input reference, every node's input buffer, the frozen
norms folded into the convolutions); :meth:`~SparseRunner.update` accepts the changed input,
recomputes the scheduled tiles of every node, updates the cache in place and reports what the
frame cost as :class:`FrameStats`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fastv2v.errors import UserError
from fastv2v.methods.sparse_engine.dense import _affine, _dense_walk, _uses_input_stats, run_frozen
from fastv2v.methods.sparse_engine.graph import _compile, _Node, _Step
from fastv2v.methods.sparse_engine.masks import _resize_mask, _spread
from fastv2v.methods.sparse_engine.planning import Schedule, _NodePlan, _Plan, _plan, _plan_to
from fastv2v.methods.sparse_engine.tiles import _gather, _Grid, _interior

# Recomputed pixels differ from the dense key pass by float rounding (folded weights, another
# conv algorithm). Below this absolute difference a feature counts as unchanged, so rounding
# noise does not spread the active area through the network.
ROUNDING_FLOOR = 1e-5


@dataclass
class SparseCache:
    """Everything one video needs between frames (explicit state, never kept on a module).

    ``ref``: the input reference (what the cached activations were computed from; DeltaCNN: it
    changes only where the input change was accepted); ``buffers[i]``: node ``i``'s padded
    channels-last input (the last one is the output); ``weights``: the convolutions with the
    frozen norms folded in; ``affines``: the frozen scale/shift of every norm. Updated in place
    by :meth:`SparseRunner.update`.
    """

    plan: _Plan
    ref: torch.Tensor
    buffers: list[torch.Tensor]
    weights: list[tuple[torch.Tensor, torch.Tensor | None]]
    affines: list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class FrameStats:
    """What one frame cost: the bench's MACs per frame and the active area.

    ``changed``: fraction of input pixels accepted as changed (after dilation). ``active``:
    fraction of each node's output tiles computed. ``macs_exact``/``macs_paper``: the MACs
    actually run (both conventions of :mod:`fastv2v.metrics.profile`), ``dense_macs_*`` those of
    a dense pass of the converted part. ``conv_s``: seconds inside the convolution calls
    themselves, ``gather_s``: seconds gathering their input windows, ``total_s``: the whole step
    (so ``total_s - conv_s`` is everything that is not arithmetic: gathers, scatters, masks,
    epilogues, Python).
    """

    key: bool
    changed: float
    active: list[float]
    macs_exact: int
    macs_paper: int
    dense_macs_exact: int
    dense_macs_paper: int
    conv_s: float = 0.0
    gather_s: float = 0.0
    total_s: float = 0.0

    @property
    def mac_fraction(self) -> float:
        return self.macs_exact / max(self.dense_macs_exact, 1)


class SparseRunner:
    """A flat run of generator layers, converted for incremental sparse inference.

    ``SparseRunner(generator.model)`` converts a whole generator, ``SparseRunner(generator.body)``
    its body. The runner holds no per-video state: :meth:`key` returns a :class:`SparseCache`
    and :meth:`update` takes and updates it in place.

    * ``threshold``: an input pixel counts as changed when a channel moved by more than this
      from the reference (0: any change).
    * ``dilation``: the input change mask grows by this many pixels (and so does the region of
      the reference that is refreshed).
    * ``reach``: how far (input pixels) recomputation may spread beyond the changed input
      through the layers' receptive fields; ``None``: no limit, the exact result. A limit keeps
      the active area from growing layer after layer (SIGE's behaviour is ``reach=0``: every
      layer recomputes the dilated mask, halos read cached neighbours), at the price of stale
      activations just outside it until the next key frame.
    * ``feature_threshold``: 0 writes every recomputed tile and treats the whole receptive
      field of a change as changed (exact); above 0, a recomputed feature pixel is accepted
      into the next layer's input only when it moved by more than this (DeltaCNN; the old value
      stays otherwise, so small changes accumulate until they cross it and never drift).
    * ``tile``: output tile side at every layer, or ``{downsampling factor: side}``.
    * ``dense_above``: fraction of a layer's tiles above which it runs as one whole-image conv.
    * ``input_is_feature``: the input is computed features (e.g. a dense head's output), whose
      float rounding must not count as change: the threshold is at least ``ROUNDING_FLOOR``.
    """

    def __init__(
        self,
        modules: Sequence[nn.Module] | nn.Module,
        *,
        threshold: float = 0.0,
        dilation: int = 0,
        reach: int | None = None,
        feature_threshold: float = 0.0,
        tile: int | Mapping[int, int] = 8,
        dense_above: float = 0.7,
        input_is_feature: bool = False,
    ):
        if threshold < 0 or feature_threshold < 0:
            raise UserError("sparse thresholds must be >= 0.")
        for name, value in (("dilation", dilation), ("reach", 0 if reach is None else reach)):
            if int(value) != value or value < 0:
                raise UserError(f"the sparse {name} must be a whole number >= 0, not {value}.")
        tiles = tile.values() if isinstance(tile, Mapping) else [tile]
        if any(int(t) != t or t < 1 for t in tiles):
            raise UserError(f"the sparse tile size must be a whole number >= 1, not {tile}.")
        if not 0 < dense_above <= 1:
            raise UserError(f"dense_above must be in (0, 1], not {dense_above}.")
        if isinstance(modules, nn.Sequential):
            modules = list(modules.children())
        elif isinstance(modules, nn.Module):
            modules = [modules]
        self.modules = list(modules)
        self.graph = _compile(self.modules)
        self.threshold, self.feature_threshold = float(threshold), float(feature_threshold)
        if input_is_feature:  # computed features carry rounding noise that is not a change
            self.threshold = max(self.threshold, ROUNDING_FLOOR)
        self.dilation, self.reach = int(dilation), (None if reach is None else int(reach))
        self.tile, self.dense_above = tile, float(dense_above)
        self._plans: dict[tuple, _Plan] = {}  # geometry per input shape and device (no video state)

    # -- plans and key frames -----------------------------------------------------------------

    def plan(self, shape: Sequence[int], device: torch.device | str = "cpu") -> _Plan:
        """The geometry (tilings, buffer sizes, index maps) for one input shape and device."""
        shape = tuple(int(s) for s in shape)
        if len(shape) != 4 or shape[0] != 1:
            raise UserError(f"sparse inference runs one frame at a time (1 x C x H x W), not {shape}.")
        device = torch.device(device)
        key = (shape, device)
        if key not in self._plans:
            plan = _plan(self.graph, shape, self.tile, self.dilation, self.reach)
            self._plans[key] = _plan_to(plan, device) if device.type != "cpu" else plan
        return self._plans[key]

    def dense_macs(self, shape: Sequence[int]) -> tuple[int, int]:
        """(exact, paper) MACs of one dense pass of the converted part at this input shape."""
        return self.plan(shape).dense_macs

    @torch.no_grad()
    def key(self, x: torch.Tensor, cache: SparseCache | None = None) -> tuple[torch.Tensor, SparseCache]:
        """Dense pass with the real modules (so the output is exactly theirs), filling the cache
        and freezing the norm statistics. ``cache``: an old cache of the same size to reuse."""
        plan = self.plan(x.shape, x.device)
        dev, dt = x.device, x.dtype
        if cache is not None and cache.plan is plan and cache.ref.device == dev and cache.ref.dtype == dt:
            buffers, ref = cache.buffers, cache.ref
            ref.copy_(x)
        else:
            buffers = [torch.zeros(b.rows, b.cols, b.C, device=dev, dtype=dt) for b in plan.buffers]
            ref = x.detach().clone()
        stats: list[tuple[torch.Tensor, torch.Tensor] | None] = []

        def on_input(i: int, t: torch.Tensor) -> None:
            spec = plan.buffers[i]
            buffers[i][spec.top : spec.top + spec.H, spec.left : spec.left + spec.W].copy_(t[0].permute(1, 2, 0))
            spec.refresh(buffers[i])

        def norm(i: int, m: nn.Module, t: torch.Tensor) -> torch.Tensor:
            if _uses_input_stats(m):
                var, mean = torch.var_mean(t, dim=(2, 3), unbiased=False)
                stats.append((mean[0], var[0]))
            else:
                stats.append(None)
            return m(t)

        y = _dense_walk(self.modules, x, on_input, norm)
        out = plan.buffers[-1]
        buffers[-1][: out.H, : out.W].copy_(y[0].permute(1, 2, 0))
        affines = [_affine(m, s) for m, s in zip(self.graph.norms, stats)]
        weights = []
        for node in self.graph.nodes:
            w, b = node.conv.weight.detach(), node.conv.bias
            b = None if b is None else b.detach()
            if node.fold is not None:
                scale, shift = affines[node.fold]
                w = w * scale.view((1, -1, 1, 1) if node.transposed else (-1, 1, 1, 1))
                b = shift if b is None else b * scale + shift
            weights.append((w.contiguous(memory_format=torch.channels_last), b))
        return y, SparseCache(plan, ref, buffers, weights, affines)

    @torch.no_grad()
    def dense_frozen(self, x: torch.Tensor, cache: SparseCache) -> torch.Tensor:
        """The dense pass with the cache's frozen norm statistics, run with the real modules:
        what the sparse pass equals with thresholds 0 and no reach limit."""

        return run_frozen(self.modules, x, cache.affines)

    # -- sparse frames --------------------------------------------------------------------------

    @torch.no_grad()
    def changed(self, x: torch.Tensor, cache: SparseCache) -> torch.Tensor:
        """``H x W`` bool: input pixels that moved by more than ``threshold`` (any channel) from
        the reference, grown by ``dilation`` pixels."""
        return self.change_mask(x, cache.ref, cache.plan)

    @torch.no_grad()
    def change_mask(self, x: torch.Tensor, ref: torch.Tensor, plan: _Plan) -> torch.Tensor:
        """:meth:`changed` against any reference frame of the plan's size."""
        if tuple(x.shape) != plan.shape:
            raise UserError(f"frame size {tuple(x.shape)} differs from the key frame's {plan.shape}; run a key frame first.")
        if self.threshold == 0:
            mask = (x[0] != ref[0]).any(0)
        else:
            mask = (x[0] - ref[0]).abs_().amax(0) > self.threshold
        if plan.dilate is not None:
            mask = _spread(mask, plan.dilate)
        return mask

    @torch.no_grad()
    def schedule(self, x: torch.Tensor, cache: SparseCache, changed: torch.Tensor | None = None) -> Schedule:
        """Which tiles of which layer this frame needs, and what they will cost, before any
        convolution runs: the masks spread through the receptive fields, capped by ``reach``.

        Exact when ``feature_threshold`` is 0 (which pixels change does not depend on values);
        otherwise an upper bound (the thresholds prune more as the frame runs). The method
        compares ``macs_fraction`` with its break-even to choose a dense key frame instead.

        ``changed``: an ``H x W`` bool mask to use instead of comparing ``x`` with the reference
        (when the caller knows what it edited); it must cover every pixel that differs."""
        if changed is None:
            changed = self.changed(x, cache)
        plan = cache.plan
        n_nodes = len(plan.nodes)
        masks: list[torch.Tensor | None] = [None] * (n_nodes + 1)
        tiles: list[torch.Tensor | None] = [None] * n_nodes
        macs = [0, 0]
        reach = None
        if bool(changed.any()):
            masks[0] = changed
            reach = None if plan.reach is None else _spread(changed, plan.reach)
            for i, p in enumerate(plan.nodes):
                out_mask = self._out_mask(p, masks, reach, plan)
                if out_mask is None:
                    continue
                idx = p.grid.tiles(out_mask)
                if len(idx) == 0:
                    continue
                tiles[i], masks[p.dst] = idx, out_mask
                grid, n = (p.full, 1) if len(idx) > self.dense_above * p.grid.count else (p.grid, len(idx))
                mx = p.macs(self.graph.nodes[i], grid, n)
                macs[0] += mx[0]
                macs[1] += mx[1]
        return Schedule(changed, tiles, reach, tuple(macs), plan.dense_macs)

    @torch.no_grad()
    def update(
        self, x: torch.Tensor, cache: SparseCache, schedule: Schedule | None = None, copy: bool = True
    ) -> tuple[torch.Tensor, FrameStats]:
        """One sparse frame: recompute the tiles that changed, update ``cache`` in place.

        ``schedule`` (from :meth:`schedule` on the same frame) may be passed when the caller
        already made it. Returns the output and what the frame cost. The output is a fresh
        tensor; ``copy=False`` returns a view of the cache instead (saves one full copy per
        frame; only for a caller that consumes it before the next update, e.g. a dense tail).
        """
        start = time.perf_counter()
        if schedule is None:
            schedule = self.schedule(x, cache)
        changed = schedule.changed
        plan, buffers, graph = cache.plan, cache.buffers, self.graph
        n_nodes = len(graph.nodes)
        conv_s = gather_s = 0.0
        macs = [0, 0]
        active = [0.0] * n_nodes
        self._input(x, cache, changed)
        thr = max(self.feature_threshold, ROUNDING_FLOOR) if self.feature_threshold > 0 else None
        masks: list[torch.Tensor | None] = [None] * (n_nodes + 1)
        masks[0] = changed if schedule.tiles and any(t is not None for t in schedule.tiles) else None
        reach = schedule.reach

        for i, (node, p) in enumerate(zip(graph.nodes, plan.nodes)):
            if thr is None:
                idx = schedule.tiles[i]
            else:  # values decide what moved: spread this frame's accepted changes
                out_mask = self._out_mask(p, masks, reach, plan)
                idx = None if out_mask is None else p.grid.tiles(out_mask)
            if idx is None or len(idx) == 0:
                continue
            grid, band, n = p.grid, p.band, len(idx)
            active[i] = n / grid.count
            if n > self.dense_above * grid.count:
                grid, band, n = p.full, p.band_full, 1
                idx = idx.new_zeros(1, 2)
            iy, ix = idx[:, 0], idx[:, 1]
            t0 = time.perf_counter()
            window, step = p.window(node, grid)
            tiles = _gather(buffers[p.src], p.origin, step, window, iy, ix).permute(0, 3, 1, 2)
            t1 = time.perf_counter()
            out = self._conv(node, p, grid, tiles, cache.weights[i])
            t2 = time.perf_counter()
            gather_s += t1 - t0
            conv_s += t2 - t1
            mx = p.macs(node, grid, n)
            macs[0] += mx[0]
            macs[1] += mx[1]
            out = self._apply(node.epilogue, out, cache, plan, grid, (iy, ix))
            dst_spec = plan.buffers[p.dst]
            view = _interior(buffers[p.dst], dst_spec, grid)
            if thr is not None and p.dst < n_nodes:
                old = view[iy, ix]
                moved = (out - old).abs_().amax(-1) > thr
                view[iy, ix] = torch.where(moved[..., None], out, old)
                canvas = torch.zeros(grid.ny * grid.th, grid.nx * grid.tw, dtype=torch.bool, device=out.device)
                canvas.view(grid.ny, grid.th, grid.nx, grid.tw).permute(0, 2, 1, 3)[iy, ix] = moved
                masks[p.dst] = canvas[: grid.H, : grid.W] if bool(moved.any()) else None
            else:
                view[iy, ix] = out
            if p.dst < n_nodes and band[iy, ix].any():
                dst_spec.refresh(buffers[p.dst])

        y = self._output(cache, copy)
        stats = FrameStats(
            key=False,
            changed=schedule.changed_fraction,
            active=active,
            macs_exact=macs[0],
            macs_paper=macs[1],
            dense_macs_exact=plan.dense_macs[0],
            dense_macs_paper=plan.dense_macs[1],
            conv_s=conv_s,
            gather_s=gather_s,
            total_s=time.perf_counter() - start,
        )
        return y, stats

    def _out_mask(self, p: _NodePlan, masks: list, reach: torch.Tensor | None, plan: _Plan) -> torch.Tensor | None:
        """Output pixels of node ``p`` that must be recomputed: its changed inputs spread through
        the kernel, the changed block input for a residual add, within ``reach``."""
        out = None if masks[p.src] is None else _spread(masks[p.src], p.maps)
        if p.skip is not None and masks[p.skip] is not None:
            out = masks[p.skip] if out is None else out | masks[p.skip]
        if out is not None and reach is not None:
            out &= _resize_mask(reach, p.grid.H, p.grid.W)
        return out

    # -- pieces ---------------------------------------------------------------------------------

    @staticmethod
    def _output(cache: SparseCache, copy: bool = True) -> torch.Tensor:
        """The cached output as ``1 x C x H x W``: a copy, so later frames never change what a
        caller holds (or a channels-last view with ``copy=False``). Image-like outputs (up to 4
        channels) come back contiguous; feature maps stay channels last (a transposing copy of a
        256-channel map costs more than a sparse conv)."""
        spec = cache.plan.buffers[-1]
        y = cache.buffers[-1][: spec.H, : spec.W].permute(2, 0, 1).unsqueeze(0)
        if not copy:
            return y
        return y.contiguous() if spec.C <= 4 else y.clone(memory_format=torch.channels_last)

    def _input(self, x: torch.Tensor, cache: SparseCache, changed: torch.Tensor) -> None:
        """Accept the changed input pixels into the reference (DeltaCNN: nowhere else) and into
        the first node's buffer (through the prologue, if the part starts with element-wise
        layers). Only the changed pixels are read and written, channel vectors at a time."""
        plan = cache.plan
        if not bool(changed.any()):
            return
        values = x[0].permute(1, 2, 0)[changed]  # n_changed x C
        cache.ref[0].permute(1, 2, 0)[changed] = values
        if self.graph.prologue:
            values = self._apply(self.graph.prologue, values.clone(), cache, plan, None, None)
        spec = plan.buffers[0]
        cache.buffers[0][spec.top : spec.top + spec.H, spec.left : spec.left + spec.W][changed] = values
        if plan.input_sources.numel() and bool(changed.view(-1)[plan.input_sources].any()):
            spec.refresh(cache.buffers[0])

    @staticmethod
    def _conv(node: _Node, p: _NodePlan, grid: _Grid, tiles: torch.Tensor, wb) -> torch.Tensor:
        """One dense conv, no padding, on the stacked windows (tile + halo):
        ``n x th x tw x C_out`` (channels last)."""
        w, b = wb
        if node.transposed:
            out = F.conv_transpose2d(tiles, w, b, node.stride, p.local_pad, 0, node.conv.groups)
            out = out[:, :, : grid.th, : grid.tw]
        else:
            out = F.conv2d(tiles, w, b, node.stride, 0, 1, node.conv.groups)
        return out.permute(0, 2, 3, 1)

    @staticmethod
    def _apply(steps: list[_Step], t: torch.Tensor, cache: SparseCache, plan, grid, index) -> torch.Tensor:
        """Element-wise steps on ``n x th x tw x C`` tiles (channels last, so per-channel
        scale/shift broadcast over the last axis)."""
        for s in steps:
            if s.kind == "act":
                m = s.module
                if isinstance(m, nn.ReLU):
                    t = t.relu_()
                elif isinstance(m, nn.LeakyReLU):
                    t = F.leaky_relu_(t, m.negative_slope)
                elif isinstance(m, nn.Tanh):
                    t = t.tanh_()
                else:
                    t = m(t)
            elif s.kind == "norm":
                scale, shift = cache.affines[s.index]
                t = torch.addcmul(shift, t, scale)
            else:  # residual: add the block input, read from its node's input buffer
                spec = plan.buffers[s.index]
                tile = (grid.th, grid.tw)
                t = t.add_(_gather(cache.buffers[s.index], (spec.top, spec.left), tile, tile, *index))
        return t
