"""Pure-jnp reference of every fp8mm primitive: the test oracle and the XLA path.

Each function reproduces the arithmetic of bitsandbytes 0.49.2 on CUDA step by
step (docs/exactness.md), so finite inputs agree bit for bit with the golden outputs:

* codebook quantization finds codes with the same 7-step binary search and
  midpoint comparisons as bitsandbytes' `dQuantize`; blockwise quantization
  multiplies by the float32 reciprocal of the block absmax, global
  quantization divides by the absmax;
* int8 row quantization scales by 127/absmax and rounds half to even, column
  quantization rounds `(A*127 in float16) / col_absmax` as PyTorch does;
* the int8 dequant computes ((acc*row)*col)*1/127² (+ bias) in float32 and
  rounds once to float16.

The deliberate deviations (docs/exactness.md): a NaN makes its block's (row's,
column's) scale NaN instead of vanishing; int8 column codes where torch's
float16 product overflows are the intended round(127x/col_absmax); int8 inputs
beyond float16 range are quantized from their own dtype; block maxima above
2**126 are prescaled so their reciprocal is not flushed.

Arguments are validated by the public wrappers in `fp8mm.functional`; these
functions assume well-formed input. Each is jitted (configuration arguments
static), so eager calls compile one fused program per shape.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from fp8mm import _host
from fp8mm.state import QuantState

# 1/127**2 as the CUDA kernel spells it (MM_DEQUANT_CONST).
MM_DEQUANT_CONST = np.float32(6.200012400024800e-05)


# ----------------------------------------------------------------------------
# Codebook quantization
# ----------------------------------------------------------------------------


@jax.jit
def nearest_code(x: jax.Array, code: jax.Array) -> jax.Array:
    """Index of the code nearest to each element, as bitsandbytes' `dQuantize`.

    A 7-step binary search from pivot 127, then a comparison with the midpoint
    (computed in float32) towards the bracketing neighbour. NaN walks down to
    index 0, as on CUDA where every ordered comparison with NaN is false.

    Args:
      x: float32 array of normalised values (nominally in [-1, 1]).
      code: float32 [256] sorted codebook.

    Returns:
      uint8 array with x's shape.
    """
    return bnb_search(x.astype(jnp.float32), code.astype(jnp.float32)).astype(jnp.uint8)


def bnb_search(x: jax.Array, code) -> jax.Array:
    """`nearest_code` as int32, for a float32 x and anything indexable like a [256] array.

    Only `code[int]` and `code[int32 array]` are used, so the Pallas kernels pass
    their codebook Ref and run the very same search in their exact fallback.
    """
    pivot = jnp.full(x.shape, 127, jnp.int32)
    lower_p = jnp.zeros(x.shape, jnp.int32)
    upper_p = jnp.full(x.shape, 255, jnp.int32)
    lower = jnp.full(x.shape, -1.0, jnp.float32)
    upper = jnp.full(x.shape, 1.0, jnp.float32)
    val = jnp.broadcast_to(code[127], x.shape)
    for step in (64, 32, 16, 8, 4, 2, 1):
        gt = x > val
        lower_p = jnp.where(gt, pivot, lower_p)
        lower = jnp.where(gt, val, lower)
        upper_p = jnp.where(gt, upper_p, pivot)
        upper = jnp.where(gt, upper, val)
        pivot = jnp.where(gt, pivot + step, pivot - step)
        val = code[pivot]
    upper = jnp.where(upper_p == 255, code[255], upper)
    lower = jnp.where(lower_p == 0, code[0], lower)
    gt = x > val
    up = jnp.where(x > (upper + val) * np.float32(0.5), upper_p, pivot)
    down = jnp.where(x < (lower + val) * np.float32(0.5), lower_p, pivot)
    return jnp.where(gt, up, down)


def _div(x: jax.Array, y: jax.Array) -> jax.Array:
    """Correctly rounded x / y, y broadcast against x.

    XLA's algebraic simplifier turns a division by a broadcast into a
    multiplication by the reciprocal, which is off by an ulp at exact ties (a
    6.5 can become 6.5000005 and round to 7). The optimization barrier hides
    the broadcast, so a real division is emitted.
    """
    return x / jax.lax.optimization_barrier(jnp.broadcast_to(y, x.shape))


def absmax_nan(x: jax.Array, axis=None) -> jax.Array:
    """max |x| along `axis` (0 when empty), NaN where a NaN is reduced over.

    bitsandbytes' CUDA kernels reduce with fmaxf, which drops NaN, so a NaN
    input comes out of its matmuls as a finite number. fp8mm deviates on
    purpose: a NaN makes its block's (row's) scale NaN and so reaches every
    value it touches. The NaN test is explicit because XLA's max does not
    propagate NaN for every shape on every backend.
    """
    nan = jnp.isnan(x)
    m = jnp.max(jnp.where(nan, 0.0, jnp.abs(x)), axis=axis, initial=0.0)
    return jnp.where(jnp.any(nan, axis=axis), np.float32(np.nan), m).astype(jnp.float32)


# Above 2**126 the float32 reciprocal is subnormal, which GPUs and XLA's CPU runtime flush
# to zero: those scales are taken through a power-of-two prescale instead.
BIG_ABSMAX = np.float32(2.0**126)
_PRESCALE = np.float32(2.0**-64)


def block_prescale(absmax: jax.Array) -> jax.Array:
    """1 for ordinary absmax, 2**-64 for absmax >= 2**126 (exact powers of two)."""
    return jnp.where(absmax >= BIG_ABSMAX, _PRESCALE, np.float32(1.0))


def normalise_blocks(blocks: jax.Array, absmax: jax.Array) -> jax.Array:
    """blocks * (1/absmax) per row, as CUDA does, without a flushed subnormal reciprocal.

    (x*s) * (1/(absmax*s)) with s a power of two: s = 1 gives bitsandbytes' product
    bit for bit; s = 2**-64 keeps the reciprocal of a huge absmax normal.
    """
    s = block_prescale(absmax)
    # CUDA multiplies by the float32 reciprocal (0 -> inf, and 0*inf = NaN -> code 0).
    return (blocks * s[:, None]) * (np.float32(1.0) / (absmax * s))[:, None]


def row_scale(stats: jax.Array) -> jax.Array:
    """127 * (1/stats) (bitsandbytes' int8 row scale), prescaled for stats >= 2**126."""
    s = block_prescale(stats)
    return (np.float32(127.0) * s) * (np.float32(1.0) / (stats * s))


def _blocks(A: jax.Array, blocksize: int) -> jax.Array:
    """A flattened row-major into float32 rows of `blocksize`, zero-padded."""
    flat = A.reshape(-1).astype(jnp.float32)
    n = flat.shape[0]
    nblocks = -(-n // blocksize)
    return jnp.pad(flat, (0, nblocks * blocksize - n)).reshape(nblocks, blocksize)


@functools.partial(jax.jit, static_argnames=("blocksize",))
def quantize_blockwise(
    A: jax.Array, code: jax.Array, blocksize: int = 4096, absmax=None
) -> tuple[jax.Array, QuantState]:
    """Blockwise codebook quantization (bitsandbytes `quantize_blockwise`).

    Args:
      A: float32/float16/bfloat16 array of any shape.
      code: float32 [256] codebook.
      blocksize: elements per block of the row-major flattened A.
      absmax: float32 [ceil(A.size / blocksize)] to scale the blocks by instead
        of their own (pieces of blocks that span devices pass the whole blocks'
        absmax); None: each block's own.

    Returns:
      (q, state): uint8 codes with A's shape; state.absmax is float32
      [ceil(A.size / blocksize)].
    """
    blocks = _blocks(A, blocksize)
    absmax = absmax_nan(blocks, axis=1) if absmax is None else absmax
    q = nearest_code(normalise_blocks(blocks, absmax), code)
    q = q.reshape(-1)[: A.size].reshape(A.shape)
    return q, QuantState(absmax, code, blocksize, A.dtype, A.shape)


@jax.jit
def dequantize_blockwise(q: jax.Array, state: QuantState) -> jax.Array:
    """Inverse of `quantize_blockwise`: code[q] * absmax[block], in state.dtype.

    Args:
      q: uint8 codes, shape state.shape.
      state: the QuantState returned with q.

    Returns:
      Array of shape state.shape and dtype state.dtype.
    """
    bs = state.blocksize
    n = q.size
    nblocks = -(-n // bs)
    flat = jnp.pad(q.reshape(-1), (0, nblocks * bs - n)).reshape(nblocks, bs)
    vals = state.code[flat.astype(jnp.int32)] * state.absmax[:, None]
    return vals.reshape(-1)[:n].reshape(q.shape).astype(state.dtype)


@functools.partial(jax.jit, static_argnames=("blocksize",))
def fake_quant_blockwise(A: jax.Array, code: jax.Array, blocksize: int, absmax=None) -> jax.Array:
    """`dequantize_blockwise(*quantize_blockwise(A, code, blocksize, absmax))` in A's dtype."""
    blocks = _blocks(A, blocksize)
    absmax = absmax_nan(blocks, axis=1) if absmax is None else absmax
    q = nearest_code(normalise_blocks(blocks, absmax), code)
    vals = code[q.astype(jnp.int32)] * absmax[:, None]
    return vals.reshape(-1)[: A.size].reshape(A.shape).astype(A.dtype)


@jax.jit
def quantize(A: jax.Array, code: jax.Array, absmax=None) -> tuple[jax.Array, QuantState]:
    """Global codebook quantization (bitsandbytes `quantize`), in float32.

    bitsandbytes' kernel reads float32 only; its callers pass `A.float()`, so
    A of any float dtype is converted to float32 first.

    Args:
      A: float array of any shape.
      code: float32 [256] codebook.
      absmax: float32 [] to divide by instead of A's own absmax (a shard of a
        tensor quantized with the whole tensor's absmax, `lax.pmax` of the
        shards'); None: absmax_nan(A).

    Returns:
      (q, state): uint8 codes with A's shape; state.absmax is a float32 scalar
      and state.dtype float32.
    """
    a = A.astype(jnp.float32)
    absmax = absmax_nan(a) if absmax is None else absmax
    # Global quantization divides (torch `A / absmax`); blockwise multiplies.
    q = nearest_code(_div(a, absmax), code)
    return q, QuantState(absmax, code, None, jnp.float32, A.shape)


@jax.jit
def dequantize(q: jax.Array, state: QuantState) -> jax.Array:
    """Inverse of `quantize`: float32 code[q] * absmax."""
    return state.code[q.astype(jnp.int32)] * state.absmax


@jax.jit
def fake_quant_global(A: jax.Array, code: jax.Array, absmax=None) -> jax.Array:
    """`dequantize(*quantize(A, code, absmax))` cast back to A's dtype."""
    q, state = quantize(A, code, absmax)
    return dequantize(q, state).astype(A.dtype)


# ----------------------------------------------------------------------------
# int8 (LLM.int8 / SwitchBack) primitives
# ----------------------------------------------------------------------------


F16_OVERFLOW = np.float32(65520.0)  # the smallest float32 magnitude that rounds to float16 inf


def _to_int8(x: jax.Array) -> jax.Array:
    # NaN gives 0 (as CUDA's conversion); codes stay in bitsandbytes' [-127, 127] even for
    # infinite quotients, where CUDA's saturating cast would give -128.
    x = jnp.where(jnp.isnan(x), 0.0, jnp.clip(x, -127.0, 127.0))
    return x.astype(jnp.int8)


def _to_f16_values(x: jax.Array) -> jax.Array:
    """x rounded to float16 (subnormals and overflow to inf included), as float32.

    The optimization barrier keeps XLA on a GPU from dropping the
    f32->f16->f32 round trip (--xla_allow_excess_precision). `reduce_precision`
    is no substitute: it flushes float16 subnormals to zero.
    """
    return jax.lax.optimization_barrier(x.astype(jnp.float16)).astype(jnp.float32)


def f16_or_wide(x: jax.Array) -> jax.Array:
    """x rounded to float16 as float32, except where that overflows: there x itself.

    bitsandbytes casts int8 inputs to float16, which turns bf16/float32 values
    above 65504 into inf (and the row's output into NaN). fp8mm keeps the cast
    wherever it is finite, so it agrees with bitsandbytes bit for bit there, and
    quantizes the values the cast cannot hold from their own dtype.
    """
    x = x.astype(jnp.float32)
    r = _to_f16_values(x)
    return jnp.where(jnp.abs(x) >= F16_OVERFLOW, x, r)


def _rows(A: jax.Array) -> jax.Array:
    """A's float16 values (see `f16_or_wide`) as float32 [rows, cols] (cols may be 0)."""
    return f16_or_wide(A).reshape(int(np.prod(A.shape[:-1])), A.shape[-1])


def _outliers(a16: jax.Array, threshold: float) -> tuple[jax.Array, jax.Array]:
    """(element mask |x| >= threshold, column mask) of the [rows, cols] float16 values."""
    if threshold > 0.0:
        elem = jnp.abs(a16) >= np.float32(np.float16(threshold))
    else:
        elem = jnp.zeros(a16.shape, bool)
    return elem, jnp.any(elem, axis=0)


def _row_codes(a16: jax.Array, threshold: float):
    elem, cols = _outliers(a16, threshold)
    # NaN is never an outlier (|NaN| >= t is false), so it reaches the row absmax.
    row_stats = absmax_nan(jnp.where(elem, 0.0, a16), axis=1)
    # __fdividef(127, absmax) is a reciprocal-multiply on the GPU.
    ca = _to_int8(jnp.round(a16 * row_scale(row_stats)[:, None]))
    ca = jnp.where(elem | cols[None, :], jnp.int8(0), ca)
    return ca, row_stats, elem, cols


@functools.partial(jax.jit, static_argnames=("threshold",))
def int8_vectorwise_quant(
    A: jax.Array, threshold: float = 0.0
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Row-wise int8 quantization of A cast to float16 (bitsandbytes `int8_vectorwise_quant`).

    Values whose float16 cast would overflow are quantized from A's own dtype
    (see `f16_or_wide`); a NaN makes its row's absmax NaN.

    Args:
      A: float array [..., k].
      threshold: when > 0, entries with |x| >= threshold are outliers: they are
        left out of the row absmax, and their whole columns are zeroed in CA.

    Returns:
      CA: int8 [..., k], round-half-even(x * 127/row_absmax), in [-127, 127].
      row_stats: float32 [...], the row absmax.
      outlier_cols: bool [k], True for columns holding an outlier (all False
        when threshold == 0). `fp8mm.outlier_indices` turns it into indices.
    """
    ca, row_stats, _, cols = _row_codes(_rows(A), threshold)
    return ca.reshape(A.shape), row_stats.reshape(A.shape[:-1]), cols


def column_numerator(a16: jax.Array) -> jax.Array:
    """torch's `A.mul(127.0)` in float16, as float32; 127*x itself where float16 overflows.

    The product of a float16 value and 127 is exact in float32, so where the
    float16 rounding overflows (|x| > 65504/127) the quotient by the column
    absmax gives the intended code round(127*x / col_absmax); bitsandbytes
    gives garbage there (its cast of inf to int8 yields -1 or 0).
    """
    return f16_or_wide(a16 * np.float32(127.0))


@functools.partial(jax.jit, static_argnames=("threshold",))
def int8_double_quant(
    A: jax.Array, threshold: float = 0.0
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """Row-wise and column-wise int8 quantization (bitsandbytes `int8_double_quant`).

    Args:
      A: float array [..., k] (cast to float16, see `int8_vectorwise_quant`).
      threshold: outlier threshold, as in `int8_vectorwise_quant`; outliers are
        also left out of the column absmax and zeroed in CAt.

    Returns:
      CA: int8 [..., k], row-wise quantized.
      CAt: int8 [..., k] (same shape as A, not transposed), column-wise quantized.
      row_stats: float32 [...].
      col_stats: float32 [k].
      outlier_cols: bool [k].
    """
    a16 = _rows(A)
    ca, row_stats, elem, cols = _row_codes(a16, threshold)
    masked = jnp.where(elem, np.float32(0), a16)
    col_stats = absmax_nan(masked, axis=0)
    # torch: round(A.mul(127.0) / col_stats) with the product rounded to float16 first.
    cat = _to_int8(jnp.round(_div(column_numerator(masked), col_stats[None, :])))
    return (
        ca.reshape(A.shape),
        cat.reshape(A.shape),
        row_stats.reshape(A.shape[:-1]),
        col_stats,
        cols,
    )


@jax.jit
def int8_vectorwise_quant_t(W: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Row-wise int8 quantization of Wᵀ: a Flax [in, out] kernel to the [out, in] int8 operand.

    Args:
      W: float array [k, n].

    Returns:
      CB int8 [n, k] and SCB float32 [n] (the column absmax of W), equal to
      `int8_vectorwise_quant(W.T)[:2]`.
    """
    return int8_vectorwise_quant(W.T)[:2]


@jax.jit
def int8_linear_matmul(A: jax.Array, B: jax.Array) -> jax.Array:
    """Exact int8 product A @ Bᵀ accumulated in int32.

    Args:
      A: int8 [..., k].
      B: int8 [n, k] (Linear layout: both operands K-major).

    Returns:
      int32 [..., n].
    """
    if _host.platform() in ("gpu", "cuda", "rocm"):
        return _int8_matmul_via_bf16(A, B)
    return jax.lax.dot_general(
        A, B, (((A.ndim - 1,), (1,)), ((), ())), preferred_element_type=jnp.int32
    )


_EXACT_K = 1024  # 1024 * 128**2 = 2**24: every chunk's sum is an exact float32 integer


def _int8_matmul_via_bf16(A: jax.Array, B: jax.Array) -> jax.Array:
    """A @ Bᵀ of int8 operands as bf16 GEMMs over k-chunks, exact, summed in int32.

    On an H200 (jax 0.11.2) XLA's s8 x s8 -> s32 dot returned exactly twice the
    product for some small shapes (e.g. [3, 33] x [4, 33]ᵀ), a silent wrong
    answer on the XLA path. int8 values are exact in bf16, their products and
    the float32 sums of up to 1024 of them are exact integers whatever the
    summation order, so the chunked bf16 product is exact.
    """
    k, n = A.shape[-1], B.shape[0]
    lead = A.shape[:-1]
    if k == 0 or 0 in lead or n == 0:
        return jnp.zeros((*lead, n), jnp.int32)
    chunks = -(-k // _EXACT_K)
    pad = chunks * _EXACT_K - k
    a = jnp.pad(A.reshape(-1, k), ((0, 0), (0, pad))).astype(jnp.bfloat16)
    b = jnp.pad(B, ((0, 0), (0, pad))).astype(jnp.bfloat16)
    a = a.reshape(a.shape[0], chunks, _EXACT_K)
    b = b.reshape(n, chunks, _EXACT_K)
    parts = jax.lax.dot_general(
        a, b, (((2,), (2,)), ((1,), (1,))), preferred_element_type=jnp.float32
    )
    return parts.astype(jnp.int32).sum(axis=0).reshape(*lead, n)


def dequant_values(acc, row_stats, col_stats, bias, out_dtype) -> jax.Array:
    """((acc*row)*col)*(1/127²) (+ bias) rounded to float16, then cast to out_dtype.

    For a float16 out_dtype this is bitsandbytes' result bit for bit. For
    bfloat16/float32 it is the same wherever the float16 rounding is finite; a
    value beyond float16 range is cast from float32 directly instead of becoming
    inf (bf16 activations above 65504 give such outputs).
    """
    t = acc.astype(jnp.float32) * row_stats[..., None].astype(jnp.float32)
    t = t * col_stats.astype(jnp.float32)
    fused = bias is not None and np.dtype(bias.dtype) == np.dtype(jnp.float16)
    wide = np.dtype(out_dtype) != np.dtype(jnp.float16)
    round16 = f16_or_wide if wide else _to_f16_values
    if fused:
        out = round16(t * MM_DEQUANT_CONST + bias.astype(jnp.float32))
    else:
        out = round16(t * MM_DEQUANT_CONST)
    if bias is not None and not fused:
        out = round16(out + bias.astype(jnp.float32))
    return out.astype(out_dtype)


@jax.jit
def int8_mm_dequant(
    acc: jax.Array,
    row_stats: jax.Array,
    col_stats: jax.Array,
    bias: jax.Array | None = None,
) -> jax.Array:
    """Dequantize an int32 product: acc * row * col / 127² (+ bias), float16 out.

    A float16 bias is fused (one rounding, as CUDA's fmaf); any other bias dtype
    is added to the float16 result afterwards, as bitsandbytes does.

    Args:
      acc: int32 [..., n].
      row_stats: float32 [...] (one per row of acc).
      col_stats: float32 [n].
      bias: optional [n].

    Returns:
      float16 [..., n].
    """
    return dequant_values(acc, row_stats, col_stats, bias, jnp.float16)


@functools.partial(jax.jit, static_argnames=("out_dtype",))
def int8_linear_matmul_dequant(A, B, row_stats, col_stats, bias=None, out_dtype=jnp.float16):
    """`int8_mm_dequant(int8_linear_matmul(A, B), row_stats, col_stats, bias).astype(out_dtype)`.

    Arguments and result as `fp8mm.int8_linear_matmul_dequant`: int8 A [..., k]
    and B [n, k], float32 row_stats [...] and col_stats [n], bias None or float
    [n]; out_dtype [..., n].

    The fused form the Pallas kernel implements in one pass (the int32 product
    never reaches memory). The result is rounded to float16 first, as
    bitsandbytes does, then cast to out_dtype; for a wider out_dtype, values
    beyond float16 range keep their float32 value (see `dequant_values`).
    """
    return dequant_values(int8_linear_matmul(A, B), row_stats, col_stats, bias, out_dtype)


# ----------------------------------------------------------------------------
# The SwitchBack paper's quantizations (bitsandbytes.triton, <= 0.49)
# ----------------------------------------------------------------------------
# One rule for every scale (row, column, whole tensor): codes are
# round-half-even(x * (127 * (1/absmax))) of x in its own dtype (no float16
# cast), with the correctly rounded reciprocal; NaN makes its scale NaN and its
# codes 0; an all-zero row/column/tensor gives codes 0 and absmax 0.


def _sb_codes(x: jax.Array, absmax: jax.Array) -> jax.Array:
    return _to_int8(jnp.round(x * row_scale(absmax)))


@jax.jit
def quantize_rowwise(X: jax.Array, absmax=None) -> tuple[jax.Array, jax.Array]:
    """Row-wise int8 codes of X [..., k] in its own dtype: (int8 [..., k], absmax float32 [...]).

    absmax: float32 [...] to scale the rows by instead of their own (a shard of
    rows that span devices passes the whole rows'); None: computed.
    """
    x = X.astype(jnp.float32)
    absmax = absmax_nan(x, axis=-1) if absmax is None else absmax
    return _sb_codes(x, absmax[..., None]), absmax


@functools.partial(jax.jit, static_argnames=("transpose",))
def quantize_global(W: jax.Array, transpose: bool = False, absmax=None):
    """Whole-tensor int8 codes of W [r, c]: (int8 [r, c] or [c, r] transposed, absmax []).

    absmax: W's absmax when already known (None: computed).
    """
    w = W.astype(jnp.float32)
    absmax = absmax_nan(w) if absmax is None else absmax
    codes = _sb_codes(w, absmax)
    return (codes.T if transpose else codes), absmax


@jax.jit
def quantize_columnwise_and_transpose(W: jax.Array, absmax=None) -> tuple[jax.Array, jax.Array]:
    """Column-wise int8 codes of W [r, c], transposed: (int8 [c, r], absmax float32 [c]).

    absmax: float32 [c] to scale the columns by instead of their own; None: computed.
    """
    w = W.astype(jnp.float32)
    absmax = absmax_nan(w, axis=0) if absmax is None else absmax
    return _sb_codes(w, absmax[None, :]).T, absmax


@functools.partial(jax.jit, static_argnames=("dtype",))
def dequantize_rowwise(q: jax.Array, absmax: jax.Array, dtype=jnp.float16) -> jax.Array:
    """(absmax * q) * (1/127) per row, rounded once to `dtype` (bitsandbytes' order)."""
    t = absmax[..., None].astype(jnp.float32) * q.astype(jnp.float32)
    return (t * np.float32(1.0 / 127.0)).astype(dtype)


def scaled_values(acc, row_stats, col_stats, bias, out_dtype) -> jax.Array:
    """((acc*row)*col)*(1/127²) (+ bias) in float32, rounded once to out_dtype."""
    t = acc.astype(jnp.float32) * row_stats[..., None].astype(jnp.float32)
    t = t * col_stats.astype(jnp.float32) * MM_DEQUANT_CONST
    if bias is not None:
        t = t + bias.astype(jnp.float32)
    return t.astype(out_dtype)


@functools.partial(jax.jit, static_argnames=("out_dtype",))
def int8_scaled_matmul(A, B, row_stats, col_stats, bias=None, out_dtype=jnp.bfloat16):
    """`scaled_values(int8_linear_matmul(A, B), ...)`: the SwitchBack paper's fused product.

    A int8 [..., k], B int8 [n, k], row_stats float32 [...], col_stats float32
    [n], bias None or float [n]; out_dtype [..., n], rounded once from float32
    (no float16 step, unlike `int8_linear_matmul_dequant`).
    """
    return scaled_values(int8_linear_matmul(A, B), row_stats, col_stats, bias, out_dtype)
