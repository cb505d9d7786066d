"""Generators: upstream key layout, upstream forward, old / DataParallel files, split equality."""

import re

import pytest
import torch
import torch.nn.functional as F

from fastv2v import UserError
from fastv2v.generators import (
    GlobalGenerator,
    ResnetGenerator,
    build_generator,
    infer_config,
    load_generator,
    save_generator,
)


def upstream_resnet_forward(state, x, n_blocks, eps=1e-5):
    """pytorch-CycleGAN-and-pix2pix's ResnetGenerator (InstanceNorm, reflect), written from its
    published definition with functional ops only, reading weights by upstream key names."""

    def conv(h, i, **kw):
        return F.conv2d(h, state[f"{i}.weight"], state.get(f"{i}.bias"), **kw)

    def inorm(h):
        return F.instance_norm(h, eps=eps)

    h = F.relu(inorm(conv(F.pad(x, (3, 3, 3, 3), mode="reflect"), "model.1")))
    h = F.relu(inorm(conv(h, "model.4", stride=2, padding=1)))
    h = F.relu(inorm(conv(h, "model.7", stride=2, padding=1)))
    for b in range(10, 10 + n_blocks):
        r = F.relu(inorm(conv(F.pad(h, (1, 1, 1, 1), mode="reflect"), f"model.{b}.conv_block.1")))
        r = inorm(conv(F.pad(r, (1, 1, 1, 1), mode="reflect"), f"model.{b}.conv_block.5"))
        h = h + r
    up = 10 + n_blocks
    for i in (up, up + 3):
        h = F.conv_transpose2d(h, state[f"model.{i}.weight"], state[f"model.{i}.bias"], stride=2, padding=1, output_padding=1)
        h = F.relu(inorm(h))
    h = conv(F.pad(h, (3, 3, 3, 3), mode="reflect"), f"model.{up + 7}")
    return torch.tanh(h)


@pytest.mark.parametrize("n_blocks", [6, 9])
def test_resnet_keys_are_upstream(n_blocks):
    keys = list(ResnetGenerator(ngf=16, n_blocks=n_blocks).state_dict())
    first_block, last = 10, 10 + n_blocks
    expected = ["model.1.weight", "model.1.bias", "model.4.weight", "model.4.bias", "model.7.weight", "model.7.bias"]
    for b in range(first_block, last):
        expected += [f"model.{b}.conv_block.{i}.{p}" for i in (1, 5) for p in ("weight", "bias")]
    expected += [f"model.{i}.{p}" for i in (last, last + 3, last + 7) for p in ("weight", "bias")]
    assert keys == expected


@pytest.mark.parametrize("n_blocks", [6, 9])
def test_resnet_matches_independent_upstream_forward(n_blocks):
    torch.manual_seed(0)
    g = ResnetGenerator(ngf=16, n_blocks=n_blocks).eval()
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        ours = g(x)
        ref = upstream_resnet_forward(g.state_dict(), x, n_blocks)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_parameter_counts_match_published():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert round(count(ResnetGenerator(n_blocks=9)) / 1e6, 2) == 11.38
    assert round(count(ResnetGenerator(n_blocks=6)) / 1e6, 2) == 7.84


def test_old_format_and_dataparallel_checkpoint_loads(tmp_path):
    torch.manual_seed(1)
    g = ResnetGenerator(ngf=16, n_blocks=6).eval()
    state = {f"module.{k}": v for k, v in g.state_dict().items()}
    for i in (2, 5, 8, 17, 20):  # old InstanceNorm files carry running stats upstream drops
        state[f"module.model.{i}.running_mean"] = torch.zeros(1)
        state[f"module.model.{i}.running_var"] = torch.ones(1)
        state[f"module.model.{i}.num_batches_tracked"] = torch.tensor(0)
    state["module.model.10.conv_block.2.running_mean"] = torch.zeros(1)
    path = tmp_path / "latest_net_G_A.pth"
    torch.save(state, path)
    loaded = load_generator(path)
    assert loaded.config["arch"] == "resnet_6blocks" and loaded.config["ngf"] == 16
    assert not loaded.training
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), g(x))


@pytest.mark.parametrize(
    "make",
    [
        lambda: ResnetGenerator(input_nc=1, output_nc=3, ngf=8, n_blocks=3, norm="batch", use_dropout=True),
        lambda: ResnetGenerator(ngf=8, n_blocks=2, padding_type="zero"),
        lambda: ResnetGenerator(ngf=8, n_blocks=2, norm="none"),
        lambda: GlobalGenerator(input_nc=3, ngf=4, n_downsampling=3, n_blocks=2),
        lambda: GlobalGenerator(input_nc=3, ngf=4, n_downsampling=4, n_blocks=3, norm="batch"),
    ],
)
def test_architecture_is_inferred_from_tensors(make):
    g = make()
    inferred = infer_config(g.state_dict())
    rebuilt = build_generator(inferred["arch"], **inferred)
    assert rebuilt.state_dict().keys() == g.state_dict().keys()
    assert all(rebuilt.state_dict()[k].shape == v.shape for k, v in g.state_dict().items())


def test_named_architecture_that_does_not_fit_names_the_keys(tmp_path):
    path = tmp_path / "g.pth"
    torch.save(ResnetGenerator(ngf=8, n_blocks=6).state_dict(), path)
    with pytest.raises(UserError, match=r"g\.pth does not fit architecture resnet_9blocks \(missing keys model\.16"):
        load_generator(path, arch="resnet_9blocks")


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("hello")
    with pytest.raises(UserError, match="notes.pth could not be read"):
        load_generator(path)
    with pytest.raises(UserError, match="does not exist"):
        load_generator(tmp_path / "missing.pth")


@pytest.mark.parametrize(
    "g",
    [
        ResnetGenerator(ngf=8, n_blocks=6),
        ResnetGenerator(ngf=8, n_blocks=9),
        GlobalGenerator(label_nc=5, ngf=4, n_downsampling=3, n_blocks=2, use_instance=True),
    ],
    ids=["resnet6", "resnet9", "global"],
)
def test_split_recomposes_forward_exactly(g):
    g.eval()
    x = torch.randn(1, g.input_nc, 32, 32)
    with torch.no_grad():
        a = g.head(x)
        f = g.body(a)
        assert a.shape[1] == f.shape[1] == g.feature_channels
        assert a.shape[-2:] == f.shape[-2:] == (16, 16)
        assert torch.equal(g.tail(f), g(x))


def test_resnet_split_indices_follow_shortcut_v2v():
    assert ResnetGenerator(n_blocks=6).split == (5, 17)
    assert ResnetGenerator(n_blocks=9).split == (5, 20)


def test_label_input_is_one_hot_with_instance_edges():
    g = GlobalGenerator(label_nc=4, ngf=4, n_downsampling=2, n_blocks=1, use_instance=True)
    labels = torch.zeros(1, 4, 4, dtype=torch.uint8)
    labels[0, :, 2:] = 3
    x = g.encode_input(labels)
    assert x.shape == (1, 5, 4, 4)
    assert torch.equal(x[0, 3], (labels[0] == 3).float())
    assert torch.equal(x[0, 4, 0], torch.tensor([0.0, 1.0, 1.0, 0.0]))  # boundary on both sides


def test_image_input_matches_upstream_normalisation():
    g = ResnetGenerator(ngf=4, n_blocks=1)
    frame = torch.tensor([[[[0, 128, 255]]]], dtype=torch.uint8)
    x = g.encode_input(frame)
    torch.testing.assert_close(x.flatten(), (torch.tensor([0.0, 128, 255]) / 255 - 0.5) / 0.5)


def test_safetensors_round_trip_describes_itself(tmp_path):
    g = GlobalGenerator(label_nc=6, ngf=4, n_downsampling=3, n_blocks=1).eval()
    path = tmp_path / "teacher.safetensors"
    save_generator(path, g)
    loaded = load_generator(path)
    assert loaded.config == g.config
    x = g.encode_input(torch.randint(0, 6, (1, 16, 16)))
    with torch.no_grad():
        assert torch.equal(loaded(x), g(x))
    assert re.match(r"global", loaded.config["arch"])
