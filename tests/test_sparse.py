"""Sparse incremental inference: exact where the maths says so, cheap where nothing changed.

The reference for a non-key frame is the dense pass with the key frame's norm statistics
frozen (``dense_frozen``), computed with the real modules, so every check below compares the
tiled gather / conv / scatter machinery against plain PyTorch layers.
"""

import pytest
import torch
from torch import nn

from fastv2v import UserError
from fastv2v.generators import GlobalGenerator, ResnetGenerator
from fastv2v.methods.base import METHODS
from fastv2v.methods.sparse import SparseMethod
from fastv2v.methods.sparse_engine import SparseRunner, run_frozen
from fastv2v.metrics.profile import profile

from conftest import assert_videos_do_not_mix

TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one thread


def _gen(kind):
    torch.manual_seed(0)
    if kind == "resnet":
        return ResnetGenerator(ngf=4, n_blocks=2).eval()
    if kind == "resnet-zero-pad":
        return ResnetGenerator(ngf=4, n_blocks=1, padding_type="zero").eval()
    return GlobalGenerator(ngf=4, n_downsampling=3, n_blocks=2).eval()


def _edit(x, rows, cols, amount=0.7):
    y = x.clone()
    y[:, :, rows, cols] += amount
    return y


@pytest.mark.parametrize(
    "kind, size, tile, dense_above",
    [
        ("resnet", (64, 64), 4, 0.7),
        ("resnet", (64, 64), 4, 1.0),  # always tiles
        ("resnet", (64, 64), 4, 1e-3),  # always the whole-image fallback
        ("resnet", (36, 44), {1: 16, 2: 8, 4: 8}, 0.7),  # ragged tiles at every resolution
        ("resnet-zero-pad", (40, 48), 8, 0.7),
        ("global", (48, 64), {1: 8, 8: 2}, 0.7),
    ],
)
def test_threshold_zero_equals_dense_with_frozen_statistics(kind, size, tile, dense_above):
    g = _gen(kind)
    runner = SparseRunner(g.model, tile=tile, reach=None, dense_above=dense_above)
    h, w = size
    x = torch.randn(1, 3, h, w)
    with torch.no_grad():
        y, cache = runner.key(x)
        assert torch.equal(y, g(x))  # a key frame is the teacher, bit for bit
        # edits at the corners (reflected borders), the middle, then an overlapping one
        for rows, cols in [
            (slice(0, 3), slice(0, 5)),
            (slice(h - 2, h), slice(w - 7, w)),
            (slice(h // 2 - 3, h // 2 + 2), slice(w // 3, w // 3 + 4)),
            (slice(0, h), slice(w - 1, w)),
        ]:
            x = _edit(x, rows, cols)
            y, stats = runner.update(x, cache)
            assert (y - runner.dense_frozen(x, cache)).abs().max() < TOL
            assert 0 < stats.macs_exact


def test_unchanged_frame_costs_nothing_and_returns_the_cached_output():
    g = _gen("resnet")
    runner = SparseRunner(g.model, tile=4)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        y0, cache = runner.key(x)
        x1 = _edit(x, slice(4, 8), slice(4, 8))
        y1, _ = runner.update(x1, cache)
        schedule = runner.schedule(x1, cache)
        y2, stats = runner.update(x1, cache, schedule)
    assert all(t is None for t in schedule.tiles) and schedule.macs == (0, 0)
    assert stats.macs_exact == stats.macs_paper == 0 and stats.changed == 0
    assert torch.equal(y2, y1)
    y2 += 1  # the output is a fresh tensor: the cache does not change under the caller
    with torch.no_grad():
        assert torch.equal(runner.update(x1, cache)[0], y1)


def test_changed_square_activates_only_tiles_it_can_reach():
    torch.manual_seed(0)
    g = ResnetGenerator(ngf=4, n_blocks=1).eval()
    runner = SparseRunner(g.model, tile=4, reach=None)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        _, cache = runner.key(x)
        x1 = _edit(x, slice(0, 4), slice(0, 4))  # a 4x4 square in the top-left corner
        schedule = runner.schedule(x1, cache)
        y, _ = runner.update(x1, cache, schedule)
        assert (y - runner.dense_frozen(x1, cache)).abs().max() < TOL
    # the first conv (7x7, reflect) reaches 3 pixels: tiles (0..1, 0..1) only
    assert sorted(map(tuple, schedule.tiles[0].tolist())) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    # the whole network reaches about 23 input pixels: nothing past 32 is ever touched
    for p, idx in zip(cache.plan.nodes, schedule.tiles):
        factor = 64 // p.grid.H
        assert idx is not None and len(idx) < p.grid.count
        assert int(idx.max()) * p.grid.th * factor < 32


def test_deltacnn_rule_small_changes_accumulate_until_they_cross_the_threshold():
    g = _gen("resnet")
    runner = SparseRunner(g.model, tile=4, threshold=0.1, reach=None)
    x0 = torch.randn(1, 3, 32, 32)
    region = (slice(8, 12), slice(8, 12))
    with torch.no_grad():
        y0, cache = runner.key(x0)
        x1 = _edit(x0, *region, amount=0.06)  # below the threshold: nothing runs
        y1, s1 = runner.update(x1, cache)
        assert s1.macs_exact == 0 and torch.equal(y1, y0) and torch.equal(cache.ref, x0)
        x2 = _edit(x1, *region, amount=0.06)  # 0.12 from the reference: it crosses
        y2, s2 = runner.update(x2, cache)
        assert s2.macs_exact > 0 and torch.equal(cache.ref, x2)
        assert (y2 - runner.dense_frozen(x2, cache)).abs().max() < TOL
        # were the reference refreshed every frame, the drift would never have been seen


def test_feature_threshold_prunes_work_with_a_bounded_error():
    g = _gen("resnet")
    x0 = torch.randn(1, 3, 64, 64)
    x1 = _edit(x0, slice(20, 28), slice(20, 28), amount=0.2)
    results = {}
    with torch.no_grad():
        for ft in (0.0, 0.05):
            runner = SparseRunner(g.model, tile=4, reach=None, feature_threshold=ft)
            _, cache = runner.key(x0)
            y, stats = runner.update(x1, cache)
            results[ft] = (stats.macs_exact, (y - runner.dense_frozen(x1, cache)).abs().max())
    assert results[0.05][0] < results[0.0][0]
    assert results[0.0][1] < TOL and results[0.05][1] < 0.1


def test_reach_caps_the_spread_of_recomputation():
    g = _gen("resnet")
    x0 = torch.randn(1, 3, 64, 64)
    x1 = _edit(x0, slice(28, 32), slice(28, 32))
    macs = {}
    with torch.no_grad():
        for reach in (None, 4, 0):
            runner = SparseRunner(g.model, tile=4, reach=reach)
            _, cache = runner.key(x0)
            macs[reach] = runner.update(x1, cache)[1].macs_exact
    assert macs[0] < macs[4] < macs[None]


def test_method_refreshes_above_break_even_and_after_max_interval():
    g = _gen("resnet")
    method = METHODS["sparse"](g, max_interval=3, break_even=0.6, tile=4, reach=None)
    x = torch.randn(1, 3, 64, 64)
    big = _edit(x, slice(0, 64), slice(0, 40))
    frames = [x, _edit(x, slice(0, 2), slice(0, 2)), big, big, big, big, big]
    state, keys = method.init_state(), []
    with torch.no_grad():
        for f in frames:
            y, state, key = method.step(f, state)
            keys.append(key)
            if key:
                assert torch.equal(y, g(f))
                assert state.last.key
    # frame 2 changes most of the image (above break-even); 3 and 4 follow it; 5 is the
    # third frame since the key frame at 2
    assert keys == [True, False, True, False, False, True, False]
    assert state.totals["frames"] == 7 and state.totals["keys"] == 3


def test_moving_footage_runs_the_plain_teacher_until_it_calms_down(monkeypatch):
    """The second key frame in a row forced by the cost skips the cache (a wasted 1.5x pass on a
    panning camera): plain teacher passes until a frame is predicted below break-even again,
    which refills the cache so that sparse frames follow."""
    g = _gen("resnet")
    method = METHODS["sparse"](g, max_interval=8, break_even=0.6, tile=4, reach=None)
    fills = []
    key_pass = method.runner.key
    monkeypatch.setattr(method.runner, "key", lambda *a, **k: fills.append(len(keys)) or key_pass(*a, **k))
    torch.manual_seed(2)
    moving = [torch.randn(1, 3, 64, 64) for _ in range(4)]  # every pixel changes every frame
    frames = moving + [moving[-1], _edit(moving[-1], slice(0, 4), slice(0, 4))]
    state, keys = method.init_state(), []
    with torch.no_grad():
        for f in frames:
            y, state, key = method.step(f, state)
            if key:
                assert torch.equal(y, g(f))
            keys.append(key)
    assert keys == [True, True, True, True, True, False]
    assert fills == [0, 1, 4]  # the first frame, the first forced key, the frame that stood still
    assert state.streak is None and state.totals["keys"] == 5


def test_two_interleaved_videos_do_not_mix():
    g = _gen("resnet")
    method = SparseMethod(g, max_interval=4, tile=4, reach=None, break_even=1.0)
    torch.manual_seed(1)
    base_a, base_b = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)
    a = [_edit(base_a, slice(i, i + 3), slice(2, 6)) for i in range(5)]
    b = [_edit(base_b, slice(20, 24), slice(i, i + 5)) for i in range(5)]

    assert_videos_do_not_mix(method, a, b)


@pytest.mark.parametrize("part", ["all", "body"])
def test_counted_macs_are_what_the_op_level_profiler_sees(part):
    g = _gen("resnet")
    method = SparseMethod(g, max_interval=5, tile=4, part=part, break_even=1.0)
    x = torch.randn(1, 3, 64, 64)
    state = method.init_state()
    for i in range(4):
        frame = _edit(x, slice(4 * i, 4 * i + 4), slice(10, 20))
        box = {}

        def run(frame=frame):
            box["y"], box["state"], box["key"] = method.step(frame, box.get("state", state))

        box["state"] = state
        counted = profile(run)
        state = box["state"]
        assert box["key"] == (i == 0)
        assert (state.last.macs_exact, state.last.macs_paper) == (counted.macs_exact, counted.macs_paper)
        if i:
            assert state.last.macs_exact < state.last.dense_macs_exact


def test_body_part_freezes_the_head_and_runs_the_tail_densely():
    g = _gen("resnet")
    method = SparseMethod(g, max_interval=10, tile=4, part="body", reach=None, break_even=1.0)
    x = torch.randn(1, 3, 128, 128)
    state = method.init_state()
    with torch.no_grad():
        y, state, key = method.step(x, state)
        assert key and torch.equal(y, g(x))
        x1 = _edit(x, slice(40, 48), slice(60, 70))
        y1, state, key = method.step(x1, state)
        assert not key
        frozen = g.tail(run_frozen(g.body, run_frozen(g.head, x1, state.head_affines), state.cache.affines))
    assert (y1 - frozen).abs().max() < TOL


def test_batchnorm_and_other_activations_fold_and_convert():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.ReplicationPad2d(2), nn.Conv2d(3, 6, 5, bias=False), nn.BatchNorm2d(6), nn.LeakyReLU(0.2),
        nn.Conv2d(6, 6, 3, stride=2, padding=1, padding_mode="reflect"), nn.BatchNorm2d(6), nn.Sigmoid(),
    )  # fmt: skip
    for m in net:
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
            m.weight.data.normal_()
            m.bias.data.normal_()
    net.eval()
    runner = SparseRunner(net, tile=4, reach=None)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        _, cache = runner.key(x)
        x1 = _edit(x, slice(0, 5), slice(20, 32))
        y, _ = runner.update(x1, cache)
        assert (y - net(x1)).abs().max() < TOL  # eval BatchNorm is frozen anyway: dense = module


def test_layers_it_cannot_convert_are_named():
    with pytest.raises(UserError, match="Upsample"):
        SparseRunner(nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.Upsample(scale_factor=2)))
    with pytest.raises(UserError, match="one frame at a time"):
        SparseRunner(_gen("resnet").model).key(torch.randn(2, 3, 16, 16))
