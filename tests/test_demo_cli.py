"""The demo and the small CLI commands run end to end."""

import json

import pytest

from fastv2v.cli import main
from fastv2v.demo import run_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One small demo run (the real one is 48 frames at 128x256) shared by the checks below."""
    out = tmp_path_factory.mktemp("demo")
    return run_demo(out, frames=4, size=(32, 64), progress=False).parent


def test_demo_writes_videos_and_report(demo):
    results = json.loads((demo / "demo.json").read_text())["results"]
    assert "| scenes |" in (demo / "report.md").read_text()
    for r in results:
        assert (demo / r["video"]).stat().st_size > 0 and r["frames"] == 4


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
        assert {"repeat", "reuse"} <= {r["method"] for r in report["results"]}
        assert (folder / "bench.md").exists() and (folder / "pareto.png").exists()


def test_profile_method_reports_non_key_ratio(capsys):
    assert main(["profile", "--arch", "resnet_6blocks", "--size", "32x64", "--ngf", "8", "--method", "shortcut",
                 "--hidden", "8"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "shortcut non-key frame:" in out and "x paper" in out and "key frame: teacher +" in out
