"""flax.nnx layers: drop-in `nnx.Linear` replacements running fp8mm's 8-bit matmuls.

* `Fp8MixedLinear`, `Fp8GlobalLinear`, `SwitchBackLinear` and the SwitchBack
  paper's `SwitchBackGlobalLinear`, `SwitchBackVectorwiseLinear`,
  `SwitchBackGlobalMemEfficientLinear`: the constructor,
  attributes and parameters ('kernel' [in, out], 'bias' [out]) of
  `nnx.Linear`, plus the quantization options.
* `QuantizedLinearGeneral(module, kind)` / `QuantizedEinsum(module, kind)`: an
  `nnx.LinearGeneral` / `nnx.Einsum` (a dense product) running any kind, keeping
  the module's parameter Variables.
* `quantize_model(model, kind)`: swaps every `nnx.Linear`, `nnx.LinearGeneral`
  and `nnx.Einsum` of a model (attention's projections too) for the quantized
  layer in place, keeping its parameter Variables; `report=True` also returns a
  `QuantizeReport` of what was converted and skipped.
* `to_int8_inference(model)`: SwitchBack layers switch to int8 weights
  (`Int8Weight` Variables 'CB' [out, in] int8 and 'SCB' [out] float32; for the
  LinearGeneral / Einsum layers CB [*features, *contracted], SCB [*features]).

A custom fp8 code (`fw_code=`/`bw_code=`, float32 [256]) is kept on the layer
as a compile-time constant, like a linen attribute: a `StaticCode` that
`np.asarray` turns back into the array. It is not a Variable, so it is never
trained, and it is not in `nnx.state(model)`.

With `threshold > 0`, SwitchBack layers sow 'outlier_cols' (bool [in]) and
'outlier_count' (int32) as `nnx.Intermediate`: run the model under
`nnx.capture(model, nnx.Intermediate)` to get them (flax < 0.12.6, which has no
capture: they stay on the layer, `nnx.state(model, nnx.Intermediate)`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import flax.linen
import jax
import jax.numpy as jnp
from flax import nnx
from flax.typing import Dtype, Initializer, PrecisionLike

from fp8mm import _checks
from fp8mm.dispatch import Impl
from fp8mm.nn import _core
from fp8mm.nn import _flax_compat as compat
from fp8mm.nn import _nnx_general as _gen
from fp8mm.nn._core import Gemm, QuantSpec
from fp8mm.nn._dense import quantized_dense
from fp8mm.nn._int8 import Int8Report, tree_bytes
from fp8mm.nn._nnx_general import QuantizedEinsum, QuantizedLinearGeneral
from fp8mm.nn._nnx_static import Int8Weight, StaticCode, finish_product
from fp8mm.nn._nnx_static import code_value as _code_value
from fp8mm.nn._nnx_static import static_option as _static
from fp8mm.nn._report import ModuleRecord, QuantizeReport

__all__ = [
    "Fp8GlobalLinear",
    "Fp8MixedLinear",
    "Int8Weight",
    "ModuleRecord",
    "QuantizeReport",
    "QuantizedEinsum",
    "QuantizedLinearGeneral",
    "StaticCode",
    "SwitchBackGlobalLinear",
    "SwitchBackGlobalMemEfficientLinear",
    "SwitchBackLinear",
    "SwitchBackVectorwiseLinear",
    "quantize_model",
    "to_int8_inference",
]


class _QuantLinear(nnx.Module):
    """nnx.Linear's constructor and parameters; subclasses pick the quantized op.

    A subclass names its kind in `_KIND`, takes that kind's options
    (`fp8mm.nn.OPTIONS[kind]` but implementation, with `QuantSpec`'s defaults) as
    keyword arguments and hands them to `_init`; `spec()` reads them back.
    `LAYERS` checks the signatures against the table.
    """

    _KIND: str

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        use_bias: bool = True,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        kernel_init: Initializer = compat.nnx_default_kernel_init,
        bias_init: Initializer = compat.nnx_default_bias_init,
        promote_dtype: Callable = compat.nnx_promote_dtype,
        preferred_element_type: Dtype | None = None,
        rngs: nnx.Rngs,
        kernel_metadata: Mapping[str, Any] = MappingProxyType({}),
        bias_metadata: Mapping[str, Any] = MappingProxyType({}),
        implementation: Impl = None,
    ):
        _core.check_layer_args(
            {"in_features": in_features, "out_features": out_features},
            use_bias=use_bias,
            dtype=dtype,
            param_dtype=param_dtype,
            initializers={
                "kernel_init": kernel_init,
                "bias_init": bias_init,
                "promote_dtype": promote_dtype,
            },
            preferred_element_type=preferred_element_type,
        )
        if not isinstance(rngs, nnx.Rngs):
            raise TypeError(f"rngs must be an nnx.Rngs, got {type(rngs).__name__}")
        for name, meta in (("kernel_metadata", kernel_metadata), ("bias_metadata", bias_metadata)):
            if not isinstance(meta, Mapping):
                raise TypeError(f"{name} must be a mapping, got {type(meta).__name__}")
        # Same rng draws in the same order as nnx.Linear: equal seeds give equal weights.
        self.kernel = nnx.Param(
            kernel_init(rngs.params(), (in_features, out_features), param_dtype),
            **kernel_metadata,
        )
        self.bias: nnx.Param | None
        if use_bias:
            self.bias = nnx.Param(
                bias_init(rngs.params(), (out_features,), param_dtype), **bias_metadata
            )
        else:
            self.bias = nnx.data(None)
        self.in_features = in_features
        self.out_features = out_features
        self.use_bias = use_bias
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision  # accepted for parity; the ops fix their precision
        self.promote_dtype = promote_dtype
        self.preferred_element_type = preferred_element_type
        self.implementation = implementation

    def _init(self, in_features: int, out_features: int, options: dict, kwargs: dict) -> None:
        """A subclass's __init__: its `options` and nnx.Linear's `kwargs`, checked first."""
        _check_kwargs(type(self), kwargs)
        # Validate (and normalize) the options before drawing any weights.
        options = {name: _code_value(value) for name, value in options.items()}
        spec = QuantSpec(self._KIND, **options, implementation=kwargs.get("implementation"))
        kwargs = {**kwargs, "implementation": spec.implementation}  # a list is kept as a tuple
        _QuantLinear.__init__(self, in_features, out_features, **kwargs)
        for name in _core.OPTIONS[self._KIND]:
            setattr(self, name, _static(name, getattr(spec, name)))

    def spec(self) -> QuantSpec:
        """The `QuantSpec` of this layer's options."""
        return QuantSpec.of(self._KIND, self, _code_value)

    @classmethod
    def from_linear(cls, linear: nnx.Linear, **options: Any) -> _QuantLinear:
        """The quantized layer sharing `linear`'s parameter Variables (no copy).

        Args:
          linear: an `nnx.Linear` (or another fp8mm layer with a float kernel).
          **options: this class's quantization options (`fp8mm.nn.OPTIONS[kind]`).
        """
        if not isinstance(linear, (nnx.Linear, _QuantLinear)):
            raise TypeError(
                f"{cls.__name__}.from_linear needs an nnx.Linear, got {type(linear).__name__}"
            )
        _core.check_options(f"{cls.__name__}.from_linear", cls._KIND, options)
        if getattr(linear, "kernel", None) is None:
            raise ValueError(
                f"{cls.__name__}.from_linear: this {type(linear).__name__} holds int8 inference "
                "weights (to_int8) and no float kernel to quantize"
            )
        kernel = linear.kernel
        layer = cls(
            linear.in_features,
            linear.out_features,
            use_bias=linear.use_bias,
            dtype=linear.dtype,
            param_dtype=linear.param_dtype,
            precision=linear.precision,
            # Reuse the existing arrays instead of drawing (and allocating) new ones.
            kernel_init=lambda *_: kernel[...],
            bias_init=lambda *_: linear.bias[...],
            promote_dtype=linear.promote_dtype,
            preferred_element_type=linear.preferred_element_type,
            rngs=nnx.Rngs(0),
            **options,
        )
        layer.kernel = kernel  # the very Variable: shared references and metadata survive
        if linear.use_bias:
            layer.bias = linear.bias
        return layer

    def __call__(self, inputs: jax.Array, out_sharding: Any = None) -> jax.Array:
        """Applies the quantized linear map to the last axis.

        Args:
          inputs: float [..., in_features].
          out_sharding: accepted for parity with nnx.Linear; shardings
            propagate through the op.

        Returns:
          [..., out_features] in the computation dtype (or preferred_element_type).
        """
        del out_sharding
        _checks.check_array("inputs", inputs)
        _checks.check_min_ndim("inputs", inputs, 1)
        if inputs.shape[-1] != self.in_features:
            raise ValueError(
                f"inputs must have in_features={self.in_features} in their last axis, got "
                f"shape {tuple(inputs.shape)}"
            )
        int8_state = None
        kernel = None
        spec = self.spec()
        if getattr(self, "CB", None) is not None:
            int8_state = _core.int8_weight_state(spec, self.CB[...], self.SCB[...])
        else:
            kernel = self.kernel[...]
        bias = self.bias[...] if self.bias is not None else None
        inputs, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
        y, cols = quantized_dense(spec, inputs, kernel, bias, int8_state=int8_state)
        return finish_product(self, y, cols)


# nnx.Linear's keyword arguments, as _QuantLinear takes them (for the subclasses' errors).
_LINEAR_KWARGS = tuple(
    name
    for name, p in inspect.signature(_QuantLinear.__init__).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY
)


def _check_kwargs(cls: type, kwargs: Mapping[str, Any]) -> None:
    # Without this, a misspelt or wrong-kind option is reported against _QuantLinear.
    unknown = {k: v for k, v in kwargs.items() if k not in _LINEAR_KWARGS}
    if unknown:
        try:
            _core.check_options(f"{cls.__name__}()", cls._KIND, unknown)
        except TypeError as e:
            raise TypeError(f"{e} (besides nnx.Linear's arguments)") from None


class Fp8MixedLinear(_QuantLinear):
    """nnx.Linear through `fp8mm.matmul_fp8_mixed` (bitsandbytes' LinearFP8Mixed).

    Extra keyword arguments: fw_code (float32 [256] array, None: e4m3), bw_code
    (None: e5m2), bsz, bsz2 (-1: `fp8mm.get_block_sizes`), gemm, implementation
    (None, "xla", "pallas", a kernel name or a sequence of these). Codes must be
    concrete (not traced) and are kept as `StaticCode` constants.

    gemm: "emulated" (bitsandbytes' numbers: quantize, dequantize to 16 bit,
    16-bit GEMM) or "native" (the same codes multiplied on FP8 tensor cores as
    float8_e4m3fn/e5m2 with float32 scales). "native" needs the default e4m3/e5m2
    codes (other codes raise NotImplementedError when called); its products differ
    from the emulated ones only by float32 rounding and by code values below
    6.1e-5 of absmax, which fp8 rounds to its nearest value (docs/exactness.md).
    """

    _KIND = "fp8_mixed"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        fw_code: Any = None,
        bw_code: Any = None,
        bsz: int = -1,
        bsz2: int = -1,
        gemm: Gemm = "emulated",
        **kwargs: Any,
    ):
        options = {"fw_code": fw_code, "bw_code": bw_code, "bsz": bsz, "bsz2": bsz2, "gemm": gemm}
        self._init(in_features, out_features, options, kwargs)


class Fp8GlobalLinear(Fp8MixedLinear):
    """nnx.Linear through `fp8mm.matmul_fp8_global` (same options as `Fp8MixedLinear`)."""

    _KIND = "fp8_global"


class SwitchBackLinear(_QuantLinear):
    """nnx.Linear through `fp8mm.switchback_bnb` (SwitchBack int8 training and inference).

    Extra keyword arguments: threshold (outlier threshold; > 0 sows outlier
    statistics), outlier_capacity (None: the op's default), implementation.
    After `to_int8()` the layer holds `Int8Weight` 'CB'/'SCB' instead of 'kernel'.
    """

    _KIND = "switchback"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        threshold: float = 0.0,
        outlier_capacity: int | None = None,
        **kwargs: Any,
    ):
        options = {"threshold": threshold, "outlier_capacity": outlier_capacity}
        self._init(in_features, out_features, options, kwargs)

    def to_int8(self) -> None:
        """Replaces the float kernel by the int8 inference weight (`prepare_int8_weight`)."""
        _to_int8(self)


def _to_int8(layer: _QuantLinear) -> None:
    """The kind's int8 inference weights 'CB'/'SCB' in place of the float kernel."""
    if getattr(layer, "CB", None) is not None:
        return
    cb, scb = _core.KIND_TABLE[layer._KIND].int8_prepare(layer.spec(), layer.kernel[...])
    layer.CB = Int8Weight(cb)
    layer.SCB = Int8Weight(scb)
    del layer.kernel


class SwitchBackGlobalLinear(_QuantLinear):
    """nnx.Linear through `fp8mm.switchback_linear`: the SwitchBack paper's layer, global
    weight scale (int8 forward and input gradient, 16-bit weight gradient).

    Extra keyword argument: implementation. After `to_int8()` the layer holds
    `Int8Weight` 'CB'/'SCB' (`prepare_switchback_weight`) instead of 'kernel'.
    """

    _KIND = "switchback_global"

    def __init__(self, in_features: int, out_features: int, **kwargs: Any):
        self._init(in_features, out_features, {}, kwargs)

    def to_int8(self) -> None:
        """Replaces the float kernel by the int8 inference weight (`prepare_switchback_weight`)."""
        _to_int8(self)


class SwitchBackVectorwiseLinear(SwitchBackGlobalLinear):
    """As `SwitchBackGlobalLinear` with per-feature weight scales (bitsandbytes'
    SwitchBackLinearVectorwise)."""

    _KIND = "switchback_vectorwise"


class SwitchBackGlobalMemEfficientLinear(SwitchBackGlobalLinear):
    """As `SwitchBackGlobalLinear`, keeping the activations as int8 + row scales for the
    weight gradient (bitsandbytes' SwitchBackLinearGlobalMemEfficient)."""

    _KIND = "switchback_global_mem_efficient"


def _declared_options(cls: type) -> dict[str, Any]:
    """The option keywords of `cls`'s constructor (its own and _QuantLinear's), with defaults."""
    params = {
        **inspect.signature(_QuantLinear.__init__).parameters,
        **inspect.signature(cls.__init__).parameters,
    }
    return {n: p.default for n, p in params.items() if n in _core.OPTION_DEFAULTS}


LAYERS: dict[str, type[_QuantLinear]] = _core.check_layer_options(
    (
        Fp8MixedLinear,
        Fp8GlobalLinear,
        SwitchBackLinear,
        SwitchBackGlobalLinear,
        SwitchBackVectorwiseLinear,
        SwitchBackGlobalMemEfficientLinear,
    ),
    _declared_options,
)


def _replace(model: nnx.Module, path: tuple, new: nnx.Module) -> None:
    parent: Any = model
    for key in path[:-1]:
        parent = parent[key] if isinstance(key, int) else getattr(parent, key)
    key = path[-1]
    if isinstance(key, int):
        parent[key] = new
    else:
        setattr(parent, key, new)


def _check_nnx_model(where: str, model: Any, linen_way: str) -> None:
    if isinstance(model, flax.linen.Module):
        raise TypeError(
            f"{where} converts flax.nnx modules; {type(model).__name__} is a flax.linen "
            f"module: {linen_way}"
        )
    if not isinstance(model, nnx.Module):
        raise TypeError(f"{where} needs an nnx.Module, got {type(model).__name__}")


def quantize_model(
    model: nnx.Module,
    kind: str,
    *,
    filter: Callable[[tuple, nnx.Module], bool] | None = None,
    report: bool = False,
    **options: Any,
) -> nnx.Module | tuple[nnx.Module, QuantizeReport]:
    """Swaps each nnx.Linear, LinearGeneral and Einsum of `model` for a quantized one, in place.

    `nnx.Linear` becomes the `kind` layer (`LAYERS[kind].from_linear`),
    `nnx.LinearGeneral` a `QuantizedLinearGeneral` and `nnx.Einsum` a
    `QuantizedEinsum`, so attention (`nnx.MultiHeadAttention`: q/k/v and output
    projections are LinearGeneral) is quantized too. A LinearGeneral / Einsum
    runs as the Dense product of the reshaped problem (contracted axes last,
    x [rows, K] @ kernel [K, N]), exactly the numbers of the `kind` Linear layer
    on it. The new layers share the old parameter Variables, so optimizer state
    built on them stays valid. A module reachable from several places is
    replaced by one quantized layer everywhere. Layers that are already fp8mm
    layers of this kind with these options are left as they are; fp8mm layers of
    another kind or with other options raise (leave them out with `filter`).

    Not converted, and reported skipped: an Einsum that is not a dense product of
    x with its kernel (a batch index in x, the kernel and the output; a trace; an
    ellipsis in the kernel), convolutions, and what `filter` leaves out. A
    LinearGeneral with `batch_axis` (a weight per batch element) raises
    NotImplementedError instead: leave it out with `filter`.

    Args:
      model: an nnx Module (modified in place).
      kind: one of `fp8mm.nn.KINDS` ("fp8_mixed", "fp8_global", "switchback",
        "switchback_global", "switchback_vectorwise", "switchback_global_mem_efficient").
      filter: optional predicate on (path, layer), called for every nnx.Linear,
        LinearGeneral, Einsum and fp8mm layer; False leaves that layer as it is.
      report: also return a `fp8mm.nn.QuantizeReport`: each module converted,
        already quantized, or skipped (and why), by path.
      **options: the kind's quantization options (`fp8mm.nn.OPTIONS[kind]`, e.g.
        threshold=6.0; fw_code= accepts a float32 [256] numpy or jax array;
        gemm="native" multiplies the fp8 kinds on FP8 tensor cores and needs the
        default e4m3/e5m2 codes: see `Fp8MixedLinear`).

    Returns:
      `model` itself, or `(model, QuantizeReport)` with `report=True`.

    Raises:
      TypeError: `model` is not an nnx Module (e.g. a linen one), or an option
        that `kind` does not have.
      ValueError: unknown kind, bad option value, or layers already quantized
        differently.
      NotImplementedError: a LinearGeneral with batch_axis (nothing is swapped then).

    Examples:
      >>> from flax import nnx
      >>> import jax.numpy as jnp
      >>> from fp8mm.nn import nnx as fnnx
      >>> rngs = nnx.Rngs(0)
      >>> mlp = nnx.Sequential(nnx.Linear(32, 64, rngs=rngs), nnx.Linear(64, 8, rngs=rngs))
      >>> mlp, report = fnnx.quantize_model(mlp, "switchback", report=True)
      >>> len(report.converted), mlp(jnp.ones((4, 32))).shape
      (2, (4, 8))
    """
    _check_nnx_model(
        "quantize_model",
        model,
        "run it quantized inside `fp8mm.nn.linen.quantize_dense(kind)` (around "
        "init/apply; it converts nn.Dense, nn.DenseGeneral and nn.Einsum), or build it "
        "with the fp8mm.nn.linen layers (Fp8MixedDense, Fp8GlobalDense, SwitchBackDense)",
    )
    _core.check_kind(kind)
    _core.check_options("quantize_model", kind, options)
    _core.check_callable("filter", filter)
    _checks.check_bool("report", report)
    spec = QuantSpec(kind, **options)  # every value checked before the model is touched
    cls = LAYERS[kind]
    if isinstance(model, (nnx.Linear, _QuantLinear)):
        raise ValueError(
            "quantize_model swaps submodules; build the layer with "
            f"{cls.__name__}.from_linear(linear) instead"
        )
    if _gen.convertible(model) or isinstance(model, _QUANTIZED_GENERAL):
        raise ValueError(
            "quantize_model swaps submodules; build the layer with "
            "QuantizedLinearGeneral(module, kind) / QuantizedEinsum(module, kind) instead"
        )
    rep = QuantizeReport(spec)
    found, other = _survey(model, spec, filter, rep)
    if other:
        raise ValueError(
            f"quantize_model(model, {kind!r}): the model already holds fp8mm layers quantized "
            f"differently: {', '.join(other)}. It converts nnx.Linear, LinearGeneral and "
            "Einsum layers only: quantize the float model instead, leave those layers out "
            f"with filter=, or convert one explicitly with {cls.__name__}.from_linear(layer)"
        )
    swapped: dict[int, nnx.Module] = {}
    for path, m in found:
        if id(m) not in swapped:
            if type(m) is nnx.Linear:
                swapped[id(m)] = cls.from_linear(m, **options)
            elif type(m) is nnx.LinearGeneral:
                swapped[id(m)] = QuantizedLinearGeneral(m, kind, **options)
            else:
                swapped[id(m)] = QuantizedEinsum(m, kind, **options)
        _replace(model, path, swapped[id(m)])
        rep.add("converted", _path_str(path), type(m).__name__)
    return (model, rep) if report else model


_QUANTIZED_GENERAL = (QuantizedLinearGeneral, QuantizedEinsum)


def _path_str(path: tuple) -> str:
    return "/".join(map(str, path))


def _survey(model: nnx.Module, spec: QuantSpec, filter, rep: QuantizeReport):
    """(modules to swap [(path, module)], descriptions of fp8mm layers quantized otherwise).

    Records the skipped and already quantized modules in `rep`; raises
    NotImplementedError for a LinearGeneral with batch_axis before anything is swapped.
    """
    found, other = [], []
    for path, m in nnx.iter_modules(model):
        where, name = _path_str(path), type(m).__name__
        why = next((r for t, r in _gen.NOT_CONVERTED.items() if isinstance(m, t)), None)
        if why is not None:
            rep.add("skipped", where, name, why)
            continue
        quantized = isinstance(m, (_QuantLinear, *_QUANTIZED_GENERAL))
        if not (quantized or type(m) is nnx.Linear or _gen.convertible(m)):
            continue
        if filter is not None and not filter(path, m):
            rep.add("skipped", where, name, "filter returned False")
            continue
        if quantized:
            if m.spec() != spec:
                other.append(f"{where} ({name}, {m.spec().kind})")
            else:
                rep.add("already_quantized", where, name, spec.kind)
            continue
        if type(m) is nnx.LinearGeneral:
            _gen.refuse_batch_axis(m, where, spec.kind)
        elif type(m) is nnx.Einsum:
            plan = _gen.einsum_structure(m.einsum_str, len(m.kernel_shape))
            if isinstance(plan, str):
                rep.add("skipped", where, name, f"not a dense product: {plan}")
                continue
        found.append((path, m))
    return found, other


def to_int8_inference(model: nnx.Module) -> Int8Report:
    """Turns every SwitchBack layer of `model` into int8 inference weights, in place.

    `SwitchBackLinear` and the SwitchBack paper's `SwitchBackGlobalLinear`,
    `SwitchBackVectorwiseLinear`, `SwitchBackGlobalMemEfficientLinear` (CB int8
    [out, in], SCB float32 [out]), and the `QuantizedLinearGeneral` /
    `QuantizedEinsum` layers of those kinds that `quantize_model` made of
    attention's projections (CB [*features, *contracted], SCB [*features]: the
    Linear layer's int8 weights of the reshaped kernel [K, N]), each with its own
    kind's quantization. The fp8 kinds' layers and float nnx.Linear /
    LinearGeneral / Einsum modules keep their kernels and are listed in the
    report's `skipped`.

    Returns:
      `Int8Report` with the bytes of all Variables of the model before and after.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import fp8mm.nn as fnn
      >>> attn = nnx.MultiHeadAttention(2, 16, qkv_features=16, decode=False, rngs=nnx.Rngs(0))
      >>> _ = fnn.quantize_model(attn, "switchback")
      >>> report = fnn.to_int8_inference(attn)  # q/k/v: CB [heads, head_dim, embed]
      >>> attn.query.CB.shape, attn(jnp.ones((1, 8, 16))).shape, len(report.layers)
      ((2, 8, 16), (1, 8, 16), 4)
    """
    _check_nnx_model(
        "to_int8_inference",
        model,
        "convert its parameters with `fp8mm.nn.linen.int8_inference_params(params)`",
    )
    before = tree_bytes(nnx.state(model))
    layers, skipped = [], []
    for path, m in list(nnx.iter_modules(model)):
        where = "/".join(map(str, path))
        if isinstance(m, (_QuantLinear, *_QUANTIZED_GENERAL)):
            kind = m.spec().kind
            if _core.KIND_TABLE[kind].int8_weights:
                m.to_int8()
                layers.append(where)
            else:
                skipped.append((where, f"kind {kind!r} has no int8 inference weights"))
        elif type(m) is nnx.Linear or _gen.convertible(m):
            why = "a float layer: quantize_model(model, kind) with a SwitchBack kind first"
            skipped.append((where, why))
    return Int8Report(tuple(layers), before, tree_bytes(nnx.state(model)), tuple(skipped))
