"""Key-frame schedules and interpolation between key-frame outputs (Fast-Vid2Vid's temporal half):
``fixed``/``peaks`` schedules, ``interp`` and ``minterpolate``, the buffered engine and its errors."""

from fractions import Fraction

import av
import cv2
import numpy as np
import pytest
import torch
from torch import nn

from fastv2v import UserError
from fastv2v.bench import run_bench
from fastv2v.engine.loop import drive
from fastv2v.cli import main
from fastv2v.data.video import open_frames
from fastv2v.generators import ResnetGenerator, build_generator, save_generator
from fastv2v.generators.base import SplitGenerator
from fastv2v.methods.base import METHODS
from fastv2v.methods.interpolate import keep_zero_motion, minterpolate_frames, photometric_visibility
from fastv2v.methods.schedules import (
    FixedKeys,
    PeakKeys,
    frame_change,
    hann_smooth,
    key_indices,
    parse_keyframes,
)
from fastv2v.tasks import generator_config


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one thread


class IdentityTeacher(SplitGenerator):
    """A "teacher" whose output is its input, so the right in-between output is the input itself."""

    def __init__(self):
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Identity(), nn.Identity())
        self.split, self.config, self.size_multiple = (1, 2), {"arch": "identity", "ngf": 1}, 1
        self.input_nc = self.output_nc = 3
        self.anchor = nn.Parameter(torch.zeros(1))  # encode_input reads the device from a parameter


def texture(h, w, seed=0):
    noise = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (9, 9), 2.5)


def panning(n, h=48, w=64, speed=1.5, seed=0, cut=None):
    """A texture moving right to left by ``speed`` px per frame; a new texture from frame ``cut`` on."""
    frames = []
    for i in range(n):
        big = texture(h, w + int(speed * n) + 16, seed if cut is None or i < cut else seed + 1)
        shift = np.float32([[1, 0, -speed * i], [0, 1, 0]])
        frames.append(cv2.warpAffine(big, shift, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
    return frames


def psnr(a, b, margin=8):
    err = (a.astype(np.float64) - b.astype(np.float64))[:, margin:-margin]
    return 10 * np.log10(255.0**2 / max(np.mean(err**2), 1e-12))


def run(method, g, frames):
    xs = [g.encode_input(torch.from_numpy(f[None])) for f in frames]
    with torch.no_grad():
        out = [(o.y, o.key) for o in drive(method, xs)]
    return [g.decode_output(y)[0].numpy() for y, _ in out], [k for _, k in out]


class ListKeys:
    """A schedule with key frames at given indices (any object with the protocol works)."""

    lookahead, max_gap = 0, None

    def __init__(self, keys):
        self.keys = set(keys)

    def init_state(self):
        return 0

    def push(self, frame, state):
        return [state in self.keys], state + 1

    def flush(self, state):
        return []


# ---------------------------------------------------------------------------------------------
# schedules


def test_fixed_keys_include_frame_zero_every_nth_and_the_last():
    assert key_indices("fixed:4", range(10)) == [0, 4, 8, 9]
    assert key_indices("fixed:3", range(7)) == [0, 3, 6]  # the last frame is already key
    assert key_indices(FixedKeys(1), range(3)) == [0, 1, 2]
    assert parse_keyframes(None, 5).spec == "fixed:5"


def test_hann_smoothing():
    assert np.allclose(hann_smooth([0, 0, 1, 0, 0], 5), [0, 0.25, 0.5, 0.25, 0])  # [0, .5, 1, .5, 0] / 2
    assert np.allclose(hann_smooth([3, 1, 4, 1, 5], 3), [3, 1, 4, 1, 5])  # np.hanning(3) = [0, 1, 0]
    assert np.allclose(hann_smooth([2.0] * 6, 7), 2.0)  # cut windows are renormalised at the ends


def test_change_signal_luv_and_labels():
    a = texture(16, 16)
    assert frame_change(a, a) == 0 and frame_change(a, 255 - a) > frame_change(a, np.roll(a, 1, 1)) > 0
    labels = np.zeros((4, 5), np.int32)
    changed = labels.copy()
    changed[0, :2] = 3
    assert frame_change(labels, changed) == pytest.approx(2 / 20)


def test_peaks_pick_the_cut():
    frames = panning(24, speed=2.0, cut=12)
    change = [frame_change(a, b) for a, b in zip(frames, frames[1:])]
    assert int(np.argmax(change)) + 1 == 12  # the cut is where the input changes most
    for spec in ("peaks", "peaks:window=5,max=30"):
        keys = key_indices(spec, frames)
        assert 12 in keys and 11 not in keys  # the first frame after the cut, as the released code


def test_peaks_streaming_equals_the_offline_rule():
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(30)]
    change = [frame_change(a, b) for a, b in zip(frames, frames[1:])]  # change[j - 1]: into frame j
    for window in (3, 5):
        s = hann_smooth(change, window)
        maxima = [j + 1 for j in range(1, len(s) - 1) if s[j] > s[j - 1] and s[j] > s[j + 1]]
        assert key_indices(PeakKeys(window, max_gap=100), frames) == [0, *maxima, 29]


def test_peaks_static_clip_still_gets_key_frames():
    assert key_indices("peaks:max=5", [texture(16, 16)] * 13) == [0, 5, 10, 12]


def test_unknown_keyframes_specs_are_user_errors():
    for bad in ("sometimes", "fixed:0", "peaks:window=4", "peaks:speed=2", "peaks:max=x"):
        with pytest.raises(UserError):
            parse_keyframes(bad)


def test_online_rule_is_adapted():
    class EveryThird:  # any object with is_key(since_key)
        def is_key(self, since_key):
            return since_key >= 3

    assert key_indices(EveryThird(), range(8)) == [0, 3, 6, 7]


# ---------------------------------------------------------------------------------------------
# interpolation


def test_interp_beats_repeat_and_cross_fade_on_a_moving_pattern():
    g = IdentityTeacher()
    frames = panning(5, h=64, w=96, speed=2.5)  # 10 px over the gap (minterpolate needs a few 16 px blocks)
    mid = {}
    for name in ("repeat", "interp", "minterpolate"):
        outs, keys = run(METHODS[name](g, 4), g, frames)
        assert keys == [True, False, False, False, True]
        mid[name] = psnr(outs[2], frames[2])
    cross_fade = psnr(((frames[0].astype(float) + frames[4]) / 2).round(), frames[2])
    outs, _ = run(METHODS["interp"](g, 4, flow="none"), g, frames)  # the cross-fade baseline
    assert abs(psnr(outs[2], frames[2]) - cross_fade) < 0.5
    assert mid["interp"] > mid["repeat"] + 15 and mid["interp"] > cross_fade + 15
    assert mid["minterpolate"] > mid["repeat"] + 5 and mid["minterpolate"] > cross_fade + 5


def test_interp_keys_flow_and_output_flow_also_work():
    g = IdentityTeacher()
    frames = panning(5, speed=1.5)
    for kwargs in ({"flow": "keys"}, {"flow": "keys", "source": "output"}):
        outs, _ = run(METHODS["interp"](g, 4, **kwargs), g, frames)
        assert psnr(outs[2], frames[2]) > psnr(frames[0], frames[2]) + 8


def test_visibility_comes_from_the_key_frame_that_shows_the_pixel():
    """A square moves right over a still textured background; where it stood in key frame 0 the
    frame shows background again: key 0 cannot explain those pixels (it shows the square), key 1
    can. Flow here is the true one: zero on the background, the square's motion on it."""
    back = texture(48, 64, seed=3)[..., 0].astype(np.float32)
    square = np.full((16, 12), 250.0, np.float32)

    def scene(x):
        out = back.copy()
        out[16:32, x : x + 12] = square
        return out

    k0, frame, k1 = scene(10), scene(24), scene(38)
    f0, f1 = np.zeros((48, 64, 2), np.float32), np.zeros((48, 64, 2), np.float32)
    f0[16:32, 24:36, 0], f1[16:32, 24:36, 0] = -14, 14
    v0, v1 = photometric_visibility(frame, k0, f0), photometric_visibility(frame, k1, f1)
    revealed = (slice(19, 29), slice(12, 21))  # square in key 0, background now (away from edges)
    assert v0[revealed].max() < 0.2 and v1[revealed].min() > 0.9
    assert v0[19:29, 26:34].min() > 0.9 and v1[19:29, 26:34].min() > 0.9  # the square itself: both see it


def test_flow_runs_at_a_reduced_size_but_never_below_32_pixels():
    interp = METHODS["interp"](IdentityTeacher(), 4)
    assert interp.flow_scale == 0.5
    assert interp._flow_size(np.zeros((128, 256, 3), np.uint8)) == (128, 64)
    assert interp._flow_size(np.zeros((40, 64, 3), np.uint8)) == (51, 32)
    assert METHODS["interp"](IdentityTeacher(), 4, flow_scale=1)._flow_size(np.zeros((128, 256))) == (256, 128)
    with pytest.raises(UserError, match="flow_scale"):
        METHODS["interp"](IdentityTeacher(), 4, flow_scale=0)


def test_flow_settings_by_source():
    """Inputs: smoothed before DIS, no zero-motion snapping (it cannot see the output's texture
    where the input is flat); outputs: snapping on. Both can be set."""
    pictures = METHODS["interp"](IdentityTeacher(), 4)
    assert (pictures.flow, pictures.smooth, pictures.zero_margin) == ("direct", 1.5, None)
    assert METHODS["interp"](IdentityTeacher(), 4, flow="keys", source="output").zero_margin == 3.0
    assert METHODS["interp"](IdentityTeacher(), 4, zero_margin=2.0, smooth=0).zero_margin == 2.0
    assert pictures.refine == 0 and METHODS["interp"](IdentityTeacher(), 4, flow="keys", source="output").refine == 0
    assert METHODS["interp"](IdentityTeacher(), 4, refine=None).refine is None  # the preset's own
    with pytest.raises(UserError, match="refine"):
        METHODS["interp"](IdentityTeacher(), 4, refine=-1)
    with pytest.raises(UserError, match="smooth"):
        METHODS["interp"](IdentityTeacher(), 4, smooth=-1)


def test_fixed_schedule_with_output_flow_never_reads_the_inputs(monkeypatch):
    """Label maps with flow between key outputs: making each input's picture (an argmax over the
    classes, a few ms a frame) would be wasted work, so it is skipped; peaks still reads them."""
    torch.manual_seed(0)
    g = ResnetGenerator(input_nc=5, ngf=4, n_blocks=1, label_nc=5).eval()
    labels = [np.random.default_rng(i).integers(0, 5, (32, 32)) for i in range(7)]
    xs = [g.encode_input(torch.from_numpy(lab[None])) for lab in labels]
    seen = []
    original = METHODS["interp"]._picture
    monkeypatch.setattr(METHODS["interp"], "_picture", lambda self, x: seen.append(1) or original(self, x))
    with torch.no_grad():
        assert len(list(drive(METHODS["interp"](g, 3), xs))) == 7 and not seen
        assert len(list(drive(METHODS["interp"](g, 3, keyframes="peaks"), xs))) == 7 and len(seen) == 7


@pytest.mark.parametrize("name", ["interp", "minterpolate"])
def test_key_frames_are_the_teacher_bit_for_bit(name):
    torch.manual_seed(0)
    g = ResnetGenerator(ngf=4, n_blocks=1).eval()
    frames = panning(7, h=32, w=32)
    xs = [g.encode_input(torch.from_numpy(f[None])) for f in frames]
    with torch.no_grad():
        out = [(o.y, o.key) for o in drive(METHODS[name](g, 3), xs)]
        assert [k for _, k in out] == [True, False, False, True, False, False, True]
        for x, (y, key) in zip(xs, out):
            if key:
                assert torch.equal(y, g(x))


@pytest.mark.parametrize("name", ["interp", "minterpolate"])
def test_uneven_key_spacing_places_frames_at_their_true_times(name):
    g = IdentityTeacher()
    frames = panning(9, h=64, w=96, speed=1.5)
    outs, keys = run(METHODS[name](g, 4, keyframes=ListKeys({0, 1, 6})), g, frames)
    assert [i for i, k in enumerate(keys) if k] == [0, 1, 6, 8]
    for i, out in enumerate(outs):
        if not keys[i]:  # each in-between frame looks most like the true frame i, not a neighbour
            errors = [np.abs(out.astype(float) - f)[:, 12:-12].mean() for f in frames]
            assert int(np.argmin(errors)) == i, (i, errors)


def test_zero_motion_is_kept_where_nothing_moved():
    a = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (32, 64, 3), dtype=np.uint8), (0, 0), 1.0)
    b = a.copy()
    b[:, :32] = np.roll(a, 2, axis=1)[:, :32]  # the left half moved 2 px right: a(x) = b(x + 2)
    flow = np.zeros((32, 64, 2), np.float32)
    flow[:, :32, 0] = 2.0
    flow[:, 32:, 0] = 0.4  # what DIS reports on still regions: small spurious motion
    kept = keep_zero_motion(a, b, flow)
    assert np.all(kept[:, 4:26, 0] == 2.0) and np.all(kept[:, 40:, :] == 0)


def test_minterpolate_gives_the_frames_in_between_in_order():
    frames = panning(7, h=64, w=96, speed=1.5)
    got = minterpolate_frames(frames[0], frames[6], 6, [3, 1, 5, 2, 4])
    assert len(got) == 5 and all(f.shape == frames[0].shape and f.dtype == np.uint8 for f in got)
    for offset, f in zip([3, 1, 5, 2, 4], got):
        errors = [np.abs(f.astype(float) - ref)[:, 12:-12].mean() for ref in frames]
        assert int(np.argmin(errors)) == offset
    small = minterpolate_frames(frames[0][:20, :24], frames[2][:20, :24], 2, [1])  # padded to 32 and back
    assert small[0].shape == (20, 24, 3)


def test_buffer_is_bounded_by_one_gap_and_the_last_frame_is_key():
    g = IdentityTeacher()
    frames = panning(14, h=32, w=32)
    for spec, bound in (("fixed:4", 3), ("peaks:max=4", 3 + 2)):
        method = METHODS["interp"](g, 4, keyframes=spec)
        assert method.max_latency == bound
        state, count, keys = method.init_state(), 0, []
        with torch.no_grad():
            for f in frames:
                ready, state = method.push(g.encode_input(torch.from_numpy(f[None])), state)
                keys += [k for _, k in ready]
                count += 1
                assert count - len(keys) <= bound and state.held == count - len(keys)
            keys += [k for _, k in method.flush(state)]
        assert len(keys) == 14 and keys[0] and keys[-1]


def test_buffered_methods_have_no_step():
    method = METHODS["interp"](IdentityTeacher(), 2)
    with pytest.raises(TypeError, match="push"):
        method.step(torch.zeros(1, 3, 8, 8), method.init_state())


def test_the_bench_runs_interp_and_minterpolate(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "scenes_tiny.safetensors"
    save_generator(path, build_generator("resnet_6blocks", **generator_config("scenes", ngf=4)))
    report = run_bench(path, "scenes", methods="teacher,repeat,interp,minterpolate", size=(32, 32), frames=6,
                       intervals=[2], threads=1)  # fmt: skip
    rows = {r["method"]: r for r in report["results"]}
    teacher = rows["teacher"]
    for name in ("interp", "minterpolate"):
        r = rows[name]
        assert r["frames"] == 6 and r["keyframes"] == 4  # frames 0, 2, 4 and the last
        assert r["macs_total"]["exact"] >= teacher["macs_total"]["exact"] * 4 // 6
        assert isinstance(r["macs_nonkey"]["exact"], float) and r["macs_nonkey"]["exact"] < 1e-3
        assert "0 MACs" in r["notes"]["macs_uncounted"]
        assert r["psnr_vs_teacher_nonkey"] > rows["repeat"]["psnr_vs_teacher_nonkey"]
        assert r["e2e_fps"] > 0
    from fastv2v.bench import markdown

    text = markdown(report)  # the uncounted work is in the report a person reads, not only in bench.json
    assert "Work outside torch" in text and f"interp@2: {rows['interp']['notes']['macs_uncounted']}" in text
    assert "repeat@2:" not in text.split("Work outside torch")[1]


# ---------------------------------------------------------------------------------------------
# the buffered engine and its errors


@pytest.fixture
def tiny_model(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tiny.pth"
    torch.save(ResnetGenerator(ngf=4, n_blocks=1).state_dict(), path)
    return path


def translate(args, capsys):
    code = main([str(a) for a in ["translate", *args, "--quiet"]])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_translate_interp_writes_every_frame_and_reports_latency(tiny_model, make_video, tmp_path, capsys):
    src = make_video(frames=9, size=(32, 32), fps=Fraction(25))
    for method, extra in (("interp", []), ("minterpolate", ["--keyframes", "peaks"])):
        out = tmp_path / f"{method}"
        code, stdout, err = translate([src, out, "--model", tiny_model, "--method", method, *extra], capsys)
        assert code == 0, err
        assert "added latency: up to" in stdout and "held for the next key frame" in stdout
        with open_frames(out) as frames:
            assert len(list(frames)) == 9


def test_translate_key_frames_equal_the_teacher(tiny_model, make_video, tmp_path, capsys):
    src = make_video(frames=5, size=(32, 32), fps=Fraction(25))
    teacher, interp = tmp_path / "teacher", tmp_path / "interp"
    assert translate([src, teacher, "--model", tiny_model], capsys)[0] == 0
    assert translate([src, interp, "--model", tiny_model, "--method", "interp", "--interval", "2"], capsys)[0] == 0
    with open_frames(teacher) as a, open_frames(interp) as b:
        pairs = list(zip(a, b, strict=True))
    assert all(np.array_equal(t, i) for t, i in pairs[::2])  # frames 0, 2, 4 are key frames


def test_translate_errors(tiny_model, make_video, tmp_path, capsys):
    src = make_video(frames=4, size=(32, 32), fps=Fraction(25))
    out = tmp_path / "out.mp4"
    cases = [
        (["--method", "interp", "--keyframes", "often"], "unknown --keyframes 'often'"),
        (["--method", "repeat", "--keyframes", "peaks"], "--keyframes does not apply to --method repeat"),
        (["--method", "interp", "--keyframes", "fixed:4"], "has 4 frames, fewer than the 5 that one key-frame gap"),
    ]
    for extra, message in cases:
        code, _, err = translate([src, out, "--model", tiny_model, *extra], capsys)
        assert code == 2 and message in err and err.count("\n") == 1, err
        assert not out.exists()


def test_variable_frame_rate_is_refused(tiny_model, tmp_path, capsys):
    src = tmp_path / "vfr.mp4"
    with av.open(str(src), mode="w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.height, stream.width, stream.pix_fmt = 32, 32, "yuv420p"
        stream.time_base = Fraction(1, 25)
        for i, pts in enumerate([0, 1, 2, 4, 5, 6, 7, 8]):  # a frame is missing after the third
            frame = av.VideoFrame.from_ndarray(texture(32, 32, i), format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 25)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    out = tmp_path / "out.mp4"
    code, _, err = translate([src, out, "--model", tiny_model, "--method", "interp", "--interval", "2"], capsys)
    assert code == 2 and "variable frame rate" in err and "-fps_mode cfr" in err and not out.exists()
    assert translate([src, out, "--model", tiny_model], capsys)[0] == 0  # the teacher alone does not care
