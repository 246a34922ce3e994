"""lemur._threads: the num_threads knob and its defaults."""

from __future__ import annotations

import pytest

from lemur._threads import available_cores, default_num_threads, resolve_num_threads


@pytest.mark.parametrize(("setting", "expected"), [("3", 3), ("5,2", 5), (" 2 ", 2)])
def test_omp_num_threads_sets_the_default(monkeypatch, setting, expected):
    monkeypatch.setenv("OMP_NUM_THREADS", setting)
    assert default_num_threads() == expected
    assert resolve_num_threads(None) == expected


@pytest.mark.parametrize("setting", ["", "0", "abc", "-2"])
def test_unusable_omp_num_threads_falls_back_to_all_cores(monkeypatch, setting):
    monkeypatch.setenv("OMP_NUM_THREADS", setting)
    assert default_num_threads() == available_cores()


def test_default_is_all_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert default_num_threads() == available_cores() >= 1


def test_explicit_values():
    assert resolve_num_threads(1) == 1
    assert resolve_num_threads(64) == 64
