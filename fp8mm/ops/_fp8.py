"""The simulated-FP8 matmuls: one custom VJP, configured by a `Recipe`.

A recipe says how the forward pass quantizes A and B, how the backward pass
quantizes grad_output and whether the weight gradient sees the quantized
operands. bitsandbytes' two research autograd functions are two recipes of the
same forward and backward: `MIXED` (`matmul_fp8_mixed`) and `GLOBAL`
(`matmul_fp8_global`). Each op quantize->dequantizes ("fake quantizes") its
operands through `fp8mm.functional`, so every product is an ordinary GEMM in
the operands' dtype.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fp8mm import _checks, _host
from fp8mm import functional as F
from fp8mm import functional_fp8 as F8
from fp8mm.dispatch import Impl
from fp8mm.ops._common import (
    as_2d,
    check_inner,
    matmul,
    mesh_absmax,
    row_axes,
    split_block_absmax,
    static_implementation,
)
from fp8mm.ops._fp8_native import NativeConfig, native_fp8, native_reason

GEMMS = ("emulated", "native")

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


# ----------------------------------------------------------------------------- recipes

# (x, code, blocksize, implementation, axis_names, column_axes, row_axes) -> x quantized
# and dequantized, in x's dtype and shape. Inside shard_map (() off a mesh): axis_names,
# the mesh axes x is split over; column_axes and row_axes, those that split x's last
# dimension and its (flattened) leading ones.
Quantizer = Callable[..., jax.Array]


def blockwise(
    x, code, blocksize: int, implementation: Impl, axis_names=(), column_axes=(), row_axes=()
) -> jax.Array:
    """QB: one absmax per `blocksize` elements of the row-major flattened x.

    Blocks that span the shards of x (columns split over `column_axes`, rows over
    `row_axes`) take their absmax across them (`split_block_absmax`: a pmax of
    per-block absmaxes), so each shard quantizes its pieces of them exactly as the
    whole tensor would; shards holding whole blocks need no collective."""
    del axis_names
    x2 = as_2d(x)
    piece, absmax = split_block_absmax(x2, blocksize, column_axes, row_axes)
    if absmax is None:
        return F.fake_quant_blockwise(x, code, blocksize, implementation=implementation)
    # Pieces narrower than the kernels' smallest block (32) only arise from shards whose
    # width is no multiple of 32: the XLA reference quantizes them (the same codes).
    impl = implementation if piece >= 32 else "xla"
    # The primitive itself: the public fake_quant_blockwise takes no absmax.
    out = F._FAKE_QUANT_BLOCKWISE(x2, code, piece, absmax, implementation=impl)
    return out.reshape(x.shape)


def global_(
    x, code, blocksize: int, implementation: Impl, axis_names=(), column_axes=(), row_axes=()
) -> jax.Array:
    """Q: one absmax for the whole tensor, so it commutes with transposition.

    On a mesh the absmax is the `lax.pmax` of the shards' over `axis_names`, so each
    shard quantizes exactly as the whole tensor would."""
    del blocksize, column_axes, row_axes
    absmax = mesh_absmax(x, axis_names)
    return F.fake_quant_global(x, code, absmax=absmax, implementation=implementation)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How one fp8 matmul quantizes: static, one of the custom VJP's nondiff arguments.

    The forward quantizers use the forward code (fw_code) and block size bsz,
    the gradient quantizer the backward code (bw_code) and bsz2.

    Attributes:
      a: quantizes A [..., k] in the forward pass.
      b: quantizes B [k, n] in the forward pass.
      grad: quantizes grad_output [..., n] in the backward pass (for gradA always).
      quantized_grad_b: gradB = a(A)ᵀ @ grad(g) when True, else the plain
        16-bit Aᵀ @ g. The backward pass reuses the forward's a(A) as a(Aᵀ)ᵀ,
        so a True recipe needs an `a` that commutes with transposition (global).
    """

    a: Quantizer
    b: Quantizer
    grad: Quantizer
    quantized_grad_b: bool


# bitsandbytes' MatMulFP8Mixed: blockwise activations and output gradient, a global weight.
MIXED = Recipe(a=blockwise, b=global_, grad=blockwise, quantized_grad_b=False)
# bitsandbytes' MatMulFP8Global: global quantization of every operand of every product.
GLOBAL = Recipe(a=global_, b=global_, grad=global_, quantized_grad_b=True)


# ---------------------------------------------------------------------- the custom VJP


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
class _Config:
    """One call's static settings: block sizes, the implementation, host codes."""

    bsz: int
    bsz2: int
    implementation: Impl
    fw_host: _HostCode | None = None
    bw_host: _HostCode | None = None
    axis_names: tuple[str, ...] = ()
    # The mesh axes among axis_names that split B's columns (the output features).
    feature_axes: tuple[str, ...] = ()

    @property
    def batch_axes(self) -> tuple[str, ...]:
        """The mesh axes that split A's rows (and the output gradient's)."""
        return row_axes(self.axis_names, self.feature_axes)

    def codes(self, fw_code: jax.Array, bw_code: jax.Array) -> tuple:
        """The codes to quantize with: the host copies when the codes were concrete."""
        return (
            fw_code if self.fw_host is None else self.fw_host.value,
            bw_code if self.bw_host is None else self.bw_host.value,
        )

    @classmethod
    def make(
        cls, bsz, bsz2, implementation, fw_code, bw_code, axis_names=(), feature_axes=()
    ) -> _Config:
        impl = static_implementation(implementation)
        fw, bw = _host_code(fw_code), _host_code(bw_code)
        return cls(bsz, bsz2, impl, fw, bw, axis_names, feature_axes)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _fp8(A, B, fw_code, bw_code, recipe: Recipe, cfg: _Config):
    return _fp8_fwd(A, B, fw_code, bw_code, recipe, cfg)[0]


def _fp8_fwd(A, B, fw_code, bw_code, recipe: Recipe, cfg: _Config):
    """a(A) @ b(B) [..., n] in A's dtype, and the residuals of the backward pass."""
    impl = cfg.implementation
    fw, _ = cfg.codes(fw_code, bw_code)
    fp8A = recipe.a(A, fw, cfg.bsz, impl, cfg.axis_names, (), cfg.batch_axes)
    fp8B = recipe.b(B, fw, cfg.bsz, impl, cfg.axis_names)
    out = matmul(as_2d(fp8A), fp8B.astype(A.dtype), (1, 0), A.dtype)
    out = out.reshape(*A.shape[:-1], B.shape[1])
    # As bitsandbytes, keep only what gradB reads of A: A itself for the 16-bit
    # product, or Q(A), which for a global Q is Q(Aᵀ)ᵀ and saves requantizing A.
    A_res = fp8A if recipe.quantized_grad_b else A
    return out, (A_res, fp8B, fw_code, bw_code)


def _fp8_bwd(recipe: Recipe, cfg: _Config, res, g):
    """gradA, gradB and zero cotangents for the codes, as bitsandbytes' backward.

    Which gradients are quantized (bitsandbytes' choice, kept): gradA =
    grad(g) @ b(B)ᵀ always uses the quantized output gradient, the 8-bit
    activation gradient that flows on to earlier layers and that simulated-FP8
    training is about. gradB = Aᵀ @ g stays 16-bit in the mixed recipe: the
    weight gradient sums over every token (A's flattened leading axes), the
    longest inner dimension, where quantization noise accumulates most (the
    SwitchBack argument). The global recipe quantizes everything, gradB =
    a(A)ᵀ @ grad(g).
    """
    A_res, fp8B, fw_code, bw_code = res
    _, bw = cfg.codes(fw_code, bw_code)
    # g's columns are the output features: split with B's over feature_axes.
    axes = (cfg.axis_names, cfg.feature_axes, cfg.batch_axes)
    g8 = recipe.grad(g, bw, cfg.bsz2, cfg.implementation, *axes)
    gradA = matmul(as_2d(g8), fp8B.astype(g.dtype), (1, 1), g.dtype)
    # Summing over the flattened leading axes is PyTorch's implicit batch reduction.
    g_b = g8 if recipe.quantized_grad_b else g
    gradB = matmul(as_2d(A_res).astype(g.dtype), as_2d(g_b), (0, 0), g.dtype)
    # Products round to grad_output's dtype first, then to each primal's (as torch's .to()).
    gradA = gradA.astype(A_res.dtype).reshape(A_res.shape)
    gradB = gradB.astype(fp8B.dtype)
    return gradA, gradB, jnp.zeros_like(fw_code), jnp.zeros_like(bw_code)


_fp8.defvjp(_fp8_fwd, _fp8_bwd)


def _is_auto(size) -> bool:
    # Only the int -1 means automatic (not -1.0 or a bool).
    return isinstance(size, (int, np.integer)) and not isinstance(size, bool) and size == -1


def _check_fp8_args(A, B, fw_code, bw_code, bsz, bsz2, implementation, shards=1) -> tuple:
    """Validated (fw_code, bw_code, bsz, bsz2): codes as arrays (None: the dynamic map).

    shards: how many column shards B is one of; the automatic block sizes are the
    whole weight's (B.shape[1] * shards output features), as on one device."""
    _checks.check_float("A", A)
    _checks.check_float("B", B)
    _checks.check_min_ndim("A", A, 2)
    _checks.check_ndim("B", B, 2)
    check_inner(A, B, 0, "[in, out]")
    fw_code = _checks.as_code(fw_code, "fw_code")
    bw_code = _checks.as_code(bw_code, "bw_code")
    _checks.check_implementation(implementation)
    # Checked before the comparison with -1: a traced block size would fail it obscurely.
    _checks.check_static("bsz", bsz, "int")
    _checks.check_static("bsz2", bsz2, "int")
    auto = get_block_sizes(A, (B.shape[0], B.shape[1] * shards))
    bsz = auto[0] if _is_auto(bsz) else _checks.check_blocksize(bsz, "bsz", auto=True)
    bsz2 = auto[1] if _is_auto(bsz2) else _checks.check_blocksize(bsz2, "bsz2", auto=True)
    return fw_code, bw_code, bsz, bsz2


def _check_gemm(gemm) -> None:
    if not isinstance(gemm, str):
        raise TypeError(f"gemm must be one of {GEMMS}, got {gemm!r}")
    if gemm not in GEMMS:
        raise ValueError(f"gemm must be one of {GEMMS}, got {gemm!r}")


# --------------------------------------------------------------------------- public ops

_ARGS_DOC = """
    Args:
      A: float [..., k] (at least 2-D).
      B: float [k, n].
      fw_code: float32 [256] sorted forward code (bitsandbytes' layers use e4m3);
        None for the dynamic map (`create_dynamic_map()`), as bitsandbytes'
        quantize functions do with code=None.
      bw_code: float32 [256] backward code (e5m2 in the layers); None as above.
      out: bitsandbytes' output buffer, accepted at its position so that
        bitsandbytes' positional calls run; must be None (JAX arrays are
        immutable: use the returned array).
      bsz: static forward block size, -1 for `get_block_sizes`.
      bsz2: static backward block size, -1 for `get_block_sizes` (of the whole
        weight: with `feature_axis_names`, of all its output features).
      gemm: "emulated" (bitsandbytes' simulation: codes dequantized to A's
        dtype, a 16-bit GEMM) or "native" (the same codes as float8 bytes,
        multiplied on FP8 tensor cores with float32 scales after the
        accumulation; needs bitsandbytes' e4m3/e5m2 codes, and runs the
        emulated path for shapes whose blocks straddle rows: docs/exactness.md).
      implementation: None, "xla", "pallas", a kernel name or a sequence of
        these, for the quantization primitives (and native GEMMs; see
        `fp8mm.dispatch`).
      axis_names: inside `jax.shard_map`, the mesh axes A, B or the output
        gradient are split over: every global absmax (B's; A's and the
        gradient's in the global recipe) becomes the `lax.pmax` of the shards',
        so each device quantizes its shard exactly as the whole tensor would be
        (`fp8mm.nn.sharding.partition` passes them). None off a mesh.
      feature_axis_names: inside `jax.shard_map`, those of `axis_names` that
        split B's columns (the output features; tensor parallelism); the others
        split A's rows (and the output gradient's). Blocks of A or of the output
        gradient (mixed recipe) that span shards take their absmax across them
        (a pmax of one float32 per block), so every shard quantizes its part of
        them exactly as the whole tensor would be. None: no column split.

    Returns:
      [..., n] in A's dtype.

    Raises:
      ValueError: out is not None.
      NotImplementedError: gemm="native" with a code that is no float8 grid.
    """


def _public_op(recipe: Recipe, name: str, summary: str):
    """The public fp8 matmul `name` of `recipe`: every recipe shares its signature and Args."""

    def op(
        A: jax.Array,
        B: jax.Array,
        fw_code: jax.Array | None = None,
        bw_code: jax.Array | None = None,
        out: None = None,
        bsz: int = -1,
        bsz2: int = -1,
        *,
        gemm: str = "emulated",
        implementation: Impl = None,
        axis_names: str | tuple[str, ...] | None = None,
        feature_axis_names: str | tuple[str, ...] | None = None,
    ) -> jax.Array:
        _checks.check_out(out, before="bsz")
        axes = _checks.check_axis_names(axis_names)
        features = _checks.check_axis_names(feature_axis_names)
        shards = int(np.prod([jax.lax.axis_size(a) for a in features], dtype=np.int64))
        fw_code, bw_code, bsz, bsz2 = _check_fp8_args(
            A, B, fw_code, bw_code, bsz, bsz2, implementation, shards
        )
        _check_gemm(gemm)
        if gemm == "native":
            ncfg = NativeConfig(
                recipe is MIXED,
                F8.format_of(fw_code, "fw_code").name,
                F8.format_of(bw_code, "bw_code").name,
                bsz,
                bsz2,
                static_implementation(implementation),
                jnp.dtype(B.dtype),
                axes,
                features,
            )
            if native_reason(A.shape, B.shape, ncfg) is None:
                return native_fp8(A, B, ncfg)
        cfg = _Config.make(bsz, bsz2, implementation, fw_code, bw_code, axes, features)
        return _fp8(A, B, jnp.asarray(fw_code), jnp.asarray(bw_code), recipe, cfg)

    op.__name__ = op.__qualname__ = name
    op.__doc__ = summary + _ARGS_DOC
    return op


matmul_fp8_mixed = _public_op(
    MIXED,
    "matmul_fp8_mixed",
    """Simulated-FP8 matmul with blockwise activations (bitsandbytes `matmul_fp8_mixed`).

    Forward: QB_fw(A, bsz) @ Q_fw(B), with QB blockwise and Q global
    quantize→dequantize through `fw_code`. Backward: gradA = QB_bw(g, bsz2) @
    Q_fw(B)ᵀ; gradB = Aᵀ @ g, unquantized, summed over A's leading axes.
    """,
)

matmul_fp8_global = _public_op(
    GLOBAL,
    "matmul_fp8_global",
    """Simulated-FP8 matmul with global quantization (bitsandbytes `matmul_fp8_global`).

    Forward: Q_fw(A) @ Q_fw(B). Backward: gradA = Q_bw(g) @ Q_fw(B)ᵀ and
    gradB = Q_fw(Aᵀ) @ Q_bw(g), summed over A's leading axes. `bsz`/`bsz2` are
    accepted (and validated) for signature parity; global quantization does not
    use them.
    """,
)
