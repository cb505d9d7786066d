"""The demo and the small CLI commands run end to end."""

import json

import pytest

from fastv2v.cli import main
from fastv2v.demo import recommend, run_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One small demo run (the real one is 48 frames at 128x256) shared by the checks below."""
    out = tmp_path_factory.mktemp("demo")
    return run_demo(out, frames=4, size=(32, 64), progress=False).parent


def test_demo_writes_videos_and_report(demo):
    from fastv2v.tasks import shipped_vid2vid, shipped_vid2vid_student

    results = json.loads((demo / "demo.json").read_text())["results"]
    page = (demo / "report.md").read_text()
    assert "## scenes" in page and "**recommended**" in page
    for r in results:
        assert (demo / r["video"]).stat().st_size > 0 and r["frames"] == 4
        assert r["recommended"] in r["rows"]  # one of the headline pipelines, with its measurements
        headline = {"interp@2", "interp@4", "repeat@4"} if r["task"].endswith("vid2vid") else {"shortcut@3", "fast@4",
                                                                                                "interp@2"}
        if r["task"].endswith("vid2vid") and shipped_vid2vid_student("scenes") is not None:
            headline.add("fast@4")  # the sequential student's row
        assert headline <= {row["pipeline"] for row in r["rows"]}  # fmt: skip

    assert ("## scenes-vid2vid" in page) == (shipped_vid2vid("scenes") is not None)  # the vid2vid row when shipped


def test_profile_prints_published_figures(capsys):
    assert main(["profile", "--arch", "resnet_9blocks", "--size", "256x256"]) == 0
    out = capsys.readouterr().out
    assert "11.38 M" in out and "49.55 G exact" in out and "56.8 G paper" in out


def test_prepare_edges_writes_binary_maps(make_video, tmp_path, capsys):
    from fastv2v.data.video import open_frames

    out = tmp_path / "edges"
    assert main(["prepare", "edges", str(make_video(frames=3)), str(out), "--quiet"]) == 0
    with open_frames(out) as frames:
        maps = list(frames)
    assert len(maps) == 3 and set(maps[0].ravel().tolist()) <= {0, 255}


def test_demo_writes_the_benchmark_report_next_to_videos(demo):
    for task in ("scenes", "edges"):
        folder = demo / task
        report = json.loads((folder / "bench.json").read_text())
        assert [r["method"] for r in report["results"]][0] == "teacher"
        assert {"shortcut", "fast", "interp", "repeat"} <= {r["method"] for r in report["results"]}
        assert (folder / "bench.md").exists() and (folder / "pareto.png").exists()


def test_profile_method_reports_non_key_ratio(capsys):
    assert main(["profile", "--arch", "resnet_6blocks", "--size", "32x64", "--ngf", "8", "--method", "shortcut",
                 "--hidden", "8"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "shortcut non-key frame:" in out and "x paper" in out and "key frame: teacher +" in out
    assert main(["profile", "--arch", "resnet_6blocks", "--size", "32x64", "--ngf", "8", "--method", "spatial"]) == 0
    own = next(line for line in capsys.readouterr().out.splitlines() if "of its own" in line)
    assert float(own.split()[1]) > 0 and "instead of the teacher's" in own  # the student, not student - teacher


def test_profile_splits_the_shortcut_non_key_frame_into_parts_that_add_up(capsys):
    import torch

    from fastv2v.generators import build_generator
    from fastv2v.metrics.profile import profile
    from fastv2v.pipeline import Pipeline

    assert main(["profile", "--arch", "resnet_6blocks", "--size", "32x64", "--ngf", "8", "--method", "shortcut",
                 "--hidden", "8"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "non-key frame by part" in out and "the most any block can save" in out
    method = Pipeline.untrained(build_generator("resnet_6blocks", ngf=8), "shortcut", hidden=8).method
    x = torch.zeros(1, 3, 32, 64)
    parts = method.parts(x)
    whole = profile(method.non_key_path(), x)
    split = [profile(parts[name]) for name in ("head", "block", "tail")]
    assert sum(p.macs_exact for p in split) == whole.macs_exact > 0
    assert sum(p.macs_paper for p in split) == whole.macs_paper


def test_recommend_is_the_fastest_within_a_db_of_the_best():
    rows = [
        {"method": "teacher", "psnr_vs_teacher": None, "e2e_speedup_vs_teacher": 1.0, "speedup_vs_teacher": 1.0},
        {"method": "best", "psnr_vs_teacher": 30.0, "e2e_speedup_vs_teacher": 2.0, "speedup_vs_teacher": 3.0},
        {"method": "close", "psnr_vs_teacher": 29.2, "e2e_speedup_vs_teacher": 3.0, "speedup_vs_teacher": 2.0},
        {"method": "far", "psnr_vs_teacher": 28.9, "e2e_speedup_vs_teacher": 9.0, "speedup_vs_teacher": 9.0},
        {"method": "no-e2e", "psnr_vs_teacher": 29.9, "e2e_speedup_vs_teacher": None, "speedup_vs_teacher": 2.5},
    ]
    assert recommend(rows)["method"] == "close"
    assert recommend(rows[:1]) is None
