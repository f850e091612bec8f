"""What every fp8mm nnx layer shares: static options (codes as `StaticCode`), `Int8Weight`.

Shared by `fp8mm.nn.nnx` (the Linear layers) and `fp8mm.nn._nnx_general` (the
LinearGeneral / Einsum layers); `fp8mm.nn.nnx.StaticCode` and
`fp8mm.nn.nnx.Int8Weight` are the public names.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fp8mm import _host
from fp8mm.nn import _core
from fp8mm.nn import _flax_compat as compat

__all__ = ["Int8Weight", "StaticCode", "code_value", "finish_product", "static_option"]


class Int8Weight(nnx.Variable):
    """An int8 inference weight or its scales: not an `nnx.Param`, so never trained.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from fp8mm.nn import nnx as fnnx
      >>> layer = fnnx.SwitchBackLinear(32, 16, rngs=nnx.Rngs(0))
      >>> layer.to_int8()  # CB int8 [out, in], SCB float32 [out]
      >>> type(layer.CB).__name__, layer.CB.shape, len(nnx.state(layer, nnx.Param))
      ('Int8Weight', (16, 32), 1)
    """


class StaticCode:
    """A float32 [256] codebook held as static (compile-time) data of an nnx layer.

    nnx treats arrays as state; a codebook is configuration, as it is in linen,
    so the layer keeps this hashable read-only host copy instead (in its graph
    definition, compared by value when `nnx.jit` looks up a compiled program).
    `np.asarray(code)` gives the array.
    """

    __slots__ = ("_value",)

    def __init__(self, code: Any, *, name: str = "code"):
        value = _host.concrete_float32(_core.check_code_option(name, code))
        if value is None:
            raise TypeError(
                f"{name} must be a concrete array (an nnx layer keeps its code as a "
                "compile-time constant), got a traced value: build the layer outside jit"
            )
        value = value.copy()
        value.setflags(write=False)
        self._value = value

    @property
    def value(self) -> np.ndarray:
        return self._value

    @property
    def shape(self) -> tuple[int, ...]:
        return self._value.shape

    @property
    def dtype(self) -> np.dtype:
        return self._value.dtype

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.array(self._value, dtype=dtype)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StaticCode) and self._value.tobytes() == other._value.tobytes()

    def __hash__(self) -> int:
        return hash(self._value.tobytes())

    def __repr__(self) -> str:
        return f"StaticCode(float32[256], min={self._value.min():.4g}, max={self._value.max():.4g})"


def static_option(name: str, value: Any) -> Any:
    """An option as the layer keeps it: an array (a code) as a `StaticCode`."""
    return StaticCode(value, name=name) if isinstance(value, (np.ndarray, jax.Array)) else value


def code_value(code: Any) -> Any:
    return code.value if isinstance(code, StaticCode) else code


def finish_product(module: nnx.Module, y: jax.Array, cols: jax.Array | None) -> jax.Array:
    """A layer's product y as nnx layers return it: outlier columns sown, cast as asked.

    Outlier columns (SwitchBack with a threshold) are sown as `nnx.Intermediate`
    under `nnx.capture` (flax >= 0.12.6); `preferred_element_type` casts y.
    """
    if cols is not None and compat.should_sow(module):
        module.sow(nnx.Intermediate, "outlier_cols", cols)
        module.sow(nnx.Intermediate, "outlier_count", jnp.sum(cols, dtype=jnp.int32))
    if module.preferred_element_type is not None:
        y = y.astype(module.preferred_element_type)
    return y
