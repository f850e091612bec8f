"""Pallas GPU kernels for codebook quantization (blockwise and global), bit-exact.

Every public wrapper takes the arguments of its `fp8mm.reference` namesake plus
`config` (a `TileConfig`; None for the heuristic `choose_tiles`) and `interpret`,
and returns bit-identical results (codes, absmax, dequantized values). The
arguments are validated once, by `fp8mm.functional`; the kernels' own limit
(int32 indexing) is reported by the `supported_*` predicates of the registry.

The nearest-code search is one bucket-table lookup per element
(`fp8mm.pallas._codebook_table`).

XLA on a CPU flushes subnormal float32 to zero in comparisons and products,
so in interpret mode the kernels flush the scaled values before the integer
key is formed; compiled for a GPU they keep them, as CUDA does.

Exactness on the GPU. Triton lowers float `/` to the approximate `div.full.f32`,
so the kernels use `rcp.rn.f32` / `div.rn.f32` (IEEE, correctly rounded, as the
reference computes on CPU) through inline assembly when compiled, and plain jnp
division when interpreted. Note that XLA on a GPU does NOT round `1.0 / x`
correctly (measured on an H100: it matches bitsandbytes' fast-math reciprocal
instead), so the reference run on a GPU differs from these kernels on ~0.03% of
bf16 codes; the CPU reference is the oracle. No kernel expression has the a*b+c
form that FMA contraction could change: the scale is x*r, the value code*absmax,
and the midpoints are compared as integer keys from a table built outside.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from fp8mm import reference
from fp8mm.pallas import _backend
from fp8mm.pallas import _codebook_table as _table
from fp8mm.pallas._backend import pallas_call
from fp8mm.state import QuantState

__all__ = [
    "TileConfig",
    "choose_tiles",
    "dequantize",
    "dequantize_blockwise",
    "fake_quant_blockwise",
    "fake_quant_global",
    "quantize",
    "quantize_blockwise",
    "tile_search_space",
]

# ----------------------------------------------------------------------------
# Tiling
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TileConfig:
    """How a kernel tiles the flat tensor: tiles of `rows` x `cols` elements,
    `steps` consecutive tiles a program.

    Attributes:
      rows: rows per tile (blockwise: quantization blocks per tile).
      cols: elements per row (blockwise: the blocksize).
      num_warps: Triton warps per program.
      steps: tiles per program (blockwise kernels only), in a loop that loads
        tile t+1 before working on tile t: the load latency then overlaps the
        lookups (a software prefetch through registers).
    """

    rows: int
    cols: int
    num_warps: int
    steps: int = 1

    def __post_init__(self):
        for name in ("rows", "cols", "num_warps", "steps"):
            v = getattr(self, name)
            if v < 1 or v & (v - 1):
                raise ValueError(f"TileConfig.{name} must be a positive power of two, got {v}")
        # In-kernel int32 offsets reach n + span + size; _backend.MAX_ELEMENTS leaves room.
        if self.span + self.size > 2**16:
            raise ValueError(f"TileConfig span {self.span} + tile {self.size} exceeds 2**16")

    @property
    def size(self) -> int:
        """Elements of one tile."""
        return self.rows * self.cols

    @property
    def span(self) -> int:
        """Elements of one program: `steps` tiles."""
        return self.size * self.steps


def choose_tiles(blocksize: int | None, fake: bool = False, dequant: bool = False) -> TileConfig:
    """Tile heuristic for every kernel of this module.

    Measured on an H200 (bf16, e4m3; device time against a same-shape copy at
    8192x4096, 16384x4096, 8192x16384, 16384x512 and 16384x2048; docs/performance.md).
    Blockwise quantize and fake quant run on 4 warps:
    4096-blocks one block a program (32 elements a thread: 6-8% less device
    time than 16 a thread on 8 warps, and a prefetch loop at either width is
    3-8% slower); smaller blocks in 2048-element tiles, 4 tiles a
    program with a prefetch of the next (quantize 256-blocks 4-6%, fake 256- to
    1024-blocks 0.3-6% less device time than one 4096-element tile a program;
    2048-blocks within 1-3% either way). Dequantizing uses 8 warps for 4096-blocks
    (not re-swept since). Global quantization is flat across
    tilings.

    Args:
      blocksize: the quantization blocksize, or None for global quantization
        (no row structure: any row width serves).
      fake: the tile is for fused quantize-dequantize.
      dequant: the tile is for dequantization.
    """
    if fake and dequant:
        raise ValueError("choose_tiles: a tile is for fake quantization or dequantization")
    if blocksize is not None and not dequant:
        # 16 elements a thread leave registers for the next tile's; 32 do not.
        if blocksize >= 4096:
            return TileConfig(rows=1, cols=blocksize, num_warps=4)
        return TileConfig(rows=2048 // blocksize, cols=blocksize, num_warps=4, steps=4)
    cols = 1024 if blocksize is None else blocksize
    size = max(cols, 2048)
    return TileConfig(rows=size // cols, cols=cols, num_warps=max(4, size // 512))


def tile_search_space(
    blocksize: int | None, fake: bool = False, dequant: bool = False
) -> tuple[TileConfig, ...]:
    """The tilings `benchmarks/tune.py` sweeps for one kernel (arguments as `choose_tiles`).

    Tiles of 1024 to 8192 elements on 4 or 8 warps; blockwise quantize and fake
    quant also with 1, 2 or 4 tiles a program. The heuristic's choice is one of them.
    """
    cols = blocksize if blocksize is not None else 1024
    steps = (1, 2, 4) if blocksize is not None and not dequant else (1,)
    space = {choose_tiles(blocksize, fake, dequant)}
    for size in (1024, 2048, 4096, 8192):
        if size < cols:
            continue
        for warps in (4, 8):
            for step in steps:
                cfg = TileConfig(rows=size // cols, cols=cols, num_warps=warps, steps=step)
                if cfg.span + cfg.size <= 2**16:
                    space.add(cfg)
    return tuple(sorted(space, key=lambda c: (c.size, c.steps, c.num_warps)))


def _local_offsets(cfg: TileConfig) -> jax.Array:
    """int32 [rows, cols]: each element's offset within its tile."""
    shape = (cfg.rows, cfg.cols)
    return lax.broadcasted_iota(jnp.int32, shape, 0) * cfg.cols + lax.broadcasted_iota(
        jnp.int32, shape, 1
    )


def _tile_offsets(cfg: TileConfig, n: int) -> tuple[jax.Array, jax.Array | None]:
    """(offsets within the program's tile, in-bounds mask or None), both [rows, cols].

    For programs of one tile (`steps` 1). The mask is None when the tiles cover
    n exactly: unmasked loads and stores spare a compare per element.
    """
    local = _local_offsets(cfg)
    if n % cfg.size == 0:
        return local, None
    return local, pl.program_id(0) * cfg.size + local < n


def _row_mask(cfg: TileConfig, nrows: int) -> tuple[jax.Array, jax.Array | None]:
    local = lax.broadcasted_iota(jnp.int32, (cfg.rows,), 0)
    if nrows % cfg.rows == 0:
        return local, None
    return local, pl.program_id(0) * cfg.rows + local < nrows


def _load(ref, offs, mask):
    if mask is None:
        return _backend.load(ref.at[offs])
    return _backend.load(ref.at[offs], mask=mask, other=0)


# ----------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------


def _block_absmax(x: jax.Array, interpret: bool) -> jax.Array:
    """max |x| along axis 1, NaN for a row holding a NaN (`reference.absmax_nan`).

    Triton lowers float max to `maxnumf` (PTX `max.f32`), which drops a NaN
    operand, so compiled kernels reduce |x| directly (clamped at 0, for an
    all-NaN row) and detect NaN with a sum of |x|, which is NaN exactly when a
    NaN is summed (the terms are non-negative, so inf - inf cannot occur): one
    add per element instead of a compare and a select. XLA's max (interpret
    mode) does not propagate NaN for every shape, so there NaN is tested
    explicitly. The GPU tests with NaN inputs catch a lowering that changes this.
    """
    a = jnp.abs(x)
    if interpret:
        nan = x != x
        m = jnp.max(jnp.where(nan, 0.0, a), axis=1)
        return jnp.where(jnp.any(nan, axis=1), np.float32(np.nan), m)
    total = jnp.sum(a, axis=1)
    return jnp.where(total != total, np.float32(np.nan), jnp.maximum(jnp.max(a, axis=1), 0.0))


def _blockwise_kernel(
    x_ref, code_ref, table_ref, *refs, cfg, n, nblocks, fake, lookup, interpret, to_bytes, given
):
    # refs: the given absmax (when `given`), the output, the absmax output (not when fake).
    given_ref, refs = (refs[0], refs[1:]) if given else (None, refs)
    out_ref, absmax_ref = refs if len(refs) == 2 else (refs[0], None)
    local = _local_offsets(cfg)
    rows = lax.broadcasted_iota(jnp.int32, (cfg.rows,), 0)
    # program_id is read here, outside the loop body (interpret mode needs it so).
    start = pl.program_id(0) * cfg.span
    blocks_per_program = cfg.rows * cfg.steps

    def tile_mask(t, more=None):
        # None when the programs cover n exactly: unmasked loads and stores.
        valid = start + t * cfg.size + local < n if n % cfg.span else None
        if more is None:
            return valid
        more = jnp.broadcast_to(more, local.shape)
        return more if valid is None else valid & more

    def load(t, more=None):
        return _load(x_ref, local + t * cfg.size, tile_mask(t, more))

    def block_rows(t):
        row = rows + t * cfg.rows
        return row, (start // cfg.cols + row < nblocks if nblocks % blocks_per_program else None)

    def work(t, x):
        x = x.astype(jnp.float32)
        if given_ref is None:
            absmax = _block_absmax(x, interpret)
        else:  # the blocks' absmax from outside (e.g. pmax'd over devices), same arithmetic
            row, row_valid = block_rows(t)
            absmax = _load(given_ref, row, row_valid).astype(jnp.float32)
        # 0 -> inf, and 0 * inf = NaN -> code 0, as on CUDA; the power-of-two prescale
        # keeps the reciprocal of an absmax >= 2**126 normal (reference.normalise_blocks).
        s = reference.block_prescale(absmax)
        scaled = (x * s[:, None]) * _backend.recip_rn(absmax * s, interpret)[:, None]
        q = _table.nearest_code(scaled, code_ref, table_ref, lookup, interpret)
        if to_bytes:  # code_ref holds each code's float8 bits (`quantize_fp8`)
            out = code_ref[q & 255].astype(jnp.uint8)
        elif fake:
            out = (code_ref[q & 255] * absmax[:, None]).astype(out_ref.dtype)
        else:
            out = q.astype(jnp.uint8)
        _backend.store(out_ref.at[local + t * cfg.size], out, mask=tile_mask(t))
        if absmax_ref is not None:
            row, row_valid = block_rows(t)
            _backend.store(absmax_ref.at[row], absmax, mask=row_valid)

    if cfg.steps == 1:
        work(0, load(0))
        return

    def step(t, x):
        nxt = load(t + 1, t + 1 < cfg.steps)
        work(t, x)
        return nxt

    lax.fori_loop(0, cfg.steps, step, load(0))


def _global_kernel(
    x_ref, absmax_ref, code_ref, table_ref, out_ref, *, cfg, n, fake, lookup, interpret, to_bytes
):
    offs, valid = _tile_offsets(cfg, n)
    x = _load(x_ref, offs, valid).astype(jnp.float32)
    absmax = jnp.broadcast_to(absmax_ref[0], x.shape)
    # Global quantization divides (torch `A / absmax`); only blockwise multiplies.
    x = _backend.div_rn(x, absmax, interpret)
    q = _table.nearest_code(x, code_ref, table_ref, lookup, interpret)
    if to_bytes:
        out = code_ref[q & 255].astype(jnp.uint8)
    elif fake:
        out = (code_ref[q & 255] * absmax).astype(out_ref.dtype)
    else:
        out = q.astype(jnp.uint8)
    _backend.store(out_ref.at[offs], out, mask=valid)


def _dequant_kernel(q_ref, absmax_ref, code_ref, out_ref, *, cfg, n, nscales, per_row):
    offs, valid = _tile_offsets(cfg, n)
    q = _load(q_ref, offs, valid).astype(jnp.int32)
    if not per_row:
        scale = absmax_ref[0]
    else:
        rows, row_valid = _row_mask(cfg, nscales)
        scale = _load(absmax_ref, rows, row_valid)[:, None]
    out = (code_ref[q] * scale).astype(out_ref.dtype)
    _backend.store(out_ref.at[offs], out, mask=valid)


# ----------------------------------------------------------------------------
# pallas_call plumbing (jitted; shapes and flags static)
# ----------------------------------------------------------------------------


def _whole(size: int) -> pl.BlockSpec:
    return pl.BlockSpec((size,), lambda i: (0,))


def _tiled(size: int) -> pl.BlockSpec:
    return pl.BlockSpec((size,), lambda i: (i,))


@functools.partial(
    jax.jit, static_argnames=("blocksize", "fake", "lookup", "interpret", "cfg", "to_bytes")
)
def _blockwise_call(
    A, code, table, blocksize, fake, lookup, interpret, cfg, to_bytes=False, absmax=None
):
    n = A.size
    nblocks = -(-n // blocksize)
    grid = -(-n // cfg.span)
    out_q = jax.ShapeDtypeStruct((n,), A.dtype if fake else jnp.uint8)
    out_shape = [out_q] if fake else [out_q, jax.ShapeDtypeStruct((nblocks,), jnp.float32)]
    out_specs = [_tiled(cfg.span)]
    if not fake:
        out_specs.append(_tiled(cfg.rows * cfg.steps))
    kernel = functools.partial(
        _blockwise_kernel,
        cfg=cfg,
        n=n,
        nblocks=nblocks,
        fake=fake,
        lookup=lookup,
        interpret=interpret,
        to_bytes=to_bytes,
        given=absmax is not None,
    )
    in_specs = [_tiled(cfg.span), _whole(256), _whole(table.shape[0])]
    given = () if absmax is None else (absmax.reshape(-1),)
    if given:
        in_specs.append(_tiled(cfg.rows * cfg.steps))
    outs = pallas_call(
        kernel,
        name="fake_quant_blockwise" if fake else "quantize_blockwise",
        interpret=interpret,
        num_warps=cfg.num_warps,
        grid=(grid,),
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
    )(A.reshape(-1), code, table, *given)
    return outs[0].reshape(A.shape), (None if fake else outs[1])


@functools.partial(jax.jit, static_argnames=("fake", "lookup", "interpret", "cfg", "to_bytes"))
def _global_call(A, code, table, fake, lookup, interpret, cfg, to_bytes=False, absmax=None):
    if absmax is None:
        absmax = reference.absmax_nan(A.astype(jnp.float32))
    n = A.size
    kernel = functools.partial(
        _global_kernel,
        cfg=cfg,
        n=n,
        fake=fake,
        lookup=lookup,
        interpret=interpret,
        to_bytes=to_bytes,
    )
    [out] = pallas_call(
        kernel,
        name="fake_quant_global" if fake else "quantize_global",
        interpret=interpret,
        num_warps=cfg.num_warps,
        grid=(-(-n // cfg.size),),
        in_specs=[_tiled(cfg.size), _whole(1), _whole(256), _whole(table.shape[0])],
        out_specs=[_tiled(cfg.size)],
        out_shape=[jax.ShapeDtypeStruct((n,), A.dtype if fake else jnp.uint8)],
    )(A.reshape(-1), absmax.reshape(1), code, table)
    return out.reshape(A.shape), absmax


@functools.partial(jax.jit, static_argnames=("blocksize", "dtype", "interpret", "cfg"))
def _dequant_call(q, absmax, code, blocksize, dtype, interpret, cfg):
    n = q.size
    nscales = absmax.size
    kernel = functools.partial(
        _dequant_kernel, cfg=cfg, n=n, nscales=nscales, per_row=blocksize is not None
    )
    scale_spec = _whole(1) if blocksize is None else _tiled(cfg.rows)
    [out] = pallas_call(
        kernel,
        name="dequantize_blockwise" if blocksize else "dequantize_global",
        interpret=interpret,
        num_warps=cfg.num_warps,
        grid=(-(-n // cfg.size),),
        in_specs=[_tiled(cfg.size), scale_spec, _whole(256)],
        out_specs=[_tiled(cfg.size)],
        out_shape=[jax.ShapeDtypeStruct((n,), dtype)],
    )(q.reshape(-1), absmax.reshape(-1), code)
    return out.reshape(q.shape)


# ----------------------------------------------------------------------------
# Public wrappers
# ----------------------------------------------------------------------------


def _blockwise_tiles(config: TileConfig | None, blocksize: int, fake: bool) -> TileConfig:
    config = config or choose_tiles(blocksize, fake)
    if config.cols != blocksize:
        raise ValueError(f"config {config} must have cols == blocksize ({blocksize})")
    return config


def quantize_blockwise(
    A: jax.Array,
    code: jax.Array,
    blocksize: int = 4096,
    absmax: jax.Array | None = None,
    *,
    config: TileConfig | None = None,
    interpret: bool = False,
) -> tuple[jax.Array, QuantState]:
    """Blockwise codebook quantization, bit-exact with `reference.quantize_blockwise`.

    Arguments are validated by `fp8mm.quantize_blockwise`, which calls this kernel.

    Args:
      A: float32/float16/bfloat16 array of any shape, flattened row-major into
        blocks of `blocksize` (the last may be partial).
      code: float32 [256] sorted codebook.
      blocksize: power of two in [32, 4096].
      absmax: float32 [ceil(A.size / blocksize)] to scale the blocks by instead of
        their own (`reference.quantize_blockwise`); None: each block's own.
      config: the tiling (cols == blocksize); None for `choose_tiles(blocksize)`.
      interpret: run the kernel in Pallas interpret mode (CPU).

    Returns:
      (q, state): uint8 codes of A's shape; state.absmax float32 [ceil(A.size / blocksize)].
    """
    nblocks = -(-A.size // blocksize)
    if A.size == 0:
        q = jnp.zeros(A.shape, jnp.uint8)
        absmax = jnp.zeros((nblocks,), jnp.float32) if absmax is None else absmax
    else:
        cfg = _blockwise_tiles(config, blocksize, fake=False)
        table, lookup = _table.table_for(code)
        args = (A, code, table, blocksize, False, lookup, bool(interpret), cfg, False, absmax)
        q, absmax = _blockwise_call(*args)
    return q, QuantState(absmax, code, blocksize, A.dtype, A.shape)


def dequantize_blockwise(
    q: jax.Array, state: QuantState, *, config: TileConfig | None = None, interpret: bool = False
) -> jax.Array:
    """code[q] * absmax[block] in state.dtype, bit-exact with `reference.dequantize_blockwise`.

    Args:
      q: uint8 codes of shape state.shape.
      state: blockwise QuantState (absmax float32 [num_blocks]).
      config: the tiling (cols == state.blocksize); None for the heuristic.
      interpret: run the kernel in Pallas interpret mode.

    Returns:
      Array of shape state.shape and dtype state.dtype.
    """
    if q.size == 0:
        return jnp.zeros(q.shape, state.dtype)
    cfg = config or choose_tiles(state.blocksize, dequant=True)
    if cfg.cols != state.blocksize:
        raise ValueError(f"config {cfg} must have cols == state.blocksize ({state.blocksize})")
    return _dequant_call(
        q, state.absmax, state.code, state.blocksize, state.dtype, bool(interpret), cfg
    )


def fake_quant_blockwise(
    A: jax.Array,
    code: jax.Array,
    blocksize: int,
    absmax: jax.Array | None = None,
    *,
    config: TileConfig | None = None,
    interpret: bool = False,
) -> jax.Array:
    """Blockwise quantize then dequantize in one pass over A (A read once, result in A's dtype).

    Bit-exact with `reference.fake_quant_blockwise`; arguments as in
    `quantize_blockwise` (config: `choose_tiles(blocksize, fake=True)` by default).
    Returns an array of A's shape and dtype.
    """
    if A.size == 0:
        return jnp.zeros(A.shape, A.dtype)
    cfg = _blockwise_tiles(config, blocksize, fake=True)
    table, lookup = _table.table_for(code)
    args = (A, code, table, blocksize, True, lookup, bool(interpret), cfg, False, absmax)
    return _blockwise_call(*args)[0]


def quantize(
    A: jax.Array,
    code: jax.Array,
    absmax: jax.Array | None = None,
    *,
    config: TileConfig | None = None,
    interpret: bool = False,
) -> tuple[jax.Array, QuantState]:
    """Global codebook quantization (x / absmax in float32), bit-exact with `reference.quantize`.

    The absmax is an XLA reduction before the kernel.

    Args:
      A: float32/float16/bfloat16 array of any shape.
      code: float32 [256] sorted codebook.
      absmax: float32 [] to divide by instead of A's own (`reference.quantize`).
      config: the tiling; None for `choose_tiles(None)`.
      interpret: run the kernel in Pallas interpret mode.

    Returns:
      (q, state): uint8 codes of A's shape; state.absmax a float32 scalar, state.dtype float32.
    """
    if A.size == 0:
        q = jnp.zeros(A.shape, jnp.uint8)
        absmax = jnp.zeros((), jnp.float32) if absmax is None else absmax
    else:
        table, lookup = _table.table_for(code)
        cfg = config or choose_tiles(None)
        args = (A, code, table, False, lookup, bool(interpret), cfg, False, absmax)
        q, absmax = _global_call(*args)
    return q, QuantState(absmax, code, None, jnp.float32, A.shape)


def dequantize(
    q: jax.Array, state: QuantState, *, config: TileConfig | None = None, interpret: bool = False
) -> jax.Array:
    """float32 code[q] * absmax for a globally quantized tensor (q's shape).

    config: the tiling; None for `choose_tiles(None, dequant=True)`.
    """
    if q.size == 0:
        return jnp.zeros(q.shape, jnp.float32)
    cfg = config or choose_tiles(None, dequant=True)
    f32 = np.dtype(np.float32)
    return _dequant_call(q, state.absmax, state.code, None, f32, bool(interpret), cfg)


def fake_quant_global(
    A: jax.Array,
    code: jax.Array,
    absmax: jax.Array | None = None,
    *,
    config: TileConfig | None = None,
    interpret: bool = False,
) -> jax.Array:
    """`dequantize(*quantize(A, code, absmax))` cast to A's dtype, the kernel part in one pass."""
    if A.size == 0:
        return jnp.zeros(A.shape, A.dtype)
    table, lookup = _table.table_for(code)
    cfg = config or choose_tiles(None)
    return _global_call(A, code, table, True, lookup, bool(interpret), cfg, False, absmax)[0]


# The kernels' only limit is int32 indexing of the flat tensor (registry predicates).
def supported_quantize_blockwise(A, code, blocksize, absmax=None) -> str | None:
    return _backend.too_large(A)


def supported_dequantize_blockwise(q, state) -> str | None:
    return _backend.too_large(q)


supported_fake_quant_blockwise = supported_quantize_blockwise


def supported_quantize(A, code, absmax=None) -> str | None:
    return _backend.too_large(A)


supported_dequantize = supported_dequantize_blockwise
supported_fake_quant_global = supported_quantize
