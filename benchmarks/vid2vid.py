"""The vid2vid row: the shipped vid2vid-architecture teacher (sequential) against its part-time
methods and its Fast-Vid2Vid student on a held-out scenes clip.

    python benchmarks/vid2vid.py              # writes results/vid2vid.md and its RESULTS.md section

Runs ``fastv2v.bench.run_bench`` (the code of ``fastv2v bench``) on held-out clip 0 of the scenes
task with ``scenes_vid2vid_student.safetensors`` (which carries ``scenes_vid2vid.safetensors`` as
its teacher): the teacher on every frame (its official sequential loop) is the reference;
``repeat``, ``interp`` and ``minterpolate`` run it as Fast-Vid2Vid's part-time teacher on the key
frames only; ``spatial`` runs the sequential student on every frame and ``fast`` on the key frames
with interpolation between. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from sections import command_line, publish

HERE = Path(__file__).resolve().parent
WEIGHTS = HERE.parent / "src" / "fastv2v" / "weights"
MODEL, STUDENT = WEIGHTS / "scenes_vid2vid.safetensors", WEIGHTS / "scenes_vid2vid_student.safetensors"
SECTION = "## vid2vid (sequential teacher): held-out scenes clip"


def main(argv: list[str] | None = None) -> int:
    from fastv2v.bench import run_bench
    from fastv2v.bench.report import markdown

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=60, help="frames of the held-out clip (default 60)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per method; the median is reported")
    p.add_argument("--out", type=Path, default=HERE / "results" / "vid2vid.md")
    p.add_argument("--results-md", type=Path, default=HERE / "RESULTS.md", help="the page to put the section in")
    args = p.parse_args(argv)
    if not MODEL.exists():
        sys.exit(f"{MODEL} is not shipped in this checkout; nothing to measure.")

    command = command_line("vid2vid.py", p, args, ("frames", "repeats"))
    student = STUDENT.exists()
    methods = "teacher,repeat,interp,minterpolate" + (",spatial,fast" if student else "")
    report = run_bench(str(STUDENT if student else MODEL), "scenes", methods=methods, intervals="2,4",
                       frames=args.frames, repeats=args.repeats, progress=True)  # fmt: skip
    body = markdown(report, title=MODEL.name, level=3).split("\n")
    text = "\n".join([SECTION, "", f"From `{command}` on {datetime.date.today()}. The model card "
                      f"(`src/fastv2v/weights/{MODEL.stem}.md`) compares it with the per-frame teacher"
                      + (f"; `{STUDENT.stem}.md` describes the student." if student else "."), ""]
                     + [ln for ln in body if not ln.startswith("- command:")]) + "\n"  # fmt: skip
    publish(text, args.out, args.results_md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
