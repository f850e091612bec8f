"""Property-based tests of the reference primitives (hypothesis).

Example counts are small in CI (profile "ci"); set HYPOTHESIS_PROFILE=thorough
for a longer search.
"""

import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import fp8mm

CODES = {
    "e4m3": np.asarray(fp8mm.e4m3_code()),
    "e5m2": np.asarray(fp8mm.e5m2_code()),
    "dynamic": fp8mm.create_dynamic_map(),
}
DTYPES = {"float32": jnp.float32, "float16": jnp.float16, "bfloat16": jnp.bfloat16}
dims = st.sampled_from([1, 2, 3, 5, 7, 31, 33, 64, 97, 130])


@st.composite
def arrays(draw, max_ndim=3):
    shape = tuple(draw(st.lists(dims, min_size=1, max_size=max_ndim)))
    if np.prod(shape) > 20000:
        shape = shape[:1]
    dtype = draw(st.sampled_from(sorted(DTYPES)))
    scale = draw(st.sampled_from([1e-6, 1e-3, 1.0, 30.0, 1e4]))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32) * scale
    if draw(st.booleans()):  # a few huge values and zeros, as after a ReLU
        x[rng.random(shape) < 0.01] *= 50
        x[rng.random(shape) < 0.2] = 0
    if dtype == "float16":
        x = np.clip(x, -60000, 60000)
    return jnp.asarray(x).astype(DTYPES[dtype])


@given(A=arrays(), code=st.sampled_from(sorted(CODES)), bs=st.sampled_from([32, 64, 256, 4096]))
def test_blockwise_on_grid_and_within_half_step(A, code, bs):
    c = CODES[code]
    q, state = fp8mm.quantize_blockwise(A, jnp.asarray(c), bs)
    x = np.asarray(A.astype(jnp.float32)).ravel()
    absmax = np.repeat(np.asarray(state.absmax), bs)[: x.size]
    # absmax is the block's max |x|
    blocks = np.pad(np.abs(x), (0, -x.size % bs)).reshape(-1, bs).max(1)
    np.testing.assert_array_equal(np.asarray(state.absmax), blocks)
    deq = np.asarray(fp8mm.dequantize_blockwise(q, state).astype(jnp.float32)).ravel()
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
    fq = fp8mm.fake_quant_blockwise(A, jnp.asarray(c), bs)
    np.testing.assert_array_equal(np.asarray(fq, np.float32).ravel(), deq)
    # round trip: requantizing is stable for the symmetric fp8 grids (the dynamic map's
    # negative end is -0.99297, so a negative block max shrinks the absmax there)
    fq2 = fp8mm.fake_quant_blockwise(fq, jnp.asarray(c), bs)
    if A.dtype == jnp.float32 and code != "dynamic":
        np.testing.assert_array_equal(np.asarray(fq2), np.asarray(fq))


@given(A=arrays(), code=st.sampled_from(sorted(CODES)))
def test_global_properties(A, code):
    c = CODES[code]
    q, state = fp8mm.quantize(A, jnp.asarray(c))
    x = np.asarray(A.astype(jnp.float32))
    assert float(state.absmax) == float(np.abs(x).max())
    deq = np.asarray(fp8mm.dequantize(q, state))
    np.testing.assert_array_equal(deq, c[np.asarray(q).astype(int)] * np.float32(state.absmax))
    if float(state.absmax) > 0:
        err = np.abs(deq - x) / float(state.absmax)
        assert err.max() <= np.max(np.diff(c)) / 2 + 1e-6
    fq = fp8mm.fake_quant_global(A, jnp.asarray(c))
    assert fq.dtype == A.dtype and fq.shape == A.shape


@given(A=arrays(), thr=st.sampled_from([0.0, 0.5, 3.0]))
def test_int8_properties(A, thr):
    if A.ndim < 2:
        A = A[None]
    CA, CAt, rs, cs, cols = fp8mm.int8_double_quant(A, thr)
    a16 = np.asarray(A.astype(jnp.float16)).astype(np.float32).reshape(-1, A.shape[-1])
    ca = np.asarray(CA).reshape(a16.shape).astype(int)
    assert np.abs(ca).max(initial=0) <= 127 and np.abs(np.asarray(CAt)).max(initial=0) <= 127
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


@given(
    m=dims,
    n=dims,
    k=dims,
    seed=st.integers(0, 2**31 - 1),
)
def test_int8_matmul_exact(m, n, k, seed):
    rng = np.random.default_rng(seed)
    A = rng.integers(-127, 128, (m, k), dtype=np.int8)
    B = rng.integers(-127, 128, (n, k), dtype=np.int8)
    acc = fp8mm.int8_linear_matmul(jnp.asarray(A), jnp.asarray(B))
    np.testing.assert_array_equal(np.asarray(acc), A.astype(np.int64) @ B.astype(np.int64).T)
