"""Flax layers running fp8mm's 8-bit matmuls, for linen and nnx.

* `fp8mm.nn.linen`: `Fp8MixedDense`, `Fp8GlobalDense`, `SwitchBackDense`, the
  SwitchBack paper's `SwitchBackGlobalDense`, `SwitchBackVectorwiseDense`,
  `SwitchBackGlobalMemEfficientDense` (drop-in `nn.Dense`), the `quantize_dense` context and
  `int8_inference_params`.
* `fp8mm.nn.nnx`: `Fp8MixedLinear`, `Fp8GlobalLinear`, `SwitchBackLinear`,
  `SwitchBackGlobalLinear`, `SwitchBackVectorwiseLinear`,
  `SwitchBackGlobalMemEfficientLinear` (drop-in `nnx.Linear`), `quantize_model`
  and `to_int8_inference`.
* `fp8_mixed_dot_general`, `fp8_global_dot_general`, `switchback_dot_general`,
  `switchback_global_dot_general`, `switchback_vectorwise_dot_general`,
  `switchback_global_mem_efficient_dot_general`: callables for stock
  `nn.Dense(dot_general=...)` / `nnx.Linear(dot_general=...)`.
* `split_int8_params` / `merge_int8_params`: train the float parts of a linen
  model holding int8 inference weights (see `fp8mm.nn.linen.int8_inference_params`).
* `KINDS` and `OPTIONS` (kind -> its option names); every function here raises
  TypeError/ValueError naming the argument for a wrong type or value.
"""

from __future__ import annotations

from typing import Any

from fp8mm.dispatch import Impl
from fp8mm.nn import linen, nnx
from fp8mm.nn._core import KINDS, OPTIONS, Gemm, QuantSpec
from fp8mm.nn._dense import make_dot_general, quantized_dense
from fp8mm.nn._int8 import Int8Report, int8_inference_params, merge_int8_params, split_int8_params
from fp8mm.nn._report import ModuleRecord, QuantizeReport
from fp8mm.nn.nnx import quantize_model, to_int8_inference

__all__ = [
    "KINDS",
    "OPTIONS",
    "Int8Report",
    "ModuleRecord",
    "QuantSpec",
    "QuantizeReport",
    "fp8_global_dot_general",
    "fp8_mixed_dot_general",
    "int8_inference_params",
    "linen",
    "make_dot_general",
    "merge_int8_params",
    "nnx",
    "quantize_model",
    "quantized_dense",
    "split_int8_params",
    "switchback_dot_general",
    "switchback_global_dot_general",
    "switchback_global_mem_efficient_dot_general",
    "switchback_vectorwise_dot_general",
    "to_int8_inference",
]


def _fp8_dot_general(kind: str, name: str, doc: str):
    """The `dot_general` factory of an fp8 kind (both take the same options)."""

    def factory(
        fw_code: Any = None,
        bw_code: Any = None,
        bsz: int = -1,
        bsz2: int = -1,
        *,
        gemm: Gemm = "emulated",
        implementation: Impl = None,
    ):
        spec = QuantSpec(
            kind, fw_code, bw_code, bsz, bsz2, gemm=gemm, implementation=implementation
        )
        return make_dot_general(spec)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = doc
    return factory


fp8_mixed_dot_general = _fp8_dot_general(
    "fp8_mixed",
    "fp8_mixed_dot_general",
    """`dot_general` for nn.Dense / nnx.Linear running `fp8mm.matmul_fp8_mixed`.

    Args:
      fw_code: forward code float32 [256] (None: e4m3).
      bw_code: backward code (None: e5m2).
      bsz: forward block size (-1: `fp8mm.get_block_sizes`).
      bsz2: backward block size (-1: `fp8mm.get_block_sizes`).
      gemm: "emulated" (bitsandbytes' simulation) or "native" (the same codes on
        FP8 tensor cores; needs the default codes): as `linen.Fp8MixedDense`'s.
      implementation: None, "xla", "pallas", a kernel name or a sequence of these.
    """,
)
fp8_global_dot_general = _fp8_dot_general(
    "fp8_global",
    "fp8_global_dot_general",
    "`dot_general` for nn.Dense / nnx.Linear running `fp8mm.matmul_fp8_global` (args as for\n"
    "`fp8_mixed_dot_general`).",
)


def switchback_dot_general(
    threshold: float = 0.0, *, outlier_capacity: int | None = None, implementation: Impl = None
):
    """`dot_general` for nn.Dense / nnx.Linear running `fp8mm.switchback_bnb`.

    The bias stays outside the int8 product (flax adds it), and outlier masks
    are not sown; use `SwitchBackDense`/`SwitchBackLinear` for those.

    Args:
      threshold: outlier threshold (0 disables the decomposition).
      outlier_capacity: outlier slots under jit (None: the op's default).
      implementation: None, "xla", "pallas", a kernel name or a sequence of these.
    """
    return make_dot_general(
        QuantSpec(
            "switchback",
            threshold=threshold,
            outlier_capacity=outlier_capacity,
            implementation=implementation,
        )
    )


def _paper_dot_general(kind: str, name: str, what: str):
    """The `dot_general` factory of a SwitchBack paper kind (implementation only)."""

    def factory(*, implementation: Impl = None):
        return make_dot_general(QuantSpec(kind, implementation=implementation))

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"""`dot_general` for nn.Dense / nnx.Linear running `fp8mm.switchback_linear`
    ({what}): int8 forward and input gradient, 16-bit weight gradient.

    The bias stays outside the int8 product (flax adds it); the layers
    (`SwitchBack...Dense` / `SwitchBack...Linear`) fuse it.

    Args:
      implementation: None, "xla", "pallas", a kernel name or a sequence of these.
    """
    return factory


switchback_global_dot_general = _paper_dot_general(
    "switchback_global", "switchback_global_dot_general", "global weight scale"
)
switchback_vectorwise_dot_general = _paper_dot_general(
    "switchback_vectorwise", "switchback_vectorwise_dot_general", "per-feature weight scales"
)
switchback_global_mem_efficient_dot_general = _paper_dot_general(
    "switchback_global_mem_efficient",
    "switchback_global_mem_efficient_dot_general",
    "global weight scale, int8 activations kept for the weight gradient",
)
