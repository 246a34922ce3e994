"""The one `num_threads` knob shared by every compute call."""

from __future__ import annotations

import numbers
import os


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_num_threads() -> int:
    """``OMP_NUM_THREADS`` if it is set to a positive integer, else all cores.

    OpenMP allows a comma-separated list (one entry per nesting level); its
    first entry counts here.
    """
    setting = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if setting.isdigit() and int(setting) > 0:
        return int(setting)
    return available_cores()


def resolve_num_threads(num_threads: int | None) -> int:
    """Validate a `num_threads` argument; ``None`` means :func:`default_num_threads`."""
    if num_threads is None:
        return default_num_threads()
    if isinstance(num_threads, bool) or not isinstance(num_threads, numbers.Integral):
        raise TypeError(
            f"num_threads must be a positive int or None, got {type(num_threads).__name__}"
        )
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1 (or None for the default), got {num_threads}")
    return int(num_threads)
