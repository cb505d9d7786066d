"""Sections of ``RESULTS.md`` that scripts other than ``run_benchmarks.py`` measure
(``runtimes.py``, ``vid2vid.py``, ``elastic.py``): each writes ``results/<name>.md`` and puts it into the page
under its own heading; ``run_benchmarks.py`` keeps them when it regenerates the page."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
#: The extra sections, in page order: ``results/<name>.md`` files whose first line is the heading.
EXTRA = ("runtimes", "vid2vid", "elastic")


def put_section(page: Path, text: str) -> None:
    """Replace the section of ``page`` that starts with ``text``'s first line (its ``## ``
    heading), up to the next ``## `` heading, by ``text``; append it when absent."""
    heading = text.split("\n", 1)[0]
    lines = page.read_text().rstrip("\n").split("\n") if page.exists() else []
    section = text.rstrip("\n").split("\n")
    if heading in lines:
        start = lines.index(heading)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines = lines[:start] + section + ([""] if end < len(lines) else []) + lines[end:]
    else:
        lines += [""] + section
    page.write_text("\n".join(lines).rstrip("\n") + "\n")


def command_line(script: str, parser, args, names: tuple[str, ...]) -> str:
    """``python benchmarks/<script>`` with the options of ``names`` that differ from their defaults."""
    given = "".join(f" --{n} {getattr(args, n)}" for n in names if getattr(args, n) != parser.get_default(n))
    return f"python benchmarks/{script}{given}"


def publish(text: str, out: Path, page: Path) -> None:
    """Write the section ``text`` to ``out`` (``results/<name>.md``) and put it into ``page``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    put_section(page, text)
    print(f"wrote {out} and its section of {page}")


def extra_sections() -> list[str]:
    """The lines of every extra section measured so far, for the regenerated page."""
    lines: list[str] = []
    for name in EXTRA:
        path = HERE / "results" / f"{name}.md"
        if path.exists():
            lines += [""] + path.read_text().rstrip("\n").split("\n")
    return lines
