"""FSDP under `partition`: the 16-bit and the 8-bit weight all-gather give the single-device step.

As tests/test_nn_sharding.py, the multi-device checks run in a fresh interpreter with
XLA_FLAGS=--xla_force_host_platform_device_count=4 (the WORKER source below), all in one
subprocess to pay jax's start-up once.
"""

import functools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from fp8mm.nn import QuantSpec, sharding
from fp8mm.nn._dense import quantized_dense
from fp8mm.nn._fsdp import Gather, gathered_product

WORKER = textwrap.dedent(
    """
    import functools, re
    import flax.linen as nn
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh, PartitionSpec as P
    from fp8mm.nn import QuantSpec, int8_inference_params, linen as fl, sharding
    from fp8mm.nn._dense import split_reason

    assert jax.device_count() == 4, jax.devices()
    devs = np.array(jax.devices())
    fsdp = Mesh(devs.reshape(4, 1), ("data", "model"))
    both = Mesh(devs.reshape(2, 2), ("data", "model"))
    LAYOUTS = {"fsdp": (fsdp, None), "fsdp x model": (both, "model")}
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((8, 64)), jnp.float32)
    x = x.at[1, 5].set(4.0)  # an outlier (threshold 2.5 below) in one batch shard only
    y = jnp.asarray(rng.standard_normal((8, 32)), jnp.float32)
    tx = optax.sgd(0.1)  # linear in the gradients: no amplification of rounding

    # (name, layer factory, QuantSpec options): each kind, native FP8, outliers.
    NATIVE = {"gemm": "native"}
    CASES = [
        ("fp8_mixed", fl.Fp8MixedDense, {}),
        ("fp8_mixed native", functools.partial(fl.Fp8MixedDense, gemm="native"), NATIVE),
        # A's blocks of 256 straddle the batch shards (2 rows x 64 features a shard at
        # fsdp 4, 4 rows at 2 x 2): their absmax is combined across the shards.
        ("fp8_mixed straddle", functools.partial(fl.Fp8MixedDense, bsz=256), {"bsz": 256}),
        ("fp8_mixed native_straddle",
         functools.partial(fl.Fp8MixedDense, bsz=256, gemm="native"), {"bsz": 256, **NATIVE}),
        ("fp8_global", fl.Fp8GlobalDense, {}),
        ("fp8_global native", functools.partial(fl.Fp8GlobalDense, gemm="native"), NATIVE),
        ("switchback", fl.SwitchBackDense, {}),
        ("switchback outliers", functools.partial(fl.SwitchBackDense, threshold=2.5),
         {"threshold": 2.5}),
        ("switchback_global", fl.SwitchBackGlobalDense, {}),
        ("switchback_vectorwise", fl.SwitchBackVectorwiseDense, {}),
        ("switchback_global_mem_efficient", fl.SwitchBackGlobalMemEfficientDense, {}),
    ]

    def train(layer, params, x, y, part=None, steps=2):
        \"\"\"`steps` sgd steps of one layer: (params, losses, first forward output).\"\"\"
        def step(p, opt, x, y):
            def loss(p):
                if part is None:
                    out = layer.apply(p, x)
                else:
                    with sharding.partition(part[0], "data", part[1], **part[2]):
                        out = layer.apply(p, x)
                return jnp.mean((out - y) ** 2), out
            (l, out), g = jax.value_and_grad(loss, has_aux=True)(p)
            upd, opt = tx.update(g, opt, p)
            return optax.apply_updates(p, upd), opt, l, out
        step = jax.jit(step)
        opt = tx.init(params)
        losses, first = [], None
        for _ in range(steps):
            params, opt, l, out = step(params, opt, x, y)
            losses.append(float(l))
            first = out if first is None else first
        return params, losses, np.asarray(first)

    def spec_of(a):
        spec = tuple(a.sharding.spec)
        return spec + (None,) * (a.ndim - len(spec))

    def same(got, want, what, exact_forward):
        np.testing.assert_allclose(got[1], want[1], rtol=1e-5, err_msg=what)
        for u, v in zip(jax.tree.leaves(got[0]), jax.tree.leaves(want[0])):
            np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-4, atol=2e-5,
                                       err_msg=what)
        if exact_forward:  # the shards' products are the single device's, bit for bit
            assert np.array_equal(got[2], want[2]), what

    ran, refused = 0, set()
    for impl in ("xla", "pallas"):
        for name, cls, opts in CASES:
            kind = name.split()[0]
            layer = cls(32, implementation=impl)
            p0 = layer.init(jax.random.key(0), x)
            want = train(layer, p0, x, y)
            spec = QuantSpec(kind, implementation=impl, **opts)
            for lname, (mesh, m) in LAYOUTS.items():
                ps = jax.device_put(p0, sharding.dense_param_shardings(p0, mesh, m, "data"))
                assert spec_of(ps["params"]["kernel"]) == ("data", m)
                xs = jax.device_put(x, sharding.batch_sharding(mesh))
                for g8 in (False, True):
                    what = f"{name} {lname} {impl} {'8-bit' if g8 else '16-bit'} gather"
                    part = sharding.Partition(mesh, "data", m, "data", g8)
                    reason = split_reason(spec, part, x, p0["params"]["kernel"])
                    try:
                        got = train(layer, ps, xs, y, (mesh, m, dict(fsdp_axis="data",
                                                                     gather_8bit=g8)))
                    except NotImplementedError as e:
                        assert str(e) == reason, (what, e)
                        print("ok refused", what, "(8-bit)" if "gather_8bit" in reason else "")
                        if impl == "xla":
                            refused.add((name, lname, g8))
                        continue
                    assert reason is None, (what, reason)
                    # The weights stay sharded: FSDP keeps only a shard between steps.
                    assert spec_of(got[0]["params"]["kernel"]) == ("data", m), what
                    same(got, want, what, exact_forward=m is None)
                    ran += 1
                    print("ok", what)
    # Refused: only the 8-bit gather of the two kinds it does not serve.
    no_8bit = ("switchback outliers", "switchback_vectorwise")
    assert refused == {(n, l, True) for n in no_8bit for l in LAYOUTS}, refused
    assert ran == 2 * (len(CASES) * len(LAYOUTS) * 2 - len(refused)), ran

    # 16-bit, `partition` without fsdp_axis on FSDP-sharded params: the kernel enters the
    # shard_map whole, GSPMD gathering it (and reducing its gradient) at the boundary.
    layer = fl.Fp8GlobalDense(32, implementation="xla")
    p0 = layer.init(jax.random.key(0), x)
    ps = jax.device_put(p0, sharding.dense_param_shardings(p0, both, "model", "data"))
    got = train(layer, ps, jax.device_put(x, sharding.batch_sharding(both)), y,
                (both, "model", {}))
    same(got, train(layer, p0, x, y), "fp8_global FSDP-sharded params, GSPMD gather", False)
    print("ok GSPMD-gathered kernel")

    # SwitchBack int8 inference weights: CB [out, in] split (model, fsdp), gathered in int8.
    for kind in ("switchback", "switchback_global"):
        layer = fl.LAYERS[kind](32, implementation="pallas")
        p = int8_inference_params(layer.init(jax.random.key(0), x), kind=kind)[0]
        shard = sharding.dense_param_shardings(p, both, "model", "data")
        assert shard["params"]["CB"].spec == P("model", "data"), shard
        f = jax.value_and_grad(lambda p, x: jnp.sum(layer.apply(p, x) ** 2), argnums=(0, 1),
                               allow_int=True)
        want = f(p, x)
        for g8 in (False, True):
            def g(p, x):
                with sharding.partition(both, "data", "model", fsdp_axis="data", gather_8bit=g8):
                    return f(p, x)
            got = jax.jit(g)(jax.device_put(p, shard), x)
            for u, v in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
                if jnp.issubdtype(v.dtype, jnp.floating):
                    np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-4,
                                               atol=2e-5, err_msg=f"{kind} int8 {g8}")
        print("ok int8 inference weights", kind)

    # The HLO: the weight's all-gather moves 1-byte elements with gather_8bit, the float
    # kernel without (bf16 layers; XLA's CPU pipeline may gather the float32 parameter
    # and cast after the gather).
    GATHER = re.compile(r"=\\s*(\\w+)\\[[\\d,]*\\][^=]*?\\sall-gather(?:-start)?\\(")
    xb = x.astype(jnp.bfloat16)
    for name, cls, _ in CASES:
        if name in ("switchback outliers", "switchback_vectorwise", "fp8_mixed native"):
            continue
        layer = cls(32, dtype=jnp.bfloat16, implementation="xla")
        p0 = layer.init(jax.random.key(0), xb)
        shard = sharding.dense_param_shardings(p0, fsdp, None, "data")
        seen = {}
        for g8, want_types in ((True, {"s8", "u8", "f8e4m3fn"}), (False, {"bf16", "f32"})):
            def loss(p, x):
                with sharding.partition(fsdp, "data", fsdp_axis="data", gather_8bit=g8):
                    return jnp.sum(layer.apply(p, x).astype(jnp.float32) ** 2)
            f = jax.jit(jax.grad(loss), in_shardings=(shard, sharding.batch_sharding(fsdp)))
            hlo = f.lower(p0, xb).compile().as_text()
            types = set(GATHER.findall(hlo))
            assert types and types <= want_types, (name, g8, types)
            seen["8-bit" if g8 else "16-bit"] = sorted(types)
            assert "reduce-scatter" in hlo, (name, g8)  # the gradient back to the shard
        print("ok HLO all-gather", name, seen)

    # FSDP + partition compose for a linen params tree and an nnx model (dense_param_shardings
    # / nnx_param_shardings with fsdp_axis), 3-D activations.
    x3 = x.reshape(4, 2, 64)
    y3 = jnp.asarray(rng.standard_normal((4, 2, 64)), jnp.float32)
    class MLP(nn.Module):
        dense: type
        @nn.compact
        def __call__(self, x):
            return self.dense(64)(nn.relu(self.dense(128)(x)))
    for kind in ("fp8_global", "switchback"):
        model = MLP(functools.partial(fl.LAYERS[kind], implementation="pallas"))
        p0 = model.init(jax.random.key(1), x3)
        ps = jax.device_put(p0, sharding.dense_param_shardings(p0, both, "model", "data"))
        got = train(model, ps, jax.device_put(x3, sharding.batch_sharding(both)), y3,
                    (both, "model", dict(fsdp_axis="data", gather_8bit=True)))
        same(got, train(model, p0, x3, y3), f"linen MLP {kind} FSDP x model 8-bit", False)
        print("ok linen MLP", kind)
    from flax import nnx
    from fp8mm.nn import nnx as fnnx
    for kind in ("switchback_global", "fp8_global"):
        r = nnx.Rngs(0)
        m = nnx.Sequential(nnx.Linear(64, 128, rngs=r), nnx.Linear(128, 64, rngs=r))
        fnnx.quantize_model(m, kind, implementation="pallas")
        loss = lambda m, x: jnp.sum(m(x) ** 2)
        want = nnx.grad(loss)(m, x)
        sh = sharding.nnx_param_shardings(m, both, "model", "data")
        nnx.update(m, jax.device_put(nnx.state(m, nnx.Param), sh))
        assert tuple(m.layers[0].kernel[...].sharding.spec) == ("data", "model")
        def grad(m, x):
            with sharding.partition(both, "data", "model", fsdp_axis="data", gather_8bit=True):
                return nnx.grad(loss)(m, x)
        got = nnx.jit(grad)(m, jax.device_put(x, sharding.batch_sharding(both)))
        for u, v in zip(jax.tree.leaves(nnx.state(got)), jax.tree.leaves(nnx.state(want))):
            np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-4, atol=2e-5,
                                       err_msg=f"nnx {kind} FSDP x model 8-bit")
        print("ok nnx", kind)
    print("ALL OK")
    """
)


def test_fsdp_steps_equal_single_device():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    # A caller's flags (tools/run_tests.sh's optimization level) are kept.
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", WORKER], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0 and "ALL OK" in proc.stdout, proc.stdout + proc.stderr[-4000:]


def _mesh():
    return Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(fsdp_axis="data", gather_8bit="yes"), TypeError, "gather_8bit must be a bool"),
        (dict(fsdp_axis="data", gather_8bit=1), TypeError, "gather_8bit must be a bool"),
        (dict(gather_8bit=True), ValueError, "gather_8bit=True needs fsdp_axis"),
        (dict(fsdp_axis="model"), ValueError, "fsdp_axis must be the batch axis"),
        (dict(fsdp_axis="nope"), ValueError, "fsdp_axis must be one of the mesh axes"),
        (dict(fsdp_axis=0), TypeError, "fsdp_axis must be a mesh axis name"),
    ],
)
def test_partition_fsdp_bad_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        with sharding.partition(_mesh(), "data", **kwargs):
            pass


def test_partition_fsdp_options_kept():
    with sharding.partition(_mesh(), "data", "model", fsdp_axis="data", gather_8bit=True) as p:
        assert sharding.current_partition() is p
        assert (p.fsdp_axis, p.gather_8bit, p.fsdp) == ("data", True, None)  # size 1: no split
    assert sharding.current_partition() is None


ONE_DEVICE_CASES = [
    ("fp8_mixed", {}),
    ("fp8_global", {}),
    ("fp8_global", {"gemm": "native"}),
    ("switchback", {}),
    ("switchback_global", {}),
    ("switchback_global_mem_efficient", {}),
]


@pytest.mark.parametrize("kind, opts", ONE_DEVICE_CASES)
def test_gathered_product_equals_the_op_on_one_device(kind, opts):
    # The 8-bit gather's custom VJPs under a shard_map over one device (the gather and the
    # reduce-scatter are identities there) against the op: forward and every gradient bit
    # for bit. The default implementation: the XLA path here, the compiled Pallas kernels
    # on a GPU (FILES=test_nn_fsdp tools/gpu_check.sh).
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((128, 256)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((256, 128)) * 0.05, jnp.bfloat16)
    b = jnp.asarray(rng.standard_normal(128), jnp.bfloat16)
    spec = QuantSpec(kind, **opts)
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    gather = Gather("data", ("data",), None, jnp.dtype(w.dtype))

    def gathered(x, w, b):
        f = functools.partial(gathered_product, spec, gather)
        return sharding.shard_map(
            f,
            mesh=mesh,
            in_specs=(P("data"), P("data"), P()),
            out_specs=P("data"),
            check_vma=False,
        )(x, w, b)

    def local(x, w, b):
        return quantized_dense(spec, x, w, b)[0]

    def loss(f):
        return jax.jit(
            jax.value_and_grad(
                lambda *a: jnp.sum(f(*a).astype(jnp.float32) ** 2), argnums=(0, 1, 2)
            )
        )

    want = loss(local)(x, w, b)
    got = loss(gathered)(x, w, b)
    for u, v in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(u, np.float32), np.asarray(v, np.float32))
