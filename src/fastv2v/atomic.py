"""Write outputs under a temporary name and rename them into place when complete.

An interrupted run must never leave a truncated file at the path the user asked for.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator


def temporary_sibling(path: str | os.PathLike, suffix_keep: bool = True) -> Path:
    """A unique path next to ``path`` (same folder, so the final rename is atomic).

    The file extension is kept so that writers that infer a format from it still work.
    """
    path = Path(path)
    tag = f".{path.stem}.{uuid.uuid4().hex[:8]}.partial"
    return path.with_name(tag + (path.suffix if suffix_keep else ""))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success rename it to ``path``, on failure delete it.

    Works for files and for folders (a folder output is written whole, then renamed).
    """
    final = Path(path)
    tmp = temporary_sibling(final)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if final.is_dir() and tmp.is_dir():
        # Replacing an existing output folder: move the old one aside first.
        old = temporary_sibling(final, suffix_keep=False)
        os.replace(final, old)
        os.replace(tmp, final)
        _remove(old)
    else:
        os.replace(tmp, final)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
