"""Optical flow, warping and occlusion masks on synthetic frames with known motion."""

import cv2
import numpy as np
import pytest
import torch

from fastv2v.flow import estimate_flow, occlusion_mask, resize_flow, to_gray, warp

H, W = 64, 96


def texture(h, w, seed=0, cell=4):
    """Smooth random RGB texture: trackable by DIS at every pixel, no aliasing."""
    rng = np.random.default_rng(seed)
    base = rng.random((h // cell + 2, w // cell + 2, 3))
    img = cv2.resize(base, (w + 4 * cell, h + 4 * cell), interpolation=cv2.INTER_CUBIC)[:h, :w]
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def shifted_pair(dx, dy, seed=0, h=H, w=W):
    """Frames a, b of one scene with b(x) = a(x - (dx, dy)): content moves by (+dx, +dy)."""
    m = 8
    big = texture(h + 2 * m, w + 2 * m, seed)
    a = big[m : m + h, m : m + w]
    b = big[m - dy : m - dy + h, m - dx : m - dx + w]
    return a, b


@pytest.mark.parametrize("dx,dy", [(3, 0), (0, -2)])
def test_known_shift_direction_and_accuracy(dx, dy):
    a, b = shifted_pair(dx, dy)
    flow = estimate_flow(a, b)
    assert flow.shape == (H, W, 2) and flow.dtype == np.float32
    interior = flow[10:-10, 10:-10]
    # a(x) ~ b(x + flow(x)): content moving right by 3 px has flow (+3, 0).
    assert np.abs(interior[..., 0] - dx).max() < 0.5
    assert np.abs(interior[..., 1] - dy).max() < 0.5


def test_refine_sets_the_variational_refinement():
    """``refine=None`` is the preset's own (5 for medium); 0 turns it off, and the flow still
    finds a plain shift."""
    from fastv2v.flow import _dis

    assert _dis("medium").getVariationalRefinementIterations() == 5
    assert _dis("medium", 0).getVariationalRefinementIterations() == 0
    assert _dis("fast", 2).getVariationalRefinementIterations() == 2
    a, b = shifted_pair(3, 0)
    rough = estimate_flow(a, b, "medium", 0)
    assert np.abs(rough[10:-10, 10:-10, 0] - 3).max() < 0.5
    with pytest.raises(ValueError, match="refine"):
        estimate_flow(a, b, "medium", -1)


def test_identical_frames_have_zero_flow():
    a = texture(H, W, 1)
    assert np.abs(estimate_flow(a, a)).max() < 0.05


def test_warp_shifted_frame_back_onto_original():
    a, b = shifted_pair(3, 0)
    exact = np.zeros((H, W, 2), np.float32)
    exact[..., 0] = 3
    back = warp(b, exact)
    assert back.dtype == np.uint8
    # out(x) = b(x + 3) = a(x) wherever x + 3 is inside the frame: bit-exact for an integer shift.
    np.testing.assert_array_equal(back[:, : W - 3], a[:, : W - 3])
    est = warp(b, estimate_flow(a, b))
    err = np.abs(est[8:-8, 8:-8].astype(float) - a[8:-8, 8:-8])
    assert err.mean() < 1.5


@pytest.mark.parametrize("border", ["replicate", "zeros", "reflect"])
def test_numpy_and_torch_warp_agree(border):
    rng = np.random.default_rng(3)
    img = rng.random((20, 30, 5)).astype(np.float32)  # more channels than cv2's usual 4
    flow = rng.uniform(-6, 6, (20, 30, 2)).astype(np.float32)
    out_np = warp(img, flow, border=border)
    t_img = torch.from_numpy(img).permute(2, 0, 1)
    out_t = warp(t_img, torch.from_numpy(flow).permute(2, 0, 1), border=border)
    assert out_t.shape == (5, 20, 30)
    # cv2.remap quantises positions to 1/32 px: values in [0,1] differ by at most ~1/32.
    np.testing.assert_allclose(out_t.permute(1, 2, 0).numpy(), out_np, atol=1.0 / 32 + 1e-4)


def test_torch_warp_batch_numpy_flow_and_dtypes():
    feats = torch.arange(2 * 3 * 8 * 10, dtype=torch.float32).view(2, 3, 8, 10)
    flow = np.zeros((8, 10, 2), np.float32)
    flow[..., 1] = 1.0  # read one row below
    out = warp(feats, flow)
    torch.testing.assert_close(out[:, :, :-1], feats[:, :, 1:])
    torch.testing.assert_close(out[:, :, -1], feats[:, :, -1])  # replicate border
    u8 = torch.randint(0, 256, (3, 8, 10), dtype=torch.uint8)
    assert warp(u8, torch.zeros(2, 8, 10)).dtype == torch.uint8
    torch.testing.assert_close(warp(u8, torch.zeros(2, 8, 10)), u8)
    single = np.random.default_rng(0).random((8, 10, 1)).astype(np.float32)
    assert warp(single, flow).shape == (8, 10, 1)
    with pytest.raises(ValueError):
        warp(single, np.zeros((4, 4, 2), np.float32))


def test_resize_flow_rescales_vectors():
    flow = np.zeros((32, 48, 2), np.float32)
    flow[..., 0], flow[..., 1] = 2.0, 1.0
    big = resize_flow(flow, (64, 96))
    assert big.shape == (64, 96, 2)
    np.testing.assert_allclose(big[..., 0], 4.0)
    np.testing.assert_allclose(big[..., 1], 2.0)
    t = resize_flow(torch.from_numpy(flow).permute(2, 0, 1), (16, 24))
    torch.testing.assert_close(t[0], torch.full((16, 24), 1.0))
    torch.testing.assert_close(t[1], torch.full((16, 24), 0.5))


def test_occlusion_mask_exact_flows():
    """Analytic flows of a 10x10 square moving 4 px right over a static background."""
    h, w, d = 30, 40, 4
    fw = np.zeros((h, w, 2), np.float32)
    bw = np.zeros((h, w, 2), np.float32)
    fw[10:20, 10:20, 0] = d  # square in a at columns 10..19
    bw[10:20, 14:24, 0] = -d  # square in b at columns 14..23
    vis_a = occlusion_mask(fw, bw)
    vis_b = occlusion_mask(bw, fw)
    expected_a = np.ones((h, w), bool)
    expected_a[10:20, 20:24] = False  # background of a that the square covers in b
    np.testing.assert_array_equal(vis_a, expected_a)
    expected_b = np.ones((h, w), bool)
    expected_b[10:20, 10:14] = False  # background of b uncovered by the square: no match in a
    np.testing.assert_array_equal(vis_b, expected_b)
    # torch flows give the same mask
    t = occlusion_mask(torch.from_numpy(fw).permute(2, 0, 1)[None], torch.from_numpy(bw).permute(2, 0, 1)[None])
    np.testing.assert_array_equal(t[0].numpy(), expected_a)


def test_occlusion_mask_flags_pixels_leaving_the_frame():
    fw = np.zeros((10, 12, 2), np.float32)
    fw[..., 0] = 3
    vis = occlusion_mask(fw, -fw)
    assert vis[:, :9].all() and not vis[:, 9:].any()


def test_occlusion_mask_with_dis_on_moving_square():
    h, w, s, d = 96, 128, 32, 6
    bg = texture(h, w, 32, cell=4)
    sq = texture(s, s, 33, cell=4)
    y0, x0 = (h - s) // 2, w // 2 - s // 2 - d // 2
    a = bg.copy()
    a[y0 : y0 + s, x0 : x0 + s] = sq
    b = bg.copy()
    b[y0 : y0 + s, x0 + d : x0 + d + s] = sq
    fw, bw = estimate_flow(a, b), estimate_flow(b, a)
    vis_a, vis_b = occlusion_mask(fw, bw), occlusion_mask(bw, fw)
    rows = slice(y0 + 3, y0 + s - 3)
    uncovered = ~vis_b[rows, x0 : x0 + d]  # revealed in b, nowhere in a
    covered = ~vis_a[rows, x0 + s : x0 + s + d]  # hidden in b
    far_bg = vis_a[:, :15]
    assert uncovered.mean() > 0.6 and covered.mean() > 0.6
    assert far_bg.mean() > 0.9
    assert vis_a[y0 + 4 : y0 + s - 4, x0 + 4 : x0 + s - 4].mean() > 0.9  # the square itself is tracked
    assert uncovered.mean() > 5 * (1 - far_bg.mean())


def test_to_gray_and_errors():
    a = texture(8, 9)
    assert to_gray(a).shape == (8, 9)
    assert to_gray(a[..., :1]).shape == (8, 9)
    with pytest.raises(ValueError):
        estimate_flow(a, texture(8, 10))
    with pytest.raises(ValueError):
        estimate_flow(a, a, preset="slow")
    with pytest.raises(ValueError, match="too small"):
        estimate_flow(a, a)
