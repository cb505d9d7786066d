"""Distilling on your own footage: ``fastv2v distill shortcut|student --teacher T --data P`` for any
RGB teacher, no ``--task``, the last 10 % of every clip held out and benchmarked at the end."""

import json

import pytest

from fastv2v.cli import main
from fastv2v.tasks import footage_pairs


def test_pairs_stay_in_their_clip_and_the_tail_is_held_out(make_video, tmp_path):
    make_video("a.mp4", frames=40, size=(32, 64))
    make_video("b.mp4", frames=50, size=(32, 64))
    listing = tmp_path / "clips.txt"
    listing.write_text("a.mp4\n# a comment\nb.mp4\n")
    train = footage_pairs([listing], "train", height=32, width=64, pair_gap=(1, 2))
    held = footage_pairs([listing], "heldout", height=32, width=64, pair_gap=(1, 2))
    assert [len(c) for c in train.clips] == [36, 45] and [len(c) for c in held.clips] == [4, 5]
    assert len(train) == (36 - 2) + (45 - 2)  # a pair starts at most 2 frames before its clip ends
    item = train[0]
    assert item["input"].shape == (3, 32, 64) and 1 <= item["gap"] <= 2


@pytest.mark.parametrize("kind,own", [("shortcut", "shortcut"), ("student", "fast")])
def test_distill_on_a_clip_writes_the_model_and_its_heldout_bench(kind, own, teacher, make_video, tmp_path, capsys):
    clip = make_video(frames=40, size=(32, 64))
    out = tmp_path / "run"
    args = ["distill", kind, "--teacher", str(teacher), "--data", str(clip), "--steps", "2", "--batch", "2",
            "--size", "32x64", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    assert (out / f"{kind}.safetensors").exists() and (out / "bench.md").exists()
    rows = json.loads((out / "bench.json").read_text())["results"]
    assert [r["method"] for r in rows] == ["teacher", own, "repeat", "interp"] and rows[0]["frames"] == 4


def test_bad_footage_is_one_sentence(teacher, make_video, tmp_path, capsys):
    from fastv2v.generators import ResnetGenerator, save_generator

    labels = tmp_path / "labels.safetensors"
    save_generator(labels, ResnetGenerator(input_nc=5, ngf=4, n_blocks=1, label_nc=5))
    short = make_video("short.mp4", frames=3, size=(32, 64))
    cases = [
        (["--data", str(short)], "without --task, give your teacher and footage"),
        (["--teacher", str(labels), "--data", str(short)], "takes labels input"),
        (["--teacher", str(teacher), "--data", str(short)], "short.mp4 has only"),
        (["--teacher", str(teacher), "--data", str(tmp_path / "missing.mp4")], "missing.mp4 does not exist"),
    ]
    for extra, message in cases:
        code = main(["distill", "shortcut", *extra, "--size", "32x64", "--out", str(tmp_path / "o"), "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, err
