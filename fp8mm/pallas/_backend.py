"""The one place that knows which Pallas GPU backend the kernels compile for.

Kernels call `pallas_call` from here instead of `pl.pallas_call`, so moving
them from Triton to Mosaic GPU (the Triton backend is deprecated from JAX 0.11
but still works) changes this file, not the kernels' callers. In interpret mode
(CPU, CI) no compiler parameters are passed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

BACKEND = "triton"

# Triton indexes with int32 offsets and a program's offsets can run up to one tile past
# the array's end, so operands stay 2**24 elements (more than any tile) below 2**31.
MAX_ELEMENTS = 2**31 - 2**24


def too_large(*sizes) -> str | None:
    """The reason an array (or an element count) is beyond the kernels' int32 indexing, or None."""
    for x in sizes:
        size = int(x) if isinstance(x, (int, np.integer)) else math.prod(getattr(x, "shape", ()))
        if size > MAX_ELEMENTS:
            return f"{size} elements exceed the kernels' int32 indexing ({MAX_ELEMENTS})"
    return None


# Masked loads/stores and inline PTX are the backend-specific primitives the
# kernels use; they are re-exported here so no kernel imports a backend module.
load = pl_triton.load
store = pl_triton.store
elementwise_inline_asm = pl_triton.elementwise_inline_asm


def recip_rn(x: jax.Array, interpret: bool) -> jax.Array:
    """Correctly rounded float32 1/x (inf for 0); Triton's own `1/x` is approximate."""
    if interpret:
        return np.float32(1.0) / x
    [r] = elementwise_inline_asm(
        "rcp.rn.f32 $0, $1;",
        args=[x],
        constraints="=f,f",
        pack=1,
        result_shape_dtypes=[jax.ShapeDtypeStruct(x.shape, jnp.float32)],
    )
    return r


def div_rn(x: jax.Array, y: jax.Array, interpret: bool) -> jax.Array:
    """Correctly rounded float32 x / y (x and y of one shape)."""
    if interpret:
        return x / y
    [r] = elementwise_inline_asm(
        "div.rn.f32 $0, $1, $2;",
        args=[x, y],
        constraints="=f,f,f",
        pack=1,
        result_shape_dtypes=[jax.ShapeDtypeStruct(x.shape, jnp.float32)],
    )
    return r


def compiler_params(*, num_warps: int, num_stages: int) -> Any:
    return pl_triton.CompilerParams(num_warps=num_warps, num_stages=num_stages)


def pallas_call(
    kernel: Callable,
    *,
    name: str,
    interpret: bool,
    num_warps: int = 4,
    num_stages: int = 1,
    **kwargs,
) -> Callable:
    """`pl.pallas_call` with the backend's compiler parameters (none when interpreting)."""
    params = None if interpret else compiler_params(num_warps=num_warps, num_stages=num_stages)
    call = pl.pallas_call(kernel, name=name, interpret=interpret, compiler_params=params, **kwargs)

    def run(*args):
        with warnings.catch_warnings():
            # JAX >= 0.11 warns that the Triton backend is deprecated on every lowering.
            warnings.filterwarnings("ignore", message=".*[Tt]riton.*deprecat.*")
            return call(*args)

    return run
