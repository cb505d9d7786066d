"""Edge maps: deterministic, binary, empty on flat images, on the step of a step image; the
``prepare edges`` function writes a complete binary edge video."""

import numpy as np
import pytest

from fastv2v.data.edges import EdgeParams, edge_map, edges_to_rgb, prepare_edges
from fastv2v.data.scenes import SceneConfig, render_clip
from fastv2v.errors import UserError


def textured(seed=0, h=48, w=64):
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[:, w // 3 :] = (200, 40, 40)
    img[h // 2 :, :] = (30, 160, 220)
    return np.clip(img.astype(int) + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)


def test_deterministic_and_binary():
    img = textured()
    a, b = edge_map(img), edge_map(img.copy())
    assert a.shape == img.shape[:2] and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert set(np.unique(a).tolist()) <= {0, 255} and a.any()


def test_flat_image_has_no_edges():
    flat = np.full((32, 40, 3), 117, np.uint8)
    assert not edge_map(flat).any()
    assert not edge_map(flat, EdgeParams(auto=True)).any()


def test_step_image_has_an_edge_on_the_step():
    img = np.zeros((32, 40, 3), np.uint8)
    img[:, 20:] = 255
    e = edge_map(img)
    cols = np.nonzero(e.any(0))[0]
    assert set(cols.tolist()) <= {19, 20}
    assert e[:, 19:21].any(1).all()  # every row crosses the step


def test_dilation_thickens():
    img = np.zeros((32, 40, 3), np.uint8)
    img[:, 20:] = 255
    thin, thick = edge_map(img), edge_map(img, EdgeParams(dilate=1))
    assert thick.sum() > thin.sum() and not (thin & ~thick).any()


def test_auto_thresholds_freeze_per_clip():
    img = textured(1)
    frozen = EdgeParams(auto=True).frozen_for(img)
    assert not frozen.auto and 0 <= frozen.low <= frozen.high
    assert np.array_equal(edge_map(img, frozen), edge_map(img, EdgeParams(auto=True)))


def test_bad_params_are_user_errors():
    with pytest.raises(UserError):
        EdgeParams(low=100, high=50)


def test_edges_to_rgb_replicates():
    e = edge_map(textured())
    rgb = edges_to_rgb(e)
    assert rgb.shape == e.shape + (3,) and all(np.array_equal(rgb[..., c], e) for c in range(3))


def test_prepare_edges_writes_a_binary_edge_video(tmp_path):
    from fastv2v.data.video import open_frames, open_writer

    frames = [rgb for _, rgb in render_clip(SceneConfig(height=48, width=64, frames=3, seed=2))]
    src = tmp_path / "in.mkv"
    with open_writer(src, fps=15, lossless=True) as w:
        for f in frames:
            w.write(f)
    out, rgb_out = tmp_path / "edges.mkv", tmp_path / "rgb"
    assert prepare_edges(src, out, size=(32, 48), paired_out=rgb_out) == 3
    with open_frames(out) as edges, open_frames(rgb_out) as rgbs:
        assert edges.info.fps == 15
        pairs = list(zip(edges, rgbs))
    assert len(pairs) == 3
    for e, rgb in pairs:
        assert e.shape == (32, 48, 3) and rgb.shape == (32, 48, 3)
        assert set(np.unique(e).tolist()) <= {0, 255}
        assert np.array_equal(e[..., 0], edge_map(rgb))  # exactly the recipe, at the output size
    with pytest.raises(UserError):
        prepare_edges(src, out, paired_out=out)
    with pytest.raises(UserError):
        prepare_edges(tmp_path / "missing.mp4", tmp_path / "x.mkv")
    assert not (tmp_path / "x.mkv").exists()
