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


KERNELS: dict[str, Kernel] = {}
