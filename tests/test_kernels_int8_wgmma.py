"""The Mosaic GPU wgmma int8 matmul (fp8mm.pallas.int8_matmul_wgmma).

Mosaic GPU kernels run only compiled, so on the CPU the kernel is traced and
lowered for CUDA (every bias mode and output dtype: catches tracing, layout and
lowering errors) and the rules of `supported_*` are checked; on a Hopper GPU it is
compared with the Triton kernel (bit for bit, except within one float16 ulp for
a fused float16 bias) and with the CPU reference (within one float16 ulp, as the
Triton kernel is).
"""

from __future__ import annotations

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fp8mm
from fp8mm import dispatch, reference
from fp8mm.pallas import _int8_math
from fp8mm.pallas import int8_matmul_triton as k8
from fp8mm.pallas import int8_matmul_wgmma as wg
from tests.test_kernels_int8 import (
    INTERPRET,
    _bias,
    _int8,
    _stats,
    assert_equal,
    assert_within_ulp,
    ref,
)

ON_HOPPER = wg.wgmma_reason(128, 256, 128) is None
hopper_only = pytest.mark.skipif(not ON_HOPPER, reason="s8 wgmma runs on a Hopper GPU only")

MODES = [(None, jnp.bfloat16), (None, jnp.float16), (jnp.float16, jnp.float16)]
MODES += [(jnp.bfloat16, jnp.float32), (jnp.float32, jnp.bfloat16)]


def _spec(shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype)


@pytest.mark.skipif(wg.plgpu is None, reason="this jaxlib has no Mosaic GPU")
@pytest.mark.parametrize(
    ("bias_dtype", "out_dtype"),
    [*MODES, (None, jnp.float32), ("int32", jnp.int32), ("direct", jnp.bfloat16)],
)
def test_lowers_for_cuda(bias_dtype, out_dtype):
    m, n, k = 256, 512, 384
    dequant = out_dtype != jnp.int32
    direct = bias_dtype == "direct"  # the SwitchBack paper's epilogue, with a fused bias
    bias = None if bias_dtype in (None, "int32") else _spec((n,), jnp.float32)
    bias_mode = "fused" if direct else None
    if bias is not None and not direct:
        bias_mode = _int8_math.bias_mode_of(jnp.zeros((n,), bias_dtype))
    stats = (_spec((m,), jnp.float32), _spec((n,), jnp.float32)) if dequant else (None, None)
    lowered = wg._matmul_2d.trace(
        _spec((m, k), jnp.int8),
        _spec((n, k), jnp.int8),
        *stats,
        bias,
        dequant=dequant,
        bias_mode=bias_mode,
        out_dtype=np.dtype(out_dtype) if dequant else None,
        cfg=wg.WgmmaConfig(),
        num_sms=132,
        direct=direct,
    ).lower(lowering_platforms=("cuda",))
    assert "mosaic_gpu" in lowered.as_text()
    assert lowered.out_info.shape == (m, n) and lowered.out_info.dtype == out_dtype


def test_dispatch_rules(monkeypatch):
    # The registry lists this kernel first for both matmuls, then the Triton one.
    for name in ("int8_linear_matmul_dequant", "int8_linear_matmul", "int8_scaled_matmul"):
        kernels = dispatch.REGISTRY[name].kernels
        assert [k.name for k in kernels] == ["pallas_mosaic_gpu", "pallas_triton"]
        assert kernels[0].module == wg.__name__ and not kernels[0].interpretable
        assert kernels[0]._attr(name) is getattr(wg, name)
        assert kernels[1].module == k8.__name__
    if not ON_HOPPER:
        assert wg.wgmma_reason(128, 256, 128) is not None
    hopper = types.SimpleNamespace(compute_capability="9.0", core_count=132)
    monkeypatch.setattr(wg, "_target_device", lambda: hopper)
    if wg.plgpu is not None:
        assert wg.wgmma_reason(128, 256, 128) is None
        assert wg.wgmma_reason(8192, 16384, 4096) is None
        for m, n, k, bad in [
            (100, 256, 128, "m=100"),
            (128, 128, 128, "n=128"),
            (128, 256, 64, "k=64"),
        ]:
            assert bad in wg.wgmma_reason(m, n, k)
            a = jax.ShapeDtypeStruct((m, k), jnp.int8)
            assert bad in wg.supported_int8_linear_matmul(a, jax.ShapeDtypeStruct((n, k), jnp.int8))
        assert "m=0" in wg.wgmma_reason(0, 256, 128)
        assert "shared memory" in wg.wgmma_reason(128, 256, 128, wg.WgmmaConfig(stages=6))
        a, b = (
            jax.ShapeDtypeStruct((2, 64, 128), jnp.int8),
            jax.ShapeDtypeStruct((256, 128), jnp.int8),
        )
        assert wg.supported_int8_linear_matmul(a, b) is None
        row, col = (
            jax.ShapeDtypeStruct((2, 64), jnp.float32),
            jax.ShapeDtypeStruct((256,), jnp.float32),
        )
        assert wg.supported_int8_linear_matmul_dequant(a, b, row, col) is None
        big = jax.ShapeDtypeStruct((2**16, 128), jnp.int8)
        assert "int32 indexing" in wg.supported_int8_linear_matmul(big, big)
        # The heuristic is shape-independent and belongs to the search space where it serves.
        assert wg.choose_wgmma_config(128, 256, 128) in wg.wgmma_search_space(128, 256, 128)
        assert wg.wgmma_search_space(100, 256, 128) == ()
    blackwell = types.SimpleNamespace(compute_capability="10.0", core_count=148)
    monkeypatch.setattr(wg, "_target_device", lambda: blackwell)
    assert "Hopper" in wg.wgmma_reason(128, 256, 128)


@pytest.mark.parametrize("bad", [{"tile_k": 64}, {"tile_m": 96}, {"epi_n": 48}, {"stages": 0}])
def test_config_validation(bad):
    with pytest.raises(ValueError):
        wg.WgmmaConfig(**bad)


def test_falls_back_and_validates():
    """Interpreted (or off Hopper) the registry runs the Triton kernel; bad input fails before."""
    A, B = _int8((3, 70), 1), _int8((33, 70), 2)
    row, col = _stats(3, 5), _stats(33, 6)
    got = fp8mm.int8_linear_matmul_dequant(
        A, B, row, col, None, jnp.bfloat16, implementation="pallas"
    )
    want = k8.int8_linear_matmul_dequant(A, B, row, col, None, jnp.bfloat16, interpret=INTERPRET)
    assert_equal(got, want)
    assert_equal(
        fp8mm.int8_linear_matmul(A, B, implementation="pallas"),
        k8.int8_linear_matmul(A, B, interpret=INTERPRET),
    )
    # Called directly, the kernel refuses what it cannot run: no hidden fallback.
    with pytest.raises(ValueError, match="only compiled"):
        wg.int8_linear_matmul(A, B, interpret=True)
    with pytest.raises(ValueError, match="only compiled"):
        wg.int8_linear_matmul_dequant(A, B, row, col, interpret=True)
    with pytest.raises(ValueError):
        wg.int8_linear_matmul(A, B)
    with pytest.raises(TypeError, match="int8"):
        fp8mm.int8_linear_matmul(A, B.astype(jnp.float16), implementation="pallas")
    with pytest.raises(TypeError, match="int8"):
        fp8mm.int8_linear_matmul_dequant(A.astype(jnp.int32), B, row, col, implementation="pallas")
    with pytest.raises(ValueError, match="row_stats"):
        fp8mm.int8_linear_matmul_dequant(A, B, col, col, implementation="pallas")
    with pytest.raises((TypeError, ValueError), match="out_dtype"):
        fp8mm.int8_linear_matmul_dequant(A, B, row, col, None, jnp.int8, implementation="pallas")


@hopper_only
@pytest.mark.parametrize(("bias_dtype", "out_dtype"), [*MODES, (None, jnp.float32)])
@pytest.mark.parametrize(("a_shape", "n"), [((256, 384), 512), ((2, 384, 1024), 768)])
def test_matches_triton_and_reference(bias_dtype, out_dtype, a_shape, n):
    k = a_shape[-1]
    A, B = _int8(a_shape, 1), _int8((n, k), 2)
    row = _stats(int(np.prod(a_shape[:-1])), 3).reshape(a_shape[:-1])
    col, bias = _stats(n, 4) / 64, _bias(n, bias_dtype)
    got = wg.int8_linear_matmul_dequant(A, B, row, col, bias, out_dtype)
    tri = k8.int8_linear_matmul_dequant(A, B, row, col, bias, out_dtype)
    ulp_dtype = jnp.bfloat16 if out_dtype == jnp.bfloat16 else jnp.float16
    # Both kernels run the same epilogue (_int8_math.dequant_math) on the same int32 sums.
    # Only a fused float16 bias (t * c + bias) differs: the two compilers contract it
    # into an FMA in different places (H200: 1 of 131072 and 21 of 589824 elements).
    if _int8_math.bias_mode_of(bias) == "fused":
        assert_within_ulp(got, tri, ulp_dtype, bias)
        assert np.mean(np.asarray(got) != np.asarray(tri)) < 1e-3
    else:
        assert_equal(got, tri)
    want = ref(reference.int8_linear_matmul_dequant, A, B, row, col, bias).astype(out_dtype)
    assert_within_ulp(got, want, ulp_dtype, bias)


@hopper_only
@pytest.mark.parametrize(("a_shape", "n"), [((256, 384), 512), ((2, 384, 1024), 768)])
def test_int32_product_is_exact(a_shape, n):
    A, B = _int8(a_shape, 1), _int8((n, a_shape[-1]), 2)
    assert_equal(wg.int8_linear_matmul(A, B), ref(reference.int8_linear_matmul, A, B))


@hopper_only
def test_large_matches_triton():
    m, n, k = 4096, 4096, 4096
    A, B = _int8((m, k), 1), _int8((n, k), 2)
    assert_equal(wg.int8_linear_matmul(A, B), ref(reference.int8_linear_matmul, A, B))
    row, col = _stats(m, 3), _stats(n, 4) / 64
    assert_equal(
        wg.int8_linear_matmul_dequant(A, B, row, col, None, jnp.bfloat16),
        k8.int8_linear_matmul_dequant(A, B, row, col, None, jnp.bfloat16),
    )


@hopper_only
@pytest.mark.parametrize("b_batched", [False, True])
def test_vmap_matches_unbatched_calls(b_batched):
    """vmap over the wgmma kernel (Pallas adds a batch axis) equals a loop of calls."""
    m, n, k = 256, 512, 384
    A, row = _int8((2, m, k), 1), _stats(2 * m, 3).reshape(2, m)
    B = _int8((2, n, k) if b_batched else (n, k), 2)
    col = _stats(n, 4) / 64
    f = functools.partial(wg.int8_linear_matmul_dequant, out_dtype=jnp.bfloat16)
    got = jax.vmap(f, in_axes=(0, 0 if b_batched else None, 0, None))(A, B, row, col)
    for i in range(2):
        Bi = B[i] if b_batched else B
        want = k8.int8_linear_matmul_dequant(A[i], Bi, row[i], col, None, jnp.bfloat16)
        assert_equal(got[i], want)
    got32 = jax.vmap(wg.int8_linear_matmul, in_axes=(0, 0 if b_batched else None))(A, B)
    for i in range(2):
        Bi = B[i] if b_batched else B
        assert_equal(got32[i], ref(reference.int8_linear_matmul, A[i], Bi))


@hopper_only
@pytest.mark.parametrize(("m", "n", "k"), [(100, 256, 128), (128, 200, 128), (128, 256, 96)])
def test_ragged_shapes_fall_back_compiled(m, n, k):
    """Off the tile grid the registry falls back (compiled, on the GPU) and stays exact."""
    assert wg.wgmma_reason(m, n, k) is not None
    A, B = _int8((m, k), 1), _int8((n, k), 2)
    row, col, bias = _stats(m, 3), _stats(n, 4) / 64, _bias(n, jnp.float16)
    with pytest.raises(ValueError, match="multiple"):
        wg.int8_linear_matmul_dequant(A, B, row, col, bias, jnp.bfloat16)
    assert dispatch.resolve("int8_linear_matmul", "pallas", A, B) == "pallas_triton"
    got = fp8mm.int8_linear_matmul_dequant(
        A, B, row, col, bias, jnp.bfloat16, implementation="pallas"
    )
    want = ref(reference.int8_linear_matmul_dequant, A, B, row, col, bias).astype(jnp.bfloat16)
    assert_within_ulp(got, want, jnp.bfloat16, bias)
    assert_equal(
        fp8mm.int8_linear_matmul(A, B, implementation="pallas"),
        ref(reference.int8_linear_matmul, A, B),
    )
