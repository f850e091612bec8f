"""bitsandbytes' fp8 recipes on FP8 tensor cores: the custom VJP of gemm="native".

The quantization is the emulated path's, code for code (`fp8mm.quantize_fp8`:
the same absmax, nearest-code rule and uint8 codes, held as float8 bytes with
float32 scales). Every operand is held as float8_e4m3fn: the e4m3 code with
scale absmax/240, the e5m2 code of the output gradient with scale absmax/224
(its grid is e4m3's above 3.1e-5 of absmax; below, the nearest e4m3 value), so
that all three GEMMs are e4m3 x e4m3, the one float8 pair Hopper's wgmma kernel
(`fp8mm.pallas.fp8_matmul_wgmma`) takes. The products run on those bytes
(`fp8mm.fp8_scaled_matmul`) with the scales applied in float32 after
accumulation, where the emulated path dequantizes to 16 bits first and runs a
16-bit GEMM:

* forward: out = A8 · B8, A's scales per row (per row and K chunk when
  bsz < k), B's global;
* dgrad: gradA = g8 · B8ᵀ, g's scales per row (and chunk);
* wgrad: mixed, gradB = Aᵀ · g in 16 bits as bitsandbytes; global, gradB =
  A8ᵀ · g8, both scales global.

Residuals are the float8 bytes and scales (one byte per element), plus A
itself for the mixed recipe's 16-bit weight gradient.

Shapes whose blocks straddle rows (k not a multiple of bsz nor a divisor of
it, likewise n and bsz2 for the output gradient), and zero-size operands, have
no per-row scales; they run the emulated path, whose codes are the same.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fp8mm import functional_fp8 as F8
from fp8mm import reference_fp8
from fp8mm.codebooks import e4m3_code, e5m2_code
from fp8mm.dispatch import Impl
from fp8mm.ops._common import (
    as_2d,
    blockwise_codes,
    matmul,
    mesh_absmax,
    row_axes,
    split_block_absmax,
)
from fp8mm.state import Fp8Tensor

_CODES = {"e4m3": e4m3_code, "e5m2": e5m2_code}
# The one float8 format of every operand (see the module docstring).
E4M3 = jnp.float8_e4m3fn


@dataclasses.dataclass(frozen=True)
class NativeConfig:
    """Static settings of one native call.

    Attributes:
      blockwise: True for the mixed recipe (blockwise A and g, 16-bit gradB),
        False for the global one (global A and g, fp8 gradB).
      fw: the forward code's format ("e4m3" in bitsandbytes' layers), for A and B.
      bw: the backward code's format ("e5m2"), for the output gradient.
      bsz: A's block size (mixed); bsz2: g's block size (mixed).
      implementation: for the quantization and the GEMMs (see `fp8mm.dispatch`).
      b_dtype: B's dtype, gradB's (the residuals hold B only as float8).
      axis_names: mesh axes (inside `shard_map`) the operands are split over: every
        global absmax (A's and g's in the global recipe, B's in both) is the
        `lax.pmax` of the shards', so each shard quantizes as the whole tensor
        would. () off a mesh.
      feature_axes: those of axis_names that split B's columns (the output
        features); the others split A's rows. Blocks of A or of the output gradient
        spanning shards take their absmax across them (`split_block_absmax`).
    """

    blockwise: bool
    fw: str
    bw: str
    bsz: int
    bsz2: int
    implementation: Impl
    b_dtype: Any
    axis_names: tuple[str, ...] = ()
    feature_axes: tuple[str, ...] = ()

    def quantize(self, x: jax.Array, code, blocksize: int) -> Fp8Tensor:
        """x as e4m3 bytes: blockwise (mixed recipe) or global, absmax across the mesh."""
        if self.blockwise:
            return F8.quantize_fp8(
                x, code, blocksize, dtype=E4M3, implementation=self.implementation
            )
        return self.quantize_global(x, code)

    @property
    def batch_axes(self) -> tuple[str, ...]:
        """The mesh axes that split A's rows (and the output gradient's)."""
        return row_axes(self.axis_names, self.feature_axes)

    def quantize_blocks(self, x2: jax.Array, code, blocksize: int, column_axes=()) -> tuple:
        """Blockwise x2 [rows, n] (A, or the output gradient with column_axes the
        feature axes) as e4m3 bytes: (data, row scales [rows, C] for
        `fp8_scaled_matmul`). Blocks spanning shards are quantized in pieces with their
        blocks' absmax (`split_block_absmax`)."""
        piece, absmax = split_block_absmax(x2, blocksize, column_axes, self.batch_axes)
        if absmax is None:
            q = self.quantize(x2, code, blocksize)
            return q.data, F8.fp8_row_scales(q)
        # quantize_fp8's codes (blockwise codes, then their float8 bits) with the given
        # absmax; the pieces divide the row, so each row holds n / piece scale chunks.
        fmt = F8.format_of(code, "code", E4M3)
        q = blockwise_codes(x2, code, piece, absmax, self.implementation)
        scale = absmax / np.float32(fmt.scale)
        rows, n = x2.shape
        return reference_fp8.to_fp8(q, fmt.table, E4M3), scale.reshape(rows, n // piece)

    def quantize_a(self, A2: jax.Array, code) -> tuple[jax.Array, jax.Array, Fp8Tensor | None]:
        """A2 [rows, k] as e4m3 bytes: (data, row scales, the global recipe's Fp8Tensor
        for its backward or None). The mixed recipe's blocks spanning the batch shards
        take their absmax across them (`quantize_blocks`)."""
        if self.blockwise:
            return (*self.quantize_blocks(A2, code, self.bsz), None)
        qa = self.quantize(A2, code, self.bsz)
        return qa.data, F8.fp8_row_scales(qa), qa

    def quantize_global(self, x: jax.Array, code) -> Fp8Tensor:
        return F8.quantize_fp8(
            x,
            code,
            None,
            dtype=E4M3,
            absmax=mesh_absmax(x, self.axis_names),
            implementation=self.implementation,
        )


def native_reason(A_shape, B_shape, cfg: NativeConfig) -> str | None:
    """None when the native path serves these shapes, else why the emulated path runs."""
    m = 1
    for s in A_shape[:-1]:
        m *= s
    k, n = B_shape
    for name in cfg.feature_axes:  # inside shard_map: the whole output's feature count
        n *= jax.lax.axis_size(name)
    if 0 in (m, k, n):
        return "an operand is empty"
    if cfg.blockwise:
        return F8.row_scale_reason(k, cfg.bsz) or F8.row_scale_reason(n, cfg.bsz2)
    return None


def _gemm(a8, b8, a_scale, b_scale, out_dtype, cfg: NativeConfig):
    return F8.fp8_scaled_matmul(
        a8, b8, a_scale, b_scale, out_dtype, implementation=_gemm_impl(cfg.implementation)
    )


def _gemm_impl(implementation: Impl) -> Impl:
    """The GEMM's implementation: the FP8 GEMM has no interpretable kernel, so "pallas"
    off a GPU (interpret mode, as everywhere else in the library) multiplies with XLA."""
    if isinstance(implementation, str) and implementation == "pallas":
        return ("pallas", "xla")
    return implementation


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def native_fp8(A: jax.Array, B: jax.Array, cfg: NativeConfig) -> jax.Array:
    """A [..., k] @ B [k, n] in A's dtype, bitsandbytes' recipe on FP8 tensor cores."""
    return _fwd(A, B, cfg)[0]


def _fwd(A, B, cfg: NativeConfig):
    A2 = as_2d(A)
    fw = _CODES[cfg.fw]()
    qb = cfg.quantize_global(B, fw)
    a8, a_rows, qa = cfg.quantize_a(A2, fw)
    out = _gemm(a8, qb.data.T, a_rows, qb.scale, A.dtype, cfg)
    out = out.reshape(*A.shape[:-1], B.shape[1])
    # The mixed recipe's gradB reads A in 16 bits; the global one reads Q(A) = Q(Aᵀ)ᵀ.
    return out, (A if cfg.blockwise else qa, qb)


def _bwd(cfg: NativeConfig, res, g):
    """gradA = Q_bw(g) · Q(B)ᵀ on FP8 (the 8-bit activation gradient bitsandbytes' recipes
    are about); gradB = Aᵀ · g in 16 bits (mixed: the token-long sum where quantization noise
    accumulates most) or Q(A)ᵀ · Q_bw(g) on FP8 (global: everything quantized)."""
    a_res, qb = res
    g2 = as_2d(g)
    bw = _CODES[cfg.bw]()
    if cfg.blockwise:
        # g's columns are the output features: split with B's over feature_axes.
        g8, g_rows = cfg.quantize_blocks(g2, bw, cfg.bsz2, cfg.feature_axes)
        gradA = _gemm(g8, qb.data, g_rows, qb.scale, g.dtype, cfg)
        gradB = matmul(as_2d(a_res).astype(g.dtype), g2, (0, 0), g.dtype)
    else:
        qg = cfg.quantize(g2, bw, cfg.bsz2)
        gradA = _gemm(qg.data, qb.data, F8.fp8_row_scales(qg), qb.scale, g.dtype, cfg)
        k = a_res.data.shape[1]
        a_scale = jnp.broadcast_to(a_res.scale, (k, 1))
        gradB = _gemm(a_res.data.T, qg.data.T, a_scale, qg.scale, g.dtype, cfg)
    # out (hence g) has A's dtype; gradB is rounded to g's dtype first, then to B's, as
    # the emulated path (torch's .to()).
    a_shape = (*g.shape[:-1], qb.data.shape[0])
    return gradA.reshape(a_shape), gradB.astype(cfg.b_dtype)


native_fp8.defvjp(_fwd, _bwd)
