"""DenseGeneral / LinearGeneral / Einsum products on the 2-D dense product of `_dense`.

A contraction of x's axes with a weight (flax's DenseGeneral `axis=`, tuple
`features`, or an einsum of x with a kernel) is the Dense product of a reshaped
problem: x's contracted axes moved last and x reshaped to [rows, K], the kernel
to [K, N], `quantized_dense` run on those, and the result reshaped (and, for an
einsum whose output interleaves x's and the kernel's axes, transposed) back. So
every kind and option of `QuantSpec` applies unchanged, and the numbers are
exactly those of an fp8mm Dense layer on [rows, K] @ [K, N] (+ bias [N]).

SwitchBack int8 inference weights of such a layer are those of the Dense layer
on the reshaped kernel [K, N], kept in the shape of the kernel's axes:
CB int8 [*features, *contracted] (the Linear layout [out, in] of the reshaped
problem, before flattening) and SCB float32 [*features]; `int8_weight` builds
them and `general_product(..., int8_weight=(CB, SCB))` runs them, exactly the
numbers of the Dense layer with CB [N, K], SCB [N].

Products with a batch index (DenseGeneral `batch_dims`, LinearGeneral
`batch_axis`, an einsum index in x, the kernel and the output) are a weight per
batch element: they have no 2-D form, and the callers refuse or skip them.
"""

from __future__ import annotations

import dataclasses
import math
import string
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fp8mm.nn._core import KIND_TABLE, QuantSpec, int8_weight_state
from fp8mm.nn._dense import quantized_dense

__all__ = [
    "DENSE_LAYOUT",
    "Contraction",
    "KernelLayout",
    "dense_general_contraction",
    "einsum_contraction",
    "general_product",
    "int8_weight",
    "int8_weight_shapes",
]


class KernelLayout(NamedTuple):
    """How a kernel's axes become the [K, N] kernel of the 2-D product.

    Attributes:
      kernel_perm: the kernel's axes, the contracted ones first, then the features.
      n_contract: how many of them are contracted.
    """

    kernel_perm: tuple[int, ...]
    n_contract: int


# nn.Dense / nnx.Linear: the kernel is [in, out] already.
DENSE_LAYOUT = KernelLayout((0, 1), 1)


@dataclasses.dataclass(frozen=True)
class Contraction:
    """How an N-d product of x with a kernel maps onto the 2-D dense product.

    Attributes:
      x_perm: x's axes, its free axes first (in x's order), then the contracted ones.
      kernel_perm: the kernel's axes, the contracted ones first (in x's order of
        them), then the feature axes (in the output's order).
      out_perm: the output's axes as positions in (free axes, feature axes); None
        when that is already the output's order.
      n_contract: how many axes are contracted.
    """

    x_perm: tuple[int, ...]
    kernel_perm: tuple[int, ...]
    out_perm: tuple[int, ...] | None
    n_contract: int

    @property
    def layout(self) -> KernelLayout:
        """The kernel's part of the mapping (it does not depend on x's free axes)."""
        return KernelLayout(self.kernel_perm, self.n_contract)


def _labels_contraction(lhs: str, rhs: str, out: str) -> Contraction | str:
    """The `Contraction` of the einsum `lhs,rhs->out` (one letter per axis), or why none."""
    for name, sub in (("x", lhs), ("the kernel", rhs), ("the output", out)):
        repeated = sorted({c for c in sub if sub.count(c) > 1})
        if repeated:
            return f"index {repeated[0]!r} repeats in {name} (a diagonal or trace)"
    for c in out:
        if c not in lhs and c not in rhs:
            return f"output index {c!r} is in neither operand"
    batch = [c for c in lhs if c in rhs and c in out]
    if batch:
        return (
            f"index {batch[0]!r} is in x, the kernel and the output: a weight per batch "
            "element (a batched product) has no 2-D form"
        )
    summed = [c for c in lhs + rhs if c not in out and not (c in lhs and c in rhs)]
    if summed:
        return f"index {summed[0]!r} is summed over one operand only"
    contracted = [c for c in lhs if c in rhs]
    if not contracted:
        return "it contracts no axis (an outer product)"
    free = [c for c in lhs if c not in rhs]
    features = [c for c in out if c in rhs]
    x_perm = tuple(lhs.index(c) for c in free + contracted)
    kernel_perm = tuple(rhs.index(c) for c in contracted + features)
    order = free + features
    out_perm = tuple(order.index(c) for c in out)
    identity = out_perm == tuple(range(len(out)))
    return Contraction(x_perm, kernel_perm, None if identity else out_perm, len(contracted))


def dense_general_contraction(ndim: int, axis: Sequence[int], n_features: int) -> Contraction | str:
    """The `Contraction` of flax's DenseGeneral / LinearGeneral without batch axes.

    Args:
      ndim: x's number of axes.
      axis: the contracted axes of x (negative counts from the end), in any order:
        flax sorts them, and the kernel is [x's contracted axes in order..., features...].
      n_features: how many feature axes the kernel has.

    Returns:
      the Contraction, or a string saying why `axis` does not fit x.
    """
    norm = [a + ndim if a < 0 else a for a in axis]
    if any(not 0 <= a < ndim for a in norm) or len(set(norm)) != len(norm):
        return f"axis={tuple(axis)} does not name distinct axes of a {ndim}-d input"
    if len(string.ascii_letters) < ndim + n_features:
        return f"{ndim + n_features} axes are more than this mapping handles"
    letters = string.ascii_letters[: ndim + n_features]
    x, feats = letters[:ndim], letters[ndim:]
    contracted = "".join(x[a] for a in sorted(norm))
    free = "".join(c for c in x if c not in contracted)
    return _labels_contraction(x, contracted + feats, free + feats)


def einsum_contraction(einsum_str: str, x_ndim: int, kernel_ndim: int) -> Contraction | str:
    """The `Contraction` of `einsum_str` ("x,kernel->out"), or why it is no dense product.

    It maps when every index of x is either contracted with the kernel or kept in
    the output, every kernel index is contracted or kept, and no index is in x,
    the kernel and the output (a batch index): x's free axes and the kernel's
    feature axes may then appear in the output in any order. An ellipsis may
    stand for x's leading free axes (in x and the output, not in the kernel).

    Args:
      einsum_str: the equation, spaces allowed.
      x_ndim: x's number of axes.
      kernel_ndim: the kernel's number of axes.
    """
    eq = einsum_str.replace(" ", "")
    if eq.count("->") != 1 or eq.count(",") != 1:
        return f"{einsum_str!r} is not an explicit two-operand einsum ('x,kernel->out')"
    ins, out = eq.split("->")
    lhs, rhs = ins.split(",")
    if "..." in rhs:
        return "an ellipsis in the kernel"
    if ("..." in lhs) != ("..." in out):
        return "an ellipsis in only one of x and the output"
    if "..." in lhs:
        n = x_ndim - (len(lhs) - 3)
        used = set(eq)
        fresh = "".join(c for c in string.ascii_letters if c not in used)
        if n < 0 or n > len(fresh):
            return f"the ellipsis does not fit a {x_ndim}-d x"
        lhs, out = lhs.replace("...", fresh[:n]), out.replace("...", fresh[:n])
    for sub in (lhs, rhs, out):
        if not all(c in string.ascii_letters for c in sub):
            return f"{einsum_str!r} has an index that is not a letter"
    if len(lhs) != x_ndim or len(rhs) != kernel_ndim:
        return (
            f"{einsum_str!r} names {len(lhs)} and {len(rhs)} axes for x ({x_ndim}-d) and "
            f"the kernel ({kernel_ndim}-d)"
        )
    return _labels_contraction(lhs, rhs, out)


def _transpose(a: jax.Array, perm: tuple[int, ...]) -> jax.Array:
    return a if perm == tuple(range(a.ndim)) else jnp.transpose(a, perm)


def int8_weight_shapes(
    layout: KernelLayout, kernel_shape: Sequence[int]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The shapes of CB ([*features, *contracted]) and SCB ([*features]) for a kernel shape."""
    shape = tuple(kernel_shape[a] for a in layout.kernel_perm)
    contracted, feats = shape[: layout.n_contract], shape[layout.n_contract :]
    return (*feats, *contracted), feats


def int8_weight(
    spec: QuantSpec, layout: KernelLayout, kernel: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """The SwitchBack int8 inference weights of an N-d kernel: the 2-D Dense ones, reshaped.

    Args:
      spec: a SwitchBack kind's options (`fp8mm.nn.INT8_KINDS`).
      layout: which kernel axes are contracted (`Contraction.layout`; `DENSE_LAYOUT`
        for a Dense kernel [in, out]).
      kernel: float [...], `len(layout.kernel_perm)` axes.

    Returns:
      (CB int8 [*features, *contracted], SCB float32 [*features]): the kind's
      `int8_prepare` of the reshaped kernel [K, N] (CB [N, K], SCB [N]) in the
      kernel's axes.

    Raises:
      ValueError: the kind takes no int8 weights, or the kernel does not fit `layout`.
    """
    row = KIND_TABLE[spec.kind]
    if not row.int8_weights:
        raise ValueError(f"kind {spec.kind!r} takes no int8 inference weights")
    if kernel.ndim != len(layout.kernel_perm):
        raise ValueError(
            f"kernel {tuple(kernel.shape)} does not fit a {len(layout.kernel_perm)}-d layout"
        )
    cb_shape, scb_shape = int8_weight_shapes(layout, kernel.shape)
    kt = _transpose(kernel, layout.kernel_perm)
    k = math.prod(kt.shape[: layout.n_contract])
    cb, scb = row.int8_prepare(spec, jnp.reshape(kt, (k, -1)))
    return jnp.reshape(cb, cb_shape), jnp.reshape(scb, scb_shape)


def general_product(
    spec: QuantSpec,
    contraction: Contraction,
    x: jax.Array,
    kernel: jax.Array | None,
    bias: jax.Array | None = None,
    *,
    int8_weight: tuple[jax.Array, jax.Array] | None = None,
) -> tuple[jax.Array, jax.Array | None]:
    """`x` contracted with `kernel` (+ bias) through `quantized_dense` on the 2-D problem.

    Args:
      spec: quantization options.
      contraction: from `dense_general_contraction` or `einsum_contraction`.
      x: float [...], already in the computation dtype.
      kernel: float [...], x's dtype; None with `int8_weight`.
      bias: optional float of the feature axes' total size ([features...] in the
        output's order of them; any shape of that size).
      int8_weight: SwitchBack kinds: (CB int8 [*features, *contracted], SCB float32
        [*features]) from `int8_weight`, used in place of the kernel.

    Returns:
      (y [output axes], outlier mask bool [contracted axes] or None): the output of
      `quantized_dense(spec, x2 [rows, K], kernel2 [K, N], bias [N])` (or of its
      int8 weight CB [N, K], SCB [N]) reshaped back, and its SwitchBack outlier
      column mask (threshold > 0 only) reshaped to x's contracted axes.

    Raises:
      ValueError: the kernel's (or CB's) contracted axes or the bias do not fit x.
    """
    c = contraction
    xt = _transpose(x, c.x_perm)
    free, in_shape = xt.shape[: xt.ndim - c.n_contract], xt.shape[xt.ndim - c.n_contract :]
    if int8_weight is not None:
        cb, scb = int8_weight
        feats, got = cb.shape[: cb.ndim - c.n_contract], cb.shape[cb.ndim - c.n_contract :]
        what, name = f"int8 weight CB {tuple(cb.shape)}", "CB"
    else:
        kt = _transpose(kernel, c.kernel_perm)
        got, feats = kt.shape[: c.n_contract], kt.shape[c.n_contract :]
        what, name = f"kernel {tuple(kernel.shape)}", "the kernel"
    if tuple(got) != tuple(in_shape):
        raise ValueError(
            f"x {tuple(x.shape)} and {what} disagree on the contracted axes: "
            f"{tuple(in_shape)} in x, {tuple(got)} in {name}"
        )
    k, n = math.prod(in_shape), math.prod(feats)
    if bias is not None:
        if bias.size != n:
            raise ValueError(
                f"bias {tuple(bias.shape)} does not fit the {tuple(feats)} output features"
            )
        bias = jnp.reshape(bias, (n,))
    x2 = jnp.reshape(xt, (math.prod(free), k))
    if int8_weight is not None:
        if scb.size != n:
            raise ValueError(f"int8 scales SCB {tuple(scb.shape)} do not fit CB {cb.shape}")
        state = int8_weight_state(spec, jnp.reshape(cb, (n, k)), jnp.reshape(scb, (n,)))
        y, cols = quantized_dense(spec, x2, None, bias, int8_state=state)
    else:
        y, cols = quantized_dense(spec, x2, jnp.reshape(kt, (k, n)), bias)
    y = jnp.reshape(y, (*free, *feats))
    if c.out_perm is not None:
        y = jnp.transpose(y, c.out_perm)
    if cols is not None:
        cols = jnp.reshape(cols, in_shape)
    return y, cols
