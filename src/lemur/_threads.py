"""The one `num_threads` knob shared by every compute call, and the lock of
structures that searches share and changes replace."""

from __future__ import annotations

import contextlib
import numbers
import os
import threading


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


class ReadWriteLock:
    """Many readers at once, or one writer: what a structure that searches
    share and changes take in turn needs (a writer waits for the readers
    inside to leave; readers arriving while a writer waits queue behind it,
    so a writer is never starved)."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def reading(self):
        with self._condition:
            while self._writing or self._writers_waiting:
                self._condition.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._condition:
                self._readers -= 1
                if not self._readers:
                    self._condition.notify_all()

    @contextlib.contextmanager
    def writing(self):
        with self._condition:
            self._writers_waiting += 1
            while self._writing or self._readers:
                self._condition.wait()
            self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._condition:
                self._writing = False
                self._condition.notify_all()
