"""One place that decides which implementation runs each primitive.

`implementation` is None, "xla" or "pallas":

* "xla" runs the pure-jnp reference (`fp8mm.reference`) anywhere;
* "pallas" runs the Pallas kernel, compiled on a GPU and in Pallas interpret
  mode elsewhere (that is how CPU CI tests the kernels); when the kernel cannot
  serve the case it raises `NotImplementedError` saying why;
* None uses the process-wide default: `use_implementation(...)` (a context
  manager) or the `FP8MM_IMPLEMENTATION` environment variable; when neither is
  set, Pallas on a GPU where the kernel serves the case and XLA otherwise.

The kernels are listed in `fp8mm.pallas.KERNELS` (name -> `Kernel`), imported
lazily on the first call that may use them; moving a kernel from one Pallas
backend to another never touches its callers.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from fp8mm import _host, reference

__all__ = ["Impl", "call", "default_implementation", "resolve", "use_implementation"]

Impl = Literal["xla", "pallas"] | None
_VALID = (None, "xla", "pallas")
_ENV = "FP8MM_IMPLEMENTATION"
# "unset" defers to the environment; None inside `use_implementation(None)` means auto.
_UNSET = "unset"
_default: contextvars.ContextVar = contextvars.ContextVar("fp8mm_impl", default=_UNSET)


PRIMITIVES = (
    "quantize_blockwise",
    "dequantize_blockwise",
    "fake_quant_blockwise",
    "quantize",
    "dequantize",
    "fake_quant_global",
    "int8_vectorwise_quant",
    "int8_double_quant",
    "int8_vectorwise_quant_t",
    "int8_linear_matmul",
    "int8_mm_dequant",
    "int8_linear_matmul_dequant",
)


def _check_impl(impl, where: str) -> Impl:
    if impl not in _VALID:
        raise ValueError(f"{where} must be None, 'xla' or 'pallas', got {impl!r}")
    return impl


def default_implementation() -> Impl:
    """The process-wide default: the innermost `use_implementation`, else $FP8MM_IMPLEMENTATION."""
    impl = _default.get()
    if impl != _UNSET:
        return impl
    env = os.environ.get(_ENV, "").strip().lower() or None
    if env in ("auto", "none"):
        env = None
    return _check_impl(env, f"${_ENV}")


@contextlib.contextmanager
def use_implementation(implementation: Impl) -> Iterator[None]:
    """Sets the default implementation for calls made (or traced) inside the block.

    `use_implementation(None)` restores the automatic choice (Pallas on a GPU
    where it serves the case), whatever $FP8MM_IMPLEMENTATION says.

    The choice is made while a function is traced and is not part of
    `jax.jit`'s cache key: a function already compiled keeps the
    implementation it was traced with. Switch before the first call (or jit a
    new function), or pass `implementation=` explicitly.

    Example:
      with fp8mm.use_implementation("xla"):
          loss = train_step(params, batch)   # traced here: every primitive uses XLA
    """
    token = _default.set(_check_impl(implementation, "implementation"))
    try:
        yield
    finally:
        _default.reset(token)


def on_gpu() -> bool:
    """Whether computations traced now land on a GPU (a `jax.default_device` context counts).

    Under `jax.default_device(cpu)` on a GPU machine the automatic choice is XLA
    and an explicit "pallas" runs interpreted: a compiled GPU kernel cannot run
    on the CPU device.
    """
    return _host.platform() in ("gpu", "cuda", "rocm")


def _kernel(name: str):
    # Imported lazily to keep `import fp8mm` light.
    from fp8mm.pallas import KERNELS

    return KERNELS.get(name)


def resolve(name: str, implementation: Impl, *args) -> str:
    """The implementation ("xla" or "pallas") that `call` would run for these arguments."""
    impl = _check_impl(implementation, "implementation") or default_implementation()
    if impl == "xla":
        return "xla"
    kernel = _kernel(name)
    why = "no Pallas kernel exists for it" if kernel is None else kernel.unsupported(*args)
    if why is None and not on_gpu() and jax.config.jax_enable_x64:
        # Compiled kernels are traced without x64 (see `call`), but Pallas interpret
        # mode lowers them again under the caller's x64 setting, where JAX's
        # interpreter mixes int64 into their int32 indexing and is not bit-exact.
        why = "Pallas interpret mode (no GPU) does not support jax_enable_x64"
    if impl == "pallas":
        if why is not None:
            raise NotImplementedError(
                f"{name}: implementation='pallas' cannot serve this call: {why}"
            )
        return "pallas"
    return "pallas" if (why is None and on_gpu()) else "xla"


# Fake quantization is differentiable with the straight-through estimator (identity
# through the rounding, as qwix and AQT train with it); the primitives returning codes
# have no gradient.
STRAIGHT_THROUGH = ("fake_quant_blockwise", "fake_quant_global")


def _x64(enabled: bool):
    # `jax.enable_x64` is the context manager of current JAX; older releases spell it
    # `jax.experimental.enable_x64` / `disable_x64`.
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(enabled)
    from jax import experimental

    return experimental.enable_x64() if enabled else experimental.disable_x64()


def zero_cotangent(x):
    """The zero cotangent of x: zeros of its dtype, float0 for integer/bool, None for None."""
    if x is None:
        return None
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros(x.shape, x.dtype)
    return np.zeros(x.shape, jax.dtypes.float0)


def _with_gradient_rule(name: str, run, args: tuple):
    """run(*args) with fp8mm's gradient rule for primitive `name`.

    Only tracers can be differentiated, so only they become inputs of the
    custom VJP; concrete values (a numpy codebook in particular, which the
    kernels turn into a lookup table on the host) stay as they are.
    """
    leaves, treedef = jax.tree_util.tree_flatten(args)
    traced = [i for i, leaf in enumerate(leaves) if isinstance(leaf, jax.core.Tracer)]
    if not traced:
        return run(*args)

    def rebuild(values):
        full = list(leaves)
        for i, v in zip(traced, values, strict=True):
            full[i] = v
        return jax.tree_util.tree_unflatten(treedef, full)

    @jax.custom_vjp
    def primitive(*values):
        return run(*rebuild(values))

    def fwd(*values):
        return primitive(*values), values

    def bwd(values, cts):
        if name not in STRAIGHT_THROUGH:
            raise TypeError(
                f"fp8mm.{name} has no gradient: it returns integer codes and their "
                "scales. For a differentiable quantize->dequantize use "
                "fake_quant_blockwise / fake_quant_global (straight-through gradient), "
                "or wrap the input in jax.lax.stop_gradient."
            )
        # Straight through: the cotangent of A (the first argument) is the output's;
        # the codebook and everything else get zeros.
        grads = [zero_cotangent(v) for v in values]
        if traced and traced[0] == 0:
            grads[0] = cts.astype(values[0].dtype)
        return tuple(grads)

    primitive.defvjp(fwd, bwd)
    return primitive(*(leaves[i] for i in traced))


def call(name: str, implementation: Impl, *args):
    """Runs primitive `name` with the implementation chosen for these arguments.

    Gradients: `fake_quant_*` pass the output cotangent straight through to A;
    every other primitive raises a TypeError when differentiated.
    """
    if name not in PRIMITIVES:
        raise KeyError(f"unknown primitive {name!r}")
    if resolve(name, implementation, *args) == "pallas":
        kernel = _kernel(name).fn

        def run(*a):
            # The kernels index in int32; under jax_enable_x64 their index arithmetic
            # would mix int32 and int64, so they are always traced without x64.
            with _x64(False):
                return kernel(*a, interpret=not on_gpu())
    else:
        run = getattr(reference, name)
    return _with_gradient_rule(name, run, args)
