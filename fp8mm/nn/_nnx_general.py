"""nnx layers for `nnx.LinearGeneral` and `nnx.Einsum` products, and how quantize_model finds them.

`QuantizedLinearGeneral(module, kind, **options)` and `QuantizedEinsum(module,
kind, **options)` take over an existing flax module's configuration and its very
parameter Variables (no copy) and run its product as the Dense product of the
reshaped problem (`fp8mm.nn._general`): exactly the numbers of an fp8mm Linear
layer on x [rows, K] @ kernel [K, N] (+ bias [N]). `nnx.MultiHeadAttention`'s
q/k/v (`LinearGeneral(in, (heads, head_dim))`) and output projection
(`LinearGeneral((heads, head_dim), out, axis=(-2, -1))`) both map.

LinearGeneral's `batch_axis` (a weight per batch element) has no 2-D form and is
refused (NotImplementedError); an einsum that is not a dense product of x with
the kernel is left as it is and reported skipped. A module's own `dot_general` /
`dot_general_cls` / `einsum_op` is replaced, as for nnx.Linear.

A layer of a SwitchBack kind turns into int8 inference weights with `to_int8()`
(or `fp8mm.nn.to_int8_inference(model)`): those of the Linear layer on the
reshaped kernel [K, N], kept in the kernel's axes as `Int8Weight` Variables
'CB' int8 [*features, *contracted] and 'SCB' float32 [*features].
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from fp8mm import _checks
from fp8mm.nn import _core
from fp8mm.nn._core import QuantSpec
from fp8mm.nn._general import (
    Contraction,
    KernelLayout,
    dense_general_contraction,
    einsum_contraction,
    int8_weight,
)
from fp8mm.nn._general import general_product as _general_product
from fp8mm.nn._nnx_static import Int8Weight, code_value, finish_product, static_option

__all__ = [
    "NOT_CONVERTED",
    "QuantizedEinsum",
    "QuantizedLinearGeneral",
    "convertible",
    "einsum_structure",
]

# nnx modules with a weight that fp8mm has no product for: reported skipped.
NOT_CONVERTED: dict[type, str] = {
    nnx.Conv: "a convolution (fp8mm quantizes matmuls only)",
    nnx.ConvTranspose: "a convolution (fp8mm quantizes matmuls only)",
}


def convertible(module: Any) -> bool:
    """Whether `module` is a stock nnx.LinearGeneral or nnx.Einsum (subclasses are not)."""
    return type(module) in (nnx.LinearGeneral, nnx.Einsum)


def einsum_structure(einsum_str: str, kernel_ndim: int) -> Contraction | str:
    """`einsum_contraction` of an equation for any x that fits it (an ellipsis: one axis)."""
    lhs = einsum_str.replace(" ", "").split(",")[0]
    x_ndim = len(lhs) - 2 if "..." in lhs else len(lhs)
    return einsum_contraction(einsum_str, x_ndim, kernel_ndim)


def refuse_batch_axis(module: nnx.LinearGeneral, where: str, kind: str) -> None:
    """NotImplementedError for a LinearGeneral with batch_axis, naming it (`where`) and why."""
    if module.batch_axis:
        raise NotImplementedError(
            f"quantize_model(model, {kind!r}): {where or '<top>'!r} (nnx.LinearGeneral) has "
            f"batch_axis={dict(module.batch_axis)}, a weight per batch element: that batched "
            "product has no 2-D form, so fp8mm cannot quantize it (and does not leave it in "
            "16 bits behind your back). Leave it out with filter=lambda path, m: ..."
        )


class _QuantGeneral(nnx.Module):
    """The kind and options of a converted module, kept as the Linear layers keep theirs."""

    kind: str

    def _set_spec(self, where: str, module: Any, cls: type, kind: str, options: dict) -> None:
        if not isinstance(module, cls):
            raise TypeError(
                f"{type(self).__name__} needs an nnx.{cls.__name__}, got {type(module).__name__}"
            )
        _core.check_kind(kind)
        _core.check_options(where, kind, options)
        spec = QuantSpec(kind, **options)
        self.kind = kind
        for name in _core.OPTIONS[kind]:
            setattr(self, name, static_option(name, getattr(spec, name)))

    def spec(self) -> QuantSpec:
        """The `QuantSpec` of this layer's options."""
        return QuantSpec.of(self.kind, self, code_value)

    def _take(self, module: Any, names: tuple[str, ...]) -> None:
        """`module`'s attributes `names` and those every one has, and its Variables."""
        for name in names:
            setattr(self, name, getattr(module, name))
        self.dtype = module.dtype
        self.param_dtype = module.param_dtype
        self.precision = module.precision  # accepted for parity; the ops fix their precision
        self.promote_dtype = module.promote_dtype
        self.preferred_element_type = module.preferred_element_type
        self.kernel = module.kernel  # the very Variables: shared references and metadata
        self.bias = module.bias if module.bias is not None else nnx.data(None)

    def _layout(self) -> KernelLayout:
        """Which kernel axes are contracted: the subclass's mapping onto [K, N]."""
        raise NotImplementedError

    def to_int8(self) -> None:
        """Replaces the float kernel by the SwitchBack int8 inference weights, in place.

        They are the kind's int8 weights of the reshaped kernel [K, N] (CB [N, K],
        SCB [N], as the Linear layer's `to_int8` builds them), kept in the kernel's
        axes: `Int8Weight` 'CB' int8 [*features, *contracted], 'SCB' float32
        [*features]. A second call does nothing.

        Raises:
          ValueError: the layer's kind takes no int8 weights (an fp8 kind).
        """
        if getattr(self, "CB", None) is not None:
            return
        if not _core.KIND_TABLE[self.kind].int8_weights:
            raise ValueError(
                f"{type(self).__name__} of kind {self.kind!r}: only the SwitchBack kinds "
                f"({', '.join(_core.INT8_KINDS)}) have int8 inference weights"
            )
        layout = self._layout()
        cb, scb = int8_weight(self.spec(), layout, self.kernel[...])
        self.CB, self.SCB = Int8Weight(cb), Int8Weight(scb)
        self.int8_layout = layout  # static: a call whose equation maps otherwise is refused
        del self.kernel

    def _product(self, plan: Contraction, inputs: jax.Array) -> jax.Array:
        int8 = kernel = None
        if getattr(self, "CB", None) is not None:
            if plan.layout != self.int8_layout:
                raise ValueError(
                    f"{type(self).__name__}: this call contracts the kernel's axes as "
                    f"{plan.layout}, its int8 weights were built for {self.int8_layout}; "
                    "call it with the equation it was converted with"
                )
            int8 = (self.CB[...], self.SCB[...])
        else:
            kernel = self.kernel[...]
        bias = self.bias[...] if self.bias is not None else None
        inputs, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
        y, cols = _general_product(self.spec(), plan, inputs, kernel, bias, int8_weight=int8)
        return finish_product(self, y, cols)


class QuantizedLinearGeneral(_QuantGeneral):
    """An `nnx.LinearGeneral` running fp8mm's quantized product (any axis, tuple features).

    Built from an existing LinearGeneral, whose attributes (in_features,
    out_features, axis, use_bias, dtype, param_dtype, precision, promote_dtype,
    preferred_element_type) and parameter Variables ('kernel' [*in_features,
    *out_features], 'bias' [*out_features]) it keeps::

        layer = QuantizedLinearGeneral(nnx.LinearGeneral(64, (4, 16), rngs=rngs), "switchback")

    x's contracted axes go last, x becomes [rows, prod(in_features)] and the kernel
    [prod(in_features), prod(out_features)], and the product is an fp8mm Linear
    layer's on those (bit for bit), reshaped back to [free axes..., *out_features].
    For a SwitchBack kind, `to_int8()` (or `fp8mm.nn.to_int8_inference`) swaps
    the kernel for int8 inference weights 'CB' [*out_features, *in_features],
    'SCB' [*out_features]: the Linear layer's on the reshaped kernel.

    Args:
      module: the nnx.LinearGeneral (without batch_axis).
      kind: one of `fp8mm.nn.KINDS`.
      **options: the kind's quantization options (`fp8mm.nn.OPTIONS[kind]`).

    Raises:
      NotImplementedError: `module.batch_axis` is not empty (no 2-D form).
    """

    def __init__(self, module: nnx.LinearGeneral, kind: str, **options: Any):
        self._set_spec("QuantizedLinearGeneral", module, nnx.LinearGeneral, kind, options)
        refuse_batch_axis(module, type(module).__name__, kind)
        self._take(module, ("in_features", "out_features", "axis", "batch_axis", "use_bias"))

    def _layout(self) -> KernelLayout:
        # The kernel is [*in_features, *out_features], in x's (sorted) axis order.
        n = len(self.in_features) + len(self.out_features)
        return KernelLayout(tuple(range(n)), len(self.in_features))

    def __call__(self, inputs: jax.Array, out_sharding: Any = None) -> jax.Array:
        """Applies the quantized contraction over `axis`.

        Args:
          inputs: float [...] whose `axis` axes are `in_features`.
          out_sharding: accepted for parity with nnx.LinearGeneral; shardings
            propagate through the op.

        Returns:
          [free axes of inputs..., *out_features] in the computation dtype (or
          preferred_element_type).
        """
        del out_sharding
        _checks.check_array("inputs", inputs)
        plan = dense_general_contraction(jnp.ndim(inputs), self.axis, len(self.out_features))
        if isinstance(plan, str):
            raise ValueError(f"QuantizedLinearGeneral: {plan}")
        return self._product(plan, inputs)


class QuantizedEinsum(_QuantGeneral):
    """An `nnx.Einsum` whose equation is a dense product, running fp8mm's quantized product.

    Maps when every index of x is contracted with the kernel or kept in the
    output, every kernel index is contracted or kept, and no index is in x, the
    kernel and the output (e.g. "btd,dhk->bthk", "...d,df->...f", "nta,hab->nthb").
    Built from an existing nnx.Einsum, whose attributes (einsum_str, kernel_shape,
    bias_shape, dtype, param_dtype, precision, promote_dtype,
    preferred_element_type) and parameter Variables it keeps; its einsum_op is
    replaced. For a SwitchBack kind, `to_int8()` swaps the kernel for int8
    inference weights 'CB' [*features, *contracted] (the kernel's feature axes in
    the output's order, its contracted ones in x's), 'SCB' [*features].

    Args:
      module: the nnx.Einsum.
      kind: one of `fp8mm.nn.KINDS`.
      **options: the kind's quantization options (`fp8mm.nn.OPTIONS[kind]`).

    Raises:
      NotImplementedError: the module's equation is not a dense product.
    """

    def __init__(self, module: nnx.Einsum, kind: str, **options: Any):
        self._set_spec("QuantizedEinsum", module, nnx.Einsum, kind, options)
        why = einsum_structure(module.einsum_str, len(module.kernel_shape))
        if isinstance(why, str):
            raise NotImplementedError(
                f"QuantizedEinsum: {module.einsum_str!r} is not a dense product of x with "
                f"the kernel: {why}"
            )
        self._take(module, ("einsum_str", "kernel_shape", "bias_shape"))

    def _layout(self) -> KernelLayout:
        plan = einsum_structure(self.einsum_str, len(self.kernel_shape))
        assert not isinstance(plan, str)  # checked when the layer was built
        return plan.layout

    def __call__(
        self, inputs: jax.Array, einsum_str: str | None = None, out_sharding: Any = None
    ) -> jax.Array:
        """Applies the quantized einsum.

        Args:
          inputs: float [...] as the equation names them.
          einsum_str: overrides the module's equation (it must map too).
          out_sharding: accepted for parity with nnx.Einsum.

        Returns:
          the einsum's output axes, in the computation dtype (or preferred_element_type).

        Raises:
          NotImplementedError: `einsum_str` is not a dense product.
        """
        del out_sharding
        _checks.check_array("inputs", inputs)
        eq = self.einsum_str if einsum_str is None else einsum_str
        plan = einsum_contraction(eq, jnp.ndim(inputs), len(self.kernel_shape))
        if isinstance(plan, str):
            raise NotImplementedError(
                f"QuantizedEinsum: {eq!r} is not a dense product of x with the kernel ({plan}); "
                "fp8mm does not run it in 16 bits behind your back"
            )
        return self._product(plan, inputs)
