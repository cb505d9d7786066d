"""Quality, temporal and perceptual metrics against known answers and independent formulas."""

import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fastv2v.errors import UserError
from fastv2v.metrics.perceptual import FeatureStats, FIDMeter, LPIPSMeter, frechet_distance, frechet_from_factor
from fastv2v.metrics.quality import MeanMeter, psnr, ssim
from fastv2v.metrics.temporal import TemporalMeter, tof, warping_error, warping_error_from_flow

H, W = 64, 96


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one thread


def texture(h, w, seed=0, cell=4):
    rng = np.random.default_rng(seed)
    base = rng.random((h // cell + 2, w // cell + 2, 3))
    img = cv2.resize(base, (w + 4 * cell, h + 4 * cell), interpolation=cv2.INTER_CUBIC)[:h, :w]
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def crop(big, dx, dy, m=8):
    """A window of ``big`` whose content appears moved by (+dx, +dy) relative to offset 0."""
    return big[m - dy : m - dy + H, m - dx : m - dx + W]


# ---------------------------------------------------------------------------- PSNR / SSIM


def test_psnr_known_values():
    a = texture(H, W)
    assert psnr(a, a) == math.inf
    b = a.astype(np.int16)
    b = np.where(b > 127, b - 10, b + 10).astype(np.uint8)  # |difference| = 10 everywhere
    assert psnr(a, b) == pytest.approx(20 * math.log10(255 / 10), abs=1e-12)
    assert psnr(a / 255.0, b / 255.0, data_range=1.0) == pytest.approx(20 * math.log10(25.5), abs=1e-9)
    with pytest.raises(ValueError):
        psnr(a, a[:-1])


def ssim_reference(a, b, data_range=255.0):
    """Straight from Wang et al.: scipy 'valid' correlation with the 11x11 sigma-1.5 window."""
    from scipy.signal import convolve2d

    i = np.arange(11) - 5
    g = np.exp(-(i**2) / (2 * 1.5**2))
    win = np.outer(g, g)
    win /= win.sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    a = np.atleast_3d(a.astype(np.float64))
    b = np.atleast_3d(b.astype(np.float64))
    vals = []
    for c in range(a.shape[2]):
        x, y = a[..., c], b[..., c]
        f = lambda z: convolve2d(z, win, mode="valid")  # noqa: E731
        mx, my = f(x), f(y)
        vx, vy, cxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
        m = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
        vals.append(m.mean())
    return float(np.mean(vals))


def test_ssim_matches_reference_formula():
    rng = np.random.default_rng(0)
    a = texture(H, W, 1)
    b = np.clip(a.astype(int) + rng.integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
    assert ssim(a, b) == pytest.approx(ssim_reference(a, b), abs=1e-6)
    assert ssim(a[..., 0], b[..., 0]) == pytest.approx(ssim_reference(a[..., 0], b[..., 0]), abs=1e-6)
    noise = rng.integers(0, 256, a.shape).astype(np.uint8)
    assert ssim(a, noise) == pytest.approx(ssim_reference(a, noise), abs=1e-6)
    assert ssim(a, a) == 1.0
    assert ssim(a, b) == pytest.approx(ssim(b, a), abs=1e-12)
    with pytest.raises(ValueError):
        ssim(a[:8, :8], b[:8, :8])


def test_mean_meter():
    m = MeanMeter()
    m.update(psnr=30.0, ssim=0.9)
    m.update({"psnr": 40.0, "ssim": None})
    m.update(psnr=float("nan"))
    m.update(psnr=10.0, weight=2)
    assert m.mean("psnr") == pytest.approx((30 + 40 + 20) / 4)
    assert m.mean("ssim") == pytest.approx(0.9)
    assert m.skipped == {"ssim": 1, "psnr": 1}
    assert m.mean("missing") is None
    assert set(m.mean()) == {"psnr", "ssim"}


# ---------------------------------------------------------------------------- temporal


def test_warping_error_known_cases():
    inp = texture(H + 16, W + 16, 0)
    out = texture(H + 16, W + 16, 1)  # the "translation": another texture that moves the same way
    a_in, b_in = crop(inp, 0, 0), crop(inp, 3, 0)
    a_out, b_out = crop(out, 0, 0), crop(out, 3, 0)
    assert warping_error(a_out, a_out, a_in, a_in) == pytest.approx(0.0, abs=1e-9)
    consistent = warping_error(a_out, b_out, a_in, b_in)
    frozen = warping_error(a_out, a_out, a_in, b_in)  # output did not follow the input's motion
    assert consistent < 1e-4
    assert frozen > 100 * consistent and frozen > 1e-2


def test_warping_error_from_flow_masks_and_resizes():
    prev = np.zeros((8, 10, 3), np.uint8)
    cur = prev.copy()
    cur[:, :5] = 255
    half = np.zeros((8, 10), bool)
    half[:, 5:] = True
    flow = np.zeros((8, 10, 2), np.float32)
    assert warping_error_from_flow(prev, cur, flow) == pytest.approx(0.5)
    assert warping_error_from_flow(prev, cur, flow, half) == 0.0
    assert warping_error_from_flow(prev, cur, flow[::2, ::2], half[::2, ::2]) == 0.0
    assert math.isnan(warping_error_from_flow(prev, cur, flow, np.zeros((8, 10), bool)))


@pytest.mark.parametrize("method", ["tecogan", "dis"])
def test_tof_known_cases(method):
    ref = texture(H + 16, W + 16, 0)
    out = texture(H + 16, W + 16, 1)
    r0, r1 = crop(ref, 0, 0), crop(ref, 3, 0)
    o0, o1 = crop(out, 0, 0), crop(out, 3, 0)
    assert tof(r0, r1, r0, r1, method=method) == 0.0
    assert tof(o0, o1, r0, r1, method=method) < 0.3  # same motion, different content
    assert tof(o0, o0, r0, r1, method=method) == pytest.approx(3.0, abs=0.3)  # frozen output


def test_temporal_meter_streams_a_video():
    inp = texture(H + 16, W + 16, 0)
    out = texture(H + 16, W + 16, 1)
    meter = TemporalMeter()
    for k in range(4):
        values = meter.update(crop(out, k, 0), inp=crop(inp, k, 0), ref=crop(inp, k, 0))
        assert set(values) == (set() if k == 0 else {"warping_error", "tof"})
    r = meter.result()
    assert r["pairs"] == 3
    assert r["warping_error"] < 1e-4
    assert r["tof"] < 0.3
    meter.new_video()
    assert meter.update(crop(out, 0, 0)) == {}
    assert meter.update(crop(out, 0, 0)) == {}  # no input, no reference: nothing measurable
    assert meter.result()["pairs"] == 4
    meter.reset()
    assert meter.result() == {"warping_error": None, "tof": None, "pairs": 0}


# ---------------------------------------------------------------------------- FID


def test_frechet_distance_closed_forms():
    # 1-D Gaussians: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(5.0, abs=1e-10)
    # diagonal covariances: |dmu|^2 + sum (sqrt(a) - sqrt(b))^2
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    expected = 5.0 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    for method in ("sqrtm", "eigh"):
        assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b), method=method) == pytest.approx(expected, abs=1e-9)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((50, 12)), 1.5 * rng.standard_normal((50, 12)) + 0.3
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    ref = frechet_distance(x.mean(0), s1, y.mean(0), s2, method="sqrtm")
    assert frechet_distance(x.mean(0), s1, y.mean(0), s2, method="eigh") == pytest.approx(ref, rel=1e-9)
    # fewer samples than dimensions: singular covariances, as with short videos
    x, y = rng.standard_normal((6, 40)), rng.standard_normal((6, 40)) + 0.1
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    ref = frechet_distance(x.mean(0), s1, y.mean(0), s2, method="sqrtm")
    assert frechet_distance(x.mean(0), s1, y.mean(0), s2, method="eigh") == pytest.approx(ref, rel=1e-6)
    assert frechet_distance(x.mean(0), s1, x.mean(0), s1, method="eigh") == pytest.approx(0.0, abs=1e-9)


def test_feature_stats_exact_then_streaming():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((9, 6)), rng.standard_normal((5, 6)) * 2
    st = FeatureStats(6)
    st.update(x[:4])
    mu, b = st.factor()  # still holding the rows: covariance by its factor
    np.testing.assert_allclose(b @ b.T, np.cov(x[:4], rowvar=False), atol=1e-12)
    st.update(x[4:])  # 9 > 6 rows: switches to running sums
    assert st.factor() is None
    mu, cov = st.mean_cov()
    np.testing.assert_allclose(mu, x.mean(0), atol=1e-12)
    np.testing.assert_allclose(cov, np.cov(x, rowvar=False), atol=1e-12)
    sy = FeatureStats(6)
    sy.update(y)
    my, by = sy.factor()
    ref = frechet_distance(mu, cov, y.mean(0), np.cov(y, rowvar=False))
    assert frechet_from_factor(my, by, mu, sigma2=cov) == pytest.approx(ref, rel=1e-6)  # sqrtm of a singular product
    sx4 = FeatureStats(6)
    sx4.update(x[:4])
    ref4 = frechet_distance(x[:4].mean(0), np.cov(x[:4], rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert frechet_from_factor(*sx4.factor(), my, b2=by) == pytest.approx(ref4, rel=1e-6)
    with pytest.raises(ValueError):
        FeatureStats(6).mean_cov()


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    """A torchvision Inception-v3 state dict with random weights and calibrated BN statistics.

    Default-initialised layers shrink activations to ~1e-9 by pool3; one train-mode pass with
    cumulative BN statistics keeps features O(1), like a real network.
    """
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    model = inception_v3(weights=None, aux_logits=True, init_weights=False)
    aux, model.AuxLogits = model.AuxLogits, None  # the aux head cannot run on 80x80 inputs
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 3, 80, 80) * 2 - 1)
    model.AuxLogits = aux
    path = tmp_path_factory.mktemp("fid") / "inception.pth"
    torch.save(model.state_dict(), path)
    return path


def frames(seed, n=8, lo=0, hi=256):
    return np.random.default_rng(seed).integers(lo, hi, (n, H, W, 3), dtype=np.uint8)


def test_fid_with_local_weights(inception_file):
    fid = FIDMeter(inception_file, image_size=80, method="eigh")
    assert fid.available and fid.variant == "torchvision"
    a, b = frames(0), frames(1, lo=0, hi=120)
    fid.update_real(a)
    fid.update_fake(list(a))  # any iterable of frames
    same = fid.compute()
    fid.reset()
    fid.update_real(a)
    fid.update_fake(b)
    different = fid.compute()
    assert different > 1.0
    assert abs(same) < 1e-6 * different


def test_fid_tf_port_variant_pooling(inception_file, tmp_path, monkeypatch):
    """A 1008-class file selects pytorch-fid's graph: only the pooling of the mixed blocks changes."""
    state = torch.load(inception_file, weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}
    state["fc.weight"] = torch.zeros(1008, 2048)
    state["fc.bias"] = torch.zeros(1008)
    path = tmp_path / "pt_inception.pth"
    torch.save(state, path)
    tf = FIDMeter(path, image_size=80, method="eigh")
    tv = FIDMeter(inception_file, image_size=80, method="eigh")
    assert tf.variant == "pytorch-fid"
    x = frames(2, n=2)
    assert not np.allclose(tf.features(x), tv.features(x))
    # Each patched block equals torchvision's own block with its average pool swapped for TF's.
    avg = F.avg_pool2d
    no_pad = lambda x, *a, **k: avg(x, *a, **{**k, "count_include_pad": False})  # noqa: E731
    as_max = lambda x, kernel_size, stride, padding, **k: F.max_pool2d(x, kernel_size, stride, padding)  # noqa: E731
    torch.manual_seed(1)
    blocks = [("Mixed_5b", 192, no_pad), ("Mixed_6b", 768, no_pad), ("Mixed_7b", 1280, no_pad), ("Mixed_7c", 2048, as_max)]
    for name, chans, pool in blocks:
        block = getattr(tf.model, name)
        inp = torch.randn(1, chans, 5, 5)
        with torch.no_grad():
            ours = block(inp)
            monkeypatch.setattr(F, "avg_pool2d", pool)
            theirs = type(block).forward(block, inp)
            monkeypatch.setattr(F, "avg_pool2d", avg)
            plain = type(block).forward(block, inp)
        torch.testing.assert_close(ours, theirs)
        assert not torch.allclose(ours, plain)


def test_fid_unavailable_and_bad_files(tmp_path):
    fid = FIDMeter(None)
    assert not fid.available and "weights" in fid.reason
    fid.update_real(frames(0, n=2))
    assert fid.compute() is None
    missing = tmp_path / "nope.pth"
    with pytest.raises(UserError, match="nope.pth"):
        FIDMeter(missing)
    wrong = tmp_path / "wrong.pth"
    torch.save({"features.0.weight": torch.zeros(3)}, wrong)
    with pytest.raises(UserError, match="wrong.pth"):
        FIDMeter(wrong)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="junk.pth"):
        FIDMeter(junk)


# ---------------------------------------------------------------------------- LPIPS


class _LpipsLike(nn.Module):
    """The lpips package's module layout (v0.1, AlexNet), written out independently.

    Its state dict has lpips' key names (``net.sliceK.N.*``, ``lin{i}.model.1.weight``) and its
    forward is lpips' definition, so it checks both the file layout and the arithmetic.
    """

    def __init__(self):
        super().__init__()
        from torchvision.models import alexnet

        with torch.device("meta"):  # skip the 58M-parameter classifier's initialisation
            feats = alexnet(weights=None).features
        feats.to_empty(device="cpu")
        for m in feats.modules():
            if isinstance(m, nn.Conv2d):
                m.reset_parameters()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.net = nn.Module()
        for k, (lo, hi) in enumerate([(0, 2), (2, 5), (5, 8), (8, 10), (10, 12)], start=1):
            s = nn.Sequential()
            for i in range(lo, hi):
                s.add_module(str(i), feats[i])
            setattr(self.net, f"slice{k}", s)
        self.lins = nn.ModuleList()
        for i, c in enumerate([64, 192, 384, 256, 256]):
            lin = nn.Module()
            lin.model = nn.Sequential(nn.Dropout(), nn.Conv2d(c, 1, 1, bias=False))
            nn.init.uniform_(lin.model[1].weight, 0.0, 1.0)
            setattr(self, f"lin{i}", lin)
            self.lins.append(lin)

    def forward(self, x, y):  # x, y in [-1, 1]
        hx, hy = (x - self.shift) / self.scale, (y - self.shift) / self.scale
        total = 0
        for k in range(1, 6):
            s = getattr(self.net, f"slice{k}")
            hx, hy = s(hx), s(hy)
            nx = hx / (torch.sqrt((hx**2).sum(1, keepdim=True)) + 1e-10)
            ny = hy / (torch.sqrt((hy**2).sum(1, keepdim=True)) + 1e-10)
            total = total + self.lins[k - 1].model((nx - ny) ** 2).mean(dim=(2, 3))
        return total.flatten()


@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory):
    torch.manual_seed(0)
    ref = _LpipsLike().eval()
    d = tmp_path_factory.mktemp("lpips")
    full = d / "lpips_alex_full.pth"
    torch.save(ref.state_dict(), full)
    heads = d / "alex.pth"  # the lpips package's heads file: lin{i}.model.1.weight only
    torch.save({f"lin{i}.model.1.weight": getattr(ref, f"lin{i}").model[1].weight.detach() for i in range(5)}, heads)
    backbone = d / "alexnet.pth"  # torchvision layout: features.N.*, classifier.* (ignored)
    tv = {f"features.{k.split('.', 2)[2]}": v for k, v in ref.state_dict().items() if k.startswith("net.")}
    tv["classifier.1.weight"] = torch.zeros(2, 2)  # not used: any shape
    torch.save(tv, backbone)
    return ref, full, heads, backbone


def test_lpips_matches_reference_layout(lpips_files):
    ref, full, heads, backbone = lpips_files
    a, b = frames(0, n=3), frames(1, n=3)
    x = torch.from_numpy(a).permute(0, 3, 1, 2).float() / 127.5 - 1
    y = torch.from_numpy(b).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        expected = ref(x, y).numpy()
    for meter in (LPIPSMeter(full), LPIPSMeter(heads, backbone_path=backbone)):
        assert meter.available and meter.variant == "lpips-v0.1"
        np.testing.assert_allclose(meter.distance(a, b), expected, rtol=1e-4)
        assert meter.distance(a[0], a[0])[0] == 0.0
        assert meter.update(a, b) == pytest.approx(expected.mean(), rel=1e-4)
        meter.update(a[0], a[0])
        assert meter.compute() == pytest.approx(expected.sum() / 4, rel=1e-4)
    baseline = LPIPSMeter(backbone)
    assert baseline.variant == "baseline" and baseline.distance(a, b).min() > 0


def test_lpips_unavailable_and_bad_files(lpips_files, tmp_path):
    _, _, heads, backbone = lpips_files
    m = LPIPSMeter(None)
    assert not m.available and m.distance(frames(0, 1), frames(1, 1)) is None and m.compute() is None
    with pytest.raises(UserError, match="alex.pth"):
        LPIPSMeter(heads)  # heads without a backbone
    with pytest.raises(UserError, match="alexnet.pth"):
        LPIPSMeter(heads, net="vgg", backbone_path=backbone)  # AlexNet weights for VGG
    with pytest.raises(UserError, match="missing.pth"):
        LPIPSMeter(tmp_path / "missing.pth")


def test_pickle_refused_by_weights_only_is_one_sentence(tmp_path):
    """torch's refusal is three paragraphs suggesting weights_only=False (unsafe); ours is one line."""
    import argparse

    from fastv2v.train.losses import VGGPerceptualLoss

    path = tmp_path / "pickled.pth"
    torch.save({"features.0.weight": torch.zeros(3), "extra": argparse.Namespace(a=1)}, path)
    for load in (FIDMeter, LPIPSMeter, VGGPerceptualLoss, lambda p: LPIPSMeter(None, backbone_path=p)):
        with pytest.raises(UserError) as caught:
            load(path)
        message = str(caught.value)
        assert message.startswith(f"{path} is not a plain weights file torch can load safely (weights_only)")
        assert "\n" not in message and "weights_only=False" not in message
