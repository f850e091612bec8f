"""The SwitchBack paper's linear layer: int8 forward and input gradient, 16-bit weight gradient.

Wortsman et al. 2023 ("Stable and low-precision training for large-scale
vision-language models"); bitsandbytes' Triton `SwitchBackLinear` (<= 0.49).
X is flattened to [tokens, in]; W is [out, in] (or a Flax [in, out] kernel).

* global (the default): X row-wise int8, W one whole-tensor int8 scale;
  out = (X8·W8ᵀ)·absmax_row·absmax_W/127² + bias, one fused GEMM.
  Input gradient: G row-wise int8 times the same-scale int8 Wᵀ (written K-major).
* vectorwise: W row-wise (per output feature) for the forward; for the input
  gradient W column-wise (per input feature), quantized and transposed.
* mem_efficient (global only): saves X as int8 + row scales instead of X and
  dequantizes them for the weight gradient.

Inside `jax.shard_map` with the output features split (tensor parallelism,
`axis_names=`), every statistic that spans them is combined across the shards
with a `lax.pmax` (`mesh_absmax`), so each shard quantizes its part exactly as
the whole weight would be: the global weight absmax (forward), the per-input-
feature weight absmax of the vectorwise input gradient and the row absmax of the
output gradient (backward). Each shard's input gradient is then a partial sum
over its output features, which shard_map's transpose sums over the axis.

The weight gradient Gᵀ·X stays 16-bit in every variant: its inner dimension is
the token count, where int8 rounding noise would grow (the paper's "switch
back"). The quantization rule (`fp8mm.quantize_rowwise`) is fp8mm's own, exact
on every implementation; bitsandbytes' Triton kernels divide approximately in
float16 (docs/exactness.md).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from fp8mm import _checks, dispatch, reference
from fp8mm import functional_switchback as F
from fp8mm.dispatch import Impl
from fp8mm.ops._common import as_2d, bias_grad, matmul, mesh_absmax, static_implementation
from fp8mm.state import MatmulLtState

WEIGHT_LAYOUTS = ("linear", "dense")


@dataclasses.dataclass(frozen=True)
class _Config:
    vectorwise: bool
    mem_efficient: bool
    layout: str  # "linear": W [out, in]; "dense": a Flax kernel [in, out]
    implementation: Impl
    # Mesh axes (inside shard_map) W's output features are split over; () off a mesh.
    axis_names: tuple[str, ...] = ()

    def out_absmax(self, x, axis=None):
        """x's absmax over the (split) output features: None off a mesh (the primitive's)."""
        return mesh_absmax(x, self.axis_names, axis)


def _forward_weight(W, cfg: _Config):
    """(W8 int8 [out, in], scale float32 [out] or []) for the forward GEMM."""
    impl = cfg.implementation
    # Per output feature (vectorwise) is local to a shard; the global absmax is not.
    if cfg.vectorwise:
        if cfg.layout == "linear":
            return F.quantize_rowwise(W, implementation=impl)
        return F.quantize_columnwise_and_transpose(W, implementation=impl)
    return F.quantize_global(W, cfg.layout == "dense", cfg.out_absmax(W), implementation=impl)


def _dgrad_weight(W, w_scale, cfg: _Config):
    """(int8 [in, out] K-major for G·W, scale float32 [in] or []) for the input gradient.

    w_scale is the forward's weight scale: global, it is this product's too.
    """
    impl = cfg.implementation
    if cfg.vectorwise:
        # Per input feature: a reduction over the output features, split on a mesh.
        if cfg.layout == "linear":
            absmax = cfg.out_absmax(W, 0)
            return F.quantize_columnwise_and_transpose(W, absmax, implementation=impl)
        return F.quantize_rowwise(W, cfg.out_absmax(W, 1), implementation=impl)
    return F.quantize_global(W, cfg.layout == "linear", w_scale, implementation=impl)


def _int8_product(x2, w8, w_scale, bias, dtype, impl):
    """(x2 row-wise int8) · w8ᵀ with the fused scales: (out, x8, x_absmax)."""
    x8, sx = F.quantize_rowwise(x2, implementation=impl)
    out = F.int8_scaled_matmul(x8, w8, sx, w_scale, bias, dtype, implementation=impl)
    return out, x8, sx


def _forward(X, W, bias, cfg: _Config):
    x2 = as_2d(X)
    w8, sw = _forward_weight(W, cfg)
    out, x8, sx = _int8_product(x2, w8, sw, bias, X.dtype, cfg.implementation)
    return out.reshape(*X.shape[:-1], w8.shape[0]), x2, x8, sx, sw


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _linear(X, W, bias, cfg: _Config):
    return _forward(X, W, bias, cfg)[0]


def _linear_fwd(X, W, bias, cfg: _Config):
    out, x2, x8, sx, sw = _forward(X, W, bias, cfg)
    # W is a parameter (alive anyway): the input gradient re-quantizes it rather than
    # keeping a second int8 copy; a global scale is kept (one float). mem_efficient
    # keeps X as its int8 codes.
    saved = (x8, sx) if cfg.mem_efficient else x2
    return out, (saved, W, None if cfg.vectorwise else sw, bias)


def _linear_bwd(cfg: _Config, res, g):
    saved, W, w_scale, bias = res
    impl = cfg.implementation
    dtype = g.dtype  # the output's dtype, which is X's
    g2 = as_2d(g)
    # Input gradient in int8: G row-wise (its rows span the output features) times the
    # weight quantized for it.
    g8, sg = F.quantize_rowwise(g2, cfg.out_absmax(g2, 1), implementation=impl)
    wt8, swt = _dgrad_weight(W, w_scale, cfg)
    grad_x = F.int8_scaled_matmul(g8, wt8, sg, swt, None, dtype, implementation=impl)
    grad_x = grad_x.reshape(*g.shape[:-1], wt8.shape[0])
    # Weight gradient in 16 bit: its inner dimension is the token count.
    x2 = reference.dequantize_rowwise(*saved, dtype) if cfg.mem_efficient else saved
    if cfg.layout == "linear":
        grad_w = matmul(g2, x2, (0, 0), dtype)
    else:
        grad_w = matmul(x2, g2, (0, 0), dtype)
    return grad_x, grad_w.astype(W.dtype), bias_grad(g2, bias)


_linear.defvjp(_linear_fwd, _linear_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _linear_int8(X, CB, SCB, bias, cfg: _Config):
    return _linear_int8_fwd(X, CB, SCB, bias, cfg)[0]


def _linear_int8_fwd(X, CB, SCB, bias, cfg: _Config):
    out, _, _ = _int8_product(as_2d(X), CB, SCB, bias, X.dtype, cfg.implementation)
    return out.reshape(*X.shape[:-1], CB.shape[0]), (CB, SCB, bias)


def _linear_int8_bwd(cfg: _Config, res, g):
    CB, SCB, bias = res
    dtype = g.dtype
    g2 = as_2d(g)
    # A prepared weight is not trained; the input gradient (for adapters or inputs
    # upstream) goes through the dequantized weight CB * SCB/127 in 16 bit.
    w = reference.dequantize_rowwise(CB, SCB, dtype)
    grad_x = matmul(g2, w, (1, 0), dtype).reshape(*g.shape[:-1], CB.shape[1])
    return grad_x, dispatch.zero_cotangent(CB), dispatch.zero_cotangent(SCB), bias_grad(g2, bias)


_linear_int8.defvjp(_linear_int8_fwd, _linear_int8_bwd)

# Jitted with the config static, so an eager call compiles once per shape.
_linear_jit = jax.jit(_linear, static_argnums=(3,))
_linear_int8_jit = jax.jit(_linear_int8, static_argnums=(4,))


# ------------------------------------------------------------------------- the arguments


def _check_layout(weight_layout) -> str:
    if weight_layout not in WEIGHT_LAYOUTS:
        raise ValueError(f"weight_layout must be one of {WEIGHT_LAYOUTS}, got {weight_layout!r}")
    return weight_layout


def _check_flags(vector_wise_quantization, mem_efficient) -> tuple[bool, bool]:
    vectorwise = _checks.check_bool("vector_wise_quantization", vector_wise_quantization)
    mem_efficient = _checks.check_bool("mem_efficient", mem_efficient)
    if vectorwise and mem_efficient:
        raise ValueError(
            "mem_efficient=True is for global quantization only (as in bitsandbytes); "
            "got vector_wise_quantization=True"
        )
    return vectorwise, mem_efficient


def _check_state(X, state: MatmulLtState) -> tuple[jax.Array, jax.Array, int]:
    CB, SCB = state.CB, state.SCB
    if state.has_fp16_weights or CB is None:
        raise ValueError(
            "a MatmulLtState weight must hold int8 inference weights "
            "(has_fp16_weights=False, CB, SCB): build it with fp8mm.prepare_switchback_weight(W)"
        )
    _checks.check_dtype("W.CB", CB, jnp.int8)
    _checks.check_dtype("W.SCB", SCB, jnp.float32)
    if CB.ndim != 2 or CB.shape[1] != X.shape[-1] or SCB.shape != (CB.shape[0],):
        raise ValueError(
            f"W.CB {tuple(CB.shape)} / W.SCB {tuple(SCB.shape)} do not fit X "
            f"{tuple(X.shape)}: need CB [out, {X.shape[-1]}] and SCB [out]"
        )
    return CB, SCB, CB.shape[0]


def prepare_switchback_weight(
    W: jax.Array, *, vector_wise_quantization: bool = False, implementation: Impl = None
) -> MatmulLtState:
    """Pre-quantizes a weight for `switchback_linear` inference (bitsandbytes' `prepare_for_eval`).

    Args:
      W: float [out, in] (Linear layout).
      vector_wise_quantization: one scale per output feature (True) or one for
        the whole weight (False, the default).
      implementation: None, "xla", "pallas", a kernel name or a sequence of these.

    Returns:
      `MatmulLtState(has_fp16_weights=False, CB=int8 [out, in], SCB=float32 [out])`;
      a global scale is stored once per row (all equal), so both variants run the
      same fused product.

    Examples:
      >>> import jax.numpy as jnp, fp8mm
      >>> state = fp8mm.prepare_switchback_weight(jnp.ones((3, 4)))
      >>> state.CB.dtype, state.SCB.tolist()
      (dtype('int8'), [1.0, 1.0, 1.0])
    """
    _checks.check_float("W", W)
    _checks.check_ndim("W", W, 2)
    _checks.check_implementation(implementation)
    vectorwise = _checks.check_bool("vector_wise_quantization", vector_wise_quantization)
    if vectorwise:
        CB, SCB = F.quantize_rowwise(W, implementation=implementation)
    else:
        CB, absmax = F.quantize_global(W, implementation=implementation)
        SCB = jnp.broadcast_to(absmax, (W.shape[0],))
    return MatmulLtState(has_fp16_weights=False, CB=CB, SCB=SCB)


def switchback_linear(
    X: jax.Array,
    W: jax.Array | MatmulLtState,
    bias: jax.Array | None = None,
    *,
    vector_wise_quantization: bool = False,
    mem_efficient: bool = False,
    weight_layout: str = "linear",
    implementation: Impl = None,
    axis_names: str | tuple[str, ...] | None = None,
) -> jax.Array:
    """The SwitchBack paper's linear layer: X @ Wᵀ + bias with int8 forward and input gradient.

    Forward: X row-wise and W globally (or, vectorwise, per output feature)
    int8-quantized, one int8 GEMM with the dequant and bias fused. Backward: the
    input gradient is an int8 GEMM of the row-wise quantized output gradient and
    the weight quantized for it (the same global scale, or per input feature
    when vectorwise); the weight gradient Gᵀ·X is 16-bit; the bias gradient is
    Σ G in float32. Every cotangent has its primal's dtype. An all-zero row of X
    (or of the gradient) gives zeros, NaN propagates to the rows it touches.

    Args:
      X: float [..., in] (float32, float16 or bfloat16); the output has its dtype.
      W: float [out, in] (torch Linear layout; [in, out] with weight_layout="dense"),
        or the `MatmulLtState` of `prepare_switchback_weight` for inference (not
        trained; the input gradient then goes through the dequantized weight).
      bias: optional float [out].
      vector_wise_quantization: per-feature weight scales instead of one global scale.
      mem_efficient: keep X as int8 codes + row scales for the weight gradient
        (global only), a quarter of a float32 X's bytes and half of a 16-bit one.
      weight_layout: "linear" (W [out, in]) or "dense" (a Flax kernel [in, out],
        used as it is: no transpose is materialized).
      implementation: None, "xla", "pallas", a kernel name or a sequence of these,
        for the quantizations and the int8 GEMMs (see `fp8mm.dispatch`).
      axis_names: inside `jax.shard_map`, the mesh axes W's output features are
        split over (tensor parallelism; `fp8mm.nn.sharding.partition` passes its
        model axis): the global weight absmax, the vectorwise input gradient's
        per-input-feature weight absmax and the output gradient's row absmax are
        each the `lax.pmax` of the shards', so every shard quantizes exactly as the
        whole layer would. Axes that split only X's rows need no statistic (rows
        are quantized per row). Unused for int8 inference weights (fixed per-row
        scales). None off a mesh.

    Returns:
      [..., out] in X's dtype.

    Examples:
      >>> import jax, jax.numpy as jnp, fp8mm
      >>> x = jnp.ones((2, 8), jnp.bfloat16); w = jnp.full((4, 8), 0.5, jnp.bfloat16)
      >>> fp8mm.switchback_linear(x, w).tolist()
      [[4.0, 4.0, 4.0, 4.0], [4.0, 4.0, 4.0, 4.0]]
      >>> jax.grad(lambda w: fp8mm.switchback_linear(x, w).astype(float).sum())(w).shape
      (4, 8)
    """
    vectorwise, mem_efficient = _check_flags(vector_wise_quantization, mem_efficient)
    layout = _check_layout(weight_layout)
    _checks.check_implementation(implementation)
    _checks.check_float("X", X)
    _checks.check_min_ndim("X", X, 1)
    k = X.shape[-1]
    _checks.check_int8_k(k, "switchback_linear")
    axes = _checks.check_axis_names(axis_names)
    cfg = _Config(vectorwise, mem_efficient, layout, static_implementation(implementation), axes)
    if isinstance(W, MatmulLtState):
        CB, SCB, n = _check_state(X, W)
    else:
        _checks.check_float("W", W)
        _checks.check_ndim("W", W, 2)
        n, w_in = (W.shape[1], W.shape[0]) if layout == "dense" else W.shape
        if w_in != k:
            want = "[in, out]" if layout == "dense" else "[out, in]"
            raise ValueError(
                f"inner dimensions differ: X is {tuple(X.shape)} and W is {tuple(W.shape)}; "
                f"W must be {want} (weight_layout={layout!r}) with in == X.shape[-1]"
            )
        # The input gradient contracts over the output features.
        _checks.check_int8_k(n, "switchback_linear (the input gradient's out_features)")
    if bias is not None:
        _checks.check_float("bias", bias)
        if tuple(bias.shape) != (n,):
            raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
    if isinstance(W, MatmulLtState):
        return _linear_int8_jit(X, CB, SCB, bias, cfg)
    return _linear_jit(X, W, bias, cfg)
