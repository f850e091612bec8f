"""In-kernel arithmetic shared by the int8 kernels (compiled and interpreted alike).

`int8_quant`, `int8_matmul_triton` and `int8_matmul_wgmma` build their kernels
from these pieces; none of them is a kernel itself. Also here: `Tile`, the
block shape of the elementwise and row-reduction kernels, and the host-computed
reciprocal tables that the quantization kernels take their scales from.

Rounding: Triton lowers no round-half-even primitive, so `round_half_even` is
built from `floor` and comparisons. Nothing but comparisons consumes a product
that must stay rounded, since the GPU compiler contracts a multiply feeding an
add into an FMA (with `q - floor(q)`, ties would be decided on the unrounded
product).

NaN: Triton's max/min drop NaN operands (maxnumf) instead of propagating them,
so NaN is tested separately (`clip_nan`, `any_nan_max`) wherever it must
survive a reduction or become code 0.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from fp8mm import reference
from fp8mm.pallas import _backend

__all__ = [
    "Tile",
    "absmax_bits",
    "and_masks",
    "any_nan_max",
    "bias_mode_of",
    "clip_nan",
    "dequant_math",
    "f16_or_wide",
    "is_even",
    "masked_load",
    "next_pow2",
    "quant_scale",
    "range_mask",
    "reciprocal",
    "reduce_any",
    "round_half_even",
    "to_int8",
    "to_int8_rn",
]

_F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class Tile:
    """The block of a 2-D array that one program of an elementwise or row kernel owns.

    Rows and columns are those of the array the kernel reads; each kernel's
    heuristic (`choose_*_config`) says what they are for it (for example the
    [k, n] weight of the quantize-transpose kernel: `block_rows` tiles k).

    Attributes:
      block_rows: rows of the block, a power of two (Triton blocks are).
      block_cols: columns of the block, a power of two.
      num_warps: Triton warps per program, a power of two.
    """

    block_rows: int
    block_cols: int
    num_warps: int = 4

    def __post_init__(self):
        for name in ("block_rows", "block_cols", "num_warps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 or v & (v - 1):
                raise ValueError(f"Tile.{name} must be a positive power of two, got {v!r}")


def next_pow2(x: int) -> int:
    """Smallest power of two >= x (Triton blocks must be powers of two)."""
    return 1 << max(0, int(x) - 1).bit_length()


# ----------------------------------------------------------------------------
# Rounding, NaN, float16 casts
# ----------------------------------------------------------------------------


def is_even(x: jax.Array) -> jax.Array:
    half = x * 0.5
    return jnp.floor(half) == half


def round_half_even(q: jax.Array) -> jax.Array:
    # Triton lowers no round primitive. Only comparisons may consume q: with
    # `q - floor(q)` LLVM would contract the product that made q into an FMA
    # and decide ties on the unrounded product.
    f = jnp.floor(q)
    h = f + 0.5
    up = (q > h) | ((q == h) & ~is_even(f))
    return jnp.where(up, f + 1.0, f)


def clip_nan(q: jax.Array) -> jax.Array:
    # NaN first: Triton's max/min drop NaN operands (maxnumf) instead of propagating.
    # [-127, 127]: no code is ever -128, even for an infinite quotient.
    q = jnp.where(q != q, 0.0, q)
    return jnp.minimum(jnp.maximum(q, -127.0), 127.0)


def to_int8(q: jax.Array) -> jax.Array:
    """CUDA's float->int8 of round-half-even(q): NaN -> 0, saturating at ±127."""
    # Clipping before rounding gives the same integers as after, and keeps
    # floor() away from infinities.
    return round_half_even(clip_nan(q)).astype(jnp.int8)


def to_int8_rn(q: jax.Array, interpret: bool) -> jax.Array:
    """`to_int8(q)` by one `cvt.rni.s32.f32` when compiled (round half to even, NaN -> 0).

    A dozen fewer instructions an element than `round_half_even`, which is what
    keeps the single-pass row kernels near copy bandwidth.
    """
    if interpret:
        return to_int8(q)
    [r] = _backend.elementwise_inline_asm(
        "cvt.rni.s32.f32 $0, $1;",
        args=[q],
        constraints="=r,f",
        pack=1,
        result_shape_dtypes=[jax.ShapeDtypeStruct(q.shape, jnp.int32)],
    )
    return jnp.minimum(jnp.maximum(r, -127), 127).astype(jnp.int8)


def absmax_bits(x: jax.Array, axis) -> jax.Array:
    """max |x| along `axis`, NaN where a NaN is reduced over, in one integer reduction.

    The bits of a non-negative float32 order as int32 exactly as the floats do,
    and every NaN's bits lie above inf's, so an integer max keeps NaN (a float
    max in Triton drops it) without a second reduction. x must not be empty.
    """
    bits = jax.lax.bitcast_convert_type(jnp.abs(x), jnp.int32)
    return jax.lax.bitcast_convert_type(jnp.max(bits, axis=axis), jnp.float32)


def f16_or_wide(x: jax.Array, dtype) -> jax.Array:
    """`reference.f16_or_wide` of a float32 tile loaded from a `dtype` array."""
    r = x.astype(jnp.float16).astype(_F32)
    if np.dtype(dtype) == np.dtype(jnp.float16):
        return r
    big = (x >= reference.F16_OVERFLOW) | (x <= -reference.F16_OVERFLOW)
    return jnp.where(big, x, r)


def reduce_any(mask: jax.Array, axis: int) -> jax.Array:
    """1 where `mask` holds along `axis`, else 0 (int32: Triton lowers no boolean reductions)."""
    return jnp.max(mask.astype(jnp.int32), axis=axis)


def any_nan_max(a: jax.Array, axis: int) -> jax.Array:
    """max of non-negative a along axis, NaN where a NaN is reduced over.

    Triton's max drops NaN operands, so the NaN test is a separate int32 reduction.
    """
    nan = a != a
    m = jnp.max(jnp.where(nan, 0.0, a), axis=axis)
    return jnp.where(reduce_any(nan, axis) > 0, np.float32(np.nan), m)


# ----------------------------------------------------------------------------
# Masks and loads
# ----------------------------------------------------------------------------


def range_mask(start, size: int, limit: int, needed: bool):
    """Mask of the valid indices of a block, or None when the block never overhangs."""
    if not needed:
        return None
    return start + jnp.arange(size) < limit


def masked_load(ref, mask, other):
    # Triton rejects `other` on an unmasked load.
    return _backend.load(ref, mask=mask, other=None if mask is None else other)


def and_masks(rows, cols):
    """The 2-D mask of a row mask and a column mask (either may be None: all valid)."""
    if rows is None and cols is None:
        return None
    if rows is None:
        return cols[None, :]
    if cols is None:
        return rows[:, None]
    return rows[:, None] & cols[None, :]


# ----------------------------------------------------------------------------
# The dequant epilogue
# ----------------------------------------------------------------------------


def bias_mode_of(bias) -> str | None:
    """How the epilogue adds `bias`: None (no bias), "fused" or "after"."""
    if bias is None:
        return None
    # A float16 bias joins the one rounding (fmaf in CUDA); others are added
    # to the float16 result, as bitsandbytes does.
    return "fused" if np.dtype(bias.dtype) == np.dtype(jnp.float16) else "after"


def elementwise_tile(m: int, k: int, max_cols: int) -> Tile:
    """One [block_rows, block_cols] tile of an [m, k] array a program: at most `max_cols`
    wide and 8192 elements."""
    block_cols = min(max_cols, next_pow2(k))
    return Tile(min(next_pow2(m), 8192 // block_cols), block_cols)


def elementwise_tile_space(m: int, k: int, widths: tuple[int, ...]) -> tuple[Tile, ...]:
    """Tiles of 4096 to 16384 elements of the given widths, on 4 or 8 warps."""
    pm, pk = next_pow2(m), next_pow2(k)
    space = {}
    for cols in widths:
        for elements in (4096, 8192, 16384):
            for warps in (4, 8):
                c = min(cols, pk)
                space[Tile(min(pm, elements // c), c, warps)] = None
    return tuple(space)


def epilogue_operands(row_stats, col_stats, bias, direct: bool = False) -> tuple:
    """(row [m], col [n], bias [n] | None) in float32 for the kernels, and the bias mode.

    direct: the SwitchBack paper's epilogue (`reference.scaled_values`), where any
    bias joins the float32 sum before the one rounding.
    """
    f32 = jnp.float32
    bias32 = None if bias is None else bias.astype(f32)
    mode = ("fused" if bias is not None else None) if direct else bias_mode_of(bias)
    return row_stats.reshape(-1).astype(f32), col_stats.astype(f32), bias32, mode


def dequant_math(acc, row, col, bias, *, bias_mode: str | None, out_dtype, direct: bool = False):
    """reference.int8_mm_dequant (direct: reference.scaled_values) on one tile, in the
    same operation order.

    row, col and bias are float32 and broadcast against acc ([bm, 1] and [1, bn]
    in the Triton kernels, whole tiles in the Mosaic GPU kernel, whose layouts
    broadcast explicitly).
    """
    t = acc.astype(_F32) * row
    t = t * col
    t = t * reference.MM_DEQUANT_CONST
    if direct:
        # One rounding from float32: no float16 step to lose bf16 range or tiny values.
        return (t if bias_mode is None else t + bias).astype(out_dtype)
    if bias_mode == "fused":
        t = t + bias
    if np.dtype(out_dtype) == np.dtype(jnp.float16):
        out = t.astype(jnp.float16)
        if bias_mode == "after":
            out = (out.astype(_F32) + bias).astype(jnp.float16)
        return out
    # A wider output keeps values beyond float16 range (reference.dequant_values).
    # Through float32 (exact) rounds as a direct cast; Mosaic GPU has no f16 -> bf16.
    out = f16_or_wide(t, out_dtype)
    if bias_mode == "after":
        out = f16_or_wide(out + bias, out_dtype)
    return out.astype(out_dtype)


# ----------------------------------------------------------------------------
# Scales from host tables (computed in XLA, passed to the kernels)
# ----------------------------------------------------------------------------


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


def quant_scale(stats: jax.Array) -> jax.Array:
    """127 * (1/stats) with a correctly rounded reciprocal, as the reference."""
    wide = stats > _F16_MAX
    return jnp.where(wide, reference.row_scale(stats), _lookup(_reciprocal_tables()[1], stats))


def reciprocal(stats: jax.Array) -> jax.Array:
    """1/stats, correctly rounded (inf for 0)."""
    wide = stats > _F16_MAX
    return jnp.where(wide, np.float32(1.0) / stats, _lookup(_reciprocal_tables()[0], stats))
