"""`fastv2v translate --input-list`: many videos, restartable, bad inputs reported, split by torchrun."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from fastv2v import UserError
from fastv2v.cli import main
from fastv2v.engine.many import plan_outputs, read_input_list
from fastv2v.train.distributed import DistributedContext

from conftest import frame_count, visible

FRAMES = {"a": 4, "b": 60, "c": 5}  # b outlasts x264's lookahead, so its killed write has begun a file


@pytest.fixture
def videos(make_video, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for stem, n in FRAMES.items():
        make_video(folder / f"{stem}.mp4", frames=n, size=(16, 32))
    listing = tmp_path / "videos.txt"
    listing.write_text("# inputs, relative to this file\nin/a.mp4\n\nin/b.mp4\nin/c.mp4\n")
    return listing


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if ".partial" in p.name)


def cli(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def env1():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


KILLER = """
import os, signal, sys, time
import torch
torch.set_num_threads(1)
from fastv2v.engine.many import translate_many
from fastv2v.generators import load_generator
from fastv2v.methods.base import Teacher
from fastv2v.pipeline import Pipeline

class KilledDuringSecondVideo(Teacher):
    videos = calls = 0
    def init_state(self):
        self.videos, self.calls = self.videos + 1, 0
        return super().init_state()
    def push(self, x, state):
        self.calls += 1
        if self.videos == 2 and self.calls == 55:
            time.sleep(0.5)  # let the writer thread put the first frames in the temporary file
            os.kill(os.getpid(), signal.SIGKILL)
        return super().push(x, state)

g = load_generator(sys.argv[1])
translate_many(Pipeline(g, KilledDuringSecondVideo(g)), sys.argv[2], sys.argv[3], progress=False)
"""


def test_killed_run_resumes_without_rewriting(teacher, videos, tmp_path, capsys):
    out = tmp_path / "out"
    script = tmp_path / "killer.py"
    script.write_text(textwrap.dedent(KILLER))
    proc = subprocess.run([sys.executable, str(script), str(teacher), str(videos), str(out)], env=env1(),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == -9, proc.stderr  # SIGKILL: no cleanup code ran
    assert (out / "a.mp4").is_file() and not (out / "b.mp4").exists() and not (out / "c.mp4").exists()
    assert leftovers(out), "the killed write should have left its temporary file"
    first = (out / "a.mp4").stat()

    args = ["translate", "--input-list", videos, "--out-dir", out, "--model", teacher, "--quiet"]
    code, stdout, _ = cli(args, capsys)
    assert code == 0
    assert "3 videos: 2 done, 1 skipped" in stdout and "0 failed" in stdout
    again = (out / "a.mp4").stat()
    assert (again.st_ino, again.st_mtime_ns, again.st_size) == (first.st_ino, first.st_mtime_ns, first.st_size)
    assert leftovers(out) == []
    assert visible(out) == ["a.mp4", "b.mp4", "c.mp4"]  # (and the hidden records of success)
    for stem, n in FRAMES.items():
        assert frame_count(out / f"{stem}.mp4") == n


def test_bad_video_is_reported_and_the_rest_go_on(teacher, make_video, tmp_path, capsys):
    folder = tmp_path / "clips"
    folder.mkdir()
    make_video(folder / "clip1.mp4", frames=3, size=(16, 16))
    (folder / "clip2.mp4").write_bytes(b"not a video at all" * 10)
    make_video(folder / "clip10.mp4", frames=2, size=(16, 16))
    (folder / "notes.txt").write_text("ignored")
    assert [p.name for p in read_input_list(folder)] == ["clip1.mp4", "clip2.mp4", "clip10.mp4"]  # natural order
    out = tmp_path / "out"
    args = ["translate", "--input-list", folder, "--out-dir", out, "--model", teacher, "--quiet"]
    code, stdout, stderr = cli(args, capsys)
    assert code == 1
    assert "3 videos: 2 done, 0 skipped" in stdout and "1 failed" in stdout
    assert "failed: " in stdout and "clip2.mp4" in stdout
    assert "1 of 3 videos failed" in stderr and "Traceback" not in stderr
    assert visible(out) == ["clip1.mp4", "clip10.mp4"]  # nothing for the bad one
    done = (out / "clip1.mp4").stat().st_mtime_ns

    shutil.copy(folder / "clip1.mp4", folder / "clip2.mp4")  # the user fixes the bad file and runs again
    code, stdout, _ = cli(args, capsys)
    assert code == 0 and "1 done, 2 skipped" in stdout
    assert (out / "clip1.mp4").stat().st_mtime_ns == done
    assert frame_count(out / "clip2.mp4") == 3 and leftovers(out) == []


def test_input_list_errors_are_one_sentence(teacher, make_video, tmp_path, capsys):
    (tmp_path / "x").mkdir()
    make_video(tmp_path / "x" / "a.mp4", frames=2, size=(16, 16))
    make_video(tmp_path / "a.mov", frames=2, size=(16, 16))
    listing = tmp_path / "list.txt"
    listing.write_text(f"x/a.mp4\n{tmp_path / 'a.mov'}\n")
    base = ["translate", "--model", teacher, "--quiet"]
    cases = [
        (base + ["--input-list", listing, "--out-dir", tmp_path / "o"], "would both be written to"),
        (base, "give INPUT and OUTPUT"),
        (base + [tmp_path / "a.mov"], "give INPUT and OUTPUT"),
        (base + ["--input-list", listing], "needs --out-dir"),
        (base + ["--input-list", listing, "--out-dir", tmp_path / "o", tmp_path / "a.mov"], "drop the positional"),
        (base + [tmp_path / "a.mov", tmp_path / "b.mp4", "--out-dir", tmp_path / "o"], "--out-dir goes with"),
        (base + ["--input-list", tmp_path / "nothing.txt", "--out-dir", tmp_path / "o"], "does not exist"),
    ]
    for args, message in cases:
        code, _, stderr = cli(args, capsys)
        assert code == 2 and message in stderr, (args, stderr)
        assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert not (tmp_path / "o").exists()
    with pytest.raises(UserError, match="listed twice"):
        plan_outputs([tmp_path / "a.mov", tmp_path / "a.mov"], tmp_path / "o")


def test_items_are_split_by_rank_without_overlap():
    items = list(range(7))
    shards = [DistributedContext(rank=r, world_size=3).shard_items(items) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]


def test_torchrun_splits_the_list(teacher, videos, tmp_path):
    out = tmp_path / "out"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd = launch + ["-m", "fastv2v.cli", "translate", "--input-list", str(videos), "--out-dir", str(out),
                    "--model", str(teacher), "--quiet"]  # fmt: skip
    proc = subprocess.run(cmd, env=env1(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("3 videos: 3 done, 0 skipped (output already complete), 0 failed (2 processes)") == 1
    assert "[0/2] done" in proc.stdout and "[1/2] done" in proc.stdout  # both processes worked
    for stem, n in FRAMES.items():
        assert frame_count(out / f"{stem}.mp4") == n
    assert leftovers(out) == []
