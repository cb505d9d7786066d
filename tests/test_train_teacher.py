"""Teacher training: losses, discriminators, DiffAugment, exact resume, export round trip.

Everything runs on tiny models (ngf 4, one residual block, 32x32, batch 2) so the file stays
well under 30 s on two CPU cores.
"""

import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from fastv2v import UserError
from fastv2v.checkpoint import read_config
from fastv2v.generators import load_generator
from fastv2v.generators.discriminators import MultiscaleDiscriminator, NLayerDiscriminator
from fastv2v.train.diffaugment import DiffAugment
from fastv2v.train.losses import GANLoss, VGGPerceptualLoss, _vgg19_features, feature_matching_loss
from fastv2v.train.state import capture_rng_state, resumable_batches, restore_rng_state
from fastv2v.train.teacher import (
    TeacherTrainingConfig,
    build_optimizers,
    build_teacher_models,
    train_step,
    train_teacher,
)

LABELS = 5


def make_samples(n=6, size=32, seed=0):
    """Label-map -> image pairs: one-hot inputs and a target that is a fixed function of them
    (class colours), so there is something learnable."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.rand(LABELS, 3, generator=g) * 2 - 1
    samples = []
    for _ in range(n):
        ids = torch.randint(0, LABELS, (size // 8, size // 8), generator=g).repeat_interleave(8, 0).repeat_interleave(8, 1)
        one_hot = F.one_hot(ids, LABELS).permute(2, 0, 1).float()
        samples.append({"input": one_hot, "target": colours[ids].permute(2, 0, 1).contiguous()})
    return samples


def tiny_config(tmp_path, name="run", **overrides):
    base = dict(
        out_dir=str(tmp_path / name), arch="resnet_1blocks", generator={"ngf": 4, "label_nc": LABELS},
        size=(32, 32), batch=2, steps=4, ndf=8, num_D=2, n_layers_D=3, checkpoint_every=100,
        sample_every=2, seed=3,
    )  # fmt: skip
    base.update(overrides)
    return TeacherTrainingConfig(**base)


def test_discriminator_shapes_and_features():
    d = NLayerDiscriminator(6, ndf=8, n_layers=3)
    feats = d(torch.randn(1, 6, 64, 64))
    assert len(feats) == 5 and feats[-1].shape[1] == 1
    assert feats[-1].shape[-1] == 6  # pix2pix 70x70 PatchGAN on 64x64: 64->32->16->8->7->6
    md = MultiscaleDiscriminator(6, ndf=8, n_layers=3, num_D=3)
    out = md(torch.randn(2, 6, 32, 32))
    assert len(out) == 3 and all(len(scale) == 5 for scale in out)
    assert out[0][-1].shape[-1] > out[1][-1].shape[-1] > out[2][-1].shape[-1] > 0
    sn = NLayerDiscriminator(6, ndf=8, n_layers=2, norm="none", use_spectral_norm=True)
    assert sn(torch.randn(1, 6, 32, 32))[-1].shape[1] == 1


def test_gan_loss_modes():
    ones, zeros = torch.ones(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    lsgan = GANLoss("lsgan")
    assert lsgan(ones, True) == 0 and lsgan(zeros, False) == 0 and lsgan(zeros, True) == 1
    vanilla = GANLoss("vanilla")
    assert torch.isclose(vanilla(zeros, True), torch.log(torch.tensor(2.0)))
    assert vanilla(torch.full((1, 1, 2, 2), 20.0), True) < 1e-6
    hinge = GANLoss("hinge")
    assert hinge(torch.full((1, 1, 2, 2), 2.0), True) == 0 and hinge(torch.full((1, 1, 2, 2), -2.0), False) == 0
    assert hinge(torch.full((1, 1, 2, 2), 3.0), False, for_discriminator=False) == -3
    # multiscale outputs: the last feature of each scale is its prediction, scales are summed
    multi = [[torch.randn(1, 4, 3, 3), zeros], [torch.randn(1, 4, 2, 2), ones]]
    assert lsgan(multi, True) == lsgan(zeros, True) + lsgan(ones, True)
    with pytest.raises(UserError):
        GANLoss("wgan")


def test_feature_matching_pulls_only_the_fake():
    real = [[torch.randn(1, 4, 8, 8, requires_grad=True), torch.randn(1, 1, 4, 4)]] * 2
    fake = [[t.detach().clone().requires_grad_(True) for t in scale] for scale in real]
    assert feature_matching_loss(fake, real) == 0
    fake2 = [[torch.randn(1, 4, 8, 8, requires_grad=True), torch.randn(1, 1, 4, 4)] for _ in range(2)]
    loss = feature_matching_loss(fake2, real)
    expected = sum(0.5 * 4.0 * F.l1_loss(f[0], r[0]) for f, r in zip(fake2, real))
    assert torch.isclose(loss, expected)
    loss.backward()
    assert fake2[0][0].grad is not None and real[0][0].grad is None


def test_vgg_loss_needs_a_local_valid_file(tmp_path):
    missing = tmp_path / "vgg19.pth"
    with pytest.raises(UserError, match="vgg19.pth"):
        VGGPerceptualLoss(missing)
    junk = tmp_path / "junk.pth"
    torch.save({"weight": torch.zeros(3)}, junk)
    with pytest.raises(UserError, match="junk.pth"):
        VGGPerceptualLoss(junk)
    # a torchvision-layout file holding only the first blocks serves the shallow layers
    partial = tmp_path / "vgg_partial.pth"
    torch.save({f"features.{k}": v for k, v in _vgg19_features(6).state_dict().items()}, partial)
    with pytest.raises(UserError, match="vgg_partial.pth"):
        VGGPerceptualLoss(partial)  # default layers reach relu5_1
    vgg = VGGPerceptualLoss(partial, layers=("relu1_1", "relu2_1"), layer_weights=(1.0, 1.0))
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    assert vgg(x, x) == 0 and vgg(x, -x) > 0
    assert not any(p.requires_grad for p in vgg.parameters())


def test_diffaugment_same_geometry_on_pair_and_noop():
    x = torch.randn(3, 4, 16, 24)
    assert DiffAugment("")(x, x) == (x, x)
    geo = DiffAugment("translation,cutout")
    img, cond = geo(x.clone(), x.clone(), generator=torch.Generator().manual_seed(0))
    assert torch.equal(img, cond) and not torch.equal(img, x)
    # translation moves content, cutout zeros a hole: both visible, both identical on the pair
    aug = DiffAugment("color,translation,cutout")
    a1 = aug(x, x[:, :2], generator=torch.Generator().manual_seed(5))
    a2 = aug(x, x[:, :2], generator=torch.Generator().manual_seed(5))
    assert torch.equal(a1[0], a2[0]) and torch.equal(a1[1], a2[1])  # seeded -> reproducible
    geo_only = DiffAugment("translation,cutout").apply(
        aug.sample(3, 16, 24, generator=torch.Generator().manual_seed(5)), x, x[:, :2]
    )
    assert torch.equal(a1[1], geo_only[1])  # colour leaves the condition alone
    assert not torch.equal(a1[0][:, :2], a1[1])  # ... but changes the image
    # differentiable
    y = x.clone().requires_grad_(True)
    aug(y, generator=torch.Generator().manual_seed(1))[0].sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    with pytest.raises(UserError):
        DiffAugment("color,rotate")


def test_train_step_lowers_l1_on_a_fixed_batch(tmp_path):
    torch.manual_seed(0)
    config = tiny_config(tmp_path, lr=1e-3, diffaugment="color,translation,cutout")
    models = build_teacher_models(config)
    optimizers = build_optimizers(config, models)
    batch = torch.utils.data.default_collate(make_samples(2))
    rng = torch.Generator().manual_seed(0)
    history = [train_step(models, optimizers, batch, config, generator=rng) for _ in range(12)]
    assert set(history[0]) == {"G_GAN", "G_feat", "G_L1", "D_real", "D_fake"}
    assert all(np.isfinite(list(h.values())).all() for h in history)
    assert history[-1]["G_L1"] < 0.8 * history[0]["G_L1"]


def test_resume_is_exact_and_export_round_trips(tmp_path):
    data = make_samples(6)
    sample = data[:2]
    common = dict(diffaugment="color,translation,cutout", generator={"ngf": 4, "label_nc": LABELS, "use_dropout": True})
    full = train_teacher(tiny_config(tmp_path, "full", **common), data, sample_batch=sample, progress=False)

    part_config = tiny_config(tmp_path, "part", **common)
    train_teacher(part_config, data, sample_batch=sample, progress=False, max_steps=2)
    assert read_config(tmp_path / "part" / "generator.safetensors")["training"]["complete"] is False
    # a fresh process: different global RNG states, modules rebuilt inside train_teacher
    torch.manual_seed(1234), np.random.seed(1234), random.seed(1234)
    part_config.resume = True
    resumed = train_teacher(part_config, data, sample_batch=sample, progress=False)

    a, b = load_file(str(full)), load_file(str(resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log_a = (tmp_path / "full" / "log.jsonl").read_text().splitlines()
    log_b = (tmp_path / "part" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log_b] == [1, 2, 3, 4]
    assert log_a == log_b  # identical losses, step by step
    assert (tmp_path / "part" / "samples" / "step_000004.png").is_file()
    assert sorted(p.name for p in (tmp_path / "full" / "samples").iterdir()) == ["step_000002.png", "step_000004.png"]

    # (c) the export rebuilds itself from its own metadata
    g = load_generator(full)
    meta = read_config(full)
    assert meta["generator"] == g.config and g.label_nc == LABELS
    assert meta["training"]["step"] == 4 and meta["training"]["complete"] is True
    assert meta["training"]["config"]["diffaugment"] == "color,translation,cutout"
    assert all(torch.equal(v, a[k]) for k, v in g.state_dict().items())


def test_train_teacher_refuses_mismatches(tmp_path):
    data = make_samples(2)
    with pytest.raises(UserError, match="6-channel inputs|takes 6"):
        train_teacher(tiny_config(tmp_path, generator={"ngf": 4, "label_nc": 6}), data, progress=False)
    with pytest.raises(UserError, match="nothing to resume"):
        train_teacher(tiny_config(tmp_path, "none", resume=True), data, progress=False)
    config = tiny_config(tmp_path, "once", steps=1)
    train_teacher(config, data, progress=False)
    with pytest.raises(UserError, match="already holds"):
        train_teacher(config, data, progress=False)


def test_rng_state_round_trip_and_resumable_iterable():
    gen = torch.Generator().manual_seed(7)
    state = capture_rng_state({"aug": gen})
    first = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(2, generator=gen))
    restore_rng_state(state, {"aug": gen})
    again = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(2, generator=gen))
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert first[2] == again[2] and torch.equal(first[3], again[3])

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter({"input": torch.tensor([float(i)]), "target": torch.tensor([0.0])} for i in range(5))

    stream = resumable_batches(Stream(), 2)
    batches = [next(stream)["input"].flatten().tolist() for _ in range(4)]
    assert batches == [[0, 1], [2, 3], [4, 0], [1, 2]]  # batches run across epoch ends
    assert next(resumable_batches(Stream(), 2, start_step=3))["input"].flatten().tolist() == [1, 2]
    indexed = [{"input": torch.tensor([float(i)]), "target": torch.tensor([0.0])} for i in range(5)]
    ahead = resumable_batches(indexed, 2, seed=4)
    order = [next(ahead)["input"].flatten().tolist() for _ in range(5)]
    assert sorted(sum(order[:2], []) + order[2][:1]) == [0, 1, 2, 3, 4]  # a permutation per epoch
    assert next(resumable_batches(indexed, 2, seed=4, start_step=4))["input"].flatten().tolist() == order[4]


def test_resume_refuses_changed_settings_unless_forced(tmp_path):
    data = make_samples(2)
    train_teacher(tiny_config(tmp_path), data, progress=False, max_steps=1)

    def again(**changes):
        return train_teacher(tiny_config(tmp_path, resume=True, **changes), data, progress=False, max_steps=1)

    with pytest.raises(UserError) as caught:
        again(size=(64, 64), seed=4)
    message = str(caught.value)
    assert "started with --size 32x32 and --seed 3; you gave --size 64x64 and --seed 4" in message
    assert "--force" in message and "\n" not in message
    with pytest.raises(UserError, match="--lr 0.0002; you gave --lr 0.001"):
        again(lr=1e-3)
    with pytest.raises(UserError, match="with --ngf 4; you gave --ngf 8,"):
        again(generator={"ngf": 8, "label_nc": LABELS})
    with pytest.raises(UserError, match="--steps 4 and --decay-steps 0; you gave --steps 6 and --decay-steps 2"):
        again(steps=6, decay_steps=2)
    # free: where and how often files are written, loader workers; --steps while the lr is constant
    again(steps=5, checkpoint_every=1, sample_every=0, num_workers=0)
    # --force continues with the new settings
    again(steps=5, seed=4, force=True)


@pytest.mark.parametrize("command, target", [(["train", "teacher"], "fastv2v.train.teacher.train_teacher"),
                                             (["distill", "shortcut"], "fastv2v.train.shortcut.distill_shortcut"),
                                             (["distill", "student"], "fastv2v.train.student.distill_student")])
def test_force_option_reaches_the_config(command, target, monkeypatch, tmp_path):
    from fastv2v.cli import main

    seen = []
    monkeypatch.setattr(target, lambda config, *a, **k: seen.append(config.force) or tmp_path / "model.safetensors")
    monkeypatch.setattr("fastv2v.tasks.training_pairs", lambda *a, **k: make_samples(4))
    base = [*command, "--task", "scenes", "--out", str(tmp_path / "run"), "--quiet"]
    assert main(base) == 0 and main([*base, "--resume", "--force"]) == 0
    assert seen == [False, True]
