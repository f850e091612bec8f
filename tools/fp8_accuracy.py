"""FP8 GEMM accuracy and speed on a GPU: the f8 wgmma kernel and XLA's float8 dot.

For each shape: the relative error (Frobenius, against a float64 product of the same
float8 operands on a 512-row slice) of `fp8_scaled_matmul` with float32 and bf16
output, per implementation, and the device time per call (profiler trace) beside a
bf16 GEMM of the same shape. Run on the GPU machine from the repository root:

    PYTHONPATH=. python3 tools/fp8_accuracy.py
"""

import jax
import jax.numpy as jnp
import numpy as np

import fp8mm
from benchmarks.common import device_events

SHAPES = ((8192, 4096, 4096), (8192, 4096, 16384), (8192, 16384, 4096), (16384, 4096, 4096))
IMPLS = {"wgmma": "pallas_mosaic_gpu", "xla": "xla"}


def _gemm(impl, out_dtype, sb):
    return jax.jit(
        lambda a, b, s: fp8mm.fp8_scaled_matmul(a, b, s, sb, out_dtype, implementation=impl)
    )


def _device_ms(f, *args, n=20) -> float:
    return sum(e[2] for e in device_events(lambda: f(*args), n)) / n / 1e6


def main() -> None:
    rng = np.random.default_rng(0)
    sb = jnp.float32(0.01)
    rows = []
    for m, k, n in SHAPES:
        A = jnp.asarray(rng.standard_normal((m, k)) * 30, jnp.float8_e4m3fn)
        B = jnp.asarray(rng.standard_normal((n, k)) * 30, jnp.float8_e4m3fn)
        sa = jnp.asarray(rng.uniform(0.5, 2, (m, 1)), jnp.float32)
        ref = (np.asarray(A[:512], np.float64) @ np.asarray(B, np.float64).T) * np.asarray(sa[:512])
        ref = ref * 0.01
        err, ms = {}, {}
        for name, impl in IMPLS.items():
            for out in (jnp.float32, jnp.bfloat16):
                got = np.asarray(_gemm(impl, out, sb)(A, B, sa)[:512].astype(jnp.float32))
                err[name, out] = np.linalg.norm(got - ref) / np.linalg.norm(ref)
            ms[name] = _device_ms(_gemm(impl, jnp.bfloat16, sb), A, B, sa)
        bf = jax.jit(lambda a, b: jnp.dot(a, b.T, preferred_element_type=jnp.bfloat16))
        ms["bf16"] = _device_ms(bf, A.astype(jnp.bfloat16), B.astype(jnp.bfloat16))
        rows.append(((m, k, n), err, ms))
    print(
        "| shape | wgmma ms | XLA fp8 ms | bf16 ms | wgmma TFLOP/s | wgmma/bf16 | "
        "err f32 wgmma / XLA | err bf16 out |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for (m, k, n), err, ms in rows:
        tflops = 2 * m * k * n / ms["wgmma"] / 1e9
        print(
            f"| {m}x{k}->{n} | {ms['wgmma']:.3f} | {ms['xla']:.3f} | {ms['bf16']:.3f} | "
            f"{tflops:.0f} | {ms['wgmma'] / ms['bf16']:.2f} | "
            f"{err['wgmma', jnp.float32]:.1e} / {err['xla', jnp.float32]:.1e} | "
            f"{err['wgmma', jnp.bfloat16]:.1e} |"
        )


if __name__ == "__main__":
    main()
