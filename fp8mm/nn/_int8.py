"""SwitchBack int8 inference weights for linen parameter trees, and the bytes they save.

A trained SwitchBack layer holds a float 'kernel' [in, out]; for inference it
can instead hold 'CB' (int8 [out, in], the quantized weight in Linear layout)
and 'SCB' (float32 [out] row scales), exactly the
`MatmulLtState(has_fp16_weights=False)` that `fp8mm.prepare_int8_weight`
builds ("switchback") or `fp8mm.prepare_switchback_weight` (the SwitchBack
paper's kinds; a global scale is stored once per row). With threshold 0 the
forward output equals the training-mode layer's (SwitchBack quantizes the
weight the same way on every training call); with threshold > 0 the outlier
columns use the dequantized int8 weight, as bitsandbytes does, so they differ
slightly. A DenseGeneral / Einsum kernel (N-d) gets the int8 weights of the
Dense layer on its reshaped kernel [K, N], kept in its axes: CB [*features,
*contracted], SCB [*features] (`fp8mm.nn._general.int8_weight`).

The int8 leaves sit in 'params' but are not trained. To train the float parts
of such a model (biases, layers left in float), split them off with
`split_int8_params` and differentiate only the trainable half: optax cannot
step the float0 gradients `jax.grad(..., allow_int=True)` gives int8 leaves
(`optax.masked` passes them through to `apply_updates`, which fails on them).
nnx models need no split: their int8 weights are `Int8Weight` Variables, not
`nnx.Param`, so `nnx.Optimizer(model, tx, wrt=nnx.Param)` leaves them alone.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from fp8mm.nn._core import INT8_KINDS, QuantSpec, check_callable, check_kind
from fp8mm.nn._general import DENSE_LAYOUT, KernelLayout, int8_weight

__all__ = [
    "Int8Report",
    "int8_inference_params",
    "merge_int8_params",
    "split_int8_params",
    "tree_bytes",
]


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
      skipped: (path, why) of each layer with a float kernel that was left float
        and not excluded by a filter (an N-d kernel whose layout only the model
        knows, a layer that does not run as a SwitchBack kind).
    """

    layers: tuple[str, ...]
    bytes_before: int
    bytes_after: int
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def bytes_saved(self) -> int:
        return self.bytes_before - self.bytes_after

    def __str__(self) -> str:
        lines = [
            f"int8 weights in {len(self.layers)} layers: parameters {self.bytes_before:,} -> "
            f"{self.bytes_after:,} bytes (saved {self.bytes_saved:,}, "
            f"{100 * self.bytes_saved / max(self.bytes_before, 1):.1f}%)"
        ]
        lines += [f"  kept float {path or '<top>'}: {why}" for path, why in self.skipped]
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class _Ran:
    """How a linen layer of an int8 kind ran while traced: its kind and kernel layout."""

    kind: str
    layout: KernelLayout | None  # None: it ran with two different layouts


# Module path -> how it ran, for the linen layers of an int8 kind traced while a recorder is on.
_switchback_paths: contextvars.ContextVar[dict[tuple[str, ...], _Ran] | None] = (
    contextvars.ContextVar("fp8mm_switchback_paths", default=None)
)


def record_switchback(
    path: tuple[str, ...], kind: str, layout: KernelLayout = DENSE_LAYOUT
) -> None:
    """Called by every linen product of an int8 kind while tracing (`int8_inference_params`).

    `layout` says which axes of the layer's kernel are contracted (DenseGeneral /
    Einsum kernels are N-d), so that its int8 weights can be built from the kernel.
    """
    seen = _switchback_paths.get()
    if seen is not None:
        before = seen.get(tuple(path))
        same = before is None or before == _Ran(kind, layout)
        seen[tuple(path)] = _Ran(kind, layout if same else None)


@contextlib.contextmanager
def _recording() -> Iterator[dict[tuple[str, ...], _Ran]]:
    seen: dict[tuple[str, ...], _Ran] = {}
    token = _switchback_paths.set(seen)
    try:
        yield seen
    finally:
        _switchback_paths.reset(token)


def _check_params(params: Any) -> None:
    if not isinstance(params, Mapping):
        raise TypeError(
            f"params must be a linen parameter tree (nested dicts), got {type(params).__name__}"
        )


def int8_inference_params(
    params: Mapping[str, Any],
    model: nn.Module | None = None,
    *args: Any,
    filter: Callable[[str], bool] | None = None,
    kind: str = "switchback",
    **kwargs: Any,
) -> tuple[dict[str, Any], Int8Report]:
    """Replaces each SwitchBack layer's float 'kernel' by the int8 'CB'/'SCB' of its kind.

    Only layers of that kind (`SwitchBackDense` for "switchback",
    `SwitchBackGlobalDense` for "switchback_global", ..., or nn.Dense,
    nn.DenseGeneral and nn.Einsum under `quantize_dense(kind)`) understand the
    converted entries; any other layer given them fails when the model is
    applied. Pass `model` with the arguments of `model.apply`: the model is then
    traced once (abstractly, `jax.eval_shape`; inside the `quantize_dense(kind)`
    context when that is how it runs), only the layers that run as `kind` are
    converted, and a 2-D kernel of a layer that does not raises ValueError naming
    it. Without `model`, every 2-D kernel is taken as a Dense kernel [in, out]
    and converted (restrict that with `filter`), and N-d kernels stay float.

    A Dense kernel [in, out] becomes CB int8 [out, in] and SCB float32 [out]. An
    N-d kernel (nn.DenseGeneral, e.g. attention's q/k/v [embed, heads, head_dim]
    and output [heads, head_dim, embed] projections, or an nn.Einsum that
    `quantize_dense` runs) becomes the int8 weights of the Dense layer on its
    reshaped kernel [K, N], kept in the kernel's axes: CB [*features, *contracted],
    SCB [*features]. Which of its axes are contracted only the model knows, so
    these need `model`; the layer then gives exactly the Dense layer's numbers on
    the reshaped problem.

    Args:
      params: linen 'params' tree (nested dicts), or the variables dict holding it
        under 'params'.
      model: optional linen module these parameters belong to (see above).
      *args: positional arguments of `model.apply` after the variables.
      filter: optional predicate on the layer path ("params/Block_0/Dense_1"); False
        keeps that layer's float kernel.
      kind: the layers' kind: "switchback" (row-wise weights, `prepare_int8_weight`),
        "switchback_global", "switchback_vectorwise" or "switchback_global_mem_efficient"
        (`prepare_switchback_weight`).
      **kwargs: keyword arguments of `model.apply` (e.g. rngs=, train=False).

    Returns:
      (new params, `Int8Report`); the report's `skipped` lists the float kernels
      left float and why.

    Raises:
      ValueError: `model` was given and a layer with a 2-D kernel to convert does
        not run as SwitchBack of `kind`.

    Examples:
      >>> import flax.linen as nn, jax, jax.numpy as jnp
      >>> from fp8mm.nn import linen as fl
      >>> attn = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=16)
      >>> x = jnp.ones((1, 8, 16))
      >>> params = attn.init(jax.random.key(0), x)
      >>> with fl.quantize_dense("switchback"):
      ...     int8, report = fl.int8_inference_params(params, attn, x)
      ...     y = attn.apply(int8, x)
      >>> int8["params"]["query"]["CB"].shape, len(report.layers)  # [heads, head_dim, embed]
      ((2, 8, 16), 4)
    """
    _check_params(params)
    check_callable("filter", filter)
    check_kind(kind)
    if kind not in INT8_KINDS:
        raise ValueError(
            f"kind must be one of {INT8_KINDS} (the kinds with int8 weights), got {kind!r}"
        )
    spec = QuantSpec(kind)
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be a flax.linen Module or None, got {type(model).__name__}")
    if model is None and (args or kwargs):
        raise TypeError("int8_inference_params got model arguments but no model")
    layout_of = _layouts(params, model, args, kwargs, kind)
    converted: list[str] = []
    skipped: list[tuple[str, str]] = []
    bad: list[str] = []

    def walk(tree: Mapping[str, Any], path: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        kernel = tree.get("kernel")
        layout = None
        if (
            kernel is not None
            and not isinstance(kernel, Mapping)
            and getattr(kernel, "ndim", 0) >= 2
            and (filter is None or filter(path))
        ):
            found = layout_of(path, kernel)
            if not isinstance(found, str):
                layout = found
            elif model is not None and kernel.ndim == 2:
                bad.append(path)  # a Dense-like layer the caller meant to convert
            else:
                skipped.append((path, found))
        for key, value in tree.items():
            if isinstance(value, Mapping):
                out[key] = walk(value, f"{path}/{key}" if path else key)
            elif not (layout is not None and key == "kernel"):
                out[key] = value
        if layout is not None:
            out["CB"], out["SCB"] = int8_weight(spec, layout, kernel)
            converted.append(path)
        return out

    new = walk(params, "")
    if bad:
        raise ValueError(
            f"int8_inference_params: layer(s) {bad} do not run as SwitchBack layers of "
            f"kind {kind!r} (a layer of that kind, or nn.Dense / nn.DenseGeneral / nn.Einsum "
            f"under quantize_dense({kind!r})) in {type(model).__name__}.apply, so they cannot "
            "use int8 weights; leave them float with filter= (e.g. filter=lambda path: path "
            f"not in {bad!r})"
        )
    if model is None and skipped:
        # Not an error (float kernels compute the right numbers), but the caller asked
        # for int8 weights and a transformer's attention projections would quietly stay
        # float.
        paths = [path for path, _ in skipped]
        warnings.warn(
            f"int8_inference_params: {len(paths)} N-d kernel(s) stayed float (e.g. "
            f"{paths[:3]}): without `model` only 2-D kernels convert. Pass the model and an "
            "input (int8_inference_params(params, model, x)) to convert DenseGeneral / "
            "Einsum projections such as attention's, or filter= them out to silence this.",
            stacklevel=2,
        )
    report = Int8Report(tuple(converted), tree_bytes(params), tree_bytes(new), tuple(skipped))
    return new, report


def _layouts(params, model, args, kwargs, kind: str) -> Callable[[str, Any], KernelLayout | str]:
    """(param path, kernel) -> the kernel's layout, or why it stays float.

    Without a model: the Dense layout for a 2-D kernel. With one: the layout each
    layer ran with as `kind` while the model was traced.
    """
    if model is None:

        def guess(path: str, kernel: Any) -> KernelLayout | str:
            if kernel.ndim == 2:
                return DENSE_LAYOUT
            return (
                f"a {kernel.ndim}-d kernel (nn.DenseGeneral / nn.Einsum): which of its axes "
                "are contracted only the model knows; pass the model and its inputs "
                "(int8_inference_params(params, model, x))"
            )

        return guess
    has_collection = "params" in params and isinstance(params["params"], Mapping)
    variables = params if has_collection else {"params": params}
    kwargs = {"mutable": True, **kwargs}  # sown statistics and batch stats must not stop it
    with _recording() as ran:
        jax.eval_shape(lambda v: model.apply(v, *args, **kwargs), variables)
    prefix = ("params",) if has_collection else ()

    def recorded(path: str, kernel: Any) -> KernelLayout | str:
        parts = tuple(path.split("/"))
        entry = ran.get(parts[len(prefix) :]) if parts[: len(prefix)] == prefix else None
        if entry is None or entry.kind != kind:
            return f"it does not run as a SwitchBack layer of kind {kind!r}"
        if entry.layout is None:
            return "it runs with two different kernel layouts (einsum equations)"
        if len(entry.layout.kernel_perm) != kernel.ndim:
            return f"its {kernel.ndim}-d kernel is not the one it ran with"
        return entry.layout

    return recorded


def _is_int8_layer(tree: Mapping[str, Any]) -> bool:
    cb = tree.get("CB")
    return (
        cb is not None
        and not isinstance(cb, Mapping)
        and np.dtype(getattr(cb, "dtype", None) or np.float32) == np.int8
        and "SCB" in tree
    )


def split_int8_params(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Splits a params tree into its trainable float leaves and the frozen rest.

    The frozen half holds the int8 inference weights 'CB' and their scales 'SCB'
    (from `int8_inference_params`) and every other leaf that is not floating point;
    the trainable half holds the other float leaves (biases, float kernels). Both
    keep the nesting of `params` (a layer left with nothing is an empty dict), and
    `merge_int8_params` puts them back together. This is how to train the float
    parts of an int8-inference model with any optax optimizer::

        trainable, frozen = split_int8_params(params)
        opt = tx.init(trainable)

        def loss(trainable):
            return loss_fn(model.apply(merge_int8_params(trainable, frozen), x))

        grads = jax.grad(loss)(trainable)  # no allow_int, no float0 leaves
        updates, opt = tx.update(grads, opt, trainable)
        trainable = optax.apply_updates(trainable, updates)

    Args:
      params: linen 'params' tree or variables dict (nested dicts).

    Returns:
      (trainable, frozen): two nested dicts whose leaves together are `params`'s.
    """
    _check_params(params)

    def walk(tree: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        train: dict[str, Any] = {}
        frozen: dict[str, Any] = {}
        int8 = _is_int8_layer(tree)
        for key, value in tree.items():
            if isinstance(value, Mapping):
                train[key], frozen[key] = walk(value)
            elif (int8 and key in ("CB", "SCB")) or not _is_float(value):
                frozen[key] = value
            else:
                train[key] = value
        return train, frozen

    return walk(params)


def _is_float(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and np.issubdtype(np.dtype(dtype), np.inexact)


def merge_int8_params(trainable: Mapping[str, Any], frozen: Mapping[str, Any]) -> dict[str, Any]:
    """The params tree that `split_int8_params` split into `trainable` and `frozen`.

    Raises:
      ValueError: both halves hold a leaf at the same path.
    """
    _check_params(trainable)
    _check_params(frozen)

    def walk(a: Mapping[str, Any], b: Mapping[str, Any], path: str) -> dict[str, Any]:
        out = dict(a)
        for key, value in b.items():
            where = f"{path}/{key}" if path else key
            if key not in out:
                out[key] = value
            elif isinstance(out[key], Mapping) and isinstance(value, Mapping):
                out[key] = walk(out[key], value, where)
            else:
                raise ValueError(f"merge_int8_params: both halves hold {where!r}")
        return out

    return walk(trainable, frozen, "")
