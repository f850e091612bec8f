"""Codebooks (256-entry float32 lookup tables) identical to bitsandbytes 0.49.2.

`create_fp8_map` builds the simulated-FP8 grids used by the fp8 matmuls and
`create_dynamic_map` the dynamic tree map of bitsandbytes' 8-bit optimizers.
Both are built with float32 arithmetic that follows PyTorch step by step, so the
tables agree with bitsandbytes to the last bit (checked against the golden file).
"""

from __future__ import annotations

import functools
import itertools

import numpy as np

__all__ = ["create_dynamic_map", "create_fp8_map", "e4m3_code", "e5m2_code"]


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
    for name, v in (("exponent_bits", exponent_bits), ("precision_bits", precision_bits)):
        if not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name} must be a non-negative int, got {v!r}")
    if not isinstance(total_bits, (int, np.integer)) or not 1 <= total_bits <= 8:
        raise ValueError(f"total_bits must be an int in [1, 8], got {total_bits!r}")
    if exponent_bits + precision_bits != total_bits - (1 if signed else 0):
        raise ValueError(
            f"exponent_bits + precision_bits must equal total_bits - sign bit: got "
            f"{exponent_bits} + {precision_bits} with total_bits={total_bits}, signed={signed}"
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
    if not isinstance(total_bits, (int, np.integer)) or not 1 <= total_bits <= 8:
        raise ValueError(f"total_bits must be an int in [1, 8], got {total_bits!r}")
    if not isinstance(max_exponent_bits, (int, np.integer)) or not (
        1 <= max_exponent_bits <= total_bits - 1
    ):
        raise ValueError(
            f"max_exponent_bits must be an int in [1, total_bits - 1], got {max_exponent_bits!r}"
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
