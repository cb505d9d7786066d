"""Distilling on your own footage: ``fastv2v distill shortcut|student --teacher T --data P`` for any
RGB or label-map teacher, no ``--task``, the frames streamed from a frame cache on disk, the last
10 % of every clip held out and benchmarked at the end, a model card beside the model file, and
``--cache-teacher`` (the teacher's outputs computed once, read memory-mapped)."""

import json

import numpy as np
import pytest
import torch

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
            "--out", str(out)]  # fmt: skip  (no --size: the clip's own, 32x64)
    assert main(args) == 0, capsys.readouterr().err
    assert f"training at 32x64, the size of {clip}" in capsys.readouterr().err
    assert (out / f"{kind}.safetensors").exists() and (out / "bench.md").exists()
    rows = json.loads((out / "bench.json").read_text())["results"]
    assert [r["method"] for r in rows] == ["teacher", own, "repeat", "interp"] and rows[0]["frames"] == 4
    card = (out / f"{kind}.md").read_text()
    for fact in ("latest_net_G_A.pth", "SHA-256", "36 training frames, 4 held out", "Final losses", "## Held-out"):
        assert fact in card, fact
    assert list((out / "cache").glob("frames-*.raw"))  # the frames streamed from the run's frame cache


def test_bad_footage_is_one_sentence(teacher, make_video, tmp_path, capsys):
    from fastv2v.generators import ResnetGenerator, save_generator

    labels = tmp_path / "labels.safetensors"
    save_generator(labels, ResnetGenerator(input_nc=5, ngf=4, n_blocks=1, label_nc=5))
    short = make_video("short.mp4", frames=3, size=(32, 64))
    cases = [
        (["--data", str(short)], "without --task, give your teacher and footage"),
        (["--teacher", str(labels), "--data", str(short)], "short.mp4 is a video, but the teacher takes label maps"),
        (["--teacher", str(teacher), "--data", str(short)], "short.mp4 has only"),
        (["--teacher", str(teacher), "--data", str(tmp_path / "missing.mp4")], "missing.mp4 does not exist"),
    ]
    for extra, message in cases:
        code = main(["distill", "shortcut", *extra, "--size", "32x64", "--out", str(tmp_path / "o"), "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, err


def test_frames_stream_from_a_memory_mapped_cache_reused_by_the_next_dataset(make_video, tmp_path):
    from fastv2v.data.paired import FootageFrames

    clip = make_video("a.mp4", frames=30, size=(40, 64))
    cache = tmp_path / "cache"
    train = FootageFrames([clip], "train", height=32, width=64, pair_gap=1, cache_dir=cache)
    assert all(isinstance(c.base, np.memmap) or isinstance(c, np.memmap) for c in train.clips)
    (raw,) = cache.glob("frames-*.raw")
    stamp = raw.stat().st_mtime_ns
    held = FootageFrames([clip], "heldout", height=32, width=64, pair_gap=1, cache_dir=cache)  # same file, not decoded
    assert raw.stat().st_mtime_ns == stamp and [len(c) for c in train.clips + held.clips] == [27, 3]
    assert not [p for p in cache.iterdir() if "partial" in p.name]
    assert train[5]["input"].shape == (3, 32, 64) and held[0]["input"].shape == (3, 32, 64)


def _label_folder(folder, frames=12, size=(40, 64), classes=5):
    from fastv2v.data.labels import write_label_map

    folder.mkdir(parents=True)
    for i in range(frames):
        ids = np.zeros(size, np.uint8)
        ids[5:20, 2 + 3 * i : 20 + 3 * i] = 1 + i % (classes - 1)  # a moving rectangle
        ids[25:35, 40 - 2 * i : 50 - 2 * i] = classes - 1
        write_label_map(folder / f"{i:04d}.png", ids)
    return folder


@pytest.fixture
def label_teacher(tmp_path):
    from fastv2v.generators import ResnetGenerator, save_generator

    torch.manual_seed(0)
    path = tmp_path / "labels_teacher.safetensors"
    save_generator(path, ResnetGenerator(input_nc=5, ngf=4, n_blocks=1, label_nc=5))
    return path


def test_label_map_footage_crops_without_inventing_class_ids(tmp_path):
    from fastv2v.data.paired import FootageFrames

    folder = _label_folder(tmp_path / "maps", size=(50, 70))  # resized and cropped to 32x64
    data = FootageFrames([folder], "train", height=32, width=64, pair_gap=1, label_nc=5, cache_dir=tmp_path / "c")
    assert data.clips[0].dtype == np.uint8 and set(np.unique(data.clips[0])) <= {0, 1, 2, 3, 4}
    for i in range(len(data)):
        x = data[i]["input"]
        assert x.shape == (5, 32, 64) and set(x.unique().tolist()) <= {0.0, 1.0} and bool((x.sum(0) == 1).all())


def test_distill_on_label_map_footage(label_teacher, tmp_path, capsys):
    folder = _label_folder(tmp_path / "maps", frames=20)  # 2 held out: a pair
    out = tmp_path / "run"
    args = ["distill", "student", "--teacher", str(label_teacher), "--data", str(folder), "--steps", "2", "--batch",
            "2", "--size", "32x64", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    assert (out / "student.safetensors").exists() and "label maps (5 classes)" in (out / "student.md").read_text()
    rows = json.loads((out / "bench.json").read_text())["results"]
    assert rows[0]["method"] == "teacher" and rows[0]["frames"] == 2


def test_label_maps_for_an_rgb_teacher_and_unknown_ids_are_one_sentence(teacher, label_teacher, tmp_path, capsys):
    from fastv2v.data.labels import write_label_map

    maps = _label_folder(tmp_path / "maps")
    wide = _label_folder(tmp_path / "wide")
    write_label_map(wide / "0003.png", np.full((40, 64), 9, np.uint8))
    cases = [
        (teacher, maps, "0000.png is a single-channel image (a label map?), but the teacher takes RGB frames"),
        (label_teacher, wide, "0003.png contains class ID 9 but the model knows only 5 classes"),
    ]
    for model, data, message in cases:
        code = main(["distill", "student", "--teacher", str(model), "--data", str(data), "--size", "32x64",
                     "--out", str(tmp_path / "o"), "--quiet"])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, err


def test_cache_teacher_is_the_teacher_and_resumes_exactly(teacher, make_video, tmp_path, capsys):
    from fastv2v.models import load_model
    from fastv2v.train.shortcut import teacher_targets

    clip = make_video(frames=30, size=(32, 64))

    def run(out, *extra):
        args = ["distill", "shortcut", "--teacher", str(teacher), "--data", str(clip), "--steps", "3", "--batch", "2",
                "--size", "32x64", "--out", str(out), "--cache-teacher", "--quiet", *extra]  # fmt: skip
        assert main(args) == 0, capsys.readouterr().err

    run(tmp_path / "whole")
    run(tmp_path / "parts", "--max-steps", "2")
    (manifest,) = (tmp_path / "parts" / "cache").glob("teacher-*/manifest.json")
    stamp = manifest.stat().st_mtime_ns
    run(tmp_path / "parts", "--resume")
    assert manifest.stat().st_mtime_ns == stamp  # the cache was reused, not recomputed
    a, b = (load_model(tmp_path / name / "shortcut.safetensors") for name in ("whole", "parts"))
    for (name, x), (_, y) in zip(sorted(a.block.state_dict().items()), sorted(b.block.state_dict().items())):
        assert torch.equal(x, y), name
    # the cached outputs are the teacher's on the centre-cropped frames, up to float16 rounding
    from fastv2v.data.paired import FootageFrames
    from fastv2v.tasks import footage_paths
    from fastv2v.train.teacher_cache import TeacherCache

    data = FootageFrames(footage_paths([clip]), "train", height=32, width=64, pair_gap=(1, 2),
                         cache_dir=tmp_path / "parts" / "cache", fixed_crop=True)  # fmt: skip
    info = json.loads(manifest.read_text())
    cache = TeacherCache(manifest.parent, ("a", "f", "y"), info["shapes"])
    item = data[3]
    got = cache.targets(torch.tensor([item["ref_slot"], item["slot"]]), "cpu")
    want = teacher_targets(a.teacher, item["ref_input"][None], item["input"][None])
    for k in ("a", "f", "y"):
        expect = torch.cat([want[f"{k}_ref"], want[f"{k}_t"]])
        assert torch.allclose(got[k], expect, atol=2e-3 * (1 + float(expect.abs().max()))), k
