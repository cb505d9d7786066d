"""Shortcut-V2V model files: the bundle round trip, teacher checks, the official-code import
(equal to an independent transcription of the official forward), the CLI, and the distiller."""

import numpy as np
import pytest
import torch

import fastv2v
from fastv2v import UserError
from fastv2v.cli import main
from fastv2v.generators import ResnetGenerator, save_generator
from fastv2v.methods.shortcut import ShortcutBlock, ShortcutMethod
from fastv2v.methods.shortcut.official import import_official, infer_block_config
from fastv2v.methods.shortcut.model_file import ShortcutModel, load_shortcut, save_shortcut, teacher_fingerprint

from conftest import run_online

from test_shortcut_block import official_forward, randomise

C, HID = 16, 8  # ngf 8 teacher -> 16 feature channels



def make_teacher(seed=0, ngf=8):
    torch.manual_seed(seed)
    g = ResnetGenerator(ngf=ngf, n_blocks=2).eval()
    with torch.no_grad():  # float16-exact weights, as a shipped teacher has
        for p in g.parameters():
            p.copy_(p.half().float())
    return g


def make_block(seed=2):
    torch.manual_seed(seed)
    return randomise(ShortcutBlock(C, HID), seed=seed).eval()


def clip(n, seed, size=(16, 16)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 3, *size, generator=g) for _ in range(n)]


@pytest.fixture
def bundle_file(tmp_path):
    path = tmp_path / "shortcut.safetensors"
    save_shortcut(path, ShortcutModel(make_teacher(), make_block(), interval=2))
    return path


def test_bundle_round_trip_is_exact_and_compact(bundle_file):
    teacher, block = make_teacher(), make_block()
    model = fastv2v.load_model(bundle_file)
    assert isinstance(model, ShortcutModel) and model.interval == 2
    for a, b in ((model.teacher, teacher), (model.block, block)):
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert ka == kb and torch.equal(va, vb)
    from safetensors import safe_open

    with safe_open(str(bundle_file), "pt") as f:  # the float16-exact teacher is stored as float16
        assert f.get_tensor("teacher.model.1.weight").dtype == torch.float16
        assert f.get_tensor("block.cr1.0.weight").dtype == torch.float32
    a, r, f = (torch.randn(1, C, 8, 8) for _ in range(3))
    with torch.no_grad():
        f_hat = model.block(a_t=a, a_ref=r, f_ref=f)[0]  # keyword access, predicted features first
        assert torch.allclose(f_hat, block(a, r, f)[0])


def test_method_from_model_key_frames_are_the_teacher(bundle_file):
    method = ShortcutMethod.from_model(fastv2v.load_model(bundle_file))
    teacher = make_teacher()
    xs = clip(5, 1)
    with torch.no_grad():
        out = list(run_online(method, xs))
        assert [k for _, k in out] == [True, False, True, False, True]
        for x, (y, key) in zip(xs, out):
            if key:
                assert torch.equal(y, teacher(x))
    assert ShortcutMethod.from_model(fastv2v.load_model(bundle_file), interval=4).interval == 4


def test_wrong_teacher_is_refused(bundle_file):
    with pytest.raises(UserError, match="different teacher"):
        load_shortcut(bundle_file, teacher=make_teacher(seed=5))
    load_shortcut(bundle_file, teacher=make_teacher())  # the right one passes
    assert teacher_fingerprint(make_teacher()) != teacher_fingerprint(make_teacher(seed=5))


def test_a_generator_file_is_not_a_bundle(tmp_path):
    path = tmp_path / "g.safetensors"
    save_generator(path, make_teacher())
    with pytest.raises(UserError, match="not a Shortcut-V2V model"):
        load_shortcut(path)
    assert isinstance(fastv2v.load_model(path), ResnetGenerator)


# --- import from the official code --------------------------------------------------------------


def official_files(tmp_path, block=None, teacher=None):
    """What the official training writes: the teacher's and the block's state dicts as .pth
    (DataParallel prefix on the teacher, the unused offset conv in the block)."""
    teacher = teacher or make_teacher()
    block = block or make_block()
    t = tmp_path / "latest_net_G_A.pth"
    s = tmp_path / "latest_net_ShortcutV2V.pth"
    torch.save({f"module.{k}": v for k, v in teacher.state_dict().items()}, t)
    state = dict(block.state_dict())
    state["global_deform_conv.offset_conv.weight"] = torch.randn(18, HID, 3, 3)
    state["global_deform_conv.offset_conv.bias"] = torch.randn(18)
    torch.save(state, s)
    return t, s


def test_import_reproduces_the_official_forward(tmp_path):
    t, s = official_files(tmp_path)
    out = tmp_path / "model.safetensors"
    assert main(["import", "shortcut-v2v", "--teacher", str(t), "--shortcut", str(s), "--interval", "3",
                 "-o", str(out)]) == 0  # fmt: skip
    model = fastv2v.load_model(out)
    assert model.interval == 3 and model.block.config == {
        "feature_channels": C, "hidden": HID, "groups": 4, "global_layers": 2, "local_layers": 3}  # fmt: skip
    reference = make_block()  # the official weights, run by the transcription of the official forward
    g = torch.Generator().manual_seed(7)
    a_t, a_ref, f_ref = (torch.randn(2, C, 16, 24, generator=g) for _ in range(3))
    with torch.no_grad():
        f_hat, extras = model.block(a_t=a_t, a_ref=a_ref, f_ref=f_ref)
        f_official, mask_official, _ = official_forward(reference, a_t, a_ref, f_ref)
    scale = f_official.abs().max().item()
    assert (f_hat - f_official).abs().max().item() <= 1e-4 * scale  # float32 rounding
    assert torch.allclose(extras["mask"], mask_official, atol=1e-4)  # mask logits reach ~50 with these weights
    x = clip(1, 3)[0]
    with torch.no_grad():
        assert torch.equal(model.teacher(x), make_teacher()(x))


def test_import_infers_the_block_shape():
    block = ShortcutBlock(32, 16, groups=4, global_layers=3, local_layers=2)
    assert infer_block_config(block.state_dict()) == {
        "feature_channels": 32, "hidden": 16, "groups": 4, "global_layers": 3, "local_layers": 2}  # fmt: skip


def test_import_names_missing_and_wrong_keys(tmp_path, capsys):
    t, s = official_files(tmp_path)
    state = torch.load(s)
    del state["recon_ref.bias"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, s)
    out = tmp_path / "m.safetensors"
    assert main(["import", "shortcut-v2v", "--teacher", str(t), "--shortcut", str(s), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "missing keys recon_ref.bias" in err and "unexpected keys extra.weight" in err and not out.exists()
    torch.save({"model.1.weight": torch.zeros(1)}, s)
    with pytest.raises(UserError, match="not a Shortcut-V2V block"):
        import_official(t, s)


def test_import_refuses_a_teacher_of_other_width(tmp_path):
    t, s = official_files(tmp_path, teacher=make_teacher(ngf=4))
    with pytest.raises(UserError, match="16-channel features.*gives 8"):
        import_official(t, s)


# --- the command line -----------------------------------------------------------------------------


@pytest.fixture
def frames_dir(tmp_path):
    from PIL import Image

    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    for i in range(6):
        Image.fromarray(np.roll(base, i, axis=1)).save(folder / f"{i:03d}.png")
    return folder


def read_frames(folder):
    from PIL import Image

    return [np.asarray(Image.open(p)) for p in sorted(folder.iterdir())]


def test_translate_with_a_bundle(bundle_file, frames_dir, tmp_path):
    teacher_out, fixed, auto = tmp_path / "t", tmp_path / "f", tmp_path / "a"
    assert main(["translate", str(frames_dir), str(fixed), "--model", str(bundle_file), "--quiet"]) == 0
    assert main(["translate", str(frames_dir), str(auto), "--model", str(bundle_file), "--interval", "auto",
                 "--quiet"]) == 0  # fmt: skip
    assert main(["translate", str(frames_dir), str(teacher_out), "--model", str(bundle_file), "--method", "teacher",
                 "--quiet"]) == 0  # fmt: skip
    t, f = read_frames(teacher_out), read_frames(fixed)
    assert len(f) == len(read_frames(auto)) == 6
    assert np.array_equal(t[0], f[0]) and np.array_equal(t[2], f[2])  # key frames (interval 2 from the file)
    assert not np.array_equal(t[1], f[1])


def test_translate_bad_shortcut_input(bundle_file, frames_dir, tmp_path, capsys):
    other = tmp_path / "other.safetensors"
    save_generator(other, make_teacher(seed=9))
    out = tmp_path / "o"
    assert main(["translate", str(frames_dir), str(out), "--model", str(bundle_file), "--teacher", str(other)]) == 2
    assert "different teacher" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["translate", str(frames_dir), str(out), "--model", str(bundle_file), "--interval", "0"])
    assert "whole number >= 1" in capsys.readouterr().err
    assert main(["translate", str(frames_dir), str(out), "--model", str(other), "--method", "shortcut"]) == 2
    assert "needs a trained shortcut model file" in capsys.readouterr().err
    assert not out.exists()


# --- distillation -----------------------------------------------------------------------------------


def pairs(n=6, size=(16, 16)):
    xs = clip(n + 1, 11, size)
    return [{"ref_input": xs[i][0], "input": xs[i + 1][0]} for i in range(n)]


def distill_config(tmp_path, teacher_file, name="run", **kw):
    from fastv2v.train.shortcut import ShortcutTrainingConfig

    base = dict(teacher=str(teacher_file), out_dir=str(tmp_path / name), hidden=HID, batch=2, steps=4,
                ndf=4, n_layers_D=2, checkpoint_every=0, sample_every=0, interval=2)  # fmt: skip
    return ShortcutTrainingConfig(**{**base, **kw})


@pytest.fixture
def teacher_file(tmp_path):
    path = tmp_path / "teacher.safetensors"
    save_generator(path, make_teacher())
    return path


def test_distill_resume_is_exact_and_exports_a_bundle(tmp_path, teacher_file):
    from fastv2v.train.shortcut import distill_shortcut

    torch.set_num_threads(1)
    straight = distill_shortcut(distill_config(tmp_path, teacher_file, "a"), pairs(), progress=False)
    distill_shortcut(distill_config(tmp_path, teacher_file, "b"), pairs(), progress=False, max_steps=2)
    resumed = distill_shortcut(distill_config(tmp_path, teacher_file, "b", resume=True), pairs(), progress=False)
    m1, m2 = load_shortcut(straight, teacher=make_teacher()), load_shortcut(resumed)
    for (k, v1), v2 in zip(m1.block.state_dict().items(), m2.block.state_dict().values()):
        assert torch.equal(v1, v2), k
    assert not torch.equal(m1.block.recon_ref.weight, make_block().recon_ref.weight)
    assert m1.info["training"]["step"] == 4 and m1.interval == 2


def test_distill_refuses_another_teacher_on_resume(tmp_path, teacher_file):
    from fastv2v.train.shortcut import distill_shortcut

    distill_shortcut(distill_config(tmp_path, teacher_file, steps=1), pairs(2), progress=False)
    other = tmp_path / "other.safetensors"
    save_generator(other, make_teacher(seed=4))
    with pytest.raises(UserError, match="different teacher"):
        distill_shortcut(distill_config(tmp_path, other, steps=2, resume=True), pairs(2), progress=False)


def test_temporal_gan_trains_the_block_towards_real(tmp_path, teacher_file):
    """The block's temporal GAN term targets 'real' (the released code inverts it): with a
    temporal discriminator that calls everything real, the block's term is 0."""
    from fastv2v.train.loop import load_frozen_teacher
    from fastv2v.train.shortcut import build_models, build_optimizers, distill_step

    config = distill_config(tmp_path, teacher_file)
    teacher = load_frozen_teacher(config)
    models = build_models(config, teacher)

    class AllReal(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, before, after):
            return torch.ones(before.shape[0], 1, 1, 2, 2) + 0 * self.w

    models["D_T"] = AllReal()
    batch = torch.utils.data.default_collate(pairs(2))
    losses = distill_step(models, build_optimizers(config, models), teacher, batch, config)
    assert losses["temporal"] == 0.0 and losses["DT_fake"] == 1.0


def test_distill_rejects_bad_settings(tmp_path, teacher_file):
    from fastv2v.train.shortcut import distill_shortcut

    with pytest.raises(UserError, match="interval"):
        distill_shortcut(distill_config(tmp_path, teacher_file, interval=0), pairs(2), progress=False)
    with pytest.raises(UserError, match="multiples of 4"):
        distill_shortcut(distill_config(tmp_path, teacher_file, "c"), pairs(2, size=(18, 18)), progress=False)


# --- the reuse gate -------------------------------------------------------------------------------


class _Stub(torch.nn.Module):
    """A stand-in block: the teacher's own body (perfect) or zeros (useless)."""

    def __init__(self, teacher, perfect):
        super().__init__()
        self.teacher, self.perfect = teacher, perfect

    def forward(self, a_t, a_ref, f_ref):
        return (self.teacher.body(a_t) if self.perfect else torch.zeros_like(f_ref)), {}


def test_reuse_gate_is_calibrated_on_pairs():
    from fastv2v.train.shortcut import calibrate_reuse_below

    teacher = make_teacher()
    xs = clip(6, 8)
    data = [{"ref_input": x[0], "input": x[0] + 0.02 * torch.randn_like(x[0])} for x in xs]  # nearly still
    assert calibrate_reuse_below(teacher, _Stub(teacher, True), data)["reuse_below"] == 0.0  # the block wins
    useless = calibrate_reuse_below(teacher, _Stub(teacher, False), data)
    assert useless["reuse_below"] > 0 and useless["mse_gated"] == pytest.approx(useless["mse_repeat"])


def test_reuse_gate_shows_the_key_output_below_the_threshold():
    teacher, block = make_teacher(), make_block()
    xs = clip(3, 5)
    with torch.no_grad():
        gated = [y for y, _ in run_online(ShortcutMethod(teacher, 3, block=block, reuse_below=1e9), xs)]
        plain = [y for y, _ in run_online(ShortcutMethod(teacher, 3, block=block), xs)]
    assert torch.equal(gated[1], gated[0]) and torch.equal(gated[2], gated[0])
    assert not torch.equal(plain[1], plain[0])
