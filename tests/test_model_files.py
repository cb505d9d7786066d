"""Broken model files: every one is refused in one sentence naming it, never a traceback, both
through ``fastv2v translate --model`` and ``fastv2v.load_model``."""

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import fastv2v
from fastv2v.checkpoint import CONFIG_KEY
from fastv2v.cli import main
from fastv2v.errors import UserError

WEIGHTS = Path(fastv2v.__file__).parent / "weights"


def _config(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()[CONFIG_KEY])


def _resave(src: Path, dst: Path, metadata_text: str) -> Path:
    save_file(load_file(str(src)), str(dst), metadata={CONFIG_KEY: metadata_text})
    return dst


def _edited(config: dict, part: str, **changes) -> dict:
    out = json.loads(json.dumps(config))
    for key, value in changes.items():
        if value is _DROP:
            out[part].pop(key)
        else:
            out[part][key] = value
    return out


_DROP = object()


def _broken_metadata(src: Path):
    """(name, metadata text) variants of ``src``'s metadata that must all be refused."""
    config = _config(src)
    yield "not-json", "{not json"
    yield "list", json.dumps([config])
    yield "string", json.dumps("generator")
    yield "generator-list", json.dumps({**config, "generator": [1, 2]})
    # ngf 4096 is a valid width that the weights contradict: refused before gigabytes are allocated
    for key, value in [("ngf", -5), ("ngf", "32"), ("ngf", 0), ("ngf", 10**9), ("ngf", 4096), ("input_nc", 0),
                       ("output_nc", 2.5),
                       ("label_nc", -1), ("n_blocks", 0), ("arch", "unet_256"), ("arch", 7), ("norm", "group"),
                       ("ngf", _DROP), ("arch", _DROP)]:  # fmt: skip
        yield f"generator-{key}={value!r}", json.dumps(_edited(config, "generator", **{key: value}))
    kind = config["kind"]
    if kind == "shortcut":
        for key, value in [("hidden", 0), ("hidden", 30), ("groups", 3), ("feature_channels", "64"), ("hidden", 4096),
                           ("feature_channels", _DROP)]:  # fmt: skip
            yield f"block-{key}={value!r}", json.dumps(_edited(config, "block", **{key: value}))
        yield "no-block", json.dumps({k: v for k, v in config.items() if k != "block"})
        yield "reuse-below-string", json.dumps({**config, "reuse_below": "high"})
    if kind == "student":
        for key, value in [("width", -1), ("expansion", 0), ("body", "mlp"), ("n_downsampling", 1), ("ngf", 4096)]:
            yield f"student-{key}={value!r}", json.dumps(_edited(config, "student", **{key: value}))
        yield "no-generator", json.dumps({k: v for k, v in config.items() if k != "generator"})
    if kind != "generator":
        yield "interval-0", json.dumps({**config, "interval": 0})
        yield "method-list", json.dumps({**config, "method": ["shortcut"]})
        yield "method-interval", json.dumps({**config, "method": {"name": kind, "interval": "3"}})


def _broken_files(tmp_path: Path):
    """(name, path) of every broken model file the fuzz test feeds to both entry points."""
    teacher = WEIGHTS / "edges_teacher.safetensors"
    data = teacher.read_bytes()
    for cut in (0, 4, 8, 100, len(data) // 2, len(data) - 1):
        path = tmp_path / f"cut{cut}.safetensors"
        path.write_bytes(data[:cut])
        yield f"truncated at {cut}", path
    rng = torch.Generator().manual_seed(0)
    noise = bytes(torch.randint(0, 256, (4096,), generator=rng, dtype=torch.uint8).tolist())
    for suffix in (".safetensors", ".pth"):
        path = tmp_path / f"random{suffix}"
        path.write_bytes(noise)
        yield f"random bytes {suffix}", path
        path = tmp_path / f"empty{suffix}"
        path.write_bytes(b"")
        yield f"empty {suffix}", path
    for name, obj in [("tensor", torch.zeros(3)), ("list", [torch.zeros(3)]), ("dict-of-ints", {"a": 1}),
                      ("namespace", {"x": argparse.Namespace(a=1)})]:  # fmt: skip
        path = tmp_path / f"{name}.pth"
        torch.save(obj, path)
        yield f".pth holding a {name}", path
    for src in ("edges_teacher", "edges_shortcut", "edges_student"):
        for i, (name, text) in enumerate(_broken_metadata(WEIGHTS / f"{src}.safetensors")):
            yield f"{src} {name}", _resave(WEIGHTS / f"{src}.safetensors", tmp_path / f"{src}_{i}.safetensors", text)


def test_every_broken_model_file_is_one_sentence(tmp_path, make_video, capsys):
    video = make_video(frames=2)
    seen = 0
    for name, path in _broken_files(tmp_path):
        with pytest.raises(UserError) as caught:
            fastv2v.load_model(path)
        message = str(caught.value)
        assert str(path) in message and "\n" not in message, (name, message)
        assert "Traceback" not in message and "weights_only=False" not in message, (name, message)
        code = main(["translate", str(video), str(tmp_path / "out.mp4"), "--model", str(path), "--quiet"])
        err = capsys.readouterr().err
        assert code == 2, (name, err)
        assert err.count("\n") == 1 and str(path) in err and "Traceback" not in err, (name, err)
        seen += 1
    assert seen > 60
    assert not (tmp_path / "out.mp4").exists()


@pytest.mark.parametrize("src", ["edges_teacher", "edges_shortcut", "edges_student"])
def test_resaved_shipped_file_still_loads(tmp_path, src):
    """The schema accepts what fastv2v writes (guards the fuzz test against refusing everything)."""
    path = WEIGHTS / f"{src}.safetensors"
    copy = _resave(path, tmp_path / path.name, json.dumps(_config(path)))
    assert fastv2v.models.model_kind(copy) == _config(path)["kind"]
    fastv2v.load_model(copy)


def test_damaged_metadata_names_the_problem(tmp_path):
    src = WEIGHTS / "edges_teacher.safetensors"
    config = _config(src)
    path = _resave(src, tmp_path / "g.safetensors", json.dumps(_edited(config, "generator", ngf=-5)))
    with pytest.raises(UserError, match=r"g\.safetensors is damaged: ngf must be a whole number .* not -5; re-export"):
        fastv2v.load_model(path)
    path = _resave(src, tmp_path / "l.safetensors", json.dumps([config]))
    with pytest.raises(UserError, match=r"l\.safetensors is damaged: its metadata is a JSON list, not an object"):
        fastv2v.load_model(path)
