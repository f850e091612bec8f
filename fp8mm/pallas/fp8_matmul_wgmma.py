"""FP8 GEMM with a fused scale epilogue as a Pallas Mosaic GPU kernel: f8 wgmma.

`fp8_scaled_matmul` here has the signature and result of
`fp8mm.reference_fp8.fp8_scaled_matmul` for the calls it serves: float8
operands of one format (e4m3 x e4m3, or e5m2 x e5m2: Mosaic GPU's wgmma takes no
mixed float8 types), scales per row of A (and per K chunk of a multiple of 128
columns) and a scalar or per-column scale of B, on a Hopper GPU, compiled, with
the tile multiples of the int8 kernel (rows of 128, output columns of 256, k of
128).
`supported_fp8_scaled_matmul` names the reason otherwise, and the registry
(`fp8mm.dispatch`) then multiplies with XLA (cuBLASLt's FP8 GEMM).

The kernel is the int8 wgmma kernel of `fp8mm.pallas.int8_matmul_wgmma` (its
persistent grid, TMA pipeline and two consumer warpgroups) with float8 operands,
a float32 accumulator in registers and the epilogue (acc * row) * col in
float32, rounded once to the output dtype, so the float32 product never reaches
memory. With C > 1 chunks the accumulator is promoted into a second float32
register sum at the end of each chunk (times the chunk's row scales); the two
accumulators take twice the registers, so those calls run 64-row warpgroup
tiles (`choose_fp8_config`). Its config is that kernel's `WgmmaConfig`: a
128-wide k-slice is 128 bytes of float8 as of int8.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from fp8mm.pallas.int8_matmul_wgmma import (
    WgmmaConfig,
    _matmul_2d,
    _plan,
    _target_device,
    choose_wgmma_config,
    wgmma_reason,
    wgmma_search_space,
)

__all__ = [
    "WgmmaConfig",
    "choose_fp8_config",
    "choose_wgmma_config",
    "fp8_scaled_matmul",
    "supported_fp8_scaled_matmul",
    "wgmma_search_space",
]


def choose_fp8_config(m: int, n: int, k: int, chunks: int = 1) -> WgmmaConfig:
    """`choose_wgmma_config`; with chunks > 1, 64-row warpgroup tiles (two accumulators)."""
    cfg = choose_wgmma_config(m, n, k)
    return cfg if chunks == 1 else dataclasses.replace(cfg, tile_m=64)


def supported_fp8_scaled_matmul(A, B, a_scale, b_scale, out_dtype) -> str | None:
    """None when the kernel serves this (validated) call here, else why not."""
    del b_scale, out_dtype
    if A.dtype != B.dtype:
        return f"wgmma multiplies one float8 format, not {A.dtype} x {B.dtype}"
    m, k = A.shape
    chunks = a_scale.shape[1]
    if (k // chunks) % 128:
        return f"K chunks of {k // chunks} columns are not multiples of the 128-wide k-slice"
    return wgmma_reason(m, B.shape[0], k, choose_fp8_config(m, B.shape[0], k, chunks))


def fp8_scaled_matmul(
    A: jax.Array,
    B: jax.Array,
    a_scale: jax.Array,
    b_scale: jax.Array,
    out_dtype=jnp.bfloat16,
    *,
    config: WgmmaConfig | None = None,
    interpret: bool = False,
) -> jax.Array:
    """(A · Bᵀ in float32) * a_scale * b_scale, rounded once, by f8 wgmma (Hopper, compiled).

    Args:
      A: float8_e4m3fn (or e5m2) [m, k], m a multiple of 128, k of 128.
      B: float8 [n, k] of A's format, n a multiple of 256.
      a_scale: float32 [m, C]: C K chunks of a multiple of 128 columns.
      b_scale: float32 [] or [n].
      out_dtype: float32, float16 or bfloat16.
      config: the kernel's `WgmmaConfig`; None: `choose_wgmma_config`.
      interpret: must be False (Mosaic GPU kernels run only compiled).

    Returns:
      out_dtype [m, n].

    Raises:
      ValueError: interpret is True, or the kernel does not serve this call
        (`supported_fp8_scaled_matmul` names why).
    """
    why = supported_fp8_scaled_matmul(A, B, a_scale, b_scale, out_dtype)
    if why is not None and not interpret:
        raise ValueError(why)
    chunks = a_scale.shape[1]
    if config is None:
        config = choose_fp8_config(A.shape[0], B.shape[0], A.shape[1], chunks)
    m, n, _, cfg = _plan(A, B, config, interpret)
    # One chunk: a row scale per row; several: [C, m], one row of scales per chunk.
    row = a_scale.reshape(m) if chunks == 1 else a_scale.T
    col = jnp.broadcast_to(b_scale, (n,)).astype(jnp.float32)
    kw = dict(cfg=cfg, num_sms=_target_device().core_count, out_dtype=np.dtype(out_dtype))
    return _matmul_2d(
        A, B, row, col, None, dequant=True, bias_mode=None, fp8=True, chunks=chunks, **kw
    )
