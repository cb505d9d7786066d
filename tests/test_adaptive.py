"""Adaptive key frames: refresh at cuts, follow motion, keep the fixed interval's budget."""

import pytest
import torch

from fastv2v import UserError
from fastv2v.generators import ResnetGenerator
from fastv2v.methods.schedules import AdaptiveInterval, drift_score
from fastv2v.methods.shortcut import ShortcutBlock, ShortcutMethod

from conftest import assert_videos_do_not_mix, run_online



def simulate(schedule, speeds, cuts=()):
    """Key flags for a video whose content moves ``speeds[i]`` per frame (drift against the
    reference grows with the motion since the key frame) and changes completely at ``cuts``."""
    keys, state, drift, cut_pending = [True], schedule.start(), 0.0, False
    since = 1
    for i in range(1, len(speeds)):
        drift += speeds[i]
        cut_pending = cut_pending or i in cuts
        score = 1.0 if cut_pending else drift
        key, state = schedule.decide(since, score, state)
        keys.append(key)
        if key:
            since, drift, cut_pending = 1, 0.0, False
        else:
            since += 1
    return keys


def test_steady_motion_refreshes_at_the_target_interval():
    keys = simulate(AdaptiveInterval(3), [0.01] * 60)
    positions = [i for i, k in enumerate(keys) if k]
    gaps = [b - a for a, b in zip(positions, positions[1:])]
    assert set(gaps[2:]) <= {2, 3, 4} and abs(sum(gaps) / len(gaps) - 3) < 0.4


def test_a_scene_cut_is_a_key_frame_at_once():
    speeds = [0.01] * 40
    keys = simulate(AdaptiveInterval(4), speeds, cuts={17, 31})
    assert keys[17] and keys[31]


def test_budget_follows_the_motion_and_keeps_the_average():
    speeds = ([0.001] * 30 + [0.03] * 30) * 5  # static then fast, five times
    keys = simulate(AdaptiveInterval(3, max_interval=8), speeds)
    assert abs(sum(keys) - len(speeds) / 3) <= 0.1 * len(speeds) / 3
    static = sum(k for i, k in enumerate(keys) if (i // 30) % 2 == 0)
    moving = sum(k for i, k in enumerate(keys) if (i // 30) % 2 == 1)
    assert moving > 1.5 * static  # key frames go where the motion is


def test_max_interval_bounds_staleness():
    keys = simulate(AdaptiveInterval(3, max_interval=5), [0.0] * 30)
    positions = [i for i, k in enumerate(keys) if k]
    assert max(b - a for a, b in zip(positions, positions[1:])) <= 5


@pytest.mark.parametrize("target,max_interval", [(4, 8), (2.5, None), (3, 12)])
def test_the_spec_a_schedule_writes_parses_back_to_it(target, max_interval):
    from fastv2v.methods.schedules import parse_keyframes

    schedule = AdaptiveInterval(target, max_interval)
    again = parse_keyframes(schedule.spec, interval=7).rule  # the interval does not override the spec's target
    assert (again.target, again.max_interval, again.spec) == (schedule.target, schedule.max_interval, schedule.spec)


def test_bad_settings():
    with pytest.raises(UserError, match="target"):
        AdaptiveInterval(0.5)


def test_drift_score_is_relative():
    a = torch.randn(1, 4, 8, 8)
    assert drift_score(a, a) == 0
    assert drift_score(3 * a, 3 * (a + 0.1)) == pytest.approx(drift_score(a, a + 0.1), rel=1e-5)


# --- the online method with the adaptive schedule ----------------------------------------------


@pytest.fixture(scope="module")
def method():
    torch.manual_seed(0)
    teacher = ResnetGenerator(ngf=8, n_blocks=2).eval()
    return ShortcutMethod(teacher, interval="auto", block=ShortcutBlock(16, 8).eval())


def moving_clip(n, seed, cut=None):
    """Smooth content panning one pixel a frame; at ``cut`` another scene."""
    g = torch.Generator().manual_seed(seed)
    smooth = [torch.nn.functional.interpolate(torch.randn(1, 3, 4, 8, generator=g), size=(32, 64), mode="bicubic")
              for _ in range(2)]  # fmt: skip
    return [torch.roll(smooth[cut is not None and i >= cut], i, dims=3) for i in range(n)]


def test_method_refreshes_at_a_cut_and_key_frames_are_the_teacher(method):
    xs = moving_clip(14, 1, cut=9)
    with torch.no_grad():
        out = list(run_online(method, xs))
        assert out[9][1], [k for _, k in out]
        for x, (y, key) in zip(xs, out):
            if key:
                assert torch.equal(y, method.teacher(x))


def test_adaptive_streams_do_not_mix(method):
    assert_videos_do_not_mix(method, moving_clip(8, 2, cut=5), moving_clip(8, 3))
