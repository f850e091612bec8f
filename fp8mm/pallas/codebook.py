"""Pallas GPU kernels for codebook quantization (blockwise and global), bit-exact.

Every public function takes the arguments of its `fp8mm.reference` namesake plus
`interpret` and returns bit-identical results (codes, absmax, dequantized values).

Nearest code without a binary search. bitsandbytes walks 7 steps of a binary
search from pivot 127 and then compares with one float32 midpoint. For a sorted
code that walk depends on x only through c = #{i : code[i] < x}: the compared
pivots are the odd indices 1..253 (a perfect search tree), so the final pivot is
p = min(c & ~1, 254), its bracketing neighbours are p - 1 and p + 1, and
x > code[p] exactly when p < c. The kernels therefore find c, then gather only
code[p] and the neighbour on the side of x, and repeat bitsandbytes' midpoint
comparison. c is found with a lookup table over the top bits of x's float32:
a monotone integer key (sign-magnitude, so -0.0 and +0.0 share a key) cut into
2**14 buckets of 1/64 binade in (-2, 2), the end buckets catching everything
beyond. Each table entry holds c at the bucket's low end; when the bucket holds
at most one code, one comparison with that code finishes c (the "fast" path:
one table gather plus three adjacent code gathers, all cache hits, no dependent
chain of gathers). Tables of the fp8 grids and of the dynamic map never hold
two codes in a bucket; for any other sorted code, a tile that meets a crowded
bucket switches to an exact 8-step lower-bound search (same results, slower).

The crowded flags come from float comparisons with the bucket bounds, so they
follow the backend's comparison semantics (XLA on CPU flushes subnormals) just
as the kernel's own comparisons do.

Exactness on the GPU. Triton lowers float `/` to the approximate `div.full.f32`,
so the kernels use `rcp.rn.f32` / `div.rn.f32` (IEEE, correctly rounded, as the
reference computes on CPU) through inline assembly when compiled, and plain jnp
division when interpreted. Note that XLA on a GPU does NOT round `1.0 / x`
correctly (measured on an H100: it matches bitsandbytes' fast-math reciprocal
instead), so the reference run on a GPU differs from these kernels on ~0.03% of
bf16 codes; the CPU reference is the oracle. No expression has the a*b+c form that FMA
contraction could change: the midpoint is (a+b)*0.5, the scale x*r.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from fp8mm import _checks
from fp8mm.pallas import Kernel, _backend
from fp8mm.pallas._backend import pallas_call
from fp8mm.state import QuantState

__all__ = [
    "KERNELS",
    "TileConfig",
    "choose_tiles",
    "dequantize",
    "dequantize_blockwise",
    "fake_quant_blockwise",
    "fake_quant_global",
    "quantize",
    "quantize_blockwise",
]

# Bucket table: key >> _SHIFT keeps the sign, 8 exponent bits and 6 mantissa bits.
_SHIFT = 17
_NUM_BUCKETS = 1 << 14
# Buckets are offset so that key 0 (both zeros) is the LAST key of its bucket: a
# code of +-0 then never counts as "below x" for an x in the zero bucket, and the
# two zeros of the fp8 grids do not crowd it.
_KEY_BIAS = (1 << _SHIFT) - 1
_BUCKET_OFFSET = 8191
_CROWDED = 512  # table flag: this bucket holds two or more codes
_MAX_ELEMENTS = 2**31 - 2**16  # flat int32 indexing inside the kernels


# ----------------------------------------------------------------------------
# Tiling
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TileConfig:
    """The tile one program handles: `rows` x `cols` elements of the flat tensor.

    Attributes:
      rows: rows per program (blockwise: quantization blocks per program).
      cols: elements per row (blockwise: the blocksize).
      num_warps: Triton warps per program.
    """

    rows: int
    cols: int
    num_warps: int

    @property
    def size(self) -> int:
        return self.rows * self.cols


def choose_tiles(blocksize: int | None) -> TileConfig:
    """Tile heuristic for every kernel of this module.

    Measured on an H100 (bf16 fake-quant, 8192x4096): 2048-4096 elements per
    program with 4 warps beat larger tiles and more warps by 10-40%; many small
    programs per SM hide the latency of the table and code gathers.

    Args:
      blocksize: the quantization blocksize, or None for global quantization
        (no row structure: any row width serves).
    """
    cols = 1024 if blocksize is None else blocksize
    size = max(cols, 2048)
    return TileConfig(rows=size // cols, cols=cols, num_warps=4)


# ----------------------------------------------------------------------------
# Bucket table
# ----------------------------------------------------------------------------


@functools.cache
def _bucket_bounds() -> tuple[np.ndarray, np.ndarray]:
    """float32 [lowest, highest] value of every bucket (ends are -inf / +inf)."""
    j = np.arange(_NUM_BUCKETS, dtype=np.int64) - _BUCKET_OFFSET

    def key_to_float(key):
        mag = np.abs(key).astype(np.uint32)
        bits = np.where(key < 0, mag | np.uint32(0x80000000), mag).astype(np.uint32)
        return bits.view(np.float32)

    lo = key_to_float((j - 1) * (1 << _SHIFT) + 1)
    hi = key_to_float(j * (1 << _SHIFT))
    lo[0], hi[-1] = -np.inf, np.inf
    return lo, hi


def _bucket_table(code: jax.Array) -> jax.Array:
    """int32 [2**14]: #codes below the bucket, plus _CROWDED if it holds >= 2 codes."""
    lo, hi = _bucket_bounds()
    below_lo = jnp.sum(code[None, :] < lo[:, None], axis=1, dtype=jnp.int32)
    below_hi = jnp.sum(code[None, :] < hi[:, None], axis=1, dtype=jnp.int32)
    return below_lo + jnp.where(below_hi - below_lo > 1, _CROWDED, 0)


# ----------------------------------------------------------------------------
# In-kernel helpers
# ----------------------------------------------------------------------------


def _recip(x: jax.Array, interpret: bool) -> jax.Array:
    """Correctly rounded float32 1/x (inf for 0)."""
    if interpret:
        return np.float32(1.0) / x
    [r] = _backend.elementwise_inline_asm(
        "rcp.rn.f32 $0, $1;",
        args=[x],
        constraints="=f,f",
        pack=1,
        result_shape_dtypes=[jax.ShapeDtypeStruct(x.shape, jnp.float32)],
    )
    return r


def _div(x: jax.Array, y: jax.Array, interpret: bool) -> jax.Array:
    """Correctly rounded float32 x / y (x and y of one shape)."""
    if interpret:
        return x / y
    [r] = _backend.elementwise_inline_asm(
        "div.rn.f32 $0, $1, $2;",
        args=[x, y],
        constraints="=f,f,f",
        pack=1,
        result_shape_dtypes=[jax.ShapeDtypeStruct(x.shape, jnp.float32)],
    )
    return r


def _tile_offsets(cfg: TileConfig, n: int) -> tuple[jax.Array, jax.Array]:
    """(offsets within the program's tile, in-bounds mask), both [rows, cols]."""
    local = lax.broadcasted_iota(
        jnp.int32, (cfg.rows, cfg.cols), 0
    ) * cfg.cols + lax.broadcasted_iota(jnp.int32, (cfg.rows, cfg.cols), 1)
    return local, pl.program_id(0) * cfg.size + local < n


def _row_mask(cfg: TileConfig, nrows: int) -> tuple[jax.Array, jax.Array]:
    local = lax.broadcasted_iota(jnp.int32, (cfg.rows,), 0)
    return local, pl.program_id(0) * cfg.rows + local < nrows


def _nearest_code(x: jax.Array, code_ref, table_ref) -> tuple[jax.Array, jax.Array]:
    """bitsandbytes' nearest code of normalised float32 x: (index int32, code value)."""
    is_nan = x != x
    bits = lax.bitcast_convert_type(x, jnp.int32)
    # Clamped so that NaN payloads cannot overflow the biased key below.
    mag = jnp.minimum(bits & 0x7FFFFFFF, 0x7F800000)
    key = jnp.where(bits < 0, -mag, mag)
    bucket = jnp.clip(((key + _KEY_BIAS) >> _SHIFT) + _BUCKET_OFFSET, 0, _NUM_BUCKETS - 1)
    entry = table_ref[bucket]
    # NaN fails every comparison in bitsandbytes' search and ends at index 0.
    entry = jnp.where(is_nan, 0, entry)
    crowded = jnp.max(entry >> 9) > 0

    def exact_count():
        # Branchless lower bound: c = #{i : code[i] < x}.
        c = jnp.zeros(x.shape, jnp.int32)
        for step in (128, 64, 32, 16, 8, 4, 2, 1):
            c = jnp.where(code_ref[c + (step - 1)] < x, c + step, c)
        return jnp.where((c == 255) & (code_ref[jnp.full(x.shape, 255, jnp.int32)] < x), 256, c)

    def finish(count: jax.Array, may_step: bool):
        # c is `count`, or count + 1 when `may_step` and x lies above code[count].
        cw = jnp.minimum(count, 255)
        w_lo = code_ref[jnp.maximum(cw - 1, 0)]
        w_at = code_ref[cw]
        w_hi = code_ref[jnp.minimum(cw + 1, 255)]
        step = (count < 256) & (x > w_at) if may_step else jnp.zeros(x.shape, bool)
        odd = (count & 1) == 1
        top = count >= 255
        # Final pivot p, whether x > code[p], and the neighbour bnb compares against.
        p = jnp.where(top, 254, jnp.where(odd, jnp.where(step, count + 1, count - 1), count))
        above = jnp.where(top, True, jnp.where(odd, ~step, step))
        val = jnp.where(top, w_lo, jnp.where(odd, jnp.where(step, w_hi, w_lo), w_at))
        nb = jnp.where(top | odd, w_at, jnp.where(step, w_hi, w_lo))
        nb_idx = jnp.where(
            top, 255, jnp.where(odd, count, jnp.where(step, count + 1, jnp.maximum(count - 1, 0)))
        )
        mid = (nb + val) * np.float32(0.5)
        take = jnp.where(above, x > mid, x < mid)
        return jnp.where(take, nb_idx, p), jnp.where(take, nb, val)

    return lax.cond(
        crowded,
        lambda: finish(exact_count(), False),
        lambda: finish(entry & (_CROWDED - 1), True),
    )


# ----------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------


def _blockwise_kernel(
    x_ref, code_ref, table_ref, out_ref, absmax_ref, *, cfg, n, nblocks, fake, interpret
):
    offs, valid = _tile_offsets(cfg, n)
    x = _backend.load(x_ref.at[offs], mask=valid, other=0).astype(jnp.float32)
    # CUDA's fmaxf drops NaN, so NaN never becomes the absmax.
    absmax = jnp.max(jnp.where(x != x, 0.0, jnp.abs(x)), axis=1)
    # 0 -> inf, and 0 * inf = NaN -> code 0, as on CUDA.
    scaled = x * _recip(absmax, interpret)[:, None]
    q, val = _nearest_code(scaled, code_ref, table_ref)
    if fake:
        out = (val * absmax[:, None]).astype(out_ref.dtype)
    else:
        out = q.astype(jnp.uint8)
    _backend.store(out_ref.at[offs], out, mask=valid)
    if absmax_ref is not None:
        rows, row_valid = _row_mask(cfg, nblocks)
        _backend.store(absmax_ref.at[rows], absmax, mask=row_valid)


def _global_kernel(x_ref, absmax_ref, code_ref, table_ref, out_ref, *, cfg, n, fake, interpret):
    offs, valid = _tile_offsets(cfg, n)
    x = _backend.load(x_ref.at[offs], mask=valid, other=0).astype(jnp.float32)
    absmax = jnp.broadcast_to(absmax_ref[0], x.shape)
    # Global quantization divides (torch `A / absmax`); only blockwise multiplies.
    q, val = _nearest_code(_div(x, absmax, interpret), code_ref, table_ref)
    if fake:
        out = (val * absmax).astype(out_ref.dtype)
    else:
        out = q.astype(jnp.uint8)
    _backend.store(out_ref.at[offs], out, mask=valid)


def _dequant_kernel(q_ref, absmax_ref, code_ref, out_ref, *, cfg, n, nscales, per_row):
    offs, valid = _tile_offsets(cfg, n)
    q = _backend.load(q_ref.at[offs], mask=valid, other=0).astype(jnp.int32)
    if not per_row:
        scale = absmax_ref[0]
    else:
        rows, row_valid = _row_mask(cfg, nscales)
        scale = _backend.load(absmax_ref.at[rows], mask=row_valid, other=0)[:, None]
    out = (code_ref[q] * scale).astype(out_ref.dtype)
    _backend.store(out_ref.at[offs], out, mask=valid)


# ----------------------------------------------------------------------------
# pallas_call plumbing (jitted; shapes and flags static)
# ----------------------------------------------------------------------------


def _whole(size: int) -> pl.BlockSpec:
    return pl.BlockSpec((size,), lambda i: (0,))


def _tiled(size: int) -> pl.BlockSpec:
    return pl.BlockSpec((size,), lambda i: (i,))


@functools.partial(jax.jit, static_argnames=("blocksize", "fake", "interpret"))
def _blockwise_call(A, code, blocksize, fake, interpret):
    cfg = choose_tiles(blocksize)
    n = A.size
    nblocks = -(-n // blocksize)
    grid = -(-n // cfg.size)
    out_q = jax.ShapeDtypeStruct((n,), A.dtype if fake else jnp.uint8)
    out_shape = [out_q] if fake else [out_q, jax.ShapeDtypeStruct((nblocks,), jnp.float32)]
    out_specs = [_tiled(cfg.size)] if fake else [_tiled(cfg.size), _tiled(cfg.rows)]
    kernel = functools.partial(
        _blockwise_kernel, cfg=cfg, n=n, nblocks=nblocks, fake=fake, interpret=interpret
    )
    if fake:
        kernel = functools.partial(kernel, absmax_ref=None)
    outs = pallas_call(
        kernel,
        name="fake_quant_blockwise" if fake else "quantize_blockwise",
        interpret=interpret,
        num_warps=cfg.num_warps,
        grid=(grid,),
        in_specs=[_tiled(cfg.size), _whole(256), _whole(_NUM_BUCKETS)],
        out_specs=out_specs,
        out_shape=out_shape,
    )(A.reshape(-1), code, _bucket_table(code))
    return outs[0].reshape(A.shape), (None if fake else outs[1])


@functools.partial(jax.jit, static_argnames=("fake", "interpret"))
def _global_call(A, code, fake, interpret):
    a = A.astype(jnp.float32)
    absmax = jnp.max(jnp.where(jnp.isnan(a), 0.0, jnp.abs(a)), initial=0.0)
    cfg = choose_tiles(None)
    n = A.size
    kernel = functools.partial(_global_kernel, cfg=cfg, n=n, fake=fake, interpret=interpret)
    [out] = pallas_call(
        kernel,
        name="fake_quant_global" if fake else "quantize_global",
        interpret=interpret,
        num_warps=cfg.num_warps,
        grid=(-(-n // cfg.size),),
        in_specs=[_tiled(cfg.size), _whole(1), _whole(256), _whole(_NUM_BUCKETS)],
        out_specs=[_tiled(cfg.size)],
        out_shape=[jax.ShapeDtypeStruct((n,), A.dtype if fake else jnp.uint8)],
    )(A.reshape(-1), absmax.reshape(1), code, _bucket_table(code))
    return out.reshape(A.shape), absmax


@functools.partial(jax.jit, static_argnames=("blocksize", "dtype", "interpret"))
def _dequant_call(q, absmax, code, blocksize, dtype, interpret):
    cfg = choose_tiles(blocksize)
    n = q.size
    nscales = absmax.size
    kernel = functools.partial(
        _dequant_kernel, cfg=cfg, n=n, nscales=nscales, per_row=blocksize is not None
    )
    scale_spec = _whole(1) if blocksize is None else _tiled(cfg.rows)
    [out] = pallas_call(
        kernel,
        name="dequantize_blockwise" if blocksize else "dequantize_global",
        interpret=interpret,
        num_warps=cfg.num_warps,
        grid=(-(-n // cfg.size),),
        in_specs=[_tiled(cfg.size), scale_spec, _whole(256)],
        out_specs=[_tiled(cfg.size)],
        out_shape=[jax.ShapeDtypeStruct((n,), dtype)],
    )(q.reshape(-1), absmax.reshape(-1), code)
    return out.reshape(q.shape)


# ----------------------------------------------------------------------------
# Public wrappers
# ----------------------------------------------------------------------------


def _check_input(A, code) -> None:
    _checks.check_float("A", A)
    _checks.check_code(code)
    if A.size > _MAX_ELEMENTS:
        raise ValueError(f"A has {A.size} elements; the kernels index at most {_MAX_ELEMENTS}")


def _check_state(q, state, *, blockwise: bool) -> None:
    if not isinstance(state, QuantState):
        raise TypeError(f"state must be a QuantState, got {type(state).__name__}")
    _checks.check_dtype("q", q, jnp.uint8)
    if tuple(q.shape) != state.shape:
        raise ValueError(f"q has shape {tuple(q.shape)} but state.shape is {state.shape}")
    if blockwise != (state.blocksize is not None):
        want = "quantize_blockwise()" if blockwise else "quantize()"
        raise ValueError(f"state.blocksize={state.blocksize!r} does not come from {want}")
    _checks.check_code(state.code)
    if q.size > _MAX_ELEMENTS:
        raise ValueError(f"q has {q.size} elements; the kernels index at most {_MAX_ELEMENTS}")


def quantize_blockwise(
    A: jax.Array, code: jax.Array, blocksize: int = 4096, *, interpret: bool = False
) -> tuple[jax.Array, QuantState]:
    """Blockwise codebook quantization, bit-exact with `reference.quantize_blockwise`.

    Args:
      A: float32/float16/bfloat16 array of any shape, flattened row-major into
        blocks of `blocksize` (the last may be partial).
      code: float32 [256] sorted codebook.
      blocksize: power of two in [32, 4096].
      interpret: run the kernel in Pallas interpret mode (CPU).

    Returns:
      (q, state): uint8 codes of A's shape; state.absmax float32 [ceil(A.size / blocksize)].
    """
    _check_input(A, code)
    blocksize = _checks.check_blocksize(blocksize)
    nblocks = -(-A.size // blocksize)
    if A.size == 0:
        q, absmax = jnp.zeros(A.shape, jnp.uint8), jnp.zeros((nblocks,), jnp.float32)
    else:
        q, absmax = _blockwise_call(A, code, blocksize, False, bool(interpret))
    return q, QuantState(absmax, code, blocksize, A.dtype, A.shape)


def dequantize_blockwise(q: jax.Array, state: QuantState, *, interpret: bool = False) -> jax.Array:
    """code[q] * absmax[block] in state.dtype, bit-exact with `reference.dequantize_blockwise`.

    Args:
      q: uint8 codes of shape state.shape.
      state: blockwise QuantState (absmax float32 [num_blocks]).
      interpret: run the kernel in Pallas interpret mode.

    Returns:
      Array of shape state.shape and dtype state.dtype.
    """
    _check_state(q, state, blockwise=True)
    if q.size == 0:
        return jnp.zeros(q.shape, state.dtype)
    return _dequant_call(q, state.absmax, state.code, state.blocksize, state.dtype, bool(interpret))


def fake_quant_blockwise(
    A: jax.Array, code: jax.Array, blocksize: int, *, interpret: bool = False
) -> jax.Array:
    """Blockwise quantize then dequantize in one pass over A (A read once, result in A's dtype).

    Bit-exact with `reference.fake_quant_blockwise`; same arguments as
    `quantize_blockwise`. Returns an array of A's shape and dtype.
    """
    _check_input(A, code)
    blocksize = _checks.check_blocksize(blocksize)
    if A.size == 0:
        return jnp.zeros(A.shape, A.dtype)
    return _blockwise_call(A, code, blocksize, True, bool(interpret))[0]


def quantize(
    A: jax.Array, code: jax.Array, *, interpret: bool = False
) -> tuple[jax.Array, QuantState]:
    """Global codebook quantization (x / absmax in float32), bit-exact with `reference.quantize`.

    The absmax is an XLA reduction before the kernel.

    Args:
      A: float32/float16/bfloat16 array of any shape.
      code: float32 [256] sorted codebook.
      interpret: run the kernel in Pallas interpret mode.

    Returns:
      (q, state): uint8 codes of A's shape; state.absmax a float32 scalar, state.dtype float32.
    """
    _check_input(A, code)
    if A.size == 0:
        q, absmax = jnp.zeros(A.shape, jnp.uint8), jnp.zeros((), jnp.float32)
    else:
        q, absmax = _global_call(A, code, False, bool(interpret))
    return q, QuantState(absmax, code, None, jnp.float32, A.shape)


def dequantize(q: jax.Array, state: QuantState, *, interpret: bool = False) -> jax.Array:
    """float32 code[q] * absmax for a globally quantized tensor (q's shape)."""
    _check_state(q, state, blockwise=False)
    if q.size == 0:
        return jnp.zeros(q.shape, jnp.float32)
    return _dequant_call(q, state.absmax, state.code, None, np.dtype(np.float32), bool(interpret))


def fake_quant_global(A: jax.Array, code: jax.Array, *, interpret: bool = False) -> jax.Array:
    """`dequantize(*quantize(A, code))` cast to A's dtype, the kernel part in one pass."""
    _check_input(A, code)
    if A.size == 0:
        return jnp.zeros(A.shape, A.dtype)
    return _global_call(A, code, True, bool(interpret))[0]


# ----------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------


def _too_large(*args) -> str | None:
    x = args[0]
    size = math.prod(getattr(x, "shape", ()))
    if size > _MAX_ELEMENTS:
        return f"{size} elements exceed the kernels' int32 indexing ({_MAX_ELEMENTS})"
    return None


KERNELS: dict[str, Kernel] = {
    "quantize_blockwise": Kernel(quantize_blockwise, _too_large),
    "dequantize_blockwise": Kernel(dequantize_blockwise, _too_large),
    "fake_quant_blockwise": Kernel(fake_quant_blockwise, _too_large),
    "quantize": Kernel(quantize, _too_large),
    "dequantize": Kernel(dequantize, _too_large),
    "fake_quant_global": Kernel(fake_quant_global, _too_large),
}
