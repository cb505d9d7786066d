"""Head and tail of a ResNet teacher on the CPU: the plain modules against
:mod:`fastv2v.generators.fast_parts`, and what that does to Shortcut-V2V's non-key-frame path.

    python benchmarks/parts_speed.py                       # 128x256 ngf 32 and 256x512 ngf 64, 1 and 2 threads
    python benchmarks/parts_speed.py --threads 2 --reps 15
    python benchmarks/parts_speed.py --sizes 256x512:64 --no-block
    python benchmarks/parts_speed.py --quick               # tiny sizes: checks that it runs
    python benchmarks/parts_speed.py --busy 1              # another process running torch meanwhile

Randomly initialised ``resnet_9blocks`` teachers (weights do not change the speed), batch 1,
fp32, ``torch.inference_mode()``. Every timed thing runs once per round, rounds interleaved,
after warm-up; the figures are medians over rounds (``min`` alongside: on a machine shared with
other processes the median carries their noise, the minimum less so). Compare ratios within
one run only. ``max|diff|`` is the largest absolute difference of the fast part to the plain
one, ``rel`` that divided by the largest absolute plain output, and ``err64 plain / fast`` the
largest absolute error of each against the same part run in float64.

The non-key path is ``tail(block.predict(head(x)))`` with an untrained
:class:`~fastv2v.methods.shortcut.ShortcutBlock` (its cost does not depend on its weights; its
output has a large mean and a tiny spread per channel, so the tail's InstanceNorm amplifies
float32 rounding: see ``err64``), and ``Nx the teacher's speed`` is a non-key frame's speed-up
over the teacher. ``fast, CL head`` uses ``fast_head(g, channels_last=True)`` and times the
block on that channels-last input (same values).

``--busy N`` starts N other processes that run 2-thread torch matrix products for as long as the
timing lasts: the shared-machine case, where every OpenMP parallel region of the timed code can
wait for a descheduled worker (see :mod:`fastv2v.generators.fast_parts`). The fast parts never
change torch's thread count; the script checks that after each size.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import os
import platform
import statistics
import time

import torch

from fastv2v.generators.fast_parts import fast_head, fast_tail
from fastv2v.generators.resnet import ResnetGenerator
from fastv2v.methods.shortcut import ShortcutBlock


def busy_loop() -> None:
    """Another process's torch work: 2-thread matrix products, until terminated."""
    torch.set_num_threads(2)
    a = torch.randn(512, 512)
    while True:
        a = torch.tanh(a @ a.t() * 1e-3)


def frame(h: int, w: int) -> torch.Tensor:
    """A smooth test image in [-1, 1] with some texture."""
    y = torch.linspace(-1, 1, h).view(h, 1)
    x = torch.linspace(-1, 1, w).view(1, w)
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(3, h, w, generator=g) * 0.3
    img = torch.stack([0.6 * x + 0.2 * y, 0.5 * y - 0.3 * x, 0.4 * torch.sin(6 * x) * torch.cos(4 * y)])
    return (img + noise - 0.15).clamp(-1, 1).unsqueeze(0)


def timed(fns: dict, reps: int, warmup: int = 2) -> dict[str, tuple[float, float]]:
    for _ in range(warmup):
        for f in fns.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: (statistics.median(v) * 1e3, min(v) * 1e3) for k, v in times.items()}


def diff(a: torch.Tensor, b: torch.Tensor, ref: torch.Tensor) -> tuple[float, float, float, float]:
    d = (a - b).abs().max().item()
    return (
        d,
        d / max(b.abs().max().item(), 1e-30),
        (b.double() - ref).abs().max().item(),
        (a.double() - ref).abs().max().item(),
    )


def run(
    size: tuple[int, int], ngf: int, threads: int, reps: int, with_block: bool, n_blocks: int, min_elements=None
) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    h, w = size
    g = ResnetGenerator(ngf=ngf, n_blocks=n_blocks).eval()
    kw = {"min_elements": min_elements}
    head, tail, head_cl = fast_head(g, **kw), fast_tail(g, **kw), fast_head(g, channels_last=True, **kw)
    g64 = copy.deepcopy(g).double()
    x = frame(h, w)
    with torch.inference_mode():
        a = g.head(x)
        a_cl = head_cl(x)
        f = g.body(a)
        fns = {"head plain": lambda: g.head(x), "head fast": lambda: head(x), "head fast CL": lambda: head_cl(x)}
        if with_block:
            block = ShortcutBlock(feature_channels=2 * ngf).eval()
            prepared = block.prepare_reference(a, f)
            f_in = block.predict(a, prepared, aligned=False)[0]
            fns = {
                "teacher": lambda: g(x), **fns,
                "block": lambda: block.predict(a, prepared, aligned=False),
                "block CL": lambda: block.predict(a_cl, prepared, aligned=False),
            }  # fmt: skip
        else:
            f_in = f
        fns.update({"tail plain": lambda: g.tail(f_in), "tail fast": lambda: tail(f_in)})
        d_head = diff(head(x), g.head(x), g64.head(x.double()))
        d_tail = diff(tail(f_in), g.tail(f_in), g64.tail(f_in.double()))
        load0 = os.getloadavg()[0]
        r = timed(fns, reps)
        load1 = os.getloadavg()[0]
    assert torch.get_num_threads() == threads, "a fast part changed torch's thread count"
    print(f"\n## {h}x{w}, ngf {ngf}, {threads} thread(s)  (load average {load0:.1f} -> {load1:.1f})")
    print(
        f"{'part':<12} {'plain ms':>10} {'fast ms':>10} {'speed-up':>9}   {'(min plain':>10} {'min fast)':>10}"
        "   max|diff|  rel      err64 plain / fast"
    )
    for part, d in (("head", d_head), ("tail", d_tail)):
        (pm, pmin), (fm, fmin) = r[f"{part} plain"], r[f"{part} fast"]
        print(
            f"{part:<12} {pm:10.2f} {fm:10.2f} {pm / fm:8.2f}x   {pmin:10.2f} {fmin:10.2f}"
            f"   {d[0]:.2e}  {d[1]:.1e}  {d[2]:.1e} / {d[3]:.1e}"
        )
    hc = r["head fast CL"]
    print(f"{'head fast CL':<12} {'':>10} {hc[0]:10.2f} {r['head plain'][0] / hc[0]:8.2f}x   {'':>10} {hc[1]:10.2f}")
    ht_p = r["head plain"][0] + r["tail plain"][0]
    ht_f = r["head fast"][0] + r["tail fast"][0]
    print(f"{'head+tail':<12} {ht_p:10.2f} {ht_f:10.2f} {ht_p / ht_f:8.2f}x")
    if with_block:
        t, b, bc = r["teacher"][0], r["block"][0], r["block CL"][0]
        print(
            f"teacher {t:.2f} ms (min {r['teacher'][1]:.2f}), block {b:.2f} ms (min {r['block'][1]:.2f}), "
            f"block on CL input {bc:.2f} ms"
        )
        cl = hc[0] + bc + r["tail fast"][0]
        print(
            f"non-key path: plain {ht_p + b:.2f} ms ({t / (ht_p + b):.2f}x the teacher's speed), "
            f"fast {ht_f + b:.2f} ms ({t / (ht_f + b):.2f}x), fast, CL head {cl:.2f} ms ({t / cl:.2f}x)"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="128x256:32,256x512:64", help="HxW:ngf, comma-separated")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--blocks", type=int, default=9, help="residual blocks of the teacher")
    p.add_argument("--no-block", action="store_true", help="skip the teacher and the Shortcut block")
    p.add_argument(
        "--quick", action="store_true", help="tiny sizes (fast path forced) and few rounds: checks that it runs"
    )
    p.add_argument("--busy", type=int, default=0, help="other processes running 2-thread torch work meanwhile")
    args = p.parse_args()
    sizes = []
    for item in ("32x64:4" if args.quick else args.sizes).split(","):
        hw, ngf = item.split(":")
        sizes.append((tuple(int(v) for v in hw.lower().split("x")), int(ngf)))
    reps = 2 if args.quick else args.reps
    print(
        f"# parts_speed: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
    )
    busy = [multiprocessing.get_context("spawn").Process(target=busy_loop, daemon=True) for _ in range(args.busy)]
    for proc in busy:
        proc.start()
    if busy:
        print(f"# {len(busy)} other process(es) running 2-thread torch work meanwhile")
    try:
        for threads in (int(t) for t in args.threads.split(",")):
            for size, ngf in sizes:
                run(size, ngf, threads, reps, not args.no_block, args.blocks, 0 if args.quick else None)
    finally:
        for proc in busy:
            proc.terminate()
            proc.join()


if __name__ == "__main__":
    main()
