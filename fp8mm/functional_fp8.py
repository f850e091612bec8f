"""Native-FP8 primitives: bitsandbytes' e4m3/e5m2 codes as float8 bytes, and their GEMM.

bitsandbytes' fp8 codes are float8 grids scaled by 1/240 (e4m3) and 1/57344
(e5m2) (`fp8mm.native_format`). `quantize_fp8` quantizes exactly as
`quantize_blockwise` / `quantize` do (same absmax, same nearest-code rule, the
same uint8 codes) and hands out each code's float8 value with float32 scales
absmax / 240 or absmax / 57344 (`Fp8Tensor`). `fp8_scaled_matmul` multiplies
two such operands on FP8 tensor cores and applies the scales in float32 after
the accumulation, so it multiplies the values bitsandbytes multiplies, except
codes below 6.1e-5 of absmax (e4m3) or 1e-9 (e5m2), which float8 rounds to its
nearest value.

Validation and dispatch as in `fp8mm.functional`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fp8mm import _checks, _host, dispatch, reference_fp8
from fp8mm.codebooks import Fp8Format, native_format
from fp8mm.state import Fp8Tensor

__all__ = [
    "dequantize_fp8",
    "fp8_row_scales",
    "fp8_scaled_matmul",
    "quantize_fp8",
]

Impl = dispatch.Impl

FP8_DTYPES = (np.dtype(jnp.float8_e4m3fn), np.dtype(jnp.float8_e5m2))

_QUANTIZE_FP8 = dispatch.Primitive(
    "quantize_fp8",
    reference_fp8.quantize_fp8,
    (dispatch.Kernel("pallas_triton", "fp8mm.pallas.codebook_fp8"),),
)
_FP8_SCALED_MATMUL = dispatch.Primitive(
    "fp8_scaled_matmul",
    reference_fp8.fp8_scaled_matmul,
    (dispatch.Kernel("pallas_mosaic_gpu", "fp8mm.pallas.fp8_matmul_wgmma", interpretable=False),),
)


def format_of(code, name: str = "code", dtype=None) -> Fp8Format:
    """The float8 format of `code` (held as `dtype`): NotImplementedError for a code that has none.

    Only a concrete code can be identified; a traced one (a jit argument) raises
    a TypeError asking for a concrete code.
    """
    if code is None:
        raise NotImplementedError(
            f"{name}=None is the dynamic map, which is no float8 grid; native FP8 needs "
            "bitsandbytes' e4m3 or e5m2 code (fp8mm.e4m3_code(), fp8mm.e5m2_code())"
        )
    value = _host.concrete_float32(code)
    if value is None:
        raise TypeError(
            f"{name} is traced; native FP8 must know its codebook at trace time: pass "
            "fp8mm.e4m3_code() / e5m2_code() as a NumPy or concrete jax array (not a jit argument)"
        )
    if dtype is not None and np.dtype(dtype) not in FP8_DTYPES:
        raise TypeError(f"dtype must be float8_e4m3fn or float8_e5m2, got {dtype!r}")
    fmt = native_format(value, dtype)
    if fmt is None and native_format(value) is not None:
        raise NotImplementedError(
            f"{name} (bitsandbytes' {native_format(value).name} code) cannot be held as "
            f"{np.dtype(dtype).name}: its values do not fit that float8 grid"
        )
    if fmt is None:
        raise NotImplementedError(
            f"{name} is neither bitsandbytes' e4m3 nor its e5m2 code, so it is no float8 "
            "grid and cannot be multiplied on FP8 tensor cores; use gemm='emulated' for "
            "other codebooks"
        )
    return fmt


def quantize_fp8(
    A: jax.Array,
    code,
    blocksize: int | None = None,
    *,
    dtype=None,
    absmax: jax.Array | None = None,
    implementation: Impl = None,
) -> Fp8Tensor:
    """bitsandbytes' codebook quantization of A, handed out as float8 bytes and scales.

    The codes are those of `quantize_blockwise(A, code, blocksize)` (or
    `quantize(A, code)` for blocksize=None), bit for bit; each is replaced by
    its float8 value and absmax by absmax / `native_format(code).scale`.

    Args:
      A: float32/float16/bfloat16 array of any shape.
      code: bitsandbytes' e4m3 (`fp8mm.e4m3_code()`) or e5m2 code, concrete.
      blocksize: a power of two in [32, 4096], or None for one global absmax.
      dtype: the float8 dtype of the data; None: the code's own. The e5m2 code
        can be held as float8_e4m3fn (scale absmax / 224; exact above 3.1e-5 of
        absmax, the nearest e4m3 value below), for a GEMM with e4m3 operands.
      absmax: global quantization only: the float32 [] absmax to quantize with
        instead of A's own; a shard of a tensor passes the whole tensor's (a
        `lax.pmax` of the shards' `jnp.max(jnp.abs(shard))`) to get its codes.
      implementation: for the quantization (see `fp8mm.dispatch`).

    Returns:
      `Fp8Tensor`: data float8_e4m3fn / float8_e5m2 with A's shape, scale
      float32 [ceil(A.size / blocksize)] or [].

    Raises:
      NotImplementedError: `code` is no float8 grid (the dynamic map, a custom code).

    Examples:
      >>> import jax.numpy as jnp, fp8mm
      >>> t = fp8mm.quantize_fp8(jnp.array([[2.0, -1.0, 0.5]]), fp8mm.e4m3_code())
      >>> t.data.dtype.name, t.scale.tolist(), t.data.astype(jnp.float32).tolist()
      ('float8_e4m3fn', 0.008333333767950535, [[240.0, -120.0, 60.0]])
    """
    _checks.check_float("A", A)
    if blocksize is not None:
        _checks.check_static("blocksize", blocksize, "int")
        blocksize = _checks.check_blocksize(blocksize)
    fmt = format_of(code, "code", dtype)
    if absmax is not None:
        if blocksize is not None:
            raise ValueError("absmax= is for global quantization (blocksize=None)")
        _checks.check_absmax(absmax)
    code = _host.concrete_float32(code)  # numpy: under jit jnp.asarray would trace it
    data, absmax = _QUANTIZE_FP8(
        A, code, fmt.table, blocksize, fmt.dtype, absmax, implementation=implementation
    )
    return Fp8Tensor(data, absmax / np.float32(fmt.scale), blocksize)


def _check_fp8_tensor(t) -> None:
    if not isinstance(t, Fp8Tensor):
        raise TypeError(f"expected an Fp8Tensor, got {type(t).__name__}")
    _checks.check_array("Fp8Tensor.data", t.data)
    if np.dtype(t.data.dtype) not in FP8_DTYPES:
        raise TypeError(f"Fp8Tensor.data must be float8_e4m3fn or float8_e5m2, got {t.data.dtype}")
    _checks.check_dtype("Fp8Tensor.scale", t.scale, jnp.float32)
    size = int(np.prod(t.shape))
    want = () if t.blocksize is None else (-(-size // t.blocksize),)
    if tuple(t.scale.shape) != want:
        raise ValueError(
            f"Fp8Tensor.scale must have shape {want} for data {t.shape} and blocksize "
            f"{t.blocksize}, got {tuple(t.scale.shape)}"
        )


def dequantize_fp8(t: Fp8Tensor, dtype=jnp.float32) -> jax.Array:
    """The values an `Fp8Tensor` stands for: data * scale[block], rounded once to dtype.

    Args:
      t: from `quantize_fp8`.
      dtype: float32, float16 or bfloat16.

    Returns:
      dtype array of t's shape.

    Examples:
      >>> import jax.numpy as jnp, fp8mm
      >>> x = jnp.array([[2.0, -1.0, 0.5, 0.0]])
      >>> fp8mm.dequantize_fp8(fp8mm.quantize_fp8(x, fp8mm.e4m3_code(), 32)).tolist()
      [[2.0, -1.0, 0.5, 0.0]]
    """
    _check_fp8_tensor(t)
    dtype = _checks.check_out_dtype(dtype)
    vals = t.data.astype(jnp.float32)
    if t.blocksize is None:
        return (vals * t.scale).astype(dtype)
    n, bs = vals.size, t.blocksize
    nb = -(-n // bs)
    flat = jnp.pad(vals.reshape(-1), (0, nb * bs - n)).reshape(nb, bs) * t.scale[:, None]
    return flat.reshape(-1)[:n].reshape(t.shape).astype(dtype)


def row_scale_reason(cols: int, blocksize: int | None) -> str | None:
    """None when blocks of `blocksize` give each row of `cols` columns whole-chunk scales."""
    if blocksize is None or cols == 0 or cols % blocksize == 0 or blocksize % cols == 0:
        return None
    return (
        f"blocks of {blocksize} elements straddle rows of {cols} (neither divides the other), "
        "so no row has its own scales"
    )


def fp8_row_scales(t: Fp8Tensor) -> jax.Array:
    """t's scales as `fp8_scaled_matmul` takes them: float32 [rows, C] for 2-D data [rows, cols].

    Global: the scale on every row (C = 1). Blockwise with blocksize dividing
    cols: C = cols / blocksize chunks per row. Blockwise with cols dividing
    blocksize: each row lies in one block (C = 1).

    Raises:
      ValueError: data is not 2-D, or blocks straddle rows (`row_scale_reason`).
    """
    _check_fp8_tensor(t)
    if len(t.shape) != 2:
        raise ValueError(f"fp8_row_scales needs 2-D data, got shape {t.shape}")
    rows, cols = t.shape
    why = row_scale_reason(cols, t.blocksize)
    if why is not None:
        raise ValueError(f"fp8_row_scales: {why}")
    if t.blocksize is None:
        return jnp.broadcast_to(t.scale, (rows, 1))
    if cols % t.blocksize == 0 and cols:
        return t.scale.reshape(rows, cols // t.blocksize)
    per = t.blocksize // max(cols, 1)
    return jnp.repeat(t.scale, per)[:rows].reshape(rows, 1)


def fp8_scaled_matmul(
    A: jax.Array,
    B: jax.Array,
    a_scale: jax.Array,
    b_scale: jax.Array,
    out_dtype=jnp.bfloat16,
    *,
    implementation: Impl = None,
) -> jax.Array:
    """FP8 GEMM with the scales applied in float32 after accumulation, rounded once.

    out[i, j] = (Σ_c (Σ_{l in chunk c} A[i, l] B[j, l]) * a_scale[i, c]) * b_scale[j]
    (b_scale may be a scalar). With C = 1 chunk this is `(acc * a_scale) * b_scale`.

    Args:
      A: float8_e4m3fn or float8_e5m2 [m, k]; B: float8 [n, k] (both K-major).
      a_scale: float32 [m, C], C >= 1 dividing k (`fp8_row_scales`).
      b_scale: float32 [] or [n].
      out_dtype: float32, float16 or bfloat16.
      implementation: None, "xla", "pallas", a kernel name or a sequence of these.

    Returns:
      out_dtype [m, n].

    Examples:
      >>> import jax.numpy as jnp, fp8mm
      >>> a = jnp.array([[2.0, 4.0]], jnp.float8_e4m3fn)
      >>> b = jnp.array([[1.0, 1.0]], jnp.float8_e4m3fn)
      >>> fp8mm.fp8_scaled_matmul(a, b, jnp.array([[0.5]]), jnp.array(3.0), jnp.float32).tolist()
      [[9.0]]
    """
    for name, x in (("A", A), ("B", B)):
        _checks.check_array(name, x)
        if np.dtype(x.dtype) not in FP8_DTYPES:
            raise TypeError(f"{name} must be float8_e4m3fn or float8_e5m2, got {x.dtype}")
        _checks.check_ndim(name, x, 2)
    if A.shape[1] != B.shape[1]:
        raise ValueError(
            f"A [m, k] and B [n, k] must share k, got A {tuple(A.shape)} and B {tuple(B.shape)}"
        )
    (m, k), n = A.shape, B.shape[0]
    _checks.check_dtype("a_scale", a_scale, jnp.float32)
    _checks.check_dtype("b_scale", b_scale, jnp.float32)
    if a_scale.ndim != 2 or a_scale.shape[0] != m or a_scale.shape[1] < 1 or k % a_scale.shape[1]:
        raise ValueError(
            f"a_scale must be float32 [m={m}, C] with C >= 1 dividing k={k}, "
            f"got {tuple(a_scale.shape)}"
        )
    if tuple(b_scale.shape) not in ((), (n,)):
        raise ValueError(f"b_scale must be float32 [] or [n={n}], got {tuple(b_scale.shape)}")
    out_dtype = _checks.check_out_dtype(out_dtype)
    return _FP8_SCALED_MATMUL(A, B, a_scale, b_scale, out_dtype, implementation=implementation)
