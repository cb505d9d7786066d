"""Cost of Fast-Vid2Vid's spatial students against their teacher: MACs (both conventions),
parameters and CPU time per frame.

    python benchmarks/student_cost.py                      # the shipped teachers at 128x256, 1 thread
    python benchmarks/student_cost.py --task edges --size 256x512 --threads 2
    python benchmarks/student_cost.py --variants 64:2:4,64:4:4,32:4:4   # width:expansion:blocks

Students are built with :func:`fastv2v.generators.student.student_from_teacher` (weights do not
change the cost): ``resnet`` keeps the teacher's body (only the input is halved and the first
downsampling conv has stride 1), ``inverted W:E:B`` the inverted-residual body. Times are the
student as the ``spatial``/``fast`` methods run it (:class:`fastv2v.methods.student.StudentRunner`,
fast CPU tail), batch 1, fp32, ``torch.inference_mode()``, every model once per round, rounds
interleaved after warm-up; median and minimum over rounds (on a shared machine the minimum
carries less of the other processes' noise). Compare ratios within one run only.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fastv2v.generators import load_generator
from fastv2v.generators.student import student_from_teacher
from fastv2v.methods.student import StudentRunner
from fastv2v.metrics.profile import profile
from fastv2v.tasks import shipped_teacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="scenes", choices=["scenes", "edges"])
    parser.add_argument("--size", default="128x256")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--variants", default="64:2:4,64:4:4", help="inverted bodies as width:expansion:blocks")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.split("x"))
    teacher = load_generator(shipped_teacher(args.task)).eval()
    x = torch.zeros(1, teacher.input_nc, h, w)
    if teacher.label_nc:  # a plausible label map: two regions
        x[:, 0] = 1
        x[:, 0, h // 4 : 3 * h // 4, w // 5 : 3 * w // 5] = 0
        x[:, 2, h // 4 : 3 * h // 4, w // 5 : 3 * w // 5] = 1
    models: dict[str, tuple[torch.nn.Module, object]] = {"teacher": (teacher, teacher)}
    s = student_from_teacher(teacher, body="resnet").eval()
    models["student, resnet body"] = (s, StudentRunner(s))
    for spec in filter(None, args.variants.split(",")):
        width, expansion, blocks = (int(v) for v in spec.split(":"))
        s = student_from_teacher(teacher, width=width, expansion=expansion, blocks=blocks).eval()
        models[f"student, inverted {width}:{expansion}:{blocks}"] = (s, StudentRunner(s))
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for _, run in models.values():
            run(x)
            run(x)
        for _ in range(args.rounds):
            for name, (_, run) in models.items():
                tick = time.perf_counter()
                run(x)
                times[name].append(time.perf_counter() - tick)
    t_macs = profile(teacher, x).macs_exact
    t_ms = statistics.median(times["teacher"])
    print(f"{args.task} teacher ({teacher.config['arch']}, ngf {teacher.config['ngf']}) at {h}x{w}, "
          f"{args.threads} thread(s), {args.rounds} rounds")  # fmt: skip
    print("| model | GMACs exact | GMACs paper | teacher/model (exact) | params (M) | ms median | ms min | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (module, _) in models.items():
        p = profile(module, x)
        ms = statistics.median(times[name])
        print(f"| {name} | {p.macs_exact / 1e9:.3f} | {p.macs_paper / 1e9:.3f} | {t_macs / p.macs_exact:.2f}x | "
              f"{p.params / 1e6:.3f} | {1e3 * ms:.1f} | {1e3 * min(times[name]):.1f} | {t_ms / ms:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
