"""Quantization states: immutable pytrees that carry what a quantized tensor needs.

These are plain data containers (no computation), so every layer can import
them: `QuantState` describes a codebook-quantized tensor, `Fp8Tensor` the same
codes as float8 bytes with float32 scales (the native-FP8 matmuls' operands),
`MatmulLtState` the configuration and optional pre-quantized int8 weight of a
SwitchBack matmul.
Where bitsandbytes mutates its state objects, fp8mm returns new values instead.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from fp8mm import _checks

__all__ = ["Fp8Tensor", "MatmulLtState", "QuantState"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QuantState:
    """State of a codebook-quantized tensor (global or blockwise).

    Attributes:
      absmax: float32 scales, shape [num_blocks] for blockwise quantization and
        [] (a scalar) for global quantization.
      code: float32 codebook of shape [256] that the uint8 codes index.
      blocksize: elements per block (row-major over the flattened tensor), a
        power of two in [32, 4096], or None for global (whole-tensor)
        quantization. Static.
      dtype: float dtype of the tensor that was quantized; blockwise
        dequantization returns it (global dequantization returns float32). Static.
      shape: shape of the tensor that was quantized. Static.

    The static fields are validated on construction. The arrays are validated
    by `fp8mm.dequantize`/`fp8mm.dequantize_blockwise` (absmax float32 of shape
    [ceil(prod(shape) / blocksize)] or [], code float32 [256], sorted when
    concrete), since JAX also rebuilds states with non-array leaves.
    """

    absmax: jax.Array
    code: jax.Array
    blocksize: int | None = dataclasses.field(metadata=dict(static=True))
    dtype: Any = dataclasses.field(metadata=dict(static=True))
    shape: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))

    def __post_init__(self):
        # Only the static fields are checked here: JAX rebuilds pytrees with arbitrary
        # leaves (sentinels, PartitionSpecs, stacked arrays), so the arrays are checked
        # where they are used (`fp8mm.dequantize*`).
        if self.blocksize is not None:
            _checks.check_blocksize(self.blocksize, "QuantState.blocksize")
        try:
            # np.dtype(None) is float64: a None would be misreported as "got float64".
            if self.dtype is None:
                raise TypeError
            dtype = np.dtype(self.dtype)
        except (TypeError, ValueError):
            raise TypeError(
                f"QuantState.dtype must be a dtype (float32, float16 or bfloat16), "
                f"got {self.dtype!r}"
            ) from None
        if dtype not in _checks.FLOAT_DTYPES:
            raise TypeError(
                f"QuantState.dtype must be float32, float16 or bfloat16 (the dtype of the "
                f"quantized tensor), got {dtype.name}"
            )
        object.__setattr__(self, "dtype", dtype)
        shape = self.shape
        if not isinstance(shape, (tuple, list)) or not all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 0 for s in shape
        ):
            raise TypeError(
                f"QuantState.shape must be a tuple of non-negative ints, got {self.shape!r}"
            )
        object.__setattr__(self, "shape", tuple(int(s) for s in shape))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Fp8Tensor:
    """A tensor quantized with bitsandbytes' e4m3 or e5m2 code, held as float8 bytes.

    Element i of block b stands for `data[i] * scale[b]` (float32), the value
    bitsandbytes' `code[q] * absmax[b]` dequantizes to (`fp8mm.quantize_fp8`).

    Attributes:
      data: float8_e4m3fn or float8_e5m2, the quantized tensor's shape.
      scale: float32, [num_blocks] (blockwise: absmax / format scale of each
        block of `blocksize` row-major elements) or [] (global).
      blocksize: elements per block, or None for global quantization. Static.
    """

    data: jax.Array
    scale: jax.Array
    blocksize: int | None = dataclasses.field(default=None, metadata=dict(static=True))

    def __post_init__(self):
        if self.blocksize is not None:
            _checks.check_blocksize(self.blocksize, "Fp8Tensor.blocksize")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MatmulLtState:
    """Configuration of a SwitchBack int8 matmul (bitsandbytes' `MatmulLtState`).

    Attributes:
      threshold: a real number >= 0 (not a bool or a string); inputs with
        |x| >= threshold are outliers, and their columns are multiplied in 16
        bits instead of int8. 0 disables the decomposition. Static.
      has_fp16_weights: a bool. True when the weight is trained in 16/32 bits
        and quantized on every call; False for int8 inference weights given in
        `CB`/`SCB`, which are then used as they are. Static.
      CB: optional int8 weight, shape [out, in] (row-wise quantized).
      SCB: optional float32 row scales of `CB`, shape [out].

    Array CB/SCB are checked on construction (dtypes, and SCB one scale per row
    of CB); leading axes shared by both are allowed so that states can be stacked
    for `lax.scan`/`vmap`, and `fp8mm.switchback_bnb` then needs exactly [out, in].
    """

    threshold: float = dataclasses.field(default=0.0, metadata=dict(static=True))
    has_fp16_weights: bool = dataclasses.field(default=True, metadata=dict(static=True))
    CB: jax.Array | None = None
    SCB: jax.Array | None = None

    def __post_init__(self):
        thr = _checks.check_threshold(self.threshold, "MatmulLtState.threshold")
        object.__setattr__(self, "threshold", thr)
        # A truthy string such as "no" would otherwise quantize the weight on every call.
        hfw = _checks.check_bool("MatmulLtState.has_fp16_weights", self.has_fp16_weights)
        object.__setattr__(self, "has_fp16_weights", hfw)
        if (self.CB is None) != (self.SCB is None):
            raise ValueError("MatmulLtState needs both CB and SCB, or neither")
        if not self.has_fp16_weights and self.CB is None:
            raise ValueError(
                "MatmulLtState(has_fp16_weights=False) needs the int8 weight CB and its "
                "scales SCB; build it with fp8mm.prepare_int8_weight(B)"
            )
        for name in ("CB", "SCB"):
            # A list would be taken as a pytree of scalars; JAX itself never makes one here.
            if isinstance(getattr(self, name), list):
                raise TypeError(
                    f"MatmulLtState.{name} must be an array, got list (convert it with jnp.asarray)"
                )
        if _is_array(self.CB) and _is_array(self.SCB):
            _check_int8_weight(self.CB, self.SCB)


def _is_array(x) -> bool:
    # JAX rebuilds pytrees with non-array leaves (sentinel objects in vmap's in_axes,
    # PartitionSpecs in shard_map specs, float0 cotangents): only real arrays are checked.
    dtype = getattr(x, "dtype", None)
    return hasattr(x, "shape") and dtype is not None and dtype != jax.dtypes.float0


def _check_int8_weight(CB, SCB) -> None:
    """CB int8 [..., n, k] and SCB float32 [..., n].

    Leading axes are allowed so that states can be stacked (jax.tree.map(jnp.stack, ...))
    for lax.scan or vmap; `switchback_bnb` needs exactly CB [n, k] and SCB [n].
    """
    _checks.check_dtype("MatmulLtState.CB", CB, np.int8)
    _checks.check_dtype("MatmulLtState.SCB", SCB, np.float32)
    if len(CB.shape) < 2 or tuple(SCB.shape) != tuple(CB.shape[:-1]):
        raise ValueError(
            f"MatmulLtState needs CB int8 [n, k] and SCB float32 [n] (one scale per row of "
            f"CB), got CB {tuple(CB.shape)} and SCB {tuple(SCB.shape)}; build them with "
            "fp8mm.prepare_int8_weight(B)"
        )
