"""The GPU path (``--device cuda``), skipped where no CUDA GPU is present (``benchmarks/gpu.sh``
runs it on a GPU machine): every registered method on every shipped model file runs on the GPU
and gives the CPU's outputs to float rounding (fp32), fp16/bf16 autocast stay close, and
``translate``/``bench`` work end to end with ``--device cuda``."""

import numpy as np
import pytest
import torch

from fastv2v.bench.inputs import resolve_input
from fastv2v.engine.loop import drive
from fastv2v.errors import UserError
from fastv2v.metrics.quality import psnr
from fastv2v.pipeline import Pipeline, method_names
from fastv2v.tasks import WEIGHTS_DIR

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu.sh)")
SIZE = (64, 128)
SHIPPED = sorted(p.name for p in WEIGHTS_DIR.glob("*.safetensors"))


@pytest.fixture(scope="module")
def clips():
    return {task: resolve_input(f"{task}:0", size=SIZE, frames=8).inputs for task in ("scenes", "edges")}


def run(name: str, method: str, frames, device: str, dtype: str = "fp32") -> list[np.ndarray]:
    try:
        pipeline = Pipeline.from_file(WEIGHTS_DIR / name, method)
    except UserError as exc:
        pytest.skip(f"{method} does not run on {name}: {exc}")
    return [out.output for out in drive(pipeline, frames, device=device, dtype=dtype)]


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("method", method_names())
def test_every_method_gives_the_cpu_outputs_on_the_gpu(clips, name, method):
    frames = clips["scenes" if name.startswith("scenes") else "edges"]
    cpu, gpu = run(name, method, frames, "cpu"), run(name, method, frames, "cuda")
    assert len(gpu) == len(cpu)
    for a, b in zip(gpu, cpu):
        assert psnr(a, b) > 40  # different kernels, the same function (8-bit outputs)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("name", ["scenes_teacher.safetensors", "edges_shortcut.safetensors",
                                  "edges_student.safetensors"])  # fmt: skip
def test_reduced_precision_autocast_stays_close(clips, name, dtype):
    if dtype == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    frames = clips["scenes" if name.startswith("scenes") else "edges"]
    full, reduced = run(name, None, frames, "cuda"), run(name, None, frames, "cuda", dtype)
    assert min(psnr(a, b) for a, b in zip(reduced, full)) > 28


def test_translate_and_bench_on_the_gpu(tmp_path):
    from fastv2v.cli import main

    frames = tmp_path / "in"
    frames.mkdir()
    from PIL import Image

    for i, f in enumerate(resolve_input("edges:0", size=SIZE, frames=6).inputs):
        Image.fromarray(f).save(frames / f"{i:03d}.png")
    model = str(WEIGHTS_DIR / "edges_shortcut.safetensors")
    assert main(["translate", str(frames), str(tmp_path / "out.mp4"), "--model", model, "--device", "cuda",
                 "--quiet"]) == 0  # fmt: skip
    assert main(["bench", "--model", model, "--input", str(frames), "--methods", "teacher,shortcut",
                 "--intervals", "3", "--device", "cuda", "--out", str(tmp_path / "bench"), "--quiet"]) == 0  # fmt: skip
