"""glibc's allocator in the long-lived operator process. Each thread that allocates gets its own
malloc arena by default (up to 8 per core), and freed memory inside an arena is not given back to the
system, so bursts on many threads (a thousand TrainingRuns applied at once) stay in the RSS for good.
Large blocks (TLS read buffers of 256 KiB) are also taken from the heap once glibc has raised its
mmap threshold, where their holes stay after they are freed. Elsewhere than glibc (musl, macOS) these
do nothing."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

# mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 128 * 1024  # glibc's initial value, kept: blocks this large are mapped and unmapped on their own


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name)
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def limit_heap_growth(arenas: int) -> bool:
    """At most ``arenas`` malloc arenas (what ``MALLOC_ARENA_MAX`` sets; call it before threads start), and
    large blocks always mapped on their own (a fixed mmap threshold); False where that is not glibc."""
    libc = _libc()
    return bool(libc and libc.mallopt(M_ARENA_MAX, arenas) and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def release_free_memory() -> bool:
    """Give the free pages of every arena back to the system; True if any were."""
    libc = _libc()
    return bool(libc and libc.malloc_trim(0))
