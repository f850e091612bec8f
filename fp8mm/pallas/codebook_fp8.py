"""Pallas kernel for `quantize_fp8`: the codebook kernels writing float8 bits.

`quantize_fp8` runs the blockwise / global kernels of `fp8mm.pallas.codebook`
(the same codes, bit for bit) with their `to_bytes` output: each code's float8
bits, `table[q]`, are stored in the same pass, so the uint8 index array never
reaches memory. Arguments are validated by `fp8mm.quantize_fp8`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from fp8mm.pallas import _backend
from fp8mm.pallas import _codebook_table as _table
from fp8mm.pallas.codebook import (
    TileConfig,
    _blockwise_call,
    _blockwise_tiles,
    _global_call,
    choose_tiles,
)

__all__ = ["quantize_fp8", "supported_quantize_fp8"]


def quantize_fp8(
    A: jax.Array,
    code: jax.Array,
    table: jax.Array,
    blocksize: int | None,
    dtype,
    absmax: jax.Array | None = None,
    *,
    config: TileConfig | None = None,
    interpret: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """`quantize_blockwise` / `quantize` writing each code's float8 bits instead of its index.

    Bit-exact with `fp8mm.reference_fp8.quantize_fp8`: the same codes (the same
    kernels), `table[q]` stored in the same pass, so the index array never
    reaches memory.

    Args:
      A: float32/float16/bfloat16 array of any shape.
      code: float32 [256] e4m3 or e5m2 code, concrete (its bucket table is built on the host).
      table: uint8 [256], index -> float8 bits (`Fp8Format.table`).
      blocksize: power of two in [32, 4096], or None for global quantization.
      dtype: the float8 dtype the bits are read as.
      absmax: global quantization only: float32 [] to divide by instead of A's own.
      config: the tiling; None for the heuristic.
      interpret: run the kernel in Pallas interpret mode.

    Returns:
      (data, absmax): dtype [A.shape] and float32 [num_blocks] (or []).
    """
    nblocks = () if blocksize is None else (-(-A.size // blocksize),)
    if A.size == 0:
        empty = jnp.zeros(nblocks, jnp.float32) if absmax is None else absmax
        return jnp.zeros(A.shape, dtype), empty
    bucket, lookup = _table.table_for(code)
    if lookup.search:  # the byte table takes the code's place, which the search reads
        raise ValueError("quantize_fp8 needs a code without crowded buckets (a float8 grid)")
    bits = jnp.asarray(table).astype(jnp.float32)
    if blocksize is None:
        cfg = config or choose_tiles(None)
        args = (A, bits, bucket, False, lookup, bool(interpret), cfg, True, absmax)
        q, absmax = _global_call(*args)
    else:
        cfg = _blockwise_tiles(config, blocksize, fake=False)
        args = (A, bits, bucket, blocksize, False, lookup, bool(interpret), cfg, True)
        q, absmax = _blockwise_call(*args)
    return lax.bitcast_convert_type(q, dtype), absmax


def supported_quantize_fp8(A, code, table, blocksize, dtype, absmax=None) -> str | None:
    return _backend.too_large(A)
