"""Peak memory of one stretch of work: what a method adds on top of what was already there.

On a GPU this is exact: ``torch.cuda.max_memory_allocated`` above the level before. On a CPU
there is no allocator counter, so a small thread samples the resident set size
(``/proc/self/statm``) every couple of milliseconds and keeps the maximum. Before the baseline
is read, freed heap memory is handed back to the OS (``malloc_trim``), so memory that an
earlier method freed but the C allocator kept does not hide this method's own working set.
Where neither is available (no ``/proc``: macOS, Windows) the result is None with a reason,
never a guess.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import threading

import torch

_STATM = "/proc/self/statm"
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int | None:
    """Resident set size of this process in bytes, or None where /proc is not available."""
    try:
        with open(_STATM, "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


def _trim_heap() -> None:
    """Return freed heap pages to the OS (glibc only; a no-op elsewhere)."""
    gc.collect()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """``with PeakMemory(device) as m: ...`` then ``m.peak_mb`` (MiB added at the peak) or ``m.reason``.

    ``interval`` is the CPU sampling period in seconds: a peak shorter than it can be missed,
    which is why the method's run (many frames, each allocating the same buffers) rather than
    one op is what gets measured.
    """

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.002):
        self.device = torch.device(device)
        self.interval = interval
        self.peak_mb: float | None = None
        self.source: str | None = None
        self.reason: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._base = 0
        self._peak = 0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.source = "torch.cuda.max_memory_allocated"
            return self
        _trim_heap()
        base = rss_bytes()
        if base is None:
            self.reason = "peak memory needs /proc/self/statm (Linux); not available on this system"
            return self
        self._base = self._peak = base
        self.source = "resident set size sampled from /proc/self/statm"
        self._thread = threading.Thread(target=self._sample, name="fastv2v-memory", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            value = rss_bytes()
            if value is not None and value > self._peak:
                self._peak = value

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self._peak = torch.cuda.max_memory_allocated(self.device)
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            last = rss_bytes()
            self._peak = max(self._peak, last or 0)
        else:
            return
        self.peak_mb = max(0, self._peak - self._base) / 2**20
