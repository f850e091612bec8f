"""int8 matmul (int32, or with fused dequant) as a Pallas Mosaic GPU kernel: s8 wgmma.

`int8_linear_matmul` and `int8_linear_matmul_dequant` here have the signatures
and results of their namesakes in `fp8mm.pallas.int8_matmul_triton` (the
Pallas-Triton kernels). They serve only a Hopper GPU (compute capability 9.x),
compiled, and shapes that fill the tiles (rows a multiple of 128, output columns
of 256, k of 128); `supported_*` name the reason otherwise, and the registry
(`fp8mm.dispatch`, which lists this kernel before the Triton one) then runs the
next kernel. Called directly, the wrappers raise a ValueError with that reason:
there is no hidden fallback.

Structure (after JAX's `pallas/ops/gpu/hopper_matmul_mgpu.py`): a persistent grid
of one program per SM walks the 128x256 output tiles in a planar snake; in each
program a producer warpgroup streams 128-wide k-slices of A [m, k] and B [n, k]
into shared memory by TMA (128-byte swizzle, `stages` slots) while two consumer
warpgroups each run s8 wgmma into a 128x128 int32 accumulator in registers.
8-bit wgmma reads both operands K-major, so B's tile stays [n, k] in shared
memory and reaches the wgmma as a transposed view. The epilogue is
`_int8_math.dequant_math` on the accumulator (the same products in the same
order, then the float16 rounding), or none for the int32 product, stored through
shared memory by TMA in 64x64 pieces.

Measured on an H200 (docs/performance.md), bf16 output, against XLA's
plain int8 dot (int32 output) of the same shape: 1.01-1.08x its throughput at
8192x4096x4096, 8192x16384x4096 and 16384x4096x4096, and 1.10-1.16x the Triton kernel.
Exact: the int32 sums are exact and the epilogue rounds as the Triton kernel does
(tested bit for bit on an H200), except with a fused float16 bias, where the two
compilers contract `t * c + bias` into an FMA in different places (1 in 3x10^4 to
1 in 1.3x10^5 elements differ by one float16 ulp); both stay within one float16 ulp of the
reference.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from fp8mm import _host
from fp8mm.pallas._backend import too_large
from fp8mm.pallas._int8_math import dequant_math, epilogue_operands

try:  # Mosaic GPU ships with jaxlib; a build without it is reported by `supported_*`.
    from jax.experimental.pallas import mosaic_gpu as plgpu
except ImportError:  # pragma: no cover - depends on the jaxlib build
    plgpu = None

__all__ = [
    "WgmmaConfig",
    "choose_wgmma_config",
    "int8_linear_matmul",
    "int8_linear_matmul_dequant",
    "int8_scaled_matmul",
    "supported_int8_linear_matmul",
    "supported_int8_linear_matmul_dequant",
    "supported_int8_scaled_matmul",
    "wgmma_reason",
    "wgmma_search_space",
]


# ----------------------------------------------------------------------------
# Config, heuristic and search space
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WgmmaConfig:
    """Tiles of the wgmma kernel.

    Attributes:
      tile_m: rows of one consumer warpgroup's accumulator (and of the program tile).
      tile_n: columns of one warpgroup's accumulator; the two warpgroups sit side
        by side, so a program covers tile_m x 2 * tile_n outputs.
      tile_k: k-slice per pipeline step (128 bytes of int8: the 128-byte swizzle).
      stages: k-slices in flight (shared memory slots per operand).
      snake_width: output-tile rows per band of the planar snake (L2 reuse of B).
      epi_m: rows of one epilogue store.
      epi_n: columns of one epilogue store.
    """

    tile_m: int = 128
    tile_n: int = 128
    tile_k: int = 128
    stages: int = 3
    snake_width: int = 8
    epi_m: int = 64
    epi_n: int = 64

    def __post_init__(self):
        if self.tile_k != 128:
            raise ValueError(f"tile_k must be 128 (the 128-byte swizzle), got {self.tile_k}")
        if self.tile_m % 64 or self.tile_n % 64 or self.stages < 1:
            raise ValueError(f"tiles must be multiples of 64 and stages >= 1, got {self}")
        if self.tile_m % self.epi_m or self.tile_n % self.epi_n:
            raise ValueError(f"the epilogue pieces must divide the tile, got {self}")

    @property
    def block_n(self) -> int:
        return 2 * self.tile_n

    @property
    def epilogue_slots(self) -> int:
        """Epilogue buffers per warpgroup: two, unless the tile is one piece."""
        return min(2, (self.tile_m // self.epi_m) * (self.tile_n // self.epi_n))

    def smem_bytes(self, out_bytes: int) -> int:
        """Shared memory: the operand slots plus both warpgroups' epilogue buffers."""
        operands = self.stages * (self.tile_m + self.block_n) * self.tile_k
        return operands + 2 * self.epilogue_slots * self.epi_m * self.epi_n * out_bytes


def choose_wgmma_config(m: int, n: int, k: int) -> WgmmaConfig:
    """The kernel's config for an [m, k] x [n, k] product: `WgmmaConfig()` for every shape.

    Shape-independent by measurement (a sweep on an H200, docs/performance.md):
    3 stages were best or within noise of best at all three benchmark shapes
    (8192x4096x4096, 8192x16384x4096, 16384x4096x4096; 4 stages: +-3%, 2 stages:
    10-15% slower); side-by-side warpgroups beat stacked ones by 3-6%; the snake
    width moved times by <1%. The shape arguments keep the heuristics' common
    signature; whether the shape fits the tiles is `wgmma_reason`'s question.
    """
    del m, n, k
    return WgmmaConfig()


def wgmma_search_space(m: int, n: int, k: int) -> tuple[WgmmaConfig, ...]:
    """2 to 4 stages and snake widths 4 to 16 on the 128x256 tile; () when the shape misses it.

    Only configs that serve the shape (tile multiples, shared memory) are listed;
    the heuristic's `WgmmaConfig()` is among them whenever it serves.
    """
    space = [
        WgmmaConfig(stages=stages, snake_width=width)
        for stages in (2, 3, 4)
        for width in (4, 8, 16)
    ]
    return tuple(cfg for cfg in space if _config_reason(m, n, k, cfg) is None)


# Hopper's shared memory per block (227 KiB).
_SMEM_LIMIT = 227 * 1024


def _target_device():
    """The device computations traced now land on: a `jax.default_device` Device, else the
    first local device of the platform they land on.

    `_host.platform()` names only the platform (all that `fp8mm.dispatch` needs);
    this kernel needs the device itself: its compute capability (Hopper or not)
    and its SM count (the size of the persistent grid).
    """
    device = jax.config.jax_default_device
    if isinstance(device, jax.Device):
        return device
    return jax.local_devices(backend=_host.platform())[0]


def _config_reason(m: int, n: int, k: int, cfg: WgmmaConfig) -> str | None:
    """None when cfg's tiles cover an [m, k] x [n, k] product and fit shared memory."""
    for name, size, tile in (("m", m, cfg.tile_m), ("n", n, cfg.block_n), ("k", k, cfg.tile_k)):
        if size == 0 or size % tile:
            return f"{name}={size} is not a positive multiple of the {tile}-wide tile"
    if cfg.smem_bytes(4) > _SMEM_LIMIT:
        return f"{cfg} needs {cfg.smem_bytes(4)} bytes of shared memory (> {_SMEM_LIMIT})"
    return None


def wgmma_reason(m: int, n: int, k: int, cfg: WgmmaConfig | None = None) -> str | None:
    """None when this kernel serves an [m, k] x [n, k] product on the target device, else why.

    cfg: the config to check; None: `choose_wgmma_config`.
    """
    cfg = cfg or choose_wgmma_config(m, n, k)
    if plgpu is None:
        return "jax.experimental.pallas.mosaic_gpu is not available"
    capability = str(getattr(_target_device(), "compute_capability", ""))
    if not capability.startswith("9."):
        return f"s8 wgmma needs a Hopper GPU (compute capability 9.x), not {capability or 'none'}"
    return _config_reason(m, n, k, cfg)


# ----------------------------------------------------------------------------
# Kernel
# ----------------------------------------------------------------------------


def _load_needs_index() -> bool:
    # jax 0.11 deprecates plgpu.load's index argument, which 0.10 requires.
    idx = None if plgpu is None else inspect.signature(plgpu.load).parameters.get("idx")
    return idx is not None and idx.default is inspect.Parameter.empty


_LOAD_NEEDS_INDEX = _load_needs_index()


def _load_vector(ref, layout):
    if _LOAD_NEEDS_INDEX:
        return plgpu.load(ref, (), layout=layout, optimized=False)
    return plgpu.load(ref, layout=layout, optimized=False)


def _kernel(
    a_gmem, b_gmem, *rest, m, n, k, cfg, dequant, bias_mode, out_dtype, direct, fp8, chunks=1
):
    """One persistent program: loops over its output tiles (see the module docstring).

    fp8: the operands are float8 (one format for both: Mosaic GPU's wgmma takes
    no mixed float8 types), the accumulator float32 and the epilogue
    `reference_fp8.fp8_scaled_matmul`'s ((acc * row) * col, rounded once). chunks > 1
    (fp8 only): row_gmem is [chunks, m], one scale per row and K chunk; the
    wgmma accumulator is promoted into a float32 register sum, times the chunk's
    row scales, at the end of every chunk (then col, rounded once).

    Refs: a_gmem int8/float8 [m, k], b_gmem [n, k], then (dequant) row_gmem f32 [m],
    col_gmem f32 [n], (bias) bias_gmem f32 [n], then out_gmem [m, n] (out_dtype,
    int32 without dequant) and out_smem [2, slots, epi_m, epi_n] (the epilogue
    buffers of the two consumer warpgroups).
    """
    row_gmem = col_gmem = bias_gmem = None
    if dequant:
        row_gmem, col_gmem, *rest = rest
    if bias_mode is not None:
        bias_gmem, *rest = rest
    out_gmem, out_smem = rest
    tm, tn, tk = cfg.tile_m, cfg.tile_n, cfg.tile_k
    grid_m, grid_n = m // tm, n // cfg.block_n
    transforms = (plgpu.TilingTransform((8, tk)), plgpu.SwizzleTransform(tk))
    n_epi_n = tn // cfg.epi_n
    slots = out_smem.shape[1]

    def pipeline(body, compute_context):
        def spec(rows):
            return plgpu.BlockSpec(
                (rows, tk), lambda kk: (0, kk), transforms=transforms, memory_space=plgpu.SMEM
            )

        return plgpu.emit_pipeline_warp_specialized(
            body,
            grid=(k // tk,),
            memory_registers=40,
            in_specs=[spec(tm), spec(cfg.block_n)],
            wg_axis="wg",
            num_compute_wgs=2,
            max_concurrent_steps=cfg.stages,
            compute_context=compute_context,
        )

    def ignore(*_, **__):
        return None

    @functools.partial(
        pl.run_scoped,
        allocs=pipeline(ignore, ignore).get_allocations(a_gmem, b_gmem),
        collective_axes="wg",
    )
    def _scope(allocs):
        wg = lax.axis_index("wg")

        @plgpu.nd_loop((grid_m * grid_n,), collective_axes="sm")
        def _tile_loop(info):
            # jax 0.10 passes the index tuple, 0.11 an NDLoopInfo holding it.
            (tile,) = getattr(info, "index", info)
            i, j = plgpu.planar_snake(tile, (grid_m, grid_n), 0, cfg.snake_width)
            rows = pl.ds(i * tm, tm)
            cols = pl.ds(j * cfg.block_n + wg * tn, tn)
            wg_cols = pl.ds(wg * tn, tn)

            row_layout = plgpu.Layout.WGMMA.reduce(1)
            col_layout = plgpu.Layout.WGMMA.reduce(0)

            def col_vector(ref):
                return lax.broadcast_in_dim(_load_vector(ref.at[cols], col_layout), (tm, tn), [1])

            def store(out):
                # The previous tile's stores must have read their slots.
                plgpu.wait_smem_to_gmem(0, wait_read_only=True)
                for p in range((tm // cfg.epi_m) * n_epi_n):
                    em = slice((p // n_epi_n) * cfg.epi_m, (p // n_epi_n + 1) * cfg.epi_m)
                    en = slice((p % n_epi_n) * cfg.epi_n, (p % n_epi_n + 1) * cfg.epi_n)
                    slot = p % slots
                    plgpu.wait_smem_to_gmem(slots - 1, wait_read_only=True)
                    out_smem[wg, slot] = out[em, en]
                    plgpu.commit_smem()
                    plgpu.copy_smem_to_gmem(
                        out_smem.at[wg, slot], out_gmem.at[rows, cols].at[em, en]
                    )

            def compute_context(run_pipeline):
                if chunks > 1:
                    zeros = plgpu.layout_cast(
                        jnp.full((tm, tn), 0, dtype=jnp.float32), plgpu.Layout.WGMMA
                    )
                    _, total = run_pipeline((zeros, zeros))
                    store((total * col_vector(col_gmem)).astype(out_dtype))
                    return
                acc_dtype = jnp.float32 if fp8 else jnp.int32

                @functools.partial(pl.run_scoped, acc_ref=plgpu.ACC((tm, tn), acc_dtype))
                def _acc_scope(acc_ref):
                    run_pipeline(acc_ref)
                    out = acc_ref[...]
                    if dequant:
                        row = lax.broadcast_in_dim(
                            _load_vector(row_gmem.at[rows], row_layout), (tm, tn), [0]
                        )
                        col = col_vector(col_gmem)
                        if fp8:
                            out = ((out * row) * col).astype(out_dtype)
                        else:
                            bias = None if bias_gmem is None else col_vector(bias_gmem)
                            out = dequant_math(
                                out,
                                row,
                                col,
                                bias,
                                bias_mode=bias_mode,
                                out_dtype=out_dtype,
                                direct=direct,
                            )
                    store(out)

            chunk_steps = k // chunks // tk

            def mma_chunked(idx, a_smem, b_smem, carry):
                acc, total = carry
                (kk,) = idx

                def step(acc_ref):
                    plgpu.wgmma(acc_ref, a_smem, b_smem.at[wg_cols].transpose((1, 0)))
                    plgpu.wgmma_wait(0)

                acc = pl.run_state(step)(plgpu.ACC.init(acc))

                def promote():
                    # Promotion (DeepGEMM's word): the chunk's partial sum, times its
                    # row scales, joins the float32 total; the accumulator restarts.
                    c = kk // chunk_steps
                    row = lax.broadcast_in_dim(
                        _load_vector(row_gmem.at[c].at[rows], row_layout), (tm, tn), [0]
                    )
                    return acc * 0.0, total + acc * row

                return lax.cond(kk % chunk_steps == chunk_steps - 1, promote, lambda: (acc, total))

            def mma(_, a_smem, b_smem, acc_ref):
                plgpu.wgmma(acc_ref, a_smem, b_smem.at[wg_cols].transpose((1, 0)))
                plgpu.wgmma_wait(0)
                return acc_ref

            pipeline(mma if chunks == 1 else mma_chunked, compute_context)(
                a_gmem.at[rows, :],
                b_gmem.at[pl.ds(j * cfg.block_n, cfg.block_n), :],
                allocations=allocs,
            )

    plgpu.wait_smem_to_gmem(0, wait_read_only=True)


@functools.partial(
    jax.jit,
    static_argnames=(
        "dequant",
        "bias_mode",
        "out_dtype",
        "cfg",
        "num_sms",
        "direct",
        "fp8",
        "chunks",
    ),
)
def _matmul_2d(
    a,
    b,
    row,
    col,
    bias,
    *,
    dequant,
    bias_mode,
    out_dtype,
    cfg,
    num_sms,
    direct=False,
    fp8=False,
    chunks=1,
):
    """[m, n] product of a [m, k] and b [n, k]: int32, or dequantized to out_dtype.

    fp8: float8 operands, float32 accumulator, scaled by row [m] and col [n]."""
    out_dtype = out_dtype if dequant else np.dtype(np.int32)
    m, k = a.shape
    n = b.shape[0]
    out_bytes = np.dtype(out_dtype).itemsize
    out_swizzle = plgpu.find_swizzle(cfg.epi_n * out_bytes * 8)
    out_transforms = (
        plgpu.TilingTransform((8, out_swizzle // out_bytes)),
        plgpu.SwizzleTransform(out_swizzle),
    )
    slots = cfg.epilogue_slots
    kernel = functools.partial(
        _kernel,
        m=m,
        n=n,
        k=k,
        cfg=cfg,
        dequant=dequant,
        bias_mode=bias_mode,
        out_dtype=out_dtype,
        direct=direct,
        fp8=fp8,
        chunks=chunks,
    )
    call = plgpu.kernel(
        kernel,
        out_type=jax.ShapeDtypeStruct((m, n), out_dtype),
        grid=(num_sms,),
        grid_names=("sm",),
        num_threads=3,
        thread_name="wg",
        scratch_types=[
            plgpu.SMEM((2, slots, cfg.epi_m, cfg.epi_n), out_dtype, transforms=out_transforms)
        ],
    )
    args = (a, b) + ((row, col) if dequant else ()) + (() if bias_mode is None else (bias,))
    # plgpu.kernel takes no name=; the scope names the kernel in profiles and HLO.
    name = "fp8mm_int8_linear_matmul_dequant_wgmma" if dequant else "fp8mm_int8_linear_matmul_wgmma"
    if direct:
        name = "fp8mm_int8_scaled_matmul_wgmma"
    if fp8:
        name = "fp8mm_fp8_scaled_matmul_wgmma"
    with jax.named_scope(name):
        return call(*args)


# ----------------------------------------------------------------------------
# Public wrappers and what they serve
# ----------------------------------------------------------------------------


def supported_int8_linear_matmul(A: jax.Array, B: jax.Array) -> str | None:
    """None when the kernel serves A @ Bᵀ here (see `wgmma_reason`), else why not."""
    m, n, k = math.prod(A.shape[:-1]), B.shape[0], A.shape[-1]
    return wgmma_reason(m, n, k) or too_large(A, B, m * n)


def supported_int8_linear_matmul_dequant(A: jax.Array, B: jax.Array, *epilogue) -> str | None:
    """As `supported_int8_linear_matmul`: the epilogue's operands add no limit."""
    del epilogue
    return supported_int8_linear_matmul(A, B)


def _plan(A, B, config, interpret) -> tuple[int, int, int, WgmmaConfig]:
    """(m, n, k, config) of a call the kernel serves; a ValueError naming why otherwise."""
    if interpret:
        raise ValueError("Mosaic GPU kernels run only compiled")
    m, n, k = math.prod(A.shape[:-1]), B.shape[0], A.shape[-1]
    if config is not None and not isinstance(config, WgmmaConfig):
        raise TypeError(f"config must be a WgmmaConfig, got {config!r}")
    cfg = choose_wgmma_config(m, n, k) if config is None else config
    why = wgmma_reason(m, n, k, cfg) or too_large(A, B, m * n)
    if why is not None:
        raise ValueError(why if config is None else f"config {cfg} cannot serve this call: {why}")
    return m, n, k, cfg


def supported_int8_scaled_matmul(A: jax.Array, B: jax.Array, *epilogue) -> str | None:
    """As `supported_int8_linear_matmul`: the epilogue's operands add no limit."""
    del epilogue
    return supported_int8_linear_matmul(A, B)


def _product(A, B, epilogue, config, interpret, direct=False):
    """A @ Bᵀ: int32 when `epilogue` is None, else (row_stats, col_stats, bias, out_dtype)
    dequantized as `reference.int8_linear_matmul_dequant` (direct: `int8_scaled_matmul`)."""
    m, n, k, cfg = _plan(A, B, config, interpret)
    row = col = bias = mode = out_dtype = None
    if epilogue is not None:
        row, col, bias, mode = epilogue_operands(*epilogue[:3], direct=direct)
        out_dtype = np.dtype(epilogue[3])
    kw = dict(bias_mode=mode, out_dtype=out_dtype, cfg=cfg, num_sms=_target_device().core_count)
    kw["direct"] = direct
    out = _matmul_2d(A.reshape(m, k), B, row, col, bias, dequant=epilogue is not None, **kw)
    return out.reshape(*A.shape[:-1], n)


def int8_linear_matmul(
    A: jax.Array, B: jax.Array, *, config: WgmmaConfig | None = None, interpret: bool = False
) -> jax.Array:
    """Exact int8 product A @ Bᵀ in int32 by s8 wgmma (Hopper, compiled).

    Arguments and result as `fp8mm.int8_linear_matmul` (validated there): A int8
    [..., k] with its rows (flattened) and k multiples of 128, B int8 [n, k] with
    n a multiple of 256; returns int32 [..., n].

    Args:
      config: the kernel's `WgmmaConfig`; None: `choose_wgmma_config`.
      interpret: must be False (Mosaic GPU kernels run only compiled).

    Raises:
      ValueError: interpret is True, or the kernel does not serve this call
        (`supported_int8_linear_matmul` names why).
    """
    return _product(A, B, None, config, interpret)


def int8_linear_matmul_dequant(
    A, B, row_stats, col_stats, bias=None, out_dtype=jnp.float16, *, config=None, interpret=False
) -> jax.Array:
    """int8 matmul with the dequant epilogue fused, by s8 wgmma (Hopper, compiled).

    Arguments and result as `fp8mm.int8_linear_matmul_dequant` (validated there),
    with the shapes of `int8_linear_matmul`; bit for bit the Triton kernel's
    except with a float16 bias (within one float16 ulp with one).

    Args:
      config: the kernel's `WgmmaConfig | None`; None: `choose_wgmma_config`.
      interpret: must be False (Mosaic GPU kernels run only compiled).

    Raises:
      ValueError: interpret is True, or the kernel does not serve this call
        (`supported_int8_linear_matmul_dequant` names why).
    """
    return _product(A, B, (row_stats, col_stats, bias, out_dtype), config, interpret)


def int8_scaled_matmul(
    A, B, row_stats, col_stats, bias=None, out_dtype=jnp.bfloat16, *, config=None, interpret=False
) -> jax.Array:
    """The SwitchBack paper's fused int8 product by s8 wgmma (Hopper, compiled).

    Arguments and result as `fp8mm.int8_scaled_matmul` (validated there), with
    the shapes of `int8_linear_matmul`; the epilogue is
    `reference.scaled_values` (bit for bit the Triton kernel's without a bias).

    Args:
      config: the kernel's `WgmmaConfig | None`; None: `choose_wgmma_config`.
      interpret: must be False (Mosaic GPU kernels run only compiled).

    Raises:
      ValueError: interpret is True, or the kernel does not serve this call.
    """
    epilogue = (row_stats, col_stats, bias, out_dtype)
    return _product(A, B, epilogue, config, interpret, direct=True)
