"""Markdown tables (ratios and targets) rebuilt from a `benchmarks.run` progress log.

    python -m benchmarks.log_table results/nvidia-h200.log > results/nvidia-h200.md

For runs whose JSON/Markdown did not come back from the GPU machine: every case
prints one line (`[t] section: what[impl] mode shape dtype: ms rate unit mem MiB`),
which holds all a ratio needs. Bases are the baseline rows of the same run:
a copy (quantization), a 16-bit matmul (int8 matmuls), the jnp linear (ops,
same mode) and nn.Dense (train step).
"""

from __future__ import annotations

import re
import sys

LINE = re.compile(
    r"\] (\w+): (.+?)\[(\w+)\] (.*) (\w+): ([\d.]+) ms ([\d.]+) (\S+) mem ([\d.]+) MiB"
)
QUANT_TARGET = (
    "quantize_blockwise(4096)",
    "fake_quant_blockwise(4096)",
    "quantize_blockwise(256)",
    "fake_quant_blockwise(256)",
)
OP_TARGETS = {
    ("switchback_bnb", "fwd"): 0.80,
    ("switchback_bnb", "fwd+bwd"): 0.95,
    ("matmul_fp8_mixed", "fwd+bwd"): 1.15,
    ("matmul_fp8_global", "fwd+bwd"): 1.20,
}


def parse(lines):
    rows = []
    for line in lines:
        m = LINE.search(line)
        if m:
            section, what, impl, where, dtype, ms, rate, unit, mem = m.groups()
            mode, _, shape = where.partition(" ")
            rows.append(
                dict(
                    section=section,
                    what=what,
                    impl=impl,
                    mode=mode,
                    shape=shape.strip(),
                    dtype=dtype,
                    ms=float(ms),
                    rate=float(rate),
                    unit=unit,
                    mem=float(mem),
                )
            )
    return rows


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main(path: str) -> None:
    rows = parse(open(path, encoding="utf-8"))
    base = {}
    for r in rows:
        if r["what"] in ("copy", "bfloat16 matmul", "linear (baseline)", "nn.Dense (baseline)"):
            base[(r["section"], r["mode"], r["shape"])] = r
    out = [
        "| section | what | impl | mode | shape | ms | rate | ratio to base | peak MiB "
        "| mem / base | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b = base.get((r["section"], r["mode"], r["shape"]))
        ratio, mem_ratio, target = "", "", ""
        if b is not None and b is not r:
            if r["section"] == "kernels":
                x = r["rate"] / b["rate"]
                ratio = f"{x:.3f}x {b['what']} rate"
                if r["what"] in QUANT_TARGET:
                    target = f"≥ 0.75x copy: {verdict(x >= 0.75)}"
                if r["what"] == "int8_linear_matmul_dequant":
                    target = f"≥ 1.35x 16-bit: {verdict(x >= 1.35)}"
            else:
                x = r["ms"] / b["ms"]
                ratio = f"{x:.3f}x time"
                mem_ratio = f"{r['mem'] / b['mem']:.3f}"
                limit = OP_TARGETS.get((r["what"], r["mode"]))
                checks = []
                if limit is not None:
                    checks.append(f"time ≤ {limit:.2f}x: {verdict(x <= limit)}")
                if r["section"] == "ops" and r["mode"] == "fwd+bwd":
                    checks.append(f"mem ≤ 1.10x: {verdict(r['mem'] / b['mem'] <= 1.10)}")
                if r["section"] == "train" and r["what"] == "SwitchBackDense":
                    checks.append(f"step < 1.00x: {verdict(x < 1.0)}")
                target = "; ".join(checks)
        out.append(
            f"| {r['section']} | {r['what']} | {r['impl']} | {r['mode']} | {r['shape']} | "
            f"{r['ms']:.4f} | {r['rate']:g} {r['unit']} | {ratio} | {r['mem']:g} | {mem_ratio} "
            f"| {target} |"
        )
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1])
