"""vid2vid teacher training: the frame windows and their flow targets, exact resume, the export
running as the sequential teacher, the CLI.

Tiny everything (ngf 4, two residual blocks, 32x64, short synthetic clips) so the file stays well
under a minute on one CPU core.
"""

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fastv2v import UserError
from fastv2v.checkpoint import read_config
from fastv2v.data.scenes import NUM_CLASSES, SceneConfig, write_clip
from fastv2v.flow import estimate_flow
from fastv2v.flow import warp as flow_warp
from fastv2v.generators import Vid2VidGenerator, load_generator
from fastv2v.generators.vid2vid import resample, run_sequence
from fastv2v.train.vid2vid import SceneWindows, Vid2VidTrainingConfig, flow_confidence, train_vid2vid

H, W = 32, 64


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one thread


def windows(frames=3, frames_g=3, split="train", clips=2):
    return SceneWindows(split, frames=frames, frames_g=frames_g, clips=clips, frames_per_clip=6, height=H, width=W)


def tiny_config(tmp_path, name="run", **overrides):
    base = dict(out_dir=str(tmp_path / name), ngf=4, n_blocks=2, size=(H, W), batch=1, steps=3, ndf=8,
                n_layers_D=2, checkpoint_every=100, sample_every=2, seed=3)  # fmt: skip
    base.update(overrides)
    return Vid2VidTrainingConfig(**base)


def test_windows_lay_frames_out_as_the_generator_takes_them():
    data = windows(frames=4, frames_g=3)
    assert len(data) == 2 * (6 - 3)
    item = data[4]  # clip 1, frames 1..4
    assert item["labels"].shape == (4 * NUM_CLASSES, H, W) and item["frames"].shape == (12, H, W)
    assert item["flows"].shape == (4, H, W)  # flow targets of frames 2 and 3
    assert torch.equal(item["labels"].view(4, NUM_CLASSES, H, W).sum(1), torch.ones(4, H, W))  # one-hot
    assert item["frames"].min() >= -1 and item["frames"].max() <= 1
    again = windows(frames=4, frames_g=3)[4]
    assert all(torch.equal(item[k], again[k]) for k in item)  # deterministic, flows included
    # the window starts one frame later than item 3's, in the same clip
    assert torch.equal(item["frames"][:9], data[3]["frames"][3:])


def test_flow_target_sign_convention():
    """Current frame = previous shifted right by 2 px: the flow from current to previous points
    left (x about -2), and resample(previous, flow) rebuilds the current frame, as vid2vid's
    generator flow is meant to."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (H // 4 + 1, W // 4 + 1, 3), dtype=np.uint8)
    import cv2

    wide = cv2.resize(base, (W * 4 + 8, H * 4), interpolation=cv2.INTER_CUBIC)  # smooth texture
    previous = np.ascontiguousarray(wide[:, 4 : 4 + W * 4])
    current = np.ascontiguousarray(wide[:, 2 : 2 + W * 4])  # content moved right by 2 px
    flow = estimate_flow(current, previous)
    inner = flow[8:-8, 8:-8]
    assert abs(float(np.median(inner[..., 0])) + 2) < 0.5 and abs(float(np.median(inner[..., 1]))) < 0.5

    def tensor(x):
        return torch.from_numpy(x).permute(2, 0, 1).float().div(127.5).sub(1).unsqueeze(0)

    flow_t = torch.from_numpy(flow).permute(2, 0, 1).unsqueeze(0)
    warped = resample(tensor(previous), flow_t)
    error_warp = (warped - tensor(current)).abs()[..., 8:-8, 8:-8].mean()
    error_none = (tensor(previous) - tensor(current)).abs()[..., 8:-8, 8:-8].mean()
    assert error_warp < 0.25 * error_none
    assert torch.allclose(warped, flow_warp(tensor(previous), flow_t), atol=1e-5)  # the project's warp agrees
    conf = flow_confidence(tensor(current), tensor(previous), flow_t)
    assert conf[..., 8:-8, 8:-8].mean() > 0.8  # the official confidence trusts a good flow


def test_resume_is_exact_and_export_runs_as_the_sequential_teacher(tmp_path):
    data = windows()
    sample = [data[0], data[5]]
    full = train_vid2vid(tiny_config(tmp_path, "full"), data, sample_batch=sample, progress=False)
    assert full.name == "vid2vid.safetensors" and (tmp_path / "full" / "checkpoint.pt").is_file()

    part = tiny_config(tmp_path, "part")
    train_vid2vid(part, data, sample_batch=sample, progress=False, max_steps=2)
    assert read_config(tmp_path / "part" / "vid2vid.safetensors")["training"]["complete"] is False
    torch.manual_seed(1234), np.random.seed(1234), random.seed(1234)  # a fresh process's RNG states
    part.resume = True
    resumed = train_vid2vid(part, data, sample_batch=sample, progress=False)

    a, b = load_file(str(full)), load_file(str(resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log_a = (tmp_path / "full" / "log.jsonl").read_text().splitlines()
    log_b = (tmp_path / "part" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log_b] == [1, 2, 3] and log_a == log_b
    assert set(json.loads(log_a[0])) == {"step", "G_GAN", "G_L1", "F_flow", "F_warp", "W", "D_real", "D_fake"}
    assert sorted(p.name for p in (tmp_path / "full" / "samples").iterdir()) == ["step_000002.png", "step_000003.png"]

    g = load_generator(full)
    meta = read_config(full)
    assert isinstance(g, Vid2VidGenerator) and meta["generator"] == g.config
    assert g.label_nc == NUM_CLASSES and g.n_frames_G == 3 and g.config["norm"] == "instance"
    assert meta["training"]["step"] == 3 and meta["training"]["complete"] is True
    item = windows(split="heldout", clips=1)[0]
    out = run_sequence(g, item["labels"].view(3, NUM_CLASSES, H, W))
    assert out.shape == (1, 3, H, W) and torch.isfinite(out).all()


def test_recurrent_step_and_refusals(tmp_path):
    data = windows(frames=4, frames_g=3)
    path = train_vid2vid(tiny_config(tmp_path, "rec", recurrent=True, steps=1, sample_every=0), data, progress=False)
    assert load_generator(path).n_frames_G == 3
    with pytest.raises(UserError, match="channels"):  # 3-frame windows for a recurrent (4-frame) run
        train_vid2vid(tiny_config(tmp_path, "bad", recurrent=True, steps=1), windows(), progress=False)
    with pytest.raises(UserError, match="multiple of 4"):
        train_vid2vid(tiny_config(tmp_path, "size", size=(30, 64)), data, progress=False)
    with pytest.raises(UserError, match="scenes"):
        tiny_config(tmp_path, task="edges").validate()


def test_cli_trains_and_translate_runs_the_export(tmp_path, capsys):
    from fastv2v.cli import main

    out = tmp_path / "run"
    args = ["train", "vid2vid", "--task", "scenes", "--out", str(out), "--steps", "1", "--size", f"{H}x{W}",
            "--ngf", "4", "--n-blocks", "2", "--ndf", "8", "--clips", "1", "--threads", "1", "--quiet",
            "--sample-every", "0"]  # fmt: skip
    assert main(args) == 0
    model = out / "vid2vid.safetensors"
    assert model.is_file() and read_config(model)["training"]["config"]["ngf"] == 4
    assert main([*args[:-2], "--steps", "2", "--resume"]) == 0  # --sample-every may change on resume
    assert read_config(model)["training"]["step"] == 2

    labels = tmp_path / "labels"
    write_clip(SceneConfig(height=H, width=W, frames=5, seed=10_001), labels)
    frames_out = tmp_path / "translated"
    capsys.readouterr()
    assert main(["translate", str(labels), str(frames_out), "--model", str(model), "--quiet"]) == 0
    assert "wrote 5 frames" in capsys.readouterr().out
    assert len(list(frames_out.glob("*.png"))) == 5
