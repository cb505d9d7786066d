"""`fastv2v bench`: the report's schema and its exact cost accounting, on tiny random teachers."""

import json
import math
import time

import numpy as np
import pytest
import torch

from fastv2v import UserError
from fastv2v.bench import PeakMemory, parse_intervals, run_bench, write_report
from fastv2v.cli import main
from fastv2v.generators import ResnetGenerator, build_generator, save_generator
from fastv2v.methods.base import METHODS, OnlineMethod
from fastv2v.tasks import generator_config

REQUIRED = {
    "method": str, "interval": (int, type(None)), "macs_per_frame": dict, "macs_nonkey": dict, "params_m": float,
    "ms_per_frame": float, "speedup_vs_teacher": float, "e2e_fps": float, "psnr_vs_teacher": (float, type(None)),
    "ssim_vs_teacher": float, "psnr_vs_teacher_nonkey": (float, type(None)),
    "ssim_vs_teacher_nonkey": (float, type(None)), "warp_error": float, "peak_mem_mb": float, "model": str,
    "keyframes": int, "frames": int, "notes": dict, "runtime": str, "precision": str,
}  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one thread


@pytest.fixture(scope="module")
def scenes_teacher(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "scenes_tiny.safetensors"
    save_generator(path, build_generator("resnet_6blocks", **generator_config("scenes", ngf=4)))
    return path


@pytest.fixture(scope="module")
def scenes_report(scenes_teacher):
    return run_bench(scenes_teacher, "scenes", size=(32, 32), frames=6, intervals=[2, 4], threads=1)


def test_schema_of_a_tiny_run(scenes_report):
    report = json.loads(json.dumps(scenes_report, allow_nan=False))  # strictly valid JSON
    assert isinstance(report["device"], str) and report["dtype"] == "fp32" and report["threads"] == 1
    inp = report["input"]
    assert (inp["path"], inp["frames"], inp["height"], inp["width"]) == ("scenes:0", 6, 32, 32)
    assert inp["fps"] > 0 and inp["ground_truth"] is True
    assert report["teacher_macs"]["exact"] > 0 and report["teacher_macs"]["paper"] > report["teacher_macs"]["exact"]
    rows = report["results"]
    assert [(r["method"], r["interval"]) for r in rows] == [
        ("teacher", 1), ("repeat", 2), ("repeat", 4), ("reuse", 2), ("reuse", 4)
    ]  # fmt: skip
    for r in rows:
        for key, kind in REQUIRED.items():
            assert isinstance(r[key], kind), (r["method"], key, r[key], r["notes"])
        for key in ("macs_per_frame", "macs_nonkey"):
            assert set(r[key]) >= {"exact", "paper"} and all(isinstance(v, float) for v in r[key].values())
        assert r["e2e_fps"] > 0 and r["ms_per_frame"] > 0
        assert isinstance(r["psnr_vs_gt"], float) and isinstance(r["ssim_vs_gt"], float)
    teacher = rows[0]
    assert teacher["speedup_vs_teacher"] == 1.0 and teacher["keyframes"] == 6
    assert teacher["psnr_vs_teacher"] is None and "reference" in teacher["notes"]["psnr_vs_teacher"]
    assert teacher["macs_nonkey"] == teacher["macs_per_frame"]


def test_repeat_costs_exactly_its_key_frames(scenes_report):
    teacher, *rows = scenes_report["results"]
    per_frame = teacher["macs_total"]["exact"] // teacher["frames"]
    assert per_frame * teacher["frames"] == teacher["macs_total"]["exact"]
    for r in (r for r in rows if r["method"] == "repeat"):
        assert r["macs_nonkey"] == {"exact": 0.0, "paper": 0.0}
        assert r["keyframes"] == {2: 3, 4: 2}[r["interval"]]  # frames 0,2,4 / 0,4
        for conv in ("exact", "paper"):
            assert r["macs_total"][conv] == teacher["macs_total"][conv] * r["keyframes"] // r["frames"]
            expected = teacher["macs_per_frame"][conv] * r["keyframes"] / r["frames"]
            assert r["macs_per_frame"][conv] == pytest.approx(expected, rel=1e-12)
        # key frames are the teacher exactly, so the all-frames PSNR beats the non-key one
        assert math.isfinite(r["psnr_vs_teacher"]) and r["psnr_vs_teacher"] > r["psnr_vs_teacher_nonkey"]
    reuse = [r for r in rows if r["method"] == "reuse"]
    assert all(0 < r["macs_nonkey"]["exact"] < teacher["macs_per_frame"]["exact"] for r in reuse)


def test_report_files(scenes_report, tmp_path):
    paths = write_report(scenes_report, tmp_path / "out")
    assert json.loads(paths["json"].read_text())["results"][0]["method"] == "teacher"
    md = paths["md"].read_text()
    assert "| method | interval |" in md and "| teacher | 1 | 6/6 |" in md and "| repeat | 2 | 3/6 |" in md
    assert "PSNR→GT" in md and "scenes_tiny.safetensors" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_on_a_video_prints_the_table(make_video, tmp_path, capsys):
    torch.manual_seed(0)
    model = tmp_path / "tiny.pth"
    torch.save(ResnetGenerator(ngf=4, n_blocks=1).state_dict(), model)
    src = make_video(frames=6, size=(32, 32))
    out = tmp_path / "bench"
    args = ["bench", "--model", model, "--input", src, "--methods", "repeat", "--intervals", "3", "--repeats", "2",
            "--threads", "1", "--out", out]  # fmt: skip
    assert main([str(a) for a in args] + ["--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "| teacher | 1 | 6/6 |" in printed and "| repeat | 3 | 2/6 |" in printed
    report = json.loads((out / "bench.json").read_text())
    assert report["input"]["path"] == str(src) and report["input"]["ground_truth"] is False
    assert report["results"][1]["warp_error_motion"] == "input"
    assert report["results"][1]["psnr_vs_gt"] is None and report["results"][1]["notes"]["psnr_vs_gt"]
    assert "fastv2v bench --model" in report["command"] and report["repeats"] == 2
    assert len(report["results"][1]["ms_per_frame_runs"]) == 2 and len(report["results"][1]["e2e_fps_runs"]) == 2
    assert (out / "bench.md").is_file() and (out / "pareto.png").stat().st_size > 0


def test_unknown_method_is_a_user_error(scenes_teacher, tmp_path, capsys):
    with pytest.raises(UserError, match="unknown method 'warp9'.*registered methods are: .*repeat"):
        run_bench(scenes_teacher, "scenes", methods="teacher,warp9", size=(32, 32), frames=3)
    code = main(["bench", "--model", str(scenes_teacher), "--methods", "warp9", "--out", str(tmp_path)])
    assert code == 2 and "unknown method 'warp9'" in capsys.readouterr().err


def test_mismatched_input_and_bad_intervals_are_user_errors(make_video, scenes_teacher, tmp_path):
    rgb = tmp_path / "rgb.safetensors"
    save_generator(rgb, ResnetGenerator(ngf=4, n_blocks=1))
    with pytest.raises(UserError, match="--input scenes gives label maps, but rgb.safetensors takes RGB frames"):
        run_bench(rgb, "scenes", size=(32, 32), frames=3)
    with pytest.raises(UserError, match="label maps must be lossless images"):  # the reader's own sentence
        run_bench(scenes_teacher, make_video(frames=3, size=(32, 32)), frames=3)
    with pytest.raises(UserError, match="at least 1"):
        parse_intervals("2,0")


class _NeedsBundle(OnlineMethod):
    """A method that needs its own model file kind, as the shortcut method will."""

    name = "needs-bundle"
    model_kind = "bundle-for-test"

    @classmethod
    def from_model(cls, model, **settings):
        raise AssertionError("never reached for a plain teacher file")


class _Buffered(OnlineMethod):
    """A method that needs future frames (push/flush): it emits everything at the end."""

    name = "buffered"
    uses_interval = False

    def push(self, x, state):
        return [], state + [x]

    def flush(self, state):
        return [(self.teacher(x), True) for x in state]

    def init_state(self):
        return []


def test_registry_protocol_skip_and_buffered(monkeypatch, scenes_teacher):
    monkeypatch.setitem(METHODS, _NeedsBundle.name, _NeedsBundle)
    monkeypatch.setitem(METHODS, _Buffered.name, _Buffered)
    report = run_bench(scenes_teacher, "scenes", methods="needs-bundle,buffered", size=(32, 32), frames=4,
                       intervals=[2], e2e=False)  # fmt: skip
    (skip,) = report["skipped"]
    assert skip["method"] == "needs-bundle" and "needs a trained bundle-for-test model file" in skip["reason"]
    teacher, buffered = report["results"]
    assert buffered["method"] == "buffered" and buffered["interval"] is None and buffered["keyframes"] == 4
    assert buffered["macs_total"] == teacher["macs_total"]  # the same work, counted through push/flush
    assert buffered["psnr_vs_teacher"] is None and "identical" in buffered["notes"]["psnr_vs_teacher"]
    assert buffered["ssim_vs_teacher"] == 1.0 and buffered["e2e_fps"] is None and buffered["notes"]["e2e_fps"]


def test_peak_memory_sees_an_allocation():
    with PeakMemory("cpu") as memory:
        block = np.ones(64 * 2**20, np.uint8)  # 64 MiB, touched
        time.sleep(0.05)  # several sampling periods
        del block
    if memory.peak_mb is None:
        pytest.skip(memory.reason)
    assert memory.peak_mb >= 48


def test_headline_script_quick_run(tmp_path, capsys):
    """benchmarks/run_benchmarks.py works end to end on a tiny random teacher (numbers not asserted)."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "run_benchmarks.py"
    spec = importlib.util.spec_from_file_location("run_benchmarks", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "results"
    assert module.main(["--quick", "--tasks", "scenes", "--frames", "4", "--threads", "1", "--out", str(out)]) == 0
    page = (tmp_path / "RESULTS.md").read_text()
    assert "RANDOM teachers" in page and "| repeat | 4 |" in page and "](results/scenes/pareto.png)" in page
    assert {p.name for p in (out / "scenes").iterdir()} == {"bench.json", "bench.md", "pareto.png"}
    section = page.split("## scenes: distilled against training-free, end to end\n", 1)[1]
    assert section.startswith("\n![scenes: end-to-end speed-up against PSNR to the teacher](results/scenes-front.png)")
    assert (out / "scenes-front.png").is_file() and "- shortcut@3: e2e " in section and "- fast@2: e2e " in section


def test_perceptual_columns_are_null_with_a_reason_without_files(scenes_report):
    for row in scenes_report["results"]:
        assert row["lpips_vs_teacher"] is None and "LPIPS unavailable" in row["notes"]["lpips_vs_teacher"]
        assert row["fid_vs_gt"] is None and "FID unavailable" in row["notes"]["fid_vs_gt"]


def test_lpips_column_from_a_local_file(scenes_teacher, tmp_path):
    from torchvision.models import alexnet

    torch.manual_seed(0)
    backbone = tmp_path / "alexnet.pth"
    torch.save({f"features.{k}": v for k, v in alexnet(weights=None).features.state_dict().items()}, backbone)
    report = run_bench(scenes_teacher, "scenes", methods="teacher,repeat", size=(64, 64), frames=4, intervals=[2],
                       threads=1, e2e=False, lpips_weights=backbone)  # fmt: skip
    teacher, repeat = report["results"]
    assert teacher["lpips_vs_teacher"] == pytest.approx(0.0, abs=1e-6)
    assert repeat["lpips_vs_teacher"] > 0


def _front_row(method, interval, speedup, psnr, **notes):
    return {"method": method, "interval": interval, "e2e_speedup_vs_teacher": speedup, "psnr_vs_teacher": psnr,
            "notes": notes}  # fmt: skip


def test_speed_front_interpolation_and_margins(tmp_path):
    """The training-free front, the linear interpolation along it and the margin lines, on hand-made rows."""
    from fastv2v.bench.report import front_lines, front_psnr_at, speed_front, training_free_front

    rows = [
        _front_row("teacher", 1, 1.0, None),
        _front_row("interp", 2, 2.0, 30.0),
        _front_row("repeat", 2, 2.5, 27.0),  # a tie in PSNR with a faster row: not on the front
        _front_row("reuse", 2, 3.0, 27.0),
        _front_row("repeat", 4, 2.8, 25.0),  # beaten on both by reuse@2
        _front_row("minterpolate", 4, 4.0, 25.0),
        _front_row("sparse", None, 0.7, None, psnr_vs_teacher="identical to the reference on every frame"),
        _front_row("shortcut", 3, 2.5, 29.0),  # on the line from interp@2 (2x, 30) to reuse@2 (3x, 27): 28.5 there
        _front_row("fast", 4, 3.5, 25.0),  # halfway from reuse@2 to minterpolate@4: 26.0
        _front_row("spatial", None, 1.5, 31.0),  # slower than the whole front: its slowest point, interp@2
        _front_row("fast", 8, 5.0, 24.0),  # faster than the whole front
        _front_row("shortcut_auto", 2, None, 30.0, e2e_fps="end-to-end pass not run (e2e=False)"),
    ]
    front = training_free_front(rows)
    assert [(x, y, label) for x, y, label in front] == [
        (2.0, 30.0, "interp@2"), (3.0, 27.0, "reuse@2"), (4.0, 25.0, "minterpolate@4")
    ]  # fmt: skip
    assert front_psnr_at(front, 2.5)[0] == pytest.approx(28.5)
    assert front_psnr_at(front, 3.0) == (27.0, "at reuse@2")
    assert front_psnr_at(front, 1.5)[0] == 30.0
    assert front_psnr_at(front, 4.5)[0] is None and front_psnr_at([], 2.0)[0] is None

    lines = front_lines(rows)
    assert lines == [
        "- shortcut@3: e2e 2.50×, PSNR 29.00 dB; training-free front at 2.50×: 28.50 dB (linear between interp@2 "
        "(2.00×, 30.00 dB) and reuse@2 (3.00×, 27.00 dB)); margin +0.50 dB (above the front)",
        "- fast@4: e2e 3.50×, PSNR 25.00 dB; training-free front at 3.50×: 26.00 dB (linear between reuse@2 "
        "(3.00×, 27.00 dB) and minterpolate@4 (4.00×, 25.00 dB)); margin -1.00 dB (below the front)",
        "- spatial: e2e 1.50×, PSNR 31.00 dB; training-free front at 1.50×: 30.00 dB (interp@2 at 2.00× is faster); "
        "margin +1.00 dB (above the front)",
        "- fast@8: e2e 5.00×, PSNR 24.00 dB; beyond the training-free front (its fastest point: minterpolate@4 at "
        "4.00×, 25.00 dB)",
        "- not in the figure: sparse (e2e 0.70×): no PSNR to the teacher: identical to the reference on every frame",
        "- not in the figure: shortcut_auto@2: no e2e speed-up: end-to-end pass not run (e2e=False)",
    ]  # fmt: skip

    png = tmp_path / "scenes-front.png"
    assert speed_front(rows, png, "hand-made") and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["scenes-front.png"]  # no temporary left behind
    no_e2e = [dict(r, e2e_speedup_vs_teacher=None) for r in rows]
    assert not speed_front(no_e2e, tmp_path / "none.png", "no e2e") and not (tmp_path / "none.png").exists()
    assert all(line.startswith("- not in the figure:") for line in front_lines(no_e2e))


def test_a_teacher_two_model_files_share_is_measured_once(scenes_teacher, tmp_path):
    import shutil

    twin = tmp_path / "twin.safetensors"
    shutil.copyfile(scenes_teacher, twin)
    report = run_bench([scenes_teacher, twin], "scenes", methods="teacher", size=(32, 32), frames=3, e2e=False)
    first, second = report["results"]
    assert "shared_with" not in first and second["shared_with"] == first["model"] != second["model"]
    assert second["ms_per_frame"] == first["ms_per_frame"] and first["precision"] == "fp32"
