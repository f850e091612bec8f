"""FSDP with an 8-bit weight all-gather: custom VJPs that gather the weight's codes.

Under `fp8mm.nn.sharding.partition(..., fsdp_axis=, gather_8bit=True)` each
device holds its kernel shard [in / fsdp, out / model]. Where the op quantizes
the whole weight anyway, the 16-bit all-gather of the weight is replaced by one
of its 8-bit codes: each device quantizes its own shard with the statistic the
whole weight would have (the `lax.pmax` of the shards' absmax; for row-wise
int8, of each row's), all-gathers the 1-byte codes over the fsdp axis (the scale
is already the same everywhere), and multiplies with them exactly as the op
multiplies the whole weight's codes. The backward reads the gathered codes
(kept as the residual: one byte per weight element) and reduce-scatters the
weight gradient, in the op's 16-bit arithmetic, back to the shard
(`lax.psum_scatter`).

| kind                          | gathered codes                   | statistic combined     |
|-------------------------------|----------------------------------|------------------------|
| fp8_mixed, fp8_global         | uint8 (emulated), float8_e4m3fn  | B's absmax: pmax over  |
|                               | (gemm="native")                  | the split axes         |
| switchback (threshold 0)      | int8 rows [out, in]              | row absmax: pmax over  |
|                               |                                  | the fsdp axis          |
| switchback_global(_mem_eff.)  | int8 [out, in], one scale        | absmax: pmax over the  |
|                               |                                  | split axes             |

Everything but the weight is the op's own code path (`fp8mm.ops._fp8`,
`_fp8_native`, `_switchback`, `_switchback_linear`): the same quantizers of A
and of the output gradient, the same GEMMs, the same backward.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from fp8mm import dispatch, reference
from fp8mm import functional as F
from fp8mm import functional_fp8 as F8
from fp8mm import functional_switchback as FS
from fp8mm.dispatch import Impl
from fp8mm.nn._core import KIND_TABLE, QuantSpec
from fp8mm.ops import _fp8, _fp8_native, _switchback
from fp8mm.ops._common import as_2d, bias_grad, matmul, mesh_absmax, static_implementation
from fp8mm.ops._switchback_linear import _int8_product
from fp8mm.state import Fp8Tensor

__all__ = [
    "GATHER_8BIT_KINDS",
    "Gather",
    "gather_problem",
    "gathered_dense",
    "gathered_product",
    "gathered_split_problem",
]

_PAPER_GLOBAL = ("switchback_global", "switchback_global_mem_efficient")
GATHER_8BIT_KINDS = ("fp8_mixed", "fp8_global", "switchback", *_PAPER_GLOBAL)


def gather_problem(spec: QuantSpec) -> str | None:
    """Why `gather_8bit=True` cannot serve `spec`, or None when it can."""
    if spec.kind == "switchback_vectorwise":
        return (
            "switchback_vectorwise quantizes the weight per output feature and per input "
            "feature: two sets of 8-bit codes weigh what one 16-bit gather does"
        )
    if spec.kind == "switchback" and spec.threshold > 0:
        return "switchback's outlier columns are multiplied with the 16-bit weight"
    return None


def gathered_split_problem(spec: QuantSpec, part, x, kernel) -> str | None:
    """The kind's `split_problem` for the gathered product: the SwitchBack paper's global
    kinds combine every statistic spanning a split themselves here (W's absmax over the
    mesh, the output gradient's rows over the model axis); the others run the op's own
    quantizers of A and of the gradient (blocks spanning shards combined as in the op),
    and have the op's limits."""
    if spec.kind in _PAPER_GLOBAL:
        return None
    return KIND_TABLE[spec.kind].split_problem(spec, part, x, kernel)


@dataclasses.dataclass(frozen=True)
class Gather:
    """Static settings of one gathered product (a nondiff argument of the custom VJPs).

    Attributes:
      fsdp: the mesh axis the kernel's input features are split over.
      stat_axes: the mesh axes a whole-weight absmax combines over (the split axes).
      model: the model axis when it splits the output features, else None.
      w_dtype: the kernel's dtype, its gradient's.
    """

    fsdp: str
    stat_axes: tuple[str, ...]
    model: str | None
    w_dtype: Any


def _with_features(cfg, gather: Gather):
    """cfg with the model axis as the output features' split: the mixed recipe's gradient
    blocks spanning it combine across the shards (`feature_axes`)."""
    if gather.model is None:
        return cfg
    return dataclasses.replace(cfg, feature_axes=(gather.model,))


def _gather(x: jax.Array, gather: Gather, axis: int) -> jax.Array:
    return jax.lax.all_gather(x, gather.fsdp, axis=axis, tiled=True)


def _scatter(grad: jax.Array, gather: Gather, axis: int) -> jax.Array:
    """The full weight's gradient [in, out / model] summed over the fsdp devices (each
    holds its batch shard's), each keeping its rows: the transpose of the gather."""
    return jax.lax.psum_scatter(grad, gather.fsdp, scatter_dimension=axis, tiled=True)


# ------------------------------------------------------------------------ fp8, emulated


def _global_codes(B, code, absmax, implementation: Impl) -> jax.Array:
    # The primitive behind `fp8mm.quantize`, called with the whole weight's absmax (its
    # public function takes none): the same uint8 codes the weight's own quantization gives.
    q, _ = dispatch.REGISTRY["quantize"](B, code, absmax, implementation=implementation)
    return q


def _dequant(q, absmax, code, dtype, implementation: Impl) -> jax.Array:
    """code[q] * absmax in float32, rounded to dtype: `fake_quant_global`'s values."""
    return F.dequantize(q, absmax=absmax, code=code, implementation=implementation).astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _fp8_gathered(A, B, fw_code, bw_code, recipe: _fp8.Recipe, cfg: _fp8._Config, gather: Gather):
    return _fp8_gathered_fwd(A, B, fw_code, bw_code, recipe, cfg, gather)[0]


def _fp8_gathered_fwd(A, B, fw_code, bw_code, recipe, cfg, gather):
    """`_fp8._fp8_fwd` with b(B) built from the gathered codes of B's shards."""
    impl = cfg.implementation
    fw, _ = cfg.codes(fw_code, bw_code)
    # A's blocks that straddle the batch shards take their absmax across them, as in the op.
    fp8A = recipe.a(A, fw, cfg.bsz, impl, cfg.axis_names, (), cfg.batch_axes)
    absmax = mesh_absmax(B, gather.stat_axes)
    q = _gather(_global_codes(B, fw, absmax, impl), gather, 0)
    fp8B = _dequant(q, absmax, fw, B.dtype, impl)
    out = matmul(as_2d(fp8A), fp8B.astype(A.dtype), (1, 0), A.dtype)
    out = out.reshape(*A.shape[:-1], q.shape[1])
    A_res = fp8A if recipe.quantized_grad_b else A
    # The codes, not the dequantized weight: one byte per element until the backward.
    return out, (A_res, q, absmax, fw_code, bw_code)


def _fp8_gathered_bwd(recipe, cfg, gather, res, g):
    """The op's backward (`_fp8._fp8_bwd`: gradA from the 8-bit output gradient and b(B);
    gradB 16-bit for the mixed recipe, from the quantized operands for the global one)
    on the gathered weight, then gradB reduce-scattered to the shard."""
    A_res, q, absmax, fw_code, bw_code = res
    fw, _ = cfg.codes(fw_code, bw_code)
    fp8B = _dequant(q, absmax, fw, gather.w_dtype, cfg.implementation)
    gradA, gradB, dfw, dbw = _fp8._fp8_bwd(recipe, cfg, (A_res, fp8B, fw_code, bw_code), g)
    return gradA, _scatter(gradB, gather, 0), dfw, dbw


_fp8_gathered.defvjp(_fp8_gathered_fwd, _fp8_gathered_bwd)


# -------------------------------------------------------------------------- fp8, native


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _native_gathered(A, B, cfg: _fp8_native.NativeConfig, gather: Gather):
    return _native_gathered_fwd(A, B, cfg, gather)[0]


def _native_gathered_fwd(A, B, cfg, gather):
    """`_fp8_native._fwd` with B's float8 bytes gathered from its shards' (e4m3, the
    scale absmax/240 with the mesh-wide absmax: the same bytes on every device)."""
    A2 = as_2d(A)
    fw = _fp8_native._CODES[cfg.fw]()
    a8, a_rows, qa = cfg.quantize_a(A2, fw)
    shard = cfg.quantize_global(B, fw)  # its absmax is the pmax over cfg.axis_names
    # Gathered as their uint8 bits: backends without float8 collectives (XLA's CPU) would
    # widen float8 to float16 for the transfer.
    bits = _gather(jax.lax.bitcast_convert_type(shard.data, jnp.uint8), gather, 0)
    qb = Fp8Tensor(jax.lax.bitcast_convert_type(bits, shard.data.dtype), shard.scale, None)
    out = _fp8_native._gemm(a8, qb.data.T, a_rows, qb.scale, A.dtype, cfg)
    out = out.reshape(*A.shape[:-1], B.shape[1])
    return out, (A if cfg.blockwise else qa, qb)


def _native_gathered_bwd(cfg, gather, res, g):
    """The native backward (`_fp8_native._bwd`: gradA on FP8 from the quantized output
    gradient; gradB 16-bit (mixed) or on FP8 (global)), gradB reduce-scattered."""
    gradA, gradB = _fp8_native._bwd(cfg, res, g)
    return gradA, _scatter(gradB, gather, 0)


_native_gathered.defvjp(_native_gathered_fwd, _native_gathered_bwd)


def _fp8_product(spec: QuantSpec, gather: Gather, sizes: tuple[int, int], x, kernel, bias):
    """`_core._fp8_product` / the public fp8 op's dispatch, with the gathered weight."""
    recipe = _fp8.MIXED if spec.kind == "fp8_mixed" else _fp8.GLOBAL
    fsdp_size, model_size = sizes
    fw, bw = spec.codes()
    full = (kernel.shape[0] * fsdp_size, kernel.shape[1])  # the gathered weight's shape
    # `partition` passes the whole operands' block sizes; -1 is the whole weight's too.
    auto = _fp8.get_block_sizes(x.shape, (full[0], full[1] * model_size))
    bsz = auto[0] if spec.bsz == -1 else spec.bsz
    bsz2 = auto[1] if spec.bsz2 == -1 else spec.bsz2
    y = None
    if spec.gemm == "native":
        ncfg = _fp8_native.NativeConfig(
            blockwise=recipe is _fp8.MIXED,
            fw=F8.format_of(fw, "fw_code").name,
            bw=F8.format_of(bw, "bw_code").name,
            bsz=bsz,
            bsz2=bsz2,
            implementation=static_implementation(spec.implementation),
            b_dtype=jnp.dtype(kernel.dtype),
            axis_names=gather.stat_axes,
        )
        ncfg = _with_features(ncfg, gather)
        if _fp8_native.native_reason(x.shape, full, ncfg) is None:
            y = _native_gathered(x, kernel, ncfg, gather)
    if y is None:
        cfg = _fp8._Config.make(bsz, bsz2, spec.implementation, fw, bw, gather.stat_axes)
        cfg = _with_features(cfg, gather)
        y = _fp8_gathered(x, kernel, jnp.asarray(fw), jnp.asarray(bw), recipe, cfg, gather)
    if bias is not None:
        y = y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
    return y


# ---------------------------------------------------------------- switchback (bitsandbytes)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _switchback_gathered(A, W, bias, implementation: Impl, gather: Gather):
    return _switchback_gathered_fwd(A, W, bias, implementation, gather)[0]


def _switchback_gathered_fwd(A, W, bias, implementation, gather):
    """switchback_bnb's forward on the int8 rows gathered from the shards of W [in, out].

    The rule of `int8_vectorwise_quant(W.T)` (float16 values, code = round(x * 127 /
    row absmax)) with each output feature's absmax the pmax of its shards'."""
    w16 = reference.f16_or_wide(W.T)  # [out, in / fsdp], float16 values as float32
    scb = mesh_absmax(w16, (gather.fsdp,), axis=1)
    # On float16 values the paper's row rule is bitsandbytes' (no further cast).
    cb = _gather(FS.quantize_rowwise(w16, scb, implementation=implementation)[0], gather, 1)
    # The op's forward with these as a prepared weight: without outliers that is the
    # trained weight's forward, code for code.
    cfg = _switchback._Config(0.0, False, 1, implementation)
    out, _, _, _ = _switchback._forward(A, None, bias, cb, scb, cfg)
    return out, (A, cb, scb, bias)


def _switchback_gathered_bwd(implementation, gather, res, g):
    """As `_switchback._switchback_bwd`: gradA through the dequantized int8 weight, the
    weight gradient the 16-bit gᵀ·A ("switch back"), reduce-scattered to the shard."""
    A, cb, scb, bias = res
    dtype = A.dtype
    g2 = as_2d(g).astype(dtype)
    gradA = matmul(g2, _switchback._dequant_weight(cb, scb, dtype), (1, 0), dtype)
    gradW = matmul(g2, as_2d(A), (0, 0), dtype).astype(gather.w_dtype).T  # [in, out]
    return gradA.reshape(A.shape), _scatter(gradW, gather, 0), bias_grad(as_2d(g), bias)


_switchback_gathered.defvjp(_switchback_gathered_fwd, _switchback_gathered_bwd)


# ------------------------------------------------------------ the SwitchBack paper, global


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _paper_gathered(X, W, bias, mem_efficient: bool, implementation: Impl, gather: Gather):
    return _paper_gathered_fwd(X, W, bias, mem_efficient, implementation, gather)[0]


def _paper_gathered_fwd(X, W, bias, mem_efficient, implementation, gather):
    """switchback_linear's global forward (weight_layout="dense") on the gathered codes of
    Wᵀ, quantized per shard with the whole weight's absmax."""
    absmax = mesh_absmax(W, gather.stat_axes)
    w8 = _gather(FS.quantize_global(W, True, absmax, implementation=implementation)[0], gather, 1)
    x2 = as_2d(X)
    out, x8, sx = _int8_product(x2, w8, absmax, bias, X.dtype, implementation)
    saved = (x8, sx) if mem_efficient else x2
    return out.reshape(*X.shape[:-1], w8.shape[0]), (saved, w8, absmax, bias)


def _rowwise(g2: jax.Array, gather: Gather, implementation: Impl):
    """`quantize_rowwise(g2)` of the whole output gradient: the row absmax spans the
    output features, so with a model split it is the pmax of the shards'."""
    absmax = None if gather.model is None else mesh_absmax(g2, (gather.model,), axis=-1)
    return FS.quantize_rowwise(g2, absmax, implementation=implementation)


def _paper_gathered_bwd(mem_efficient, implementation, gather, res, g):
    """As `_switchback_linear._linear_bwd` (global, dense layout): the input gradient an
    int8 GEMM of the row-wise output gradient and the weight's codes (the forward's, one
    scale, transposed); the weight gradient 16-bit (the token-long inner dimension),
    reduce-scattered to the shard."""
    saved, w8, absmax, bias = res
    dtype = g.dtype
    g2 = as_2d(g)
    g8, sg = _rowwise(g2, gather, implementation)
    grad_x = FS.int8_scaled_matmul(
        g8, w8.T, sg, absmax, None, dtype, implementation=implementation
    ).reshape(*g.shape[:-1], w8.shape[1])
    x2 = reference.dequantize_rowwise(*saved, dtype) if mem_efficient else saved
    grad_w = matmul(x2, g2, (0, 0), dtype).astype(gather.w_dtype)
    return grad_x, _scatter(grad_w, gather, 0), bias_grad(g2, bias)


_paper_gathered.defvjp(_paper_gathered_fwd, _paper_gathered_bwd)


# ------------------------------------------------------------------------------ the entry


def gathered_dense(spec: QuantSpec, part, x: jax.Array, kernel: jax.Array, bias):
    """`x @ kernel + bias` inside `partition`'s shard_map, the weight gathered in 8 bit.

    Args:
      spec: the layer's options; its kind must have no `gather_problem`.
      part: the active `fp8mm.nn.sharding.Partition` (fsdp and gather_8bit set).
      x: float [batch / batch_axis, ..., in], this device's rows.
      kernel: float [in / fsdp, out / model], this device's shard (x's dtype).
      bias: float [out / model] or None.

    Returns:
      (y [batch / batch_axis, ..., out / model] in x's dtype, None).
    """
    model = part.model_axis if part.size(part.model_axis) > 1 else None
    gather = Gather(part.fsdp, part.split_axes(), model, jnp.dtype(kernel.dtype))
    return gathered_product(spec, gather, x, kernel, bias), None


def gathered_product(spec: QuantSpec, gather: Gather, x: jax.Array, kernel: jax.Array, bias):
    """`gathered_dense` for a given `Gather` (inside a shard_map over its axes): y only."""
    impl = static_implementation(spec.implementation)
    if spec.kind in ("fp8_mixed", "fp8_global"):
        sizes = tuple(1 if a is None else jax.lax.axis_size(a) for a in (gather.fsdp, gather.model))
        return _fp8_product(spec, gather, sizes, x, kernel, bias)
    if spec.kind == "switchback":
        return _switchback_gathered(x, kernel, bias, impl, gather)
    if spec.kind in _PAPER_GLOBAL:
        mem_efficient = spec.kind == "switchback_global_mem_efficient"
        return _paper_gathered(x, kernel, bias, mem_efficient, impl, gather)
    raise NotImplementedError(gather_problem(spec))  # refused before the shard_map
