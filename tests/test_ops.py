"""The custom-VJP matmuls: parity with bitsandbytes, hand-written gradients, transformations.

Every test takes the `implementation` fixture. Interpreted Pallas (the CPU) runs the
edge cases, one golden case and `test_kernels_match_xla`, whose agreement with XLA
(bit for bit for the fp8 ops) carries the XLA path's formula checks over to the kernels.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fp8mm
from tests import golden
from tests.helpers import (
    KERNEL_IMPLEMENTATIONS,
    ON_GPU,
    cpu_subset,
    on_cpu,
    rand,
    ref,
    skip_xla_on_gpu,
)
from tests.helpers import rel as rel_err

FW = jnp.asarray(fp8mm.e4m3_code())
BW = jnp.asarray(fp8mm.e5m2_code())
TOL = {jnp.float16: 1.5e-2, jnp.bfloat16: 1.5e-2, jnp.float32: 1e-4}
FP8_OPS = {"fp8_mixed": fp8mm.matmul_fp8_mixed, "fp8_global": fp8mm.matmul_fp8_global}


# ------------------------------------------------------------------------ golden parity


def _fp8_case(case):
    bsz, bsz2, dt = (int(v) for v in golden.get(case, "meta"))
    dtype = golden.DTYPES[dt]
    A, B, g = (jnp.asarray(golden.get(case, n)).astype(dtype) for n in ("A", "B", "g"))
    return A, B, g, bsz, bsz2, dtype


def _check_gradB(gB, case, tol):
    if golden.has(case, "gradB"):
        assert rel_err(gB, golden.get(case, "gradB")) <= tol
    else:  # the file keeps every 7th entry of the largest gradB (tools/make_test_golden.py)
        flat = jnp.asarray(gB).reshape(-1)[::7]
        assert rel_err(flat, golden.get(case, "gradB@every7")) <= tol


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("case", golden.cases("fp8_mixed") + golden.cases("fp8_global"))
def test_fp8_golden(implementation, case, jit):
    cpu_subset(implementation)
    A, B, g, bsz, bsz2, dtype = _fp8_case(case)
    op = FP8_OPS[case.split("/")[0]]
    # The golden file was made with get_block_sizes; check that ours agrees.
    assert fp8mm.get_block_sizes(A, B) == (bsz, bsz2)
    f = lambda a, b: op(a, b, FW, BW, bsz=bsz, bsz2=bsz2, implementation=implementation)
    if jit:
        f = jax.jit(f)
    out, vjp = jax.vjp(f, A, B)
    gA, gB = vjp(g)
    assert out.dtype == dtype and gA.dtype == dtype and gB.dtype == dtype
    tol = TOL[dtype]
    assert rel_err(out, golden.get(case, "out")) <= tol
    assert rel_err(gA, golden.get(case, "gradA")) <= tol
    _check_gradB(gB, case, tol)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("case", golden.cases("switchback"))
def test_switchback_golden(implementation, case, jit):
    cpu_subset(implementation, case == "switchback/0" and not jit)
    A, B, g = (jnp.asarray(golden.get(case, n)).astype(jnp.float16) for n in ("A", "B", "g"))
    thr = float(golden.get(case, "thr"))
    bias = (
        jnp.asarray(golden.get(case, "bias")).astype(jnp.float16)
        if golden.has(case, "bias")
        else None
    )
    f = lambda a, b, bi: fp8mm.switchback_bnb(
        a, b, threshold=thr, bias=bi, implementation=implementation
    )
    if jit:
        f = jax.jit(f)
    out, vjp = jax.vjp(f, A, B, bias)
    gA, gB, gBias = vjp(g)
    tol = TOL[jnp.float16]
    assert rel_err(out, golden.get(case, "out")) <= tol
    assert rel_err(gA, golden.get(case, "gradA")) <= tol
    assert rel_err(gB, golden.get(case, "gradB")) <= tol
    if bias is not None:
        assert gBias.dtype == jnp.float16
        assert rel_err(gBias, golden.get(case, "gradBias")) <= tol
    if thr == 0:
        want = golden.get(case, "out")
        got = np.asarray(out, np.float32)
        if not ON_GPU:
            # without outliers the forward is the bit-exact int8 pipeline (XLA and the
            # kernels interpreted)
            np.testing.assert_array_equal(got, want)
        else:
            # the Triton epilogue rounds (acc*scale) and (+ bias) separately where CUDA's
            # fmaf rounds once: one float16 ulp apart at most
            ulp = np.spacing(np.abs(want).astype(np.float16)).astype(np.float32)
            assert np.all(np.abs(got - want) <= ulp)


# ----------------------------------------------------------- hand-written formulas (§2)


def _fq_block(x, code, bs):
    return ref("fake_quant_blockwise", x, code, bs)


def _fq_global(x, code):
    return ref("fake_quant_global", x, code)


def _mm(a, b, dtype):
    """The float32 product (on the CPU, at full precision) rounded to `dtype`."""
    return on_cpu(
        lambda x, y: jnp.matmul(
            x.astype(jnp.float32), y.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST
        ).astype(dtype),
        a,
        b,
    )


SHAPES = [((8, 40), (40, 24)), ((2, 5, 70), (70, 33)), ((3, 130), (130, 9))]
# Each shape with two dtypes, so every dtype meets two shapes (2-D, 3-D, partial blocks)
# without the full cross product (CI time).
SHAPE_DTYPES = [
    (*SHAPES[0], jnp.float32),
    (*SHAPES[0], jnp.bfloat16),
    (*SHAPES[1], jnp.float16),
    (*SHAPES[1], jnp.float32),
    (*SHAPES[2], jnp.bfloat16),
    (*SHAPES[2], jnp.float16),
]


@pytest.mark.parametrize("sa, sb, dtype", SHAPE_DTYPES)
def test_fp8_mixed_formulas(implementation, sa, sb, dtype):
    skip_xla_on_gpu(implementation)
    cpu_subset(implementation)
    A, B, g = rand(sa, dtype, 1, 3.0), rand(sb, dtype, 2, 0.1), rand((*sa[:-1], sb[1]), dtype, 3)
    bsz, bsz2 = fp8mm.get_block_sizes(A, B)
    out, vjp = jax.vjp(
        lambda a, b: fp8mm.matmul_fp8_mixed(a, b, FW, BW, implementation=implementation), A, B
    )
    gA, gB = vjp(g)
    qB = _fq_global(B, FW)
    A2, g2 = A.reshape(-1, sa[-1]), g.reshape(-1, sb[1])
    want_out = _mm(_fq_block(A, FW, bsz).reshape(-1, sa[-1]), qB, dtype).reshape(out.shape)
    want_gA = _mm(_fq_block(g, BW, bsz2).reshape(-1, sb[1]), qB.T, dtype).reshape(sa)
    want_gB = _mm(A2.T, g2, dtype)  # unquantized and summed over the batch
    tol = TOL[dtype] / 10
    assert rel_err(out, want_out) <= tol
    assert rel_err(gA, want_gA) <= tol
    assert rel_err(gB, want_gB) <= tol
    assert gA.shape == A.shape and gB.shape == B.shape


@pytest.mark.parametrize("sa, sb, dtype", SHAPE_DTYPES)
def test_fp8_global_formulas(implementation, sa, sb, dtype):
    skip_xla_on_gpu(implementation)
    cpu_subset(implementation)
    A, B, g = rand(sa, dtype, 4, 3.0), rand(sb, dtype, 5, 0.1), rand((*sa[:-1], sb[1]), dtype, 6)
    out, vjp = jax.vjp(
        lambda a, b: fp8mm.matmul_fp8_global(a, b, FW, BW, implementation=implementation), A, B
    )
    gA, gB = vjp(g)
    qA, qB, qg = _fq_global(A, FW), _fq_global(B, FW), _fq_global(g, BW)
    A2, g2 = qA.reshape(-1, sa[-1]), qg.reshape(-1, sb[1])
    tol = TOL[dtype] / 10
    assert rel_err(out, _mm(A2, qB, dtype).reshape(out.shape)) <= tol
    assert rel_err(gA, _mm(g2, qB.T, dtype).reshape(sa)) <= tol
    # Q(Aᵀ) = Q(A)ᵀ for global quantization
    np.testing.assert_array_equal(np.asarray(_fq_global(A2.T, FW)), np.asarray(A2.T))
    assert rel_err(gB, _mm(A2.T, g2, dtype)) <= tol


def _switchback_formulas(A, B, bias, thr):
    """The semantics of docs/exactness.md written out with the reference primitives (A 2-D)."""
    dtype = A.dtype
    CA, SCA, cols = ref("int8_vectorwise_quant", A, thr)
    CB, SCB, _ = ref("int8_vectorwise_quant", B, 0.0)
    acc = ref("int8_linear_matmul", CA, CB)
    out = ref("int8_mm_dequant", acc, SCA, SCB).astype(jnp.float32)
    if bias is not None:
        out = out + bias.astype(jnp.float32)
    out = out.astype(dtype)
    if thr > 0:
        m = cols[None, :]
        extra = _mm(jnp.where(m, A, 0), jnp.where(m, B, 0).T, dtype)
        out = (out.astype(jnp.float32) + extra.astype(jnp.float32)).astype(dtype)
    W = (CB.astype(jnp.float32) * (SCB / 127.0)[:, None]).astype(dtype)
    return out, W


# Every dtype, bias and threshold value is covered; the full cross product is not
# needed (the bias handling depends on the dtype only through the fused float16 case).
@pytest.mark.parametrize(
    "dtype, with_bias",
    [(jnp.float16, False), (jnp.float16, True), (jnp.bfloat16, True), (jnp.float32, True)],
)
@pytest.mark.parametrize("thr", [0.0, 2.5])
@pytest.mark.parametrize("sa", [(12, 40), (2, 3, 40)])
def test_switchback_formulas(implementation, sa, with_bias, thr, dtype):
    cpu_subset(implementation)
    A = rand(sa, dtype, 7)
    B = rand((24, 40), dtype, 8, 0.2)
    g = rand((*sa[:-1], 24), dtype, 9)
    bias = rand((24,), dtype, 10) if with_bias else None
    out, vjp = jax.vjp(
        lambda a, b, bi: fp8mm.switchback_bnb(
            a, b, threshold=thr, bias=bi, implementation=implementation
        ),
        A,
        B,
        bias,
    )
    gA, gB, gBias = vjp(g)
    A2, g2 = A.reshape(-1, 40), g.reshape(-1, 24)
    want_out, W = _switchback_formulas(A2, B, bias, thr)
    tol = 2e-3 if dtype != jnp.bfloat16 else 1e-2
    gtol = 1e-3 if dtype != jnp.bfloat16 else 5e-3  # one rounding to the output dtype
    assert out.dtype == dtype and gA.dtype == dtype and gB.dtype == dtype
    assert rel_err(out.reshape(-1, 24), want_out) <= tol
    assert rel_err(gA.reshape(-1, 40), _mm(g2, W, dtype)) <= gtol
    assert rel_err(gB, _mm(g2.T, A2, dtype)) <= gtol  # 16-bit, not quantized
    if with_bias:
        assert gBias.shape == (24,) and gBias.dtype == dtype
        assert rel_err(gBias, g2.astype(jnp.float32).sum(0)) <= gtol
    if thr > 0:
        # the test data has outliers, so the 16-bit decomposition was exercised
        assert np.asarray(fp8mm.int8_vectorwise_quant(A2, thr)[2]).any()


# --------------------------------------------------------------- dtypes and edge cases


@pytest.mark.parametrize("op", ["fp8_mixed", "fp8_global", "switchback"])
def test_float32_params_get_float32_grads(implementation, op):
    cpu_subset(implementation)
    A = rand((6, 32), jnp.float16, 11)
    W = rand((32, 16), jnp.float32, 12, 0.1)  # float32 master weight
    b = rand((16,), jnp.float32, 13)

    def loss(a, w, bias):
        if op == "switchback":
            y = fp8mm.switchback_bnb(
                a, w.T.astype(a.dtype), bias=bias, implementation=implementation
            )
        else:
            y = FP8_OPS[op](a, w.astype(a.dtype), FW, BW, implementation=implementation)
            y = y + bias.astype(a.dtype)
        return jnp.sum(y.astype(jnp.float32) ** 2)

    gA, gW, gb = jax.grad(loss, argnums=(0, 1, 2))(A, W, b)
    assert gA.dtype == jnp.float16 and gW.dtype == jnp.float32 and gb.dtype == jnp.float32
    assert np.isfinite(np.asarray(gW)).all()


def test_weight_dtype_differs_from_activation(implementation):
    cpu_subset(implementation)
    A = rand((4, 32), jnp.bfloat16)
    B = rand((32, 8), jnp.float32, 1)
    for op in FP8_OPS.values():
        out, vjp = jax.vjp(lambda a, b: op(a, b, FW, BW, implementation=implementation), A, B)
        gA, gB = vjp(jnp.ones_like(out))
        assert out.dtype == jnp.bfloat16 and gA.dtype == jnp.bfloat16 and gB.dtype == jnp.float32
    out, vjp = jax.vjp(
        lambda a, b: fp8mm.switchback_bnb(a, b, implementation=implementation), A, B.T
    )
    gA, gB = vjp(jnp.ones_like(out))
    assert out.dtype == jnp.bfloat16 and gB.dtype == jnp.float32 and gB.shape == (8, 32)


def test_codes_get_zero_cotangents(implementation):
    cpu_subset(implementation)
    A, B = rand((4, 32)), rand((32, 8), seed=1)
    for op in FP8_OPS.values():
        loss = lambda fw, bw: jnp.sum(op(A, B, fw, bw, implementation=implementation))
        gfw, gbw = jax.grad(loss, argnums=(0, 1))(FW, BW)
        assert gfw.shape == (256,) and not np.asarray(gfw).any() and not np.asarray(gbw).any()


@pytest.mark.parametrize("op", ["fp8_mixed", "fp8_global", "switchback"])
def test_zero_size(implementation, op):
    # Interpreted on a CPU only SwitchBack (the one with its own kernels on this path);
    # on a GPU every op runs compiled.
    cpu_subset(implementation, op == "switchback")
    A = jnp.zeros((0, 32), jnp.float16)
    if op == "switchback":
        B = rand((8, 32), jnp.float16)
        bias = rand((8,), jnp.float16)
        f = lambda a, b, bi: fp8mm.switchback_bnb(
            a, b, bias=bi, threshold=1.0, implementation=implementation
        )
        out, vjp = jax.vjp(f, A, B, bias)
        gA, gB, gb = vjp(jnp.zeros_like(out))
        assert not np.asarray(gb).any()
    else:
        B = rand((32, 8), jnp.float16)
        out, vjp = jax.vjp(
            lambda a, b: FP8_OPS[op](a, b, FW, BW, implementation=implementation), A, B
        )
        gA, gB = vjp(jnp.zeros_like(out))
    assert out.shape == (0, 8) and gA.shape == (0, 32) and gB.shape == B.shape
    assert not np.asarray(gB).any()


@pytest.mark.parametrize("op", ["fp8_mixed", "fp8_global", "switchback"])
def test_dead_units_give_zeros_not_nan(implementation, op):
    cpu_subset(implementation, op == "switchback")
    A = rand((6, 64), jnp.float16).at[2].set(0)  # a dead row (all-zero after ReLU)
    if op == "switchback":
        B = rand((8, 64), jnp.float16).at[3].set(0)  # a dead output unit
        f = lambda a, b: fp8mm.switchback_bnb(a, b, implementation=implementation)
    else:
        B = rand((64, 8), jnp.float16).at[:, 3].set(0)
        f = lambda a, b: FP8_OPS[op](a, b, FW, BW, implementation=implementation)
    out, vjp = jax.vjp(f, A, B)
    grads = vjp(jnp.ones_like(out))
    for x in (out, *grads):
        assert np.isfinite(np.asarray(x, np.float32)).all()
    assert not np.asarray(out[2]).any() and not np.asarray(out[:, 3]).any()
    # all-zero inputs everywhere
    out0 = f(jnp.zeros_like(A), jnp.zeros_like(B))
    assert not np.asarray(out0).any()


def test_get_block_sizes():
    assert fp8mm.get_block_sizes((8, 64), (64, 48)) == (64, 64)
    assert fp8mm.get_block_sizes((8, 65), (65, 4097)) == (128, 4096)
    assert fp8mm.get_block_sizes((8, 4096), (100, 4096)) == (4096, 128)  # [out, in] weight
    assert fp8mm.get_block_sizes((8, 9000), (9000, 2)) == (4096, 64)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (
            lambda: fp8mm.matmul_fp8_mixed(rand((4, 8)), rand((9, 3)), FW, BW),
            ValueError,
            r"\(9, 3\)",
        ),
        (lambda: fp8mm.matmul_fp8_mixed(rand((8,)), rand((8, 3)), FW, BW), ValueError, "dimension"),
        (
            lambda: fp8mm.matmul_fp8_global(jnp.ones((4, 8), jnp.int32), rand((8, 3)), FW, BW),
            TypeError,
            "int32",
        ),
        (
            lambda: fp8mm.matmul_fp8_mixed(rand((4, 8)), rand((8, 3)), FW[:100], BW),
            ValueError,
            "256",
        ),
        (
            lambda: fp8mm.matmul_fp8_mixed(rand((4, 8)), rand((8, 3)), FW, BW, bsz=48),
            ValueError,
            "48",
        ),
        (lambda: fp8mm.switchback_bnb(rand((4, 8)), rand((8, 3))), ValueError, r"\(8, 3\)"),
        (
            lambda: fp8mm.switchback_bnb(rand((4, 8)), rand((3, 8)), threshold=-2.0),
            ValueError,
            "-2.0",
        ),
        (
            lambda: fp8mm.switchback_bnb(rand((4, 8)), rand((3, 8)), bias=rand((4,))),
            ValueError,
            "bias",
        ),
        (lambda: fp8mm.switchback_bnb(jnp.ones((4, 8), jnp.int8), rand((3, 8))), TypeError, "int8"),
        (lambda: fp8mm.switchback_bnb(rand((4, 8)), None), ValueError, "B is required"),
        (lambda: fp8mm.switchback_bnb(rand((4, 8)), rand((3, 8)), state="x"), TypeError, "str"),
    ],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ------------------------------------------------------------------------- SwitchBack state


def test_int8_inference_state(implementation):
    with fp8mm.use_implementation(implementation):
        A = rand((5, 48), jnp.float16, 20)
        B = rand((16, 48), jnp.float16, 21, 0.2)
        state = fp8mm.prepare_int8_weight(B)
        assert (
            state.CB.dtype == jnp.int8 and state.SCB.shape == (16,) and not state.has_fp16_weights
        )
        out_train = fp8mm.switchback_bnb(A, B)
        out_inf = fp8mm.switchback_bnb(A, None, state=state)
        np.testing.assert_array_equal(np.asarray(out_inf), np.asarray(out_train))
        # state is a pytree: it goes through jit as an argument
        out_jit = jax.jit(lambda a, s: fp8mm.switchback_bnb(a, None, state=s))(A, state)
        np.testing.assert_array_equal(np.asarray(out_jit), np.asarray(out_train))
        # gradA flows; there is no weight to train
        gA = jax.grad(
            lambda a: jnp.sum(fp8mm.switchback_bnb(a, None, state=state).astype(jnp.float32))
        )(A)
        assert gA.shape == A.shape and np.isfinite(np.asarray(gA)).all()
        with pytest.raises(ValueError, match="CB"):
            fp8mm.MatmulLtState(has_fp16_weights=False)


def test_int8_inference_with_outliers_matches_bnb_formula(implementation):
    cpu_subset(implementation)
    with fp8mm.use_implementation(implementation):
        A = rand((6, 32), jnp.float16, 22).at[1, 4].set(9.0)
        B = rand((10, 32), jnp.float16, 23, 0.2)
        state = fp8mm.prepare_int8_weight(B, threshold=5.0)
        out = fp8mm.switchback_bnb(A, None, state=state)
        CA, SCA, cols = ref("int8_vectorwise_quant", A, 5.0)
        base = ref("int8_mm_dequant", ref("int8_linear_matmul", CA, state.CB), SCA, state.SCB)
        Wd = (state.CB.astype(jnp.float32) * state.SCB[:, None] / 127.0).astype(jnp.float16)
        extra = _mm(jnp.where(cols[None], A, 0), jnp.where(cols[None], Wd, 0).T, jnp.float16)
        want = (base.astype(jnp.float32) + extra.astype(jnp.float32)).astype(jnp.float16)
        assert rel_err(out, want) <= 1e-3


def test_outliers_under_jit_and_capacity_fallback(implementation):
    cpu_subset(implementation)
    with fp8mm.use_implementation(implementation):
        A = rand((16, 64), jnp.float16, 24)
        A = A.at[:, :20].multiply(20.0)  # 20 outlier columns
        B = rand((12, 64), jnp.float16, 25, 0.2)
        eager = fp8mm.switchback_bnb(A, B, threshold=6.0)
        f = jax.jit(
            lambda a, b, cap: fp8mm.switchback_bnb(
                a, b, threshold=6.0, outlier_capacity=cap, return_outliers=True
            ),
            static_argnums=2,
        )
        for cap in (64, 32, 4):  # 4 < 20 outliers: the exact masked product takes over
            out, cols = f(A, B, cap)
            assert int(np.asarray(cols).sum()) >= 15
            assert rel_err(out, eager) <= 1e-3
        with pytest.raises(ValueError, match="outlier_capacity"):
            fp8mm.switchback_bnb(A, B, threshold=6.0, outlier_capacity=0)


def test_state_threshold_is_used(implementation):
    cpu_subset(implementation)
    with fp8mm.use_implementation(implementation):
        A = rand((8, 32), jnp.float16, 26).at[0, 3].set(50.0)
        B = rand((4, 32), jnp.float16, 27)
        a = fp8mm.switchback_bnb(
            A, B, state=fp8mm.MatmulLtState(threshold=6.0), return_outliers=True
        )
        b = fp8mm.switchback_bnb(A, B, threshold=6.0, return_outliers=True)
        np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(b[1]))
        assert bool(a[1][3])


# ------------------------------------------------------------------------- transformations


def _ops():
    B1 = rand((32, 16), jnp.float16, 30, 0.1)
    B2 = rand((16, 32), jnp.float16, 31, 0.1)
    return {
        "fp8_mixed": (lambda a, b: fp8mm.matmul_fp8_mixed(a, b, FW, BW), B1),
        "fp8_global": (lambda a, b: fp8mm.matmul_fp8_global(a, b, FW, BW), B1),
        "switchback": (lambda a, b: fp8mm.switchback_bnb(a, b, threshold=3.0), B2),
    }


@pytest.mark.parametrize("name", ["fp8_mixed", "fp8_global", "switchback"])
def test_transformations(implementation, name):
    cpu_subset(implementation)
    with fp8mm.use_implementation(implementation):
        f, B = _ops()[name]
        A = rand((3, 8, 32), jnp.float16, 32)

        def loss(a, b):
            return jnp.sum(f(a, b).astype(jnp.float32) ** 2)

        val, (gA, gB) = jax.value_and_grad(loss, argnums=(0, 1))(A, B)
        gA2, gB2 = jax.grad(loss, argnums=(0, 1))(A, B)
        np.testing.assert_array_equal(np.asarray(gA), np.asarray(gA2))
        # remat gives the same gradients
        gA3, gB3 = jax.grad(jax.checkpoint(loss), argnums=(0, 1))(A, B)
        np.testing.assert_array_equal(np.asarray(gA3), np.asarray(gA))
        np.testing.assert_array_equal(np.asarray(gB3), np.asarray(gB))
        # vmap over a batch of A equals the per-example results
        outs = jax.vmap(lambda a: f(a, B))(A)
        for i in range(A.shape[0]):
            np.testing.assert_array_equal(np.asarray(outs[i]), np.asarray(f(A[i], B)))
        gv = jax.vmap(jax.grad(loss), in_axes=(0, None))(A, B)
        np.testing.assert_array_equal(np.asarray(gv[1]), np.asarray(jax.grad(loss)(A[1], B)))
        # jit without retracing
        traces = []

        @jax.jit
        def step(a, b):
            traces.append(1)
            return jax.value_and_grad(loss, argnums=1)(a, b)

        for s in range(3):
            v, _ = step(rand((3, 8, 32), jnp.float16, 40 + s), B)
        assert len(traces) == 1
        assert np.isfinite(float(v)) and np.isfinite(float(val))


@pytest.mark.parametrize("implementation", KERNEL_IMPLEMENTATIONS)
@pytest.mark.parametrize(
    "name, dtype",
    [
        ("fp8_mixed", jnp.float16),
        ("fp8_mixed", jnp.bfloat16),
        ("fp8_global", jnp.bfloat16),
        ("switchback", jnp.float16),
    ],
)
def test_kernels_match_xla(implementation, name, dtype):
    """The ops give the same numbers with the kernels (interpret mode on CPU) as with XLA."""
    A = rand((2, 24, 96), dtype, 50, 2.0)
    g = rand((2, 24, 40), dtype, 51)
    if name == "switchback":
        B = rand((40, 96), dtype, 52, 0.1)
        bias = rand((40,), jnp.float16, 53)
        f = lambda a, b, impl: fp8mm.switchback_bnb(
            a, b, threshold=4.0, bias=bias, implementation=impl
        )
    else:
        B = rand((96, 40), dtype, 52, 0.1)
        f = lambda a, b, impl: FP8_OPS[name](a, b, FW, BW, implementation=impl)
    # On a GPU the XLA side runs on the CPU: XLA's float32 reciprocal on a GPU is
    # approximate, and with bfloat16 inputs (few significant bits) a one-ulp change
    # of 1/absmax already moves 7-8 codes of A here; the CPU reference is the oracle.
    out, vjp = jax.vjp(lambda a, b: f(a, b, implementation), A, B)
    got_all = (out, *vjp(g))

    def xla(a, b, g):
        out, vjp = jax.vjp(lambda a, b: f(a, b, "xla"), a, b)
        return (out, *vjp(g))

    for got, want in zip(got_all, on_cpu(xla, A, B, g), strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
        if ON_GPU:  # cuBLAS and the CPU sum in different orders: one ulp of the dtype
            eps = float(jnp.finfo(dtype).eps)
            np.testing.assert_allclose(got, want, rtol=eps, atol=eps * np.abs(want).max())
        elif name == "switchback":  # the fused epilogue may differ by one float16 ulp
            np.testing.assert_allclose(got, want, rtol=2e-3, atol=1e-3)
        else:
            np.testing.assert_array_equal(got, want)


def test_switchback_zero_inner_dim(implementation):
    with fp8mm.use_implementation(implementation):
        out = fp8mm.switchback_bnb(jnp.ones((3, 0), jnp.float16), jnp.ones((4, 0), jnp.float16))
        assert out.shape == (3, 4) and not np.asarray(out).any()
        out = fp8mm.switchback_bnb(
            jnp.ones((3, 8), jnp.float16),
            jnp.ones((4, 8), jnp.float16),
            outlier_capacity=np.int64(2),
        )
        assert out.shape == (3, 4)
