"""No silent wrong answers: the deliberate deviations from bitsandbytes, on every implementation.

Each test runs on the XLA reference and on the Pallas kernels (interpreted on
CPU, compiled on a GPU) through the `implementation` fixture:

* int8 column codes (CAt) where torch's float16 product 127*x overflows: the
  intended round(127*x / col_absmax), never -128;
* NaN reaches every value it touches: its block's (row's) scale is NaN;
* bf16/float32 inputs beyond float16 range are quantized from their own dtype;
* fake quantization has the straight-through gradient, code-returning
  primitives refuse to be differentiated;
* huge block maxima (reciprocal below float32's normal range), x64 mode.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fp8mm
from fp8mm import dispatch
from fp8mm import functional as F
from tests.helpers import assert_trees_equal, f32, heavy, interpreted, ref

E4M3 = np.asarray(fp8mm.e4m3_code())
E5M2 = np.asarray(fp8mm.e5m2_code())


# ----------------------------------------------------------------------------- int8 CAt


def test_column_codes_past_float16_range(implementation):
    # bitsandbytes: the float16 product 127*x is inf for |x| > 515.8 and its cast gives
    # -1/0 (and the saturating emulation -128); the intended code is round(127 x / c).
    A = jnp.asarray([[600.0, 1.0, -1169.0], [-300.0, 2.0, 600.0], [2005.0, 0.0, 3.0]], jnp.float16)
    _, CAt, _, cs, _ = F.int8_double_quant(A, implementation=implementation)
    np.testing.assert_array_equal(np.asarray(cs), [2005.0, 2.0, 1169.0])
    np.testing.assert_array_equal(np.asarray(CAt)[:, 0], [38, -19, 127])
    np.testing.assert_array_equal(np.asarray(CAt)[:, 2], [-127, 65, 0])


@pytest.mark.parametrize("threshold", [0.0, 3000.0])
def test_column_codes_heavy_tails_match_intended(implementation, threshold):
    A = heavy((67, 45), jnp.float16, seed=1, scale=300.0)
    CA, CAt, rs, cs, _ = F.int8_double_quant(A, threshold, implementation=implementation)
    want = ref("int8_double_quant", A, threshold)
    assert_trees_equal((CA, CAt, rs, cs), want[:4])
    x = f32(A)
    over = np.abs(x) * 127 > 65504
    assert over.any()
    intended = np.clip(np.round(127 * x / np.asarray(cs)), -127, 127)
    if threshold:
        intended[np.abs(x) >= threshold] = 0
    cat = np.asarray(CAt)
    np.testing.assert_array_equal(cat[over], intended[over])
    assert cat.min() >= -127 and np.asarray(CA).min() >= -127


# ----------------------------------------------------------------------------- NaN


def test_nan_blockwise_scale(implementation):
    x = np.array(heavy((4, 128), jnp.float32, seed=2))
    x[1, 7] = np.nan
    q, st = F.quantize_blockwise(jnp.asarray(x), E4M3, blocksize=64, implementation=implementation)
    absmax = np.asarray(st.absmax)
    assert np.isnan(absmax[2]) and not np.isnan(np.delete(absmax, 2)).any()
    deq = np.asarray(F.dequantize_blockwise(q, st, implementation=implementation))
    assert (
        np.isnan(deq[1, :64]).all() and not np.isnan(np.delete(deq.ravel(), range(128, 192))).any()
    )
    fq = np.asarray(F.fake_quant_blockwise(jnp.asarray(x), E4M3, 64, implementation=implementation))
    np.testing.assert_array_equal(np.isnan(fq), np.isnan(deq))
    # Finite blocks keep their bits.
    clean = x.copy()
    clean[1, :64] = 0
    fq_clean = np.asarray(
        F.fake_quant_blockwise(jnp.asarray(clean), E4M3, 64, implementation="xla")
    )
    keep = ~np.isnan(fq)
    np.testing.assert_array_equal(fq[keep], fq_clean[keep])


def test_nan_global_scale(implementation):
    x = np.array(heavy((3, 40), jnp.bfloat16, seed=3).astype(jnp.float32))
    x[2, 1] = np.nan
    q, st = F.quantize(jnp.asarray(x), E4M3, implementation=implementation)
    assert np.isnan(np.asarray(st.absmax))
    assert np.isnan(np.asarray(F.dequantize(q, st, implementation=implementation))).all()
    fq = F.fake_quant_global(jnp.asarray(x, jnp.bfloat16), E4M3, implementation=implementation)
    assert np.isnan(f32(fq)).all()


@pytest.mark.parametrize("threshold", [0.0, 2.5])
def test_nan_int8_rows_and_columns(implementation, threshold):
    x = np.array(heavy((9, 33), jnp.float16, seed=4).astype(jnp.float32))
    x[3, 5] = np.nan
    A = jnp.asarray(x, jnp.float16)
    CA, CAt, rs, cs, _ = F.int8_double_quant(A, threshold, implementation=implementation)
    rs, cs = np.asarray(rs), np.asarray(cs)
    assert np.isnan(rs[3]) and np.isnan(rs).sum() == 1
    assert np.isnan(cs[5]) and np.isnan(cs).sum() == 1
    assert (np.asarray(CA)[3] == 0).all() and (np.asarray(CAt)[:, 5] == 0).all()
    want = ref("int8_double_quant", A, threshold)
    assert_trees_equal((CA, CAt), want[:2])
    _, rs1, _ = F.int8_vectorwise_quant(A, threshold, implementation=implementation)
    np.testing.assert_array_equal(np.isnan(np.asarray(rs1)), np.isnan(rs))
    CB, SCB = F.int8_vectorwise_quant_t(A.T, implementation=implementation)
    assert np.isnan(np.asarray(SCB)[3]) and (np.asarray(CB)[3] == 0).all()


@pytest.mark.parametrize("rows", [1, 7, 130])
def test_nan_column_stats_consistent_across_shapes(implementation, rows):
    # XLA's CPU max drops NaN for some shapes; the NaN rule must not depend on them.
    x = np.ones((rows, 17), np.float32)
    x[rows - 1, 16] = np.nan
    _, _, rs, cs, _ = F.int8_double_quant(jnp.asarray(x), implementation=implementation)
    assert np.isnan(np.asarray(cs)[16]) and np.isnan(np.asarray(cs)).sum() == 1
    assert np.isnan(np.asarray(rs)[rows - 1]) and np.isnan(np.asarray(rs)).sum() == 1


def _ops():
    def mixed(A, B, impl):
        return fp8mm.matmul_fp8_mixed(A, B, E4M3, E5M2, implementation=impl)

    def glob(A, B, impl):
        return fp8mm.matmul_fp8_global(A, B, E4M3, E5M2, implementation=impl)

    def switchback(A, B, impl):
        return fp8mm.switchback_bnb(A, B.T, implementation=impl)

    def switchback_thr(A, B, impl):
        return fp8mm.switchback_bnb(A, B.T, threshold=3.0, implementation=impl)

    return {"mixed": mixed, "global": glob, "switchback": switchback, "sb_thr": switchback_thr}


OPS = _ops()


# One dtype per op keeps CI short; both 16-bit dtypes are covered across the ops.
@pytest.mark.parametrize(
    "op, dtype",
    [
        ("mixed", jnp.float16),
        ("global", jnp.bfloat16),
        ("switchback", jnp.bfloat16),
        ("sb_thr", jnp.float16),
    ],
)
def test_nan_reaches_ops_and_gradients(implementation, op, dtype):
    fn = OPS[op]
    A = np.array(heavy((2, 8, 64), dtype, seed=5).astype(jnp.float32))
    A[1, 3, 10] = np.nan
    A = jnp.asarray(A, dtype)
    B = heavy((64, 24), dtype, seed=6, scale=0.1)
    out, vjp = jax.vjp(lambda a, b: fn(a, b, implementation), A, B)
    nan_rows = np.isnan(f32(out)).any(-1)
    if op == "global":
        assert nan_rows.all()
    else:
        assert nan_rows[1, 3] and nan_rows.sum() == 1
        # The other rows are what the same call gives without the NaN row.
        clean = fn(jnp.where(jnp.isnan(A), 0, A), B, implementation)
        np.testing.assert_array_equal(f32(out)[~nan_rows], f32(clean)[~nan_rows])
    g = np.ones(out.shape, np.float32)
    g[0, 2, 5] = np.nan
    gA, gB = vjp(jnp.asarray(g, dtype))
    assert np.isnan(f32(gA)).any() and np.isnan(f32(gB)).any()
    if op == "mixed":  # a NaN in grad_output's row reaches that row of gradA only
        assert np.isnan(f32(gA)[0, 2]).all() and not np.isnan(f32(gA)[1]).any()


# ------------------------------------------------------------------ beyond float16 range


@pytest.mark.parametrize("dtype, threshold", [(jnp.bfloat16, 0.0), (jnp.float32, 6.0)])
def test_switchback_activations_beyond_float16(implementation, dtype, threshold):
    A = np.array(heavy((16, 64), jnp.float32, seed=7))
    A[2, 3], A[5, 9], A[9, 0] = 2.0e5, -7.0e4, 1.0e6
    A = jnp.asarray(A, dtype)
    W = heavy((32, 64), dtype, seed=8, scale=0.05)
    out = fp8mm.switchback_bnb(A, W, threshold=threshold, implementation=implementation)
    got = f32(out)
    assert np.isfinite(got).all()
    # Within int8 quantization error: against the int8 simulation in float32 (row-wise
    # A from its own dtype, outlier columns in 16 bit), up to output rounding.
    a, w = f32(A), f32(W)
    outl = (np.abs(a) >= threshold).any(0) if threshold else np.zeros(a.shape[1], bool)
    ai = np.where(outl, 0, a)

    def q8(x):
        s = np.abs(x).max(1, keepdims=True)
        return np.round(127 * x / s) * s / 127

    sim = q8(ai) @ q8(w).T + a[:, outl] @ w[:, outl].T
    assert np.linalg.norm(got - sim) / np.linalg.norm(sim) < 1e-2
    want = a @ w.T
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 5e-2
    grads = jax.grad(
        lambda a, w: (
            fp8mm.switchback_bnb(a, w, threshold=threshold, implementation=implementation)
            .astype(jnp.float32)
            .sum()
        ),
        argnums=(0, 1),
    )(A, W)
    assert all(np.isfinite(f32(g)).all() for g in grads)


def test_int8_quant_from_own_dtype_is_bnb_exact_inside_float16_range(implementation):
    # bitsandbytes casts to float16 first; inside float16's normal range that cast of a
    # bf16 value is exact, so quantizing bf16 directly gives bnb's bits.
    rng = np.random.default_rng(9)
    x = rng.standard_normal((50, 70)).astype(np.float32) * 10.0 ** rng.uniform(-3, 4, (50, 1))
    x = np.where(np.abs(x) < 1e-4, 1e-3, np.clip(x, -6e4, 6e4)).astype(np.float32)
    A = jnp.asarray(x, jnp.bfloat16)
    A16 = A.astype(jnp.float16)
    np.testing.assert_array_equal(f32(A), f32(A16))  # the cast is exact
    for fn in (F.int8_vectorwise_quant, F.int8_double_quant):
        got = fn(A, implementation=implementation)
        # The same implementation on the float16 cast: bitsandbytes' input.
        want = fn(A16, implementation=implementation)
        assert_trees_equal(got, want)
        if implementation != "xla":  # and the oracle (the CPU reference) agrees
            assert_trees_equal(got, ref(fn.__name__, A16))


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("dtype", [jnp.bfloat16])
def test_fake_quant_straight_through(implementation, dtype):
    x = heavy((4, 64), dtype, seed=10)
    w = jnp.asarray(np.random.default_rng(11).standard_normal((4, 64)), dtype)
    for fq in (
        lambda a: F.fake_quant_blockwise(a, E4M3, 64, implementation=implementation),
        lambda a: F.fake_quant_global(a, jnp.asarray(E5M2), implementation=implementation),
    ):
        g = jax.grad(lambda a, fq=fq: (fq(a) * w).astype(jnp.float32).sum())(x)
        assert g.dtype == x.dtype
        np.testing.assert_array_equal(f32(g), f32(w))
        g = jax.jit(jax.grad(lambda a, fq=fq: fq(a).astype(jnp.float32).sum()))(x)
        np.testing.assert_array_equal(f32(g), np.ones(x.shape))


def test_code_primitives_refuse_gradients(implementation):
    x = heavy((4, 64), jnp.float32, seed=12)
    fns = [
        lambda a: (
            F.quantize_blockwise(a, E4M3, blocksize=64, implementation=implementation)[1].absmax
        ),
        lambda a: F.quantize(a, E4M3, implementation=implementation)[1].absmax,
        lambda a: F.int8_vectorwise_quant(a, implementation=implementation)[1],
        lambda a: F.int8_double_quant(a, implementation=implementation)[3],
    ]
    for fn in fns:
        with pytest.raises(TypeError, match="has no gradient"):
            jax.grad(lambda a, fn=fn: fn(a).sum())(x)


# ----------------------------------------------------------------------------- huge values


@pytest.mark.parametrize("blocksize", [64])
def test_blockwise_huge_absmax(implementation, blocksize):
    # A block absmax above 2**126 has a subnormal float32 reciprocal, which GPUs and
    # XLA's CPU runtime flush to zero: the codes must not collapse to zero.
    x = np.random.default_rng(13).uniform(-1, 1, (2, 256)).astype(np.float32) * 3e38
    fq = f32(F.fake_quant_blockwise(jnp.asarray(x), E4M3, blocksize, implementation=implementation))
    assert np.isfinite(fq).all()
    err = np.abs(fq - x).max() / np.abs(x).max()
    assert err < 0.07  # half an e4m3 step at the top of the grid
    q, st = F.quantize_blockwise(
        jnp.asarray(x), E4M3, blocksize=blocksize, implementation=implementation
    )
    np.testing.assert_array_equal(
        f32(F.dequantize_blockwise(q, st, implementation=implementation)), fq
    )


def test_matmul_fp8_mixed_huge_cotangent(implementation):
    A = heavy((8, 64), jnp.float32, seed=14)
    B = heavy((64, 16), jnp.float32, seed=15)
    _, vjp = jax.vjp(
        lambda a: fp8mm.matmul_fp8_mixed(a, B, E4M3, E5M2, implementation=implementation), A
    )
    g = jnp.full((8, 16), 1e38, jnp.float32)
    (gA,) = vjp(g)
    assert np.abs(f32(gA)).max() > 0


# ----------------------------------------------------------------------------- x64


def test_primitives_under_x64(implementation):
    x = heavy((6, 64), jnp.float32, seed=16)
    x16 = x.astype(jnp.float16)
    calls = {
        "quantize_blockwise": lambda: F.quantize_blockwise(
            x, E4M3, blocksize=64, implementation=implementation
        ),
        "fake_quant_blockwise": lambda: F.fake_quant_blockwise(
            x16, E4M3, 64, implementation=implementation
        ),
        "quantize": lambda: F.quantize(x, E4M3, implementation=implementation),
        "fake_quant_global": lambda: F.fake_quant_global(x16, E4M3, implementation=implementation),
        "int8_vectorwise_quant": lambda: F.int8_vectorwise_quant(
            x16, implementation=implementation
        ),
        "int8_double_quant": lambda: F.int8_double_quant(x16, 1.5, implementation=implementation),
        "int8_vectorwise_quant_t": lambda: F.int8_vectorwise_quant_t(
            x16, implementation=implementation
        ),
        "switchback_bnb": lambda: fp8mm.switchback_bnb(
            x16, x16[:5], threshold=1.5, implementation=implementation
        ),
        "matmul_fp8_mixed": lambda: fp8mm.matmul_fp8_mixed(
            x16, jnp.ones((64, 8), jnp.float16), E4M3, E5M2, implementation=implementation
        ),
    }
    want = {k: jax.tree.map(np.asarray, f()) for k, f in calls.items()}
    if interpreted(implementation):
        # Interpret mode cannot serve x64 exactly; an explicit choice says so.
        with dispatch._x64(True), pytest.raises(NotImplementedError, match="x64"):
            calls["quantize_blockwise"]()
        return
    with dispatch._x64(True):
        for k, f in calls.items():
            # Traced under x64 (every public call is jitted inside as well).
            got = jax.tree.map(np.asarray, jax.jit(f)())
            assert_trees_equal(got, want[k], k)


# ----------------------------------------------------------------------------- Flax layers


@pytest.mark.parametrize("layer", ["Fp8MixedDense", "Fp8GlobalDense", "SwitchBackDense"])
def test_nan_reaches_flax_layers(implementation, layer):
    from fp8mm.nn import linen as fl

    x = np.array(heavy((4, 64), jnp.float32, seed=17))
    x[2, 9] = np.nan
    with fp8mm.use_implementation(implementation):
        model = getattr(fl, layer)(16, dtype=jnp.bfloat16)
        params = model.init(jax.random.key(0), jnp.zeros((4, 64)))
        y, vjp = jax.vjp(lambda p: model.apply(p, jnp.asarray(x)), params)
        (g,) = vjp(jnp.ones_like(y))
    rows = np.isnan(f32(y)).any(1)
    assert rows[2] and (rows.all() if layer == "Fp8GlobalDense" else rows.sum() == 1)
    assert np.isnan(f32(g["params"]["kernel"])).any()


# ----------------------------------------------------------------------------- int8 products


@pytest.mark.parametrize("m, n, k", [(3, 4, 33), (3, 4, 64), (16, 16, 40), (5, 7, 2100)])
def test_int8_products_exact(implementation, m, n, k):
    # XLA's s8 GEMM on an H200 (jax 0.11.2) returned exactly twice the product for such
    # shapes; every path must equal the int64 product.
    rng = np.random.default_rng(m * n * k)
    A = rng.integers(-127, 128, (m, k), dtype=np.int8)
    B = rng.integers(-127, 128, (n, k), dtype=np.int8)
    want = A.astype(np.int64) @ B.astype(np.int64).T
    got = F.int8_linear_matmul(jnp.asarray(A), jnp.asarray(B), implementation=implementation)
    np.testing.assert_array_equal(np.asarray(got), want)
    ones = jnp.ones((m,), jnp.float32) * 127, jnp.ones((n,), jnp.float32) * 127
    deq = F.int8_linear_matmul_dequant(
        jnp.asarray(A), jnp.asarray(B), *ones, None, jnp.float32, implementation=implementation
    )
    np.testing.assert_allclose(f32(deq), want.astype(np.float32), rtol=1e-3)
