"""Property-based tests of the primitives (hypothesis), on every implementation.

Example counts are small in CI (profile "ci"); set HYPOTHESIS_PROFILE=thorough
for a longer search. Interpreted Pallas (the CPU) checks each property on one
representative example instead of a search.
"""

import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fp8mm
from fp8mm import reference
from tests.helpers import interpreted

CODES = {
    "e4m3": np.asarray(fp8mm.e4m3_code()),
    "e5m2": np.asarray(fp8mm.e5m2_code()),
    "dynamic": fp8mm.create_dynamic_map(),
}
DTYPES = {"float32": jnp.float32, "float16": jnp.float16, "bfloat16": jnp.bfloat16}
dims = st.sampled_from([1, 2, 3, 5, 7, 31, 33, 64, 97, 130])


def properties(interpreted_example, **strategies):
    """`@given(**strategies)` for a test whose first argument is the `implementation` fixture.

    The search runs inside the test, once per implementation; where the kernels
    are interpreted (slow) the test runs on `interpreted_example` (keyword
    arguments) alone.
    """

    def decorate(body):
        def test(implementation):
            if interpreted(implementation):
                return body(implementation, **interpreted_example)
            given(**strategies)(lambda **kw: body(implementation, **kw))()

        test.__name__, test.__doc__ = body.__name__, body.__doc__
        return test

    return decorate


def make_array(shape, dtype: str, scale: float, seed: int, sparse: bool):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32) * scale
    if sparse:  # a few huge values and zeros, as after a ReLU
        x[rng.random(shape) < 0.01] *= 50
        x[rng.random(shape) < 0.2] = 0
    if dtype == "float16":
        x = np.clip(x, -60000, 60000)
    return jnp.asarray(x).astype(DTYPES[dtype])


@st.composite
def arrays(draw, max_ndim=3):
    shape = tuple(draw(st.lists(dims, min_size=1, max_size=max_ndim)))
    if np.prod(shape) > 20000:
        shape = shape[:1]
    dtype = draw(st.sampled_from(sorted(DTYPES)))
    scale = draw(st.sampled_from([1e-6, 1e-3, 1.0, 30.0, 1e4]))
    seed = draw(st.integers(0, 2**31 - 1))
    return make_array(shape, dtype, scale, seed, draw(st.booleans()))


@properties(
    dict(A=make_array((5, 130), "float32", 30.0, 1, True), code="e4m3", bs=64),
    A=arrays(),
    code=st.sampled_from(sorted(CODES)),
    bs=st.sampled_from([32, 64, 256, 4096]),
)
def test_blockwise_on_grid_and_within_half_step(implementation, A, code, bs):
    c = CODES[code]
    impl = dict(implementation=implementation)
    q, state = fp8mm.quantize_blockwise(A, jnp.asarray(c), blocksize=bs, **impl)
    x = np.asarray(A.astype(jnp.float32)).ravel()
    absmax = np.repeat(np.asarray(state.absmax), bs)[: x.size]
    # absmax is the block's max |x|
    blocks = np.pad(np.abs(x), (0, -x.size % bs)).reshape(-1, bs).max(1)
    np.testing.assert_array_equal(np.asarray(state.absmax), blocks)
    deq = np.asarray(fp8mm.dequantize_blockwise(q, state, **impl).astype(jnp.float32)).ravel()
    grid = c[np.asarray(q).ravel().astype(int)] * absmax
    np.testing.assert_array_equal(deq, np.asarray(jnp.asarray(grid).astype(A.dtype), np.float32))
    # nearest code: |x/absmax - code[q]| is at most half the gap to the next code
    with np.errstate(invalid="ignore", divide="ignore"):
        xn = np.where(absmax > 0, x / absmax, 0.0)
    qi = np.asarray(q).ravel().astype(int)
    gap = np.maximum(
        np.abs(c[np.minimum(qi + 1, 255)] - c[qi]), np.abs(c[qi] - c[np.maximum(qi - 1, 0)])
    )
    ok = absmax > 0
    assert np.all(np.abs(xn - c[qi])[ok] <= gap[ok] / 2 + 1e-6)
    fq = fp8mm.fake_quant_blockwise(A, jnp.asarray(c), bs, **impl)
    np.testing.assert_array_equal(np.asarray(fq, np.float32).ravel(), deq)
    # round trip: requantizing is stable for the symmetric fp8 grids (the dynamic map's
    # negative end is -0.99297, so a negative block max shrinks the absmax there)
    fq2 = fp8mm.fake_quant_blockwise(fq, jnp.asarray(c), bs, **impl)
    if A.dtype == jnp.float32 and code != "dynamic":
        np.testing.assert_array_equal(np.asarray(fq2), np.asarray(fq))


@properties(
    dict(A=make_array((31, 33), "bfloat16", 1e4, 2, False), code="e5m2"),
    A=arrays(),
    code=st.sampled_from(sorted(CODES)),
)
def test_global_properties(implementation, A, code):
    c = CODES[code]
    impl = dict(implementation=implementation)
    q, state = fp8mm.quantize(A, jnp.asarray(c), **impl)
    x = np.asarray(A.astype(jnp.float32))
    assert float(state.absmax) == float(np.abs(x).max())
    deq = np.asarray(fp8mm.dequantize(q, state, **impl))
    np.testing.assert_array_equal(deq, c[np.asarray(q).astype(int)] * np.float32(state.absmax))
    if float(state.absmax) > 0:
        err = np.abs(deq - x) / float(state.absmax)
        assert err.max() <= np.max(np.diff(c)) / 2 + 1e-6
    fq = fp8mm.fake_quant_global(A, jnp.asarray(c), **impl)
    assert fq.dtype == A.dtype and fq.shape == A.shape


@properties(
    dict(A=make_array((33, 64), "float16", 1.0, 3, True), thr=3.0),
    A=arrays(),
    thr=st.sampled_from([0.0, 0.5, 3.0]),
)
def test_int8_properties(implementation, A, thr):
    if A.ndim < 2:
        A = A[None]
    CA, CAt, rs, cs, cols = fp8mm.int8_double_quant(A, thr, implementation=implementation)
    # bitsandbytes' float16 values, except where the cast overflows (docs/exactness.md)
    a16 = np.asarray(reference.f16_or_wide(A)).reshape(-1, A.shape[-1])
    ca = np.asarray(CA).reshape(a16.shape).astype(int)
    for codes in (ca, np.asarray(CAt).astype(int)):  # int: np.abs(int8(-128)) is -128
        assert codes.size == 0 or (codes.min() >= -127 and codes.max() <= 127)
    out = np.abs(a16) >= thr if thr > 0 else np.zeros(a16.shape, bool)
    np.testing.assert_array_equal(np.asarray(cols), out.any(0))
    np.testing.assert_array_equal(
        np.asarray(rs).ravel(), np.where(out, 0, np.abs(a16)).max(1).astype(np.float32)
    )
    assert np.all(ca[:, out.any(0)] == 0)
    # dequantized rows are within half a step (row_absmax/127/2) of the input
    r = np.asarray(rs).reshape(-1, 1)
    keep = ~out.any(0)[None, :] & (r > 0)
    err = np.abs(ca * r / 127.0 - a16)
    assert np.all(
        err[np.broadcast_to(keep, err.shape)]
        <= (r / 127.0 * 0.5 + 1e-3 * r)[np.broadcast_to(keep, err.shape).nonzero()[0]].ravel()
    )


@properties(dict(m=7, n=33, k=130, seed=4), m=dims, n=dims, k=dims, seed=st.integers(0, 2**31 - 1))
def test_int8_matmul_exact(implementation, m, n, k, seed):
    rng = np.random.default_rng(seed)
    A = rng.integers(-127, 128, (m, k), dtype=np.int8)
    B = rng.integers(-127, 128, (n, k), dtype=np.int8)
    acc = fp8mm.int8_linear_matmul(jnp.asarray(A), jnp.asarray(B), implementation=implementation)
    np.testing.assert_array_equal(np.asarray(acc), A.astype(np.int64) @ B.astype(np.int64).T)


@st.composite
def wild_arrays(draw):
    """Heavy tails up to |x| = 1e5 (float16: its range), with NaN and inf sprinkled in."""
    m, k = draw(st.sampled_from([1, 3, 17, 64])), draw(st.sampled_from([1, 5, 64, 130]))
    dtype = draw(st.sampled_from(sorted(DTYPES)))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    x = rng.standard_t(1.5, (m, k)).astype(np.float32) * draw(st.sampled_from([1e-3, 1.0, 1e3]))
    x = np.clip(x, -1e5, 1e5)
    specials = draw(st.sampled_from(["none", "nan", "inf", "both"]))
    hit = rng.random((m, k)) < 0.03
    if specials in ("nan", "both"):
        x[hit & (rng.random((m, k)) < 0.5)] = np.nan
    if specials in ("inf", "both"):
        x[hit & (rng.random((m, k)) >= 0.5)] = np.inf
    if dtype == "float16":
        x = np.where(np.isfinite(x), np.clip(x, -65504, 65504), x)
    return jnp.asarray(x).astype(DTYPES[dtype])


WILD = settings(max_examples=3, suppress_health_check=[HealthCheck.function_scoped_fixture])


@WILD
@given(A=wild_arrays(), thr=st.sampled_from([0.0, 6.0]))
def test_int8_codes_in_range_and_nan_rows(implementation, A, thr):
    CA, CAt, rs, cs, _ = fp8mm.int8_double_quant(A, thr, implementation=implementation)
    for codes in (np.asarray(CA).astype(int), np.asarray(CAt).astype(int)):
        assert codes.min() >= -127 and codes.max() <= 127
    nan = np.isnan(np.asarray(A.astype(jnp.float32)))
    np.testing.assert_array_equal(np.isnan(np.asarray(rs)), nan.any(1))
    np.testing.assert_array_equal(np.isnan(np.asarray(cs)), nan.any(0))
    # every finite input gives a finite scale: nothing beyond float16 range becomes inf
    a = np.asarray(A.astype(jnp.float32))
    finite_rows = np.isfinite(a).all(1)
    assert np.isfinite(np.asarray(rs)[finite_rows]).all()


@WILD
@given(A=wild_arrays(), bs=st.sampled_from([64, 256]))
def test_blockwise_nan_blocks(implementation, A, bs):
    fq = fp8mm.fake_quant_blockwise(A, CODES["e4m3"], bs, implementation=implementation)
    x = np.asarray(A.astype(jnp.float32)).ravel()
    pad = -x.size % bs
    nan_blocks = np.isnan(np.pad(x, (0, pad))).reshape(-1, bs).any(1)
    finite_blocks = np.isfinite(np.pad(x, (0, pad))).reshape(-1, bs).all(1)
    out = np.asarray(fq.astype(jnp.float32)).ravel()
    per_elem = lambda blocks: np.repeat(blocks, bs)[: x.size]
    assert np.isnan(out[per_elem(nan_blocks)]).all()  # a NaN reaches its whole block
    assert np.isfinite(out[per_elem(finite_blocks)]).all()  # finite blocks stay finite


@WILD
@given(A=wild_arrays(), op=st.sampled_from(["mixed", "global", "switchback"]))
def test_nan_in_nan_out_ops(implementation, A, op):
    if A.shape[-1] < 2:
        A = jnp.concatenate([A, A], axis=-1)
    k = A.shape[-1]
    W = jnp.asarray(np.random.default_rng(k).standard_normal((k, 8)) * 0.1).astype(A.dtype)
    if op == "switchback":
        out = fp8mm.switchback_bnb(A, W.T, implementation=implementation)
    else:
        fn = fp8mm.matmul_fp8_mixed if op == "mixed" else fp8mm.matmul_fp8_global
        out = fn(A, W, CODES["e4m3"], CODES["e5m2"], implementation=implementation)
    a = np.asarray(A.astype(jnp.float32))
    o = np.asarray(out.astype(jnp.float32))
    rows_nan = np.isnan(a).any(1)
    if op == "global" and rows_nan.any():
        assert np.isnan(o).all()
    else:
        assert np.isnan(o[rows_nan]).all()
    if op != "global":  # a finite row gives finite outputs (its own scale, bf16 beyond f16 too)
        fine = np.isfinite(a).all(1)
        assert np.isfinite(o[fine]).all()
