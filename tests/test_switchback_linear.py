"""The SwitchBack paper's layer (`fp8mm.switchback_linear`) and its primitives.

Codes and scales are checked bit for bit against a NumPy float32 oracle of the
rule round-half-even(x * (127 * (1/absmax))); outputs and gradients against a
float64 evaluation of the quantized formulas (DESIGN §7), to the rounding of
the result. Every test takes the `implementation` fixture; interpreted Pallas
(the CPU) runs a representative subset, a GPU everything compiled, including
shapes the Mosaic GPU wgmma kernel serves.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fp8mm
from tests.helpers import (
    ON_GPU,
    assert_bits_equal,
    cpu_subset,
    f32,
    heavy,
    rand,
    ref,
    skip_xla_on_gpu,
    ulp,
)

DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]
VARIANTS = {
    "global": {},
    "vectorwise": {"vector_wise_quantization": True},
    "mem_efficient": {"mem_efficient": True},
}
C127 = np.float32(6.200012400024800e-05)  # 1/127**2 as the kernels spell it


# ----------------------------------------------------------------------------- the oracle


def np_codes(x: np.ndarray, absmax: np.ndarray) -> np.ndarray:
    """round-half-even(x * (127 * (1/absmax))) in float32; NaN -> 0, clipped to ±127."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        big = absmax >= np.float32(2.0**126)
        s = np.where(big, np.float32(2.0**-64), np.float32(1.0)).astype(np.float32)
        scale = (np.float32(127.0) * s) * (np.float32(1.0) / (absmax * s))
        q = np.rint((x * scale).astype(np.float32))
    q = np.where(np.isnan(q), 0.0, np.clip(q, -127, 127))
    return q.astype(np.int8)


def np_absmax(x: np.ndarray, axis=None) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.max(np.abs(x), axis=axis, initial=0.0).astype(np.float32)


def np_rowwise(x):
    a = np_absmax(x, axis=-1)
    return np_codes(x, a[..., None]), a


def np_global(x):
    a = np_absmax(x)
    return np_codes(x, a), a


def np_scaled(acc, row, col, bias=None) -> np.ndarray:
    """The fused epilogue in float64: acc * row * col / 127² + bias."""
    t = acc.astype(np.float64) * row[..., None].astype(np.float64) * col.astype(np.float64)
    t = t * np.float64(C127)
    return t if bias is None else t + f32(bias).astype(np.float64)


def close_to(got, want64: np.ndarray, dtype, extra=0.0) -> None:
    """Within one ulp of `dtype` (plus a few float32 ulps of the epilogue) of the float64 value."""
    g = f32(got).astype(np.float64)
    tol = ulp(want64, dtype) + 4 * 2.0**-24 * np.abs(want64) + extra
    err = np.abs(g - want64)
    worst = np.unravel_index(np.argmax(err - tol), err.shape)
    assert np.all(err <= tol), f"error {err[worst]} > tolerance {tol[worst]} at {worst}"


def data(shape, dtype, seed=0):
    """Heavy-tailed rows over many decades, a zero row, a tiny row; values the dtype holds."""
    # float16 keeps products inside its range (65504).
    decades = (-2, 1) if dtype == jnp.float16 else (-3, 3)
    x = np.array(f32(heavy(shape, jnp.float32, seed, decades=decades)))
    x2 = x.reshape(-1, shape[-1])
    x2[0] = 0.0
    if x2.shape[0] > 2:
        x2[2] *= 1e-30 if dtype != jnp.float16 else 1e-4
    return jnp.asarray(x).astype(dtype)


# ------------------------------------------------------------------------- the primitives

PRIMS = {
    "quantize_rowwise": (fp8mm.quantize_rowwise, np_rowwise),
    "quantize_global": (fp8mm.quantize_global, np_global),
    "quantize_global_t": (
        lambda x, **kw: fp8mm.quantize_global(x, True, **kw),
        lambda x: (np_global(x)[0].T, np_global(x)[1]),
    ),
    "quantize_columnwise_and_transpose": (
        fp8mm.quantize_columnwise_and_transpose,
        lambda x: (np_codes(x, np_absmax(x, axis=0)[None, :]).T, np_absmax(x, axis=0)),
    ),
}
PRIM_SHAPES = [(33, 70), (256, 384)]


@pytest.mark.parametrize("shape", PRIM_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", PRIMS)
def test_quantization_rule_bit_exact(implementation, name, dtype, shape):
    cpu_subset(implementation, shape == PRIM_SHAPES[0] and dtype != jnp.float16)
    skip_xla_on_gpu(implementation)
    fn, oracle = PRIMS[name]
    x = data(shape, dtype)
    q, absmax = fn(x, implementation=implementation)
    want_q, want_a = oracle(f32(x))
    assert_bits_equal(q, want_q, name)
    assert_bits_equal(absmax, want_a, name)


@pytest.mark.parametrize("name", PRIMS)
def test_quantization_nan_zero_and_huge(implementation, name):
    cpu_subset(implementation, name == "quantize_rowwise")
    skip_xla_on_gpu(implementation)
    fn, oracle = PRIMS[name]
    x = np.array(f32(rand((6, 40), seed=3)))
    x[1] = 0.0
    x[3, 5] = np.nan
    x[4] *= 3e38 / np.abs(x[4]).max()  # absmax >= 2**126: the prescaled reciprocal
    x[5, 7] = -np.inf
    q, absmax = fn(jnp.asarray(x), implementation=implementation)
    want_q, want_a = oracle(x)
    assert_bits_equal(q, want_q, name)
    assert_bits_equal(absmax, want_a, name)
    assert np.all(np.abs(np.asarray(q).astype(int)) <= 127)


@pytest.mark.parametrize("name", ["quantize_rowwise", "quantize_columnwise_and_transpose"])
def test_given_absmax(implementation, name):
    """absmax= (a shard of rows/columns split over devices passes the whole ones'): the
    codes of the rule with that absmax, the kernels' bits the reference's."""
    cpu_subset(implementation, keep=True)
    skip_xla_on_gpu(implementation)
    fn = getattr(fp8mm, name)
    x = np.array(f32(rand((6, 40), seed=5)))
    x[2, 3] = np.nan
    rows = name == "quantize_rowwise"
    n = x.shape[0] if rows else x.shape[1]
    absmax = np.abs(np.random.default_rng(2).standard_normal(n)).astype(np.float32) * 3 + 2
    absmax[0], absmax[1], absmax[-1] = 0.0, 3e38, np.nan  # zero, prescaled, NaN scales
    q, got = fn(jnp.asarray(x), jnp.asarray(absmax), implementation=implementation)
    want = np_codes(x, absmax[:, None] if rows else absmax[None, :])
    assert_bits_equal(q, want if rows else want.T, name)
    assert_bits_equal(got, absmax, name)
    # The own absmax given back: the default path's codes.
    own = fn(jnp.asarray(x), implementation=implementation)
    assert_bits_equal(fn(jnp.asarray(x), own[1], implementation=implementation)[0], own[0])
    with pytest.raises(ValueError, match="absmax"):
        fn(jnp.asarray(x), jnp.ones(n + 1, jnp.float32), implementation=implementation)
    with pytest.raises(TypeError, match="absmax"):
        fn(jnp.asarray(x), jnp.ones(n, jnp.float16), implementation=implementation)


@pytest.mark.parametrize("out_dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("mnk", [(33, 70, 50), (256, 256, 128)])
def test_int8_scaled_matmul(implementation, out_dtype, with_bias, mnk):
    m, n, k = mnk
    cpu_subset(implementation, mnk == (33, 70, 50) and out_dtype == jnp.bfloat16)
    rng = np.random.default_rng(1)
    A = jnp.asarray(rng.integers(-127, 128, (m, k)), jnp.int8)
    B = jnp.asarray(rng.integers(-127, 128, (n, k)), jnp.int8)
    row = jnp.asarray(rng.uniform(0, 4, m).astype(np.float32))
    col = jnp.asarray(rng.uniform(0, 4, n).astype(np.float32))
    bias = jnp.asarray(rng.standard_normal(n), jnp.bfloat16) if with_bias else None
    got = fp8mm.int8_scaled_matmul(A, B, row, col, bias, out_dtype, implementation=implementation)
    assert got.dtype == out_dtype and got.shape == (m, n)
    acc = np.asarray(A, np.int64) @ np.asarray(B, np.int64).T
    # With a bias, float32 rounds the product before the sum: up to an ulp of each term.
    terms = np.abs(np_scaled(acc, f32(row), f32(col))) + (np.abs(f32(bias)) if with_bias else 0)
    close_to(got, np_scaled(acc, f32(row), f32(col), bias), out_dtype, extra=2.0**-22 * terms)
    if not with_bias:  # no multiply-add to contract: the kernels give the reference's bits
        skip_xla_on_gpu(implementation)
        want = ref("int8_scaled_matmul", A, B, row, col, None, out_dtype=np.dtype(out_dtype))
        assert_bits_equal(got, want)


def test_int8_scaled_matmul_scalar_scale(implementation):
    cpu_subset(implementation)
    A = jnp.ones((4, 8), jnp.int8) * 127
    got = fp8mm.int8_scaled_matmul(
        A, A, jnp.ones(4), jnp.float32(2.0), None, jnp.float32, implementation=implementation
    )
    np.testing.assert_allclose(np.asarray(got), 8 * 2.0, rtol=1e-6)


@given(st.integers(1, 9), st.integers(1, 40), st.sampled_from([jnp.float32, jnp.bfloat16]))
def test_rowwise_codes_within_half_a_step(m, k, dtype):
    x = rand((m, k), dtype, seed=m * 41 + k)
    q, absmax = fp8mm.quantize_rowwise(x, implementation="xla")
    deq = f32(q).astype(np.float64) * f32(absmax)[:, None].astype(np.float64) / 127
    step = f32(absmax)[:, None].astype(np.float64) / 127
    assert np.all(np.abs(deq - f32(x)) <= 0.5 * step * (1 + 1e-6) + 1e-30)
    assert np.all(np.abs(np.asarray(q).astype(int)) <= 127)


# --------------------------------------------------------------------------------- the op


def quantized_formulas(X, W, b, G, variant):
    """Output and gradients of the quantized formulas in float64, from the NumPy oracle."""
    x2, g2, w = f32(X).reshape(-1, X.shape[-1]), f32(G).reshape(-1, G.shape[-1]), f32(W)
    x8, sx = np_rowwise(x2)
    g8, sg = np_rowwise(g2)
    if variant == "vectorwise":
        w8, sw = np_rowwise(w)  # per output feature
        wt8, swt = np_codes(w, np_absmax(w, axis=0)[None, :]).T, np_absmax(w, axis=0)
    else:
        w8, a = np_global(w)
        wt8, sw, swt = w8.T, np.full(w.shape[0], a), np.full(w.shape[1], a)
    i64 = lambda v: v.astype(np.int64)
    out = np_scaled(i64(x8) @ i64(w8).T, sx, sw, b)
    gx = np_scaled(i64(g8) @ i64(wt8).T, sg, swt)
    if variant == "mem_efficient":
        # X dequantized as (absmax * q) * (1/127), rounded to X's dtype.
        deq = (sx[:, None] * x8.astype(np.float32)) * np.float32(1 / 127)
        x2 = f32(jnp.asarray(deq).astype(X.dtype))
    gw = g2.astype(np.float64).T @ x2.astype(np.float64)
    gb = g2.astype(np.float64).sum(0)
    return out, gx, gw, gb, np.abs(g2).T @ np.abs(x2)


OP_CASES = [
    # (X shape, out features, bias): 2-D and 3-D X, odd sizes; the last fills wgmma tiles.
    ((12, 40), 24, True),
    ((2, 3, 40), 24, False),
    ((256, 128), 256, True),
]


@pytest.mark.parametrize("case", OP_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_formulas_and_gradients(implementation, variant, dtype, case):
    xs, n, with_bias = case
    keep = (case == OP_CASES[0] and dtype == jnp.bfloat16) or (
        case == OP_CASES[1] and variant == "vectorwise"
    )
    cpu_subset(implementation, keep)
    skip_xla_on_gpu(implementation)
    X = data(xs, dtype, seed=1)
    W = rand((n, xs[-1]), dtype, seed=2, scale=0.2)
    b = rand((n,), dtype, seed=3) if with_bias else None
    G = data((*xs[:-1], n), dtype, seed=4)
    f = lambda x, w, b: fp8mm.switchback_linear(
        x, w, b, implementation=implementation, **VARIANTS[variant]
    )
    y, vjp = jax.vjp(f, X, W, b)
    gx, gw, gb = vjp(G)
    out, want_gx, want_gw, want_gb, mag = quantized_formulas(X, W, b, G, variant)
    assert y.dtype == gx.dtype == gw.dtype == dtype and y.shape == (*xs[:-1], n)
    terms = 2.0**-22 * (np.abs(out) + (np.abs(f32(b)) if with_bias else 0))
    close_to(y.reshape(-1, n), out, dtype, extra=terms)
    close_to(gx.reshape(-1, xs[-1]), want_gx, dtype)
    # The 16-bit weight gradient: one rounding of a float32-accumulated GEMM.
    close_to(gw, want_gw, dtype, extra=xs[-1] * 2.0**-22 * mag)
    if with_bias:
        assert gb.dtype == b.dtype
        close_to(gb, want_gb, dtype, extra=2.0**-20 * np.abs(f32(G)).reshape(-1, n).sum(0))
    # The zero row of X gives the bias (or 0), the zero row of G a zero input gradient.
    np.testing.assert_array_equal(f32(y.reshape(-1, n)[0]), f32(b) if with_bias else 0.0)
    np.testing.assert_array_equal(f32(gx.reshape(-1, xs[-1])[0]), 0.0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_dense_layout_equals_linear_layout(implementation, variant):
    cpu_subset(implementation, variant == "global")
    X, W, b = rand((10, 32), jnp.bfloat16), rand((16, 32), jnp.bfloat16, 1), rand((16,), seed=2)
    kw = dict(implementation=implementation, **VARIANTS[variant])
    y, vjp = jax.vjp(lambda x, w: fp8mm.switchback_linear(x, w, b, **kw), X, W)
    yd, vjpd = jax.vjp(
        lambda x, k: fp8mm.switchback_linear(x, k, b, weight_layout="dense", **kw), X, W.T
    )
    G = rand(y.shape, jnp.bfloat16, 3)
    (gx, gw), (gxd, gkd) = vjp(G), vjpd(G)
    assert_bits_equal(y, yd)
    assert_bits_equal(gx, gxd)
    assert_bits_equal(gw, gkd.T)


def test_float32_weight_with_bf16_activations(implementation):
    cpu_subset(implementation)
    X, W = rand((8, 32), jnp.bfloat16), rand((16, 32), jnp.float32, 1)
    y, vjp = jax.vjp(
        lambda x, w: fp8mm.switchback_linear(x, w, implementation=implementation), X, W
    )
    gx, gw = vjp(jnp.ones_like(y))
    assert y.dtype == gx.dtype == jnp.bfloat16 and gw.dtype == jnp.float32


def test_nan_reaches_its_rows_only(implementation):
    cpu_subset(implementation)
    X = np.array(f32(rand((6, 32))))
    X[2, 4] = np.nan
    W = rand((16, 32), seed=1)
    y = np.asarray(fp8mm.switchback_linear(jnp.asarray(X), W, implementation=implementation))
    assert np.isnan(y[2]).all() and np.isfinite(np.delete(y, 2, axis=0)).all()
    G = np.ones((6, 16), np.float32)
    G[4, 1] = np.nan
    _, vjp = jax.vjp(lambda x: fp8mm.switchback_linear(x, W, implementation=implementation), X)
    (gx,) = vjp(jnp.asarray(G))
    assert np.isnan(np.asarray(gx)[4]).all() and np.isfinite(np.delete(gx, 4, axis=0)).all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_zero_size_and_zero_weight(implementation, variant):
    cpu_subset(implementation, variant == "global")
    kw = dict(implementation=implementation, **VARIANTS[variant])
    W = rand((16, 32), seed=1)
    for X in (jnp.zeros((0, 32)), jnp.zeros((2, 0, 32))):
        y, vjp = jax.vjp(lambda x, w: fp8mm.switchback_linear(x, w, **kw), X, W)
        gx, gw = vjp(jnp.zeros(y.shape))
        assert y.shape == (*X.shape[:-1], 16) and gx.shape == X.shape
        np.testing.assert_array_equal(np.asarray(gw), 0.0)
    # An all-zero weight (dead units): zeros, never NaN.
    X = rand((4, 32))
    y, vjp = jax.vjp(lambda w: fp8mm.switchback_linear(X, w, **kw), jnp.zeros((16, 32)))
    np.testing.assert_array_equal(np.asarray(y), 0.0)
    assert np.isfinite(np.asarray(vjp(jnp.ones_like(y))[0])).all()


def test_transformations(implementation):
    cpu_subset(implementation)
    X, W = rand((3, 8, 32), jnp.bfloat16), rand((16, 32), jnp.bfloat16, 1)
    f = lambda x, w: fp8mm.switchback_linear(x, w, implementation=implementation)
    loss = lambda x, w: f(x, w).astype(jnp.float32).sum()
    want = jax.grad(loss, argnums=(0, 1))(X, W)
    # jit, remat and vmap over a leading axis give the same numbers.
    traces = []

    def counted(x, w):
        traces.append(1)
        return loss(x, w)

    jitted = jax.jit(jax.grad(counted, argnums=(0, 1)))
    for got in (jitted(X, W), jitted(X, W), jax.grad(jax.checkpoint(loss), argnums=(0, 1))(X, W)):
        jax.tree.map(assert_bits_equal, got, want)
    assert len(traces) == 1
    yv = jax.vmap(f, in_axes=(0, None))(X, W)
    assert_bits_equal(yv, jnp.stack([f(x, W) for x in X]))


# ----------------------------------------------------------------------- inference weights


@pytest.mark.parametrize("vectorwise", [False, True])
def test_prepared_weight_inference(implementation, vectorwise):
    cpu_subset(implementation, not vectorwise)
    X, W, b = rand((2, 5, 32), jnp.bfloat16), rand((16, 32), jnp.bfloat16, 1), rand((16,), seed=2)
    kw = dict(implementation=implementation)
    state = fp8mm.prepare_switchback_weight(W, vector_wise_quantization=vectorwise, **kw)
    assert state.CB.dtype == jnp.int8 and state.SCB.shape == (16,) and not state.has_fp16_weights
    train = fp8mm.switchback_linear(X, W, b, vector_wise_quantization=vectorwise, **kw)
    y, vjp = jax.vjp(lambda x, s, b: fp8mm.switchback_linear(x, s, b, **kw), X, state, b)
    assert_bits_equal(y, train)  # the same codes and scales as a training forward
    gx, gs, gb = vjp(jnp.ones_like(y))
    deq = f32(state.CB) * f32(state.SCB)[:, None] / 127
    np.testing.assert_allclose(
        f32(gx).reshape(10, 32), np.ones((10, 16)) @ deq, rtol=2e-2, atol=1e-2
    )
    assert gs.CB.dtype == jax.dtypes.float0 and gb.shape == (16,)


# -------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (
            lambda X, W: fp8mm.switchback_linear(
                X, W, vector_wise_quantization=True, mem_efficient=True
            ),
            ValueError,
            "global",
        ),
        (lambda X, W: fp8mm.switchback_linear(X, W.T), ValueError, "inner dimensions"),
        (lambda X, W: fp8mm.switchback_linear(X, W, jnp.ones(3)), ValueError, "bias"),
        (lambda X, W: fp8mm.switchback_linear(X.astype(jnp.int32), W), TypeError, "X"),
        (lambda X, W: fp8mm.switchback_linear(X, W, weight_layout="torch"), ValueError, "layout"),
        (lambda X, W: fp8mm.switchback_linear(X, W, mem_efficient=1), TypeError, "mem_efficient"),
        (lambda X, W: fp8mm.switchback_linear(X, W, implementation="cuda"), ValueError, "cuda"),
        (lambda X, W: fp8mm.switchback_linear(X, fp8mm.MatmulLtState()), ValueError, "int8"),
        (lambda X, W: fp8mm.quantize_global(W, transpose="yes"), TypeError, "transpose"),
        (lambda X, W: fp8mm.switchback_bnb(X, W, axis_names=3), TypeError, "axis_names"),
        (lambda X, W: fp8mm.switchback_linear(X, W, axis_names=[1]), TypeError, "axis_names"),
        (lambda X, W: fp8mm.quantize_rowwise(jnp.ones((2, 3), jnp.int8)), TypeError, "X|A"),
        (
            lambda X, W: fp8mm.int8_scaled_matmul(
                jnp.ones((2, 4), jnp.int8), jnp.ones((3, 4), jnp.int8), jnp.ones(2), jnp.ones(2)
            ),
            ValueError,
            "col_stats",
        ),
    ],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call(rand((4, 32)), rand((16, 32), seed=1))


# ------------------------------------------------------------------------------- training


def test_training_lowers_the_loss_like_dense():
    import optax

    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.standard_normal((256, 32)), jnp.float32)
    T = jnp.tanh(X @ jnp.asarray(rng.standard_normal((32, 16)) * 0.3, jnp.float32))

    def run(product):
        W = jnp.asarray(rng.standard_normal((16, 32)) * 0.1, jnp.float32)
        params, opt = {"w": W, "b": jnp.zeros(16)}, optax.adam(1e-2)
        state = opt.init(params)

        @jax.jit
        def step(params, state):
            loss, g = jax.value_and_grad(lambda p: jnp.mean((product(X, p["w"], p["b"]) - T) ** 2))(
                params
            )
            updates, state = opt.update(g, state)
            return optax.apply_updates(params, updates), state, loss

        losses = []
        for _ in range(150):
            params, state, loss = step(params, state)
            losses.append(float(loss))
        return losses

    dense = run(lambda x, w, b: x @ w.T + b)
    for kw in VARIANTS.values():
        ours = run(lambda x, w, b: fp8mm.switchback_linear(x, w, b, implementation="xla", **kw))
        assert ours[-1] < 0.2 * ours[0]
        assert ours[-1] < 1.5 * dense[-1] + 2e-3, (ours[-1], dense[-1])


@pytest.mark.skipif(not ON_GPU, reason="timing-free GPU smoke: the kernels compile at scale")
def test_large_shapes_compile_on_gpu():
    X, W = rand((4096, 1024), jnp.bfloat16), rand((2048, 1024), jnp.bfloat16, 1, 0.05)
    y, vjp = jax.vjp(fp8mm.switchback_linear, X, W)
    gx, gw = vjp(jnp.ones_like(y))
    want = f32(X).astype(np.float64) @ f32(W).astype(np.float64).T
    assert np.linalg.norm(f32(y) - want) / np.linalg.norm(want) < 2e-2
    assert np.isfinite(f32(gx)).all() and np.isfinite(f32(gw)).all()
