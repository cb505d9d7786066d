"""The demo and the small CLI commands run end to end."""

import json

from fastv2v.cli import main
from fastv2v.demo import run_demo


def test_demo_writes_videos_and_report(tmp_path):
    report = run_demo(tmp_path / "demo", frames=3, progress=False)
    results = json.loads((tmp_path / "demo" / "demo.json").read_text())["results"]
    assert report.exists() and "| scenes |" in report.read_text()
    for r in results:
        assert (tmp_path / "demo" / r["video"]).stat().st_size > 0 and r["frames"] == 3


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
