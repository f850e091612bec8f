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
slightly.

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
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from fp8mm.nn._core import INT8_KINDS, KIND_TABLE, QuantSpec, check_callable, check_kind

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


# Module path -> kind of the linen layers of an int8 kind that ran while a recorder is active.
_switchback_paths: contextvars.ContextVar[dict[tuple[str, ...], str] | None] = (
    contextvars.ContextVar("fp8mm_switchback_paths", default=None)
)


def record_switchback(path: tuple[str, ...], kind: str) -> None:
    """Called by every linen product of an int8 kind while tracing (`int8_inference_params`)."""
    seen = _switchback_paths.get()
    if seen is not None:
        seen[tuple(path)] = kind


@contextlib.contextmanager
def _recording() -> Iterator[dict[tuple[str, ...], str]]:
    seen: dict[tuple[str, ...], str] = {}
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
    """Replaces each Dense-style 'kernel' [in, out] by the int8 'CB'/'SCB' of a SwitchBack kind.

    Only layers of that kind (`SwitchBackDense` for "switchback",
    `SwitchBackGlobalDense` for "switchback_global", ..., or nn.Dense under
    `quantize_dense(kind)`) understand the converted entries; any other Dense
    given them fails when the model is applied. Restrict the conversion with
    `filter` when the tree holds other Dense layers, and pass `model` with the
    arguments of `model.apply` to have that checked now: the model is traced once
    (abstractly, `jax.eval_shape`) and a converted layer that does not run as
    `kind` raises ValueError naming it. Call it inside the `quantize_dense(kind)`
    context when that is how the model runs.

    Args:
      params: linen 'params' tree (nested dicts), or the variables dict holding it
        under 'params'.
      model: optional linen module these parameters belong to, for the check above.
      *args: positional arguments of `model.apply` after the variables.
      filter: optional predicate on the layer path ("params/Block_0/Dense_1"); False
        keeps that layer's float kernel.
      kind: the layers' kind: "switchback" (row-wise weights, `prepare_int8_weight`),
        "switchback_global", "switchback_vectorwise" or "switchback_global_mem_efficient"
        (`prepare_switchback_weight`).
      **kwargs: keyword arguments of `model.apply` (e.g. rngs=, train=False).

    Returns:
      (new params, `Int8Report`).

    Raises:
      ValueError: `model` was given and a layer to convert does not run as SwitchBack.
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
    converted: list[str] = []

    def walk(tree: Mapping[str, Any], path: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        kernel = tree.get("kernel")
        convert = (
            kernel is not None
            and not isinstance(kernel, Mapping)
            and getattr(kernel, "ndim", 0) == 2
            and (filter is None or filter(path))
        )
        for key, value in tree.items():
            if isinstance(value, Mapping):
                out[key] = walk(value, f"{path}/{key}" if path else key)
            elif not (convert and key == "kernel"):
                out[key] = value
        if convert:
            out["CB"], out["SCB"] = KIND_TABLE[kind].int8_prepare(spec, kernel)
            converted.append(path)
        return out

    new = walk(params, "")
    if model is not None:
        _check_switchback(params, model, args, kwargs, converted, kind)
    report = Int8Report(tuple(converted), tree_bytes(params), tree_bytes(new))
    return new, report


def _check_switchback(params, model, args, kwargs, converted: list[str], kind: str) -> None:
    has_collection = "params" in params and isinstance(params["params"], Mapping)
    variables = params if has_collection else {"params": params}
    kwargs = {"mutable": True, **kwargs}  # sown statistics and batch stats must not stop it
    with _recording() as ran:
        jax.eval_shape(lambda v: model.apply(v, *args, **kwargs), variables)
    prefix = ("params",) if has_collection else ()

    def module_path(path: str) -> tuple[str, ...] | None:
        parts = tuple(path.split("/"))
        return parts[len(prefix) :] if parts[: len(prefix)] == prefix else None

    bad = [p for p in converted if ran.get(module_path(p)) != kind]
    if bad:
        raise ValueError(
            f"int8_inference_params: layer(s) {bad} do not run as SwitchBack layers of "
            f"kind {kind!r} (a layer of that kind, or nn.Dense under quantize_dense({kind!r})) in "
            f"{type(model).__name__}.apply, so they cannot use int8 weights; leave them "
            "float with filter= (e.g. filter=lambda path: path not in "
            f"{bad!r})"
        )


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
