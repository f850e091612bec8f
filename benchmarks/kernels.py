"""First throughput of each Pallas kernel on a GPU, beside XLA baselines of the same run.

Usage (on a GPU): python -m benchmarks.kernels [--tokens 8192] [--out PATH]

Times are medians over repeated batches of back-to-back calls (one
block_until_ready per batch, no per-call sync) after warm-up. Quantization
kernels report GB/s (bytes read + written) next to a device copy of the same
tensor; matmuls report TOPS next to XLA's int8 dot (both operands K-major) and
a bf16 matmul of the same shape. `--smoke` runs tiny shapes (CPU, interpret).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import fp8mm
from fp8mm import reference as ref


def bench(fn, *args, reps: int = 20, batches: int = 7) -> float:
    """Median seconds per call of jitted fn over `batches` batches of `reps` calls."""
    f = jax.jit(fn)
    jax.block_until_ready(f(*args))
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(batches):
        t0 = time.perf_counter()
        for _ in range(reps):
            out = f(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t0) / reps)
    return statistics.median(times)


def nbytes(*xs) -> int:
    return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in xs)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--features", type=int, default=4096)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    m, k = (64, 128) if a.smoke else (a.tokens, a.features)
    impl = "pallas"
    rows = []
    key = jax.random.key(0)
    x = jax.random.normal(key, (m, k), jnp.float32).astype(jnp.bfloat16)
    code = jnp.asarray(fp8mm.e4m3_code())
    copy_t = bench(lambda t: t * 1, x)
    copy_bw = 2 * nbytes(x) / copy_t
    rows.append(("copy x*1 (baseline)", f"{m}x{k} bf16", copy_t, copy_bw / 1e9, "GB/s", 1.0))

    def q_row(name, fn, out_bytes, *args):
        t = bench(fn, *args)
        bw = (nbytes(*args[:1]) + out_bytes) / t
        rows.append((name, f"{m}x{k}", t, bw / 1e9, "GB/s", bw / copy_bw))

    for i, bs in ((impl, 4096), (impl, 256), ("xla", 4096)):
        q_row(
            f"quantize_blockwise[{i}] bs={bs}",
            lambda t, i=i, bs=bs: fp8mm.quantize_blockwise(t, code, bs, implementation=i),
            m * k,
            x,
        )
        q_row(
            f"fake_quant_blockwise[{i}] bs={bs}",
            lambda t, i=i, bs=bs: fp8mm.fake_quant_blockwise(t, code, bs, implementation=i),
            nbytes(x),
            x,
        )
    q8, st = fp8mm.quantize_blockwise(x, code, 4096)
    q_row(
        f"dequantize_blockwise[{impl}]",
        lambda q: fp8mm.dequantize_blockwise(q, st, implementation=impl),
        nbytes(x),
        q8,
    )
    for i in (impl, "xla"):
        q_row(
            f"fake_quant_global[{i}]",
            lambda t, i=i: fp8mm.fake_quant_global(t, code, implementation=i),
            nbytes(x),
            x,
        )
        q_row(
            f"int8_vectorwise_quant[{i}]",
            lambda t, i=i: fp8mm.int8_vectorwise_quant(t, implementation=i),
            m * k,
            x,
        )
        q_row(
            f"int8_double_quant[{i}]",
            lambda t, i=i: fp8mm.int8_double_quant(t, implementation=i),
            2 * m * k,
            x,
        )
        q_row(
            f"int8_vectorwise_quant_t[{i}]",
            lambda t, i=i: fp8mm.int8_vectorwise_quant_t(t, implementation=i),
            m * k,
            x,
        )

    shapes = (
        [(64, 128, 96)]
        if a.smoke
        else [(a.tokens, 4096, 4096), (a.tokens, 16384, 4096), (8192, 8192, 8192)]
    )
    for mm, nn, kk in shapes:
        A8 = jax.random.randint(key, (mm, kk), -127, 128, jnp.int8)
        B8 = jax.random.randint(key, (nn, kk), -127, 128, jnp.int8)
        rs = jnp.ones((mm,), jnp.float32)
        cs = jnp.ones((nn,), jnp.float32)
        Ab = A8.astype(jnp.bfloat16)
        Bb = B8.astype(jnp.bfloat16)
        ops = 2 * mm * nn * kk
        t_bf16 = bench(lambda a, b: jnp.matmul(a, b.T), Ab, Bb)
        t_xla8 = bench(lambda a, b: ref.int8_linear_matmul(a, b), A8, B8)
        t_p8 = bench(lambda a, b: fp8mm.int8_linear_matmul(a, b, implementation=impl), A8, B8)
        t_pd = bench(
            lambda a, b: fp8mm.int8_linear_matmul_dequant(
                a, b, rs, cs, None, jnp.bfloat16, implementation=impl
            ),
            A8,
            B8,
        )
        t_xd = bench(lambda a, b: ref.int8_linear_matmul_dequant(a, b, rs, cs), A8, B8)
        shape = f"{mm}x{nn}x{kk}"
        for name, t in (
            ("bf16 matmul (baseline)", t_bf16),
            ("XLA int8 dot", t_xla8),
            ("pallas int8 matmul", t_p8),
            ("pallas int8 matmul+dequant", t_pd),
            ("XLA int8 dot + dequant", t_xd),
        ):
            rows.append((name, shape, t, ops / t / 1e12, "TOPS", t_bf16 / t))

    dev = jax.devices()[0].device_kind
    print(f"\n# kernels on {dev}, jax {jax.__version__}")
    print("| what | shape | ms | rate | unit | vs baseline |\n|---|---|---|---|---|---|")
    for name, shape, t, rate, unit, ratio in rows:
        print(f"| {name} | {shape} | {t * 1e3:.3f} | {rate:.0f} | {unit} | {ratio:.2f} |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"device": dev, "jax": jax.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
