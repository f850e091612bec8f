"""The layer kinds (`KIND_TABLE`), their options (`QuantSpec`) and the layers' argument checks.

`KIND_TABLE` says what each layer kind is: the `fp8mm.ops` function it runs,
the `QuantSpec` options it reads (their defaults are QuantSpec's field
defaults), how that op is called on a Dense kernel, and whether `partition`
can split it exactly. `QuantSpec` holds the options of one layer, and
`fp8mm.nn._dense.quantized_dense` runs the row of its kind: every layer, factory
and interceptor goes through that one product, which is what makes them give
the same numbers.

Adding a layer kind: a row in `KIND_TABLE` and its name in `Kind` (a QuantSpec
field and a checker in `_OPTION_CHECKS` for a new option), then the layer
classes of `linen.py` and `nnx.py`, whose option attributes are checked
against the row when those modules are imported.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from fp8mm import _checks, _host, ops
from fp8mm.codebooks import e4m3_code, e5m2_code
from fp8mm.dispatch import Impl
from fp8mm.nn.sharding import Partition, current_partition
from fp8mm.state import MatmulLtState

__all__ = ["KINDS", "KIND_TABLE", "OPTIONS", "OPTION_DEFAULTS", "Kind", "LayerKind", "QuantSpec"]

# --- The table --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LayerKind:
    """One row of `KIND_TABLE`: what a layer kind runs.

    Attributes:
      options: the QuantSpec fields the kind reads, in its layers' signature order.
      op: the `fp8mm.ops` function of the product.
      product: `product(op, spec, x, kernel, bias, int8_state) -> (y, outlier mask | None)`:
        the product on one device, x [..., in] and kernel [in, out] (Dense layout).
      split_problem: `(spec, part, x, kernel) -> reason | None`: why `partition` cannot
        split the product exactly over `part`'s mesh (see fp8mm.nn.sharding); None if it can.
      int8_prepare: `(spec, kernel [in, out]) -> (CB int8 [out, in], SCB float32 [out])`,
        the kind's int8 inference weights; None when the kind takes none.
    """

    options: tuple[str, ...]
    op: Callable[..., Any]
    product: Callable[..., tuple[jax.Array, jax.Array | None]]
    split_problem: Callable[..., str | None]
    int8_prepare: Callable[..., tuple[jax.Array, jax.Array]] | None = None

    @property
    def int8_weights(self) -> bool:
        """Whether the kind takes int8 inference weights (CB/SCB) in place of the kernel."""
        return self.int8_prepare is not None


def _fp8_product(op, spec: QuantSpec, x, kernel, bias, int8_state):
    del int8_state  # fp8 kinds take no int8 weights (checked in _check_operands)
    fw, bw = spec.codes()
    # The ops need A at least 2-D; a single vector is a batch of one row.
    x2 = x[None] if x.ndim == 1 else x
    # Under `partition` the global absmaxes are combined over the split mesh axes, and
    # the output gradient's blocks over the model axis (which splits its columns).
    part = current_partition()
    axes = () if part is None else part.split_axes()
    model = part.model_axis if part is not None and part.model_axis in axes else None
    y = op(
        x2,
        kernel,
        fw,
        bw,
        bsz=spec.bsz,
        bsz2=spec.bsz2,
        gemm=spec.gemm,
        implementation=spec.implementation,
        axis_names=axes or None,
        feature_axis_names=model,
    )
    y = y[0] if x.ndim == 1 else y
    if bias is not None:
        # Added exactly as flax's Dense adds it, so injection and layers agree.
        y = y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
    return y, None


def _switchback_product(op, spec: QuantSpec, x, kernel, bias, int8_state):
    # switchback_bnb wants the Linear layout [out, in]; XLA fuses the transpose.
    w = None if kernel is None or int8_state is not None else kernel.T
    # Under `partition` with the batch split, outlier columns are combined over its axis.
    part = current_partition()
    batch = part.batch_axis if part is not None and part.size(part.batch_axis) > 1 else None
    y, cols = op(
        x,
        w,
        state=int8_state,
        threshold=spec.threshold,
        bias=bias,
        outlier_capacity=spec.outlier_capacity,
        return_outliers=True,
        implementation=spec.implementation,
        axis_names=batch if spec.threshold > 0 else None,
    )
    return y, (cols if spec.threshold > 0 else None)


def _prepare_switchback(spec: QuantSpec, kernel):
    state = ops.prepare_int8_weight(kernel.T, spec.threshold, implementation=spec.implementation)
    return state.CB, state.SCB


def _paper_kind(*, vectorwise: bool, mem_efficient: bool) -> LayerKind:
    """The row of a `switchback_linear` kind (the SwitchBack paper's layer)."""

    def product(op, spec: QuantSpec, x, kernel, bias, int8_state):
        # The Dense kernel [in, out] is used as it is (weight_layout="dense"); int8
        # inference weights come as the state, CB [out, in].
        w, layout = (kernel, "dense") if int8_state is None else (int8_state, "linear")
        # Under `partition` with the output features split, the statistics spanning them
        # (W's absmax, the gradient's rows) are combined over the model axis in the op.
        part = current_partition()
        model = part.model_axis if part is not None and part.size(part.model_axis) > 1 else None
        y = op(
            x,
            w,
            bias,
            vector_wise_quantization=vectorwise,
            mem_efficient=mem_efficient,
            weight_layout=layout,
            implementation=spec.implementation,
            axis_names=model,
        )
        return y, None

    def prepare(spec: QuantSpec, kernel):
        state = ops.prepare_switchback_weight(
            kernel.T, vector_wise_quantization=vectorwise, implementation=spec.implementation
        )
        return state.CB, state.SCB

    return LayerKind(("implementation",), ops.switchback_linear, product, _splits_exactly, prepare)


def _splits_exactly(spec: QuantSpec, part: Partition, x, kernel) -> None:
    """The `split_problem` of every kind today: none, each splits exactly.

    What a statistic spans across shards is combined inside the ops. fp8_mixed: blocks
    of A or of the output gradient spanning shards take their absmax across them
    (split_block_absmax), B's absmax is a pmax. fp8_global: every absmax a pmax over the
    split axes. switchback: weight rows per output feature, A per row, outlier columns
    combined over the batch axis. The paper's kinds: X per row; W's absmax, the
    vectorwise input gradient's per-input-feature weight absmax and the gradient's row
    absmax pmaxed over the model axis (int8 inference weights carry fixed scales).
    """
    return None


_FP8_OPTIONS = ("fw_code", "bw_code", "bsz", "bsz2", "gemm", "implementation")

Kind = Literal[
    "fp8_mixed",
    "fp8_global",
    "switchback",
    "switchback_global",
    "switchback_vectorwise",
    "switchback_global_mem_efficient",
]
KIND_TABLE: Mapping[str, LayerKind] = MappingProxyType(
    {
        "fp8_mixed": LayerKind(_FP8_OPTIONS, ops.matmul_fp8_mixed, _fp8_product, _splits_exactly),
        "fp8_global": LayerKind(_FP8_OPTIONS, ops.matmul_fp8_global, _fp8_product, _splits_exactly),
        "switchback": LayerKind(
            ("threshold", "outlier_capacity", "implementation"),
            ops.switchback_bnb,
            _switchback_product,
            _splits_exactly,
            _prepare_switchback,
        ),
        "switchback_global": _paper_kind(vectorwise=False, mem_efficient=False),
        "switchback_vectorwise": _paper_kind(vectorwise=True, mem_efficient=False),
        "switchback_global_mem_efficient": _paper_kind(vectorwise=False, mem_efficient=True),
    }
)
if set(typing.get_args(Kind)) != set(KIND_TABLE):  # pragma: no cover - a developer's slip
    raise ImportError(f"Kind {typing.get_args(Kind)} and KIND_TABLE {tuple(KIND_TABLE)} differ")
KINDS: tuple[str, ...] = tuple(KIND_TABLE)
# The quantization options that mean something for each kind (QuantSpec fields besides kind).
OPTIONS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {kind: row.options for kind, row in KIND_TABLE.items()}
)
INT8_KINDS = tuple(kind for kind, row in KIND_TABLE.items() if row.int8_weights)

# --- Argument checks --------------------------------------------------------------------------


def check_kind(kind: Any) -> str:
    """`kind` if it names a layer kind; TypeError/ValueError listing `KINDS` otherwise."""
    if not isinstance(kind, str):
        raise TypeError(f"kind must be one of {KINDS}, got {kind!r} ({type(kind).__name__})")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return kind


def check_options(where: str, kind: str, options: Mapping[str, Any]) -> None:
    """TypeError naming the keyword arguments that are not quantization options of `kind`."""
    unknown = sorted(set(options) - set(OPTIONS[kind]))
    if not unknown:
        return
    # Say when an option belongs to another kind: the usual slip is threshold= on an fp8 kind.
    other = sorted({k for name in unknown for k in KINDS if name in OPTIONS[k]} - {kind})
    hint = f" ({' and '.join(map(repr, other))} options)" if other else ""
    raise TypeError(
        f"{where}: unexpected argument(s) {', '.join(map(repr, unknown))}{hint} for kind "
        f"{kind!r}; its options are {', '.join(OPTIONS[kind])}"
    )


def check_callable(name: str, value: Any) -> None:
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be callable or None, got {value!r}")


def check_features(name: str, value: Any) -> int:
    """A positive int feature count (bool is not one, though Python says it is an int)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def check_dtype_arg(name: str, value: Any, *, allow_none: bool) -> None:
    """A dtype the ops can compute in (float32/float16/bfloat16, or float64 without x64)."""
    if value is None and allow_none:
        return
    try:
        dt = jax.dtypes.canonicalize_dtype(np.dtype(value))
    except TypeError:
        raise TypeError(f"{name} must be a dtype, got {value!r}") from None
    if np.dtype(dt) not in _checks.FLOAT_DTYPES:
        raise ValueError(f"{name} must be float32, float16 or bfloat16, got {np.dtype(dt).name}")


def check_layer_args(
    features: Mapping[str, Any],
    *,
    use_bias: Any,
    dtype: Any,
    param_dtype: Any,
    initializers: Mapping[str, Any],
    preferred_element_type: Any = None,
) -> None:
    """The nn.Dense / nnx.Linear arguments of a layer, checked when it is built."""
    for name, value in features.items():
        check_features(name, value)
    _checks.check_bool("use_bias", use_bias)
    check_dtype_arg("dtype", dtype, allow_none=True)
    check_dtype_arg("param_dtype", param_dtype, allow_none=False)
    check_dtype_arg("preferred_element_type", preferred_element_type, allow_none=True)
    for name, fn in initializers.items():
        if not callable(fn):
            raise TypeError(f"{name} must be callable, got {fn!r}")


def check_code_option(name: str, code: Any) -> Any:
    """None (the kind's default code) or a float32 [256] code (`_checks.as_code`)."""
    if code is None:
        return None
    if not isinstance(code, (list, tuple)) and not (
        hasattr(code, "shape") and hasattr(code, "dtype")
    ):
        raise TypeError(f"{name} must be a float32 array of shape (256,) or None, got {code!r}")
    return _checks.as_code(code, name)


def _check_block(name: str, value: Any) -> int:
    if not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, np.integer)):
        if value == -1:
            return -1
    return _checks.check_blocksize(value, name, auto=True)


def _check_capacity(name: str, cap: Any) -> int | None:
    if cap is not None and (
        isinstance(cap, (bool, np.bool_)) or not isinstance(cap, (int, np.integer)) or cap < 1
    ):
        raise ValueError(f"{name} must be a positive int or None, got {cap!r}")
    return None if cap is None else int(cap)


Gemm = Literal["emulated", "native"]
GEMMS: tuple[str, ...] = typing.get_args(Gemm)


def _check_gemm(name: str, value: Any) -> str:
    """'emulated' or 'native': how the fp8 kinds multiply (the op checks it again)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {GEMMS}, got {value!r} ({type(value).__name__})")
    if value not in GEMMS:
        raise ValueError(f"{name} must be one of {GEMMS}, got {value!r}")
    return value


def _check_implementation(name: str, value: Any) -> Impl:
    """As `_checks.check_implementation`; a list becomes a tuple (layer attributes hash)."""
    _checks.check_implementation(value)
    return value if value is None or isinstance(value, str) else tuple(value)


# Each QuantSpec option's check: (name, value) -> the normalized value, or raise.
_OPTION_CHECKS: Mapping[str, Callable[[str, Any], Any]] = MappingProxyType(
    {
        "fw_code": check_code_option,
        "bw_code": check_code_option,
        "bsz": _check_block,
        "bsz2": _check_block,
        "gemm": _check_gemm,
        "threshold": lambda name, value: _checks.check_threshold(value, name),
        "outlier_capacity": _check_capacity,
        "implementation": _check_implementation,
    }
)

# --- QuantSpec --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class QuantSpec:
    """Quantization options of one dense product.

    Every option is validated on construction; an option that means nothing for
    `kind` (e.g. a threshold for an fp8 kind, a code for SwitchBack) raises
    ValueError unless it has its default value. Specs compare (and hash) by value,
    codes by their contents.

    Attributes:
      kind: "fp8_mixed", "fp8_global", "switchback" (`switchback_bnb`), or the
        SwitchBack paper's "switchback_global", "switchback_vectorwise",
        "switchback_global_mem_efficient" (`switchback_linear`) (`KINDS`).
      fw_code: float32 [256] forward code; None for e4m3 (bitsandbytes' LinearFP8*).
      bw_code: float32 [256] backward code; None for e5m2.
      bsz: forward block size; -1 for `fp8mm.get_block_sizes`.
      bsz2: backward block size; -1 for `fp8mm.get_block_sizes`.
      gemm: fp8 kinds: "emulated" (quantize, dequantize to 16 bit, 16-bit GEMM:
        bitsandbytes' numbers) or "native" (the same codes multiplied on FP8
        tensor cores as float8_e4m3fn/e5m2 with float32 scales; needs the default
        e4m3/e5m2 codes, other codes raise NotImplementedError when called; see
        docs/exactness.md). Keyword-only, so the positional order is unchanged.
      threshold: SwitchBack outlier threshold (0 disables the decomposition).
      outlier_capacity: SwitchBack outlier slots under jit (None: the op's default).
      implementation: None, "xla", "pallas", a kernel name or a sequence of these
        (see `fp8mm.dispatch`; a list is kept as a tuple).
    """

    kind: Kind
    fw_code: Any = None
    bw_code: Any = None
    bsz: int = -1
    bsz2: int = -1
    gemm: Gemm = dataclasses.field(default="emulated", kw_only=True)
    threshold: float = 0.0
    outlier_capacity: int | None = None
    implementation: Impl = None

    def __post_init__(self):
        check_kind(self.kind)
        fix = functools.partial(object.__setattr__, self)
        for name, check in _OPTION_CHECKS.items():
            fix(name, check(name, getattr(self, name)))
        for name, default in OPTION_DEFAULTS.items():
            if name in OPTIONS[self.kind]:
                continue
            value = getattr(self, name)
            # (codes are arrays: compare them with None by identity, never elementwise)
            if (value is not None) if default is None else (value != default):
                raise ValueError(
                    f"{name}={_short(value)} means nothing for kind {self.kind!r}; "
                    f"its options are {', '.join(OPTIONS[self.kind])}"
                )

    @classmethod
    def of(cls, kind: str, layer: Any, unwrap: Callable[[Any], Any] = lambda v: v) -> QuantSpec:
        """The spec of a `kind` layer: its attributes named by `OPTIONS[kind]`, unwrapped."""
        return cls(kind, **{name: unwrap(getattr(layer, name)) for name in OPTIONS[kind]})

    def _key(self) -> tuple:
        return tuple(_value_key(getattr(self, f.name)) for f in dataclasses.fields(self))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, QuantSpec) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def codes(self) -> tuple[Any, Any]:
        """(fw, bw) float32 [256], the defaults for None: NumPy arrays when concrete.

        Host arrays, because `jnp.asarray` of a constant is a tracer under jit and
        gemm="native" must read the codes at trace time.
        """
        fw = e4m3_code() if self.fw_code is None else self.fw_code
        bw = e5m2_code() if self.bw_code is None else self.bw_code
        return _code_array(fw), _code_array(bw)


# Every option and its default (QuantSpec's field defaults): the layers' defaults too.
OPTION_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {f.name: f.default for f in dataclasses.fields(QuantSpec) if f.name != "kind"}
)
if set(OPTION_DEFAULTS) != set(_OPTION_CHECKS):  # pragma: no cover - a developer's slip
    raise ImportError("every QuantSpec option needs its check in _OPTION_CHECKS")


def _code_array(code: Any) -> Any:
    host = _host.concrete_float32(code)
    return jnp.asarray(code, jnp.float32) if host is None else host


def _value_key(value: Any) -> Any:
    """A hashable stand-in: codes (arrays) by their bytes, or by identity while traced."""
    if not (hasattr(value, "shape") and hasattr(value, "dtype")):
        return value
    host = _host.concrete_float32(value)
    return host.tobytes() if host is not None else id(value)


def _short(value: Any) -> str:
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"<{value.dtype} array {tuple(value.shape)}>"
    return repr(value)


def check_layer_options(
    layers: Iterable[type], declared: Callable[[type], Mapping[str, Any]]
) -> dict[str, type]:
    """`{kind: class}` for one flax API's layer classes (each with `_KIND`), checked.

    Every kind needs a class, and `declared(cls)` (the option attributes the class
    declares, name -> default) must be the kind's `OPTIONS` with `OPTION_DEFAULTS`:
    layers mirror their signatures from the table, and this keeps them in step.
    """
    table = {cls._KIND: cls for cls in layers}  # type: ignore[attr-defined]
    if set(table) != set(KINDS):
        raise ImportError(f"layer classes for kinds {sorted(table)}; KIND_TABLE has {KINDS}")
    for kind, cls in table.items():
        want = {name: OPTION_DEFAULTS[name] for name in OPTIONS[kind]}
        got = dict(declared(cls))
        if got != want:
            raise ImportError(f"{cls.__name__} declares options {got}; KIND_TABLE wants {want}")
    return table


def int8_weight_state(spec: QuantSpec, cb: jax.Array, scb: jax.Array) -> MatmulLtState:
    """The `MatmulLtState` of a layer holding int8 inference weights CB [out, in], SCB [out]."""
    return MatmulLtState(threshold=spec.threshold, has_fp16_weights=False, CB=cb, SCB=scb)
