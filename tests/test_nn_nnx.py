"""fp8mm.nn.nnx: drop-in nnx.Linear layers, dot_general injection, quantize_model, int8, sow."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import fp8mm
import fp8mm.nn as fnn
from fp8mm.codebooks import create_fp8_map
from fp8mm.nn import nnx as N
from tests.helpers import cpu_subset, rand, rel
from tests.nn_cases import FACTORIES, KINDS, QUANT_TOL

# Interpreted Pallas (the CPU) runs the SwitchBack layer (forward, training, int8 inference);
# test_nn_linen.py runs each fp8 layer there, test_ops.py the ops.
PALLAS_CPU_CASES = {("switchback", jnp.bfloat16)}


class MLP(nnx.Module):
    def __init__(self, linear=nnx.Linear, *, rngs):
        self.layers = nnx.List([linear(64, 48, rngs=rngs), linear(48, 8, rngs=rngs)])

    def __call__(self, x):
        return self.layers[1](nnx.relu(self.layers[0](x)))


def test_signature_matches_linear():
    stock = inspect.signature(nnx.Linear.__init__).parameters
    for cls in N.LAYERS.values():
        ours = inspect.signature(cls.__init__).parameters
        if "kwargs" in ours:  # subclasses forward to the shared base
            ours = {**inspect.signature(N._QuantLinear.__init__).parameters, **ours}
        for name, p in stock.items():
            if name == "dot_general":
                continue  # the product is the layer's point
            assert name in ours and ours[name].default == p.default, (cls.__name__, name)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [None, jnp.bfloat16])
def test_params_and_outputs_like_linear(implementation, kind, dtype):
    cpu_subset(implementation, (kind, dtype) in PALLAS_CPU_CASES)
    x = rand((2, 5, 64))
    lin = nnx.Linear(64, 32, dtype=dtype, rngs=nnx.Rngs(0))
    q = N.LAYERS[kind](64, 32, dtype=dtype, implementation=implementation, rngs=nnx.Rngs(0))
    s_lin, s_q = nnx.state(lin, nnx.Param), nnx.state(q, nnx.Param)
    assert jax.tree.structure(s_lin) == jax.tree.structure(s_q)
    jax.tree.map(np.testing.assert_array_equal, s_lin, s_q)
    want, got = lin(x), q(x)
    assert got.shape == want.shape and got.dtype == want.dtype
    tol = QUANT_TOL[kind] + (0.02 if dtype else 0.0)
    assert rel(got.astype(jnp.float32), want.astype(jnp.float32)) < tol


@pytest.mark.parametrize("kind", KINDS)
def test_injection_and_conversion_match_layer(implementation, kind):
    cpu_subset(implementation)
    x = rand((6, 64), seed=1)
    impl = dict(implementation=implementation)

    def value_and_grad(model):
        @nnx.jit
        def f(model):
            return nnx.value_and_grad(lambda m: jnp.sum(m(x) ** 2))(model)

        return f(model)

    want = value_and_grad(
        MLP(lambda i, o, rngs: N.LAYERS[kind](i, o, **impl, rngs=rngs), rngs=nnx.Rngs(0))
    )
    injected = MLP(
        lambda i, o, rngs: nnx.Linear(i, o, dot_general=FACTORIES[kind](**impl), rngs=rngs),
        rngs=nnx.Rngs(0),
    )
    converted = fnn.quantize_model(MLP(rngs=nnx.Rngs(0)), kind, **impl)
    assert all(type(layer) is N.LAYERS[kind] for layer in converted.layers)
    for model in (injected, converted):
        got = value_and_grad(model)
        np.testing.assert_array_equal(got[0], want[0])
        jax.tree.map(np.testing.assert_array_equal, nnx.state(got[1]), nnx.state(want[1]))


def test_quantize_model_keeps_variables_and_filters():
    model = MLP(rngs=nnx.Rngs(0))
    kernel0 = model.layers[0].kernel
    fnn.quantize_model(
        model, "switchback", filter=lambda path, m: m.out_features != 8, threshold=6.0
    )
    assert type(model.layers[0]) is N.SwitchBackLinear and model.layers[0].threshold == 6.0
    assert model.layers[0].kernel is kernel0  # same Variable: optimizer state stays valid
    assert type(model.layers[1]) is nnx.Linear


@pytest.mark.parametrize("kind", (None, *KINDS))
def test_jit_training_step_lowers_loss(implementation, kind):
    if kind is None and implementation != "xla":
        pytest.skip("nnx.Linear runs no fp8mm primitive")
    cpu_subset(implementation, kind == "switchback")
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((64, 64)), jnp.float32)
    y = jnp.asarray(np.tanh(np.asarray(x) @ rng.standard_normal((64, 8)) / 8), jnp.float32)
    model = MLP(nnx.Linear if kind is None else N.LAYERS[kind], rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt):
        loss, g = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        opt.update(model, g)
        return loss

    with fp8mm.use_implementation(implementation):  # step is traced on its first call
        losses = [float(step(model, opt)) for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("threshold", [0.0, 3.0])
def test_int8_inference(implementation, threshold):
    cpu_subset(implementation, threshold > 0)
    x = rand((8, 64), seed=2).at[:, 5].set(9.0)
    model = fnn.quantize_model(
        MLP(rngs=nnx.Rngs(0)), "switchback", threshold=threshold, implementation=implementation
    )
    want = nnx.jit(lambda m: m(x))(model)
    with fp8mm.use_implementation(implementation):  # prepare_int8_weight
        report = fnn.to_int8_inference(model)
    layer = model.layers[0]
    assert not hasattr(layer, "kernel") and layer.CB[...].dtype == jnp.int8
    assert (
        layer.CB[...].shape == (48, 64) and len(jax.tree.leaves(nnx.state(model, nnx.Param))) == 2
    )  # biases
    assert len(report.layers) == 2 and report.bytes_saved > 0.6 * (64 * 48 + 48 * 8) * 4
    got = nnx.jit(lambda m: m(x))(model)
    if threshold == 0.0:
        np.testing.assert_array_equal(got, want)
    else:
        assert rel(got, want) < 1e-2


def test_outlier_statistics_are_sown(implementation):
    if not hasattr(nnx, "capture"):
        pytest.skip("nnx.capture exists from flax 0.12.6")
    cpu_subset(implementation)
    x = rand((8, 64), seed=3).at[:, [3, 17]].set(8.0)
    model = fnn.quantize_model(
        MLP(rngs=nnx.Rngs(0)), "switchback", threshold=6.0, implementation=implementation
    )
    _, inter = nnx.capture(model, nnx.Intermediate)(x)
    stats = inter["layers"][0]
    np.testing.assert_array_equal(np.flatnonzero(stats["outlier_cols"].get_value()[0]), [3, 17])
    assert int(stats["outlier_count"].get_value()[0]) == 2
    assert not nnx.state(model, nnx.Intermediate)  # nothing left on the model


@pytest.mark.parametrize("array", [np.asarray, jnp.asarray], ids=["numpy", "jax"])
def test_custom_code_forward_and_grad(implementation, array):
    cpu_subset(implementation)
    impl = dict(implementation=implementation)
    # Array codes used to be rejected by nnx.static; now they are kept as static host copies.
    code = array(create_fp8_map(True, 3, 4, 8))  # e3m4: not the default e4m3
    x = rand((6, 64), seed=4)
    layer = N.Fp8MixedLinear(64, 32, fw_code=code, bw_code=code, **impl, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(np.asarray(layer.fw_code), np.asarray(code))
    assert len(jax.tree.leaves(nnx.state(layer))) == 2  # the codes are not state

    @nnx.jit
    def value_and_grad(model):
        return nnx.value_and_grad(lambda m: jnp.sum(m(x) ** 2))(model)

    loss, grads = value_and_grad(layer)
    kernel, bias = layer.kernel[...], layer.bias[...]

    def want_loss(kernel, bias):
        return jnp.sum((fp8mm.matmul_fp8_mixed(x, kernel, code, code, **impl) + bias) ** 2)

    want, (gk, gb) = jax.jit(jax.value_and_grad(want_loss, (0, 1)))(kernel, bias)
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    np.testing.assert_allclose(grads["kernel"][...], gk, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads["bias"][...], gb, rtol=1e-5, atol=1e-6)
    default = N.Fp8MixedLinear(64, 32, **impl, rngs=nnx.Rngs(0))
    assert not np.array_equal(nnx.jit(lambda m: m(x))(default), nnx.jit(lambda m: m(x))(layer))

    # quantize_model takes the same codes; split/merge and an optimizer step work with them.
    converted = fnn.quantize_model(MLP(rngs=nnx.Rngs(0)), "fp8_global", fw_code=code, **impl)
    direct = MLP(
        lambda i, o, rngs: N.Fp8GlobalLinear(i, o, fw_code=code, **impl, rngs=rngs),
        rngs=nnx.Rngs(0),
    )
    got, ref = value_and_grad(nnx.merge(*nnx.split(converted))), value_and_grad(direct)
    np.testing.assert_array_equal(got[0], ref[0])
    jax.tree.map(np.testing.assert_array_equal, nnx.state(got[1]), nnx.state(ref[1]))
    opt = nnx.Optimizer(converted, optax.sgd(1e-3), wrt=nnx.Param)
    nnx.jit(lambda m, o, g: o.update(m, g))(converted, opt, got[1])


def test_quantize_model_twice():
    model = fnn.quantize_model(MLP(rngs=nnx.Rngs(0)), "switchback", threshold=6.0)
    first = model.layers[0]
    # The same kind and options again: nothing to do.
    assert fnn.quantize_model(model, "switchback", threshold=6.0).layers[0] is first
    # Other options or another kind: refused, unless the filter leaves those layers out.
    with pytest.raises(ValueError, match=r"already holds fp8mm layers.*SwitchBackLinear"):
        fnn.quantize_model(model, "switchback")
    mixed = fnn.quantize_model(MLP(rngs=nnx.Rngs(0)), "switchback", filter=lambda p, m: p[-1] == 0)
    fnn.quantize_model(mixed, "fp8_mixed", filter=lambda p, m: p[-1] == 1)
    assert [type(m) for m in mixed.layers] == [N.SwitchBackLinear, N.Fp8MixedLinear]
