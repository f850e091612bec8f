"""Native FP8 (gemm="native"): bnb's codes as float8 bytes, the FP8 GEMM, the ops' custom VJP.

The shared suite runs each implementation (xla; pallas interpreted on the CPU,
where the FP8 GEMM itself has no interpretable kernel and runs on XLA;
compiled on a GPU, where the GEMM is the f8 wgmma kernel where it serves).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fp8mm
from fp8mm import dispatch
from fp8mm.ops import _fp8_native
from tests import golden
from tests.helpers import ON_GPU, cpu_subset, heavy, rand, rel

FW, BW = fp8mm.e4m3_code(), fp8mm.e5m2_code()
OPS = {"fp8_mixed": fp8mm.matmul_fp8_mixed, "fp8_global": fp8mm.matmul_fp8_global}
DTYPES = (jnp.bfloat16, jnp.float16, jnp.float32)
# native against emulated on fresh data: the 1.5e-2; measured ~3e-3 (bf16).
TOL = 1.5e-2


def _f32(x):
    return np.asarray(jnp.asarray(x).astype(jnp.float32))


# ------------------------------------------------------------------------ formats


@pytest.mark.parametrize(
    "code, dtype, exact, small",
    [(FW, None, 234, 6.2e-5), (BW, None, 246, 1e-9), (BW, "float8_e4m3fn", 134, 3.1e-5)],
    ids=["e4m3", "e5m2", "e5m2-as-e4m3"],
)
def test_native_format_tables(code, dtype, exact, small):
    fmt = fp8mm.native_format(code, dtype)
    vals = fmt.values()
    same = vals == code * np.float32(fmt.scale)
    if dtype is not None:  # the e5m2 grid scaled by 2**-8: exact where e4m3 holds it
        same = vals == fp8mm.native_format(code).values() / np.float32(256)
    assert int(same.sum()) == exact
    # The others are the bottom binades bnb has and float8 lacks: tiny, nearest float8.
    assert np.all(np.abs(code[~same]) <= small)
    assert np.all(np.abs(vals / fmt.scale - code) <= np.abs(code) * 2**-3 + small)
    assert np.all(np.isfinite(vals)) and np.all(np.diff(vals) >= 0)


def test_native_format_none_for_other_codes():
    assert fp8mm.native_format(fp8mm.create_dynamic_map()) is None
    assert fp8mm.native_format(fp8mm.create_fp8_map(True, 3, 4, 8)) is None
    # e4m3's values do not fit e5m2's grid (one mantissa bit fewer)
    assert fp8mm.native_format(FW, "float8_e5m2") is None
    with pytest.raises(NotImplementedError, match="cannot be held"):
        fp8mm.quantize_fp8(rand((2, 64)), FW, 64, dtype=jnp.float8_e5m2)


# ---------------------------------------------------------------------- quantize_fp8


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("blocksize", [None, 64, 256])
@pytest.mark.parametrize("code", ["e4m3", "e5m2", "e5m2-as-e4m3"])
def test_quantize_fp8_codes_are_bnb_codes(implementation, dtype, blocksize, code):
    """The float8 bytes are table[q] of the emulated path's codes q, scale = absmax / s."""
    cpu_subset(implementation, keep=dtype == jnp.bfloat16 and blocksize in (None, 64))
    c = FW if code == "e4m3" else BW
    carrier = jnp.float8_e4m3fn if code == "e5m2-as-e4m3" else None
    fmt = fp8mm.native_format(c, carrier)
    x = heavy((3, 5, 128), dtype, seed=1, decades=(-3, 3))
    x = x.at[0, 0].set(0.0)  # an all-zero block
    t = fp8mm.quantize_fp8(x, c, blocksize, dtype=carrier, implementation=implementation)
    if blocksize is None:
        q, st = fp8mm.quantize(x, c, implementation=implementation)
    else:
        q, st = fp8mm.quantize_blockwise(x, c, blocksize=blocksize, implementation=implementation)
    assert t.data.dtype == fmt.dtype and t.data.shape == x.shape
    np.testing.assert_array_equal(
        np.asarray(t.data).view(np.uint8), fmt.table[np.asarray(q).astype(np.int64)]
    )
    # XLA divides by the constant as a multiply by its reciprocal: within one float32 ulp.
    np.testing.assert_allclose(t.scale, np.asarray(st.absmax) / np.float32(fmt.scale), rtol=2.4e-7)
    # The values it stands for are bnb's dequantized values up to float32 rounding.
    want = np.asarray(c)[np.asarray(q).astype(np.int64)].astype(np.float64)
    if blocksize is None:
        want = want * float(st.absmax)
    else:
        block = np.arange(want.size) // blocksize
        want = (want.reshape(-1) * np.asarray(st.absmax, np.float64)[block]).reshape(x.shape)
    got = _f32(fp8mm.dequantize_fp8(t))
    tiny = 6.2e-5 * np.max(np.asarray(st.absmax))
    assert np.all(np.abs(got - want) <= np.abs(want) * 1e-6 + tiny)


def test_quantize_fp8_nan_reaches_its_block():
    x = rand((4, 64)).at[1, 3].set(jnp.nan)
    t = fp8mm.quantize_fp8(x, FW, 64, implementation="xla")
    assert np.isnan(np.asarray(t.scale)).tolist() == [False, True, False, False]
    y = _f32(fp8mm.dequantize_fp8(t))
    assert np.isnan(y[1]).all() and np.isfinite(y[[0, 2, 3]]).all()


def test_quantize_fp8_refuses_codes_without_a_float8_grid():
    x = rand((2, 64))
    with pytest.raises(NotImplementedError, match="no float8 grid"):
        fp8mm.quantize_fp8(x, fp8mm.create_dynamic_map(), 64)
    with pytest.raises(NotImplementedError, match="dynamic map"):
        fp8mm.quantize_fp8(x, None, 64)
    with pytest.raises(TypeError, match="traced"):
        jax.jit(lambda c: fp8mm.quantize_fp8(x, c, 64).data)(jnp.asarray(FW))


def test_fp8_row_scales_layouts():
    x = rand((4, 256), seed=2)
    t = fp8mm.quantize_fp8(x, FW, 64, implementation="xla")
    np.testing.assert_array_equal(fp8mm.fp8_row_scales(t), np.asarray(t.scale).reshape(4, 4))
    t = fp8mm.quantize_fp8(rand((8, 32), seed=2), FW, 64, implementation="xla")
    np.testing.assert_array_equal(fp8mm.fp8_row_scales(t)[:, 0], np.repeat(np.asarray(t.scale), 2))
    t = fp8mm.quantize_fp8(rand((3, 96)), FW, 64, implementation="xla")
    with pytest.raises(ValueError, match="straddle"):
        fp8mm.fp8_row_scales(t)


# ------------------------------------------------------------------- fp8_scaled_matmul


def _gemm_impls():
    return ("xla", "pallas_mosaic_gpu") if ON_GPU else ("xla",)


@pytest.mark.parametrize("impl", _gemm_impls())
@pytest.mark.parametrize("out_dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize(
    "types, chunks, b_vec",
    [
        ((jnp.float8_e4m3fn, jnp.float8_e4m3fn), 1, False),
        ((jnp.float8_e4m3fn, jnp.float8_e4m3fn), 1, True),
        ((jnp.float8_e5m2, jnp.float8_e4m3fn), 1, False),
        ((jnp.float8_e4m3fn, jnp.float8_e4m3fn), 2, False),
    ],
)
def test_fp8_scaled_matmul_against_float64(impl, out_dtype, types, chunks, b_vec):
    m, n, k = 256, 512, 512
    rng = np.random.default_rng(3)
    A = jnp.asarray(rng.standard_normal((m, k)) * 8, types[0])
    B = jnp.asarray(rng.standard_normal((n, k)) * 8, types[1])
    sa = jnp.asarray(rng.uniform(0.5, 2, (m, chunks)), jnp.float32)
    sb = jnp.asarray(rng.uniform(0.5, 2, (n,) if b_vec else ()), jnp.float32)
    try:
        got = fp8mm.fp8_scaled_matmul(A, B, sa, sb, out_dtype, implementation=impl)
    except NotImplementedError as e:  # wgmma takes one float8 format (any chunks)
        assert impl == "pallas_mosaic_gpu" and types[0] != types[1], e
        return
    a64, b64 = np.asarray(A, np.float64), np.asarray(B, np.float64)
    w = k // chunks
    want = sum(
        (a64[:, c * w : (c + 1) * w] @ b64[:, c * w : (c + 1) * w].T) * np.asarray(sa)[:, c : c + 1]
        for c in range(chunks)
    ) * np.asarray(sb)
    assert got.dtype == out_dtype
    tol = {jnp.float32: 1e-6, jnp.float16: 1e-3, jnp.bfloat16: 8e-3}[out_dtype]
    if ON_GPU:
        # FP8 tensor cores accumulate in fewer bits than float32 (both cuBLASLt and the
        # wgmma kernel: measured 1.3e-3 at k=4096, 3.1e-3 at k=16384 on an H200).
        tol = max(tol, 3e-3)
    assert rel(_f32(got), want) <= tol


def test_fp8_scaled_matmul_errors():
    a = jnp.zeros((4, 64), jnp.float8_e4m3fn)
    with pytest.raises(TypeError, match="A must be float8"):
        fp8mm.fp8_scaled_matmul(a.astype(jnp.bfloat16), a, jnp.ones((4, 1)), jnp.ones(()))
    with pytest.raises(ValueError, match="share k"):
        fp8mm.fp8_scaled_matmul(a, a[:, :32], jnp.ones((4, 1)), jnp.ones(()))
    with pytest.raises(ValueError, match="dividing k"):
        fp8mm.fp8_scaled_matmul(a, a, jnp.ones((4, 3)), jnp.ones(()))
    with pytest.raises(ValueError, match="b_scale"):
        fp8mm.fp8_scaled_matmul(a, a, jnp.ones((4, 1)), jnp.ones((5,)))
    if not ON_GPU:
        with pytest.raises(NotImplementedError, match="runs only compiled"):
            fp8mm.fp8_scaled_matmul(a, a, jnp.ones((4, 1)), jnp.ones(()), implementation="pallas")


# --------------------------------------------------------------------------- the ops


def _vjp(op, A, B, g, gemm, implementation, bsz=-1, bsz2=-1):
    f = lambda a, b: op(a, b, FW, BW, bsz=bsz, bsz2=bsz2, gemm=gemm, implementation=implementation)
    out, vjp = jax.vjp(f, A, B)
    return (out, *vjp(g))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("kind", list(OPS))
@pytest.mark.parametrize(
    "shape, bsz, bsz2",
    [((256, 256, 256), -1, -1), ((2, 128, 256, 512), 64, 128), ((64, 32, 128), 64, -1)],
    ids=["2d", "3d-chunks", "rows-per-block"],
)
def test_native_matches_emulated(implementation, dtype, kind, shape, bsz, bsz2):
    """Same codes, so only float32 rounding (and the tiniest codes) separate the two paths."""
    cpu_subset(implementation, keep=dtype == jnp.bfloat16 and shape[0] == 64)
    *lead, k, n = shape
    A = heavy((*lead, k), dtype, seed=4, df=3)
    B = rand((k, n), dtype, seed=5, scale=0.05)
    g = rand((*lead, n), dtype, seed=6)
    got = _vjp(OPS[kind], A, B, g, "native", implementation, bsz, bsz2)
    want = _vjp(OPS[kind], A, B, g, "emulated", implementation, bsz, bsz2)
    for name, a, b in zip(("out", "gradA", "gradB"), got, want, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert rel(_f32(a), _f32(b)) <= TOL, name


@pytest.mark.parametrize("case", golden.cases("fp8_mixed") + golden.cases("fp8_global"))
def test_native_against_bitsandbytes_golden(case):
    from tests.test_ops import _check_gradB, _fp8_case

    A, B, g, bsz, bsz2, _ = _fp8_case(case)
    op = OPS[case.split("/")[0]]
    out, gA, gB = _vjp(op, A, B, g, "native", None, bsz, bsz2)
    assert rel(_f32(out), golden.get(case, "out")) <= TOL
    assert rel(_f32(gA), golden.get(case, "gradA")) <= TOL
    _check_gradB(gB, case, TOL)


@pytest.mark.parametrize("kind", list(OPS))
def test_native_straddling_blocks_run_the_emulated_path(kind):
    A, B, g = rand((6, 96)), rand((96, 160), seed=1), rand((6, 160), seed=2)
    got = _vjp(OPS[kind], A, B, g, "native", "xla", 64, 64)
    want = _vjp(OPS[kind], A, B, g, "emulated", "xla", 64, 64)
    for a, b in zip(got, want, strict=True):
        if kind == "fp8_mixed":  # k=96 and bsz=64 straddle: the emulated path, bit for bit
            np.testing.assert_array_equal(_f32(a), _f32(b))
        else:  # global quantization has no blocks: native
            assert rel(_f32(a), _f32(b)) <= TOL


@pytest.mark.parametrize("kind", list(OPS))
def test_native_edge_cases(kind):
    op = OPS[kind]
    # zero-size: empty output, zero gradients
    out, gA, gB = _vjp(op, jnp.zeros((0, 64)), rand((64, 32)), jnp.zeros((0, 32)), "native", "xla")
    assert out.shape == (0, 32) and gA.shape == (0, 64) and not np.asarray(gB).any()
    # all zeros in: zeros out
    out, gA, gB = _vjp(op, jnp.zeros((8, 64)), rand((64, 32)), rand((8, 32)), "native", "xla")
    assert not np.asarray(out).any()
    # NaN reaches the products it touches
    A = rand((8, 64)).at[2, 5].set(jnp.nan)
    out = _f32(op(A, rand((64, 32)), FW, BW, gemm="native", implementation="xla"))
    if kind == "fp8_mixed":  # its block is its row
        assert np.isnan(out[2]).all() and np.isfinite(np.delete(out, 2, 0)).all()
    else:
        assert np.isnan(out).all()
    # huge and tiny magnitudes keep their scale
    for s in (1e30, 1e-30):
        A, B = rand((8, 64), scale=s), rand((64, 32))
        a = _f32(op(A, B, FW, BW, gemm="native", implementation="xla"))
        b = _f32(op(A, B, FW, BW, gemm="emulated", implementation="xla"))
        assert rel(a, b) <= TOL


def test_native_residuals_are_one_byte():
    A, B = rand((64, 128), jnp.bfloat16), rand((128, 256), jnp.bfloat16)
    for blockwise in (True, False):
        cfg = _fp8_native.NativeConfig(blockwise, "e4m3", "e5m2", 128, 256, "xla", B.dtype)
        _, res = _fp8_native._fwd(A, B, cfg)
        leaves = jax.tree.leaves(res)
        big = [x for x in leaves if x.size >= B.size]
        fp8 = {np.dtype(jnp.float8_e4m3fn), np.dtype(jnp.float8_e5m2)}
        # mixed keeps A (bf16) for its 16-bit gradB; everything else is float8 + scales
        n16 = sum(x.dtype == jnp.bfloat16 for x in leaves)
        assert n16 == (1 if blockwise else 0)
        assert all(np.dtype(x.dtype) in fp8 for x in big)


def test_native_under_jit_and_x64():
    A, B = rand((16, 64)), rand((64, 32), seed=1)
    f = jax.jit(lambda a, b: fp8mm.matmul_fp8_global(a, b, FW, BW, gemm="native"))
    want = f(A, B)
    # the Pallas quantization under jit (the codes must stay concrete for its lookup table)
    g = jax.jit(
        lambda a, b: fp8mm.matmul_fp8_mixed(a, b, FW, BW, gemm="native", implementation="pallas")
    )
    assert rel(_f32(g(A, B)), _f32(fp8mm.matmul_fp8_mixed(A, B, FW, BW, gemm="native"))) <= 1e-6
    with jax.enable_x64(True) if hasattr(jax, "enable_x64") else jax.experimental.enable_x64():
        got = fp8mm.matmul_fp8_global(A, B, FW, BW, gemm="native", implementation="xla")
        assert got.dtype == jnp.float32
    assert rel(_f32(got), _f32(want)) <= 1e-6


@pytest.mark.parametrize("kind", list(OPS))
def test_native_bad_arguments(kind):
    op, A, B = OPS[kind], rand((4, 64)), rand((64, 32))
    with pytest.raises(ValueError, match="gemm must be one of"):
        op(A, B, FW, BW, gemm="fp8")
    with pytest.raises(TypeError, match="gemm must be one of"):
        op(A, B, FW, BW, gemm=True)
    with pytest.raises(NotImplementedError, match="fw_code"):
        op(A, B, fp8mm.create_dynamic_map(), BW, gemm="native")
    with pytest.raises(NotImplementedError, match="bw_code"):
        op(A, B, FW, None, gemm="native")


def test_gemm_pallas_off_a_gpu_multiplies_with_xla():
    assert _fp8_native._gemm_impl("pallas") == ("pallas", "xla")
    assert _fp8_native._gemm_impl("xla") == "xla"
    if not ON_GPU:
        assert dispatch.resolve("fp8_scaled_matmul", ("pallas", "xla"), None) == "xla"
