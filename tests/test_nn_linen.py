"""fp8mm.nn.linen: drop-in nn.Dense layers, dot_general injection, interception, int8, sow."""

import dataclasses
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fp8mm
import fp8mm.nn as fnn
from fp8mm.nn import linen as L
from tests.helpers import cpu_subset, rand, rel
from tests.nn_cases import FACTORIES, KINDS, QUANT_TOL

# Interpreted Pallas (the CPU) runs each layer once, both dtypes among them; the rest runs
# there on XLA only (test_nn_nnx.py runs the SwitchBack training and int8 inference paths).
PALLAS_CPU_CASES = {
    ("fp8_mixed", None),
    ("fp8_global", jnp.bfloat16),
    ("switchback", jnp.bfloat16),
    ("switchback_global", jnp.bfloat16),
}


class MLP(nn.Module):
    """Two stock Dense layers, or the quantized layer class `dense`."""

    dense: type = nn.Dense

    @nn.compact
    def __call__(self, x):
        x = nn.relu(self.dense(48)(x))
        return self.dense(8)(x)


def test_fields_match_dense():
    dense = {
        f.name: f.default for f in dataclasses.fields(nn.Dense) if f.name not in ("parent", "name")
    }
    for cls in L.LAYERS.values():
        ours = {f.name: f.default for f in dataclasses.fields(cls)}
        for name, default in dense.items():
            if name in ("dot_general", "dot_general_cls"):
                continue  # the product is the layer's point; see the dot_general factories
            assert name in ours and ours[name] == default, (cls.__name__, name)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [None, jnp.bfloat16])
def test_params_and_outputs_like_dense(implementation, kind, dtype):
    cpu_subset(implementation, (kind, dtype) in PALLAS_CPU_CASES)
    x = rand((2, 5, 64))
    dense = nn.Dense(32, dtype=dtype)
    quant = L.LAYERS[kind](32, dtype=dtype, implementation=implementation)
    p_dense = dense.init(jax.random.key(0), x)
    p_quant = quant.init(jax.random.key(0), x)
    # Same names, shapes, dtypes and (same rng) values: checkpoints are interchangeable.
    assert jax.tree.structure(p_dense) == jax.tree.structure(p_quant)
    jax.tree.map(np.testing.assert_array_equal, p_dense, p_quant)
    want, got = dense.apply(p_dense, x), quant.apply(p_dense, x)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert rel(got.astype(jnp.float32), want.astype(jnp.float32)) < QUANT_TOL[kind] + (
        0.02 if dtype else 0.0
    )


@pytest.mark.parametrize("kind", KINDS)
def test_injection_and_interception_match_layer(implementation, kind):
    cpu_subset(implementation)
    x = rand((6, 64), seed=1)
    impl = dict(implementation=implementation)
    layer = MLP(lambda f: L.LAYERS[kind](f, **impl))
    params = MLP().init(jax.random.key(0), x)

    def run(model, p, ctx=None):
        def loss(p):
            return jnp.sum(model.apply(p, x) ** 2)

        # jit: eager op-by-op dispatch of the quantized ops is slow on CPU.
        if ctx is None:
            return jax.jit(jax.value_and_grad(loss))(p)
        with ctx:  # the interceptor acts while tracing
            return jax.jit(jax.value_and_grad(loss))(p)

    want = run(layer, params)
    injected = MLP(lambda f: nn.Dense(f, dot_general=FACTORIES[kind](**impl)))
    intercepted = run(MLP(), params, L.quantize_dense(kind, **impl))
    for got in (run(injected, params), intercepted):
        jax.tree.map(np.testing.assert_array_equal, got, want)


def test_interception_filter_and_unsupported_contraction():
    x = rand((3, 64))
    params = MLP().init(jax.random.key(0), x)
    plain = MLP().apply(params, x)
    with L.quantize_dense("fp8_mixed", filter=lambda m: False):
        np.testing.assert_array_equal(MLP().apply(params, x), plain)
    dg = fnn.fp8_mixed_dot_general()
    with pytest.raises(NotImplementedError, match=r"nn\.Dense contraction"):
        dg(rand((4, 8)), rand((4, 8)), (((0,), (0,)), ((), ())))


@pytest.mark.parametrize("kind", (None, *KINDS))
def test_jit_training_step_lowers_loss(implementation, kind):
    if kind is None and implementation != "xla":
        pytest.skip("nn.Dense runs no fp8mm primitive")
    cpu_subset(implementation)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((64, 16)), jnp.float32)
    y = jnp.asarray(np.tanh(np.asarray(x) @ rng.standard_normal((16, 8))), jnp.float32)
    model = MLP(nn.Dense if kind is None else L.LAYERS[kind])
    params = model.init(jax.random.key(0), x)
    tx = optax.adam(1e-2)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt):
        loss, g = jax.value_and_grad(lambda p: jnp.mean((model.apply(p, x) - y) ** 2))(params)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), opt, loss

    losses = []
    with fp8mm.use_implementation(implementation):  # step is traced on its first call
        for _ in range(30):
            params, opt, loss = step(params, opt)
            losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]


def test_checkpoint_round_trip(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    x = rand((4, 64))
    params = MLP().init(jax.random.key(0), x)  # a stock nn.Dense model's checkpoint
    path = tmp_path / "ckpt"
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(path, params)
    with ocp.StandardCheckpointer() as ckpt:
        restored = ckpt.restore(path, params)
    quant = MLP(L.Fp8MixedDense)
    np.testing.assert_array_equal(quant.apply(restored, x), quant.apply(params, x))


@pytest.mark.parametrize("threshold", [0.0, 3.0])
def test_int8_inference_params(implementation, threshold):
    cpu_subset(implementation)
    x = rand((8, 64), seed=2)
    x = x.at[:, 5].set(9.0)  # one outlier column
    model = MLP(lambda f: L.SwitchBackDense(f, threshold=threshold, implementation=implementation))
    params = model.init(jax.random.key(0), x)
    with fp8mm.use_implementation(implementation):  # prepare_int8_weight
        int8, report = L.int8_inference_params(params)
    layer0 = int8["params"]["Dense_0"]  # auto-named like nn.Dense
    assert layer0["CB"].dtype == jnp.int8 and "kernel" not in layer0
    assert layer0["CB"].shape == (48, 64) and layer0["SCB"].shape == (48,)
    assert len(report.layers) == 2 and report.bytes_saved > 0.6 * (64 * 48 + 48 * 8) * 4
    apply = jax.jit(model.apply)
    want, got = apply(params, x), apply(int8, x)
    if threshold == 0.0:
        np.testing.assert_array_equal(got, want)  # the same int8 weight as in training
    else:
        # Outlier columns use the dequantized weight instead of the float one.
        assert rel(got, want) < 1e-2


def test_outlier_statistics_are_sown(implementation):
    cpu_subset(implementation)
    x = rand((8, 64), seed=3).at[:, [3, 17]].set(8.0)
    model = MLP(lambda f: L.SwitchBackDense(f, threshold=6.0, implementation=implementation))
    params = model.init(jax.random.key(0), x)
    _, inter = model.apply(params, x, mutable=["intermediates"])
    first = inter["intermediates"]["Dense_0"]
    np.testing.assert_array_equal(np.flatnonzero(first["outlier_cols"][0]), [3, 17])
    assert int(first["outlier_count"][0]) == 2
    # Without a threshold nothing is sown.
    plain = MLP(lambda f: L.SwitchBackDense(f, implementation=implementation))
    _, inter = plain.apply(params, x, mutable=["intermediates"])
    assert not inter


class SwitchBackWithHead(nn.Module):
    """A SwitchBack layer feeding a plain nn.Dense head (which int8 weights do not fit)."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(8, name="head")(nn.relu(L.SwitchBackDense(48)(x)))


def test_train_float_parts_of_int8_model():
    # jax.grad(allow_int=True) gives CB a float0 gradient, which optax cannot apply;
    # split_int8_params keeps the int8 leaves out of what is differentiated.
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal((16, 64)), jnp.float32)
    y = jnp.asarray(rng.standard_normal((16, 8)), jnp.float32)
    model = SwitchBackWithHead()
    params = model.init(jax.random.key(0), x)
    int8, _ = L.int8_inference_params(params, model, x, filter=lambda p: "head" not in p)
    trainable, frozen = fnn.split_int8_params(int8)
    assert set(frozen["params"]["Dense_0"]) == {"CB", "SCB"} and not frozen["params"]["head"]
    assert set(trainable["params"]["Dense_0"]) == {"bias"}
    assert set(trainable["params"]["head"]) == {"kernel", "bias"}
    tx = optax.adamw(1e-2, weight_decay=0.1)  # decay would move SCB, were it trained
    opt = tx.init(trainable)

    @jax.jit
    def step(trainable, opt):
        def loss(t):
            return jnp.mean((model.apply(fnn.merge_int8_params(t, frozen), x) - y) ** 2)

        value, g = jax.value_and_grad(loss)(trainable)
        upd, opt = tx.update(g, opt, trainable)
        return optax.apply_updates(trainable, upd), opt, value

    t, losses = trainable, []
    for _ in range(5):
        t, opt, value = step(t, opt)
        losses.append(float(value))
    assert losses[-1] < losses[0]
    merged = fnn.merge_int8_params(t, frozen)
    assert jax.tree.structure(merged) == jax.tree.structure(int8)
    for name in ("CB", "SCB"):
        got, want = merged["params"]["Dense_0"][name], int8["params"]["Dense_0"][name]
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    for path in (("Dense_0", "bias"), ("head", "kernel"), ("head", "bias")):
        a, b = merged["params"][path[0]][path[1]], int8["params"][path[0]][path[1]]
        assert not np.array_equal(a, b), path


def test_int8_inference_params_checks_layers_with_model():
    x = rand((4, 64))
    model = SwitchBackWithHead()
    params = model.init(jax.random.key(0), x)
    # Converting the plain Dense used to fail only later, inside apply.
    with pytest.raises(ValueError, match=r"\['params/head'\] do not run as SwitchBack"):
        L.int8_inference_params(params, model, x)
    with pytest.raises(ValueError, match=r"\['head'\]"):  # a bare 'params' collection
        L.int8_inference_params(params["params"], model, x)
    _, report = L.int8_inference_params(params, model, x, filter=lambda p: "head" not in p)
    assert report.layers == ("params/Dense_0",)
    # Stock nn.Dense layers run as SwitchBack inside the context: all of them convert.
    plain = MLP().init(jax.random.key(0), x)
    with L.quantize_dense("switchback"):
        _, report = L.int8_inference_params(plain, MLP(), x)
    assert report.layers == ("params/Dense_0", "params/Dense_1")
    with pytest.raises(ValueError, match="do not run as SwitchBack"):
        L.int8_inference_params(plain, MLP(), x)


def test_quantize_dense_warns_when_the_function_was_traced_before(monkeypatch):
    monkeypatch.setattr(L, "_specs_that_traced", set())
    x = rand((3, 64))
    params = MLP().init(jax.random.key(0), x)
    stale = jax.jit(lambda p, x: MLP().apply(p, x))
    plain = stale(params, x)
    with pytest.warns(UserWarning, match="exited without tracing any nn.Dense"):
        with L.quantize_dense("fp8_mixed"):
            got = stale(params, x)
    np.testing.assert_array_equal(got, plain)  # the cached plain trace ran: the documented rule
    # Traced inside the context: quantized, and later calls of that trace do not warn.
    fresh = jax.jit(lambda p, x: MLP().apply(p, x))
    with warnings.catch_warnings():
        # Only fp8mm's own warning: JAX warns that the Pallas Triton backend is deprecated.
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message=".*[Tt]riton.*deprecat.*")
        for _ in range(2):
            with L.quantize_dense("fp8_mixed"):
                got = fresh(params, x)
    assert not np.array_equal(got, plain)
