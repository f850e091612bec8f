"""What the linen and nnx suites share: per-kind tolerances and dot_general factories."""

import fp8mm.nn as fnn

KINDS = fnn.KINDS
# Relative error of a quantized layer against nn.Dense / nnx.Linear with the same params
# (normal inputs).
QUANT_TOL = {
    "fp8_mixed": 0.08,
    "fp8_global": 0.10,
    "switchback": 0.03,
    "switchback_global": 0.03,
    "switchback_vectorwise": 0.03,
    "switchback_global_mem_efficient": 0.03,
}
FACTORIES = {
    "fp8_mixed": fnn.fp8_mixed_dot_general,
    "fp8_global": fnn.fp8_global_dot_general,
    "switchback": fnn.switchback_dot_general,
    "switchback_global": fnn.switchback_global_dot_general,
    "switchback_vectorwise": fnn.switchback_vectorwise_dot_general,
    "switchback_global_mem_efficient": fnn.switchback_global_mem_efficient_dot_general,
}
if set(QUANT_TOL) != set(KINDS) or set(FACTORIES) != set(KINDS):  # a new kind needs its rows
    raise ImportError(f"tests/nn_cases.py lists {sorted(QUANT_TOL)}; fp8mm.nn.KINDS is {KINDS}")
