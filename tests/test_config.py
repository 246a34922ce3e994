"""lemur.show_config() and the bundled OpenBLAS."""

from __future__ import annotations

import os

import pytest

import lemur
from lemur import _build_info, _dispatch


def test_show_config_prints_the_facts(capsys):
    assert lemur.show_config() is None
    printed = capsys.readouterr().out
    for fact in ("version: " + lemur.__version__, "kernel variant: " + _dispatch.variant,
                 "core type:", "OpenMP:", "default num_threads:", "OPENBLAS_CORETYPE:",
                 "scipy-openblas32 " + _build_info.OPENBLAS_VERSION):
        assert fact in printed


def test_show_config_as_dicts():
    facts = lemur.show_config(mode="dicts")
    assert facts["lemur"]["kernel variant"].split(" ")[0] == _dispatch.variant
    assert facts["blas"]["core type"]
    scans = facts["first stage"]
    assert scans["int8 scan"] in ("AMX-INT8 tiles (8 queries and more, h a multiple of 64), else AVX512-VNNI", "AVX512-VNNI",
                                  "AVX-VNNI", "AVX2 (VPMADDUBSW)", "vector code")
    assert scans["bfloat16 scan"] in ("AMX-BF16 tiles (8 queries and more, h a multiple of 32), else AVX512_BF16", "AVX512_BF16") \
        or scans["bfloat16 scan"].startswith("widened to float32")
    assert facts["platform"]["cpu"]
    screen = facts["rerank"]["screen (lemur.screening)"]
    assert screen.startswith("AMX-BF16 tiles") is _dispatch.kernels.AMX_BFLOAT16
    assert screen.startswith("none") is (not _dispatch.kernels.SCREEN_KERNEL)
    training = facts["training (lemur.train)"]["matmul_precision='bfloat16'"]
    assert (training == "AMX tiles") is _dispatch.kernels.AMX_BFLOAT16
    with pytest.raises(ValueError, match="mode must be 'stdout' or 'dicts'"):
        lemur.show_config(mode="json")


def test_openmp_is_compiled_in():
    # the package builds without OpenMP, but this build (and every wheel) has it
    assert _dispatch.kernels.openmp_info()["enabled"] is _build_info.OPENMP


def test_threadpoolctl_sees_the_bundled_openblas():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    ours = [
        info
        for info in threadpoolctl.threadpool_info()
        if info["internal_api"] == "openblas"
        and os.path.basename(info["filepath"]).startswith("libscipy_openblas")
        and "64_" not in os.path.basename(info["filepath"])  # not NumPy's own OpenBLAS
    ]
    assert len(ours) == 1, threadpoolctl.threadpool_info()
    # lemur's copy, never the one in the scipy-openblas32 package
    assert "scipy_openblas32" not in ours[0]["filepath"]
    assert ours[0]["version"] in _build_info.OPENBLAS_VERSION
