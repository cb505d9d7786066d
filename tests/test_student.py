"""Fast-Vid2Vid's students: the spatial student (stride-1 init from the teacher, label-safe
downsampling), the inverted-residual body and its cost, the distiller (resume exactness), the
model file, and the ``spatial`` / ``fast`` methods in the benchmark and the CLI."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastv2v
from fastv2v import UserError
from fastv2v.cli import main
from fastv2v.generators import ResnetGenerator, build_generator, save_generator
from fastv2v.generators.student import (
    InvertedResidual,
    SpatialStudent,
    feature_mapping,
    student_from_teacher,
)
from fastv2v.methods.student import Fast, Spatial
from fastv2v.methods.student_model import StudentModel, load_student, save_student
from fastv2v.metrics.profile import profile

from conftest import run_online



pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one thread


def make_teacher(seed=0, ngf=8, n_blocks=2, **kw):
    torch.manual_seed(seed)
    g = ResnetGenerator(ngf=ngf, n_blocks=n_blocks, **kw).eval()
    with torch.no_grad():  # float16-exact weights, as a shipped teacher has
        for p in g.parameters():
            p.copy_(p.half().float())
    return g


def make_student(teacher, seed=1, **kw):
    torch.manual_seed(seed)
    s = student_from_teacher(teacher, **{"width": 8, "blocks": 1, **kw})
    with torch.no_grad():  # a "trained" student: not the teacher's numbers anywhere
        for p in s.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return s.eval()


def clip(n, seed, size=(32, 32)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 3, *size, generator=g).clamp(-1, 1) for _ in range(n)]


# --- the student ----------------------------------------------------------------------------------


def test_stride_one_student_starts_as_the_teacher_on_the_half_resolution_input():
    """The head's stride-1 conv is the teacher's stride-2 conv evaluated at every pixel, so on
    the same (half-resolution) input its even pixels are exactly the teacher's head features;
    body and tail are the teacher's own layers."""
    teacher = make_teacher()
    student = student_from_teacher(teacher, body="resnet").eval()
    x = clip(1, 0, (32, 48))[0]
    low = F.avg_pool2d(x, 2)
    with torch.no_grad():
        a_s, a_t = student.head(low), teacher.head(low)
        assert a_s.shape == (1, 16, 16, 24) and a_t.shape == (1, 16, 8, 12)
        assert torch.allclose(a_s[..., ::2, ::2], a_t, atol=1e-5)
        f = torch.randn(1, 16, 16, 24)
        assert torch.equal(student.tail(student.body(f)), teacher.tail(teacher.body(f)))
        y = student(x)
        assert y.shape == x.shape  # full resolution out of a half-resolution input
        assert torch.equal(y, student.forward_low(low))
        # the input is only seen at half resolution: an upsampled copy of it gives the same output
        assert torch.equal(student(F.interpolate(low, scale_factor=2, mode="nearest")), y)
    assert student.head[4].stride == (1, 1) and teacher.head[4].stride == (2, 2)
    assert torch.equal(student.head[4].weight, teacher.head[4].weight)


def test_label_maps_are_downsampled_by_mode_never_blended():
    s = SpatialStudent(label_nc=4, use_instance=True, ngf=4, n_blocks=1, width=4)
    labels = torch.tensor([[[0, 1, 2, 2],
                            [1, 1, 2, 3],
                            [3, 0, 1, 1],
                            [2, 1, 0, 0]]])  # fmt: skip
    one_hot = F.one_hot(labels, 4).permute(0, 3, 1, 2).float()
    edges = torch.zeros(1, 1, 4, 4)
    edges[0, 0, 3, 3] = 1
    low = s.downsample_input(torch.cat([one_hot, edges], 1))
    assert low.shape == (1, 5, 2, 2)
    # the majority wins (blocks 1 and 2); a tie goes to the top-left pixel's class (blocks 3 and 4)
    assert low[0, :4].argmax(0).tolist() == [[1, 2], [3, 1]]
    assert torch.equal(low[0, :4].sum(0), torch.ones(2, 2))  # one-hot, no blending
    assert low[0, 4].tolist() == [[0, 0], [0, 1]]  # a boundary anywhere in the block survives


def test_inverted_body_shapes_and_cost():
    teacher = make_teacher(ngf=8, n_blocks=6)
    student = student_from_teacher(teacher, width=16, expansion=4, blocks=3).eval()
    x = clip(1, 2)[0]
    with torch.no_grad():
        y, f = student(x, features=True)
    assert y.shape == x.shape and f.shape == (1, 16, 16, 16)  # the teacher's feature channels at H/2
    assert sum(isinstance(m, InvertedResidual) for m in student.body) == 3
    for ours, theirs in zip(student.tail, teacher.tail):  # the tail is the teacher's
        for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()):
            assert torch.equal(a, b)
    mapping = feature_mapping(16, 16)
    assert torch.equal(mapping(f), f)  # starts as the identity
    with pytest.raises(UserError, match="multiples of 4"):
        student(torch.zeros(1, 3, 18, 18))


def test_pruned_student_keeps_the_teachers_strongest_channels():
    """Full width keeps every channel in order: the teacher itself, bit for bit. Narrower, it
    keeps the channels of largest weight norm through every layer and the residual stream, and
    runs on the full-size input."""
    teacher = make_teacher(ngf=8, n_blocks=3)
    x = clip(1, 4)[0]
    whole = student_from_teacher(teacher, body="pruned", width=8).eval()
    with torch.no_grad():
        assert torch.equal(whole(x), teacher(x))
        strong = [0, 2, 5, 7]  # make these the stem's strongest outputs
        teacher.model[1].weight[strong] *= 10
        half = student_from_teacher(teacher, body="pruned", width=4).eval()
        assert torch.equal(half.model[1].weight, teacher.model[1].weight[strong])
        y, f = half(x, features=True)
    assert half.scale == 1 and torch.equal(half.downsample_input(x), x)
    assert y.shape == x.shape and f.shape == (1, 8, 16, 16) and half.feature_channels == 8
    def strongest(weight, kept_in, n):
        return torch.sort(torch.topk(weight[:, kept_in].abs().flatten(1).sum(1), n).indices).values

    stream = strongest(teacher.model[7].weight, strongest(teacher.model[4].weight, strong, 8), 16)
    for block in [i for i, m in enumerate(teacher.model) if hasattr(m, "conv_block")]:
        ours, theirs = half.model[block].conv_block[5], teacher.model[block].conv_block[5]
        assert torch.equal(ours.bias, theirs.bias[stream])  # every block writes the same stream
    with pytest.raises(UserError, match="--width"):
        student_from_teacher(teacher, body="pruned")


def test_macs_of_the_shipped_teacher_config_and_its_students():
    """resnet_6blocks ngf 32, 9 label classes, 128x256: the resnet-body student saves exactly 3/4
    of the first 7x7 conv (it runs on a quarter of the pixels; the stride-1 conv at H/2 costs what
    the teacher's stride-2 conv does); the default inverted body cuts the total below a quarter."""
    teacher = build_generator("resnet_6blocks", ngf=32, label_nc=9, output_nc=3).eval()
    x = torch.zeros(1, 9, 128, 256, device="meta")
    t = profile(teacher, x)
    resnet = profile(student_from_teacher(teacher, body="resnet"), x)
    inverted = profile(student_from_teacher(teacher), x)
    first = 128 * 256 * 9 * 32 * 49
    assert t.macs_exact - resnet.macs_exact == 3 * first // 4
    assert t.macs_exact == 4_844_421_120
    assert inverted.macs_exact < t.macs_exact / 5.5  # 0.87 G against 4.84 G
    assert inverted.params < t.params / 5
    pruned = profile(student_from_teacher(teacher, body="pruned", width=16), x)
    assert 3.5 < t.macs_paper / pruned.macs_paper < 3.7  # 1.59 G against 5.75 G, paper convention


# --- the model file ---------------------------------------------------------------------------


@pytest.fixture
def bundle_file(tmp_path):
    teacher = make_teacher()
    path = tmp_path / "student.safetensors"
    save_student(path, StudentModel(teacher, make_student(teacher), interval=2))
    return path


def test_bundle_round_trip_and_teacher_checks(bundle_file, tmp_path):
    teacher = make_teacher()
    student = make_student(teacher)
    model = fastv2v.load_model(bundle_file)
    assert isinstance(model, StudentModel) and model.interval == 2
    for a, b in ((model.teacher, teacher), (model.student, student)):
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert ka == kb and torch.equal(va, vb)
    from safetensors import safe_open

    with safe_open(str(bundle_file), "pt") as f:
        assert f.get_tensor("teacher.model.1.weight").dtype == torch.float16
        assert f.get_tensor("student.model.1.weight").dtype == torch.float32
    with pytest.raises(UserError, match="different teacher"):
        load_student(bundle_file, teacher=make_teacher(seed=5))
    load_student(bundle_file, teacher=make_teacher())
    generator = tmp_path / "g.safetensors"
    save_generator(generator, teacher)
    with pytest.raises(UserError, match="not a Fast-Vid2Vid student model"):
        load_student(generator)
    labels_teacher = make_teacher(label_nc=5)
    with pytest.raises(UserError, match="do not belong together"):
        StudentModel(labels_teacher, student)


def test_spatial_and_fast_run_the_student(bundle_file):
    model = load_student(bundle_file)
    xs = clip(5, 3)
    model = fastv2v.load_model(bundle_file)
    spatial, fast = Spatial.from_model(model), Fast.from_model(model)
    assert fast.interval == 2 and Fast.from_model(model, interval=3).keyframes.spec == "fixed:3"
    with torch.no_grad():
        expected = [model.student(x) for x in xs]
        out = list(run_online(spatial, xs))
        assert all(k for _, k in out) and all(torch.equal(y, e) for (y, _), e in zip(out, expected))
        ready, state = [], fast.init_state()
        for x in xs:
            r, state = fast.push(x, state)
            ready += r
        ready += fast.flush(state)
    assert [k for _, k in ready] == [True, False, True, False, True]
    for (y, key), e in zip(ready, expected):
        assert y.shape == e.shape
        if key:
            assert torch.equal(y, e)  # key frames are the student's outputs
    with pytest.raises(UserError, match="multiples of 4"):
        spatial.step(torch.zeros(1, 3, 18, 18), spatial.init_state())
    assert spatial.parameter_count() == sum(p.numel() for p in model.student.parameters())


# --- distillation ---------------------------------------------------------------------------------


@pytest.fixture
def teacher_file(tmp_path):
    path = tmp_path / "teacher.safetensors"
    save_generator(path, make_teacher())
    return path


def pairs(n=6, size=(32, 32)):
    xs = clip(n + 1, 11, size)
    return [{"ref_input": xs[i][0], "input": xs[i + 1][0]} for i in range(n)]


def distill_config(tmp_path, teacher_file, name="run", **kw):
    from fastv2v.train.student import StudentTrainingConfig

    base = dict(teacher=str(teacher_file), out_dir=str(tmp_path / name), width=8, blocks=1, batch=2, steps=4,
                ndf=4, n_layers_D=2, checkpoint_every=0, sample_every=0, interval=3)  # fmt: skip
    return StudentTrainingConfig(**{**base, **kw})


@pytest.mark.parametrize("temporal", [False, True])
def test_distill_resume_is_exact_and_exports_a_bundle(tmp_path, teacher_file, temporal):
    from fastv2v.train.student import distill_student

    straight = distill_student(distill_config(tmp_path, teacher_file, "a", temporal=temporal), pairs(),
                               progress=False)  # fmt: skip
    distill_student(distill_config(tmp_path, teacher_file, "b", temporal=temporal), pairs(), progress=False,
                    max_steps=2)  # fmt: skip
    resumed = distill_student(distill_config(tmp_path, teacher_file, "b", temporal=temporal, resume=True), pairs(),
                              progress=False, sample_batch=pairs(2))  # fmt: skip
    m1, m2 = load_student(straight, teacher=make_teacher()), load_student(resumed)
    for (k, v1), v2 in zip(m1.student.state_dict().items(), m2.student.state_dict().values()):
        assert torch.equal(v1, v2), k
    start = student_from_teacher(make_teacher(), width=8, blocks=1)
    assert not torch.equal(m1.student.model[1].weight, start.model[1].weight)  # it trained
    assert m1.info["training"]["step"] == 4 and m1.interval == 3
    assert (tmp_path / "b" / "samples" / "step_000004.png").is_file()
    losses = [line for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and ('"temporal"' in losses[0]) == temporal


def test_a_pruned_student_distils_without_a_discriminator(tmp_path, teacher_file):
    """--body pruned --gan-weight 0: the discriminator never runs (its optimiser never steps) and
    the exported file runs ``fast`` with the pruned student on the full-size input."""
    from fastv2v.train.student import distill_student

    config = distill_config(tmp_path, teacher_file, "p", body="pruned", width=4, blocks=None, lambda_gan=0.0)
    path = distill_student(config, pairs(), progress=False)
    log = (tmp_path / "p" / "log.jsonl").read_text()
    assert '"gan"' not in log and '"D_real"' not in log
    optimizers = torch.load(tmp_path / "p" / "checkpoint.pt", weights_only=False)["optimizers"]
    assert optimizers["D"]["state"] == {} and optimizers["G"]["state"]  # D never stepped, G did
    model = load_student(path, teacher=make_teacher())
    assert model.student.config["body"] == "pruned" and model.student.scale == 1
    y = Fast(model.teacher, 2, student=model.student)
    assert len(run_online(y, clip(3, 1))) == 3
    with pytest.raises(UserError, match="GAN weight"):
        distill_config(tmp_path, teacher_file, "q", lambda_gan=-1.0).validate()


def test_warm_start_copies_the_student_and_refuses_another(tmp_path, teacher_file):
    from fastv2v.train.student import build_models, distill_student

    first = distill_student(distill_config(tmp_path, teacher_file, "a", steps=2), pairs(2), progress=False)
    trained = load_student(first).student
    models = build_models(distill_config(tmp_path, teacher_file, "b", init=str(first)), make_teacher())
    for (k, v), w in zip(trained.state_dict().items(), models["G"].student.state_dict().values()):
        assert torch.equal(v, w), k
    with pytest.raises(UserError, match="width 8 .this run: 16."):
        build_models(distill_config(tmp_path, teacher_file, "c", init=str(first), width=16), make_teacher())
    other = tmp_path / "other.safetensors"
    save_generator(other, make_teacher(seed=5))
    with pytest.raises(UserError, match="different teacher"):
        distill_student(distill_config(tmp_path, other, "d", init=str(first)), pairs(2), progress=False)


def test_motion_weights_follow_the_moving_pixels():
    from fastv2v.train.student import motion_weights

    still = torch.full((1, 3, 64, 64), -1.0)
    moved = still.clone()
    still[..., 20:40, 10:30] = 1.0
    moved[..., 20:40, 14:34] = 1.0  # a square moved 4 pixels right
    w = motion_weights(moved, still, 0, 1.0)
    assert w.shape == (1, 1, 64, 64) and abs(float(w.mean()) - 1) < 1e-5
    assert float(w[0, 0, 25:35, 14:18].mean()) > float(w[0, 0, 55:, 50:].mean())
    assert torch.equal(motion_weights(moved, still, 0, 0.0), torch.ones(1, 1, 64, 64))


def test_distill_refuses_bad_settings_and_data(tmp_path, teacher_file):
    from fastv2v.train.student import distill_student

    with pytest.raises(UserError, match="body"):
        distill_student(distill_config(tmp_path, teacher_file, body="mobilenet"), pairs(2), progress=False)
    with pytest.raises(UserError, match="multiples of 4"):
        distill_student(distill_config(tmp_path, teacher_file, "c"), pairs(2, size=(36, 34)), progress=False)


# --- bench and command line -----------------------------------------------------------------------


def test_spatial_and_fast_in_a_tiny_bench(tmp_path):
    from fastv2v.bench import run_bench
    from fastv2v.tasks import generator_config

    torch.manual_seed(0)
    teacher = build_generator("resnet_6blocks", **generator_config("scenes", ngf=4)).eval()
    path = tmp_path / "student.safetensors"
    save_student(path, StudentModel(teacher, student_from_teacher(teacher, width=8, blocks=1).eval(), 2))
    report = run_bench(path, "scenes", methods="teacher,spatial,fast", size=(32, 32), frames=5, intervals=[2],
                       threads=1, e2e=False)  # fmt: skip
    rows = {r["method"]: r for r in report["results"]}
    assert set(rows) == {"teacher", "spatial", "fast"} and not report["skipped"]
    assert rows["spatial"]["interval"] is None and rows["fast"]["interval"] == 2
    assert rows["spatial"]["keyframes"] == 5 and rows["fast"]["keyframes"] == 3
    assert rows["spatial"]["macs_per_frame"]["exact"] < rows["teacher"]["macs_per_frame"]["exact"]
    assert rows["fast"]["macs_per_frame"]["exact"] < rows["spatial"]["macs_per_frame"]["exact"]


@pytest.fixture
def frames_dir(tmp_path):
    from PIL import Image

    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    for i in range(6):
        Image.fromarray(np.roll(base, i, axis=1)).save(folder / f"{i:03d}.png")
    return folder


def read_frames(folder):
    from PIL import Image

    return [np.asarray(Image.open(p)) for p in sorted(folder.iterdir())]


def test_translate_with_a_student_file(bundle_file, frames_dir, tmp_path, capsys):
    fast, spatial, peaks = tmp_path / "f", tmp_path / "s", tmp_path / "p"
    assert main(["translate", str(frames_dir), str(fast), "--model", str(bundle_file), "--quiet"]) == 0
    assert main(["translate", str(frames_dir), str(spatial), "--model", str(bundle_file), "--method", "spatial",
                 "--quiet"]) == 0  # fmt: skip
    assert main(["translate", str(frames_dir), str(peaks), "--model", str(bundle_file), "--keyframes", "peaks",
                 "--quiet"]) == 0  # fmt: skip
    f, s = read_frames(fast), read_frames(spatial)
    assert len(f) == len(s) == len(read_frames(peaks)) == 6
    assert np.array_equal(f[0], s[0]) and np.array_equal(f[2], s[2])  # key frames (interval 2 from the file)
    assert not np.array_equal(f[1], s[1])  # interpolated
    capsys.readouterr()
    out = tmp_path / "o"
    other = tmp_path / "other.safetensors"
    save_generator(other, make_teacher(seed=9))
    assert main(["translate", str(frames_dir), str(out), "--model", str(bundle_file), "--teacher", str(other)]) == 2
    assert "different teacher" in capsys.readouterr().err
    assert main(["translate", str(frames_dir), str(out), "--model", str(bundle_file), "--method", "spatial",
                 "--keyframes", "peaks"]) == 2  # fmt: skip
    assert "--keyframes does not apply to --method spatial (it takes --kernels, --subnet, --budget only)" in capsys.readouterr().err
    assert main(["translate", str(frames_dir), str(out), "--model", str(other), "--method", "fast"]) == 2
    assert "needs a trained student model file" in capsys.readouterr().err
    assert not out.exists()


DISTILL_WORKER = """
import sys
import torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_student import distill_config, pairs
from fastv2v.train.distributed import init_distributed
from fastv2v.train.student import distill_student

tmp = Path({tmp!r})
ctx = init_distributed("cpu")
wrapped = []
wrap = ctx.wrap
object.__setattr__(ctx, "wrap", lambda m, **kw: wrapped.append(wrap(m, **kw)) or wrapped[-1])
distill_student(distill_config(tmp, {teacher!r}, "ddp", batch=4, steps=3), pairs(8), progress=False, ctx=ctx)
assert len(wrapped) == 2 and all(isinstance(m, torch.nn.parallel.DistributedDataParallel) for m in wrapped)
torch.save([m.module.state_dict() for m in wrapped], tmp / f"rank{{ctx.rank}}.pt")
ctx.shutdown()
"""


def test_two_process_distillation_equals_one(tmp_path, teacher_file):
    """2 gloo processes x batch 2 = 1 process x batch 4, to float rounding (biases that feed an
    InstanceNorm are left out: see tests/test_distributed.py); the exported students agree."""
    import os
    import subprocess
    import sys
    import textwrap

    from test_distributed import norm_cancelled

    from fastv2v.train.student import StudentTrainee, distill_student

    script = tmp_path / "worker.py"
    tests = os.path.dirname(os.path.abspath(__file__))
    script.write_text(textwrap.dedent(DISTILL_WORKER.format(tests=tests, tmp=str(tmp_path), teacher=str(teacher_file))))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for m0, m1 in zip(rank0, rank1, strict=True):
        assert all(torch.equal(m0[k], m1[k]) for k in m0)

    distill_student(distill_config(tmp_path, teacher_file, "single", batch=4, steps=3), pairs(8), progress=False)
    a = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "single" / "checkpoint.pt", weights_only=True)
    assert a["extra"]["world_size"] == 2 and a["step"] == b["step"] == 3
    g = StudentTrainee(student_from_teacher(make_teacher(), width=8, blocks=1), torch.nn.Identity())
    skip = {"G": norm_cancelled(g), "D": set()}
    for name in ("G", "D"):
        for key, value in a["modules"][name].items():
            if key not in skip[name]:
                torch.testing.assert_close(value, b["modules"][name][key], atol=1e-5, rtol=0, msg=f"{name}.{key}")
    x = clip(1, 4)[0]
    with torch.no_grad():
        y_a = load_student(tmp_path / "ddp" / "student.safetensors").student(x)
        y_b = load_student(tmp_path / "single" / "student.safetensors").student(x)
    torch.testing.assert_close(y_a, y_b, atol=1e-5, rtol=0)
