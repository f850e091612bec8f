"""SwitchBack: the int8 matmul whose weight gradient switches back to 16 bits.

`switchback_bnb` validates its arguments once (`_switchback_args`) and runs a
jitted custom VJP whose static config selects the program: the outlier
threshold, whether the weight is trained, the outlier slot count and the
implementation.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from fp8mm import _checks, dispatch
from fp8mm import functional as F
from fp8mm.dispatch import Impl
from fp8mm.ops._common import as_2d, bias_grad, check_inner, matmul, static_implementation
from fp8mm.state import MatmulLtState

_INV127 = np.float32(1.0 / 127.0)


@dataclasses.dataclass(frozen=True)
class _Config:
    threshold: float
    has_fp16_weights: bool
    outlier_capacity: int
    implementation: Impl
    axis_names: tuple[str, ...] = ()  # mesh axes A's rows are split over (inside shard_map)


def prepare_int8_weight(B: jax.Array, threshold: float = 0.0, *, implementation: Impl = None):
    """Pre-quantizes a weight for int8 inference with `switchback_bnb`.

    Args:
      B: float weight [n, k] (Linear layout).
      threshold: outlier threshold stored in the state (a real number >= 0).
      implementation: None, "xla", "pallas", a kernel name or a sequence of
        these (see `fp8mm.dispatch`).

    Returns:
      `MatmulLtState(threshold, has_fp16_weights=False, CB=int8 [n, k], SCB=float32 [n])`.
    """
    _checks.check_float("B", B)
    _checks.check_ndim("B", B, 2)
    # Checked before the weight is quantized, so a bad value fails here and not in the state.
    threshold = _checks.check_threshold(threshold)
    CB, SCB, _ = F.int8_vectorwise_quant(B, implementation=implementation)
    return MatmulLtState(threshold=threshold, has_fp16_weights=False, CB=CB, SCB=SCB)


# ------------------------------------------------------------------------------ the core


def _dequant_weight(CB: jax.Array, SCB: jax.Array, dtype) -> jax.Array:
    """CB * SCB/127 in `dtype`, as bitsandbytes' `CB.to(dtype).mul_(SCB * (1/127))`."""
    return (CB.astype(jnp.float32) * (SCB * _INV127)[:, None]).astype(dtype)


def _outlier_product(A2, Bsub_fn, cols, capacity: int, dtype):
    """A2[:, cols] @ Bsub[:, cols]ᵀ for the boolean column mask `cols`, rounded once to `dtype`.

    Outlier columns are data-dependent; under jit they are gathered into a
    fixed number of slots (`capacity`). When more columns are outliers, a
    masked dense product gives the same exact sum, so the result is never
    silently truncated. The product is returned in `dtype` straight from the GEMM's
    float32 accumulator: a float32 [tokens, out] result would cost more memory
    traffic than the product itself.
    """
    k = A2.shape[1]
    count = jnp.sum(cols)

    def gathered():
        idx = jnp.nonzero(cols, size=capacity, fill_value=0)[0]
        valid = jnp.arange(capacity) < count
        a = jnp.where(valid[None, :], A2[:, idx], 0).astype(dtype)
        b = jnp.where(valid[None, :], Bsub_fn(idx), 0).astype(dtype)
        return matmul(a, b, (1, 1), dtype)

    def dense():
        a = jnp.where(cols[None, :], A2, 0).astype(dtype)
        b = jnp.where(cols[None, :], Bsub_fn(jnp.arange(k)), 0).astype(dtype)
        return matmul(a, b, (1, 1), dtype)

    if capacity >= k:
        return dense()
    return jax.lax.cond(count <= capacity, gathered, dense)


def _forward(A, B, bias, CB, SCB, cfg: _Config):
    impl = cfg.implementation
    dtype = A.dtype
    A2 = as_2d(A)
    CA, SCA, cols = F.int8_vectorwise_quant(A2, cfg.threshold, implementation=impl)
    if cfg.threshold > 0.0 and cfg.axis_names:
        # Outlier columns are found over all rows: a column is one if any shard's rows
        # hold an outlier in it. The row absmax leaves out outlier elements only (a
        # per-element rule), so a shard's codes are right once those columns are zeroed.
        cols = jax.lax.pmax(cols.astype(jnp.int32), cfg.axis_names) > 0
        CA = jnp.where(cols[None, :], jnp.int8(0), CA)
    if cfg.has_fp16_weights:
        CB, SCB, _ = F.int8_vectorwise_quant(B, implementation=impl)
    n = CB.shape[0]
    fuse_bias = bias is not None and bias.dtype == jnp.float16
    # The kernel rounds to float16 (bitsandbytes' result) and casts to A's dtype in one pass.
    out = F.int8_linear_matmul_dequant(
        CA, CB, SCA, SCB, bias if fuse_bias else None, dtype, implementation=impl
    )
    if bias is not None and not fuse_bias:
        out = (out.astype(jnp.float32) + bias.astype(jnp.float32)).astype(dtype)
    if cfg.threshold > 0.0:
        if cfg.has_fp16_weights:
            sub_b = lambda idx: B[:, idx]
        else:
            # bitsandbytes dequantizes the int8 weight's outlier columns as CB * SCB / 127,
            # rounded differently from `_dequant_weight`'s CB * (SCB * (1/127)).
            sub_b = lambda idx: (CB[:, idx].astype(jnp.float32) * SCB[:, None] / 127.0).astype(
                dtype
            )
        extra = _outlier_product(A2, sub_b, cols, cfg.outlier_capacity, dtype)
        out = (out.astype(jnp.float32) + extra.astype(jnp.float32)).astype(dtype)
    return out.reshape(*A.shape[:-1], n), cols, CB, SCB


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _switchback(A, B, bias, CB, SCB, cfg: _Config):
    out, cols, _, _ = _forward(A, B, bias, CB, SCB, cfg)
    return out, cols


def _switchback_fwd(A, B, bias, CB, SCB, cfg: _Config):
    out, cols, CBq, SCBq = _forward(A, B, bias, CB, SCB, cfg)
    # The int8 weight is half the bytes of a 16-bit one and is all gradA needs;
    # A itself is kept for the 16-bit weight gradient.
    return (out, cols), (A, CBq, SCBq, B, bias, CB, SCB)


def _switchback_bwd(cfg: _Config, res, cts):
    A, CBq, SCBq, B, bias, CB, SCB = res
    g, _ = cts
    dtype = A.dtype
    g2 = as_2d(g).astype(dtype)
    A2 = as_2d(A)
    # gradA goes through the dequantized int8 weight, in A's dtype. bitsandbytes also
    # int8-quantizes grad_output here and then never uses it; fp8mm skips that pass.
    gradA = matmul(g2, _dequant_weight(CBq, SCBq, dtype), (1, 0), dtype).reshape(A.shape)
    # The "switch back": the weight gradient is an ordinary 16-bit product.
    gradB = None
    if B is not None:
        gradB = matmul(g2, A2, (0, 0), dtype).astype(B.dtype)
    gradBias = bias_grad(as_2d(g), bias)
    return gradA, gradB, gradBias, dispatch.zero_cotangent(CB), dispatch.zero_cotangent(SCB)


_switchback.defvjp(_switchback_fwd, _switchback_bwd)
# Jitted with the config static: an eager call with threshold > 0 otherwise traces and
# compiles the outlier `lax.cond` (fresh closures) again on every call.
_switchback_jit = jax.jit(_switchback, static_argnums=(5,))


# ------------------------------------------------------------------------- the arguments


def _weight_args(A, B, state: MatmulLtState) -> tuple:
    """(B, CB, SCB, n): the trained weight B, or the state's int8 CB/SCB with B None."""
    k = A.shape[-1]
    if state.has_fp16_weights:
        if B is None:
            raise ValueError(
                "B is required unless state holds an int8 weight (has_fp16_weights=False)"
            )
        _checks.check_float("B", B)
        _checks.check_ndim("B", B, 2)
        check_inner(A, B, 1, "[out, in] (Linear layout)")
        return B, None, None, B.shape[0]
    CB, SCB = state.CB, state.SCB
    _checks.check_dtype("state.CB", CB, jnp.int8)
    _checks.check_dtype("state.SCB", SCB, jnp.float32)
    if CB.ndim != 2 or CB.shape[1] != k or SCB.shape != (CB.shape[0],):
        raise ValueError(
            f"state.CB {tuple(CB.shape)} / state.SCB {tuple(SCB.shape)} do not fit A "
            f"{tuple(A.shape)}: need CB [n, {k}] and SCB [n]"
        )
    if B is not None:
        _checks.check_array("B", B)
        if tuple(B.shape) != tuple(CB.shape):
            raise ValueError(f"B has shape {tuple(B.shape)} but state.CB is {tuple(CB.shape)}")
    # The int8 weight is not trained: no gradient flows to B.
    return None, CB, SCB, CB.shape[0]


def _outlier_capacity(outlier_capacity, k: int) -> int:
    if outlier_capacity is None:
        return max(1, min(k, max(32, k // 16)))
    _checks.check_static("outlier_capacity", outlier_capacity, "int")
    if isinstance(outlier_capacity, (bool, np.bool_)) or not isinstance(
        outlier_capacity, (int, np.integer)
    ):
        raise TypeError(f"outlier_capacity must be a positive int, got {outlier_capacity!r}")
    if outlier_capacity < 1:
        raise ValueError(f"outlier_capacity must be a positive int, got {outlier_capacity!r}")
    return int(outlier_capacity)


def _axis_names(axis_names) -> tuple[str, ...]:
    if axis_names is None:
        return ()
    names = (axis_names,) if isinstance(axis_names, str) else axis_names
    if not isinstance(names, (tuple, list)) or not all(isinstance(a, str) for a in names):
        raise TypeError(
            f"axis_names must be a mesh axis name or a tuple of them, got {axis_names!r}"
        )
    return tuple(names)


def _switchback_args(
    A, B, state, threshold, bias, outlier_capacity, return_outliers, implementation, axis_names
) -> tuple:
    """`switchback_bnb`'s arguments validated: (B, CB, SCB, cfg, return_outliers).

    B is None when the weight is the state's int8 one; CB/SCB are None when B
    is trained (they are computed from it in the forward pass).
    """
    state = MatmulLtState() if state is None else state
    if not isinstance(state, MatmulLtState):
        raise TypeError(f"state must be a MatmulLtState or None, got {type(state).__name__}")
    threshold = _checks.check_threshold(threshold)
    if threshold == 0.0:
        threshold = state.threshold
    return_outliers = _checks.check_bool("return_outliers", return_outliers)
    _checks.check_implementation(implementation)
    _checks.check_float("A", A)
    _checks.check_min_ndim("A", A, 1)
    k = A.shape[-1]
    _checks.check_int8_k(k, "switchback_bnb")
    B, CB, SCB, n = _weight_args(A, B, state)
    if bias is not None:
        _checks.check_float("bias", bias)
        if tuple(bias.shape) != (n,):
            raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
    cfg = _Config(
        threshold,
        state.has_fp16_weights,
        _outlier_capacity(outlier_capacity, k),
        static_implementation(implementation),
        _axis_names(axis_names),
    )
    return B, CB, SCB, cfg, return_outliers


def switchback_bnb(
    A: jax.Array,
    B: jax.Array | None,
    out: None = None,
    state: MatmulLtState | None = None,
    threshold: float = 0.0,
    bias: jax.Array | None = None,
    *,
    outlier_capacity: int | None = None,
    return_outliers: bool = False,
    implementation: Impl = None,
    axis_names: str | tuple[str, ...] | None = None,
):
    """SwitchBack int8 matmul (bitsandbytes `switchback_bnb`): A @ Bᵀ (+ bias).

    Forward: A (as float16) and B are int8-quantized row-wise, multiplied in
    int32 and dequantized (a float16 bias fused); with threshold > 0, columns
    of A holding an entry with |x| >= threshold are zeroed in the int8 product
    and multiplied in A's dtype instead. Backward: gradBias = Σ grad; gradB =
    gradᵀ @ A in A's dtype (the "switch back" to 16 bits); gradA = grad @
    (CB * SCB/127), the dequantized int8 weight.

    Args:
      A: float [..., k], k <= 131071 (the int32 accumulator bound, see
        `int8_linear_matmul`).
      B: float [n, k] (Linear layout); may be None when `state` holds an int8
        inference weight (has_fp16_weights=False).
      out: bitsandbytes' output buffer, accepted at its position so that
        bitsandbytes' positional calls run; must be None (JAX arrays are
        immutable: use the returned array).
      state: optional `MatmulLtState`; with has_fp16_weights=False its CB/SCB
        are used as they are (see `prepare_int8_weight`).
      threshold: static outlier threshold (a real number >= 0); when > 0 it
        overrides state.threshold.
      bias: optional float [n].
      outlier_capacity: outlier columns gathered into a fixed-size slot under
        jit (default min(k, max(32, k // 16))); more outliers fall back to an
        exact masked product.
      return_outliers: also return the bool [k] outlier column mask (for
        statistics, bitsandbytes' outlier pooler).
      implementation: None, "xla", "pallas", a kernel name or a sequence of
        these, for the int8 primitives (see `fp8mm.dispatch`).
      axis_names: inside `jax.shard_map`, the mesh axes A's rows are split over:
        the outlier columns are combined over them (a max across devices), so
        every shard decomposes the same columns as one device would. None outside.

    Returns:
      [..., n] in A's dtype, or (y, outlier_cols) with return_outliers.

    Raises:
      ValueError: out is not None.
    """
    _checks.check_out(out, before="state")
    B, CB, SCB, cfg, return_outliers = _switchback_args(
        A, B, state, threshold, bias, outlier_capacity, return_outliers, implementation, axis_names
    )
    out, cols = _switchback_jit(A, B, bias, CB, SCB, cfg)
    return (out, cols) if return_outliers else out
