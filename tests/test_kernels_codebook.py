"""The codebook Pallas kernels against `fp8mm.reference`, bit for bit.

On CPU the kernels run in Pallas interpret mode (sizes kept small for CI); on a
GPU the same tests run compiled, plus a few large shapes. Every comparison is
on the bits (codes, absmax, dequantized values; -0.0 differs from 0.0), with
NaN matching NaN. The oracle always runs on the CPU backend: XLA on a GPU
computes the reference's 1/absmax with an approximate reciprocal (measured on an
H100), which moves ~0.03% of bf16 codes by one. XLA on CPU flushes subnormals,
so the data stays clear of them except in `test_subnormal_values`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fp8mm
from fp8mm import codebooks, dispatch, reference
from fp8mm.pallas import _codebook_table as tbl
from fp8mm.pallas import codebook as cb
from fp8mm.state import QuantState
from tests.helpers import INTERPRET, ON_GPU, assert_bits_equal, heavy, ref

gpu_only = pytest.mark.skipif(not ON_GPU, reason="large shapes run compiled on a GPU only")

E4M3 = codebooks.e4m3_code()
E5M2 = codebooks.e5m2_code()
DYNAMIC = codebooks.create_dynamic_map()


def _random_code(seed: int, duplicates: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    code = rng.uniform(-1.0, 1.0, 256)
    if duplicates:
        code = np.round(code * 20) / 20  # ~40 distinct values, most repeated
    code[-1] = 1.0
    return np.sort(code).astype(np.float32)


CODES = {
    "e4m3": E4M3,
    "e5m2": E5M2,
    "dynamic": DYNAMIC,
    "random": _random_code(1),
    "duplicates": _random_code(2, duplicates=True),
}


# Student-t (df 1.5) values over several scales: a few huge ones per block.
heavy_tailed = functools.partial(heavy, df=1.5, decades=(-3, 3))


def with_specials(A: jax.Array, blocksize: int) -> jax.Array:
    """Zeroes the first block, and puts inf/NaN/-0/tiny values into later elements."""
    flat = np.array(A.reshape(-1).astype(jnp.float32))
    n = flat.size
    flat[: min(blocksize, n)] = 0.0
    specials = [np.nan, np.inf, -np.inf, -0.0, 1e-30, -3e-20, np.nan]
    for k, v in enumerate(specials):
        i = blocksize + 3 + k * (blocksize + 1)
        if i < n:
            flat[i] = v
    return jnp.asarray(flat, A.dtype).reshape(A.shape)


def check_blockwise(A, code, blocksize, on_cpu: bool = True) -> None:
    code = jnp.asarray(code)
    q, state = cb.quantize_blockwise(A, code, blocksize, interpret=INTERPRET)
    q_ref, state_ref = ref("quantize_blockwise", A, code, blocksize, on_cpu=on_cpu)
    assert_bits_equal(q, q_ref, "codes")
    assert_bits_equal(state.absmax, state_ref.absmax, "absmax")
    assert (state.blocksize, state.dtype, state.shape) == (
        state_ref.blocksize,
        state_ref.dtype,
        state_ref.shape,
    )
    deq = cb.dequantize_blockwise(q_ref, state_ref, interpret=INTERPRET)
    deq_ref = ref("dequantize_blockwise", q_ref, state_ref, on_cpu=on_cpu)
    assert_bits_equal(deq, deq_ref, "dequantized")
    fake = cb.fake_quant_blockwise(A, code, blocksize, interpret=INTERPRET)
    fake_ref = ref("fake_quant_blockwise", A, code, blocksize, on_cpu=on_cpu)
    assert_bits_equal(fake, fake_ref, "fake quant")


def check_global(A, code) -> None:
    code = jnp.asarray(code)
    q, state = cb.quantize(A, code, interpret=INTERPRET)
    q_ref, state_ref = ref("quantize", A, code)
    assert_bits_equal(q, q_ref, "codes")
    assert_bits_equal(state.absmax, state_ref.absmax, "absmax")
    assert (state.blocksize, state.dtype, state.shape) == (None, np.float32, A.shape)
    deq = cb.dequantize(q_ref, state_ref, interpret=INTERPRET)
    assert_bits_equal(deq, ref("dequantize", q_ref, state_ref), "dequantized")
    fake = cb.fake_quant_global(A, code, interpret=INTERPRET)
    assert_bits_equal(fake, ref("fake_quant_global", A, code), "fake quant")


# Every blocksize once, each dtype, odd sizes, partial last blocks, 1-D to 3-D.
BLOCKWISE_CASES = [
    (jnp.float32, (37, 101), 32),
    (jnp.bfloat16, (3, 5, 67), 64),
    (jnp.float16, (1000,), 128),
    (jnp.float32, (2, 300), 256),
    (jnp.bfloat16, (515,), 512),
    (jnp.float16, (4, 513), 1024),
    (jnp.float32, (2049,), 2048),
    (jnp.bfloat16, (3, 4097), 4096),
]


@pytest.mark.parametrize(("dtype", "shape", "blocksize"), BLOCKWISE_CASES)
def test_blockwise_matches_reference(dtype, shape, blocksize):
    A = with_specials(heavy_tailed(shape, dtype, seed=blocksize), blocksize)
    check_blockwise(A, E4M3, blocksize)


@pytest.fixture()
def loud_padding(monkeypatch):
    """Interpret mode pads out-of-bounds float loads with the dtype's largest value.

    Its default NaN padding is dropped by the NaN-ignoring absmax, so a missing
    load mask would go unseen on the CPU; a huge finite value becomes the block's
    absmax and moves every code of the block.
    """
    from jax._src.pallas import primitives

    default = primitives.uninitialized_value

    def loud(shape, dtype):
        if jnp.issubdtype(dtype, jnp.floating):
            return jnp.full(shape, jnp.finfo(dtype).max, dtype)
        return default(shape, dtype)

    monkeypatch.setattr(primitives, "uninitialized_value", loud)
    jax.clear_caches()  # programs traced with the default padding must not be reused
    yield
    jax.clear_caches()


# Multi-tile programs (TileConfig.steps): spans covered exactly (no masks), the
# last program holding one real tile and three empty ones, and a span cut mid-tile.
@pytest.mark.usefixtures("loud_padding")
@pytest.mark.parametrize("n", [3 * 8192, 8192 + 2048, 8192 + 2048 + 300])
def test_blockwise_multi_tile_programs(n):
    assert cb.choose_tiles(256).steps == 4 and cb.choose_tiles(256).span == 8192
    A = with_specials(heavy_tailed((n,), jnp.bfloat16, seed=n), 256)
    check_blockwise(A, E4M3, 256)


@pytest.mark.usefixtures("loud_padding")
@pytest.mark.parametrize("steps", [2, 4])
def test_blockwise_steps_on_any_tile(steps):
    """A prefetching loop over 4096-blocks (not the heuristic's choice) is exact too."""
    A = with_specials(heavy_tailed((5, 4096 + 100), jnp.float32, seed=steps), 4096)
    cfg = cb.TileConfig(1, 4096, 4, steps=steps)
    q, state = cb.quantize_blockwise(A, E4M3, 4096, config=cfg, interpret=INTERPRET)
    with pytest.raises(ValueError, match="cols"):
        cb.quantize_blockwise(A, E4M3, 256, config=cfg, interpret=INTERPRET)
    q_ref, state_ref = ref("quantize_blockwise", A, jnp.asarray(E4M3), 4096)
    assert_bits_equal(q, q_ref, "codes")
    assert_bits_equal(state.absmax, state_ref.absmax, "absmax")
    fake = cb.fake_quant_blockwise(A, E4M3, 4096, config=cfg, interpret=INTERPRET)
    assert_bits_equal(fake, ref("fake_quant_blockwise", A, jnp.asarray(E4M3), 4096), "fake")


def _given_absmax(n: int, blocksize: int, seed: int) -> jax.Array:
    """Block absmaxes from outside (a pmax over shards): larger than the blocks' own, and
    the edge values 0, NaN, inf, huge (>= 2**126, the prescaled path) and tiny."""
    rng = np.random.default_rng(seed)
    absmax = np.abs(rng.standard_normal(-(-n // blocksize))).astype(np.float32) * 8 + 1
    for i, v in enumerate([0.0, np.nan, np.inf, 2.0**127, 1e-30]):
        if i < absmax.size:
            absmax[i] = v
    return jnp.asarray(absmax)


# Blocks quantized with a given absmax (the pieces of blocks split over devices): the
# heuristic tiles, a multi-tile prefetching program cut mid-span, a partial last block.
@pytest.mark.usefixtures("loud_padding")
@pytest.mark.parametrize(
    ("dtype", "n", "blocksize", "steps"),
    [
        (jnp.float32, 37 * 32 + 5, 32, None),
        (jnp.bfloat16, 8192 + 2048 + 300, 256, None),
        (jnp.float16, 3 * 4096 + 100, 4096, 2),
    ],
)
def test_blockwise_given_absmax(dtype, n, blocksize, steps):
    A = heavy_tailed((n,), dtype, seed=n)
    absmax = _given_absmax(n, blocksize, seed=n)
    # The block given the huge absmax 2**127 holds values scaled up with it, so x / absmax
    # stays normal: the CPU oracle flushes subnormals and a compiled kernel keeps them, as
    # CUDA does (module docstring; on an H200 the ordinary values there gave the -0.0 code
    # where the flushed oracle gives +0.0). float16 holds no such values: its huge entry
    # becomes 2**16, above every float16 (a pmax never exceeds the dtype's range).
    huge = slice(3 * blocksize, 4 * blocksize)
    if dtype == jnp.float16:
        absmax = absmax.at[3].set(2.0**16)
    else:
        A = A.at[huge].set((A[huge].astype(jnp.float32) * 2.0**100).astype(dtype))
    code = jnp.asarray(E5M2)
    cfg = None if steps is None else cb.TileConfig(1, blocksize, 4, steps=steps)
    q, state = cb.quantize_blockwise(A, code, blocksize, absmax, config=cfg, interpret=INTERPRET)
    q_ref, state_ref = ref("quantize_blockwise", A, code, blocksize, absmax)
    assert_bits_equal(q, q_ref, "codes")
    assert_bits_equal(state.absmax, absmax, "absmax")
    assert_bits_equal(state_ref.absmax, absmax, "reference absmax")
    fake = cb.fake_quant_blockwise(A, code, blocksize, absmax, config=cfg, interpret=INTERPRET)
    assert_bits_equal(fake, ref("fake_quant_blockwise", A, code, blocksize, absmax), "fake")
    # A block's own absmax given back gives the default path's bits.
    own = ref("quantize_blockwise", A, code, blocksize)[1].absmax
    fake_own = cb.fake_quant_blockwise(A, code, blocksize, own, config=cfg, interpret=INTERPRET)
    assert_bits_equal(fake_own, cb.fake_quant_blockwise(A, code, blocksize, interpret=INTERPRET))


def test_tile_config_validation():
    with pytest.raises(ValueError, match="steps"):
        cb.TileConfig(1, 4096, 4, steps=3)
    with pytest.raises(ValueError, match="num_warps"):
        cb.TileConfig(1, 4096, 0)
    with pytest.raises(ValueError, match="2\\*\\*16"):
        cb.TileConfig(1, 4096, 4, steps=16)
    with pytest.raises(ValueError, match="dequantization"):
        cb.choose_tiles(256, fake=True, dequant=True)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_blockwise_all_zero_nan_inf_blocks(dtype):
    blocksize = 64
    flat = np.array(heavy_tailed((7 * blocksize + 5,), jnp.float32, seed=3))
    flat[:blocksize] = 0.0  # all-zero block: absmax 0, codes 0, dequantized -0.0
    flat[blocksize : 2 * blocksize] = np.nan  # all-NaN block: absmax 0
    flat[2 * blocksize + 7] = np.inf  # absmax inf: finite -> 0, inf -> NaN
    flat[3 * blocksize + 1] = -np.inf
    flat[4 * blocksize : 5 * blocksize] *= 1e-30  # tiny block, normal after scaling
    flat[5 * blocksize + 2] = np.nan
    flat[6 * blocksize : 7 * blocksize] = -0.0
    A = jnp.asarray(flat, dtype)
    check_blockwise(A, E5M2, blocksize)


def test_subnormal_values():
    # XLA on CPU flushes subnormals in comparisons (and the kernels follow it in
    # interpret mode); a GPU keeps them. Compare with the reference on the same backend.
    rng = np.random.default_rng(4)
    A = jnp.asarray((rng.standard_normal(300) * 1e-39).astype(np.float32))
    check_blockwise(A, E4M3, 128, on_cpu=False)
    tiny = np.finfo(np.float32).tiny
    vals = [1.0, tiny, -tiny, tiny * 1.5, 1e-39, -1e-40, 1e-45, 0.0, -0.5, 2e-38]
    A = jnp.asarray(np.array(vals * 7, np.float32))  # absmax 1: x / absmax == x
    code = jnp.asarray(E4M3)
    q, _ = cb.quantize(A, code, interpret=INTERPRET)
    assert_bits_equal(q, ref("quantize", A, code, on_cpu=False)[0], "global codes")


def _probe_values(code: np.ndarray, size: int = 4096) -> np.ndarray:
    """Codes, float32 midpoints of neighbours and the floats just beside them, in [-1, 1]."""
    c = code.astype(np.float32)
    mids = ((c[1:] + c[:-1]) * np.float32(0.5)).astype(np.float32)
    pts = np.concatenate([c, mids])
    pts = np.concatenate(
        [pts, np.nextafter(pts, np.float32(np.inf)), np.nextafter(pts, np.float32(-np.inf))]
    )
    rng = np.random.default_rng(5)
    extra = np.array([1.0, -1.0, 0.0, -0.0, np.nan, 1e-30, -1e-30], np.float32)
    tiny = np.finfo(np.float32).tiny  # no subnormals: the CPU oracle flushes them
    pts = pts[(np.abs(pts) <= 1) & ((pts == 0) | (np.abs(pts) >= tiny))]
    pts = np.concatenate([extra, pts]).astype(np.float32)
    rest = rng.uniform(-1, 1, size - pts.size).astype(np.float32)
    return np.concatenate([pts, rest])[:size]


@pytest.mark.parametrize("name", list(CODES))
def test_nearest_code_exact_on_midpoints(name):
    """Global and blockwise quantization with absmax exactly 1 probe nearest_code itself."""
    code = CODES[name]
    A = jnp.asarray(_probe_values(code))
    q, _ = cb.quantize(A, jnp.asarray(code), interpret=INTERPRET)
    assert_bits_equal(q, ref("quantize", A, jnp.asarray(code))[0], f"{name} global codes")
    # One block of 4096 holding 1.0: the reciprocal is 1 and the scaling exact.
    q, _ = cb.quantize_blockwise(A, jnp.asarray(code), 4096, interpret=INTERPRET)
    q_ref, _ = ref("quantize_blockwise", A, jnp.asarray(code), 4096)
    assert_bits_equal(q, q_ref, f"{name} blockwise codes")


def test_bucket_table_paths():
    """The fp8 grids take the fast path on the coarse table, the dynamic map on the fine one."""
    for name in ("e4m3", "e5m2"):
        table, lookup = tbl.table_for(CODES[name])
        assert lookup == tbl.Lookup(tbl.COARSE, search=False, nan_folded=True)
        assert table.dtype == np.int32
        assert table.shape == (tbl.num_buckets(tbl.COARSE),)
        assert not np.any(table >= tbl.CROWDED), name
    table, lookup = tbl.table_for(CODES["dynamic"])
    assert lookup == tbl.Lookup(tbl.FINE, search=False, nan_folded=True)
    assert table.shape == (tbl.num_buckets(tbl.FINE),)
    assert not np.any(table >= tbl.CROWDED)
    for name in ("random", "duplicates"):
        table, lookup = tbl.table_for(CODES[name])
        assert np.any(np.asarray(table) >= tbl.CROWDED) and lookup.search, name


@pytest.mark.parametrize("shift", [19, 17])
def test_bucket_table_counts_every_midpoint(shift):
    """Bases step by the midpoints between buckets; with the in-bucket offsets they add to 255."""
    table = np.asarray(tbl.bucket_table(jnp.asarray(CODES["e4m3"]), shift)).astype(np.int64)
    base = table & 255
    has = ((table >> 8) & ((1 << tbl.OFFSET_BITS) - 1)) != (1 << shift)
    assert base[0] == 0 and np.all(np.diff(base) == has[:-1])
    assert base[-1] + has[-1] == 255 and has.sum() == 255


# float32 bit patterns around the infinities: +-inf, the first and last NaN of
# +inf's coarse bucket (signalling, unreachable through arithmetic, which quiets them),
# quiet NaNs of both signs and the largest finite floats.
_SPECIAL_BITS = np.array(
    [
        0x7F800000,
        0xFF800000,
        0x7F800001,
        0x7F87FFFF,
        0x7F880000,
        0x7FC00000,
        0x7FFFFFFF,
        0xFF800001,
        0xFFC00000,
        0xFFFFFFFF,
        0x7F7FFFFF,
        0xFF7FFFFF,
        0x00000000,
        0x80000000,
    ],
    np.uint32,
)


@pytest.mark.parametrize("name", ["e4m3", "dynamic", "random"])
def test_nan_folded_into_the_table(name):
    """A folded table looks NaN up as 0 or 256 (0 modulo 256); +inf and -inf as the search does."""
    code = CODES[name]
    table, lookup = tbl.table_for(code)
    assert lookup.nan_folded
    x = jnp.asarray(_SPECIAL_BITS.view(np.float32))
    idx = np.asarray(tbl.nearest_code(x, jnp.asarray(code), jnp.asarray(table), lookup, True))
    want = np.asarray(reference.bnb_search(x, jnp.asarray(code)))
    np.testing.assert_array_equal(idx & 255, want)
    assert set(np.unique(idx[np.isnan(np.asarray(x))])) <= {0, 256}
    # Only +inf's bucket and the NaN buckets above it differ from the plain table.
    with jax.ensure_compile_time_eval():
        plain = np.asarray(tbl.bucket_table(code, lookup.shift, fold_nan=False))
    inf = tbl.inf_bucket(lookup.shift)
    np.testing.assert_array_equal(table[:inf], plain[:inf])
    assert table[inf] == 255 | 1 << 8 and plain[inf] & 255 == 255
    assert np.all(table[inf + 1 :] == (1 << lookup.shift) << 8)


def test_unfoldable_code_keeps_the_nan_test():
    """A code whose top two entries overflow their midpoint is not folded."""
    code = np.sort(np.random.default_rng(9).uniform(-1, 1, 256)).astype(np.float32)
    code[-2:] = [np.float32(2.5e38), np.float32(3e38)]
    table, lookup = tbl.table_for(code)
    assert not lookup.nan_folded
    with pytest.raises(ValueError, match="finite"):
        tbl.bucket_table(code, tbl.COARSE, fold_nan=True)
    x = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.5, 3e38, -1.0, 0.0], np.float32)
    X = jnp.asarray(np.tile(x, 8).reshape(1, -1))
    want = ref("quantize", X, jnp.asarray(code))[0]
    assert_bits_equal(cb.quantize(X, code, interpret=INTERPRET)[0], want, "global")


def test_long_run_of_equal_codes():
    """A short code padded to 256 entries with one value crowds buckets with many midpoints."""
    rng = np.random.default_rng(5)
    v = np.float32(0.3)
    code = np.sort(np.concatenate([rng.uniform(-1, 1, 128), np.full(128, v)])).astype(np.float32)
    x = np.full((1, 64), 0.25, np.float32)
    x[0, 0] = 1.0
    x[0, 1:40] = np.nextafter(v, np.float32(1)) + np.arange(39, dtype=np.float32) * 1e-4
    X = jnp.asarray(x)
    want = ref("quantize_blockwise", X, jnp.asarray(code), 64)[0]
    assert_bits_equal(cb.quantize_blockwise(X, code, 64, interpret=INTERPRET)[0], want, "host")
    traced = jax.jit(lambda a, c: cb.quantize_blockwise(a, c, 64, interpret=INTERPRET)[0])
    assert_bits_equal(traced(X, jnp.asarray(code)), want, "traced")


@pytest.mark.parametrize("zeros", [(), (-0.0, 0.0), (0.0, -0.0), (0.0, 0.0, 0.0)])
@pytest.mark.parametrize("negatives", [126, 127])
def test_zero_midpoints(zeros, negatives):
    """Midpoints equal to zero: -0.0 and +0.0 have different keys but compare equal.

    Magnitudes 1/8 binade apart (no crowding, so the table alone decides) with a
    symmetric pair around zero, or zeros between them; both parities of the
    zero midpoint's index (even: x > 0 passes it, odd: x >= 0 does, so -0.0 too).
    """
    mags = np.float32(2.0) ** (np.arange(200, dtype=np.float32) / 8 - 24)
    pos = 256 - negatives - len(zeros)
    code = np.concatenate([-mags[:negatives][::-1], np.array(zeros, np.float32), mags[:pos]])
    code = code.astype(np.float32)
    _, lookup = tbl.table_for(code)
    assert lookup.search == (len(zeros) > 2)  # two zero midpoints share a bucket
    tiny = np.finfo(np.float32).tiny
    vals = np.array([1.0, -0.0, 0.0, tiny, -tiny, 1e-30, -1e-30, 0.5, -0.5], np.float32)
    X = jnp.asarray(np.tile(vals, 8).reshape(1, -1))
    want = ref("quantize", X, jnp.asarray(code))[0]
    assert_bits_equal(cb.quantize(X, code, interpret=INTERPRET)[0], want, "global")
    want = ref("quantize_blockwise", X, jnp.asarray(code), 64)[0]
    assert_bits_equal(cb.quantize_blockwise(X, code, 64, interpret=INTERPRET)[0], want, "blocks")


def test_traced_code_builds_the_table_in_the_program():
    x = jnp.asarray(np.random.default_rng(3).standard_normal((4, 256)), jnp.float32)
    for name in ("e4m3", "dynamic"):
        code = jnp.asarray(CODES[name])
        traced = jax.jit(lambda x, c: cb.fake_quant_blockwise(x, c, 256, interpret=INTERPRET))
        assert_bits_equal(
            traced(x, code), cb.fake_quant_blockwise(x, code, 256, interpret=INTERPRET), name
        )


GLOBAL_CASES = [
    (jnp.float32, (37, 101)),
    (jnp.bfloat16, (3, 5, 67)),
    (jnp.float16, (1000,)),
]


@pytest.mark.parametrize(("dtype", "shape"), GLOBAL_CASES)
def test_global_matches_reference(dtype, shape):
    A = heavy_tailed(shape, dtype, seed=7)
    flat = np.array(A.reshape(-1).astype(jnp.float32))
    flat[[3, 50, 51]] = [np.nan, -0.0, 0.0]
    check_global(jnp.asarray(flat, dtype).reshape(shape), E4M3)


def test_global_all_zero_and_inf():
    shape = (37, 101)
    check_global(jnp.zeros(shape, jnp.float32), E4M3)  # 0/0 = NaN -> code 0
    A = np.array(heavy_tailed(shape, jnp.float32, seed=8))
    A[1, 2] = -np.inf  # absmax inf: finite / inf = 0, inf / inf = NaN
    check_global(jnp.asarray(A), E5M2)


def test_under_jit_with_traced_code():
    A = heavy_tailed((37, 101), jnp.float32, seed=9)

    @jax.jit
    def f(A, code):
        q, state = cb.quantize_blockwise(A, code, 32, interpret=INTERPRET)
        return q, state.absmax, cb.fake_quant_blockwise(A, code, 32, interpret=INTERPRET)

    q, absmax, fake = f(A, jnp.asarray(DYNAMIC))
    q_ref, state_ref = ref("quantize_blockwise", A, jnp.asarray(DYNAMIC), 32)
    assert_bits_equal(q, q_ref, "codes")
    assert_bits_equal(absmax, state_ref.absmax, "absmax")
    assert_bits_equal(fake, ref("fake_quant_blockwise", A, jnp.asarray(DYNAMIC), 32), "fake")


@pytest.mark.parametrize("shape", [(0,), (3, 0, 5)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_zero_size(shape, dtype):
    A = jnp.zeros(shape, dtype)
    code = jnp.asarray(E4M3)
    q, state = cb.quantize_blockwise(A, code, 64, interpret=INTERPRET)
    q_ref, state_ref = ref("quantize_blockwise", A, code, 64)
    assert_bits_equal(q, q_ref)
    assert_bits_equal(state.absmax, state_ref.absmax)
    assert_bits_equal(
        cb.dequantize_blockwise(q, state, interpret=INTERPRET),
        ref("dequantize_blockwise", q_ref, state_ref),
    )
    assert_bits_equal(
        cb.fake_quant_blockwise(A, code, 64, interpret=INTERPRET),
        ref("fake_quant_blockwise", A, code, 64),
    )
    q, state = cb.quantize(A, code, interpret=INTERPRET)
    q_ref, state_ref = ref("quantize", A, code)
    assert_bits_equal(q, q_ref)
    assert_bits_equal(state.absmax, state_ref.absmax)
    assert_bits_equal(
        cb.dequantize(q, state, interpret=INTERPRET), ref("dequantize", q_ref, state_ref)
    )
    assert_bits_equal(
        cb.fake_quant_global(A, code, interpret=INTERPRET), ref("fake_quant_global", A, code)
    )


def test_argument_validation():
    """Bad arguments fail in the public functions, before any kernel is chosen."""
    A = jnp.ones((4, 8), jnp.float32)
    code = jnp.asarray(E4M3)
    with pytest.raises(TypeError, match="int32"):
        fp8mm.quantize_blockwise(
            jnp.ones((4, 8), jnp.int32), code, blocksize=64, implementation="pallas"
        )
    with pytest.raises(ValueError, match="48"):
        fp8mm.fake_quant_blockwise(A, code, 48, implementation="pallas")
    with pytest.raises(TypeError, match="blocksize"):
        fp8mm.quantize_blockwise(A, code, blocksize=64.0, implementation="pallas")
    with pytest.raises(ValueError, match="code"):
        fp8mm.quantize(A, code[:128], implementation="pallas")
    with pytest.raises(TypeError, match="code"):
        fp8mm.fake_quant_global(A, code.astype(jnp.float16), implementation="pallas")
    for bad_value in (np.inf, np.nan):
        bad = np.array(E4M3)
        bad[-1] = bad_value
        with pytest.raises(ValueError, match=r"finite.*index 255"):
            fp8mm.quantize_blockwise(A, bad, blocksize=64, implementation="pallas")
    q = jnp.zeros((4, 8), jnp.uint8)
    blockwise = QuantState(jnp.ones((1,)), code, 64, jnp.float32, (4, 8))
    with pytest.raises(ValueError, match="shape"):
        fp8mm.dequantize_blockwise(jnp.zeros((4, 9), jnp.uint8), blockwise, implementation="pallas")
    with pytest.raises(TypeError, match="uint8"):
        fp8mm.dequantize_blockwise(q.astype(jnp.int8), blockwise, implementation="pallas")
    with pytest.raises(ValueError, match="blocksize"):
        fp8mm.dequantize(q, blockwise, implementation="pallas")
    with pytest.raises(TypeError, match="QuantState"):
        fp8mm.dequantize(q, (jnp.ones(()), code), implementation="pallas")


def test_kernel_registry():
    names = {
        "quantize_blockwise",
        "dequantize_blockwise",
        "fake_quant_blockwise",
        "quantize",
        "dequantize",
        "fake_quant_global",
    }
    for name in names:
        spec = dispatch.REGISTRY[name]
        assert spec.implementations == ("xla", "pallas_triton")
        assert spec.kernels[0].module == "fp8mm.pallas.codebook"
        assert callable(getattr(cb, name)) and callable(getattr(cb, f"supported_{name}"))
    A = jnp.ones((4, 8), jnp.float32)
    assert cb.supported_fake_quant_blockwise(A, jnp.asarray(E4M3), 64) is None
    assert "int32 indexing" in cb.supported_quantize(jax.ShapeDtypeStruct((2**31,), A.dtype), E4M3)


def test_tile_search_space():
    for fake, dequant in ((False, False), (True, False), (False, True)):
        for blocksize in (None, 64, 256, 4096):
            space = cb.tile_search_space(blocksize, fake, dequant)
            assert cb.choose_tiles(blocksize, fake, dequant) in space and len(space) > 1
            assert all(c.cols == (blocksize or 1024) for c in space)


def test_tile_heuristic():
    for fake, dequant in ((False, False), (True, False), (False, True)):
        for blocksize in (None, *(2**i for i in range(5, 13))):
            cfg = cb.choose_tiles(blocksize, fake, dequant)
            assert cfg.cols == (blocksize or cfg.cols)
            assert cfg.size >= 2048 and cfg.size & (cfg.size - 1) == 0
            assert 4 <= cfg.num_warps <= 16
    assert cb.choose_tiles(256, fake=True) == cb.TileConfig(8, 256, 4, steps=4)
    assert cb.choose_tiles(1024, fake=True) == cb.TileConfig(2, 1024, 4, steps=4)
    assert cb.choose_tiles(256) == cb.TileConfig(8, 256, 4, steps=4)
    assert cb.choose_tiles(4096, fake=True) == cb.TileConfig(1, 4096, 4)
    assert cb.choose_tiles(4096) == cb.TileConfig(1, 4096, 4)
    assert cb.choose_tiles(4096, dequant=True) == cb.TileConfig(1, 4096, 8)
    assert cb.choose_tiles(None) == cb.TileConfig(2, 1024, 4)


# ----------------------------------------------------------------------------
# GPU only: realistic sizes, compiled
# ----------------------------------------------------------------------------


@gpu_only
@pytest.mark.parametrize(("dtype", "blocksize"), [(jnp.bfloat16, 4096), (jnp.bfloat16, 64)])
def test_large_blockwise_gpu(dtype, blocksize):
    A = heavy_tailed((4096, 4096), dtype, seed=11)
    check_blockwise(A, E4M3, blocksize)


@gpu_only
def test_large_float32_odd_gpu():
    A = with_specials(heavy_tailed((1023, 4099), jnp.float32, seed=12), 256)
    check_blockwise(A, E5M2, 256)
    check_blockwise(A, CODES["random"], 1024)


@gpu_only
def test_large_global_gpu():
    check_global(heavy_tailed((4096, 4096), jnp.bfloat16, seed=13), E4M3)
    check_global(heavy_tailed((1000, 999), jnp.float32, seed=14), E5M2)
