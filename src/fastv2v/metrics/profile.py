"""Count parameters and multiply-accumulates (MACs) of one forward pass, in two conventions.

Why a profiler of our own: every figure this project reports (speed-ups, MACs per frame of a
method against its teacher) has to be comparable with published tables *and* true, and the
usual counters give neither reliably.

- ``exact``: real multiply-adds. A transposed convolution costs
  ``input_pixels x C_in x C_out/groups x k_h x k_w`` (each input pixel is scattered once
  through the kernel).
- ``paper``: what ``torchprofile``/``thop`` and the GAN-compression literature print. The only
  difference is that a transposed convolution is counted at its OUTPUT size,
  ``output_pixels x C_in/groups x C_out x k_h x k_w``, which is ``stride^2`` times its real
  cost (4x for stride 2). That is where the CycleGAN ResNet-9 generator's famous "56.8 G" at
  256x256 comes from; its real cost is 49.55 G.

Counting happens at the aten-op dispatch level (a ``TorchDispatchMode``), not with module
hooks, so functional calls (``F.conv2d``, ``torchvision.ops.deform_conv2d``,
``F.grid_sample``, ``F.interpolate``, ``@``/``bmm``/``einsum``) are counted exactly like
modules, and a submodule called twice is counted twice. Every op that executes is seen once:
composite ops (``F.linear``, ``matmul``, ``einsum``) arrive as the ``addmm``/``mm``/``bmm``
they decompose into, and what a counted op does internally is not seen again.

What is counted (MACs for the inputs actually given: a batch of 2 costs twice a batch of 1;
divide by the batch size for a per-frame figure):

- convolutions of any dimension, including grouped/depthwise and transposed (see above);
  bias additions are not multiplies and are not counted (as in the literature);
- ``mm``, ``addmm``, ``bmm``, ``baddbmm``, ``addbmm``, ``mv``, ``addmv``, ``dot``, fused
  scaled-dot-product attention (``B x H x L x S x (E + E_v)``);
- ``torchvision.ops.deform_conv2d``: the convolution it is
  (``output_pixels x C_in/groups x C_out x k_h x k_w``) plus its sampling, defined here as
  4 MACs per sampled value for the bilinear interpolation and 1 more for the modulation mask
  when one is given (``output_pixels x C_in x k_h x k_w`` sampled values);
- ``grid_sample``: 4 MACs per output element per channel for bilinear (8 trilinear for 5-D,
  16 bicubic), 0 for nearest;
- ``interpolate``: linear 2, bilinear 4, bicubic 16, trilinear 8 MACs per output element, 0
  for nearest (antialiased resizing is counted like the plain kernel).

Not counted: normalisation, activations, pooling, padding and element-wise arithmetic. The
published tables don't count them, so counting them would break comparability; they are
memory-bound and cheap in MACs anyway. Fused native kernels that this module does not know
(e.g. the ``nn.MultiheadAttention`` / ``nn.TransformerEncoderLayer`` inference fast path) are
not counted either; ``Profile.by_op`` lists every op that was counted, so a missing one shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["Profile", "count_parameters", "format_gmacs", "format_macs", "profile"]

_UNITS = (("T", 10**12), ("G", 10**9), ("M", 10**6), ("K", 10**3))


def format_macs(n: int | float, unit: str | None = None) -> str:
    """``49551...`` -> ``"49.55 G"``. ``unit`` ("T", "G", "M", "K" or "") fixes the unit;
    by default the largest one that keeps the number >= 1 is used."""
    scales = dict(_UNITS)
    if unit is None:
        unit = next((u for u, s in _UNITS if abs(n) >= s), "")
    if unit == "":
        return f"{n:.0f}"
    if unit not in scales:
        raise ValueError(f"unknown unit {unit!r}; use one of T, G, M, K or ''")
    return f"{n / scales[unit]:.2f} {unit}"


def format_gmacs(macs: int | float) -> str:
    """G-MACs with at most two decimals, as the papers print them: ``56_799_264_768`` ->
    ``"56.8 G"``, ``49_551_507_456`` -> ``"49.55 G"``, ``3 * 10**9`` -> ``"3 G"`` (trailing zeros
    dropped; always G, so a tiny model reads ``"0 G"``). :func:`format_macs` keeps two decimals
    and can pick the unit."""
    return f"{macs / 1e9:.2f}".rstrip("0").rstrip(".") + " G"


def count_parameters(*objects: Any) -> int:
    """Parameters of ``objects`` together, each parameter counted once even when modules (or
    tied weights) are shared between them.

    Per object: one with a ``parameter_count()`` method (e.g. an online method that counts only
    the modules it runs) contributes what that returns, added as is (no sharing is seen through
    it); an ``nn.Module`` its parameters; any other object the ``nn.Module`` attributes it holds
    directly (``vars(obj)``; modules inside lists or dicts are not looked into).
    """
    seen: set[int] = set()
    total = 0
    for obj in objects:
        count = getattr(obj, "parameter_count", None)
        if callable(count):
            total += int(count())
            continue
        if isinstance(obj, nn.Module):
            modules = [obj]
        else:
            modules = [v for v in getattr(obj, "__dict__", {}).values() if isinstance(v, nn.Module)]
        total += _count_unseen(modules, seen)
    return total


def _count_unseen(modules: list[nn.Module], seen: set[int]) -> int:
    total = 0
    for module in modules:
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


@dataclass
class Profile:
    """Result of :func:`profile`: parameter count and MACs of one forward pass.

    ``by_op`` maps an op name (e.g. ``"aten.convolution"``, ``"aten.convolution (transposed)"``,
    ``"torchvision.deform_conv2d"``) to its ``(exact, paper)`` MACs; ``calls`` to how many
    times it ran. Zero-cost ops that were recognised (nearest resizing) appear with 0.
    """

    params: int
    macs_exact: int
    macs_paper: int
    by_op: dict[str, tuple[int, int]] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    @property
    def params_m(self) -> float:
        """Parameters in millions (11.38 for the CycleGAN ResNet-9 generator)."""
        return self.params / 1e6

    def table(self) -> str:
        """Human-readable summary; totals in G-MACs, both conventions labelled."""
        lines = [
            f"params: {self.params_m:.2f} M ({self.params:,})",
            f"MACs exact: {format_macs(self.macs_exact, 'G')}  (true multiply-adds)",
            f"MACs paper: {format_macs(self.macs_paper, 'G')}  "
            "(torchprofile/thop convention: transposed conv at output size)",
        ]
        if self.by_op:
            width = max(len(k) for k in self.by_op)
            lines.append(f"{'op':<{width}}  {'calls':>5}  {'exact':>10}  {'paper':>10}")
            for name, (exact, paper) in sorted(self.by_op.items(), key=lambda kv: -kv[1][1]):
                lines.append(
                    f"{name:<{width}}  {self.calls.get(name, 0):>5}  "
                    f"{format_macs(exact):>10}  {format_macs(paper):>10}"
                )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


# ---------------------------------------------------------------------------------------------
# Per-op cost functions: (args, kwargs, out) -> (exact, paper), or None for "not counted".


def _transposed(args, kwargs) -> bool:
    return bool(args[6]) if len(args) > 6 else bool(kwargs.get("transposed", False))


def _conv(args, kwargs, out):
    # aten.convolution / aten._convolution: (input, weight, bias, stride, padding, dilation,
    # transposed, output_padding, groups, ...). weight.numel() is C_out x C_in/g x k (regular)
    # or C_in x C_out/g x k (transposed): the MACs per output (resp. input) position.
    x, w = args[0], args[1]
    spatial = w.dim() - 2
    batch = x.shape[0] if x.dim() == w.dim() else 1  # unbatched inputs have no batch dim
    paper = batch * math.prod(out.shape[-spatial:]) * w.numel()
    if not _transposed(args, kwargs):
        return paper, paper
    in_pos = batch * math.prod(x.shape[-spatial:])
    return in_pos * w.numel(), paper


def _deform_conv2d(args, kwargs, out):
    # torchvision::deform_conv2d(input, weight, offset, mask, bias, stride_h, stride_w, pad_h,
    # pad_w, dil_h, dil_w, groups, offset_groups, use_mask)
    x, w = args[0], args[1]
    use_mask = bool(args[13]) if len(args) > 13 else bool(kwargs.get("use_mask", False))
    out_pos = out.shape[0] * out.shape[2] * out.shape[3]
    conv = out_pos * w.numel()
    samples = out_pos * x.shape[1] * w.shape[2] * w.shape[3]
    total = conv + samples * (4 + (1 if use_mask else 0))
    return total, total


def _mm(args, kwargs, out):  # (n, k) @ (k, m)
    a, b = args[0], args[1]
    n = a.numel() * b.shape[-1]
    return n, n


def _addmm(args, kwargs, out):  # bias + (n, k) @ (k, m), also baddbmm/addbmm with batches
    return _mm(args[1:], kwargs, out)


def _mv(args, kwargs, out):  # (n, m) @ (m,)
    return args[0].numel(), args[0].numel()


def _addmv(args, kwargs, out):
    return args[1].numel(), args[1].numel()


def _dot(args, kwargs, out):
    return args[0].numel(), args[0].numel()


def _linear(args, kwargs, out):  # only seen on backends that keep aten.linear whole
    n = args[0].numel() * args[1].shape[0]
    return n, n


def _sdpa(args, kwargs, out):  # q (..., L, E), k (..., S, E), v (..., S, Ev)
    q, k, v = args[0], args[1], args[2]
    n = math.prod(q.shape[:-1]) * k.shape[-2] * (q.shape[-1] + v.shape[-1])
    return n, n


def _grid_sample(args, kwargs, out):
    # grid_sampler_2d/3d(input, grid, interpolation_mode, padding_mode, align_corners);
    # mode 0 = bilinear, 1 = nearest, 2 = bicubic.
    mode = int(args[2]) if len(args) > 2 else 0
    linear = 8 if out.dim() == 5 else 4
    n = out.numel() * {0: linear, 1: 0, 2: 16}.get(mode, linear)
    return n, n


def _per_output(macs: int):
    def cost(args, kwargs, out):
        n = out.numel() * macs
        return n, n

    return cost


def _embedding_bag(args, kwargs, out):
    # (weight, indices, offsets, scale_grad, mode, sparse, per_sample_weights, ...): a weighted
    # sum of gathered rows is one multiply-add per gathered value; an unweighted sum or mean none.
    weight, indices = args[0], args[1]
    weighted = len(args) > 6 and args[6] is not None or kwargs.get("per_sample_weights") is not None
    n = indices.numel() * weight.shape[1] if weighted else 0
    return n, n


def _cudnn_grid_sample(args, kwargs, out):  # cudnn only implements bilinear 2-D
    return out.numel() * 4, out.numel() * 4


_COSTS: dict[str, Callable[..., tuple[int, int] | None]] = {
    "aten.convolution": _conv,
    "aten._convolution": _conv,
    "torchvision.deform_conv2d": _deform_conv2d,
    "aten.mm": _mm,
    "aten.bmm": _mm,
    "aten._int_mm": _mm,
    "aten.addmm": _addmm,
    "aten._addmm_activation": _addmm,
    "aten.baddbmm": _addmm,
    "aten.addbmm": _addmm,
    "aten.mv": _mv,
    "aten.addmv": _addmv,
    "aten.dot": _dot,
    "aten.vdot": _dot,
    "aten.linear": _linear,
    "aten._scaled_dot_product_flash_attention_for_cpu": _sdpa,
    "aten._scaled_dot_product_flash_attention": _sdpa,
    "aten._scaled_dot_product_efficient_attention": _sdpa,
    "aten._scaled_dot_product_cudnn_attention": _sdpa,
    "aten._embedding_bag": _embedding_bag,
    "aten._embedding_bag_forward_only": _embedding_bag,
    "aten.grid_sampler_2d": _grid_sample,
    "aten.grid_sampler_3d": _grid_sample,
    "aten._grid_sampler_2d_cpu_fallback": _grid_sample,
    "aten.cudnn_grid_sampler": _cudnn_grid_sample,
    "aten.upsample_nearest1d": _per_output(0),
    "aten.upsample_nearest2d": _per_output(0),
    "aten.upsample_nearest3d": _per_output(0),
    "aten._upsample_nearest_exact1d": _per_output(0),
    "aten._upsample_nearest_exact2d": _per_output(0),
    "aten._upsample_nearest_exact3d": _per_output(0),
    "aten.upsample_linear1d": _per_output(2),
    "aten.upsample_bilinear2d": _per_output(4),
    "aten._upsample_bilinear2d_aa": _per_output(4),
    "aten.upsample_bicubic2d": _per_output(16),
    "aten._upsample_bicubic2d_aa": _per_output(16),
    "aten.upsample_trilinear3d": _per_output(8),
}


class _MacCounter(TorchDispatchMode):
    """Sees every aten/torchvision op below autograd and adds up the cost of the known ones."""

    def __init__(self):
        super().__init__()
        self.by_op: dict[str, list[int]] = {}
        self.calls: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = str(func.overloadpacket)
        cost = _COSTS.get(name)
        if cost is not None:
            first = out[0] if isinstance(out, (tuple, list)) else out
            exact, paper = cost(args, kwargs, first)
            if cost is _conv:  # one name for both entry points; transposed ones apart
                name = "aten.convolution" + (" (transposed)" if _transposed(args, kwargs) else "")
            acc = self.by_op.setdefault(name, [0, 0])
            acc[0] += int(exact)
            acc[1] += int(paper)
            self.calls[name] = self.calls.get(name, 0) + 1
        return out


def _is_meta(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.is_meta


def profile(model: Callable[..., Any], *inputs: Any, **kwargs: Any) -> Profile:
    """Run ``model(*inputs, **kwargs)`` once under ``torch.no_grad()`` and count its MACs.

    Pass inputs on the ``meta`` device (``torch.empty(1, 3, 256, 256, device="meta")``) to
    count without computing anything: the model's parameters and buffers are then swapped for
    meta stand-ins for this call only, so a big model at full resolution is profiled in
    milliseconds. A model whose forward depends on tensor values (``.item()``, data-dependent
    branches) needs real inputs.

    The model is left exactly as it was: its training mode is not touched (it runs in the mode
    it is in), and buffers that a train-mode forward would update in place (BatchNorm running
    statistics) are replaced by copies for the call. ``model`` may also be a plain callable;
    its ``params`` is then 0.
    """
    counter = _MacCounter()
    is_module = isinstance(model, nn.Module)
    flat_inputs, _ = tree_flatten((inputs, kwargs))
    to_meta = any(_is_meta(t) for t in flat_inputs)

    def run():
        if not is_module:
            return model(*inputs, **kwargs)
        params = dict(model.named_parameters())
        buffers = dict(model.named_buffers())
        if to_meta:
            swap = {
                k: t if t.is_meta else torch.empty_like(t, device="meta")
                for k, t in {**params, **buffers}.items()
            }
        else:
            swap = {k: b.clone() for k, b in buffers.items()}
        if not swap:
            return model(*inputs, **kwargs)
        return torch.func.functional_call(model, swap, inputs, kwargs)

    try:
        # Inference mode skips the dispatch layer the counter listens on: step out of it.
        with torch.inference_mode(False), torch.no_grad(), counter:
            run()
    except (NotImplementedError, RuntimeError) as exc:
        if not to_meta:
            raise
        raise RuntimeError(
            f"could not profile {type(model).__name__} on the meta device ({exc}); "
            "its forward probably depends on tensor values: pass real input tensors instead"
        ) from exc

    params = _count_unseen([model], set()) if is_module else 0
    by_op = {k: (v[0], v[1]) for k, v in counter.by_op.items()}
    return Profile(
        params=int(params),
        macs_exact=sum(v[0] for v in by_op.values()),
        macs_paper=sum(v[1] for v in by_op.values()),
        by_op=by_op,
        calls=dict(counter.calls),
    )
