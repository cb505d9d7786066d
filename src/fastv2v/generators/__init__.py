"""Teacher generators: build by name, save and load (upstream ``.pth`` or fastv2v ``.safetensors``)."""

from fastv2v.generators.base import SplitGenerator
from fastv2v.generators.loading import (
    build_generator,
    infer_config,
    load_generator,
    save_generator,
    teacher_of,
    upstream_state_dict,
)
from fastv2v.generators.resnet import GlobalGenerator, ResnetGenerator
from fastv2v.generators.vid2vid import Vid2VidGenerator, infer_vid2vid_config

__all__ = [
    "GlobalGenerator",
    "ResnetGenerator",
    "SplitGenerator",
    "Vid2VidGenerator",
    "build_generator",
    "infer_config",
    "infer_vid2vid_config",
    "load_generator",
    "save_generator",
    "teacher_of",
    "upstream_state_dict",
]
