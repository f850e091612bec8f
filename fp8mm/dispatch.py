"""The implementation registry: which code runs each primitive.

Every primitive of `fp8mm.functional` is one `Primitive` spec: its XLA
reference (`fp8mm.reference`, which runs anywhere) and its Pallas kernels as
named `Kernel`s in preference order. A `Kernel` names a kernel module, which
holds a wrapper named like the primitive and its `supported_<primitive>(*args)
-> reason | None` predicate; the module is imported on the first call that may
use it, so `import fp8mm` stays light. The public function validates its
arguments once and then calls the spec; kernels only report their own limits
(sizes, tiles, the device).

`implementation=` (on every primitive, op and layer) is one of:

* None: the process-wide default, set by `use_implementation(...)` or the
  `FP8MM_IMPLEMENTATION` environment variable; when neither is set, the first
  Pallas kernel that serves the call on a GPU, and "xla" everywhere else;
* "xla": the pure-jnp reference;
* "pallas": the first Pallas kernel, in the spec's preference order, that
  serves the call (compiled on a GPU, interpreted elsewhere: that is how CPU CI
  tests the kernels);
* a kernel name: "pallas_triton" (Pallas on Triton: compiled on a GPU,
  interpreted elsewhere) or "pallas_mosaic_gpu" (Pallas on Mosaic GPU: compiled
  only, on Hopper);
* a sequence of these: the first that serves the call wins.

An explicit choice that cannot serve a call raises `NotImplementedError`
naming each candidate's reason. `fp8mm.dispatch.REGISTRY` lists the specs;
`Primitive.implementations` a spec's names.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import importlib
import os
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fp8mm import _checks, _host

__all__ = [
    "REGISTRY",
    "Impl",
    "Kernel",
    "Primitive",
    "default_implementation",
    "on_gpu",
    "resolve",
    "use_implementation",
    "zero_cotangent",
]

Impl = str | Sequence[str] | None
_ENV = "FP8MM_IMPLEMENTATION"
# "unset" defers to the environment; None inside `use_implementation(None)` means auto.
_UNSET = "unset"
_default: contextvars.ContextVar = contextvars.ContextVar("fp8mm_impl", default=_UNSET)


def _normalise(implementation: Impl, where: str) -> str | tuple[str, ...] | None:
    try:
        _checks.check_implementation(implementation)
    except ValueError as e:
        raise ValueError(str(e).replace("implementation", where, 1)) from None
    if implementation is None or isinstance(implementation, str):
        return implementation
    return tuple(implementation)


def default_implementation() -> Impl:
    """The process-wide default: the innermost `use_implementation`, else $FP8MM_IMPLEMENTATION.

    The environment variable holds one name or a comma-separated sequence.
    """
    impl = _default.get()
    if impl != _UNSET:
        return impl
    env = os.environ.get(_ENV, "").strip().lower()
    if env in ("", "auto", "none"):
        return None
    names = tuple(n.strip() for n in env.split(","))
    return _normalise(names[0] if len(names) == 1 else names, f"${_ENV}")


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
      ```python
      with fp8mm.use_implementation("xla"):
          loss = train_step(params, batch)   # traced here: every primitive uses XLA
      with fp8mm.use_implementation(("pallas_triton", "xla")):
          loss = train_step(params, batch)   # Triton kernels where they serve, else XLA
      ```
    """
    token = _default.set(_normalise(implementation, "implementation"))
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


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One Pallas kernel module serving a primitive.

    A kernel module defines, for each primitive `name` it serves, the wrapper
    `name(*args, interpret=False, config=None)` (the reference's arguments; the
    registry leaves `config` to the kernel's heuristic) and the predicate
    `supported_name(*args) -> str | None`: None when the kernel serves these
    (already validated) arguments, else the reason (sizes, tiles, device).

    Attributes:
      name: "pallas_triton" or "pallas_mosaic_gpu".
      module: import path of the kernel module, imported on first use.
      interpretable: whether Pallas interpret mode runs it off a GPU (Mosaic GPU
        kernels run only compiled).
    """

    name: str
    module: str
    interpretable: bool = True

    def __post_init__(self):
        if self.name not in _checks.KERNEL_NAMES:
            raise ValueError(f"Kernel.name must be one of {_checks.KERNEL_NAMES}: {self.name!r}")

    def _attr(self, attr: str) -> Callable | None:
        return getattr(importlib.import_module(self.module), attr, None)

    def reason(self, primitive: str, *args) -> str | None:
        """None when this kernel serves `primitive(*args)` here and now, else why not."""
        if not on_gpu():
            if not self.interpretable:
                return "it runs only compiled on a GPU"
            if jax.config.jax_enable_x64:
                # Compiled kernels are traced without x64 (see `run`), but Pallas interpret
                # mode lowers them again under the caller's x64 setting, where JAX's
                # interpreter mixes int64 into their int32 indexing and is not bit-exact.
                return "Pallas interpret mode (no GPU) does not support jax_enable_x64"
        if self._attr(primitive) is None:
            return f"{self.module} has no {primitive}"
        supported = self._attr(f"supported_{primitive}")
        return None if supported is None else supported(*args)

    def run(self, primitive: str, *args):
        # The kernels index in int32; under jax_enable_x64 their index arithmetic
        # would mix int32 and int64, so they are always traced without x64.
        with _x64(False):
            return self._attr(primitive)(*args, interpret=not on_gpu())


REGISTRY: dict[str, Primitive] = {}


@dataclasses.dataclass(frozen=True)
class Primitive:
    """The spec of one primitive: its reference, its kernels and its gradient rule.

    Attributes:
      name: the public name (`fp8mm.<name>`).
      reference: the XLA implementation (a function of `fp8mm.reference`).
      kernels: Pallas kernels in preference order.
      straight_through: differentiable with the straight-through estimator (the
        fake-quantization primitives); every other primitive returns codes and
        raises a TypeError when differentiated.
    """

    name: str
    reference: Callable
    kernels: tuple[Kernel, ...] = ()
    straight_through: bool = False

    def __post_init__(self):
        REGISTRY[self.name] = self

    @property
    def implementations(self) -> tuple[str, ...]:
        return ("xla", *(k.name for k in self.kernels))

    def resolve(self, implementation: Impl, *args) -> str:
        """The name of the implementation that serves these (validated) arguments."""
        choice = _normalise(implementation, "implementation")
        if choice is None:
            choice = default_implementation()
        auto = choice is None
        if auto:
            names = [k.name for k in self.kernels] if on_gpu() else []
            names.append("xla")
        else:
            names = []
            for n in (choice,) if isinstance(choice, str) else choice:
                if n == "pallas":
                    names += [k.name for k in self.kernels] or ["pallas"]
                else:
                    names.append(n)
        kernels = {k.name: k for k in self.kernels}
        reasons = []
        for n in names:
            if n == "xla":
                return n
            kernel = kernels.get(n)
            if kernel is None:
                why = f"it has no such kernel (it has {', '.join(self.implementations)})"
            else:
                why = kernel.reason(self.name, *args)
            if why is None:
                return n
            reasons.append(f"{n}: {why}")
        raise NotImplementedError(
            f"{self.name}: implementation={choice!r} cannot serve this call: " + "; ".join(reasons)
        )

    def __call__(self, *args, implementation: Impl = None):
        """Runs the implementation chosen for `args` with this primitive's gradient rule."""
        name = self.resolve(implementation, *args)
        if name == "xla":
            run = self.reference
        else:
            kernel = next(k for k in self.kernels if k.name == name)
            run = functools.partial(kernel.run, self.name)
        return _with_gradient_rule(self.name, run, args, self.straight_through)


def resolve(name: str, implementation: Impl, *args) -> str:
    """The implementation that primitive `name` would run for these arguments."""
    return REGISTRY[name].resolve(implementation, *args)


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


def _with_gradient_rule(name: str, run, args: tuple, straight_through: bool):
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
        if not straight_through:
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
