"""The elastic student (Anycost-style sub-networks of one pruned student) and the online temporal
shift (TSM): exactness of sorting, slicing and copying out sub-networks; the shift's state; the
sandwich distillation (resume exactness); choosing and switching sub-networks in ``spatial`` and
``fast``; the benchmark's rows per sub-network; the CLI's one-sentence refusals."""

import time

import pytest
import torch

from fastv2v import UserError
from fastv2v.generators.elastic import Subnet, run_layers, sort_channels, subnetwork
from fastv2v.generators.student import student_from_teacher
from fastv2v.methods.student import Fast, Spatial
from fastv2v.methods.student_model import StudentModel, load_student, save_student

from conftest import assert_videos_do_not_mix, run_cli, run_online
from test_student import clip, distill_config, make_teacher, pairs, teacher_file  # noqa: F401  (a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

SUBNETS = ["w8", "w6", "w4", "w2", "w8/2", "w4/2"]


def elastic_student(shift=0.0, seed=1):
    torch.manual_seed(seed)
    s = student_from_teacher(make_teacher(), body="pruned", width=8, temporal_shift=shift, elastic=SUBNETS)
    with torch.no_grad():
        for p in s.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return s.eval()


def test_sorting_channels_keeps_the_function_and_puts_the_strongest_first():
    s = elastic_student()
    x = clip(1, 3)[0]
    with torch.no_grad():
        before = s(x)
        sort_channels(s)
        after = s(x)
    torch.testing.assert_close(after, before, atol=2e-5, rtol=0)
    first = s.model[1].weight.abs().flatten(1).sum(1)
    assert torch.all(first[:-1] >= first[1:])  # the first conv's outputs, strongest first
    down = s.model[7].weight.abs().flatten(1).sum(1)  # the conv that starts the residual stream
    assert torch.all(down[:-1] >= down[1:])


@pytest.mark.parametrize("label", SUBNETS)
def test_a_copied_out_subnetwork_equals_the_sliced_one_bit_for_bit(label):
    s = elastic_student()
    sub = Subnet.parse(label)
    x = clip(1, 4)[0]
    with torch.no_grad():
        small = subnetwork(s, sub).eval()
        assert torch.equal(small(x), run_layers(s, x, sub.width, sub.divisor).y)
    assert small.config["width"] == sub.width and small.config.get("divisor", 1) == sub.divisor
    assert small(x).shape == x.shape
    if sub.width == 8 and sub.divisor == 1:
        assert torch.equal(small(x), s(x))  # the whole student: the plain modules, same numbers


def test_the_temporal_shift_reads_the_previous_frame_and_starts_as_the_plain_network():
    s = elastic_student(shift=0.25)
    a, b = clip(2, 5)
    with torch.no_grad():
        y0, present = s.step(a, None)
        assert torch.equal(y0, s(a))  # the first frame: every block uses its own channels
        assert len(present) == 2 and present[0].shape[1] == 8  # 2 blocks, a quarter of 32 stream channels
        y1, _ = s.step(b, present)
        assert not torch.allclose(y1, s(b))  # the second frame sees the first
        y_same, _ = s.step(b, s.step(b, None)[1])
        torch.testing.assert_close(y_same, s(b))  # a still video: the shift changes nothing


def run_switching(method, xs, at, subnet):
    """``(y, key)`` of every frame of ``xs`` through ``method``, switched to ``subnet`` before frame ``at``."""
    state, outs = method.init_state(), []
    for i, x in enumerate(xs):
        if i == at:
            state = method.switch(state, subnet)
        ready, state = method.push(x, state)
        outs += ready
    return outs + method.flush(state)


def test_subnetworks_run_as_methods_and_a_switch_mid_video_keeps_state_consistent():
    """Frames before the switch equal the whole student's run; from the switch on, the small
    sub-network runs, fed the shift memory the whole student left (its first channels)."""
    s = elastic_student(shift=0.25)
    teacher = make_teacher()
    method = Spatial(teacher, student=s)
    assert not method.batchable  # the shift's memory makes it sequential
    xs = clip(6, 6)
    whole = [y for y, _ in run_online(Spatial(teacher, student=s), xs)]
    outs = run_switching(method, xs, at=3, subnet="w4")
    assert [k for _, k in outs] == [True] * 6
    for i in range(3):
        assert torch.equal(outs[i][0], whole[i])
    small = subnetwork(s, Subnet(4))
    with torch.no_grad():
        past = None
        for i in range(3):
            _, past = s.step(xs[i], past)
        for i in range(3, 6):
            y, past = small.step(xs[i], past)
            assert torch.equal(outs[i][0], y)
    assert_videos_do_not_mix(method, xs[:3], xs[3:])


def test_fast_keeps_its_key_frames_when_the_subnetwork_switches():
    s = elastic_student()
    teacher = make_teacher()
    xs = clip(9, 7)
    plain = run_online(Fast(teacher, interval=2, student=s), xs)
    outs = run_switching(Fast(teacher, interval=2, student=s), xs, at=4, subnet="w4/2")
    assert [k for _, k in outs] == [k for _, k in plain]  # the same key frames
    small = subnetwork(s, Subnet(4, 2))
    with torch.no_grad():
        for i in (0, 2):  # key frames decided before the switch: the whole student
            assert torch.equal(outs[i][0], s(xs[i]))
        for i in (4, 6, 8):
            assert torch.equal(outs[i][0], small(xs[i]))


def test_budget_picks_the_costliest_subnetwork_that_fits(tmp_path):
    from fastv2v.generators.loading import call_inputs
    from fastv2v.metrics.profile import profile

    teacher, s = make_teacher(), elastic_student()
    macs = {label: profile(subnetwork(s, Subnet.parse(label)), *call_inputs(teacher, 64, 64, "meta")).macs_exact
            for label in SUBNETS}  # fmt: skip
    full = profile(teacher, *call_inputs(teacher, 64, 64, "meta")).macs_exact
    budget = (macs["w6"] + 1) / full
    chosen = Spatial(teacher, student=s, budget=budget).subnet
    assert chosen == max((label for label in SUBNETS if macs[label] <= budget * full), key=macs.get)
    with pytest.raises(UserError, match="Raise --budget"):
        Spatial(teacher, student=s, budget=1e-6)
    with pytest.raises(UserError, match="no sub-network 'w3'"):
        Spatial(teacher, student=s, subnet="w3")
    plain = student_from_teacher(teacher, body="pruned", width=8)
    with pytest.raises(UserError, match="not distilled with --elastic"):
        Spatial(teacher, student=plain, subnet="w4")


def test_model_file_round_trip_and_bench_rows_per_subnetwork(tmp_path, make_image_folder):
    from fastv2v.bench import run_bench
    from fastv2v.pipeline import Pipeline

    path = tmp_path / "elastic.safetensors"
    save_student(path, StudentModel(make_teacher(), elastic_student(shift=0.125), 2))
    model = load_student(path)
    assert model.student.config["elastic"] == SUBNETS and model.student.temporal_shift == 0.125
    pipeline = Pipeline.from_file(path, "spatial", subnet="w4/2")
    assert pipeline.settings["subnet"] == "w4/2"
    frames = make_image_folder([f"{i:03d}.png" for i in range(3)], size=(32, 32))
    report = run_bench(str(path), frames, methods="spatial", frames=3, e2e=False)
    rows = [r for r in report["results"] if r["method"] == "spatial"]
    assert [r["settings"]["subnet"] for r in rows] == SUBNETS
    costs = [r["macs_per_frame"]["exact"] for r in rows]
    assert costs[0] > costs[1] > costs[2] > costs[3]  # narrower is cheaper


def test_elastic_and_shifted_distillation_resumes_exactly(tmp_path, teacher_file):  # noqa: F811
    from fastv2v.train.student import distill_student

    kw = dict(body="pruned", width=8, blocks=None, lambda_gan=0.0, elastic=tuple(SUBNETS[:4]), temporal_shift=0.25)
    straight = distill_student(distill_config(tmp_path, teacher_file, "a", **kw), pairs(), progress=False)
    distill_student(distill_config(tmp_path, teacher_file, "b", **kw), pairs(), progress=False, max_steps=2)
    resumed = distill_student(distill_config(tmp_path, teacher_file, "b", resume=True, **kw), pairs(),
                              progress=False)  # fmt: skip
    m1, m2 = load_student(straight), load_student(resumed)
    for (k, v1), v2 in zip(m1.student.state_dict().items(), m2.student.state_dict().values()):
        assert torch.equal(v1, v2), k
    log = (tmp_path / "a" / "log.jsonl").read_text()
    assert '"consistency"' in log and '"temporal"' in log  # the sandwich ran, on frame pairs
    assert m1.student.config["elastic"] == SUBNETS[:4] and m1.student.temporal_shift == 0.25


def test_cli_refusals_are_one_sentence(tmp_path, teacher_file, capsys):  # noqa: F811
    code, _, err = run_cli(["distill", "student", "--teacher", str(teacher_file), "--task", "scenes", "--elastic",
                            "--out", str(tmp_path / "r")], capsys)  # fmt: skip
    assert code == 2 and "--elastic needs --body pruned" in err
    with pytest.raises(SystemExit):
        run_cli(["distill", "student", "--teacher", str(teacher_file), "--task", "scenes", "--body", "pruned",
                 "--width", "8", "--temporal-shift", "2", "--out", str(tmp_path / "r")], capsys)  # fmt: skip
    assert "temporal shift must be at least 0 and below 1" in capsys.readouterr().err
    assert Subnet.parse("W16/2") == Subnet(16, 2)
    with pytest.raises(UserError, match="w<width>"):
        Subnet.parse("wide")


def test_export_writes_one_subnetwork_and_the_shift_state_as_graph_inputs_and_outputs(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    import json

    import numpy as np

    from fastv2v.export import export_onnx
    from fastv2v.pipeline import Pipeline

    path = tmp_path / "elastic.safetensors"
    save_student(path, StudentModel(make_teacher(), elastic_student(shift=0.25), 2))
    pipeline = Pipeline.from_file(path, "spatial", subnet="w4/2")
    manifest = json.loads(export_onnx(pipeline, tmp_path / "g").read_text())
    assert manifest["schedule"]["first_frame"] == "student_first" and manifest["method"]["settings"]["subnet"] == "w4/2"
    first = ort.InferenceSession(str(tmp_path / "g" / "student_first.onnx"))
    after = ort.InferenceSession(str(tmp_path / "g" / "student_next.onnx"))
    small = pipeline.method.run.student
    a, b = clip(2, 8, (32, 64))
    y0, *state = first.run(None, {"x": a.numpy()})
    y1, *_ = after.run(None, {"x": b.numpy(), **{f"past{i}": s for i, s in enumerate(state)}})
    with torch.no_grad():
        t0, past = small.step(a, None)
        t1, _ = small.step(b, past)
    assert np.abs(y0 - t0.numpy()).max() < 1e-4 and np.abs(y1 - t1.numpy()).max() < 1e-4


def test_live_steps_an_elastic_student_down_under_load_and_back_up(tmp_path):
    import numpy as np

    from fastv2v.engine.live import Captured, Controller, LiveStats
    from fastv2v.pipeline import Pipeline

    path = tmp_path / "elastic.safetensors"
    save_student(path, StudentModel(make_teacher(), elastic_student(), 2))
    pipeline = Pipeline.from_file(path, "spatial")
    stats = LiveStats()
    controller = Controller(pipeline, torch.device("cpu"), budget=1.0, max_gap=1, skip_below=0, stats=stats)
    frame = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    controller.warm_up(frame)
    assert set(controller.rung_cost) == set(SUBNETS) and stats.subnet == "w8"
    controller.rung_cost.update({"w8": 0.9, "w6": 0.5, "w4": 0.2})
    controller.key_cost.value = 0.9  # the whole student no longer fits a 1 s budget
    controller._climb(age=0.0, write=0.0)
    assert stats.subnet == "w6" and controller.state.subnet == "w6" and controller.key_cost.value == 0.5
    out = controller.step(Captured(0, frame, None, time.perf_counter()), 0)
    small = subnetwork(pipeline.method.student, Subnet(6))
    with torch.no_grad():
        expected = pipeline.teacher.decode_output(small(controller._encode(frame))).numpy()[0]
    assert np.array_equal(out.output, expected)  # the frame ran on the cheaper sub-network
    controller.rung_cost["w8"] = 0.2  # the wide one fits well within the budget again
    controller._climb(age=0.0, write=0.0)
    assert stats.subnet == "w8" and stats.subnet_switches == 2


def test_translate_fps_times_the_subnetworks_and_runs_the_one_that_keeps_up(tmp_path, capsys, make_image_folder):
    path = tmp_path / "elastic.safetensors"
    save_student(path, StudentModel(make_teacher(), elastic_student(), 2))
    frames = make_image_folder([f"{i:03d}.png" for i in range(3)], size=(32, 32))
    code, out, _ = run_cli(["translate", frames, tmp_path / "slow.mp4", "--model", path, "--method", "spatial",
                            "--fps", "0.001"], capsys)  # fmt: skip
    assert code == 0 and "--fps 0.001: running sub-network w8 " in out  # every one keeps up: the whole student
    code, out, _ = run_cli(["translate", frames, tmp_path / "fast.mp4", "--model", path, "--method", "spatial",
                            "--fps", "1e9"], capsys)  # fmt: skip
    assert code == 0 and "running sub-network w" in out and "running sub-network w8 " not in out  # the quickest
    code, _, err = run_cli(["translate", frames, tmp_path / "x.mp4", "--model", path, "--fps", "30", "--subnet", "w4"],
                           capsys)  # fmt: skip
    assert code == 2 and "give one of --subnet, --fps" in err


def test_tune_and_the_report_name_each_subnetwork():
    from fastv2v.bench.report import _row_label
    from fastv2v.tune import Candidate

    assert Candidate("m", "spatial", None, {"subnet": "w8/2"}).label == "spatial[w8/2]"
    assert _row_label({"method": "spatial", "interval": None, "settings": {"subnet": "w8"}}) == "spatial[w8]"
    assert _row_label({"method": "fast", "interval": 4, "settings": {"subnet": None}}) == "fast@4"
