"""Conversion that reaches attention: DenseGeneral / LinearGeneral / Einsum, and the report.

Flax's own transformer pieces (nn.MultiHeadDotProductAttention, nnx.MultiHeadAttention)
converted by `quantize_dense` / `quantize_model`: every projection runs quantized, each
equals the fp8mm Dense layer on the reshaped 2-D problem bit for bit, batched products
are refused, and the report says what was converted and skipped. Tiny dims, XLA only.
"""

import doctest
import importlib
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import fp8mm.nn as fnn
from fp8mm.nn import _general
from fp8mm.nn import linen as L
from fp8mm.nn import nnx as N
from tests.helpers import rand, rel
from tests.nn_cases import QUANT_TOL

KINDS = ("fp8_mixed", "switchback", "switchback_global")
XLA = {"implementation": "xla"}
# Gradients through a whole block: the e5m2 output-gradient code of fp8_mixed is coarse.
GRAD_TOL = {kind: 2.5 * QUANT_TOL[kind] for kind in KINDS}
B, T, E, H, D = 2, 8, 16, 2, 8  # batch, length, embedding, heads, head dim
LINEN_PROJ = {
    "attn/query": "DenseGeneral",
    "attn/key": "DenseGeneral",
    "attn/value": "DenseGeneral",
    "attn/out": "DenseGeneral",
    "up": "Dense",
    "down": "Dense",
}
NNX_PROJ = {k: v.replace("DenseGeneral", "LinearGeneral") for k, v in LINEN_PROJ.items()}
NNX_PROJ.update(up="Linear", down="Linear")


def _bits_equal(got, want):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def _records(records):
    return {r.path: r.type for r in records}


# --- linen ------------------------------------------------------------------------------------


class Block(nn.Module):
    """A pre-LN transformer block of flax's own attention and Dense MLP.

    gelu, not relu: a relu unit that the quantization error flips at one position moves
    the input gradient by far more than that error, which no tolerance could tell apart.
    """

    @nn.compact
    def __call__(self, x):
        h = nn.LayerNorm()(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=H, qkv_features=H * D, name="attn")(h)
        h = nn.gelu(nn.Dense(2 * E, name="up")(nn.LayerNorm()(x)))
        return x + nn.Dense(E, name="down")(h)


X = rand((B, T, E), seed=1)
PARAMS = Block().init(jax.random.key(0), X)


def _loss(apply, params, x):
    return jnp.sum(jnp.sin(apply(params, x)))


def _linen_run(params, x, kind=None):
    """The block's y, (param grads, input grads), QuantizeReport and DenseGeneral calls.

    Jitted; the calls are [(path, inputs, output)] of every DenseGeneral in the forward,
    recorded by an interceptor around quantize_dense's (so the output is the quantized one).
    """
    reports, calls = [], []

    def record(next_fun, args, kwargs, context):
        y = next_fun(*args, **kwargs)
        if isinstance(context.module, nn.DenseGeneral) and context.method_name == "__call__":
            calls.append(("/".join(context.module.path), args[0], y))
        return y

    def f(p, x):
        if kind is None:
            return Block().apply(p, x), jax.grad(_loss, (1, 2))(Block().apply, p, x), []
        # Entered inside the jitted function: it acts on this trace. The outer interceptor
        # (record) sees each call first and the quantized output that quantize_dense returns.
        with nn.intercept_methods(record), L.quantize_dense(kind, report=True, **XLA) as report:
            reports.append(report)
            y = Block().apply(p, x)
        with L.quantize_dense(kind, **XLA):
            grads = jax.grad(_loss, (1, 2))(Block().apply, p, x)
        return y, grads, [c[1:] for c in calls]

    y, grads, seen = jax.jit(f)(params, x)
    paths = [c[0] for c in calls]
    return y, grads, (reports[0] if reports else None), list(zip(paths, seen, strict=True))


def _dense_on_reshaped(kind, kernel, bias, x2, grads=True):
    """An fp8mm Dense layer on x2 [rows, K] with kernel [K, N], bias [N]: y (and grads)."""
    layer = L.LAYERS[kind](kernel.shape[1], **XLA)
    p = {"params": {"kernel": kernel, "bias": bias}}
    if not grads:
        return jax.jit(layer.apply)(p, x2)
    return jax.jit(lambda p, x: (layer.apply(p, x), jax.grad(_loss, (1, 2))(layer.apply, p, x)))(
        p, x2
    )


_PLAIN = {}


@pytest.mark.parametrize("kind", KINDS)
def test_linen_block_every_projection_converted(kind):
    if not _PLAIN:
        _PLAIN["linen"] = _linen_run(PARAMS, X)
    y0, (g0, gx0), _, _ = _PLAIN["linen"]
    y, (g, gx), report, calls = _linen_run(PARAMS, X, kind)
    assert isinstance(report, fnn.QuantizeReport) and report.spec == fnn.QuantSpec(kind, **XLA)
    assert _records(report.converted) == LINEN_PROJ and not report.skipped
    assert not np.array_equal(y, y0) and rel(y, y0) < 5e-2
    assert not np.array_equal(gx, gx0) and rel(gx, gx0) < GRAD_TOL[kind]
    assert jax.tree.structure(g) == jax.tree.structure(g0)
    for path in LINEN_PROJ:
        a, b = path.split("/") if "/" in path else (path, None)
        got = g["params"][a] if b is None else g["params"][a][b]
        want = g0["params"][a] if b is None else g0["params"][a][b]
        assert not np.array_equal(got["kernel"], want["kernel"]), path
        assert rel(got["kernel"], want["kernel"]) < GRAD_TOL[kind], path
    # Each DenseGeneral of the block is the fp8mm Dense layer on the 2-D problem, bit for bit.
    assert [c[0] for c in calls] == ["attn/query", "attn/key", "attn/value", "attn/out"]
    for path, (x, y) in calls:
        p = PARAMS["params"]["attn"][path.split("/")[1]]
        if path.endswith("out"):  # contracts (heads, head_dim): [B, T, H, D] -> [B*T, H*D]
            x2, n = x.reshape(B * T, H * D), E
        else:  # [B, T, E] -> (heads, head_dim)
            x2, n = x.reshape(B * T, E), H * D
        k2, b2 = p["kernel"].reshape(-1, n), p["bias"].reshape(n)
        want = _dense_on_reshaped(kind, k2, b2, x2, grads=False)
        _bits_equal(y.reshape(B * T, n), want)


# q/k/v and output projections for each kind; the transposed layout (a middle axis) once.
_DG_CASES = [
    pytest.param(kind, shape, features, axis, id=f"{name}-{kind}")
    for name, shape, features, axis in (
        ("qkv", (B, T, E), (H, D), -1),
        ("out", (B, T, H, D), E, (-2, -1)),
    )
    for kind in KINDS
] + [pytest.param("switchback", (B, E, T), (H, D), 1, id="middle-axis-switchback")]


@pytest.mark.parametrize(("kind", "x_shape", "features", "axis"), _DG_CASES)
def test_dense_general_forward_and_grads_bitwise(kind, x_shape, features, axis):
    x = rand(x_shape, seed=3)
    dg = nn.DenseGeneral(features, axis=axis, bias_init=nn.initializers.normal(0.1))
    params = dg.init(jax.random.key(2), x)

    def run(p, x):
        with L.quantize_dense(kind, **XLA):
            return dg.apply(p, x), jax.grad(_loss, (1, 2))(dg.apply, p, x)

    y, (g, gx) = jax.jit(run)(params, x)
    axes = sorted(a % x.ndim for a in np.atleast_1d(axis))
    free = [a for a in range(x.ndim) if a not in axes]
    xt = jnp.transpose(x, free + axes)
    k = math.prod(xt.shape[len(free) :])
    n = math.prod(np.atleast_1d(features))
    x2 = xt.reshape(-1, k)
    w, b = params["params"]["kernel"], params["params"]["bias"]
    want_y, (want_g, want_gx) = _dense_on_reshaped(kind, w.reshape(k, n), b.reshape(n), x2)
    _bits_equal(y, want_y.reshape(y.shape))
    _bits_equal(g["params"]["kernel"], want_g["params"]["kernel"].reshape(w.shape))
    _bits_equal(g["params"]["bias"], want_g["params"]["bias"].reshape(b.shape))
    inv = np.argsort(free + axes)
    _bits_equal(gx, jnp.transpose(want_gx.reshape(xt.shape), inv))
    # The parameters are flax's own: same names, shapes and (same rng) values.
    _bits_equal(params, dg.init(jax.random.key(2), x))


def test_linen_einsum_converted_or_skipped():
    x = rand((B, T, E), seed=4)
    ok = nn.Einsum((E, H, D), "btd,dhk->bhtk", bias_init=nn.initializers.normal(0.1))
    moe = nn.Einsum((B, E, D), "btd,bdf->btf", name="moe")  # b in x, kernel and output
    params = ok.init(jax.random.key(0), x)
    with L.quantize_dense("switchback", report=True, **XLA) as report:
        y = jax.jit(ok.apply)(params, x)
    assert _records(report.converted) == {"": "Einsum"}
    # The Dense product of [B*T, E] @ [E, H*D], then (b, t, h, k) -> (b, h, t, k).
    want, _ = _dense_on_reshaped(
        "switchback",
        params["params"]["kernel"].reshape(E, H * D),
        params["params"]["bias"].reshape(H * D),
        x.reshape(B * T, E),
    )
    _bits_equal(y, want.reshape(B, T, H, D).transpose(0, 2, 1, 3))
    mp = moe.init(jax.random.key(0), x)
    plain = moe.apply(mp, x)
    with L.quantize_dense("switchback", report=True, **XLA) as report:
        got = moe.apply(mp, x)
    np.testing.assert_array_equal(got, plain)  # flax's own einsum ran
    (rec,) = report.skipped
    assert rec.type == "Einsum" and "'b' is in x, the kernel and the output" in rec.reason


def test_linen_batch_dims_refused_and_filter():
    x = rand((B, T, E))

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            y = nn.DenseGeneral(4, batch_dims=(0,), name="per_batch")(x)
            return nn.Dense(4, name="head")(y)

    with pytest.raises(
        NotImplementedError, match=r"'per_batch' \(nn.DenseGeneral\) has batch_dims"
    ):
        with L.quantize_dense("fp8_mixed", **XLA):
            Net().init(jax.random.key(0), x)
    keep = lambda m: m.name != "per_batch"
    with L.quantize_dense("fp8_mixed", filter=keep, report=True, **XLA) as report:
        jax.eval_shape(Net().init, jax.random.key(0), x)
    assert _records(report.converted) == {"head": "Dense"}
    assert report.skipped == (
        fnn.ModuleRecord("per_batch", "DenseGeneral", "filter returned False"),
    )


def test_linen_report_default_spec_and_fp8mm_layers():
    x = rand((B, E))

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(4, (1,), name="conv")(x[..., None])[..., 0]
            return L.SwitchBackDense(4, name="sb")(nn.Dense(E, name="d")(x))

    with L.quantize_dense("fp8_mixed", **XLA) as spec:  # backward compatible: the spec
        params = Net().init(jax.random.key(0), x)
    assert spec == fnn.QuantSpec("fp8_mixed", **XLA)
    with L.quantize_dense("fp8_mixed", report=True, **XLA) as report:
        Net().apply(params, x)
        Net().apply(params, x)  # a module traced twice is one entry
    assert report.converted == (fnn.ModuleRecord("d", "Dense"),)
    assert report.already_quantized == (fnn.ModuleRecord("sb", "SwitchBackDense", "switchback"),)
    assert report.skipped == (fnn.ModuleRecord("conv", "Conv", report.skipped[0].reason),)
    assert "convolution" in report.skipped[0].reason
    text = str(report)
    assert "1 converted, 1 already quantized, 1 skipped" in text and "d (Dense)" in text


def test_linen_dense_general_int8_and_outliers():
    x = rand((B, T, H, D), seed=5).at[..., 0, 3].set(9.0)
    out = nn.DenseGeneral(E, axis=(-2, -1))
    with L.quantize_dense("switchback", threshold=6.0, **XLA):
        params = out.init(jax.random.key(0), x)
        _, inter = jax.jit(lambda p, x: out.apply(p, x, mutable=["intermediates"]))(params, x)
    cols = inter["intermediates"]["outlier_cols"][0]
    assert cols.shape == (H, D) and np.flatnonzero(cols).tolist() == [3]
    # With int8 inference weights the same columns are found and sown.
    with L.quantize_dense("switchback", threshold=6.0, **XLA):
        int8, report = L.int8_inference_params(params, out, x)
        _, inter8 = jax.jit(lambda p, x: out.apply(p, x, mutable=["intermediates"]))(int8, x)
    assert report.layers == ("params",) and int8["params"]["CB"].shape == (E, H, D)
    _bits_equal(inter8["intermediates"]["outlier_cols"][0], cols)


# --- nnx --------------------------------------------------------------------------------------


class NBlock(nnx.Module):
    def __init__(self, rngs):
        self.ln1, self.ln2 = nnx.LayerNorm(E, rngs=rngs), nnx.LayerNorm(E, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            num_heads=H, in_features=E, qkv_features=H * D, decode=False, rngs=rngs
        )
        self.up, self.down = nnx.Linear(E, 2 * E, rngs=rngs), nnx.Linear(2 * E, E, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.down(nnx.gelu(self.up(self.ln2(x))))


@nnx.jit
def _nnx_run(model, x):
    y = model(x)
    g = nnx.grad(lambda m, x: jnp.sum(jnp.sin(m(x))), argnums=(0, 1))(model, x)
    return y, g


@pytest.mark.parametrize("kind", KINDS)
def test_nnx_block_every_projection_converted(kind):
    model = NBlock(nnx.Rngs(0))
    y0, (g0, gx0) = _nnx_run(model, X)
    kernels = {p: m.kernel for p, m in nnx.iter_modules(model) if hasattr(m, "kernel")}
    got, report = fnn.quantize_model(model, kind, report=True, **XLA)
    assert got is model and report.spec == fnn.QuantSpec(kind, **XLA)
    assert _records(report.converted) == NNX_PROJ and not report.skipped
    assert isinstance(model.attn.query, N.QuantizedLinearGeneral)
    assert isinstance(model.up, N.LAYERS[kind])
    assert model.attn.out.kernel is kernels[("attn", "out")]  # the very Variables
    y, (g, gx) = _nnx_run(model, X)
    assert not np.array_equal(y, y0) and rel(y, y0) < 5e-2
    assert not np.array_equal(gx, gx0) and rel(gx, gx0) < GRAD_TOL[kind]
    s, s0 = nnx.state(g, nnx.Param), nnx.state(g0, nnx.Param)
    assert jax.tree.structure(s) == jax.tree.structure(s0)
    for name in ("query", "key", "value", "out"):
        a, b = s["attn"][name]["kernel"][...], s0["attn"][name]["kernel"][...]
        assert not np.array_equal(a, b) and rel(a, b) < GRAD_TOL[kind], name
    # Each converted LinearGeneral is the fp8mm Linear layer on the reshaped problem.
    heads = rand((B, T, H, D), seed=6)
    for name, x, k, n in (
        ("query", X, E, H * D),
        ("key", X, E, H * D),
        ("value", X, E, H * D),
        ("out", heads, H * D, E),
    ):
        lg = getattr(model.attn, name)
        lin = N.LAYERS[kind](
            k,
            n,
            kernel_init=lambda *_, lg=lg: lg.kernel[...].reshape(k, n),
            bias_init=lambda *_, lg=lg: lg.bias[...].reshape(n),
            rngs=nnx.Rngs(0),
            **XLA,
        )
        want = nnx.jit(lambda m, x: m(x))(lin, x.reshape(B * T, k))
        _bits_equal(nnx.jit(lambda m, x: m(x))(lg, x), want.reshape(B, T, *lg.out_features))
    # Converting again: the layers are already quantized with these options.
    _, again = fnn.quantize_model(model, kind, report=True, **XLA)
    assert not again.converted and set(_records(again.already_quantized)) == set(NNX_PROJ)


def test_nnx_batch_axis_refused_einsum_and_filter():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.per_batch = nnx.LinearGeneral(E, 4, batch_axis={0: B}, rngs=rngs)
            self.proj = nnx.Einsum("btd,dhk->bthk", (E, H, D), (H, D), rngs=rngs)
            self.moe = nnx.Einsum("btd,bdf->btf", (B, E, D), rngs=rngs)
            self.conv = nnx.Conv(E, E, (1,), rngs=rngs)

    model = Net(nnx.Rngs(0))
    with pytest.raises(
        NotImplementedError, match=r"'per_batch' \(nnx.LinearGeneral\) has batch_axis"
    ):
        fnn.quantize_model(model, "fp8_mixed", **XLA)
    assert type(model.proj) is nnx.Einsum  # nothing swapped
    keep = lambda path, m: path != ("per_batch",)
    assert fnn.quantize_model(model, "fp8_mixed", filter=keep, **XLA) is model  # no report
    assert isinstance(model.proj, N.QuantizedEinsum) and type(model.moe) is nnx.Einsum
    _, report = fnn.quantize_model(model, "fp8_mixed", filter=keep, report=True, **XLA)
    assert _records(report.already_quantized) == {"proj": "QuantizedEinsum"}
    reasons = {r.path: (r.type, r.reason) for r in report.skipped}
    assert reasons["per_batch"] == ("LinearGeneral", "filter returned False")
    assert reasons["moe"][0] == "Einsum" and "'b' is in x, the kernel" in reasons["moe"][1]
    assert reasons["conv"][0] == "Conv" and "convolution" in reasons["conv"][1]
    x = rand((B, T, E), seed=7)
    y = nnx.jit(lambda m, x: m(x))(model.proj, x)
    k = model.proj.kernel[...].reshape(E, H * D)
    lin = N.LAYERS["fp8_mixed"](
        E,
        H * D,
        kernel_init=lambda *_: k,
        bias_init=lambda *_: model.proj.bias[...].reshape(-1),
        rngs=nnx.Rngs(0),
        **XLA,
    )
    want = nnx.jit(lambda m, x: m(x))(lin, x.reshape(B * T, E))
    _bits_equal(y, want.reshape(B, T, H, D))
    with pytest.raises(NotImplementedError, match="not a dense product"):
        model.proj(x, "btd,bhk->bthk")


def test_contraction_plans():
    c = _general.einsum_contraction("...d,df->...f", 3, 2)
    assert c == _general.Contraction((0, 1, 2), (0, 1), None, 1)
    c = _general.einsum_contraction("nta,hab->nthb", 3, 3)
    assert c.x_perm == (0, 1, 2) and c.kernel_perm == (1, 0, 2) and c.out_perm is None
    for eq, x_ndim, k_ndim, why in (
        ("btd,bdf->btf", 3, 3, "batched product"),
        ("bd,de->b", 2, 2, "summed over one operand"),
        ("bd,ef->bdef", 2, 2, "outer product"),
        ("bdd,de->be", 3, 2, "repeats"),
        ("bd,...e->be", 2, 2, "ellipsis in the kernel"),
        ("bd,de->be", 3, 2, "names 2 and 2 axes"),
    ):
        assert why in _general.einsum_contraction(eq, x_ndim, k_ndim), eq
    assert "distinct axes" in _general.dense_general_contraction(2, (1, -1), 1)


# --- int8 inference weights of the converted projections ----------------------------------------

INT8_KINDS = ("switchback", "switchback_global", "switchback_vectorwise")


def _int8_dense(kind, kernel2, bias2, x2):
    """The SwitchBack Dense layer with int8 weights of kernel2 [K, N] on x2 [rows, K]."""
    layer = L.LAYERS[kind](kernel2.shape[1], **XLA)
    p, _ = L.int8_inference_params({"params": {"kernel": kernel2, "bias": bias2}}, kind=kind)
    return jax.jit(layer.apply)(p, x2)


@pytest.mark.parametrize("kind", INT8_KINDS)
def test_linen_block_int8_projections_equal_the_2d_dense_path(kind):
    calls = []

    def record(next_fun, args, kwargs, context):
        y = next_fun(*args, **kwargs)
        if isinstance(context.module, nn.DenseGeneral) and context.method_name == "__call__":
            calls.append(("/".join(context.module.path), args[0], y))
        return y

    with L.quantize_dense(kind, **XLA):
        int8, report = L.int8_inference_params(PARAMS, Block(), X, kind=kind)
        y_float = jax.jit(Block().apply)(PARAMS, X)
    assert set(report.layers) == {f"params/{p}" for p in LINEN_PROJ} and not report.skipped
    attn = int8["params"]["attn"]
    assert attn["query"]["CB"].shape == (H, D, E) and attn["query"]["SCB"].shape == (H, D)
    assert attn["out"]["CB"].shape == (E, H, D) and attn["out"]["SCB"].shape == (E,)
    assert "kernel" not in attn["out"] and attn["out"]["CB"].dtype == jnp.int8

    def f(p, x):
        with nn.intercept_methods(record), L.quantize_dense(kind, **XLA):
            return Block().apply(p, x), [c[1:] for c in calls]

    y, seen = jax.jit(f)(int8, X)
    # Threshold 0: the weight is quantized as on every training call, so nothing changes.
    _bits_equal(y, y_float)
    for path, (x, y) in zip([c[0] for c in calls], seen, strict=True):
        p = PARAMS["params"]["attn"][path.split("/")[1]]
        k = H * D if path.endswith("out") else E
        n = p["kernel"].size // k
        want = _int8_dense(kind, p["kernel"].reshape(k, n), p["bias"].reshape(n), x.reshape(-1, k))
        _bits_equal(y.reshape(-1, n), want)


def test_linen_int8_einsum_layouts_and_what_cannot_map():
    x = rand((B, T, E), seed=8)
    # The kernel contracted on its last axis: CB is [h, k, d], the Linear layout.
    proj = nn.Einsum((H, D, E), "btd,hkd->bthk", bias_init=nn.initializers.normal(0.1))
    p = proj.init(jax.random.key(0), x)
    with L.quantize_dense("switchback", **XLA):
        int8, report = L.int8_inference_params(p, proj, x)
        y = jax.jit(proj.apply)(int8, x)
        with pytest.raises(ValueError, match=r"CB \(4, 2, 8\), SCB \(2, 8\) do not fit"):
            proj.apply({"params": {**int8["params"], "CB": jnp.zeros((4, 2, 8), jnp.int8)}}, x)
    assert report.layers == ("params",) and int8["params"]["CB"].shape == (H, D, E)
    k2 = p["params"]["kernel"].reshape(H * D, E).T
    want = _int8_dense("switchback", k2, p["params"]["bias"].reshape(-1), x.reshape(-1, E))
    _bits_equal(y, want.reshape(B, T, H, D))
    with L.quantize_dense("fp8_mixed", **XLA):
        with pytest.raises(ValueError, match=r"int8 weights \(CB/SCB .* runs as 'fp8_mixed'"):
            proj.apply(int8, x)
    # Without the model, which axes an N-d kernel contracts is unknown: it stays float.
    with pytest.warns(UserWarning, match=r"1 N-d kernel\(s\) stayed float .* Pass the model"):
        kept, report = L.int8_inference_params(p)
    assert kept == p and report.layers == ()
    ((path, why),) = report.skipped
    assert path == "params" and "3-d kernel" in why and "pass the model" in why

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            y = nn.DenseGeneral(4, batch_dims=(0,), name="per_batch")(x)
            z = nn.Einsum((B, 4), "bd,bf->bf", name="scale")(y[:, 0])  # d summed over x only
            return nn.Dense(4, name="head")(y) + z[:, None]

    params = Net().init(jax.random.key(0), x)
    keep = lambda m: m.name != "per_batch"
    with L.quantize_dense("switchback", filter=keep, **XLA):
        with pytest.raises(ValueError, match=r"\['params/scale'\] do not run as SwitchBack"):
            L.int8_inference_params(params, Net(), x)
        int8, report = L.int8_inference_params(
            params, Net(), x, filter=lambda path: path != "params/scale"
        )
        assert Net().apply(int8, x).shape == (B, T, 4)
    assert report.layers == ("params/head",)
    assert report.skipped == (
        ("params/per_batch", "it does not run as a SwitchBack layer of kind 'switchback'"),
    )
    assert "kept float params/per_batch" in str(report)


@pytest.mark.parametrize("kind", INT8_KINDS)
def test_nnx_block_int8_projections_equal_the_2d_linear_path(kind):
    model = fnn.quantize_model(NBlock(nnx.Rngs(0)), kind, **XLA)
    floats = {name: getattr(model.attn, name).kernel[...] for name in ("query", "out")}
    y_float = nnx.jit(lambda m, x: m(x))(model, X)
    report = fnn.to_int8_inference(model)
    assert set(report.layers) == set(NNX_PROJ) and not report.skipped
    assert report.bytes_after < report.bytes_before
    q, out = model.attn.query, model.attn.out
    assert isinstance(q.CB, N.Int8Weight) and q.CB.shape == (H, D, E) and q.SCB.shape == (H, D)
    assert out.CB.shape == (E, H, D) and getattr(out, "kernel", None) is None
    assert "CB" in nnx.state(out, N.Int8Weight) and "kernel" not in nnx.state(out, nnx.Param)
    _bits_equal(nnx.jit(lambda m, x: m(x))(model, X), y_float)
    heads = rand((B, T, H, D), seed=9)
    for name, x, k in (("query", X, E), ("out", heads, H * D)):
        lg = getattr(model.attn, name)
        kernel2 = floats[name].reshape(k, -1)
        n = kernel2.shape[1]
        lin = N.LAYERS[kind](
            k,
            n,
            kernel_init=lambda *_, k2=kernel2: k2,
            bias_init=lambda *_, lg=lg: lg.bias[...].reshape(n),
            rngs=nnx.Rngs(0),
            **XLA,
        )
        lin.to_int8()
        want = nnx.jit(lambda m, x: m(x))(lin, x.reshape(B * T, k))
        _bits_equal(nnx.jit(lambda m, x: m(x))(lg, x), want.reshape(B, T, *lg.out_features))
        _bits_equal(lg.CB[...].reshape(n, k), lin.CB[...])


def test_nnx_int8_einsum_and_what_cannot_map():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.proj = nnx.Einsum("btd,hkd->bthk", (H, D, E), (H, D), rngs=rngs)
            self.fp8 = nnx.LinearGeneral(E, (H, D), rngs=rngs)
            self.plain = nnx.Linear(E, E, rngs=rngs)

    model = Net(nnx.Rngs(0))
    fnn.quantize_model(model, "switchback", filter=lambda path, m: path == ("proj",), **XLA)
    fnn.quantize_model(model, "fp8_mixed", filter=lambda path, m: path == ("fp8",), **XLA)
    x = rand((B, T, E), seed=10)
    kernel2 = model.proj.kernel[...].reshape(H * D, E).T
    report = fnn.to_int8_inference(model)
    assert report.layers == ("proj",) and model.proj.CB.shape == (H, D, E)
    assert dict(report.skipped) == {
        "fp8": "kind 'fp8_mixed' has no int8 inference weights",
        "plain": "a float layer: quantize_model(model, kind) with a SwitchBack kind first",
    }
    want = _int8_dense("switchback", kernel2, model.proj.bias[...].reshape(-1), x.reshape(-1, E))
    _bits_equal(nnx.jit(lambda m, x: m(x))(model.proj, x), want.reshape(B, T, H, D))
    with pytest.raises(ValueError, match="its int8 weights were built for"):
        model.proj(x, "btd,hdk->bthk")  # another equation: the kernel's d is elsewhere
    with pytest.raises(ValueError, match="only the SwitchBack kinds"):
        model.fp8.to_int8()


@pytest.mark.parametrize("name", ["fp8mm.nn._int8", "fp8mm.nn._nnx_static"])
def test_docstring_examples_of_the_int8_modules(name):
    # tests/test_doctests.py runs the public modules', whose doctest finder skips what
    # they re-export from these (int8_inference_params, Int8Weight).
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0, result
