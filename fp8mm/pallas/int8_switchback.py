"""Pallas GPU kernels (Triton) for the SwitchBack paper's int8 quantizations.

`quantize_rowwise`, `quantize_global` and `quantize_columnwise_and_transpose`
take the arguments of their namesakes in `fp8mm.reference` (plus `config` and
`interpret`) and return what the reference returns, bit for bit: int8 codes
round-half-even(x * (127 * (1/absmax))) of the input's own values (no float16
cast) and float32 absmax.

Kernels:

* rows: the single-pass row kernel of `fp8mm.pallas.int8_quant` with
  `native=True` (whole rows of up to 16384 elements a program; longer rows are
  not served: the XLA reference runs them).
* `_scaled_quant_kernel`: codes of a [r, c] weight with one absmax per column
  (a whole-tensor absmax comes broadcast), written as they are or transposed
  into the K-major [c, r] layout that the int8 GEMM of the input gradient needs.
  Column-wise codes of columns that fit the row kernel are the row kernel's on
  Wᵀ instead (an XLA transpose first).
  The absmax is an XLA reduction before it (exact on every backend); the
  kernel takes the correctly rounded reciprocal (`rcp.rn.f32`), since Triton's
  own division is approximate.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

from fp8mm import reference
from fp8mm.pallas import _backend
from fp8mm.pallas._backend import pallas_call, too_large
from fp8mm.pallas._int8_math import (
    Tile,
    absmax_bits,
    and_masks,
    elementwise_tile,
    elementwise_tile_space,
    masked_load,
    range_mask,
    to_int8_rn,
)
from fp8mm.pallas.int8_quant import (
    choose_quant_t_config,
    choose_row_quant_config,
    quant_t_search_space,
    row_quant_2d,
    row_quant_search_space,
)

__all__ = [
    "Tile",
    "choose_row_quant_config",
    "choose_scaled_quant_config",
    "quantize_columnwise_and_transpose",
    "quantize_global",
    "quantize_rowwise",
    "row_quant_search_space",
    "scaled_quant_search_space",
    "supported_quantize_columnwise_and_transpose",
    "supported_quantize_global",
    "supported_quantize_rowwise",
]

_F32 = jnp.float32


# ----------------------------------------------------------------------------
# Configs: the row kernel's are int8_quant's (`choose_row_quant_config`)
# ----------------------------------------------------------------------------


def choose_scaled_quant_config(r: int, c: int, transpose: bool) -> Tile:
    """Codes of W [r, c]: one [block_rows, block_cols] tile of W a program.

    Transposed, the square tiles of `int8_quant.choose_quant_t_config` (both the
    read of W and the transposed write are long contiguous runs); as they are,
    the elementwise tile of at most 8192 elements, 256 wide.
    """
    if transpose:
        return choose_quant_t_config(r, c)
    return elementwise_tile(r, c, 256)


def scaled_quant_search_space(r: int, c: int, transpose: bool) -> tuple[Tile, ...]:
    """`int8_quant.quant_t_search_space` transposed; elementwise tiles 64 to 512 wide otherwise."""
    if transpose:
        return quant_t_search_space(r, c)
    return elementwise_tile_space(r, c, (64, 128, 256, 512))


def _given(config: Tile | None, choice: Tile) -> Tile:
    if config is None:
        return choice
    if not isinstance(config, Tile):
        raise TypeError(f"config must be a fp8mm.pallas.int8_switchback.Tile, got {config!r}")
    return config


# ----------------------------------------------------------------------------
# Kernel
# ----------------------------------------------------------------------------


def _scaled_quant_kernel(w_ref, absmax_ref, o_ref, *, r, c, cfg, transpose, per_row, interpret):
    bm, bn = cfg.block_rows, cfg.block_cols
    i, j = pl.program_id(0), pl.program_id(1)
    r_ok = range_mask(i * bm, bm, r, r % bm != 0)
    c_ok = range_mask(j * bn, bn, c, c % bn != 0)
    rs, cs = pl.ds(i * bm, bm), pl.ds(j * bn, bn)
    w = masked_load(w_ref.at[rs, cs], and_masks(r_ok, c_ok), 0.0).astype(_F32)
    absmax = masked_load(absmax_ref.at[rs if per_row else cs], r_ok if per_row else c_ok, 1.0)
    # reference.row_scale with a correctly rounded reciprocal (prescaled for huge absmax).
    s = reference.block_prescale(absmax)
    scale = (np.float32(127.0) * s) * _backend.recip_rn(absmax * s, interpret)
    codes = to_int8_rn(w * (scale[:, None] if per_row else scale[None, :]), interpret)
    if transpose:
        _backend.store(o_ref.at[cs, rs], codes.T, mask=and_masks(c_ok, r_ok))
    else:
        _backend.store(o_ref.at[rs, cs], codes, mask=and_masks(r_ok, c_ok))


@functools.partial(jax.jit, static_argnames=("transpose", "cfg", "interpret", "per_row"))
def _scaled_quant_2d(w, absmax, *, transpose, cfg, interpret, per_row=False):
    """Codes of w [r, c] with the column absmax [c] (per_row: the row absmax [r]): int8
    [r, c], or [c, r] transposed."""
    r, c = w.shape
    kernel = functools.partial(
        _scaled_quant_kernel,
        r=r,
        c=c,
        cfg=cfg,
        transpose=transpose,
        per_row=per_row,
        interpret=interpret,
    )
    return pallas_call(
        kernel,
        name="fp8mm_quantize_scaled_t" if transpose else "fp8mm_quantize_scaled",
        interpret=interpret,
        num_warps=cfg.num_warps,
        grid=(pl.cdiv(r, cfg.block_rows), pl.cdiv(c, cfg.block_cols)),
        out_shape=jax.ShapeDtypeStruct((c, r) if transpose else (r, c), jnp.int8),
    )(w, absmax)


@functools.partial(jax.jit, static_argnames=("per_column", "transpose", "cfg", "interpret"))
def _quantize_2d(w, absmax, *, per_column, transpose, cfg, interpret):
    # The absmax reduction is XLA's (exact anywhere; one integer max keeps NaN); the
    # kernel then reads W once more.
    if absmax is None:
        absmax = absmax_bits(w.astype(_F32), 0 if per_column else None)
    vec = absmax if per_column else jnp.broadcast_to(absmax, (w.shape[1],))
    codes = _scaled_quant_2d(w, vec, transpose=transpose, cfg=cfg, interpret=interpret)
    return codes, absmax


# ----------------------------------------------------------------------------
# Public wrappers and what they serve
# ----------------------------------------------------------------------------


def supported_quantize_rowwise(X: jax.Array, absmax=None) -> str | None:
    """None when the single-pass row kernel holds X's rows (at most 16384 elements), or
    with a given absmax (the scaled kernel, any row length)."""
    if absmax is None and X.size and choose_row_quant_config(1, X.shape[-1]) is None:
        return f"rows of {X.shape[-1]} elements exceed the single-pass row kernel's 16384"
    return too_large(X)


def supported_quantize_global(W: jax.Array, transpose: bool = False, absmax=None) -> str | None:
    """None: the kernel serves every validated W up to its int32 indexing."""
    del transpose, absmax
    return too_large(W)


def supported_quantize_columnwise_and_transpose(W: jax.Array, absmax=None) -> str | None:
    """None: the kernel serves every validated W up to its int32 indexing."""
    del absmax
    return too_large(W)


def _check_served(why: str | None) -> None:
    if why is not None:
        raise ValueError(why)


def quantize_rowwise(
    X: jax.Array,
    absmax: jax.Array | None = None,
    *,
    config: Tile | None = None,
    interpret: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """Row-wise int8 codes of X's own values in one pass (`reference.quantize_rowwise`).

    Args:
      X: float [..., k] (float32, float16 or bfloat16), k <= 16384 (any k with absmax).
      absmax: float32 [...] to scale the rows by instead of their own (rows split
        over devices pass the whole rows'); then the scaled kernel writes the codes.
      config: the row kernel's `Tile` (`choose_row_quant_config`; block_cols
        must cover k), with absmax the scaled kernel's (`choose_scaled_quant_config`);
        None: the heuristic.
      interpret: run in Pallas interpret mode (CPU).

    Returns:
      codes int8 [..., k], absmax float32 [...].

    Raises:
      ValueError: rows longer than 16384, X beyond the kernel's int32 indexing,
        or a `config` that cannot hold a row.
    """
    _check_served(supported_quantize_rowwise(X, absmax))
    if X.size == 0:
        return reference.quantize_rowwise(X, absmax)
    k = X.shape[-1]
    a2 = X.reshape(-1, k)
    if absmax is not None:
        cfg = _given(config, choose_scaled_quant_config(*a2.shape, False))
        kw = dict(transpose=False, cfg=cfg, interpret=interpret, per_row=True)
        return _scaled_quant_2d(a2, absmax.reshape(-1), **kw).reshape(X.shape), absmax
    cfg = _given(config, choose_row_quant_config(*a2.shape))
    if cfg.block_cols < k:
        raise ValueError(f"config {cfg} cannot hold rows of {k} elements (block_cols < {k})")
    codes, absmax = row_quant_2d(a2, cfg=cfg, native=True, interpret=interpret)
    return codes.reshape(X.shape), absmax.reshape(X.shape[:-1])


def quantize_global(
    W: jax.Array,
    transpose: bool = False,
    absmax: jax.Array | None = None,
    *,
    config: Tile | None = None,
    interpret: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """Whole-tensor int8 codes of W, optionally transposed (`reference.quantize_global`).

    One absmax serves W and Wᵀ, so the transposed codes are the K-major operand
    of the input-gradient GEMM with the forward's scale.

    Args:
      W: float [r, c].
      transpose: write the codes as [c, r].
      absmax: W's float32 [] absmax when known (the backward pass keeps the
        forward's); None: one reduction over W first.
      config: the kernel's `Tile` over W (`choose_scaled_quant_config`); None: the heuristic.
      interpret: run in Pallas interpret mode (CPU).

    Returns:
      codes int8 [r, c] ([c, r] transposed), absmax float32 [].
    """
    _check_served(supported_quantize_global(W))
    if W.size == 0:
        return reference.quantize_global(W, transpose, absmax)
    cfg = _given(config, choose_scaled_quant_config(*W.shape, transpose))
    kw = dict(per_column=False, transpose=transpose, cfg=cfg, interpret=interpret)
    return _quantize_2d(W, absmax, **kw)


def quantize_columnwise_and_transpose(
    W: jax.Array,
    absmax: jax.Array | None = None,
    *,
    config: Tile | None = None,
    interpret: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """Column-wise int8 codes of W, transposed (`reference.quantize_columnwise_and_transpose`).

    Columns of up to 16384 elements: XLA transposes W and the single-pass row
    kernel quantizes the rows of Wᵀ (the same rule, so the same codes), which
    is faster than a column reduction over W (on an H200 at 4096x4096 bf16,
    XLA's NaN-keeping column absmax alone took 48.6 us). Longer columns: the
    column absmax, then the scaled kernel writing the codes transposed.

    Args:
      W: float [r, c].
      absmax: float32 [c] to scale the columns by instead of their own (columns
        split over devices pass the whole columns'); the scaled kernel then writes
        the codes.
      config: the `Tile` of the kernel that writes the codes: the row kernel's over
        Wᵀ (`choose_row_quant_config(c, r)`) when r <= 16384 and absmax is None, else
        the scaled kernel's over W (`choose_scaled_quant_config`); None: the heuristic.
      interpret: run in Pallas interpret mode (CPU).

    Returns:
      codes int8 [c, r], absmax float32 [c].
    """
    _check_served(supported_quantize_columnwise_and_transpose(W))
    if W.size == 0:
        return reference.quantize_columnwise_and_transpose(W, absmax)
    if absmax is None and choose_row_quant_config(W.shape[1], W.shape[0]) is not None:
        return quantize_rowwise(W.T, config=config, interpret=interpret)
    cfg = _given(config, choose_scaled_quant_config(*W.shape, True))
    return _quantize_2d(W, absmax, per_column=True, transpose=True, cfg=cfg, interpret=interpret)
