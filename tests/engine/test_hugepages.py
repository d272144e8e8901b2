"""Huge pages for what an engine allocates at load (engine/hugepages.py), seen in the kernel's own
accounting (/proc/self/smaps), on real mappings and a real llama.cpp context."""

from __future__ import annotations

import ctypes
import mmap
import re
from pathlib import Path

import pytest

from service.engine.hugepages import HUGE_PAGE, THP_MODE, advise_new, anonymous_regions, before_load

MiB = 1 << 20


def thp_mode() -> str:
    try:
        return Path(THP_MODE).read_text()
    except OSError:
        return ""


pytestmark = pytest.mark.skipif("[never]" in thp_mode() or not thp_mode(),
                                reason="transparent huge pages are off or absent on this system")


def huge_bytes(start: int, end: int) -> int:
    """AnonHugePages of the mappings overlapping [start, end), from /proc/self/smaps."""
    total = 0
    blocks = re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", Path("/proc/self/smaps").read_text())
    for block in blocks:
        lo, hi = (int(x, 16) for x in block.split(None, 1)[0].split("-"))
        if lo < end and start < hi:
            total += int(re.search(r"AnonHugePages:\s+(\d+) kB", block).group(1)) * 1024
    return total


def touched(size: int) -> tuple[mmap.mmap, int]:
    """A private anonymous mapping with every page written, and its address."""
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for i in range(0, size, 4096):
        m[i] = 1
    return m, ctypes.addressof(ctypes.c_char.from_buffer(m))


def test_only_what_was_mapped_since_is_collapsed_into_huge_pages():
    old, old_at = touched(16 * MiB)
    before = before_load()
    new, new_at = touched(16 * MiB)
    assert huge_bytes(new_at, new_at + 16 * MiB) == 0  # madvise mode: 4 KiB pages until advised
    collapsed = advise_new(before)
    assert collapsed >= 12 * MiB and collapsed % HUGE_PAGE == 0
    assert huge_bytes(new_at, new_at + 16 * MiB) >= 12 * MiB  # all but the unaligned ends
    assert huge_bytes(old_at, old_at + 16 * MiB) == 0
    assert advise_new(anonymous_regions()) == 0  # nothing new since
    assert new[5 * MiB] == 1 and new[5 * MiB + 1] == 0  # the contents are kept
    del new, old


def test_a_ctransformers_engine_gets_its_weights_in_huge_pages(tmp_path):
    from service.engine.ctransformers_backend import Engine
    from service.formats.ggml.tiny import make_tiny_gpt2

    make_tiny_gpt2(tmp_path / "model.bin", ftype="q4_0", n_embd=256, n_head=4, n_layer=4)
    for _ in range(2):
        engine = Engine(tmp_path / "model.bin", threads=1)
        try:
            assert engine.huge_page_bytes >= 2 * MiB
        finally:
            engine.close()


def test_a_llamacpp_context_gets_its_buffers_in_huge_pages_each_time_it_loads(tmp_path):
    from tests.support.engines import require_llamacpp

    require_llamacpp()
    from service.engine.llamacpp_backend import LlamaContext
    from service.formats.ggml.tiny import make_tiny_gpt2
    from service.formats.ggml_to_gguf import ggml_to_gguf
    from service.runtime.loading import gguf_tokenizer_for

    make_tiny_gpt2(tmp_path / "model.bin", ftype="q4_0", n_embd=256, n_head=4)
    gguf = ggml_to_gguf(tmp_path / "model.bin", tmp_path / "model.gguf")
    for _ in range(2):  # loaded again after an unload: malloc must not hand back the old memory
        context = LlamaContext(gguf, parallel=1, threads=1, tokenizer=gguf_tokenizer_for(gguf, gguf))
        try:
            assert context.huge_page_bytes >= 2 * MiB
            smaps = Path("/proc/self/smaps_rollup").read_text()
            assert int(re.search(r"AnonHugePages:\s+(\d+) kB", smaps).group(1)) * 1024 >= context.huge_page_bytes
        finally:
            context.close()
