"""Argument validation shared by the reference, the kernels and the public API.

Every check raises `TypeError` (wrong dtype or type) or `ValueError` (wrong
shape or value) with a message naming the argument and the offending value, so
bad input fails at the call site and never deep inside XLA.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from fp8mm import _host

FLOAT_DTYPES = (np.dtype(jnp.float32), np.dtype(jnp.float16), np.dtype(jnp.bfloat16))
VALID_BLOCKSIZES = tuple(2**i for i in range(5, 13))  # 32 ... 4096


def dtype_of(x) -> np.dtype:
    return np.dtype(getattr(x, "dtype", None) or np.asarray(x).dtype)


def check_array(name: str, x) -> None:
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name} must be an array, got {type(x).__name__}")


def check_float(name: str, x) -> None:
    check_array(name, x)
    if dtype_of(x) not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got dtype {x.dtype}")


def check_dtype(name: str, x, dtype) -> None:
    check_array(name, x)
    if dtype_of(x) != np.dtype(dtype):
        raise TypeError(f"{name} must have dtype {np.dtype(dtype).name}, got {x.dtype}")


def check_min_ndim(name: str, x, ndim: int) -> None:
    if len(x.shape) < ndim:
        raise ValueError(
            f"{name} must have at least {ndim} dimension(s), got shape {tuple(x.shape)}"
        )


def check_ndim(name: str, x, ndim: int) -> None:
    if len(x.shape) != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(x.shape)}")


def check_code(code) -> None:
    check_array("code", code)
    if tuple(code.shape) != (256,):
        raise ValueError(f"code must have shape (256,), got {tuple(code.shape)}")
    if dtype_of(code) != np.dtype(np.float32):
        raise TypeError(f"code must be float32, got dtype {code.dtype}")
    # Only a concrete code can be checked; a NaN or inf entry breaks the sorted
    # midpoint model that every implementation relies on.
    host = _host.concrete_float32(code)
    if host is not None and not np.all(np.isfinite(host)):
        bad = int(np.flatnonzero(~np.isfinite(host))[0])
        raise ValueError(f"code must be finite, got {host[bad]} at index {bad}")


def check_blocksize(blocksize) -> int:
    if isinstance(blocksize, bool) or not isinstance(blocksize, (int, np.integer)):
        raise TypeError(f"blocksize must be an int, got {blocksize!r}")
    if int(blocksize) not in VALID_BLOCKSIZES:
        raise ValueError(f"blocksize must be a power of two in [32, 4096], got {blocksize}")
    return int(blocksize)


def check_threshold(threshold) -> float:
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise TypeError(f"threshold must be a Python number, got {threshold!r}") from None
    if not math.isfinite(t) or t < 0:
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}")
    return t


def check_out_dtype(out_dtype) -> np.dtype:
    """A float16/bfloat16/float32 output dtype, as np.dtype."""
    try:
        dt = np.dtype(out_dtype)
    except TypeError:
        raise TypeError(f"out_dtype must be a dtype, got {out_dtype!r}") from None
    if dt not in FLOAT_DTYPES:
        raise ValueError(f"out_dtype must be float16, bfloat16 or float32, got {dt.name}")
    return dt
