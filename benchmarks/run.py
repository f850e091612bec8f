"""fp8mm benchmark suite: one entry point for kernels, ops, Flax layers and the example's training.

    python -m benchmarks.run                      # GPU: everything, within --budget-s (480 s)
    python -m benchmarks.run --only ops --tokens 4096 --impl pallas
    python -m benchmarks.run --smoke              # tiny shapes on CPU (CI); numbers mean nothing

Sections, in the order they run (each case is a try/except, so a failure is an
error row and the run goes on; past --budget-s the remaining cases become
'skipped' rows):

* bnb: bitsandbytes' research functions and torch's linear on the same data,
  in a subprocess that finishes before JAX touches the GPU (so the two
  frameworks never compete for its memory); skipped with a reason when torch,
  bitsandbytes or CUDA is missing (`benchmarks/bnb.py`);
* kernels: every quantization primitive (GB/s beside a device copy) and the
  int8 matmuls (TOPS beside a 16-bit matmul and XLA's own int8 dot), per
  implementation (`benchmarks/kernels.py`);
* ops: matmul_fp8_mixed, matmul_fp8_global and switchback_bnb, forward and
  forward+backward, per implementation, beside a plain jnp 16-bit linear;
* train: one optimizer step of examples/train_lm.py's model (gpu preset) with
  bf16 nn.Dense and with each fp8mm layer, per implementation;
* layers: each fp8mm linen layer beside nn.Dense, forward and forward+backward;
* ops again for the further dtypes (float16) at --alt-dtype-tokens.

Each case is compiled once (jit.lower.compile); the compiled memory analysis
gives its peak device memory (temp + argument + output bytes) and the same
executable is timed (see `benchmarks.common.time_calls`); the quantization
kernels, short enough for the host's dispatch to bound their wall time, also
get their device time from a profiler trace (`benchmarks.common.device_time`),
which their copy-bandwidth check uses. Pass/miss targets come from
benchmarks/targets.toml (--targets for another file). After every section
the JSON (all raw numbers) and Markdown files are rewritten, so a run cut short
still leaves its results: `<out>/<card-slug>.json` and `.md`, with `<out>`
benchmarks/results by default and a fresh temporary folder under --smoke.
How to read them: docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib.util
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

# Before JAX is imported: grow device memory on demand instead of taking 75% up front, so a
# torch process (the bnb section) could share the card. The bnb subprocess finishes first anyway.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from benchmarks import common
from benchmarks import kernels as kernels_section
from benchmarks.common import (
    Plan,
    Row,
    Runner,
    TimingConfig,
    fill_ratios,
    fmt,
    linear_data,
    linear_label,
    markdown_table,
    mib,
    status,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
SECTIONS = ("bnb", "kernels", "ops", "train", "layers")
OPS = (
    "matmul_fp8_mixed",
    "matmul_fp8_global",
    "matmul_fp8_mixed[native]",
    "matmul_fp8_global[native]",
    "switchback_bnb",
    "switchback_bnb(threshold=6)",
    "switchback_global",
    "switchback_vectorwise",
    "switchback_global_mem_efficient",
)
MODES = ("fwd", "fwd+bwd")
LINEAR = "linear (baseline)"
DENSE = "nn.Dense (baseline)"

# --smoke runs Pallas (interpret mode on CPU: seconds per compile) only in these cases.
SMOKE_SKIP_OPS = (
    "switchback_bnb(threshold=6)",
    "switchback_vectorwise",
    "switchback_global_mem_efficient",
)
SMOKE_PALLAS = {
    ("kernels", "fake_quant_blockwise(4096)", "-"),
    ("kernels", "int8_linear_matmul_dequant", "-"),
    ("ops", "matmul_fp8_mixed", "fwd"),
    ("ops", "switchback_bnb", "fwd+bwd"),
}


# ------------------------------------------------------------------------------ ops


def _vjp_fn(f: Callable) -> Callable:
    """(x..., g) -> (f(x...), grads): forward + backward with a fixed cotangent.

    The primal output is returned too: otherwise XLA may drop the forward product
    (a linear map's gradients do not need it) and the timing would omit it.
    """

    import jax

    def fwd_bwd(*args: Any) -> Any:
        *xs, g = args
        out, vjp = jax.vjp(f, *xs)
        return out, vjp(g)

    return fwd_bwd


def run_ops(r: Runner, plan: Plan, dtypes: Sequence[str], tokens: Sequence[int]) -> None:
    """The three quantized matmuls beside a plain jnp linear, forward and forward+backward."""
    import jax.numpy as jnp

    import fp8mm

    fw, bw = jnp.asarray(fp8mm.e4m3_code()), jnp.asarray(fp8mm.e5m2_code())
    for dt in dtypes:
        for t, k, n in plan.linear_shapes(tokens):
            shape = linear_label(t, k, n)
            d = linear_data(t, k, n)
            A = jnp.asarray(d["A"]).astype(dt)
            Wl = jnp.asarray(d["W"]).astype(dt)  # [n, k], Linear layout (switchback_bnb)
            W = Wl.T  # [k, n], nn.Dense layout (fp8 matmuls); transposed on the device
            g = jnp.asarray(d["g"]).astype(dt)
            ops: dict[str, tuple[Callable, Any]] = {
                "matmul_fp8_mixed": (
                    lambda i: lambda a, w: fp8mm.matmul_fp8_mixed(a, w, fw, bw, implementation=i),
                    W,
                ),
                "matmul_fp8_global": (
                    lambda i: lambda a, w: fp8mm.matmul_fp8_global(a, w, fw, bw, implementation=i),
                    W,
                ),
                # The same recipes on FP8 tensor cores (gemm="native").
                "matmul_fp8_mixed[native]": (
                    lambda i: (
                        lambda a, w: fp8mm.matmul_fp8_mixed(
                            a, w, fw, bw, gemm="native", implementation=i
                        )
                    ),
                    W,
                ),
                "matmul_fp8_global[native]": (
                    lambda i: (
                        lambda a, w: fp8mm.matmul_fp8_global(
                            a, w, fw, bw, gemm="native", implementation=i
                        )
                    ),
                    W,
                ),
                "switchback_bnb": (
                    lambda i: lambda a, w: fp8mm.switchback_bnb(a, w, implementation=i),
                    Wl,
                ),
                # LLM.int8()'s default outlier threshold: outlier columns in 16 bit.
                "switchback_bnb(threshold=6)": (
                    lambda i: (
                        lambda a, w: fp8mm.switchback_bnb(a, w, threshold=6.0, implementation=i)
                    ),
                    Wl,
                ),
                # The SwitchBack paper's layer (fp8mm.switchback_linear), Linear layout.
                "switchback_global": (
                    lambda i: lambda a, w: fp8mm.switchback_linear(a, w, implementation=i),
                    Wl,
                ),
                "switchback_vectorwise": (
                    lambda i: (
                        lambda a, w: fp8mm.switchback_linear(
                            a, w, vector_wise_quantization=True, implementation=i
                        )
                    ),
                    Wl,
                ),
                "switchback_global_mem_efficient": (
                    lambda i: (
                        lambda a, w: fp8mm.switchback_linear(
                            a, w, mem_efficient=True, implementation=i
                        )
                    ),
                    Wl,
                ),
            }
            for mode in MODES:
                flops = (2.0 if mode == "fwd" else 6.0) * t * k * n
                base = Row("ops", LINEAR, "jnp", mode, shape, dt, is_baseline=True)
                lin = lambda a, w: a @ w
                r.jax_case(
                    base,
                    lin if mode == "fwd" else _vjp_fn(lin),
                    (A, W) if mode == "fwd" else (A, W, g),
                    flops,
                    "TFLOP/s",
                )
                for name, (make, w) in ops.items():
                    if plan.ops is not None and name not in plan.ops:
                        continue
                    for impl in plan.impls:
                        f = make(impl)
                        r.jax_case(
                            Row("ops", name, impl, mode, shape, dt, base=base.key),
                            f if mode == "fwd" else _vjp_fn(f),
                            (A, w) if mode == "fwd" else (A, w, g),
                            flops,
                            "TFLOP/s",
                        )
            del A, W, Wl, g


# ---------------------------------------------------------------------------- layers


def run_layers(r: Runner, plan: Plan) -> None:
    """Each fp8mm linen layer beside nn.Dense (dtype = activations, float32 parameters)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from fp8mm.nn import linen as fl

    dt = plan.dtypes[0]
    for t, k, n in plan.linear_shapes(plan.layer_tokens):
        shape = linear_label(t, k, n)
        d = linear_data(t, k, n)
        x = jnp.asarray(d["A"]).astype(dt)
        g = jnp.asarray(d["g"]).astype(dt)
        dense = nn.Dense(n, dtype=dt)
        # The fp8mm layers take nn.Dense's parameters unchanged (same names and shapes).
        params = jax.jit(dense.init)(jax.random.key(0), x)
        for mode in MODES:
            flops = (2.0 if mode == "fwd" else 6.0) * t * k * n
            args = (params, x) if mode == "fwd" else (params, x, g)

            def fn(layer: nn.Module, mode: str = mode) -> Callable:
                f = lambda p, x: layer.apply(p, x)
                return f if mode == "fwd" else _vjp_fn(f)

            base = Row("layers", DENSE, "flax", mode, shape, dt, is_baseline=True)
            r.jax_case(base, fn(dense), args, flops, "TFLOP/s")
            for name, cls in (
                ("Fp8MixedDense", fl.Fp8MixedDense),
                ("Fp8GlobalDense", fl.Fp8GlobalDense),
                ("SwitchBackDense", fl.SwitchBackDense),
                ("SwitchBackGlobalDense", fl.SwitchBackGlobalDense),
            ):
                for impl in plan.impls:
                    layer = cls(n, dtype=dt, implementation=impl)
                    row = Row("layers", name, impl, mode, shape, dt, base=base.key)
                    r.jax_case(row, fn(layer), args, flops, "TFLOP/s")


# ----------------------------------------------------------------------------- train


def load_train_lm() -> Any:
    """examples/train_lm.py as a module (examples/ is not a package)."""
    name = "fp8mm_example_train_lm"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / "train_lm.py")
    if spec is None or spec.loader is None:
        raise ImportError("examples/train_lm.py not found")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def run_train(r: Runner, plan: Plan) -> None:
    """One adamw step of train_lm's CharLM: bf16 nn.Dense beside each fp8mm layer kind.

    The preset is `--train-preset` (default gpu-large: d_model 2048, 8 layers, 16k
    tokens a step, fused attention) with the run's first dtype as its compute dtype
    (parameters stay float32, as in the example). Every kind of the example is timed,
    the native-FP8 ones as `Fp8MixedDense[native]` / `Fp8GlobalDense[native]`. The
    implementation is chosen with `fp8mm.use_implementation` around the compilation (the layers
    leave `implementation` at None), as a user switching a whole model would.
    """
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import fp8mm

    tl = load_train_lm()
    dt = plan.dtypes[0]
    preset = dataclasses.replace(tl.PRESETS[plan.train_preset], dtype=dt)
    if plan.smoke:
        preset = dataclasses.replace(
            tl.PRESETS["cpu"], d_model=32, n_layers=1, n_heads=2, seq_len=16, batch=4
        )
    shape = f"d{preset.d_model} L{preset.n_layers} {preset.batch}x{preset.seq_len}"
    tokens = preset.batch * preset.seq_len
    rng = np.random.default_rng(0)
    batch = jnp.asarray(rng.integers(0, 256, (preset.batch, preset.seq_len + 1), dtype=np.int32))
    tx = optax.adamw(1e-3)

    def build(dense: Callable) -> tuple[Callable, Any]:
        """(step, model) for a CharLM whose projections are `dense`."""
        model = tl.CharLM(preset, dense)

        def step(params: Any, opt: Any, batch: jax.Array) -> Any:
            loss_fn = functools.partial(tl.loss_fn, model)
            loss, grads = jax.value_and_grad(loss_fn)(params, batch)
            updates, opt = tx.update(grads, opt, params)
            return optax.apply_updates(params, updates), opt, loss

        return step, model

    base_step, base_model = build(nn.Dense)
    # One initialisation for every kind: the fp8mm layers take nn.Dense's parameters.
    params = jax.jit(base_model.init)(jax.random.key(0), batch[:, :-1])
    opt = tx.init(params)
    args = (params, opt, batch)
    base = Row("train", DENSE, "flax", "step", shape, dt, is_baseline=True)
    r.jax_case(base, base_step, args, tokens, "Mtok/s")
    for kind, cls in tl.DENSE.items():
        if kind == "plain" or (plan.train_kinds and kind not in plan.train_kinds):
            continue
        name = cls.__name__ if isinstance(cls, type) else f"{cls.func.__name__}[native]"
        for impl in plan.impls:
            # A fresh step function per implementation: jit's trace cache is keyed on
            # the function, not on the use_implementation context, so reusing one
            # would time the first implementation's program again.
            step, _ = build(cls)
            row = Row("train", name, impl, "step", shape, dt, base=base.key)
            ctx = functools.partial(fp8mm.use_implementation, impl)
            r.jax_case(row, step, args, tokens, "Mtok/s", context=ctx)


# ------------------------------------------------------------------------------- bnb


def run_bnb(args: argparse.Namespace, plan: Plan, out: pathlib.Path, budget_s: float) -> dict:
    """Runs benchmarks.bnb in a subprocess; returns its JSON ({'meta', 'rows'}) or a reason."""
    path = out / "bnb-raw.json"
    path.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.bnb",
        "--json",
        str(path),
        "--tokens",
        ",".join(map(str, plan.tokens)),
        "--dims",
        ",".join(f"{k}:{n}" for k, n in plan.dims),
        "--dtypes",
        ",".join(plan.dtypes),
        "--alt-dtype-tokens",
        ",".join(map(str, args.alt_dtype_tokens)),
        "--budget-s",
        f"{budget_s:.0f}",
    ]
    if args.batches:
        cmd += ["--batches", str(args.batches)]
    if args.batch_ms is not None:
        cmd += ["--batch-ms", str(args.batch_ms)]
    if plan.smoke:
        cmd.append("--smoke")
    print(f"bnb: {' '.join(cmd[1:])}", flush=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    reason = None
    try:
        # Grace beyond the subprocess's own budget: its torch import and CUDA start-up.
        proc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=budget_s + 60, check=False)
        if proc.returncode != 0:
            reason = f"benchmarks.bnb exited with {proc.returncode}"
    except subprocess.TimeoutExpired:
        reason = "benchmarks.bnb timed out (partial results kept)"
    data = {"meta": {}, "rows": []}
    if path.exists():
        data = json.loads(path.read_text())
    if reason:
        data["meta"]["error"] = reason
    return data


# -------------------------------------------------------------------------- targets


def finalize(rows: Sequence[Row], targets: Sequence[common.Target] | None = None) -> None:
    """Ratios to the baselines, the bitsandbytes pairing and the target checks.

    `targets` default to benchmarks/targets.toml (`common.load_targets`).
    """
    if targets is None:
        targets = common.load_targets()
    for r in rows:
        r.checks, r.bnb_ms, r.vs_bnb = [], None, None
    fill_ratios(rows)
    for r in rows:
        if r.ms is None or r.section not in ("ops", "kernels"):
            continue
        # Same group names on both sides (the baselines pair jnp with torch).
        b = common.find_row(
            rows, section="bnb", group=r.group, mode=r.mode, shape=r.shape, dtype=r.dtype
        )
        if b is not None:
            r.bnb_ms, r.vs_bnb = b.ms, r.ms / b.ms
    common.evaluate_targets(rows, targets)


# --------------------------------------------------------------------------- markdown


def _col_ms(r: Row) -> str:
    if r.error:
        return "error"
    if r.skipped:
        return "skipped"
    return fmt(r.ms, 4)


COMMON_COLS: list[common.Column] = [
    ("what", lambda r: r.group),
    ("impl", lambda r: r.impl),
    ("mode", lambda r: r.mode),
    ("shape", lambda r: r.shape),
    ("dtype", lambda r: r.dtype),
    ("ms", _col_ms),
]
CHECK_COLS: list[common.Column] = [
    ("target", common.checks_text),
    ("status", status),
]


def summary_rows(rows: Sequence[Row]) -> list[tuple[str, str, str, str, str]]:
    """(target, impl, passed/total, worst value, shapes missed) over every checked row."""
    groups: dict[tuple[str, str], list[tuple[Row, dict]]] = {}
    for r in rows:
        for c in r.checks:
            name = f"{r.section}: {r.group} {'' if r.mode in ('-', 'step') else r.mode} {r.dtype}"
            groups.setdefault((f"{' '.join(name.split())} — {c['target']}", r.impl), []).append(
                (r, c)
            )
    out = []
    for (target, impl), items in groups.items():
        vals = [c["value"] for _, c in items if c["value"] is not None]
        higher_better = "≥" in target
        worst = (min(vals) if higher_better else max(vals)) if vals else None
        passed = sum(1 for _, c in items if c["ok"])
        missed = ", ".join(r.shape for r, c in items if c["ok"] is not True)
        out.append((target, impl, f"{passed}/{len(items)}", fmt(worst), missed))
    return out


def render_markdown(meta: dict[str, Any], rows: Sequence[Row]) -> str:
    """The results page: header, target summary, one table per section, errors."""
    lines = [
        f"# fp8mm benchmarks: {meta['card']} ({meta['date']})",
        "",
        f"`{meta['command']}` — jax {meta['jax']} ({meta['backend']}), "
        f"python {meta['python']}, fp8mm {meta['fp8mm']}; bitsandbytes: {meta['bnb_status']}.",
        f"Timing: median over {meta['timing']['batches']} device-synchronised batches of "
        f"back-to-back calls (each batch ≥ {meta['timing']['batch_s'] * 1e3:.0f} ms and "
        f"≥ {meta['timing'].get('min_reps', 1)} calls, at most "
        f"{meta['timing']['max_reps']} calls) after warm-up; one compilation per case, whose "
        "memory analysis gives peak MiB (temp + argument + output). Ratios are to the "
        "baseline row of the same shape and dtype in the same run "
        "(time: lower is better; rate: higher is better). The quantization kernels also "
        "report device ms: the median GPU busy time per call in a profiler trace.",
        f"Wall time {meta.get('wall_s', 0):.0f} s.",
        "",
    ]
    if meta.get("smoke"):
        lines += ["**Smoke run (tiny shapes, CPU): the numbers mean nothing.**", ""]
    summ = summary_rows(rows)
    if summ:
        lines += [
            "## Targets",
            "",
            f"From `{meta.get('targets', 'benchmarks/targets.toml')}`.",
            "",
            "| target | impl | pass | worst | not passed |",
            "|---|---|---|---|---|",
        ]
        lines += [f"| {' | '.join(s)} |" for s in summ]
        lines.append("")

    def section(title: str, sel: list[Row], cols: list[common.Column], note: str = "") -> None:
        if not sel:
            return
        lines.extend([f"## {title}", ""])
        if note:
            lines.extend([note, ""])
        lines.extend([markdown_table(sel, cols), ""])

    rate_cols: list[common.Column] = [
        ("rate", lambda r: fmt(r.rate)),
        ("unit", lambda r: r.unit),
        ("rate / base", lambda r: fmt(r.rate_ratio)),
    ]
    mem_cols: list[common.Column] = [
        ("peak MiB", lambda r: mib(r.mem_bytes)),
        ("mem / base", lambda r: fmt(r.mem_ratio)),
    ]
    bnb_cols: list[common.Column] = [
        ("bnb ms", lambda r: fmt(r.bnb_ms, 4)),
        ("time / bnb", lambda r: fmt(r.vs_bnb)),
    ]
    dev_cols: list[common.Column] = [
        ("device ms", lambda r: fmt(r.device_ms, 4)),
        ("device GB/s", lambda r: fmt(r.device_rate)),
    ]
    kern = [r for r in rows if r.section == "kernels"]
    is_mm = lambda r: (
        r.unit == "TOPS" or "matmul" in r.group or "mm_" in r.group or " dot " in r.group
    )
    section(
        "Kernels: quantization",
        [r for r in kern if not is_mm(r)],
        [*COMMON_COLS[:2], *COMMON_COLS[3:], *rate_cols, *dev_cols, *bnb_cols, *CHECK_COLS],
        "GB/s counts the minimum bytes read + written; the base is a copy of the same tensor. "
        "Device ms: median busy time per call on the GPU (profiler trace; the wall time of "
        "a short kernel can be the host's dispatch); the copy-bandwidth check uses it, "
        "against the fastest copy of the run.",
    )
    section(
        "Kernels: int8 matmul",
        [r for r in kern if is_mm(r)],
        [*COMMON_COLS[:2], *COMMON_COLS[3:], *rate_cols, *CHECK_COLS],
        "Shape is tokens x in -> out; TOPS = 2·t·k·n / time; the base is a 16-bit matmul "
        f"(int8_mm_dequant reports GB/s and has no base). '{kernels_section.XLA_INT8_DOT}' "
        "is lax.dot_general of the int8 operands to int32: the int8 GEMM XLA itself offers.",
    )
    time_cols: list[common.Column] = [
        ("TFLOP/s", lambda r: fmt(r.rate)),
        ("time / base", lambda r: fmt(r.time_ratio)),
        *mem_cols,
    ]
    section(
        "Ops",
        [r for r in rows if r.section == "ops"],
        [*COMMON_COLS, *time_cols, *bnb_cols, *CHECK_COLS],
        "Base: a plain jnp 16-bit linear (fwd+bwd: the output and both gradients, fixed "
        "cotangent). TFLOP/s counts 2·t·k·n forward, 6·t·k·n forward+backward.",
    )
    section(
        "Train step (examples/train_lm.py model)",
        [r for r in rows if r.section == "train"],
        [
            *COMMON_COLS[:2],
            *COMMON_COLS[3:],
            ("Mtok/s", lambda r: fmt(r.rate)),
            ("time / base", lambda r: fmt(r.time_ratio)),
            *mem_cols,
            *CHECK_COLS,
        ],
        "One jit-compiled adamw step (value_and_grad + update); every projection with "
        "dtype=bf16, parameters float32; implementation set by fp8mm.use_implementation.",
    )
    section(
        "Flax layers (linen)",
        [r for r in rows if r.section == "layers"],
        [*COMMON_COLS, *time_cols],
        "dtype = activations, param_dtype float32; fwd+bwd returns the output and the "
        "gradients of the parameters and the input.",
    )
    section(
        "bitsandbytes (torch, same data)",
        [r for r in rows if r.section == "bnb"],
        [
            *COMMON_COLS,
            ("rate", lambda r: fmt(r.rate)),
            ("unit", lambda r: r.unit),
            ("time / base", lambda r: fmt(r.time_ratio)),
            *mem_cols,
        ],
        "Peak MiB here is torch.cuda.max_memory_allocated during one call (inputs included).",
    )
    bad = [r for r in rows if r.error or r.skipped]
    if bad:
        lines += ["## Errors and skipped cases", ""]
        lines += [
            f"- {r.section}: {r.group}[{r.impl}] {r.mode} {r.shape} {r.dtype}: "
            f"{r.error or 'skipped: ' + str(r.skipped)}"
            for r in bad
        ]
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ main


def _ints(s: str) -> tuple[int, ...]:
    return tuple(int(x) for x in s.split(",") if x.strip())


def _dims(s: str) -> tuple[tuple[int, int], ...]:
    out = []
    for pair in s.split(","):
        k, n = pair.split(":")
        out.append((int(k), int(n)))
    return tuple(out)


def _names(s: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split(",") if x.strip())


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny shapes, CPU-friendly, for CI")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results)")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"subset of {','.join(SECTIONS)}")
    p.add_argument("--tokens", default=None, help="token counts (default 4096,16384)")
    p.add_argument("--dims", default=None, help="in:out pairs (default 4096:4096,...)")
    p.add_argument("--dtypes", default=None, help="activation dtypes (default bfloat16,float16)")
    p.add_argument("--impl", default="xla,pallas", help="fp8mm implementations to time")
    p.add_argument("--ops", default=",".join(OPS), help="subset of the ops section's ops")
    p.add_argument(
        "--kernels",
        default=",".join(kernels_section.KERNEL_GROUPS),
        help=f"kernel groups ({','.join(kernels_section.KERNEL_GROUPS)})",
    )
    p.add_argument("--name", default="", help="suffix of the result files: <card>-<name>.json")
    p.add_argument(
        "--train-preset",
        default="gpu-large",
        help="examples/train_lm.py preset of the train section",
    )
    p.add_argument("--train-kinds", default="", help="train_lm kinds to time (default: all)")
    p.add_argument("--layer-tokens", default=None, help="token counts of the layer section")
    p.add_argument(
        "--alt-dtype-tokens", default=None, help="token counts for dtypes after the first"
    )
    p.add_argument("--batches", type=int, default=None, help="synchronised batches per case")
    p.add_argument("--batch-ms", type=float, default=None, help="minimum ms per batch")
    p.add_argument("--budget-s", type=float, default=480.0, help="wall-time budget of the run")
    p.add_argument("--bnb-budget-s", type=float, default=100.0, help="share of it for bnb")
    p.add_argument(
        "--targets", default=None, help="pass/miss targets (default benchmarks/targets.toml)"
    )
    a = p.parse_args(argv)
    if a.smoke:
        a.tokens = a.tokens or "64"
        a.dims = a.dims or "128:96"
        a.dtypes = a.dtypes or "bfloat16,float16"
    a.tokens = _ints(a.tokens or "4096,16384")
    a.dims = _dims(a.dims or "4096:4096,4096:16384,16384:4096")
    a.dtypes = _names(a.dtypes or "bfloat16,float16")
    a.impl = _names(a.impl)
    a.only = _names(a.only)
    a.kernels = _names(a.kernels)
    if set(a.kernels) - set(kernels_section.KERNEL_GROUPS):
        p.error(f"unknown kernel groups {a.kernels}")
    a.ops = tuple(o.strip() for o in a.ops.split(";" if ";" in a.ops else ",") if o.strip())
    a.layer_tokens = _ints(a.layer_tokens) if a.layer_tokens else a.tokens[:1]
    a.alt_dtype_tokens = _ints(a.alt_dtype_tokens) if a.alt_dtype_tokens else a.tokens[:1]
    if set(a.ops) - set(OPS):
        p.error(f"unknown ops {sorted(set(a.ops) - set(OPS))}; choose from {OPS}")
    unknown = set(a.only) - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    if set(a.impl) - {"xla", "pallas"}:
        p.error("--impl takes xla and/or pallas")
    return a


def smoke_include(plan: Plan) -> Callable[[Row], bool]:
    """Which cases a --smoke run keeps (the CI budget is ~40 s on 2 cores).

    Every section and code path stays covered: Pallas only where listed, the train
    step and layers for the baseline and SwitchBack (fwd+bwd), a few float16 cases.
    """

    def include(row: Row) -> bool:
        # Compiling a whole training step takes seconds on a CPU: the baseline and one kind.
        if row.section == "train" and row.group not in (DENSE, "SwitchBackDense"):
            return False
        if row.section == "layers" and (row.mode == "fwd" or "Fp8" in row.group):
            return False
        # The op variants run the code paths of the rows kept beside them.
        if row.section == "ops" and row.group in SMOKE_SKIP_OPS:
            return False
        if row.impl == "pallas" and (row.section, row.group, row.mode) not in SMOKE_PALLAS:
            return False
        if row.dtype != plan.dtypes[0]:
            return row.mode == "fwd" and row.group in (LINEAR, "switchback_bnb")
        return True

    return include


@contextlib.contextmanager
def _section(r: Runner, name: str, label: str) -> Iterator[None]:
    r.log(f"== {label}")
    try:
        yield
    except Exception as exc:  # a section's setup failed: record it, go on with the next
        row = Row(name, "(section)", "-", "-", "-", "-", error=common.error_text(exc))
        r.rows.append(row)
        r.log(f"{name}: section ERROR {row.error}")
        common.print_traceback(exc)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the selected sections; returns {'meta', 'rows', 'json', 'md'}."""
    t_start = time.perf_counter()
    a = parse_args(argv)
    # Read before any measurement, so a malformed file fails in a second, not after the run.
    targets = common.load_targets(a.targets)
    plan = Plan(
        a.tokens,
        a.dims,
        a.dtypes,
        a.impl,
        a.layer_tokens,
        a.smoke,
        a.ops,
        a.train_preset,
        _names(a.train_kinds) if a.train_kinds else None,
    )
    timing = common.SMOKE_TIMING if a.smoke else TimingConfig()
    timing = dataclasses.replace(
        timing,
        batches=a.batches or timing.batches,
        batch_s=timing.batch_s if a.batch_ms is None else a.batch_ms / 1e3,
    )
    out = pathlib.Path(
        a.out
        or (tempfile.mkdtemp(prefix="fp8mm-bench-") if a.smoke else ROOT / "benchmarks/results")
    )
    out.mkdir(parents=True, exist_ok=True)
    deadline = t_start + a.budget_s

    bnb_data: dict[str, Any] = {"meta": {"skipped": "not selected (--only)"}, "rows": []}
    if "bnb" in a.only:
        bnb_budget = max(0.0, min(a.bnb_budget_s, a.budget_s / 3))
        bnb_data = run_bnb(a, plan, out, bnb_budget)

    import jax

    import fp8mm

    dev = jax.devices()[0]
    card = "cpu" if dev.platform == "cpu" else dev.device_kind
    bm = bnb_data.get("meta", {})
    bnb_status = (
        bm.get("skipped")
        or bm.get("error")
        or (f"bitsandbytes {bm.get('bitsandbytes')}, torch {bm.get('torch')} on {bm.get('device')}")
    )
    meta: dict[str, Any] = {
        "card": card,
        "date": common.today(),
        "command": "python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "python": platform.python_version(),
        "fp8mm": fp8mm.__version__,
        "smoke": a.smoke,
        "plan": dataclasses.asdict(plan),
        "timing": dataclasses.asdict(timing),
        "budget_s": a.budget_s,
        "bnb": bm,
        "bnb_status": bnb_status,
        "targets": str(a.targets or common.TARGETS_PATH.relative_to(ROOT)),
    }
    slug = "smoke-cpu" if a.smoke else common.card_slug(card)
    if a.name:
        slug = f"{slug}-{a.name}"
    json_path, md_path = out / f"{slug}.json", out / f"{slug}.md"
    include = smoke_include(plan) if a.smoke else None
    r = Runner(timing, deadline, include)
    r.t0 = t_start
    r.rows.extend(Row.from_dict(d) for d in bnb_data.get("rows", []))
    print(f"device {card}, jax {jax.__version__}; writing {json_path} and {md_path}", flush=True)

    def flush() -> None:
        meta["wall_s"] = time.perf_counter() - t_start
        finalize(r.rows, targets)
        common.write_json(json_path, meta, r.rows)
        md_path.write_text(render_markdown(meta, r.rows))

    # Most important first: past the budget, what is left becomes 'skipped' rows.
    steps: list[tuple[str, str, Callable[[], None]]] = [
        ("kernels", "kernels", lambda: kernels_section.run(r, plan, a.kernels)),
        ("ops", f"ops {plan.dtypes[0]}", lambda: run_ops(r, plan, plan.dtypes[:1], plan.tokens)),
        ("train", "train", lambda: run_train(r, plan)),
        ("layers", "layers", lambda: run_layers(r, plan)),
    ]
    if plan.dtypes[1:]:
        steps.append(
            (
                "ops",
                f"ops {','.join(plan.dtypes[1:])}",
                lambda: run_ops(r, plan, plan.dtypes[1:], a.alt_dtype_tokens),
            )
        )
    for name, label, fn in steps:
        if name not in a.only:
            continue
        with _section(r, name, label):
            fn()
        flush()
    flush()
    n_err = sum(1 for x in r.rows if x.error)
    n_skip = sum(1 for x in r.rows if x.skipped)
    r.log(f"done: {len(r.rows)} rows, {n_err} errors, {n_skip} skipped; {md_path}")
    return {"meta": meta, "rows": r.rows, "json": json_path, "md": md_path}


if __name__ == "__main__":
    main()
