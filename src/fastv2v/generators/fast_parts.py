"""Faster CPU inference for a generator's head and tail (the non-key-frame path of Shortcut-V2V).

``fast_head(generator)`` and ``fast_tail(generator)`` return callables that compute
``generator.head(x)`` / ``generator.tail(f)`` up to float rounding (fp32: max abs difference
~1e-6 of the output scale on ordinary features; where an InstanceNorm input has a mean
thousands of times its spread, e.g. the tail on an untrained Shortcut block's output, both
paths lose digits, ~5e-5, the fast one no more than the plain one against float64), prepared
once: weights are rearranged and cached at build, :meth:`FastPart.refresh` re-derives them,
and a call notices by itself when a parameter or buffer was replaced, moved or changed in
place (``load_state_dict``, an optimiser step) and re-prepares. The layers themselves are
taken at build: if modules of the generator are replaced, build the part again.

**When the fast path runs**: CPU, float32, ``torch.no_grad()`` or ``torch.inference_mode()``
(it gives **no gradients**: detached weight copies, cached work buffers), CPU autocast off,
BatchNorm layers in eval mode, no ``TorchDispatchMode`` active (the MAC counter of
:mod:`fastv2v.metrics.profile` then sees the model's own ops), not under ``torch.jit`` tracing
or ``torch.compile``. Anywhere else (CUDA, bf16 / fp16 or autocast, grad mode, training-mode
BatchNorm, meta tensors) the callable simply runs the plain modules, so it is correct
everywhere; ``part.why_plain(x)`` says which rule applied. It also runs them for small inputs
(largest feature map under ``min_elements``, default 2**18 per sample, e.g. 64x128 at ngf 32),
where the per-op overhead of the fast path makes it no faster.

**Layer lists it knows** (both generators of :mod:`fastv2v.generators.resnet`, every ``norm``
and ``padding_type``); anything else makes the part always plain, with the reason in
``part.unsupported``:

* head: ``pad, Conv2d, norm, ReLU, Conv2d`` (upstream: reflection pad 3, 7x7 conv, norm, ReLU,
  and the first stride-2 conv, taken before its norm);
* tail: ``norm, ReLU, (ConvTranspose2d, norm, ReLU) x k (k >= 1), pad, Conv2d[, Tanh]``;
* ``norm``: ``InstanceNorm2d`` without affine and running statistics (upstream's),
  ``BatchNorm2d`` (eval: running statistics) or ``Identity`` (``norm="none"``).

One difference besides rounding: with ``norm="none"`` the plain tail's in-place ReLU
overwrites its input ``f``; the fast tail leaves ``f`` alone.

**What makes it faster** (each piece kept because it measured faster at 128x256 ngf 32 and
256x512 ngf 64, on a 2-core VM shared with other processes; ``benchmarks/parts_speed.py``):

* *channels-last convolutions*: oneDNN's direct kernels are much faster on NHWC, above all
  for ``ConvTranspose2d``, whose NCHW CPU path is a slow im2col/col2im. The head copies its
  3-channel input into a reused channels-last padded buffer (border filled as the pad module
  would) and gives NCHW back through one 2-D transposed copy (``channels_last=True`` skips that
  copy and returns the channels-last tensor).
* *InstanceNorm + ReLU in one pass*: ``relu((y - m) * r) == r * relu(y - m)`` for ``r > 0``, so
  the pass is ``_add_relu(y, -m)`` and ``r`` is folded into the next convolution's weights
  (per input channel; padding commutes with it: reflection copies values, zeros stay zero).
  The statistics are exact (a shifted one-pass sum in serial chunks, shift = a sampled mean,
  exact two-pass redo if that shift is far off; row bands merged with Chan's formula), several
  times faster than ``instance_norm`` / ``var_mean`` on CPU. BatchNorm (eval) is
  folded into the convolution before it; ``Identity`` leaves a plain ReLU.
* *no page faults*: a fresh tensor of 32 MB or more comes from ``mmap`` and faults every page
  on each call (about as slow as the convolution that fills it, in this VM). Large conv outputs
  are therefore made in ~8 MB row bands (halo rows included), whose statistics are taken while
  they are in cache and which the normalise pass then writes into a reused buffer (one pass
  for copy + normalise + ReLU).
* *the last 7x7 conv (ngf -> 3) as one GEMM plus shifted sums*: a 1x1 conv to ``3 * 49``
  channels over the padded map, then each tap is a 1-D offset in the flattened padded map, so
  the 49 taps are 49 contiguous slice-adds (in serial chunks), done in row bands of GEMM output
  (6 MB with 1 thread: they stay in cache; 16 MB with more: fewer GEMMs, each a parallel
  region). oneDNN has no good kernel for 3 output channels. Used when
  ``out_channels * k * k <= 256`` and the pad (reflect, replicate, zero or constant) is
  ``(k - 1) / 2`` on every side; else the pad module and a oneDNN channels-last conv.
* the pad of the last conv is never materialised separately: the normalise pass writes the
  interior of a padded buffer and only the border rows/columns are copied.

*Few parallel regions, no thread settings touched*: a call never changes torch's thread settings
(``set_num_threads`` and the like are process-wide, and other Python threads, such as the
engine's reader and writer, may be running torch); it only reads the thread count. With more
than one intra-op thread, an op on 32768 elements or more (ATen's parallel grain) is an OpenMP
parallel region, and when the cores are oversubscribed (other processes running) each region
waits for a descheduled worker: measured here at up to ~8 ms each with 2 threads, so a path of a
few dozen parallel ops ran slower than the plain modules. So only the convolutions, GEMMs and
full-tensor passes run in parallel (5 regions for the head and 8 for the tail at 128x256 ngf 32,
16 and 28 at 256x512 ngf 64; the plain modules: 12 and 19 at both), and the rest (the
statistics, the head's input copy, the last conv's shifted adds, its bias and tanh) runs in ops
on fewer than 32768 elements, which torch runs serially on the calling thread. The tanh is
``2 * sigmoid(2x) - 1``: ``torch.tanh`` calls MKL, which opens a parallel region at any size.
With one thread every op is serial, and these ops are larger (2M elements): fewer of them.

This replaced switching torch to one thread around the small ops (``torch.set_num_threads``)
with as many parallel regions and about the same speed (128x256 ngf 32, 2 threads, other
processes keeping the load at ~3: both ~2.3x the plain modules' speed, within a few % of each
other; 1 thread: the head ~15 % faster, the tail the same). A path of fewer, larger parallel ops
(11 and 24 regions) was up to ~20 % faster on an idle VM but, under that load, no faster than
the plain modules.

Work buffers are kept per thread (a part may be shared by threads) and reused; at 256x512,
ngf 64 they take about 100 MB (``release()`` frees them). Weights changed in place through
``.data`` do not bump torch's version counter, so that is not noticed: call ``refresh()``.

Tried and dropped (slower here): the transposed conv as a 2x2 conv to ``4 * out`` channels
+ pixel shuffle, as one GEMM to ``9 * out`` channels + shifted adds, or as four per-phase
GEMMs; im2col + GEMM for the head's 7x7 conv (3 input channels); the stride-2 conv in row
bands; NCHW layouts with transposes in the normalise pass; a GEMV with ones for the sums;
``batch_norm_update_stats`` for the statistics (fast, but its sums lose ~1e-4 of the variance);
the last conv's taps as sums over overlapping strided views (one over both tap dimensions does
not vectorise; two over one each is fast but parallel: 2 regions per band).
"""

from __future__ import annotations

import threading
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode

__all__ = ["FastHead", "FastPart", "FastTail", "fast_head", "fast_tail"]

_add_relu = torch.ops.aten._add_relu
# torch runs an op on fewer than 32768 elements (at::internal::GRAIN_SIZE) serially, on the
# calling thread, and a bigger one as an OpenMP parallel region: see "Few parallel regions"
_SERIAL = (1 << 15) - 1  # the most elements of an op meant to run serially
_ONE_THREAD_OP = 1 << 21  # ... when torch has one thread (every op serial): fewer, larger ops
_SAMPLE_VALUES = 1 << 14  # values sampled for the statistics' shift
_GEMM_BAND_BYTES = (6 << 20, 16 << 20)  # the last conv's GEMM row bands: 1 thread (stays in
# cache), more (fewer bands: each GEMM is a parallel region)
_CONV_BAND_MIN = 16 << 20  # conv outputs at least this large are made in row bands ...
_CONV_BAND_BYTES = 8 << 20  # ... of about this size


class _Unsupported(Exception):
    pass


# ------------------------------------------------------------------------------------------------
# work buffers
class _Buffers(threading.local):
    """Per-thread state of a part: reused work buffers, and sizes that depend on the caller's
    intra-op thread count (read at each call, never set): ``op_elements``, the most elements per
    op of the work meant to run serially, and ``gemm_band``, the last conv's GEMM band bytes."""

    def __init__(self) -> None:
        self.store: dict[Any, torch.Tensor] = {}
        self.configure(2)

    def configure(self, threads: int) -> None:
        """With more than one thread, serial work is cut under torch's parallel grain; with one,
        every op is serial anyway and fewer, larger ones are faster."""
        self.op_elements = _SERIAL if threads > 1 else _ONE_THREAD_OP
        self.gemm_band = _GEMM_BAND_BYTES[threads > 1]

    def get(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """A reused contiguous tensor of ``shape`` (contents undefined), made outside inference
        mode so that it can be written both in and out of it."""
        numel = 1
        for s in shape:
            numel *= s
        key = (name, like.dtype, like.device)
        t = self.store.get(key)
        if t is None or t.numel() < numel:
            self.store.pop(key, None)
            with torch.inference_mode(False):
                t = torch.empty(numel, dtype=like.dtype, device=like.device)
            self.store[key] = t
        return t[:numel].view(shape)

    def nhwc(self, name: str, c: int, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
        """A reused ``(1, C, H, W)`` channels-last tensor."""
        return self.get(name, (1, h, w, c), like).permute(0, 3, 1, 2)


# ------------------------------------------------------------------------------------------------
# statistics: (n, mean, M2) per channel, M2 = sum of squared deviations
def _moments_rows(y2: torch.Tensor, buf: _Buffers, shift: torch.Tensor | None = None):
    """``(n, mean, M2)`` per column of a ``(P, C)`` matrix (NHWC pixels x channels).

    One pass over ``x - shift`` in chunks small enough to run serially, the shift being the
    mean of ``_sample(c)`` sampled rows, so no cancellation; redone with the exact mean as the
    shift in the (pathological) case that the sample mean is more than ~3 standard deviations
    off. Sums are ``torch.sum`` (cascaded) per chunk, then over the chunks' partial sums: a GEMV
    with ones loses ~1e-5 relative over 1e5 rows.
    """
    p, c = y2.shape
    final = shift is not None
    if shift is None:
        shift = y2[:: max(1, p // _sample(c))].mean(0)
    step = max(1, buf.op_elements // c)
    starts = range(0, p, step)
    part = torch.empty(len(starts), 2, c, dtype=y2.dtype, device=y2.device)
    work = buf.get("stats", (min(step, p), c), y2)
    for i, r0 in enumerate(starts):
        r1 = min(p, r0 + step)
        t = torch.sub(y2[r0:r1], shift, out=work[: r1 - r0])
        sums, squares = part[i]
        torch.sum(t, 0, out=sums)
        torch.sum(t.square_(), 0, out=squares)
    s1, s2 = part.sum(0)
    return _finish_moments(shift, s1, s2, p, final, lambda sh: _moments_rows(y2, buf, sh))


def _moments_planes(y2: torch.Tensor, buf: _Buffers, shift: torch.Tensor | None = None):
    """As :func:`_moments_rows` for a ``(C, P)`` matrix (NCHW channel planes)."""
    c, p = y2.shape
    final = shift is not None
    if shift is None:
        shift = y2[:, :: max(1, p // _sample(c))].mean(1)
    cs = max(1, min(c, buf.op_elements // p))  # channels per chunk ...
    qs = min(p, max(1, buf.op_elements // cs))  # ... and pixels (all, unless a plane is too big)
    col_starts = range(0, p, qs)
    part = torch.empty(2, c, len(col_starts), dtype=y2.dtype, device=y2.device)
    work = buf.get("stats", (cs * qs,), y2)
    for c0 in range(0, c, cs):
        c1 = min(c, c0 + cs)
        for j, q0 in enumerate(col_starts):
            q1 = min(p, q0 + qs)
            t = torch.sub(y2[c0:c1, q0:q1], shift[c0:c1, None], out=work[: (c1 - c0) * (q1 - q0)].view(c1 - c0, -1))
            torch.sum(t, 1, out=part[0, c0:c1, j])
            torch.linalg.vector_norm(t, dim=1, out=part[1, c0:c1, j])
    part[1].square_()
    s1, s2 = part.sum(2)
    return _finish_moments(shift, s1, s2, p, final, lambda sh: _moments_planes(y2, buf, sh))


def _sample(c: int) -> int:
    """Pixels sampled per channel for the shift: up to 1024, at most 16384 values in all (so
    that torch runs the sample mean serially: one parallel region fewer)."""
    return max(1, min(1024, _SAMPLE_VALUES // c))


def _finish_moments(shift, s1, s2, n, final, redo):
    d = s1.div_(n)
    m2 = s2.sub_(d * d * n).clamp_min_(0)
    if not final and bool((d * d * n > 10 * m2).any()):
        return redo(shift + d)
    return n, shift + d, m2


def _merge_moments(a, b):
    """Chan et al.'s exact merge of two ``(n, mean, M2)``."""
    if a is None:
        return b
    na, ma, m2a = a
    nb, mb, m2b = b
    n = na + nb
    delta = mb - ma
    return n, ma + delta * (nb / n), m2a + m2b + delta * delta * (na * nb / n)


def _mean_rstd(moments, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    n, mean, m2 = moments
    return mean, m2.div(n).add_(eps).rsqrt_()


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``(1, C, H, W)`` channels-last tensor -> its ``(H*W, C)`` view (a copy if not channels-last)."""
    return t[0].permute(1, 2, 0).reshape(-1, t.shape[1])


# ------------------------------------------------------------------------------------------------
# convolutions as row bands
def _conv_pieces(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, conv: nn.Module, want_moments: bool, buf: _Buffers
) -> tuple[list[tuple[int, torch.Tensor]], Any]:
    """``conv(x)`` for a channels-last ``x`` as ``[(first_row, piece)]`` channels-last row bands
    of the output, and its per-channel moments if asked.

    Outputs of 16 MB or more come in ~8 MB bands (input halo rows included), each band's
    moments taken while it is in cache; smaller ones whole. Bands are used for stride-1
    unpadded convolutions and the upstream transposed convolution (3x3, stride 2, padding 1,
    output_padding 1); other configurations run whole.
    """
    transposed = isinstance(conv, nn.ConvTranspose2d)
    h, wd = x.shape[2:]
    cout = w.shape[1] if transposed else w.shape[0]
    if transposed:
        ok = (conv.kernel_size, conv.stride, conv.padding, conv.output_padding, conv.dilation, conv.groups) == (
            (3, 3), (2, 2), (1, 1), (1, 1), (1, 1), 1)  # fmt: skip
        out_h, out_w = 2 * h, 2 * wd
    else:
        ok = conv.stride == (1, 1) and conv.padding == (0, 0) and conv.dilation == (1, 1) and conv.groups == 1
        out_h, out_w = h - conv.kernel_size[0] + 1, wd - conv.kernel_size[1] + 1
    row_bytes = out_w * cout * x.element_size()
    band = _CONV_BAND_BYTES // row_bytes if ok and out_h * row_bytes >= _CONV_BAND_MIN else 0
    pieces: list[tuple[int, torch.Tensor]] = []
    moments = None

    def add(row: int, y: torch.Tensor) -> None:
        nonlocal moments
        pieces.append((row, y))
        if want_moments:  # while the piece is still in cache
            moments = _merge_moments(moments, _moments_rows(_rows(y), buf))

    cl = torch.channels_last
    if band < 2 or band >= out_h:
        if transposed:
            y = F.conv_transpose2d(
                x, w, b, conv.stride, conv.padding, conv.output_padding, conv.groups, conv.dilation
            )
        else:
            y = F.conv2d(x, w, b, conv.stride, conv.padding, conv.dilation, conv.groups)
        y = y.contiguous(memory_format=cl)
        add(0, y)
    elif transposed:
        band //= 2  # input rows per band: each gives two output rows; one halo row below
        for i0 in range(0, h, band):
            i1 = min(h, i0 + band)
            y = F.conv_transpose2d(x[:, :, i0 : min(h, i1 + 1)], w, b, 2, 1, 1)[:, :, : 2 * (i1 - i0)]
            y = y.contiguous(memory_format=cl)
            add(2 * i0, y)
    else:
        kh = conv.kernel_size[0]
        for r0 in range(0, out_h, band):
            r1 = min(out_h, r0 + band)
            y = F.conv2d(x[:, :, r0 : r1 + kh - 1], w, b).contiguous(memory_format=cl)
            add(r0, y)
    return pieces, moments


def _activate(pieces, dst: torch.Tensor | None, mean: torch.Tensor | None) -> torch.Tensor:
    """``relu(y - mean)`` (``mean`` None: ``relu(y)``) of the pieces, written into ``dst``
    (``(1, C, H, W)``, any strides) or, for a single piece and ``dst`` None, in place."""
    other = None if mean is None else mean.neg().view(1, -1, 1, 1)
    if dst is None:
        assert len(pieces) == 1
        dst = pieces[0][1]
    for r0, y in pieces:
        d = dst[:, :, r0 : r0 + y.shape[2]]
        if other is None:
            torch.clamp_min(y, 0, out=d)
        else:
            _add_relu(y, other, out=d)
    return dst


# ------------------------------------------------------------------------------------------------
class _Norm:
    """A norm layer as used here: ``kind`` 'instance' (``eps``), 'affine' (BatchNorm, eval:
    ``affine()`` gives scale and shift), or 'none'."""

    def __init__(self, module: nn.Module):
        self.module = module
        if isinstance(module, nn.Identity):
            self.kind = "none"
        elif isinstance(module, nn.InstanceNorm2d):
            if module.affine or module.track_running_stats:
                raise _Unsupported("InstanceNorm2d with affine parameters or running statistics")
            self.kind = "instance"
            self.eps = float(module.eps)
        elif isinstance(module, nn.BatchNorm2d):
            if not module.track_running_stats or module.running_mean is None:
                raise _Unsupported("BatchNorm2d without running statistics")
            self.kind = "affine"
        else:
            raise _Unsupported(f"norm layer {type(module).__name__}")

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.module
        scale = (m.running_var + m.eps).rsqrt()
        if m.weight is not None:
            scale = scale * m.weight
        shift = -m.running_mean * scale
        if m.bias is not None:
            shift = shift + m.bias
        return scale, shift

    @property
    def plain_only(self) -> bool:
        """True while the layer must run as a module (a BatchNorm in training mode)."""
        return self.kind == "affine" and self.module.training


def _fold_affine(w: torch.Tensor, b: torch.Tensor | None, norm: _Norm, out_dim: int):
    """Weight and bias of a conv followed by ``norm`` (BatchNorm eval folded in; others as is)."""
    if norm.kind != "affine":
        return w, b
    s, t = norm.affine()
    shape = [1] * w.dim()
    shape[out_dim] = -1
    return w * s.view(shape), (t if b is None else b * s + t)


def _version(t: torch.Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # an inference tensor has no version counter
        return -1


def _is_pad(m: nn.Module) -> bool:
    return isinstance(m, (nn.ReflectionPad2d, nn.ReplicationPad2d, nn.ZeroPad2d, nn.ConstantPad2d))


def _plain_conv(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.padding_mode == "zeros" and isinstance(m.padding, tuple)


def _detached(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().contiguous()


# ------------------------------------------------------------------------------------------------
class FastPart:
    """Base of :class:`FastHead` / :class:`FastTail`.

    ``part(x)``: the part's output; ``refresh()``: re-derive the cached weights; ``release()``:
    free this thread's work buffers; ``plain``: the original modules (an ``nn.Sequential``);
    ``unsupported``: None, or why this part always runs ``plain``; ``why_plain(x)``.
    """

    #: below this many elements in the part's largest feature map (per sample) the plain
    #: modules are as fast or faster (Python and per-op overhead): e.g. 64x128 at ngf 32
    MIN_ELEMENTS = 1 << 18

    def __init__(self, generator: nn.Module, modules: nn.Sequential, *, min_elements: int | None = None):
        self.generator = generator
        self.min_elements = self.MIN_ELEMENTS if min_elements is None else int(min_elements)
        self.plain = modules
        self.unsupported: str | None = None
        self._buf = _Buffers()
        self._norms: list[_Norm] = []
        self._snapshot: tuple = ()
        try:
            self._parse(list(modules))
        except _Unsupported as e:
            self.unsupported = str(e)
        else:
            self.refresh()

    # --- per part ---
    def _parse(self, layers: list[nn.Module]) -> None:
        raise NotImplementedError

    def _prepare(self) -> None:
        raise NotImplementedError

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _elements(self, x: torch.Tensor) -> int:
        """Elements of the largest feature map of one sample."""
        raise NotImplementedError

    # --- common ---
    def _tensors(self) -> list[torch.Tensor]:
        return [t for m in self.plain.modules() for t in (*m.parameters(False), *m.buffers(False)) if t is not None]

    def _state(self) -> tuple:
        return tuple((id(t), t.data_ptr(), _version(t), t.dtype, t.device) for t in self._tensors())

    def refresh(self) -> None:
        """Re-derive the cached weights from the modules (done automatically when a parameter
        or buffer was replaced, moved or changed in place since the last preparation)."""
        if self.unsupported is not None:
            return
        with torch.inference_mode(False), torch.no_grad():
            self._prepare()
        self._snapshot = self._state()

    def release(self) -> None:
        """Free this thread's work buffers (they are made again on the next call)."""
        self._buf.store.clear()

    def why_plain(self, x: torch.Tensor) -> str | None:
        """None if ``self(x)`` takes the fast path, else why it runs the plain modules."""
        if self.unsupported is not None:
            return f"unsupported layers: {self.unsupported}"
        if type(x) not in (torch.Tensor, nn.Parameter):
            return "input is not a plain torch.Tensor"
        if x.device.type != "cpu":
            return f"device {x.device.type} (the fast path is for the CPU)"
        if x.dtype != torch.float32:
            return f"dtype {x.dtype} (the fast path is float32)"
        if x.dim() != 4 or x.layout != torch.strided or x.numel() == 0:
            return "input is not a non-empty dense N x C x H x W tensor"
        if self._elements(x) < self.min_elements:
            return f"small input (under {self.min_elements} feature elements the plain modules are as fast)"
        if torch.is_grad_enabled():
            return "autograd is on (the fast path is for torch.no_grad() / torch.inference_mode())"
        if torch.is_autocast_enabled("cpu"):
            return "CPU autocast is on"
        if _get_current_dispatch_mode() is not None:
            return "a TorchDispatchMode is active (e.g. the MAC counter)"
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return "torch.jit tracing or torch.compile"
        if any(n.plain_only for n in self._norms):
            return "a BatchNorm layer is in training mode"
        if any(t.device.type != "cpu" or (t.is_floating_point() and t.dtype != torch.float32) for t in self._tensors()):
            return "the modules are not float32 on the CPU"
        return None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.why_plain(x) is not None:
            return self.plain(x)
        if self._state() != self._snapshot:
            self.refresh()
        self._buf.configure(torch.get_num_threads())
        return self._run(x)

    def __repr__(self) -> str:
        state = "plain only: " + self.unsupported if self.unsupported else "fast on CPU fp32 inference"
        return f"{type(self).__name__}({state})"


# ------------------------------------------------------------------------------------------------
class FastHead(FastPart):
    """``generator.head`` = ``pad, Conv2d, norm, ReLU, Conv2d`` (see the module docstring).
    ``channels_last=True``: return the channels-last tensor (same values; saves a transposed
    copy if the consumer takes channels-last input)."""

    def __init__(self, generator: nn.Module, modules: nn.Sequential, *, channels_last: bool = False, **kwargs):
        self.channels_last = channels_last
        super().__init__(generator, modules, **kwargs)

    def _elements(self, x):
        return x.shape[-2] * x.shape[-1] * self.c1.out_channels

    def _parse(self, layers):
        if len(layers) != 5:
            raise _Unsupported(f"a head of {len(layers)} layers (expected pad, Conv2d, norm, ReLU, Conv2d)")
        pad, c1, norm, relu, c2 = layers
        if not (_is_pad(pad) and _plain_conv(c1) and _plain_conv(c2) and isinstance(relu, nn.ReLU)):
            raise _Unsupported("the head is not pad, Conv2d, norm, ReLU, Conv2d")
        self.pad, self.c1, self.c2 = pad, c1, c2
        self.norm = _Norm(norm)
        self._norms = [self.norm]

    def _prepare(self):
        w1, b1 = _fold_affine(self.c1.weight.detach(), _detached(self.c1.bias), self.norm, 0)
        self.w1, self.b1 = w1.contiguous(), _detached(b1)
        self.w2, self.b2 = _detached(self.c2.weight), _detached(self.c2.bias)

    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        """``pad(x)`` of one sample, channels-last: copied into a reused NHWC buffer in serial row
        chunks and the border filled as the pad module would (equal padding on every side and a
        map larger than it); else the pad module and a conversion."""
        p = self.pad.padding
        c, h, w = x.shape[1:]
        if len(set(p)) != 1 or h <= p[0] or w <= p[0]:
            return self.pad(x).contiguous(memory_format=torch.channels_last)
        p = p[0]
        xp = self._buf.nhwc("xp", c, h + 2 * p, w + 2 * p, x)  # (oneDNN copies a view of odd strides)
        pb = xp[0].permute(1, 2, 0)
        rows = max(1, self._buf.op_elements // (c * w))
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            xp[0, :, p + r0 : p + r1, p : p + w].copy_(x[0, :, r0:r1])
        _fill_border(pb, p, h, w, self.pad, None)
        return xp

    def _run(self, x):
        c1, c2 = self.c1, self.c2
        instance = self.norm.kind == "instance"
        outs = []
        for n in range(x.shape[0]):
            xp = self._padded(x[n : n + 1])
            pieces, moments = _conv_pieces(xp, self.w1, self.b1, c1, instance, self._buf)
            mean, w2 = None, self.w2
            if instance:
                mean, rstd = _mean_rstd(moments, self.norm.eps)
                w2 = w2 * rstd.view(1, -1, 1, 1)
            if len(pieces) == 1:
                y = _activate(pieces, None, mean)
            else:
                c = pieces[0][1].shape[1]
                rows = sum(p.shape[2] for _, p in pieces)
                y = _activate(pieces, self._buf.nhwc("y", c, rows, pieces[0][1].shape[3], x), mean)
            del pieces
            outs.append(F.conv2d(y, w2, self.b2, c2.stride, c2.padding, c2.dilation, c2.groups))
        if self.channels_last:
            return outs[0] if len(outs) == 1 else torch.cat(outs)
        c, h, w = outs[0].shape[1:]
        out = torch.empty(x.shape[0], c, h, w, dtype=x.dtype, device=x.device)
        for n, o in enumerate(outs):
            if o.is_contiguous(memory_format=torch.channels_last) and c > 1:
                out[n].view(c, h * w).copy_(_rows(o).t())  # the fast 2-D transposed copy
            else:
                out[n].copy_(o[0])
        return out


# ------------------------------------------------------------------------------------------------
class FastTail(FastPart):
    """``generator.tail`` = ``norm, ReLU, (ConvTranspose2d, norm, ReLU) x k, pad, Conv2d[, Tanh]``.
    ``final``: how the last conv runs: 'auto' (GEMM + shifted sums where it applies and
    ``out_channels * k * k <= 256``), 'gemm' (wherever it applies) or 'onednn'."""

    def __init__(self, generator: nn.Module, modules: nn.Sequential, *, final: str = "auto", **kwargs):
        if final not in ("auto", "gemm", "onednn"):
            raise ValueError(f"final must be 'auto', 'gemm' or 'onednn', not {final!r}")
        self.final_mode = final
        super().__init__(generator, modules, **kwargs)

    def _elements(self, x):
        return x[0].numel() * 2 ** len(self.stages)  # each stage: 4x the pixels, half the channels

    def _parse(self, layers):
        self.tanh = bool(layers) and isinstance(layers[-1], nn.Tanh)
        if self.tanh:
            layers = layers[:-1]
        if len(layers) < 7 or not (_is_pad(layers[-2]) and _plain_conv(layers[-1])):
            raise _Unsupported("the tail is not norm, ReLU, (ConvTranspose2d, norm, ReLU) x k, pad, Conv2d[, Tanh]")
        self.pad, self.conv = layers[-2], layers[-1]
        mid = layers[:-2]
        if len(mid) % 3 != 2 or not isinstance(mid[1], nn.ReLU):
            raise _Unsupported("the tail does not start with norm, ReLU")
        self.norm0 = _Norm(mid[0])
        self.stages: list[tuple[nn.ConvTranspose2d, _Norm]] = []
        for i in range(2, len(mid), 3):
            ct, norm, relu = mid[i : i + 3]
            if not (isinstance(ct, nn.ConvTranspose2d) and ct.padding_mode == "zeros" and isinstance(relu, nn.ReLU)):
                raise _Unsupported("a tail upsampling stage is not ConvTranspose2d, norm, ReLU")
            self.stages.append((ct, _Norm(norm)))
        self._norms = [self.norm0] + [n for _, n in self.stages]
        conv, pad, k = self.conv, self.pad, self.conv.kernel_size
        p = pad.padding
        self.gemm_ok = (
            conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding == (0, 0)
            and k[0] == k[1] and len(set(p)) == 1 and 2 * p[0] == k[0] - 1
        )  # fmt: skip
        small = conv.out_channels * k[0] * k[1] <= 256
        self.use_gemm = self.gemm_ok and (final := self.final_mode) != "onednn" and (final == "gemm" or small)

    def _prepare(self):
        self.stage_w = []
        for ct, norm in self.stages:  # a BatchNorm after a transposed conv is folded into it
            w, b = _fold_affine(ct.weight.detach(), _detached(ct.bias), norm, 1)
            self.stage_w.append((w.contiguous(), _detached(b)))
        if self.norm0.kind == "affine":
            self.s0, self.t0 = (v.detach().contiguous() for v in self.norm0.affine())
        w = self.conv.weight.detach()
        self.wc, self.bc = w.contiguous(), _detached(self.conv.bias)
        if self.use_gemm:  # rows (dy, dx, out), columns in
            o, c, k, _ = w.shape
            self.wg = w.permute(2, 3, 0, 1).reshape(k * k * o, c).contiguous()

    def _run(self, f):
        outs = [self._run_one(f[n : n + 1]) for n in range(f.shape[0])]
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _input_act(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``relu(norm0(f))`` for one sample in a channels-last buffer, and the per-channel
        scale still to apply (InstanceNorm's 1/std, folded into the next conv) or None."""
        buf = self._buf
        c, h, w = f.shape[1:]
        a = buf.nhwc("a", c, h, w, f)
        kind = self.norm0.kind
        if kind == "instance":
            if f.is_contiguous():
                moments = _moments_planes(f[0].view(c, h * w), buf)
            else:
                moments = _moments_rows(_rows(f), buf)
            mean, rstd = _mean_rstd(moments, self.norm0.eps)
            _add_relu(f, mean.neg().view(1, -1, 1, 1), out=a)
            return a, rstd
        if kind == "affine":
            torch.addcmul(self.t0.view(1, -1, 1, 1), f, self.s0.view(1, -1, 1, 1), out=a)
            a.clamp_min_(0)
        else:
            torch.clamp_min(f, 0, out=a)
        return a, None

    def _run_one(self, f):
        a, scale = self._input_act(f)
        for i, ((ct, norm), (w, b)) in enumerate(zip(self.stages, self.stage_w)):
            if scale is not None:
                w = w * scale.view(-1, 1, 1, 1)
            instance = norm.kind == "instance"
            pieces, moments = _conv_pieces(a, w, b, ct, instance, self._buf)
            mean, scale = _mean_rstd(moments, norm.eps) if instance else (None, None)
            last = i == len(self.stages) - 1
            c, w_ = pieces[0][1].shape[1], pieces[0][1].shape[3]
            h = sum(p.shape[2] for _, p in pieces)
            if last and self.use_gemm and h > self.pad.padding[0] and w_ > self.pad.padding[0]:
                return self._final_gemm(pieces, mean, scale, c, h, w_)
            dst = None if len(pieces) == 1 else self._buf.nhwc(f"a{i % 2}", c, h, w_, f)
            a = _activate(pieces, dst, mean)
            del pieces
        conv = self.conv
        if scale is not None and isinstance(self.pad, nn.ConstantPad2d) and self.pad.value != 0:
            a, scale = a * scale.view(1, -1, 1, 1), None  # a nonzero pad value must see the scaled map
        wc = self.wc if scale is None else self.wc * scale.view(1, -1, 1, 1)
        out = F.conv2d(self.pad(a), wc, self.bc, conv.stride, conv.padding, conv.dilation, conv.groups)
        return (torch.tanh(out) if self.tanh else out).contiguous()

    def _final_gemm(self, pieces, mean, scale, c: int, h: int, w: int) -> torch.Tensor:
        """``[tanh](conv(pad(relu(y - mean))))`` with the conv as GEMM + shifted sums."""
        buf = self._buf
        p = self.pad.padding[0]
        hp, wp = h + 2 * p, w + 2 * p
        pb = buf.get("pad", (hp, wp, c), pieces[0][1])  # the padded map, NHWC
        _activate(pieces, pb[p : p + h, p : p + w].permute(2, 0, 1).unsqueeze(0), mean)
        del pieces
        _fill_border(pb, p, h, w, self.pad, scale)
        k, o = self.conv.kernel_size[0], self.conv.out_channels
        wg = self.wg if scale is None else self.wg * scale.view(1, -1)
        rows = wg.shape[0]
        flat = pb.view(hp * wp, c)
        length = h * wp  # the output on the padded-width grid; columns >= w are never read
        acc = buf.get("acc", (o, length), flat)
        cols = max(1, buf.op_elements // o)  # accumulator columns per serial op
        for q0 in range(0, length, cols):
            a = acc[:, q0 : q0 + cols]
            if self.bc is None:
                a.zero_()
            else:
                a.copy_(self.bc.view(o, 1).expand_as(a))
        band = max(k, buf.gemm_band // (4 * rows * wp))  # padded rows per GEMM
        offsets = [dy * wp + dx for dy in range(k) for dx in range(k)]
        for r0 in range(0, hp, band):
            base, nb = r0 * wp, (min(hp, r0 + band) - r0) * wp
            z = torch.mm(wg, flat[base : base + nb].t(), out=buf.get("z", (rows, nb), flat)).view(k * k, o, nb)
            for t, off in enumerate(offsets):  # output q takes tap t at q + off
                zt = z[t]
                q_end = min(length, base + nb - off)
                for q0 in range(max(0, base - off), q_end, cols):
                    q1 = min(q_end, q0 + cols)
                    acc[:, q0:q1].add_(zt[:, q0 + off - base : q1 + off - base])
        res = acc.view(o, h, wp)
        out = torch.empty(1, o, h, w, dtype=flat.dtype, device=flat.device)
        rows_out = max(1, buf.op_elements // (o * w))  # output rows per serial op
        for a0 in range(0, h, rows_out):
            src, dst = res[:, a0 : a0 + rows_out, :w], out[0, :, a0 : a0 + rows_out]
            if self.tanh:  # 2 sigmoid(2x) - 1: torch.tanh (MKL's) opens a parallel region at any size
                torch.mul(src, 2, out=dst).sigmoid_().mul_(2).sub_(1)
            else:
                dst.copy_(src)
        return out


def _fill_border(pb: torch.Tensor, p: int, h: int, w: int, pad: nn.Module, scale: torch.Tensor | None) -> None:
    """Fill the ``p``-wide border of an NHWC ``(h + 2p, w + 2p, C)`` buffer whose interior is
    written, as ``pad`` would: rows first, then whole columns (so corners come out right).
    ``scale``: the per-channel factor still to be applied by the conv (a constant pad value
    ``v`` is then written as ``v / scale``)."""
    if isinstance(pad, (nn.ZeroPad2d, nn.ConstantPad2d)):
        value = float(getattr(pad, "value", 0.0))
        fill: torch.Tensor | float = value if value == 0 or scale is None else value / scale
        for region in (pb[:p], pb[p + h :], pb[:, :p], pb[:, p + w :]):
            if isinstance(fill, float):
                region.fill_(fill)
            else:
                region.copy_(fill.expand_as(region))
        return
    reflect = isinstance(pad, nn.ReflectionPad2d)
    for k in range(1, p + 1):
        top, bottom = (p + k, p + h - 1 - k) if reflect else (p, p + h - 1)
        pb[p - k, p : p + w].copy_(pb[top, p : p + w])
        pb[p + h - 1 + k, p : p + w].copy_(pb[bottom, p : p + w])
    for k in range(1, p + 1):
        left, right = (p + k, p + w - 1 - k) if reflect else (p, p + w - 1)
        pb[:, p - k].copy_(pb[:, left])
        pb[:, p + w - 1 + k].copy_(pb[:, right])


# ------------------------------------------------------------------------------------------------
def fast_head(generator: nn.Module, *, channels_last: bool = False, min_elements: int | None = None) -> FastHead:
    """A callable equal to ``generator.head(x)``, faster on the CPU in inference (see the module
    docstring). ``channels_last=True`` returns the channels-last tensor (same values; saves a
    transposed copy, and the Shortcut block takes it as is); ``min_elements``: below this many
    elements in the largest feature map (per sample) the plain modules run (default
    ``FastPart.MIN_ELEMENTS``; 0: always the fast path)."""
    return FastHead(generator, generator.head, channels_last=channels_last, min_elements=min_elements)


def fast_tail(generator: nn.Module, *, final: str = "auto", min_elements: int | None = None) -> FastTail:
    """A callable equal to ``generator.tail(f)``, faster on the CPU in inference (see the module
    docstring). ``final`` picks how the last conv runs ('auto', 'gemm', 'onednn');
    ``min_elements`` as for :func:`fast_head`."""
    return FastTail(generator, generator.tail, final=final, min_elements=min_elements)
