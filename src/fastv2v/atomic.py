"""Write outputs under a temporary name and rename them into place when complete.

An interrupted run must never leave a truncated file at the path the user asked for, and a
killed run (SIGKILL, power loss) must not leave temporary files that pile up. A temporary name
carries its owner, ``.<stem>.<pid>@<host>.<random>.partial<suffix>``, so the next write of the
same output removes the ones whose owner process is gone (:func:`remove_stale_temporaries`) and
never those of a process still running, such as a second run writing into the same folder.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import socket
import uuid
from pathlib import Path
from typing import Iterator

from fastv2v.errors import UserError

#: The longest file name most file systems take (ext4, APFS, NTFS: 255 bytes or characters).
NAME_MAX = 255
#: Bytes of a temporary name besides the stem and the suffix: "." + "." + pid@host + "." + 8 hex + ".partial".
_OVERHEAD = 1 + 1 + (10 + 1 + 6) + 1 + 8 + len(".partial")
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]
#: Temporary paths this process is writing now: a name with our own pid that is not here is stale
#: (a killed process whose pid we reuse, as PID 1 in a container is).
_ACTIVE: set[str] = set()


def _stem_tag(path: Path) -> str:
    """The output's stem as it appears in its temporary names: shortened, with a hash of the whole
    name to keep it distinct, when the temporary name would pass :data:`NAME_MAX`."""
    stem = path.stem if path.suffix else path.name
    budget = NAME_MAX - _OVERHEAD - len(path.suffix.encode())
    if len(stem.encode()) <= budget:
        return stem
    digest = hashlib.sha1(path.name.encode()).hexdigest()[:8]
    short = stem.encode()[: max(budget - 9, 1)].decode("utf-8", "ignore")
    return f"{short}~{digest}"


def temporary_sibling(path: str | os.PathLike, suffix_keep: bool = True, *, pid: int | None = None) -> Path:
    """A unique path next to ``path`` (same folder, so the final rename is atomic), named after
    its owner process (``pid``, default this one) and within :data:`NAME_MAX` bytes.

    The file extension is kept so that writers that infer a format from it still work.
    """
    path = Path(path)
    owner = f"{os.getpid() if pid is None else pid}@{_HOST}"
    tag = f".{_stem_tag(path)}.{owner}.{uuid.uuid4().hex[:8]}.partial"
    return path.with_name(tag + (path.suffix if suffix_keep else ""))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0  # another user's process (PermissionError) is alive
    return True


def stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Temporary files beside ``path`` that a write of it left and whose owner is gone: a dead
    process of this host, or this process when it is not writing them now. Names written by
    another host are kept (its processes cannot be checked from here); names of older versions,
    which carry no owner, count as stale."""
    path = Path(path)
    tag = re.escape(_stem_tag(path))
    suffix = re.escape(path.suffix)
    owned = re.compile(rf"\.{tag}\.(\d+)@([0-9a-f]{{6}})\.[0-9a-f]{{8}}\.partial(?:{suffix})?")
    legacy = re.compile(rf"\.{re.escape(path.stem)}\.[0-9a-f]{{8}}\.partial(?:{suffix})?")
    try:
        names = os.listdir(path.parent if str(path.parent) else ".")
    except OSError:
        return []
    stale = []
    for name in names:
        match = owned.fullmatch(name)
        candidate = path.with_name(name)
        if match:
            pid, host = int(match.group(1)), match.group(2)
            if host != _HOST:
                continue
            if pid == os.getpid() and str(candidate) not in _ACTIVE:
                stale.append(candidate)
            elif pid != os.getpid() and not _alive(pid):
                stale.append(candidate)
        elif legacy.fullmatch(name):
            stale.append(candidate)
    return sorted(stale)


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete :func:`stale_temporaries` of ``path``; returns what was removed. Never raises."""
    removed = []
    for tmp in stale_temporaries(path):
        try:
            _remove(tmp)
        except OSError:
            continue
        removed.append(tmp)
    return removed


def check_name_length(path: str | os.PathLike) -> None:
    """Refuse, in one sentence, an output whose file name the file system cannot hold."""
    path = Path(path)
    limit = NAME_MAX
    with contextlib.suppress(OSError, ValueError, AttributeError):
        limit = os.pathconf(path.absolute().parent if path.absolute().parent.is_dir() else ".", "PC_NAME_MAX")
    size = len(path.name.encode())
    if size > limit:
        raise UserError(
            f"the output name {path.name[:40]}... (in {path.parent}) is {size} bytes long, more than the {limit} "
            "a file name may have here; choose a shorter output name."
        )


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file: the same path, a symbolic link to it, or a hard link."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return Path(a).resolve() == Path(b).resolve()


def check_output_folder(folder: str | os.PathLike, what: str) -> None:
    """Refuse, before any work, a folder that cannot be created or written: ``what`` names the
    option (e.g. ``--out``) in the one-sentence error."""
    folder = Path(folder).absolute()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{what} {folder} cannot be created because {existing} is a file; choose another folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(
            f"{what} {folder} cannot be written (no write permission in {existing}); choose another folder."
        )


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success rename it to ``path``, on failure delete it.

    Works for files and for folders (a folder output is written whole, then renamed). Stale
    temporaries of ``path`` left by killed processes are removed first.
    """
    final = Path(path)
    remove_stale_temporaries(final)
    tmp = temporary_sibling(final)
    _ACTIVE.add(str(tmp))
    try:
        try:
            yield tmp
        except BaseException:
            with contextlib.suppress(OSError):
                _remove(tmp)
            raise
        if final.is_dir() and tmp.is_dir():
            # Replacing an existing output folder: move the old one aside first.
            old = temporary_sibling(final, suffix_keep=False)
            _ACTIVE.add(str(old))
            try:
                os.replace(final, old)
                os.replace(tmp, final)
                _remove(old)
            finally:
                _ACTIVE.discard(str(old))
        else:
            os.replace(tmp, final)
    finally:
        _ACTIVE.discard(str(tmp))


def _remove(path: Path) -> None:
    try:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:  # a name that cannot exist was never created
            raise
