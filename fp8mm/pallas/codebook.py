"""Pallas GPU kernels for codebook quantization (blockwise and global), bit-exact.

Every public function takes the arguments of its `fp8mm.reference` namesake plus
`interpret` and returns bit-identical results (codes, absmax, dequantized values).

Nearest code with one table lookup. For a sorted code, bitsandbytes' 7-step
search followed by its float32 midpoint comparison returns the number of
midpoints m_i = (code[i] + code[i+1]) * 0.5 that x has passed, where x passes
m_i when x > m_i for even i and x >= m_i for odd i (the final pivot is even, so
a tie goes to the even index); a run of equal codes instead resolves ties by
where the search walks, which the table takes from the reference itself. In a
monotone unsigned key of x (the float32 bits with the sign bit flipped, and all
bits flipped for negative numbers) each midpoint becomes the first key T_i that
passes it. The keys are cut into buckets of 1/16 binade (2**13 of them
over every float32, a 32 KiB table of which quantization touches the few binades
below 1) or, for a code that crowds those such as bitsandbytes' dynamic map,
1/64 binade. One int32 table entry per bucket holds the number of T_i below the
bucket and the bucket-local offset of the single T_i inside it, so the code
index is `base + (local >= offset)`: about ten integer operations, one table
gather and one compare per element, plus the code gather that fake
quantization needs. NaN (bitsandbytes: code 0) is folded into the table when
every midpoint is finite: the keys above +inf are NaN, so +inf's bucket holds
base 255 and offset 1, making a NaN in it 256 (0 after the uint8 cast or the
`& 255` before the code gather), and the buckets above it hold 0. That spares
the per-element NaN test, which cost 10-16% of the kernel time on an H200.
Only a table with a bucket holding two midpoints (or a subnormal one) compiles
in bitsandbytes' search (`reference.bnb_search` on the code Ref), which a tile
meeting such a bucket runs instead: never for the fp8 grids, nor for the signed
dynamic map on the fine table; in 8 buckets for the unsigned one. A codebook
traced inside a program always compiles the search and the NaN test.

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
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from fp8mm import _checks, _host, reference
from fp8mm.pallas import Kernel, _backend
from fp8mm.pallas._backend import pallas_call
from fp8mm.state import QuantState

__all__ = [
    "KERNELS",
    "TileConfig",
    "choose_tiles",
    "dequantize",
    "dequantize_blockwise",
    "fake_quant_blockwise",
    "fake_quant_global",
    "quantize",
    "quantize_blockwise",
]

# Bucket tables over the monotone unsigned key (see _key): 2**shift keys per
# bucket, bucket b holding the keys [b * 2**shift, (b + 1) * 2**shift), so every
# float32 has a bucket and no clipping is needed. Shift 19 is 1/16 binade (8192
# entries, 32 KiB, of which quantization touches the few binades below 1; the fp8
# grids never crowd it), shift 17 is 1/64 binade (for codes that crowd the coarse
# table, such as bitsandbytes' dynamic map).
_COARSE, _FINE = 19, 17
_OFFSET_BITS = 20  # room for an offset up to 2**_COARSE (the "never" value)
_CROWDED = 1 << (8 + _OFFSET_BITS)  # table flag: two or more midpoints in the bucket


def _num_buckets(shift: int) -> int:
    return 1 << (32 - shift)


_MAX_ELEMENTS = 2**31 - 2**16  # flat int32 indexing inside the kernels


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
        # In-kernel int32 offsets reach n + span + size; _MAX_ELEMENTS leaves 2**16.
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


# ----------------------------------------------------------------------------
# Bucket table
# ----------------------------------------------------------------------------


_SIGN = np.int32(-(2**31))
# Keys of -0.0 and of the float just above +0.0 (see _key), both comparing equal to 0.
_NEG_ZERO_KEY, _AFTER_POS_ZERO_KEY = np.int32(0x7FFFFFFF), _SIGN + 1


def _key(bits: jax.Array) -> jax.Array:
    """Monotone key of float32 bits, as the bits of a uint32 held in an int32.

    Unsigned order: flipping every bit of a negative float and the sign bit of a
    positive one turns sign-magnitude order into integer order (-inf is
    0x007FFFFF, -0.0 0x7FFFFFFF, +0.0 0x80000000, +inf 0xFF800000; NaNs lie
    beyond the infinities). One shift and one three-input logic op per element.
    """
    return bits ^ ((bits >> 31) | _SIGN)


def _bucket_and_local(key: jax.Array, shift: int) -> tuple[jax.Array, jax.Array]:
    """(table index in [0, _num_buckets(shift)), offset of the key inside its bucket)."""
    return lax.shift_right_logical(key, shift), key & ((1 << shift) - 1)


def _inf_bucket(shift: int) -> int:
    """The bucket of +inf, whose key is the first of its bucket (the NaNs follow it)."""
    return 0xFF800000 >> shift


def _midpoints_finite(code: np.ndarray) -> bool:
    """Whether NaN can be folded into the table: every float32 midpoint finite."""
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.all(np.isfinite((code[:-1] + code[1:]) * np.float32(0.5))))


def _bucket_table(
    code: jax.Array | np.ndarray, shift: int = _COARSE, fold_nan: bool = False
) -> jax.Array:
    """int32 [_num_buckets(shift)]: base | offset << 8 | _CROWDED (see the module docstring).

    With `fold_nan` (a concrete code whose midpoints are all finite, so +inf's
    bucket has base 255 and no midpoint) NaN keys look up 0 or 256.
    """
    if fold_nan and not _midpoints_finite(np.asarray(code, np.float32)):
        raise ValueError("NaN folding needs a code whose midpoints are all finite")
    num_buckets = _num_buckets(shift)
    code = jnp.asarray(code, jnp.float32)
    mids = (code[:-1] + code[1:]) * np.float32(0.5)
    i = jnp.arange(255, dtype=jnp.int32)
    # Does x == m_i pass m_i? The parity rule, except inside runs of equal codes.
    passes_at = reference.bnb_search(mids, code) > i
    bits = lax.bitcast_convert_type(mids, jnp.int32)
    first = _key(bits) + jnp.where(passes_at, 0, 1)
    # -0.0 and +0.0 compare equal but have adjacent keys: a zero midpoint is passed
    # from -0.0's key on (x >= 0) or from the key after +0.0's (x > 0).
    first = jnp.where(mids == 0, jnp.where(passes_at, _NEG_ZERO_KEY, _AFTER_POS_ZERO_KEY), first)
    bucket, local = _bucket_and_local(first, shift)
    # Subnormal midpoints compare differently where subnormals are flushed (XLA on
    # a CPU): their buckets always take the search.
    mag = bits & 0x7FFFFFFF
    unsure = (mag > 0) & (mag < 0x00800000)
    # Two sums over [buckets, midpoints] (few fused kernels when built per call): the
    # first packs #midpoints below the bucket, #inside and #unsure inside (each <= 255).
    b = jnp.arange(num_buckets, dtype=jnp.int32)[:, None]
    inside = bucket[None, :] == b
    packed = jnp.sum(
        (bucket[None, :] < b).astype(jnp.int32)
        + (inside.astype(jnp.int32) << 9)
        + ((inside & unsure[None, :]).astype(jnp.int32) << 18),
        axis=1,
    )
    local_sum = jnp.sum(jnp.where(inside, local[None, :], 0), axis=1)
    base, count = packed & 511, (packed >> 9) & 511
    # Only a lone midpoint's offset is meaningful (a crowded entry never reads it,
    # and a sum of several could overflow into the flag bits).
    offset = jnp.where(count == 1, local_sum, 1 << shift)
    crowded = (count > 1) | ((packed >> 18) > 0)
    table = base | (offset << 8) | jnp.where(crowded, _CROWDED, 0)
    if fold_nan:
        inf = _inf_bucket(shift)
        table = table.at[inf].set(255 | 1 << 8).at[inf + 1 :].set((1 << shift) << 8)
    return table


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


@dataclasses.dataclass(frozen=True)
class _Lookup:
    """Static facts about a bucket table: its shift, whether any bucket is crowded,
    and whether NaN is folded into it.

    A table without crowded buckets (every fp8 grid, the dynamic map on the fine
    table) compiles to the pure lookup, without the tile-wide test and search
    branch; a folded one without the per-element NaN test.
    """

    shift: int
    search: bool
    nan_folded: bool = False


@functools.lru_cache(maxsize=32)
def _host_table(code_bytes: bytes, backend: str) -> tuple[np.ndarray, _Lookup]:
    del backend  # part of the key: built on that platform, with its float semantics
    code = np.frombuffer(code_bytes, np.float32)
    fold = _midpoints_finite(code)
    with jax.ensure_compile_time_eval():
        table = np.asarray(_bucket_table(code, _COARSE, fold))
        if np.any(table >= _CROWDED):
            # Crowded tiles fall back to the search (2.7x slower on an H200 for
            # the dynamic map): the finer table removes most crowding.
            fine = np.asarray(_bucket_table(code, _FINE, fold))
            return fine, _Lookup(_FINE, bool(np.any(fine >= _CROWDED)), fold)
    return table, _Lookup(_COARSE, False, fold)


def _table_for(code) -> tuple[jax.Array | np.ndarray, _Lookup]:
    """(bucket table, its lookup facts): built once per concrete codebook, else in the program.

    Built in the program it costs ~55 us on an H200 (more than the kernel at
    8192x4096), so pass codebooks as numpy/concrete arrays where possible.
    """
    host = _host.concrete_float32(code)
    if host is None:
        return _bucket_table(code, _COARSE), _Lookup(_COARSE, True)
    return _host_table(host.tobytes(), _host.platform())


def _nearest_code(x: jax.Array, code_ref, table_ref, lookup: _Lookup, interpret: bool) -> jax.Array:
    """bitsandbytes' nearest code index of normalised float32 x, modulo 256.

    int32 in [0, 256]: a NaN looked up in a folded table gives 256, which the
    uint8 cast wraps to 0 and the fake-quant code gather masks with `& 255`.
    """
    if interpret:
        # Keep the sign of zero: -0.0 and +0.0 have different keys.
        x = jnp.where(jnp.abs(x) < np.finfo(np.float32).tiny, x * np.float32(0), x)
    bits = lax.bitcast_convert_type(x, jnp.int32)
    bucket, local = _bucket_and_local(_key(bits), lookup.shift)
    entry = table_ref[bucket]

    offset = entry >> 8
    if lookup.search:
        offset &= (1 << _OFFSET_BITS) - 1  # only this table can hold the crowded flag

    def lookup_index():
        idx = (entry & 255) + (local >= offset).astype(jnp.int32)
        if lookup.nan_folded:
            return idx
        # NaN fails every comparison in bitsandbytes' search and ends at index 0.
        return jnp.where(x != x, 0, idx)

    if lookup.search:
        crowded = jnp.max(entry) >= _CROWDED
        return lax.cond(crowded, lambda: reference.bnb_search(x, code_ref), lookup_index)
    return lookup_index()


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
    x_ref, code_ref, table_ref, out_ref, absmax_ref, *, cfg, n, nblocks, fake, lookup, interpret
):
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

    def work(t, x):
        x = x.astype(jnp.float32)
        absmax = _block_absmax(x, interpret)
        # 0 -> inf, and 0 * inf = NaN -> code 0, as on CUDA; the power-of-two prescale
        # keeps the reciprocal of an absmax >= 2**126 normal (reference.normalise_blocks).
        s = reference.block_prescale(absmax)
        scaled = (x * s[:, None]) * _backend.recip_rn(absmax * s, interpret)[:, None]
        q = _nearest_code(scaled, code_ref, table_ref, lookup, interpret)
        if fake:
            out = (code_ref[q & 255] * absmax[:, None]).astype(out_ref.dtype)
        else:
            out = q.astype(jnp.uint8)
        _backend.store(out_ref.at[local + t * cfg.size], out, mask=tile_mask(t))
        if absmax_ref is not None:
            row = rows + t * cfg.rows
            row_valid = start // cfg.cols + row < nblocks if nblocks % blocks_per_program else None
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
    x_ref, absmax_ref, code_ref, table_ref, out_ref, *, cfg, n, fake, lookup, interpret
):
    offs, valid = _tile_offsets(cfg, n)
    x = _load(x_ref, offs, valid).astype(jnp.float32)
    absmax = jnp.broadcast_to(absmax_ref[0], x.shape)
    # Global quantization divides (torch `A / absmax`); only blockwise multiplies.
    q = _nearest_code(_backend.div_rn(x, absmax, interpret), code_ref, table_ref, lookup, interpret)
    if fake:
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


@functools.partial(jax.jit, static_argnames=("blocksize", "fake", "lookup", "interpret", "cfg"))
def _blockwise_call(A, code, table, blocksize, fake, lookup, interpret, cfg=None):
    cfg = cfg or choose_tiles(blocksize, fake)
    if cfg.cols != blocksize:
        raise ValueError(f"blockwise tiles need cols == blocksize, got {cfg} for {blocksize}")
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
    )
    if fake:
        kernel = functools.partial(kernel, absmax_ref=None)
    outs = pallas_call(
        kernel,
        name="fake_quant_blockwise" if fake else "quantize_blockwise",
        interpret=interpret,
        num_warps=cfg.num_warps,
        grid=(grid,),
        in_specs=[_tiled(cfg.span), _whole(256), _whole(table.shape[0])],
        out_specs=out_specs,
        out_shape=out_shape,
    )(A.reshape(-1), code, table)
    return outs[0].reshape(A.shape), (None if fake else outs[1])


@functools.partial(jax.jit, static_argnames=("fake", "lookup", "interpret", "cfg"))
def _global_call(A, code, table, fake, lookup, interpret, cfg=None):
    absmax = reference.absmax_nan(A.astype(jnp.float32))
    cfg = cfg or choose_tiles(None)
    n = A.size
    kernel = functools.partial(
        _global_kernel, cfg=cfg, n=n, fake=fake, lookup=lookup, interpret=interpret
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


@functools.partial(jax.jit, static_argnames=("blocksize", "dtype", "interpret"))
def _dequant_call(q, absmax, code, blocksize, dtype, interpret):
    cfg = choose_tiles(blocksize, dequant=True)
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


def _check_input(A, code) -> None:
    _checks.check_float("A", A)
    _checks.check_code(code)
    if A.size > _MAX_ELEMENTS:
        raise ValueError(f"A has {A.size} elements; the kernels index at most {_MAX_ELEMENTS}")


def _check_state(q, state, *, blockwise: bool) -> None:
    if not isinstance(state, QuantState):
        raise TypeError(f"state must be a QuantState, got {type(state).__name__}")
    _checks.check_dtype("q", q, jnp.uint8)
    if tuple(q.shape) != state.shape:
        raise ValueError(f"q has shape {tuple(q.shape)} but state.shape is {state.shape}")
    if blockwise != (state.blocksize is not None):
        want = "quantize_blockwise()" if blockwise else "quantize()"
        raise ValueError(f"state.blocksize={state.blocksize!r} does not come from {want}")
    _checks.check_code(state.code)
    if q.size > _MAX_ELEMENTS:
        raise ValueError(f"q has {q.size} elements; the kernels index at most {_MAX_ELEMENTS}")


def quantize_blockwise(
    A: jax.Array, code: jax.Array, blocksize: int = 4096, *, interpret: bool = False
) -> tuple[jax.Array, QuantState]:
    """Blockwise codebook quantization, bit-exact with `reference.quantize_blockwise`.

    Args:
      A: float32/float16/bfloat16 array of any shape, flattened row-major into
        blocks of `blocksize` (the last may be partial).
      code: float32 [256] sorted codebook.
      blocksize: power of two in [32, 4096].
      interpret: run the kernel in Pallas interpret mode (CPU).

    Returns:
      (q, state): uint8 codes of A's shape; state.absmax float32 [ceil(A.size / blocksize)].
    """
    _check_input(A, code)
    blocksize = _checks.check_blocksize(blocksize)
    nblocks = -(-A.size // blocksize)
    if A.size == 0:
        q, absmax = jnp.zeros(A.shape, jnp.uint8), jnp.zeros((nblocks,), jnp.float32)
    else:
        table, lookup = _table_for(code)
        q, absmax = _blockwise_call(A, code, table, blocksize, False, lookup, bool(interpret))
    return q, QuantState(absmax, code, blocksize, A.dtype, A.shape)


def dequantize_blockwise(q: jax.Array, state: QuantState, *, interpret: bool = False) -> jax.Array:
    """code[q] * absmax[block] in state.dtype, bit-exact with `reference.dequantize_blockwise`.

    Args:
      q: uint8 codes of shape state.shape.
      state: blockwise QuantState (absmax float32 [num_blocks]).
      interpret: run the kernel in Pallas interpret mode.

    Returns:
      Array of shape state.shape and dtype state.dtype.
    """
    _check_state(q, state, blockwise=True)
    if q.size == 0:
        return jnp.zeros(q.shape, state.dtype)
    return _dequant_call(q, state.absmax, state.code, state.blocksize, state.dtype, bool(interpret))


def fake_quant_blockwise(
    A: jax.Array, code: jax.Array, blocksize: int, *, interpret: bool = False
) -> jax.Array:
    """Blockwise quantize then dequantize in one pass over A (A read once, result in A's dtype).

    Bit-exact with `reference.fake_quant_blockwise`; same arguments as
    `quantize_blockwise`. Returns an array of A's shape and dtype.
    """
    _check_input(A, code)
    blocksize = _checks.check_blocksize(blocksize)
    if A.size == 0:
        return jnp.zeros(A.shape, A.dtype)
    table, lookup = _table_for(code)
    return _blockwise_call(A, code, table, blocksize, True, lookup, bool(interpret))[0]


def quantize(
    A: jax.Array, code: jax.Array, *, interpret: bool = False
) -> tuple[jax.Array, QuantState]:
    """Global codebook quantization (x / absmax in float32), bit-exact with `reference.quantize`.

    The absmax is an XLA reduction before the kernel.

    Args:
      A: float32/float16/bfloat16 array of any shape.
      code: float32 [256] sorted codebook.
      interpret: run the kernel in Pallas interpret mode.

    Returns:
      (q, state): uint8 codes of A's shape; state.absmax a float32 scalar, state.dtype float32.
    """
    _check_input(A, code)
    if A.size == 0:
        q, absmax = jnp.zeros(A.shape, jnp.uint8), jnp.zeros((), jnp.float32)
    else:
        table, lookup = _table_for(code)
        q, absmax = _global_call(A, code, table, False, lookup, bool(interpret))
    return q, QuantState(absmax, code, None, jnp.float32, A.shape)


def dequantize(q: jax.Array, state: QuantState, *, interpret: bool = False) -> jax.Array:
    """float32 code[q] * absmax for a globally quantized tensor (q's shape)."""
    _check_state(q, state, blockwise=False)
    if q.size == 0:
        return jnp.zeros(q.shape, jnp.float32)
    return _dequant_call(q, state.absmax, state.code, None, np.dtype(np.float32), bool(interpret))


def fake_quant_global(A: jax.Array, code: jax.Array, *, interpret: bool = False) -> jax.Array:
    """`dequantize(*quantize(A, code))` cast to A's dtype, the kernel part in one pass."""
    _check_input(A, code)
    if A.size == 0:
        return jnp.zeros(A.shape, A.dtype)
    table, lookup = _table_for(code)
    return _global_call(A, code, table, True, lookup, bool(interpret))[0]


# ----------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------


def _too_large(*args) -> str | None:
    x = args[0]
    size = math.prod(getattr(x, "shape", ()))
    if size > _MAX_ELEMENTS:
        return f"{size} elements exceed the kernels' int32 indexing ({_MAX_ELEMENTS})"
    return None


KERNELS: dict[str, Kernel] = {
    "quantize_blockwise": Kernel(quantize_blockwise, _too_large),
    "dequantize_blockwise": Kernel(dequantize_blockwise, _too_large),
    "fake_quant_blockwise": Kernel(fake_quant_blockwise, _too_large),
    "quantize": Kernel(quantize, _too_large),
    "dequantize": Kernel(dequantize, _too_large),
    "fake_quant_global": Kernel(fake_quant_global, _too_large),
}
