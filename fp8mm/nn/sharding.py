"""Multi-device fp8mm layers: GSPMD shardings, and `shard_map` partitioning for Pallas kernels.

Two ways to run fp8mm layers on a `jax.sharding.Mesh`:

1. GSPMD (the default). Put the batch on a 'data' axis (`batch_sharding`) and,
   for tensor parallelism, each Dense kernel's output features on a 'model'
   axis (`dense_param_shardings`), and jit the training step. On the XLA
   path (CPU, or `implementation="xla"`) the ops are ordinary XLA and are
   partitioned like any other computation: global absmax reductions become
   cross-device max reductions, so the result is the single-device result up
   to float summation order.
2. `partition(mesh, ...)`, a context read while tracing: every fp8mm product
   runs inside `jax.shard_map`, each device quantizing and multiplying its own
   shard. Pallas kernels are opaque custom calls to XLA's partitioner (it
   would gather their operands onto every device), so this is how the Pallas
   path is partitioned. Every kind splits on either axis and on both, with the
   single-device quantization codes (the products within float summation order):

   | kind         | batch (data) axis                 | output-feature (model) axis        |
   |--------------|-----------------------------------|------------------------------------|
   | switchback   | yes (outlier columns combined     | yes (weight rows per feature)      |
   |              | over the axis: a pmax)            |                                    |
   | fp8_mixed    | yes (blocks spanning batch shards:| yes (B's absmax: a pmax; gradient  |
   |              | a pmax of their absmax)           | blocks spanning the split features:|
   |              |                                   | a pmax of one int32 per block)     |
   | fp8_global   | yes (absmax of A, B, grad: a      | yes (the same pmax)                |
   |              | pmax over the mesh axes)          |                                    |
   | switchback_* | yes (rows of X and of the         | yes (W's absmax, the gradient's    |
   | (the paper's)| gradient are quantized per row)   | row absmax, vectorwise W's per-    |
   |              |                                   | input-feature absmax: pmaxes)      |

   The ops take the mesh axes their
   statistics reduce over (`axis_names=`, and `feature_axis_names=` for the fp8
   ops' blocks across split output features); every absmax is a `lax.pmax` of
   its int32 bits (exact, NaN kept). Added per step for a 4096->4096 bf16 layer
   and 8192 tokens, model 4 (data 2 x model 2): switchback_global and
   mem_efficient 32 KiB (16 KiB: W's absmax and the gradient's row absmaxes),
   switchback_vectorwise 48 KiB (32 KiB), fp8_mixed 32 KiB (16 KiB, one int32 per
   bsz2 block; none when bsz2 divides the shard width), fp8_global 12 bytes;
   switchback's outlier mask is a bool [in] pmax over the batch axis. Every model
   split also pays tensor parallelism's input-gradient all-reduce ([8192, 4096]
   in bf16: 64 MiB); docs/design.md lists every kind's collectives. The
   shard_map runs with `check_vma=False` (Pallas interpret mode cannot trace
   under the varying-axes check); so must a shard_map of your own around
   fp8mm's Pallas kernels.

FSDP (ZeRO-3) under `partition`: with `fsdp_axis=` (the batch axis) each kernel
enters the shard_map as its shard [in / fsdp, out / model], the layout of
`dense_param_shardings(..., fsdp_axis=)`. By default the shard is all-gathered
over that axis in the kernel's dtype for the product, and the transpose of the
gather reduce-scatters its gradient. With `gather_8bit=True` the kinds that
quantize the whole weight anyway gather its 8-bit codes instead (half of a
16-bit gather's bytes): each device quantizes its own shard with the statistic
combined over the mesh (a `lax.pmax` of the absmax, of each row's absmax for
switchback's row-wise weight), the 1-byte codes are all-gathered and multiplied,
and the 16-bit weight gradient is reduce-scattered back to the shard
(`fp8mm.nn._fsdp`): fp8_mixed and fp8_global (uint8 codes, emulated;
float8_e4m3fn bytes, gemm="native"), switchback (int8 rows, threshold 0), and
switchback_global / switchback_global_mem_efficient (int8, one scale). The
others raise `NotImplementedError` under `gather_8bit=True`: switchback's
outlier columns need the 16-bit weight, and switchback_vectorwise quantizes
the weight twice (per output and per input feature), two sets of codes that
weigh what one 16-bit gather does. SwitchBack int8 inference weights (CB)
are gathered as the int8 arrays they are in either mode.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "Partition",
    "batch_sharding",
    "current_partition",
    "dense_param_shardings",
    "nnx_param_shardings",
    "partition",
    "shard_map",
]


def shard_map(f, *, mesh: Mesh, in_specs, out_specs, check_vma: bool = True):
    """`jax.shard_map` (JAX >= 0.7), else `jax.experimental.shard_map.shard_map`."""
    if hasattr(jax, "shard_map"):
        return jax.shard_map(
            f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=check_vma
        )
    from jax.experimental.shard_map import shard_map as legacy  # pragma: no cover

    return legacy(
        f, mesh, in_specs=in_specs, out_specs=out_specs, check_rep=check_vma
    )  # pragma: no cover


@dataclasses.dataclass(frozen=True)
class Partition:
    """How `partition` splits each fp8mm product.

    Attributes:
      mesh: the device mesh.
      batch_axis: mesh axis of the activations' leading (batch) dimension, or None.
      model_axis: mesh axis of the kernel's output features, or None.
      fsdp_axis: mesh axis of the kernel's input features (FSDP), or None; the
        batch axis, as in ZeRO-3.
      gather_8bit: with fsdp_axis, gather the weight as its 8-bit codes.
    """

    mesh: Mesh
    batch_axis: str | None = None
    model_axis: str | None = None
    fsdp_axis: str | None = None
    gather_8bit: bool = False

    def __post_init__(self) -> None:
        _check_mesh(self.mesh)
        for name in ("batch_axis", "model_axis", "fsdp_axis"):
            _check_axis(self.mesh, name, getattr(self, name), allow_none=True)
        if self.batch_axis is not None and self.batch_axis == self.model_axis:
            raise ValueError(
                f"batch_axis and model_axis must be different mesh axes, both are "
                f"{self.batch_axis!r}"
            )
        if self.fsdp_axis is not None and self.fsdp_axis != self.batch_axis:
            # Each device's weight gradient sums over its own batch shard; the
            # reduce-scatter over the fsdp axis completes the sum only when that axis is
            # the batch's (activations replicated over it would be counted once per device).
            raise ValueError(
                f"fsdp_axis must be the batch axis {self.batch_axis!r} (the parameters are "
                f"sharded over the devices that split the batch), got {self.fsdp_axis!r}"
            )
        if not isinstance(self.gather_8bit, bool):
            raise TypeError(f"gather_8bit must be a bool, got {self.gather_8bit!r}")
        if self.gather_8bit and self.fsdp_axis is None:
            raise ValueError(
                "gather_8bit=True needs fsdp_axis (the axis the weights are split over)"
            )

    def size(self, axis: str | None) -> int:
        return 1 if axis is None else int(self.mesh.shape[axis])

    def split_axes(self) -> tuple[str, ...]:
        """The mesh axes this partition splits over (batch and model, where of size > 1)."""
        return tuple(a for a in (self.batch_axis, self.model_axis) if self.size(a) > 1)

    @property
    def fsdp(self) -> str | None:
        """The fsdp axis when it splits the kernels (size > 1), else None."""
        return self.fsdp_axis if self.size(self.fsdp_axis) > 1 else None


_MESH_TYPES = tuple(t for t in (Mesh, getattr(jax.sharding, "AbstractMesh", None)) if t is not None)


def _check_mesh(mesh: Any) -> None:
    if not isinstance(mesh, _MESH_TYPES):
        raise TypeError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")


def _check_axis(mesh: Mesh, name: str, axis: Any, *, allow_none: bool) -> None:
    if axis is None and allow_none:
        return
    if not isinstance(axis, str):
        raise TypeError(f"{name} must be a mesh axis name (str), got {axis!r}")
    if axis not in mesh.shape:
        raise ValueError(f"{name} must be one of the mesh axes {tuple(mesh.shape)}, got {axis!r}")


_current: contextvars.ContextVar[Partition | None] = contextvars.ContextVar(
    "fp8mm_partition", default=None
)


def current_partition() -> Partition | None:
    """The innermost active `partition`, or None."""
    return _current.get()


@contextlib.contextmanager
def partition(
    mesh: Mesh,
    batch_axis: str | None = "data",
    model_axis: str | None = None,
    *,
    fsdp_axis: str | None = None,
    gather_8bit: bool = False,
) -> Iterator[Partition]:
    """Within this context (at trace time), fp8mm products run per shard in `shard_map`.

    Like `fp8mm.nn.linen.quantize_dense`, it acts while the model is traced: enter
    it inside the function given to `jax.jit`, not around a call of a jitted
    function traced before (its cached, unpartitioned trace would run).

    Args:
      mesh: device mesh.
      batch_axis: mesh axis sharding the activations' leading dimension (None: replicated).
      model_axis: mesh axis sharding the kernels' output features (None: replicated).
      fsdp_axis: FSDP: the mesh axis the kernels' input features are sharded over
        (must be batch_axis); each kernel [in, out] enters the shard_map as its
        [in / fsdp, out / model] shard (`dense_param_shardings(..., fsdp_axis=)`'s
        layout), is all-gathered for the product and its gradient reduce-scattered.
        None: kernels enter whole over the batch axis (GSPMD gathers a sharded one).
      gather_8bit: with fsdp_axis, all-gather the weight's 8-bit codes (quantized per
        shard with mesh-wide statistics) instead of the 16-bit weight, for the kinds
        that quantize the whole weight anyway (see the module docstring); the others
        raise NotImplementedError. The numbers are the single-device ones either way.

    Raises:
      TypeError: a mesh that is no Mesh, an axis that is no str, a gather_8bit that
        is no bool.
      ValueError: an axis not in the mesh, batch_axis == model_axis, fsdp_axis not the
        batch axis, gather_8bit without fsdp_axis.

    Examples:
      >>> import jax, jax.numpy as jnp, numpy as np
      >>> from jax.sharding import Mesh
      >>> from fp8mm.nn import linen as fl, sharding
      >>> mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
      >>> layer = fl.Fp8GlobalDense(8)
      >>> x = jnp.ones((4, 16))
      >>> params = layer.init(jax.random.key(0), x)
      >>> def f(p, x):
      ...     with sharding.partition(mesh, "data", fsdp_axis="data", gather_8bit=True):
      ...         return layer.apply(p, x)
      >>> jax.jit(f)(params, x).shape
      (4, 8)
    """
    part = Partition(mesh, batch_axis, model_axis, fsdp_axis, gather_8bit)  # validates
    token = _current.set(part)
    try:
        yield part
    finally:
        _current.reset(token)


def batch_sharding(mesh: Mesh, batch_axis: str = "data") -> NamedSharding:
    """Data parallelism: the leading (batch) dimension split over `batch_axis`."""
    _check_mesh(mesh)
    _check_axis(mesh, "batch_axis", batch_axis, allow_none=False)
    return NamedSharding(mesh, P(batch_axis))


def dense_param_shardings(
    params: Any, mesh: Mesh, model_axis: str | None = None, fsdp_axis: str | None = None
) -> Any:
    """NamedShardings for a linen params tree: tensor parallelism, FSDP, or both.

    Dense-style leaves (2-D 'kernel', 1-D 'bias' beside it) are split on the
    output features over `model_axis` (tensor parallelism), and so are the int8
    inference weights of SwitchBack layers ('CB' [out, in] on its rows, 'SCB'
    [out], the bias). With `fsdp_axis` (fully sharded data parallelism, usually
    the batch axis) the kernels are also split on their input features ('CB' on
    its columns), and every other leaf whose leading dimension divides evenly
    (embeddings, positional tables) on that dimension; jit (GSPMD) then gathers
    each weight for its product, or `partition(..., fsdp_axis=)` does inside its
    shard_map (with `gather_8bit=True` as the weight's 8-bit codes) and
    reduce-scatters its gradient. The rest is replicated.

    Args:
      params: a linen params tree (nested dicts of arrays).
      mesh: the device mesh.
      model_axis: mesh axis of the output features, or None.
      fsdp_axis: mesh axis the parameters are sharded over for FSDP, or None.

    Returns:
      A tree of `NamedSharding`s of params' structure, for `jax.device_put` or
      `jax.jit(..., in_shardings=...)`.

    Examples:
      >>> import jax, numpy as np
      >>> from jax.sharding import Mesh
      >>> from fp8mm.nn import sharding
      >>> mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
      >>> params = {"Dense_0": {"kernel": np.zeros((4, 8)), "bias": np.zeros(8)}}
      >>> s = sharding.dense_param_shardings(params, mesh, "model", fsdp_axis="data")
      >>> tuple(s["Dense_0"]["kernel"].spec), tuple(s["Dense_0"]["bias"].spec)
      (('data', 'model'), ('model',))
    """
    if not isinstance(params, Mapping):
        raise TypeError(
            f"params must be a linen parameter tree (nested dicts), got {type(params).__name__}"
        )
    _check_mesh(mesh)
    _check_axis(mesh, "model_axis", model_axis, allow_none=True)
    _check_axis(mesh, "fsdp_axis", fsdp_axis, allow_none=True)
    if fsdp_axis is not None and fsdp_axis == model_axis:
        raise ValueError(f"fsdp_axis and model_axis must differ, both are {fsdp_axis!r}")
    fsdp_size = 1 if fsdp_axis is None else int(mesh.shape[fsdp_axis])

    def leaf(value):
        shape = getattr(value, "shape", ())
        if fsdp_axis is not None and len(shape) >= 1 and shape[0] % fsdp_size == 0:
            return NamedSharding(mesh, P(fsdp_axis))
        return NamedSharding(mesh, P())

    def walk(tree):
        if not isinstance(tree, Mapping):
            return leaf(tree)
        kernel = getattr(tree.get("kernel"), "ndim", 0) == 2
        int8 = getattr(tree.get("CB"), "ndim", 0) == 2
        split = {}
        if (model_axis is not None or fsdp_axis is not None) and (kernel or int8):
            split = {"kernel": P(fsdp_axis, model_axis), "CB": P(model_axis, fsdp_axis)}
            split.update(SCB=P(model_axis), bias=P(model_axis))
        out = {}
        for key, value in tree.items():
            if key in split and not isinstance(value, Mapping):
                out[key] = NamedSharding(mesh, split[key])
            else:
                out[key] = walk(value)
        return out

    return walk(params)


def nnx_param_shardings(
    model: Any, mesh: Mesh, model_axis: str | None = None, fsdp_axis: str | None = None
) -> Any:
    """`dense_param_shardings` for an nnx model: an `nnx.State` of NamedShardings.

    The layout rules are `dense_param_shardings`'s, applied to the model's
    `nnx.Param` state (Linear-style 'kernel' [in, out] and 'bias', SwitchBack int8
    'CB'/'SCB'). Put the model on the mesh with
    `nnx.update(model, jax.device_put(nnx.state(model, nnx.Param), shardings))`.

    Args:
      model: an nnx module (fp8mm's layers or flax's).
      mesh: the device mesh.
      model_axis: mesh axis of the output features, or None.
      fsdp_axis: mesh axis the parameters are sharded over for FSDP, or None.

    Returns:
      `nnx.State` of `nnx.state(model, nnx.Param)`'s structure whose leaves are
      NamedShardings.
    """
    from flax import nnx

    state = nnx.state(model, nnx.Param)
    shardings = dense_param_shardings(state.to_pure_dict(), mesh, model_axis, fsdp_axis)
    state.replace_by_pure_dict(shardings)
    return state
