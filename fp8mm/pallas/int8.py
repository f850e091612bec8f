"""Pallas GPU kernels for the int8 (LLM.int8 / SwitchBack) primitives.

Every public wrapper takes the arguments of its namesake in `fp8mm.reference`
plus `interpret` and returns what the reference returns: int8 codes,
statistics and int32 products bit for bit. The dequant epilogue computes
((acc*row)*col)*(1/127²) + bias with a rounding after each step; compiled for
the GPU it measured exactly that (no FMA contraction), while bitsandbytes'
CUDA (fmaf) and XLA on CPU fuse the last multiply-add. The two agree within one
float16 ulp except where a float16 bias cancels the product, where they differ
by at most one float32 ulp of the bias.

Kernels:

* `_stats_kernel`: one pass over a float16 [m, k] matrix giving the row absmax,
  per-row-block partial column absmax and per-row-block outlier-column flags
  (outliers |x| >= threshold are left out of both maxima). The partials are
  reduced in XLA, which is tiny next to the pass itself.
* `_quant_kernel`: row-wise codes (and, for double quant, column-wise codes),
  2-D tiles.
* `_quant_t_kernel`: column-wise codes of a Flax [k, n] weight written straight
  into the K-major [n, k] layout the matmul needs (quantize + transpose).
* `_matmul_kernel`: int8 A[m, k] @ B[n, k]ᵀ with int32 accumulation, both
  operands K-major (the only layout where 8-bit tensor cores run at full speed,
  docs/performance.md), optionally with the dequant epilogue fused so that the int32
  product never reaches memory.
* `_dequant_kernel`: the epilogue alone, elementwise over an int32 product.

Exactness on the GPU: Triton lowers float division to an approximate
`div.full.f32`, and XLA on a GPU did not reproduce the CPU's
127 * (1/absmax) either, so the scales (127 * (1/absmax), 1/col_absmax) come
from host-computed tables indexed by the float16 bits of the absmax (every
absmax is a float16 value) and are passed to the kernels. The column codes need the IEEE quotient
x*127 / col_absmax; a product with the XLA reciprocal is within a few float32
ulps of it, which only matters where the quotient is exactly halfway between
two integers (with float16 operands any other quotient is at least 2^-12 from a
half), and those exact ties are detected with exact float32 products and
rounded to even. Triton has no round-half-even primitive either, so it is
built from `floor` and comparisons; nothing but comparisons consumes a product
that must stay rounded, since the GPU compiler contracts a multiply feeding an
add into an FMA.

NaN (docs/exactness.md): a NaN makes its row's and its column's absmax NaN, so
it reaches every product it touches; every NaN code is 0 and no code is -128.
Inputs whose float16 cast overflows keep their own value (`reference.f16_or_wide`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from numbers import Real

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

from fp8mm import _checks, reference
from fp8mm.pallas import Kernel, _backend
from fp8mm.pallas._backend import pallas_call

__all__ = [
    "KERNELS",
    "DequantConfig",
    "MatmulConfig",
    "QuantConfig",
    "RowQuantConfig",
    "StatsConfig",
    "int8_double_quant",
    "int8_linear_matmul",
    "int8_linear_matmul_dequant",
    "int8_mm_dequant",
    "int8_vectorwise_quant",
    "int8_vectorwise_quant_t",
    "int8_vectorwise_quant_t_reference",
]

_F32 = jnp.float32


# ----------------------------------------------------------------------------
# Block-size configurations and the heuristics choosing them
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StatsConfig:
    """Statistics pass: each program owns `block_m` rows and walks k in `block_k` steps."""

    block_m: int
    block_k: int
    num_warps: int = 4


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """Elementwise quantization: one [block_m, block_k] tile per program."""

    block_m: int
    block_k: int
    num_warps: int = 4


@dataclasses.dataclass(frozen=True)
class RowQuantConfig:
    """Single-pass row quantization: `block_m` whole rows (k padded to `block_k`) per program."""

    block_m: int
    block_k: int
    num_warps: int = 4


@dataclasses.dataclass(frozen=True)
class MatmulConfig:
    """int8 NT matmul tile; `group_m` row blocks share a band of B for L2 reuse."""

    block_m: int
    block_n: int
    block_k: int
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 3


@dataclasses.dataclass(frozen=True)
class DequantConfig:
    """Elementwise dequant: one [block_m, block_n] tile per program."""

    block_m: int
    block_n: int
    num_warps: int = 4


def _pow2(x: int) -> int:
    """Smallest power of two >= x (Triton blocks must be powers of two)."""
    return 1 << max(0, int(x) - 1).bit_length()


def _stats_config(m: int, k: int) -> StatsConfig:
    # 32 rows a program keeps ~250 programs busy at m=8192 while the per-row-block
    # column partials stay 1/16 of the input's bytes.
    block_m = min(32, _pow2(m))
    block_k = min(_pow2(k), 8192 // block_m)
    return StatsConfig(block_m, block_k)


def _quant_config(m: int, k: int) -> QuantConfig:
    block_k = min(256, _pow2(k))
    block_m = min(_pow2(m), 8192 // block_k)
    return QuantConfig(block_m, block_k)


# Whole rows up to this many elements stay in registers in the single-pass kernel.
_ROW_QUANT_MAX_K = 16384


def _row_quant_config(m: int, k: int) -> RowQuantConfig | None:
    """Whole rows per program for the single-pass kernel, or None when a row is too long."""
    block_k = _pow2(k)
    if block_k > _ROW_QUANT_MAX_K:
        return None
    # Measured on an H200 (bf16 8192x4096): one 4096-row with 8 warps (16 elements
    # a thread) 48.7 us; two rows with 4 warps 51.6 us; eight rows 73.8 us.
    block_m = min(_pow2(m), max(1, 4096 // block_k))
    return RowQuantConfig(block_m, block_k, num_warps=max(4, min(16, block_m * block_k // 512)))


def _quant_t_config(k: int, n: int) -> QuantConfig:
    # Square tiles so that both the read of W and the transposed write of CB
    # are long contiguous runs.
    return QuantConfig(min(64, _pow2(k)), min(64, _pow2(n)))


def _matmul_config(m: int, n: int, k: int) -> MatmulConfig:
    # 128x128x128, 4 warps, 3 stages measured 870 TOPS on an H100 (docs/performance.md).
    # int8 MMA needs at least 16 rows/cols and 32 along k.
    block_m = min(128, max(16, _pow2(m)))
    block_n = min(128, max(16, _pow2(n)))
    block_k = min(128, max(32, _pow2(k)))
    stages = 3 if k > 2 * block_k else 2
    # Row blocks sharing a band of B: on an H200 group 16 beat 8 for 4096x16384
    # outputs (0.87 vs 0.84 of XLA's int8 dot), group 4 for 8192x4096 (0.92 vs 0.89).
    group_m = 16 if n > m else (4 if m > n else 8)
    return MatmulConfig(block_m, block_n, block_k, group_m=group_m, num_stages=stages)


def _dequant_config(m: int, n: int) -> DequantConfig:
    block_n = min(128, _pow2(n))
    block_m = min(_pow2(m), 8192 // block_n)
    return DequantConfig(block_m, block_n)


# ----------------------------------------------------------------------------
# In-kernel arithmetic shared by the kernels (works compiled and interpreted)
# ----------------------------------------------------------------------------


def _is_even(x: jax.Array) -> jax.Array:
    half = x * 0.5
    return jnp.floor(half) == half


def _round_half_even(q: jax.Array) -> jax.Array:
    # Triton lowers no round primitive. Only comparisons may consume q: with
    # `q - floor(q)` LLVM would contract the product that made q into an FMA
    # and decide ties on the unrounded product.
    f = jnp.floor(q)
    h = f + 0.5
    up = (q > h) | ((q == h) & ~_is_even(f))
    return jnp.where(up, f + 1.0, f)


def _clip_nan(q: jax.Array) -> jax.Array:
    # NaN first: Triton's max/min drop NaN operands (maxnumf) instead of propagating.
    # [-127, 127]: no code is ever -128, even for an infinite quotient.
    q = jnp.where(q != q, 0.0, q)
    return jnp.minimum(jnp.maximum(q, -127.0), 127.0)


def _f16_or_wide(x: jax.Array, dtype) -> jax.Array:
    """`reference.f16_or_wide` of a float32 tile loaded from a `dtype` array."""
    r = x.astype(jnp.float16).astype(_F32)
    if np.dtype(dtype) == np.dtype(jnp.float16):
        return r
    big = (x >= reference.F16_OVERFLOW) | (x <= -reference.F16_OVERFLOW)
    return jnp.where(big, x, r)


def _any_nan_max(a: jax.Array, axis: int) -> jax.Array:
    """max of non-negative a along axis, NaN where a NaN is reduced over.

    Triton's max drops NaN operands, so the NaN test is a separate int32 reduction.
    """
    nan = a != a
    m = jnp.max(jnp.where(nan, 0.0, a), axis=axis)
    return jnp.where(_any(nan, axis) > 0, np.float32(np.nan), m)


def _to_int8(q: jax.Array) -> jax.Array:
    """CUDA's float->int8 of round-half-even(q): NaN -> 0, saturating at ±127."""
    # Clipping before rounding gives the same integers as after, and keeps
    # floor() away from infinities.
    return _round_half_even(_clip_nan(q)).astype(jnp.int8)


def _any(mask: jax.Array, axis: int) -> jax.Array:
    # int32 max: Triton lowers no boolean reductions.
    return jnp.max(mask.astype(jnp.int32), axis=axis)


def _range_mask(start, size: int, limit: int, needed: bool):
    """Mask of the valid indices of a block, or None when the block never overhangs."""
    if not needed:
        return None
    return start + jnp.arange(size) < limit


def _load(ref, mask, other):
    # Triton rejects `other` on an unmasked load.
    return _backend.load(ref, mask=mask, other=None if mask is None else other)


def _and_masks(rows, cols):
    if rows is None and cols is None:
        return None
    if rows is None:
        return cols[None, :]
    if cols is None:
        return rows[:, None]
    return rows[:, None] & cols[None, :]


def _dequant_math(acc, row, col, bias, *, bias_mode: str, out_dtype):
    """reference.int8_mm_dequant on one tile, in the same operation order.

    row, col and bias are float32 and broadcast against acc ([bm, 1] and [1, bn]
    here, whole tiles in the Mosaic GPU kernel, whose layouts broadcast explicitly).
    """
    t = acc.astype(_F32) * row
    t = t * col
    t = t * reference.MM_DEQUANT_CONST
    if bias_mode == "fused":
        t = t + bias
    if np.dtype(out_dtype) == np.dtype(jnp.float16):
        out = t.astype(jnp.float16)
        if bias_mode == "after":
            out = (out.astype(_F32) + bias).astype(jnp.float16)
        return out
    # A wider output keeps values beyond float16 range (reference.dequant_values).
    # Through float32 (exact) rounds as a direct cast; Mosaic GPU has no f16 -> bf16.
    out = _f16_or_wide(t, out_dtype)
    if bias_mode == "after":
        out = _f16_or_wide(out + bias, out_dtype)
    return out.astype(out_dtype)


# ----------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------


def _stats_kernel(a_ref, *out_refs, m, k, cfg, threshold, rows, cols, flags):
    bm, bk = cfg.block_m, cfg.block_k
    i = pl.program_id(0)
    refs = iter(out_refs)
    row_ref = next(refs) if rows else None
    col_ref = next(refs) if cols else None
    flag_ref = next(refs) if flags else None
    row_ok = _range_mask(i * bm, bm, m, m % bm != 0)
    thr = float(np.float16(threshold))  # the reference compares in float16

    def body(kk, carry):
        rmax, rnan = carry
        start = kk * bk
        col_ok = _range_mask(start, bk, k, k % bk != 0)
        mask = _and_masks(row_ok, col_ok)
        x = _load(a_ref.at[pl.ds(i * bm, bm), pl.ds(start, bk)], mask, 0.0)
        a = jnp.abs(_f16_or_wide(x.astype(_F32), a_ref.dtype))
        nan = a != a
        if threshold > 0.0:
            outlier = a >= thr
            a = jnp.where(outlier, 0.0, a)
        a = jnp.where(nan, 0.0, a)
        if rows:
            rmax = jnp.maximum(rmax, jnp.max(a, axis=1))
            rnan = jnp.maximum(rnan, _any(nan, 1))
        if cols:
            cmax = jnp.where(_any(nan, 0) > 0, np.float32(np.nan), jnp.max(a, axis=0))
            _backend.store(col_ref.at[i, pl.ds(start, bk)], cmax, mask=col_ok)
        if flags:
            hit = _any(outlier, 0).astype(jnp.int8)
            _backend.store(flag_ref.at[i, pl.ds(start, bk)], hit, mask=col_ok)
        return rmax, rnan

    init = (jnp.zeros((bm,), _F32), jnp.zeros((bm,), jnp.int32))
    rmax, rnan = jax.lax.fori_loop(0, pl.cdiv(k, bk), body, init)
    if rows:
        rmax = jnp.where(rnan > 0, np.float32(np.nan), rmax)
        _backend.store(row_ref.at[pl.ds(i * bm, bm)], rmax, mask=row_ok)


def _quant_kernel(*refs, m, k, cfg, threshold, double):
    refs = list(refs)
    a_ref, scale_ref = refs[:2]
    del refs[:2]
    flag_ref = refs.pop(0) if threshold > 0.0 else None
    if double:
        cstat_ref, crcp_ref = refs.pop(0), refs.pop(0)
    ca_ref = refs.pop(0)
    cat_ref = refs.pop(0) if double else None

    bm, bk = cfg.block_m, cfg.block_k
    i, j = pl.program_id(0), pl.program_id(1)
    row_ok = _range_mask(i * bm, bm, m, m % bm != 0)
    col_ok = _range_mask(j * bk, bk, k, k % bk != 0)
    mask = _and_masks(row_ok, col_ok)
    rs, cs = pl.ds(i * bm, bm), pl.ds(j * bk, bk)

    x = _f16_or_wide(_load(a_ref.at[rs, cs], mask, 0.0).astype(_F32), a_ref.dtype)
    scale = _load(scale_ref.at[rs], row_ok, 0.0)
    ca = _to_int8(x * scale[:, None])
    if threshold > 0.0:
        outlier = jnp.abs(x) >= float(np.float16(threshold))
        col_hit = _load(flag_ref.at[cs], col_ok, 0) != 0
        ca = jnp.where(outlier | col_hit[None, :], jnp.int8(0), ca)
        x = jnp.where(outlier, 0.0, x)
    _backend.store(ca_ref.at[rs, cs], ca, mask=mask)
    if not double:
        return

    c = _load(cstat_ref.at[cs], col_ok, 1.0)[None, :]
    rc = _load(crcp_ref.at[cs], col_ok, 1.0)[None, :]
    # torch rounds x*127 to float16 before dividing (the float32 product is exact);
    # where that overflows, the exact product gives the intended code.
    s = _f16_or_wide(x * 127.0, jnp.float32)
    q = s * rc
    n = _round_half_even(_clip_nan(q))
    # Exact ties s/c = n ± 1/2: (n ± 1/2)*c has at most 19 significant bits, so
    # it is exact in float32 and the comparison decides the tie exactly.
    finite = jnp.abs(q) < np.float32(np.inf)
    lo_tie = finite & (s == (n - 0.5) * c)
    hi_tie = finite & (s == (n + 0.5) * c)
    n = jnp.where(lo_tie, jnp.where(_is_even(n), n, n - 1.0), n)
    n = jnp.where(hi_tie, jnp.where(_is_even(n), n, n + 1.0), n)
    cat = jnp.minimum(jnp.maximum(n, -127.0), 127.0).astype(jnp.int8)
    _backend.store(cat_ref.at[rs, cs], cat, mask=mask)


def _row_quant_kernel(a_ref, ca_ref, stats_ref, *, m, k, cfg, interpret):
    """Row absmax and codes of whole rows in one pass (threshold 0: no outlier columns)."""
    bm = cfg.block_m
    i = pl.program_id(0)
    row_ok = _range_mask(i * bm, bm, m, m % bm != 0)
    col_ok = _range_mask(0, cfg.block_k, k, k != cfg.block_k)
    mask = _and_masks(row_ok, col_ok)
    # An int32 start, not the literal 0: interpret mode under jax_enable_x64 would make
    # a Python 0 int64 next to the int32 program id.
    rs, cs = pl.ds(i * bm, bm), pl.ds(np.int32(0), cfg.block_k)
    # bitsandbytes quantizes A as float16: round once, whatever A's dtype (unless the
    # cast overflows: reference.f16_or_wide).
    x = _f16_or_wide(_load(a_ref.at[rs, cs], mask, 0.0).astype(_F32), a_ref.dtype)
    absmax = _any_nan_max(jnp.abs(x), 1)
    # 127 * (1/absmax) with a correctly rounded reciprocal, prescaled as reference.row_scale.
    s = reference.block_prescale(absmax)
    scale = (np.float32(127.0) * s) * _backend.recip_rn(absmax * s, interpret)
    _backend.store(ca_ref.at[rs, cs], _to_int8(x * scale[:, None]), mask=mask)
    _backend.store(stats_ref.at[rs], absmax, mask=row_ok)


def _quant_t_kernel(w_ref, scale_ref, cb_ref, *, k, n, cfg):
    bk, bn = cfg.block_m, cfg.block_k
    i, j = pl.program_id(0), pl.program_id(1)  # i over n (rows of CB), j over k
    n_ok = _range_mask(i * bn, bn, n, n % bn != 0)
    k_ok = _range_mask(j * bk, bk, k, k % bk != 0)
    ns, ks = pl.ds(i * bn, bn), pl.ds(j * bk, bk)
    w = _load(w_ref.at[ks, ns], _and_masks(k_ok, n_ok), 0.0).astype(_F32)
    w = _f16_or_wide(w, w_ref.dtype)
    scale = _load(scale_ref.at[ns], n_ok, 0.0)
    codes = _to_int8(w * scale[None, :])
    _backend.store(cb_ref.at[ns, ks], codes.T, mask=_and_masks(n_ok, k_ok))


def _matmul_kernel(*refs, m, n, k, cfg, dequant, bias_mode, out_dtype):
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

    row_ok = _range_mask(pid_m * bm, bm, m, m % bm != 0)
    col_ok = _range_mask(pid_n * bn, bn, n, n % bn != 0)
    k_tail = k % bk != 0
    rs, cs = pl.ds(pid_m * bm, bm), pl.ds(pid_n * bn, bn)

    def body(kk, acc):
        k_ok = _range_mask(kk * bk, bk, k, k_tail)
        ks = pl.ds(kk * bk, bk)
        # Rows past m/n only feed outputs that are never stored; only the k
        # tail must read as zero.
        a_mask, b_mask = _and_masks(row_ok, k_ok), _and_masks(col_ok, k_ok)
        a = _load(a_ref.at[rs, ks], a_mask, 0)
        b = _load(b_ref.at[cs, ks], b_mask, 0)
        return acc + jax.lax.dot_general(
            a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.int32
        )

    acc = jax.lax.fori_loop(0, pl.cdiv(k, bk), body, jnp.zeros((bm, bn), jnp.int32))
    out_mask = _and_masks(row_ok, col_ok)
    if dequant:
        row = _load(row_ref.at[rs], row_ok, 0.0)[:, None]
        col = _load(col_ref.at[cs], col_ok, 0.0)[None, :]
        bias = None if bias_ref is None else _load(bias_ref.at[cs], col_ok, 0.0)[None, :]
        out = _dequant_math(acc, row, col, bias, bias_mode=bias_mode, out_dtype=out_dtype)
    else:
        out = acc
    _backend.store(o_ref.at[rs, cs], out, mask=out_mask)


def _dequant_kernel(*refs, m, n, cfg, bias_mode, out_dtype):
    acc_ref, row_ref, col_ref, *rest = refs
    bias_ref = rest.pop(0) if bias_mode is not None else None
    (o_ref,) = rest
    bm, bn = cfg.block_m, cfg.block_n
    i, j = pl.program_id(0), pl.program_id(1)
    row_ok = _range_mask(i * bm, bm, m, m % bm != 0)
    col_ok = _range_mask(j * bn, bn, n, n % bn != 0)
    mask = _and_masks(row_ok, col_ok)
    rs, cs = pl.ds(i * bm, bm), pl.ds(j * bn, bn)
    acc = _load(acc_ref.at[rs, cs], mask, 0)
    row = _load(row_ref.at[rs], row_ok, 0.0)[:, None]
    col = _load(col_ref.at[cs], col_ok, 0.0)[None, :]
    bias = None if bias_ref is None else _load(bias_ref.at[cs], col_ok, 0.0)[None, :]
    out = _dequant_math(acc, row, col, bias, bias_mode=bias_mode, out_dtype=out_dtype)
    _backend.store(o_ref.at[rs, cs], out, mask=mask)


# ----------------------------------------------------------------------------
# Jitted 2-D drivers
# ----------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("threshold", "rows", "cols", "interpret"))
def _stats(a16, *, threshold, rows, cols, interpret):
    """(row_stats [m] | None, col_stats [k] | None, outlier_cols [k] bool).

    a16 is A in its own dtype; the kernel rounds it with `_f16_or_wide`. A NaN
    makes its row's and its column's absmax NaN (fp8mm's NaN rule; bitsandbytes'
    row kernel drops NaN with fmaxf, its column amax keeps it).
    """
    m, k = a16.shape
    cfg = _stats_config(m, k)
    nb = pl.cdiv(m, cfg.block_m)
    flags = threshold > 0.0
    out_shape = []
    if rows:
        out_shape.append(jax.ShapeDtypeStruct((m,), _F32))
    if cols:
        out_shape.append(jax.ShapeDtypeStruct((nb, k), _F32))
    if flags:
        out_shape.append(jax.ShapeDtypeStruct((nb, k), jnp.int8))
    kernel = functools.partial(
        _stats_kernel,
        m=m,
        k=k,
        cfg=cfg,
        threshold=threshold,
        rows=rows,
        cols=cols,
        flags=flags,
    )
    outs = iter(
        pallas_call(
            kernel,
            name="fp8mm_int8_stats",
            interpret=interpret,
            num_warps=cfg.num_warps,
            grid=(nb,),
            out_shape=out_shape,
        )(a16)
    )
    row_stats = next(outs) if rows else None
    col_stats = jnp.max(next(outs), axis=0) if cols else None  # jnp.max propagates NaN
    outlier_cols = jnp.any(next(outs) != 0, axis=0) if flags else jnp.zeros((k,), jnp.bool_)
    return row_stats, col_stats, outlier_cols


@functools.cache
def _reciprocal_tables() -> tuple[np.ndarray, np.ndarray]:
    """(1/v, 127*(1/v)) in float32 for every non-negative float16 v, by bit pattern.

    numpy divides with IEEE rounding on the host, so the tables hold the
    reference's correctly rounded values whatever the device does with a
    division (XLA on a GPU gave rows a scale one ulp off the CPU's).
    """
    v = np.arange(1 << 15, dtype=np.uint16).view(np.float16).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        rcp = np.float32(1.0) / v
        return rcp, np.float32(127.0) * rcp


def _lookup(table: np.ndarray, stats: jax.Array) -> jax.Array:
    # An absmax within float16 range is a float16 value (or NaN), so its float16 bits
    # index exactly; the callers compute the few above it.
    bits = jax.lax.bitcast_convert_type(stats.astype(jnp.float16), jnp.uint16)
    return jnp.take(jnp.asarray(table), (bits & 0x7FFF).astype(jnp.int32), axis=0)


_F16_MAX = np.float32(np.finfo(np.float16).max)


def _scale(stats: jax.Array) -> jax.Array:
    """127 * (1/stats) with a correctly rounded reciprocal, as the reference."""
    wide = stats > _F16_MAX
    return jnp.where(wide, reference.row_scale(stats), _lookup(_reciprocal_tables()[1], stats))


def _reciprocal(stats: jax.Array) -> jax.Array:
    wide = stats > _F16_MAX
    return jnp.where(wide, np.float32(1.0) / stats, _lookup(_reciprocal_tables()[0], stats))


@functools.partial(jax.jit, static_argnames=("threshold", "double", "interpret"))
def _quant_2d(a16, *, threshold, double, interpret):
    m, k = a16.shape
    row_stats, col_stats, outlier_cols = _stats(
        a16, threshold=threshold, rows=True, cols=double, interpret=interpret
    )
    args = [a16, _scale(row_stats)]
    if threshold > 0.0:
        args.append(outlier_cols.astype(jnp.int8))
    out_shape = [jax.ShapeDtypeStruct((m, k), jnp.int8)]
    if double:
        args += [col_stats, _reciprocal(col_stats)]
        out_shape.append(jax.ShapeDtypeStruct((m, k), jnp.int8))
    cfg = _quant_config(m, k)
    kernel = functools.partial(_quant_kernel, m=m, k=k, cfg=cfg, threshold=threshold, double=double)
    codes = pallas_call(
        kernel,
        name="fp8mm_int8_double_quant" if double else "fp8mm_int8_vectorwise_quant",
        interpret=interpret,
        num_warps=cfg.num_warps,
        grid=(pl.cdiv(m, cfg.block_m), pl.cdiv(k, cfg.block_k)),
        out_shape=out_shape,
    )(*args)
    return codes, row_stats, col_stats, outlier_cols


@functools.partial(jax.jit, static_argnames=("cfg", "interpret"))
def _row_quant_2d(a, *, cfg, interpret):
    m, k = a.shape
    return pallas_call(
        functools.partial(_row_quant_kernel, m=m, k=k, cfg=cfg, interpret=interpret),
        name="fp8mm_int8_vectorwise_quant_rows",
        interpret=interpret,
        num_warps=cfg.num_warps,
        grid=(pl.cdiv(m, cfg.block_m),),
        out_shape=[
            jax.ShapeDtypeStruct((m, k), jnp.int8),
            jax.ShapeDtypeStruct((m,), _F32),
        ],
    )(a)


@functools.partial(jax.jit, static_argnames=("interpret",))
def _quant_t_2d(w16, *, interpret):
    k, n = w16.shape
    _, scb, _ = _stats(w16, threshold=0.0, rows=False, cols=True, interpret=interpret)
    cfg = _quant_t_config(k, n)
    cb = pallas_call(
        functools.partial(_quant_t_kernel, k=k, n=n, cfg=cfg),
        name="fp8mm_int8_vectorwise_quant_t",
        interpret=interpret,
        num_warps=cfg.num_warps,
        grid=(pl.cdiv(n, cfg.block_k), pl.cdiv(k, cfg.block_m)),
        out_shape=jax.ShapeDtypeStruct((n, k), jnp.int8),
    )(w16, _scale(scb))
    return cb, scb


@functools.partial(
    jax.jit, static_argnames=("bias_mode", "out_dtype", "dequant", "cfg", "interpret")
)
def _matmul_2d(a, b, row, col, bias, *, dequant, bias_mode, out_dtype, cfg, interpret):
    m, k = a.shape
    n = b.shape[0]
    cfg = cfg or _matmul_config(m, n, k)
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
    )
    return pallas_call(
        kernel,
        name="fp8mm_int8_linear_matmul_dequant" if dequant else "fp8mm_int8_linear_matmul",
        interpret=interpret,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        grid=(pl.cdiv(m, cfg.block_m) * pl.cdiv(n, cfg.block_n),),
        out_shape=jax.ShapeDtypeStruct((m, n), out_dtype if dequant else jnp.int32),
    )(*args)


@functools.partial(jax.jit, static_argnames=("bias_mode", "out_dtype", "interpret"))
def _dequant_2d(acc, row, col, bias, *, bias_mode, out_dtype, interpret):
    m, n = acc.shape
    cfg = _dequant_config(m, n)
    args = [acc, row, col] + ([bias] if bias_mode is not None else [])
    return pallas_call(
        functools.partial(
            _dequant_kernel, m=m, n=n, cfg=cfg, bias_mode=bias_mode, out_dtype=out_dtype
        ),
        name="fp8mm_int8_mm_dequant",
        interpret=interpret,
        num_warps=cfg.num_warps,
        grid=(pl.cdiv(m, cfg.block_m), pl.cdiv(n, cfg.block_n)),
        out_shape=jax.ShapeDtypeStruct((m, n), out_dtype),
    )(*args)


# ----------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------


def _check_float(name: str, x) -> None:
    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        raise TypeError(f"{name} must be an array, got {type(x).__name__}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")


def _check_int(name: str, x, dtype) -> None:
    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        raise TypeError(f"{name} must be an array, got {type(x).__name__}")
    if np.dtype(x.dtype) != np.dtype(dtype):
        raise TypeError(f"{name} must be {np.dtype(dtype).name}, got {x.dtype}")


def _check_threshold(threshold) -> float:
    if (
        isinstance(threshold, jax.core.Tracer)
        or not isinstance(threshold, Real)
        or isinstance(threshold, bool)
    ):
        raise TypeError(f"threshold must be a static Python float, got {threshold!r}")
    threshold = float(threshold)
    if not threshold >= 0.0:
        raise ValueError(f"threshold must be >= 0, got {threshold!r}")
    return threshold


def _check_dequant_args(acc_shape, row_stats, col_stats, bias) -> None:
    _check_float("row_stats", row_stats)
    _check_float("col_stats", col_stats)
    if tuple(row_stats.shape) != tuple(acc_shape[:-1]):
        raise ValueError(
            f"row_stats must have shape {tuple(acc_shape[:-1])}, got {tuple(row_stats.shape)}"
        )
    if tuple(col_stats.shape) != (acc_shape[-1],):
        raise ValueError(
            f"col_stats must have shape {(acc_shape[-1],)}, got {tuple(col_stats.shape)}"
        )
    if bias is not None:
        if not hasattr(bias, "shape") or not hasattr(bias, "dtype"):
            raise TypeError(f"bias must be an array or None, got {type(bias).__name__}")
        if tuple(bias.shape) != (acc_shape[-1],):
            raise ValueError(f"bias must have shape {(acc_shape[-1],)}, got {tuple(bias.shape)}")


def _bias_mode(bias) -> str | None:
    if bias is None:
        return None
    # A float16 bias joins the one rounding (fmaf in CUDA); others are added
    # to the float16 result, as bitsandbytes does.
    return "fused" if np.dtype(bias.dtype) == np.dtype(jnp.float16) else "after"


# ----------------------------------------------------------------------------
# Public wrappers
# ----------------------------------------------------------------------------


def int8_vectorwise_quant(
    A: jax.Array, threshold: float = 0.0, *, interpret: bool = False
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Row-wise int8 quantization, bit-identical to `reference.int8_vectorwise_quant`.

    Args:
      A: float array [..., k] (any float dtype; cast to float16 first).
      threshold: static Python float >= 0; when > 0, entries with
        |x| >= threshold are outliers, left out of the row absmax, and their
        whole columns are zeroed in CA.
      interpret: run in Pallas interpret mode (CPU).

    Returns:
      CA int8 [..., k], row_stats float32 [...], outlier_cols bool [k].
    """
    _check_float("A", A)
    if A.ndim < 1:
        raise ValueError(f"A must have at least 1 dimension, got shape {A.shape}")
    threshold = _check_threshold(threshold)
    if A.size == 0:
        return reference.int8_vectorwise_quant(A, threshold)
    a2 = A.reshape(-1, A.shape[-1])
    cfg = _row_quant_config(*a2.shape)
    if threshold == 0.0 and cfg is not None:
        # Whole rows fit a program: one read of A, cast to float16 in the kernel.
        ca, row_stats = _row_quant_2d(a2, cfg=cfg, interpret=interpret)
        cols = jnp.zeros((A.shape[-1],), jnp.bool_)
    else:
        (ca,), row_stats, _, cols = _quant_2d(
            a2, threshold=threshold, double=False, interpret=interpret
        )
    return ca.reshape(A.shape), row_stats.reshape(A.shape[:-1]), cols


def int8_double_quant(
    A: jax.Array, threshold: float = 0.0, *, interpret: bool = False
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """Row- and column-wise int8 quantization, bit-identical to `reference.int8_double_quant`.

    Args:
      A: float array [..., k] (cast to float16).
      threshold: static Python float >= 0, as in `int8_vectorwise_quant`;
        outliers are also left out of the column absmax and zeroed in CAt.
      interpret: run in Pallas interpret mode (CPU).

    Returns:
      CA int8 [..., k]; CAt int8 [..., k] (A's shape, not transposed);
      row_stats float32 [...]; col_stats float32 [k]; outlier_cols bool [k].
    """
    _check_float("A", A)
    if A.ndim < 1:
        raise ValueError(f"A must have at least 1 dimension, got shape {A.shape}")
    threshold = _check_threshold(threshold)
    if A.size == 0:
        return reference.int8_double_quant(A, threshold)
    a16 = A.reshape(-1, A.shape[-1])
    (ca, cat), row_stats, col_stats, cols = _quant_2d(
        a16, threshold=threshold, double=True, interpret=interpret
    )
    return (
        ca.reshape(A.shape),
        cat.reshape(A.shape),
        row_stats.reshape(A.shape[:-1]),
        col_stats,
        cols,
    )


int8_vectorwise_quant_t_reference = reference.int8_vectorwise_quant_t


def int8_vectorwise_quant_t(
    W: jax.Array, *, interpret: bool = False
) -> tuple[jax.Array, jax.Array]:
    """Fused quantize + transpose of a weight into the matmul's K-major layout.

    Equal to `reference.int8_vectorwise_quant(W.T)[:2]`: every column of W is
    quantized with its own absmax and written as a row of CB, so a Flax
    [in, out] kernel becomes the [out, in] int8 operand that `int8_linear_matmul`
    needs without a separate transpose.

    Args:
      W: float array [k, n] (any float dtype; cast to float16 first).
      interpret: run in Pallas interpret mode (CPU).

    Returns:
      CB int8 [n, k], SCB float32 [n] (the column absmax of W).
    """
    _check_float("W", W)
    if W.ndim != 2:
        raise ValueError(f"W must be 2-D [k, n], got shape {W.shape}")
    if W.size == 0:
        return int8_vectorwise_quant_t_reference(W)
    return _quant_t_2d(W, interpret=interpret)


def _check_matmul(A, B) -> None:
    _check_int("A", A, jnp.int8)
    _check_int("B", B, jnp.int8)
    if A.ndim < 1:
        raise ValueError(f"A must have at least 1 dimension, got shape {A.shape}")
    if B.ndim != 2:
        raise ValueError(f"B must be 2-D [n, k], got shape {B.shape}")
    if A.shape[-1] != B.shape[1]:
        raise ValueError(f"A [..., k] and B [n, k] disagree on k: {A.shape} vs {B.shape}")


def int8_linear_matmul(A: jax.Array, B: jax.Array, *, interpret: bool = False) -> jax.Array:
    """Exact int8 product A @ Bᵀ in int32 (both operands K-major).

    Args:
      A: int8 [..., k].
      B: int8 [n, k] (Linear layout).
      interpret: run in Pallas interpret mode (CPU).

    Returns:
      int32 [..., n].
    """
    _check_matmul(A, B)
    out_shape = (*A.shape[:-1], B.shape[0])
    if math.prod(out_shape) == 0 or A.shape[-1] == 0:
        return jnp.zeros(out_shape, jnp.int32)
    a = A.reshape(-1, A.shape[-1])
    out = _matmul_2d(
        a,
        B,
        None,
        None,
        None,
        dequant=False,
        bias_mode=None,
        out_dtype=None,
        cfg=None,
        interpret=interpret,
    )
    return out.reshape(out_shape)


def int8_linear_matmul_dequant(
    A: jax.Array,
    B: jax.Array,
    row_stats: jax.Array,
    col_stats: jax.Array,
    bias: jax.Array | None = None,
    out_dtype=jnp.float16,
    *,
    interpret: bool = False,
) -> jax.Array:
    """int8 matmul with the dequant epilogue fused: the int32 product stays on chip.

    Equal to `reference.int8_linear_matmul_dequant(A, B, row_stats, col_stats,
    bias).astype(out_dtype)` within one float16 ulp.

    Args:
      A: int8 [..., k].
      B: int8 [n, k].
      row_stats: float [...] (one per row of A).
      col_stats: float [n].
      bias: optional [n]; float16 is fused into the rounding, any other dtype is
        added to the float16 result.
      out_dtype: float16 (default), bfloat16 or float32: the float16 result cast.
      interpret: run in Pallas interpret mode (CPU).

    Returns:
      out_dtype [..., n].
    """
    _check_matmul(A, B)
    out_shape = (*A.shape[:-1], B.shape[0])
    _check_dequant_args(out_shape, row_stats, col_stats, bias)
    out_dtype = _checks.check_out_dtype(out_dtype)
    if math.prod(out_shape) == 0 or A.shape[-1] == 0:
        ref = reference.int8_linear_matmul_dequant(A, B, row_stats, col_stats, bias)
        return ref.astype(out_dtype)
    a = A.reshape(-1, A.shape[-1])
    bias_mode = _bias_mode(bias)
    out = _matmul_2d(
        a,
        B,
        row_stats.reshape(-1).astype(_F32),
        col_stats.astype(_F32),
        None if bias is None else bias.astype(_F32),
        dequant=True,
        bias_mode=bias_mode,
        out_dtype=out_dtype,
        cfg=None,
        interpret=interpret,
    )
    return out.reshape(out_shape)


def int8_mm_dequant(
    acc: jax.Array,
    row_stats: jax.Array,
    col_stats: jax.Array,
    bias: jax.Array | None = None,
    *,
    out_dtype=jnp.float16,
    interpret: bool = False,
) -> jax.Array:
    """Dequantize an int32 product: f16(acc * row * col / 127² (+ bias)).

    Args:
      acc: int32 [..., n].
      row_stats: float [...].
      col_stats: float [n].
      bias: optional [n] (float16 fused, other dtypes added afterwards).
      out_dtype: float16 (default), bfloat16 or float32: the float16 result cast.
      interpret: run in Pallas interpret mode (CPU).

    Returns:
      out_dtype [..., n].
    """
    _check_int("acc", acc, jnp.int32)
    if acc.ndim < 1:
        raise ValueError(f"acc must have at least 1 dimension, got shape {acc.shape}")
    _check_dequant_args(acc.shape, row_stats, col_stats, bias)
    out_dtype = _checks.check_out_dtype(out_dtype)
    if acc.size == 0:
        return reference.int8_mm_dequant(acc, row_stats, col_stats, bias).astype(out_dtype)
    out = _dequant_2d(
        acc.reshape(-1, acc.shape[-1]),
        row_stats.reshape(-1).astype(_F32),
        col_stats.astype(_F32),
        None if bias is None else bias.astype(_F32),
        bias_mode=_bias_mode(bias),
        out_dtype=out_dtype,
        interpret=interpret,
    )
    return out.reshape(acc.shape)


# ----------------------------------------------------------------------------
# Dispatch table
# ----------------------------------------------------------------------------


# Triton's offsets are int32; larger operands stay on the XLA path (as in codebook.py).
_MAX_ELEMENTS = 2**31 - 2**24


def _reason(check, *args) -> str | None:
    try:
        check(*args)
    except (TypeError, ValueError) as e:
        return str(e)
    for x in args:
        size = math.prod(getattr(x, "shape", ()))
        if size > _MAX_ELEMENTS:
            return f"{size} elements exceed the kernels' int32 indexing ({_MAX_ELEMENTS})"
    return None


def _check_out_size(A, B) -> None:
    size = math.prod(A.shape[:-1]) * B.shape[0]
    if size > _MAX_ELEMENTS:
        raise ValueError(f"the {size}-element output exceeds the kernels' int32 indexing")


def _unsupported_quant(A, threshold=0.0) -> str | None:
    return _reason(lambda a: (_check_float("A", a), _check_threshold(threshold)), A)


def _unsupported_matmul(A, B) -> str | None:
    return _reason(lambda a, b: (_check_matmul(a, b), _check_out_size(a, b)), A, B)


def _unsupported_quant_t(W) -> str | None:
    return _reason(lambda w: _check_float("W", w), W)


def _unsupported_mm_dequant(acc, row_stats, col_stats, bias=None) -> str | None:
    def check():
        _check_int("acc", acc, jnp.int32)
        _check_dequant_args(acc.shape, row_stats, col_stats, bias)

    return _reason(lambda *_: check(), acc)


def _unsupported_matmul_dequant(
    A, B, row_stats, col_stats, bias=None, out_dtype=jnp.float16
) -> str | None:
    def check():
        _check_matmul(A, B)
        _check_out_size(A, B)
        _check_dequant_args((*A.shape[:-1], B.shape[0]), row_stats, col_stats, bias)
        _checks.check_out_dtype(out_dtype)

    return _reason(lambda *_: check(), A, B)


KERNELS: dict[str, Kernel] = {
    "int8_vectorwise_quant": Kernel(int8_vectorwise_quant, _unsupported_quant),
    "int8_double_quant": Kernel(int8_double_quant, _unsupported_quant),
    "int8_vectorwise_quant_t": Kernel(int8_vectorwise_quant_t, _unsupported_quant_t),
    "int8_linear_matmul": Kernel(int8_linear_matmul, _unsupported_matmul),
    "int8_mm_dequant": Kernel(int8_mm_dequant, _unsupported_mm_dequant),
    "int8_linear_matmul_dequant": Kernel(int8_linear_matmul_dequant, _unsupported_matmul_dequant),
}
