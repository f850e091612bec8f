"""flax.nnx layers: drop-in `nnx.Linear` replacements running fp8mm's 8-bit matmuls.

* `Fp8MixedLinear`, `Fp8GlobalLinear`, `SwitchBackLinear`: the constructor,
  attributes and parameters ('kernel' [in, out], 'bias' [out]) of
  `nnx.Linear`, plus the quantization options.
* `quantize_model(model, kind)`: swaps every `nnx.Linear` of a model for the
  quantized layer in place, keeping its parameter Variables.
* `to_int8_inference(model)`: SwitchBack layers switch to int8 weights
  (`Int8Weight` Variables 'CB' [out, in] int8 and 'SCB' [out] float32).

With `threshold > 0`, SwitchBack layers sow 'outlier_cols' (bool [in]) and
'outlier_count' (int32) as `nnx.Intermediate`: run the model under
`nnx.capture(model, nnx.Intermediate)` to get them (flax < 0.12: they stay on
the layer, `nnx.state(model, nnx.Intermediate)`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes
from flax.nnx.nn.linear import default_bias_init, default_kernel_init
from flax.typing import Dtype, Initializer, PrecisionLike

from fp8mm import ops
from fp8mm.dispatch import Impl
from fp8mm.nn._core import QuantSpec, quantized_dense
from fp8mm.nn._int8 import Int8Report, tree_bytes
from fp8mm.state import MatmulLtState

__all__ = [
    "Fp8GlobalLinear",
    "Fp8MixedLinear",
    "Int8Weight",
    "SwitchBackLinear",
    "quantize_model",
    "to_int8_inference",
]


class Int8Weight(nnx.Variable):
    """An int8 inference weight or its scales: not an `nnx.Param`, so never trained."""


class _QuantLinear(nnx.Module):
    """nnx.Linear's constructor and parameters; subclasses pick the quantized op."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        use_bias: bool = True,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        kernel_init: Initializer = default_kernel_init,
        bias_init: Initializer = default_bias_init,
        promote_dtype: Callable = dtypes.promote_dtype,
        preferred_element_type: Dtype | None = None,
        rngs: nnx.Rngs,
        kernel_metadata: Mapping[str, Any] = MappingProxyType({}),
        bias_metadata: Mapping[str, Any] = MappingProxyType({}),
        implementation: Impl = None,
    ):
        # Same rng draws in the same order as nnx.Linear: equal seeds give equal weights.
        self.kernel = nnx.Param(
            kernel_init(rngs.params(), (in_features, out_features), param_dtype),
            **kernel_metadata,
        )
        self.bias: nnx.Param | None
        if use_bias:
            self.bias = nnx.Param(
                bias_init(rngs.params(), (out_features,), param_dtype), **bias_metadata
            )
        else:
            self.bias = nnx.data(None)
        self.in_features = in_features
        self.out_features = out_features
        self.use_bias = use_bias
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision  # accepted for parity; the ops fix their precision
        self.promote_dtype = promote_dtype
        self.preferred_element_type = preferred_element_type
        self.implementation = implementation

    def spec(self) -> QuantSpec:
        raise NotImplementedError

    @classmethod
    def from_linear(cls, linear: nnx.Linear, **options: Any) -> _QuantLinear:
        """The quantized layer sharing `linear`'s parameter Variables (no copy).

        Args:
          linear: an `nnx.Linear` (or another fp8mm layer).
          **options: this class's quantization options.
        """
        kernel = linear.kernel
        layer = cls(
            linear.in_features,
            linear.out_features,
            use_bias=linear.use_bias,
            dtype=linear.dtype,
            param_dtype=linear.param_dtype,
            precision=linear.precision,
            # Reuse the existing arrays instead of drawing (and allocating) new ones.
            kernel_init=lambda *_: kernel[...],
            bias_init=lambda *_: linear.bias[...],
            promote_dtype=linear.promote_dtype,
            preferred_element_type=linear.preferred_element_type,
            rngs=nnx.Rngs(0),
            **options,
        )
        layer.kernel = kernel  # the very Variable: shared references and metadata survive
        if linear.use_bias:
            layer.bias = linear.bias
        return layer

    def __call__(self, inputs: jax.Array, out_sharding: Any = None) -> jax.Array:
        """Applies the quantized linear map to the last axis.

        Args:
          inputs: float [..., in_features].
          out_sharding: accepted for parity with nnx.Linear; shardings
            propagate through the op.

        Returns:
          [..., out_features] in the computation dtype (or preferred_element_type).
        """
        del out_sharding
        int8_state = None
        kernel = None
        if getattr(self, "CB", None) is not None:
            int8_state = MatmulLtState(
                threshold=self.spec().threshold,
                has_fp16_weights=False,
                CB=self.CB[...],
                SCB=self.SCB[...],
            )
        else:
            kernel = self.kernel[...]
        bias = self.bias[...] if self.bias is not None else None
        inputs, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
        y, cols = quantized_dense(self.spec(), inputs, kernel, bias, int8_state=int8_state)
        # flax >= 0.12 sows only under nnx.capture (elsewhere sow is deprecated); older
        # flax has no capture and keeps sown values as Intermediate attributes.
        if cols is not None and (not hasattr(nnx, "capture") or hasattr(self, "__captures__")):
            self.sow(nnx.Intermediate, "outlier_cols", cols)
            self.sow(nnx.Intermediate, "outlier_count", jnp.sum(cols, dtype=jnp.int32))
        if self.preferred_element_type is not None:
            y = y.astype(self.preferred_element_type)
        return y


class Fp8MixedLinear(_QuantLinear):
    """nnx.Linear through `fp8mm.matmul_fp8_mixed` (bitsandbytes' LinearFP8Mixed).

    Extra keyword arguments: fw_code (None: e4m3), bw_code (None: e5m2), bsz,
    bsz2 (-1: `fp8mm.get_block_sizes`), implementation (None, "xla", "pallas").
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        fw_code: Any = None,
        bw_code: Any = None,
        bsz: int = -1,
        bsz2: int = -1,
        **kwargs: Any,
    ):
        super().__init__(in_features, out_features, **kwargs)
        self.fw_code = nnx.static(fw_code) if fw_code is not None else None
        self.bw_code = nnx.static(bw_code) if bw_code is not None else None
        self.bsz = bsz
        self.bsz2 = bsz2

    _KIND = "fp8_mixed"

    def spec(self) -> QuantSpec:
        return QuantSpec(
            self._KIND,
            self.fw_code,
            self.bw_code,
            self.bsz,
            self.bsz2,
            implementation=self.implementation,
        )


class Fp8GlobalLinear(Fp8MixedLinear):
    """nnx.Linear through `fp8mm.matmul_fp8_global` (same options as `Fp8MixedLinear`)."""

    _KIND = "fp8_global"


class SwitchBackLinear(_QuantLinear):
    """nnx.Linear through `fp8mm.switchback_bnb` (SwitchBack int8 training and inference).

    Extra keyword arguments: threshold (outlier threshold; > 0 sows outlier
    statistics), outlier_capacity (None: the op's default), implementation.
    After `to_int8()` the layer holds `Int8Weight` 'CB'/'SCB' instead of 'kernel'.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        threshold: float = 0.0,
        outlier_capacity: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(in_features, out_features, **kwargs)
        self.threshold = float(threshold)
        self.outlier_capacity = outlier_capacity

    def spec(self) -> QuantSpec:
        return QuantSpec(
            "switchback",
            threshold=self.threshold,
            outlier_capacity=self.outlier_capacity,
            implementation=self.implementation,
        )

    def to_int8(self) -> None:
        """Replaces the float kernel by the int8 inference weight (`prepare_int8_weight`)."""
        if getattr(self, "CB", None) is not None:
            return
        state = ops.prepare_int8_weight(
            self.kernel[...].T, self.threshold, implementation=self.implementation
        )
        self.CB = Int8Weight(state.CB)
        self.SCB = Int8Weight(state.SCB)
        del self.kernel


LAYERS: dict[str, type[_QuantLinear]] = {
    "fp8_mixed": Fp8MixedLinear,
    "fp8_global": Fp8GlobalLinear,
    "switchback": SwitchBackLinear,
}


def _replace(model: nnx.Module, path: tuple, new: nnx.Module) -> None:
    parent: Any = model
    for key in path[:-1]:
        parent = parent[key] if isinstance(key, int) else getattr(parent, key)
    key = path[-1]
    if isinstance(key, int):
        parent[key] = new
    else:
        setattr(parent, key, new)


def quantize_model(
    model: nnx.Module,
    kind: str,
    *,
    filter: Callable[[tuple, nnx.Linear], bool] | None = None,
    **options: Any,
) -> nnx.Module:
    """Swaps each `nnx.Linear` of `model` for the `kind` layer, in place, keeping weights.

    The new layers share the old parameter Variables, so optimizer state built
    on them stays valid. A Linear reachable from several places is replaced by
    one quantized layer everywhere.

    Args:
      model: an nnx Module (modified in place).
      kind: "fp8_mixed", "fp8_global" or "switchback".
      filter: optional predicate on (path, layer); False keeps that layer.
      **options: the layer's quantization options (e.g. threshold=6.0).

    Returns:
      `model` itself.
    """
    cls = LAYERS[kind]
    if type(model) is nnx.Linear:
        raise ValueError(
            "quantize_model swaps submodules; build the layer with "
            f"{cls.__name__}.from_linear(linear) instead"
        )
    found = [
        (path, m)
        for path, m in nnx.iter_modules(model)
        if type(m) is nnx.Linear and (filter is None or filter(path, m))
    ]
    swapped: dict[int, nnx.Module] = {}
    for path, m in found:
        if id(m) not in swapped:
            swapped[id(m)] = cls.from_linear(m, **options)
        _replace(model, path, swapped[id(m)])
    return model


def to_int8_inference(model: nnx.Module) -> Int8Report:
    """Turns every `SwitchBackLinear` of `model` into int8 inference weights, in place.

    Returns:
      `Int8Report` with the bytes of all Variables of the model before and after.
    """
    before = tree_bytes(nnx.state(model))
    layers = []
    for path, m in list(nnx.iter_modules(model)):
        if isinstance(m, SwitchBackLinear):
            m.to_int8()
            layers.append("/".join(map(str, path)))
    return Int8Report(tuple(layers), before, tree_bytes(nnx.state(model)))
