"""The one quantized dense product every fp8mm layer, factory and interceptor runs.

`QuantSpec` holds the quantization options of a layer (which op, codes, block
sizes, threshold, implementation); `quantized_dense(spec, x, kernel, bias)`
computes `x @ kernel (+ bias)` with the Dense kernel layout [in, out] through
the custom-VJP ops of `fp8mm.ops`. Keeping this in one place is what makes the
dedicated layers, the `dot_general` factories and the model conversions give
the same numbers.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from fp8mm import _checks, _host, ops
from fp8mm.codebooks import e4m3_code, e5m2_code
from fp8mm.dispatch import Impl
from fp8mm.nn.sharding import P, Partition, current_partition, shard_map
from fp8mm.state import MatmulLtState

__all__ = ["KINDS", "OPTIONS", "Kind", "QuantSpec", "make_dot_general", "quantized_dense"]

Kind = Literal["fp8_mixed", "fp8_global", "switchback"]
KINDS: tuple[str, ...] = ("fp8_mixed", "fp8_global", "switchback")
_FP8_OPTIONS = ("fw_code", "bw_code", "bsz", "bsz2", "implementation")
# The quantization options that mean something for each kind (QuantSpec fields besides kind).
OPTIONS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "fp8_mixed": _FP8_OPTIONS,
        "fp8_global": _FP8_OPTIONS,
        "switchback": ("threshold", "outlier_capacity", "implementation"),
    }
)
_IMPLEMENTATIONS = (None, "xla", "pallas")


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


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


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


def _check_code(name: str, code: Any) -> Any:
    if code is None:
        return None
    if isinstance(code, (list, tuple)):
        code = np.asarray(code, np.float32)
    elif isinstance(code, np.ndarray):
        # As the ops do: numpy float64 (the numpy default) is float32 without jax x64.
        code = np.asarray(code, jax.dtypes.canonicalize_dtype(code.dtype))
    if not hasattr(code, "shape") or not hasattr(code, "dtype"):
        raise TypeError(f"{name} must be a float32 array of shape (256,) or None, got {code!r}")
    if tuple(code.shape) != (256,):
        raise ValueError(f"{name} must have shape (256,), got {tuple(code.shape)}")
    if np.dtype(code.dtype) != np.float32:
        raise TypeError(f"{name} must be float32, got dtype {code.dtype}")
    host = _host.concrete_float32(code)  # None under a trace: the op checks it then
    if host is not None and not np.all(np.isfinite(host)):
        bad = int(np.flatnonzero(~np.isfinite(host))[0])
        raise ValueError(f"{name} must be finite, got {host[bad]} at index {bad}")
    return code


def _check_block(name: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value != -1 and value not in _checks.VALID_BLOCKSIZES:
        raise ValueError(
            f"{name} must be -1 (automatic) or a power of two in [32, 4096], got {value!r}"
        )
    return int(value)


def _code_key(code: Any) -> Any:
    host = None if code is None else _host.concrete_float32(code)
    return None if code is None else (host.tobytes() if host is not None else id(code))


@dataclasses.dataclass(frozen=True, eq=False)
class QuantSpec:
    """Quantization options of one dense product.

    Every option is validated on construction; an option that means nothing for
    `kind` (e.g. a threshold for an fp8 kind, a code for SwitchBack) raises
    ValueError unless it has its default value. Specs compare (and hash) by value,
    codes by their contents.

    Attributes:
      kind: "fp8_mixed", "fp8_global" or "switchback".
      fw_code: float32 [256] forward code; None for e4m3 (bitsandbytes' LinearFP8*).
      bw_code: float32 [256] backward code; None for e5m2.
      bsz: forward block size; -1 for `fp8mm.get_block_sizes`.
      bsz2: backward block size; -1 for `fp8mm.get_block_sizes`.
      threshold: SwitchBack outlier threshold (0 disables the decomposition).
      outlier_capacity: SwitchBack outlier slots under jit (None: the op's default).
      implementation: None, "xla" or "pallas" (see `fp8mm.dispatch`).
    """

    kind: Kind
    fw_code: Any = None
    bw_code: Any = None
    bsz: int = -1
    bsz2: int = -1
    threshold: float = 0.0
    outlier_capacity: int | None = None
    implementation: Impl = None

    def __post_init__(self):
        check_kind(self.kind)
        fix = functools.partial(object.__setattr__, self)
        fix("fw_code", _check_code("fw_code", self.fw_code))
        fix("bw_code", _check_code("bw_code", self.bw_code))
        fix("bsz", _check_block("bsz", self.bsz))
        fix("bsz2", _check_block("bsz2", self.bsz2))
        # float() would take True and "6.0"; neither is a threshold anyone means.
        if isinstance(self.threshold, (bool, np.bool_, str, bytes)):
            raise TypeError(f"threshold must be a number, got {self.threshold!r}")
        fix("threshold", _checks.check_threshold(self.threshold))
        cap = self.outlier_capacity
        if cap is not None and (
            isinstance(cap, (bool, np.bool_)) or not isinstance(cap, (int, np.integer)) or cap < 1
        ):
            raise ValueError(f"outlier_capacity must be a positive int or None, got {cap!r}")
        if not isinstance(self.implementation, (str, type(None))) or (
            self.implementation not in _IMPLEMENTATIONS
        ):
            raise ValueError(
                f"implementation must be None, 'xla' or 'pallas', got {self.implementation!r}"
            )
        for f in dataclasses.fields(self):
            if f.name == "kind" or f.name in OPTIONS[self.kind]:
                continue
            value = getattr(self, f.name)
            # (codes are arrays: compare them with None by identity, never elementwise)
            if (value is not None) if f.default is None else (value != f.default):
                raise ValueError(
                    f"{f.name}={_short(value)} means nothing for kind {self.kind!r}; "
                    f"its options are {', '.join(OPTIONS[self.kind])}"
                )

    def _key(self) -> tuple:
        return (
            self.kind,
            _code_key(self.fw_code),
            _code_key(self.bw_code),
            self.bsz,
            self.bsz2,
            self.threshold,
            self.outlier_capacity,
            self.implementation,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, QuantSpec) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def codes(self) -> tuple[jax.Array, jax.Array]:
        fw = e4m3_code() if self.fw_code is None else self.fw_code
        bw = e5m2_code() if self.bw_code is None else self.bw_code
        return jnp.asarray(fw, jnp.float32), jnp.asarray(bw, jnp.float32)


def _short(value: Any) -> str:
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"<{value.dtype} array {tuple(value.shape)}>"
    return repr(value)


def _threshold(spec: QuantSpec, int8_state: MatmulLtState | None) -> float:
    """The outlier threshold switchback_bnb uses: spec's, else (when 0) the int8 state's."""
    if spec.threshold or int8_state is None:
        return spec.threshold
    return int8_state.threshold


def quantized_dense(
    spec: QuantSpec,
    x: jax.Array,
    kernel: jax.Array | None,
    bias: jax.Array | None = None,
    *,
    int8_state: MatmulLtState | None = None,
) -> tuple[jax.Array, jax.Array | None]:
    """`x @ kernel + bias` through the quantized op named by `spec.kind`.

    Args:
      spec: quantization options.
      x: float [..., in], already cast to the computation dtype.
      kernel: float [in, out] (Dense layout), same dtype as `x`; may be None for
        SwitchBack with an int8 inference weight in `int8_state`.
      bias: optional float [out].
      int8_state: SwitchBack only: a `MatmulLtState(has_fp16_weights=False)`
        holding the int8 weight CB [out, in] and its scales SCB [out].

    Returns:
      (y [..., out] in x's dtype, outlier column mask bool [in] or None). The
      mask is returned for SwitchBack with threshold > 0 only.
    """
    if not isinstance(spec, QuantSpec):
        raise TypeError(f"spec must be a QuantSpec, got {type(spec).__name__}")
    _check_operands(spec, x, kernel, bias, int8_state)
    part = current_partition()
    if part is not None and part.size(part.batch_axis) * part.size(part.model_axis) > 1:
        return _partitioned(spec, part, x, kernel, bias, int8_state)
    return _local(spec, x, kernel, bias, int8_state)


def _check_operands(spec: QuantSpec, x, kernel, bias, int8_state) -> None:
    # Checked here, under the layer's names, so that a wrong shape is not reported
    # later by an op in its own terms (A, B, state.CB) or by XLA.
    _checks.check_float("x", x)
    _checks.check_min_ndim("x", x, 1)
    if int8_state is not None:
        if spec.kind != "switchback":
            raise ValueError(f"int8_state is for kind 'switchback' only, not {spec.kind!r}")
        if not isinstance(int8_state, MatmulLtState):
            raise TypeError(
                f"int8_state must be a MatmulLtState or None, got {type(int8_state).__name__}"
            )
        if int8_state.CB is None:
            raise ValueError("int8_state must hold the int8 weight CB and its scales SCB")
        n, k = int8_state.CB.shape[0], int8_state.CB.shape[-1]
        what = f"int8 weight CB {tuple(int8_state.CB.shape)} ([out, in])"
    elif kernel is None:
        raise ValueError(f"kind {spec.kind!r} needs the float kernel, got kernel=None")
    else:
        _checks.check_float("kernel", kernel)
        _checks.check_ndim("kernel", kernel, 2)
        k, n = kernel.shape
        what = f"kernel {tuple(kernel.shape)} ([in, out])"
    if x.shape[-1] != k:
        raise ValueError(f"x has {x.shape[-1]} input features (shape {tuple(x.shape)}); {what}")
    if bias is not None:
        _checks.check_float("bias", bias)
        if tuple(bias.shape) != (n,):
            raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")


def _local(spec, x, kernel, bias, int8_state):
    if spec.kind == "switchback":
        # switchback_bnb wants the Linear layout [out, in]; XLA fuses the transpose.
        w = None if kernel is None else kernel.T
        y, cols = ops.switchback_bnb(
            x,
            w if int8_state is None else None,
            int8_state,
            spec.threshold,
            bias,
            outlier_capacity=spec.outlier_capacity,
            return_outliers=True,
            implementation=spec.implementation,
        )
        return y, (cols if _threshold(spec, int8_state) > 0 else None)
    fw, bw = spec.codes()
    op = ops.matmul_fp8_mixed if spec.kind == "fp8_mixed" else ops.matmul_fp8_global
    # The ops need A at least 2-D; a single vector is a batch of one row.
    x2 = x[None] if x.ndim == 1 else x
    y = op(x2, kernel, fw, bw, spec.bsz, spec.bsz2, implementation=spec.implementation)
    y = y[0] if x.ndim == 1 else y
    if bias is not None:
        # Added exactly as flax's Dense adds it, so injection and layers agree.
        y = y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
    return y, None


def make_dot_general(spec: QuantSpec):
    """A `dot_general` replacement running `spec`'s quantized op, for nn.Dense / nnx.Linear.

    The callable accepts `(lhs, rhs, dimension_numbers, precision=None,
    preferred_element_type=None, **kwargs)` as flax calls it and supports the
    contraction Dense uses: lhs's last axis with rhs's first, rhs 2-D, no batch
    dimensions. `precision` is ignored: the ops fix their own precision
    (float32 products use HIGHEST). The bias stays with the caller (flax adds
    it after the product), and SwitchBack outlier masks cannot be sown from here.
    """
    if not isinstance(spec, QuantSpec):
        raise TypeError(f"spec must be a QuantSpec, got {type(spec).__name__}")

    def dot_general(
        lhs: jax.Array,
        rhs: jax.Array,
        dimension_numbers,
        precision=None,
        preferred_element_type=None,
        **kwargs,
    ) -> jax.Array:
        del precision  # the ops choose their precision; see the docstring
        out_sharding = kwargs.pop("out_sharding", None)
        if kwargs:
            raise TypeError(f"fp8mm dot_general got unexpected arguments {sorted(kwargs)}")
        (lc, rc), (lb, rb) = dimension_numbers
        if (
            tuple(lb) or tuple(rb) or tuple(lc) != (lhs.ndim - 1,) or tuple(rc) != (0,)
        ) or rhs.ndim != 2:
            raise NotImplementedError(
                "fp8mm dot_general supports only the nn.Dense contraction "
                "(lhs last axis with the first axis of a 2-D rhs, no batch dimensions); got "
                f"dimension_numbers={dimension_numbers} for lhs {lhs.shape} and rhs {rhs.shape}"
            )
        del out_sharding  # shardings propagate through the op (see fp8mm.nn.sharding)
        dtype = jnp.result_type(lhs, rhs)
        y, _ = quantized_dense(spec, lhs.astype(dtype), rhs.astype(dtype))
        if preferred_element_type is not None:
            y = y.astype(preferred_element_type)
        return y

    dot_general.spec = spec  # type: ignore[attr-defined]  # lets users inspect the options
    return dot_general


def _check_exact(spec: QuantSpec, part: Partition, x: jax.Array, kernel, int8_state) -> None:
    """Raises unless per-shard quantization equals the global one (see fp8mm.nn.sharding)."""
    nb, nm = part.size(part.batch_axis), part.size(part.model_axis)
    n = int8_state.CB.shape[0] if kernel is None else kernel.shape[1]
    why = None
    if x.ndim < 2 or x.shape[0] % nb or n % nm:
        why = f"x {x.shape} / {n} output features do not divide over the mesh ({nb}, {nm})"
    elif spec.kind == "switchback":
        if nb > 1 and _threshold(spec, int8_state) > 0:
            why = "outlier columns are found over all rows; a batch shard sees only its own"
    elif spec.kind == "fp8_global" or nm > 1:
        why = "global (whole-tensor) absmax needs a cross-device max inside the op"
    else:  # fp8_mixed on the batch axis: blocks of the flattened rows must not straddle shards
        bsz, bsz2 = ops.get_block_sizes(x, kernel)
        bsz = bsz if spec.bsz == -1 else spec.bsz
        bsz2 = bsz2 if spec.bsz2 == -1 else spec.bsz2
        rows = int(np.prod(x.shape[:-1])) // nb
        if (rows * x.shape[-1]) % bsz or (rows * n) % bsz2:
            why = f"blocks of {bsz}/{bsz2} elements straddle the batch shards ({rows} rows each)"
    if why:
        raise NotImplementedError(
            f"fp8mm.nn.sharding.partition cannot split {spec.kind} exactly: {why}. "
            "Run it without `partition` (GSPMD, XLA path) instead."
        )


def _partitioned(spec, part: Partition, x, kernel, bias, int8_state):
    """`_local` inside shard_map: each device quantizes and multiplies its own shard."""
    _check_exact(spec, part, x, kernel, int8_state)
    b, m = part.batch_axis, part.model_axis
    rest = (None,) * (x.ndim - 1)
    args = (x, kernel, bias, int8_state)
    specs = (
        P(b, *rest),
        None if kernel is None else P(None, m),
        None if bias is None else P(m),
        None if int8_state is None else dataclasses.replace(int8_state, CB=P(m, None), SCB=P(m)),
    )
    out_specs = (P(b, *rest[:-1], m), P() if _threshold(spec, int8_state) > 0 else None)

    axes = tuple(a for a in (b, m) if a is not None)

    def body(*args):
        # Make every operand device-varying first: the custom VJPs return cotangents as
        # varying as their inputs, and the transpose of this cast is the psum that
        # sums, e.g., the weight gradient over the batch shards.
        x, kernel, bias, int8_state = jax.tree.map(lambda a: _vary(a, axes), args)
        return _local(spec, x, kernel, bias, int8_state)

    return shard_map(body, mesh=part.mesh, in_specs=specs, out_specs=out_specs)(*args)


def _vary(a: jax.Array, axes: tuple[str, ...]) -> jax.Array:
    aval = jax.typeof(a)
    mat = getattr(aval, "manual_axis_type", None)  # JAX 0.10; earlier versions: aval.vma
    have = mat.varying if mat is not None else getattr(aval, "vma", frozenset())
    missing = tuple(ax for ax in axes if ax not in have)
    if not missing:
        return a
    if hasattr(jax.lax, "pcast"):
        return jax.lax.pcast(a, missing, to="varying")
    return jax.lax.pvary(a, missing)  # JAX < 0.8
