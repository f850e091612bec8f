"""Pallas GPU kernels, listed in `KERNELS` for `fp8mm.dispatch`.

Each entry maps a primitive name of `fp8mm.functional` to a `Kernel`: the
wrapper (taking the reference's arguments plus `interpret`) and a predicate
that returns None when the kernel serves the arguments, else the reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class Kernel:
    fn: Callable
    unsupported: Callable[..., str | None] = lambda *args: None


# Imported after `Kernel` exists: the kernel modules build their tables with it.
from fp8mm.pallas import codebook as _codebook  # noqa: E402
from fp8mm.pallas import int8 as _int8  # noqa: E402
from fp8mm.pallas import int8_wgmma as _int8_wgmma  # noqa: E402

# The wgmma entry replaces the Triton int8 matmul + dequant (and falls back to it).
KERNELS: dict[str, Kernel] = {**_codebook.KERNELS, **_int8.KERNELS, **_int8_wgmma.KERNELS}
