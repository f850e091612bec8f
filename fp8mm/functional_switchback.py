"""The SwitchBack paper's quantization primitives (bitsandbytes.triton's names).

`quantize_rowwise`, `quantize_global`, `quantize_columnwise_and_transpose` and
`int8_scaled_matmul`: the int8 quantizations and the fused GEMM of the paper's
layer (`fp8mm.switchback_linear`), one exact rounding rule on every
implementation (docs/exactness.md). Validation and dispatch as in
`fp8mm.functional`, whose specs and checks these share.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fp8mm import _checks, dispatch
from fp8mm.functional import (
    _INT8_MATMUL,
    _check_dequant_args,
    _check_int8_input,
    _check_matmul_operands,
    _spec,
)

__all__ = [
    "int8_scaled_matmul",
    "quantize_columnwise_and_transpose",
    "quantize_global",
    "quantize_rowwise",
]

Impl = dispatch.Impl

_SWITCHBACK_QUANT = (dispatch.Kernel("pallas_triton", "fp8mm.pallas.int8_switchback"),)
_QUANTIZE_ROWWISE = _spec("quantize_rowwise", _SWITCHBACK_QUANT)
_QUANTIZE_GLOBAL = _spec("quantize_global", _SWITCHBACK_QUANT)
_QUANTIZE_COLUMNWISE_T = _spec("quantize_columnwise_and_transpose", _SWITCHBACK_QUANT)
_INT8_SCALED_MATMUL = _spec("int8_scaled_matmul", _INT8_MATMUL)


def _check_absmax(absmax, shape: tuple[int, ...], what: str) -> tuple:
    """The primitive's extra argument: () for None, else (absmax,) checked against `shape`."""
    if absmax is None:
        return ()
    _checks.check_dtype("absmax", absmax, jnp.float32)
    if tuple(absmax.shape) != tuple(shape):
        raise ValueError(f"absmax must be float32 {tuple(shape)} ({what}), got {absmax.shape}")
    return (absmax,)


def quantize_rowwise(
    X: jax.Array, absmax: jax.Array | None = None, *, implementation: Impl = None
) -> tuple[jax.Array, jax.Array]:
    """Row-wise int8 quantization of X's own values (the SwitchBack paper's activations).

    Unlike `int8_vectorwise_quant` (bitsandbytes' LLM.int8 rule) the values are
    not cast to float16 first, so bfloat16 rows keep their range and tiny rows
    (gradients) their codes. Each code is round-half-even(x * (127 * (1/absmax)))
    with the correctly rounded reciprocal; an all-zero row gives codes 0 and
    absmax 0, a NaN makes its row's absmax NaN and its codes 0.

    Args:
      X: float [..., k] (float32, float16 or bfloat16).
      absmax: optional float32 [...]: the rows' absmax to scale by instead of
        their own. Inside `jax.shard_map`, a shard of rows split over devices
        passes the whole rows' (the `lax.pmax` of the shards') and gets the
        codes of its part of them. None computes it.
      implementation: None, "xla", "pallas", a kernel name or a sequence of these.

    Returns:
      codes int8 [..., k] in [-127, 127]; absmax float32 [...] (the given one).

    Examples:
      >>> import jax.numpy as jnp, fp8mm
      >>> q, absmax = fp8mm.quantize_rowwise(jnp.array([[1.0, -0.5, 0.25]]))
      >>> q.tolist(), absmax.tolist()
      ([[127, -64, 32]], [1.0])
    """
    _check_int8_input(X)
    extra = _check_absmax(absmax, X.shape[:-1], "one per row of X")
    return _QUANTIZE_ROWWISE(X, *extra, implementation=implementation)


def quantize_global(
    W: jax.Array,
    transpose: bool = False,
    absmax: jax.Array | None = None,
    *,
    implementation: Impl = None,
) -> tuple[jax.Array, jax.Array]:
    """Whole-tensor int8 quantization of W (the SwitchBack paper's global weight).

    The rule of `quantize_rowwise` with one absmax for the whole tensor. With
    transpose=True the codes are written as Wᵀ (bitsandbytes'
    `quantize_global_transpose`): the same scale serves both layouts, which is
    what lets one quantized weight feed the forward and the input-gradient GEMM.

    Args:
      W: float [r, c].
      transpose: static bool; return the codes of Wᵀ, [c, r].
      absmax: optional float32 [], W's absmax when already known (a backward pass
        re-quantizing the forward's weight); None computes it.
      implementation: None, "xla", "pallas", a kernel name or a sequence of these.

    Returns:
      codes int8 [r, c] (or [c, r]); absmax float32 [].

    Examples:
      >>> import jax.numpy as jnp, fp8mm
      >>> q, absmax = fp8mm.quantize_global(jnp.array([[2.0, 1.0], [0.0, -2.0]]), transpose=True)
      >>> q.tolist(), float(absmax)
      ([[127, 0], [64, -127]], 2.0)
    """
    _checks.check_float("W", W)
    _checks.check_ndim("W", W, 2)
    transpose = _checks.check_bool("transpose", transpose)
    if absmax is not None:
        _checks.check_dtype("absmax", absmax, jnp.float32)
        if absmax.shape != ():
            raise ValueError(f"absmax must be a float32 scalar, got shape {absmax.shape}")
    return _QUANTIZE_GLOBAL(W, transpose, absmax, implementation=implementation)


def quantize_columnwise_and_transpose(
    W: jax.Array, absmax: jax.Array | None = None, *, implementation: Impl = None
) -> tuple[jax.Array, jax.Array]:
    """Column-wise int8 quantization of W, written transposed (the vectorwise input gradient).

    The rule of `quantize_rowwise` applied to the columns of W: equal to
    `quantize_rowwise(W.T)` in one pass, straight into the K-major layout.

    Args:
      W: float [r, c].
      absmax: optional float32 [c]: the columns' absmax to scale by instead of
        their own (columns split over devices: the whole columns'); None computes it.
      implementation: None, "xla", "pallas", a kernel name or a sequence of these.

    Returns:
      codes int8 [c, r]; absmax float32 [c] (one per column of W).

    Examples:
      >>> import jax.numpy as jnp, fp8mm
      >>> q, absmax = fp8mm.quantize_columnwise_and_transpose(jnp.array([[2.0, 1.0], [-1.0, 0.5]]))
      >>> q.tolist(), absmax.tolist()
      ([[127, -64], [127, 64]], [2.0, 1.0])
    """
    _checks.check_float("W", W)
    _checks.check_ndim("W", W, 2)
    extra = _check_absmax(absmax, W.shape[1:], "one per column of W")
    return _QUANTIZE_COLUMNWISE_T(W, *extra, implementation=implementation)


def int8_scaled_matmul(
    A: jax.Array,
    B: jax.Array,
    row_stats: jax.Array,
    col_stats: jax.Array,
    bias: jax.Array | None = None,
    out_dtype=jnp.bfloat16,
    *,
    implementation: Impl = None,
) -> jax.Array:
    """The SwitchBack paper's int8 GEMM: (A·Bᵀ)·row·col/127² (+ bias), rounded once.

    ((acc * row_stats) * col_stats) * (1/127²) + bias in float32, then one
    rounding to out_dtype. Unlike `int8_linear_matmul_dequant`, whose result is
    bitsandbytes' float16, nothing passes through float16. On a GPU the int32
    product never reaches memory.

    Args:
      A: int8 [..., k] (k <= 131071); B: int8 [n, k] (both K-major).
      row_stats: float32 [...], A's row absmax.
      col_stats: float32 [n] (per-row absmax of B), or [] (a global absmax).
      bias: optional float [n].
      out_dtype: float32, float16 or bfloat16.
      implementation: None, "xla", "pallas", a kernel name or a sequence of these.

    Returns:
      out_dtype [..., n].

    Examples:
      >>> import jax.numpy as jnp, fp8mm
      >>> a = jnp.array([[127, 0]], jnp.int8); b = jnp.array([[127, 127]], jnp.int8)
      >>> y = fp8mm.int8_scaled_matmul(a, b, jnp.array([2.0]), jnp.array(3.0), None, jnp.float32)
      >>> y.tolist()
      [[6.0]]
    """
    _check_matmul_operands(A, B, "int8_scaled_matmul")
    n = B.shape[0]
    if getattr(col_stats, "ndim", None) == 0:
        _checks.check_dtype("col_stats", col_stats, jnp.float32)
        col_stats = jnp.broadcast_to(col_stats, (n,))
    _check_dequant_args(A.shape[:-1], n, row_stats, col_stats, bias)
    out_dtype = _checks.check_out_dtype(out_dtype)
    return _INT8_SCALED_MATMUL(
        A, B, row_stats, col_stats, bias, out_dtype, implementation=implementation
    )
