"""Pallas GPU kernels (Triton) for the int8 quantization primitives (LLM.int8 / SwitchBack).

`int8_vectorwise_quant`, `int8_double_quant` and `int8_vectorwise_quant_t`
take the arguments of their namesakes in `fp8mm.reference` (plus `config` and
`interpret`) and return what the reference returns, bit for bit: int8 codes and
float32 statistics.

Kernels:

* `_stats_kernel`: one pass over a float16 [m, k] matrix giving the row absmax,
  per-row-block partial column absmax and per-row-block outlier-column flags
  (outliers |x| >= threshold are left out of both maxima). The partials are
  reduced in XLA, which is tiny next to the pass itself.
* `_quant_kernel`: row-wise codes (and, for double quant, column-wise codes),
  2-D tiles.
* `_row_quant_kernel`: row absmax and row-wise codes of whole rows in a single
  pass (threshold 0, rows up to `_ROW_QUANT_MAX_K` elements).
* `_quant_t_kernel`: column-wise codes of a Flax [k, n] weight written straight
  into the K-major [n, k] layout the matmul needs (quantize + transpose).

Exactness on the GPU: Triton lowers float division to an approximate
`div.full.f32`, and XLA on a GPU did not reproduce the CPU's
127 * (1/absmax) either, so the scales (127 * (1/absmax), 1/col_absmax) come
from host-computed tables indexed by the float16 bits of the absmax (every
absmax is a float16 value; `_int8_math.quant_scale`, `_int8_math.reciprocal`)
and are passed to the kernels. The single-pass row kernel, whose absmax never
leaves the program, takes a correctly rounded `rcp.rn.f32` instead. The column
codes need the IEEE quotient x*127 / col_absmax; a product with the XLA
reciprocal is within a few float32 ulps of it, which only matters where the
quotient is exactly halfway between two integers (with float16 operands any
other quotient is at least 2^-12 from a half), and those exact ties are
detected with exact float32 products and rounded to even.

NaN (docs/exactness.md): a NaN makes its row's and its column's absmax NaN, so
it reaches every product it touches; every NaN code is 0 and no code is -128.
Inputs whose float16 cast overflows keep their own value (`reference.f16_or_wide`).
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
    clip_nan,
    elementwise_tile,
    elementwise_tile_space,
    f16_or_wide,
    is_even,
    masked_load,
    next_pow2,
    quant_scale,
    range_mask,
    reciprocal,
    reduce_any,
    round_half_even,
    to_int8,
    to_int8_rn,
)

__all__ = [
    "Tile",
    "choose_quant_config",
    "choose_quant_t_config",
    "choose_row_quant_config",
    "choose_stats_config",
    "int8_double_quant",
    "int8_vectorwise_quant",
    "int8_vectorwise_quant_t",
    "quant_search_space",
    "quant_t_search_space",
    "row_quant_2d",
    "row_quant_search_space",
    "supported_int8_double_quant",
    "supported_int8_vectorwise_quant",
    "supported_int8_vectorwise_quant_t",
]

_F32 = jnp.float32


# ----------------------------------------------------------------------------
# Configs: every kernel takes a `Tile`; its heuristic and search space say of what
# ----------------------------------------------------------------------------


def choose_stats_config(m: int, k: int) -> Tile:
    """Statistics pass over A [m, k]: a program owns `block_rows` rows, walks k in
    `block_cols` steps.

    Not a wrapper's `config`: the wrappers that run this pass before their main
    kernel always take this heuristic for it.
    """
    # 32 rows a program keeps ~250 programs busy at m=8192 while the per-row-block
    # column partials stay 1/16 of the input's bytes.
    block_m = min(32, next_pow2(m))
    block_k = min(next_pow2(k), 8192 // block_m)
    return Tile(block_m, block_k)


def choose_quant_config(m: int, k: int) -> Tile:
    """Row (and column) codes of A [m, k]: one tile of A a program, at most 256 wide."""
    return elementwise_tile(m, k, 256)


def quant_search_space(m: int, k: int) -> tuple[Tile, ...]:
    """Tiles of 4096 to 16384 elements, 64 to 512 wide, 4 or 8 warps (the heuristic's too)."""
    return elementwise_tile_space(m, k, (64, 128, 256, 512))


# Whole rows up to this many elements stay in registers in the single-pass kernel.
_ROW_QUANT_MAX_K = 16384


def choose_row_quant_config(m: int, k: int) -> Tile | None:
    """Single-pass row quantization of A [m, k]: `block_rows` whole rows a program.

    `block_cols` is k rounded up to a power of two (a program holds whole rows);
    None when a row is longer than `_ROW_QUANT_MAX_K` (the two-pass kernels run).
    """
    block_k = next_pow2(k)
    if block_k > _ROW_QUANT_MAX_K:
        return None
    # Measured on an H200 (bf16 8192x4096): one 4096-row with 8 warps (16 elements
    # a thread) 48.7 us; two rows with 4 warps 51.6 us; eight rows 73.8 us.
    block_m = min(next_pow2(m), max(1, 4096 // block_k))
    return Tile(block_m, block_k, num_warps=max(4, min(16, block_m * block_k // 512)))


def row_quant_search_space(m: int, k: int) -> tuple[Tile, ...]:
    """Half, the same and twice the heuristic's rows, 4 to 16 warps; () for rows too long."""
    choice = choose_row_quant_config(m, k)
    if choice is None:
        return ()
    space = {choice: None}
    for rows in (choice.block_rows // 2, choice.block_rows, choice.block_rows * 2):
        if 1 <= rows <= next_pow2(m):
            for warps in (4, 8, 16):
                space[Tile(rows, choice.block_cols, warps)] = None
    return tuple(space)


def choose_quant_t_config(k: int, n: int) -> Tile:
    """Quantize + transpose of W [k, n]: one [block_rows (of k), block_cols (of n)] tile of W."""
    # Square tiles so that both the read of W and the transposed write of CB
    # are long contiguous runs.
    return Tile(min(64, next_pow2(k)), min(64, next_pow2(n)))


def quant_t_search_space(k: int, n: int) -> tuple[Tile, ...]:
    """Square tiles of 32 to 128 (clipped to the weight), 4 or 8 warps."""
    pk, pn = next_pow2(k), next_pow2(n)
    space = {}
    for side in (32, 64, 128):
        for warps in (4, 8):
            space[Tile(min(side, pk), min(side, pn), warps)] = None
    return tuple(space)


def _given(config: Tile | None, choice: Tile) -> Tile:
    if config is None:
        return choice
    if not isinstance(config, Tile):
        raise TypeError(f"config must be a fp8mm.pallas.int8_quant.Tile, got {config!r}")
    return config


# ----------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------


def _stats_kernel(a_ref, *out_refs, m, k, cfg, threshold, rows, cols, flags):
    bm, bk = cfg.block_rows, cfg.block_cols
    i = pl.program_id(0)
    refs = iter(out_refs)
    row_ref = next(refs) if rows else None
    col_ref = next(refs) if cols else None
    flag_ref = next(refs) if flags else None
    row_ok = range_mask(i * bm, bm, m, m % bm != 0)
    thr = float(np.float16(threshold))  # the reference compares in float16

    def body(kk, carry):
        rmax, rnan = carry
        start = kk * bk
        col_ok = range_mask(start, bk, k, k % bk != 0)
        mask = and_masks(row_ok, col_ok)
        x = masked_load(a_ref.at[pl.ds(i * bm, bm), pl.ds(start, bk)], mask, 0.0)
        a = jnp.abs(f16_or_wide(x.astype(_F32), a_ref.dtype))
        nan = a != a
        if threshold > 0.0:
            outlier = a >= thr
            a = jnp.where(outlier, 0.0, a)
        a = jnp.where(nan, 0.0, a)
        if rows:
            rmax = jnp.maximum(rmax, jnp.max(a, axis=1))
            rnan = jnp.maximum(rnan, reduce_any(nan, 1))
        if cols:
            cmax = jnp.where(reduce_any(nan, 0) > 0, np.float32(np.nan), jnp.max(a, axis=0))
            _backend.store(col_ref.at[i, pl.ds(start, bk)], cmax, mask=col_ok)
        if flags:
            hit = reduce_any(outlier, 0).astype(jnp.int8)
            _backend.store(flag_ref.at[i, pl.ds(start, bk)], hit, mask=col_ok)
        return rmax, rnan

    init = (jnp.zeros((bm,), _F32), jnp.zeros((bm,), jnp.int32))
    rmax, rnan = jax.lax.fori_loop(0, pl.cdiv(k, bk), body, init)
    if rows:
        rmax = jnp.where(rnan > 0, np.float32(np.nan), rmax)
        _backend.store(row_ref.at[pl.ds(i * bm, bm)], rmax, mask=row_ok)


def _quant_kernel(*refs, m, k, cfg, threshold, double):
    refs = list(refs)
    a_ref, scale_ref = refs[:2]
    del refs[:2]
    flag_ref = refs.pop(0) if threshold > 0.0 else None
    if double:
        cstat_ref, crcp_ref = refs.pop(0), refs.pop(0)
    ca_ref = refs.pop(0)
    cat_ref = refs.pop(0) if double else None

    bm, bk = cfg.block_rows, cfg.block_cols
    i, j = pl.program_id(0), pl.program_id(1)
    row_ok = range_mask(i * bm, bm, m, m % bm != 0)
    col_ok = range_mask(j * bk, bk, k, k % bk != 0)
    mask = and_masks(row_ok, col_ok)
    rs, cs = pl.ds(i * bm, bm), pl.ds(j * bk, bk)

    x = f16_or_wide(masked_load(a_ref.at[rs, cs], mask, 0.0).astype(_F32), a_ref.dtype)
    scale = masked_load(scale_ref.at[rs], row_ok, 0.0)
    ca = to_int8(x * scale[:, None])
    if threshold > 0.0:
        outlier = jnp.abs(x) >= float(np.float16(threshold))
        col_hit = masked_load(flag_ref.at[cs], col_ok, 0) != 0
        ca = jnp.where(outlier | col_hit[None, :], jnp.int8(0), ca)
        x = jnp.where(outlier, 0.0, x)
    _backend.store(ca_ref.at[rs, cs], ca, mask=mask)
    if not double:
        return

    c = masked_load(cstat_ref.at[cs], col_ok, 1.0)[None, :]
    rc = masked_load(crcp_ref.at[cs], col_ok, 1.0)[None, :]
    # torch rounds x*127 to float16 before dividing (the float32 product is exact);
    # where that overflows, the exact product gives the intended code.
    s = f16_or_wide(x * 127.0, jnp.float32)
    q = s * rc
    n = round_half_even(clip_nan(q))
    # Exact ties s/c = n ± 1/2: (n ± 1/2)*c has at most 19 significant bits, so
    # it is exact in float32 and the comparison decides the tie exactly.
    finite = jnp.abs(q) < np.float32(np.inf)
    lo_tie = finite & (s == (n - 0.5) * c)
    hi_tie = finite & (s == (n + 0.5) * c)
    n = jnp.where(lo_tie, jnp.where(is_even(n), n, n - 1.0), n)
    n = jnp.where(hi_tie, jnp.where(is_even(n), n, n + 1.0), n)
    cat = jnp.minimum(jnp.maximum(n, -127.0), 127.0).astype(jnp.int8)
    _backend.store(cat_ref.at[rs, cs], cat, mask=mask)


def _row_quant_kernel(a_ref, ca_ref, stats_ref, *, m, k, cfg, native, interpret):
    """Row absmax and codes of whole rows in one pass (threshold 0: no outlier columns).

    native: quantize A's own values (the SwitchBack paper's rule) instead of their
    float16 cast (bitsandbytes').
    """
    bm = cfg.block_rows
    i = pl.program_id(0)
    row_ok = range_mask(i * bm, bm, m, m % bm != 0)
    col_ok = range_mask(0, cfg.block_cols, k, k != cfg.block_cols)
    mask = and_masks(row_ok, col_ok)
    # An int32 start, not the literal 0: interpret mode under jax_enable_x64 would make
    # a Python 0 int64 next to the int32 program id.
    rs, cs = pl.ds(i * bm, bm), pl.ds(np.int32(0), cfg.block_cols)
    # bitsandbytes quantizes A as float16: round once, whatever A's dtype (unless the
    # cast overflows: reference.f16_or_wide).
    x = masked_load(a_ref.at[rs, cs], mask, 0.0).astype(_F32)
    if not native:
        x = f16_or_wide(x, a_ref.dtype)
    absmax = absmax_bits(x, 1)
    # 127 * (1/absmax) with a correctly rounded reciprocal, prescaled as reference.row_scale.
    s = reference.block_prescale(absmax)
    scale = (np.float32(127.0) * s) * _backend.recip_rn(absmax * s, interpret)
    _backend.store(ca_ref.at[rs, cs], to_int8_rn(x * scale[:, None], interpret), mask=mask)
    _backend.store(stats_ref.at[rs], absmax, mask=row_ok)


def _quant_t_kernel(w_ref, scale_ref, cb_ref, *, k, n, cfg):
    bk, bn = cfg.block_rows, cfg.block_cols
    i, j = pl.program_id(0), pl.program_id(1)  # i over n (rows of CB), j over k
    n_ok = range_mask(i * bn, bn, n, n % bn != 0)
    k_ok = range_mask(j * bk, bk, k, k % bk != 0)
    ns, ks = pl.ds(i * bn, bn), pl.ds(j * bk, bk)
    w = masked_load(w_ref.at[ks, ns], and_masks(k_ok, n_ok), 0.0).astype(_F32)
    w = f16_or_wide(w, w_ref.dtype)
    scale = masked_load(scale_ref.at[ns], n_ok, 0.0)
    codes = to_int8(w * scale[None, :])
    _backend.store(cb_ref.at[ns, ks], codes.T, mask=and_masks(n_ok, k_ok))


# ----------------------------------------------------------------------------
# Jitted 2-D drivers
# ----------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("threshold", "rows", "cols", "interpret"))
def _stats(a16, *, threshold, rows, cols, interpret):
    """(row_stats [m] | None, col_stats [k] | None, outlier_cols [k] bool).

    a16 is A in its own dtype; the kernel rounds it with `f16_or_wide`. A NaN
    makes its row's and its column's absmax NaN (fp8mm's NaN rule; bitsandbytes'
    row kernel drops NaN with fmaxf, its column amax keeps it).
    """
    m, k = a16.shape
    cfg = choose_stats_config(m, k)
    nb = pl.cdiv(m, cfg.block_rows)
    flags = threshold > 0.0
    out_shape = []
    if rows:
        out_shape.append(jax.ShapeDtypeStruct((m,), _F32))
    if cols:
        out_shape.append(jax.ShapeDtypeStruct((nb, k), _F32))
    if flags:
        out_shape.append(jax.ShapeDtypeStruct((nb, k), jnp.int8))
    kernel = functools.partial(
        _stats_kernel,
        m=m,
        k=k,
        cfg=cfg,
        threshold=threshold,
        rows=rows,
        cols=cols,
        flags=flags,
    )
    outs = iter(
        pallas_call(
            kernel,
            name="fp8mm_int8_stats",
            interpret=interpret,
            num_warps=cfg.num_warps,
            grid=(nb,),
            out_shape=out_shape,
        )(a16)
    )
    row_stats = next(outs) if rows else None
    col_stats = jnp.max(next(outs), axis=0) if cols else None  # jnp.max propagates NaN
    outlier_cols = jnp.any(next(outs) != 0, axis=0) if flags else jnp.zeros((k,), jnp.bool_)
    return row_stats, col_stats, outlier_cols


@functools.partial(jax.jit, static_argnames=("threshold", "double", "cfg", "interpret"))
def _quant_2d(a16, *, threshold, double, cfg, interpret):
    m, k = a16.shape
    row_stats, col_stats, outlier_cols = _stats(
        a16, threshold=threshold, rows=True, cols=double, interpret=interpret
    )
    args = [a16, quant_scale(row_stats)]
    if threshold > 0.0:
        args.append(outlier_cols.astype(jnp.int8))
    out_shape = [jax.ShapeDtypeStruct((m, k), jnp.int8)]
    if double:
        args += [col_stats, reciprocal(col_stats)]
        out_shape.append(jax.ShapeDtypeStruct((m, k), jnp.int8))
    kernel = functools.partial(_quant_kernel, m=m, k=k, cfg=cfg, threshold=threshold, double=double)
    codes = pallas_call(
        kernel,
        name="fp8mm_int8_double_quant" if double else "fp8mm_int8_vectorwise_quant",
        interpret=interpret,
        num_warps=cfg.num_warps,
        grid=(pl.cdiv(m, cfg.block_rows), pl.cdiv(k, cfg.block_cols)),
        out_shape=out_shape,
    )(*args)
    return codes, row_stats, col_stats, outlier_cols


@functools.partial(jax.jit, static_argnames=("cfg", "native", "interpret"))
def row_quant_2d(a, *, cfg, native=False, interpret=False):
    """(codes int8 [m, k], absmax float32 [m]) of a [m, k] by the single-pass row kernel.

    Shared with `fp8mm.pallas.int8_switchback` (native=True: A's own values,
    not their float16 cast); cfg.block_cols must cover k.
    """
    m, k = a.shape
    return pallas_call(
        functools.partial(_row_quant_kernel, m=m, k=k, cfg=cfg, native=native, interpret=interpret),
        name="fp8mm_quantize_rowwise" if native else "fp8mm_int8_vectorwise_quant_rows",
        interpret=interpret,
        num_warps=cfg.num_warps,
        grid=(pl.cdiv(m, cfg.block_rows),),
        out_shape=[
            jax.ShapeDtypeStruct((m, k), jnp.int8),
            jax.ShapeDtypeStruct((m,), _F32),
        ],
    )(a)


@functools.partial(jax.jit, static_argnames=("cfg", "interpret"))
def _quant_t_2d(w16, *, cfg, interpret):
    k, n = w16.shape
    _, scb, _ = _stats(w16, threshold=0.0, rows=False, cols=True, interpret=interpret)
    cb = pallas_call(
        functools.partial(_quant_t_kernel, k=k, n=n, cfg=cfg),
        name="fp8mm_int8_vectorwise_quant_t",
        interpret=interpret,
        num_warps=cfg.num_warps,
        grid=(pl.cdiv(n, cfg.block_cols), pl.cdiv(k, cfg.block_rows)),
        out_shape=jax.ShapeDtypeStruct((n, k), jnp.int8),
    )(w16, quant_scale(scb))
    return cb, scb


# ----------------------------------------------------------------------------
# Public wrappers and what they serve
# ----------------------------------------------------------------------------


def supported_int8_vectorwise_quant(A: jax.Array, threshold: float = 0.0) -> str | None:
    """None: the kernels serve every validated A up to their int32 indexing."""
    del threshold
    return too_large(A)


def supported_int8_double_quant(A: jax.Array, threshold: float = 0.0) -> str | None:
    """None: the kernels serve every validated A up to their int32 indexing."""
    del threshold
    return too_large(A)


def supported_int8_vectorwise_quant_t(W: jax.Array) -> str | None:
    """None: the kernels serve every validated W up to their int32 indexing."""
    return too_large(W)


def _as_rows(A: jax.Array, threshold) -> tuple[jax.Array, float]:
    """A as [m, k] rows and the threshold as a float, once the kernels' limit is checked."""
    if (why := too_large(A)) is not None:
        raise ValueError(why)
    return A.reshape(-1, A.shape[-1]), float(threshold)


def _single_pass(k: int, threshold: float) -> bool:
    """Whether `int8_vectorwise_quant` runs the single-pass row kernel for rows of k."""
    return threshold == 0.0 and next_pow2(k) <= _ROW_QUANT_MAX_K


def int8_vectorwise_quant(
    A: jax.Array,
    threshold: float = 0.0,
    *,
    config: Tile | None = None,
    interpret: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Row-wise int8 quantization, bit-identical to `reference.int8_vectorwise_quant`.

    With threshold 0 and rows of at most 16384 elements, one pass of the row
    kernel; otherwise the statistics pass, then the quantization kernel.

    Args:
      A: float [..., k] (float32, float16 or bfloat16; cast to float16 first).
      threshold: static float >= 0; when > 0, entries with |x| >= threshold are
        outliers, left out of the row absmax, and their whole columns are zeroed
        in CA.
      config: the `Tile` of the kernel that writes the codes: of the row kernel
        (`choose_row_quant_config`; block_cols must cover k) in the single pass,
        else of the quantization kernel (`choose_quant_config`). None: the heuristic.
      interpret: run in Pallas interpret mode (CPU).

    Returns:
      CA int8 [..., k], row_stats float32 [...], outlier_cols bool [k].

    Raises:
      ValueError: A is beyond the kernels' int32 indexing, or `config` cannot
        cover A's rows.
    """
    if A.size == 0:
        return reference.int8_vectorwise_quant(A, float(threshold))
    a2, threshold = _as_rows(A, threshold)
    m, k = a2.shape
    if _single_pass(k, threshold):
        # Whole rows fit a program: one read of A, cast to float16 in the kernel.
        cfg = _given(config, choose_row_quant_config(m, k))
        if cfg.block_cols < k:
            raise ValueError(
                f"config {cfg} cannot quantize rows of {k} elements in one pass: "
                f"the row kernel needs block_cols >= {k}"
            )
        ca, row_stats = row_quant_2d(a2, cfg=cfg, interpret=interpret)
        cols = jnp.zeros((k,), jnp.bool_)
    else:
        cfg = _given(config, choose_quant_config(m, k))
        (ca,), row_stats, _, cols = _quant_2d(
            a2, threshold=threshold, double=False, cfg=cfg, interpret=interpret
        )
    return ca.reshape(A.shape), row_stats.reshape(A.shape[:-1]), cols


def int8_double_quant(
    A: jax.Array,
    threshold: float = 0.0,
    *,
    config: Tile | None = None,
    interpret: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """Row- and column-wise int8 quantization, bit-identical to `reference.int8_double_quant`.

    The statistics pass, then the quantization kernel writing both codes.

    Args:
      A: float [..., k] (float32, float16 or bfloat16; cast to float16).
      threshold: static float >= 0, as in `int8_vectorwise_quant`; outliers are
        also left out of the column absmax and zeroed in CAt.
      config: the quantization kernel's `Tile` (`choose_quant_config`); None:
        the heuristic.
      interpret: run in Pallas interpret mode (CPU).

    Returns:
      CA int8 [..., k]; CAt int8 [..., k] (A's shape, not transposed);
      row_stats float32 [...]; col_stats float32 [k]; outlier_cols bool [k].

    Raises:
      ValueError: A is beyond the kernels' int32 indexing.
    """
    if A.size == 0:
        return reference.int8_double_quant(A, float(threshold))
    a2, threshold = _as_rows(A, threshold)
    cfg = _given(config, choose_quant_config(*a2.shape))
    kw = dict(threshold=threshold, double=True, cfg=cfg, interpret=interpret)
    (ca, cat), row_stats, col_stats, cols = _quant_2d(a2, **kw)
    rows = row_stats.reshape(A.shape[:-1])
    return ca.reshape(A.shape), cat.reshape(A.shape), rows, col_stats, cols


def int8_vectorwise_quant_t(
    W: jax.Array, *, config: Tile | None = None, interpret: bool = False
) -> tuple[jax.Array, jax.Array]:
    """Fused quantize + transpose of a weight into the matmul's K-major layout.

    Equal to `reference.int8_vectorwise_quant_t(W)` = `int8_vectorwise_quant(W.T)[:2]`:
    every column of W is quantized with its own absmax and written as a row of
    CB, so a Flax [in, out] kernel becomes the [out, in] int8 operand that
    `int8_linear_matmul` needs without a separate transpose. The statistics
    pass (column absmax), then the quantize-transpose kernel.

    Args:
      W: float [k, n] (float32, float16 or bfloat16; cast to float16 first).
      config: the quantize-transpose kernel's `Tile` over W (block_rows tiles k,
        block_cols n; `choose_quant_t_config`); None: the heuristic.
      interpret: run in Pallas interpret mode (CPU).

    Returns:
      CB int8 [n, k], SCB float32 [n] (the column absmax of W).

    Raises:
      ValueError: W is beyond the kernels' int32 indexing.
    """
    if (why := supported_int8_vectorwise_quant_t(W)) is not None:
        raise ValueError(why)
    if W.size == 0:
        return reference.int8_vectorwise_quant_t(W)
    cfg = _given(config, choose_quant_t_config(*W.shape))
    return _quant_t_2d(W, cfg=cfg, interpret=interpret)
