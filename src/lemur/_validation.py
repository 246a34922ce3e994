"""Argument checks shared by the Python layer.

Every check raises ``TypeError`` (wrong type or dtype) or ``ValueError`` (wrong
shape, range or content) with a message that names the argument and says what
was expected, before any kernel sees the data.
"""

from __future__ import annotations

import numbers

import numpy as np

from lemur._dispatch import kernels
from lemur._threads import default_num_threads


def check_vectors(
    array: object,
    *,
    name: str,
    dim: int | None = None,
    dim_name: str = "the model's input dimension",
    ndim: int = 2,
    num_threads: int | None = None,
    half: bool = False,
) -> np.ndarray:
    """Check a float32 array of vectors: ndarray, `ndim`-D, C-contiguous, finite.

    `dim`, when given, is the required length of the last axis; `half` also
    accepts float16 (a token store).
    """
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(array).__name__}")
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got an array of shape {array.shape}")
    if array.dtype != np.float32 and not (half and array.dtype == np.float16):
        allowed = "float32 or float16" if half else "float32"
        raise TypeError(
            f"{name} must have dtype {allowed}, got {array.dtype} "
            f"(convert with {name}.astype(np.float32))"
        )
    if dim is not None and array.shape[-1] != dim:
        raise ValueError(
            f"{name} holds vectors of dimension {array.shape[-1]}, but {dim_name} is {dim}"
        )
    if not array.flags.c_contiguous:
        raise ValueError(
            f"{name} must be C-contiguous (pass np.ascontiguousarray({name}))"
        )
    check_finite(array, name=name, num_threads=num_threads)
    return array


def kernel_values(values: np.ndarray) -> np.ndarray:
    """Checked float32 or float16 values as the kernels take them: float32,
    or float16 as its bits (uint16)."""
    return values.view(np.uint16) if values.dtype == np.float16 else values


#: Below this many bytes the finiteness check runs on one thread: waking the
#: others costs more than it saves (a model's weights, a batch of queries),
#: and on a shared machine a thread that is not scheduled at once can cost
#: milliseconds.
SERIAL_CHECK_BYTES = 2 * 2**20


def check_finite(array: np.ndarray, *, name: str, num_threads: int | None = None) -> None:
    """Raise ValueError naming the first row of a float32 (or float16) array
    with NaN or inf."""
    rows = array.reshape(-1, array.shape[-1]) if array.ndim != 1 else array.reshape(1, -1)
    if rows.size == 0:
        return
    if rows.dtype == np.float16:  # exponent bits all set: inf or NaN
        bad = np.flatnonzero(((rows.view(np.uint16) & 0x7C00) == 0x7C00).any(axis=1))
        row = int(bad[0]) if bad.size else -1
    else:
        threads = 1 if rows.nbytes < SERIAL_CHECK_BYTES else num_threads or default_num_threads()
        row = kernels.first_nonfinite_row(rows, threads)
    if row >= 0:
        where = np.unravel_index(row, array.shape[:-1]) if array.ndim > 1 else ()
        position = f" at index {tuple(int(i) for i in where)}" if where else ""
        raise ValueError(f"{name} contains NaN or infinite values{position}")


def check_integer_array(values: object, *, name: str, ndim: int = 1) -> np.ndarray:
    """Check an array-like of integers of the given ndim; return it as int64."""
    array = np.asarray(values)
    if array.size == 0 and not isinstance(values, np.ndarray):
        array = array.astype(np.int64)  # an empty list has no dtype of its own
    if array.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {array.dtype}")
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got an array of shape {array.shape}")
    if array.dtype.kind == "u" and array.size and array.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} holds values too large for int64")
    return array.astype(np.int64, copy=False)


def counts_to_offsets(
    counts: object, *, name: str, total: int, total_name: str, allow_empty: bool = False
) -> np.ndarray:
    """Check per-item token counts and return their offsets (length len + 1).

    The counts must be non-negative integers summing to `total` (the number of
    rows of the array called `total_name`), and at least one of them unless
    `allow_empty`.
    """
    counts = check_integer_array(counts, name=name)
    if counts.size == 0 and not allow_empty:
        raise ValueError(f"{name} is empty: the batch must hold at least one item")
    negative = np.flatnonzero(counts < 0)
    if negative.size:
        first = int(negative[0])
        raise ValueError(f"{name} must be non-negative, but {name}[{first}] = {counts[first]}")
    too_large = np.flatnonzero(counts > total)
    if too_large.size:
        first = int(too_large[0])
        raise ValueError(
            f"{name}[{first}] = {counts[first]} exceeds the {total} rows of {total_name}"
        )
    offsets = np.empty(counts.size + 1, dtype=np.int64)
    offsets[0] = 0
    np.cumsum(counts, out=offsets[1:])
    # each count is <= total, so a wrapped (overflowed) cumsum shows up as a decrease
    if offsets[-1] != total or (counts.size > 1 and np.any(offsets[1:] < offsets[:-1])):
        summed = sum(int(c) for c in counts)
        raise ValueError(f"{name} sums to {summed}, but {total_name} has {total} rows")
    return offsets


def check_positive_int(value: object, *, name: str) -> int:
    """Check a strictly positive int (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)
