"""The one quantized dense product every fp8mm layer, factory and interceptor runs.

`quantized_dense(spec, x, kernel, bias)` computes `x @ kernel (+ bias)` with the
Dense kernel layout [in, out] through the custom-VJP ops of `fp8mm.ops`, by the
`KIND_TABLE` row of `spec.kind`; `make_dot_general(spec)` wraps it for
`nn.Dense(dot_general=...)`. Inside `fp8mm.nn.sharding.partition` it runs per
shard in `shard_map`, where that is exact.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from fp8mm import _checks, ops
from fp8mm.nn._core import INT8_KINDS, KIND_TABLE, QuantSpec
from fp8mm.nn._fsdp import gather_problem, gathered_dense, gathered_split_problem
from fp8mm.nn.sharding import P, Partition, current_partition, shard_map
from fp8mm.state import MatmulLtState

__all__ = ["make_dot_general", "quantized_dense"]


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
    if not isinstance(spec, QuantSpec):
        raise TypeError(f"spec must be a QuantSpec, got {type(spec).__name__}")
    _check_operands(spec, x, kernel, bias, int8_state)
    spec = _with_state_threshold(spec, int8_state)
    part = current_partition()
    if part is not None and part.size(part.batch_axis) * part.size(part.model_axis) > 1:
        return _partitioned(spec, part, x, kernel, bias, int8_state)
    return _local(spec, x, kernel, bias, int8_state)


def _with_state_threshold(spec: QuantSpec, int8_state: MatmulLtState | None) -> QuantSpec:
    """The threshold fallback, in its one place: switchback_bnb uses `int8_state.threshold`
    when the spec's is 0, so the spec every later step reads says so too."""
    if spec.threshold or int8_state is None or not int8_state.threshold:
        return spec
    return dataclasses.replace(spec, threshold=int8_state.threshold)


def _check_operands(spec: QuantSpec, x, kernel, bias, int8_state) -> None:
    # Checked here, under the layer's names, so that a wrong shape is not reported
    # later by an op in its own terms (A, B, state.CB) or by XLA.
    _checks.check_float("x", x)
    _checks.check_min_ndim("x", x, 1)
    if int8_state is not None:
        if not KIND_TABLE[spec.kind].int8_weights:
            raise ValueError(
                f"int8_state is for the SwitchBack kinds only ({', '.join(INT8_KINDS)}), "
                f"not {spec.kind!r}"
            )
        if not isinstance(int8_state, MatmulLtState):
            raise TypeError(
                f"int8_state must be a MatmulLtState or None, got {type(int8_state).__name__}"
            )
        if int8_state.CB is None:
            raise ValueError("int8_state must hold the int8 weight CB and its scales SCB")
        n, k = int8_state.CB.shape[0], int8_state.CB.shape[-1]
        what = f"int8 weight CB {tuple(int8_state.CB.shape)} ([out, in])"
    elif kernel is None:
        raise ValueError(f"kind {spec.kind!r} needs the float kernel, got kernel=None")
    else:
        _checks.check_float("kernel", kernel)
        _checks.check_ndim("kernel", kernel, 2)
        k, n = kernel.shape
        what = f"kernel {tuple(kernel.shape)} ([in, out])"
    if x.shape[-1] != k:
        raise ValueError(f"x has {x.shape[-1]} input features (shape {tuple(x.shape)}); {what}")
    if bias is not None:
        _checks.check_float("bias", bias)
        if tuple(bias.shape) != (n,):
            raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")


def _local(spec: QuantSpec, x, kernel, bias, int8_state):
    row = KIND_TABLE[spec.kind]
    return row.product(row.op, spec, x, kernel, bias, int8_state)


def make_dot_general(spec: QuantSpec):
    """A `dot_general` replacement running `spec`'s quantized op, for nn.Dense / nnx.Linear.

    The callable accepts `(lhs, rhs, dimension_numbers, precision=None,
    preferred_element_type=None, **kwargs)` as flax calls it and supports the
    contraction Dense uses: lhs's last axis with rhs's first, rhs 2-D, no batch
    dimensions. `precision` is ignored: the ops fix their own precision
    (float32 products use HIGHEST). The bias stays with the caller (flax adds
    it after the product), and SwitchBack outlier masks cannot be sown from here.
    """
    if not isinstance(spec, QuantSpec):
        raise TypeError(f"spec must be a QuantSpec, got {type(spec).__name__}")

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
    why = split_reason(spec, part, x, kernel, int8_state)
    if why:
        raise NotImplementedError(why)


def split_reason(spec: QuantSpec, part: Partition, x, kernel, int8_state=None) -> str | None:
    """Why `partition` refuses to split this product over `part`'s mesh, or None.

    Shapes that do not divide over the mesh, the kind's `split_problem`, and with
    `gather_8bit` the 8-bit gather's own limits (`fp8mm.nn._fsdp`: its custom VJPs
    combine the statistics they quantize with themselves, so for the kinds they serve
    they replace the table's check).
    """
    nb, nm = part.size(part.batch_axis), part.size(part.model_axis)
    n = int8_state.CB.shape[0] if kernel is None else kernel.shape[1]
    nf = part.size(part.fsdp) if kernel is not None else 1
    gathered = part.gather_8bit and kernel is not None and part.fsdp is not None
    if x.ndim < 2 or x.shape[0] % nb or n % nm:
        why = f"x {x.shape} / {n} output features do not divide over the mesh ({nb}, {nm})"
    elif kernel is not None and kernel.shape[0] % nf:
        why = f"the kernel's {kernel.shape[0]} input features do not divide over fsdp ({nf})"
    elif gathered and gather_problem(spec):
        return (
            f"fp8mm.nn.sharding.partition(gather_8bit=True) cannot gather the {spec.kind} "
            f"weight in 8 bit: {gather_problem(spec)}. Use gather_8bit=False (the 16-bit "
            "gather)."
        )
    elif gathered:
        why = gathered_split_problem(spec, part, x, kernel)
    else:
        why = KIND_TABLE[spec.kind].split_problem(spec, part, x, kernel)
    if not why:
        return None
    return (
        f"fp8mm.nn.sharding.partition cannot split {spec.kind} exactly: {why}. "
        "Run it without `partition` (GSPMD, XLA path) instead."
    )


def _whole_blocks(spec: QuantSpec, x, kernel) -> QuantSpec:
    """The fp8 kinds' automatic block sizes (-1) picked from the whole operands, as one
    device picks them: inside the shard_map the op sees a shard's output features (and
    would pick a smaller bsz2 where the model axis splits them)."""
    if kernel is None or "bsz" not in KIND_TABLE[spec.kind].options:
        return spec
    bsz, bsz2 = ops.get_block_sizes(x, kernel)
    return dataclasses.replace(
        spec, bsz=bsz if spec.bsz == -1 else spec.bsz, bsz2=bsz2 if spec.bsz2 == -1 else spec.bsz2
    )


def _partitioned(spec: QuantSpec, part: Partition, x, kernel, bias, int8_state):
    """`_local` inside shard_map: each device quantizes and multiplies its own shard."""
    _check_exact(spec, part, x, kernel, int8_state)
    spec = _whole_blocks(spec, x, kernel)
    b, m = part.batch_axis, part.model_axis
    # FSDP: the kernel enters as its [in / fsdp, out / model] shard and is gathered inside.
    f = part.fsdp if kernel is not None else None
    rest = (None,) * (x.ndim - 1)
    # The int8 weight travels as its two arrays (a MatmulLtState of PartitionSpecs is no
    # state) and is rebuilt per shard: CB rows and SCB split with the output features.
    # Under FSDP a CB split on its columns is gathered (in int8) at the shard_map's edge.
    cb, scb = (None, None) if int8_state is None else (int8_state.CB, int8_state.SCB)
    args = (x, kernel, bias, cb, scb)
    specs = (
        P(b, *rest),
        None if kernel is None else P(f, m),
        None if bias is None else P(m),
        None if cb is None else P(m, None),
        None if scb is None else P(m),
    )
    out_specs = (P(b, *rest[:-1], m), P() if spec.threshold > 0 else None)

    def body(x, kernel, bias, cb, scb):
        if f is not None and part.gather_8bit:
            return gathered_dense(spec, part, x, kernel, bias)
        if f is not None:
            # The 16-bit gather (the kernel's dtype); its transpose, a psum_scatter, is
            # the weight gradient's reduce-scatter.
            kernel = jax.lax.all_gather(kernel, f, axis=0, tiled=True)
        state = None if cb is None else dataclasses.replace(int8_state, CB=cb, SCB=scb)
        return _local(spec, x, kernel, bias, state)

    # check_vma=False: the Pallas kernels' interpret mode (the CPU) cannot trace under
    # the varying-axes check. The transpose then sums the cotangent of every operand
    # that is replicated over an axis (the weight gradient over the batch shards).
    return shard_map(body, mesh=part.mesh, in_specs=specs, out_specs=out_specs, check_vma=False)(
        *args
    )
