"""The bodies of nn.DenseGeneral / nn.Einsum that `quantize_dense` runs in their place.

Each runs inside the intercepted module's compact scope, so it creates the
parameters flax does (same names, shapes, initializers and rng use) and only the
product differs: `fp8mm.nn._general.general_product`. Attention
(`nn.MultiHeadDotProductAttention`) is built from DenseGeneral: its q/k/v
projections are `DenseGeneral((heads, head_dim), axis=-1)` and its output
projection `DenseGeneral(features, axis=(-2, -1))`, both of which map.

A SwitchBack kind's layer may hold int8 inference weights instead of its kernel
('CB' int8 [*features, *contracted], 'SCB' float32 [*features], from
`int8_inference_params(params, model, ...)`). Each call of a SwitchBack kind
records how its kernel maps onto [K, N], which `int8_inference_params` reads
while it traces the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import meta

from fp8mm import _checks
from fp8mm.nn import _core
from fp8mm.nn._core import QuantSpec
from fp8mm.nn._general import (
    Contraction,
    KernelLayout,
    dense_general_contraction,
    einsum_contraction,
    general_product,
    int8_weight_shapes,
)
from fp8mm.nn._int8 import record_switchback

__all__ = ["dense_general_call", "einsum_call", "einsum_plan"]


def _where(module: nn.Module) -> str:
    return "/".join(module.path) or type(module).__name__


def _tuple(x: int | Sequence[int]) -> tuple[int, ...]:
    return tuple(x) if isinstance(x, Sequence) else (x,)


def _flat_init(init, n_lead: int, n_trail: int):
    """flax's DenseGeneral init: `init` draws [prod(lead), prod(trail)], reshaped (boxed too)."""

    def wrapped(rng, shape, dtype=jnp.float32):
        flat = (int(np.prod(shape[:n_lead])), int(np.prod(shape[len(shape) - n_trail :])))
        if n_lead == 0:  # the bias: one axis
            flat = (flat[1],)
        value = init(rng, flat, dtype)
        if isinstance(value, meta.AxisMetadata):
            return meta.replace_boxed(value, jnp.reshape(value.unbox(), shape))
        return jnp.reshape(value, shape)

    return wrapped


def _int8_weight(
    module: nn.Module, spec: QuantSpec, layout: KernelLayout, kernel_shape: tuple[int, ...]
) -> tuple[jax.Array, jax.Array] | None:
    """The layer's int8 inference weights (CB, SCB), or None when it holds a float kernel.

    Records the layer's kernel layout for `int8_inference_params` when `spec` is a
    SwitchBack kind (the kernel's shape and layout are known only here).
    """
    if _core.KIND_TABLE[spec.kind].int8_weights:
        record_switchback(module.path, spec.kind, layout)
    if not module.has_variable("params", "CB"):
        return None
    where = f"layer {_where(module)!r} ({type(module).__name__})"
    if not _core.KIND_TABLE[spec.kind].int8_weights:
        raise ValueError(
            f"{where} holds SwitchBack int8 weights (CB/SCB from int8_inference_params) but "
            f"runs as {spec.kind!r}; only SwitchBack kinds take them: convert only those "
            "(int8_inference_params(..., filter=...))"
        )
    if not module.has_variable("params", "SCB"):
        raise ValueError(f"{where} has the int8 weight 'CB' but not its scales 'SCB'")
    cb, scb = module.get_variable("params", "CB"), module.get_variable("params", "SCB")
    want_cb, want_scb = int8_weight_shapes(layout, kernel_shape)
    if tuple(cb.shape) != want_cb or tuple(scb.shape) != want_scb:
        raise ValueError(
            f"{where}: int8 weights CB {tuple(cb.shape)}, SCB {tuple(scb.shape)} do not fit its "
            f"kernel {kernel_shape}: need CB {want_cb} ([*features, *contracted]) and SCB "
            f"{want_scb}; build them with int8_inference_params(params, model, ...)"
        )
    return cb, scb


def dense_general_call(module: nn.DenseGeneral, inputs: jax.Array, spec: QuantSpec):
    """nn.DenseGeneral.__call__ with the product run by `spec` (see the module docstring).

    Args:
      module: the bound nn.DenseGeneral.
      inputs: float [...], contracted over `module.axis`.
      spec: quantization options.

    Returns:
      (y [free axes of inputs..., *features], outlier mask bool [contracted axes] or None).

    Raises:
      NotImplementedError: `module.batch_dims` is not empty.
      ValueError: int8 weights (CB/SCB) that do not fit, or on a kind without them.
    """
    _checks.check_array("inputs", inputs)
    features, axis = _tuple(module.features), _tuple(module.axis)
    if _tuple(module.batch_dims):
        raise NotImplementedError(
            f"quantize_dense({spec.kind!r}): {_where(module)!r} (nn.DenseGeneral) has "
            f"batch_dims={tuple(module.batch_dims)}, a weight per batch element: that "
            "batched product has no 2-D form, so fp8mm cannot quantize it (and does not "
            "run it in 16 bits behind your back). Leave it out with "
            "quantize_dense(..., filter=lambda m: m.name != ...)"
        )
    plan = dense_general_contraction(inputs.ndim, axis, len(features))
    if isinstance(plan, str):
        raise ValueError(f"{_where(module)!r} (nn.DenseGeneral): {plan}")
    contracted = sorted(a % inputs.ndim for a in axis)
    kernel_shape = tuple(inputs.shape[a] for a in contracted) + features
    int8 = _int8_weight(module, spec, plan.layout, kernel_shape)
    kernel = None
    if int8 is None:
        kernel = module.param(
            "kernel",
            _flat_init(module.kernel_init, len(contracted), len(features)),
            kernel_shape,
            module.param_dtype,
        )
    bias = None
    if module.use_bias:
        bias = module.param(
            "bias", _flat_init(module.bias_init, 0, len(features)), features, module.param_dtype
        )
    inputs, kernel, bias = module.promote_dtype(inputs, kernel, bias, dtype=module.dtype)
    return general_product(spec, plan, inputs, kernel, bias, int8_weight=int8)


def einsum_plan(module: nn.Einsum, inputs: Any, einsum_str: str | None) -> Contraction | str:
    """The contraction of the intercepted nn.Einsum call, or why it is not a dense product."""
    eq = nn.merge_param("einsum_str", module.einsum_str, einsum_str)
    return einsum_contraction(eq, jnp.ndim(inputs), len(module.shape))


def _bias_shape(eq: str, module: nn.Einsum, x_ndim: int) -> tuple[list[int], list[int]]:
    """flax's Einsum bias shape and its broadcast shape (kernel axes kept in the output)."""
    eq = eq.replace(" ", "")
    ins, out = eq.split("->")
    lhs, rhs = ins.split(",")
    if "..." in lhs:
        out = out.replace("...", "." * (x_ndim - (len(lhs) - 3)))
    broadcast = [1] * len(out)
    shape = []
    for i, c in enumerate(out):
        if c != "." and c in rhs:
            broadcast[i] = module.shape[rhs.index(c)]
            shape.append(module.shape[rhs.index(c)])
    return shape, broadcast


def einsum_call(
    module: nn.Einsum, inputs: jax.Array, plan: Contraction, einsum_str: str | None, spec
):
    """nn.Einsum.__call__ with the product run by `spec`; `plan` from `einsum_plan`.

    Args:
      module: the bound nn.Einsum.
      inputs: float [...].
      plan: the einsum's `Contraction`.
      einsum_str: the call's einsum_str argument (None: the module's).
      spec: quantization options.

    Returns:
      (y [the einsum's output axes], outlier mask bool [contracted axes] or None).
    """
    _checks.check_array("inputs", inputs)
    eq = nn.merge_param("einsum_str", module.einsum_str, einsum_str)
    int8 = _int8_weight(module, spec, plan.layout, tuple(module.shape))
    kernel = None
    if int8 is None:
        kernel = module.param("kernel", module.kernel_init, module.shape, module.param_dtype)
    bias = None
    if module.use_bias:
        shape, _ = _bias_shape(eq, module, inputs.ndim)
        bias = module.param("bias", module.bias_init, shape, module.param_dtype)
    inputs, kernel, bias = module.promote_dtype(inputs, kernel, bias, dtype=module.dtype)
    y, cols = general_product(spec, plan, inputs, kernel, bias, int8_weight=int8)
    if module.preferred_element_type is not None:
        y = y.astype(module.preferred_element_type)
    return y, cols
