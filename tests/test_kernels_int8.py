"""The Triton int8 kernels (fp8mm.pallas.int8_quant, int8_matmul_triton) against the reference.

Codes, statistics and int32 products must match bit for bit; the float16
dequant epilogue within one float16 ulp (a GPU may contract it into an FMA).
On CPU the kernels run in Pallas interpret mode with small shapes; on a GPU
they are compiled and the large shapes run too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fp8mm
from fp8mm import dispatch, reference
from fp8mm.pallas import int8_matmul_triton as k8m
from fp8mm.pallas import int8_quant as k8q
from tests.helpers import assert_within_ulp

INTERPRET = jax.default_backend() != "gpu"
_CPU = jax.devices("cpu")[0]
gpu_only = pytest.mark.skipif(INTERPRET, reason="large shapes run only on a GPU")


def ref(fn, *args):
    """`fn` evaluated by XLA on the CPU.

    On a GPU, XLA's default --xla_allow_excess_precision removes the float16
    round trips that the reference relies on (f32 -> f16 -> f32 becomes a
    no-op), so the oracle is always computed on the CPU.
    """
    args = [jax.device_put(a, _CPU) if isinstance(a, jax.Array) else a for a in args]
    with jax.default_device(_CPU):
        return fn(*args)


def _floats(shape, seed=0, dtype=jnp.float16, zero_row=True, zero_col=True):
    """Heavy-tailed values with an all-zero row and column where the shape allows."""
    rng = np.random.default_rng(seed)
    x = rng.standard_t(3, size=shape).astype(np.float32) * 2.0
    x2 = x.reshape(-1, shape[-1]) if len(shape) else x
    if zero_row and x2.shape[0] > 2:
        x2[1] = 0.0
    if zero_col and x2.shape[1] > 2:
        x2[:, 2] = 0.0
    return jnp.asarray(x2.reshape(shape), dtype)


def _int8(shape, seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.integers(-128, 128, size=shape), jnp.int8)


def _stats(n, seed=0):
    rng = np.random.default_rng(seed)
    s = np.abs(rng.standard_normal(n)).astype(np.float32) * 3.0
    if n > 3:
        s[3] = 0.0
    return jnp.asarray(s)


def assert_equal(got, want):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, (
        f"{got.shape} {got.dtype} vs {want.shape} {want.dtype}"
    )
    bad = got != want
    if got.dtype.kind == "f":
        bad &= ~(np.isnan(got) & np.isnan(want))
    assert not bad.any(), f"{bad.sum()} of {bad.size} differ, first at {np.argwhere(bad)[:5]}"


# ----------------------------------------------------------------------------
# Row-wise and double quantization
# ----------------------------------------------------------------------------

QUANT_SHAPES = [(33, 70), (3, 5, 40), (1, 1), (40, 300)]
THRESHOLDS = [0.0, 2.5, 1e-4]  # 1e-4: every column holds an outlier


@pytest.mark.parametrize("shape", QUANT_SHAPES)
@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_vectorwise_quant(shape, threshold):
    A = _floats(shape, seed=len(shape) + shape[-1], zero_col=threshold != 1e-4)
    got = k8q.int8_vectorwise_quant(A, threshold, interpret=INTERPRET)
    want = ref(reference.int8_vectorwise_quant, A, threshold)
    for g, w in zip(got, want, strict=True):
        assert_equal(g, w)
    if threshold == 1e-4:
        assert bool(jnp.all(got[2])) and not bool(jnp.any(got[0]))


@pytest.mark.parametrize("shape", QUANT_SHAPES)
@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_double_quant(shape, threshold):
    A = _floats(shape, seed=shape[0])
    got = k8q.int8_double_quant(A, threshold, interpret=INTERPRET)
    want = ref(reference.int8_double_quant, A, threshold)
    for g, w in zip(got, want, strict=True):
        assert_equal(g, w)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_quant_input_dtypes(dtype):
    A = _floats((17, 33), seed=5, dtype=dtype)
    for g, w in zip(
        k8q.int8_double_quant(A, 3.0, interpret=INTERPRET),
        ref(reference.int8_double_quant, A, 3.0),
        strict=True,
    ):
        assert_equal(g, w)
    # Threshold 0 takes the single-pass kernel, which casts to float16 itself.
    for threshold in (0.0, 3.0):
        for g, w in zip(
            k8q.int8_vectorwise_quant(A, threshold, interpret=INTERPRET),
            ref(reference.int8_vectorwise_quant, A, threshold),
            strict=True,
        ):
            assert_equal(g, w)


def test_vectorwise_quant_long_rows_take_two_passes():
    k = k8q._ROW_QUANT_MAX_K + 3
    assert (
        k8q.choose_row_quant_config(2, k) is None
        and k8q.choose_row_quant_config(2, k - 3) is not None
    )
    A = _floats((2, k), seed=8)
    for g, w in zip(
        k8q.int8_vectorwise_quant(A, interpret=INTERPRET),
        ref(reference.int8_vectorwise_quant, A, 0.0),
        strict=True,
    ):
        assert_equal(g, w)


def test_double_quant_rounding_ties():
    # Column max 128 and row max 127 put many quotients exactly on n + 1/2,
    # where only a correctly rounded division gives the reference's codes.
    n = np.arange(-127, 127)
    col = np.float16(64 * (2 * n + 1) / 127).astype(np.float32)
    rows = (np.arange(-64, 64) + 0.5).astype(np.float32)
    A = np.zeros((n.size, 4), np.float32)
    A[:, 0] = col
    A[0, 0] = 128.0
    A[: rows.size, 1] = rows
    A[:, 2] = 127.0
    A[: rows.size, 3] = rows / 4
    A = jnp.asarray(A, jnp.float16)
    s = (np.asarray(A[:, 0], np.float32) * 127).astype(np.float16).astype(np.float32) / 128
    assert np.sum(s % 1 == 0.5) > 50  # the case really holds ties
    for threshold in (0.0, 100.0):
        got = k8q.int8_double_quant(A, threshold, interpret=INTERPRET)
        want = ref(reference.int8_double_quant, A, threshold)
        for g, w in zip(got, want, strict=True):
            assert_equal(g, w)


def test_quant_special_values():
    # fp8mm's NaN rule: a NaN makes its row's and its column's absmax NaN (so it reaches
    # every product it touches); NaN codes are 0; inf rows have absmax inf.
    A = np.asarray(_floats((9, 12), seed=3), np.float32)
    A[0, 0] = np.nan
    A[2, 3] = np.inf
    A[4, 5] = -np.inf
    A[6, 7] = 65504.0
    A = jnp.asarray(A, jnp.float16)
    for threshold in (0.0, 3.0):
        ca, cat, row, col, cols = k8q.int8_double_quant(A, threshold, interpret=INTERPRET)
        want_ca, want_row, want_cols = ref(reference.int8_vectorwise_quant, A, threshold)
        _, want_cat, _, want_col, _ = ref(reference.int8_double_quant, A, threshold)
        assert bool(jnp.isnan(col[0])) and bool(jnp.isnan(row[0]))
        assert not np.any(np.isnan(np.asarray(row)[1:]))
        for g, w in [
            (ca, want_ca),
            (row, want_row),
            (cols, want_cols),
            (cat, want_cat),
            (col, want_col),
        ]:
            assert_equal(g, w)
        assert int(np.asarray(ca).min()) >= -127 and int(np.asarray(cat).min()) >= -127
        got = k8q.int8_vectorwise_quant(A, threshold, interpret=INTERPRET)
        for g, w in zip(got, (want_ca, want_row, want_cols), strict=True):
            assert_equal(g, w)
    got = k8q.int8_vectorwise_quant_t(A.T, interpret=INTERPRET)
    for g, w in zip(got, ref(reference.int8_vectorwise_quant_t, A.T), strict=True):
        assert_equal(g, w)


def test_quant_all_zero():
    A = jnp.zeros((5, 7), jnp.float16)
    for g, w in zip(
        k8q.int8_double_quant(A, 1.0, interpret=INTERPRET),
        ref(reference.int8_double_quant, A, 1.0),
        strict=True,
    ):
        assert_equal(g, w)


# ----------------------------------------------------------------------------
# Fused quantize + transpose of a weight
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "dtype"), [((70, 17), jnp.float16), ((5, 300), jnp.bfloat16), ((1, 1), jnp.float32)]
)
def test_vectorwise_quant_t(shape, dtype):
    W = _floats(shape, seed=7, dtype=dtype)
    cb, scb = k8q.int8_vectorwise_quant_t(W, interpret=INTERPRET)
    want_cb, want_scb = ref(reference.int8_vectorwise_quant_t, W)
    assert cb.shape == (shape[1], shape[0])
    assert_equal(cb, want_cb)
    assert_equal(scb, want_scb)


# ----------------------------------------------------------------------------
# int8 matmul, fused and standalone dequant
# ----------------------------------------------------------------------------

MATMUL_SHAPES = [((33, 70), 17), ((3, 5, 70), 17), ((1, 1), 1), ((130, 300), 200)]


@pytest.mark.parametrize(("a_shape", "n"), MATMUL_SHAPES)
def test_linear_matmul(a_shape, n):
    A, B = _int8(a_shape, 1), _int8((n, a_shape[-1]), 2)
    assert_equal(
        k8m.int8_linear_matmul(A, B, interpret=INTERPRET), ref(reference.int8_linear_matmul, A, B)
    )


def test_linear_matmul_extremes():
    # Every product -128 * -128 or 127 * -128: the largest int32 sums.
    A = jnp.full((20, 300), -128, jnp.int8)
    B = jnp.concatenate([jnp.full((3, 300), -128, jnp.int8), jnp.full((3, 300), 127, jnp.int8)])
    assert_equal(
        k8m.int8_linear_matmul(A, B, interpret=INTERPRET), ref(reference.int8_linear_matmul, A, B)
    )


BIASES = [None, jnp.float16, jnp.float32, jnp.bfloat16]
OUT_DTYPES = [jnp.float16, jnp.bfloat16, jnp.float32]


def _bias(n, dtype, seed=4):
    if dtype is None:
        return None
    return jnp.asarray(np.random.default_rng(seed).standard_normal(n) * 4, dtype)


@pytest.mark.parametrize("bias_dtype", BIASES)
@pytest.mark.parametrize("out_dtype", OUT_DTYPES)
def test_linear_matmul_dequant(bias_dtype, out_dtype):
    a_shape, n = (2, 17, 70), 33
    A, B = _int8(a_shape, 1), _int8((n, 70), 2)
    row, col = _stats(34, 5)[:34].reshape(2, 17), _stats(n, 6)
    bias = _bias(n, bias_dtype)
    got = k8m.int8_linear_matmul_dequant(
        A, B, row, col, bias, out_dtype=out_dtype, interpret=INTERPRET
    )
    want = ref(reference.int8_linear_matmul_dequant, A, B, row, col, bias).astype(out_dtype)
    ulp_dtype = jnp.bfloat16 if out_dtype == jnp.bfloat16 else jnp.float16
    assert_within_ulp(got, want, ulp_dtype, bias)


@pytest.mark.parametrize("bias_dtype", BIASES)
@pytest.mark.parametrize("out_dtype", [jnp.float16, jnp.bfloat16])
def test_mm_dequant(bias_dtype, out_dtype):
    acc = jnp.asarray(np.random.default_rng(3).integers(-(2**20), 2**20, (3, 7, 45)), jnp.int32)
    row, col = _stats(21, 1).reshape(3, 7), _stats(45, 2)
    bias = _bias(45, bias_dtype)
    got = k8m.int8_mm_dequant(acc, row, col, bias, out_dtype=out_dtype, interpret=INTERPRET)
    want = ref(reference.int8_mm_dequant, acc, row, col, bias).astype(out_dtype)
    assert_within_ulp(got, want, jnp.bfloat16 if out_dtype == jnp.bfloat16 else jnp.float16, bias)


def test_mm_dequant_overflow_to_inf():
    # Results past float16's range become inf in both.
    acc = jnp.full((4, 4), 2**30, jnp.int32)
    row = jnp.full((4,), 100.0, jnp.float32)
    col = jnp.full((4,), 100.0, jnp.float32)
    got = k8m.int8_mm_dequant(acc, row, col, interpret=INTERPRET)
    assert_equal(got, ref(reference.int8_mm_dequant, acc, row, col))


# ----------------------------------------------------------------------------
# Zero-size inputs, validation, configs, the registry
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(0, 5), (4, 0), (2, 0, 3)])
def test_zero_size_quant(shape):
    A = jnp.zeros(shape, jnp.float16)
    for fn in ("int8_vectorwise_quant", "int8_double_quant"):
        got = getattr(k8q, fn)(A, 1.0, interpret=INTERPRET)
        want = ref(getattr(reference, fn), A, 1.0)
        for g, w in zip(got, want, strict=True):
            assert_equal(g, w)
    if len(shape) == 2:
        for g, w in zip(
            k8q.int8_vectorwise_quant_t(A, interpret=INTERPRET),
            ref(reference.int8_vectorwise_quant_t, A),
            strict=True,
        ):
            assert_equal(g, w)


@pytest.mark.parametrize(("m", "n", "k"), [(0, 3, 4), (3, 0, 4), (3, 4, 0)])
def test_zero_size_matmul(m, n, k):
    A, B = jnp.zeros((m, k), jnp.int8), jnp.zeros((n, k), jnp.int8)
    assert_equal(
        k8m.int8_linear_matmul(A, B, interpret=INTERPRET), ref(reference.int8_linear_matmul, A, B)
    )
    row, col, bias = jnp.ones((m,)), jnp.ones((n,)), jnp.ones((n,), jnp.float16)
    assert_equal(
        k8m.int8_linear_matmul_dequant(A, B, row, col, bias, interpret=INTERPRET),
        ref(reference.int8_linear_matmul_dequant, A, B, row, col, bias),
    )
    acc = jnp.zeros((m, n), jnp.int32)
    assert_equal(
        k8m.int8_mm_dequant(acc, row, col, bias, out_dtype=jnp.float32, interpret=INTERPRET),
        ref(reference.int8_mm_dequant, acc, row, col, bias).astype(jnp.float32),
    )


def test_validation():
    # Arguments are validated once, by the public primitive, before any kernel runs.
    A = jnp.ones((4, 8), jnp.float16)
    with pytest.raises(TypeError, match="A"):
        fp8mm.int8_vectorwise_quant(jnp.ones((4, 8), jnp.int8), implementation="pallas")
    with pytest.raises(ValueError, match="threshold"):
        fp8mm.int8_double_quant(A, -1.0, implementation="pallas")
    with pytest.raises(TypeError, match="threshold"):
        fp8mm.int8_vectorwise_quant(A, jnp.float32(1.0) + jnp.zeros(()), implementation="pallas")
    with pytest.raises(ValueError, match="W"):
        fp8mm.int8_vectorwise_quant_t(jnp.ones((2, 3, 4), jnp.float16), implementation="pallas")
    a8, b8 = jnp.ones((4, 8), jnp.int8), jnp.ones((3, 8), jnp.int8)
    with pytest.raises(TypeError, match="B"):
        fp8mm.int8_linear_matmul(a8, b8.astype(jnp.int32), implementation="pallas")
    with pytest.raises(ValueError, match="k"):
        fp8mm.int8_linear_matmul(a8, jnp.ones((3, 9), jnp.int8), implementation="pallas")
    with pytest.raises(ValueError, match="row_stats"):
        fp8mm.int8_linear_matmul_dequant(
            a8, b8, jnp.ones((5,)), jnp.ones((3,)), implementation="pallas"
        )
    acc = jnp.ones((4, 3), jnp.int32)
    with pytest.raises(ValueError, match="bias"):
        fp8mm.int8_mm_dequant(acc, jnp.ones(4), jnp.ones(3), jnp.ones(4), implementation="pallas")
    # out_dtype is the kernel's own argument (fp8mm.int8_mm_dequant returns float16): it checks it.
    with pytest.raises(ValueError, match="out_dtype"):
        k8m.int8_mm_dequant(acc, jnp.ones(4), jnp.ones(3), out_dtype=jnp.int8)


def test_config_validation():
    A = _floats((9, 20), seed=2)
    with pytest.raises(ValueError, match="power of two"):
        k8q.Tile(3, 64)
    with pytest.raises(ValueError, match="block_k"):
        k8m.MatmulConfig(64, 64, 16)
    # The single-pass row kernel holds whole rows: a tile narrower than k cannot serve.
    with pytest.raises(ValueError, match="Tile"):
        k8q.int8_vectorwise_quant(A, config=k8q.Tile(8, 16), interpret=INTERPRET)
    with pytest.raises(TypeError, match="config"):
        k8m.int8_linear_matmul(_int8((4, 8)), _int8((3, 8)), config=k8q.Tile(16, 16))


def test_given_configs_match_the_heuristics():
    """Every config of a search space gives the same bits (the heuristic's is one of them)."""
    A = _floats((40, 300), seed=6)
    want = k8q.int8_double_quant(A, 2.5, interpret=INTERPRET)
    space = k8q.quant_search_space(40, 300)
    assert k8q.choose_quant_config(40, 300) in space
    for cfg in space[:3]:
        for g, w in zip(
            k8q.int8_double_quant(A, 2.5, config=cfg, interpret=INTERPRET), want, strict=True
        ):
            assert_equal(g, w)
    assert k8q.choose_row_quant_config(40, 300) in k8q.row_quant_search_space(40, 300)
    cfg = k8q.row_quant_search_space(40, 300)[-1]
    for g, w in zip(
        k8q.int8_vectorwise_quant(A, config=cfg, interpret=INTERPRET),
        ref(reference.int8_vectorwise_quant, A, 0.0),
        strict=True,
    ):
        assert_equal(g, w)
    assert k8q.choose_quant_t_config(300, 40) in k8q.quant_t_search_space(300, 40)
    cb, scb = k8q.int8_vectorwise_quant_t(
        A.T, config=k8q.quant_t_search_space(300, 40)[0], interpret=INTERPRET
    )
    want_cb, want_scb = ref(reference.int8_vectorwise_quant_t, A.T)
    assert_equal(cb, want_cb)
    assert_equal(scb, want_scb)
    A8, B8 = _int8((130, 300), 1), _int8((200, 300), 2)
    space = k8m.matmul_search_space(130, 200, 300)
    assert k8m.choose_matmul_config(130, 200, 300) in space
    assert_equal(
        k8m.int8_linear_matmul(A8, B8, config=space[0], interpret=INTERPRET),
        ref(reference.int8_linear_matmul, A8, B8),
    )
    assert k8m.choose_dequant_config(130, 200) in k8m.dequant_search_space(130, 200)


def test_kernels_table():
    names = {
        "int8_vectorwise_quant",
        "int8_double_quant",
        "int8_vectorwise_quant_t",
        "int8_linear_matmul",
        "int8_mm_dequant",
        "int8_linear_matmul_dequant",
    }
    for name in names:
        triton = {k.name: k for k in dispatch.REGISTRY[name].kernels}["pallas_triton"]
        module = k8m if "dequant" in name or "matmul" in name else k8q
        assert triton.module == module.__name__ and triton.interpretable
        assert callable(getattr(module, name)) and callable(getattr(module, f"supported_{name}"))
    a8, b8 = jnp.ones((4, 8), jnp.int8), jnp.ones((3, 8), jnp.int8)
    assert k8m.supported_int8_linear_matmul(a8, b8) is None
    # A mismatched k (and any other invalid argument) is refused before the kernels are asked.
    with pytest.raises(ValueError, match="k"):
        fp8mm.int8_linear_matmul(a8, jnp.ones((3, 9), jnp.int8), implementation="pallas_triton")
    assert k8q.supported_int8_vectorwise_quant(jnp.ones((2, 2)), 0.0) is None
    with pytest.raises(TypeError, match="A"):
        fp8mm.int8_double_quant(a8, 0.0, implementation="pallas_triton")
    row, col = jnp.ones((4,)), jnp.ones((3,))
    assert k8m.supported_int8_linear_matmul_dequant(a8, b8, row, col) is None
    with pytest.raises(TypeError, match="acc"):
        fp8mm.int8_mm_dequant(jnp.ones((4, 3)), row, col, implementation="pallas_triton")
    # What the kernels themselves refuse: operands beyond their int32 indexing.
    big = jax.ShapeDtypeStruct((2**16, 8), jnp.int8)
    assert "int32 indexing" in k8m.supported_int8_linear_matmul(big, big)
    assert "int32 indexing" in k8q.supported_int8_double_quant(
        jax.ShapeDtypeStruct((2**16, 2**15), jnp.float16)
    )


def test_jit_no_retrace():
    A = _floats((9, 20), seed=2)
    f = jax.jit(lambda a: k8q.int8_double_quant(a, 2.0, interpret=INTERPRET))
    for g, w in zip(f(A), ref(reference.int8_double_quant, A, 2.0), strict=True):
        assert_equal(g, w)


# ----------------------------------------------------------------------------
# Large shapes (GPU only)
# ----------------------------------------------------------------------------


@gpu_only
@pytest.mark.parametrize(("m", "n", "k"), [(4096, 4096, 4096), (1000, 3000, 2000)])
def test_large_matmul(m, n, k):
    A, B = _int8((m, k), 1), _int8((n, k), 2)
    assert_equal(k8m.int8_linear_matmul(A, B), ref(reference.int8_linear_matmul, A, B))
    row, col, bias = _stats(m, 3), _stats(n, 4) / 64, _bias(n, jnp.float16)
    assert_within_ulp(
        k8m.int8_linear_matmul_dequant(A, B, row, col, bias),
        ref(reference.int8_linear_matmul_dequant, A, B, row, col, bias),
        bias=bias,
    )
    acc = jnp.asarray(np.asarray(ref(reference.int8_linear_matmul, A, B)))
    assert_within_ulp(
        k8m.int8_mm_dequant(acc, row, col, bias),
        ref(reference.int8_mm_dequant, acc, row, col, bias),
        bias=bias,
    )


@gpu_only
@pytest.mark.parametrize("shape", [(4096, 4096), (1000, 3000)])
@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_large_quant(shape, threshold):
    A = _floats(shape, seed=9)
    for g, w in zip(
        k8q.int8_double_quant(A, threshold),
        ref(reference.int8_double_quant, A, threshold),
        strict=True,
    ):
        assert_equal(g, w)
    for g, w in zip(
        k8q.int8_vectorwise_quant(A, threshold),
        ref(reference.int8_vectorwise_quant, A, threshold),
        strict=True,
    ):
        assert_equal(g, w)
    for g, w in zip(
        k8q.int8_vectorwise_quant_t(A), ref(reference.int8_vectorwise_quant_t, A), strict=True
    ):
        assert_equal(g, w)
