"""Shortcut-V2V (Chung et al., ICCV 2023): predict the teacher's body features of a non-key
frame from the current head features and the last key frame's features.

On a non-key frame the teacher's body is replaced by the Shortcut block,
``f^_t = S(a_t, a_ref, f_ref)``, and the output is ``tail(f^_t)``; key frames run the teacher.

Architecture (checked against the official code, github.com/indigopyj/Shortcut-V2V, see
docs/shortcut.md; ``C`` = feature channels, 128; ``h`` = hidden, 64; ``state_dict`` keys are
the official ones, so official checkpoints load):

1. Channel reduction: ``cr1`` (1x1 C->h + ReLU) for ``f_ref``; ``cr2`` (1x1 C->h + ReLU) for
   ``a_ref`` and ``a_t``.
2. Coarse alignment at half resolution: ``offset_generator_global`` takes
   ``concat(down(a_t), down(a_ref))`` (raw C-channel features, bilinear x1/2), two HetConv+ReLU
   layers, 1x1 conv to ONE 2-D offset (dy, dx) per pixel, repeated for the nine taps of
   ``global_deform_conv`` (3x3, h->h, no bias, no mask) applied to ``down(cr2(a_ref))`` and
   ``down(cr1(f_ref))``; bilinear x2 back: ``a'_ref``, ``f'_ref``.
3. Fine offsets and blending mask: ``offset_generator_local`` on ``concat(cr2(a_t), a'_ref)``
   with ``a'_ref`` detached, three HetConv+ReLU layers, 1x1 conv to 27 channels: 18 offsets
   (dy, dx per tap), 9 mask logits -> sigmoid -> ``m``.
4. AdaBD (``mask_deform_conv``): one 3x3 weight, two modulated deformable convs,
   ``dconv(cr2(a_t), offset 0, mask m) + dconv(f'_ref, fine offsets, mask 1 - m)``.
5. ``recon_ref``: 1x1 h->C (with bias) -> ``f^_t``.

HetConv (``p`` = 4 groups): ``conv3x3(x) + conv1x1(x) - conv1x1_(x)``, where ``conv3x3`` and
``conv1x1_`` are grouped and ``conv1x1`` is full; all with bias.

The efficient form computed here (equal to the official forward up to float rounding;
tests/test_shortcut_block.py checks it against a direct transcription of the official order):

* **AdaBD as one convolution.** The two deformable convs share a weight, so by linearity their
  sum is one convolution over blended columns ``m . cols(cr2(a_t)) + (1 - m) . sampled(f'_ref)``
  (:func:`~fastv2v.methods.shortcut.deform.blended_deform_conv2d`), with ``recon_ref`` chained in the
  same pass: half of AdaBD's products, no zero-offset "sampling" at all.
* **Global alignment as conv-then-warp.** A deformable conv whose nine taps share one offset
  ``d(p)`` equals a plain 3x3 conv (zero padding 2, so it is defined one pixel beyond the
  input) followed by one bilinear sample at ``p + d(p)``: bilinear interpolation is linear and
  commutes with integer shifts. The conv only sees reference features, so it runs once per key
  frame; a non-key frame pays one 2-D warp of a cached map instead of two deformable convs.
* **Everything reference-only is cached** by :meth:`ShortcutBlock.prepare_reference` at the key
  frame: ``cr1(f_ref)``, ``cr2(a_ref)``, their half-resolution conv above, the ``a_ref`` half
  of the first global HetConv (its input is ``[a_t, a_ref]`` and groups 2-3 only see
  ``a_ref``), and, in inference, the 1x1 part of the first local HetConv that acts on ``a'_ref``
  (a 1x1 conv commutes with the warp and the upsampling, so it is applied to the cached map at
  half resolution).
* **HetConv folded**: the grouped 1x1 conv is subtracted from the centre tap of the grouped
  3x3 conv (same groups, same input), and the three biases are summed: two convs, not three.
  In inference, where it pays in multiply-adds (the low-resolution global layers and the first
  local layer), the grouped conv's centre tap goes into the dense 1x1 conv as well and the
  grouped conv runs its 8 off-centre taps only (1/9 fewer of its multiply-adds; on ``a'_ref``
  that centre tap also moves into the cached half-resolution map). At full resolution the 8
  taps run as two dilated convs (fewer multiply-adds); in the half-resolution global layers as
  the 3x3 conv with a zeroed centre (dilated convs leave oneDNN's fast path: slower there).
* ``down`` (bilinear x1/2, align_corners=False, even sides) is exactly a 2x2 average pool
  (used for the cached maps; ``a_t`` keeps the bilinear call, which is faster on NCHW).
* The deformable sampling itself is the fast channels-last gather of ``deform.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastv2v.errors import UserError
from fastv2v.methods.shortcut.deform import blended_deform_conv2d, deform_conv2d, flow_sample, padded_rows

__all__ = ["HetConv", "OffsetGenerator", "ShortcutBlock"]


class HetConv(nn.Module):
    """``conv3x3(x) + conv1x1(x) - conv1x1_(x)``: grouped 3x3 and full 1x1 minus grouped 1x1."""

    def __init__(self, in_channels: int, out_channels: int, groups: int = 4, bias: bool = True):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"HetConv channels ({in_channels} -> {out_channels}) must be divisible by groups={groups}")
        self.groups = groups
        self.conv3x3 = nn.Conv2d(in_channels, out_channels, 3, padding=1, groups=groups, bias=bias)
        self.conv1x1_ = nn.Conv2d(in_channels, out_channels, 1, groups=groups, bias=bias)
        self.conv1x1 = nn.Conv2d(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # the official form
        return self.conv3x3(x) + self.conv1x1(x) - self.conv1x1_(x)

    def folded(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(w3, w1, b)`` with ``HetConv(x) == conv(x, w3, padding=1, groups) + conv(x, w1) + b``:
        the grouped 1x1 conv folded into the centre tap of the grouped 3x3 conv."""
        w3 = self.conv3x3.weight
        centre = torch.zeros_like(w3)
        centre[:, :, 1, 1] = self.conv1x1_.weight[:, :, 0, 0]
        w3 = w3 - centre
        b = None
        if self.conv3x3.bias is not None:
            b = self.conv3x3.bias + self.conv1x1.bias - self.conv1x1_.bias
        return w3, self.conv1x1.weight, b


def _conv1x1_channels_last(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """A 1x1 conv of an NCHW tensor as one matrix product whose result is channels-last
    (``x^T W^T``: the transposition rides on the GEMM, no copy)."""
    n, c, h, w = x.shape
    y = torch.matmul(x.reshape(n, c, h * w).transpose(1, 2), conv.weight[:, :, 0, 0].t())
    if conv.bias is not None:
        y += conv.bias
    return y.view(n, h, w, -1).permute(0, 3, 1, 2)


def _centre_block(w3: torch.Tensor, groups: int, rows: tuple[int, int]) -> torch.Tensor:
    """The centre taps of a grouped 3x3 weight (``out x in/groups x 3 x 3``) as the dense,
    block-diagonal ``out x in`` matrix of a 1x1 conv, placed at output rows ``rows[0]:``
    of a matrix with ``rows[1]`` rows."""
    per = w3.shape[0] // groups
    dense = torch.block_diag(*[w3[i * per : (i + 1) * per, :, 1, 1] for i in range(groups)])
    top, total = rows
    return F.pad(dense, (0, 0, top, total - top - dense.shape[0]))


def _grouped3x3(x: torch.Tensor, w3: torch.Tensor, groups: int, centre: bool = True, lean: bool = True) -> torch.Tensor:
    """Grouped 3x3 conv (zero padding 1, no bias); ``centre=False``: only its 8 off-centre taps,
    with ``lean`` as a (2, 3) conv over rows -1/+1 plus a (1, 2) conv over columns -1/+1 of the
    middle row (1/9 fewer multiply-adds, but dilated convs fall off oneDNN's fast path), else as
    the 3x3 conv with its centre tap zeroed (faster where the multiply-adds are few)."""
    if centre or not lean:
        if not centre:
            w3 = w3.clone()
            w3[:, :, 1, 1] = 0
        return F.conv2d(x, w3, padding=1, groups=groups)
    y = F.conv2d(x, w3[:, :, 0::2, :], padding=(1, 1), dilation=(2, 1), groups=groups)
    y += F.conv2d(x, w3[:, :, 1:2, 0::2], padding=(0, 1), dilation=(1, 2), groups=groups)
    return y


def _hetconv(layer: "HetConv", x: torch.Tensor, centre: bool = True, lean: bool = True) -> torch.Tensor:
    """``layer(x)`` with the grouped 1x1 conv folded (``centre=False``: the 3x3 conv's centre
    tap folded into the dense 1x1 conv too, the rest as 8 taps)."""
    w3, w1, b = layer.folded()
    if not centre:
        w1 = (w1[:, :, 0, 0] + _centre_block(w3, layer.groups, rows=(0, w3.shape[0])))[:, :, None, None]
    y = F.conv2d(x, w1, b)
    y += _grouped3x3(x, w3, layer.groups, centre, lean)
    return y


class OffsetGenerator(nn.Module):
    """``layers`` x (HetConv + ReLU) then a 1x1 conv (official ``Global``/``LocalOffsetGenerator``;
    the final conv is ``offset_conv`` or ``offset_mask_conv``)."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int, layers: int, head: str, groups: int = 4):
        super().__init__()
        mods: list[nn.Module] = []
        for i in range(layers):
            mods += [HetConv(in_channels if i == 0 else hidden, hidden, groups), nn.ReLU(inplace=True)]
        self.model = nn.Sequential(*mods)
        self.head_name = head
        setattr(self, head, nn.Conv2d(hidden, out_channels, 1, bias=True))

    @property
    def head(self) -> nn.Conv2d:
        return getattr(self, self.head_name)

    def hetconvs(self) -> list[HetConv]:
        return [m for m in self.model if isinstance(m, HetConv)]

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:  # official: cat(second, first)
        return self.head(self.model(torch.cat([second, first], dim=1)))


class _RegularConv(nn.Module):
    """Holds the 3x3 weight of a deformable conv as ``regular_conv`` (official key layout)."""

    def __init__(self, channels: int):
        super().__init__()
        self.regular_conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)


def _drop_unused_offset_conv(module, state_dict, prefix, *args, **kwargs):
    # Official files carry global_deform_conv.offset_conv.* (a 3x3 conv to 18 offsets that the
    # official forward never calls, because the offsets come from offset_generator_global).
    for name in ("weight", "bias"):
        state_dict.pop(f"{prefix}global_deform_conv.offset_conv.{name}", None)


class ShortcutBlock(nn.Module):
    """The Shortcut-V2V block: ``f^_t, extras = block(a_t, a_ref, f_ref)``.

    ``a_*``: head features (``feature_channels`` channels, even height and width), ``f_ref``:
    the key frame's body features, same shape. ``extras``: ``mask`` (the AdaBD blending mask
    ``m``, N x 9 x H x W, weight of the current frame's features), ``offsets`` (N x 18 x H x W),
    ``global_offset`` (N x 2 x H/2 x W/2), and, when ``aligned`` is asked for (default: in
    training mode), ``aligned``: ``recon_ref(dconv(f'_ref, offsets))``, the warped reference
    features without the mask, which the official alignment loss compares with ``f_t``.

    For streams: ``prepared = block.prepare_reference(a_ref, f_ref)`` once per key frame, then
    ``block.predict(a_t, prepared)`` per non-key frame; ``forward`` is exactly that.

    ``reference_skip`` (not in the paper; off for the official architecture): add the key
    frame's full body features, warped by the coarse offset (upsampled, in full-resolution
    pixels), to the block's output, so the block learns a *correction* of the aligned reference.
    The official block passes the reference through a ``hidden``-channel ReLU bottleneck and a
    half-resolution alignment; measured on the shipped teachers (docs/shortcut.md) that path
    alone, even perfectly aligned, renders worse than repeating the key frame, and in a CPU
    training budget the block cannot learn its way past that. With the skip, and ``recon_ref``
    starting at zero, the untrained block is exactly ``reuse`` and training only improves on it.
    Cost: one bilinear warp of the body features per non-key frame.
    """

    def __init__(
        self,
        feature_channels: int = 128,
        hidden: int = 64,
        groups: int = 4,
        global_layers: int = 2,
        local_layers: int = 3,
        reference_skip: bool = False,
    ):
        super().__init__()
        if feature_channels < 1 or hidden < 1 or groups < 1:
            raise ValueError(
                f"feature_channels, hidden and groups must be >= 1, not {feature_channels}, {hidden}, {groups}"
            )
        if global_layers < 1 or local_layers < 1:
            raise ValueError("the offset generators need at least one HetConv layer each")
        if groups % 2:
            raise ValueError("groups must be even (the first global HetConv sees [a_t, a_ref] in separate groups)")
        if hidden % groups or feature_channels % groups:
            raise ValueError(f"feature_channels and hidden must be divisible by groups={groups}")
        self.config = dict(
            feature_channels=feature_channels, hidden=hidden, groups=groups,
            global_layers=global_layers, local_layers=local_layers,
        )  # fmt: skip
        if reference_skip:
            self.config["reference_skip"] = True  # absent for the official architecture
        self.feature_channels, self.hidden, self.groups = feature_channels, hidden, groups
        self.reference_skip = bool(reference_skip)
        # Registration order = official key order.
        self.offset_generator_global = OffsetGenerator(2 * feature_channels, hidden, 2, global_layers, "offset_conv", groups)
        self.offset_generator_local = OffsetGenerator(2 * hidden, hidden, 27, local_layers, "offset_mask_conv", groups)
        self.global_deform_conv = _RegularConv(hidden)
        self.cr1 = nn.Sequential(nn.Conv2d(feature_channels, hidden, 1), nn.ReLU())
        self.cr2 = nn.Sequential(nn.Conv2d(feature_channels, hidden, 1), nn.ReLU())
        self.mask_deform_conv = _RegularConv(hidden)
        self.recon_ref = nn.Conv2d(hidden, feature_channels, 1)
        self.register_load_state_dict_pre_hook(_drop_unused_offset_conv)
        self.reset_parameters()

    # -----------------------------------------------------------------------------------------
    def reset_parameters(self, gain: float = 0.02) -> None:
        """The official initialisation: Xavier-normal (``gain`` 0.02, the official code's
        ``init_gain``) for every conv weight, biases as PyTorch creates them; the two deformable
        weights (``regular_conv``) uniform in +-1/sqrt(fan_in); the final offset conv and
        offset/mask conv zero (weights and biases), so the blending mask starts at 0.5 and all
        offsets at 0. ``gain=1`` (plain Xavier) trains much faster in short runs: with 0.02 the
        block's output starts ~1e-4 of the features' scale and the feature losses barely move."""
        for name, m in self.named_modules():
            if isinstance(m, nn.Conv2d):
                if name.endswith("regular_conv"):
                    bound = 1.0 / (m.in_channels * m.kernel_size[0] * m.kernel_size[1]) ** 0.5
                    nn.init.uniform_(m.weight, -bound, bound)
                elif name.endswith("offset_conv") or name.endswith("offset_mask_conv"):
                    nn.init.zeros_(m.weight)
                else:
                    nn.init.xavier_normal_(m.weight, gain=gain)
                    continue
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if self.reference_skip:  # start as the aligned reference itself (with zero offsets: reuse)
            nn.init.zeros_(self.recon_ref.weight)
            nn.init.zeros_(self.recon_ref.bias)

    # -----------------------------------------------------------------------------------------
    def _check(self, name: str, t: torch.Tensor, like: torch.Tensor | None = None) -> None:
        if t.dim() != 4 or t.shape[1] != self.feature_channels:
            raise UserError(
                f"{name} must be N x {self.feature_channels} x H x W head/body features for this Shortcut block, "
                f"got shape {tuple(t.shape)}; use a block built with feature_channels={t.shape[1] if t.dim() == 4 else '?'}."
            )
        h, w = t.shape[-2:]
        if h % 2 or w % 2 or h < 2 or w < 2:
            raise UserError(
                f"the Shortcut block needs feature maps with even sides, but {name} is {h}x{w}; "
                "resize the frames so their sides are a multiple of 4 (for a ResNet teacher)."
            )
        if like is not None and t.shape != like.shape:
            raise UserError(f"{name} has shape {tuple(t.shape)} but the reference features have {tuple(like.shape)}.")

    def prepare_reference(self, a_ref: torch.Tensor, f_ref: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything that depends only on the key frame, computed once per key frame.

        Returns ``global_ref`` (the ``a_ref`` half of the first global HetConv, bias included),
        ``table`` (the half-resolution, conv-ed ``[cr2(a_ref), cr1(f_ref)]`` and, when prepared
        without gradients, the first local HetConv's 1x1 part on the former, in the padded
        channels-last row layout of :func:`~fastv2v.methods.shortcut.deform.flow_sample`) and ``size``
        (H, W of the features). Prepare and predict in the same gradient mode.
        """
        self._check("a_ref", a_ref)
        self._check("f_ref", f_ref, like=a_ref)
        n, c, h, w = a_ref.shape
        hid, half, groups = self.hidden, self.hidden // 2, self.groups
        z = F.avg_pool2d(torch.cat([self.cr2(a_ref), self.cr1(f_ref)]), 2)  # == bilinear x1/2
        # Global deformable conv, conv part: defined on [-1, H/2] x [-1, W/2] (zero padding 2).
        y = F.conv2d(z, self.global_deform_conv.regular_conv.weight, padding=2)
        maps = [y[:n], y[n:]]
        if not torch.is_grad_enabled():
            # The 1x1 part of the first local HetConv that acts on a'_ref (its input channels
            # hid..2hid), with the centre taps of the grouped 3x3 conv on a'_ref folded in:
            # commutes with the warp and the upsampling, so it runs here, at half resolution.
            w3, w1, _ = self.offset_generator_local.hetconvs()[0].folded()
            w1r = w1[:, hid:, 0, 0] + _centre_block(w3[half:], groups // 2, rows=(half, hid))
            maps.append(F.conv2d(y[:n], w1r[:, :, None, None]))
        table = padded_rows(torch.cat(maps, dim=1))
        # First global HetConv on [down(a_t), down(a_ref)]: groups >= g/2 see only a_ref.
        w3, w1, b = self.offset_generator_global.hetconvs()[0].folded()
        d_ref = F.avg_pool2d(a_ref, 2)
        global_ref = F.conv2d(d_ref, w1[:, c:], b)
        global_ref[:, half:] += F.conv2d(d_ref, w3[half:], padding=1, groups=groups // 2)
        prepared = {"global_ref": global_ref, "table": table, "size": torch.tensor([h, w])}
        if self.reference_skip:
            prepared["skip"] = padded_rows(f_ref)
        return prepared

    def predict(
        self, a_t: torch.Tensor, prepared: dict[str, torch.Tensor], aligned: bool | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(f^_t, extras)`` for head features ``a_t`` and a :meth:`prepare_reference` result."""
        self._check("a_t", a_t)
        h, w = (int(v) for v in prepared["size"])
        if tuple(a_t.shape[-2:]) != (h, w) or a_t.shape[0] != prepared["global_ref"].shape[0]:
            raise UserError(
                f"a_t is {tuple(a_t.shape)} but the reference was prepared for "
                f"{prepared['global_ref'].shape[0]} x {self.feature_channels} x {h} x {w}; "
                "every frame of a video must have the same size."
            )
        n, c = a_t.shape[:2]
        hid, half, groups = self.hidden, self.hidden // 2, self.groups
        gen_g, gen_l = self.offset_generator_global, self.offset_generator_local
        table = prepared["table"]
        # Inference form (reference prepared without gradients, none needed now): the first
        # local HetConv's 1x1 on a'_ref comes from the cached map, and grouped 3x3 convs run
        # as their 8 off-centre taps with the centre tap folded into the dense 1x1 conv
        # (fewer multiply-adds; same function).
        inference = table.shape[1] == 3 * hid and not torch.is_grad_enabled()

        # Coarse alignment: global offset from [down(a_t), down(a_ref)] (a_ref part cached).
        d_t = F.interpolate(a_t, size=(h // 2, w // 2), mode="bilinear", align_corners=False)
        het = gen_g.hetconvs()
        w3, w1, _ = het[0].folded()
        w1t = w1[:, :c, 0, 0]
        if inference:
            w1t = w1t + _centre_block(w3[:half], groups // 2, rows=(0, hid))
        g = F.conv2d(d_t, w1t[:, :, None, None])
        g += prepared["global_ref"]
        # Half resolution: few multiply-adds, so the faster zeroed-centre form (lean=False).
        g[:, :half] += _grouped3x3(d_t, w3[:half], groups // 2, centre=not inference, lean=False)
        g = g.relu_()
        for layer in het[1:]:
            g = _hetconv(layer, g, centre=not inference, lean=False).relu_()
        global_offset = gen_g.head(g)
        # Warp the cached conv-ed maps (conv-then-warp == the shared-offset deformable conv),
        # then bilinear x2. Channels-last from here on.
        warped = flow_sample(table, global_offset, origin=(1, 1), size=(h // 2 + 2, w // 2 + 2))
        up = F.interpolate(warped, size=(h, w), mode="bilinear", align_corners=False)
        a_al, f_al = up[:, :hid], up[:, hid : 2 * hid]

        # Fine offsets and mask from [cr2(a_t), a'_ref (detached)].
        cr_t = _conv1x1_channels_last(a_t, self.cr2[0]).relu_()
        het = gen_l.hetconvs()
        w3, w1, b = het[0].folded()
        if inference:
            w1t = w1[:, :hid, 0, 0] + _centre_block(w3[:half], groups // 2, rows=(0, hid))
            l = F.conv2d(cr_t, w1t[:, :, None, None], b)
            l += up[:, 2 * hid :]
            l[:, :half] += _grouped3x3(cr_t, w3[:half], groups // 2, centre=False)
            l[:, half:] += _grouped3x3(a_al, w3[half:], groups // 2, centre=False)
        else:
            x = torch.cat([cr_t, a_al.detach()], dim=1)
            l = F.conv2d(x, w3, b, padding=1, groups=groups)
            l += F.conv2d(x, w1)
        l = l.relu_()
        for layer in het[1:]:
            l = _hetconv(layer, l, centre=True).relu_()
        om = gen_l.head(l)
        offsets, mask = om[:, :18], torch.sigmoid(om[:, 18:27])

        # AdaBD as one convolution over blended columns, recon_ref chained, written as NCHW.
        weight = self.mask_deform_conv.regular_conv.weight
        recon = (self.recon_ref.weight[:, :, 0, 0].t(), self.recon_ref.bias)
        f_hat = blended_deform_conv2d(cr_t, f_al, offsets, mask, weight, then=[recon], channels_first=True)
        extras = {"mask": mask, "offsets": offsets, "global_offset": global_offset}
        skip = None
        if self.reference_skip:  # the full reference, warped by the coarse offset at full resolution
            flow = 2 * F.interpolate(global_offset, size=(h, w), mode="bilinear", align_corners=False)
            skip = flow_sample(prepared["skip"], flow, size=(h, w))
            f_hat = f_hat + skip
        if self.training if aligned is None else aligned:
            extras["aligned"] = self.recon_ref(deform_conv2d(f_al, offsets, weight, padding=1))
            if skip is not None:
                extras["aligned"] = extras["aligned"] + skip
        return f_hat, extras

    def forward(
        self, a_t: torch.Tensor, a_ref: torch.Tensor, f_ref: torch.Tensor, aligned: bool | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.predict(a_t, self.prepare_reference(a_ref, f_ref), aligned=aligned)
