"""Pallas GPU kernels, one module per concern; `fp8mm.dispatch` finds them by name.

* `codebook`: blockwise and global codebook quantization, dequantization and
  fake quantization (Triton), with the bucket tables of `_codebook_table`;
* `int8_quant`: row-, column- and transposed int8 quantization (Triton);
* `int8_matmul_triton`: int8 matmul, fused dequant and the dequant epilogue (Triton);
* `int8_matmul_wgmma`: the int8 matmul and fused dequant as s8 wgmma (Mosaic GPU, Hopper).

Each module follows one layout: a docstring; config dataclasses with their
heuristic and search space side by side; private kernels; public wrappers
named like the primitive they serve (taking the reference's arguments plus
`config=` and `interpret=`) and their `supported_<primitive>` predicates. The
primitive specs in `fp8mm.functional` list which module serves which primitive.
"""
