"""Bucket tables: bitsandbytes' nearest-code search as one table lookup.

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
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fp8mm import _host, reference

# Bucket tables over the monotone unsigned key (see monotone_key): 2**shift keys per
# bucket, bucket b holding the keys [b * 2**shift, (b + 1) * 2**shift), so every
# float32 has a bucket and no clipping is needed. Shift 19 is 1/16 binade (8192
# entries, 32 KiB, of which quantization touches the few binades below 1; the fp8
# grids never crowd it), shift 17 is 1/64 binade (for codes that crowd the coarse
# table, such as bitsandbytes' dynamic map).
COARSE, FINE = 19, 17
OFFSET_BITS = 20  # room for an offset up to 2**COARSE (the "never" value)
CROWDED = 1 << (8 + OFFSET_BITS)  # table flag: two or more midpoints in the bucket


def num_buckets(shift: int) -> int:
    return 1 << (32 - shift)


_SIGN = np.int32(-(2**31))
# Keys of -0.0 and of the float just above +0.0 (see monotone_key), both comparing equal to 0.
_NEG_ZERO_KEY, _AFTER_POS_ZERO_KEY = np.int32(0x7FFFFFFF), _SIGN + 1


def monotone_key(bits: jax.Array) -> jax.Array:
    """Monotone key of float32 bits, as the bits of a uint32 held in an int32.

    Unsigned order: flipping every bit of a negative float and the sign bit of a
    positive one turns sign-magnitude order into integer order (-inf is
    0x007FFFFF, -0.0 0x7FFFFFFF, +0.0 0x80000000, +inf 0xFF800000; NaNs lie
    beyond the infinities). One shift and one three-input logic op per element.
    """
    return bits ^ ((bits >> 31) | _SIGN)


def bucket_and_local(key: jax.Array, shift: int) -> tuple[jax.Array, jax.Array]:
    """(table index in [0, num_buckets(shift)), offset of the key inside its bucket)."""
    return lax.shift_right_logical(key, shift), key & ((1 << shift) - 1)


def inf_bucket(shift: int) -> int:
    """The bucket of +inf, whose key is the first of its bucket (the NaNs follow it)."""
    return 0xFF800000 >> shift


def midpoints_finite(code: np.ndarray) -> bool:
    """Whether NaN can be folded into the table: every float32 midpoint finite."""
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.all(np.isfinite((code[:-1] + code[1:]) * np.float32(0.5))))


def bucket_table(
    code: jax.Array | np.ndarray, shift: int = COARSE, fold_nan: bool = False
) -> jax.Array:
    """int32 [num_buckets(shift)]: base | offset << 8 | CROWDED (see the module docstring).

    With `fold_nan` (a concrete code whose midpoints are all finite, so +inf's
    bucket has base 255 and no midpoint) NaN keys look up 0 or 256.
    """
    if fold_nan and not midpoints_finite(np.asarray(code, np.float32)):
        raise ValueError("NaN folding needs a code whose midpoints are all finite")
    return _bucket_table(code, shift, fold_nan)


# Jitted: built op by op (eagerly) the table took ~4 s of host time per codebook.
@functools.partial(jax.jit, static_argnames=("shift", "fold_nan"))
def _bucket_table(code, shift: int, fold_nan: bool) -> jax.Array:
    buckets = num_buckets(shift)
    code = jnp.asarray(code, jnp.float32)
    mids = (code[:-1] + code[1:]) * np.float32(0.5)
    i = jnp.arange(255, dtype=jnp.int32)
    # Does x == m_i pass m_i? The parity rule, except inside runs of equal codes.
    passes_at = reference.bnb_search(mids, code) > i
    bits = lax.bitcast_convert_type(mids, jnp.int32)
    first = monotone_key(bits) + jnp.where(passes_at, 0, 1)
    # -0.0 and +0.0 compare equal but have adjacent keys: a zero midpoint is passed
    # from -0.0's key on (x >= 0) or from the key after +0.0's (x > 0).
    first = jnp.where(mids == 0, jnp.where(passes_at, _NEG_ZERO_KEY, _AFTER_POS_ZERO_KEY), first)
    bucket, local = bucket_and_local(first, shift)
    # Subnormal midpoints compare differently where subnormals are flushed (XLA on
    # a CPU): their buckets always take the search.
    mag = bits & 0x7FFFFFFF
    unsure = (mag > 0) & (mag < 0x00800000)
    # Two sums over [buckets, midpoints] (few fused kernels when built per call): the
    # first packs #midpoints below the bucket, #inside and #unsure inside (each <= 255).
    b = jnp.arange(buckets, dtype=jnp.int32)[:, None]
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
    table = base | (offset << 8) | jnp.where(crowded, CROWDED, 0)
    if fold_nan:
        inf = inf_bucket(shift)
        table = table.at[inf].set(255 | 1 << 8).at[inf + 1 :].set((1 << shift) << 8)
    return table


@dataclasses.dataclass(frozen=True)
class Lookup:
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
def _host_table(code_bytes: bytes, backend: str) -> tuple[np.ndarray, Lookup]:
    del backend  # part of the key: built on that platform, with its float semantics
    code = np.frombuffer(code_bytes, np.float32)
    fold = midpoints_finite(code)
    with jax.ensure_compile_time_eval():
        table = np.asarray(bucket_table(code, COARSE, fold))
        if np.any(table >= CROWDED):
            # Crowded tiles fall back to the search (2.7x slower on an H200 for
            # the dynamic map): the finer table removes most crowding.
            fine = np.asarray(bucket_table(code, FINE, fold))
            return fine, Lookup(FINE, bool(np.any(fine >= CROWDED)), fold)
    return table, Lookup(COARSE, False, fold)


def table_for(code) -> tuple[jax.Array | np.ndarray, Lookup]:
    """(bucket table, its lookup facts): built once per concrete codebook, else in the program.

    Built in the program it costs ~55 us on an H200 (more than the kernel at
    8192x4096), so pass codebooks as numpy/concrete arrays where possible.
    """
    host = _host.concrete_float32(code)
    if host is None:
        return bucket_table(code, COARSE), Lookup(COARSE, True)
    return _host_table(host.tobytes(), _host.platform())


def nearest_code(x: jax.Array, code_ref, table_ref, lookup: Lookup, interpret: bool) -> jax.Array:
    """bitsandbytes' nearest code index of normalised float32 x, modulo 256.

    int32 in [0, 256]: a NaN looked up in a folded table gives 256, which the
    uint8 cast wraps to 0 and the fake-quant code gather masks with `& 255`.
    """
    if interpret:
        # Keep the sign of zero: -0.0 and +0.0 have different keys.
        x = jnp.where(jnp.abs(x) < np.finfo(np.float32).tiny, x * np.float32(0), x)
    bits = lax.bitcast_convert_type(x, jnp.int32)
    bucket, local = bucket_and_local(monotone_key(bits), lookup.shift)
    entry = table_ref[bucket]

    offset = entry >> 8
    if lookup.search:
        offset &= (1 << OFFSET_BITS) - 1  # only this table can hold the crowded flag

    def lookup_index():
        idx = (entry & 255) + (local >= offset).astype(jnp.int32)
        if lookup.nan_folded:
            return idx
        # NaN fails every comparison in bitsandbytes' search and ends at index 0.
        return jnp.where(x != x, 0, idx)

    if lookup.search:
        crowded = jnp.max(entry) >= CROWDED
        return lax.cond(crowded, lambda: reference.bnb_search(x, code_ref), lookup_index)
    return lookup_index()
