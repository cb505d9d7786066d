"""Which compute precisions a device runs natively, and a warning when it would only emulate one.

A CPU without native bfloat16 (no ``avx512_bf16`` / ``amx_bf16`` on x86, no ``bf16`` on Arm) runs
bf16 autocast through emulation: the shipped edges teacher took 21 s a frame in bf16 against
0.12 s in fp32 on a 2-core AVX2 EPYC, 170x slower. Asking for it is allowed (a user may want the
comparison), but never silently: :func:`warn_if_emulated` says so in one line, with the slowdown
measured on a small convolution here.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from typing import Any, Callable

import torch

from fastv2v.errors import UserError

#: CPU flags (``/proc/cpuinfo``) that mean native support, per precision.
NATIVE_CPU_FLAGS = {"bf16": {"avx512_bf16", "amx_bf16", "bf16"}, "fp16": {"avx512_fp16", "amx_fp16", "fphp"}}


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags (x86 ``flags``, Arm ``Features``), or None where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return None


def native(dtype: str, device: torch.device) -> bool | None:
    """Whether ``device`` computes ``dtype`` natively: True, False, or None (cannot tell)."""
    if dtype == "fp32":
        return True
    if device.type == "cuda":
        if dtype == "bf16":
            return bool(torch.cuda.is_bf16_supported())
        return torch.cuda.get_device_capability(device) >= (5, 3)
    flags = cpu_flags()
    if flags is None:
        return None
    return bool(flags & NATIVE_CPU_FLAGS.get(dtype, set()))


def slowdown(dtype: str, device: torch.device) -> float:
    """How many times slower a small convolution runs under ``dtype`` autocast than in fp32."""
    from fastv2v.engine.loop import autocast

    conv = torch.nn.Conv2d(32, 32, 3, padding=1).to(device).eval()
    x = torch.randn(1, 32, 32, 32, device=device)

    def seconds(mode: str) -> float:
        with torch.inference_mode(), autocast(device, mode):
            conv(x)  # warm-up
            tick = time.perf_counter()
            for _ in range(3):
                conv(x)
            return time.perf_counter() - tick

    return seconds(dtype) / max(seconds("fp32"), 1e-9)


def warn_if_emulated(dtype: str, device: torch.device) -> str | None:
    """Print (stderr) and return one sentence when ``dtype`` is emulated on ``device``."""
    if native(dtype, device) is not False:
        return None
    factor = slowdown(dtype, device)
    what = "this CPU lacks avx512_bf16/amx" if device.type == "cpu" else f"{device} has no native {dtype}"
    text = (f"fastv2v: warning: --dtype {dtype} is emulated here ({what}): a convolution measured {factor:.0f}x "
            f"slower than in fp32; use --dtype fp32 unless you mean to compare.")  # fmt: skip
    print(text, file=sys.stderr, flush=True)
    return text


#: what ``--dtype`` takes: a precision, or ``auto`` (the fastest the device computes natively)
DTYPE_CHOICES = ("auto", "fp32", "bf16", "fp16")
#: a reduced precision must beat fp32 by this much to be chosen (below it, timing noise decides)
_WORTH = 1.1


def default_dtype() -> str:
    """The command line's ``--dtype`` default: ``$FASTV2V_DTYPE`` when set (pin one precision on a
    machine, e.g. for reproducible outputs across CPU models), else ``auto``."""
    value = os.environ.get("FASTV2V_DTYPE", "auto")
    if value not in DTYPE_CHOICES:
        raise UserError(f"FASTV2V_DTYPE={value!r} is not a precision; set it to one of {', '.join(DTYPE_CHOICES)}.")
    return value


def choose_dtype(dtype: str, device: torch.device, timed: Callable[[str], float], *, backend: str = "torch",
                 quiet: bool = False, tuned: str | None = None) -> str:  # fmt: skip
    """``dtype`` itself, or for ``auto`` the fastest precision ``device`` computes natively on
    ``backend``, measured with ``timed(precision) -> seconds`` (one model call, warmed up); fp32
    unless a native reduced precision is at least 10 % faster. ``tuned``: the precision a model
    file was measured at by ``fastv2v tune``, which ``auto`` keeps on PyTorch where it is native
    (no timing). Says its choice in one line."""
    if dtype != "auto":
        return dtype
    if tuned and backend == "torch" and (tuned == "fp32" or native(tuned, device)):
        _say(quiet, f"--dtype auto: {tuned} (the precision the model file was tuned at)")
        return tuned
    offered = ("bf16",) if backend == "openvino" else () if backend == "onnxruntime" else ("bf16", "fp16")
    candidates = [d for d in offered if native(d, device)]
    if not candidates:
        reason = "no reduced precision is native here" if offered else f"{backend} runs fp32 graphs"
        _say(quiet, f"--dtype auto: fp32 ({reason})")
        return "fp32"
    seconds = {d: timed(d) for d in ["fp32", *candidates]}
    best = min(candidates, key=seconds.get)
    gain = seconds["fp32"] / max(seconds[best], 1e-9)
    if gain >= _WORTH:
        _say(quiet, f"--dtype auto: {best} (native here; the model ran {gain:.2f}x faster than in fp32)")
        return best
    _say(quiet, f"--dtype auto: fp32 ({best} is native here but ran only {gain:.2f}x as fast)")
    return "fp32"


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(f"fastv2v: {text}", file=sys.stderr, flush=True)


def best_seconds(call: Callable[[], Any], repeats: int = 3) -> float:
    """The fastest of ``repeats`` timed calls after one warm-up call."""
    call()
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        call()
        times.append(time.perf_counter() - tick)
    return min(times)
