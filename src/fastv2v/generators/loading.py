"""Build generators by name and load their weights from any file a user is likely to have.

Upstream ``.pth`` files (pytorch-CycleGAN-and-pix2pix, RecycleGAN, pix2pixHD, vid2vid's
``latest_net_G0.pth``) load without conversion: the ``module.`` prefix of DataParallel saves and
the InstanceNorm running-stat entries of old files are dropped exactly as upstream's own loader
drops them (vid2vid's InstanceNorms track their stats: those are kept). When the
architecture is not named it is read off the tensors.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from fastv2v.checkpoint import damaged, load_model_file, save_model
from fastv2v.errors import UserError
from fastv2v.generators.base import SplitGenerator
from fastv2v.generators.resnet import GlobalGenerator, ResnetGenerator
from fastv2v.generators.vid2vid import Vid2VidGenerator, infer_vid2vid_config, is_vid2vid_state, vid2vid_state_dict
from fastv2v.model_schema import generator_problem

_RESNET_ARCH = re.compile(r"resnet_(\d+)blocks$")
_NAMED = ("global", "vid2vid")


def build_generator(arch: str, /, **config: Any) -> SplitGenerator | Vid2VidGenerator:
    """A generator by name: ``resnet_6blocks``, ``resnet_9blocks``, ``resnet_Nblocks``, ``global``, ``vid2vid``."""
    config = {k: v for k, v in config.items() if k != "arch"}
    match = _RESNET_ARCH.match(arch)
    if match:
        config["n_blocks"] = int(match.group(1))
    # refuse ngf=0, a negative label_nc, ... here, not as a shape error deep inside torch
    checked = config if match else {**config, "arch": arch}  # the name selects vid2vid's own checks
    problem = generator_problem(checked, required=()) if match or arch in _NAMED else None
    if problem:
        raise UserError(f"cannot build a {arch} generator: {problem}.")
    if match:
        return ResnetGenerator(**_known(ResnetGenerator, config))
    if arch == "global":
        return GlobalGenerator(**_known(GlobalGenerator, config))
    if arch == "vid2vid":
        return Vid2VidGenerator(**_known(Vid2VidGenerator, config))
    raise UserError(f"unknown architecture {arch!r}; use resnet_6blocks, resnet_9blocks, global or vid2vid.")


def teacher_of(model: Any) -> SplitGenerator | Vid2VidGenerator:
    """The generator of a loaded model: the model itself (a per-frame or a sequential vid2vid
    generator), or the teacher a model-file bundle carries."""
    return model if isinstance(model, SplitGenerator | Vid2VidGenerator) else model.teacher


def call_inputs(generator: SplitGenerator | Vid2VidGenerator, height: int, width: int,
                device: str | torch.device = "cpu") -> tuple[torch.Tensor, ...]:  # fmt: skip
    """Inputs of one call of ``generator`` at ``height`` x ``width``, values in [-1, 1], for timing
    and counting (``device="meta"``: shapes only): a per-frame generator's frame; a sequential
    (vid2vid) one's window of ``n_frames_G`` frames and its ``n_frames_G - 1`` previous outputs."""
    frames = generator.n_frames_G if isinstance(generator, Vid2VidGenerator) else None
    shapes = [(generator.input_nc, height, width)] if frames is None else [
        (generator.input_nc * frames, height, width), (generator.output_nc * (frames - 1), height, width)]  # fmt: skip
    return tuple(torch.empty(1, *shape, device=device).uniform_(-1, 1) for shape in shapes)


def _known(cls, config: dict[str, Any]) -> dict[str, Any]:
    import inspect

    names = set(inspect.signature(cls.__init__).parameters) - {"self"}
    return {k: v for k, v in config.items() if k in names}


def upstream_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Normalise a state dict saved by upstream code: unwrap, strip ``module.``, drop IN stats.

    InstanceNorm layers without running stats own no tensors, so any ``running_mean`` /
    ``running_var`` / ``num_batches_tracked`` under a norm that has no ``weight`` is an old-file
    artefact (upstream's ``__patch_instance_norm_state_dict`` deletes the same entries).
    """
    for key in ("state_dict", "model", "netG", "G"):
        if key in state and isinstance(state[key], dict):
            state = state[key]
    if is_vid2vid_state(state):  # its InstanceNorms own running stats: keep them
        return vid2vid_state_dict(state)
    state = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}
    state = {k: v for k, v in state.items() if torch.is_tensor(v)}
    stats = ("running_mean", "running_var", "num_batches_tracked")
    out = {}
    for key, value in state.items():
        prefix, _, leaf = key.rpartition(".")
        if leaf in stats and f"{prefix}.weight" not in state:
            continue
        out[key] = value
    return out


def infer_config(state: dict[str, torch.Tensor], source: str = "the checkpoint") -> dict[str, Any]:
    """Architecture of an upstream ResNet-style generator, read off its tensors.

    Returns the config (with ``arch``) that rebuilds it. Reflection and replication padding own
    no tensors and cannot be told apart: reflection (both upstreams' default) is assumed.
    """
    if "model.1.weight" not in state:
        raise UserError(
            f"{source} does not look like a ResNet-style generator (no 'model.1.weight'); "
            "name the architecture with --arch or check that it is a generator file."
        )
    first = state["model.1.weight"]
    ngf, input_nc = int(first.shape[0]), int(first.shape[1])
    blocks = sorted({int(m.group(1)) for k in state if (m := re.match(r"model\.(\d+)\.conv_block\.", k))})
    if not blocks:
        raise UserError(f"{source} has no residual blocks ('model.N.conv_block.*'); name the architecture with --arch.")
    first_block = blocks[0]
    downs = [
        i for i in range(2, first_block)
        if f"model.{i}.weight" in state and state[f"model.{i}.weight"].dim() == 4
    ]  # fmt: skip
    n_down = len(downs)
    last_index = max(int(m.group(1)) for k in state if (m := re.match(r"model\.(\d+)\.weight$", k)))
    output_nc = int(state[f"model.{last_index}.weight"].shape[0])
    has_bias = "model.1.bias" in state
    batch = "model.2.weight" in state
    block = f"model.{first_block}.conv_block"
    zero_pad = f"{block}.0.weight" in state
    second_conv = 4 if zero_pad else 5
    dropout = f"{block}.{second_conv + 1}.weight" in state and f"{block}.{second_conv}.weight" not in state
    padding = "zero" if zero_pad else "reflect"
    if n_down == 2 and not (batch and has_bias):
        norm = "batch" if batch else ("instance" if has_bias else "none")
        return dict(
            arch=f"resnet_{len(blocks)}blocks", input_nc=input_nc, output_nc=output_nc, ngf=ngf,
            n_blocks=len(blocks), norm=norm, use_dropout=dropout, padding_type=padding,
        )  # fmt: skip
    return dict(
        arch="global", input_nc=input_nc, output_nc=output_nc, ngf=ngf, n_downsampling=n_down,
        n_blocks=len(blocks), norm="batch" if batch else "instance", padding_type=padding,
    )  # fmt: skip


def _read_torch_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors alike: the file is not a checkpoint
        raise UserError(
            f"{path} could not be read as a PyTorch checkpoint ({type(exc).__name__}); "
            "check that it is a complete generator .pth file."
        ) from None
    if not isinstance(state, dict):
        raise UserError(f"{path} holds a {type(state).__name__}, not a state dict; save the generator's state_dict().")
    return upstream_state_dict(state)


def load_generator(
    path: str | os.PathLike, arch: str | None = None, *, device: str | torch.device = "cpu", **config: Any
) -> SplitGenerator | Vid2VidGenerator:
    """Load a generator in eval mode from a fastv2v ``.safetensors`` or an upstream ``.pth``.

    The architecture comes from the file's metadata (fastv2v files), from ``arch`` and
    ``config`` when given, and otherwise from the tensors themselves; keyword ``config``
    overrides what was inferred (e.g. ``label_nc=35`` for a label-map pix2pixHD or vid2vid model).
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist; pass the path of a generator checkpoint with --model.")
    if path.suffix == ".safetensors":
        state, meta = load_model_file(path)
        kind = (meta or {}).get("kind", "generator")
        if kind != "generator":
            raise UserError(f"{path} is a {kind} model, not a generator; load it with fastv2v.load_model.")
        from_metadata = bool(meta and "generator" in meta)
        inferred = dict(meta["generator"]) if from_metadata else _infer(state, str(path), config)
    else:
        state, from_metadata = _read_torch_file(path), False
        inferred = _infer(state, str(path), config) if arch in (None, "vid2vid") else _partial_config(state)
    merged = {**inferred, **config}
    name = arch or merged.get("arch")
    if name is None:
        raise UserError(f"{path} does not say its architecture; pass --arch.")
    with torch.device("meta"):  # check the fit first: a forged ngf must not allocate gigabytes
        try:
            _check_fit(build_generator(name, **merged), state, path, name)
        except UserError:
            if from_metadata and arch is None and not config:  # the file contradicts itself
                raise UserError(damaged(path, "its generator config does not match its weights")) from None
            raise
    generator = build_generator(name, **merged)
    generator.load_state_dict(state, strict=True)
    return generator.eval().to(device)


def _infer(state: dict[str, torch.Tensor], source: str, config: dict[str, Any]) -> dict[str, Any]:
    """The config read off the tensors; vid2vid needs the caller's ``label_nc`` to split its channels."""
    if is_vid2vid_state(state):
        return infer_vid2vid_config(state, source, label_nc=config.get("label_nc", 0))
    return infer_config(state, source)


def _partial_config(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Channel counts that a named architecture can take from the file when not given."""
    if "model.1.weight" not in state:
        return {}
    first = state["model.1.weight"]
    out = {"ngf": int(first.shape[0]), "input_nc": int(first.shape[1])}
    last = [k for k in state if re.match(r"model\.\d+\.weight$", k)]
    if last:
        final = max(last, key=lambda k: int(k.split(".")[1]))
        out["output_nc"] = int(state[final].shape[0])
    return out


def _check_fit(
    generator: SplitGenerator | Vid2VidGenerator, state: dict[str, torch.Tensor], path: Path, arch: str
) -> None:
    expected = generator.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_few(unexpected)}")
        raise UserError(
            f"{path} does not fit architecture {arch} ({'; '.join(parts)}); "
            "omit --arch to infer the architecture from the file, or name the right one."
        )
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items() if state[k].shape != v.shape]
    if wrong:
        raise UserError(
            f"{path} does not fit architecture {arch} (shape mismatch: {_few(wrong)}); "
            "check --arch and the channel options, or omit them to infer them from the file."
        )


def _few(items: list[str], limit: int = 4) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def save_generator(path: str | os.PathLike, generator: SplitGenerator | Vid2VidGenerator, **extra: Any) -> None:
    """Write a self-describing ``.safetensors``: weights plus the config that rebuilds it."""
    save_model(path, generator.state_dict(), {"kind": "generator", "generator": generator.config, **extra})
