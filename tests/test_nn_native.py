"""fp8mm.nn: gemm="native" (FP8 tensor-core products) through every layer API of the fp8 kinds.

Each API (linen layer, nnx layer, dot_general factory, quantize_dense,
quantize_model) carries `gemm` to the op: with the default e4m3/e5m2 codes the
native forward and gradients are within float32 rounding (and fp8's rounding of
code values below 6.1e-5 of absmax, docs/exactness.md) of the emulated ones;
with another code the op raises NotImplementedError when the layer runs, which
only happens if `gemm` reached it. Small shapes on XLA, so the file stays cheap.
"""

import inspect

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import fp8mm
import fp8mm.nn as fnn
from fp8mm.nn import linen as L
from fp8mm.nn import nnx as N
from tests.helpers import rand, rel
from tests.nn_cases import FACTORIES

FP8_KINDS = ("fp8_mixed", "fp8_global")
SWITCHBACK_KINDS = tuple(k for k in fnn.KINDS if k not in FP8_KINDS)
APIS = ("linen", "nnx", "dot_general", "quantize_dense", "quantize_model")
IN, OUT = 64, 128
X = rand((4, IN), seed=3)
COT = rand((4, OUT), seed=4)  # the loss weights: a dense output cotangent
PARAMS = nn.Dense(OUT).init(jax.random.key(0), X)  # linen params shared by the linen APIs
TOL = 2e-2


def _value_and_grads(apply, params):
    """(y, (d loss / d params, d loss / d x), jaxpr text) for loss = sum(apply(params, X) * COT).

    Under jit, as a training step runs: the native path must see its codes at trace time.
    """

    def loss(p, x):
        y = apply(p, x)
        return jnp.sum(y * COT), y

    step = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
    jaxpr = str(jax.make_jaxpr(step)(params, X))
    (_, y), grads = jax.jit(step)(params, X)
    return y, grads, jaxpr


class Model(nnx.Module):
    def __init__(self):
        self.fc = nnx.Linear(IN, OUT, rngs=nnx.Rngs(0))

    def __call__(self, x):
        return self.fc(x)


def _nnx_run(module):
    graphdef, state = nnx.split(module)
    return _value_and_grads(lambda s, x: nnx.merge(graphdef, s)(x), state)


def _run(api, kind, **options):
    """The forward and gradients of one `OUT`-feature Dense through `api`, and its spec."""
    options = {"implementation": "xla", **options}
    if api == "linen":
        layer = L.LAYERS[kind](OUT, **options)
        return layer.spec(), _value_and_grads(layer.apply, PARAMS)
    if api == "dot_general":
        dot_general = FACTORIES[kind](**options)
        return dot_general.spec, _value_and_grads(
            nn.Dense(OUT, dot_general=dot_general).apply, PARAMS
        )
    if api == "quantize_dense":
        specs = []

        def apply(p, x):
            with L.quantize_dense(kind, **options) as spec:
                specs.append(spec)
                return nn.Dense(OUT).apply(p, x)

        out = _value_and_grads(apply, PARAMS)
        return specs[0], out
    if api == "nnx":
        layer = N.LAYERS[kind](IN, OUT, rngs=nnx.Rngs(0), **options)
        return layer.spec(), _nnx_run(layer)
    assert api == "quantize_model"
    model = fnn.quantize_model(Model(), kind, **options)
    assert isinstance(model.fc, N.LAYERS[kind])
    return model.fc.spec(), _nnx_run(model)


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("kind", FP8_KINDS)
def test_native_matches_emulated(kind, api):
    spec_e, (y_e, grads_e, jaxpr_e) = _run(api, kind)
    spec_n, (y_n, grads_n, jaxpr_n) = _run(api, kind, gemm="native")
    assert (spec_e.gemm, spec_n.gemm) == ("emulated", "native")
    # The native products ran (float8 operands), not the op's emulated fallback.
    # native holds every operand (the e5m2 gradient code too) as float8_e4m3fn
    assert "e4m3fn" in jaxpr_n
    assert "e4m3fn" not in jaxpr_e and "e5m2" not in jaxpr_e
    assert y_n.shape == y_e.shape and y_n.dtype == y_e.dtype
    assert rel(y_n, y_e) < TOL
    leaves_e, leaves_n = jax.tree.leaves(grads_e), jax.tree.leaves(grads_n)
    assert jax.tree.structure(grads_e) == jax.tree.structure(grads_n)
    assert len(leaves_e) == 3  # kernel, bias and the input
    for got, want in zip(leaves_n, leaves_e, strict=True):
        assert got.shape == want.shape and got.dtype == want.dtype
        assert rel(got, want) < TOL


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("kind", FP8_KINDS)
def test_native_needs_bnb_codes(kind, api):
    # Raised by the op when the layer runs: proof that gemm reaches it from this API.
    with pytest.raises(NotImplementedError, match="fw_code"):
        _run(api, kind, gemm="native", fw_code=fp8mm.create_dynamic_map())


@pytest.mark.parametrize("kind", FP8_KINDS)
def test_native_needs_bnb_backward_code(kind):
    with pytest.raises(NotImplementedError, match="bw_code"):
        _run("linen", kind, gemm="native", bw_code=np.asarray(fp8mm.create_dynamic_map()))


def _builders(kind, gemm):
    """Every public way to ask for an fp8 kind with `gemm`; each raises at construction."""
    return {
        "QuantSpec": lambda: fnn.QuantSpec(kind, gemm=gemm),
        "linen": lambda: L.LAYERS[kind](OUT, gemm=gemm),
        "nnx": lambda: N.LAYERS[kind](IN, OUT, gemm=gemm, rngs=nnx.Rngs(0)),
        "dot_general": lambda: FACTORIES[kind](gemm=gemm),
        "quantize_dense": lambda: L.quantize_dense(kind, gemm=gemm).__enter__(),
        "quantize_model": lambda: fnn.quantize_model(Model(), kind, gemm=gemm),
    }


@pytest.mark.parametrize("where", _builders("fp8_mixed", "emulated"))
@pytest.mark.parametrize("kind", FP8_KINDS)
def test_bad_gemm_raises_at_construction(kind, where):
    with pytest.raises(ValueError, match=r"gemm must be one of .*'native'.*got 'bogus'"):
        _builders(kind, "bogus")[where]()
    with pytest.raises(TypeError, match=r"gemm must be one of .*got 8 \(int\)"):
        _builders(kind, 8)[where]()


def test_quantize_model_leaves_nothing_half_done_on_a_bad_gemm():
    model = Model()
    with pytest.raises(ValueError, match="gemm"):
        fnn.quantize_model(model, "fp8_mixed", gemm="Native")
    assert type(model.fc) is nnx.Linear


@pytest.mark.parametrize("kind", SWITCHBACK_KINDS)
def test_switchback_kinds_have_no_gemm(kind):
    with pytest.raises(ValueError, match=rf"gemm='native' means nothing for kind '{kind}'"):
        fnn.QuantSpec(kind, gemm="native")
    assert fnn.QuantSpec(kind, gemm="emulated") == fnn.QuantSpec(kind)  # the default
    assert "gemm" not in fnn.OPTIONS[kind]
    fp8 = r"'fp8_global' and 'fp8_mixed' options"
    with pytest.raises(TypeError, match=rf"unexpected argument.*'gemm' \({fp8}\)"):
        L.quantize_dense(kind, gemm="native").__enter__()
    with pytest.raises(TypeError, match=rf"unexpected argument.*'gemm' \({fp8}\)"):
        fnn.quantize_model(Model(), kind, gemm="native")
    with pytest.raises(TypeError, match="gemm"):
        N.LAYERS[kind](IN, OUT, gemm="native", rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="gemm"):
        L.LAYERS[kind](OUT, gemm="native")
    with pytest.raises(TypeError, match="gemm"):
        FACTORIES[kind](gemm="native")


def test_gemm_in_the_options_and_signatures():
    order = ("fw_code", "bw_code", "bsz", "bsz2", "gemm", "implementation")
    for kind in FP8_KINDS:
        assert fnn.OPTIONS[kind] == order
        fields = [f for f in L.LAYERS[kind].__dataclass_fields__ if f in order]
        assert tuple(fields) == order
        assert L.LAYERS[kind](OUT).gemm == "emulated"
        params = inspect.signature(FACTORIES[kind]).parameters
        assert tuple(params) == order
        assert params["gemm"].kind is inspect.Parameter.KEYWORD_ONLY
        assert params["gemm"].default == "emulated"
        nnx_params = inspect.signature(N.LAYERS[kind].__init__).parameters
        assert nnx_params["gemm"].kind is inspect.Parameter.KEYWORD_ONLY
        assert nnx_params["gemm"].default == "emulated"
        assert N.LAYERS[kind](IN, OUT, rngs=nnx.Rngs(0)).gemm == "emulated"
    # Keyword-only in QuantSpec: its positional order (threshold after bsz2) is unchanged.
    assert fnn.QuantSpec("switchback", None, None, -1, -1, 6.0).threshold == 6.0


def test_specs_differ_by_gemm():
    native, emulated = fnn.QuantSpec("fp8_mixed", gemm="native"), fnn.QuantSpec("fp8_mixed")
    assert native != emulated and native == fnn.QuantSpec("fp8_mixed", gemm="native")
    assert hash(native) == hash(fnn.QuantSpec("fp8_mixed", gemm="native"))
    # quantize_model tells layers quantized with the other gemm apart from its own.
    model = fnn.quantize_model(Model(), "fp8_mixed", gemm="native")
    assert fnn.quantize_model(model, "fp8_mixed", gemm="native") is model
    with pytest.raises(ValueError, match="quantized differently"):
        fnn.quantize_model(model, "fp8_mixed")
