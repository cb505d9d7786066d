"""MAC / parameter profiler: published figures, functional ops, and no side effects."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastv2v.metrics.profile import Profile, count_parameters, format_gmacs, format_macs, profile

META = torch.device("meta")


def test_resnet9_matches_published_figures():
    # CycleGAN/pix2pix resnet_9blocks, ngf 64, 256x256: 11.38 M params; 49.55 G real MACs;
    # the papers' 56.8 G counts the two stride-2 transposed convs at output size (4x).
    from fastv2v.generators.resnet import ResnetGenerator

    g = ResnetGenerator(input_nc=3, output_nc=3, ngf=64, n_blocks=9, norm="instance")
    p = profile(g, torch.empty(1, 3, 256, 256, device=META))

    assert p.params == 11_378_179 and f"{p.params_m:.2f}" == "11.38"
    assert p.macs_exact == 49_551_507_456
    assert p.macs_paper == 56_799_264_768
    assert format_macs(p.macs_exact) == "49.55 G" and format_macs(p.macs_paper) == "56.80 G"
    t_exact, t_paper = p.by_op["aten.convolution (transposed)"]
    assert p.calls["aten.convolution (transposed)"] == 2
    assert t_paper - t_exact == p.macs_paper - p.macs_exact
    assert format_macs((t_paper - t_exact) / 2) == "3.62 G"
    assert p.by_op["aten.convolution"][0] == p.by_op["aten.convolution"][1]
    text = str(p)
    assert "exact" in text and "paper" in text and "49.55 G" in text and "56.80 G" in text
    assert next(g.parameters()).device.type == "cpu"  # the meta pass swapped nothing for good


def test_meta_and_real_inputs_count_the_same():
    g = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.InstanceNorm2d(8), nn.ReLU(),
                      nn.ConvTranspose2d(8, 4, 3, 2, 1, output_padding=1))  # fmt: skip
    real = profile(g, torch.randn(1, 3, 8, 8))
    meta = profile(g, torch.empty(1, 3, 8, 8, device=META))
    assert real == meta
    assert real.macs_exact == 8 * 8 * 3 * 8 * 9 + 8 * 8 * 8 * 4 * 9
    assert real.macs_paper == 8 * 8 * 3 * 8 * 9 + 16 * 16 * 8 * 4 * 9


def test_functional_ops_are_counted():
    w = torch.randn(6, 4, 3, 3)
    grid = torch.zeros(2, 5, 7, 2)

    def f(x):
        F.conv2d(x, w, padding=1)  # 2*8*8 * 6*4*9
        F.grid_sample(x, grid, mode="bilinear", align_corners=False)  # 2*4*5*7 * 4
        F.grid_sample(x, grid, mode="nearest", align_corners=False)  # 0
        F.interpolate(x, scale_factor=2, mode="bilinear")  # 2*4*16*16 * 4
        F.interpolate(x, scale_factor=2, mode="bicubic")  # 2*4*16*16 * 16
        F.interpolate(x, scale_factor=2, mode="nearest")  # 0
        F.linear(x.flatten(1), torch.randn(10, 256), torch.randn(10))  # addmm 2 * 256*10
        return x.flatten(2) @ x.flatten(2).transpose(1, 2)  # bmm 2 * 4*64*4

    p = profile(f, torch.randn(2, 4, 8, 8))
    assert p.params == 0
    assert p.by_op["aten.convolution"] == (2 * 64 * 216,) * 2
    assert p.by_op["aten.grid_sampler_2d"] == (2 * 4 * 35 * 4,) * 2
    assert p.calls["aten.grid_sampler_2d"] == 2
    assert p.by_op["aten.upsample_bilinear2d"][0] == 2 * 4 * 256 * 4
    assert p.by_op["aten.upsample_bicubic2d"][0] == 2 * 4 * 256 * 16
    assert p.by_op["aten.upsample_nearest2d"] == (0, 0)
    assert p.by_op["aten.addmm"][0] == 2 * 256 * 10
    assert p.by_op["aten.bmm"][0] == 2 * 4 * 64 * 4
    assert p.macs_exact == p.macs_paper == sum(e for e, _ in p.by_op.values())


@pytest.mark.parametrize("with_mask", [False, True])
def test_deform_conv2d_is_counted(with_mask):
    from torchvision.ops import DeformConv2d

    layer = DeformConv2d(4, 6, 3, padding=1)
    x = torch.randn(1, 4, 8, 8, device=META)
    off = torch.empty(1, 18, 8, 8, device=META)
    mask = torch.empty(1, 9, 8, 8, device=META) if with_mask else None
    p = profile(layer, x, off, mask=mask)  # inputs as kwargs are passed through too
    conv = 64 * 4 * 6 * 9
    samples = 64 * 4 * 9
    assert p.macs_exact == p.macs_paper == conv + samples * (5 if with_mask else 4)
    assert p.calls == {"torchvision.deform_conv2d": 1}


def test_submodule_called_twice_and_batch_scaling():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x, *, scale=1.0):
            return self.conv(self.conv(x)) * scale

    m = Twice()
    one = profile(m, torch.randn(1, 4, 8, 8))
    assert one.macs_exact == 2 * 64 * 4 * 4 * 9 and one.calls["aten.convolution"] == 2
    assert one.params == 4 * 4 * 9 + 4
    two = profile(m, x=torch.randn(2, 4, 8, 8), scale=2.0)  # kwargs-only inputs
    assert two.macs_exact == 2 * one.macs_exact and two.macs_paper == 2 * one.macs_paper


def test_profile_has_no_side_effects():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5))
    m.train()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    profile(m, torch.randn(2, 3, 6, 6))
    profile(m, torch.empty(2, 3, 6, 6, device=META))
    assert m.training and all(c.training for c in m.children())
    assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())  # BN stats untouched

    m.eval()
    x = torch.randn(1, 3, 6, 6)
    before = m(x)
    profile(m, x)
    assert not m.training and torch.equal(m(x), before)


def test_meta_error_is_readable():
    class ValueDependent(nn.Module):
        def forward(self, x):
            return x * 2 if x.sum().item() > 0 else x

    with pytest.raises(RuntimeError, match="real input tensors"):
        profile(ValueDependent(), torch.empty(2, device=META))


def test_format_macs():
    assert format_macs(49_551_507_456) == "49.55 G"
    assert format_macs(3_623_878_656, "G") == "3.62 G"
    assert format_macs(1_500_000) == "1.50 M"
    assert format_macs(12) == "12"
    assert isinstance(Profile(1, 2, 3), Profile) and Profile(1, 2, 3).params_m == 1e-6


def test_format_gmacs():
    """As the papers print G-MACs: at most two decimals, trailing zeros dropped."""
    assert format_gmacs(56_799_264_768) == "56.8 G"
    assert format_gmacs(49_551_507_456) == "49.55 G"
    assert format_gmacs(3_623_878_656) == "3.62 G"
    assert format_gmacs(5_300_000_000) == "5.3 G"
    assert format_gmacs(100 * 10**9) == "100 G"
    assert format_gmacs(2.5e9) == "2.5 G"  # a float (e.g. MACs per frame) works too
    assert format_gmacs(4_000_000) == "0 G" and format_gmacs(0) == "0 G"


def test_count_parameters_counts_shared_modules_once():
    a, b = nn.Linear(4, 3), nn.Conv2d(2, 5, 3)  # 15 and 95 parameters
    assert count_parameters() == 0
    assert count_parameters(a) == 15 and count_parameters(a, b) == 110
    assert count_parameters(a, a, nn.Sequential(a, b)) == 110  # shared: once each

    tied = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False))
    tied[1].weight = tied[0].weight
    assert count_parameters(tied) == 9

    class Holder:  # not a module: the modules it holds directly, nothing else
        def __init__(self):
            self.teacher, self.student = a, b
            self.alias = a
            self.tensor = torch.zeros(1000)
            self.hidden = [nn.Linear(10, 10)]  # inside a list: not looked into

    holder = Holder()
    assert count_parameters(holder) == 110
    assert count_parameters(holder, a, Holder()) == 110
    assert count_parameters(object(), "text", None) == 0

    class Counted:  # counts itself: taken as is
        teacher = a

        def parameter_count(self):
            return 7

    class CountedModule(nn.Linear):
        def parameter_count(self):
            return 1

    assert count_parameters(Counted()) == 7
    assert count_parameters(Counted(), a) == 22  # no sharing is seen through parameter_count()
    assert count_parameters(CountedModule(4, 4)) == 1


def test_counts_inside_inference_mode():
    import torch

    from fastv2v.generators.resnet import ResnetGenerator
    from fastv2v.metrics.profile import profile

    g = ResnetGenerator(ngf=4, n_blocks=1)
    expected = profile(g, torch.randn(1, 3, 16, 16)).macs_exact
    with torch.inference_mode():
        assert profile(g, torch.randn(1, 3, 16, 16)).macs_exact == expected > 0


def test_weighted_embedding_bag_is_counted():
    import torch
    import torch.nn.functional as F

    from fastv2v.metrics.profile import profile

    weight, idx = torch.randn(50, 8), torch.randint(0, 50, (12,))
    offsets = torch.arange(0, 12, 4)
    weighted = profile(lambda: F.embedding_bag(idx, weight, offsets, mode="sum", per_sample_weights=torch.rand(12)))
    plain = profile(lambda: F.embedding_bag(idx, weight, offsets, mode="sum"))
    assert weighted.macs_exact == 12 * 8 and plain.macs_exact == 0


@pytest.mark.parametrize("flags", [["--ngf", "0"], ["--ngf", "-5"], ["--input-nc", "0"], ["--output-nc", "-1"],
                                   ["--label-nc", "-1"], ["--hidden", "0", "--method", "shortcut"],
                                   ["--hidden", "-4", "--method", "shortcut"],
                                   ["--hidden", "6", "--method", "shortcut"],
                                   ["--arch", "resnet_0blocks"]])  # fmt: skip
def test_profile_refuses_impossible_widths_in_one_line(flags, capsys):
    from fastv2v.cli import main

    assert main(["profile", "--size", "32x32", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and (flags[0] in err or "n_blocks" in err), err


def test_build_generator_refuses_impossible_widths():
    from fastv2v.errors import UserError
    from fastv2v.generators import build_generator

    for config in ({"ngf": 0}, {"input_nc": -1}, {"label_nc": -1}, {"ngf": "32"}):
        with pytest.raises(UserError, match="cannot build a resnet_6blocks generator"):
            build_generator("resnet_6blocks", **config)
