"""Shortcut-V2V block: the efficient form equals the official forward; official names and
initialisation; the online method's key frames are the teacher's, streams don't mix; errors."""

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import deform_conv2d as tv_deform_conv2d

from fastv2v import UserError
from fastv2v.generators import ResnetGenerator
from fastv2v.methods.base import METHODS
from fastv2v.methods.shortcut import HetConv, ShortcutBlock, ShortcutMethod
from fastv2v.metrics.profile import profile

from conftest import assert_videos_do_not_mix, run_online

C, HID = 16, 8



def official_forward(block: ShortcutBlock, a_t, a_ref, f_ref, train=False):
    """A direct transcription of the official ShortcutBlock.forward (a_1 = a_ref, a_2 = a_t,
    f_1 = f_ref), with torchvision's deform_conv2d and the official HetConv formula. Returns
    (f_hat, mask, aligned) where aligned = recon_ref(unmasked reference branch) as in training."""
    b, _, h, w = a_ref.shape
    cr_f_1 = block.cr1(f_ref)
    cr_a = block.cr2(torch.cat([a_ref, a_t], dim=0))
    cr_a_1, cr_a_2 = cr_a[:b], cr_a[b:]
    ds = F.interpolate(torch.cat([a_ref, a_t], dim=0), size=(h // 2, w // 2), mode="bilinear", align_corners=False)
    a1_ds, a2_ds = ds[:b], ds[b:]
    global_input = F.interpolate(torch.cat([cr_a_1, cr_f_1]), size=(h // 2, w // 2), mode="bilinear", align_corners=False)
    gen = block.offset_generator_global
    global_offset = gen.offset_conv(gen.model(torch.cat([a2_ds, a1_ds], dim=1)))  # cat(img2, img1)
    offset = global_offset.repeat(2, 1, 1, 1).repeat(1, 9, 1, 1)
    weight = block.global_deform_conv.regular_conv.weight
    global_input = tv_deform_conv2d(global_input, offset, weight, padding=1)
    global_input = F.interpolate(
        global_input, size=(global_input.shape[2] * 2, global_input.shape[3] * 2), mode="bilinear", align_corners=False
    )
    cr_a_1, cr_f_1 = global_input[:b], global_input[b:]
    gen = block.offset_generator_local
    offset_mask = gen.offset_mask_conv(gen.model(torch.cat([cr_a_2, cr_a_1.detach()], dim=1)))
    offset, mask = offset_mask[:, :18], torch.sigmoid(offset_mask[:, 18:])
    weight = block.mask_deform_conv.regular_conv.weight
    new_act = tv_deform_conv2d(cr_a_2, torch.zeros_like(offset), weight, padding=1, mask=mask)
    ref_act = tv_deform_conv2d(cr_f_1, offset, weight, padding=1, mask=1 - mask)
    aligned = block.recon_ref(tv_deform_conv2d(cr_f_1, offset, weight, padding=1)) if train else None
    return block.recon_ref(ref_act + new_act), mask, aligned


def randomise(block: ShortcutBlock, seed=0) -> ShortcutBlock:
    """Give every parameter (incl. the zero-initialised offset convs) a non-trivial value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in block.named_parameters():
            scale = 0.6 if ("offset" in name) else 0.35
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return block


def features(n=2, h=16, w=16, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, C, h, w, generator=g, dtype=dtype) for _ in range(3)]


@pytest.fixture(scope="module")
def block():
    torch.manual_seed(0)
    return randomise(ShortcutBlock(C, HID)).double().eval()


# --- equivalence with the official order ------------------------------------------------------


@pytest.mark.parametrize("grad", [False, True])
def test_efficient_form_equals_official_forward(block, grad):
    a_t, a_ref, f_ref = features()
    with torch.set_grad_enabled(grad):
        ref, ref_mask, ref_aligned = official_forward(block, a_t, a_ref, f_ref, train=True)
        f_hat, extras = block(a_t=a_t, a_ref=a_ref, f_ref=f_ref, aligned=True)
    assert f_hat.shape == ref.shape == a_t.shape
    assert torch.allclose(f_hat, ref, atol=1e-10, rtol=0)
    assert torch.allclose(extras["mask"], ref_mask, atol=1e-12, rtol=0)
    assert torch.allclose(extras["aligned"], ref_aligned, atol=1e-10, rtol=0)
    # The offsets are far from zero here, so the deformable parts are really exercised.
    assert extras["offsets"].abs().max() > 1 and extras["global_offset"].abs().max() > 1


def test_efficient_form_equals_official_forward_float32():
    torch.manual_seed(0)
    blk = randomise(ShortcutBlock(C, HID), seed=3).eval()
    a_t, a_ref, f_ref = features(n=1, h=12, w=20, seed=4, dtype=torch.float32)
    with torch.no_grad():
        ref, _, _ = official_forward(blk, a_t, a_ref, f_ref)
        f_hat, _ = blk(a_t, a_ref, f_ref)
    assert torch.allclose(f_hat, ref, atol=1e-4 * ref.abs().max().item(), rtol=0)


def test_gradients_equal_official(block):
    a_t, a_ref, f_ref = features(n=1, seed=5)
    ref, _, ref_aligned = official_forward(block, a_t, a_ref, f_ref, train=True)
    loss_ref = ref.square().mean() + ref_aligned.abs().mean()
    grads_ref = torch.autograd.grad(loss_ref, list(block.parameters()))
    f_hat, extras = block(a_t, a_ref, f_ref, aligned=True)
    loss = f_hat.square().mean() + extras["aligned"].abs().mean()
    grads = torch.autograd.grad(loss, list(block.parameters()))
    for (name, _), g, gr in zip(block.named_parameters(), grads, grads_ref):
        assert torch.allclose(g, gr, atol=1e-10, rtol=1e-8), name


def test_prepare_then_predict_is_forward_and_reusable(block):
    a_t, a_ref, f_ref = features(seed=6)
    a_t2 = features(seed=7)[0]
    with torch.no_grad():
        prepared = block.prepare_reference(a_ref, f_ref)
        p1, _ = block.predict(a_t, prepared)
        p2, _ = block.predict(a_t2, prepared)  # the prepared reference is not consumed
        assert torch.equal(p1, block(a_t, a_ref, f_ref)[0])
        assert torch.allclose(p2, official_forward(block, a_t2, a_ref, f_ref)[0], atol=1e-10, rtol=0)


def test_hetconv_folded_equals_official():
    torch.manual_seed(0)
    het = HetConv(16, 8).double()
    x = torch.randn(2, 16, 6, 7, dtype=torch.float64)
    from fastv2v.methods.shortcut.block import _hetconv
    assert torch.allclose(_hetconv(het, x), het(x), atol=1e-12)
    assert torch.allclose(_hetconv(het, x, centre=False), het(x), atol=1e-12)


# --- official layout and initialisation ------------------------------------------------------

OFFICIAL_KEYS = [
    "offset_generator_global.model.0.conv3x3.weight", "offset_generator_global.model.0.conv3x3.bias",
    "offset_generator_global.model.0.conv1x1_.weight", "offset_generator_global.model.0.conv1x1_.bias",
    "offset_generator_global.model.0.conv1x1.weight", "offset_generator_global.model.0.conv1x1.bias",
    "offset_generator_global.model.2.conv3x3.weight", "offset_generator_global.model.2.conv3x3.bias",
    "offset_generator_global.model.2.conv1x1_.weight", "offset_generator_global.model.2.conv1x1_.bias",
    "offset_generator_global.model.2.conv1x1.weight", "offset_generator_global.model.2.conv1x1.bias",
    "offset_generator_global.offset_conv.weight", "offset_generator_global.offset_conv.bias",
    "offset_generator_local.model.0.conv3x3.weight", "offset_generator_local.model.0.conv3x3.bias",
    "offset_generator_local.model.0.conv1x1_.weight", "offset_generator_local.model.0.conv1x1_.bias",
    "offset_generator_local.model.0.conv1x1.weight", "offset_generator_local.model.0.conv1x1.bias",
    "offset_generator_local.model.2.conv3x3.weight", "offset_generator_local.model.2.conv3x3.bias",
    "offset_generator_local.model.2.conv1x1_.weight", "offset_generator_local.model.2.conv1x1_.bias",
    "offset_generator_local.model.2.conv1x1.weight", "offset_generator_local.model.2.conv1x1.bias",
    "offset_generator_local.model.4.conv3x3.weight", "offset_generator_local.model.4.conv3x3.bias",
    "offset_generator_local.model.4.conv1x1_.weight", "offset_generator_local.model.4.conv1x1_.bias",
    "offset_generator_local.model.4.conv1x1.weight", "offset_generator_local.model.4.conv1x1.bias",
    "offset_generator_local.offset_mask_conv.weight", "offset_generator_local.offset_mask_conv.bias",
    "global_deform_conv.regular_conv.weight",
    "cr1.0.weight", "cr1.0.bias", "cr2.0.weight", "cr2.0.bias",
    "mask_deform_conv.regular_conv.weight",
    "recon_ref.weight", "recon_ref.bias",
]  # fmt: skip


def test_state_dict_keys_and_shapes_are_official():
    block = ShortcutBlock()  # the paper's configuration: 128 features, hidden 64
    sd = block.state_dict()
    assert list(sd) == OFFICIAL_KEYS
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes["offset_generator_global.model.0.conv3x3.weight"] == (64, 64, 3, 3)  # 256 in, groups 4
    assert shapes["offset_generator_global.model.0.conv1x1_.weight"] == (64, 64, 1, 1)
    assert shapes["offset_generator_global.model.0.conv1x1.weight"] == (64, 256, 1, 1)
    assert shapes["offset_generator_global.offset_conv.weight"] == (2, 64, 1, 1)
    assert shapes["offset_generator_local.model.0.conv3x3.weight"] == (64, 32, 3, 3)  # 128 in, groups 4
    assert shapes["offset_generator_local.offset_mask_conv.weight"] == (27, 64, 1, 1)
    assert shapes["global_deform_conv.regular_conv.weight"] == (64, 64, 3, 3)
    assert shapes["mask_deform_conv.regular_conv.weight"] == (64, 64, 3, 3)
    assert shapes["cr1.0.weight"] == shapes["cr2.0.weight"] == (64, 128, 1, 1)
    assert shapes["recon_ref.weight"] == (128, 64, 1, 1)
    # Official files also hold the global deformable conv's unused offset conv: it loads (strict).
    official = dict(sd)
    official["global_deform_conv.offset_conv.weight"] = torch.zeros(18, 64, 3, 3)
    official["global_deform_conv.offset_conv.bias"] = torch.zeros(18)
    ShortcutBlock().load_state_dict(official, strict=True)
    # 230,429 parameters; the official 0.24 M counts the unused conv too (+10,386).
    assert sum(p.numel() for p in block.parameters()) == 230429


def test_initialisation_blend_half_and_offsets_zero():
    torch.manual_seed(0)
    block = ShortcutBlock(C, HID).eval()
    a_t, a_ref, f_ref = features(n=1, dtype=torch.float32)
    with torch.no_grad():
        _, extras = block(a_t, a_ref, f_ref)
    assert torch.equal(extras["mask"], torch.full_like(extras["mask"], 0.5))
    assert not extras["offsets"].any() and not extras["global_offset"].any()
    for conv in (block.offset_generator_global.offset_conv, block.offset_generator_local.offset_mask_conv):
        assert not conv.weight.any() and not conv.bias.any()
    # Xavier-normal with gain 0.02 elsewhere: tiny weights; the deformable weights are uniform.
    w = block.cr1[0].weight
    assert w.abs().max() < 0.02 and w.std() > 0
    w = block.mask_deform_conv.regular_conv.weight
    bound = 1 / (HID * 9) ** 0.5
    assert w.abs().max() <= bound and w.abs().max() > bound / 2


# --- the online method -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return ResnetGenerator(ngf=8, n_blocks=2).eval()  # 16 feature channels


def frames(n, seed, size=(16, 16)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 3, *size, generator=g) for _ in range(n)]


@pytest.fixture(scope="module")
def method(teacher):
    torch.manual_seed(1)
    block = randomise(ShortcutBlock(C, HID), seed=2).eval()
    return ShortcutMethod(teacher, interval=3, block=block)


def test_registered_and_key_frames_are_the_teacher(method, teacher):
    assert METHODS["shortcut"] is ShortcutMethod
    xs = frames(7, 1)
    with torch.no_grad():
        results = list(run_online(method, xs))
        for i, (x, (y, key)) in enumerate(zip(xs, results)):
            assert key == (i % 3 == 0)
            if key:
                assert torch.equal(y, teacher(x))
            else:
                assert y.shape == x.shape and not torch.equal(y, results[i - i % 3][0])


def test_non_key_frame_is_tail_of_block(method, teacher):
    x0, x1 = frames(2, 2)
    with torch.no_grad():
        _, state, _ = method.step(x0, method.init_state())
        y1, _, key = method.step(x1, state)
        a0 = teacher.head(x0)
        f_hat, _ = method.block(teacher.head(x1), a0, teacher.body(a0))
    assert not key
    assert torch.allclose(y1, teacher.tail(f_hat), atol=1e-6)


def test_two_interleaved_videos_do_not_mix(method):
    assert_videos_do_not_mix(method, frames(5, 3), frames(5, 4))


def test_default_block_is_sized_for_the_teacher(teacher):
    m = ShortcutMethod(teacher, interval=2)
    assert m.block.feature_channels == teacher.feature_channels and not m.block.training


def test_profiles_count_only_their_part(method, teacher):
    x = frames(1, 5)[0]
    full = profile(teacher, x)
    nonkey = profile(method.non_key_path(), x)
    extra = profile(method.key_frame_extra_path(), x)
    head, tail = profile(teacher.head, x), profile(teacher.tail, teacher.body(teacher.head(x)))
    block = profile(method.parts(x)["block"])
    assert nonkey.macs_exact == head.macs_exact + block.macs_exact + tail.macs_exact
    assert 0 < extra.macs_exact < full.macs_exact and 0 < block.macs_exact


# --- errors ------------------------------------------------------------------------------------


def test_channel_mismatch_is_a_clear_error(teacher):
    with pytest.raises(UserError, match="32-channel features.*16 channels"):
        ShortcutMethod(teacher, block=ShortcutBlock(32, 8))
    with pytest.raises(UserError, match="N x 16 x H x W"):
        ShortcutBlock(C, HID).prepare_reference(torch.zeros(1, 8, 8, 8), torch.zeros(1, 8, 8, 8))


def test_resolution_the_split_cannot_take(method):
    with pytest.raises(UserError, match="multiples of 4"):
        method.step(torch.zeros(1, 3, 20, 18), method.init_state())  # 10x9 features
    block = ShortcutBlock(C, HID)
    with pytest.raises(UserError, match="even sides"):
        block(*[torch.zeros(1, C, 6, 5)] * 3)
    prepared = block.prepare_reference(torch.zeros(1, C, 8, 8), torch.zeros(1, C, 8, 8))
    with pytest.raises(UserError, match="same size"):
        block.predict(torch.zeros(1, C, 8, 10), prepared)


@pytest.mark.parametrize("bad", [0, -2])
def test_interval_must_be_positive(teacher, bad):
    with pytest.raises(UserError, match="interval"):
        ShortcutMethod(teacher, interval=bad)
