"""Multi-device fp8mm layers: data- and tensor-parallel training steps equal the single-device step.

jax fixes its device count when it initialises, and the main pytest process
has one CPU device, so the checks run in a fresh interpreter with
XLA_FLAGS=--xla_force_host_platform_device_count=4 (the WORKER source below).
"""

import os
import subprocess
import sys
import textwrap

WORKER = textwrap.dedent(
    """
    import flax.linen as nn
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from fp8mm.nn import linen as fl, sharding

    assert jax.device_count() == 4, jax.devices()
    devs = np.array(jax.devices())
    LAYERS = {"plain": nn.Dense, **fl.LAYERS}

    class MLP(nn.Module):
        dense: type
        @nn.compact
        def __call__(self, x):
            return self.dense(64)(nn.relu(self.dense(128)(x)))

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((16, 64)), jnp.float32)
    y = jnp.asarray(rng.standard_normal((16, 64)), jnp.float32)
    params0 = MLP(nn.Dense).init(jax.random.key(0), x)
    tx = optax.sgd(0.1)  # linear in the gradients: no amplification of rounding

    def make_step(kind, part=None):
        model = MLP(LAYERS[kind])
        def step(params, opt, x, y):
            def loss(p):
                if part is None:
                    return jnp.mean((model.apply(p, x) - y) ** 2)
                with sharding.partition(*part):  # read while tracing
                    return jnp.mean((model.apply(p, x) - y) ** 2)
            l, g = jax.value_and_grad(loss)(params)
            upd, opt = tx.update(g, opt, params)
            return optax.apply_updates(params, upd), opt, l
        return step

    def run(kind, mesh=None, model_axis=None, part=None, steps=2, fsdp=None):
        step = make_step(kind, part)
        params, xs, ys = params0, x, y
        if mesh is not None:
            shard = sharding.dense_param_shardings(params0, mesh, model_axis, fsdp)
            params = jax.device_put(params0, shard)
            xs = jax.device_put(x, sharding.batch_sharding(mesh))
            ys = jax.device_put(y, sharding.batch_sharding(mesh))
        opt = tx.init(params)
        step = jax.jit(step)
        losses = []
        for _ in range(steps):
            params, opt, l = step(params, opt, xs, ys)
            losses.append(float(l))
        return params, losses

    def same(a, b, what):
        pa, la = a
        pb, lb = b
        np.testing.assert_allclose(la, lb, rtol=1e-5, err_msg=what)
        for u, v in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
            np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-4, atol=2e-5,
                                       err_msg=what)
        print("ok", what)

    dp = Mesh(devs.reshape(4, 1), ("data", "model"))
    tp = Mesh(devs.reshape(1, 4), ("data", "model"))
    both = Mesh(devs.reshape(2, 2), ("data", "model"))
    # mem_efficient differs from switchback_global only in what the backward keeps.
    for kind in [k for k in LAYERS if k != "switchback_global_mem_efficient"]:
        ref = run(kind)
        same(run(kind, dp), ref, f"{kind} data-parallel (GSPMD)")
        got = run(kind, tp, "model")
        spec = got[0]["params"]["Dense_0"]["kernel"].sharding.spec
        assert tuple(spec) == (None, "model"), spec  # the weights stay sharded
        same(got, ref, f"{kind} tensor-parallel (GSPMD)")
        same(run(kind, both, "model"), ref, f"{kind} 2x2 data+tensor (GSPMD)")
        # FSDP: kernels split on their input features over the data axis (and on the
        # output features over the model axis); jit gathers them for the product.
        got = run(kind, dp, None, fsdp="data")
        spec = got[0]["params"]["Dense_0"]["kernel"].sharding.spec
        assert tuple(spec)[:1] == ("data",) and all(a is None for a in tuple(spec)[1:]), spec
        same(got, ref, f"{kind} FSDP (GSPMD)")
        same(run(kind, both, "model", fsdp="data"), ref, f"{kind} FSDP x tensor (GSPMD)")
    # shard_map partitioning (the Pallas path's): per-shard quantization where it is exact.
    # fp8_global: its absmaxes (A, B, the gradient) are pmaxes over the split axes.
    for kind, mesh, m in [
        ("switchback", both, "model"),
        ("fp8_mixed", dp, None),
        ("fp8_global", dp, None),
        ("fp8_global", tp, "model"),
        ("fp8_global", both, "model"),
    ]:
        got = run(kind, mesh, m, part=(mesh, "data", m))
        same(got, run(kind), f"{kind} shard_map {dict(mesh.shape)}")
    for kind, mesh, m in [("fp8_mixed", tp, "model")]:
        try:
            run(kind, mesh, m, part=(mesh, "data", m), steps=1)
        except NotImplementedError as e:
            print("ok refused", kind, str(e)[:60])
        else:
            raise AssertionError(f"{kind} shard_map should refuse {dict(mesh.shape)}")
    # The Pallas path (interpreted here) under partition, and int8 inference weights
    # split with the output features: one layer's forward and gradients.
    from fp8mm.nn import int8_inference_params
    meshes = {"dp": (dp, "data", None), "both": (both, "data", "model")}
    import functools
    LAYERS["fp8_global_native"] = functools.partial(fl.Fp8GlobalDense, gemm="native")
    LAYERS["fp8_mixed_native"] = functools.partial(fl.Fp8MixedDense, gemm="native")
    for kind, mesh, impl, int8 in [
        ("fp8_mixed", "dp", "pallas", False),
        ("fp8_global", "both", "pallas", False),
        ("fp8_global_native", "both", "pallas", False),
        ("fp8_mixed_native", "dp", "xla", False),
        ("switchback_outliers", "dp", "pallas", False),
        ("switchback", "both", "pallas", False),
        ("switchback_global", "dp", "pallas", False),
        ("switchback", "both", "xla", True),
        ("switchback_global", "both", "xla", True),
    ]:
        if kind == "switchback_outliers":
            # x has outliers (|x| >= 2.5) that some batch shards never see.
            layer = fl.SwitchBackDense(32, threshold=2.5, implementation=impl)
        else:
            layer = LAYERS[kind](32, implementation=impl)
        p = layer.init(jax.random.key(0), x)
        if int8:
            p = int8_inference_params(p, kind=kind)[0]
            shard = sharding.dense_param_shardings(p, meshes[mesh][0], meshes[mesh][2])
            assert shard["params"]["CB"].spec == P("model", None), shard
            p = jax.device_put(p, shard)
        loss = lambda p, x: jnp.sum(layer.apply(p, x) ** 2)
        f = jax.value_and_grad(loss, argnums=(0, 1), allow_int=True)
        want = f(p, x)
        with sharding.partition(*meshes[mesh]):
            got = jax.jit(f)(p, x)
        for u, v in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            if jnp.issubdtype(v.dtype, jnp.floating):
                np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-4, atol=2e-5,
                                           err_msg=f"{kind} {mesh} {impl} int8={int8}")
        print("ok partition", kind, mesh, impl, "int8" if int8 else "")
    # nnx: FSDP x tensor layout of a converted model's Params; the jitted gradients equal
    # the single-device ones.
    from flax import nnx
    from fp8mm.nn import nnx as fnnx
    for kind in ("switchback_global", "fp8_global"):
        r = nnx.Rngs(0)
        m = nnx.Sequential(nnx.Linear(64, 128, rngs=r), nnx.Linear(128, 64, rngs=r))
        fnnx.quantize_model(m, kind, implementation="xla")
        grad = lambda m, x: jnp.sum(m(x) ** 2)
        want = nnx.grad(grad)(m, x)
        sh = sharding.nnx_param_shardings(m, both, "model", "data")
        nnx.update(m, jax.device_put(nnx.state(m, nnx.Param), sh))
        assert tuple(m.layers[0].kernel[...].sharding.spec) == ("data", "model")
        got = nnx.jit(nnx.grad(grad))(m, jax.device_put(x, sharding.batch_sharding(both)))
        for u, v in zip(jax.tree.leaves(nnx.state(got)), jax.tree.leaves(nnx.state(want))):
            np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-4, atol=2e-5,
                                       err_msg=f"nnx {kind} FSDP x tensor")
        print("ok nnx FSDP x tensor", kind)
    print("ALL OK")
    """
)


def test_sharded_steps_equal_single_device():
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", WORKER], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and "ALL OK" in proc.stdout, proc.stdout + proc.stderr[-4000:]
