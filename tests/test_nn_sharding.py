"""Multi-device fp8mm layers: data- and tensor-parallel training steps equal the single-device step.

jax fixes its device count when it initialises, and the main pytest process
has one CPU device, so the checks run in a fresh interpreter with
XLA_FLAGS=--xla_force_host_platform_device_count=4 (the WORKER source below).
"""

import os
import subprocess
import sys
import textwrap

import pytest

WORKER = textwrap.dedent(
    """
    import flax.linen as nn
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import functools
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

    def make_step(kind, part=None, impl=None):
        dense = LAYERS[kind]
        model = MLP(dense if impl is None else functools.partial(dense, implementation=impl))
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

    def run(kind, mesh=None, model_axis=None, part=None, steps=2, fsdp=None, impl=None):
        step = make_step(kind, part, impl)
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
    # fp8_mixed blocks straddling the batch shards (and the model shards): A's blocks of
    # 512 over 4- or 8-row shards of 64 features, the gradient's of 64 over rows of 40 (or
    # of 256 over rows of 32, native).
    for kind, feats, kw, impl in [
        ("fp8_mixed", 40, {"bsz": 512}, "xla"),
        ("fp8_mixed", 40, {"bsz": 512}, "pallas"),
        ("fp8_mixed", 32, {"bsz": 512, "bsz2": 256, "gemm": "native"}, "pallas"),
    ]:
        layer = LAYERS[kind](feats, implementation=impl, **kw)
        p = layer.init(jax.random.key(0), x)
        f = jax.value_and_grad(lambda p, x: jnp.sum(layer.apply(p, x) ** 2), argnums=(0, 1))
        want = f(p, x)
        for mesh, m in [(dp, None), (both, "model")]:
            with sharding.partition(mesh, "data", m):
                got = jax.jit(f)(p, x)
            for u, v in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
                scale = 2e-6 * float(np.abs(np.asarray(v)).max())
                np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=scale,
                                           err_msg=f"{kind} {feats} {kw} {dict(mesh.shape)}")
        print("ok blocks across batch shards", kind, feats, kw, impl)
    # The Pallas path (interpreted here) under partition, and int8 inference weights
    # split with the output features: one layer's forward and gradients.
    from fp8mm.nn import int8_inference_params
    meshes = {"dp": (dp, "data", None), "both": (both, "data", "model")}
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
    # The model axis for the SwitchBack paper's kinds and fp8_mixed (emulated and native):
    # W's absmax, the vectorwise input gradient's per-input-feature weight absmax, the
    # gradient's row absmax (paper) and the gradient's bsz2 blocks spanning the split
    # output features (fp8_mixed: blocks of 128 over 4 x 32 and 2 x 64 columns in the
    # first layer, of 64 over 16-wide pieces in the second) are combined over the model
    # axis inside the ops. Training steps equal the single-device ones to float summation
    # order: each shard's input gradient is a partial sum over its output features (summed
    # by shard_map's transpose), and XLA's CPU float GEMMs sum in a shape-dependent order.
    PAPER = ["switchback_global", "switchback_vectorwise", "switchback_global_mem_efficient"]
    for kind in [*PAPER, "fp8_mixed", "fp8_mixed_native"]:
        for impl in ("xla", "pallas"):
            ref = run(kind, impl=impl)
            for mesh in (tp, both):
                got = run(kind, mesh, "model", part=(mesh, "data", "model"), impl=impl)
                same(got, ref, f"{kind} {impl} shard_map {dict(mesh.shape)}")
    # One layer: the paper's forward is bit for bit (int8 products, per-element scales);
    # blocks of the output gradient straddling rows and shards (96 features: blocks of 128,
    # 24- or 48-column shards; 384 features: blocks of 512 over 96-column shards); native
    # with 64-blocks cut into 16- or 32-element pieces (192 features, 48 or 96 a shard).
    for kind, feats, impl, kw in [
        ("switchback_global", 32, "pallas", {}),
        ("switchback_vectorwise", 32, "xla", {}),
        ("fp8_mixed", 96, "xla", {}),
        ("fp8_mixed", 384, "pallas", {}),
        ("fp8_mixed_native", 192, "pallas", {"bsz2": 64}),
    ]:
        layer = LAYERS[kind](feats, implementation=impl, **kw)
        p = layer.init(jax.random.key(1), x)
        loss = lambda p, x: jnp.sum(layer.apply(p, x) ** 2)
        f = jax.value_and_grad(loss, argnums=(0, 1))
        want, y_want = f(p, x), layer.apply(p, x)
        for mesh in (tp, both):
            with sharding.partition(mesh, "data", "model"):
                got, y = jax.jit(f)(p, x), jax.jit(layer.apply)(p, x)
            if kind in PAPER:
                np.testing.assert_array_equal(np.asarray(y), np.asarray(y_want), err_msg=kind)
            for u, v in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
                # float32 summation order: within 2e-6 of the array's largest value
                scale = 2e-6 * float(np.abs(np.asarray(v)).max())
                np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=scale,
                                           err_msg=f"{kind} {feats} {impl} {dict(mesh.shape)}")
            print("ok model-split layer", kind, feats, impl, dict(mesh.shape))
    # The quantizers themselves inside shard_map, bit for bit with the whole tensor's, and
    # different from it without the collective (the data sees a missing pmax).
    from fp8mm import codebooks, reference
    from fp8mm import functional_switchback as FS
    from fp8mm.ops import _common, _fp8, _fp8_native
    code = codebooks.e5m2_code()
    def on_columns(fn, mesh, g):
        spec = P("data", "model")
        return jax.jit(sharding.shard_map(fn, mesh=mesh, in_specs=spec, out_specs=spec,
                                          check_vma=False))(g)
    # (6, 40, 64) and (4, 64, 256) on the 2x2 mesh: blocks across the batch shards too.
    axes = (("data", "model"), ("model",), ("data",))
    for rows, cols, bs in [(16, 96, 128), (8, 192, 64), (16, 384, 512), (6, 40, 64),
                           (4, 64, 256)]:
        g = rng.standard_normal((rows, cols)) * np.exp(2 * rng.standard_normal((rows, 1)))
        g = jnp.asarray(g, jnp.float32)
        want = np.asarray(reference.fake_quant_blockwise(g, jnp.asarray(code), bs))
        for impl in ("xla", "pallas"):
            for mesh in (tp, both):
                fn = lambda g: _fp8.blockwise(g, code, bs, impl, *axes)
                np.testing.assert_array_equal(np.asarray(on_columns(fn, mesh, g)), want)
        alone = lambda g: _fp8.blockwise(g, code, bs, "xla")  # no collective
        assert not np.array_equal(np.asarray(on_columns(alone, tp, g)), want), (rows, cols, bs)
        print("ok split blocks", rows, cols, bs)
    # native: the output gradient's float8 bytes and row scales per shard.
    ncfg = _fp8_native.NativeConfig(True, "e4m3", "e5m2", 64, 128, "xla", jnp.float32,
                                    ("model",), ("model",))
    g = jnp.asarray(rng.standard_normal((16, 128)), jnp.float32)
    whole = _fp8_native.NativeConfig(True, "e4m3", "e5m2", 64, 128, "xla", jnp.float32)
    w8, w_rows = whole.quantize_blocks(g, codebooks.e5m2_code(), 128)
    def native_grad(g):
        d, r = ncfg.quantize_blocks(g, codebooks.e5m2_code(), 128, ("model",))
        return d.astype(jnp.float32) * r
    np.testing.assert_array_equal(np.asarray(on_columns(native_grad, tp, g)),
                                  np.asarray(w8.astype(jnp.float32) * w_rows))
    # switchback_linear: the gradient's row absmax over the split features.
    want = FS.quantize_rowwise(g)[0]
    for impl in ("xla", "pallas"):
        fn = lambda g: FS.quantize_rowwise(g, _common.mesh_absmax(g, ("model",), 1),
                                           implementation=impl)[0]
        np.testing.assert_array_equal(np.asarray(on_columns(fn, both, g)), np.asarray(want))
    alone = lambda g: FS.quantize_rowwise(g)[0]
    assert not np.array_equal(np.asarray(on_columns(alone, both, g)), np.asarray(want))
    print("ok split rows")
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
    # Zero-size shards: an empty batch split over the 2 x 2 mesh, every kind.
    x0 = jnp.zeros((0, 64), jnp.float32)
    for kind in LAYERS:
        if kind == "plain":
            continue
        layer = LAYERS[kind](32, implementation="pallas")
        p = layer.init(jax.random.key(0), x)
        f = jax.value_and_grad(lambda p, x: jnp.sum(layer.apply(p, x) ** 2), argnums=(0, 1))
        with sharding.partition(both, "data", "model"):
            (l, (gp, gx)) = jax.jit(f)(p, x0)
        assert float(l) == 0.0 and gx.shape == (0, 64), kind
        assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(gp)), kind
        print("ok zero-size shards", kind)
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


ONE_DEVICE_KINDS = [
    ("fp8_mixed", {}),
    ("fp8_mixed", {"gemm": "native"}),
    ("fp8_global", {}),
    ("fp8_global", {"gemm": "native"}),
    ("switchback", {}),
    ("switchback", {"threshold": 2.5}),
    ("switchback_global", {}),
    ("switchback_vectorwise", {}),
    ("switchback_global_mem_efficient", {}),
]


@pytest.mark.parametrize("rows", [16, 0], ids=["rows16", "empty"])
@pytest.mark.parametrize("kind, opts", ONE_DEVICE_KINDS)
def test_partition_on_one_device_is_the_layer(kind, opts, rows):
    # `partition` over a one-device mesh (every axis of size 1) with the default
    # implementation: the XLA path on a CPU, the compiled Pallas kernels on a GPU (the
    # shard_map path there); zero rows give each shard an empty batch. Forward and every
    # gradient bit for bit with the layer outside `partition`.
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh

    from fp8mm.nn import linen as fl
    from fp8mm.nn import sharding

    layer = fl.LAYERS[kind](32, **opts)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((rows, 64)), jnp.bfloat16)
    if rows:
        x = x.at[3, 5].set(8.0)  # an outlier column for the threshold case
    params = layer.init(jax.random.key(0), jnp.ones((2, 64), jnp.bfloat16))
    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))

    def loss(p, x, part):
        if part:
            with sharding.partition(mesh, "data", "model"):
                y = layer.apply(p, x)
        else:
            y = layer.apply(p, x)
        return jnp.sum(y.astype(jnp.float32) ** 2), y

    def run(part):
        f = jax.value_and_grad(lambda p, x: loss(p, x, part), argnums=(0, 1), has_aux=True)
        return jax.jit(f)(params, x)

    want, got = run(False), run(True)
    assert got[0][1].shape == (rows, 32)
    for u, v in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(u, np.float32), np.asarray(v, np.float32))
