"""fast_head / fast_tail == generator.head / generator.tail up to float rounding (inference only:
the fast path gives no gradients and is never taken with autograd on, so none are checked)."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from fastv2v.generators import fast_parts
from fastv2v.generators.fast_parts import fast_head, fast_tail
from fastv2v.generators.resnet import GlobalGenerator, ResnetGenerator

TOL = 2e-5  # relative to the largest absolute output


def close(fast: torch.Tensor, plain: torch.Tensor) -> bool:
    return fast.shape == plain.shape and (fast - plain).abs().max().item() <= TOL * max(plain.abs().max().item(), 1.0)


def randomise_batchnorm(g: nn.Module) -> None:
    with torch.no_grad():
        for m in g.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()


def make(norm: str, padding: str, ngf: int, cls=ResnetGenerator, **kw) -> nn.Module:
    torch.manual_seed(0)
    g = cls(ngf=ngf, n_blocks=1, norm=norm, padding_type=padding, **kw).eval()
    randomise_batchnorm(g)
    return g


def check(g, x, **kw):
    head, tail = fast_head(g, min_elements=0, **kw), fast_tail(g, min_elements=0)
    with torch.no_grad():
        assert head.why_plain(x) is None
        a = g.head(x)
        f = g.body(a.clone())  # the plain body/tail may ReLU their input in place (norm "none")
        assert tail.why_plain(f) is None
        fast_a, fast_y = head(x), tail(f.clone())
        y = g.tail(f)
    assert close(fast_a, a), (fast_a - a).abs().max()
    assert close(fast_y, y), (fast_y - y).abs().max()
    return fast_a, fast_y


@pytest.mark.parametrize(
    "norm,padding,ngf,size",
    [
        (n, p, ngf, size)
        for (n, p), (ngf, size) in itertools.product(
            itertools.product(["instance", "batch", "none"], ["reflect", "zero"]),
            [(4, (16, 24)), (8, (20, 36)), (6, (17, 23))],
        )
    ],
)
def test_resnet_head_tail_match(norm, padding, ngf, size):
    g = make(norm, padding, ngf)
    x = torch.rand(2, 3, *size) * 2 - 1
    a, _ = check(g, x)
    assert a.is_contiguous()


@pytest.mark.parametrize("n_down,norm", [(2, "instance"), (3, "batch"), (4, "none"), (4, "instance")])
def test_global_generator(n_down, norm):
    torch.manual_seed(0)
    g = GlobalGenerator(ngf=4, n_downsampling=n_down, n_blocks=1, norm=norm).eval()
    randomise_batchnorm(g)
    check(g, torch.rand(1, 3, 32, 48) * 2 - 1)


def test_odd_feature_sizes_and_tiny_maps():
    g = make("instance", "reflect", 4)
    tail = fast_tail(g, min_elements=0)
    with torch.no_grad():
        for h, w in [(9, 13), (5, 4), (3, 7), (4, 4)]:
            f = torch.randn(1, 8, h, w) * 3 + 1
            assert close(tail(f), g.tail(f))
        f = torch.randn(1, 8, 1, 5)  # reflection pad 3 of a 2-row map: the plain modules raise, so does the fast tail
        with pytest.raises(RuntimeError):
            g.tail(f.clone())
        with pytest.raises(RuntimeError):
            tail(f)


def test_banded_paths(monkeypatch):
    """Row bands (made for big maps) at tiny sizes: several conv bands, GEMM bands of k = 7 and
    of 10 padded rows (the last one shorter)."""
    monkeypatch.setattr(fast_parts, "_CONV_BAND_MIN", 0)
    monkeypatch.setattr(fast_parts, "_CONV_BAND_BYTES", 3 * 24 * 4 * 8)  # 3 output rows of 24 x 8 channels
    for band_bytes in (1, 4 * 147 * 30 * 10):  # minimal bands: k rows; 10 rows (147 GEMM rows, width 30)
        monkeypatch.setattr(fast_parts, "_GEMM_BAND_BYTES", (band_bytes, band_bytes))
        for norm in ("instance", "batch", "none"):
            check(make(norm, "reflect", 8), torch.rand(1, 3, 20, 24) * 2 - 1)


@pytest.mark.parametrize("threads", [1, 2])
def test_serial_work_in_small_chunks(monkeypatch, threads):
    """The work cut into chunks that torch runs serially (statistics, the padded input, the last
    conv's sums and copies), with chunk sizes made tiny so that every loop runs many times; with
    1 thread the chunks are larger (every op is serial then)."""
    monkeypatch.setattr(fast_parts, "_SERIAL", 20)
    monkeypatch.setattr(fast_parts, "_ONE_THREAD_OP", 30)
    old, set_threads = torch.get_num_threads(), torch.set_num_threads
    set_threads(threads)
    try:
        for norm in ("instance", "batch", "none"):
            check(make(norm, "reflect", 8), torch.rand(1, 3, 20, 24) * 2 - 1)
        check(make("instance", "zero", 6), torch.rand(2, 3, 17, 23) * 2 - 1)
    finally:
        set_threads(old)


def test_final_conv_variants_and_channels_last():
    g = make("instance", "reflect", 4)
    x = torch.rand(1, 3, 24, 32) * 2 - 1
    with torch.no_grad():
        f = g.body(g.head(x))
        y = g.tail(f)
        for final in ("gemm", "onednn"):
            assert close(fast_tail(g, final=final, min_elements=0)(f), y)
        a = fast_head(g, channels_last=True, min_elements=0)(x)
    assert a.is_contiguous(memory_format=torch.channels_last)
    assert close(a, g.head(x).detach())


def test_multi_stage_tail_and_other_pads():
    """A tail with two upsampling stages, a replicate / zero final pad, a final conv without bias
    or Tanh (not upstream layouts)."""

    class Toy(nn.Module):
        def __init__(self, pad, bias=True, tanh=True):
            super().__init__()
            norm = nn.InstanceNorm2d
            self.tail = nn.Sequential(
                norm(16), nn.ReLU(True),
                nn.ConvTranspose2d(16, 8, 3, 2, 1, 1), norm(8), nn.ReLU(True),
                nn.ConvTranspose2d(8, 4, 3, 2, 1, 1), norm(4), nn.ReLU(True),
                pad, nn.Conv2d(4, 2, 5, bias=bias), *([nn.Tanh()] if tanh else []),
            )  # fmt: skip

    torch.manual_seed(0)
    f = torch.randn(1, 16, 6, 7)
    pads = (nn.ReflectionPad2d(2), nn.ReplicationPad2d(2), nn.ZeroPad2d(2), nn.ConstantPad2d(2, 0.5))
    toys = [Toy(pad) for pad in pads]
    toys.append(Toy(nn.ReflectionPad2d(2), bias=False, tanh=False))
    for toy in toys:
        toy.eval()
        for final in ("auto", "onednn"):
            tail = fast_tail(toy, final=final, min_elements=0)
            assert tail.unsupported is None and tail.use_gemm == (final == "auto")
            with torch.no_grad():
                assert close(tail(f), toy.tail(f)), (toy.tail[9], final)


def test_inference_mode_and_batch():
    g = make("instance", "reflect", 4)
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    head, tail = fast_head(g, min_elements=0), fast_tail(g, min_elements=0)
    with torch.inference_mode():
        a = head(x)
        y = tail(g.body(a))
        ref_a = g.head(x)
        ref_y = g.tail(g.body(ref_a))
    assert close(a, ref_a) and close(y, ref_y)
    with torch.no_grad():  # buffers made in inference mode are still usable outside it
        assert close(head(x), g.head(x))


def test_falls_back_to_plain():
    g = make("instance", "reflect", 4)
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    head = fast_head(g, min_elements=0)
    assert "autograd" in head.why_plain(x)  # grad mode: plain modules, gradients flow
    out = head(x.requires_grad_())
    out.sum().backward()
    assert g.model[1].weight.grad is not None
    x = x.detach()
    with torch.no_grad():
        assert "float32" in head.why_plain(x.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert "autocast" in head.why_plain(x)
            assert torch.equal(head(x), g.head(x))
        assert "small" in fast_head(g).why_plain(x)  # default size threshold
        g.model[2] = nn.BatchNorm2d(4).train()
        bn_head = fast_head(g, min_elements=0)
        assert "training" in bn_head.why_plain(x)
        assert torch.equal(bn_head(x), g.head(x))
        assert "meta" in head.why_plain(torch.empty(1, 3, 16, 16, device="meta"))


def test_unsupported_layers_run_plain():
    g = make("instance", "reflect", 4)
    g.model[2] = nn.GroupNorm(1, 4)
    head = fast_head(g, min_elements=0)
    assert head.unsupported and "GroupNorm" in head.unsupported
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(head(x), g.head(x))


def test_refresh_after_weight_changes():
    g = make("batch", "reflect", 4)
    head, tail = fast_head(g, min_elements=0), fast_tail(g, min_elements=0)
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        f = g.body(g.head(x))
        head(x), tail(f)
        g.model[1].weight.mul_(1.5)  # in place: version counter
        g.model[2].running_mean.add_(0.3)  # a BatchNorm buffer folded into the head's first conv
        g.load_state_dict({k: v * 0.9 for k, v in g.state_dict().items() if v.is_floating_point()}, strict=False)
        assert close(head(x), g.head(x))
        assert close(tail(f), g.tail(f))
        g.model[-2].weight.data = g.model[-2].weight.data * 2  # new storage
        assert close(tail(f), g.tail(f))
        g.model[-2].weight.data.mul_(0.5)  # through .data: not seen, refresh by hand
        tail.refresh()
        assert close(tail(f), g.tail(f))


def test_statistics_exact_on_hard_data():
    """Huge mean / tiny spread, constant channels, outliers, and merged row bands."""
    buf = fast_parts._Buffers()
    y = torch.full((20000, 5), 3.0)
    y[:, 1] += torch.randn(20000) * 1e-3
    y[:50, 2] = 1000.0
    y[:, 3] = torch.randn(20000) * 0.01 + 1e4
    y[:, 4] = torch.randn(20000) * 5 - 2
    y64 = y.double()
    mean_t, var_t = y64.mean(0), y64.var(0, unbiased=False)

    def ok(moments):
        n, mean, m2 = moments
        assert n == 20000
        std = var_t.sqrt().clamp_min(1e-6)
        assert ((mean.double() - mean_t).abs() / std).max() < 1e-2  # limited by fp32 inputs near 1e4
        assert ((m2.double() / n - var_t).abs() / var_t.clamp_min(1e-12)).max() < 1e-3

    ok(fast_parts._moments_rows(y, buf))
    ok(fast_parts._moments_planes(y.t().contiguous(), buf))
    merged = None
    for r0 in range(0, 20000, 3000):
        merged = fast_parts._merge_moments(merged, fast_parts._moments_rows(y[r0 : r0 + 3000], buf))
    ok(merged)


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_settings_never_changed(monkeypatch, threads):
    """A call must not touch process-wide thread settings (other Python threads may be running
    torch): the setters raise, and the counts are the same afterwards."""
    g = make("instance", "reflect", 4)
    head, tail = fast_head(g, min_elements=0), fast_tail(g, min_elements=0)
    x = torch.rand(1, 3, 24, 32) * 2 - 1
    old, set_threads = torch.get_num_threads(), torch.set_num_threads
    set_threads(threads)
    try:
        interop = torch.get_num_interop_threads()

        def forbidden(*args, **kwargs):
            raise AssertionError("a fast part changed a process-wide thread setting")

        for mod in (torch, torch._C):
            for name in ("set_num_threads", "set_num_interop_threads"):
                monkeypatch.setattr(mod, name, forbidden)
        with torch.no_grad():
            assert head.why_plain(x) is None
            a = head(x)
            f = g.body(a)
            assert tail.why_plain(f) is None
            y = tail(f)
            assert torch.get_num_threads() == threads and torch.get_num_interop_threads() == interop
            assert close(a, g.head(x)) and close(y, g.tail(f))
    finally:
        set_threads(old)  # the saved original: the patched one would raise


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_and_bf16_autocast_run_plain():
    g = make("instance", "reflect", 4).cuda()
    x = torch.rand(1, 3, 16, 16, device="cuda")
    head, tail = fast_head(g, min_elements=0), fast_tail(g, min_elements=0)
    with torch.no_grad():
        assert "device" in head.why_plain(x)
        assert torch.equal(head(x), g.head(x))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            a = g.head(x)
            assert torch.equal(head(x), a)
            assert torch.equal(tail(g.body(a)), g.tail(g.body(a)))
