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

#: Alignment of lemur's own arrays: a cache line, so that no vector load of a
#: row crosses two (unaligned rows of W cost the first stage about 15%).
ALIGNMENT = 64

_local = threading.local()


def aligned_empty(shape: int | tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an
    :data:`ALIGNMENT`-byte boundary."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    itemsize = np.dtype(dtype).itemsize
    nbytes = math.prod(shape) * itemsize
    raw = np.empty(nbytes + ALIGNMENT, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def aligned(array: np.ndarray) -> np.ndarray:
    """`array` if its data starts on an :data:`ALIGNMENT` boundary, else an
    aligned copy (for the small operands of a kernel, such as query features)."""
    if array.ctypes.data % ALIGNMENT == 0:
        return array
    copy = aligned_empty(array.shape, array.dtype)
    copy[...] = array
    return copy


def scratch(name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """An uninitialised, aligned, C-contiguous array of `shape`, reused across calls.

    `name` identifies the buffer: two buffers needed at the same time must have
    different names. The array is only valid until the next call with the same
    name in this thread, so it must never be returned to a caller.
    """
    size = math.prod(shape)
    nbytes = size * np.dtype(dtype).itemsize
    if nbytes > MAX_CACHED_BYTES:
        return aligned_empty(shape, dtype)
    buffers = _local.__dict__.setdefault("buffers", {})
    key = (name, np.dtype(dtype))
    buffer = buffers.get(key)
    if buffer is None or buffer.size < size:
        buffer = aligned_empty(max(size, 1), dtype)
        buffers[key] = buffer
    return buffer[:size].reshape(shape)
