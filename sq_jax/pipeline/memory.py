"""Handing the heap memory glibc keeps from freed objects back to the OS, between the parts of a long stage."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any


@functools.cache
def _malloc_trim() -> Any:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


def release_free_heap() -> bool:
    """malloc_trim(0): return the free memory of every glibc arena to the OS; False where there is no glibc.

    Why by hand: glibc gives a freed block back only from the top of an arena, and keeps one arena per thread that
    met a locked one (XLA's and the tokenizer's thread pools), so a stage that allocates and frees ~100 MiB a part
    (tokenised text, packed rows) holds a few hundred MiB of free heap whose size depends on how the threads were
    scheduled: the peak RSS of one stage varied by 10% between runs of the same code. Trimming after each part
    keeps RSS at the live data. (MALLOC_ARENA_MAX only bounds the arena count, and must be set before start.)"""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
