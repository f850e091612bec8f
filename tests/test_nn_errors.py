"""fp8mm.nn: every public entry point rejects a wrong argument with an error naming it.

Each case raises before any quantized product runs, so the file stays fast.
"""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh

import fp8mm.nn as fnn
from fp8mm.codebooks import e4m3_code
from fp8mm.nn import linen as L
from fp8mm.nn import nnx as N
from fp8mm.nn import sharding
from fp8mm.state import MatmulLtState

CODE = np.asarray(e4m3_code(), np.float32)
KINDS_RE = re.escape(str(fnn.KINDS))


def x_(shape=(2, 8), dtype=jnp.float32):
    return jnp.ones(shape, dtype)


def mesh():
    return Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))


class TwoLinear(nnx.Module):
    def __init__(self):
        self.a = nnx.Linear(8, 4, rngs=nnx.Rngs(0))
        self.b = nnx.Linear(4, 2, rngs=nnx.Rngs(1))


def _int8_switchback():
    layer = N.SwitchBackLinear(8, 4, rngs=nnx.Rngs(0))
    layer.to_int8()
    return layer


def _quantized_then(kind):
    model = fnn.quantize_model(TwoLinear(), "fp8_mixed")
    return fnn.quantize_model(model, kind)


def _enter(ctx):
    with ctx:
        pass


SPEC = fnn.QuantSpec("fp8_mixed")
SB = fnn.QuantSpec("switchback")
STATE = MatmulLtState(has_fp16_weights=False, CB=jnp.ones((4, 8), jnp.int8), SCB=jnp.ones(4))

# (id, call, exception, regex the message must match: the argument and its value)
CASES = [
    # --- QuantSpec (behind every layer, factory and conversion)
    ("spec-kind-str", lambda: fnn.QuantSpec("int8"), ValueError, f"kind.*{KINDS_RE}.*'int8'"),
    ("spec-kind-type", lambda: fnn.QuantSpec(3), TypeError, "kind.*got 3"),
    (
        "spec-threshold-for-fp8",
        lambda: fnn.QuantSpec("fp8_mixed", threshold=6.0),
        ValueError,
        "threshold=6.0 means nothing for kind 'fp8_mixed'",
    ),
    (
        "spec-code-for-switchback",
        lambda: fnn.QuantSpec("switchback", fw_code=CODE),
        ValueError,
        "fw_code=.* means nothing for kind 'switchback'",
    ),
    (
        "spec-bsz-for-switchback",
        lambda: fnn.QuantSpec("switchback", bsz=64),
        ValueError,
        "bsz=64 means nothing for kind 'switchback'",
    ),
    (
        "spec-capacity-for-fp8",
        lambda: fnn.QuantSpec("fp8_global", outlier_capacity=4),
        ValueError,
        "outlier_capacity=4 means nothing for kind 'fp8_global'",
    ),
    ("spec-bsz-value", lambda: fnn.QuantSpec("fp8_mixed", bsz=100), ValueError, "bsz.*100"),
    ("spec-bsz-bool", lambda: fnn.QuantSpec("fp8_mixed", bsz=True), TypeError, "bsz.*True"),
    ("spec-bsz2-str", lambda: fnn.QuantSpec("fp8_mixed", bsz2="64"), TypeError, "bsz2.*'64'"),
    (
        "spec-code-shape",
        lambda: fnn.QuantSpec("fp8_mixed", fw_code=np.zeros(255, np.float32)),
        ValueError,
        r"fw_code must have shape \(256,\), got \(255,\)",
    ),
    (
        "spec-code-dtype",
        lambda: fnn.QuantSpec("fp8_mixed", bw_code=jnp.zeros(256, jnp.float16)),
        TypeError,
        "bw_code must be float32, got dtype float16",
    ),
    (
        "spec-code-type",
        lambda: fnn.QuantSpec("fp8_mixed", fw_code="e4m3"),
        TypeError,
        "fw_code.*'e4m3'",
    ),
    (
        "spec-code-nan",
        lambda: fnn.QuantSpec("fp8_mixed", fw_code=np.where(np.arange(256) == 7, np.nan, CODE)),
        ValueError,
        "fw_code must be finite, got nan at index 7",
    ),
    (
        "spec-threshold-bool",
        lambda: fnn.QuantSpec("switchback", threshold=True),
        TypeError,
        "threshold.*True",
    ),
    (
        "spec-threshold-str",
        lambda: fnn.QuantSpec("switchback", threshold="6"),
        TypeError,
        "threshold.*'6'",
    ),
    (
        "spec-threshold-negative",
        lambda: fnn.QuantSpec("switchback", threshold=-1.0),
        ValueError,
        "threshold.*-1.0",
    ),
    (
        "spec-threshold-inf",
        lambda: fnn.QuantSpec("switchback", threshold=float("inf")),
        ValueError,
        "threshold.*inf",
    ),
    (
        "spec-capacity-zero",
        lambda: fnn.QuantSpec("switchback", outlier_capacity=0),
        ValueError,
        "outlier_capacity.*0",
    ),
    (
        "spec-capacity-bool",
        lambda: fnn.QuantSpec("switchback", outlier_capacity=True),
        ValueError,
        "outlier_capacity.*True",
    ),
    (
        "spec-implementation",
        lambda: fnn.QuantSpec("fp8_mixed", implementation="cuda"),
        ValueError,
        "implementation.*'cuda'",
    ),
    # --- dot_general factories
    ("factory-bsz", lambda: fnn.fp8_mixed_dot_general(bsz=3), ValueError, "bsz.*3"),
    (
        "factory-code",
        lambda: fnn.fp8_global_dot_general(fw_code=np.zeros((16, 16), np.float32)),
        ValueError,
        r"fw_code.*\(16, 16\)",
    ),
    (
        "factory-threshold-str",
        lambda: fnn.switchback_dot_general(threshold="x"),
        TypeError,
        "threshold.*'x'",
    ),
    (
        "factory-threshold-negative",
        lambda: fnn.switchback_dot_general(threshold=-2),
        ValueError,
        "threshold.*-2",
    ),
    (
        "factory-implementation",
        lambda: fnn.switchback_dot_general(implementation="triton"),
        ValueError,
        "implementation.*'triton'",
    ),
    ("make-dot-general-spec", lambda: fnn.make_dot_general("fp8_mixed"), TypeError, "spec.*str"),
    # --- quantized_dense
    (
        "dense-spec",
        lambda: fnn.quantized_dense("fp8_mixed", x_(), x_((8, 4))),
        TypeError,
        "spec.*str",
    ),
    (
        "dense-x-rank",
        lambda: fnn.quantized_dense(SPEC, jnp.float32(1.0), x_((8, 4))),
        ValueError,
        r"x must have at least 1 dimension.*\(\)",
    ),
    (
        "dense-x-dtype",
        lambda: fnn.quantized_dense(SPEC, x_(dtype=jnp.int32), x_((8, 4))),
        TypeError,
        "x must be float.*int32",
    ),
    (
        "dense-x-type",
        lambda: fnn.quantized_dense(SPEC, [[1.0] * 8], x_((8, 4))),
        TypeError,
        "x must be an array.*list",
    ),
    (
        "dense-features",
        lambda: fnn.quantized_dense(SPEC, x_(), x_((9, 4))),
        ValueError,
        r"x has 8 input features.*kernel \(9, 4\)",
    ),
    (
        "dense-kernel-rank",
        lambda: fnn.quantized_dense(SPEC, x_(), x_((8, 4, 1))),
        ValueError,
        r"kernel must have 2 dimension.*\(8, 4, 1\)",
    ),
    (
        "dense-bias",
        lambda: fnn.quantized_dense(SPEC, x_(), x_((8, 4)), x_((5,))),
        ValueError,
        r"bias must have shape \(4,\), got \(5,\)",
    ),
    (
        "dense-no-kernel",
        lambda: fnn.quantized_dense(SPEC, x_(), None),
        ValueError,
        "'fp8_mixed' needs the float kernel",
    ),
    (
        "dense-int8-state-kind",
        lambda: fnn.quantized_dense(SPEC, x_(), None, int8_state=STATE),
        ValueError,
        r"int8_state is for the SwitchBack kinds only \(switchback, .*\), not 'fp8_mixed'",
    ),
    (
        "dense-int8-state-type",
        lambda: fnn.quantized_dense(SB, x_(), None, int8_state={"CB": 1}),
        TypeError,
        "int8_state must be a MatmulLtState.*dict",
    ),
    (
        "dense-int8-state-shape",
        lambda: fnn.quantized_dense(SB, x_((2, 6)), None, int8_state=STATE),
        ValueError,
        r"x has 6 input features.*CB \(4, 8\)",
    ),
    # --- linen layers (checked when the layer is built)
    ("linen-features-negative", lambda: L.Fp8MixedDense(-1), ValueError, "features.*-1"),
    ("linen-features-zero", lambda: L.SwitchBackDense(0), ValueError, "features.*0"),
    ("linen-features-float", lambda: L.Fp8GlobalDense(2.5), TypeError, "features.*2.5"),
    ("linen-features-bool", lambda: L.Fp8MixedDense(True), TypeError, "features.*True"),
    (
        "linen-threshold-bool",
        lambda: L.SwitchBackDense(4, threshold=True),
        TypeError,
        "threshold.*True",
    ),
    (
        "linen-threshold-str",
        lambda: L.SwitchBackDense(4, threshold="6"),
        TypeError,
        "threshold.*'6'",
    ),
    ("linen-bsz", lambda: L.Fp8MixedDense(4, bsz=100), ValueError, "bsz.*100"),
    (
        "linen-code",
        lambda: L.Fp8MixedDense(4, fw_code=np.zeros(3, np.float32)),
        ValueError,
        r"fw_code.*\(3,\)",
    ),
    ("linen-dtype", lambda: L.Fp8MixedDense(4, dtype=jnp.int8), ValueError, "dtype.*int8"),
    ("linen-dtype-type", lambda: L.Fp8MixedDense(4, dtype="nope"), TypeError, "dtype.*'nope'"),
    (
        "linen-param-dtype",
        lambda: L.SwitchBackDense(4, param_dtype=jnp.int32),
        ValueError,
        "param_dtype.*int32",
    ),
    ("linen-use-bias", lambda: L.Fp8MixedDense(4, use_bias="yes"), TypeError, "use_bias.*'yes'"),
    ("linen-kernel-init", lambda: L.Fp8MixedDense(4, kernel_init=3), TypeError, "kernel_init.*3"),
    (
        "linen-option-of-other-kind",
        lambda: L.Fp8MixedDense(4, threshold=6.0),
        TypeError,
        "threshold",
    ),
    (
        "linen-inputs-rank",
        lambda: L.Fp8MixedDense(4).init(jax.random.key(0), jnp.float32(1.0)),
        ValueError,
        r"inputs must have at least 1 dimension.*\(\)",
    ),
    (
        "linen-inputs-type",
        lambda: L.SwitchBackDense(4).init(jax.random.key(0), "x"),
        TypeError,
        "inputs must be an array.*str",
    ),
    # --- linen quantize_dense (raises on entering the context)
    (
        "qd-kind",
        lambda: _enter(L.quantize_dense("int8")),
        ValueError,
        f"kind.*{KINDS_RE}.*'int8'",
    ),
    ("qd-kind-type", lambda: _enter(L.quantize_dense(None)), TypeError, "kind.*None"),
    (
        "qd-threshold-for-fp8",
        lambda: _enter(L.quantize_dense("fp8_mixed", threshold=6.0)),
        TypeError,
        "quantize_dense: unexpected argument.*'threshold'.*'switchback' option.*'fp8_mixed'",
    ),
    (
        "qd-code-for-switchback",
        lambda: _enter(L.quantize_dense("switchback", fw_code=CODE)),
        TypeError,
        "'fw_code'.*kind 'switchback'",
    ),
    (
        "qd-unknown-option",
        lambda: _enter(L.quantize_dense("fp8_global", block=64)),
        TypeError,
        "'block'.*its options are fw_code, bw_code, bsz, bsz2, gemm, implementation",
    ),
    (
        "qd-threshold-bool",
        lambda: _enter(L.quantize_dense("switchback", threshold=True)),
        TypeError,
        "threshold.*True",
    ),
    ("qd-filter", lambda: _enter(L.quantize_dense("fp8_mixed", filter=3)), TypeError, "filter.*3"),
    # --- int8_inference_params, split/merge
    ("int8-params-type", lambda: L.int8_inference_params([1]), TypeError, "params.*list"),
    (
        "int8-filter",
        lambda: L.int8_inference_params({"params": {}}, filter="head"),
        TypeError,
        "filter.*'head'",
    ),
    (
        "int8-model",
        lambda: L.int8_inference_params({"params": {}}, "model"),
        TypeError,
        "model.*str",
    ),
    (
        "int8-args-without-model",
        lambda: L.int8_inference_params({"params": {}}, None, x_()),
        TypeError,
        "no model",
    ),
    ("split-type", lambda: fnn.split_int8_params(3), TypeError, "params.*int"),
    (
        "merge-conflict",
        lambda: fnn.merge_int8_params({"a": {"b": 1}}, {"a": {"b": 2}}),
        ValueError,
        "'a/b'",
    ),
    # --- nnx layers
    (
        "nnx-in-features",
        lambda: N.Fp8MixedLinear(-1, 4, rngs=nnx.Rngs(0)),
        ValueError,
        "in_features.*-1",
    ),
    (
        "nnx-out-features",
        lambda: N.SwitchBackLinear(4, 0, rngs=nnx.Rngs(0)),
        ValueError,
        "out_features.*0",
    ),
    (
        "nnx-in-features-float",
        lambda: N.Fp8GlobalLinear(4.0, 4, rngs=nnx.Rngs(0)),
        TypeError,
        "in_features.*4.0",
    ),
    (
        "nnx-option-of-other-kind",
        lambda: N.Fp8MixedLinear(4, 4, threshold=6.0, rngs=nnx.Rngs(0)),
        TypeError,
        "Fp8MixedLinear.*'threshold'",
    ),
    (
        "nnx-code-for-switchback",
        lambda: N.SwitchBackLinear(4, 4, fw_code=CODE, rngs=nnx.Rngs(0)),
        TypeError,
        "SwitchBackLinear.*'fw_code'",
    ),
    (
        "nnx-threshold-str",
        lambda: N.SwitchBackLinear(4, 4, threshold="6", rngs=nnx.Rngs(0)),
        TypeError,
        "threshold.*'6'",
    ),
    (
        "nnx-threshold-bool",
        lambda: N.SwitchBackLinear(4, 4, threshold=False, rngs=nnx.Rngs(0)),
        TypeError,
        "threshold.*False",
    ),
    (
        "nnx-bsz",
        lambda: N.Fp8MixedLinear(4, 4, bsz=48, rngs=nnx.Rngs(0)),
        ValueError,
        "bsz.*48",
    ),
    (
        "nnx-code",
        lambda: N.Fp8MixedLinear(4, 4, bw_code=np.zeros(3, np.float32), rngs=nnx.Rngs(0)),
        ValueError,
        r"bw_code.*\(3,\)",
    ),
    (
        "nnx-code-traced",
        lambda: jax.jit(lambda c: N.Fp8MixedLinear(4, 4, fw_code=c, rngs=nnx.Rngs(0)) and 0)(CODE),
        TypeError,
        "fw_code must be a concrete array",
    ),
    (
        "nnx-static-code",
        lambda: N.StaticCode(np.zeros(4, np.float32)),
        ValueError,
        r"code must have shape \(256,\), got \(4,\)",
    ),
    (
        "nnx-dtype",
        lambda: N.Fp8MixedLinear(4, 4, dtype=jnp.int8, rngs=nnx.Rngs(0)),
        ValueError,
        "dtype.*int8",
    ),
    (
        "nnx-use-bias",
        lambda: N.SwitchBackLinear(4, 4, use_bias=1, rngs=nnx.Rngs(0)),
        TypeError,
        "use_bias.*1",
    ),
    ("nnx-rngs", lambda: N.Fp8MixedLinear(4, 4, rngs=0), TypeError, "rngs.*int"),
    (
        "nnx-implementation",
        lambda: N.SwitchBackLinear(4, 4, implementation="cuda", rngs=nnx.Rngs(0)),
        ValueError,
        "implementation.*'cuda'",
    ),
    (
        "nnx-inputs-features",
        lambda: N.Fp8MixedLinear(8, 4, rngs=nnx.Rngs(0))(x_((2, 6))),
        ValueError,
        r"in_features=8.*\(2, 6\)",
    ),
    (
        "nnx-inputs-rank",
        lambda: N.SwitchBackLinear(8, 4, rngs=nnx.Rngs(0))(jnp.float32(1.0)),
        ValueError,
        r"inputs must have at least 1 dimension.*\(\)",
    ),
    (
        "nnx-from-linear-type",
        lambda: N.SwitchBackLinear.from_linear(nn.Dense(4)),
        TypeError,
        "from_linear needs an nnx.Linear, got Dense",
    ),
    (
        "nnx-from-linear-int8",
        lambda: N.SwitchBackLinear.from_linear(_int8_switchback()),
        ValueError,
        "int8 inference weights",
    ),
    (
        "nnx-from-linear-option",
        lambda: N.Fp8MixedLinear.from_linear(
            nnx.Linear(4, 4, rngs=nnx.Rngs(0)), outlier_capacity=3
        ),
        TypeError,
        "'outlier_capacity'.*'fp8_mixed'",
    ),
    # --- quantize_model / to_int8_inference
    (
        "qm-kind",
        lambda: fnn.quantize_model(TwoLinear(), "int8"),
        ValueError,
        f"kind.*{KINDS_RE}.*'int8'",
    ),
    ("qm-kind-type", lambda: fnn.quantize_model(TwoLinear(), 8), TypeError, "kind.*8"),
    (
        "qm-unknown-option",
        lambda: fnn.quantize_model(TwoLinear(), "switchback", thresh=6.0),
        TypeError,
        "quantize_model: unexpected argument.*'thresh'.*"
        "its options are threshold, outlier_capacity, implementation",
    ),
    (
        "qm-option-of-other-kind",
        lambda: fnn.quantize_model(TwoLinear(), "fp8_mixed", threshold=6.0),
        TypeError,
        "'threshold'.*kind 'fp8_mixed'",
    ),
    (
        "qm-option-value",
        lambda: fnn.quantize_model(TwoLinear(), "switchback", threshold=True),
        TypeError,
        "threshold.*True",
    ),
    (
        "qm-linen-module",
        lambda: fnn.quantize_model(nn.Dense(4), "fp8_mixed"),
        TypeError,
        "flax.linen module.*quantize_dense",
    ),
    ("qm-not-a-module", lambda: fnn.quantize_model({}, "fp8_mixed"), TypeError, "dict"),
    (
        "qm-filter",
        lambda: fnn.quantize_model(TwoLinear(), "fp8_mixed", filter="a"),
        TypeError,
        "filter.*'a'",
    ),
    (
        "qm-already-other-kind",
        lambda: _quantized_then("switchback"),
        ValueError,
        r"already holds fp8mm layers.*a \(Fp8MixedLinear, fp8_mixed\).*from_linear",
    ),
    (
        "int8-nnx-linen",
        lambda: fnn.to_int8_inference(nn.Dense(4)),
        TypeError,
        "flax.linen module",
    ),
    # --- sharding
    ("partition-mesh", lambda: _enter(sharding.partition("mesh")), TypeError, "mesh.*str"),
    (
        "partition-axis",
        lambda: _enter(sharding.partition(mesh(), "batch")),
        ValueError,
        r"batch_axis.*\('data', 'model'\).*'batch'",
    ),
    (
        "partition-axis-type",
        lambda: _enter(sharding.partition(mesh(), 0)),
        TypeError,
        "batch_axis.*0",
    ),
    (
        "partition-same-axis",
        lambda: _enter(sharding.partition(mesh(), "data", "data")),
        ValueError,
        "different.*'data'",
    ),
    (
        "Partition-axis",
        lambda: sharding.Partition(mesh(), model_axis="tp"),
        ValueError,
        "model_axis.*'tp'",
    ),
    (
        "shardings-params",
        lambda: sharding.dense_param_shardings([], mesh()),
        TypeError,
        "params.*list",
    ),
    (
        "shardings-mesh",
        lambda: sharding.dense_param_shardings({}, None),
        TypeError,
        "mesh.*NoneType",
    ),
    (
        "shardings-axis",
        lambda: sharding.dense_param_shardings({}, mesh(), "tp"),
        ValueError,
        "model_axis.*'tp'",
    ),
    (
        "batch-sharding-axis",
        lambda: sharding.batch_sharding(mesh(), "batch"),
        ValueError,
        "batch_axis.*'batch'",
    ),
]


@pytest.mark.parametrize(
    ("call", "exc", "match"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_wrong_argument_raises_naming_it(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_int8_weights_in_a_non_switchback_layer_name_the_layer():
    # Applying SwitchBack int8 params to an fp8 layer fails with the layer's path.
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(4, name="proj")(x)

    x = x_()
    with L.quantize_dense("switchback"):
        params = Net().init(jax.random.key(0), x)
    int8, _ = L.int8_inference_params(params)
    with pytest.raises(ValueError, match=r"'proj' holds SwitchBack int8 weights.*'fp8_mixed'"):
        with L.quantize_dense("fp8_mixed"):
            jax.eval_shape(Net().apply, int8, x)
