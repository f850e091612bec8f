"""Where a training step's GPU time goes: examples/train_lm.py's step, kernel by kernel.

For each layer kind, one compiled adamw step of train_lm's CharLM (the preset's
model, by default gpu-large) runs under the JAX profiler; every GPU kernel and
copy of the traced steps is put in one category by its name:

* attention: cuDNN / flash attention kernels (`jax.nn.dot_product_attention` when it
  picks one; when it runs as XLA fusions they count as "other");
* matmul: GEMMs (cuBLAS/cuBLASLt, XLA's Triton GEMMs, fp8mm's Pallas matmuls);
* quantization: fp8mm's Pallas quantization kernels (statistics, quantize, transposes);
* other: the remaining XLA fusions (layer norms, GELU, residuals, loss, the
  optimizer update, the quantization arithmetic XLA fuses on its own), copies.

The optimizer's share is measured apart: the same adamw update, jitted on its own,
on the model's parameters (its fusions would otherwise sit in "other").

    python -m benchmarks.profile_step --kinds plain,switchback_global --out /tmp/prof

Prints one markdown table (ms per step by category, and the ratio of each to
plain's) and writes it, with each kind's 25 longest kernels, under --out.
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import re
import statistics
import time

CATEGORIES = ("attention", "matmul", "quantization", "other")
# Checked in this order: a cuDNN attention kernel's name can contain "gemm", and
# fp8mm's matmuls with a dequantizing epilogue contain "quant".
_PATTERNS = (
    ("attention", re.compile(r"sdpa|flash|fmha|attention|cudnn", re.I)),
    ("matmul", re.compile(r"gemm|nvjet|cublas|cutlass|xmma|wgmma|matmul|mosaic|\bdot", re.I)),
    ("quantization", re.compile(r"fp8mm_|quant|_stats", re.I)),
)


def category(name: str) -> str:
    """The category of one GPU event's name (see the module docstring)."""
    for cat, pattern in _PATTERNS:
        if pattern.search(name):
            return cat
    return "other"


def profile_kind(tl, kind: str, preset, params0, data, steps: int) -> dict:
    """Wall ms per step, device ms per step by category, and the longest kernels of one kind."""
    import jax

    from benchmarks.common import device_events

    _, _, step, params, opt = tl.build_step(kind, preset, params0)
    batch = next(data)
    compiled = jax.jit(step).lower(params, opt, batch).compile()
    state = {"params": params, "opt": opt}

    def call():
        state["params"], state["opt"], loss = compiled(state["params"], state["opt"], batch)
        return loss

    for _ in range(3):
        jax.block_until_ready(call())
    walls = []
    for _ in range(steps):
        t0 = time.perf_counter()
        jax.block_until_ready(call())
        walls.append(time.perf_counter() - t0)
    events = device_events(call, steps)
    by_cat = collections.Counter()
    by_name = collections.Counter()
    for name, _, dur in events:
        by_cat[category(name)] += dur
        by_name[name] += dur
    per = 1e-6 / steps  # ns over all traced steps -> ms per step
    return {
        "kind": kind,
        "wall_ms": 1e3 * statistics.median(walls),
        "device_ms": sum(by_cat.values()) * per,
        **{f"{c}_ms": by_cat[c] * per for c in CATEGORIES},
        "kernels_per_step": len(events) / steps,
        "top": [(n, d * per, category(n)) for n, d in by_name.most_common(25)],
    }


def optimizer_ms(tl, preset, params0, steps: int) -> float:
    """Device ms of one jitted adamw update on the model's parameters (gradients = params)."""
    import jax
    import optax

    from benchmarks.common import device_time

    tx = optax.adamw(1e-3)
    opt = tx.init(params0)

    @jax.jit
    def update(params, opt):
        updates, opt = tx.update(params, opt, params)
        return optax.apply_updates(params, updates), opt

    dt = device_time(lambda: update(params0, opt), steps)
    return float("nan") if dt is None else 1e3 * dt.median_s


def table(rows: list[dict], opt_ms: float) -> str:
    base = next((r for r in rows if r["kind"] == "plain"), None)
    head = "| kind | wall ms | device ms | " + " | ".join(f"{c} ms" for c in CATEGORIES) + " |"
    lines = [head, "|---" * (3 + len(CATEGORIES)) + "|"]
    for r in rows:
        cells = [f"{r['wall_ms']:.1f}", f"{r['device_ms']:.1f}"]
        for c in CATEGORIES:
            v, b = r[f"{c}_ms"], base[f"{c}_ms"] if base else 0.0
            rel = f" ({v / b:.2f}x)" if b and r is not base else ""
            cells.append(f"{v:.1f}{rel}")
        lines.append(f"| {r['kind']} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"adamw update alone (inside 'other'): {opt_ms:.1f} ms device time per step.")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    import jax
    import jax.numpy as jnp

    from benchmarks.run import load_train_lm

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="gpu-large")
    ap.add_argument("--kinds", default="plain,switchback,switchback_global,fp8_global_native")
    ap.add_argument("--steps", type=int, default=5, help="traced steps per kind")
    ap.add_argument("--out", default="benchmarks/results/profile")
    ap.add_argument("--smoke", action="store_true", help="a tiny model (tests, CPU)")
    ap.add_argument(
        "--attention",
        default=None,
        help="dot_product_attention implementation on a GPU (default: the preset's; 'auto': JAX's)",
    )
    args = ap.parse_args(argv)
    tl = load_train_lm()
    preset = tl.PRESETS[args.preset]
    if args.attention is not None:
        impl = None if args.attention == "auto" else args.attention
        preset = tl.dataclasses.replace(preset, attention=impl)
    if args.smoke:
        preset = tl.dataclasses.replace(
            tl.PRESETS["cpu"], d_model=32, n_layers=1, n_heads=2, seq_len=16, batch=4
        )
    text = tl.load_corpus(min(preset.corpus_bytes, 2_000_000))
    data = (jnp.asarray(b) for b in tl.batches(text, preset.batch, preset.seq_len, 0))
    params0 = tl.CharLM(preset).init(jax.random.key(0), jnp.zeros((1, preset.seq_len), jnp.int32))
    rows = []
    for kind in [k for k in args.kinds.split(",") if k]:
        rows.append(profile_kind(tl, kind, preset, params0, data, args.steps))
        print(f"{kind}: {rows[-1]['wall_ms']:.1f} ms wall", flush=True)
    text_ = table(rows, optimizer_ms(tl, preset, params0, args.steps))
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.md").write_text(text_ + "\n")
    (out / "profile.json").write_text(json.dumps(rows, indent=1) + "\n")
    for r in rows:
        print(f"\n{r['kind']}: longest kernels (ms per step, category)")
        for name, ms, cat in r["top"][:12]:
            print(f"  {ms:7.2f}  {cat:12s}  {name[:110]}")
    print("\n" + text_)
    return rows


if __name__ == "__main__":
    main()
