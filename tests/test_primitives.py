"""Edge cases, argument validation and transformations of the primitives, on every implementation.

Interpreted Pallas (the CPU) runs the cheap edge cases; the kernels' own suites
(test_kernels_*.py) and test_numerics.py cover the rest there.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fp8mm
from fp8mm import dispatch
from fp8mm import reference as ref
from tests.helpers import CPU, assert_trees_equal, cpu_subset, rand, rand_int8, skip_xla_on_gpu

CODE = jnp.asarray(fp8mm.e4m3_code())
FLOATS = [jnp.float32, jnp.float16, jnp.bfloat16]


# --------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("dtype", FLOATS)
def test_blockwise_all_zero_blocks(implementation, dtype):
    cpu_subset(implementation, dtype == jnp.bfloat16)
    A = jnp.zeros((3, 64), dtype).at[1].set(rand((64,), dtype))
    q, st = fp8mm.quantize_blockwise(A, CODE, blocksize=64, implementation=implementation)
    np.testing.assert_array_equal(np.asarray(st.absmax)[[0, 2]], 0.0)
    # bitsandbytes: 0 * (1/0) = NaN walks the search down to code 0; it dequantizes to -0.
    assert np.all(np.asarray(q)[[0, 2]] == 0)
    deq = fp8mm.dequantize_blockwise(q, st, implementation=implementation)
    assert not np.isnan(np.asarray(deq, np.float32)).any()
    np.testing.assert_array_equal(np.asarray(deq, np.float32)[[0, 2]], 0.0)
    fq = fp8mm.fake_quant_blockwise(A, CODE, 64, implementation=implementation)
    np.testing.assert_array_equal(np.asarray(fq, np.float32), np.asarray(deq, np.float32))


def test_global_all_zero(implementation):
    q, st = fp8mm.quantize(jnp.zeros((5, 7)), CODE, implementation=implementation)
    out = np.asarray(fp8mm.dequantize(q, st, implementation=implementation))
    assert float(st.absmax) == 0.0 and not np.isnan(out).any() and np.all(out == 0)


@pytest.mark.parametrize(
    "fn",
    [
        lambda A, impl: fp8mm.quantize_blockwise(A, CODE, blocksize=64, implementation=impl),
        lambda A, impl: fp8mm.quantize(A, CODE, implementation=impl),
        lambda A, impl: (
            fp8mm.fake_quant_blockwise(A, CODE, 64, implementation=impl),
            fp8mm.fake_quant_global(A, CODE, implementation=impl),
        ),
    ],
    ids=["quantize_blockwise", "quantize", "fake_quant"],
)
@pytest.mark.parametrize("shape", [(0,), (0, 5), (3, 0, 4)])
def test_codebook_zero_size(implementation, fn, shape):
    out = fn(jnp.zeros(shape, jnp.float16), implementation)
    for leaf in jax.tree_util.tree_leaves(out):
        # every output is empty except the 256-entry code and a global scalar absmax
        assert leaf.size == 0 or leaf.shape in ((256,), ()), leaf.shape
    q, st = fp8mm.quantize_blockwise(
        jnp.zeros(shape), CODE, blocksize=64, implementation=implementation
    )
    assert q.shape == shape and st.absmax.shape == (0,)
    assert fp8mm.dequantize_blockwise(q, st, implementation=implementation).shape == shape


@pytest.mark.parametrize("shape", [(0, 8), (4, 0), (2, 0, 8)])
def test_int8_zero_size(implementation, shape):
    A = jnp.zeros(shape, jnp.float16)
    CA, CAt, rs, cs, cols = fp8mm.int8_double_quant(A, 1.0, implementation=implementation)
    assert CA.shape == shape and CAt.shape == shape and rs.shape == shape[:-1]
    assert cs.shape == (shape[-1],) and cols.shape == (shape[-1],)
    B = jnp.zeros((5, shape[-1]), jnp.int8)
    acc = fp8mm.int8_linear_matmul(CA, B, implementation=implementation)
    assert acc.shape == (*shape[:-1], 5) and acc.dtype == jnp.int32
    out = fp8mm.int8_mm_dequant(acc, rs, jnp.ones((5,)), implementation=implementation)
    assert out.shape == acc.shape and out.dtype == jnp.float16


def test_int8_all_zero_rows_and_columns(implementation):
    cpu_subset(implementation)
    A = rand((6, 10), jnp.float16).at[2].set(0).at[:, 3].set(0)
    CA, CAt, rs, cs, _ = fp8mm.int8_double_quant(A, implementation=implementation)
    assert rs[2] == 0 and cs[3] == 0
    assert np.all(np.asarray(CA)[2] == 0) and np.all(np.asarray(CAt)[:, 3] == 0)
    out = fp8mm.int8_mm_dequant(
        fp8mm.int8_linear_matmul(CA, CA, implementation=implementation),
        rs,
        rs,
        implementation=implementation,
    )
    assert not np.isnan(np.asarray(out, np.float32)).any()


def test_int8_threshold_outliers(implementation):
    cpu_subset(implementation)
    A = rand((8, 12), jnp.float16, scale=0.5).at[3, 5].set(10.0).at[6, 9].set(-7.0)
    CA, CAt, rs, cs, cols = fp8mm.int8_double_quant(A, threshold=6.0, implementation=implementation)
    np.testing.assert_array_equal(fp8mm.outlier_indices(cols), [5, 9])
    assert np.all(np.asarray(CA)[:, [5, 9]] == 0)
    # outliers are left out of both statistics
    assert float(rs[3]) == float(jnp.max(jnp.abs(A[3].at[5].set(0))))
    assert float(cs[5]) == float(jnp.max(jnp.abs(A[:, 5].at[3].set(0))))
    assert CAt[3, 5] == 0 and CAt[6, 9] == 0
    # threshold 0 reports no outliers
    assert not np.asarray(fp8mm.int8_vectorwise_quant(A, implementation=implementation)[2]).any()


def test_int8_codes_round_half_even(implementation):
    A = jnp.asarray([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5]], jnp.float16)
    CA, rs, _ = fp8mm.int8_vectorwise_quant(A, implementation=implementation)
    np.testing.assert_array_equal(np.asarray(CA)[0], [127, 0, 2, 2, 0, -2])


def test_int8_inf_and_nan_inputs(implementation):
    cpu_subset(implementation)
    A = jnp.asarray([[1.0, jnp.inf, 2.0], [jnp.nan, 1.0, -3.0]], jnp.float32)
    CA, CAt, rs, cs, _ = fp8mm.int8_double_quant(A, implementation=implementation)
    # row 0 absmax is inf: 127/inf = 0, so finite entries give 0 and inf*0 = NaN gives 0.
    assert np.isinf(rs[0]) and np.all(np.asarray(CA)[0] == 0)
    # a NaN makes its row's scale NaN (fp8mm's NaN rule, not bnb's fmaxf): every code of
    # the row is 0 and the NaN reaches the product through row_stats.
    assert np.isnan(rs[1]) and np.all(np.asarray(CA)[1] == 0)
    assert np.isnan(cs[0]) and np.all(np.asarray(CAt)[:, 0] == 0)


def test_float16_overflow_in_column_quant(implementation):
    # torch computes A.mul(127) in float16: |x| > 515.8 overflows to inf (bitsandbytes
    # then returns -1 or 0); fp8mm gives the intended round(127 x / col_absmax).
    A = jnp.asarray([[600.0, 1.0, -1169.0], [-300.0, 2.0, 600.0], [2005.0, 0.0, 3.0]], jnp.float16)
    _, CAt, _, cs, _ = fp8mm.int8_double_quant(A, implementation=implementation)
    assert float(cs[0]) == 2005.0
    np.testing.assert_array_equal(np.asarray(CAt)[:, 0], [38, -19, 127])
    np.testing.assert_array_equal(np.asarray(CAt)[:, 2], [-127, 65, 0])


def test_dequant_bias_dtypes(implementation):
    acc = jnp.asarray([[1000, -2000, 3]], jnp.int32)
    rs, cs = jnp.asarray([2.0]), jnp.asarray([1.0, 0.5, 3.0])
    base = np.asarray(fp8mm.int8_mm_dequant(acc, rs, cs, implementation=implementation), np.float32)
    np.testing.assert_allclose(base, np.asarray(acc) * 2 * np.asarray(cs) / 127**2, rtol=1e-3)
    for bdt in FLOATS:
        b = jnp.asarray([0.25, -1.0, 2.0], bdt)
        out = fp8mm.int8_mm_dequant(acc, rs, cs, b, implementation=implementation)
        assert out.dtype == jnp.float16
        np.testing.assert_allclose(
            np.asarray(out, np.float32), base + np.asarray(b, np.float32), rtol=2e-3, atol=1e-3
        )


def test_3d_inputs(implementation):
    cpu_subset(implementation)
    A = rand((2, 3, 40), jnp.bfloat16)
    q, st = fp8mm.quantize_blockwise(A, CODE, blocksize=32, implementation=implementation)
    q2, st2 = fp8mm.quantize_blockwise(
        A.reshape(-1), CODE, blocksize=32, implementation=implementation
    )
    np.testing.assert_array_equal(np.asarray(q).ravel(), np.asarray(q2))
    CA, CAt, rs, cs, cols = fp8mm.int8_double_quant(A, implementation=implementation)
    CA2, CAt2, rs2, cs2, _ = fp8mm.int8_double_quant(
        A.reshape(6, 40), implementation=implementation
    )
    assert CA.shape == A.shape and rs.shape == (2, 3)
    np.testing.assert_array_equal(np.asarray(CA).reshape(6, 40), np.asarray(CA2))
    np.testing.assert_array_equal(np.asarray(CAt).reshape(6, 40), np.asarray(CAt2))
    np.testing.assert_array_equal(np.asarray(cs), np.asarray(cs2))
    B = jnp.ones((7, 40), jnp.int8)
    acc = fp8mm.int8_linear_matmul(CA, B, implementation=implementation)
    assert acc.shape == (2, 3, 7)
    out = fp8mm.int8_mm_dequant(acc, rs, jnp.ones((7,)), implementation=implementation)
    assert out.shape == (2, 3, 7)


def test_int8_matmul_exact_extremes(implementation):
    A = jnp.full((3, 4096), -127, jnp.int8)
    B = jnp.full((2, 4096), -127, jnp.int8)
    np.testing.assert_array_equal(
        np.asarray(fp8mm.int8_linear_matmul(A, B, implementation=implementation)), 127 * 127 * 4096
    )


# --------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: fp8mm.quantize_blockwise(jnp.ones(8, jnp.int32), CODE), TypeError, "int32"),
        (lambda: fp8mm.quantize_blockwise(jnp.ones(8), CODE, blocksize=100), ValueError, "100"),
        (lambda: fp8mm.quantize_blockwise(jnp.ones(8), CODE, blocksize=8192), ValueError, "8192"),
        (lambda: fp8mm.quantize_blockwise(jnp.ones(8), CODE, blocksize=16), ValueError, "16"),
        (lambda: fp8mm.quantize_blockwise(jnp.ones(8), CODE, blocksize=64.0), TypeError, "64.0"),
        (lambda: fp8mm.quantize_blockwise(jnp.ones(8), CODE[:128]), ValueError, r"\(128,\)"),
        (
            lambda: fp8mm.quantize_blockwise(jnp.ones(8), CODE.astype(jnp.float16)),
            TypeError,
            "float16",
        ),
        (lambda: fp8mm.quantize([1.0, 2.0], CODE), TypeError, "list"),
        (lambda: fp8mm.int8_vectorwise_quant(jnp.ones((2, 2)), -1.0), ValueError, "-1.0"),
        (lambda: fp8mm.int8_vectorwise_quant(jnp.ones((2, 2)), float("nan")), ValueError, "nan"),
        (lambda: fp8mm.int8_double_quant(jnp.ones((2, 2), jnp.int8)), TypeError, "int8"),
        (lambda: fp8mm.int8_double_quant(jnp.float32(1.0)), ValueError, "dimension"),
        (
            lambda: fp8mm.int8_linear_matmul(jnp.ones((2, 3)), jnp.ones((4, 3), jnp.int8)),
            TypeError,
            "float32",
        ),
        (
            lambda: fp8mm.int8_linear_matmul(
                jnp.ones((2, 3), jnp.int8), jnp.ones((4, 5), jnp.int8)
            ),
            ValueError,
            r"\(4, 5\)",
        ),
        (
            lambda: fp8mm.int8_linear_matmul(jnp.ones((2, 3), jnp.int8), jnp.ones((3,), jnp.int8)),
            ValueError,
            "dimension",
        ),
        (
            lambda: fp8mm.int8_mm_dequant(jnp.ones((2, 3)), jnp.ones(2), jnp.ones(3)),
            TypeError,
            "acc",
        ),
        (
            lambda: fp8mm.int8_mm_dequant(jnp.ones((2, 3), jnp.int32), jnp.ones(3), jnp.ones(3)),
            ValueError,
            "row_stats",
        ),
        (
            lambda: fp8mm.int8_mm_dequant(jnp.ones((2, 3), jnp.int32), jnp.ones(2), jnp.ones(2)),
            ValueError,
            "col_stats",
        ),
        (
            lambda: fp8mm.int8_mm_dequant(
                jnp.ones((2, 3), jnp.int32), jnp.ones(2), jnp.ones(3), jnp.ones(4)
            ),
            ValueError,
            "bias",
        ),
        (
            lambda: fp8mm.quantize_blockwise(jnp.ones(8), CODE, implementation="cuda"),
            ValueError,
            "cuda",
        ),
    ],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_state_mismatch_errors(implementation):
    cpu_subset(implementation)
    q, st = fp8mm.quantize_blockwise(
        jnp.ones((4, 8)), CODE, blocksize=32, implementation=implementation
    )
    with pytest.raises(ValueError, match="shape"):
        fp8mm.dequantize_blockwise(q.reshape(8, 4), st, implementation=implementation)
    with pytest.raises(ValueError, match="dequantize"):
        fp8mm.dequantize(q, st, implementation=implementation)
    qg, sg = fp8mm.quantize(jnp.ones((4, 8)), CODE, implementation=implementation)
    with pytest.raises(ValueError, match="dequantize"):
        fp8mm.dequantize_blockwise(qg, sg, implementation=implementation)
    with pytest.raises(TypeError, match="uint8"):
        fp8mm.dequantize(qg.astype(jnp.int32), sg, implementation=implementation)


def test_outlier_indices_rejects_tracers():
    with pytest.raises(TypeError, match="jit"):
        jax.jit(fp8mm.outlier_indices)(jnp.zeros(3, bool))


# --------------------------------------------------------------- transformations


def test_jit_no_retrace(implementation):
    cpu_subset(implementation)
    traces = []

    @jax.jit
    def f(A):
        traces.append(1)
        q, st = fp8mm.quantize_blockwise(A, CODE, blocksize=64, implementation=implementation)
        CA, CAt, rs, cs, cols = fp8mm.int8_double_quant(A, 2.0, implementation=implementation)
        acc = fp8mm.int8_linear_matmul(CA, CAt, implementation=implementation)
        return q, st, fp8mm.int8_mm_dequant(acc, rs, rs, implementation=implementation), cols

    for seed in range(3):
        out = f(rand((16, 16), seed=seed))
    assert len(traces) == 1
    want = fp8mm.quantize_blockwise(
        rand((16, 16), seed=2), CODE, blocksize=64, implementation=implementation
    )[0]
    np.testing.assert_array_equal(np.asarray(out[0]), np.asarray(want))


def test_quant_state_is_pytree(implementation):
    cpu_subset(implementation)
    q, st = fp8mm.quantize_blockwise(
        rand((4, 40)), CODE, blocksize=32, implementation=implementation
    )
    leaves, tree = jax.tree_util.tree_flatten(st)
    assert len(leaves) == 2  # absmax and code; blocksize, dtype and shape are static
    st2 = jax.tree_util.tree_unflatten(tree, leaves)
    assert st2.blocksize == 32 and st2.shape == (4, 40)
    out = jax.jit(lambda q, st: fp8mm.dequantize_blockwise(q, st, implementation=implementation))(
        q, st
    )
    np.testing.assert_array_equal(
        np.asarray(out),
        np.asarray(fp8mm.dequantize_blockwise(q, st, implementation=implementation)),
    )


def test_vmap(implementation):
    cpu_subset(implementation)
    A = rand((3, 5, 64), jnp.float16)
    q, st = jax.vmap(
        lambda a: fp8mm.quantize_blockwise(a, CODE, blocksize=64, implementation=implementation)
    )(A)
    for i in range(3):
        qi, sti = fp8mm.quantize_blockwise(A[i], CODE, blocksize=64, implementation=implementation)
        np.testing.assert_array_equal(np.asarray(q[i]), np.asarray(qi))
        np.testing.assert_array_equal(np.asarray(st.absmax[i]), np.asarray(sti.absmax))
    CA, rs, cols = jax.vmap(
        lambda a: fp8mm.int8_vectorwise_quant(a, 1.0, implementation=implementation)
    )(A)
    for i in range(3):
        want = fp8mm.int8_vectorwise_quant(A[i], 1.0, implementation=implementation)
        assert_trees_equal((CA[i], rs[i], cols[i]), want)
    B = jnp.ones((4, 64), jnp.int8)
    acc = jax.vmap(lambda a: fp8mm.int8_linear_matmul(a, B, implementation=implementation))(CA)
    np.testing.assert_array_equal(
        np.asarray(acc), np.asarray(fp8mm.int8_linear_matmul(CA, B, implementation=implementation))
    )


def test_implementation_context_and_env(monkeypatch):
    assert fp8mm.default_implementation() is None
    with fp8mm.use_implementation("xla"):
        assert fp8mm.default_implementation() == "xla"
    monkeypatch.setenv("FP8MM_IMPLEMENTATION", "xla")
    assert fp8mm.default_implementation() == "xla"
    with fp8mm.use_implementation(None):  # back to the automatic choice
        assert fp8mm.default_implementation() is None
    with fp8mm.use_implementation("pallas"):
        assert fp8mm.default_implementation() == "pallas"
    monkeypatch.setenv("FP8MM_IMPLEMENTATION", "tpu")
    with pytest.raises(ValueError, match="tpu"):
        fp8mm.default_implementation()


def test_cpu_default_device_runs_cpu_paths():
    """Under jax.default_device(cpu) the automatic choice is XLA and "pallas" interprets.

    On a GPU machine this is what keeps compiled GPU kernels off the CPU device.
    """
    A = jnp.asarray(np.random.default_rng(0).standard_normal((4, 64)), jnp.float32)
    code = fp8mm.e4m3_code()
    with jax.default_device(jax.devices("cpu")[0]):
        assert not dispatch.on_gpu()
        args = (A, code, 64)
        assert dispatch.resolve("quantize_blockwise", None, *args) == "xla"
        q, _ = fp8mm.quantize_blockwise(A, code, blocksize=64, implementation="pallas")
        q_ref, _ = fp8mm.quantize_blockwise(A, code, blocksize=64, implementation="xla")
    np.testing.assert_array_equal(np.asarray(q), np.asarray(q_ref))


def test_kernel_names_and_sequences_on_cpu():
    """Kernels by name, and sequences of names, where only interpretable kernels can run.

    On the CPU (also under jax.default_device(cpu) on a GPU machine) an explicit
    "pallas_mosaic_gpu" is refused with the reason; in a sequence the next name serves.
    """
    A = rand((4, 64))
    code = fp8mm.e4m3_code()
    a8 = rand_int8((8, 64), seed=1, low=-127)
    matmul = dispatch.REGISTRY["int8_linear_matmul"]
    assert matmul.implementations == ("xla", "pallas_mosaic_gpu", "pallas_triton")
    assert dispatch.REGISTRY["quantize_blockwise"].implementations == ("xla", "pallas_triton")
    with jax.default_device(CPU):
        want = np.asarray(fp8mm.int8_linear_matmul(a8, a8, implementation="xla"))
        with pytest.raises(NotImplementedError, match="pallas_mosaic_gpu: it runs only compiled"):
            fp8mm.int8_linear_matmul(a8, a8, implementation="pallas_mosaic_gpu")
        with pytest.raises(NotImplementedError, match="pallas_mosaic_gpu: it has no such kernel"):
            fp8mm.quantize_blockwise(A, code, blocksize=64, implementation="pallas_mosaic_gpu")
        seq = ("pallas_mosaic_gpu", "pallas_triton")
        assert matmul.resolve(seq, a8, a8) == "pallas_triton"
        got = fp8mm.int8_linear_matmul(a8, a8, implementation=seq)
        np.testing.assert_array_equal(np.asarray(got), want)
        q_ref, _ = fp8mm.quantize_blockwise(A, code, blocksize=64, implementation="xla")
        with fp8mm.use_implementation(("pallas_triton", "xla")):
            assert fp8mm.default_implementation() == ("pallas_triton", "xla")
            assert dispatch.resolve("quantize_blockwise", None, A, code, 64) == "pallas_triton"
            q, _ = fp8mm.quantize_blockwise(A, code, blocksize=64)
    np.testing.assert_array_equal(np.asarray(q), np.asarray(q_ref))


def test_reference_matches_argmin_away_from_ties():
    x = jnp.linspace(-1, 1, 20001, dtype=jnp.float32)
    q = np.asarray(ref.nearest_code(x, CODE))
    code = np.asarray(CODE)
    d = np.abs(np.asarray(x)[:, None] - code[None, :])
    best = d.min(1)
    # the chosen code is always a nearest one (ties may pick either neighbour)
    np.testing.assert_allclose(d[np.arange(len(q)), q], best, rtol=0, atol=1e-7)


def test_column_quant_exact_tie_rounds_half_even(implementation):
    skip_xla_on_gpu(implementation)
    cpu_subset(implementation)
    # 0.30395508 * 127 rounds to 38.59375 in float16, and 38.59375 / 5.9375 is exactly 6.5:
    # torch's true division gives 6.5 and round-half-even 6. A reciprocal-multiply
    # (what XLA makes of a division by a broadcast) gives 6.5000005 and 7.
    A = jnp.asarray([[0.30395508, 1.0], [5.9375, 2.0], [-0.30395508, 0.5]], jnp.float16)
    _, CAt, _, cs, _ = fp8mm.int8_double_quant(A, implementation=implementation)
    assert float(cs[0]) == 5.9375
    np.testing.assert_array_equal(np.asarray(CAt)[:, 0], [6, 127, -6])
    f = jax.jit(lambda a: fp8mm.int8_double_quant(a, implementation=implementation)[1])
    np.testing.assert_array_equal(np.asarray(f(A)), np.asarray(CAt))


def test_int8_float16_subnormals_are_kept(implementation):
    # 4.8e-05 is a float16 subnormal; it must quantize like any other value.
    B = jnp.asarray([[4.804e-05, 0.00655365, -3e-06]], jnp.float16)
    CB, SCB, _ = fp8mm.int8_vectorwise_quant(B, implementation=implementation)
    assert float(SCB[0]) == float(np.float16(0.00655365))
    assert int(CB[0, 0]) == 1 and int(CB[0, 1]) == 127


def test_numpy_codes_of_any_float_width(implementation):
    """numpy codes stay concrete (the kernels cache their table); float64 becomes float32."""
    A = jnp.asarray(np.random.default_rng(4).standard_normal((3, 64)), jnp.float32)
    want = fp8mm.fake_quant_blockwise(A, CODE, 64, implementation=implementation)
    for code in (fp8mm.e4m3_code(), fp8mm.e4m3_code().astype(np.float64)):
        got = fp8mm.fake_quant_blockwise(A, code, 64, implementation=implementation)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
