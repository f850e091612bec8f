"""Codebooks (256-entry float32 lookup tables) identical to bitsandbytes 0.49.2.

`create_fp8_map` builds the simulated-FP8 grids used by the fp8 matmuls and
`create_dynamic_map` the dynamic tree map of bitsandbytes' 8-bit optimizers.
Both are built with float32 arithmetic that follows PyTorch step by step, so the
tables agree with bitsandbytes to the last bit (checked against the golden file).
Arguments that give no usable table (a zero maximum, a float32 overflow, a map
bitsandbytes' own assertion rejects) raise ValueError instead of returning NaN.
`dynamic_code()` is the cached dynamic map that the primitives use for code=None.
`native_format(code)` says whether a code is a scaled float8 grid (bitsandbytes'
e4m3 and e5m2 codes are), which the native-FP8 matmuls multiply on FP8 tensor cores.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import ml_dtypes
import numpy as np

__all__ = [
    "Fp8Format",
    "create_dynamic_map",
    "create_fp8_map",
    "dynamic_code",
    "e4m3_code",
    "e5m2_code",
    "native_format",
]


def create_fp8_map(
    signed: bool = True, exponent_bits: int = 5, precision_bits: int = 2, total_bits: int = 8
) -> np.ndarray:
    """Returns the bitsandbytes simulated-FP8 codebook.

    For every exponent field E in [0, 2**exponent_bits) and mantissa m, E > 0
    gives (1 + m) * 2**(bias + 1 - E) and E == 0 gives m * 2**-bias, with
    bias = 2**(exponent_bits - 1); both signs when `signed`; sorted and divided
    by the maximum. The grid is not `float8_e4m3fn`: it has no inf/NaN, holds
    zero twice when signed and reaches 480 times its smallest normal step.

    Args:
      signed: whether the code holds negative values.
      exponent_bits: width of the exponent field.
      precision_bits: width of the mantissa field.
      total_bits: code width; exponent + precision (+ sign) must equal it.

    Returns:
      float32 array of shape [256], sorted, in [-1, 1].
    """
    _check_bool("signed", signed)
    _check_bits("exponent_bits", exponent_bits, 0)
    _check_bits("precision_bits", precision_bits, 0)
    _check_bits("total_bits", total_bits, 1, 8)
    if exponent_bits + precision_bits != total_bits - (1 if signed else 0):
        raise ValueError(
            f"exponent_bits + precision_bits must equal total_bits - sign bit: got "
            f"{exponent_bits} + {precision_bits} with total_bits={total_bits}, signed={signed}"
        )
    args = (
        f"create_fp8_map(signed={signed}, exponent_bits={exponent_bits}, "
        f"precision_bits={precision_bits}, total_bits={total_bits})"
    )
    if exponent_bits == 0 and precision_bits == 0:
        # The only value is 0, and dividing by a zero maximum would give an all-NaN table.
        raise ValueError(
            f"{args} has no non-zero value (its maximum is 0); give it at least one "
            "exponent or precision bit"
        )
    # The largest value is (1 + m) * 2**bias (exponent field 1), bias = 2**(e - 1): from 8
    # exponent bits on it overflows float32, and the table would be inf and NaN.
    if exponent_bits >= 8:
        raise ValueError(
            f"{args}: the largest grid value 2**{2 ** (exponent_bits - 1)} overflows float32; "
            "use at most 7 exponent bits"
        )
    bias = 2 ** (exponent_bits - 1)
    values = []
    for e in range(2**exponent_bits):
        for bits in itertools.product([0, 1], repeat=precision_bits):
            v = 1.0 if e != 0 else 0.0
            for i, b in enumerate(bits):
                v += b * 2.0 ** -(i + 1)
            v = v * 2.0**-bias if e == 0 else v * 2.0 ** -(e - bias - 1)
            values.append(v)
            if signed:
                values.append(-v)
    values.extend([0.0] * (256 - len(values)))
    values.sort()
    code = np.asarray(values, dtype=np.float32)
    return code / code.max()


def _check_bool(name: str, value) -> None:
    # A truthy string ("yes", "no") must not silently pick the signed grid.
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool (True or False), got {value!r}")


def _check_bits(name: str, value, low: int, high: int | None = None) -> None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r} of type {type(value).__name__}")
    if value < low or (high is not None and value > high):
        span = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {span}, got {value}")


def _torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """float32 `torch.linspace` on the CPU, rounding as its compiled kernel does.

    PyTorch computes the step in float32, fills the first half forwards from
    `start` and the second half backwards from `end`, and its compiler fuses
    each `start + step * i` into one fused multiply-add. A float32 product is
    exact in float64, so the float64 sum rounded once to float32 reproduces it.
    """
    start32, end32 = np.float32(start), np.float32(end)
    step = np.float64(np.float32((end32 - start32) / np.float32(steps - 1)))
    i = np.arange(steps, dtype=np.float64)
    fwd = np.float64(start32) + step * i
    bwd = np.float64(end32) - step * (steps - 1 - i)
    return np.where(i < steps // 2, fwd, bwd).astype(np.float32)


def create_dynamic_map(
    signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8
) -> np.ndarray:
    """Returns the bitsandbytes dynamic tree quantization map.

    Args:
      signed: whether the map holds negative values.
      max_exponent_bits: number of decimal exponents covered.
      total_bits: code width (at most 8).

    Returns:
      float32 array of shape [256], sorted; the signed map spans [-0.99297, 1].
    """
    _check_bool("signed", signed)
    _check_bits("total_bits", total_bits, 2, 8)
    _check_bits("max_exponent_bits", max_exponent_bits, 1, total_bits - 1)
    if not signed and max_exponent_bits != total_bits - 1:
        # bitsandbytes asserts that the map has 2**total_bits entries, which an unsigned
        # map only has with max_exponent_bits == total_bits - 1; it builds no table otherwise.
        raise ValueError(
            f"create_dynamic_map(signed=False, max_exponent_bits={max_exponent_bits}, "
            f"total_bits={total_bits}): an unsigned map needs max_exponent_bits == "
            f"total_bits - 1 = {total_bits - 1} (bitsandbytes rejects the others)"
        )
    data: list[float] = []
    non_sign_bits = total_bits - 1
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    for i in range(max_exponent_bits):
        shift = i + non_sign_bits - max_exponent_bits
        fraction_items = int(2**shift + 1 if signed else 2 ** (shift + 1) + 1)
        b = _torch_linspace_f32(0.1, 1.0, fraction_items)
        means = (b[:-1] + b[1:]) / np.float32(2.0)
        scale = np.float32(10.0 ** (-(max_exponent_bits - 1) + i))
        data += (scale * means).tolist()
        if signed:
            data += (-scale * means).tolist()
    if additional_items > 0:
        b = _torch_linspace_f32(0.1, 1.0, additional_items + 1)
        means = (b[:-1] + b[1:]) / np.float32(2.0)
        scale = np.float32(10.0 ** (-(max_exponent_bits - 1) + max_exponent_bits - 1))
        data += (scale * means).tolist()
        if signed:
            data += (-scale * means).tolist()
    data.append(0.0)
    data.append(1.0)
    data.extend([0.0] * (256 - len(data)))
    data.sort()
    return np.asarray(data, dtype=np.float32)


@functools.cache
def _cached_fp8(exponent_bits: int, precision_bits: int) -> np.ndarray:
    code = create_fp8_map(True, exponent_bits, precision_bits, 8)
    code.setflags(write=False)
    return code


def e4m3_code() -> np.ndarray:
    """The forward code of bitsandbytes' fp8 layers: `create_fp8_map(True, 4, 3, 8)`."""
    return _cached_fp8(4, 3)


def e5m2_code() -> np.ndarray:
    """The backward code of bitsandbytes' fp8 layers: `create_fp8_map(True, 5, 2, 8)`."""
    return _cached_fp8(5, 2)


@functools.cache
def dynamic_code() -> np.ndarray:
    """`create_dynamic_map()`, cached and read-only: the code used when a primitive gets code=None.

    bitsandbytes' `quantize`/`quantize_blockwise` fall back to this map when called
    without a code, and so do fp8mm's codebook primitives and fp8 matmuls.
    """
    code = create_dynamic_map()
    code.setflags(write=False)
    return code


@dataclasses.dataclass(frozen=True, eq=False)
class Fp8Format:
    """A codebook read as a scaled float8 grid: code[i] * scale is (nearly) a float8 value.

    Attributes:
      name: "e4m3" or "e5m2", the bitsandbytes code it describes.
      dtype: the float8 dtype of the bytes (float8_e4m3fn or float8_e5m2).
      scale: code[i] * scale is the float8 value of index i: 240 for e4m3 and
        57344 for e5m2 in their own formats (the grids' largest values), 224 for
        e5m2 carried in float8_e4m3fn (57344 / 2**8).
      table: uint8 [256], index i -> the bits of the float8 value nearest to
        code[i] * scale. Exact for 234 of e4m3's entries and 246 of e5m2's in
        their own formats (the others lie below 6.1e-5 and 1e-9 of absmax, in
        bottom binades bitsandbytes' grids have and float8 lacks), and for the
        134 e5m2 entries above 3.1e-5 of absmax in float8_e4m3fn.
    """

    name: str
    dtype: np.dtype
    scale: float
    table: np.ndarray

    def values(self) -> np.ndarray:
        """float32 [256]: the float8 value of each index (table as float8, widened)."""
        return self.table.view(self.dtype).astype(np.float32)


_E4M3FN = np.dtype(ml_dtypes.float8_e4m3fn)
_E5M2 = np.dtype(ml_dtypes.float8_e5m2)


@functools.cache
def _formats() -> dict[tuple[bytes, str], Fp8Format]:
    out = {}
    for name, code, dtype, scale in (
        ("e4m3", e4m3_code(), _E4M3FN, 240.0),
        ("e5m2", e5m2_code(), _E5M2, 57344.0),
        ("e5m2", e5m2_code(), _E4M3FN, 224.0),
    ):
        # float64 product, one rounding to float8 (round to nearest even).
        table = (code.astype(np.float64) * scale).astype(dtype).view(np.uint8)
        table.setflags(write=False)
        out[code.tobytes(), dtype.name] = Fp8Format(name, dtype, scale, table)
    return out


def native_format(code, dtype=None) -> Fp8Format | None:
    """The float8 format of a concrete codebook, or None if it is no scaled float8 grid.

    Only bitsandbytes' e4m3 (`create_fp8_map(True, 4, 3, 8)`) and e5m2
    (`create_fp8_map(True, 5, 2, 8)`) codes have one: other grids (the dynamic
    map, custom codes) do not sit on a float8 grid and get None.

    Args:
      code: float32 [256] codebook (numpy or a concrete jax array).
      dtype: the float8 dtype to hold the codes in; None: the code's own
        (float8_e4m3fn for e4m3, float8_e5m2 for e5m2). e5m2 codes can also be
        held in float8_e4m3fn (exact above 3.1e-5 of absmax), so that both
        operands of a GEMM share one format.

    Returns:
      Its `Fp8Format`, or None.

    Examples:
      >>> import fp8mm
      >>> fmt = fp8mm.native_format(fp8mm.e4m3_code())
      >>> fmt.name, fmt.dtype.name, fmt.scale
      ('e4m3', 'float8_e4m3fn', 240.0)
      >>> fp8mm.native_format(fp8mm.e5m2_code(), "float8_e4m3fn").scale
      224.0
      >>> fp8mm.native_format(fp8mm.create_dynamic_map()) is None
      True
    """
    data = np.asarray(code, np.float32).tobytes()
    formats = _formats()
    if dtype is None:
        for (key, _), fmt in formats.items():
            if key == data:
                return fmt
        return None
    return formats.get((data, np.dtype(dtype).name))
