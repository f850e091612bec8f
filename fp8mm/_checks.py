"""Argument validation shared by the reference, the kernels and the public API.

Every check raises `TypeError` (wrong dtype or type) or `ValueError` (wrong
shape or value) with a message naming the argument and the offending value and
saying what to pass instead, so bad input fails at the call site and never deep
inside XLA.

Conventions (the same for every public function):

* Array operands must be arrays (jax or NumPy) of a supported dtype. float64
  NumPy arrays are rejected rather than silently computed in float32 (JAX
  without x64 would narrow them); cast them first. Python lists are rejected
  as operands; only codebooks may be given as lists (see `fp8mm.functional`).
* Configuration arguments (block sizes, thresholds) select the compiled
  program, so they must be static Python numbers: a traced value under
  `jax.jit` is refused with a hint to mark it static.
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from fp8mm import _host, codebooks

FLOAT_DTYPES = (np.dtype(jnp.float32), np.dtype(jnp.float16), np.dtype(jnp.bfloat16))
VALID_BLOCKSIZES = tuple(2**i for i in range(5, 13))  # 32 ... 4096
# int8 x int8 products are at most 128**2 in magnitude (-128 * -128); an int32 sum of k of
# them cannot overflow while k * 128**2 <= 2**31 - 1.
MAX_INT8_K = (2**31 - 1) // 128**2  # 131071


def dtype_of(x, name: str = "x") -> np.dtype:
    """x's dtype as np.dtype; a TypeError naming `name` when it is not a NumPy/JAX dtype."""
    dt = getattr(x, "dtype", None)
    try:
        return np.dtype(dt) if dt is not None else np.asarray(x).dtype
    except TypeError:
        raise TypeError(
            f"{name} has dtype {dt!r}, which is not a NumPy/JAX dtype; pass a jax.Array or a "
            "NumPy array"
        ) from None


def check_array(name: str, x) -> None:
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        hint = " (convert it with jnp.asarray)" if isinstance(x, (list, tuple)) else ""
        raise TypeError(f"{name} must be an array, got {type(x).__name__}{hint}")


def check_float(name: str, x) -> None:
    check_array(name, x)
    dt = dtype_of(x, name)
    if dt not in FLOAT_DTYPES:
        hint = ""
        if dt == np.float64:
            # JAX without x64 would narrow it anyway; make the narrowing the caller's choice.
            hint = "; cast it first, e.g. x.astype(np.float32) (fp8mm does not compute in float64)"
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got dtype {dt.name}{hint}")


def check_dtype(name: str, x, dtype) -> None:
    check_array(name, x)
    dt = dtype_of(x, name)
    if dt != np.dtype(dtype):
        raise TypeError(f"{name} must have dtype {np.dtype(dtype).name}, got {dt.name}")


def check_min_ndim(name: str, x, ndim: int) -> None:
    if len(x.shape) < ndim:
        raise ValueError(
            f"{name} must have at least {ndim} dimension(s), got shape {tuple(x.shape)}"
        )


def check_ndim(name: str, x, ndim: int) -> None:
    if len(x.shape) != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(x.shape)}")


def check_int8_k(k: int, where: str) -> None:
    """Refuses an inner dimension whose int32 accumulation could wrap around."""
    if k > MAX_INT8_K:
        raise ValueError(
            f"{where}: inner dimension k = {k} exceeds {MAX_INT8_K} = (2**31 - 1) // 128**2, "
            "the largest k for which an int32 sum of int8 x int8 products cannot overflow "
            "(it would wrap silently); split k into chunks of at most "
            f"{MAX_INT8_K} and add the dequantized partial products"
        )


def check_static(name: str, value, kind: str) -> None:
    """Refuses a traced value for an argument that selects the compiled program."""
    if isinstance(value, jax.core.Tracer):
        raise TypeError(
            f"{name} must be a static Python {kind}, got a traced value {value!r}; it selects "
            f"the compiled program, so under jax.jit mark it static (e.g. "
            f"jax.jit(f, static_argnames=({name!r},))) or close over a Python constant"
        )


def check_code(code, name: str = "code") -> None:
    """A float32 [256] codebook; a concrete one must also be finite and sorted.

    Only a concrete code can be checked for its values: a traced code (an
    argument of a jitted function) is taken as it is, and an unsorted or
    non-finite one then gives implementation-dependent garbage.
    """
    check_array(name, code)
    if tuple(code.shape) != (256,):
        raise ValueError(f"{name} must have shape (256,), got {tuple(code.shape)}")
    dt = dtype_of(code, name)
    if dt != np.dtype(np.float32):
        raise TypeError(f"{name} must be float32, got dtype {dt.name}")
    # A NaN, an inf or an unsorted entry breaks the sorted midpoint model of the nearest-code
    # search that every implementation relies on (XLA and Pallas would then disagree).
    host = _host.concrete_float32(code)
    if host is None:
        return
    if not np.all(np.isfinite(host)):
        bad = int(np.flatnonzero(~np.isfinite(host))[0])
        raise ValueError(f"{name} must be finite, got {host[bad]} at index {bad}")
    down = np.flatnonzero(host[1:] < host[:-1])
    if down.size:
        i = int(down[0])
        raise ValueError(
            f"{name} must be sorted ascending (non-decreasing), got {name}[{i}] = {host[i]} > "
            f"{name}[{i + 1}] = {host[i + 1]}; sort it first (np.sort), as create_fp8_map and "
            "create_dynamic_map return it"
        )


def check_blocksize(blocksize, name: str = "blocksize", *, auto: bool = False) -> int:
    """A static power of two in [32, 4096]; with `auto`, the messages also offer -1."""
    check_static(name, blocksize, "int")
    alt = " or -1 (automatic, get_block_sizes)" if auto else ""
    if isinstance(blocksize, (bool, np.bool_)) or not isinstance(blocksize, (int, np.integer)):
        raise TypeError(
            f"{name} must be an int (a power of two in [32, 4096]{alt}), got {blocksize!r} of "
            f"type {type(blocksize).__name__}"
        )
    if int(blocksize) not in VALID_BLOCKSIZES:
        raise ValueError(
            f"{name} must be a power of two in [32, 4096] (one of {VALID_BLOCKSIZES}){alt}, "
            f"got {blocksize}"
        )
    return int(blocksize)


def check_threshold(threshold, name: str = "threshold") -> float:
    """A static, finite threshold >= 0 as a Python float.

    Only real numbers count: a bool or a string would otherwise be read as 1.0
    or parsed by float(), and a jax array cannot select a compiled program.
    """
    check_static(name, threshold, "float")
    if isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, numbers.Real):
        raise TypeError(
            f"{name} must be a real number (int, float or NumPy scalar), got {threshold!r} "
            f"of type {type(threshold).__name__}"
        )
    t = float(threshold)
    if not math.isfinite(t) or t < 0:
        raise ValueError(
            f"{name} must be a finite number >= 0 (0 disables the outlier decomposition), "
            f"got {threshold!r}"
        )
    return t


def check_bool(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool (True or False), got {value!r}")
    return bool(value)


# "pallas" is the best Pallas kernel that serves a call; the others name one kernel.
KERNEL_NAMES = ("pallas_triton", "pallas_mosaic_gpu")
IMPLEMENTATION_NAMES = ("xla", "pallas", *KERNEL_NAMES)


def check_implementation(implementation) -> None:
    """None, one implementation name, or a non-empty sequence of them (`fp8mm.dispatch`)."""
    if implementation is None:
        return
    names = [implementation] if isinstance(implementation, str) else implementation
    ok = isinstance(names, (list, tuple)) and len(names) > 0
    if ok:
        ok = all(isinstance(n, str) and n in IMPLEMENTATION_NAMES for n in names)
    if not ok:
        raise ValueError(
            "implementation must be None, 'xla' or 'pallas', a kernel name "
            f"({', '.join(map(repr, KERNEL_NAMES))}) or a non-empty sequence of these, "
            f"got {implementation!r}"
        )


def check_out_dtype(out_dtype) -> np.dtype:
    """A float16/bfloat16/float32 output dtype, as np.dtype."""
    # np.dtype(None) is float64: a None would be misreported as "got float64".
    if out_dtype is None:
        raise TypeError("out_dtype must be a dtype (float16, bfloat16 or float32), got None")
    try:
        dt = np.dtype(out_dtype)
    except (TypeError, ValueError):
        raise TypeError(
            f"out_dtype must be a dtype (float16, bfloat16 or float32), got {out_dtype!r}"
        ) from None
    if dt not in FLOAT_DTYPES:
        raise ValueError(f"out_dtype must be float16, bfloat16 or float32, got {dt.name}")
    return dt


def as_code(code, name: str = "code") -> jax.Array | np.ndarray:
    """The codebook to quantize with: None is the dynamic map, as in bitsandbytes."""
    if code is None:
        return codebooks.dynamic_code()
    # numpy stays numpy (a concrete code lets the kernels cache their lookup table).
    if isinstance(code, (list, tuple)):
        code = np.asarray(code)
        if code.dtype.kind not in "fiu" or code.dtype == np.bool_:
            raise TypeError(f"{name} must be a list of floats, got a list of {code.dtype}")
        if code.dtype.kind == "f":
            code = code.astype(np.float32)
    elif isinstance(code, np.ndarray) and code.dtype == np.float64:
        # float64 is NumPy's default; jnp.asarray would make it float32 the same way.
        code = code.astype(np.float32)
    check_code(code, name)
    return code


def check_out(value, name: str = "out", *, before: str | None = None, returned: str = "") -> None:
    """bitsandbytes' output buffer `name`, kept at its position for parity: only None.

    A non-array value is most likely the next bitsandbytes argument shifted by one
    (fp8mm's older order had no `out`), so the message names the argument to pass
    by keyword (`before`).
    """
    if value is None:
        return
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        got = f"an array of shape {tuple(value.shape)}"
        hint = ""
    else:
        text = repr(value)
        got = type(value).__name__ + (f" {text}" if len(text) <= 40 else "")
        hint = f"; {name} comes before {before} (bitsandbytes' order): pass {before}= by keyword"
        hint = hint if before else ""
    raise ValueError(
        f"{name} must be None, got {got}: JAX arrays are immutable; use the returned "
        f"{returned or 'array'}{hint}"
    )


def check_nested(nested) -> None:
    """bitsandbytes' `nested=` (double quantization of absmax): only False."""
    if check_bool("nested", nested):
        raise NotImplementedError(
            "nested=True (bitsandbytes' nested quantization of absmax) is not implemented in "
            "fp8mm; pass nested=False"
        )


def quant_state(q, state, absmax, code, blocksize=None, *, blockwise: bool, alias=None):
    """The validated `QuantState` to dequantize q with.

    Either the state passed (as `state` or its other name `alias`: bitsandbytes'
    `quant_state` and fp8mm's `state`), or, as bitsandbytes does without one,
    a state built from absmax, code (None: the dynamic map) and, for blockwise
    codes, blocksize, for a float32 result of q's shape. The state must agree
    with q and with itself (a hand-built one included).
    """
    from fp8mm.state import QuantState  # fp8mm.state imports this module

    if alias is not None:
        if state is not None:
            raise TypeError(
                "got both quant_state and state (bitsandbytes' and fp8mm's name of the same "
                "parameter); pass one"
            )
        state = alias
    name = "state.absmax"
    if state is None:
        if absmax is None:
            raise TypeError(
                "no state given: pass the QuantState that quantized q, or bitsandbytes' "
                "absmax= (with code= and, for blockwise codes, blocksize=)"
            )
        check_dtype("q", q, jnp.uint8)
        check_dtype("absmax", absmax, jnp.float32)
        blocksize = check_blocksize(blocksize) if blockwise else None
        state = QuantState(absmax, as_code(code), blocksize, jnp.float32, tuple(q.shape))
        name = "absmax"
    elif absmax is not None or code is not None:
        raise ValueError(
            "pass either a state or absmax/code (bitsandbytes' form without a state), not "
            "both: the state carries its absmax and code"
        )
    if not isinstance(state, QuantState):
        raise TypeError(f"state must be a QuantState, got {type(state).__name__}")
    if blockwise and name != "absmax" and blocksize not in (4096, state.blocksize):
        raise ValueError(
            f"blocksize={blocksize!r} disagrees with the state's blocksize {state.blocksize!r}; "
            "leave blocksize out when passing a state"
        )
    check_dtype("q", q, jnp.uint8)
    if tuple(q.shape) != state.shape:
        raise ValueError(f"q has shape {tuple(q.shape)} but state.shape is {state.shape}")
    if blockwise and state.blocksize is None:
        raise ValueError("state comes from global quantize(); use dequantize()")
    if not blockwise and state.blocksize is not None:
        raise ValueError(
            f"state comes from quantize_blockwise(blocksize={state.blocksize}); "
            "use dequantize_blockwise()"
        )
    check_code(state.code, "state.code")
    check_dtype(name, state.absmax, jnp.float32)
    if blockwise:
        bs = check_blocksize(state.blocksize, "state.blocksize")
        want = (-(-int(np.prod(state.shape)) // bs),)
        what = f"one per block of {bs} of the {int(np.prod(state.shape))} elements"
    else:
        want, what = (), "a scalar for global quantization"
    if tuple(state.absmax.shape) != want:
        raise ValueError(
            f"{name} must have shape {want} ({what}), got {tuple(state.absmax.shape)}; "
            "pass the state that quantize_blockwise/quantize returned with q"
        )
    return state


def check_absmax(absmax) -> None:
    """None, or a float32 scalar (a whole tensor's absmax handed to a shard's quantization)."""
    if absmax is None:
        return
    check_dtype("absmax", absmax, np.float32)
    if getattr(absmax, "ndim", None) != 0:
        raise ValueError(f"absmax must be a float32 scalar, got shape {np.shape(absmax)}")


def check_axis_names(axis_names) -> tuple[str, ...]:
    """Mesh axis names as a tuple: None -> (), a str -> (str,), a sequence of str as it is."""
    if axis_names is None:
        return ()
    names = (axis_names,) if isinstance(axis_names, str) else tuple(axis_names)
    if not all(isinstance(n, str) for n in names):
        raise TypeError(
            f"axis_names must be a mesh axis name or a tuple of them, got {axis_names!r}"
        )
    return names
