"""What the fp8 and SwitchBack matmuls share: the GEMM, the operand checks, the static config."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fp8mm import _host, dispatch
from fp8mm.dispatch import Impl
from fp8mm.reference import absmax_nan


def matmul(a: jax.Array, b: jax.Array, contract: tuple[int, int], out_dtype) -> jax.Array:
    """2-D product accumulated in float32 and rounded once to out_dtype.

    float32 operands use Precision.HIGHEST: the default GPU precision for
    float32 dots is TF32-like and misses bitsandbytes' true float32 products.

    Args:
      a: [m, k] or [k, m], contracted on axis contract[0].
      b: [n, k] or [k, n], contracted on axis contract[1].
      contract: the contracted axis of a and of b.
      out_dtype: the result's dtype.

    Returns:
      [m, n] in out_dtype.
    """
    dn = (((contract[0],), (contract[1],)), ((), ()))
    out_dtype = jnp.dtype(out_dtype)
    if _host.platform() == "cpu":
        # XLA's CPU runtime lacks some 16-bit x 16-bit -> float32 dot kernels; float32
        # operands give the same products (16-bit values multiply exactly in float32).
        a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    elif a.dtype == b.dtype == out_dtype and out_dtype.itemsize == 2:
        # A 16-bit GEMM accumulates in float32 and rounds once, like torch's; asking
        # XLA for float32 would write (and keep) a float32 product twice the size.
        return jax.lax.dot_general(a, b, dn, preferred_element_type=out_dtype)
    out = jax.lax.dot_general(
        a, b, dn, precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32
    )
    return out.astype(out_dtype)


def as_2d(x: jax.Array) -> jax.Array:
    """[..., k] as [prod(...), k]: PyTorch's matmuls fold the leading axes into rows."""
    return x.reshape(int(np.prod(x.shape[:-1])), x.shape[-1])


def bias_grad(g2: jax.Array, bias: jax.Array | None) -> jax.Array | None:
    """Σ over the rows of g2 [m, n] in float32, in bias's dtype; None without a bias."""
    if bias is None:
        return None
    return jnp.sum(g2.astype(jnp.float32), axis=0).astype(bias.dtype)


def check_inner(A, B, axis: int, layout: str) -> None:
    """Refuses a weight B whose `axis` is not A's last (the contracted features)."""
    if A.shape[-1] != B.shape[axis]:
        raise ValueError(
            f"inner dimensions differ: A is {tuple(A.shape)} and B is {tuple(B.shape)}; "
            f"B must be {layout} with in == A.shape[-1]"
        )


def static_implementation(implementation: Impl) -> Impl:
    """implementation for a static config: None made the current default, a sequence a tuple.

    The configs are static (jit's cache key, the custom VJPs' nondiff
    arguments): resolving the default (`fp8mm.use_implementation`) here keeps an
    eager call inside `use_implementation(...)` from reusing a program compiled
    under another default, and the backward pass from running under whatever
    default holds when it is traced. A list would not hash.
    """
    if implementation is None:
        implementation = dispatch.default_implementation()
    if implementation is None or isinstance(implementation, str):
        return implementation
    return tuple(implementation)


def mesh_absmax(x: jax.Array, axis_names: tuple[str, ...]) -> jax.Array | None:
    """The whole tensor's absmax inside `shard_map`: the `lax.pmax` over `axis_names` of
    each shard's (NaN-propagating) absmax; None off a mesh (the primitive takes its own)."""
    if not axis_names:
        return None
    return jax.lax.pmax(absmax_nan(x.astype(jnp.float32)), axis_names)
