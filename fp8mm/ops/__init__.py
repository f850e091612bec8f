"""Quantized matmuls with custom VJPs: bitsandbytes' research autograd functions.

* `matmul_fp8_mixed`: simulated-FP8 matmul, activations blockwise-quantized
  and the weight globally quantized in the forward pass; the output gradient
  blockwise-quantized with the backward code for gradA, while gradB is the
  plain 16-bit Aᵀ·grad.
* `matmul_fp8_global`: the same with global quantization everywhere, and gradB
  = Q(Aᵀ)·Q_bw(grad).
* `switchback_linear`: the SwitchBack paper's layer: int8 forward AND int8
  input gradient, 16-bit weight gradient (global, vectorwise, mem_efficient);
  `prepare_switchback_weight` for its int8 inference weights.
* `switchback_bnb`: SwitchBack int8 matmul: int8 forward (row-wise quantized
  activations and weight, optional 16-bit outlier columns), 16-bit weight
  gradient ("switch back") and gradA through the dequantized int8 weight.

The forward products and the asymmetric backward passes reproduce
bitsandbytes 0.49.2 on CUDA (docs/exactness.md). Every cotangent has its primal's
shape and dtype; codebooks receive zero cotangents. The quantization
primitives run through `fp8mm.functional`, so on a GPU they use the Pallas
kernels by default (`implementation=` overrides, see `fp8mm.dispatch`).

Layout: `_fp8` holds the one fp8 custom VJP and its recipes (`_fp8.Recipe`:
how each operand and the output gradient are quantized), `_switchback` the
SwitchBack matmul, `_switchback_linear` the paper's layer and `_common` the GEMM
and checks they share.
"""

from fp8mm.ops._fp8 import get_block_sizes, matmul_fp8_global, matmul_fp8_mixed
from fp8mm.ops._switchback import prepare_int8_weight, switchback_bnb
from fp8mm.ops._switchback_linear import prepare_switchback_weight, switchback_linear

__all__ = [
    "get_block_sizes",
    "matmul_fp8_global",
    "matmul_fp8_mixed",
    "prepare_int8_weight",
    "prepare_switchback_weight",
    "switchback_bnb",
    "switchback_linear",
]
