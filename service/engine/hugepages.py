"""Transparent huge pages for the memory an engine allocates when it loads a model.

ctransformers reads the weights into a buffer of its own; llama.cpp copies quantised weights into
its buffers (repacked for the CPU's wide kernels) and allocates its KV cache and compute buffers
beside them; all with malloc. With Linux's transparent huge pages in `madvise` mode (a common
default) those stay in 4 KiB pages, and each pass over GPT-2 small's weights walks about 25,000 of
them. Advised and collapsed into 2 MiB pages, tokens come faster (README: "Huge pages"). What an
engine maps from the model file itself is left alone: it is the page cache's, shared.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any

MADV_HUGEPAGE = 14  # <asm-generic/mman-common.h>: back this range with huge pages from now on
MADV_COLLAPSE = 25  # Linux 6.1+: turn the pages it holds now into huge pages, at once
HUGE_PAGE = 2 << 20
M_MMAP_THRESHOLD = -3  # <malloc.h>: allocations this size or more get a mapping of their own
MAPS = "/proc/self/maps"
THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"  # "always [madvise] never"

Regions = frozenset[tuple[int, int]]


def anonymous_regions() -> Regions:
    """The process's private writable mappings without a file, as (start, end); none off Linux."""
    try:
        with open(MAPS) as f:
            lines = f.readlines()
    except OSError:
        return frozenset()
    regions = set()
    for line in lines:
        fields = line.split()
        if len(fields) == 5 and fields[1].startswith("rw") and fields[1].endswith("p"):  # no path: anonymous
            start, end = fields[0].split("-")
            regions.add((int(start, 16), int(end, 16)))
    return frozenset(regions)


def before_load() -> Regions:
    """Call before an engine allocates: the regions as they are, for advise_new. From the first call
    on, malloc gives each allocation of HUGE_PAGE or more a mapping of its own (glibc otherwise
    raises that threshold as big blocks are freed, so a model loaded after another is unloaded
    would get reused heap memory, in 4 KiB pages, and an unloaded model's memory would stay)."""
    _own_mappings()
    return anonymous_regions()


def advise_new(before: Regions) -> int:
    """Advise huge pages for the anonymous regions of 2 MiB or more made since `before` and collapse
    what they hold now; the bytes now in huge pages (0 where the system does not do it)."""
    madvise = _madvise()
    if madvise is None or _thp_off():
        return 0
    collapsed = 0
    for start, end in _new_ranges(anonymous_regions(), before):
        if end - start < HUGE_PAGE or madvise(start, end - start, MADV_HUGEPAGE) != 0:
            continue  # too small, or huge pages are off ("never") or unknown here
        # one huge page at a time: MADV_COLLAPSE fails a whole range if a part of it cannot be
        # collapsed (here, parts never touched: EINVAL); those get huge pages when first touched
        first = -(-start // HUGE_PAGE) * HUGE_PAGE
        for page in range(first, end - HUGE_PAGE + 1, HUGE_PAGE):
            if madvise(page, HUGE_PAGE, MADV_COLLAPSE) == 0:
                collapsed += HUGE_PAGE
    return collapsed


def _new_ranges(now: Regions, before: Regions) -> list[tuple[int, int]]:
    """The address ranges in `now` that no region of `before` covered: the kernel merges a new
    mapping with a neighbour of the same kind into one region, which is new only in part."""
    ranges = []
    for start, end in sorted(now - before):
        for old_start, old_end in sorted(before):
            if old_end <= start or old_start >= end:
                continue
            if old_start > start:
                ranges.append((start, old_start))
            start = max(start, old_end)
        if start < end:
            ranges.append((start, end))
    return ranges


def _thp_off() -> bool:
    """The administrator turned transparent huge pages off (collapsing would not ask them)."""
    try:
        with open(THP_MODE) as f:
            return "[never]" in f.read()
    except OSError:
        return True  # no THP on this system


@functools.cache
def _own_mappings() -> bool:
    """mallopt(M_MMAP_THRESHOLD, HUGE_PAGE), once: True where glibc took it."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return mallopt(M_MMAP_THRESHOLD, HUGE_PAGE) == 1


@functools.cache
def _madvise() -> Any:
    """libc's madvise(addr, length, advice), or None where there is none."""
    fn = getattr(_libc(), "madvise", None)
    if fn is None:
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


@functools.cache
def _libc() -> Any:
    """The C library, or None where it cannot be loaded."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    except (OSError, TypeError):
        return None
