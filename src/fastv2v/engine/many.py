"""Translate many videos in one run: ``fastv2v translate --input-list videos.txt --out-dir DIR``.

Each input goes through :func:`fastv2v.engine.translate.translate` into ``DIR/<stem>.mp4``.
Outputs are written under a temporary name and renamed when complete; then a record of the
success (output name, frame count, the input's and the output's size and modification time) is
written to ``DIR/.fastv2v-complete/``. A run started again (after a crash, a kill, or a fix to a
bad input) skips the outputs whose record still matches both files and redoes every other one:
an output's mere existence proves nothing (it may predate the run, or have been replaced).
A truncated input fails and its partial output is not put in place. Temporary files that killed
runs left for this run's outputs are removed when their owner process is gone, never while it
runs (two runs may share DIR). A video that fails is reported with its reason and the others go on.

Launched by ``torchrun`` the list is split across processes: rank ``r`` of ``W`` takes items
``r, r + W, ...`` of the list in its order, so no two processes write the same file, each
process decodes, runs and encodes its own videos (``cuda:LOCAL_RANK`` with ``--device cuda``),
and rank 0 prints the overall summary.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fastv2v.atomic import atomic_path, check_name_length, remove_stale_temporaries, stale_temporaries
from fastv2v.data.video import natural_key
from fastv2v.errors import UserError

#: The folder of DIR holding one record per complete output (see :func:`write_record`).
RECORDS = ".fastv2v-complete"

#: Files of a folder given as the input list that are taken as videos.
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".avi", ".webm"})


@dataclass
class ItemResult:
    """What happened to one input: ``done``, ``skipped`` (its output was recorded complete) or ``failed``."""

    source: str
    output: str
    status: str
    reason: str = ""
    frames: int = 0
    seconds: float = 0.0
    rank: int = 0


@dataclass
class ManyReport:
    """Every item of the run (all processes'), in list order."""

    items: list[ItemResult] = field(default_factory=list)
    world_size: int = 1

    def count(self, status: str) -> int:
        return sum(item.status == status for item in self.items)

    @property
    def failed(self) -> list[ItemResult]:
        return [item for item in self.items if item.status == "failed"]

    def summary(self) -> str:
        head = (
            f"{len(self.items)} videos: {self.count('done')} done, {self.count('skipped')} skipped "
            f"(output already complete), {self.count('failed')} failed"
        )
        if self.world_size > 1:
            head += f" ({self.world_size} processes)"
        return "\n".join([head] + [f"  failed: {item.source}: {item.reason}" for item in self.failed])


def read_input_list(path: str | Path) -> list[Path]:
    """The inputs a ``--input-list`` names: a text file with one path per line (blank lines and
    ``#`` comments ignored; relative paths are relative to the list file's folder), or a folder,
    whose videos (.mp4 .mov .mkv .avi .webm) are taken in natural order."""
    path = Path(path)
    if path.is_dir():
        found = [p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and not p.name.startswith(".")]
        videos = sorted((p for p in found if p.is_file()), key=lambda p: natural_key(p.name))
        if not videos:
            raise UserError(
                f"{path} holds no videos ({', '.join(sorted(VIDEO_SUFFIXES))}); to translate a folder of images "
                "as one video, give it as INPUT without --input-list."
            )
        return videos
    if not path.is_file():
        raise UserError(f"{path} does not exist; give --input-list a text file of paths or a folder of videos.")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (UnicodeDecodeError, OSError) as exc:
        raise UserError(f"{path} could not be read as a text list of paths ({type(exc).__name__}).") from None
    entries = [line.strip() for line in lines]
    inputs = [Path(e) if Path(e).is_absolute() else path.parent / e for e in entries if e and not e.startswith("#")]
    if not inputs:
        raise UserError(f"{path} lists no inputs; write one video path per line.")
    return inputs


def plan_outputs(inputs: list[Path], out_dir: str | Path, suffix: str = ".mp4") -> list[tuple[Path, Path]]:
    """``(input, out_dir / (input stem + suffix))`` per input; two inputs with one output name
    (the same stem, or the same file listed twice) are an error, not a silent overwrite."""
    out_dir = Path(out_dir)
    seen: dict[str, Path] = {}
    plan = []
    for src in inputs:
        name = (src.stem if src.suffix else src.name) + suffix
        check_name_length(out_dir / name)
        key = name.lower()  # case-insensitive file systems would collide too
        if key in seen:
            other = seen[key]
            if other.resolve() == src.resolve():
                raise UserError(f"{src} is listed twice; list each input once.")
            raise UserError(
                f"{other} and {src} would both be written to {out_dir / name}; rename one of them "
                "or translate them in separate runs."
            )
        seen[key] = src
        plan.append((src, out_dir / name))
    # An output that is one of the inputs (the same path, or a link to it) would replace it.
    files = {key: src for src in inputs if (key := _file_id(src)) is not None}
    for _, out in plan:
        src = files.get(_file_id(out))
        if src is not None:
            raise UserError(
                f"{src} would be replaced by the output {out}; choose an --out-dir that holds none of the inputs."
            )
    return plan


def _file_id(path: Path) -> tuple[int, int] | None:
    """(device, inode): equal for two names of one file, symbolic and hard links included."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def stale_partials(output: Path) -> list[Path]:
    """Temporary files an interrupted write of ``output`` left beside it whose owner process is gone
    (see :func:`fastv2v.atomic.stale_temporaries`); a live run's are not among them."""
    return stale_temporaries(output)


def record_path(output: Path) -> Path:
    """Where the record of ``output``'s success lives (named by a hash: any output name fits)."""
    digest = hashlib.sha1(output.name.encode()).hexdigest()[:16]
    return output.parent / RECORDS / f"{digest}.json"


def _fingerprint(path: Path) -> dict[str, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def write_record(source: Path, output: Path, frames: int) -> None:
    """Record that ``output`` was completed from ``source`` as they are now; written atomically,
    and only after the output is in place, so a kill in between means "redo", never "complete"."""
    record = {"output": output.name, "source": str(source), "frames": frames,
              "input": _fingerprint(source), "written": _fingerprint(output)}  # fmt: skip
    path = record_path(output)
    path.parent.mkdir(exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record) + "\n")


def is_complete(source: Path, output: Path) -> bool:
    """Whether ``output`` is the complete result a record says it is: the record names it, the
    output's size and time are the recorded ones, and the input (when still there) is unchanged."""
    try:
        record = json.loads(record_path(output).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict) or record.get("output") != output.name:
        return False
    if record.get("written") is None or _fingerprint(output) != record["written"]:
        return False
    now = _fingerprint(source)
    return now is None or now == record.get("input")


def translate_many(
    pipeline: Any,
    input_list: str | Path | list[str | Path],
    out_dir: str | Path,
    *,
    ctx: Any = None,
    device: str = "cpu",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    **translate_kwargs: Any,
) -> ManyReport:
    """Translate every input of ``input_list`` (a list file, a folder of videos, or a list of
    paths) into ``out_dir/<stem>.mp4``; returns every process's results.

    ``pipeline`` (:class:`fastv2v.pipeline.Pipeline`) serves every video: its method's per-video
    state is created per video; ``translate_kwargs`` go to :func:`~fastv2v.engine.translate.translate` (dtype,
    batch, size, resize_mode). ``ctx`` is a :class:`~fastv2v.distributed.DistributedContext`
    (default: joins the job torchrun started, else one process). ``log`` gets one line per item.
    """
    from fastv2v.engine.translate import translate
    from fastv2v.distributed import init_distributed

    if isinstance(input_list, (list, tuple)):
        inputs = [Path(p) for p in input_list]
        if not inputs:
            raise UserError("the input list is empty; give at least one video.")
    else:
        inputs = read_input_list(input_list)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out-dir {out_dir} is a file; give a folder (it is created if missing).")
    plan = plan_outputs(inputs, out_dir)
    owns_ctx = ctx is None
    if ctx is None:
        ctx = init_distributed(device)
    log = log or (lambda line: print(line, flush=True))
    try:
        if ctx.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
        ctx.barrier()
        out_dir.mkdir(parents=True, exist_ok=True)  # every node (no shared storage needed)
        indexed = list(enumerate(plan))
        mine = ctx.shard_items(indexed)
        prefix = f"[{ctx.rank}/{ctx.world_size}] " if ctx.world_size > 1 else ""
        results: list[tuple[int, ItemResult]] = []
        for index, (src, out) in mine:
            remove_stale_temporaries(out)  # left by killed runs (never a live run's)
            item = ItemResult(str(src), str(out), "skipped", rank=ctx.rank)
            if is_complete(src, out):
                log(f"{prefix}skip {src}: {out} is already complete")
            else:
                if out.exists():
                    log(f"{prefix}redo {src}: {out} has no record of a complete run for this input")
                tick = time.perf_counter()
                try:
                    report = translate(
                        pipeline, src, out, device=str(ctx.device), progress=progress and
                        ctx.world_size == 1, complete_only=True, **translate_kwargs,
                    )  # fmt: skip
                except Exception as exc:  # noqa: BLE001 (report it, go on with the others)
                    item.status, item.reason = "failed", _reason(exc)
                    log(f"{prefix}FAILED {src}: {item.reason}")
                else:
                    item.status, item.frames = "done", report.frames
                    item.seconds = time.perf_counter() - tick
                    write_record(src, out, report.frames)
                    log(f"{prefix}done {src} -> {out}: {report.frames} frames, {report.e2e_fps:.2f} frames/s "
                        "end to end")
            results.append((index, item))
        gathered = ctx.all_gather_object(results)
    finally:
        if owns_ctx:
            ctx.shutdown()
    items = [item for _, item in sorted((pair for part in gathered for pair in part), key=lambda p: p[0])]
    return ManyReport(items=items, world_size=ctx.world_size)


def _reason(exc: Exception) -> str:
    if isinstance(exc, UserError):
        return str(exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


