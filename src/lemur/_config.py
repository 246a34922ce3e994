"""``lemur.show_config()``: what this installation is built with and runs on."""

from __future__ import annotations

import os
import platform
import sys

import numpy as np

from lemur import _build_info, _cpu, _dispatch, screening
from lemur._threads import available_cores, default_num_threads


def config() -> dict[str, dict[str, object]]:
    """The facts :func:`show_config` prints, as nested dicts."""
    kernels = _dispatch.kernels
    blas = kernels.blas_info()
    openmp = kernels.openmp_info()
    return {
        "lemur": {
            "version": _build_info.VERSION,
            "compiler": _build_info.COMPILER,
            "kernel variant": _dispatch.variant
            + (" (forced by LEMUR_KERNELS)" if _dispatch.forced else "")
            + (" (built with -march=native: for this CPU only)" if _build_info.NATIVE else ""),
            "kernel variants built": ", ".join(_build_info.KERNEL_VARIANTS),
            "kernel variants runnable": ", ".join(_dispatch.runnable_variants()),
        },
        "platform": {
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "machine": f"{platform.system()} {platform.machine()}",
            "cpu": cpu_model(),
            "x86-64 level": _cpu.x86_64_level(),
            "cores available": available_cores(),
        },
        "threads": {
            "default num_threads": default_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset"),
            "OpenMP": "enabled" if openmp["enabled"] else "disabled (kernels run on one thread)",
            "OpenMP max threads": openmp["max_threads"],
        },
        "first stage": {
            **{f"{precision} scan": used for precision, used in kernels.compact_instructions().items()},
            "embedded ANN (lemur-retrieval[ann])": f"usearch {_version_of('usearch')}",
            "PostgreSQL (lemur-retrieval[postgres])": ", ".join(
                f"{name} {_version_of(name)}" for name in ("psycopg", "pgvector")),
        },
        "rerank": {
            "screen (lemur.screening)": (
                f"{screening.KERNEL}, batches of {screening.SCREEN_MIN_QUERIES} queries and more with "
                f"over {screening.CANDIDATES_PER_RESULT}k candidates" if screening.KERNEL else
                "none (neither AMX, AMD's AVX512_BF16 nor AVX512-VNNI in this CPU and kernel variant: every "
                "candidate scored in float32)"),
        },
        "training (lemur.train)": {
            "matmul_precision='bfloat16'": "AMX tiles" if kernels.AMX_BFLOAT16 else
            "rounded operands, float32 sgemm (this CPU, OS or kernel variant has no AMX: slower than float32)",
        },
        "blas": {
            "library": f"scipy-openblas32 {_build_info.OPENBLAS_VERSION} (bundled)",
            "core type": blas["corename"],
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "unset"),
            "threads": blas["num_threads"],
            "config": blas["config"],
        },
    }


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what Python knows."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name") or line.startswith("Model"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version_of(distribution: str) -> str:
    """An optional dependency's version, or "not installed"."""
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def show_config(mode: str = "stdout") -> dict[str, dict[str, object]] | None:
    """Print (``mode="stdout"``) or return (``mode="dicts"``) the build and run-time
    configuration: versions, kernel variant, BLAS core type, OpenMP and threads."""
    facts = config()
    if mode == "dicts":
        return facts
    if mode != "stdout":
        raise ValueError(f"mode must be 'stdout' or 'dicts', got {mode!r}")
    for section, entries in facts.items():
        print(f"{section}:")
        for key, value in entries.items():
            print(f"  {key}: {value}")
    return None
