"""flax.linen layers: drop-in `nn.Dense` replacements running fp8mm's 8-bit matmuls.

* `Fp8MixedDense`, `Fp8GlobalDense`, `SwitchBackDense` and the SwitchBack
  paper's `SwitchBackGlobalDense`, `SwitchBackVectorwiseDense`,
  `SwitchBackGlobalMemEfficientDense`: the attributes,
  defaults and parameters ('kernel' [in, out], 'bias' [out]) of `nn.Dense`,
  plus the quantization options, so a checkpoint of an `nn.Dense` model loads
  into the quantized model and back.
* `quantize_dense(kind, ...)`: a context (through `nn.intercept_methods`) in
  which unchanged `nn.Dense`, `nn.DenseGeneral` and `nn.Einsum` code runs
  quantized (so `nn.MultiHeadDotProductAttention`'s projections too); with
  `report=True` it yields a `QuantizeReport` of what it converted and skipped.
* `int8_inference_params(params, model, ...)`: SwitchBack int8 inference
  weights, for the Dense layers and the DenseGeneral / Einsum projections that
  `quantize_dense` converts; `split_int8_params` / `merge_int8_params` to train
  the float parts of such a model.

With `threshold > 0`, SwitchBack layers sow 'outlier_cols' (bool [in]) and
'outlier_count' (int32) into the 'intermediates' collection.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.typing import Dtype, Initializer, PrecisionLike, PromoteDtypeFn

from fp8mm import _checks
from fp8mm.dispatch import Impl
from fp8mm.nn import _core
from fp8mm.nn import _linen_general as _lg
from fp8mm.nn._core import Gemm, QuantSpec
from fp8mm.nn._dense import make_dot_general, quantized_dense
from fp8mm.nn._flax_compat import (
    autoname_like,
    linen_default_kernel_init,
    linen_promote_dtype,
)
from fp8mm.nn._int8 import (
    Int8Report,
    int8_inference_params,
    merge_int8_params,
    record_switchback,
    split_int8_params,
)
from fp8mm.nn._report import ModuleRecord, QuantizeReport

__all__ = [
    "Fp8GlobalDense",
    "Fp8MixedDense",
    "Int8Report",
    "ModuleRecord",
    "QuantizeReport",
    "SwitchBackDense",
    "SwitchBackGlobalDense",
    "SwitchBackGlobalMemEfficientDense",
    "SwitchBackVectorwiseDense",
    "int8_inference_params",
    "make_dot_general",
    "merge_int8_params",
    "quantize_dense",
    "split_int8_params",
]


def _dense_call(module: nn.Module, inputs: jax.Array, spec: QuantSpec) -> jax.Array:
    """The body of nn.Dense.__call__ with the product replaced by `spec`'s op.

    Runs inside `module`'s compact scope (a layer's __call__ or an intercepted
    nn.Dense), so parameters are created in the same order and with the same
    names and initializers as nn.Dense.
    """
    _checks.check_array("inputs", inputs)
    _checks.check_min_ndim("inputs", inputs, 1)
    int8_state = None
    if module.has_variable("params", "CB"):
        int8_state = _int8_state(module, inputs, spec)
        kernel = None
    else:
        kernel = module.param(
            "kernel",
            module.kernel_init,
            (jnp.shape(inputs)[-1], module.features),
            module.param_dtype,
        )
    if _core.KIND_TABLE[spec.kind].int8_weights:
        record_switchback(module.path, spec.kind)
    bias = None
    if module.use_bias:
        bias = module.param("bias", module.bias_init, (module.features,), module.param_dtype)
    inputs, kernel, bias = module.promote_dtype(inputs, kernel, bias, dtype=module.dtype)
    y, cols = quantized_dense(spec, inputs, kernel, bias, int8_state=int8_state)
    if cols is not None:
        module.sow("intermediates", "outlier_cols", cols)
        module.sow("intermediates", "outlier_count", jnp.sum(cols, dtype=jnp.int32))
    return y


def _int8_state(module: nn.Module, inputs: jax.Array, spec: QuantSpec):
    """The int8 weight that int8_inference_params put in place of the kernel."""
    where = "/".join(module.path) or type(module).__name__
    if not _core.KIND_TABLE[spec.kind].int8_weights:
        raise ValueError(
            f"layer {where!r} holds SwitchBack int8 weights (CB/SCB from "
            f"int8_inference_params) but runs as {spec.kind!r}; only SwitchBack layers take "
            "them: convert only those (int8_inference_params(..., filter=...))"
        )
    if not module.has_variable("params", "SCB"):
        raise ValueError(f"layer {where!r} has the int8 weight 'CB' but not its scales 'SCB'")
    cb = module.get_variable("params", "CB")
    if cb.ndim != 2 or cb.shape[0] != module.features or cb.shape[1] != jnp.shape(inputs)[-1]:
        raise ValueError(
            f"layer {where!r}: int8 weight CB {tuple(cb.shape)} does not fit inputs "
            f"{tuple(jnp.shape(inputs))} and features={module.features}: need CB "
            f"[{module.features}, {jnp.shape(inputs)[-1]}]"
        )
    return _core.int8_weight_state(spec, cb, module.get_variable("params", "SCB"))


class _QuantDense(nn.Module):
    """Fields shared with nn.Dense (same names, order and defaults).

    A subclass names its kind in `_KIND` and declares that kind's options
    (`fp8mm.nn.OPTIONS[kind]`, with `QuantSpec`'s defaults) as fields; `spec()`
    reads them. `LAYERS` checks the declarations against the table.
    """

    _KIND = ""

    features: int
    use_bias: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None  # accepted for parity; the ops fix their precision
    kernel_init: Initializer = linen_default_kernel_init
    bias_init: Initializer = nn.initializers.zeros_init()
    promote_dtype: PromoteDtypeFn = linen_promote_dtype

    def __post_init__(self) -> None:
        # Checked here, when the layer is built, rather than deep inside the first call.
        _core.check_layer_args(
            {"features": self.features},
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            initializers={
                name: getattr(self, name) for name in ("kernel_init", "bias_init", "promote_dtype")
            },
        )
        # Validates the quantization options; a list implementation is kept as a tuple.
        object.__setattr__(self, "implementation", self.spec().implementation)
        # Auto-name like nn.Dense ("Dense_0", sharing Dense's counter) so that swapping
        # the class in unchanged compact model code keeps the checkpoint's paths.
        autoname_like(self, "Dense")
        super().__post_init__()

    def spec(self) -> QuantSpec:
        """The `QuantSpec` of this layer's options."""
        return QuantSpec.of(self._KIND, self)

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Applies the quantized linear map to the last axis.

        Args:
          inputs: float [..., in].

        Returns:
          [..., features] in the computation dtype.
        """
        return _dense_call(self, inputs, self.spec())


class Fp8MixedDense(_QuantDense):
    """nn.Dense through `fp8mm.matmul_fp8_mixed` (bitsandbytes' LinearFP8Mixed).

    Attributes (besides nn.Dense's):
      fw_code: forward code, float32 [256]; None for e4m3.
      bw_code: backward code; None for e5m2.
      bsz: activation block size; -1 for `fp8mm.get_block_sizes`.
      bsz2: output-gradient block size; -1 for `fp8mm.get_block_sizes`.
      gemm: "emulated" (bitsandbytes' numbers: quantize, dequantize to 16 bit,
        16-bit GEMM) or "native" (the same codes multiplied on FP8 tensor cores as
        float8_e4m3fn/e5m2 with float32 scales). "native" needs the default
        e4m3/e5m2 codes (other codes raise NotImplementedError when called); its
        products differ from the emulated ones only by float32 rounding and by
        code values below 6.1e-5 of absmax, which fp8 rounds to its nearest value
        (docs/exactness.md).
      implementation: None, "xla", "pallas", a kernel name or a sequence of these.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from fp8mm.nn import linen as fl
      >>> layer = fl.Fp8MixedDense(16)  # gemm="native" for FP8 tensor cores
      >>> x = jnp.ones((4, 32))
      >>> params = layer.init(jax.random.key(0), x)  # nn.Dense's parameters
      >>> layer.apply(params, x).shape
      (4, 16)
    """

    _KIND = "fp8_mixed"

    fw_code: Any = None
    bw_code: Any = None
    bsz: int = -1
    bsz2: int = -1
    gemm: Gemm = "emulated"
    implementation: Impl = None


class Fp8GlobalDense(Fp8MixedDense):
    """nn.Dense through `fp8mm.matmul_fp8_global` (bitsandbytes' LinearFP8Global, working).

    Same attributes as `Fp8MixedDense`; block sizes are validated but unused.
    """

    _KIND = "fp8_global"


class SwitchBackDense(_QuantDense):
    """nn.Dense through `fp8mm.switchback_bnb` (SwitchBack int8 training).

    Holds either the float 'kernel' [in, out] (training) or, after
    `int8_inference_params`, 'CB' int8 [out, in] and 'SCB' float32 [out]
    (int8 inference weights); the same module definition serves both.

    Attributes (besides nn.Dense's):
      threshold: outlier threshold; > 0 multiplies outlier input columns in
        16 bits and sows 'outlier_cols'/'outlier_count' into 'intermediates'.
      outlier_capacity: outlier slots under jit (None: the op's default).
      implementation: None, "xla", "pallas", a kernel name or a sequence of these.

    Examples:
      >>> import flax.linen as nn, jax, jax.numpy as jnp
      >>> from fp8mm.nn import linen as fl
      >>> x = jnp.ones((4, 32))
      >>> params = nn.Dense(16).init(jax.random.key(0), x)  # a trained nn.Dense's params
      >>> y = fl.SwitchBackDense(16).apply(params, x)  # the same tree, int8 products
      >>> int8, report = fl.int8_inference_params(params)  # CB/SCB instead of the kernel
      >>> sorted(int8["params"]), fl.SwitchBackDense(16).apply(int8, x).shape
      (['CB', 'SCB', 'bias'], (4, 16))
    """

    _KIND = "switchback"

    threshold: float = 0.0
    outlier_capacity: int | None = None
    implementation: Impl = None


class SwitchBackGlobalDense(_QuantDense):
    """nn.Dense through `fp8mm.switchback_linear`: the SwitchBack paper's layer, one weight scale.

    int8 forward and int8 input gradient (activations and output gradient
    row-wise, the weight with one scale), 16-bit weight gradient. Holds the
    float 'kernel' [in, out], or after `int8_inference_params(...,
    kind="switchback_global")` 'CB' int8 [out, in] and 'SCB' float32 [out].

    Attributes (besides nn.Dense's):
      implementation: None, "xla", "pallas", a kernel name or a sequence of these.
    """

    _KIND = "switchback_global"

    implementation: Impl = None


class SwitchBackVectorwiseDense(SwitchBackGlobalDense):
    """As `SwitchBackGlobalDense` with per-feature weight scales (forward per output
    feature, input gradient per input feature): bitsandbytes' SwitchBackLinearVectorwise."""

    _KIND = "switchback_vectorwise"


class SwitchBackGlobalMemEfficientDense(SwitchBackGlobalDense):
    """As `SwitchBackGlobalDense`, keeping the activations as int8 + row scales for the
    weight gradient instead of in 16 bit: bitsandbytes' SwitchBackLinearGlobalMemEfficient."""

    _KIND = "switchback_global_mem_efficient"


LAYERS: dict[str, type[_QuantDense]] = _core.check_layer_options(
    (
        Fp8MixedDense,
        Fp8GlobalDense,
        SwitchBackDense,
        SwitchBackGlobalDense,
        SwitchBackVectorwiseDense,
        SwitchBackGlobalMemEfficientDense,
    ),
    lambda cls: {
        f.name: f.default for f in dataclasses.fields(cls) if f.name in _core.OPTION_DEFAULTS
    },
)


# Dense-type calls seen by any quantize_dense interceptor, and the specs that have seen one:
# how a context that traced nothing is told from one whose function was traced before.
_seen_calls = 0
_specs_that_traced: set[QuantSpec] = set()

# Linear modules fp8mm has no product for: reported skipped, run as flax runs them.
_NOT_CONVERTED = {
    nn.Conv: "a convolution (fp8mm quantizes matmuls only)",
    nn.ConvLocal: "a convolution (fp8mm quantizes matmuls only)",
    nn.ConvTranspose: "a convolution (fp8mm quantizes matmuls only)",
}


@contextlib.contextmanager
def quantize_dense(
    kind: str,
    *,
    filter: Callable[[nn.Module], bool] | None = None,
    report: bool = False,
    **options: Any,
) -> Iterator[Any]:
    """Within this context, `nn.Dense`, `nn.DenseGeneral` and `nn.Einsum` run quantized.

    Unchanged model code runs fp8mm's product in place of flax's, attention
    included: `nn.MultiHeadDotProductAttention`'s q/k/v and output projections
    are DenseGeneral. Parameters keep flax's names, shapes and initializers, so
    `init` and `apply` work as before and checkpoints are interchangeable. A
    module's own `dot_general` is replaced too.

    * `nn.DenseGeneral` (any `axis`, tuple `features`) runs as the Dense product
      of the reshaped problem: x's contracted axes last, x [rows, K] @ kernel
      [K, N] (+ bias [N]), reshaped back; exactly the numbers of an fp8mm Dense
      layer on that problem. `batch_dims` (a weight per batch element) has no
      such form: it raises NotImplementedError (leave it out with `filter`).
    * `nn.Einsum` is converted when its equation is a dense product of x with the
      kernel (every index contracted between the two or kept in the output, none
      in x, the kernel and the output); any other einsum (a batch index, a trace,
      an ellipsis in the kernel) runs as flax runs it and is reported skipped.
    * Convolutions are not converted (reported skipped). The activation products
      inside attention (q @ k, weights @ v) have no weight and stay 16-bit, as
      in bitsandbytes.
    * With a SwitchBack kind, converted layers also run the int8 inference
      weights of `int8_inference_params(params, model, ...)` (called inside this
      context, so that it sees which layers run as that kind and how each
      DenseGeneral / Einsum kernel maps onto [K, N]).

    The context acts while the model's Python code runs, that is when a jitted
    function is traced, not when its compiled version is called. A function
    traced before the context was entered (e.g. `f = jax.jit(model.apply)`
    called once outside it) keeps running plain flax inside it, because
    `jax.jit` reuses its cached trace. Enter the context inside the function
    being jitted, or trace it for the first time inside the context. When the
    context exits without any of these modules having been traced inside it, and
    no context with the same options ever traced one, it warns (`UserWarning`):
    that is the stale-trace case. Contexts that only call a function traced
    under an equal context before (a training loop) stay silent.

    Args:
      kind: one of `fp8mm.nn.KINDS`: "fp8_mixed", "fp8_global", "switchback",
        "switchback_global", "switchback_vectorwise", "switchback_global_mem_efficient".
      filter: optional predicate on the (bound) nn.Dense, nn.DenseGeneral or
        nn.Einsum; False leaves it as is (e.g. `lambda m: m.name != "lm_head"`).
      report: False (default): the context yields the `QuantSpec` in use. True: it
        yields a `fp8mm.nn.QuantizeReport` (its `.spec` is that QuantSpec) that
        records, while code is traced inside the context, each module converted
        and each skipped (by `filter`, an einsum that is no dense product, a
        convolution) with its path and why, and the fp8mm layers met.
      **options: the kind's `QuantSpec` fields (`fp8mm.nn.OPTIONS[kind]`):
        fw_code, bw_code, bsz, bsz2, gemm, implementation for the fp8 kinds
        (gemm="native" multiplies on FP8 tensor cores; it needs the default
        e4m3/e5m2 codes: see `Fp8MixedDense`); threshold, outlier_capacity,
        implementation for "switchback"; implementation for the SwitchBack
        paper's kinds.

    Yields:
      the `QuantSpec` in use, or with `report=True` the `QuantizeReport`.

    Raises:
      ValueError: unknown kind or a bad option value.
      TypeError: an option that `kind` does not have.
      NotImplementedError: (while tracing) an nn.DenseGeneral with batch_dims.

    Examples:
      >>> import flax.linen as nn, jax, jax.numpy as jnp
      >>> from fp8mm.nn import linen as fl
      >>> attn = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=16)
      >>> x = jnp.ones((1, 8, 16))
      >>> params = attn.init(jax.random.key(0), x)
      >>> with fl.quantize_dense("switchback_global", report=True) as report:
      ...     y = attn.apply(params, x)
      >>> y.shape, len(report.converted)  # query, key, value and out projections
      ((1, 8, 16), 4)
    """
    _core.check_kind(kind)
    _core.check_options("quantize_dense", kind, options)
    _core.check_callable("filter", filter)
    _checks.check_bool("report", report)
    spec = QuantSpec(kind, **options)
    rep = QuantizeReport(spec)

    def interceptor(next_fun, args, kwargs, context):
        global _seen_calls
        m = context.module
        if context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        where = "/".join(m.path)
        if isinstance(m, _QuantDense):  # (m.spec() here would be intercepted in turn)
            rep.add("already_quantized", where, type(m).__name__, m._KIND)
            return next_fun(*args, **kwargs)
        for cls, why in _NOT_CONVERTED.items():
            if isinstance(m, cls):
                rep.add("skipped", where, type(m).__name__, why)
                return next_fun(*args, **kwargs)
        if not isinstance(m, (nn.Dense, nn.DenseGeneral, nn.Einsum)):
            return next_fun(*args, **kwargs)
        _seen_calls += 1
        if filter is not None and not filter(m):
            rep.add("skipped", where, type(m).__name__, "filter returned False")
            return next_fun(*args, **kwargs)
        if isinstance(m, nn.Einsum):
            inputs = args[0] if args else kwargs.get("inputs")
            eq = args[1] if len(args) > 1 else kwargs.get("einsum_str")
            plan = _lg.einsum_plan(m, inputs, eq)
            if isinstance(plan, str):
                rep.add("skipped", where, type(m).__name__, f"not a dense product: {plan}")
                return next_fun(*args, **kwargs)
            y, cols = _lg.einsum_call(m, inputs, plan, eq, spec)
        elif isinstance(m, nn.DenseGeneral):
            y, cols = _lg.dense_general_call(m, *args, spec=spec, **kwargs)
        else:
            y = _dense_call(m, *args, spec=spec, **kwargs)
            cols = None  # sown by _dense_call
        if cols is not None:
            m.sow("intermediates", "outlier_cols", cols)
            m.sow("intermediates", "outlier_count", jnp.sum(cols, dtype=jnp.int32))
        rep.add("converted", where, type(m).__name__)
        return y

    before = _seen_calls
    with nn.intercept_methods(interceptor):
        yield rep if report else spec
    # Not reached when the block raised: a warning would only hide that error.
    if _seen_calls != before:
        _specs_that_traced.add(spec)
    elif spec not in _specs_that_traced:
        warnings.warn(
            f"quantize_dense({kind!r}) exited without tracing any nn.Dense, nn.DenseGeneral "
            "or nn.Einsum: code run in it was jitted and traced before the context was "
            "entered (jax.jit reuses that plain trace), or uses none of them. Enter the "
            "context inside the jitted function, or trace the function inside the context.",
            UserWarning,
            stacklevel=3,
        )
