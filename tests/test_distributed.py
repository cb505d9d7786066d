"""Data-parallel training (torch.distributed, gloo on the CPU): 2 processes x B/2 = 1 process x B.

One ``torchrun`` launch of two CPU processes trains a tiny teacher for 2 of 4 steps (global
batch 4, DiffAugment on, one DataLoader worker per process); the test compares it with one
process on the same global batch, then resumes the 2-process checkpoint in one process.

About the tolerance: DDP sums gradients in another order than one process does, so results
agree to float rounding, not bit for bit. Biases of convolutions that feed an InstanceNorm are
the one exception: the norm removes them, so their true gradient is 0 and what backward
computes is rounding noise, which Adam's normalised step turns into updates of up to ``lr`` in
either direction. Those biases cannot change any output; they are left out of the weight
comparison, and the generators' outputs are compared instead.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from fastv2v import UserError
from fastv2v.generators import load_generator
from fastv2v.train.distributed import (
    DistributedContext,
    check_precision,
    init_distributed,
    local_batch_size,
    unwrap,
)
from fastv2v.train.state import resumable_batches
from fastv2v.train.teacher import build_teacher_models, train_teacher

sys.path.insert(0, os.path.dirname(__file__))
from test_train_teacher import make_samples, tiny_config  # noqa: E402

COMMON = dict(batch=4, steps=4, diffaugment="color,translation,cutout", checkpoint_every=100, sample_every=2)
TOL = 1e-5

WORKER = """
import sys
import torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_train_teacher import make_samples, tiny_config
from fastv2v.train.distributed import init_distributed
from fastv2v.train.teacher import train_teacher

tmp = Path({tmp!r})
ctx = init_distributed("cpu")
assert ctx.world_size == 2 and ctx.backend == "gloo"
wrapped = []
wrap = ctx.wrap
object.__setattr__(ctx, "wrap", lambda m, **kw: wrapped.append(wrap(m, **kw)) or wrapped[-1])
config = tiny_config(tmp, "ddp", num_workers=1, **{common!r})
train_teacher(config, make_samples(8), sample_batch=make_samples(2), progress=False, max_steps=2, ctx=ctx)
assert all(isinstance(m, torch.nn.parallel.DistributedDataParallel) for m in wrapped)
torch.save([m.module.state_dict() for m in wrapped], tmp / f"rank{{ctx.rank}}.pt")
ctx.shutdown()
"""


def norm_cancelled(module: nn.Module) -> set[str]:
    """Names of conv biases that an InstanceNorm right after the conv removes."""
    leaves = [(name, m) for name, m in module.named_modules() if not list(m.children())]
    return {
        f"{name}.bias"
        for (name, m), (_, nxt) in zip(leaves, leaves[1:])
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.bias is not None and isinstance(nxt, nn.InstanceNorm2d)
    }


def assert_same_run(ckpt_a, ckpt_b, export_a, export_b, skip):
    a, b = torch.load(ckpt_a, weights_only=True), torch.load(ckpt_b, weights_only=True)
    assert a["step"] == b["step"]
    for name in ("G", "D"):
        assert a["modules"][name].keys() == b["modules"][name].keys()
        for key, value in a["modules"][name].items():
            if key not in skip[name]:
                torch.testing.assert_close(value, b["modules"][name][key], atol=TOL, rtol=0, msg=f"{name}.{key}")
    g_a, g_b = load_generator(export_a), load_generator(export_b)
    x = torch.utils.data.default_collate(make_samples(2, seed=9))["input"]
    with torch.no_grad():
        torch.testing.assert_close(g_a(x), g_b(x), atol=TOL, rtol=0)


def read_log(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_processes_equal_one_and_resume_in_one(tmp_path):
    script = tmp_path / "worker.py"
    tests = os.path.dirname(os.path.abspath(__file__))
    script.write_text(textwrap.dedent(WORKER.format(tests=tests, tmp=str(tmp_path), common=COMMON)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # the replicas hold identical weights
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for m0, m1 in zip(rank0, rank1, strict=True):
        assert m0.keys() == m1.keys() and all(torch.equal(m0[k], m1[k]) for k in m0)

    # only rank 0 wrote files; the checkpoint holds plain modules and says how it was made
    ddp = tmp_path / "ddp"
    ckpt = torch.load(ddp / "checkpoint.pt", weights_only=True)
    assert not any(k.startswith("module.") for m in ckpt["modules"].values() for k in m)
    assert ckpt["extra"]["world_size"] == 2 and ckpt["step"] == 2
    assert sorted(p.name for p in (ddp / "samples").iterdir()) == ["step_000002.png"]
    assert len(read_log(ddp / "log.jsonl")) == 2

    # the same global batch in one process gives the same run
    single = tmp_path / "single"
    data, sample = make_samples(8), make_samples(2)
    train_teacher(tiny_config(tmp_path, "single", **COMMON), data, sample_batch=sample, progress=False, max_steps=2)
    models = build_teacher_models(tiny_config(tmp_path, "names", **COMMON))
    skip = {name: norm_cancelled(models[name]) for name in ("G", "D")}
    assert skip["G"] and skip["D"]  # the rule found the biases it is meant to find
    assert_same_run(ddp / "checkpoint.pt", single / "checkpoint.pt", ddp / "generator.safetensors",
                    single / "generator.safetensors", skip)  # fmt: skip
    for x, y in zip(read_log(ddp / "log.jsonl"), read_log(single / "log.jsonl"), strict=True):
        assert x.keys() == y.keys() and all(abs(x[k] - y[k]) < TOL for k in x)  # losses of the global batch

    # the 2-process checkpoint resumes in one process and continues the same sample stream
    for name in ("ddp", "single"):
        config = tiny_config(tmp_path, name, resume=True, **COMMON)
        train_teacher(config, data, sample_batch=sample, progress=False)
    assert_same_run(ddp / "checkpoint.pt", single / "checkpoint.pt", ddp / "generator.safetensors",
                    single / "generator.safetensors", skip)  # fmt: skip
    logs = read_log(ddp / "log.jsonl"), read_log(single / "log.jsonl")
    assert [x["step"] for x in logs[0]] == [1, 2, 3, 4]
    for x, y in zip(*logs, strict=True):
        assert all(abs(x[k] - y[k]) < TOL for k in x)
    exports = [load_file(str(run / "generator.safetensors")) for run in (ddp, single)]
    assert exports[0].keys() == exports[1].keys()


def test_single_process_context_changes_nothing(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.is_distributed) == (0, 1, True, False)
    net = nn.Linear(2, 2)
    assert ctx.wrap(net) is net and unwrap(net) is net
    assert ctx.all_reduce_mean({"a": 1.5, "b": 2}) == {"a": 1.5, "b": 2.0}
    params = {"x": torch.arange(4)}
    assert ctx.shard(params) is params and ctx.batch_slice(4) == slice(0, 4)
    assert ctx.all_gather_object("me") == ["me"] and ctx.shard_items([1, 2, 3]) == [1, 2, 3]
    ctx.barrier()
    ctx.shutdown()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(UserError, match="launch the processes with torchrun"):
        init_distributed("cpu")


def test_chunks_of_the_global_batch():
    ctx = DistributedContext(rank=1, world_size=2)
    assert ctx.batch_slice(6) == slice(3, 6)
    assert torch.equal(ctx.shard({"p": torch.arange(6)})["p"], torch.tensor([3, 4, 5]))
    with pytest.raises(UserError, match="multiple of 2"):
        local_batch_size(3, 2)
    with pytest.raises(UserError, match="fp16"):
        check_precision("fp16")
    with pytest.raises(UserError, match="fp16"):
        tiny_config(Path("."), precision="fp16").validate()

    indexed = [{"input": torch.tensor([float(i)]), "target": torch.tensor([0.0])} for i in range(7)]

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(indexed)

    for dataset in (indexed, Stream()):
        for start in (0, 3):
            whole = resumable_batches(dataset, 4, seed=2, start_step=start)
            parts = [resumable_batches(dataset, 4, seed=2, start_step=start, rank=r, world_size=2) for r in range(2)]
            quarters = [resumable_batches(dataset, 4, seed=2, start_step=start, rank=r, world_size=4) for r in range(4)]
            for _ in range(3):  # crosses epoch ends
                expected = next(whole)["input"].flatten().tolist()
                assert sum((next(p)["input"].flatten().tolist() for p in parts), []) == expected
                assert sum((next(q)["input"].flatten().tolist() for q in quarters), []) == expected
    with pytest.raises(UserError, match="multiple of 2"):
        next(resumable_batches(indexed, 3, rank=0, world_size=2))


DISTILL_WORKER = """
import sys
import torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_shortcut_model import distill_config, pairs
from fastv2v.train.distributed import init_distributed
from fastv2v.train.shortcut import distill_shortcut

tmp = Path({tmp!r})
ctx = init_distributed("cpu")
wrapped = []
wrap = ctx.wrap
object.__setattr__(ctx, "wrap", lambda m, **kw: wrapped.append(wrap(m, **kw)) or wrapped[-1])
distill_shortcut(distill_config(tmp, {teacher!r}, "ddp", batch=4, steps=3), pairs(8), progress=False, ctx=ctx)
assert len(wrapped) == 3 and all(isinstance(m, torch.nn.parallel.DistributedDataParallel) for m in wrapped)
torch.save([m.module.state_dict() for m in wrapped], tmp / f"rank{{ctx.rank}}.pt")
ctx.shutdown()
"""


def test_two_process_distillation_equals_one(tmp_path):
    """A tiny Shortcut-V2V distillation on 2 gloo processes: identical replicas, and the same
    block, discriminators and losses as one process on the same global batch."""
    from fastv2v.generators import save_generator
    from fastv2v.train.shortcut import distill_shortcut
    from test_shortcut_model import distill_config, make_teacher, pairs

    teacher = tmp_path / "teacher.safetensors"
    save_generator(teacher, make_teacher())
    script = tmp_path / "distill_worker.py"
    tests = os.path.dirname(os.path.abspath(__file__))
    script.write_text(textwrap.dedent(DISTILL_WORKER.format(tests=tests, tmp=str(tmp_path), teacher=str(teacher))))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for m0, m1 in zip(rank0, rank1, strict=True):
        assert all(torch.equal(m0[k], m1[k]) for k in m0)

    distill_shortcut(distill_config(tmp_path, teacher, "single", batch=4, steps=3), pairs(8), progress=False)
    a = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "single" / "checkpoint.pt", weights_only=True)
    assert a["extra"]["world_size"] == 2 and a["step"] == b["step"] == 3
    for name in ("block", "D", "D_T"):
        for key, value in a["modules"][name].items():
            # recon_ref's bias feeds the tail's InstanceNorm: only the feature losses see it, and
            # their near-cancelling gradient is where Adam magnifies rounding most (see above).
            tol = 1e-4 if key == "recon_ref.bias" else TOL
            torch.testing.assert_close(value, b["modules"][name][key], atol=tol, rtol=0, msg=f"{name}.{key}")
    for x, y in zip(read_log(tmp_path / "ddp" / "log.jsonl"), read_log(tmp_path / "single" / "log.jsonl"), strict=True):
        assert all(abs(x[k] - y[k]) < 1e-4 for k in x)
