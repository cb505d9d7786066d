"""vid2vid ``CompositeGenerator`` checkpoints: loaded, inferred and run exactly like the official code.

The reference is a plain transcription of the official forward pass and test loop (sections
3-9 of shared/reference/vid2vid.md), written here independently of ``fastv2v``: its own layers
under the official names, norm layers in training mode as the official test script leaves them,
a linspace grid warp with ``align_corners=True``. Its state dicts are saved with ``torch.save``
like an official ``latest_net_G0.pth`` and loaded by our loader with no architecture given.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastv2v.errors import UserError
from fastv2v.generators import load_generator, save_generator
from fastv2v.generators.vid2vid import run_sequence

H, W = 16, 32


# --- the official generator, transcribed ----------------------------------------------------


class RefBlock(nn.Module):
    def __init__(self, dim, norm):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), norm(dim), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), norm(dim),
        )  # fmt: skip

    def forward(self, x):
        return x + self.conv_block(x)


class RefComposite(nn.Module):
    def __init__(self, input_nc_g, output_nc, prev_output_nc, ngf, n, nb, fg, no_flow, norm):
        super().__init__()
        if norm == "batch":
            norm_layer = nn.BatchNorm2d
        else:
            norm_layer = functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=True)
        relu = nn.ReLU(True)
        self.fg, self.no_flow = fg, no_flow
        if fg:
            ngf_indv = ngf // 2 if n > 2 else ngf
            down = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc_g, ngf_indv, 7), norm_layer(ngf_indv), relu]
            for i in range(n):
                m = 2**i
                down += [nn.Conv2d(ngf_indv * m, ngf_indv * m * 2, 3, 2, 1), norm_layer(ngf_indv * m * 2), relu]
            self.indv_down = nn.Sequential(*down)
            self.indv_res = nn.Sequential(*[RefBlock(ngf_indv * 2**n, norm_layer) for _ in range(nb)])
            up = []
            for i in range(n):
                m = 2 ** (n - i)
                up += [nn.ConvTranspose2d(ngf_indv * m, ngf_indv * m // 2, 3, 2, 1, output_padding=1),
                       norm_layer(ngf_indv * m // 2), relu]  # fmt: skip
            self.indv_up = nn.Sequential(*up)
            self.indv_final = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(ngf_indv, output_nc, 7), nn.Tanh())
        seg = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc_g, ngf, 7), norm_layer(ngf), relu]
        for i in range(n):
            m = 2**i
            seg += [nn.Conv2d(ngf * m, ngf * m * 2, 3, 2, 1), norm_layer(ngf * m * 2), relu]
        dim = ngf * 2**n
        seg += [RefBlock(dim, norm_layer) for _ in range(nb - nb // 2)]
        img = [nn.ReflectionPad2d(3), nn.Conv2d(prev_output_nc, ngf, 7), norm_layer(ngf), relu]
        img += copy.deepcopy(seg[4:])
        res = [RefBlock(dim, norm_layer) for _ in range(nb // 2)]
        up = []
        for i in range(n):
            m = 2 ** (n - i)
            up += [nn.ConvTranspose2d(ngf * m, ngf * m // 2, 3, 2, 1, output_padding=1), norm_layer(ngf * m // 2), relu]
        self.model_down_seg = nn.Sequential(*seg)
        self.model_down_img = nn.Sequential(*img)
        self.model_res_img = nn.Sequential(*res)
        self.model_up_img = nn.Sequential(*up)
        self.model_final_img = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh())
        if not no_flow:
            self.model_res_flow = nn.Sequential(*copy.deepcopy(res))
            self.model_up_flow = nn.Sequential(*copy.deepcopy(up))
            self.model_final_flow = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(ngf, 2, 7))
            self.model_final_w = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(ngf, 1, 7), nn.Sigmoid())

    def forward(self, input, img_prev, mask, use_raw_only):
        downsample = self.model_down_seg(input) + self.model_down_img(img_prev)
        img_feat = self.model_up_img(self.model_res_img(downsample))
        img_raw = self.model_final_img(img_feat)
        flow = weight = flow_feat = img_fg_feat = None
        if not self.no_flow:
            flow_feat = self.model_up_flow(self.model_res_flow(downsample))
            flow = self.model_final_flow(flow_feat) * 20
            weight = self.model_final_w(flow_feat)
        if use_raw_only or self.no_flow:
            img_final = img_raw
        else:
            img_warp = ref_resample(img_prev[:, -3:], flow)
            weight_ = weight.expand_as(img_raw)
            img_final = img_raw * weight_ + img_warp * (1 - weight_)
        if self.fg:
            img_fg_feat = self.indv_up(self.indv_res(self.indv_down(input)))
            img_fg = self.indv_final(img_fg_feat)
            mask = mask.expand_as(img_raw)
            img_final = img_fg * mask + img_final * (1 - mask)
            img_raw = img_fg * mask + img_raw * (1 - mask)
        return img_final, flow, weight, img_raw, img_feat, flow_feat, img_fg_feat


def ref_resample(image, flow):
    b, _, h, w = flow.shape
    grid = torch.zeros(b, 2, h, w)
    grid[:, 0] = torch.linspace(-1.0, 1.0, w).view(1, 1, w).expand(b, h, w)
    grid[:, 1] = torch.linspace(-1.0, 1.0, h).view(1, h, 1).expand(b, h, w)
    flow = torch.cat([flow[:, 0:1, :, :] / ((w - 1.0) / 2.0), flow[:, 1:2, :, :] / ((h - 1.0) / 2.0)], dim=1)
    final_grid = (grid + flow).permute(0, 2, 3, 1)
    return F.grid_sample(image, final_grid, mode="bilinear", padding_mode="border", align_corners=True)


@torch.no_grad()
def ref_loop(net, labels, t_g, fg_labels, real_prev=None):
    """test.py + Vid2VidModelG.inference for one sequence (--no_first_img when real_prev is None)."""
    _, _, h, w = labels.shape
    fake_b_prev, outputs = None, []
    for k in range(labels.shape[0] - t_g + 1):
        real_a = labels[k : k + t_g]
        is_first = fake_b_prev is None
        if is_first:
            fake_b_prev = torch.zeros(t_g - 1, 3, h, w) if real_prev is None else real_prev
        mask = real_a[-1, fg_labels].sum(dim=0, keepdim=True).clamp(0, 1) if net.fg else None
        fake_b = net(real_a.reshape(1, -1, h, w), fake_b_prev.reshape(1, -1, h, w), mask,
                     real_prev is None and is_first)[0]  # fmt: skip
        fake_b_prev = torch.cat([fake_b_prev[1:], fake_b])
        outputs.append(fake_b[0])
    return torch.stack(outputs)


def ref_encode(label_maps, label_nc, use_instance):
    """One-hot label frames, plus pix2pixHD's instance-boundary channel after the labels."""
    one_hot = F.one_hot(label_maps.long(), label_nc).permute(0, 3, 1, 2).float()
    if not use_instance:
        return one_hot
    t = label_maps
    edge = torch.zeros_like(t, dtype=torch.bool)
    edge[:, :, 1:] |= t[:, :, 1:] != t[:, :, :-1]
    edge[:, :, :-1] |= t[:, :, 1:] != t[:, :, :-1]
    edge[:, 1:, :] |= t[:, 1:, :] != t[:, :-1, :]
    edge[:, :-1, :] |= t[:, 1:, :] != t[:, :-1, :]
    return torch.cat([one_hot, edge.unsqueeze(1).float()], dim=1)


# --- variants -------------------------------------------------------------------------------

BASE = dict(ngf=4, n=2, nb=2, norm="batch", no_flow=False, fg=False, label_nc=0, use_instance=False, t_g=3)
VARIANTS = {
    "batch-image": {},
    "instance": dict(norm="instance"),
    "no_flow": dict(no_flow=True),
    "labels-instance": dict(label_nc=5, use_instance=True),
    "fg-labels": dict(label_nc=28, fg=True, n=3, ngf=8, nb=1),  # default fg_labels (26); ngf_indv = ngf // 2
    "odd-blocks": dict(nb=3, t_g=2),
    "module-prefix": dict(norm="instance", prefix=True),
    "no-num_batches_tracked": dict(drop_nbt=True, label_nc=4),
}


def _make_reference(spec, seed=0):
    torch.manual_seed(seed)
    frame_nc = spec["label_nc"] + int(spec["use_instance"]) if spec["label_nc"] else 3
    net = RefComposite(frame_nc * spec["t_g"], 3, 3 * (spec["t_g"] - 1), spec["ngf"], spec["n"], spec["nb"],
                       spec["fg"], spec["no_flow"], spec["norm"])  # fmt: skip
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.dim() == 1 and name.endswith(".weight"):
                p.uniform_(0.5, 1.5)  # BatchNorm scales
            elif p.dim() == 1:
                p.normal_(0, 0.2)  # conv and BatchNorm shifts
        for name, b in net.named_buffers():
            if name.endswith("running_mean"):
                b.normal_(0, 0.5)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
        if not spec["no_flow"]:
            net.model_final_flow[1].weight.mul_(0.1)  # flows of a few pixels: interpolation, not just clamping
    return net.train(), frame_nc


def _save_official(net, path, spec):
    state = {k: v.clone() for k, v in net.state_dict().items()}
    if spec.get("drop_nbt"):
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    if spec.get("prefix"):
        state = {f"module.{k}": v for k, v in state.items()}
    torch.save(state, path)


def _labels(spec, frame_nc, frames, seed=1):
    """Encoded label frames ``T x C x H x W`` for both implementations, and the raw frames."""
    g = torch.Generator().manual_seed(seed)
    if not spec["label_nc"]:
        raw = torch.randint(0, 256, (frames, H, W, 3), generator=g, dtype=torch.uint8)
        return raw.permute(0, 3, 1, 2).float() / 127.5 - 1, raw
    raw = torch.randint(0, spec["label_nc"], (frames, H // 4, W // 4), generator=g)
    raw = raw.repeat_interleave(4, 1).repeat_interleave(4, 2)  # blocks, so instance edges are sparse
    if spec["fg"]:
        raw[:, : H // 2, : W // 2] = 26
    return ref_encode(raw, spec["label_nc"], spec["use_instance"]), raw


@pytest.fixture(params=list(VARIANTS), ids=list(VARIANTS))
def variant(request, tmp_path):
    spec = {**BASE, **VARIANTS[request.param]}
    net, frame_nc = _make_reference(spec)
    path = tmp_path / "latest_net_G0.pth"
    _save_official(net, path, spec)
    extra = {"label_nc": spec["label_nc"]} if spec["label_nc"] else {}
    return spec, net, frame_nc, load_generator(path, **extra), path


def _close(a, b, tol):
    assert (a is None) == (b is None)
    if a is not None:
        assert a.shape == b.shape and (a - b).abs().max().item() <= tol, (a - b).abs().max().item()


def test_config_is_inferred(variant):
    spec, _, frame_nc, g, _ = variant
    expected = dict(arch="vid2vid", input_nc=frame_nc, output_nc=3, n_frames_G=spec["t_g"], ngf=spec["ngf"],
                    n_downsample_G=spec["n"], n_blocks=spec["nb"], norm=spec["norm"], no_flow=spec["no_flow"],
                    fg=spec["fg"], label_nc=spec["label_nc"], use_instance=spec["use_instance"])  # fmt: skip
    assert {k: g.config[k] for k in expected} == expected
    assert g.size_multiple == 2 ** spec["n"] and not g.training


@torch.no_grad()
def test_each_call_matches_the_official_forward(variant):
    spec, net, frame_nc, g, _ = variant
    labels, _ = _labels(spec, frame_nc, spec["t_g"])
    x = labels.reshape(1, -1, H, W)
    prev = torch.rand(1, 3 * (spec["t_g"] - 1), H, W) * 2 - 1
    mask = labels[-1, [26]].sum(0, keepdim=True).clamp(0, 1) if spec["fg"] else None
    for raw_only in (False, True):
        ours = g(x, prev, use_raw_only=raw_only)
        ref = net(x, prev, mask, raw_only)
        for i, tol in ((0, 1e-4), (2, 1e-4), (3, 1e-4), (1, 1e-3)):  # img_final, weight, img_raw, flow
            _close(ours[i], ref[i], tol)
        assert (ours[6] is None) == (not spec["fg"])


@pytest.mark.parametrize("seeded", [False, True], ids=["no_first_img", "given-previous"])
def test_run_sequence_matches_the_official_loop(variant, seeded):
    spec, net, frame_nc, g, _ = variant
    labels, raw = _labels(spec, frame_nc, spec["t_g"] + 3)
    if spec["label_nc"]:
        assert torch.equal(g.encode_input(raw), labels)
    else:
        assert torch.allclose(g.encode_input(raw), labels, atol=1e-6)
    previous = torch.rand(spec["t_g"] - 1, 3, H, W) * 2 - 1 if seeded else None
    ours = run_sequence(g, labels, previous)
    ref = ref_loop(net, labels, spec["t_g"], [26], previous)
    assert ours.shape == (4, 3, H, W)
    _close(ours, ref, 1e-4)


@torch.no_grad()
def test_running_stats_selects_the_checkpoint_statistics(tmp_path):
    for norm in ("batch", "instance"):
        spec = {**BASE, "norm": norm}
        net, _ = _make_reference(spec)
        path = tmp_path / f"{norm}.pth"
        _save_official(net, path, spec)
        g = load_generator(path, running_stats=True)
        x, prev = torch.randn(1, 9, H, W), torch.rand(1, 6, H, W) * 2 - 1
        _close(g(x, prev)[0], net.eval()(x, prev, None, False)[0], 1e-4)
        assert (g(x, prev)[0] - load_generator(path)(x, prev)[0]).abs().max() > 1e-3


@torch.no_grad()
def test_safetensors_round_trip_and_arch_given(variant, tmp_path):
    spec, _, _, g, path = variant
    out = tmp_path / "g.safetensors"
    save_generator(out, g)
    again = load_generator(out)
    assert again.config == g.config
    extra = {"label_nc": spec["label_nc"]} if spec["label_nc"] else {}
    named = load_generator(path, arch="vid2vid", **extra)
    x = torch.randn(1, g.input_nc * g.n_frames_G, H, W)
    prev = torch.randn(1, 3 * (g.n_frames_G - 1), H, W)
    for other in (again, named):
        assert torch.equal(other(x, prev)[0], g(x, prev)[0])
        assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), g.state_dict().values()))


def test_profile_counts_both_inputs(tmp_path, capsys):
    from fastv2v.cli import main
    from fastv2v.metrics.profile import profile

    spec = dict(BASE)
    net, _ = _make_reference(spec)
    path = tmp_path / "latest_net_G0.pth"
    _save_official(net, path, spec)
    g = load_generator(path)
    meta = {"device": "meta"}
    p = profile(g, torch.empty(1, 9, H, W, **meta), torch.empty(1, 6, H, W, **meta))
    assert p.macs_exact == profile(g, torch.randn(1, 9, H, W), torch.randn(1, 6, H, W)).macs_exact
    assert 0 < p.macs_exact < p.macs_paper  # transposed convs cost more in the paper convention
    assert main(["profile", "--model", str(path), "--size", f"{H}x{W}"]) == 0
    text = capsys.readouterr().out
    assert "vid2vid" in text and "exact" in text and "paper" in text


# --- refusals ------------------------------------------------------------------------------


def _official_state(**changes):
    spec = {**BASE, **changes}
    net, _ = _make_reference(spec)
    return spec, dict(net.state_dict())


def test_partial_file_is_refused_naming_the_keys(tmp_path):
    _, state = _official_state()
    del state["model_final_img.1.bias"], state["model_up_flow.3.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(UserError, match=r"missing keys model_final_img\.1\.bias, model_up_flow\.3\.weight"):
        load_generator(tmp_path / "partial.pth")
    del state["model_down_seg.1.weight"]
    torch.save(state, tmp_path / "no_seg.pth")
    with pytest.raises(UserError, match=r"lacks the vid2vid key model_down_seg\.1\.weight"):
        load_generator(tmp_path / "no_seg.pth")


def test_mis_shaped_key_is_refused(tmp_path):
    _, state = _official_state()
    state["model_up_img.3.weight"] = torch.zeros(8, 5, 3, 3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(UserError, match=r"mis-shaped keys model_up_img\.3\.weight \(8, 5, 3, 3\) vs \(8, 4, 3, 3\)"):
        load_generator(tmp_path / "bad.pth")


def test_label_nc_that_contradicts_the_channels_is_refused(tmp_path):
    _, state = _official_state(label_nc=5, use_instance=True)
    torch.save(state, tmp_path / "labels.pth")
    with pytest.raises(UserError, match="6 channels per frame, not label_nc 9"):
        load_generator(tmp_path / "labels.pth", label_nc=9)


def test_bad_input_is_refused_in_one_sentence(tmp_path):
    _, state = _official_state(label_nc=5)
    torch.save(state, tmp_path / "labels.pth")
    g = load_generator(tmp_path / "labels.pth", label_nc=5)
    bad_id = torch.zeros(3, H, W, dtype=torch.long)
    bad_id[0, 0, 0] = 9
    with pytest.raises(UserError, match="class ID 9 but this model has 5 classes"):
        g.encode_input(bad_id)
    with pytest.raises(UserError, match="multiples of 4"):
        g.encode_input(torch.zeros(3, H, W - 2, dtype=torch.long))
    with pytest.raises(UserError, match="at least 3 frames"):
        run_sequence(g, torch.zeros(2, 5, H, W))


def test_damaged_vid2vid_metadata_is_refused(tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    from fastv2v.checkpoint import CONFIG_KEY

    _, state = _official_state()
    torch.save(state, tmp_path / "g.pth")
    save_generator(tmp_path / "g.safetensors", load_generator(tmp_path / "g.pth"))
    config = {"kind": "generator", "generator": load_generator(tmp_path / "g.safetensors").config}
    for key, value in (("n_frames_G", 1), ("norm", "none"), ("fg_labels", "26"), ("use_instance", True)):
        edited = {**config, "generator": {**config["generator"], key: value}}
        save_file(load_file(str(tmp_path / "g.safetensors")), str(tmp_path / "bad.safetensors"),
                  metadata={CONFIG_KEY: json.dumps(edited)})  # fmt: skip
        with pytest.raises(UserError, match=f"is damaged: .*{key}"):
            load_generator(tmp_path / "bad.safetensors")
