"""fp8mm in one page: quantize a tensor, run each 8-bit matmul forward and backward.

Prints the error of every quantized result against the full-precision one.
Run with `make demo` (or `python examples/quickstart.py`).
"""

import jax
import jax.numpy as jnp
import numpy as np

import fp8mm


def rel(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return np.linalg.norm(x - y) / np.linalg.norm(y)


def main():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    tokens, d_in, d_out = 256, 512, 384
    A = jax.random.normal(k1, (tokens, d_in), jnp.float32).astype(jnp.bfloat16)
    W = (jax.random.normal(k2, (d_in, d_out), jnp.float32) / np.sqrt(d_in)).astype(jnp.bfloat16)
    g = jax.random.normal(k3, (tokens, d_out), jnp.float32).astype(jnp.bfloat16)
    fw, bw = fp8mm.e4m3_code(), fp8mm.e5m2_code()

    print(f"backend: {jax.default_backend()}, fp8mm {fp8mm.__version__}\n")
    print("quantization round trips (relative error):")
    q, state = fp8mm.quantize_blockwise(A, fw, blocksize=256)
    print(f"  blockwise e4m3, blocksize 256   {rel(fp8mm.dequantize_blockwise(q, state), A):.4f}")
    q, state = fp8mm.quantize(A, fw)
    print(f"  global e4m3                     {rel(fp8mm.dequantize(q, state), A):.4f}")
    CA, row_stats, _ = fp8mm.int8_vectorwise_quant(A)
    deq = CA.astype(jnp.float32) * row_stats[:, None] / 127
    print(f"  int8 row-wise                   {rel(deq, A):.4f}")

    out_ref, vjp_ref = jax.vjp(jnp.matmul, A.astype(jnp.float32), W.astype(jnp.float32))
    gA_ref, gW_ref = vjp_ref(g.astype(jnp.float32))

    ops = {
        "matmul_fp8_mixed": lambda a, w: fp8mm.matmul_fp8_mixed(a, w, fw, bw),
        "matmul_fp8_global": lambda a, w: fp8mm.matmul_fp8_global(a, w, fw, bw),
        "switchback_bnb": lambda a, w: fp8mm.switchback_bnb(a, w.T),
    }
    print("\nmatmuls vs float32 (relative error):")
    print(f"  {'op':<20} {'out':>8} {'gradA':>8} {'gradW':>8}")
    for name, op in ops.items():
        out, vjp = jax.vjp(jax.jit(op), A, W)
        gA, gW = vjp(g)
        print(
            f"  {name:<20} {rel(out, out_ref):8.4f} {rel(gA, gA_ref):8.4f} {rel(gW, gW_ref):8.4f}"
        )
    out16, vjp16 = jax.vjp(jnp.matmul, A, W)
    gA16, gW16 = vjp16(g)
    print(
        f"  {'plain bf16 matmul':<20} {rel(out16, out_ref):8.4f} {rel(gA16, gA_ref):8.4f} "
        f"{rel(gW16, gW_ref):8.4f}"
    )


if __name__ == "__main__":
    main()
