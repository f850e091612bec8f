"""The one quantized dense product every fp8mm layer, factory and interceptor runs.

`QuantSpec` holds the quantization options of a layer (which op, codes, block
sizes, threshold, implementation); `quantized_dense(spec, x, kernel, bias)`
computes `x @ kernel (+ bias)` with the Dense kernel layout [in, out] through
the custom-VJP ops of `fp8mm.ops`. Keeping this in one place is what makes the
dedicated layers, the `dot_general` factories and the model conversions give
the same numbers.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from fp8mm import ops
from fp8mm.codebooks import e4m3_code, e5m2_code
from fp8mm.dispatch import Impl
from fp8mm.nn.sharding import P, Partition, current_partition, shard_map
from fp8mm.state import MatmulLtState

__all__ = ["KINDS", "Kind", "QuantSpec", "make_dot_general", "quantized_dense"]

Kind = Literal["fp8_mixed", "fp8_global", "switchback"]
KINDS: tuple[str, ...] = ("fp8_mixed", "fp8_global", "switchback")


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """Quantization options of one dense product.

    Attributes:
      kind: "fp8_mixed", "fp8_global" or "switchback".
      fw_code: float32 [256] forward code; None for e4m3 (bitsandbytes' LinearFP8*).
      bw_code: float32 [256] backward code; None for e5m2.
      bsz: forward block size; -1 for `fp8mm.get_block_sizes`.
      bsz2: backward block size; -1 for `fp8mm.get_block_sizes`.
      threshold: SwitchBack outlier threshold (0 disables the decomposition).
      outlier_capacity: SwitchBack outlier slots under jit (None: the op's default).
      implementation: None, "xla" or "pallas" (see `fp8mm.dispatch`).
    """

    kind: Kind
    fw_code: Any = None
    bw_code: Any = None
    bsz: int = -1
    bsz2: int = -1
    threshold: float = 0.0
    outlier_capacity: int | None = None
    implementation: Impl = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")

    def codes(self) -> tuple[jax.Array, jax.Array]:
        fw = e4m3_code() if self.fw_code is None else self.fw_code
        bw = e5m2_code() if self.bw_code is None else self.bw_code
        return jnp.asarray(fw, jnp.float32), jnp.asarray(bw, jnp.float32)


def quantized_dense(
    spec: QuantSpec,
    x: jax.Array,
    kernel: jax.Array | None,
    bias: jax.Array | None = None,
    *,
    int8_state: MatmulLtState | None = None,
) -> tuple[jax.Array, jax.Array | None]:
    """`x @ kernel + bias` through the quantized op named by `spec.kind`.

    Args:
      spec: quantization options.
      x: float [..., in], already cast to the computation dtype.
      kernel: float [in, out] (Dense layout), same dtype as `x`; may be None for
        SwitchBack with an int8 inference weight in `int8_state`.
      bias: optional float [out].
      int8_state: SwitchBack only: a `MatmulLtState(has_fp16_weights=False)`
        holding the int8 weight CB [out, in] and its scales SCB [out].

    Returns:
      (y [..., out] in x's dtype, outlier column mask bool [in] or None). The
      mask is returned for SwitchBack with threshold > 0 only.
    """
    part = current_partition()
    if part is not None and part.size(part.batch_axis) * part.size(part.model_axis) > 1:
        return _partitioned(spec, part, x, kernel, bias, int8_state)
    return _local(spec, x, kernel, bias, int8_state)


def _local(spec, x, kernel, bias, int8_state):
    if spec.kind == "switchback":
        # switchback_bnb wants the Linear layout [out, in]; XLA fuses the transpose.
        w = None if kernel is None else kernel.T
        y, cols = ops.switchback_bnb(
            x,
            w if int8_state is None else None,
            int8_state,
            spec.threshold,
            bias,
            outlier_capacity=spec.outlier_capacity,
            return_outliers=True,
            implementation=spec.implementation,
        )
        # switchback_bnb falls back to the state's threshold when spec.threshold is 0.
        threshold = spec.threshold or (int8_state.threshold if int8_state is not None else 0.0)
        return y, (cols if threshold > 0 else None)
    if kernel is None:
        raise ValueError(f"{spec.kind} needs the float kernel")
    fw, bw = spec.codes()
    op = ops.matmul_fp8_mixed if spec.kind == "fp8_mixed" else ops.matmul_fp8_global
    # The ops need A at least 2-D; a single vector is a batch of one row.
    x2 = x[None] if x.ndim == 1 else x
    y = op(x2, kernel, fw, bw, spec.bsz, spec.bsz2, implementation=spec.implementation)
    y = y[0] if x.ndim == 1 else y
    if bias is not None:
        # Added exactly as flax's Dense adds it, so injection and layers agree.
        y = y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
    return y, None


def make_dot_general(spec: QuantSpec):
    """A `dot_general` replacement running `spec`'s quantized op, for nn.Dense / nnx.Linear.

    The callable accepts `(lhs, rhs, dimension_numbers, precision=None,
    preferred_element_type=None, **kwargs)` as flax calls it and supports the
    contraction Dense uses: lhs's last axis with rhs's first, rhs 2-D, no batch
    dimensions. `precision` is ignored: the ops fix their own precision
    (float32 products use HIGHEST). The bias stays with the caller (flax adds
    it after the product), and SwitchBack outlier masks cannot be sown from here.
    """

    def dot_general(
        lhs: jax.Array,
        rhs: jax.Array,
        dimension_numbers,
        precision=None,
        preferred_element_type=None,
        **kwargs,
    ) -> jax.Array:
        del precision  # the ops choose their precision; see the docstring
        out_sharding = kwargs.pop("out_sharding", None)
        if kwargs:
            raise TypeError(f"fp8mm dot_general got unexpected arguments {sorted(kwargs)}")
        (lc, rc), (lb, rb) = dimension_numbers
        if (
            tuple(lb) or tuple(rb) or tuple(lc) != (lhs.ndim - 1,) or tuple(rc) != (0,)
        ) or rhs.ndim != 2:
            raise NotImplementedError(
                "fp8mm dot_general supports only the nn.Dense contraction "
                "(lhs last axis with the first axis of a 2-D rhs, no batch dimensions); got "
                f"dimension_numbers={dimension_numbers} for lhs {lhs.shape} and rhs {rhs.shape}"
            )
        del out_sharding  # shardings propagate through the op (see fp8mm.nn.sharding)
        dtype = jnp.result_type(lhs, rhs)
        y, _ = quantized_dense(spec, lhs.astype(dtype), rhs.astype(dtype))
        if preferred_element_type is not None:
            y = y.astype(preferred_element_type)
        return y

    dot_general.spec = spec  # type: ignore[attr-defined]  # lets users inspect the options
    return dot_general


def _check_exact(spec: QuantSpec, part: Partition, x: jax.Array, kernel, int8_state) -> None:
    """Raises unless per-shard quantization equals the global one (see fp8mm.nn.sharding)."""
    nb, nm = part.size(part.batch_axis), part.size(part.model_axis)
    n = int8_state.CB.shape[0] if kernel is None else kernel.shape[1]
    why = None
    if x.ndim < 2 or x.shape[0] % nb or n % nm:
        why = f"x {x.shape} / {n} output features do not divide over the mesh ({nb}, {nm})"
    elif spec.kind == "switchback":
        threshold = spec.threshold or (int8_state.threshold if int8_state is not None else 0.0)
        if nb > 1 and threshold > 0:
            why = "outlier columns are found over all rows; a batch shard sees only its own"
    elif spec.kind == "fp8_global" or nm > 1:
        why = "global (whole-tensor) absmax needs a cross-device max inside the op"
    else:  # fp8_mixed on the batch axis: blocks of the flattened rows must not straddle shards
        bsz, bsz2 = ops.get_block_sizes(x, kernel)
        bsz = bsz if spec.bsz == -1 else spec.bsz
        bsz2 = bsz2 if spec.bsz2 == -1 else spec.bsz2
        rows = int(np.prod(x.shape[:-1])) // nb
        if (rows * x.shape[-1]) % bsz or (rows * n) % bsz2:
            why = f"blocks of {bsz}/{bsz2} elements straddle the batch shards ({rows} rows each)"
    if why:
        raise NotImplementedError(
            f"fp8mm.nn.sharding.partition cannot split {spec.kind} exactly: {why}. "
            "Run it without `partition` (GSPMD, XLA path) instead."
        )


def _partitioned(spec, part: Partition, x, kernel, bias, int8_state):
    """`_local` inside shard_map: each device quantizes and multiplies its own shard."""
    _check_exact(spec, part, x, kernel, int8_state)
    b, m = part.batch_axis, part.model_axis
    rest = (None,) * (x.ndim - 1)
    threshold = spec.threshold or (int8_state.threshold if int8_state is not None else 0.0)
    args = (x, kernel, bias, int8_state)
    specs = (
        P(b, *rest),
        None if kernel is None else P(None, m),
        None if bias is None else P(m),
        None if int8_state is None else dataclasses.replace(int8_state, CB=P(m, None), SCB=P(m)),
    )
    out_specs = (P(b, *rest[:-1], m), P() if threshold > 0 else None)

    axes = tuple(a for a in (b, m) if a is not None)

    def body(*args):
        # Make every operand device-varying first: the custom VJPs return cotangents as
        # varying as their inputs, and the transpose of this cast is the psum that
        # sums, e.g., the weight gradient over the batch shards.
        x, kernel, bias, int8_state = jax.tree.map(lambda a: _vary(a, axes), args)
        return _local(spec, x, kernel, bias, int8_state)

    return shard_map(body, mesh=part.mesh, in_specs=specs, out_specs=out_specs)(*args)


def _vary(a: jax.Array, axes: tuple[str, ...]) -> jax.Array:
    aval = jax.typeof(a)
    mat = getattr(aval, "manual_axis_type", None)  # JAX 0.10; earlier versions: aval.vma
    have = mat.varying if mat is not None else getattr(aval, "vma", frozenset())
    missing = tuple(ax for ax in axes if ax not in have)
    if not missing:
        return a
    if hasattr(jax.lax, "pcast"):
        return jax.lax.pcast(a, missing, to="varying")
    return jax.lax.pvary(a, missing)  # JAX < 0.8
