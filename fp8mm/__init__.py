"""fp8mm: bitsandbytes' research 8-bit matmuls (simulated FP8 and SwitchBack int8) for JAX.

The quantization primitives (`fp8mm.functional`) reproduce bitsandbytes 0.49.2
bit for bit; see the README for the layers built on them.
"""

from fp8mm import functional as _functional
from fp8mm import functional_fp8 as _functional_fp8
from fp8mm import functional_switchback as _functional_switchback
from fp8mm import ops as _ops
from fp8mm.codebooks import (
    Fp8Format,
    create_dynamic_map,
    create_fp8_map,
    e4m3_code,
    e5m2_code,
    native_format,
)
from fp8mm.dispatch import default_implementation, use_implementation
from fp8mm.functional import (
    dequantize,
    dequantize_blockwise,
    fake_quant_blockwise,
    fake_quant_global,
    int8_double_quant,
    int8_linear_matmul,
    int8_linear_matmul_dequant,
    int8_mm_dequant,
    int8_vectorwise_quant,
    int8_vectorwise_quant_t,
    outlier_indices,
    quantize,
    quantize_blockwise,
)
from fp8mm.functional_fp8 import dequantize_fp8, fp8_row_scales, fp8_scaled_matmul, quantize_fp8
from fp8mm.functional_switchback import (
    int8_scaled_matmul,
    quantize_columnwise_and_transpose,
    quantize_global,
    quantize_rowwise,
)
from fp8mm.ops import (
    get_block_sizes,
    matmul_fp8_global,
    matmul_fp8_mixed,
    prepare_int8_weight,
    prepare_switchback_weight,
    switchback_bnb,
    switchback_linear,
)
from fp8mm.state import Fp8Tensor, MatmulLtState, QuantState

__version__ = "0.1.0"

# The primitives and the ops are listed in their modules' __all__ (hence F401 is off
# for this file in pyproject.toml).
__all__ = [
    "Fp8Format",
    "Fp8Tensor",
    "MatmulLtState",
    "QuantState",
    "create_dynamic_map",
    "create_fp8_map",
    "default_implementation",
    "e4m3_code",
    "e5m2_code",
    "native_format",
    "use_implementation",
]
__all__ += _functional.__all__
__all__ += _functional_fp8.__all__
__all__ += _functional_switchback.__all__
__all__ += _ops.__all__
