"""Public quantization primitives (the `bitsandbytes.functional` counterparts).

Each function validates its arguments (clear `TypeError`/`ValueError` naming
the offending value) and then runs an implementation chosen by
`fp8mm.dispatch` from the primitive's spec: `implementation=None` takes the
process-wide default (Pallas kernels on a GPU where they serve the case, the XLA
reference otherwise), `"xla"` the pure-jnp reference, `"pallas"` the best Pallas
kernel that serves the call (interpret mode on CPU), a kernel name
(`"pallas_triton"`, `"pallas_mosaic_gpu"`) that kernel, and a sequence the first
of these that serves.

Outlier columns are returned as a boolean mask over the input's last axis, a
static-shape form that works under `jax.jit`; `outlier_indices` turns it into
the index array bitsandbytes returns, outside of jit.

Codebooks (`code`) are float32 [256] arrays sorted ascending. As in
bitsandbytes, `code=None` means the dynamic map (`create_dynamic_map()`); a
NumPy float64 array or a Python list is rounded to float32 (as `jnp.asarray`
would). A concrete code is checked to be finite and sorted; a traced one (an
argument of a jitted function) cannot be, and is used as it is.

Operands must be jax or NumPy arrays of a supported dtype: float64 operands are
refused (cast them to float32), as are Python lists. Block sizes and thresholds
must be static Python numbers (under `jax.jit`, mark them static).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fp8mm import _checks, dispatch, reference
from fp8mm.state import QuantState

__all__ = [
    "dequantize",
    "dequantize_blockwise",
    "fake_quant_blockwise",
    "fake_quant_global",
    "int8_double_quant",
    "int8_linear_matmul",
    "int8_linear_matmul_dequant",
    "int8_mm_dequant",
    "int8_vectorwise_quant",
    "int8_vectorwise_quant_t",
    "outlier_indices",
    "quantize",
    "quantize_blockwise",
]

Impl = dispatch.Impl


# The primitive specs: each is its XLA reference plus its Pallas kernels in preference
# order (`fp8mm.dispatch`). Adding a kernel for a primitive is one entry here and its
# module; the public function below validates once and calls the spec.
_CODEBOOK = (dispatch.Kernel("pallas_triton", "fp8mm.pallas.codebook"),)
_INT8_QUANT = (dispatch.Kernel("pallas_triton", "fp8mm.pallas.int8_quant"),)
_INT8_TRITON = dispatch.Kernel("pallas_triton", "fp8mm.pallas.int8_matmul_triton")
# s8 wgmma first: on Hopper it is 1.10-1.16x the Triton kernel (docs/performance.md).
_INT8_MATMUL = (
    dispatch.Kernel("pallas_mosaic_gpu", "fp8mm.pallas.int8_matmul_wgmma", interpretable=False),
    _INT8_TRITON,
)


def _spec(name: str, kernels, straight_through: bool = False) -> dispatch.Primitive:
    return dispatch.Primitive(name, getattr(reference, name), kernels, straight_through)


_QUANTIZE_BLOCKWISE = _spec("quantize_blockwise", _CODEBOOK)
_DEQUANTIZE_BLOCKWISE = _spec("dequantize_blockwise", _CODEBOOK)
_FAKE_QUANT_BLOCKWISE = _spec("fake_quant_blockwise", _CODEBOOK, straight_through=True)
_QUANTIZE = _spec("quantize", _CODEBOOK)
_DEQUANTIZE = _spec("dequantize", _CODEBOOK)
_FAKE_QUANT_GLOBAL = _spec("fake_quant_global", _CODEBOOK, straight_through=True)
_INT8_VECTORWISE_QUANT = _spec("int8_vectorwise_quant", _INT8_QUANT)
_INT8_DOUBLE_QUANT = _spec("int8_double_quant", _INT8_QUANT)
_INT8_VECTORWISE_QUANT_T = _spec("int8_vectorwise_quant_t", _INT8_QUANT)
_INT8_LINEAR_MATMUL = _spec("int8_linear_matmul", _INT8_MATMUL)
_INT8_MM_DEQUANT = _spec("int8_mm_dequant", (_INT8_TRITON,))
_INT8_LINEAR_MATMUL_DEQUANT = _spec("int8_linear_matmul_dequant", _INT8_MATMUL)


def quantize_blockwise(
    A: jax.Array,
    code=None,
    absmax: None = None,
    out: None = None,
    blocksize: int = 4096,
    nested: bool = False,
    *,
    implementation: Impl = None,
) -> tuple[jax.Array, QuantState]:
    """Blockwise codebook quantization, bit-exact with bitsandbytes.

    A is flattened row-major into blocks of `blocksize` (the last may be
    partial); each block is scaled by the float32 reciprocal of its absmax and
    every element mapped to the nearest entry of `code`. The parameters are
    bitsandbytes' in its order.

    Args:
      A: float32/float16/bfloat16 array of any shape.
      code: float32 codebook of shape [256], sorted (e.g. `create_fp8_map()`);
        None for the dynamic map (`create_dynamic_map()`), as in bitsandbytes.
      absmax: bitsandbytes' output buffer for the scales; must be None (they
        are returned in the state).
      out: bitsandbytes' output buffer for the codes; must be None (JAX arrays
        are immutable: use the returned array).
      blocksize: static power of two in [32, 4096].
      nested: must be False (bitsandbytes' nested quantization of absmax is not
        implemented).
      implementation: None, "xla", "pallas", a kernel name or a sequence
        (see `fp8mm.dispatch`).

    Returns:
      (q, state): uint8 codes of A's shape and a `QuantState` with float32
      absmax of shape [ceil(A.size / blocksize)].
    """
    _checks.check_out(absmax, "absmax", before="blocksize", returned="state's absmax")
    _checks.check_out(out, before="blocksize")
    _checks.check_nested(nested)
    _checks.check_float("A", A)
    code = _checks.as_code(code)
    blocksize = _checks.check_blocksize(blocksize)
    return _QUANTIZE_BLOCKWISE(A, code, blocksize, implementation=implementation)


def dequantize_blockwise(
    q: jax.Array,
    quant_state: QuantState | None = None,
    absmax: jax.Array | None = None,
    code=None,
    out: None = None,
    blocksize: int = 4096,
    nested: bool = False,
    *,
    state: QuantState | None = None,
    implementation: Impl = None,
) -> jax.Array:
    """code[q] * absmax[block], returned in the quantized tensor's dtype and shape.

    The parameters are bitsandbytes' in its order (`state=` is fp8mm's name for
    `quant_state`).

    Args:
      q: uint8 codes of shape state.shape.
      quant_state: the `QuantState` from `quantize_blockwise`; a hand-built one
        must agree with itself (absmax float32 [ceil(size / blocksize)], code
        float32 [256]). Also accepted as `state=` (not both).
      absmax: without a state, float32 [ceil(q.size / blocksize)] scales
        (bitsandbytes' form): the state is built from absmax, code and blocksize,
        and the result is float32, as in bitsandbytes.
      code: with absmax, the float32 [256] codebook; None for the dynamic map.
      out: bitsandbytes' output buffer; must be None (JAX arrays are immutable:
        use the returned array).
      blocksize: with absmax, the static block size (a power of two in [32, 4096]).
      nested: must be False (nested quantization is not implemented).
      state: fp8mm's name for quant_state.
      implementation: None, "xla" or "pallas".

    Returns:
      Array of shape state.shape and dtype state.dtype.
    """
    _checks.check_out(out, before="blocksize")
    _checks.check_nested(nested)
    quant_state = _checks.quant_state(
        q, quant_state, absmax, code, blocksize, blockwise=True, alias=state
    )
    return _DEQUANTIZE_BLOCKWISE(q, quant_state, implementation=implementation)


def fake_quant_blockwise(
    A: jax.Array, code=None, blocksize: int = 4096, *, implementation: Impl = None
) -> jax.Array:
    """`dequantize_blockwise(*quantize_blockwise(A, code, blocksize))` in one pass, A's dtype.

    The values bitsandbytes' blockwise quantization leaves of A (what its fp8
    matmuls multiply), without writing the codes: on a GPU one kernel reads A
    and writes the result. Differentiable with the straight-through estimator
    (the gradient passes unchanged to A).

    Args:
      A: float32/float16/bfloat16 array of any shape, flattened row-major into
        blocks of `blocksize` (the last may be partial).
      code: float32 [256] sorted codebook; None for the dynamic map.
      blocksize: a power of two in [32, 4096].
      implementation: None, "xla", "pallas", a kernel name or a sequence of these.

    Returns:
      A's shape and dtype: code[q] * absmax[block] of each element.

    Examples:
      >>> import jax.numpy as jnp, fp8mm
      >>> x = jnp.array([1.0, -0.5, 0.3, 0.0])
      >>> fp8mm.fake_quant_blockwise(x, fp8mm.e4m3_code(), 32).tolist()
      [1.0, -0.5, 0.30000001192092896, 0.0]
    """
    _checks.check_float("A", A)
    code = _checks.as_code(code)
    blocksize = _checks.check_blocksize(blocksize)
    return _FAKE_QUANT_BLOCKWISE(A, code, blocksize, implementation=implementation)


def quantize(
    A: jax.Array, code=None, out: None = None, *, implementation: Impl = None
) -> tuple[jax.Array, QuantState]:
    """Global (whole-tensor absmax) codebook quantization, computed in float32.

    Args:
      A: float array of any shape (converted to float32, as bitsandbytes' callers do).
      code: float32 codebook of shape [256], sorted; None for the dynamic map.
      out: bitsandbytes' output buffer; must be None (JAX arrays are immutable:
        use the returned array).
      implementation: None, "xla" or "pallas".

    Returns:
      (q, state): uint8 codes of A's shape and a `QuantState` with a scalar absmax
      (bitsandbytes returns the tuple (absmax, code)).
    """
    _checks.check_out(out)
    _checks.check_float("A", A)
    code = _checks.as_code(code)
    return _QUANTIZE(A, code, implementation=implementation)


def dequantize(
    q: jax.Array,
    state: QuantState | None = None,
    absmax: jax.Array | None = None,
    code=None,
    out: None = None,
    *,
    implementation: Impl = None,
) -> jax.Array:
    """float32 code[q] * absmax for a globally quantized tensor.

    Args:
      q: uint8 codes of shape state.shape.
      state: the `QuantState` from `quantize` (absmax a float32 scalar, code float32 [256]).
      absmax: without a state, the float32 scalar absmax (bitsandbytes' form).
      code: with absmax, the float32 [256] codebook; None for the dynamic map.
      out: bitsandbytes' output buffer; must be None (JAX arrays are immutable:
        use the returned array).
      implementation: None, "xla" or "pallas".

    Returns:
      float32 array of shape state.shape.
    """
    _checks.check_out(out)
    state = _checks.quant_state(q, state, absmax, code, blockwise=False)
    return _DEQUANTIZE(q, state, implementation=implementation)


def fake_quant_global(
    A: jax.Array, code=None, *, absmax: jax.Array | None = None, implementation: Impl = None
) -> jax.Array:
    """`dequantize(*quantize(A, code))` cast back to A's dtype (code=None: the dynamic map).

    Global quantization (one absmax for the whole tensor, x / absmax in float32)
    then dequantization, in one pass over A on a GPU. Differentiable with the
    straight-through estimator.

    Args:
      A: float32/float16/bfloat16 array of any shape.
      code: float32 [256] sorted codebook; None for the dynamic map.
      absmax: a float32 [] to quantize with instead of A's own absmax (a shard
        of a tensor passes the whole tensor's, e.g. a `lax.pmax` of the shards').
      implementation: None, "xla", "pallas", a kernel name or a sequence of these.

    Returns:
      A's shape and dtype.

    Examples:
      >>> import jax.numpy as jnp, fp8mm
      >>> fp8mm.fake_quant_global(jnp.array([2.0, -1.0]), fp8mm.e4m3_code()).tolist()
      [2.0, -1.0]
    """
    _checks.check_float("A", A)
    code = _checks.as_code(code)
    _checks.check_absmax(absmax)
    return _FAKE_QUANT_GLOBAL(A, code, absmax, implementation=implementation)


def _check_int8_input(A) -> None:
    _checks.check_float("A", A)
    _checks.check_min_ndim("A", A, 1)


def int8_vectorwise_quant(
    A: jax.Array, threshold: float = 0.0, *, implementation: Impl = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Row-wise int8 quantization of A (cast to float16), bit-exact with bitsandbytes.

    Args:
      A: float array [..., k].
      threshold: static real number >= 0 (a Python/NumPy scalar, not a traced
        value); when > 0, entries with |x| >= threshold are outliers,
        left out of the row absmax, and their columns are zeroed in CA.
      implementation: None, "xla" or "pallas".

    Returns:
      CA: int8 [..., k]; row_stats: float32 [...] (row absmax);
      outlier_cols: bool [k] column mask (all False when threshold == 0).
    """
    _check_int8_input(A)
    threshold = _checks.check_threshold(threshold)
    return _INT8_VECTORWISE_QUANT(A, threshold, implementation=implementation)


def int8_double_quant(
    A: jax.Array, threshold: float = 0.0, *, implementation: Impl = None
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """Row-wise and column-wise int8 quantization of A (cast to float16).

    Args:
      A: float array [..., k].
      threshold: static outlier threshold >= 0 (see `int8_vectorwise_quant`).
      implementation: None, "xla" or "pallas".

    Returns:
      CA: int8 [..., k] row-wise; CAt: int8 [..., k] column-wise (same shape as
      A, not transposed); row_stats: float32 [...]; col_stats: float32 [k];
      outlier_cols: bool [k].
    """
    _check_int8_input(A)
    threshold = _checks.check_threshold(threshold)
    return _INT8_DOUBLE_QUANT(A, threshold, implementation=implementation)


def int8_vectorwise_quant_t(
    W: jax.Array, *, implementation: Impl = None
) -> tuple[jax.Array, jax.Array]:
    """Row-wise int8 quantization of Wᵀ in one pass (quantize + transpose).

    Turns a Flax [in, out] kernel into the K-major [out, in] int8 operand that
    `int8_linear_matmul` needs.

    Args:
      W: float array [k, n].
      implementation: None, "xla" or "pallas".

    Returns:
      CB int8 [n, k], SCB float32 [n]; equal to `int8_vectorwise_quant(W.T)[:2]`.
    """
    _checks.check_float("W", W)
    _checks.check_ndim("W", W, 2)
    return _INT8_VECTORWISE_QUANT_T(W, implementation=implementation)


def _check_matmul_operands(A, B, where: str) -> None:
    _checks.check_dtype("A", A, jnp.int8)
    _checks.check_dtype("B", B, jnp.int8)
    _checks.check_min_ndim("A", A, 1)
    _checks.check_ndim("B", B, 2)
    if A.shape[-1] != B.shape[1]:
        raise ValueError(
            f"inner dimensions differ: A is {tuple(A.shape)} and B is {tuple(B.shape)}; "
            "int8_linear_matmul computes A @ B.T with B in [n, k] layout"
        )
    _checks.check_int8_k(A.shape[-1], where)


def int8_linear_matmul(A: jax.Array, B: jax.Array, *, implementation: Impl = None) -> jax.Array:
    """Exact A @ Bᵀ of int8 operands in int32.

    k is at most 131071 = (2**31 - 1) // 128**2, so that the int32 sum cannot wrap.

    Args:
      A: int8 [..., k].
      B: int8 [n, k] (Linear layout; both operands K-major).
      implementation: None, "xla" or "pallas".

    Returns:
      int32 [..., n].
    """
    _check_matmul_operands(A, B, "int8_linear_matmul")
    return _INT8_LINEAR_MATMUL(A, B, implementation=implementation)


def _check_dequant_args(rows_shape, n, row_stats, col_stats, bias) -> None:
    _checks.check_dtype("row_stats", row_stats, jnp.float32)
    _checks.check_dtype("col_stats", col_stats, jnp.float32)
    if tuple(row_stats.shape) != tuple(rows_shape):
        raise ValueError(
            f"row_stats must have shape {tuple(rows_shape)} (one per row), "
            f"got {tuple(row_stats.shape)}"
        )
    if tuple(col_stats.shape) != (n,):
        raise ValueError(f"col_stats must have shape ({n},), got {tuple(col_stats.shape)}")
    if bias is not None:
        _checks.check_float("bias", bias)
        if tuple(bias.shape) != (n,):
            raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")


def int8_mm_dequant(
    acc: jax.Array,
    row_stats: jax.Array,
    col_stats: jax.Array,
    bias: jax.Array | None = None,
    *,
    implementation: Impl = None,
) -> jax.Array:
    """acc * row_stats * col_stats / 127² (+ bias) as float16, as bitsandbytes' CUDA kernel.

    Args:
      acc: int32 [..., n].
      row_stats: float32 [...].
      col_stats: float32 [n].
      bias: optional float [n]; fused when float16, else added to the float16 result.
      implementation: None, "xla" or "pallas".

    Returns:
      float16 [..., n].
    """
    _checks.check_dtype("acc", acc, jnp.int32)
    _checks.check_min_ndim("acc", acc, 1)
    _check_dequant_args(acc.shape[:-1], acc.shape[-1], row_stats, col_stats, bias)
    return _INT8_MM_DEQUANT(acc, row_stats, col_stats, bias, implementation=implementation)


def int8_linear_matmul_dequant(
    A: jax.Array,
    B: jax.Array,
    row_stats: jax.Array,
    col_stats: jax.Array,
    bias: jax.Array | None = None,
    out_dtype=jnp.float16,
    *,
    implementation: Impl = None,
) -> jax.Array:
    """`int8_mm_dequant(int8_linear_matmul(A, B), row_stats, col_stats, bias)` fused.

    On a GPU this is one Pallas kernel: the int32 product never reaches memory.

    Args:
      A: int8 [..., k] (k <= 131071, see `int8_linear_matmul`); B: int8 [n, k];
      row_stats: float32 [...];
      col_stats: float32 [n]; bias: optional float [n].
      out_dtype: float16 (bitsandbytes' result), or bfloat16/float32: the
        float16 result cast, in the same pass.
      implementation: None, "xla" or "pallas".

    Returns:
      out_dtype [..., n].
    """
    _check_matmul_operands(A, B, "int8_linear_matmul_dequant")
    _check_dequant_args(A.shape[:-1], B.shape[0], row_stats, col_stats, bias)
    out_dtype = _checks.check_out_dtype(out_dtype)
    return _INT8_LINEAR_MATMUL_DEQUANT(
        A, B, row_stats, col_stats, bias, out_dtype, implementation=implementation
    )


def outlier_indices(outlier_cols: jax.Array) -> np.ndarray:
    """Indices of the True entries of an outlier column mask (eager only).

    This is the int64 index form bitsandbytes returns; it has a data-dependent
    shape, so it cannot be used inside `jax.jit`: keep the mask there.

    Args:
      outlier_cols: bool [k] mask, as the int8 primitives return it.

    Returns:
      int64 [number of True entries] NumPy array.
    """
    if isinstance(outlier_cols, jax.core.Tracer):
        raise TypeError(
            "outlier_indices needs a concrete mask; inside jax.jit use the boolean mask itself"
        )
    mask = np.asarray(outlier_cols)
    if mask.dtype != np.bool_:
        raise TypeError(f"outlier_cols must be a bool mask, got dtype {mask.dtype}")
    if mask.ndim != 1:
        raise ValueError(f"outlier_cols must be 1-D (one flag per column), got shape {mask.shape}")
    return np.flatnonzero(mask).astype(np.int64)
