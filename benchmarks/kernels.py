"""Kernel section of the suite: quantization primitives and int8 matmuls, each implementation.

Quantization primitives report GB/s (bytes read + written, the minimum traffic)
beside a device-to-device copy of the same tensor in the same run; the int8
matmuls report TOPS beside a 16-bit matmul of the same shape and XLA's own
int8 dot (`lax.dot_general` to int32, both operands K-major). Primitives have
no backward pass of their own (the ops' custom VJPs call them), so they are
timed forward only.

Usage: `python -m benchmarks.kernels [run.py flags]` is `python -m benchmarks.run
--only kernels [flags]`.
"""

from __future__ import annotations

import sys

from benchmarks.common import Plan, Row, Runner, host_normal, linear_label, nbytes

BLOCK = 4096  # the block size matmul_fp8_mixed picks for 4096/16384 features
SMALL_BLOCK = 256
# XLA's int8 dot itself. Not fp8mm's implementation="xla": on a GPU that runs exact
# chunked bf16 GEMMs (fp8mm.reference.int8_linear_matmul), which is no int8 baseline.
XLA_INT8_DOT = "int8 dot (XLA)"


def quant_shapes(plan: Plan) -> list[tuple[int, int]]:
    """[tokens, features] activation shapes: every token count x every distinct feature size."""
    feats = sorted({k for k, _ in plan.dims} | {n for _, n in plan.dims})
    if plan.smoke:
        return [(plan.tokens[0], plan.dims[0][0])]
    return [(t, f) for t in plan.tokens for f in feats]


def _codes_and_absmax(result: tuple) -> tuple:
    """What a quantize primitive computes: codes and absmax.

    Its QuantState also holds the caller's codebook, which as an output of the
    timed program (a constant here) costs a device copy per call that the
    primitive itself never makes (the state refers to the caller's array).
    """
    q, state = result
    return q, state.absmax


def run_quant(r: Runner, plan: Plan) -> None:
    """Copy baseline and every quantization primitive per activation shape."""
    import jax.numpy as jnp

    import fp8mm

    code = jnp.asarray(fp8mm.e4m3_code())
    dt = plan.dtypes[0]
    for t, f in quant_shapes(plan):
        shape = f"{t}x{f}"
        x = jnp.asarray(host_normal((t, f), 1)).astype(dt)
        size, xb = t * f, nbytes(x)
        copy = Row("kernels", "copy", "jnp", "-", shape, dt, is_baseline=True)
        r.jax_case(copy, lambda x: x * 1, (x,), 2 * xb, "GB/s", device=True)
        # Inputs of the dequantize primitives, made once with the reference.
        qb, stb = fp8mm.quantize_blockwise(x, code, blocksize=BLOCK, implementation="xla")
        qg, stg = fp8mm.quantize(x, code, implementation="xla")

        def row(group: str, impl: str) -> Row:
            return Row("kernels", group, impl, "-", shape, dt, base=copy.key)

        for impl in plan.impls:
            blocks = (BLOCK, SMALL_BLOCK) if impl == "pallas" else (BLOCK,)
            for bs in blocks:
                r.jax_case(
                    row(f"quantize_blockwise({bs})", impl),
                    lambda x, i=impl, bs=bs: _codes_and_absmax(
                        fp8mm.quantize_blockwise(x, code, blocksize=bs, implementation=i)
                    ),
                    (x,),
                    xb + size,
                    "GB/s",
                    device=True,
                )
                r.jax_case(
                    row(f"fake_quant_blockwise({bs})", impl),
                    lambda x, i=impl, bs=bs: fp8mm.fake_quant_blockwise(
                        x, code, bs, implementation=i
                    ),
                    (x,),
                    2 * xb,
                    "GB/s",
                    device=True,
                )
            r.jax_case(
                row(f"dequantize_blockwise({BLOCK})", impl),
                lambda q, s, i=impl: fp8mm.dequantize_blockwise(q, s, implementation=i),
                (qb, stb),
                size + xb,
                "GB/s",
                device=True,
            )
            r.jax_case(
                row("quantize", impl),
                lambda x, i=impl: _codes_and_absmax(fp8mm.quantize(x, code, implementation=i)),
                (x,),
                xb + size,
                "GB/s",
                device=True,
            )
            r.jax_case(
                row("dequantize", impl),  # float32 output
                lambda q, s, i=impl: fp8mm.dequantize(q, s, implementation=i),
                (qg, stg),
                size + 4 * size,
                "GB/s",
                device=True,
            )
            r.jax_case(
                row("fake_quant_global", impl),
                lambda x, i=impl: fp8mm.fake_quant_global(x, code, implementation=i),
                (x,),
                2 * xb,
                "GB/s",
                device=True,
            )
            r.jax_case(
                row("int8_vectorwise_quant", impl),
                lambda x, i=impl: fp8mm.int8_vectorwise_quant(x, implementation=i),
                (x,),
                xb + size,
                "GB/s",
                device=True,
            )
            r.jax_case(
                row("int8_double_quant", impl),
                lambda x, i=impl: fp8mm.int8_double_quant(x, implementation=i),
                (x,),
                xb + 2 * size,
                "GB/s",
                device=True,
            )
            r.jax_case(
                row("int8_vectorwise_quant_t", impl),
                lambda x, i=impl: fp8mm.int8_vectorwise_quant_t(x, implementation=i),
                (x,),
                xb + size,
                "GB/s",
                device=True,
            )


def _int8_data(t: int, k: int, n: int, dt: str) -> tuple:
    """int8 A [t, k], B [n, k], their 16-bit casts, row/col stats and an int32 product."""
    import jax
    import jax.numpy as jnp

    def codes(key: jax.Array, shape: tuple[int, int]) -> jax.Array:
        # Random bits are far cheaper to compile than randint; -128 is folded to -127 to stay
        # within bitsandbytes' code range.
        x = jax.lax.bitcast_convert_type(jax.random.bits(key, shape, jnp.uint8), jnp.int8)
        return jnp.maximum(x, jnp.int8(-127))

    def make(key: jax.Array) -> tuple:
        ka, kb, kc = jax.random.split(key, 3)
        A8, B8 = codes(ka, (t, k)), codes(kb, (n, k))
        rs = 1.0 + jax.random.uniform(ka, (t,), jnp.float32)
        cs = 1.0 + jax.random.uniform(kb, (n,), jnp.float32)
        # |acc| < 2**20, the size of real int8 products of a few thousand terms.
        acc = (jax.random.bits(kc, (t, n), jnp.uint32) >> 11).astype(jnp.int32) - 2**20
        return A8, B8, A8.astype(dt), B8.astype(dt), rs, cs, acc

    return jax.jit(make)(jax.random.key(0))


def run_int8_matmul(r: Runner, plan: Plan) -> None:
    """16-bit matmul baseline, XLA's int8 dot, int8 matmul, fused dequant and the separate dequant.

    One shape after another, each of fp8mm's int8 matmuls per implementation.
    """
    import jax
    import jax.numpy as jnp

    import fp8mm

    dt = plan.dtypes[0]
    shapes = plan.linear_shapes()[:1] if plan.smoke else plan.linear_shapes()
    for t, k, n in shapes:
        shape = linear_label(t, k, n)
        # int8 products do not depend on the values' distribution: random codes made on the
        # device in one compiled call (no host generation or copies of up to 256 Mi values).
        A8, B8, Ab, Bb, rs, cs, acc = _int8_data(t, k, n, dt)
        ops = 2.0 * t * k * n
        base = Row("kernels", f"{dt} matmul", "jnp", "-", shape, dt, is_baseline=True)
        r.jax_case(base, lambda a, b: a @ b.T, (Ab, Bb), ops, "TOPS")

        def row(group: str, impl: str, base: str | None = base.key) -> Row:
            return Row("kernels", group, impl, "-", shape, dt, base=base)

        r.jax_case(
            row(XLA_INT8_DOT, "jnp"),
            lambda a, b: jax.lax.dot_general(
                a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.int32
            ),
            (A8, B8),
            ops,
            "TOPS",
        )
        # The fused product also per int8 matmul kernel of the registry by name ("pallas"
        # is the first that serves); on a GPU only: Mosaic GPU kernels have no interpret mode.
        by_name = "pallas" in plan.impls and jax.default_backend() == "gpu"
        kernels = ("pallas_mosaic_gpu", "pallas_triton") if by_name else ()
        for impl in (*plan.impls, *kernels):
            r.jax_case(
                row("int8_linear_matmul_dequant", impl),
                lambda a, b, rs, cs, i=impl: fp8mm.int8_linear_matmul_dequant(
                    a, b, rs, cs, None, dt, implementation=i
                ),
                (A8, B8, rs, cs),
                ops,
                "TOPS",
            )
        for impl in plan.impls:
            r.jax_case(
                row("int8_linear_matmul", impl),
                lambda a, b, i=impl: fp8mm.int8_linear_matmul(a, b, implementation=i),
                (A8, B8),
                ops,
                "TOPS",
            )
            r.jax_case(
                row("int8_mm_dequant", impl, None),  # int32 in, float16 out
                lambda c, rs, cs, i=impl: fp8mm.int8_mm_dequant(c, rs, cs, implementation=i),
                (acc, rs, cs),
                6.0 * t * n,
                "GB/s",
            )


def run_fp8_matmul(r: Runner, plan: Plan) -> None:
    """16-bit matmul baseline beside fp8_scaled_matmul (e4m3 x e4m3, scales after the sum).

    Per implementation ("xla": XLA's float8 dot, cuBLASLt on a GPU; "pallas": the f8
    wgmma kernel), with one scale per row and, for k > 4096, one per row and 4096-wide K
    chunk as the mixed recipe's blocks give.
    """
    import jax
    import jax.numpy as jnp

    import fp8mm

    dt = plan.dtypes[0]
    shapes = plan.linear_shapes()[:1] if plan.smoke else plan.linear_shapes()
    for t, k, n in shapes:
        shape = linear_label(t, k, n)
        A8, B8, Ab, Bb, rs, _, _ = _int8_data(t, k, n, dt)
        # int8 codes as float8 bits: a spread of finite e4m3 values (NaN bits folded away).
        to_f8 = jax.jit(
            lambda x: jax.lax.bitcast_convert_type(x & jnp.int8(0x77), jnp.float8_e4m3fn)
        )
        F8a, F8b = to_f8(A8), to_f8(B8)
        ops = 2.0 * t * k * n
        # Its own baseline row (the int8 group's is in TOPS): the same 16-bit GEMM.
        base = Row(
            "kernels", f"{dt} matmul (fp8 baseline)", "jnp", "-", shape, dt, is_baseline=True
        )
        r.jax_case(base, lambda a, b: a @ b.T, (Ab, Bb), ops, "TFLOP/s")
        chunk_counts = (1,) if k <= 4096 else (1, k // 4096)
        for chunks in chunk_counts:
            sa = jnp.broadcast_to(rs[:, None], (t, chunks))
            group = "fp8_scaled_matmul" + ("" if chunks == 1 else f"({chunks} K chunks)")
            for impl in plan.impls:
                r.jax_case(
                    Row("kernels", group, impl, "-", shape, dt, base=base.key),
                    lambda a, b, s, i=impl: fp8mm.fp8_scaled_matmul(
                        a, b, s, jnp.float32(0.5), dt, implementation=i
                    ),
                    (F8a, F8b, sa),
                    ops,
                    "TFLOP/s",
                )


KERNEL_GROUPS = {"quant": run_quant, "int8": run_int8_matmul, "fp8": run_fp8_matmul}


def run(r: Runner, plan: Plan, groups=tuple(KERNEL_GROUPS)) -> None:
    """The kernel section: the quantization kernels, the int8 and the fp8 matmuls."""
    for name in groups:
        KERNEL_GROUPS[name](r, plan)


def main(argv: list[str] | None = None) -> None:
    from benchmarks import run as runner

    runner.main(["--only", "kernels", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
