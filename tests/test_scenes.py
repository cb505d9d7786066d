"""Synthetic street scenes: determinism, label range, motion, fixed camera, scene cuts."""

import types

import cv2
import numpy as np
import pytest

from fastv2v.data.scenes import (
    BUILDING,
    CAR,
    LABEL_NAMES,
    NUM_CLASSES,
    PALETTE,
    PERSON,
    SKY,
    SceneConfig,
    StreetScene,
    colorize_labels,
    render_clip,
)
from fastv2v.errors import UserError

H, W = 48, 96


def clip(**kw):
    config = SceneConfig(height=kw.pop("height", H), width=kw.pop("width", W), **kw)
    return list(render_clip(config))


def test_label_table():
    assert NUM_CLASSES == len(LABEL_NAMES) == len(PALETTE) < 16
    assert PALETTE.dtype == np.uint8 and PALETTE.shape == (NUM_CLASSES, 3)
    assert len({tuple(c) for c in PALETTE}) == NUM_CLASSES  # distinguishable colours


def test_same_seed_identical_frames_and_random_access():
    a = clip(seed=3, frames=4)
    b = clip(seed=3, frames=4)
    for (la, ra), (lb, rb) in zip(a, b):
        assert np.array_equal(la, lb) and np.array_equal(ra, rb)
    scene = StreetScene(SceneConfig(height=H, width=W, seed=3, frames=4))
    lab, rgb = scene.frame(3)  # out of order: a pure function of (seed, frame)
    assert np.array_equal(lab, a[3][0]) and np.array_equal(rgb, a[3][1])


def test_different_seeds_differ():
    (_, a), = clip(seed=1, frames=1)
    (_, b), = clip(seed=2, frames=1)
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 5


def test_frames_are_streamed_with_valid_labels():
    frames = render_clip(SceneConfig(height=H, width=W, seed=0, frames=3))
    assert isinstance(frames, types.GeneratorType)
    for lab, rgb in frames:
        assert lab.shape == (H, W) and lab.dtype == np.uint8
        assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
        assert lab.max() < NUM_CLASSES
    # a street: road, buildings and sky all appear
    assert {0, BUILDING, SKY} <= set(np.unique(lab).tolist())


def test_odd_sizes_render():
    (lab, rgb), = clip(seed=5, frames=1, height=37, width=53)
    assert lab.shape == (37, 53) and rgb.shape == (37, 53, 3)


def test_rgb_is_textured_within_classes():
    (lab, rgb), = clip(seed=4, frames=1, height=96, width=192)
    building = rgb[lab == BUILDING].astype(float)
    assert building.std(0).mean() > 10  # facades, windows, shading: not a flat colour per class


def test_objects_move_between_frames():
    frames = clip(seed=0, frames=6)
    (l0, r0), (l5, r5) = frames[0], frames[5]
    assert (l0 != l5).mean() > 0.01 and (r0 != r5).any(-1).mean() > 0.05
    objects = lambda lab: np.isin(lab, [CAR, PERSON])  # noqa: E731
    assert objects(l0).any() and (objects(l0) != objects(l5)).any()


@pytest.mark.parametrize("seed", [0, 3])
def test_fixed_camera_background_is_static(seed):
    (l0, r0), (l1, r1) = clip(seed=seed, frames=7, fixed_camera=True)[::6]
    objects = np.isin(l0, [CAR, PERSON]) | np.isin(l1, [CAR, PERSON])
    assert objects.any()
    # labels change only where an object is, in either frame
    assert not ((l0 != l1) & ~objects).any()
    # colours change only at objects, their anti-aliased rims, or on the ground (their shadows)
    near = cv2.dilate(objects.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    changed = (r0 != r1).any(-1)
    assert 0 < changed.mean() < 0.6
    assert not (changed & ~near & np.isin(l0, [BUILDING, SKY])).any()


def test_scene_cut_changes_most_pixels():
    frames = clip(seed=4, frames=8, cut_at=5)
    step = lambda a, b: (np.abs(a[1].astype(int) - b[1].astype(int)).max(-1) > 12).mean()  # noqa: E731
    assert step(frames[4], frames[5]) > 0.5
    assert step(frames[4], frames[5]) > 3 * step(frames[3], frames[4])
    # after the cut, the same seed still gives the same frames
    again = clip(seed=4, frames=8, cut_at=[5])
    assert np.array_equal(again[7][1], frames[7][1])


def test_colorize_labels():
    lab = np.arange(NUM_CLASSES, dtype=np.uint8).reshape(1, -1)
    out = colorize_labels(lab)
    assert out.shape == (1, NUM_CLASSES, 3) and out.dtype == np.uint8
    assert np.array_equal(out[0], PALETTE)


def test_bad_config_is_a_user_error():
    with pytest.raises(UserError):
        StreetScene(SceneConfig(height=2, width=64))


def test_write_clip_round_trips_labels(tmp_path):
    from fastv2v.data.scenes import write_clip
    from fastv2v.data.video import open_frames

    config = SceneConfig(height=H, width=W, frames=3, seed=6)
    assert write_clip(config, tmp_path / "labels", tmp_path / "rgb", colour_out=tmp_path / "colour.mp4") == 3
    with open_frames(tmp_path / "labels", labels=True) as labels, open_frames(tmp_path / "rgb") as rgbs:
        for (lab, rgb), (lab2, rgb2) in zip(render_clip(config), zip(labels, rgbs)):
            assert np.array_equal(lab, lab2) and np.array_equal(rgb, rgb2)
    assert (tmp_path / "colour.mp4").is_file()
    with pytest.raises(UserError):
        write_clip(config, tmp_path / "labels.mp4")
