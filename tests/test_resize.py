"""Resizing policy: sizes are exact, padding comes off again, labels keep their IDs."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import synthetic_frame
from fastv2v.data.resize import Resizer, parse_size
from fastv2v.errors import UserError


def test_parse_size():
    assert parse_size("256x512") == (256, 512)
    assert parse_size(" 64 X 32 ") == (64, 32) and parse_size("128×96") == (128, 96)
    assert parse_size("256") == (256, 256)
    for bad in ("", "256x", "x256", "axb", "0x64", "-1x3", "2.5x3", "256x512x3"):
        with pytest.raises(UserError, match="HEIGHTxWIDTH"):
            parse_size(bad)


def test_identity_when_nothing_to_do():
    frame = synthetic_frame(1, (33, 47))
    r = Resizer((33, 47))
    assert r.model_hw == r.out_hw == (33, 47)
    assert np.array_equal(r.from_model(r.to_model(frame)), frame)


def test_pad_to_multiple_round_trips_exactly():
    frame = synthetic_frame(2, (33, 47))
    r = Resizer((33, 47), multiple=8)
    assert (r.model_hw, r.box, r.out_hw) == ((40, 48), (3, 0, 33, 47), (33, 47))
    model_in = r.to_model(frame)
    assert model_in.shape == (40, 48, 3)
    assert np.array_equal(model_in[2, :47], frame[1]) and np.array_equal(model_in[4, :47], frame[1])  # reflect
    assert np.array_equal(model_in[3:36, 47], frame[:, 45])
    assert np.array_equal(r.from_model(model_in), frame)
    # A generator that doubles the resolution: the box scales with it.
    doubled = np.repeat(np.repeat(model_in, 2, 0), 2, 1)
    assert np.array_equal(r.from_model(doubled), np.repeat(np.repeat(frame, 2, 0), 2, 1))
    with pytest.raises(ValueError):
        r.from_model(model_in[:, :40])


def test_pad_keeps_aspect_ratio():
    r = Resizer((18, 32), size=(8, 8), mode="pad")  # scale 1/4 -> 4.5 rounds up to 5 rows
    assert (r.scaled_hw, r.model_hw, r.box) == ((5, 8), (8, 8), (1, 0, 5, 8))
    out = r.to_model(np.full((18, 32, 3), 77, np.uint8))
    assert out.shape == (8, 8, 3) and (out == 77).all()  # area averaging keeps a flat colour
    assert r.from_model(out).shape == (5, 8, 3)
    wide = Resizer((1080, 1920), size=(256, 512), multiple=32)
    assert (wide.scaled_hw, wide.model_hw) == ((256, 455), (256, 512))


def test_crop_and_stretch():
    r = Resizer((18, 32), size=(8, 8), mode="crop")  # scale 4/9 covers: 8 x 14.2 -> crop 8x8
    assert (r.scaled_hw, r.model_hw, r.out_hw) == ((8, 14), (8, 8), (8, 8))
    frame = synthetic_frame(0, (18, 32))
    assert r.from_model(r.to_model(frame)).shape == (8, 8, 3)
    c = Resizer((33, 47), mode="crop", multiple=8)
    assert c.model_hw == (32, 40)
    assert np.array_equal(c.to_model(frame := synthetic_frame(3, (33, 47))), frame[0:32, 3:43])
    s = Resizer((33, 47), size=(20, 30), mode="stretch", multiple=8)
    assert s.model_hw == s.out_hw == (24, 32)
    assert s.to_model(frame).shape == (24, 32, 3)
    with pytest.raises(UserError, match="multiple of 64"):
        Resizer((33, 47), mode="crop", multiple=64)


def test_labels_use_nearest_and_edge_padding():
    ids = np.array([[0, 1, 2], [3, 4, 65000]], dtype=np.uint16)
    up = Resizer((2, 3), size=(4, 6)).to_model(ids)
    assert up.dtype == np.uint16 and np.array_equal(up, np.repeat(np.repeat(ids, 2, 0), 2, 1))
    down = Resizer((4, 6), size=(2, 3)).to_model(np.repeat(np.repeat(ids, 2, 0), 2, 1))
    assert np.array_equal(down, ids)
    padded = Resizer((2, 3), multiple=4).to_model(ids)  # 2x3 -> 4x4, edge-replicated
    assert padded.shape == (4, 4)
    assert set(np.unique(padded)) <= set(np.unique(ids))
    assert np.array_equal(padded[0], padded[1]) and np.array_equal(padded[1, :3], ids[0])
    odd = Resizer((33, 47), size=(16, 16), mode="crop").to_model(np.arange(33 * 47).reshape(33, 47) % 7)
    assert odd.shape == (16, 16) and odd.max() <= 6


def test_wrong_input_size_is_refused():
    with pytest.raises(ValueError):
        Resizer((32, 48)).to_model(np.zeros((48, 32, 3), np.uint8))
