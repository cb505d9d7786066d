"""The schema of a model file's metadata, checked on every load.

A ``.safetensors`` metadata string is outside our control once the file leaves the machine
that wrote it (hand edits, other tools, bit rot). Each check returns a short problem ("ngf must
be a whole number from 1 to 4096, not -5") or ``None``, so that a damaged file is refused in one
sentence naming it, before any module is built from it, and the generator / block builders can
refuse bad settings of the library API and the CLI with the same words. Caps on widths are
generous but keep a forged file from asking for terabytes.
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any

MAX_CHANNELS = 4096
MAX_BLOCKS = 256
_RESNET_ARCH = re.compile(r"resnet_(\d+)blocks$")
NORMS = ("instance", "batch", "none")
PADDINGS = ("reflect", "replicate", "zero")


def _int(config: dict, key: str, low: int, high: int, *, required: bool = False) -> str | None:
    if key not in config:
        return f"'{key}' is missing" if required else None
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
        return f"{key} must be a whole number from {low} to {high}, not {value!r}"
    return None


def _choice(config: dict, key: str, choices: tuple[str, ...]) -> str | None:
    if key in config and config[key] not in choices:
        return f"{key} must be one of {', '.join(choices)}, not {config[key]!r}"
    return None


def _bool(config: dict, *keys: str) -> str | None:
    for key in keys:
        if key in config and not isinstance(config[key], bool):
            return f"{key} must be true or false, not {config[key]!r}"
    return None


def _first(*problems: str | None) -> str | None:
    return next((p for p in problems if p), None)


REQUIRED = ("arch", "ngf", "input_nc", "output_nc")


def generator_problem(config: Any, *, required: tuple[str, ...] = REQUIRED) -> str | None:
    """What is wrong with a generator config (``arch`` known, widths positive, ...), or None."""
    if not isinstance(config, dict):
        return f"the generator config is a {type(config).__name__}, not an object"
    missing = [k for k in required if k not in config]
    if missing:
        return f"the generator config lacks {', '.join(repr(k) for k in missing)}"
    arch = config.get("arch")
    if arch is not None:
        match = _RESNET_ARCH.match(arch) if isinstance(arch, str) else None
        if arch not in ("global", "vid2vid") and not match:
            return f"unknown architecture {arch!r} (resnet_Nblocks, global or vid2vid)"
        if match and not 1 <= int(match.group(1)) <= MAX_BLOCKS:
            return f"architecture {arch!r} needs 1 to {MAX_BLOCKS} blocks"
    return _first(
        _int(config, "ngf", 1, MAX_CHANNELS), _int(config, "input_nc", 1, MAX_CHANNELS),
        _int(config, "output_nc", 1, MAX_CHANNELS), _int(config, "n_blocks", 1, MAX_BLOCKS),
        _int(config, "label_nc", 0, MAX_CHANNELS), _int(config, "n_downsampling", 2, 8),
        _choice(config, "norm", NORMS), _choice(config, "padding_type", PADDINGS),
        _bool(config, "use_dropout", "use_instance"), _vid2vid_problem(config) if arch == "vid2vid" else None,
    )  # fmt: skip


def _vid2vid_problem(config: dict) -> str | None:
    """vid2vid's own settings: window length, depth, its two norms, foreground labels, and
    per-frame channels that agree with the label count."""
    problem = _first(
        _int(config, "n_frames_G", 2, 64), _int(config, "n_downsample_G", 1, 8),
        _int(config, "input_nc", 1, MAX_CHANNELS), _int(config, "label_nc", 0, MAX_CHANNELS),
        _choice(config, "norm", ("batch", "instance")), _bool(config, "no_flow", "fg", "running_stats", "use_instance"),
    )  # fmt: skip
    if problem:
        return problem
    labels = config.get("fg_labels", [])
    if not isinstance(labels, (list, tuple)) or not all(
        isinstance(c, numbers.Integral) and not isinstance(c, bool) and 0 <= c < MAX_CHANNELS for c in labels
    ):
        return f"fg_labels must be a list of class IDs, not {labels!r}"
    label_nc, use_instance = config.get("label_nc", 0), config.get("use_instance", False)
    if use_instance and not label_nc:
        return "use_instance needs label maps (label_nc > 0)"
    if label_nc and "input_nc" in config and config["input_nc"] != label_nc + int(use_instance):
        return f"input_nc ({config['input_nc']}) must be label_nc (+1 with use_instance)"
    return None


def block_problem(config: Any) -> str | None:
    """What is wrong with a Shortcut block config, or None."""
    if not isinstance(config, dict):
        return f"the block config is a {type(config).__name__}, not an object"
    problem = _first(
        _int(config, "feature_channels", 1, 4 * MAX_CHANNELS, required=True), _int(config, "hidden", 1, MAX_CHANNELS),
        _int(config, "groups", 2, 64), _int(config, "global_layers", 1, 16), _int(config, "local_layers", 1, 16),
        _bool(config, "reference_skip"),
    )  # fmt: skip
    if problem:
        return problem
    groups = config.get("groups", 4)
    if groups % 2:
        return f"groups must be even, not {groups}"
    for key in ("feature_channels", "hidden"):
        if key in config and config[key] % groups:
            return f"{key} ({config[key]}) must be divisible by groups ({groups})"
    return None


def student_problem(config: Any) -> str | None:
    """What is wrong with a spatial student config, or None."""
    if not isinstance(config, dict):
        return f"the student config is a {type(config).__name__}, not an object"
    problem = generator_problem({k: v for k, v in config.items() if k not in ("arch", "n_blocks")},
                                required=("ngf", "input_nc", "output_nc"))
    if problem:
        return problem
    if config.get("width") is not None:
        problem = _int(config, "width", 1, 4 * MAX_CHANNELS)
    return _first(
        problem, _int(config, "n_blocks", 0, MAX_BLOCKS), _int(config, "expansion", 1, 64),
        _choice(config, "body", ("inverted", "resnet", "pruned")), _choice(config, "activation", ("relu", "relu6")),
        _bool(config, "use_bias"),
    )  # fmt: skip


def method_problem(config: dict) -> str | None:
    """What is wrong with the interval and the stored method settings, or None."""
    problem = _first(_int(config, "interval", 1, 10_000), _gate(config))
    if problem or "method" not in config:
        return problem
    method = config["method"]
    if not isinstance(method, dict):
        return f"the method settings are a {type(method).__name__}, not an object"
    if not isinstance(method.get("name", ""), str):
        return f"the method name must be a string, not {method['name']!r}"
    problem = None if method.get("interval") == "auto" else _int(method, "interval", 1, 10_000)
    if problem:
        return f"method {problem}"
    for key, value in method.items():
        if isinstance(value, float) and not math.isfinite(value):
            return f"method setting {key} must be a finite number, not {value!r}"
        if value is not None and not isinstance(value, (str, int, float, bool)):
            return f"method setting {key} must be a number, string or true/false, not {value!r}"
    return _gate(method)


def _gate(settings: dict) -> str | None:
    gate = settings.get("reuse_below", 0.0)
    if isinstance(gate, bool) or not isinstance(gate, (int, float)) or not 0 <= gate < math.inf:
        return f"reuse_below must be a number >= 0, not {gate!r}"
    return None


_JSON_TYPES = {"list": "list", "str": "string", "bool": "boolean", "NoneType": "null"}

#: The part each bundle kind carries, and its check.
PARTS = {"shortcut": ("block", block_problem), "student": ("student", student_problem)}


def config_problem(config: Any) -> str | None:
    """What is wrong with a whole model-file config, or None. Unknown kinds pass (the loader
    says that this version cannot run them)."""
    if not isinstance(config, dict):
        json_type = _JSON_TYPES.get(type(config).__name__, "number")
        return f"its metadata is a JSON {json_type}, not an object"
    kind = config.get("kind", "generator")
    if not isinstance(kind, str):
        return f"its kind is {kind!r}, not a name"
    if kind == "generator":  # a plain teacher, possibly with the method `fastv2v tune` chose for it
        problem = None if "generator" not in config else generator_problem(config["generator"])
        return problem or (method_problem({"method": config["method"]}) if "method" in config else None)
    if kind not in PARTS:
        return None
    part, check = PARTS[kind]
    if "generator" not in config:
        return "it lacks the teacher's 'generator' config"
    if part not in config:
        return f"it lacks the '{part}' config"
    return _first(generator_problem(config["generator"]), check(config[part]), method_problem(config))
