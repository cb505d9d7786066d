"""Issue 19: nothing lost, nothing overwritten, no traceback.

Outputs that are the input through a link, truncated outputs counted complete, temporary files
of killed runs, file names at the length limit, and output paths that only fail after the work.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from torch import nn

from conftest import frame_count, run_cli, visible


def one_sentence(err):
    line = err.strip()
    return line.startswith("fastv2v: error:") and "\n" not in line and "Traceback" not in line


def temporaries(folder):
    return sorted(p.name for p in folder.iterdir() if ".partial" in p.name)


@pytest.fixture
def pids():
    """(a live pid, a dead pid) of this host: a sleeping child, and a child that has exited."""
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    yield live.pid, done.pid
    live.kill()
    live.wait()


# --- 1. an output that is the input through a link -----------------------------------------


def test_output_linked_to_the_input_is_refused(teacher, make_video, tmp_path, capsys):
    src = make_video(frames=3)
    before = src.read_bytes()
    soft, hard = tmp_path / "soft.mp4", tmp_path / "hard.mp4"
    soft.symlink_to(src)
    os.link(src, hard)
    for out in (soft, hard):
        code, _, err = run_cli(["translate", src, out, "--model", teacher, "--quiet"], capsys)
        assert code == 2 and "is the input itself" in err and one_sentence(err), err
    assert src.read_bytes() == before and soft.is_symlink() and os.path.samefile(hard, src)


def test_input_list_output_that_is_an_input_is_refused(teacher, make_video, tmp_path, capsys):
    folder = tmp_path / "clips"
    folder.mkdir()
    make_video(folder / "a.mp4", frames=3, size=(16, 16))
    before = (folder / "a.mp4").read_bytes()
    linked = tmp_path / "linked"
    linked.mkdir()
    os.link(folder / "a.mp4", linked / "a.mp4")  # a hard link in --out-dir is the input too
    for out_dir in (folder, linked):
        code, _, err = run_cli(["translate", "--input-list", folder, "--out-dir", out_dir, "--model", teacher,
                                "--quiet"], capsys)  # fmt: skip
        assert code == 2 and "would be replaced by the output" in err and one_sentence(err), err
    assert (folder / "a.mp4").read_bytes() == before


# --- 2. complete means recorded complete, not merely present -------------------------------


def test_truncated_input_is_not_complete_on_restart(teacher, make_video, tmp_path, capsys):
    folder = tmp_path / "clips"
    folder.mkdir()
    make_video(folder / "a.mp4", frames=3, size=(16, 16))
    full = make_video(tmp_path / "full.mp4", frames=16, noise=30)
    (folder / "cut.mp4").write_bytes(full.read_bytes()[: int(full.stat().st_size * 0.6)])
    out = tmp_path / "out"
    args = ["translate", "--input-list", folder, "--out-dir", out, "--model", teacher, "--quiet"]
    code, stdout, _ = run_cli(args, capsys)
    assert code == 1 and "2 videos: 1 done, 0 skipped" in stdout and "truncated" in stdout
    assert visible(out) == ["a.mp4"] and temporaries(out) == []  # the partial result is not in place
    code, stdout, _ = run_cli(args, capsys)
    assert code == 1 and "2 videos: 0 done, 1 skipped" in stdout and "1 failed" in stdout


def test_output_without_a_record_is_redone(teacher, make_video, tmp_path, capsys):
    folder = tmp_path / "clips"
    folder.mkdir()
    make_video(folder / "a.mp4", frames=3, size=(16, 16))
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.mp4").write_bytes(b"half an mp4")  # e.g. written by an older version, or by hand
    args = ["translate", "--input-list", folder, "--out-dir", out, "--model", teacher, "--quiet"]
    code, stdout, _ = run_cli(args, capsys)
    assert code == 0 and "1 done, 0 skipped" in stdout and "redo" in stdout
    assert frame_count(out / "a.mp4") == 3
    code, stdout, _ = run_cli(args, capsys)
    assert code == 0 and "0 done, 1 skipped" in stdout
    make_video(folder / "a.mp4", frames=5, size=(16, 16))  # the input changed: its output is stale
    code, stdout, _ = run_cli(args, capsys)
    assert code == 0 and "1 done, 0 skipped" in stdout and frame_count(out / "a.mp4") == 5


# --- 3. temporary files of dead owners go, a live process's stay ----------------------------


def test_concurrent_runs_keep_each_others_temporaries(teacher, make_video, tmp_path, pids, capsys):
    from fastv2v.atomic import stale_temporaries, temporary_sibling

    live, dead = pids
    folder = tmp_path / "clips"
    folder.mkdir()
    make_video(folder / "a.mp4", frames=2, size=(16, 16))
    out = tmp_path / "out"
    out.mkdir()
    mine_live, mine_dead = temporary_sibling(out / "a.mp4", pid=live), temporary_sibling(out / "a.mp4", pid=dead)
    mine_live.write_bytes(b"in progress")
    mine_dead.write_bytes(b"left by a killed run")
    code, _, _ = run_cli(["translate", "--input-list", folder, "--out-dir", out, "--model", teacher, "--quiet"], capsys)
    assert code == 0 and frame_count(out / "a.mp4") == 2
    assert mine_live.exists() and not mine_dead.exists()
    assert stale_temporaries(out / "a.mp4") == []


def test_training_checkpoint_temporaries_of_dead_owners_are_removed(tmp_path, pids):
    from fastv2v.atomic import temporary_sibling
    from fastv2v.train.state import load_training_state, save_training_state

    live, dead = pids
    checkpoint = tmp_path / "checkpoint.pt"
    left = [temporary_sibling(checkpoint, pid=pid) for pid in (live, dead, dead)]
    for p in left:
        p.write_bytes(b"x")
    save_training_state(checkpoint, 1, {"m": nn.Linear(1, 1)}, {})
    assert left[0].exists() and not left[1].exists() and not left[2].exists()
    again = temporary_sibling(checkpoint, pid=dead)
    again.write_bytes(b"x")
    load_training_state(checkpoint, {"m": nn.Linear(1, 1)}, {})  # resume cleans too
    assert not again.exists() and left[0].exists()


SLOW_CLI = """
import sys, time
import torch
torch.set_num_threads(1)
from fastv2v.generators import ResnetGenerator

forward = ResnetGenerator.forward
def slow(self, x):
    time.sleep(0.05)
    return forward(self, x)
ResnetGenerator.forward = slow
if sys.argv[1] == "--slow-cleanup":  # cleanup long enough for a second Ctrl-C to land in it
    import fastv2v.atomic as atomic
    remove = atomic._remove
    def slow_remove(path):
        time.sleep(1.0)
        remove(path)
    atomic._remove = slow_remove
    del sys.argv[1]
from fastv2v.cli import main

sys.exit(main(sys.argv[1:]))
"""


def start_slow_translate(tmp_path, src, out, teacher, *extra):
    script = tmp_path / "slow_cli.py"
    script.write_text(textwrap.dedent(SLOW_CLI))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(script), *extra, "translate", str(src), str(out), "--model", str(teacher), "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not temporaries(out.parent):  # the writer has opened its temporary file: work is under way
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    time.sleep(0.3)
    return proc


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT twice"])
def test_terminated_translate_cleans_up(how, teacher, make_video, tmp_path):
    src = make_video(frames=60, size=(16, 16))
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out.mp4"
    if how == "SIGTERM":
        proc = start_slow_translate(tmp_path, src, out, teacher)
        proc.send_signal(signal.SIGTERM)
        expected, said = 143, "terminated"
    else:
        proc = start_slow_translate(tmp_path, src, out, teacher, "--slow-cleanup")
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)  # inside the (slowed) removal of the temporary file
        proc.send_signal(signal.SIGINT)
        expected, said = 130, "interrupted"
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == expected, err
    assert said in err and "Traceback" not in err and "Exception ignored" not in err
    assert os.listdir(work) == []


# --- 6. killed (SIGKILL) mid-run, then run again ---------------------------------------------


def test_killed_translate_resumes_cleanly(teacher, make_video, tmp_path, capsys):
    src = make_video(frames=60, size=(16, 16))
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out.mp4"
    proc = start_slow_translate(tmp_path, src, out, teacher)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -9
    assert not out.exists() and temporaries(work), "the killed write leaves its temporary file"
    code, _, _ = run_cli(["translate", src, out, "--model", teacher, "--quiet"], capsys)
    assert code == 0 and frame_count(out) == 60
    assert os.listdir(work) == ["out.mp4"]


# --- 4. names at the length limit ------------------------------------------------------------


def test_output_name_at_the_length_limit(teacher, make_video, tmp_path, capsys):
    src = make_video(frames=2, size=(16, 16))
    work = tmp_path / "work"
    work.mkdir()
    longest = work / ("n" * 251 + ".mp4")  # 255 bytes: allowed, though its temporary name is longer
    code, _, err = run_cli(["translate", src, longest, "--model", teacher, "--quiet"], capsys)
    assert code == 0, err
    assert frame_count(longest) == 2 and os.listdir(work) == [longest.name]
    too_long = work / ("é" * 130 + ".mp4")  # 264 bytes
    code, _, err = run_cli(["translate", src, too_long, "--model", teacher, "--quiet"], capsys)
    assert code == 2 and "choose a shorter output name" in err and one_sentence(err)
    from fastv2v.atomic import temporary_sibling

    a, b = temporary_sibling(longest), temporary_sibling(work / ("n" * 251 + "x.mp4"))
    assert len(a.name.encode()) <= 255 and len(b.name.encode()) <= 255
    assert a.name.split(".")[1] != b.name.split(".")[1]  # shortened stems stay distinct (a hash of the name)


# --- 5. outputs validated before any model work ---------------------------------------------


def test_bad_outputs_are_refused_before_the_model_loads(make_video, tmp_path, capsys, monkeypatch):
    src = make_video(frames=2, size=(16, 16))
    missing_model = tmp_path / "no-such-model.pth"  # reached only if the output passed its checks
    taken = tmp_path / "frames"
    taken.write_text("a file where a folder of frames would go")
    code, _, err = run_cli(["translate", src, taken, "--model", missing_model, "--quiet"], capsys)
    assert code == 2 and f"{taken} is an existing file" in err and one_sentence(err), err
    assert taken.read_text().startswith("a file")

    blocked = tmp_path / "blocked"
    blocked.mkdir()
    denied = lambda path, mode, **k: os.path.realpath(path) != os.path.realpath(blocked)  # noqa: E731
    monkeypatch.setattr("os.access", denied)  # as root, chmod cannot deny us
    for args, message in [
        (["translate", src, blocked / "out.mp4"], "no write permission"),
        (["translate", "--input-list", tmp_path, "--out-dir", blocked / "new"], "--out-dir"),
        (["bench", "--input", src, "--out", blocked / "report"], "--out"),
    ]:
        code, _, err = run_cli([*args, "--model", missing_model, "--quiet"], capsys)
        assert code == 2 and message in err and str(blocked) in err and one_sentence(err), (args, err)
    monkeypatch.undo()
    code, _, err = run_cli(["bench", "--input", src, "--out", taken / "report", "--model", missing_model], capsys)
    assert code == 2 and "is a file" in err and "--out" in err and one_sentence(err), err
