"""What the fp8 and SwitchBack matmuls share: the GEMM, the operand checks, the static config."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from fp8mm import _host, dispatch, reference
from fp8mm.dispatch import Impl
from fp8mm.reference import absmax_nan


def matmul(a: jax.Array, b: jax.Array, contract: tuple[int, int], out_dtype) -> jax.Array:
    """2-D product accumulated in float32 and rounded once to out_dtype.

    float32 operands use Precision.HIGHEST: the default GPU precision for
    float32 dots is TF32-like and misses bitsandbytes' true float32 products.

    Args:
      a: [m, k] or [k, m], contracted on axis contract[0].
      b: [n, k] or [k, n], contracted on axis contract[1].
      contract: the contracted axis of a and of b.
      out_dtype: the result's dtype.

    Returns:
      [m, n] in out_dtype.
    """
    dn = (((contract[0],), (contract[1],)), ((), ()))
    out_dtype = jnp.dtype(out_dtype)
    if _host.platform() == "cpu":
        # XLA's CPU runtime lacks some 16-bit x 16-bit -> float32 dot kernels; float32
        # operands give the same products (16-bit values multiply exactly in float32).
        a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    elif a.dtype == b.dtype == out_dtype and out_dtype.itemsize == 2:
        # A 16-bit GEMM accumulates in float32 and rounds once, like torch's; asking
        # XLA for float32 would write (and keep) a float32 product twice the size.
        return jax.lax.dot_general(a, b, dn, preferred_element_type=out_dtype)
    out = jax.lax.dot_general(
        a, b, dn, precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32
    )
    return out.astype(out_dtype)


def as_2d(x: jax.Array) -> jax.Array:
    """[..., k] as [prod(...), k]: PyTorch's matmuls fold the leading axes into rows."""
    return x.reshape(int(np.prod(x.shape[:-1])), x.shape[-1])


def bias_grad(g2: jax.Array, bias: jax.Array | None) -> jax.Array | None:
    """Σ over the rows of g2 [m, n] in float32, in bias's dtype; None without a bias."""
    if bias is None:
        return None
    return jnp.sum(g2.astype(jnp.float32), axis=0).astype(bias.dtype)


def check_inner(A, B, axis: int, layout: str) -> None:
    """Refuses a weight B whose `axis` is not A's last (the contracted features)."""
    if A.shape[-1] != B.shape[axis]:
        raise ValueError(
            f"inner dimensions differ: A is {tuple(A.shape)} and B is {tuple(B.shape)}; "
            f"B must be {layout} with in == A.shape[-1]"
        )


def static_implementation(implementation: Impl) -> Impl:
    """implementation for a static config: None made the current default, a sequence a tuple.

    The configs are static (jit's cache key, the custom VJPs' nondiff
    arguments): resolving the default (`fp8mm.use_implementation`) here keeps an
    eager call inside `use_implementation(...)` from reusing a program compiled
    under another default, and the backward pass from running under whatever
    default holds when it is traced. A list would not hash.
    """
    if implementation is None:
        implementation = dispatch.default_implementation()
    if implementation is None or isinstance(implementation, str):
        return implementation
    return tuple(implementation)


def mesh_absmax(x: jax.Array, axis_names: tuple[str, ...], axis=None) -> jax.Array | None:
    """x's absmax (along `axis`, None: the whole tensor) across the shards of `shard_map`.

    Each shard's NaN-propagating absmax (`reference.absmax_nan`), combined by
    `pmax_absmax` over `axis_names`: what the unsplit tensor's absmax would be when x
    is split over those axes along the reduced dimensions. None off a mesh (the
    primitive then takes its own).
    """
    if not axis_names:
        return None
    return pmax_absmax(absmax_nan(x.astype(jnp.float32), axis), axis_names)


def pmax_absmax(absmax: jax.Array, axis_names: tuple[str, ...]) -> jax.Array:
    """`lax.pmax` over `axis_names` of float32 absmaxes (>= 0 or NaN), NaN kept.

    Taken on the int32 bits: non-negative floats order as their bits do and NaN's
    lie above inf's, so the integer max is exact and keeps a NaN that a float
    all-reduce max (fmaxf-like on some backends) could drop.
    """
    bits = jax.lax.bitcast_convert_type(absmax, jnp.int32)
    return jax.lax.bitcast_convert_type(jax.lax.pmax(bits, axis_names), jnp.float32)


def _shard_index(axis_names: tuple[str, ...]) -> tuple[jax.Array, int]:
    """(this shard's index, the shard count) over `axis_names`, the first axis major (the
    order `shard_map` splits a dimension over a tuple of axes)."""
    index, count = jnp.int32(0), 1
    for name in axis_names:
        size = jax.lax.axis_size(name)
        index, count = index * size + jax.lax.axis_index(name), count * size
    return index, count


def row_axes(axis_names: tuple[str, ...], feature_axes: tuple[str, ...]) -> tuple[str, ...]:
    """Those of an op's split axes that split A's rows: the ones not splitting the output
    features (`feature_axes`)."""
    return tuple(a for a in axis_names if a not in feature_axes)


def split_block_absmax(
    x2: jax.Array,
    blocksize: int,
    column_axes: tuple[str, ...],
    row_axes: tuple[str, ...] = (),
) -> tuple[int, jax.Array | None]:
    """Blockwise statistics of a tensor split over devices.

    x2 [T, w] is one shard of X [T * row shards, w * column shards] (inside
    `jax.shard_map`: rows split over `row_axes`, columns over `column_axes`, the first
    axis major), and X is quantized blockwise in blocks of `blocksize` elements of its
    row-major flattening. Where every shard holds whole blocks of X (blocksize
    divides w; or X's columns unsplit and the blocks of each row shard its own) the
    shard's own blocks are X's: (blocksize, None), no collective. Otherwise blocks span
    shards (and maybe rows): x2 is cut into pieces of p = gcd(w, blocksize) elements,
    each inside one block of X; every shard scatters its pieces' absmax into X's
    block count (of its row shard's blocks when those stay within it, of all of X's
    when they straddle row shards), a pmax over the axes involved gives each block's
    absmax, and each piece takes its block's. Quantizing x2 blockwise with blocksize p
    and that absmax gives X's codes exactly (the per-element arithmetic is the same;
    only the absmax comes from outside).

    Args:
      x2: float [T, w], this shard.
      blocksize: X's block size.
      column_axes: the mesh axes X's columns are split over.
      row_axes: the mesh axes X's rows are split over.

    Returns:
      (p, absmax float32 [T * w / p] or None).
    """
    rows, w = x2.shape
    if x2.size == 0 or w % blocksize == 0:
        return blocksize, None
    j, col_shards = _shard_index(column_axes)
    b, row_shards = _shard_index(row_axes)
    n = w * col_shards
    across_rows = row_shards > 1 and (rows * n) % blocksize != 0
    if col_shards == 1 and not across_rows:
        return blocksize, None
    p = math.gcd(w, blocksize)
    pieces = absmax_nan(x2.astype(jnp.float32).reshape(-1, p), axis=1)
    # Each piece's position in X (in X's row shard when blocks stay within it) in units
    # of p (int32: X is below 2**31 elements), and the block holding it.
    first, total, axes = (b * rows, rows * row_shards, (*row_axes, *column_axes))
    if not across_rows:
        first, total, axes = (0, rows, column_axes)
    unit = (
        (first + jnp.arange(rows, dtype=jnp.int32))[:, None] * (n // p)
        + j * (w // p)
        + jnp.arange(w // p, dtype=jnp.int32)[None, :]
    )
    block = (unit // (blocksize // p)).reshape(-1)
    nblocks = -(-total * n // blocksize)
    # Absmaxes are >= 0 or NaN: as int32 bits they order as floats and keep NaN on top.
    bits = jax.lax.bitcast_convert_type(pieces, jnp.int32)
    partial = jnp.zeros((nblocks,), jnp.int32).at[block].max(bits)
    whole = jax.lax.bitcast_convert_type(jax.lax.pmax(partial, axes), jnp.float32)
    return p, whole[block]


def blockwise_codes(x2: jax.Array, code, piece: int, absmax: jax.Array, implementation: Impl):
    """uint8 codes of x2 [rows, w] quantized in blocks of `piece` (dividing w) with the
    given float32 absmax [rows * w / piece] (`split_block_absmax`'s pieces).

    Pieces below the kernels' smallest block (32 elements; shards whose width is no
    multiple of 32) are quantized by the reference's arithmetic, the same codes.
    """
    if piece >= 32:
        quantize = dispatch.REGISTRY["quantize_blockwise"]
        return quantize(x2, code, piece, absmax, implementation=implementation)[0]
    blocks = x2.astype(jnp.float32).reshape(-1, piece)
    q = reference.nearest_code(reference.normalise_blocks(blocks, absmax), jnp.asarray(code))
    return q.reshape(x2.shape)
