"""The fast deformable convolution gives torchvision's values and gradients."""

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import deform_conv2d as tv_deform_conv2d

import fastv2v.methods.shortcut.deform as deform
from fastv2v.methods.shortcut.deform import blended_deform_conv2d, deform_conv2d, flow_sample

# (batch, C_in, C_out, H, W, kernel, stride, padding, dilation, with mask)
SHAPES = [
    (2, 5, 7, 9, 11, 3, 1, 1, 1, True),
    (1, 4, 6, 8, 8, 3, 1, 1, 1, False),
    (1, 4, 6, 8, 8, 3, 2, 1, 1, True),
    (2, 3, 4, 10, 7, 3, 1, 2, 2, True),
    (1, 3, 2, 6, 9, (2, 3), 1, 0, 1, True),
    (1, 3, 2, 6, 9, 1, 1, 0, 1, False),
]


def case(shape, dtype=torch.float64, seed=0, scale=4.0):
    n, c, co, h, w, k, s, p, d, use_mask = shape
    kh, kw = (k, k) if isinstance(k, int) else k
    g = torch.Generator().manual_seed(seed)
    ho, wo = (h + 2 * p - d * (kh - 1) - 1) // s + 1, (w + 2 * p - d * (kw - 1) - 1) // s + 1
    x = torch.randn(n, c, h, w, generator=g, dtype=dtype)
    weight = torch.randn(co, c, kh, kw, generator=g, dtype=dtype)
    bias = torch.randn(co, generator=g, dtype=dtype)
    # Offsets of several pixels: many samples land partly or wholly outside the input.
    offset = torch.randn(n, 2 * kh * kw, ho, wo, generator=g, dtype=dtype) * scale
    mask = torch.rand(n, kh * kw, ho, wo, generator=g, dtype=dtype) if use_mask else None
    return x, offset, weight, bias, mask, dict(stride=s, padding=p, dilation=d)


@pytest.mark.parametrize("shape", SHAPES)
def test_values_and_gradients_equal_torchvision(shape):
    x, offset, weight, bias, mask, conv = case(shape)
    inputs = [t.requires_grad_() for t in (x, offset, weight, bias, mask) if t is not None]
    ref = tv_deform_conv2d(x, offset, weight, bias, mask=mask, **conv)
    out = deform_conv2d(x, offset, weight, bias, mask=mask, **conv)
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=1e-12, rtol=0)
    grad = torch.randn_like(ref)
    for g_ref, g_out in zip(torch.autograd.grad(ref, inputs, grad), torch.autograd.grad(out, inputs, grad)):
        assert torch.allclose(g_out, g_ref, atol=1e-10, rtol=0)


@pytest.mark.parametrize("chunk", [7, 1024])
def test_float32_inference_chunks_match_torchvision(monkeypatch, chunk):
    monkeypatch.setattr(deform, "CHUNK", chunk)
    x, offset, weight, bias, mask, conv = case((2, 16, 8, 12, 20, 3, 1, 1, 1, True), dtype=torch.float32, seed=3)
    with torch.no_grad():
        ref = tv_deform_conv2d(x, offset, weight, bias, mask=mask, **conv)
        out = deform_conv2d(x, offset, weight, bias, mask=mask, **conv)
    assert torch.allclose(out, ref, atol=1e-5, rtol=0)


def test_float32_gradients_match_torchvision():
    x, offset, weight, bias, mask, conv = case((1, 8, 8, 10, 12, 3, 1, 1, 1, True), dtype=torch.float32, seed=4)
    inputs = [t.requires_grad_() for t in (x, offset, weight, bias, mask)]
    ref = tv_deform_conv2d(x, offset, weight, bias, mask=mask, **conv)
    out = deform_conv2d(x, offset, weight, bias, mask=mask, **conv)
    grad = torch.randn_like(ref)
    for g_ref, g_out in zip(torch.autograd.grad(ref, inputs, grad), torch.autograd.grad(out, inputs, grad)):
        assert torch.allclose(g_out, g_ref, atol=1e-4 * max(1.0, g_ref.abs().max().item()), rtol=0)


def test_offsets_far_outside_give_zero_and_zero_offsets_give_a_convolution():
    x, offset, weight, bias, _, conv = case((1, 3, 4, 7, 7, 3, 1, 1, 1, False))
    far = torch.full_like(offset, 50.0)
    assert torch.allclose(deform_conv2d(x, far, weight, bias, **conv), bias.view(1, -1, 1, 1).expand(1, 4, 7, 7))
    zero = torch.zeros_like(offset)
    assert torch.allclose(deform_conv2d(x, zero, weight, bias, **conv), F.conv2d(x, weight, bias, padding=1), atol=1e-12)


@pytest.mark.parametrize("grad", [False, True])
def test_blended_equals_two_modulated_convolutions(grad):
    g = torch.Generator().manual_seed(5)
    n, c, h, w = 2, 6, 9, 10
    new, ref = torch.randn(n, c, h, w, generator=g, dtype=torch.float64), torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    weight = torch.randn(5, c, 3, 3, generator=g, dtype=torch.float64)
    offset = torch.randn(n, 18, h, w, generator=g, dtype=torch.float64) * 3
    mask = torch.rand(n, 9, h, w, generator=g, dtype=torch.float64)
    post, post_bias = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    with torch.set_grad_enabled(grad):
        expected = tv_deform_conv2d(new, torch.zeros_like(offset), weight, mask=mask, padding=1)
        expected = expected + tv_deform_conv2d(ref, offset, weight, mask=1 - mask, padding=1)
        out = blended_deform_conv2d(new, ref, offset, mask, weight)
        assert torch.allclose(out, expected, atol=1e-12)
        chained = (expected.permute(0, 2, 3, 1) @ post + post_bias).permute(0, 3, 1, 2)
        for channels_first in (False, True):
            out = blended_deform_conv2d(new, ref, offset, mask, weight, then=[(post, post_bias)], channels_first=channels_first)
            assert torch.allclose(out, chained, atol=1e-12)
            assert out.is_contiguous() == channels_first


def test_flow_sample_is_bilinear_with_zeros_outside():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 5, 9, 11, generator=g, dtype=torch.float64)
    flow = torch.randn(2, 2, 7, 9, generator=g, dtype=torch.float64) * 3
    out = flow_sample(x, flow, origin=(1, 1))
    ys = torch.arange(7, dtype=torch.float64).view(-1, 1) + 1 + flow[:, 0]
    xs = torch.arange(9, dtype=torch.float64).view(1, -1) + 1 + flow[:, 1]
    grid = torch.stack([(2 * xs + 1) / 11 - 1, (2 * ys + 1) / 9 - 1], dim=-1)
    assert torch.allclose(out, F.grid_sample(x, grid, align_corners=False), atol=1e-12)
    assert torch.allclose(flow_sample(deform.padded_rows(x), flow, origin=(1, 1), size=(9, 11)), out)


def test_bfloat16_autocast_runs_in_bfloat16_and_is_close():
    x, offset, weight, bias, mask, conv = case((1, 16, 8, 12, 12, 3, 1, 1, 1, True), dtype=torch.float32, seed=7)
    ref = tv_deform_conv2d(x, offset, weight, bias, mask=mask, **conv)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        out = deform_conv2d(x, offset, weight, bias, mask=mask, **conv)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max()


def test_unsupported_and_bad_arguments_are_errors():
    x, offset, weight, bias, mask, conv = case((1, 4, 6, 8, 8, 3, 1, 1, 1, True))
    with pytest.raises(NotImplementedError, match="grouped"):
        deform_conv2d(x, offset, weight[:, :2], **conv)
    with pytest.raises(NotImplementedError, match="offset group"):
        deform_conv2d(x, offset.repeat(1, 2, 1, 1), weight, **conv)
    with pytest.raises(ValueError, match="offset must be"):
        deform_conv2d(x, offset[..., :-1], weight, **conv)
    with pytest.raises(ValueError, match="mask must be"):
        deform_conv2d(x, offset, weight, mask=mask[:, :4], **conv)
    new = torch.zeros(1, 4, 8, 8)
    with pytest.raises(NotImplementedError, match="padding"):
        blended_deform_conv2d(new, new, torch.zeros(1, 50, 8, 8), torch.zeros(1, 25, 8, 8), torch.zeros(2, 4, 5, 5), padding=2)
