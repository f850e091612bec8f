"""bitsandbytes' positional calls (docs/porting.md) run as written and equal the keyword calls.

fp8mm keeps bitsandbytes 0.49's parameter order: `out=None` (and `quantize_blockwise`'s
`absmax=None`) sits at bitsandbytes' position, anything else is refused by name, and
`dequantize_blockwise` also takes bitsandbytes' `quant_state=` and absmax/code form.
"""

import dataclasses

import jax.numpy as jnp
import pytest

import fp8mm
from tests.helpers import assert_bits_equal, assert_trees_equal, rand

XLA = {"implementation": "xla"}
FW = jnp.asarray(fp8mm.e4m3_code())
BW = jnp.asarray(fp8mm.e5m2_code())
A = rand((8, 256), jnp.float16, seed=1)
B = rand((256, 128), jnp.float16, seed=2, scale=0.1)  # [in, out]
X = rand((8, 64), jnp.float16, seed=3, scale=4.0)  # has |x| >= 6: outlier columns
W = rand((32, 64), jnp.float16, seed=4, scale=0.1)  # [out, in]
BIAS = rand((32,), jnp.float16, seed=5)
Q, QST = fp8mm.quantize_blockwise(A, FW, blocksize=256, **XLA)
QG, QGST = fp8mm.quantize(A, FW, **XLA)


def test_matmul_fp8_mixed_positional():
    got = fp8mm.matmul_fp8_mixed(A, B, FW, BW, None, 256, 128, **XLA)
    want = fp8mm.matmul_fp8_mixed(A, B, FW, BW, bsz=256, bsz2=128, **XLA)
    assert_bits_equal(got, want, "matmul_fp8_mixed")


def test_matmul_fp8_global_positional():
    got = fp8mm.matmul_fp8_global(A, B, FW, BW, None, -1, -1, **XLA)
    assert_bits_equal(got, fp8mm.matmul_fp8_global(A, B, FW, BW, **XLA), "matmul_fp8_global")


def test_matmul_fp8_codes_default_to_the_dynamic_map():
    dyn = fp8mm.create_dynamic_map()
    got = fp8mm.matmul_fp8_mixed(A, B, **XLA)
    assert_bits_equal(got, fp8mm.matmul_fp8_mixed(A, B, dyn, dyn, **XLA), "code=None")


def test_switchback_bnb_positional_state():
    state = fp8mm.prepare_int8_weight(W, implementation="xla")
    got = fp8mm.switchback_bnb(X, W, None, state, **XLA)
    assert_bits_equal(got, fp8mm.switchback_bnb(X, W, state=state, **XLA), "state")


def test_switchback_bnb_positional_threshold_and_bias():
    got = fp8mm.switchback_bnb(X, W, None, None, 6.0, BIAS, **XLA)
    want = fp8mm.switchback_bnb(X, W, state=None, threshold=6.0, bias=BIAS, **XLA)
    assert_bits_equal(got, want, "threshold, bias")


def test_quantize_blockwise_positional():
    assert_trees_equal(fp8mm.quantize_blockwise(A, FW, None, None, 256, **XLA), (Q, QST))


def test_dequantize_blockwise_state_names():
    want = fp8mm.dequantize_blockwise(Q, QST, **XLA)
    assert want.dtype == jnp.float16
    assert_bits_equal(fp8mm.dequantize_blockwise(Q, quant_state=QST, **XLA), want, "quant_state=")
    assert_bits_equal(fp8mm.dequantize_blockwise(Q, state=QST, **XLA), want, "state=")


def test_dequantize_blockwise_from_absmax_and_code():
    got = fp8mm.dequantize_blockwise(Q, absmax=QST.absmax, code=QST.code, blocksize=256, **XLA)
    # Without a state bitsandbytes builds one with dtype float32, as here.
    want = fp8mm.dequantize_blockwise(Q, dataclasses.replace(QST, dtype=jnp.float32), **XLA)
    assert want.dtype == jnp.float32
    assert_bits_equal(got, want, "absmax/code form")
    positional = fp8mm.dequantize_blockwise(Q, None, QST.absmax, QST.code, None, 256, **XLA)
    assert_bits_equal(positional, want, "absmax/code positional")


def test_quantize_and_dequantize_positional():
    assert_trees_equal(fp8mm.quantize(A, FW, None, **XLA), (QG, QGST))
    want = fp8mm.dequantize(QG, state=QGST, **XLA)
    assert_bits_equal(fp8mm.dequantize(QG, QGST, **XLA), want, "dequantize")
    parts = fp8mm.dequantize(QG, None, QGST.absmax, QGST.code, None, **XLA)
    assert_bits_equal(parts, want, "absmax/code form")


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: fp8mm.matmul_fp8_mixed(A, B, FW, BW, jnp.zeros((8, 128))), "out must be None"),
        (lambda: fp8mm.matmul_fp8_global(A, B, FW, BW, 256), r"out must be None.*bsz="),
        (lambda: fp8mm.switchback_bnb(X, W, jnp.zeros((8, 32))), "out must be None"),
        (lambda: fp8mm.switchback_bnb(X, W, fp8mm.MatmulLtState()), r"out.*pass state="),
        (lambda: fp8mm.quantize_blockwise(A, FW, None, Q), "out must be None"),
        (lambda: fp8mm.quantize_blockwise(A, FW, 256), r"absmax must be None.*blocksize="),
        (lambda: fp8mm.dequantize_blockwise(Q, QST, out=jnp.zeros(A.shape)), "out must be None"),
        (lambda: fp8mm.quantize(A, FW, Q), "out must be None"),
        (lambda: fp8mm.dequantize(QG, QGST, out=jnp.zeros(A.shape)), "out must be None"),
    ],
    ids=[
        "mixed",
        "global-bsz",
        "switchback",
        "switchback-state",
        "quantize_blockwise",
        "quantize_blockwise-absmax",
        "dequantize_blockwise",
        "quantize",
        "dequantize",
    ],
)
def test_out_must_be_none(call, match):
    with pytest.raises(ValueError, match=match) as err:
        call()
    assert "JAX arrays are immutable; use the returned" in str(err.value)


def test_nested_is_not_implemented():
    with pytest.raises(NotImplementedError, match="nested=True"):
        fp8mm.quantize_blockwise(A, FW, blocksize=256, nested=True)
    with pytest.raises(NotImplementedError, match="nested=True"):
        fp8mm.dequantize_blockwise(Q, QST, nested=True)
    with pytest.raises(TypeError, match="nested must be a bool"):
        fp8mm.dequantize_blockwise(Q, QST, nested=1)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"quant_state": QST, "state": QST}, TypeError, "both quant_state and state"),
        ({"quant_state": QST, "absmax": QST.absmax}, ValueError, "either a state or absmax"),
        ({"state": QST, "code": QST.code}, ValueError, "either a state or absmax"),
        ({"quant_state": QST, "blocksize": 64}, ValueError, "blocksize=64 disagrees"),
        ({}, TypeError, "no state given"),
        ({"absmax": QST.absmax, "blocksize": 64}, ValueError, r"absmax must have shape \(32,\)"),
        ({"absmax": QST.absmax, "blocksize": 48}, ValueError, "blocksize must be a power of two"),
        ({"absmax": QST.absmax.astype(jnp.float16)}, TypeError, "absmax must have dtype float32"),
        ({"absmax": QST.absmax, "code": FW[:8], "blocksize": 256}, ValueError, "code must have"),
        ({"quant_state": QGST}, ValueError, r"use dequantize\(\)"),
    ],
    ids=[
        "both-names",
        "state-and-absmax",
        "state-and-code",
        "state-and-blocksize",
        "nothing",
        "absmax-wrong-blocks",
        "bad-blocksize",
        "absmax-float16",
        "short-code",
        "global-state",
    ],
)
def test_dequantize_blockwise_state_conflicts(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fp8mm.dequantize_blockwise(Q, **kwargs)


def test_dequantize_needs_a_state_or_absmax():
    with pytest.raises(TypeError, match="no state given"):
        fp8mm.dequantize(QG)
    with pytest.raises(ValueError, match="either a state or absmax"):
        fp8mm.dequantize(QG, QGST, QGST.absmax)
    with pytest.raises(ValueError, match=r"absmax must have shape \(\)"):
        fp8mm.dequantize(QG, absmax=QST.absmax)
