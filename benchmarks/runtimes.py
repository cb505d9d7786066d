"""How much faster are ONNX Runtime and OpenVINO than PyTorch for the shipped models on this CPU?

    python benchmarks/runtimes.py              # writes results/runtimes.md and its RESULTS.md section
    python benchmarks/runtimes.py --frames 12  # shorter

Runs ``fastv2v.bench.run_bench`` (the code of ``fastv2v bench --backends``) on the held-out
edges clip (real footage) with the shipped edges Shortcut-V2V and student files: each method on
PyTorch, ONNX Runtime and OpenVINO (and OpenVINO's bf16 hint where the CPU computes bf16
natively) in one process, the same threads, every speed-up and PSNR against the PyTorch teacher
of the same run. Writes ``results/runtimes.md`` (the tables, the machine, the command) and puts
it into ``RESULTS.md`` as the section "Runtimes" (``run_benchmarks.py`` keeps it when it
regenerates the page). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from sections import command_line, publish

HERE = Path(__file__).resolve().parent
WEIGHTS = HERE.parent / "src" / "fastv2v" / "weights"
#: (model file, methods, intervals): the teacher and the headline pipelines of each kind of file.
SUITES = (
    ("edges_shortcut.safetensors", "teacher,repeat,shortcut", "3"),
    ("edges_student.safetensors", "teacher,interp,spatial,fast", "4"),
)
SECTION = "## Runtimes: PyTorch, ONNX Runtime and OpenVINO"


def main(argv: list[str] | None = None) -> int:
    import torch

    from fastv2v.bench import run_bench
    from fastv2v.bench.report import markdown
    from fastv2v.precision import native

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=30, help="frames of the held-out clip (default 30)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per method; the median is reported")
    p.add_argument("--out", type=Path, default=HERE / "results" / "runtimes.md")
    p.add_argument("--results-md", type=Path, default=HERE / "RESULTS.md", help="the page to put the section in")
    args = p.parse_args(argv)

    backends = ["torch", "onnxruntime", "openvino"]
    if native("bf16", torch.device("cpu")):
        backends.append("openvino:bf16")
    command = command_line("runtimes.py", p, args, ("frames", "repeats"))
    lines = [SECTION, "", f"From `{command}` on {datetime.date.today()}, backends {', '.join(backends)}; "
             "speed-ups and PSNR are against the PyTorch teacher of the same run.", ""]  # fmt: skip
    for model, methods, intervals in SUITES:
        report = run_bench(str(WEIGHTS / model), "edges", methods=methods, intervals=intervals, frames=args.frames,
                           repeats=args.repeats, backends=",".join(backends), progress=True)  # fmt: skip
        body = markdown(report, title=model, level=3).split("\n")
        lines += [""] + [ln for ln in body if not ln.startswith("- command:")]
    publish("\n".join(lines) + "\n", args.out, args.results_md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
