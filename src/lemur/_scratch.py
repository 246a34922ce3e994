"""Reusable scratch memory for the kernels, one set per Python thread.

Kernels need per-call work buffers (thread-local blocks, score blocks, k-best
lists). Allocating them afresh on every call costs page faults that show in
single-query latency, so each Python thread keeps its buffers and reuses them.
Buffers larger than :data:`MAX_CACHED_BYTES` are not kept.
"""

from __future__ import annotations

import math
import threading

import numpy as np

MAX_CACHED_BYTES = 64 * 2**20

_local = threading.local()


def scratch(name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """An uninitialised C-contiguous array of `shape`, reused across calls.

    `name` identifies the buffer: two buffers needed at the same time must have
    different names. The array is only valid until the next call with the same
    name in this thread, so it must never be returned to a caller.
    """
    size = math.prod(shape)
    nbytes = size * np.dtype(dtype).itemsize
    if nbytes > MAX_CACHED_BYTES:
        return np.empty(shape, dtype=dtype)
    buffers = _local.__dict__.setdefault("buffers", {})
    key = (name, np.dtype(dtype))
    buffer = buffers.get(key)
    if buffer is None or buffer.size < size:
        buffer = np.empty(max(size, 1), dtype=dtype)
        buffers[key] = buffer
    return buffer[:size].reshape(shape)
