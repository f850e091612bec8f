"""Pallas GPU kernels (Triton) for the int8 matmul and its dequant epilogue (SwitchBack).

`int8_linear_matmul`, `int8_linear_matmul_dequant` and `int8_mm_dequant` take
the arguments of their namesakes in `fp8mm.reference` (plus `config` and
`interpret`; `int8_mm_dequant` also an `out_dtype`) and return int32 products
bit for bit, dequantized values within one float16 ulp.

Kernels:

* `_matmul_kernel`: int8 A[m, k] @ B[n, k]ᵀ with int32 accumulation, both
  operands K-major (the only layout where 8-bit tensor cores run at full speed,
  docs/performance.md), optionally with the dequant epilogue fused so that the int32
  product never reaches memory.
* `_dequant_kernel`: the epilogue alone, elementwise over an int32 product.

The dequant epilogue (`_int8_math.dequant_math`) computes
((acc*row)*col)*(1/127²) + bias with a rounding after each step; compiled for
the GPU it measured exactly that (no FMA contraction), while bitsandbytes'
CUDA (fmaf) and XLA on CPU fuse the last multiply-add. The two agree within one
float16 ulp except where a float16 bias cancels the product, where they differ
by at most one float32 ulp of the bias.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

from fp8mm import _checks, reference
from fp8mm.pallas import _backend
from fp8mm.pallas._backend import pallas_call, too_large
from fp8mm.pallas._int8_math import (
    Tile,
    and_masks,
    dequant_math,
    elementwise_tile,
    elementwise_tile_space,
    epilogue_operands,
    masked_load,
    next_pow2,
    range_mask,
)

__all__ = [
    "MatmulConfig",
    "Tile",
    "choose_dequant_config",
    "choose_matmul_config",
    "dequant_search_space",
    "int8_linear_matmul",
    "int8_linear_matmul_dequant",
    "int8_scaled_matmul",
    "int8_mm_dequant",
    "matmul_search_space",
    "supported_int8_linear_matmul",
    "supported_int8_linear_matmul_dequant",
    "supported_int8_scaled_matmul",
    "supported_int8_mm_dequant",
]


# ----------------------------------------------------------------------------
# Configs, heuristics and search spaces
# ----------------------------------------------------------------------------


def _pow2_at_least(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"MatmulConfig.{name} must be an int, got {value!r}")
    if value < low or value & (value - 1):
        raise ValueError(f"MatmulConfig.{name} must be a power of two >= {low}, got {value}")


@dataclasses.dataclass(frozen=True)
class MatmulConfig:
    """int8 NT matmul tile of the output [m, n]; `group_m` row blocks share a band of B (L2).

    Attributes:
      block_m: output rows a program (a power of two >= 16: the int8 MMA's minimum).
      block_n: output columns a program (a power of two >= 16).
      block_k: k-slice per loop step (a power of two >= 32).
      group_m: row blocks that walk the same band of B's column blocks.
      num_warps: Triton warps per program.
      num_stages: Triton software-pipelining stages of the k loop.
    """

    block_m: int
    block_n: int
    block_k: int
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 3

    def __post_init__(self):
        _pow2_at_least("block_m", self.block_m, 16)
        _pow2_at_least("block_n", self.block_n, 16)
        _pow2_at_least("block_k", self.block_k, 32)
        _pow2_at_least("num_warps", self.num_warps, 1)
        if self.group_m < 1 or self.num_stages < 1:
            raise ValueError(f"group_m and num_stages must be >= 1, got {self}")


def choose_matmul_config(m: int, n: int, k: int) -> MatmulConfig:
    """Tiles of an [m, k] x [n, k] product (rows of A flattened into m)."""
    # 128x128x128, 4 warps, 3 stages measured 870 TOPS on an H100 (docs/performance.md).
    # int8 MMA needs at least 16 rows/cols and 32 along k.
    block_m = min(128, max(16, next_pow2(m)))
    block_n = min(128, max(16, next_pow2(n)))
    block_k = min(128, max(32, next_pow2(k)))
    stages = 3 if k > 2 * block_k else 2
    # Row blocks sharing a band of B: on an H200 group 16 beat 8 for 4096x16384
    # outputs (0.87 vs 0.84 of XLA's int8 dot), group 4 for 8192x4096 (0.92 vs 0.89).
    group_m = 16 if n > m else (4 if m > n else 8)
    return MatmulConfig(block_m, block_n, block_k, group_m=group_m, num_stages=stages)


def matmul_search_space(m: int, n: int, k: int) -> tuple[MatmulConfig, ...]:
    """64² to 256x128 output tiles, k-slices of 64 and 128, 2 to 4 stages, the heuristic's group.

    Tiles are clipped to the shape as the heuristic clips them, so small
    products get a short list; 8 warps only for the 256-wide tiles.
    """
    choice = choose_matmul_config(m, n, k)
    pm, pn, pk = max(16, next_pow2(m)), max(16, next_pow2(n)), max(32, next_pow2(k))
    space = {}
    for bm, bn in ((64, 64), (128, 128), (128, 256), (256, 128)):
        for bk in (64, 128):
            for stages in (2, 3, 4):
                for warps in (4, 8) if max(bm, bn) == 256 else (4,):
                    cfg = MatmulConfig(
                        min(bm, pm), min(bn, pn), min(bk, pk), choice.group_m, warps, stages
                    )
                    space[cfg] = None
    return tuple(space)


def choose_dequant_config(m: int, n: int) -> Tile:
    """Dequant of an int32 [m, n] product: one tile of it a program, at most 128 wide."""
    return elementwise_tile(m, n, 128)


def dequant_search_space(m: int, n: int) -> tuple[Tile, ...]:
    """Tiles of 4096 to 16384 elements, 64 to 256 wide, 4 or 8 warps (the heuristic's too)."""
    return elementwise_tile_space(m, n, (64, 128, 256))


def _given(config, cls, choice):
    if config is None:
        return choice
    if not isinstance(config, cls):
        raise TypeError(f"config must be a {cls.__module__}.{cls.__name__}, got {config!r}")
    return config


# ----------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------


def _matmul_kernel(*refs, m, n, k, cfg, dequant, bias_mode, out_dtype, direct):
    if dequant:
        a_ref, b_ref, row_ref, col_ref, *rest = refs
        bias_ref = rest.pop(0) if bias_mode is not None else None
        (o_ref,) = rest
    else:
        a_ref, b_ref, o_ref = refs
    bm, bn, bk = cfg.block_m, cfg.block_n, cfg.block_k

    # Grouped ordering: consecutive programs share B column blocks in L2.
    pid = pl.program_id(0)
    grid_m, grid_n = pl.cdiv(m, bm), pl.cdiv(n, bn)
    width = cfg.group_m * grid_n
    first_m = (pid // width) * cfg.group_m
    size_m = jnp.minimum(grid_m - first_m, cfg.group_m)
    pid_m = first_m + (pid % width) % size_m
    pid_n = (pid % width) // size_m

    row_ok = range_mask(pid_m * bm, bm, m, m % bm != 0)
    col_ok = range_mask(pid_n * bn, bn, n, n % bn != 0)
    k_tail = k % bk != 0
    rs, cs = pl.ds(pid_m * bm, bm), pl.ds(pid_n * bn, bn)

    def body(kk, acc):
        k_ok = range_mask(kk * bk, bk, k, k_tail)
        ks = pl.ds(kk * bk, bk)
        # Rows past m/n only feed outputs that are never stored; only the k
        # tail must read as zero.
        a_mask, b_mask = and_masks(row_ok, k_ok), and_masks(col_ok, k_ok)
        a = masked_load(a_ref.at[rs, ks], a_mask, 0)
        b = masked_load(b_ref.at[cs, ks], b_mask, 0)
        return acc + jax.lax.dot_general(
            a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.int32
        )

    acc = jax.lax.fori_loop(0, pl.cdiv(k, bk), body, jnp.zeros((bm, bn), jnp.int32))
    out_mask = and_masks(row_ok, col_ok)
    if dequant:
        row = masked_load(row_ref.at[rs], row_ok, 0.0)[:, None]
        col = masked_load(col_ref.at[cs], col_ok, 0.0)[None, :]
        bias = None if bias_ref is None else masked_load(bias_ref.at[cs], col_ok, 0.0)[None, :]
        out = dequant_math(
            acc, row, col, bias, bias_mode=bias_mode, out_dtype=out_dtype, direct=direct
        )
    else:
        out = acc
    _backend.store(o_ref.at[rs, cs], out, mask=out_mask)


def _dequant_kernel(*refs, m, n, cfg, bias_mode, out_dtype):
    acc_ref, row_ref, col_ref, *rest = refs
    bias_ref = rest.pop(0) if bias_mode is not None else None
    (o_ref,) = rest
    bm, bn = cfg.block_rows, cfg.block_cols
    i, j = pl.program_id(0), pl.program_id(1)
    row_ok = range_mask(i * bm, bm, m, m % bm != 0)
    col_ok = range_mask(j * bn, bn, n, n % bn != 0)
    mask = and_masks(row_ok, col_ok)
    rs, cs = pl.ds(i * bm, bm), pl.ds(j * bn, bn)
    acc = masked_load(acc_ref.at[rs, cs], mask, 0)
    row = masked_load(row_ref.at[rs], row_ok, 0.0)[:, None]
    col = masked_load(col_ref.at[cs], col_ok, 0.0)[None, :]
    bias = None if bias_ref is None else masked_load(bias_ref.at[cs], col_ok, 0.0)[None, :]
    out = dequant_math(acc, row, col, bias, bias_mode=bias_mode, out_dtype=out_dtype)
    _backend.store(o_ref.at[rs, cs], out, mask=mask)


# ----------------------------------------------------------------------------
# Jitted 2-D drivers
# ----------------------------------------------------------------------------


@functools.partial(
    jax.jit, static_argnames=("bias_mode", "out_dtype", "dequant", "direct", "cfg", "interpret")
)
def _matmul_2d(
    a, b, row, col, bias, *, dequant, bias_mode, out_dtype, cfg, interpret, direct=False
):
    m, k = a.shape
    n = b.shape[0]
    args = [a, b]
    if dequant:
        args += [row, col] + ([bias] if bias_mode is not None else [])
    kernel = functools.partial(
        _matmul_kernel,
        m=m,
        n=n,
        k=k,
        cfg=cfg,
        dequant=dequant,
        bias_mode=bias_mode,
        out_dtype=out_dtype,
        direct=direct,
    )
    if direct:
        name = "fp8mm_int8_scaled_matmul"
    else:
        name = "fp8mm_int8_linear_matmul_dequant" if dequant else "fp8mm_int8_linear_matmul"
    return pallas_call(
        kernel,
        name=name,
        interpret=interpret,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        grid=(pl.cdiv(m, cfg.block_m) * pl.cdiv(n, cfg.block_n),),
        out_shape=jax.ShapeDtypeStruct((m, n), out_dtype if dequant else jnp.int32),
    )(*args)


@functools.partial(jax.jit, static_argnames=("bias_mode", "out_dtype", "cfg", "interpret"))
def _dequant_2d(acc, row, col, bias, *, bias_mode, out_dtype, cfg, interpret):
    m, n = acc.shape
    args = [acc, row, col] + ([bias] if bias_mode is not None else [])
    return pallas_call(
        functools.partial(
            _dequant_kernel, m=m, n=n, cfg=cfg, bias_mode=bias_mode, out_dtype=out_dtype
        ),
        name="fp8mm_int8_mm_dequant",
        interpret=interpret,
        num_warps=cfg.num_warps,
        grid=(pl.cdiv(m, cfg.block_rows), pl.cdiv(n, cfg.block_cols)),
        out_shape=jax.ShapeDtypeStruct((m, n), out_dtype),
    )(*args)


# ----------------------------------------------------------------------------
# Public wrappers and what they serve
# ----------------------------------------------------------------------------


def supported_int8_linear_matmul(A: jax.Array, B: jax.Array) -> str | None:
    """None when A, B and their [..., n] product are within the kernel's int32 indexing."""
    return too_large(A, B, math.prod(A.shape[:-1]) * B.shape[0])


def supported_int8_linear_matmul_dequant(A: jax.Array, B: jax.Array, *epilogue) -> str | None:
    """As `supported_int8_linear_matmul`: the epilogue's operands add no limit."""
    del epilogue
    return supported_int8_linear_matmul(A, B)


def supported_int8_mm_dequant(acc: jax.Array, *epilogue) -> str | None:
    """None when acc (and so the output) is within the kernel's int32 indexing."""
    del epilogue
    return too_large(acc)


def supported_int8_scaled_matmul(A: jax.Array, B: jax.Array, *epilogue) -> str | None:
    """As `supported_int8_linear_matmul`: the epilogue's operands add no limit."""
    del epilogue
    return supported_int8_linear_matmul(A, B)


def _product(A, B, epilogue, config, interpret, direct=False):
    """A @ Bᵀ: int32 when `epilogue` is None, else (row_stats, col_stats, bias, out_dtype)
    dequantized as `reference.int8_linear_matmul_dequant` (direct: `int8_scaled_matmul`)."""
    if (why := supported_int8_linear_matmul(A, B)) is not None:
        raise ValueError(why)
    out_shape = (*A.shape[:-1], B.shape[0])
    if epilogue is not None and (math.prod(out_shape) == 0 or A.shape[-1] == 0):
        *args, out_dtype = epilogue
        ref = reference.int8_scaled_matmul if direct else reference.int8_linear_matmul_dequant
        return ref(A, B, *args, out_dtype=np.dtype(out_dtype))
    if math.prod(out_shape) == 0 or A.shape[-1] == 0:
        return jnp.zeros(out_shape, jnp.int32)
    a = A.reshape(-1, A.shape[-1])
    cfg = _given(config, MatmulConfig, choose_matmul_config(a.shape[0], B.shape[0], a.shape[1]))
    row = col = bias = mode = out_dtype = None
    if epilogue is not None:
        row, col, bias, mode = epilogue_operands(*epilogue[:3], direct=direct)
        out_dtype = np.dtype(epilogue[3])
    kw = dict(bias_mode=mode, out_dtype=out_dtype, cfg=cfg, interpret=interpret, direct=direct)
    out = _matmul_2d(a, B, row, col, bias, dequant=epilogue is not None, **kw)
    return out.reshape(out_shape)


def int8_linear_matmul(
    A: jax.Array, B: jax.Array, *, config: MatmulConfig | None = None, interpret: bool = False
) -> jax.Array:
    """Exact int8 product A @ Bᵀ in int32 (both operands K-major).

    Arguments as `fp8mm.int8_linear_matmul` (validated there): A int8 [..., k],
    B int8 [n, k]; returns int32 [..., n].

    Args:
      config: the kernel's `MatmulConfig` for the [m, k] x [n, k] product (m the
        rows of A); None: `choose_matmul_config`.
      interpret: run in Pallas interpret mode (CPU).

    Raises:
      ValueError: an operand or the product is beyond the kernel's int32 indexing.
    """
    return _product(A, B, None, config, interpret)


def int8_linear_matmul_dequant(
    A, B, row_stats, col_stats, bias=None, out_dtype=jnp.float16, *, config=None, interpret=False
) -> jax.Array:
    """int8 matmul with the dequant epilogue fused: the int32 product stays on chip.

    Arguments and result as `fp8mm.int8_linear_matmul_dequant` (validated there),
    equal to `reference.int8_linear_matmul_dequant` within one float16 ulp: A int8
    [..., k], B int8 [n, k], row_stats float32 [...], col_stats float32 [n], bias
    None or float [n] (float16 fused into the rounding, others added to the
    float16 result); returns out_dtype [..., n].

    Args:
      config: the kernel's `MatmulConfig | None` (as in `int8_linear_matmul`).
      interpret: run in Pallas interpret mode (CPU).

    Raises:
      ValueError: an operand or the product is beyond the kernel's int32 indexing.
    """
    return _product(A, B, (row_stats, col_stats, bias, out_dtype), config, interpret)


def int8_scaled_matmul(
    A, B, row_stats, col_stats, bias=None, out_dtype=jnp.bfloat16, *, config=None, interpret=False
) -> jax.Array:
    """The SwitchBack paper's int8 product: ((A·Bᵀ)·row·col/127² + bias), rounded once.

    Arguments and result as `fp8mm.int8_scaled_matmul` (validated there): A int8
    [..., k], B int8 [n, k], row_stats float32 [...], col_stats float32 [n] (a
    global scale comes broadcast), bias None or float [n] added in float32;
    returns out_dtype [..., n], equal to `reference.int8_scaled_matmul` (within
    one ulp of out_dtype with a bias, where the compiler may fuse the last
    multiply-add).

    Args:
      config: the kernel's `MatmulConfig | None` (as in `int8_linear_matmul`).
      interpret: run in Pallas interpret mode (CPU).

    Raises:
      ValueError: an operand or the product is beyond the kernel's int32 indexing.
    """
    epilogue = (row_stats, col_stats, bias, out_dtype)
    return _product(A, B, epilogue, config, interpret, direct=True)


def int8_mm_dequant(
    acc, row_stats, col_stats, bias=None, *, out_dtype=jnp.float16, config=None, interpret=False
) -> jax.Array:
    """Dequantize an int32 product: f16(acc * row * col / 127² (+ bias)).

    Arguments as `fp8mm.int8_mm_dequant` (validated there): acc int32 [..., n],
    row_stats float32 [...], col_stats float32 [n], bias None or float [n].

    Args:
      out_dtype: float16 (default, the reference's), bfloat16 or float32: the
        float16 result cast in the same pass. `fp8mm.int8_mm_dequant` has no
        such argument, so this wrapper checks it.
      config: the kernel's `Tile | None` over acc's [m, n] (m its rows
        flattened); None: `choose_dequant_config`.
      interpret: run in Pallas interpret mode (CPU).

    Returns:
      out_dtype [..., n].

    Raises:
      ValueError: acc is beyond the kernel's int32 indexing, or out_dtype is not
        float16, bfloat16 or float32.
    """
    if (why := supported_int8_mm_dequant(acc)) is not None:
        raise ValueError(why)
    out_dtype = _checks.check_out_dtype(out_dtype)
    if acc.size == 0:
        return reference.int8_mm_dequant(acc, row_stats, col_stats, bias).astype(out_dtype)
    acc2 = acc.reshape(-1, acc.shape[-1])
    cfg = _given(config, Tile, choose_dequant_config(*acc2.shape))
    row, col, bias, mode = epilogue_operands(row_stats, col_stats, bias)
    kw = dict(bias_mode=mode, out_dtype=out_dtype, cfg=cfg, interpret=interpret)
    return _dequant_2d(acc2, row, col, bias, **kw).reshape(acc.shape)
