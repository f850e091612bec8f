"""Pure-jnp reference of the native-FP8 primitives: the test oracle and the XLA path.

bitsandbytes' e4m3 and e5m2 codes are float8 grids scaled by 1/240 and
1/57344 (`fp8mm.codebooks.native_format`), so its codes can be held as float8
bytes and multiplied on FP8 tensor cores. The product here is XLA's
`dot_general` on float8 operands with a float32 result (a cuBLASLt FP8 GEMM on
Hopper GPUs; float32 arithmetic on a CPU, where every product of two float8
values is exact), the scales applied after the accumulation.

Arguments are validated by the public wrappers in `fp8mm.functional_fp8`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from fp8mm import reference

__all__ = ["fp8_scaled_matmul", "quantize_fp8", "to_fp8"]


@functools.partial(jax.jit, static_argnames=("dtype",))
def to_fp8(q: jax.Array, table: jax.Array, dtype) -> jax.Array:
    """uint8 codes -> their float8 values: `table[q]` (bits) reinterpreted as `dtype`."""
    return lax.bitcast_convert_type(table[q.astype(jnp.int32)], dtype)


@functools.partial(jax.jit, static_argnames=("blocksize", "dtype"))
def quantize_fp8(A, code, table, blocksize, dtype, absmax=None) -> tuple[jax.Array, jax.Array]:
    """bitsandbytes' codes of A (`reference.quantize_blockwise`, or `quantize` for
    blocksize None, dividing by `absmax` when given) as float8 values `table[q]`, with
    the absmax: (dtype [A.shape], float32 [num_blocks] or [])."""
    if blocksize is None:
        q, state = reference.quantize(A, code, absmax)
    else:
        q, state = reference.quantize_blockwise(A, code, blocksize)
    return to_fp8(q, jnp.asarray(table), dtype), state.absmax


@functools.partial(jax.jit, static_argnames=("out_dtype",))
def fp8_scaled_matmul(
    A: jax.Array, B: jax.Array, a_scale: jax.Array, b_scale: jax.Array, out_dtype
) -> jax.Array:
    """Σ_c (A[:, chunk c] · B[:, chunk c]ᵀ) * a_scale[:, c], times b_scale, rounded once.

    Args:
      A: float8 [m, k]; B: float8 [n, k] (both K-major).
      a_scale: float32 [m, C], one scale per row and K chunk of k / C columns.
      b_scale: float32 [] or [n].
      out_dtype: the result's float dtype.

    Returns:
      out_dtype [m, n].
    """
    k = A.shape[1]
    # Validated: C >= 1 chunks of equal width. One chunk is (acc * a_scale) * b_scale.
    chunks = a_scale.shape[1]
    width = k // chunks
    dn = (((1,), (1,)), ((), ()))
    acc = None
    for c in range(chunks):
        part = lax.dot_general(
            A[:, c * width : (c + 1) * width],
            B[:, c * width : (c + 1) * width],
            dn,
            preferred_element_type=jnp.float32,
        )
        part = part * a_scale[:, c : c + 1]
        acc = part if acc is None else acc + part
    return (acc * b_scale).astype(out_dtype)
