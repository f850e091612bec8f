"""Quantized matmuls with custom VJPs: bitsandbytes' research autograd functions.

* `matmul_fp8_mixed`: simulated-FP8 matmul, activations blockwise-quantized
  and the weight globally quantized in the forward pass; the output gradient
  blockwise-quantized with the backward code for gradA, while gradB is the
  plain 16-bit Aᵀ·grad.
* `matmul_fp8_global`: the same with global quantization everywhere, and gradB
  = Q(Aᵀ)·Q_bw(grad).
* `switchback_bnb`: SwitchBack int8 matmul: int8 forward (row-wise quantized
  activations and weight, optional 16-bit outlier columns), 16-bit weight
  gradient ("switch back") and gradA through the dequantized int8 weight.

The forward products and the asymmetric backward passes reproduce
bitsandbytes 0.49.2 on CUDA (docs/exactness.md). Every cotangent has its primal's
shape and dtype; codebooks receive zero cotangents. The quantization
primitives run through `fp8mm.functional`, so on a GPU they use the Pallas
kernels by default (`implementation=` overrides, see `fp8mm.dispatch`).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from fp8mm import _checks, _host, dispatch
from fp8mm import functional as F
from fp8mm.dispatch import Impl
from fp8mm.state import MatmulLtState

__all__ = [
    "get_block_sizes",
    "matmul_fp8_global",
    "matmul_fp8_mixed",
    "prepare_int8_weight",
    "switchback_bnb",
]

_BLOCK_STEPS = (4096, 2048, 1024, 512, 256, 128, 64, 0)


def _block_size_for(features: int) -> int:
    for size, lower in itertools.pairwise(_BLOCK_STEPS):
        if features > lower:
            return size
    return 1024  # bitsandbytes' default, reached only for 0 features


def _shape(x, name: str) -> tuple[int, ...]:
    if hasattr(x, "shape"):
        shape = x.shape
    elif isinstance(x, (tuple, list)):
        shape = x
    else:
        raise TypeError(f"{name} must be an array or a shape tuple, got {x!r}")
    if not all(
        isinstance(s, (int, np.integer)) and not isinstance(s, (bool, np.bool_)) and s >= 0
        for s in shape
    ):
        raise TypeError(f"{name} must have a shape of non-negative ints, got {tuple(shape)!r}")
    return tuple(int(s) for s in shape)


def get_block_sizes(input_matrix, weight_matrix) -> tuple[int, int]:
    """Block sizes (bsz, bsz2) bitsandbytes picks for the forward and backward quantization.

    in = input_matrix.shape[-1]; out = weight_matrix.shape[0] if
    weight_matrix.shape[1] == in else weight_matrix.shape[1]; each becomes the
    smallest of {64, 128, ..., 4096} that is >= it (4096 for anything larger).
    Unlike bitsandbytes, a weight with neither axis equal to `in` is refused
    rather than silently read as [in, out].

    Args:
      input_matrix: array or shape [..., in].
      weight_matrix: array or shape [in, out] or [out, in].

    Returns:
      (bsz, bsz2): block sizes for the activations and the output gradient.
    """
    a = _shape(input_matrix, "input_matrix")
    b = _shape(weight_matrix, "weight_matrix")
    if len(a) < 1 or len(b) != 2:
        raise ValueError(f"get_block_sizes needs A [..., in] and a 2-D weight, got {a} and {b}")
    n_in = a[-1]
    if n_in not in b:
        raise ValueError(
            f"the weight {b} has no axis of the input's {n_in} features (input shape {a}); "
            "pass the weight as [in, out] or [out, in]"
        )
    n_out = b[0] if b[1] == n_in else b[1]
    return _block_size_for(n_in), _block_size_for(n_out)


# ----------------------------------------------------------------------------- helpers


def _matmul(a: jax.Array, b: jax.Array, contract: tuple[int, int], out_dtype) -> jax.Array:
    """2-D product accumulated in float32 and rounded once to out_dtype.

    float32 operands use Precision.HIGHEST: the default GPU precision for
    float32 dots is TF32-like and misses bitsandbytes' true float32 products.
    """
    dn = (((contract[0],), (contract[1],)), ((), ()))
    out_dtype = jnp.dtype(out_dtype)
    if _host.platform() == "cpu":
        # XLA's CPU runtime lacks some 16-bit x 16-bit -> float32 dot kernels; float32
        # operands give the same products (16-bit values multiply exactly in float32).
        a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    elif a.dtype == b.dtype == out_dtype and out_dtype.itemsize == 2:
        # A 16-bit GEMM accumulates in float32 and rounds once, like torch's; asking
        # XLA for float32 would write (and keep) a float32 product twice the size.
        return jax.lax.dot_general(a, b, dn, preferred_element_type=out_dtype)
    out = jax.lax.dot_general(
        a, b, dn, precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32
    )
    return out.astype(out_dtype)


def _as_2d(x: jax.Array) -> jax.Array:
    return x.reshape(int(np.prod(x.shape[:-1])), x.shape[-1])


def _check_fp8_args(A, B, fw_code, bw_code, bsz, bsz2, implementation) -> tuple:
    """Validated (fw_code, bw_code, bsz, bsz2): codes as arrays (None: the dynamic map)."""
    _checks.check_float("A", A)
    _checks.check_float("B", B)
    _checks.check_min_ndim("A", A, 2)
    _checks.check_ndim("B", B, 2)
    if A.shape[-1] != B.shape[0]:
        raise ValueError(
            f"inner dimensions differ: A is {tuple(A.shape)} and B is {tuple(B.shape)}; "
            "B must be [in, out] with in == A.shape[-1]"
        )
    fw_code = _checks.as_code(fw_code, "fw_code")
    bw_code = _checks.as_code(bw_code, "bw_code")
    _checks.check_implementation(implementation)
    # Checked before the comparison with -1: a traced block size would fail it obscurely.
    _checks.check_static("bsz", bsz, "int")
    _checks.check_static("bsz2", bsz2, "int")
    auto = get_block_sizes(A, B)
    bsz = auto[0] if _is_auto(bsz) else _checks.check_blocksize(bsz, "bsz", auto=True)
    bsz2 = auto[1] if _is_auto(bsz2) else _checks.check_blocksize(bsz2, "bsz2", auto=True)
    return fw_code, bw_code, bsz, bsz2


def _is_auto(size) -> bool:
    # Only the int -1 means automatic (not -1.0 or a bool).
    return isinstance(size, (int, np.integer)) and not isinstance(size, bool) and size == -1


def _resolved(implementation: Impl) -> Impl:
    """implementation, with None made the current default (`fp8mm.use_implementation`).

    The config is a static argument of the jitted ops; resolving the default
    here keeps an eager call inside `use_implementation(...)` from reusing a
    program compiled under another default.
    """
    return dispatch.default_implementation() if implementation is None else implementation


@dataclasses.dataclass(frozen=True, eq=False)
class _HostCode:
    """A concrete codebook carried in the static config.

    Inside the custom VJP the code arguments are tracers; handing the
    quantizers this host copy instead lets the Pallas kernels build their
    lookup table once per codebook rather than in every traced program.
    """

    value: np.ndarray

    def __hash__(self) -> int:
        return hash(self.value.tobytes())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _HostCode) and self.value.tobytes() == other.value.tobytes()


def _host_code(code) -> _HostCode | None:
    value = _host.concrete_float32(code)
    return None if value is None else _HostCode(value)


@dataclasses.dataclass(frozen=True)
class _Fp8Config:
    bsz: int
    bsz2: int
    implementation: Impl
    fw_host: _HostCode | None = None
    bw_host: _HostCode | None = None

    def codes(self, fw_code: jax.Array, bw_code: jax.Array) -> tuple:
        """The codes to quantize with: the host copies when the codes were concrete."""
        return (
            fw_code if self.fw_host is None else self.fw_host.value,
            bw_code if self.bw_host is None else self.bw_host.value,
        )

    @classmethod
    def make(cls, bsz, bsz2, implementation, fw_code, bw_code) -> _Fp8Config:
        return cls(bsz, bsz2, _resolved(implementation), _host_code(fw_code), _host_code(bw_code))


# ------------------------------------------------------------------- matmul_fp8_mixed


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _fp8_mixed(A, B, fw_code, bw_code, cfg: _Fp8Config):
    return _fp8_mixed_fwd(A, B, fw_code, bw_code, cfg)[0]


def _fp8_mixed_fwd(A, B, fw_code, bw_code, cfg: _Fp8Config):
    impl = cfg.implementation
    fw, _ = cfg.codes(fw_code, bw_code)
    fp8A = F.fake_quant_blockwise(A, fw, cfg.bsz, implementation=impl)
    fp8B = F.fake_quant_global(B, fw, implementation=impl)
    out = _matmul(_as_2d(fp8A), fp8B.astype(A.dtype), (1, 0), A.dtype)
    out = out.reshape(*A.shape[:-1], B.shape[1])
    # bitsandbytes keeps A itself (gradB is unquantized) and the quantized weight.
    return out, (A, fp8B, fw_code, bw_code)


def _fp8_mixed_bwd(cfg: _Fp8Config, res, g):
    A, fp8B, fw_code, bw_code = res
    # Only the gradient that flows on to earlier layers (gradA) sees the quantized
    # output gradient; the weight gradient uses grad_output and A as they are.
    _, bw = cfg.codes(fw_code, bw_code)
    g8 = F.fake_quant_blockwise(g, bw, cfg.bsz2, implementation=cfg.implementation)
    gradA = _matmul(_as_2d(g8), fp8B.astype(g.dtype), (1, 1), g.dtype)
    # Summing over the flattened leading axes is PyTorch's implicit batch reduction.
    gradB = _matmul(_as_2d(A).astype(g.dtype), _as_2d(g), (0, 0), g.dtype)
    # Products round to grad_output's dtype first, then to each primal's (as torch's .to()).
    gradA = gradA.astype(A.dtype).reshape(A.shape)
    gradB = gradB.astype(fp8B.dtype)
    return gradA, gradB, jnp.zeros_like(fw_code), jnp.zeros_like(bw_code)


_fp8_mixed.defvjp(_fp8_mixed_fwd, _fp8_mixed_bwd)
# Jitted with the (hashable) config static, so eager calls reuse one compiled program
# per shape and config instead of dispatching (and compiling) op by op.


def matmul_fp8_mixed(
    A: jax.Array,
    B: jax.Array,
    fw_code: jax.Array,
    bw_code: jax.Array,
    bsz: int = -1,
    bsz2: int = -1,
    *,
    implementation: Impl = None,
) -> jax.Array:
    """Simulated-FP8 matmul with blockwise activations (bitsandbytes `matmul_fp8_mixed`).

    Forward: QB_fw(A, bsz) @ Q_fw(B), with QB blockwise and Q global
    quantize→dequantize through `fw_code`. Backward: gradA = QB_bw(g, bsz2) @
    Q_fw(B)ᵀ; gradB = Aᵀ @ g, unquantized, summed over A's leading axes.

    Args:
      A: float [..., k] (at least 2-D).
      B: float [k, n].
      fw_code: float32 [256] sorted forward code (bitsandbytes' layers use e4m3);
        None for the dynamic map (`create_dynamic_map()`), as bitsandbytes'
        quantize functions do with code=None.
      bw_code: float32 [256] backward code (e5m2 in the layers); None as above.
      bsz: static forward block size, -1 for `get_block_sizes`.
      bsz2: static backward block size, -1 for `get_block_sizes`.
      implementation: None, "xla" or "pallas" for the quantization primitives.

    Returns:
      [..., n] in A's dtype.
    """
    fw_code, bw_code, bsz, bsz2 = _check_fp8_args(A, B, fw_code, bw_code, bsz, bsz2, implementation)
    cfg = _Fp8Config.make(bsz, bsz2, implementation, fw_code, bw_code)
    return _fp8_mixed(A, B, jnp.asarray(fw_code), jnp.asarray(bw_code), cfg)


# ------------------------------------------------------------------ matmul_fp8_global


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _fp8_global(A, B, fw_code, bw_code, cfg: _Fp8Config):
    return _fp8_global_fwd(A, B, fw_code, bw_code, cfg)[0]


def _fp8_global_fwd(A, B, fw_code, bw_code, cfg: _Fp8Config):
    impl = cfg.implementation
    fw, _ = cfg.codes(fw_code, bw_code)
    fp8A = F.fake_quant_global(A, fw, implementation=impl)
    fp8B = F.fake_quant_global(B, fw, implementation=impl)
    out = _matmul(_as_2d(fp8A), fp8B.astype(A.dtype), (1, 0), A.dtype)
    out = out.reshape(*A.shape[:-1], B.shape[1])
    # Global quantization commutes with transposition, so Q(Aᵀ) = Q(A)ᵀ: keeping
    # Q(A) saves requantizing A in the backward pass.
    return out, (fp8A, fp8B, fw_code, bw_code)


def _fp8_global_bwd(cfg: _Fp8Config, res, g):
    fp8A, fp8B, fw_code, bw_code = res
    # Both gradients use the quantized output gradient and quantized operands.
    _, bw = cfg.codes(fw_code, bw_code)
    g8 = F.fake_quant_global(g, bw, implementation=cfg.implementation)
    gradA = _matmul(_as_2d(g8), fp8B.astype(g.dtype), (1, 1), g.dtype)
    gradB = _matmul(_as_2d(fp8A).astype(g.dtype), _as_2d(g8), (0, 0), g.dtype)
    gradA = gradA.astype(fp8A.dtype).reshape(fp8A.shape)
    gradB = gradB.astype(fp8B.dtype)
    return gradA, gradB, jnp.zeros_like(fw_code), jnp.zeros_like(bw_code)


_fp8_global.defvjp(_fp8_global_fwd, _fp8_global_bwd)


def matmul_fp8_global(
    A: jax.Array,
    B: jax.Array,
    fw_code: jax.Array,
    bw_code: jax.Array,
    bsz: int = -1,
    bsz2: int = -1,
    *,
    implementation: Impl = None,
) -> jax.Array:
    """Simulated-FP8 matmul with global quantization (bitsandbytes `matmul_fp8_global`).

    Forward: Q_fw(A) @ Q_fw(B). Backward: gradA = Q_bw(g) @ Q_fw(B)ᵀ and
    gradB = Q_fw(Aᵀ) @ Q_bw(g), summed over A's leading axes. `bsz`/`bsz2` are
    accepted (and validated) for signature parity; global quantization does not
    use them.

    Args:
      A: float [..., k] (at least 2-D).
      B: float [k, n].
      fw_code: float32 [256] forward code; None for the dynamic map.
      bw_code: float32 [256] backward code; None for the dynamic map.
      bsz, bsz2: as in `matmul_fp8_mixed`.
      implementation: None, "xla" or "pallas".

    Returns:
      [..., n] in A's dtype.
    """
    fw_code, bw_code, bsz, bsz2 = _check_fp8_args(A, B, fw_code, bw_code, bsz, bsz2, implementation)
    cfg = _Fp8Config.make(bsz, bsz2, implementation, fw_code, bw_code)
    return _fp8_global(A, B, jnp.asarray(fw_code), jnp.asarray(bw_code), cfg)


# ----------------------------------------------------------------------- switchback_bnb

_INV127 = np.float32(1.0 / 127.0)


@dataclasses.dataclass(frozen=True)
class _SwitchBackConfig:
    threshold: float
    has_fp16_weights: bool
    outlier_capacity: int
    implementation: Impl


def prepare_int8_weight(B: jax.Array, threshold: float = 0.0, *, implementation: Impl = None):
    """Pre-quantizes a weight for int8 inference with `switchback_bnb`.

    Args:
      B: float weight [n, k] (Linear layout).
      threshold: outlier threshold stored in the state (a real number >= 0).
      implementation: None, "xla" or "pallas".

    Returns:
      `MatmulLtState(threshold, has_fp16_weights=False, CB=int8 [n, k], SCB=float32 [n])`.
    """
    _checks.check_float("B", B)
    _checks.check_ndim("B", B, 2)
    # Checked before the weight is quantized, so a bad value fails here and not in the state.
    threshold = _checks.check_threshold(threshold)
    CB, SCB, _ = F.int8_vectorwise_quant(B, implementation=implementation)
    return MatmulLtState(threshold=threshold, has_fp16_weights=False, CB=CB, SCB=SCB)


def _dequant_weight(CB: jax.Array, SCB: jax.Array, dtype) -> jax.Array:
    """CB * SCB/127 in `dtype`, as bitsandbytes' `CB.to(dtype).mul_(SCB * (1/127))`."""
    return (CB.astype(jnp.float32) * (SCB * _INV127)[:, None]).astype(dtype)


def _outlier_product(A2, Bsub_fn, cols, capacity: int, dtype):
    """A2[:, cols] @ Bsub[:, cols]ᵀ for the boolean column mask `cols`, in float32.

    Outlier columns are data-dependent; under jit they are gathered into a
    fixed number of slots (`capacity`). When more columns are outliers, a
    masked dense product gives the same exact sum, so the result is never
    silently truncated.
    """
    k = A2.shape[1]
    count = jnp.sum(cols)

    def gathered():
        idx = jnp.nonzero(cols, size=capacity, fill_value=0)[0]
        valid = jnp.arange(capacity) < count
        a = jnp.where(valid[None, :], A2[:, idx], 0).astype(dtype)
        b = jnp.where(valid[None, :], Bsub_fn(idx), 0).astype(dtype)
        return _matmul(a, b, (1, 1), jnp.float32)

    def dense():
        a = jnp.where(cols[None, :], A2, 0).astype(dtype)
        b = jnp.where(cols[None, :], Bsub_fn(jnp.arange(k)), 0).astype(dtype)
        return _matmul(a, b, (1, 1), jnp.float32)

    if capacity >= k:
        return dense()
    return jax.lax.cond(count <= capacity, gathered, dense)


def _switchback_forward(A, B, bias, CB, SCB, cfg: _SwitchBackConfig):
    impl = cfg.implementation
    dtype = A.dtype
    A2 = _as_2d(A)
    CA, SCA, cols = F.int8_vectorwise_quant(A2, cfg.threshold, implementation=impl)
    if cfg.has_fp16_weights:
        CB, SCB, _ = F.int8_vectorwise_quant(B, implementation=impl)
    n = CB.shape[0]
    fuse_bias = bias is not None and bias.dtype == jnp.float16
    # The kernel rounds to float16 (bitsandbytes' result) and casts to A's dtype in one pass.
    out = F.int8_linear_matmul_dequant(
        CA, CB, SCA, SCB, bias if fuse_bias else None, dtype, implementation=impl
    )
    if bias is not None and not fuse_bias:
        out = (out.astype(jnp.float32) + bias.astype(jnp.float32)).astype(dtype)
    if cfg.threshold > 0.0:
        if cfg.has_fp16_weights:
            sub_b = lambda idx: B[:, idx]
        else:
            # bitsandbytes dequantizes the int8 weight's outlier columns: CB * SCB / 127.
            sub_b = lambda idx: (CB[:, idx].astype(jnp.float32) * SCB[:, None] / 127.0).astype(
                dtype
            )
        extra = _outlier_product(A2, sub_b, cols, cfg.outlier_capacity, dtype).astype(dtype)
        out = (out.astype(jnp.float32) + extra.astype(jnp.float32)).astype(dtype)
    return out.reshape(*A.shape[:-1], n), cols, CB, SCB


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _switchback(A, B, bias, CB, SCB, cfg: _SwitchBackConfig):
    out, cols, _, _ = _switchback_forward(A, B, bias, CB, SCB, cfg)
    return out, cols


def _switchback_fwd(A, B, bias, CB, SCB, cfg: _SwitchBackConfig):
    out, cols, CBq, SCBq = _switchback_forward(A, B, bias, CB, SCB, cfg)
    # The int8 weight is half the bytes of a 16-bit one and is all gradA needs;
    # A itself is kept for the 16-bit weight gradient.
    return (out, cols), (A, CBq, SCBq, B, bias, CB, SCB)


def _switchback_bwd(cfg: _SwitchBackConfig, res, cts):
    A, CBq, SCBq, B, bias, CB, SCB = res
    g, _ = cts
    dtype = A.dtype
    g2 = _as_2d(g).astype(dtype)
    A2 = _as_2d(A)
    # gradA goes through the dequantized int8 weight, in A's dtype. bitsandbytes also
    # int8-quantizes grad_output here and then never uses it; fp8mm skips that pass.
    gradA = _matmul(g2, _dequant_weight(CBq, SCBq, dtype), (1, 0), dtype).reshape(A.shape)
    # The "switch back": the weight gradient is an ordinary 16-bit product.
    gradB = None
    if B is not None:
        gradB = _matmul(g2, A2, (0, 0), dtype).astype(B.dtype)
    gradBias = None
    if bias is not None:
        gradBias = jnp.sum(_as_2d(g).astype(jnp.float32), axis=0).astype(bias.dtype)
    return gradA, gradB, gradBias, dispatch.zero_cotangent(CB), dispatch.zero_cotangent(SCB)


_switchback.defvjp(_switchback_fwd, _switchback_bwd)
# Jitted with the config static: an eager call with threshold > 0 otherwise traces and
# compiles the outlier `lax.cond` (fresh closures) again on every call.
_switchback_jit = jax.jit(_switchback, static_argnums=(5,))


def switchback_bnb(
    A: jax.Array,
    B: jax.Array | None,
    state: MatmulLtState | None = None,
    threshold: float = 0.0,
    bias: jax.Array | None = None,
    *,
    outlier_capacity: int | None = None,
    return_outliers: bool = False,
    implementation: Impl = None,
):
    """SwitchBack int8 matmul (bitsandbytes `switchback_bnb`): A @ Bᵀ (+ bias).

    Forward: A (as float16) and B are int8-quantized row-wise, multiplied in
    int32 and dequantized (a float16 bias fused); with threshold > 0, columns
    of A holding an entry with |x| >= threshold are zeroed in the int8 product
    and multiplied in A's dtype instead. Backward: gradBias = Σ grad; gradB =
    gradᵀ @ A in A's dtype (the "switch back" to 16 bits); gradA = grad @
    (CB * SCB/127), the dequantized int8 weight.

    Args:
      A: float [..., k], k <= 131071 (the int32 accumulator bound, see
        `int8_linear_matmul`).
      B: float [n, k] (Linear layout); may be None when `state` holds an int8
        inference weight (has_fp16_weights=False).
      state: optional `MatmulLtState`; with has_fp16_weights=False its CB/SCB
        are used as they are (see `prepare_int8_weight`).
      threshold: static outlier threshold (a real number >= 0); when > 0 it
        overrides state.threshold.
      bias: optional float [n].
      outlier_capacity: outlier columns gathered into a fixed-size slot under
        jit (default min(k, max(32, k // 16))); more outliers fall back to an
        exact masked product.
      return_outliers: also return the bool [k] outlier column mask (for
        statistics, bitsandbytes' outlier pooler).
      implementation: None, "xla" or "pallas" for the int8 primitives.

    Returns:
      [..., n] in A's dtype, or (out, outlier_cols) with return_outliers.
    """
    state = MatmulLtState() if state is None else state
    if not isinstance(state, MatmulLtState):
        raise TypeError(f"state must be a MatmulLtState or None, got {type(state).__name__}")
    threshold = _checks.check_threshold(threshold)
    if threshold == 0.0:
        threshold = state.threshold
    return_outliers = _checks.check_bool("return_outliers", return_outliers)
    _checks.check_implementation(implementation)
    _checks.check_float("A", A)
    _checks.check_min_ndim("A", A, 1)
    k = A.shape[-1]
    _checks.check_int8_k(k, "switchback_bnb")
    CB = SCB = None
    if state.has_fp16_weights:
        if B is None:
            raise ValueError(
                "B is required unless state holds an int8 weight (has_fp16_weights=False)"
            )
        _checks.check_float("B", B)
        _checks.check_ndim("B", B, 2)
        if B.shape[1] != k:
            raise ValueError(
                f"inner dimensions differ: A is {tuple(A.shape)} and B is {tuple(B.shape)}; "
                "B must be [out, in] (Linear layout) with in == A.shape[-1]"
            )
        n = B.shape[0]
    else:
        CB, SCB = state.CB, state.SCB
        _checks.check_dtype("state.CB", CB, jnp.int8)
        _checks.check_dtype("state.SCB", SCB, jnp.float32)
        if CB.ndim != 2 or CB.shape[1] != k or SCB.shape != (CB.shape[0],):
            raise ValueError(
                f"state.CB {tuple(CB.shape)} / state.SCB {tuple(SCB.shape)} do not fit A "
                f"{tuple(A.shape)}: need CB [n, {k}] and SCB [n]"
            )
        if B is not None:
            _checks.check_array("B", B)
            if tuple(B.shape) != tuple(CB.shape):
                raise ValueError(f"B has shape {tuple(B.shape)} but state.CB is {tuple(CB.shape)}")
        B = None  # the int8 weight is not trained: no gradient flows to B
        n = CB.shape[0]
    if bias is not None:
        _checks.check_float("bias", bias)
        if tuple(bias.shape) != (n,):
            raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
    if outlier_capacity is None:
        outlier_capacity = max(1, min(k, max(32, k // 16)))
    _checks.check_static("outlier_capacity", outlier_capacity, "int")
    if isinstance(outlier_capacity, (bool, np.bool_)) or not isinstance(
        outlier_capacity, (int, np.integer)
    ):
        raise TypeError(f"outlier_capacity must be a positive int, got {outlier_capacity!r}")
    if outlier_capacity < 1:
        raise ValueError(f"outlier_capacity must be a positive int, got {outlier_capacity!r}")
    outlier_capacity = int(outlier_capacity)
    cfg = _SwitchBackConfig(
        threshold, state.has_fp16_weights, outlier_capacity, _resolved(implementation)
    )
    out, cols = _switchback_jit(A, B, bias, CB, SCB, cfg)
    return (out, cols) if return_outliers else out
