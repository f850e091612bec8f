"""bitsandbytes side of the suite: the research functions on the same data, beside torch's linear.

Run by `benchmarks.run` in a subprocess (before JAX starts, so the two
frameworks never hold GPU memory at once); also runnable alone:

    python -m benchmarks.bnb --json /tmp/bnb.json [--tokens 4096 --dims 4096:4096]

When torch, CUDA or bitsandbytes is missing, it writes a JSON whose meta says
why and no rows. Otherwise it times, per dtype and linear shape,
`bitsandbytes.research.matmul_fp8_mixed`, `matmul_fp8_global` and
`switchback_bnb` forward and forward+backward (torch.autograd.grad with a fixed
cotangent, no .grad accumulation) beside `torch.nn.functional.linear`, and
`bitsandbytes.functional.quantize_blockwise`/`dequantize_blockwise` beside a
tensor copy. The data come from `benchmarks.common.linear_data` / `host_normal`,
the same numbers the JAX side uses. Weights are in torch's Linear layout [out,
in]; the fp8 functions get `W.t()`, as bitsandbytes' LinearFP8Mixed passes it.
Each switchback call gets a fresh MatmulLtState (state=None), so the weight is
quantized every call, as in training.

Timing: the same batches of back-to-back calls, one torch.cuda.synchronize per
batch (`benchmarks.common.time_calls`). Peak memory: torch.cuda.max_memory_allocated
during one call, inputs included.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks import common
from benchmarks.common import Plan, Row, Runner, TimingConfig, host_normal, linear_data

LINEAR = "linear (baseline)"  # the group name run.py pairs with its jnp baseline
BLOCK = 4096


def load() -> tuple[Any, Any, str | None]:
    """(torch, bitsandbytes, None), or (None, None, reason) when they cannot run here."""
    try:
        import torch
    except Exception as exc:
        return None, None, f"torch not importable ({common.error_text(exc)})"
    if not torch.cuda.is_available():
        return None, None, f"torch {torch.__version__} sees no CUDA device"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import bitsandbytes
            import bitsandbytes.functional
            import bitsandbytes.research
    except Exception as exc:
        return None, None, f"bitsandbytes not importable ({common.error_text(exc)})"
    return torch, bitsandbytes, None


def _torch_case(torch: Any, fn: Callable[[], Any]) -> tuple[Callable[[], Any], dict[str, int]]:
    """(call, memory) for `Runner.case`: one call measured for its peak allocation."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    peak = int(torch.cuda.max_memory_allocated())
    return fn, {"peak": peak, "temp": 0, "argument": 0, "output": 0, "alias": 0}


def run_linear(r: Runner, plan: Plan, torch: Any, bnb: Any, alt_tokens: Sequence[int]) -> None:
    """The research matmuls and torch's linear, forward and forward+backward."""
    research, F = bnb.research, bnb.functional
    fw = F.create_fp8_map(True, 4, 3, 8).cuda()
    bw = F.create_fp8_map(True, 5, 2, 8).cuda()
    ops: dict[str, Callable[[Any, Any], Any]] = {
        "matmul_fp8_mixed": lambda a, w: research.matmul_fp8_mixed(a, w.t(), fw, bw),
        "matmul_fp8_global": lambda a, w: research.matmul_fp8_global(a, w.t(), fw, bw),
        "switchback_bnb": lambda a, w: research.switchback_bnb(a, w),
    }
    sync = lambda _: torch.cuda.synchronize()
    for i, dt in enumerate(plan.dtypes):
        tdt = getattr(torch, dt)
        for t, k, n in plan.linear_shapes(plan.tokens if i == 0 else alt_tokens):
            shape = common.linear_label(t, k, n)
            d = linear_data(t, k, n)
            A = torch.from_numpy(d["A"]).to("cuda", tdt)
            W = torch.from_numpy(d["W"]).to("cuda", tdt)
            g = torch.from_numpy(d["g"]).to("cuda", tdt)
            Ar, Wr = A.detach().requires_grad_(), W.detach().requires_grad_()
            for mode in ("fwd", "fwd+bwd"):
                flops = (2.0 if mode == "fwd" else 6.0) * t * k * n

                def call(op: Callable, mode: str = mode) -> Callable[[], Any]:
                    if mode == "fwd":

                        def fwd() -> Any:
                            with torch.no_grad():
                                return op(A, W)

                        return fwd

                    def fwd_bwd() -> Any:
                        out = op(Ar, Wr)
                        return out, torch.autograd.grad(out, (Ar, Wr), g)

                    return fwd_bwd

                base = Row("bnb", LINEAR, "torch", mode, shape, dt, is_baseline=True)
                lin = lambda a, w: torch.nn.functional.linear(a, w)
                f = call(lin)
                r.case(base, lambda f=f: _torch_case(torch, f), flops, "TFLOP/s", sync)
                for name, op in ops.items():
                    row = Row("bnb", name, "bnb", mode, shape, dt, base=base.key)
                    f = call(op)
                    r.case(row, lambda f=f: _torch_case(torch, f), flops, "TFLOP/s", sync)


def run_quant(r: Runner, plan: Plan, torch: Any, bnb: Any) -> None:
    """quantize_blockwise / dequantize_blockwise (e4m3 code) beside a copy, GB/s."""
    F = bnb.functional
    code = F.create_fp8_map(True, 4, 3, 8).cuda()
    sync = lambda _: torch.cuda.synchronize()
    dt = plan.dtypes[0]
    feats = sorted({k for k, _ in plan.dims} | {n for _, n in plan.dims})
    shapes = [(plan.tokens[0], plan.dims[0][0])] if plan.smoke else [
        (t, f) for t in plan.tokens for f in feats
    ]  # fmt: skip
    for t, f in shapes:
        shape = f"{t}x{f}"
        x = torch.from_numpy(host_normal((t, f), 1)).to("cuda", getattr(torch, dt))
        xb, size = common.nbytes(x), t * f
        copy = Row("bnb", "copy", "torch", "-", shape, dt, is_baseline=True)
        r.case(copy, lambda: _torch_case(torch, x.clone), 2 * xb, "GB/s", sync)
        q, st = F.quantize_blockwise(x, code=code, blocksize=BLOCK)
        cases = {
            f"quantize_blockwise({BLOCK})": (
                lambda: F.quantize_blockwise(x, code=code, blocksize=BLOCK),
                xb + size,
            ),
            f"dequantize_blockwise({BLOCK})": (
                lambda: F.dequantize_blockwise(q, st, blocksize=BLOCK),
                size + xb,
            ),
        }
        for name, (fn, work) in cases.items():
            row = Row("bnb", name, "bnb", "-", shape, dt, base=copy.key)
            r.case(row, lambda fn=fn: _torch_case(torch, fn), work, "GB/s", sync)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", required=True, help="where to write {'meta', 'rows'}")
    p.add_argument("--tokens", default="4096,16384")
    p.add_argument("--dims", default="4096:4096,4096:16384,16384:4096")
    p.add_argument("--dtypes", default="bfloat16,float16")
    p.add_argument("--alt-dtype-tokens", default="4096")
    p.add_argument("--batches", type=int, default=None)
    p.add_argument("--batch-ms", type=float, default=None)
    p.add_argument("--budget-s", type=float, default=100.0)
    p.add_argument("--smoke", action="store_true")
    a = p.parse_args(argv)
    import pathlib

    t0 = time.perf_counter()
    path = pathlib.Path(a.json)
    meta: dict[str, Any] = {}
    torch, bnb, reason = load()
    if reason is not None:
        print(f"bnb: skipped: {reason}", flush=True)
        common.write_json(path, {"skipped": reason}, [])
        return
    warnings.filterwarnings("ignore")  # switchback's per-call "cast to float16" warning
    meta = {
        "bitsandbytes": bnb.__version__,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0),
    }
    tokens = tuple(int(x) for x in a.tokens.split(","))
    dims = tuple(tuple(int(v) for v in d.split(":")) for d in a.dims.split(","))
    plan = Plan(
        tokens,
        dims,
        tuple(a.dtypes.split(",")),
        ("bnb",),
        tokens[:1],
        a.smoke,  # type: ignore[arg-type]
    )
    alt = tuple(int(x) for x in a.alt_dtype_tokens.split(","))
    timing = common.SMOKE_TIMING if a.smoke else TimingConfig()
    timing = dataclasses.replace(
        timing,
        batches=a.batches or timing.batches,
        batch_s=timing.batch_s if a.batch_ms is None else a.batch_ms / 1e3,
    )
    r = Runner(timing, t0 + a.budget_s)
    r.log(f"bnb: bitsandbytes {meta['bitsandbytes']}, torch {meta['torch']} on {meta['device']}")
    for section in (run_quant, lambda *x: run_linear(*x, alt)):
        try:
            section(r, plan, torch, bnb)
        except Exception as exc:
            r.rows.append(Row("bnb", "(section)", "-", "-", "-", "-", error=common.error_text(exc)))
            common.print_traceback(exc)
        common.write_json(path, meta, r.rows)


if __name__ == "__main__":
    main()
