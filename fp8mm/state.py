"""Quantization states: immutable pytrees that carry what a quantized tensor needs.

These are plain data containers (no computation), so every layer can import
them: `QuantState` describes a codebook-quantized tensor, `MatmulLtState` the
configuration and optional pre-quantized int8 weight of a SwitchBack matmul.
Where bitsandbytes mutates its state objects, fp8mm returns new values instead.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

__all__ = ["MatmulLtState", "QuantState"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QuantState:
    """State of a codebook-quantized tensor (global or blockwise).

    Attributes:
      absmax: float32 scales, shape [num_blocks] for blockwise quantization and
        [] (a scalar) for global quantization.
      code: float32 codebook of shape [256] that the uint8 codes index.
      blocksize: elements per block (row-major over the flattened tensor), or
        None for global (whole-tensor) quantization. Static.
      dtype: dtype of the tensor that was quantized; dequantization returns it. Static.
      shape: shape of the tensor that was quantized. Static.
    """

    absmax: jax.Array
    code: jax.Array
    blocksize: int | None = dataclasses.field(metadata=dict(static=True))
    dtype: Any = dataclasses.field(metadata=dict(static=True))
    shape: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))

    def __post_init__(self):
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MatmulLtState:
    """Configuration of a SwitchBack int8 matmul (bitsandbytes' `MatmulLtState`).

    Attributes:
      threshold: inputs with |x| >= threshold are outliers; their columns are
        multiplied in 16 bits instead of int8. 0 disables the decomposition. Static.
      has_fp16_weights: True when the weight is trained in 16/32 bits and
        quantized on every call; False for int8 inference weights given in
        `CB`/`SCB`, which are then used as they are. Static.
      CB: optional int8 weight, shape [out, in] (row-wise quantized).
      SCB: optional float32 row scales of `CB`, shape [out].
    """

    threshold: float = dataclasses.field(default=0.0, metadata=dict(static=True))
    has_fp16_weights: bool = dataclasses.field(default=True, metadata=dict(static=True))
    CB: jax.Array | None = None
    SCB: jax.Array | None = None

    def __post_init__(self):
        thr = float(self.threshold)
        if not np.isfinite(thr) or thr < 0:
            raise ValueError(f"threshold must be a finite number >= 0, got {self.threshold!r}")
        object.__setattr__(self, "threshold", thr)
        if (self.CB is None) != (self.SCB is None):
            raise ValueError("MatmulLtState needs both CB and SCB, or neither")
        if not self.has_fp16_weights and self.CB is None:
            raise ValueError(
                "MatmulLtState(has_fp16_weights=False) needs the int8 weight CB and its "
                "scales SCB; build it with fp8mm.prepare_int8_weight(B)"
            )
