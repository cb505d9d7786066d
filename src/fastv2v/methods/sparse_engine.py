"""Incremental sparse inference for flat convolutional generators (SIGE / DeltaCNN style).

A generator (or a slice of one, such as its body) is converted *programmatically* into a list
of convolution nodes: each node is ``[pad] conv`` followed by an element-wise epilogue (norm,
activation, residual add). No sparse twin of any network is written by hand; any flat
``nn.Sequential`` of pads, ``Conv2d``/``ConvTranspose2d``, norms, point-wise activations and
``ResnetBlock`` converts.

Per video the engine keeps a :class:`SparseCache`:

* every node's **input** as a padded channels-last buffer (``rows x cols x C``): the reflected
  or zero border lives in the buffer itself, so a tile at the image border is gathered with
  exactly the pixels the dense pass sees, and nothing is padded per frame;
* the per-channel scale/shift of every normalisation, frozen from the last key frame's
  statistics (InstanceNorm has no statistics of its own to reuse), folded into the weights of
  the convolution in front of it, so a frozen norm costs nothing per frame.

A key frame runs the real modules (the output is the teacher's, bit for bit) and fills the
cache. A following frame:

1. **schedule** (no convolution runs): a difference mask on the input (``threshold``, grown by
   ``dilation``); for every node, the output pixels whose receptive field holds a changed input
   pixel (an exact, separable spread of the mask through the kernel, reflected borders and
   transposed convolutions included; plus the changed block input for a residual add), capped
   by ``reach``, reduced to active output tiles. This gives the frame's MACs before it runs.
2. **run**: the changed input pixels go into the reference (DeltaCNN: nowhere else, so changes
   below the threshold accumulate until they cross it); each node gathers its active windows
   (tile + halo) with one ``index_select`` of whole channels-last rows into an
   ``n x C x (th+2h) x (tw+2h)`` batch, runs one dense ``conv2d`` (or ``conv_transpose2d``) with
   no padding, applies the epilogue on the tiles, and writes them with one ``index_put_`` into
   the next node's buffer (then refreshes that buffer's border pixels if a tile touched them).
   Nothing is copied at full size per layer.

Accuracy knobs: with ``threshold`` 0, ``feature_threshold`` 0 and ``reach=None`` the result equals
the dense pass with the same frozen statistics (float rounding aside). ``reach`` caps how far
recomputation spreads beyond the changed input (SIGE recomputes the same mask at every layer:
``reach=0``); ``feature_threshold`` > 0 accepts a recomputed feature pixel only when it moved by
more than that (DeltaCNN's per-layer rule), pruning what spreads.

Which frames are key (break-even, maximum interval) is the method's business
(:mod:`fastv2v.methods.sparse`); the engine also falls back, per layer, to one whole-image
convolution when more than ``dense_above`` of a layer's tiles are active.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fastv2v.errors import UserError
from fastv2v.generators.resnet import ResnetBlock

__all__ = ["FrameStats", "Schedule", "SparseCache", "SparseRunner", "run_freezing_norms", "run_frozen"]

_PADS = {nn.ReflectionPad2d: "reflect", nn.ReplicationPad2d: "replicate", nn.ZeroPad2d: "zero"}
_NORMS = (nn.InstanceNorm2d, nn.BatchNorm2d)
_ACTS = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.ELU, nn.Hardtanh)
_IDENTITY = (nn.Identity, nn.Dropout, nn.Dropout2d)  # inference: dropout is the identity

# Recomputed pixels differ from the dense key pass by float rounding (folded weights, another
# conv algorithm). Below this absolute difference a feature counts as unchanged, so rounding
# noise does not spread the active area through the network.
ROUNDING_FLOOR = 1e-5


# ---------------------------------------------------------------------------------------------
# conversion: module tree -> nodes


@dataclass
class _Step:
    """One element-wise step after a conv (or before the first one): act, norm or skip add."""

    kind: str  # "act" | "norm" | "skip"
    module: nn.Module | None = None
    index: int = -1  # norm index, or the node whose input is the residual block's input


@dataclass
class _Node:
    conv: nn.Conv2d | nn.ConvTranspose2d
    transposed: bool
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int, int, int]  # left, right, top, bottom (regular conv only)
    mode: str  # border mode of the padding: reflect / replicate / zero
    fold: int | None = None  # norm folded into this conv's weights
    epilogue: list[_Step] = field(default_factory=list)


def _pad_of(module: nn.Module) -> tuple[str, tuple[int, int, int, int]]:
    for cls, mode in _PADS.items():
        if isinstance(module, cls):
            pad = module.padding
            pad = (pad,) * 4 if isinstance(pad, int) else tuple(pad)
            return mode, pad
    if isinstance(module, nn.ConstantPad2d) and module.value == 0:
        pad = module.padding
        return "zero", ((pad,) * 4 if isinstance(pad, int) else tuple(pad))
    raise TypeError


def _make_node(conv: nn.Module, pending: tuple[str, tuple[int, int, int, int]] | None) -> _Node:
    name = type(conv).__name__
    kernel, stride = tuple(conv.kernel_size), tuple(conv.stride)
    if tuple(conv.dilation) != (1, 1):
        raise UserError(
            f"sparse inference does not support dilated convolutions ({name} with dilation {conv.dilation})."
        )
    if isinstance(conv, nn.ConvTranspose2d):
        if pending is not None:
            raise UserError("sparse inference cannot convert a padding layer in front of a transposed convolution.")
        if conv.padding_mode != "zeros":
            raise UserError(
                f"sparse inference supports only zero padding in transposed convolutions, not {conv.padding_mode!r}."
            )
        return _Node(conv, True, kernel, stride, (0, 0, 0, 0), "zero")
    if isinstance(conv.padding, str):
        raise UserError(f"sparse inference needs numeric conv padding, not padding={conv.padding!r}.")
    ph, pw = conv.padding
    if pending is not None and (ph or pw):
        raise UserError("sparse inference cannot convert a padding layer followed by a padded convolution.")
    if pending is not None:
        mode, pad = pending
    else:
        mode = {"zeros": "zero", "reflect": "reflect", "replicate": "replicate"}.get(conv.padding_mode)
        if mode is None:
            raise UserError(f"sparse inference does not support padding_mode={conv.padding_mode!r}.")
        pad = (pw, pw, ph, ph)
    return _Node(conv, False, kernel, stride, pad, mode)


@dataclass
class _Graph:
    prologue: list[_Step]
    nodes: list[_Node]
    norms: list[nn.Module]


def _compile(modules: Sequence[nn.Module]) -> _Graph:
    prologue: list[_Step] = []
    nodes: list[_Node] = []
    norms: list[nn.Module] = []
    target = prologue
    pending = None

    def walk(mods: Sequence[nn.Module]) -> None:
        nonlocal target, pending
        for m in mods:
            if isinstance(m, ResnetBlock):
                first = next(iter(m.conv_block), None)
                starts_with_conv = isinstance(first, (nn.Conv2d, *_PADS, nn.ConstantPad2d))
                if pending is not None or not starts_with_conv:
                    raise UserError("sparse inference converts residual blocks that start with a pad or a conv.")
                start = len(nodes)
                walk(m.conv_block)
                if len(nodes) == start or pending is not None:
                    raise UserError("a residual block without a convolution cannot be converted.")
                target.append(_Step("skip", index=start))
            elif isinstance(m, nn.Sequential):
                walk(m)
            elif isinstance(m, (*_PADS, nn.ConstantPad2d)):
                if pending is not None:
                    raise UserError("sparse inference cannot convert two padding layers in a row.")
                try:
                    pending = _pad_of(m)
                except TypeError:
                    raise UserError(f"sparse inference supports zero constant padding only, not {m}.") from None
            elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nodes.append(_make_node(m, pending))
                pending = None
                target = nodes[-1].epilogue
            elif pending is not None:
                raise UserError(
                    f"sparse inference needs a convolution after a padding layer, not {type(m).__name__}."
                )
            elif isinstance(m, _NORMS):
                norms.append(m)
                if nodes and target is nodes[-1].epilogue and not target and nodes[-1].fold is None:
                    nodes[-1].fold = len(norms) - 1  # norm right after the conv: folded into it
                else:
                    target.append(_Step("norm", m, len(norms) - 1))
            elif isinstance(m, _ACTS):
                target.append(_Step("act", m))
            elif isinstance(m, _IDENTITY):
                continue
            else:
                raise UserError(
                    f"sparse inference cannot convert a {type(m).__name__} layer; it supports pads, "
                    "Conv2d, ConvTranspose2d, Instance/BatchNorm, point-wise activations and ResnetBlock."
                )

    walk(modules)
    if pending is not None:
        raise UserError("the converted part ends with a padding layer.")
    if not nodes:
        raise UserError("the converted part has no convolution; there is nothing to run sparsely.")
    return _Graph(prologue, nodes, norms)


def _uses_input_stats(m: nn.Module) -> bool:
    return m.training or not m.track_running_stats


def _dense_walk(
    modules: Sequence[nn.Module],
    x: torch.Tensor,
    on_node_input: Callable[[int, torch.Tensor], None] | None,
    norm: Callable[[int, nn.Module, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Run the modules exactly as their ``Sequential`` would (same ops, same order), telling
    the caller each node's input and letting it run (and observe) every norm."""
    counter = {"node": 0, "norm": 0}

    def walk(mods, x):
        node_input = None
        for m in mods:
            if isinstance(m, ResnetBlock):
                x = x + walk(m.conv_block, x)
            elif isinstance(m, nn.Sequential):
                x = walk(m, x)
            elif isinstance(m, (*_PADS, nn.ConstantPad2d)):
                node_input = x
                x = m(x)
            elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                if on_node_input is not None:
                    on_node_input(counter["node"], x if node_input is None else node_input)
                counter["node"] += 1
                node_input = None
                x = m(x)
            elif isinstance(m, _NORMS):
                x = norm(counter["norm"], m, x)
                counter["norm"] += 1
            else:
                x = m(x)
        return x

    return walk(modules, x)


def run_freezing_norms(modules: Sequence[nn.Module], x: torch.Tensor) -> tuple[torch.Tensor, list]:
    """Run the layers as they are (the exact output) and return the per-channel ``(scale,
    shift)`` of every norm, frozen from this input's statistics."""
    affines = []

    def norm(i: int, m: nn.Module, t: torch.Tensor) -> torch.Tensor:
        stats = None
        if _uses_input_stats(m):
            var, mean = torch.var_mean(t, dim=(2, 3), unbiased=False)
            stats = (mean[0], var[0])
        affines.append(_affine(m, stats))
        return m(t)

    return _dense_walk(list(modules), x, None, norm), affines


def run_frozen(modules: Sequence[nn.Module], x: torch.Tensor, affines: list) -> torch.Tensor:
    """Run the layers densely with every norm replaced by its frozen ``(scale, shift)``."""

    def norm(i: int, m: nn.Module, t: torch.Tensor) -> torch.Tensor:
        scale, shift = affines[i]
        return t * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)

    return _dense_walk(list(modules), x, None, norm)


def _affine(m: nn.Module, stats: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A norm as per-channel ``scale, shift``: frozen key-frame statistics or running ones."""
    if stats is not None:
        mean, var = stats
    else:
        mean, var = m.running_mean, m.running_var
    scale = torch.rsqrt(var + m.eps)
    shift = -mean * scale
    if m.weight is not None:
        scale = scale * m.weight
        shift = shift * m.weight + m.bias
    return scale.detach().contiguous(), shift.detach().contiguous()


# ---------------------------------------------------------------------------------------------
# geometry: tilings and buffers for one input size


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


# ---------------------------------------------------------------------------------------------
# per-video cache and per-frame statistics


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


# ---------------------------------------------------------------------------------------------
# the runner


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
        if tuple(x.shape) != cache.plan.shape:
            raise UserError(
                f"frame size {tuple(x.shape)} differs from the key frame's {cache.plan.shape}; run a key frame first."
            )
        if self.threshold == 0:
            mask = (x[0] != cache.ref[0]).any(0)
        else:
            mask = (x[0] - cache.ref[0]).abs_().amax(0) > self.threshold
        if cache.plan.dilate is not None:
            mask = _spread(mask, cache.plan.dilate)
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
