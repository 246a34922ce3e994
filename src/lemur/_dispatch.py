"""Chooses, once at import, the compiled kernel module for this CPU.

meson.build compiles ``_kernels.pyx`` once per instruction-set level
(``_kernels`` is the baseline; on x86-64 also ``_kernels_x86_64_v2``, ``_v3``
with AVX2/FMA and ``_v4`` with AVX-512). A module built for a level the CPU
lacks would die with an illegal instruction, so the level is checked with
``lemur._cpu`` (itself baseline code) before anything is imported.

Set ``LEMUR_KERNELS`` to one of :data:`VARIANTS` to force a variant (for
benchmarks and tests); it must be built here and supported by the CPU.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType

from lemur import _build_info, _cpu

#: Variant name -> (module name, x86-64 level it needs; 0: any CPU).
VARIANTS: dict[str, tuple[str, int]] = {
    "baseline": ("_kernels", 0),
    "x86_64_v2": ("_kernels_x86_64_v2", 2),
    "x86_64_v3": ("_kernels_x86_64_v3", 3),
    "x86_64_v4": ("_kernels_x86_64_v4", 4),
}


def runnable_variants() -> list[str]:
    """Variants built into this installation that this CPU can run, best first."""
    cpu_level = _cpu.x86_64_level()
    built = set(_build_info.KERNEL_VARIANTS)
    names = [
        name
        for name, (module, level) in VARIANTS.items()
        if module in built and level <= cpu_level
    ]
    return sorted(names, key=lambda name: VARIANTS[name][1], reverse=True)


def load_variant(name: str) -> ModuleType:
    """Import the kernel module of variant `name` (checked against the CPU)."""
    if name not in VARIANTS:
        raise ImportError(
            f"unknown kernel variant {name!r}; expected one of {', '.join(VARIANTS)}"
        )
    if name not in runnable_variants():
        raise ImportError(
            f"kernel variant {name!r} is not built here or not supported by this CPU; "
            f"runnable variants: {', '.join(runnable_variants())}"
        )
    return importlib.import_module(f"lemur.{VARIANTS[name][0]}")


#: Whether LEMUR_KERNELS chose the variant.
forced: bool = bool(os.environ.get("LEMUR_KERNELS"))
#: Name of the variant in use.
variant: str = os.environ.get("LEMUR_KERNELS") or runnable_variants()[0]
try:
    #: The kernel module in use.
    kernels: ModuleType = load_variant(variant)
except ImportError as error:
    if not forced:
        raise
    raise ImportError(f"LEMUR_KERNELS={variant!r}: {error}") from None
