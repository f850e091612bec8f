"""SwitchBack int8 inference weights for linen parameter trees, and the bytes they save.

A trained SwitchBack layer holds a float 'kernel' [in, out]; for inference it
can instead hold 'CB' (int8 [out, in], the row-wise quantized weight in
Linear layout) and 'SCB' (float32 [out] row scales), exactly the
`MatmulLtState(has_fp16_weights=False)` that `fp8mm.prepare_int8_weight`
builds. With threshold 0 the forward output equals the training-mode
layer's (SwitchBack quantizes the weight the same way on every training
call); with threshold > 0 the outlier columns use the dequantized int8 weight,
as bitsandbytes does, so they differ slightly. The int8 leaves sit in
'params': differentiate with `jax.grad(..., allow_int=True)` or split them
off before taking gradients of other layers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from fp8mm import ops

__all__ = ["Int8Report", "int8_inference_params", "tree_bytes"]


def tree_bytes(tree: Any) -> int:
    """Bytes of every array leaf of a pytree."""
    return int(sum(np.dtype(x.dtype).itemsize * np.prod(x.shape) for x in jax.tree.leaves(tree)))


@dataclasses.dataclass(frozen=True)
class Int8Report:
    """Parameter bytes before and after int8 conversion.

    Attributes:
      layers: paths of the converted layers.
      bytes_before: bytes of all parameters before conversion.
      bytes_after: bytes of all parameters after conversion.
    """

    layers: tuple[str, ...]
    bytes_before: int
    bytes_after: int

    @property
    def bytes_saved(self) -> int:
        return self.bytes_before - self.bytes_after

    def __str__(self) -> str:
        return (
            f"int8 weights in {len(self.layers)} layers: parameters {self.bytes_before:,} -> "
            f"{self.bytes_after:,} bytes (saved {self.bytes_saved:,}, "
            f"{100 * self.bytes_saved / max(self.bytes_before, 1):.1f}%)"
        )


def int8_inference_params(
    params: Mapping[str, Any],
    *,
    filter: Callable[[str], bool] | None = None,
) -> tuple[dict[str, Any], Int8Report]:
    """Replaces each Dense-style 'kernel' [in, out] by SwitchBack int8 'CB'/'SCB'.

    Only `SwitchBackDense` layers (or nn.Dense under `quantize_dense("switchback")`)
    understand the converted entries; restrict the conversion with `filter`
    when the tree holds other Dense layers.

    Args:
      params: linen 'params' tree (nested dicts).
      filter: optional predicate on the layer path ("Block_0/Dense_1"); False
        keeps that layer's float kernel.

    Returns:
      (new params, `Int8Report`).
    """
    converted: list[str] = []

    def walk(tree: Mapping[str, Any], path: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        kernel = tree.get("kernel")
        convert = (
            kernel is not None
            and not isinstance(kernel, Mapping)
            and kernel.ndim == 2
            and (filter is None or filter(path))
        )
        for key, value in tree.items():
            if isinstance(value, Mapping):
                out[key] = walk(value, f"{path}/{key}" if path else key)
            elif not (convert and key == "kernel"):
                out[key] = value
        if convert:
            state = ops.prepare_int8_weight(kernel.T)
            out["CB"], out["SCB"] = state.CB, state.SCB
            converted.append(path)
        return out

    new = walk(params, "")
    report = Int8Report(tuple(converted), tree_bytes(params), tree_bytes(new))
    return new, report
